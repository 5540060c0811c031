//! TCP transports on turmoil: [`SimTcpStream`] (one connection) and [`SimListener`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tcpudp::backend::{BoxFuture, ListenerTransport, TcpDiag, TcpTransport};
use tcpudp_core::options::{KeepAlive, SocketConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use turmoil::net::{TcpListener, TcpStream};

use crate::host::HostCtx;
use crate::{DEFAULT_KEEP_ALIVE_IDLE, DEFAULT_KEEP_ALIVE_INTERVAL};

/// One simulated TCP connection.
///
/// The turmoil stream is kept whole (never `into_split`): its FIN must be sent only when the
/// peer's receive queue has room (see [`poll_shutdown`](TcpTransport::poll_shutdown)), which
/// needs the write half's credit count, and a split stream's halves would send FIN and RST on
/// their own schedules when dropped.
pub(crate) struct SimTcpStream {
    /// Kept for the fault layer (per-host state); unused by the plain transport.
    _host: Arc<HostCtx>,
    stream: TcpStream,
    config: SocketConfig,
    keep_alive: Option<KeepAlive>,
    /// Our FIN is out; a second shutdown is a no-op (as `shutdown(SHUT_WR)` twice on Linux).
    fin_sent: bool,
}

impl SimTcpStream {
    pub(crate) fn new(host: Arc<HostCtx>, stream: TcpStream, config: SocketConfig) -> SimTcpStream {
        SimTcpStream { _host: host, stream, config, keep_alive: None, fin_sent: false }
    }
}

impl TcpTransport for SimTcpStream {
    /// turmoil's `AsyncRead`: one data segment (or its rest) per call; nothing filled after the
    /// peer's FIN; `ConnectionReset` once the connection was reset.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }

    /// turmoil's `AsyncWrite`: all of `data` as one segment when the peer's receive queue has a
    /// free slot (a credit), else pending until the peer reads one.
    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    /// Waits for a free credit, then sends FIN.
    ///
    /// turmoil's own `poll_shutdown` sends FIN at once, and a FIN that reaches a receive queue
    /// holding 64 unread segments is parked in the reorder buffer for ever: the reader never sees
    /// end of stream (DESIGN §7). With a credit in hand the FIN takes that free slot. The credit
    /// is checked through a fresh `writable()` future on every poll: that future is a bare
    /// `poll_fn` over the credit count whose waker registration lives in the stream, so dropping
    /// it between polls loses nothing (and no self-referential boxed future is needed).
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.fin_sent {
            return Poll::Ready(Ok(()));
        }
        ready!(pin!(self.stream.writable()).poll(cx))?;
        ready!(Pin::new(&mut self.stream).poll_shutdown(cx))?;
        self.fin_sent = true;
        Poll::Ready(Ok(()))
    }

    /// turmoil 0.7.2 has no way to reset a chosen connection: the stream is dropped. The peer
    /// then sees an RST (`ConnectionReset` on read) only when this end still held unread data;
    /// otherwise a FIN (end of stream) unless one was sent already, and later segments it sends
    /// are answered with RST. The fault layer will make this a reset on both ends.
    fn reset(self: Box<Self>) {
        drop(self);
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// Recorded for `diag()`; turmoil sends no keep-alive probes (the fault layer will).
    fn set_keep_alive(&mut self, keep_alive: Option<KeepAlive>) -> io::Result<()> {
        self.keep_alive = keep_alive;
        Ok(())
    }

    /// The recorded values: turmoil models none of these options. Keep-alive timing the caller
    /// left to the OS reads back as Linux's defaults.
    fn diag(&self) -> TcpDiag {
        let ka = self.keep_alive;
        TcpDiag {
            no_delay: Some(self.config.no_delay),
            address_reuse: Some(self.config.address_reuse),
            keep_alive: Some(ka.is_some()),
            keep_alive_idle: ka.map(|k| k.idle.unwrap_or(DEFAULT_KEEP_ALIVE_IDLE).as_secs()),
            keep_alive_interval: ka.map(|k| k.interval.unwrap_or(DEFAULT_KEEP_ALIVE_INTERVAL).as_secs()),
            keep_alive_count: ka.map(|k| k.count),
            send_buffer_size: self.config.send_buffer_size,
            receive_buffer_size: self.config.receive_buffer_size,
        }
    }
}

/// The accept future: owns its `Arc` of the listener, so it can be stored across polls.
type AcceptFuture = BoxFuture<'static, io::Result<(TcpStream, SocketAddr)>>;

/// A simulated listening socket.
pub(crate) struct SimListener {
    host: Arc<HostCtx>,
    /// The stored accept future, while one is pending. turmoil's `accept` takes a SYN from the
    /// backlog and answers it in one synchronous step, so dropping this future (or the listener)
    /// never loses a connection.
    accept: Option<AcceptFuture>,
    listener: Arc<TcpListener>,
    /// The address reported: the requested one (the host's own address is bound as the wildcard).
    local: SocketAddr,
    /// Accepted sockets report the server's `addressReuse` and `noDelay` true (AMB-39).
    accepted_config: SocketConfig,
}

impl SimListener {
    pub(crate) fn new(
        host: Arc<HostCtx>,
        listener: TcpListener,
        local: SocketAddr,
        address_reuse: bool,
    ) -> SimListener {
        SimListener {
            host,
            accept: None,
            listener: Arc::new(listener),
            local,
            accepted_config: SocketConfig {
                address_reuse,
                no_delay: true,
                send_buffer_size: None,
                receive_buffer_size: None,
            },
        }
    }
}

impl ListenerTransport for SimListener {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Box<dyn TcpTransport>>> {
        let listener = &self.listener;
        let accept = self.accept.get_or_insert_with(|| {
            let listener = Arc::clone(listener);
            Box::pin(async move { listener.accept().await })
        });
        let result = ready!(accept.as_mut().poll(cx));
        self.accept = None;
        let (stream, _peer) = result?;
        Poll::Ready(Ok(Box::new(SimTcpStream::new(Arc::clone(&self.host), stream, self.accepted_config))))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

//! Real TCP connections. Read DESIGN §6 and RULES.md TCP-CTOR-10..16, ENUM-KA-*, DICT-TCPOPT-07,
//! EXT-03 (reset) and AMB-45 before editing.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tcpudp::backend::{cause_of, TcpDiag, TcpTransport};
use tcpudp_core::options::{KeepAlive, SocketConfig};
use tcpudp_core::Cause;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
#[cfg(not(any(target_os = "linux", target_os = "android")))]
use tokio::net::TcpSocket;
use tokio::net::TcpStream;

use self::platform::{keep_alive_count, keep_alive_idle, keep_alive_interval, with_interval, with_retries};
use crate::os::canonical;

/// Opens a connection to `remote` with `config` applied before the SYN (buffer sizes must be set
/// before the handshake to count for window scaling).
pub(crate) async fn connect(
    remote: SocketAddr,
    local: Option<SocketAddr>,
    config: SocketConfig,
) -> Result<Box<dyn TcpTransport>, Cause> {
    let stream = open(remote, local, config).await.map_err(|err| cause_of(&err))?;
    // The peer is the address connected to: no getpeername needed.
    Ok(Box::new(RealTcp::with_addrs(stream, None, Some(canonical(remote)))))
}

/// The connection, once made. On Linux the socket's error (SO_ERROR) is read only when the
/// readiness event says there is one: tokio's `connect` reads it after every connection, a system
/// call per connection (issue #6). A failed attempt always sets the socket's error, which epoll
/// reports with the event (EPOLLERR) that ends the wait, and a socket still connecting is never
/// reported writable.
#[cfg(any(target_os = "linux", target_os = "android"))]
async fn open(remote: SocketAddr, local: Option<SocketAddr>, config: SocketConfig) -> io::Result<TcpStream> {
    use tokio::io::Interest;

    let socket = configured_socket(remote, local, config)?;
    match socket.connect(&remote.into()) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(err) => return Err(err),
    }
    let stream = TcpStream::from_std(socket.into())?;
    std::future::poll_fn(|cx| stream.poll_write_ready(cx)).await?;
    // The error readiness is a flag tokio holds (no system call): SO_ERROR is read only when it
    // is set, and `try_io` answers WouldBlock at once when it is not.
    match stream.try_io(Interest::ERROR, || stream.take_error()) {
        Ok(Some(err)) => Err(err),
        Ok(None) => Ok(stream),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(stream),
        Err(err) => Err(err),
    }
}

/// The connection, once made (tokio's `connect`).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
async fn open(remote: SocketAddr, local: Option<SocketAddr>, config: SocketConfig) -> io::Result<TcpStream> {
    let socket = configured_socket(remote, local, config)?;
    socket.set_nonblocking(true)?;
    TcpSocket::from_std_stream(socket.into()).connect(remote).await
}

/// A socket of `remote`'s family with every option of `config`, bound to `local` when given
/// (non-blocking on Linux, [`stream_type`]).
fn configured_socket(
    remote: SocketAddr,
    local: Option<SocketAddr>,
    config: SocketConfig,
) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(remote), stream_type(), Some(Protocol::TCP))?;
    // A new socket has both options off: only turning one on takes a system call.
    if config.address_reuse {
        socket.set_reuse_address(true)?;
    }
    if remote.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if config.no_delay {
        socket.set_tcp_nodelay(true)?;
    }
    if let Some(size) = config.send_buffer_size {
        socket.set_send_buffer_size(size)?;
    }
    if let Some(size) = config.receive_buffer_size {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(local) = local {
        socket.bind(&local.into())?;
    }
    Ok(socket)
}

/// A stream socket type; on Linux non-blocking from the start (SOCK_NONBLOCK saves two `fcntl`
/// calls per connection).
pub(crate) fn stream_type() -> Type {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return Type::STREAM.nonblocking();
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return Type::STREAM;
}

/// One connected TCP socket.
#[derive(Debug)]
pub(crate) struct RealTcp {
    stream: TcpStream,
    /// Whether keep-alive timing was ever set explicitly (so "OS default" must be written back).
    keep_alive_tuned: bool,
    /// The local address when known without asking the OS (canonical).
    local: Option<SocketAddr>,
    /// The peer's address when known without asking the OS (canonical).
    peer: Option<SocketAddr>,
}

impl RealTcp {
    /// Wraps a connected stream whose addresses are already known (`None`: ask the OS when
    /// needed), which saves a `getsockname`/`getpeername` per connection.
    pub(crate) fn with_addrs(
        stream: TcpStream,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
    ) -> RealTcp {
        RealTcp { stream, keep_alive_tuned: false, local, peer }
    }
}

impl TcpTransport for RealTcp {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn reset(self: Box<Self>) {
        // Zero linger: close() sends RST and discards unsent data. If the option cannot be set the
        // socket still closes (with FIN); nothing else can be done here.
        if let Err(err) = SockRef::from(&self.stream).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(error = %err, "SO_LINGER 0 failed; closing without RST");
        }
        drop(self);
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.local {
            Some(local) => Ok(local),
            None => self.stream.local_addr().map(canonical),
        }
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self.peer {
            Some(peer) => Ok(peer),
            None => self.stream.peer_addr().map(canonical),
        }
    }

    fn set_keep_alive(&mut self, keep_alive: Option<KeepAlive>) -> io::Result<()> {
        let socket = SockRef::from(&self.stream);
        let Some(keep_alive) = keep_alive else {
            return socket.set_keepalive(false);
        };
        let defaults = (keep_alive.idle.is_none() || keep_alive.interval.is_none())
            .then(os_keep_alive_defaults)
            .unwrap_or_default();
        let mut params = TcpKeepalive::new();
        let mut tuned = false;
        match keep_alive.idle {
            Some(idle) => {
                params = params.with_time(idle);
                tuned = true;
            }
            None if self.keep_alive_tuned => params = params.with_time(defaults.idle),
            None => {}
        }
        params =
            with_interval(params, keep_alive.interval, self.keep_alive_tuned, defaults.interval, &mut tuned);
        params = with_retries(params, keep_alive.count);
        socket.set_tcp_keepalive(&params)?;
        self.keep_alive_tuned |= tuned;
        Ok(())
    }

    fn diag(&self) -> TcpDiag {
        let socket = SockRef::from(&self.stream);
        TcpDiag {
            no_delay: socket.tcp_nodelay().ok(),
            address_reuse: socket.reuse_address().ok(),
            keep_alive: socket.keepalive().ok(),
            keep_alive_idle: keep_alive_idle(&socket),
            keep_alive_interval: keep_alive_interval(&socket),
            keep_alive_count: keep_alive_count(&socket),
            send_buffer_size: socket.send_buffer_size().ok(),
            receive_buffer_size: socket.recv_buffer_size().ok(),
        }
    }
}

/// The host's keep-alive idle time and probe interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeepAliveDefaults {
    /// `net.ipv4.tcp_keepalive_time`.
    pub(crate) idle: Duration,
    /// `net.ipv4.tcp_keepalive_intvl`.
    pub(crate) interval: Duration,
}

impl Default for KeepAliveDefaults {
    /// Linux's stock values: 7,200 s and 75 s.
    fn default() -> Self {
        KeepAliveDefaults { idle: Duration::from_secs(7_200), interval: Duration::from_secs(75) }
    }
}

/// The host's keep-alive defaults from `/proc/sys/net/ipv4` (of this network namespace); Linux's
/// stock values where they cannot be read.
pub(crate) fn os_keep_alive_defaults() -> KeepAliveDefaults {
    let read = |name: &str| -> Option<Duration> {
        let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok()?;
        text.trim().parse::<u64>().ok().filter(|&secs| secs > 0).map(Duration::from_secs)
    };
    let stock = KeepAliveDefaults::default();
    KeepAliveDefaults {
        idle: read("tcp_keepalive_time").unwrap_or(stock.idle),
        interval: read("tcp_keepalive_intvl").unwrap_or(stock.interval),
    }
}

/// Keep-alive options where socket2 has them (TCP_KEEPINTVL, TCP_KEEPCNT and their read-back).
#[cfg(any(
    target_os = "android",
    target_os = "freebsd",
    target_os = "ios",
    target_os = "linux",
    target_os = "macos",
    target_os = "netbsd"
))]
mod platform {
    use std::time::Duration;

    use socket2::{SockRef, TcpKeepalive};

    /// Adds the probe interval: the requested one, or `default` when an earlier call tuned it.
    pub(super) fn with_interval(
        params: TcpKeepalive,
        interval: Option<Duration>,
        was_tuned: bool,
        default: Duration,
        tuned: &mut bool,
    ) -> TcpKeepalive {
        match interval {
            Some(interval) => {
                *tuned = true;
                params.with_interval(interval)
            }
            None if was_tuned => params.with_interval(default),
            None => params,
        }
    }

    /// Adds the probe count.
    pub(super) fn with_retries(params: TcpKeepalive, count: u32) -> TcpKeepalive {
        params.with_retries(count)
    }

    /// TCP_KEEPIDLE in seconds.
    pub(super) fn keep_alive_idle(socket: &SockRef<'_>) -> Option<u64> {
        socket.tcp_keepalive_time().ok().map(|d| d.as_secs())
    }

    /// TCP_KEEPINTVL in seconds.
    pub(super) fn keep_alive_interval(socket: &SockRef<'_>) -> Option<u64> {
        socket.tcp_keepalive_interval().ok().map(|d| d.as_secs())
    }

    /// TCP_KEEPCNT.
    pub(super) fn keep_alive_count(socket: &SockRef<'_>) -> Option<u32> {
        socket.tcp_keepalive_retries().ok()
    }
}

/// Elsewhere only SO_KEEPALIVE and the idle time are applied; the rest reads back as unknown.
#[cfg(not(any(
    target_os = "android",
    target_os = "freebsd",
    target_os = "ios",
    target_os = "linux",
    target_os = "macos",
    target_os = "netbsd"
)))]
mod platform {
    use std::time::Duration;

    use socket2::{SockRef, TcpKeepalive};

    pub(super) fn with_interval(
        params: TcpKeepalive,
        _interval: Option<Duration>,
        _was_tuned: bool,
        _default: Duration,
        _tuned: &mut bool,
    ) -> TcpKeepalive {
        params
    }

    pub(super) fn with_retries(params: TcpKeepalive, _count: u32) -> TcpKeepalive {
        params
    }

    pub(super) fn keep_alive_idle(_socket: &SockRef<'_>) -> Option<u64> {
        None
    }

    pub(super) fn keep_alive_interval(_socket: &SockRef<'_>) -> Option<u64> {
        None
    }

    pub(super) fn keep_alive_count(_socket: &SockRef<'_>) -> Option<u32> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // rule: DICT-TCPOPT-07
    #[test]
    fn test_os_keep_alive_defaults_are_positive() {
        let defaults = os_keep_alive_defaults();
        assert!(defaults.idle >= Duration::from_secs(1));
        assert!(defaults.interval >= Duration::from_secs(1));
        assert_eq!(
            KeepAliveDefaults::default(),
            KeepAliveDefaults { idle: Duration::from_secs(7_200), interval: Duration::from_secs(75) }
        );
    }
}

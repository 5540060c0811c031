//! The seam between the API and a network: [`Backend`] and its transports.
//!
//! A backend is chosen by value (`tcpudp_net_real::network(..)`, `tcpudp_net_sim::network(..)`);
//! the API drives every socket's sans-IO machine and asks the backend only for the I/O it needs.
//! Transports are polled with `&mut self` from exactly one place at a time (the socket's lock), and
//! each direction with one waker (the socket driver's; a TCP socket's reads, once a reader has
//! waited, with its read route's, which wakes that reader or else the driver), so tokio's and
//! turmoil's one-waker-per-direction rule can never lose a wake-up (DESIGN §5).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tcpudp_core::address::HostName;
use tcpudp_core::options::{KeepAlive, SocketConfig};
use tcpudp_core::Cause;
use tokio::io::ReadBuf;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which kind of network a backend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// Real sockets (tokio + socket2).
    Real,
    /// The turmoil simulation.
    Sim,
}

impl BackendKind {
    /// `"real"` or `"sim"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Real => "real",
            BackendKind::Sim => "sim",
        }
    }
}

/// Options the UDP bind applies (from the checked `UdpSpec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpBind {
    /// Address and port to bind (port 0: ephemeral).
    pub local: SocketAddr,
    /// SO_REUSEADDR (and SO_REUSEPORT where needed for shared multicast ports).
    pub config: SocketConfig,
    /// IP_MULTICAST_LOOP / IPV6_MULTICAST_LOOP, always set explicitly (AMB-32).
    pub multicast_loopback: bool,
    /// IP_MULTICAST_TTL / hop limit.
    pub multicast_ttl: u32,
    /// IP_MULTICAST_IF / IPV6_MULTICAST_IF and the membership interface.
    pub multicast_interface: Option<IpAddr>,
}

/// A network: real sockets or a simulation.
pub trait Backend: Send + Sync + 'static {
    /// Which kind this is.
    fn kind(&self) -> BackendKind;

    /// The tokio runtime socket drivers run on (the host's, in simulation), asked once when the
    /// [`Network`](crate::Network) is made. The network spawns each driver there itself, so the
    /// driver lives inline in its task (no boxed future per socket).
    fn runtime(&self) -> tokio::runtime::Handle;

    /// Is `ip` usable as a local address (a local interface address or a wildcard)? Real: bind a
    /// throw-away socket to `(ip, 0)`. Sends nothing.
    fn probe_local(&self, ip: IpAddr) -> Result<(), Cause>;

    /// Which local address the routing table picks to reach `remote`; `None` when unreachable.
    /// Real: `connect()` an unbound UDP socket (sends nothing) and read its local address.
    fn route(&self, remote: IpAddr) -> Option<IpAddr>;

    /// Resolves a host name, in resolver order.
    fn resolve(&self, name: &HostName) -> BoxFuture<'static, Result<Vec<IpAddr>, Cause>>;

    /// Opens a TCP connection (binding `local` first when given) with `config` applied.
    fn connect(
        &self,
        remote: SocketAddr,
        local: Option<SocketAddr>,
        config: SocketConfig,
    ) -> BoxFuture<'static, Result<Box<dyn TcpTransport>, Cause>>;

    /// Creates a listening socket; it is accepting into its backlog when this returns.
    fn listen(
        &self,
        local: SocketAddr,
        address_reuse: bool,
        backlog: u32,
    ) -> Result<Box<dyn ListenerTransport>, Cause>;

    /// Creates and binds a UDP socket, synchronously (DESIGN §3.8).
    fn bind_udp(&self, bind: UdpBind) -> Result<Box<dyn UdpTransport>, Cause>;

    /// Whether this backend can run TLS (`useSecureTransport`).
    fn tls_supported(&self) -> bool {
        false
    }
}

/// One TCP connection.
pub trait TcpTransport: Send + 'static {
    /// Reads into `buf`; nothing filled means the peer's FIN (end of stream).
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>>;

    /// Writes some of `data`.
    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>>;

    /// Sends FIN once everything written so far is handed to the transport.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ends the connection with RST (zero linger) and releases it.
    fn reset(self: Box<Self>);

    /// The local address and port.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// The peer's address and port.
    fn peer_addr(&self) -> io::Result<SocketAddr>;

    /// Applies keep-alive timing; `None` turns it off.
    fn set_keep_alive(&mut self, keep_alive: Option<KeepAlive>) -> io::Result<()>;

    /// Option values as the OS (or the simulator's model) reports them.
    fn diag(&self) -> TcpDiag;
}

/// A listening TCP socket.
pub trait ListenerTransport: Send + 'static {
    /// Accepts the next connection from the backlog.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Box<dyn TcpTransport>>>;

    /// A fatal error of the listening socket itself (network loss), polled while no `listen()`
    /// waits too. Default: never.
    fn poll_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let _ = cx;
        Poll::Pending
    }

    /// The bound address and port.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Metadata of one received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvMeta {
    /// Payload length.
    pub len: usize,
    /// Source address and port.
    pub from: SocketAddr,
    /// Datagrams the kernel (or emulated) buffer dropped so far (SO_RXQ_OVFL).
    pub dropped_total: u64,
    /// The transport handed over the last datagram it had and is already waiting for the next
    /// one with the caller's waker: a receive polled again before that wake-up would find
    /// nothing, so the caller may skip it. `false` (always correct) means "poll again".
    pub registered: bool,
}

/// One UDP socket.
pub trait UdpTransport: Send + 'static {
    /// Receives one datagram into `buf` (which holds at least 65,535 bytes of room).
    fn poll_recv_from(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<RecvMeta>>;

    /// Receives one datagram as its own `Bytes`. The default receives into the thread's scratch
    /// room ([`with_scratch`]) and copies the payload out; a transport that already holds
    /// datagrams as `Bytes` (the simulator), or receives into buffers of its own (the real
    /// backend), hands them over without that copy.
    fn poll_recv_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(bytes::Bytes, RecvMeta)>> {
        with_scratch(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            self.poll_recv_from(cx, &mut buf).map_ok(|meta| {
                let n = buf.filled().len().min(meta.len);
                (bytes::Bytes::copy_from_slice(&buf.filled()[..n]), meta)
            })
        })
    }

    /// Sends one datagram.
    fn poll_send_to(&mut self, cx: &mut Context<'_>, data: &[u8], dest: SocketAddr) -> Poll<io::Result<()>>;

    /// Sends one datagram held as `Bytes` (what the library sends with). The default sends the
    /// slice; a transport that keeps datagrams as `Bytes` (the simulator) takes a reference
    /// instead of a copy.
    fn poll_send_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &bytes::Bytes,
        dest: SocketAddr,
    ) -> Poll<io::Result<()>> {
        self.poll_send_to(cx, &data[..], dest)
    }

    /// The bound address and port.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Joins `group` on the socket's multicast interface.
    fn join_multicast(&mut self, group: IpAddr) -> io::Result<()>;

    /// Leaves `group`.
    fn leave_multicast(&mut self, group: IpAddr) -> io::Result<()>;

    /// Option values as the OS (or the simulator's model) reports them.
    fn diag(&self) -> UdpDiag;
}

/// TCP option values read back (from the OS, or the simulator's recorded values).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpDiag {
    /// TCP_NODELAY.
    pub no_delay: Option<bool>,
    /// SO_REUSEADDR.
    pub address_reuse: Option<bool>,
    /// SO_KEEPALIVE.
    pub keep_alive: Option<bool>,
    /// TCP_KEEPIDLE in seconds.
    pub keep_alive_idle: Option<u64>,
    /// TCP_KEEPINTVL in seconds.
    pub keep_alive_interval: Option<u64>,
    /// TCP_KEEPCNT.
    pub keep_alive_count: Option<u32>,
    /// SO_SNDBUF as the kernel reports it (Linux doubles the request).
    pub send_buffer_size: Option<usize>,
    /// SO_RCVBUF as the kernel reports it.
    pub receive_buffer_size: Option<usize>,
}

/// UDP option values read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpDiag {
    /// SO_REUSEADDR.
    pub address_reuse: Option<bool>,
    /// IP_MULTICAST_LOOP.
    pub multicast_loopback: Option<bool>,
    /// IP_MULTICAST_TTL.
    pub multicast_ttl: Option<u32>,
    /// IP_MULTICAST_IF.
    pub multicast_interface: Option<IpAddr>,
    /// SO_SNDBUF.
    pub send_buffer_size: Option<usize>,
    /// SO_RCVBUF.
    pub receive_buffer_size: Option<usize>,
    /// Datagrams received by this socket (from the transport).
    pub received: u64,
    /// Receive system calls this socket made, counting those that found nothing (the real
    /// backend; `None` on the simulated one, which makes none).
    pub receive_calls: Option<u64>,
}

/// Room for the largest datagram.
const DATAGRAM_ROOM: usize = 65_536;

thread_local! {
    /// Where this thread's receives that need room of their own land before the payload is
    /// copied out at its exact size: one 64 KiB buffer per thread, none per socket. (A fresh
    /// 64 KiB buffer per datagram made glibc grow and trim its heap, with page faults, every few
    /// datagrams: half the UDP throughput.)
    static SCRATCH: std::cell::RefCell<Option<Box<[u8]>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's scratch room for one datagram (65,536 bytes, made on first use),
/// for a transport that receives into a buffer and copies the payload out. Only a nested call
/// (which no transport makes) gets a fresh buffer instead.
pub fn with_scratch<R>(mut f: impl FnMut(&mut [u8]) -> R) -> R {
    SCRATCH
        .try_with(|scratch| {
            let mut scratch = scratch.try_borrow_mut().ok()?;
            Some(f(scratch.get_or_insert_with(|| vec![0u8; DATAGRAM_ROOM].into_boxed_slice())))
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| f(&mut vec![0u8; DATAGRAM_ROOM]))
}

/// Maps an OS error to the core's [`Cause`].
pub fn cause_of(err: &io::Error) -> Cause {
    use io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused => Cause::Refused,
        ConnectionReset | ConnectionAborted | BrokenPipe => Cause::Reset,
        TimedOut => Cause::TimedOut,
        AddrInUse => Cause::AddressInUse,
        AddrNotAvailable | NetworkUnreachable | HostUnreachable | NetworkDown => Cause::Unreachable,
        NotFound => Cause::HostNotFound,
        OutOfMemory => Cause::ResourcesExhausted,
        _ => match err.raw_os_error() {
            Some(24) | Some(23) => Cause::ResourcesExhausted, // EMFILE, ENFILE
            Some(90) => Cause::MessageTooLarge,               // EMSGSIZE
            Some(97) => Cause::FamilyMismatch,                // EAFNOSUPPORT
            _ => Cause::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport that only receives into the caller's buffer: one datagram of `payload`.
    struct CopyOnly {
        payload: Vec<u8>,
    }

    impl UdpTransport for CopyOnly {
        fn poll_recv_from(
            &mut self,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<RecvMeta>> {
            assert!(buf.remaining() >= 65_535, "room for the largest datagram");
            buf.put_slice(&self.payload);
            let from = SocketAddr::from(([127, 0, 0, 1], 9));
            Poll::Ready(Ok(RecvMeta { len: self.payload.len(), from, dropped_total: 0, registered: false }))
        }

        fn poll_send_to(&mut self, _: &mut Context<'_>, _: &[u8], _: SocketAddr) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(SocketAddr::from(([127, 0, 0, 1], 10)))
        }

        fn join_multicast(&mut self, _: IpAddr) -> io::Result<()> {
            Ok(())
        }

        fn leave_multicast(&mut self, _: IpAddr) -> io::Result<()> {
            Ok(())
        }

        fn diag(&self) -> UdpDiag {
            UdpDiag::default()
        }
    }

    /// The default `poll_recv_bytes` receives into the thread's scratch room and hands out
    /// exactly the payload; a nested use of the room (which no transport makes) gets a buffer
    /// of its own instead of a panic.
    // rule: UDP-READ-01
    #[test]
    fn default_receive_copies_the_payload_out_of_the_thread_scratch() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for payload in [vec![7u8; 1200], Vec::new(), vec![1, 2, 3]] {
            let mut transport = CopyOnly { payload: payload.clone() };
            let Poll::Ready(Ok((data, meta))) = transport.poll_recv_bytes(&mut cx) else {
                panic!("a datagram was there");
            };
            assert_eq!((&data[..], meta.len), (&payload[..], payload.len()));
        }
        let outer = with_scratch(|room| {
            room[0] = 1;
            let inner = with_scratch(|nested| {
                nested[0] = 2;
                nested.len()
            });
            (room[0], inner)
        });
        assert_eq!(outer, (1, DATAGRAM_ROOM), "the nested call wrote elsewhere");
    }
}

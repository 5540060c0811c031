//! Real listening sockets. Read DESIGN §6 and RULES.md SRV-CTOR-11/12, SRV-CONNFAIL-*, AMB-09,
//! AMB-39 and AMB-46 before editing.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tcpudp::backend::{cause_of, ListenerTransport, TcpTransport};
use tcpudp_core::Cause;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::time::Sleep;

use crate::os::canonical;
use crate::tcp::RealTcp;

/// How long accepting pauses after the process or system ran out of descriptors or memory.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Creates a listening socket on `local`: SO_REUSEADDR per `address_reuse` (a live listener is never
/// shared on Linux either way, AMB-46), IPV6_V6ONLY=1 for IPv6 (AMB-09), `listen(backlog)`.
pub(crate) fn listen(
    handle: &Handle,
    local: SocketAddr,
    address_reuse: bool,
    backlog: u32,
) -> Result<Box<dyn ListenerTransport>, Cause> {
    match open(handle, local, address_reuse, backlog) {
        Ok(listener) => Ok(Box::new(listener)),
        Err(err) => Err(cause_of(&err)),
    }
}

/// The listening socket [`listen`] makes.
fn open(handle: &Handle, local: SocketAddr, address_reuse: bool, backlog: u32) -> io::Result<RealListener> {
    let socket = Socket::new(Domain::for_address(local), Type::STREAM, Some(Protocol::TCP))?;
    if address_reuse {
        socket.set_reuse_address(true)?; // off on a new socket
    }
    if local.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // AMB-39's noDelay for every accepted socket, set once here: Linux copies TCP_NODELAY
    // into each connection accepted from this socket, which saves a system call per
    // connection (issue #6). Checked on the first accepted socket ([`NoDelay`]).
    let no_delay = if cfg!(target_os = "linux") && socket.set_tcp_nodelay(true).is_ok() {
        NoDelay::Unchecked
    } else {
        NoDelay::PerSocket
    };
    socket.bind(&local.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    // Bound to one address, every accepted connection's local address is the listener's
    // (no getsockname per connection); on a wildcard the OS is asked.
    let bound = socket.local_addr()?.as_socket().map(canonical).ok_or_else(not_ip)?;
    let _runtime = handle.enter();
    // SAFETY: a `Socket` owns its descriptor and keeps it, unchanged, until it is dropped;
    // the `AsyncFd` owns the `Socket` and never hands it out by value.
    let listener = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE)? };
    let local = (!bound.ip().is_unspecified()).then_some(bound);
    Ok(RealListener { listener, handle: handle.clone(), backoff: None, local, no_delay })
}

/// A listening socket registered with tokio.
///
/// Not tokio's `TcpListener`: that one marks every accepted stream readable before the kernel
/// says so, and a connection's read-ahead (which starts at once, TCP-READ-*) then costs an
/// empty `recvfrom` per connection whose client has sent nothing yet. Accepted here, a stream's
/// first read waits for its first readiness event, which epoll reports at registration when data
/// is already there.
#[derive(Debug)]
pub(crate) struct RealListener {
    listener: AsyncFd<Socket>,
    handle: Handle,
    /// Set after a resource error: no accept is tried until it fires.
    backoff: Option<Pin<Box<Sleep>>>,
    /// The bound address when it is not a wildcard: the local address of every accepted socket.
    local: Option<SocketAddr>,
    /// How accepted sockets get TCP_NODELAY.
    no_delay: NoDelay,
}

/// How an accepted socket gets TCP_NODELAY (AMB-39).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoDelay {
    /// Set on each accepted socket.
    PerSocket,
    /// Set on the listening socket, which the accepted sockets should inherit: the first one is
    /// asked, and the answer decides for the rest.
    Unchecked,
    /// Inherited from the listening socket (the first accepted socket had it).
    Inherited,
}

impl ListenerTransport for RealListener {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Box<dyn TcpTransport>>> {
        if let Some(backoff) = self.backoff.as_mut() {
            ready!(backoff.as_mut().poll(cx));
            self.backoff = None;
        }
        loop {
            let mut guard = ready!(self.listener.poll_read_ready(cx))?;
            let accepted =
                match guard.try_io(|fd| fd.get_ref().accept4(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)) {
                    Ok(accepted) => accepted.and_then(|(socket, peer)| {
                        let peer = peer.as_socket().ok_or_else(not_ip)?;
                        let _runtime = self.handle.enter();
                        Ok((TcpStream::from_std(socket.into())?, peer))
                    }),
                    Err(_would_block) => continue,
                };
            match accepted {
                Ok((stream, peer)) => {
                    if self.no_delay == NoDelay::Unchecked {
                        let inherited = stream.nodelay().unwrap_or(false);
                        self.no_delay = if inherited { NoDelay::Inherited } else { NoDelay::PerSocket };
                    }
                    // AMB-39: accepted sockets have noDelay true. A failure here leaves the OS
                    // default, which diag() reports.
                    if self.no_delay == NoDelay::PerSocket {
                        if let Err(err) = stream.set_nodelay(true) {
                            tracing::debug!(error = %err, "TCP_NODELAY on an accepted socket failed");
                        }
                    }
                    let tcp = RealTcp::with_addrs(stream, self.local, Some(canonical(peer)));
                    return Poll::Ready(Ok(Box::new(tcp)));
                }
                Err(err) if is_resource_error(&err) => {
                    let _runtime = self.handle.enter();
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                    return Poll::Ready(Err(err));
                }
                // The connection died in the backlog (or a signal interrupted accept): it was
                // never the application's, so take the next one.
                Err(err) if is_skippable(&err) => {
                    tracing::debug!(error = %err, "accept skipped a connection");
                    continue;
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.get_ref().local_addr()?.as_socket().map(canonical).ok_or_else(not_ip)
    }
}

/// A listening TCP socket's address is always an IP one.
fn not_ip() -> io::Error {
    io::Error::other("not an IP socket address")
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: out of descriptors or memory.
fn is_resource_error(err: &io::Error) -> bool {
    if err.kind() == io::ErrorKind::OutOfMemory {
        return true;
    }
    match err.raw_os_error() {
        #[cfg(unix)]
        Some(code) => matches!(code, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM),
        #[cfg(not(unix))]
        Some(_) => matches!(cause_of(err), Cause::ResourcesExhausted),
        None => false,
    }
}

/// Errors about one pending connection, not the listener: ECONNABORTED, EPROTO, EINTR.
fn is_skippable(err: &io::Error) -> bool {
    match err.kind() {
        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted => true,
        #[cfg(unix)]
        _ => err.raw_os_error() == Some(libc::EPROTO),
        #[cfg(not(unix))]
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // rule: SRV-CONNFAIL-01
    #[cfg(unix)]
    #[test]
    fn test_resource_errors_classified() {
        assert!(is_resource_error(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_resource_error(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(is_resource_error(&io::Error::from_raw_os_error(libc::ENOBUFS)));
        assert!(!is_resource_error(&io::Error::from_raw_os_error(libc::ECONNABORTED)));
        assert!(is_skippable(&io::Error::from_raw_os_error(libc::ECONNABORTED)));
        assert!(!is_skippable(&io::Error::from_raw_os_error(libc::EMFILE)));
    }

    // rule: AMB-39
    /// Every accepted socket has TCP_NODELAY; on Linux from the listening socket, with no
    /// system call of its own (the first accepted socket is asked once, then none).
    #[test]
    fn test_accepted_sockets_have_no_delay_inherited_on_linux() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut listener = open(runtime.handle(), "127.0.0.1:0".parse().unwrap(), true, 16).unwrap();
        let target = listener.local_addr().unwrap();
        let expected = if cfg!(target_os = "linux") { NoDelay::Inherited } else { NoDelay::PerSocket };
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(std::net::TcpStream::connect(target).unwrap());
            let accepted = runtime.block_on(async {
                let accept = std::future::poll_fn(|cx| listener.poll_accept(cx));
                tokio::time::timeout(Duration::from_secs(10), accept).await
            });
            let accepted = accepted.expect("accepted in time").expect("accepted");
            assert_eq!(accepted.diag().no_delay, Some(true));
            assert_eq!(listener.no_delay, expected);
        }
    }
}

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
    let open = || -> io::Result<RealListener> {
        let socket = Socket::new(Domain::for_address(local), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(address_reuse)?;
        if local.is_ipv6() {
            socket.set_only_v6(true)?;
        }
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
        Ok(RealListener { listener, handle: handle.clone(), backoff: None, local })
    };
    match open() {
        Ok(listener) => Ok(Box::new(listener)),
        Err(err) => Err(cause_of(&err)),
    }
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
                    // AMB-39: accepted sockets have noDelay true. A failure here leaves the OS
                    // default, which diag() reports.
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(error = %err, "TCP_NODELAY on an accepted socket failed");
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
}

//! The host a [`SimBackend`](crate::SimBackend) acts for, and the small helpers every entry point
//! uses to call turmoil without ever reaching one of its panics (DESIGN §7).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use std::sync::{Arc, Mutex};

use tcpudp_core::error::ErrorName;
use tcpudp_core::{Cause, SocketError};

use crate::net::SimNet;

/// Linux's `EMSGSIZE`: `tcpudp::backend::cause_of` maps it to [`Cause::MessageTooLarge`].
const EMSGSIZE: i32 = 90;
/// Linux's `EAFNOSUPPORT`: `cause_of` maps it to [`Cause::FamilyMismatch`].
const EAFNOSUPPORT: i32 = 97;

/// Who we are in the simulation: the host's name and address, the simulation's shared state,
/// and the host's runtime (on which the adapter's timers and pumps run).
///
/// Shared (`Arc`) by the backend and every transport it makes.
#[derive(Debug)]
pub(crate) struct HostCtx {
    /// The turmoil host name the caller gave.
    pub(crate) name: String,
    /// Its address in turmoil's DNS; its family is the simulation's (turmoil worlds are
    /// single-family).
    pub(crate) ip: IpAddr,
    /// The simulation's shared state (link table, adapter tables, trace).
    pub(crate) net: Arc<SimNet>,
    /// The host's tokio runtime (turmoil runs it only while it runs the host).
    pub(crate) runtime: tokio::runtime::Handle,
    /// The last address turmoil's DNS named a host for: it never forgets a host, and its reverse
    /// look-up hashes and allocates, once per datagram or connect otherwise.
    pub(crate) last_host: Mutex<Option<IpAddr>>,
}

impl HostCtx {
    /// Whether `ip` is of this simulation's address family.
    pub(crate) fn same_family(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.ip.is_ipv4()
    }

    /// The loopback address of this simulation's family.
    pub(crate) fn loopback(&self) -> IpAddr {
        match self.ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        }
    }

    /// The wildcard address of this simulation's family.
    pub(crate) fn unspecified(&self) -> IpAddr {
        match self.ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }

    /// The simulated host that owns `ip`: this host for loopback, the wildcard and its own
    /// address; another host when turmoil's DNS knows the address; `None` for an address no host
    /// has.
    pub(crate) fn host_of(&self, ip: IpAddr) -> Option<IpAddr> {
        if ip.is_loopback() || ip.is_unspecified() || ip == self.ip {
            Some(self.ip)
        } else if !self.same_family(ip) || ip.is_multicast() || sim_guard().is_err() {
            None
        } else {
            self.known_host(ip).then_some(ip)
        }
    }

    /// Whether turmoil's DNS has a host at `ip` (inside a simulation only: turmoil panics
    /// outside).
    fn known_host(&self, ip: IpAddr) -> bool {
        let mut last = self.last_host.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *last == Some(ip) {
            return true;
        }
        let known = turmoil::reverse_lookup(ip).is_some();
        if known {
            *last = Some(ip);
        }
        known
    }

    /// The address to hand turmoil's `bind` for a requested local address, or why it cannot be
    /// bound.
    ///
    /// turmoil binds only wildcards and loopback, and panics on the other family. The host's own
    /// address is bound as the wildcard (the transport reports the requested address); this
    /// also accepts traffic sent to loopback, which a real socket bound to the host address would
    /// not see (listed in the crate's Fidelity section).
    pub(crate) fn bind_target(&self, local: SocketAddr) -> Result<SocketAddr, Cause> {
        let ip = local.ip();
        if !self.same_family(ip) {
            return Err(Cause::FamilyMismatch);
        }
        if ip.is_unspecified() || ip.is_loopback() {
            Ok(local)
        } else if ip == self.ip {
            Ok(SocketAddr::new(self.unspecified(), local.port()))
        } else {
            Err(Cause::Unreachable)
        }
    }

    /// The address a bound socket reports: the requested IP (the host's own address when that
    /// was asked for) with the port turmoil assigned.
    pub(crate) fn reported_local(&self, requested: SocketAddr, bound: SocketAddr) -> SocketAddr {
        if requested.ip() == self.ip {
            SocketAddr::new(self.ip, bound.port())
        } else {
            bound
        }
    }

    /// Where a TCP connect to `remote` really goes, or why it cannot be attempted.
    ///
    /// The wildcard means this host (as on Linux). An address of the other family, a multicast
    /// group, or an address that is neither loopback, nor this host, nor in turmoil's DNS, fails
    /// here: turmoil would refuse it only after registering a stream socket it never removes (a
    /// leaked port).
    pub(crate) fn connect_target(&self, remote: SocketAddr) -> Result<SocketAddr, Cause> {
        let ip = remote.ip();
        if !self.same_family(ip) {
            return Err(Cause::FamilyMismatch);
        }
        if ip.is_unspecified() {
            return Ok(SocketAddr::new(self.loopback(), remote.port()));
        }
        if ip.is_loopback() || ip == self.ip {
            return Ok(remote);
        }
        if ip.is_multicast() {
            // TCP to a group: Linux says ENETUNREACH; turmoil would leak a port, then refuse.
            return Err(Cause::Unreachable);
        }
        sim_guard()?;
        if self.known_host(ip) {
            Ok(remote)
        } else {
            Err(Cause::Unreachable)
        }
    }
}

/// `Err(Cause::Other)` unless turmoil's world is reachable from here: every turmoil call other
/// than [`turmoil::in_simulation`] panics outside a simulation.
pub(crate) fn sim_guard() -> Result<(), Cause> {
    if turmoil::in_simulation() {
        Ok(())
    } else {
        Err(Cause::Other)
    }
}

/// Polls `fut` once with a no-op waker.
///
/// For turmoil's `async fn`s that never await (`TcpListener::bind`, `UdpSocket::bind`,
/// `net::lookup_host`: each is one synchronous closure over the world): the first poll is the
/// whole call. `None` would mean the future pended, which turmoil 0.7.2 never does.
pub(crate) fn poll_now<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// An `io::Error` that `tcpudp::backend::cause_of` maps to `cause`, for the few errors the
/// adapter raises itself. Message-size and family errors are the raw Linux numbers `cause_of`
/// recognises (a custom error would hide `raw_os_error()`), so they carry no message.
pub(crate) fn io_error(cause: Cause, message: &str) -> io::Error {
    match cause {
        Cause::MessageTooLarge => io::Error::from_raw_os_error(EMSGSIZE),
        Cause::FamilyMismatch => io::Error::from_raw_os_error(EAFNOSUPPORT),
        Cause::Unreachable => io::Error::new(io::ErrorKind::AddrNotAvailable, message.to_owned()),
        Cause::Refused => io::Error::new(io::ErrorKind::ConnectionRefused, message.to_owned()),
        Cause::Reset => io::Error::new(io::ErrorKind::ConnectionReset, message.to_owned()),
        Cause::AddressInUse => io::Error::new(io::ErrorKind::AddrInUse, message.to_owned()),
        Cause::HostNotFound => io::Error::new(io::ErrorKind::NotFound, message.to_owned()),
        _ => io::Error::other(message.to_owned()),
    }
}

/// The error `network()` returns outside a simulation or off a host.
pub(crate) fn not_supported(message: impl Into<String>) -> SocketError {
    SocketError::new(ErrorName::NotSupportedError).with_message(message.into())
}

/// The error `network()` returns for a host name the simulation does not know.
pub(crate) fn invalid_access(message: impl Into<String>) -> SocketError {
    SocketError::invalid_access().with_message(message.into())
}

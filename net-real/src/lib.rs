//! The real-network backend of `tcpudp`: tokio + socket2. Read DESIGN §6 and RULES.md AMB-09, AMB-32,
//! AMB-33, AMB-46 and AMB-58 before editing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tcpudp_core::SocketError> {
//! // Inside a tokio runtime (with I/O and time enabled):
//! let net = tcpudp_net_real::network(tcpudp::Policy::allow_all())?;
//! # let _ = net;
//! # Ok(())
//! # }
//! ```
//!
//! # Decisions
//!
//! - **Every option is applied to the OS and read back from it** (`diag()`): SO_REUSEADDR,
//!   TCP_NODELAY, keep-alive (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT), SO_SNDBUF and
//!   SO_RCVBUF (Linux doubles and clamps them), and for UDP IP_MULTICAST_LOOP, the multicast TTL and
//!   the multicast interface.
//! - **IPv6 sockets are IPv6 only** (IPV6_V6ONLY=1), so "::" never accepts IPv4 (AMB-09).
//! - **UDP** sockets set IP_MULTICAST_LOOP explicitly (AMB-32), IP_MULTICAST_ALL=0 (AMB-58) and
//!   SO_RXQ_OVFL=1; every datagram is read with `recvmsg` and carries the kernel's drop count, so
//!   [`RecvMeta::dropped_total`](tcpudp::backend::RecvMeta) is current as of the last datagram (AMB-33).
//! - **Accept** backs off 100 ms after `EMFILE`/`ENFILE`/`ENOBUFS`/`ENOMEM` (the error is returned
//!   once, then no accept is tried until the pause ends; DESIGN §6).
//! - **Keep-alive** without an idle time or interval leaves the OS default; if an earlier call set
//!   explicit values, the host's defaults (`/proc/sys/net/ipv4/tcp_keepalive_{time,intvl}`, else
//!   7,200 s and 75 s) are written back (DICT-TCPOPT-07).
//! - **Route checks are cached briefly**: a constructor's route look-up (a throw-away UDP socket,
//!   four system calls) is remembered per remote address for [`ROUTE_CACHE_TTL`] when it found a
//!   route; a failed look-up is never cached. A route removed within that window is noticed by the
//!   connect itself (`NetworkError`) instead of the constructor.
//! - **Linux** is the tested platform. SO_RXQ_OVFL and IP_MULTICAST_ALL are Linux-only; elsewhere
//!   the drop count stays 0 and multicast delivery follows the OS.
#![warn(missing_docs, unreachable_pub)]

mod listener;
mod os;
mod probe;
mod tcp;
mod udp;

pub use probe::ROUTE_CACHE_TTL;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tcpudp::backend::{
    Backend, BackendKind, BoxFuture, ListenerTransport, TcpTransport, UdpBind, UdpTransport,
};
use tcpudp::{Network, Policy};
use tcpudp_core::address::HostName;
use tcpudp_core::options::SocketConfig;
use tcpudp_core::{Cause, ErrorName, SocketError};
use tokio::runtime::Handle;

/// A [`Network`] on real sockets with `policy`, driven by the current tokio runtime.
///
/// The runtime must have I/O and time enabled. Outside a runtime this returns
/// `NotSupportedError` (never panics).
pub fn network(policy: Policy) -> Result<Network, SocketError> {
    network_with_multicast_interface(policy, None)
}

/// As [`network`], with the multicast interface every UDP socket uses for joins, leaves and group
/// sends unless its options name one (AMB-58). Tests pin it to 127.0.0.1.
pub fn network_with_multicast_interface(
    policy: Policy,
    interface: Option<IpAddr>,
) -> Result<Network, SocketError> {
    let backend = RealBackend::new()?;
    Ok(Network::with_multicast_interface(backend, policy, interface))
}

/// The real-socket [`Backend`]: tokio for readiness, socket2 (and libc) for options.
///
/// Holds the handle of the tokio runtime it was made in; socket drivers are spawned there, and
/// sockets created from synchronous calls are registered with its reactor.
#[derive(Clone)]
pub struct RealBackend {
    handle: Handle,
    /// Recent positive route look-ups (see [`probe::RouteCache`]).
    routes: Arc<Mutex<probe::RouteCache>>,
}

impl RealBackend {
    /// A backend on the current tokio runtime; `NotSupportedError` outside one.
    pub fn new() -> Result<RealBackend, SocketError> {
        match Handle::try_current() {
            Ok(handle) => Ok(RealBackend::with_handle(handle)),
            Err(_) => Err(SocketError::new(ErrorName::NotSupportedError).with_message(
                "the real network backend must be created inside a tokio runtime (with I/O and time enabled)",
            )),
        }
    }

    /// A backend on the runtime behind `handle` (which must have I/O and time enabled).
    pub fn with_handle(handle: Handle) -> RealBackend {
        RealBackend { handle, routes: Arc::default() }
    }

    /// The runtime this backend spawns on and registers sockets with.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl fmt::Debug for RealBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RealBackend").finish_non_exhaustive()
    }
}

impl Backend for RealBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Real
    }

    fn runtime(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    fn probe_local(&self, ip: IpAddr) -> Result<(), Cause> {
        probe::probe_local(ip)
    }

    fn route(&self, remote: IpAddr) -> Option<IpAddr> {
        let now = std::time::Instant::now();
        let mut routes = self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(local) = routes.get(remote, now) {
            return Some(local);
        }
        let local = probe::route(remote)?;
        routes.put(remote, local, now);
        Some(local)
    }

    fn resolve(&self, name: &HostName) -> BoxFuture<'static, Result<Vec<IpAddr>, Cause>> {
        Box::pin(probe::resolve(name.clone()))
    }

    fn connect(
        &self,
        remote: SocketAddr,
        local: Option<SocketAddr>,
        config: SocketConfig,
    ) -> BoxFuture<'static, Result<Box<dyn TcpTransport>, Cause>> {
        Box::pin(tcp::connect(remote, local, config))
    }

    fn listen(
        &self,
        local: SocketAddr,
        address_reuse: bool,
        backlog: u32,
    ) -> Result<Box<dyn ListenerTransport>, Cause> {
        listener::listen(&self.handle, local, address_reuse, backlog)
    }

    fn bind_udp(&self, bind: UdpBind) -> Result<Box<dyn UdpTransport>, Cause> {
        udp::bind(&self.handle, bind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // rule: GEN-04
    #[test]
    fn test_outside_runtime_network_not_supported() {
        let err = network(Policy::allow_all()).expect_err("no runtime here");
        assert_eq!(err.kind(), ErrorName::NotSupportedError);
        assert!(err.message().is_some_and(|m| m.contains("tokio runtime")));
    }

    // rule: UDP-MCAST-08
    #[tokio::test]
    async fn test_inside_runtime_network_is_real() {
        let net = network(Policy::allow_all()).expect("inside a runtime");
        assert_eq!(net.backend_kind(), BackendKind::Real);
        let net = network_with_multicast_interface(Policy::allow_all(), Some([127, 0, 0, 1].into()))
            .expect("inside a runtime");
        assert_eq!(net.multicast_interface(), Some(IpAddr::from([127, 0, 0, 1])));
    }
}

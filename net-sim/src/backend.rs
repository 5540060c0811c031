//! [`SimBackend`]: `tcpudp`'s [`Backend`] on one turmoil host.

use std::future::ready;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tcpudp::backend::{
    Backend, BackendKind, BoxFuture, ListenerTransport, TcpTransport, UdpBind, UdpTransport,
};
use tcpudp_core::address::HostName;
use tcpudp_core::options::SocketConfig;
use tcpudp_core::{Cause, SocketError};

use crate::host::{invalid_access, not_supported, poll_now, sim_guard, HostCtx};

/// The simulated network as one turmoil host sees it.
///
/// Make it inside the host's software (`sim.host(..)` / `sim.client(..)`): it captures that host's
/// tokio runtime, on which socket drivers run ([`runtime`](Backend::runtime)), and names the host it
/// acts for, because turmoil cannot tell code which host it runs on. Most users call
/// [`network`](crate::network) instead.
#[derive(Debug)]
pub struct SimBackend {
    host: Arc<HostCtx>,
    runtime: tokio::runtime::Handle,
}

impl SimBackend {
    /// The backend of host `host_name`, which must be the turmoil host this code runs on.
    ///
    /// It joins the state of the simulation running on this thread (link table, adapter
    /// tables, trace): the [`Simulation`](crate::Simulation) harness's, or, in a plain
    /// `turmoil::Sim`, a fallback shared by that simulation's hosts.
    ///
    /// # Errors
    ///
    /// - `NotSupportedError` outside a turmoil simulation, between simulation steps (no host is
    ///   running), or without a tokio runtime. turmoil's own functions panic there; this never
    ///   does.
    /// - `InvalidAccessError` when turmoil's DNS does not know `host_name` (looked up without
    ///   registering it, unlike `turmoil::lookup`).
    ///
    /// turmoil 0.7.2 offers no way to learn which host is running without sending a packet, so a
    /// name that belongs to *another* host of the same simulation is not detected: I/O would then
    /// act for the running host while `probe_local`/`route` answer for the named one.
    pub fn new(host_name: &str) -> Result<SimBackend, SocketError> {
        if !turmoil::in_simulation() {
            return Err(not_supported(format!(
                "tcpudp_net_sim::network({host_name:?}) must be called inside a turmoil simulation"
            )));
        }
        // `sim_elapsed` is `None` when no host is running (turmoil's `elapsed` would panic).
        if turmoil::sim_elapsed().is_none() {
            return Err(not_supported(format!(
                "tcpudp_net_sim::network({host_name:?}) must be called from a host's software"
            )));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            not_supported(format!("tcpudp_net_sim::network({host_name:?}) needs the host's tokio runtime"))
        })?;
        let ip = lookup(host_name)
            .ok_or_else(|| invalid_access(format!("the simulation has no host named {host_name:?}")))?;
        let net = crate::net::current();
        net.lock().ensure_host(ip, host_name);
        let host = HostCtx {
            name: host_name.to_owned(),
            ip,
            net,
            runtime: runtime.clone(),
            last_host: Mutex::new(None),
        };
        Ok(SimBackend { host: Arc::new(host), runtime })
    }

    /// The host name this backend acts for.
    pub fn host_name(&self) -> &str {
        &self.host.name
    }

    /// The host's address (its family is the simulation's).
    pub fn host_ip(&self) -> IpAddr {
        self.host.ip
    }
}

impl Backend for SimBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Sim
    }

    /// The host's runtime (captured when the backend was made), so drivers run only while turmoil
    /// runs this host, with this host current.
    fn runtime(&self) -> tokio::runtime::Handle {
        self.runtime.clone()
    }

    /// The host's address, loopback of its family and the wildcards of its family.
    fn probe_local(&self, ip: IpAddr) -> Result<(), Cause> {
        if self.host.same_family(ip) && (ip == self.host.ip || ip.is_loopback() || ip.is_unspecified()) {
            Ok(())
        } else {
            Err(Cause::Unreachable)
        }
    }

    /// Loopback (and the wildcard, which means this host) from loopback; every other address of
    /// the simulation's family from the host's address; nothing for the other family.
    fn route(&self, remote: IpAddr) -> Option<IpAddr> {
        if !self.host.same_family(remote) {
            None
        } else if remote.is_loopback() || remote.is_unspecified() {
            Some(self.host.loopback())
        } else {
            Some(self.host.ip)
        }
    }

    /// turmoil's DNS, read without registering the name (`turmoil::lookup` would give an unknown
    /// name a fresh address). `localhost` is loopback of the simulation's family. Answers at
    /// once: resolution takes no simulated time.
    fn resolve(&self, name: &HostName) -> BoxFuture<'static, Result<Vec<IpAddr>, Cause>> {
        let text = name.as_str();
        let result = if text.eq_ignore_ascii_case("localhost") {
            Ok(vec![self.host.loopback()])
        } else if let Err(cause) = sim_guard() {
            Err(cause)
        } else {
            lookup(text).map(|ip| vec![ip]).ok_or(Cause::HostNotFound)
        };
        Box::pin(ready(result))
    }

    /// A connection through the adapter's TCP model (see the `tcp` module): SYNs on Linux's
    /// schedule through the link table (a partition or a silent host makes the connect wait
    /// until it times out; a full accept queue makes it wait for room), then turmoil's connect.
    /// `local` is ignored: turmoil always picks the host's address (loopback for a loopback
    /// remote) and the next ephemeral port. `config` is recorded for `diag()`.
    fn connect(
        &self,
        remote: SocketAddr,
        _local: Option<SocketAddr>,
        config: SocketConfig,
    ) -> BoxFuture<'static, Result<Box<dyn TcpTransport>, Cause>> {
        crate::tcp::connect(Arc::clone(&self.host), remote, config)
    }

    /// turmoil's `TcpListener::bind` (driven synchronously), accepted from at once into the
    /// adapter's accept queue of `backlog + 1` connections (as Linux; a connect waits while it is
    /// full). A port with a live listener cannot be bound again; one whose listener closed can,
    /// even while its connections linger.
    fn listen(
        &self,
        local: SocketAddr,
        address_reuse: bool,
        backlog: u32,
    ) -> Result<Box<dyn ListenerTransport>, Cause> {
        let listener = crate::tcp::listen(&self.host, local, address_reuse, backlog)?;
        Ok(Box::new(listener))
    }

    /// A library UDP socket: the port is bound in turmoil (shared by every library socket on
    /// it, as SO_REUSEADDR allows), datagrams between library sockets are delivered by the
    /// adapter (see the `udp` module).
    fn bind_udp(&self, bind: UdpBind) -> Result<Box<dyn UdpTransport>, Cause> {
        sim_guard()?;
        let udp = crate::udp::bind(&self.host, bind)?;
        Ok(Box::new(udp))
    }
}

/// Looks `name` up in turmoil's DNS without registering it: `net::lookup_host` (an `async fn`
/// that never awaits) reads the name table and answers `NotFound` for an unknown name, where
/// `turmoil::lookup` would hand the name the next free address. An IP literal is returned as
/// is. Tries the name as given, then lower-cased (DNS names are case-insensitive; turmoil's are
/// not). `None` outside a simulation.
fn lookup(name: &str) -> Option<IpAddr> {
    sim_guard().ok()?;
    let once = |text: &str| {
        poll_now(turmoil::net::lookup_host((text, 0)))
            .and_then(Result::ok)
            .and_then(|mut addrs| addrs.next())
            .map(|addr| addr.ip())
    };
    once(name).or_else(|| {
        let lower = name.to_ascii_lowercase();
        if lower == name {
            None
        } else {
            once(&lower)
        }
    })
}

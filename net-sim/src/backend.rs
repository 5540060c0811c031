//! [`SimBackend`]: `tcpudp`'s [`Backend`] on one turmoil host.

use std::future::ready;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tcpudp::backend::{
    cause_of, Backend, BackendKind, BoxFuture, ListenerTransport, TcpTransport, UdpBind, UdpTransport,
};
use tcpudp_core::address::HostName;
use tcpudp_core::options::SocketConfig;
use tcpudp_core::{Cause, SocketError};

use crate::host::{invalid_access, not_supported, poll_now, sim_guard, HostCtx};
use crate::tcp::{SimListener, SimTcpStream};
use crate::udp::SimUdp;

/// The simulated network as one turmoil host sees it.
///
/// Make it inside the host's software (`sim.host(..)` / `sim.client(..)`): it captures that host's
/// tokio runtime, on which [`spawn`](Backend::spawn) runs socket drivers, and names the host it
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
        Ok(SimBackend { host: Arc::new(HostCtx { name: host_name.to_owned(), ip }), runtime })
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

    /// Spawns on the host's runtime (captured when the backend was made), so the task runs only
    /// while turmoil runs this host, with this host current.
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        // The JoinHandle is not needed: drivers end on their own (detached, as tokio::spawn).
        drop(self.runtime.spawn(task));
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

    /// turmoil's `TcpStream::connect`. `local` is ignored: turmoil always picks the host's
    /// address (loopback for a loopback remote) and the next ephemeral port, and cannot bind a
    /// client to a chosen port. `config` is recorded for `diag()`; turmoil has no Nagle and no
    /// buffer sizes.
    fn connect(
        &self,
        remote: SocketAddr,
        _local: Option<SocketAddr>,
        config: SocketConfig,
    ) -> BoxFuture<'static, Result<Box<dyn TcpTransport>, Cause>> {
        let target = match self.host.connect_target(remote) {
            Ok(target) => target,
            Err(cause) => return Box::pin(ready(Err(cause))),
        };
        let host = Arc::clone(&self.host);
        Box::pin(async move {
            sim_guard()?;
            let stream = turmoil::net::TcpStream::connect(target).await.map_err(|e| cause_of(&e))?;
            Ok(Box::new(SimTcpStream::new(host, stream, config)) as Box<dyn TcpTransport>)
        })
    }

    /// turmoil's `TcpListener::bind`, driven synchronously (it never awaits).
    ///
    /// `backlog` is not applied: turmoil's backlog is the simulation's `tcp_capacity` (64 by
    /// default) and a SYN arriving at a full backlog panics the simulation. `address_reuse` is
    /// recorded; turmoil allows one TCP bind per port per host regardless.
    fn listen(
        &self,
        local: SocketAddr,
        address_reuse: bool,
        _backlog: u32,
    ) -> Result<Box<dyn ListenerTransport>, Cause> {
        sim_guard()?;
        let target = self.host.bind_target(local)?;
        let listener = poll_now(turmoil::net::TcpListener::bind(target))
            .ok_or(Cause::Other)?
            .map_err(|e| cause_of(&e))?;
        let bound = listener.local_addr().map_err(|e| cause_of(&e))?;
        let reported = self.host.reported_local(local, bound);
        Ok(Box::new(SimListener::new(Arc::clone(&self.host), listener, reported, address_reuse)))
    }

    /// turmoil's `UdpSocket::bind`, driven synchronously (it never awaits), with the multicast
    /// loop flag set; the other options are recorded.
    fn bind_udp(&self, bind: UdpBind) -> Result<Box<dyn UdpTransport>, Cause> {
        sim_guard()?;
        let target = self.host.bind_target(bind.local)?;
        let socket =
            poll_now(turmoil::net::UdpSocket::bind(target)).ok_or(Cause::Other)?.map_err(|e| cause_of(&e))?;
        let bound = socket.local_addr().map_err(|e| cause_of(&e))?;
        let reported = self.host.reported_local(bind.local, bound);
        let udp = SimUdp::new(Arc::clone(&self.host), socket, reported, bind).map_err(|e| cause_of(&e))?;
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

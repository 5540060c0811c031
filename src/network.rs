//! [`Network`]: a backend and a permission policy, chosen by value.

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tcpudp_core::address::HostName;
use tcpudp_core::checks::Checks;
use tcpudp_core::permission::{PermissionRequest, PermissionState};
use tcpudp_core::Cause;

use crate::backend::{Backend, BackendKind, BoxFuture};
use crate::drivers::Drivers;
use crate::faults::{FaultBackend, Faults};
use crate::policy::{Policy, TcpPermission, TcpServerPermission, UdpPermission};
use crate::timers::Timers;

/// At most this many driver tasks per network, however many workers the runtime has.
const MAX_DRIVER_TASKS: usize = 64;

/// A network to make sockets on: real sockets or a simulation, plus the permission policy.
///
/// Cheap to clone; `Send + Sync + 'static`. Make one with `tcpudp_net_real::network(policy)` or,
/// inside a turmoil host, `tcpudp_net_sim::network(host, policy)`.
#[derive(Clone)]
pub struct Network {
    inner: Arc<NetworkInner>,
}

struct NetworkInner {
    /// The backend behind the fault hooks (the glue calls the fault layer, never the backend).
    backend: Arc<FaultBackend>,
    /// Where socket drivers run ([`Backend::runtime`]).
    runtime: tokio::runtime::Handle,
    faults: Faults,
    policy: Policy,
    clock: Clock,
    /// Every socket's deadline, on one timer ([`Timers`]).
    timers: Arc<Timers>,
    /// The tasks that drive the TCP sockets ([`Drivers`]): one per worker of the runtime, so
    /// sockets' background work spreads over the workers as a task per socket's did.
    drivers: Box<[Arc<Drivers>]>,
    next_id: AtomicU64,
    multicast_interface: Option<IpAddr>,
    /// TLS hook (issue #7): the library context's TLS settings (AMB-44).
    tls: crate::tls::NetTls,
}

impl Drop for NetworkInner {
    /// No socket holds the network any more: its driver tasks end.
    fn drop(&mut self) {
        for drivers in &*self.drivers {
            drivers.close();
        }
    }
}

impl Network {
    /// A network over `backend` with `policy`. Backends call this; applications use the backend
    /// crates' `network(..)` functions. Must be called inside a tokio runtime (the clock's epoch is
    /// read from it).
    pub fn new(backend: impl Backend, policy: Policy) -> Network {
        Self::with_multicast_interface(backend, policy, None)
    }

    /// As [`new`](Self::new), with the multicast interface every UDP socket uses for joins, leaves
    /// and group sends unless its options name one. Tests pin it to 127.0.0.1.
    pub fn with_multicast_interface(
        backend: impl Backend,
        policy: Policy,
        interface: Option<IpAddr>,
    ) -> Network {
        let faults = Faults::default();
        let epoch = tokio::time::Instant::now();
        let runtime = backend.runtime();
        let workers = runtime.metrics().num_workers().clamp(1, MAX_DRIVER_TASKS);
        let drivers = (0..workers).map(|_| Arc::new(Drivers::new(runtime.clone()))).collect();
        Network {
            inner: Arc::new(NetworkInner {
                backend: Arc::new(FaultBackend::new(Box::new(backend), faults.clone())),
                runtime,
                faults,
                policy,
                clock: Clock { epoch },
                timers: Arc::new(Timers::new()),
                drivers,
                next_id: AtomicU64::new(1),
                multicast_interface: interface,
                tls: crate::tls::NetTls::new(epoch),
            }),
        }
    }

    /// Which kind of backend this is.
    pub fn backend_kind(&self) -> BackendKind {
        self.inner.backend.kind()
    }

    /// The permission policy.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// `navigator.udpPermission` (ENTRY-01).
    pub fn udp_permission(&self) -> UdpPermission {
        UdpPermission::new(self.clone())
    }

    /// `navigator.tcpPermission`.
    pub fn tcp_permission(&self) -> TcpPermission {
        TcpPermission::new(self.clone())
    }

    /// `navigator.tcpServerPermission`.
    pub fn tcp_server_permission(&self) -> TcpServerPermission {
        TcpServerPermission::new(self.clone())
    }

    /// The fault hooks of this network (tests), and its count of open OS or simulator sockets.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// The default multicast interface of this network's UDP sockets.
    pub fn multicast_interface(&self) -> Option<IpAddr> {
        self.inner.multicast_interface
    }

    /// TLS hook (issue #7): replaces this network's TLS context (trust roots, credentials, ALPN…)
    /// for constructor checks and handshakes from now on. Without one,
    /// [`TlsContext::default`](crate::TlsContext): the webpki roots and no server credentials.
    pub fn set_tls(&self, context: crate::TlsContext) {
        self.inner.tls.set(context);
    }

    /// This network's TLS context.
    pub fn tls_context(&self) -> crate::TlsContext {
        self.inner.tls.context()
    }

    pub(crate) fn tls(&self) -> &crate::tls::NetTls {
        &self.inner.tls
    }

    pub(crate) fn backend(&self) -> &FaultBackend {
        &self.inner.backend
    }

    /// Runs a socket driver (or another background step) on the backend's runtime. Detached:
    /// drivers end on their own and report through their socket's machine.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        drop(self.inner.runtime.spawn(task));
    }

    /// Now, as the core counts time: microseconds since this network was made, on tokio's clock
    /// (which turmoil drives in simulation).
    pub(crate) fn now(&self) -> tcpudp_core::Instant {
        self.inner.clock.now()
    }

    /// This network's clock (a copy, for tasks that outlive no socket).
    pub(crate) fn clock(&self) -> Clock {
        self.inner.clock
    }

    /// The task that drives TCP socket `id` (sockets take the tasks in turn).
    pub(crate) fn drivers(&self, id: u64) -> &Arc<Drivers> {
        let drivers = &self.inner.drivers;
        &drivers[(id % drivers.len() as u64) as usize]
    }

    /// The one timer every socket's deadline is on.
    pub(crate) fn timers(&self) -> &Arc<Timers> {
        &self.inner.timers
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn checks(&self) -> NetworkChecks<'_> {
        NetworkChecks { net: self }
    }

    pub(crate) fn resolve(&self, name: &HostName) -> BoxFuture<'static, Result<Vec<IpAddr>, Cause>> {
        self.inner.backend.resolve(name)
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").field("backend", &self.backend_kind()).finish_non_exhaustive()
    }
}

/// The constructor checks' oracle: the policy for permission, the backend for OS facts.
pub(crate) struct NetworkChecks<'a> {
    net: &'a Network,
}

impl Checks for NetworkChecks<'_> {
    fn permission(&mut self, request: &PermissionRequest) -> PermissionState {
        self.net.policy().state(request)
    }

    fn tcp_remote_permission_for_all(&mut self) -> Option<PermissionState> {
        self.net.policy().tcp_remote_state_for_all()
    }

    fn probe_local(&mut self, ip: IpAddr) -> Result<(), Cause> {
        self.net.inner.backend.probe_local(ip)
    }

    fn route(&mut self, remote: IpAddr) -> Option<IpAddr> {
        self.net.inner.backend.route(remote)
    }

    // TLS hook (issue #7): TLS is this library's own layer over any backend, so support is the
    // TLS context's (TCP-CTOR-15), and a server needs its credentials (SRV-CTOR-09).
    fn tls_client_supported(&self) -> bool {
        self.net.inner.tls.client_supported()
    }

    fn tls_server_configured(&self) -> bool {
        self.net.inner.tls.server_configured()
    }
}

/// The core's time on tokio's clock: microseconds since the network was made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    epoch: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn now(self) -> tcpudp_core::Instant {
        self.to_core(tokio::time::Instant::now())
    }

    pub(crate) fn to_core(self, at: tokio::time::Instant) -> tcpudp_core::Instant {
        let micros = at.saturating_duration_since(self.epoch).as_micros();
        tcpudp_core::Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    pub(crate) fn to_tokio(self, at: tcpudp_core::Instant) -> tokio::time::Instant {
        self.epoch + std::time::Duration::from_micros(at.as_micros())
    }
}

//! The scenario interpreter: runs a [`Scenario`] through the public API on any backend and records
//! a [`Trace`]. It is also the dynamic layer of the spec's WebIDL conversions: a chunk that is not
//! a byte array rejects `TypeError` here (GEN-07, TCP-WRITE-03, UDP-WRITE-01), since Rust's types
//! make that impossible in the typed API.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tcpudp::{
    Datagram, ReadyState, SocketError, TcpReadable, TcpServerSocket, TcpSocket, TcpWritable, UdpReadable,
    UdpSocket, UdpWritable,
};
use tokio::sync::Notify;

use crate::harness;
use crate::proxy::Proxy;
use crate::scenario::{Action, Fault, Scenario};
use crate::trace::{Observation, Trace, TraceEvent};
use crate::world::{BackendChoice, BodyResult, Ctx, World};

/// The conformance test PKI (`conformance/tls/`, test-only): a CA and a leaf for [`TEST_NAME`].
const TEST_CA: &str = include_str!("../tls/ca.pem");
const TEST_LEAF: &str = include_str!("../tls/leaf.pem");
const TEST_LEAF_KEY: &str = include_str!("../tls/leaf.key");
const TEST_NAME: &str = "tls.test";

/// Hang guard for one awaited step (simulated time in the simulator; generous on real sockets).
const STEP_LIMIT: Duration = Duration::from_secs(300);

/// Runs `scenario` on `backend`: the trace, and `Err` with the first failure.
pub fn run(scenario: &Scenario, backend: BackendChoice) -> (Trace, Result<(), String>) {
    let shared = Rc::new(Shared {
        scenario: scenario.clone(),
        cursor: RefCell::new(0),
        moved: Notify::new(),
        trace: RefCell::new(Trace::new(&scenario.name, backend.as_str(), scenario.seed)),
        failure: RefCell::new(None),
        proxy: needs_proxy(scenario, backend).then(|| Proxy::new(scenario.seed)),
    });
    if let Some(why) = unsupported_in(scenario, backend) {
        return (
            shared.trace.borrow().clone(),
            Err(format!("skip: {} cannot inject {why}", backend.as_str())),
        );
    }
    let for_world = shared.clone();
    let outcome = harness::run_with(backend, scenario.seed, move |world: &mut World| {
        for host in &for_world.scenario.hosts {
            let shared = for_world.clone();
            let me = host.clone();
            world.client(host, move |ctx| host_body(shared.clone(), me.clone(), ctx));
        }
    });
    let failure = shared.failure.borrow().clone();
    let trace = shared.trace.borrow().clone();
    match (failure, outcome) {
        (Some(f), _) => (trace, Err(f)),
        (None, Err(e)) => (trace, Err(e)),
        (None, Ok(())) => (trace, Ok(())),
    }
}

/// Whether a backend can inject `fault` (DESIGN §8 capability table).
pub fn supports(backend: BackendChoice, fault: &Fault) -> bool {
    unsupported(backend, fault).is_none()
}

/// Why a backend cannot inject `fault` (DESIGN §8 capability table), or `None` when it can. The
/// simulator injects every fault; the real harness's loopback proxy ([`crate::proxy`]) delays,
/// stalls and resets TCP and impairs UDP per datagram; the library's own hooks work everywhere.
pub fn unsupported(backend: BackendChoice, fault: &Fault) -> Option<&'static str> {
    match (backend, fault) {
        (BackendChoice::Sim, _) => None,
        (BackendChoice::Real, Fault::TcpLoss { .. }) => {
            Some("TCP loss (the proxy terminates TCP; netem is unavailable)")
        }
        (
            BackendChoice::Real,
            Fault::CrashHost { .. } | Fault::KillProcess { .. } | Fault::Restart { .. },
        ) => Some("host crashes, kills or restarts (every host shares one process)"),
        (BackendChoice::Real, _) => None,
    }
}

/// Why `backend` cannot run `scenario`'s faults, or `None`: the capability table, and on real a
/// partition while a keep-alive socket exists (the proxy's kernel answers the probes, so
/// keep-alive cannot see it).
pub fn unsupported_in(scenario: &Scenario, backend: BackendChoice) -> Option<String> {
    let faults = || {
        scenario.steps.iter().filter_map(|s| match &s.action {
            Action::Fault(f) => Some(f),
            _ => None,
        })
    };
    if let Some((fault, why)) = faults().find_map(|f| unsupported(backend, f).map(|why| (f, why))) {
        return Some(format!("{why}: {fault:?}"));
    }
    let partitions = faults().any(|f| matches!(f, Fault::Partition { .. } | Fault::PartitionOneway { .. }));
    let keep_alive = scenario.steps.iter().any(|s| match &s.action {
        Action::Connect { options, .. } => options.keep_alive != tcpudp::KeepAliveMode::Off,
        Action::Listen { options, .. } => options.accepted.keep_alive != tcpudp::KeepAliveMode::Off,
        _ => false,
    });
    (backend == BackendChoice::Real && partitions && keep_alive)
        .then(|| "a partition seen by keep-alive (the proxy's kernel answers the probes)".to_owned())
}

/// Whether `scenario` on `backend` goes through the loopback proxy: on real, when it injects
/// network faults (not the library's own hooks). Then every connect and send to a published port
/// goes through it, and fault-free scenarios keep their direct paths.
fn needs_proxy(scenario: &Scenario, backend: BackendChoice) -> bool {
    backend == BackendChoice::Real
        && scenario.steps.iter().any(|s| matches!(&s.action, Action::Fault(f) if !is_library_hook(f)))
}

/// The library's own fault hooks (the network's `faults()`), which work on every backend.
fn is_library_hook(fault: &Fault) -> bool {
    matches!(
        fault,
        Fault::DropLink { .. }
            | Fault::HoldOpen { .. }
            | Fault::ReleaseOpen { .. }
            | Fault::FailBind { .. }
            | Fault::FailConnect { .. }
            | Fault::FailConversion { .. }
    )
}

struct Shared {
    scenario: Scenario,
    cursor: RefCell<usize>,
    moved: Notify,
    trace: RefCell<Trace>,
    failure: RefCell<Option<String>>,
    /// The real harness's loopback proxy, when the scenario injects network faults on real.
    proxy: Option<Proxy>,
}

enum Sock {
    Tcp { sock: TcpSocket, reader: Option<TcpReadable>, writer: Option<TcpWritable> },
    Server(TcpServerSocket),
    Udp { sock: UdpSocket, reader: Option<UdpReadable>, writer: Option<UdpWritable> },
}

impl Sock {
    fn state(&self) -> ReadyState {
        match self {
            Sock::Tcp { sock, .. } => sock.ready_state(),
            Sock::Server(s) => s.ready_state(),
            Sock::Udp { sock, .. } => sock.ready_state(),
        }
    }
}

struct Host {
    shared: Rc<Shared>,
    me: String,
    ctx: Ctx,
    sockets: BTreeMap<String, Sock>,
    states: BTreeMap<String, ReadyState>,
}

async fn host_body(shared: Rc<Shared>, me: String, ctx: Ctx) -> BodyResult {
    let total = shared.scenario.steps.len();
    let mut host = Host {
        shared: shared.clone(),
        me: me.clone(),
        ctx,
        sockets: BTreeMap::new(),
        states: BTreeMap::new(),
    };
    for index in 0..total {
        if shared.scenario.steps[index].host != me {
            continue;
        }
        wait_for(&shared, index).await;
        if shared.failure.borrow().is_some() {
            break;
        }
        let step = shared.scenario.steps[index].clone();
        tokio::time::sleep(Duration::from_millis(step.after_ms)).await;
        let result = tokio::time::timeout(STEP_LIMIT, host.execute(&step.action)).await;
        let result = result.unwrap_or_else(|_| Err(format!("step {index} did not finish")));
        host.record_states();
        if let Err(message) = result {
            host.observe("", Observation::Failure { message: format!("step {index}: {message}") });
            shared.failure.borrow_mut().get_or_insert(format!("step {index} ({:?}): {message}", step.action));
        }
        *shared.cursor.borrow_mut() = index + 1;
        shared.moved.notify_waiters();
    }
    // Keep this host's sockets alive until every host is done.
    wait_for(&shared, total).await;
    if let Some(proxy) = &shared.proxy {
        proxy.shutdown();
    }
    Ok(())
}

async fn wait_for(shared: &Shared, index: usize) {
    loop {
        let notified = shared.moved.notified();
        let cursor = *shared.cursor.borrow();
        if cursor >= index || shared.failure.borrow().is_some() {
            return;
        }
        notified.await;
    }
}

fn outcome_text(result: &Result<(), SocketError>) -> String {
    match result {
        Ok(()) => "ok".into(),
        Err(e) => e.name().into(),
    }
}

/// The dynamic layer: only an array of byte values is a byte buffer (GEN-07).
fn bytes_of(value: &serde_json::Value) -> Result<Bytes, SocketError> {
    let items =
        value.as_array().ok_or_else(|| SocketError::type_error().with_message("chunk is not bytes"))?;
    items
        .iter()
        .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
        .ok_or_else(|| SocketError::type_error().with_message("chunk is not bytes"))
}

impl Host {
    fn observe(&self, socket: &str, what: Observation) {
        let at_micros = match self.ctx.backend() {
            BackendChoice::Sim => turmoil::sim_elapsed().map_or(0, |d| d.as_micros() as u64),
            BackendChoice::Real => 0, // Wall-clock times would make real traces differ run to run.
        };
        self.shared.trace.borrow_mut().events.push(TraceEvent {
            at_micros,
            host: self.me.clone(),
            socket: socket.into(),
            what,
        });
    }

    fn record_states(&mut self) {
        let now: Vec<(String, ReadyState)> =
            self.sockets.iter().map(|(n, s)| (n.clone(), s.state())).collect();
        for (name, state) in now {
            if self.states.get(&name) != Some(&state) {
                self.states.insert(name.clone(), state);
                self.observe(&name, Observation::State { state: state.to_string() });
            }
        }
    }

    fn tcp(
        &mut self,
        name: &str,
    ) -> Result<(&TcpSocket, &mut Option<TcpReadable>, &mut Option<TcpWritable>), String> {
        match self.sockets.get_mut(name) {
            Some(Sock::Tcp { sock, reader, writer }) => Ok((sock, reader, writer)),
            _ => Err(format!("no TCP socket {name}")),
        }
    }

    async fn execute(&mut self, action: &Action) -> Result<(), String> {
        match action {
            Action::Listen { server, options, publish, wait } => {
                let s = TcpServerSocket::new(&self.ctx.net, options.clone()).map_err(|e| e.to_string())?;
                if *wait {
                    let opened = s.opened().await;
                    self.observe(server, Observation::Opened { outcome: outcome_text(&opened) });
                    if let Some(port) = s.local_port() {
                        self.ctx.publish(publish, port);
                    }
                }
                self.sockets.insert(server.clone(), Sock::Server(s));
            }
            Action::Accept { server, socket } => {
                let Some(Sock::Server(s)) = self.sockets.get(server) else {
                    return Err(format!("no server {server}"));
                };
                let conn = s.listen().await.map_err(|e| e.to_string())?;
                self.sockets.insert(socket.clone(), Sock::Tcp { sock: conn, reader: None, writer: None });
            }
            Action::Connect { socket, to_host, port_key, options } => {
                let port = self.ctx.lookup(port_key).await;
                let port = match &self.shared.proxy {
                    Some(proxy) => proxy.tcp_port(&self.me, to_host, port).map_err(|e| e.to_string())?,
                    None => port,
                };
                let address = self.ctx.address_of(to_host);
                let sock = TcpSocket::new(&self.ctx.net, &address, port, options.clone())
                    .map_err(|e| e.to_string())?;
                self.sockets.insert(socket.clone(), Sock::Tcp { sock, reader: None, writer: None });
            }
            Action::Bind { socket, options, publish, wait } => {
                let sock = UdpSocket::new(&self.ctx.net, options.clone()).map_err(|e| e.to_string())?;
                if *wait {
                    let opened = sock.opened().await;
                    self.observe(socket, Observation::Opened { outcome: outcome_text(&opened) });
                    if let Some(port) = sock.local_port() {
                        self.ctx.publish(publish, port);
                    }
                }
                self.sockets.insert(socket.clone(), Sock::Udp { sock, reader: None, writer: None });
            }
            Action::Write { socket, data } => {
                let settled = match bytes_of(data) {
                    Err(e) => Err(e),
                    Ok(bytes) => match self.sockets.get_mut(socket) {
                        Some(Sock::Tcp { sock, writer, .. }) => {
                            let w = take_or_open(writer, || sock.writable())?;
                            w.write(bytes).await
                        }
                        Some(Sock::Udp { sock, writer, .. }) => {
                            let w = take_or_open(writer, || sock.writable())?;
                            w.write(Datagram::new(bytes)).await
                        }
                        _ => return Err(format!("no socket {socket} to write")),
                    },
                };
                self.observe(socket, Observation::WriteSettled { outcome: outcome_text(&settled) });
            }
            Action::SendTo { socket, to_host, port_key, data } => {
                let port = self.ctx.lookup(port_key).await;
                let port = match &self.shared.proxy {
                    Some(proxy) => proxy.udp_port(&self.me, to_host, port).map_err(|e| e.to_string())?,
                    None => port,
                };
                let address = self.ctx.address_of(to_host);
                let Some(Sock::Udp { sock, writer, .. }) = self.sockets.get_mut(socket) else {
                    return Err(format!("no UDP socket {socket}"));
                };
                let w = take_or_open(writer, || sock.writable())?;
                let settled = w.write(Datagram::to(Bytes::from(data.clone()), address, port)).await;
                self.observe(socket, Observation::WriteSettled { outcome: outcome_text(&settled) });
            }
            Action::Read { socket, bytes, expect } => {
                let got = self.read(socket, Some(*bytes)).await?;
                if let Some(expect) = expect {
                    if &got != expect {
                        return Err(format!("read {got:?}, expected {expect:?}"));
                    }
                }
            }
            Action::ReadToEnd { socket } => {
                self.read(socket, None).await?;
            }
            Action::HalfClose { socket } => self.tcp(socket)?.0.half_close(),
            Action::Reset { socket } => self.tcp(socket)?.0.reset(),
            Action::Close { socket } => match self.sockets.get(socket) {
                Some(Sock::Tcp { sock, .. }) => drop(sock.close()),
                Some(Sock::Server(s)) => drop(s.close()),
                Some(Sock::Udp { sock, .. }) => drop(sock.close()),
                None => return Err(format!("no socket {socket}")),
            },
            Action::AwaitOpened { socket, expect } | Action::AwaitClosed { socket, expect } => {
                let opened = matches!(action, Action::AwaitOpened { .. });
                let promise = match (self.sockets.get(socket), opened) {
                    (Some(Sock::Tcp { sock, .. }), true) => sock.opened(),
                    (Some(Sock::Tcp { sock, .. }), false) => sock.closed(),
                    (Some(Sock::Server(s)), true) => s.opened(),
                    (Some(Sock::Server(s)), false) => s.closed(),
                    (Some(Sock::Udp { sock, .. }), true) => sock.opened(),
                    (Some(Sock::Udp { sock, .. }), false) => sock.closed(),
                    (None, _) => return Err(format!("no socket {socket}")),
                };
                let outcome = outcome_text(&promise.await);
                let what = if opened {
                    Observation::Opened { outcome: outcome.clone() }
                } else {
                    Observation::Closed { outcome: outcome.clone() }
                };
                self.observe(socket, what);
                if &outcome != expect {
                    return Err(format!(
                        "{} was {outcome}, expected {expect}",
                        if opened { "opened" } else { "closed" }
                    ));
                }
            }
            Action::ExpectState { socket, state } => {
                let actual =
                    self.sockets.get(socket).map(Sock::state).ok_or(format!("no socket {socket}"))?;
                if actual.as_str() != state {
                    return Err(format!("state {actual}, expected {state}"));
                }
            }
            Action::StartTls { socket, expect, wait } => {
                let upgrade = self.tcp(socket)?.0.start_tls();
                if *wait {
                    let outcome = outcome_text(&upgrade.await);
                    if &outcome != expect {
                        return Err(format!("start_tls was {outcome}, expected {expect}"));
                    }
                } else {
                    // The upgrade settles while later steps run; a mismatch fails the run then.
                    let (shared, me) = (self.shared.clone(), self.me.clone());
                    let (socket, expect) = (socket.clone(), expect.clone());
                    tokio::task::spawn_local(async move {
                        let outcome = outcome_text(&upgrade.await);
                        if outcome != expect {
                            let message = format!("start_tls on {socket} was {outcome}, expected {expect}");
                            let what = Observation::Failure { message: message.clone() };
                            shared.trace.borrow_mut().events.push(TraceEvent {
                                at_micros: 0,
                                host: me,
                                socket,
                                what,
                            });
                            shared.failure.borrow_mut().get_or_insert(message);
                            shared.moved.notify_waiters();
                        }
                    });
                }
            }
            Action::UseTls { serve } => {
                let mut tls = tcpudp::TlsContext::builder()
                    .root_certificates_pem(TEST_CA)
                    .server_name(TEST_NAME)
                    .sim_seed(self.shared.scenario.seed);
                if *serve {
                    tls = tls.server_credentials_pem(TEST_LEAF, TEST_LEAF_KEY);
                }
                self.ctx.net.set_tls(tls.build().map_err(|e| e.to_string())?);
            }
            Action::Fault(fault) => {
                self.observe("", Observation::Fault { description: format!("{fault:?}") });
                let faults = self.ctx.net.faults();
                match fault {
                    Fault::DropLink { host }
                    | Fault::HoldOpen { host }
                    | Fault::ReleaseOpen { host }
                    | Fault::FailBind { host }
                    | Fault::FailConnect { host }
                    | Fault::FailConversion { host }
                        if host != &self.me =>
                    {
                        return Err("a library fault hook runs on its own host".into())
                    }
                    Fault::DropLink { .. } => faults.drop_link(),
                    Fault::HoldOpen { .. } => faults.hold_open(),
                    Fault::ReleaseOpen { .. } => faults.release_open(),
                    Fault::FailBind { .. } => faults.fail_bind(tcpudp::Cause::AddressInUse),
                    Fault::FailConnect { .. } => faults.fail_connect(tcpudp::Cause::Refused),
                    Fault::FailConversion { .. } => faults.fail_conversion(),
                    network => match (self.ctx.sim_faults(), &self.shared.proxy) {
                        (Some(sim), _) => sim_fault(sim, network, &self.sockets)?,
                        (None, Some(proxy)) => proxy_fault(proxy, network, &self.sockets)?,
                        (None, None) => return Err("network faults need the simulator or the proxy".into()),
                    },
                }
            }
        }
        Ok(())
    }

    async fn read(&mut self, socket: &str, want: Option<usize>) -> Result<Vec<u8>, String> {
        let mut got = Vec::new();
        let mut observations = Vec::new();
        match self.sockets.get_mut(socket) {
            Some(Sock::Tcp { sock, reader, .. }) => {
                let r = take_or_open(reader, || sock.readable())?;
                while want.is_none_or(|n| got.len() < n) {
                    match r.read().await {
                        Ok(Some(chunk)) => {
                            got.extend_from_slice(&chunk);
                            observations.push(Observation::Read { data: chunk.to_vec(), from: None });
                        }
                        Ok(None) => {
                            observations.push(Observation::ReadDone);
                            break;
                        }
                        Err(e) => {
                            observations.push(Observation::ReadError { name: e.name().into() });
                            break;
                        }
                    }
                }
            }
            Some(Sock::Udp { sock, reader, .. }) => {
                let r = take_or_open(reader, || sock.readable())?;
                match r.read().await {
                    Ok(Some(m)) => {
                        got.extend_from_slice(&m.data);
                        let mut from = format!("{}:{}", m.remote_address(), m.remote_port());
                        // Through the proxy the source is one of its sockets: show the peer's.
                        if let (Some(proxy), Ok(seen)) = (&self.shared.proxy, from.parse()) {
                            from = proxy.origin(seen).to_string();
                        }
                        let from = Some(from);
                        observations.push(Observation::Read { data: m.data.to_vec(), from });
                    }
                    Ok(None) => observations.push(Observation::ReadDone),
                    Err(e) => observations.push(Observation::ReadError { name: e.name().into() }),
                }
            }
            _ => return Err(format!("no socket {socket} to read")),
        }
        for o in observations {
            self.observe(socket, o);
        }
        Ok(got)
    }
}

/// Injects a network fault through the simulator's harness (DESIGN §7).
fn sim_fault(
    sim: &tcpudp_net_sim::SimFaults,
    fault: &Fault,
    sockets: &BTreeMap<String, Sock>,
) -> Result<(), String> {
    use tcpudp_net_sim::{TcpLoss, UdpImpairment};
    let per_mille = |n: u32| f64::from(n.min(1000)) / 1000.0;
    let result = match fault {
        Fault::Partition { a, b } => sim.partition(a, b),
        Fault::PartitionOneway { from, to } => sim.partition_oneway(from, to),
        Fault::Repair { a, b } => sim.repair(a, b),
        Fault::CrashHost { host } => sim.crash_host(host),
        Fault::KillProcess { host } => sim.kill_process(host),
        Fault::Restart { host } => sim.restart(host),
        Fault::TcpLoss { a, b, times } => sim.tcp_loss(a, b, TcpLoss::Times(*times)),
        Fault::UdpImpair { a, b, loss, duplicate, reorder } => sim.udp_impair(
            a,
            b,
            UdpImpairment {
                loss: per_mille(*loss),
                duplicate: per_mille(*duplicate),
                reorder: per_mille(*reorder),
                reorder_delay: crate::proxy::REORDER_DELAY,
                ..UdpImpairment::default()
            },
        ),
        Fault::Delay { a, b, ms } => {
            let delayed = UdpImpairment { delay: Duration::from_millis(*ms), ..UdpImpairment::default() };
            sim.udp_impair(a, b, delayed).and_then(|()| sim.udp_impair(b, a, delayed))
        }
        Fault::ResetConnection { socket } => {
            let (local, remote) = ends_of(sockets, socket)?;
            sim.reset_connection(local, remote).map(|_| ())
        }
        other => return Err(format!("not a network fault: {other:?}")),
    };
    result.map_err(|e| e.to_string())
}

/// Injects a network fault through the real harness's loopback proxy (DESIGN §8): a partition
/// stalls TCP and drops UDP, a reset closes both sides with zero linger.
fn proxy_fault(proxy: &Proxy, fault: &Fault, sockets: &BTreeMap<String, Sock>) -> Result<(), String> {
    match fault {
        Fault::Partition { a, b } => {
            proxy.set_cut(a, b, true);
            proxy.set_cut(b, a, true);
        }
        Fault::PartitionOneway { from, to } => proxy.set_cut(from, to, true),
        Fault::Repair { a, b } => {
            proxy.set_cut(a, b, false);
            proxy.set_cut(b, a, false);
        }
        Fault::UdpImpair { a, b, loss, duplicate, reorder } => {
            proxy.set_udp(a, b, *loss, *duplicate, *reorder)
        }
        Fault::Delay { a, b, ms } => {
            proxy.set_delay(a, b, Duration::from_millis(*ms));
            proxy.set_delay(b, a, Duration::from_millis(*ms));
        }
        Fault::ResetConnection { socket } => {
            let (local, remote) = ends_of(sockets, socket)?;
            if !proxy.reset(local, remote) {
                return Err(format!("no proxied connection for {socket}"));
            }
        }
        other => return Err(format!("the proxy cannot inject {other:?}")),
    }
    Ok(())
}

/// The local and remote addresses of a connected TCP socket.
fn ends_of(
    sockets: &BTreeMap<String, Sock>,
    socket: &str,
) -> Result<(std::net::SocketAddr, std::net::SocketAddr), String> {
    let Some(Sock::Tcp { sock, .. }) = sockets.get(socket) else {
        return Err(format!("no TCP socket {socket} to reset"));
    };
    let local = sock.diag().local_addr.ok_or("not connected")?;
    let remote = sock.diag().remote_addr.ok_or("not connected")?;
    Ok((local, remote))
}

/// The held stream, opened on first use (the streams lock stays with the scenario's socket).
fn take_or_open<T>(
    slot: &mut Option<T>,
    open: impl FnOnce() -> Result<T, SocketError>,
) -> Result<&mut T, String> {
    if slot.is_none() {
        *slot = Some(open().map_err(|e| e.to_string())?);
    }
    slot.as_mut().ok_or_else(|| "stream unavailable".to_string())
}

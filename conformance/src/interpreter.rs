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
    Datagram, ReadyState, SocketError, SocketPromise, TcpOptions, TcpReadable, TcpServerSocket, TcpSocket,
    TcpWritable, UdpReadable, UdpSocket, UdpWritable, WriteFuture,
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
        network: RefCell::new(None),
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
        if let Some(ms) = for_world.scenario.fixed_latency_ms {
            world.link(tcpudp_net_sim::LinkProfile::fixed(Duration::from_millis(ms)));
        }
        if let Some(policy) = for_world.scenario.policy.clone() {
            world.policy(move || policy_of(&policy));
        }
        for host in &for_world.scenario.hosts {
            let shared = for_world.clone();
            let me = host.clone();
            world.client(host, move |ctx| host_body(shared.clone(), me.clone(), ctx));
        }
    });
    let failure = shared.failure.borrow().clone();
    let mut trace = shared.trace.borrow().clone();
    if let Some(network) = shared.network.borrow().as_ref() {
        trace.events.extend(deliveries(&network.trace()));
    }
    match (failure, outcome) {
        (Some(f), _) => (trace, Err(f)),
        (None, Err(e)) => (trace, Err(e)),
        (None, Ok(())) => (trace, Ok(())),
    }
}

/// A scenario's permission policy by name (see [`Scenario::policy`]); an unknown name denies
/// everything, so a typo cannot pass silently as "allowed".
fn policy_of(name: &str) -> tcpudp::Policy {
    use tcpudp::Policy;
    match name {
        "allow_all" => Policy::allow_all(),
        "prompt:grant" | "prompt:deny" => {
            let grant = name == "prompt:grant";
            Policy::prompt(move |_| Box::pin(std::future::ready(grant)))
        }
        _ => match name.strip_prefix("allow:") {
            Some(rules) => Policy::allow_list(rules.split(',')).unwrap_or_else(|_| Policy::deny_all()),
            None => Policy::deny_all(),
        },
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

/// The datagrams the simulated network delivered to library sockets, from its own trace
/// (`udp#ID FROM>TO len=N to #S arrives T` and `udp#ID duplicate of udp#J`), as trace events
/// appended after the run, for INV-10.
fn deliveries(network: &[String]) -> Vec<TraceEvent> {
    let mut out = Vec::new();
    let mut by_id: BTreeMap<u64, (String, String, usize)> = BTreeMap::new();
    for line in network {
        let Some(rest) = line.split_once("udp#").map(|(_, r)| r) else { continue };
        let mut words = rest.split_whitespace();
        let Some(id) = words.next().and_then(|w| w.parse::<u64>().ok()) else { continue };
        let words: Vec<&str> = words.collect();
        let at_micros = line
            .split_whitespace()
            .next()
            .and_then(|t| t.trim_matches(|c: char| !c.is_ascii_digit() && c != '.').parse::<f64>().ok())
            .map_or(0, |secs| (secs * 1e6).round() as u64);
        let event = |what| TraceEvent { at_micros, host: String::new(), socket: String::new(), what };
        match words.as_slice() {
            [route, len, "to", _, rest @ ..]
                if rest.first() == Some(&"arrives") || rest.first() == Some(&"local") =>
            {
                let Some((from, to)) = route.split_once('>') else { continue };
                let Some(bytes) = len.strip_prefix("len=").and_then(|n| n.parse().ok()) else { continue };
                by_id.insert(id, (from.to_owned(), to.to_owned(), bytes));
                out.push(event(Observation::Delivered {
                    id,
                    bytes,
                    from: from.to_owned(),
                    to: to.to_owned(),
                    duplicate_of: None,
                }));
            }
            ["duplicate", "of", original] => {
                let Some(of) = original.strip_prefix("udp#").and_then(|n| n.parse().ok()) else { continue };
                let Some((from, to, bytes)) = by_id.get(&of).cloned() else { continue };
                out.push(event(Observation::Delivered { id, bytes, from, to, duplicate_of: Some(of) }));
            }
            _ => {}
        }
    }
    out
}

struct Shared {
    scenario: Scenario,
    cursor: RefCell<usize>,
    moved: Notify,
    trace: RefCell<Trace>,
    failure: RefCell<Option<String>>,
    /// The simulator's fault handle (its network trace feeds INV-10).
    network: RefCell<Option<tcpudp_net_sim::SimFaults>>,
    /// The real harness's loopback proxy, when the scenario injects network faults on real.
    proxy: Option<Proxy>,
}

enum Sock {
    Tcp { sock: TcpSocket, reader: Option<TcpReadable>, writer: Option<TcpWritable>, high_water_mark: u64 },
    Server(TcpServerSocket),
    Udp { sock: UdpSocket, reader: Option<UdpReadable>, writer: Option<UdpWritable> },
}

impl Sock {
    fn tcp(sock: TcpSocket, high_water_mark: usize) -> Sock {
        Sock::Tcp { sock, reader: None, writer: None, high_water_mark: high_water_mark as u64 }
    }

    fn state(&self) -> ReadyState {
        match self {
            Sock::Tcp { sock, .. } => sock.ready_state(),
            Sock::Server(s) => s.ready_state(),
            Sock::Udp { sock, .. } => sock.ready_state(),
        }
    }

    /// The promise `opened` (true) or `closed` (false).
    fn promise(&self, opened: bool) -> SocketPromise {
        match (self, opened) {
            (Sock::Tcp { sock, .. }, true) => sock.opened(),
            (Sock::Tcp { sock, .. }, false) => sock.closed(),
            (Sock::Server(s), true) => s.opened(),
            (Sock::Server(s), false) => s.closed(),
            (Sock::Udp { sock, .. }, true) => sock.opened(),
            (Sock::Udp { sock, .. }, false) => sock.closed(),
        }
    }
}

/// One host's interpreter state; clones share it (background observers hold one).
#[derive(Clone)]
struct Host {
    shared: Rc<Shared>,
    me: String,
    ctx: Ctx,
    sockets: Rc<RefCell<BTreeMap<String, Sock>>>,
    /// Last readyState and inbound queue recorded per socket.
    states: Rc<RefCell<BTreeMap<String, (ReadyState, u64)>>>,
    /// Writes issued per socket (their indexes).
    writes: Rc<RefCell<BTreeMap<String, u64>>>,
}

async fn host_body(shared: Rc<Shared>, me: String, ctx: Ctx) -> BodyResult {
    let total = shared.scenario.steps.len();
    if let Some(faults) = ctx.sim_faults() {
        shared.network.borrow_mut().get_or_insert_with(|| faults.clone());
    }
    let host = Host {
        shared: shared.clone(),
        me: me.clone(),
        ctx,
        sockets: Rc::default(),
        states: Rc::default(),
        writes: Rc::default(),
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
        host.record_states();
        host.observe("", Observation::Step { index });
        let result = tokio::time::timeout(STEP_LIMIT, host.execute(&step.action)).await;
        let result = result.unwrap_or_else(|_| Err(format!("step {index} did not finish")));
        host.record_states();
        match result {
            Err(message) if shared.scenario.tolerant => host.observe("", Observation::Skipped { message }),
            Err(message) => {
                host.observe("", Observation::Failure { message: format!("step {index}: {message}") });
                shared
                    .failure
                    .borrow_mut()
                    .get_or_insert(format!("step {index} ({:?}): {message}", step.action));
            }
            Ok(()) => {}
        }
        *shared.cursor.borrow_mut() = index + 1;
        shared.moved.notify_waiters();
    }
    // Keep this host's sockets alive until every host is done, then let background observers
    // see what settles.
    wait_for(&shared, total).await;
    if let Some(proxy) = &shared.proxy {
        proxy.shutdown();
    }
    if shared.scenario.settle_ms > 0 {
        tokio::time::sleep(Duration::from_millis(shared.scenario.settle_ms)).await;
        host.record_states();
    }
    host.observe("", Observation::End);
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

/// Whether `promise` has settled already (polled once, never waits).
fn settled(promise: SocketPromise) -> bool {
    let mut promise = std::pin::pin!(promise);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::future::Future::poll(promise.as_mut(), &mut cx).is_ready()
}

/// A socket event's time: simulated time in the simulator, 0 on real sockets (wall-clock times
/// would make real traces differ run to run).
fn now_micros(backend: BackendChoice) -> u64 {
    match backend {
        BackendChoice::Sim => turmoil::sim_elapsed().map_or(0, |d| d.as_micros() as u64),
        BackendChoice::Real => 0,
    }
}

impl Host {
    fn observe(&self, socket: &str, what: Observation) {
        self.shared.trace.borrow_mut().events.push(TraceEvent {
            at_micros: now_micros(self.ctx.backend()),
            host: self.me.clone(),
            socket: socket.into(),
            what,
        });
    }

    /// Records every readyState change, and for TCP sockets changes of the inbound queue.
    fn record_states(&self) {
        // (name, readyState, TCP inbound queue and its high-water mark)
        type Sample = (String, ReadyState, Option<(u64, u64)>);
        let now: Vec<Sample> = self
            .sockets
            .borrow()
            .iter()
            .map(|(n, s)| {
                let queued = match s {
                    Sock::Tcp { sock, high_water_mark, .. } => {
                        Some((sock.queued_read_bytes() as u64, *high_water_mark))
                    }
                    _ => None,
                };
                (n.clone(), s.state(), queued)
            })
            .collect();
        for (name, state, queued) in now {
            let before = self.states.borrow().get(&name).copied();
            let inbound = queued.map_or(0, |q| q.0);
            if before.map(|b| b.0) != Some(state) {
                self.observe(&name, Observation::State { state: state.to_string() });
            }
            if let Some((inbound, high_water_mark)) = queued {
                if before.map_or(0, |b| b.1) != inbound {
                    self.observe(&name, Observation::Queued { inbound, high_water_mark });
                }
            }
            self.states.borrow_mut().insert(name, (state, inbound));
        }
    }

    /// `closed` settled with `outcome`: with readyState now and whether `opened` was still
    /// unsettled (INV-03).
    fn closed_observation(&self, socket: &str, outcome: String) -> Observation {
        let opened_pending = !self.sockets.borrow().get(socket).is_some_and(|s| settled(s.promise(true)));
        Observation::Closed { outcome, state: self.state_of(socket), opened_pending }
    }

    fn state_of(&self, socket: &str) -> Option<String> {
        self.sockets.borrow().get(socket).map(|s| s.state().to_string())
    }

    fn insert(&self, name: &str, sock: Sock) {
        let kind = match sock {
            Sock::Tcp { .. } => "tcp",
            Sock::Server(_) => "server",
            Sock::Udp { .. } => "udp",
        };
        self.observe(name, Observation::Created { socket_kind: kind.into() });
        self.sockets.borrow_mut().insert(name.to_owned(), sock);
        self.record_states();
    }

    fn next_write(&self, socket: &str) -> u64 {
        let mut writes = self.writes.borrow_mut();
        let n = writes.entry(socket.to_owned()).or_insert(0);
        *n += 1;
        *n - 1
    }

    /// Awaits a write's promise (or records it in the background) with its index.
    async fn settle_write(&self, socket: &str, index: u64, future: WriteFuture, wait: bool) {
        let host = self.clone();
        let socket = socket.to_owned();
        let record = async move {
            let settled = future.await;
            host.record_states();
            host.observe(
                &socket,
                Observation::WriteSettled { outcome: outcome_text(&settled), index: Some(index) },
            );
        };
        if wait {
            record.await;
        } else {
            tokio::task::spawn_local(record);
        }
    }

    /// Observes `opened` and `closed` in the background.
    fn watch(&self, socket: &str) -> Result<(), String> {
        let (opened, closed) = {
            let sockets = self.sockets.borrow();
            let s = sockets.get(socket).ok_or(format!("no socket {socket}"))?;
            (s.promise(true), s.promise(false))
        };
        self.observe(socket, Observation::Call { what: "watch".into() });
        let host = self.clone();
        let name = socket.to_owned();
        tokio::task::spawn_local(async move {
            let outcome = outcome_text(&opened.await);
            host.record_states();
            host.observe(&name, Observation::Opened { outcome, state: host.state_of(&name) });
            host.record_endpoints(&name);
        });
        let host = self.clone();
        let name = socket.to_owned();
        tokio::task::spawn_local(async move {
            let outcome = outcome_text(&closed.await);
            host.record_states();
            host.observe(&name, host.closed_observation(&name, outcome));
        });
        Ok(())
    }

    fn record_endpoints(&self, socket: &str) {
        let endpoints = match self.sockets.borrow().get(socket) {
            Some(Sock::Tcp { sock, .. }) => {
                let diag = sock.diag();
                // Through the proxy the remote end is one of its sockets: name the peer's.
                let remote = diag.remote_addr.map(|r| match &self.shared.proxy {
                    Some(proxy) => proxy.origin(r),
                    None => r,
                });
                diag.local_addr.map(|l| (l.to_string(), remote.map(|r| r.to_string())))
            }
            // No local address asked for: bound to the wildcard.
            Some(Sock::Udp { sock, .. }) => sock
                .local_port()
                .map(|p| (address(&sock.local_address().unwrap_or_else(|| "0.0.0.0".into()), p), None)),
            _ => None,
        };
        if let Some((local, remote)) = endpoints {
            self.observe(socket, Observation::Endpoints { local, remote });
        }
    }

    /// Reads `socket` in the background to its end, then once more.
    fn read_all(&self, socket: &str) -> Result<(), String> {
        let mut reader = self.take_reader(socket)?;
        let host = self.clone();
        let name = socket.to_owned();
        tokio::task::spawn_local(async move {
            let end = loop {
                match reader.next(&host).await {
                    Ok(Some(read)) => {
                        host.record_states();
                        host.observe(&name, read);
                    }
                    Ok(None) => break Observation::ReadDone,
                    Err(e) => break Observation::ReadError { name: e.name().into() },
                }
            };
            host.record_states();
            host.observe(&name, end);
            let again = match reader.next(&host).await {
                Ok(Some(_)) => "data".to_owned(),
                Ok(None) => "done".to_owned(),
                Err(e) => e.name().to_owned(),
            };
            host.observe(&name, Observation::ReadAfterEnd { outcome: again });
        });
        Ok(())
    }

    /// The socket's readable: the one a step already holds, or a new one.
    fn take_reader(&self, socket: &str) -> Result<Reader, String> {
        match self.sockets.borrow_mut().get_mut(socket) {
            Some(Sock::Tcp { sock, reader, .. }) => {
                Ok(Reader::Tcp(reader.take().map_or_else(|| sock.readable(), Ok).map_err(|e| e.to_string())?))
            }
            Some(Sock::Udp { sock, reader, .. }) => {
                Ok(Reader::Udp(reader.take().map_or_else(|| sock.readable(), Ok).map_err(|e| e.to_string())?))
            }
            _ => Err(format!("no socket {socket} to read")),
        }
    }

    /// Accepts every connection of `server` in the background.
    fn accept_all(&self, server: &str, prefix: &str) -> Result<(), String> {
        let s = match self.sockets.borrow().get(server) {
            Some(Sock::Server(s)) => s.clone(),
            _ => return Err(format!("no server {server}")),
        };
        let host = self.clone();
        let (server, prefix) = (server.to_owned(), prefix.to_owned());
        tokio::task::spawn_local(async move {
            // Bounded: a scenario makes few connections.
            for n in 0..64 {
                let Ok(conn) = s.listen().await else { break };
                let name = format!("{prefix}{n}");
                let hwm = TcpOptions::default().readable_high_water_mark;
                host.insert(&name, Sock::tcp(conn, hwm));
                host.observe(&name, Observation::Accepted { server: server.clone() });
                let _ = host.watch(&name);
                let _ = host.read_all(&name);
            }
        });
        Ok(())
    }

    async fn execute(&self, action: &Action) -> Result<(), String> {
        match action {
            Action::Listen { server, options, publish, wait } => {
                let s = TcpServerSocket::new(&self.ctx.net, options.clone())
                    .map_err(|e| self.ctor_error("", e))?;
                self.insert(server, Sock::Server(s.clone()));
                if *wait {
                    let opened = s.opened().await;
                    self.observe(
                        server,
                        Observation::Opened { outcome: outcome_text(&opened), state: self.state_of(server) },
                    );
                    if let Some(port) = s.local_port() {
                        self.ctx.publish(publish, port);
                    }
                }
            }
            Action::Accept { server, socket } => {
                let s = match self.sockets.borrow().get(server) {
                    Some(Sock::Server(s)) => s.clone(),
                    _ => return Err(format!("no server {server}")),
                };
                let conn = s.listen().await.map_err(|e| e.to_string())?;
                let hwm = TcpOptions::default().readable_high_water_mark;
                self.insert(socket, Sock::tcp(conn, hwm));
                self.observe(socket, Observation::Accepted { server: server.clone() });
            }
            Action::Connect { socket, to_host, port_key, options } => {
                let port = self.ctx.lookup(port_key).await;
                let port = match &self.shared.proxy {
                    Some(proxy) => proxy.tcp_port(&self.me, to_host, port).map_err(|e| e.to_string())?,
                    None => port,
                };
                let address = self.ctx.address_of(to_host);
                let target = format!("tcp:{to_host}:{port_key}");
                let sock = match TcpSocket::new(&self.ctx.net, &address, port, options.clone()) {
                    Ok(sock) => sock,
                    Err(e) => {
                        let what =
                            Observation::ConstructorError { name: e.name().into(), target: Some(target) };
                        self.observe(socket, what);
                        return Err(e.to_string());
                    }
                };
                self.observe(socket, Observation::Constructed { target });
                self.insert(socket, Sock::tcp(sock, options.readable_high_water_mark));
            }
            Action::Bind { socket, options, publish, wait } => {
                let sock =
                    UdpSocket::new(&self.ctx.net, options.clone()).map_err(|e| self.ctor_error(socket, e))?;
                self.insert(socket, Sock::Udp { sock: sock.clone(), reader: None, writer: None });
                if *wait {
                    let opened = sock.opened().await;
                    self.observe(
                        socket,
                        Observation::Opened { outcome: outcome_text(&opened), state: self.state_of(socket) },
                    );
                    self.record_endpoints(socket);
                    if let Some(port) = sock.local_port() {
                        self.ctx.publish(publish, port);
                    }
                }
            }
            Action::Write { socket, data, wait } => {
                let bytes = match bytes_of(data) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        self.observe(
                            socket,
                            Observation::WriteSettled { outcome: e.name().into(), index: None },
                        );
                        return Ok(());
                    }
                };
                let data = bytes.to_vec();
                let future = {
                    let mut sockets = self.sockets.borrow_mut();
                    match sockets.get_mut(socket) {
                        Some(Sock::Tcp { sock, writer, .. }) => {
                            take_or_open(writer, || sock.writable())?.write(bytes)
                        }
                        Some(Sock::Udp { sock, writer, .. }) => {
                            take_or_open(writer, || sock.writable())?.write(Datagram::new(bytes))
                        }
                        _ => return Err(format!("no socket {socket} to write")),
                    }
                };
                let index = self.next_write(socket);
                self.observe(socket, Observation::WriteIssued { index, data, to: None });
                self.settle_write(socket, index, future, *wait).await;
            }
            Action::SendTo { socket, to_host, port_key, data, wait } => {
                let port = self.ctx.lookup(port_key).await;
                let address = self.ctx.address_of(to_host);
                // The trace names the destination, not the proxy in front of it.
                let to = Some(self::address(&address, port));
                let port = match &self.shared.proxy {
                    Some(proxy) => proxy.udp_port(&self.me, to_host, port).map_err(|e| e.to_string())?,
                    None => port,
                };
                let future = {
                    let mut sockets = self.sockets.borrow_mut();
                    let Some(Sock::Udp { sock, writer, .. }) = sockets.get_mut(socket) else {
                        return Err(format!("no UDP socket {socket}"));
                    };
                    let w = take_or_open(writer, || sock.writable())?;
                    w.write(Datagram::to(Bytes::from(data.clone()), address, port))
                };
                let index = self.next_write(socket);
                self.observe(socket, Observation::WriteIssued { index, data: data.clone(), to });
                self.settle_write(socket, index, future, *wait).await;
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
            Action::ReadAll { socket } => self.read_all(socket)?,
            Action::Watch { socket } => self.watch(socket)?,
            Action::AcceptAll { server, prefix } => self.accept_all(server, prefix)?,
            Action::HalfClose { socket } | Action::Reset { socket } => {
                let half = matches!(action, Action::HalfClose { .. });
                let sock = match self.sockets.borrow().get(socket) {
                    Some(Sock::Tcp { sock, .. }) => sock.clone(),
                    _ => return Err(format!("no TCP socket {socket}")),
                };
                self.observe(
                    socket,
                    Observation::Call { what: if half { "half_close" } else { "reset" }.into() },
                );
                if half {
                    sock.half_close();
                } else {
                    sock.reset();
                }
            }
            Action::Close { socket } => {
                let close = match self.sockets.borrow().get(socket) {
                    Some(Sock::Tcp { sock, .. }) => sock.close(),
                    Some(Sock::Server(s)) => s.close(),
                    Some(Sock::Udp { sock, .. }) => sock.close(),
                    None => return Err(format!("no socket {socket}")),
                };
                self.observe(socket, Observation::Call { what: "close".into() });
                let host = self.clone();
                let name = socket.clone();
                tokio::task::spawn_local(async move {
                    let outcome = outcome_text(&close.await);
                    host.observe(&name, Observation::CloseSettled { outcome });
                });
            }
            Action::AwaitOpened { socket, expect } | Action::AwaitClosed { socket, expect } => {
                let opened = matches!(action, Action::AwaitOpened { .. });
                let promise = match self.sockets.borrow().get(socket) {
                    Some(s) => s.promise(opened),
                    None => return Err(format!("no socket {socket}")),
                };
                let outcome = outcome_text(&promise.await);
                self.record_states();
                let what = if opened {
                    Observation::Opened { outcome: outcome.clone(), state: self.state_of(socket) }
                } else {
                    self.closed_observation(socket, outcome.clone())
                };
                self.observe(socket, what);
                if opened && outcome == "ok" {
                    self.record_endpoints(socket);
                }
                if &outcome != expect {
                    return Err(format!(
                        "{} was {outcome}, expected {expect}",
                        if opened { "opened" } else { "closed" }
                    ));
                }
            }
            Action::Pause => {}
            Action::TcpServerPermission => {
                let outcome = self.ctx.net.tcp_server_permission().request_permission(None).await;
                let what = Observation::Permission {
                    query: "request".into(),
                    target: "tcp-server".into(),
                    outcome: outcome_text(&outcome),
                    prompts_before: 0,
                    prompts_after: 0,
                };
                self.observe("", what);
            }
            Action::TcpPermission { to_host, port_key, request } => {
                let port = self.ctx.lookup(port_key).await;
                let options = tcpudp::core_machines::permission::TcpPermissionOptions {
                    remote_address: Some(self.ctx.address_of(to_host)),
                    remote_port: Some(port),
                };
                let permission = self.ctx.net.tcp_permission();
                let prompts_before = self.ctx.net.policy().prompt_count();
                let outcome = if *request {
                    outcome_text(&permission.request_permission(Some(options)).await)
                } else {
                    match permission.has_permission(Some(options)).await {
                        Ok(state) => state.to_string(),
                        Err(e) => e.name().into(),
                    }
                };
                let prompts_after = self.ctx.net.policy().prompt_count();
                let query = if *request { "request" } else { "has" }.to_owned();
                let target = format!("tcp:{to_host}:{port_key}");
                self.observe(
                    "",
                    Observation::Permission { query, target, outcome, prompts_before, prompts_after },
                );
            }
            Action::ExpectState { socket, state } => {
                let actual = self
                    .sockets
                    .borrow()
                    .get(socket)
                    .map(Sock::state)
                    .ok_or(format!("no socket {socket}"))?;
                if actual.as_str() != state {
                    return Err(format!("state {actual}, expected {state}"));
                }
            }
            Action::StartTls { socket, expect, wait } => {
                let upgrade = match self.sockets.borrow().get(socket) {
                    Some(Sock::Tcp { sock, .. }) => sock.start_tls(),
                    _ => return Err(format!("no TCP socket {socket}")),
                };
                if *wait {
                    let outcome = outcome_text(&upgrade.await);
                    if &outcome != expect {
                        return Err(format!("start_tls was {outcome}, expected {expect}"));
                    }
                } else {
                    // The upgrade settles while later steps run; a mismatch fails the run then.
                    let host = self.clone();
                    let (socket, expect) = (socket.clone(), expect.clone());
                    tokio::task::spawn_local(async move {
                        let outcome = outcome_text(&upgrade.await);
                        if outcome != expect {
                            let message = format!("start_tls on {socket} was {outcome}, expected {expect}");
                            host.observe(&socket, Observation::Failure { message: message.clone() });
                            host.shared.failure.borrow_mut().get_or_insert(message);
                            host.shared.moved.notify_waiters();
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
                        (Some(sim), _) => sim_fault(sim, network, &self.sockets.borrow())?,
                        (None, Some(proxy)) => proxy_fault(proxy, network, &self.sockets.borrow())?,
                        (None, None) => return Err("network faults need the simulator or the proxy".into()),
                    },
                }
            }
        }
        Ok(())
    }

    /// A received datagram's source as `ip:port`; through the proxy the source is one of its
    /// sockets, so the peer's address is shown instead.
    fn udp_source(&self, m: &tcpudp::UdpMessage) -> String {
        let from = address(&m.remote_address(), m.remote_port());
        match (&self.shared.proxy, from.parse()) {
            (Some(proxy), Ok(seen)) => proxy.origin(seen).to_string(),
            _ => from,
        }
    }

    /// Records a constructor's synchronous error (INV-13) and describes it.
    fn ctor_error(&self, socket: &str, e: SocketError) -> String {
        self.observe(socket, Observation::ConstructorError { name: e.name().into(), target: None });
        e.to_string()
    }

    async fn read(&self, socket: &str, want: Option<usize>) -> Result<Vec<u8>, String> {
        let mut got = Vec::new();
        let mut observations = Vec::new();
        let mut reader = self.take_reader(socket)?;
        // TCP reads until `want` bytes arrived; UDP reads one datagram.
        let one = matches!(reader, Reader::Udp(_));
        while want.is_none_or(|n| got.len() < n) {
            match reader.next(self).await {
                Ok(Some(read)) => {
                    if let Observation::Read { data, .. } = &read {
                        got.extend_from_slice(data);
                    }
                    observations.push(read);
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
            if one {
                break;
            }
        }
        match (self.sockets.borrow_mut().get_mut(socket), reader) {
            (Some(Sock::Tcp { reader, .. }), Reader::Tcp(r)) => *reader = Some(r),
            (Some(Sock::Udp { reader, .. }), Reader::Udp(r)) => *reader = Some(r),
            _ => {}
        }
        for o in observations {
            self.observe(socket, o);
        }
        Ok(got)
    }
}

/// `ip:port` as `SocketAddr` prints it (brackets for IPv6).
fn address(ip: &str, port: u16) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{ip}:{port}"),
    }
}

/// A socket's readable, either kind.
enum Reader {
    Tcp(TcpReadable),
    Udp(UdpReadable),
}

impl Reader {
    /// The next chunk or datagram as a `Read` observation; `None` at the end.
    async fn next(&mut self, host: &Host) -> Result<Option<Observation>, SocketError> {
        Ok(match self {
            Reader::Tcp(r) => {
                r.read().await?.map(|chunk| Observation::Read { data: chunk.to_vec(), from: None })
            }
            Reader::Udp(r) => r
                .read()
                .await?
                .map(|m| Observation::Read { data: m.data.to_vec(), from: Some(host.udp_source(&m)) }),
        })
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

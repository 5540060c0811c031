//! The fault campaign (DESIGN §8): random cases run in the simulator, each with a swarm fault
//! profile (a random subset of the fault kinds), checked by the reference model
//! ([`crate::model`]); injected and *effective* faults counted (a fault is effective when the case
//! without it gives another application-visible trace); coverage goals over interesting states;
//! failures shrunk (proptest's value trees, at most [`MAX_SHRINK_TIME`]) and written as replay
//! files ([`crate::replay`]).
//!
//! A case is a proptest value drawn from [`case_strategy`] with a random generator seeded from
//! the campaign seed and the case's index, so the same `--seed` gives the same cases and the same
//! digest whatever `--jobs` is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde::{Deserialize, Serialize};
use tcpudp::{TcpOptions, TcpServerOptions, UdpOptions};

use crate::interpreter;
use crate::model::{self, Bounds, Violation};
use crate::scenario::{Action, Fault, Scenario, Step, SCENARIO_VERSION};
use crate::trace::{fnv1a, Observation, Trace};
use crate::world::BackendChoice;

/// proptest's `max_shrink_time` for a failing case (DESIGN §8).
pub const MAX_SHRINK_TIME: Duration = Duration::from_secs(60);

/// Connect and close timeouts of every socket of a case (short, so INV-02's bound fits the run).
const TIMEOUT: Duration = Duration::from_secs(2);

/// Simulated time a case runs after its last step, longer than INV-02's bound.
const SETTLE_MS: u64 = 6_000;

/// The fault kinds a swarm profile draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Both directions between client and server cut, then repaired.
    Partition,
    /// Client → server cut, then repaired.
    PartitionOneway,
    /// The client's newest connection reset on both ends.
    ResetConnection,
    /// Client → server TCP segments lost a few times in a row.
    TcpLoss,
    /// UDP datagrams lost (both directions).
    UdpLoss,
    /// UDP datagrams duplicated (both directions).
    UdpDuplicate,
    /// UDP datagrams reordered (both directions).
    UdpReorder,
    /// The client's network drops every link (library hook).
    DropLink,
    /// The client's next sockets stay "opening" for a while (library hook).
    HoldOpen,
    /// The client's next connect is refused (library hook).
    FailConnect,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Partition,
        FaultKind::PartitionOneway,
        FaultKind::ResetConnection,
        FaultKind::TcpLoss,
        FaultKind::UdpLoss,
        FaultKind::UdpDuplicate,
        FaultKind::UdpReorder,
        FaultKind::DropLink,
        FaultKind::HoldOpen,
        FaultKind::FailConnect,
    ];

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::PartitionOneway => "partition_oneway",
            FaultKind::ResetConnection => "reset_connection",
            FaultKind::TcpLoss => "tcp_loss",
            FaultKind::UdpLoss => "udp_loss",
            FaultKind::UdpDuplicate => "udp_duplicate",
            FaultKind::UdpReorder => "udp_reorder",
            FaultKind::DropLink => "drop_link",
            FaultKind::HoldOpen => "hold_open",
            FaultKind::FailConnect => "fail_connect",
        }
    }
}

/// One operation of a case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[allow(missing_docs)] // Field names say what they hold; each variant documents its meaning.
pub enum Op {
    /// A new client connection (watched, read to the end); later client operations use it.
    Connect,
    /// The client writes `len` bytes on its newest connection (not awaited).
    ClientWrite { len: usize },
    /// The server writes `len` bytes on its first accepted connection (not awaited).
    ServerWrite { len: usize },
    /// `halfClose()` on the client's newest connection.
    ClientHalfClose,
    /// `close()` on the client's newest connection.
    ClientClose,
    /// `reset()` on the client's newest connection.
    ClientReset,
    /// `close()` on the server's first accepted connection.
    ServerClose,
    /// `close()` on the listening server.
    ListenerClose,
    /// A datagram from the client's UDP socket to the server's, or back.
    Datagram { from_client: bool, len: usize },
    /// A fault of `kind`, repaired or released after the next `span` operations.
    Fault { kind: FaultKind, span: u8 },
}

/// One generated case: the fault kinds its swarm profile enabled and its operations with the
/// milliseconds before each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    /// The simulation seed.
    pub seed: u64,
    /// The swarm profile: fault kinds this case may inject.
    pub profile: Vec<FaultKind>,
    /// (milliseconds before, operation).
    pub ops: Vec<(u64, Op)>,
}

/// The strategy of cases: a swarm profile (each kind in or out with even odds), then up to 24
/// operations, faults drawn only from the profile.
pub fn case_strategy() -> impl Strategy<Value = Case> {
    (any::<u64>(), proptest::collection::vec(any::<bool>(), FaultKind::ALL.len())).prop_flat_map(
        |(seed, picks)| {
            let profile: Vec<FaultKind> =
                FaultKind::ALL.iter().zip(&picks).filter(|(_, p)| **p).map(|(k, _)| *k).collect();
            // Half the gaps are zero: operations land while sockets are still opening or closing.
            let gap = prop_oneof![Just(0u64), 1u64..400];
            let ops = proptest::collection::vec((gap, op_strategy(profile.clone())), 1..24);
            (Just(seed), Just(profile), ops).prop_map(|(seed, profile, ops)| Case { seed, profile, ops })
        },
    )
}

fn op_strategy(profile: Vec<FaultKind>) -> BoxedStrategy<Op> {
    let app = prop_oneof![
        2 => Just(Op::Connect),
        6 => (1usize..20_000).prop_map(|len| Op::ClientWrite { len }),
        4 => (1usize..20_000).prop_map(|len| Op::ServerWrite { len }),
        2 => Just(Op::ClientHalfClose),
        2 => Just(Op::ClientClose),
        1 => Just(Op::ClientReset),
        1 => Just(Op::ServerClose),
        1 => Just(Op::ListenerClose),
        4 => (any::<bool>(), 1usize..1_200).prop_map(|(from_client, len)| Op::Datagram { from_client, len }),
    ];
    if profile.is_empty() {
        return app.boxed();
    }
    let fault = (proptest::sample::select(profile), 0u8..6).prop_map(|(kind, span)| Op::Fault { kind, span });
    prop_oneof![4 => app, 1 => fault].boxed()
}

/// Draws case `index` of the campaign seeded `seed` (the same pair always gives the same case).
pub fn draw(seed: u64, index: u64) -> (Case, impl ValueTree<Value = Case>) {
    let mut runner = runner_for(seed, index);
    // The strategy has no filters: drawing cannot be rejected.
    let tree = case_strategy().new_tree(&mut runner).expect("case strategy without filters");
    (tree.current(), tree)
}

fn runner_for(seed: u64, index: u64) -> TestRunner {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&index.to_le_bytes());
    let mix = fnv1a(&bytes[..16]);
    bytes[16..24].copy_from_slice(&mix.to_le_bytes());
    TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

impl Case {
    /// The case as a scenario for the interpreter; `without` takes the faults of that kind out
    /// (as pauses of the same length, so everything else keeps its time).
    pub fn scenario(&self, without: Option<FaultKind>) -> Scenario {
        let mut b = Builder::default();
        let tcp_options =
            TcpOptions { connect_timeout: TIMEOUT, close_timeout: TIMEOUT, ..TcpOptions::default() };
        let server_options = TcpServerOptions {
            accepted: TcpOptions { close_timeout: TIMEOUT, ..TcpOptions::default() },
            ..TcpServerOptions::default()
        };
        b.step(
            0,
            "server",
            Action::Listen {
                server: "srv".into(),
                options: server_options,
                publish: "tcp".into(),
                wait: true,
            },
        );
        b.step(0, "server", Action::Watch { socket: "srv".into() });
        b.step(0, "server", Action::AcceptAll { server: "srv".into(), prefix: "s".into() });
        for (host, name) in [("server", "su"), ("client", "cu")] {
            let publish = name.to_owned();
            b.step(
                0,
                host,
                Action::Bind { socket: name.into(), options: UdpOptions::default(), publish, wait: true },
            );
            b.step(0, host, Action::Watch { socket: name.into() });
            b.step(0, host, Action::ReadAll { socket: name.into() });
        }
        let mut conns = 0;
        b.connect(&mut conns, &tcp_options);
        let mut datagrams = 0u32;
        // Faults still to end: (operations left, the step that ends it, taken out).
        let mut pending: Vec<(u8, (&'static str, Fault), bool)> = Vec::new();
        for (gap, op) in &self.ops {
            let client = format!("c{}", conns.max(1) - 1);
            match op {
                Op::Connect => {
                    b.pause(*gap);
                    b.connect(&mut conns, &tcp_options);
                }
                Op::ClientWrite { len } => b.write(*gap, "client", &client, *len),
                Op::ServerWrite { len } => b.write(*gap, "server", "s0", *len),
                Op::ClientHalfClose => b.step(*gap, "client", Action::HalfClose { socket: client }),
                Op::ClientClose => b.step(*gap, "client", Action::Close { socket: client }),
                Op::ClientReset => b.step(*gap, "client", Action::Reset { socket: client }),
                Op::ServerClose => b.step(*gap, "server", Action::Close { socket: "s0".into() }),
                Op::ListenerClose => b.step(*gap, "server", Action::Close { socket: "srv".into() }),
                Op::Datagram { from_client, len } => {
                    datagrams += 1;
                    let (host, socket, to_host, port_key) = if *from_client {
                        ("client", "cu", "server", "su")
                    } else {
                        ("server", "su", "client", "cu")
                    };
                    // Unique payloads: a counter, then filler (INV-10 matches datagrams by content).
                    let mut data = datagrams.to_be_bytes().to_vec();
                    data.extend((0..len.saturating_sub(4)).map(|i| (i % 251) as u8));
                    b.step(
                        *gap,
                        host,
                        Action::SendTo {
                            socket: socket.into(),
                            to_host: to_host.into(),
                            port_key: port_key.into(),
                            data,
                            wait: false,
                        },
                    );
                }
                Op::Fault { kind, span } => {
                    let (starts, end) = fault_steps(*kind, &client);
                    let removed = Some(*kind) == without;
                    for (i, (host, fault)) in starts.into_iter().enumerate() {
                        let after = if i == 0 { *gap } else { 0 };
                        if removed {
                            b.pause(after);
                        } else {
                            b.step(after, host, Action::Fault(fault));
                        }
                    }
                    if let Some(end) = end {
                        pending.push((*span + 1, end, removed));
                    }
                }
            }
            b.end_faults(&mut pending, false);
        }
        b.end_faults(&mut pending, true);
        Scenario {
            version: SCENARIO_VERSION,
            name: format!("campaign case {:016x}", self.seed),
            rules: Vec::new(),
            seed: self.seed,
            hosts: vec!["server".into(), "client".into()],
            steps: b.steps,
            tolerant: true,
            settle_ms: SETTLE_MS,
            fixed_latency_ms: None,
            policy: None,
        }
    }

    /// The fault kinds this case actually injects.
    pub fn injected(&self) -> Vec<FaultKind> {
        let mut kinds: Vec<FaultKind> = self
            .ops
            .iter()
            .filter_map(|(_, op)| match op {
                Op::Fault { kind, .. } => Some(*kind),
                _ => None,
            })
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }
}

/// A fault and the host whose step injects it.
type HostFault = (&'static str, Fault);

/// A fault's injection steps and, for faults that last, the step that ends it.
fn fault_steps(kind: FaultKind, client: &str) -> (Vec<HostFault>, Option<HostFault>) {
    let (c, s) = ("client".to_owned(), "server".to_owned());
    let repair = Some(("client", Fault::Repair { a: c.clone(), b: s.clone() }));
    // UDP impairments apply per direction: both are impaired, and the end clears one (the
    // impairment of the other direction ends with the case; its datagrams are few).
    let udp = |loss, duplicate, reorder| {
        vec![
            ("client", Fault::UdpImpair { a: c.clone(), b: s.clone(), loss, duplicate, reorder }),
            ("client", Fault::UdpImpair { a: s.clone(), b: c.clone(), loss, duplicate, reorder }),
        ]
    };
    let udp_off =
        Some(("client", Fault::UdpImpair { a: c.clone(), b: s.clone(), loss: 0, duplicate: 0, reorder: 0 }));
    match kind {
        FaultKind::Partition => (vec![("client", Fault::Partition { a: c.clone(), b: s.clone() })], repair),
        FaultKind::PartitionOneway => {
            (vec![("client", Fault::PartitionOneway { from: c.clone(), to: s.clone() })], repair)
        }
        FaultKind::ResetConnection => {
            (vec![("client", Fault::ResetConnection { socket: client.to_owned() })], None)
        }
        FaultKind::TcpLoss => {
            (vec![("client", Fault::TcpLoss { a: c.clone(), b: s.clone(), times: 3 })], None)
        }
        FaultKind::UdpLoss => (udp(500, 0, 0), udp_off),
        FaultKind::UdpDuplicate => (udp(0, 500, 0), udp_off),
        FaultKind::UdpReorder => (udp(0, 0, 500), udp_off),
        FaultKind::DropLink => (vec![("client", Fault::DropLink { host: c.clone() })], None),
        FaultKind::HoldOpen => (
            vec![("client", Fault::HoldOpen { host: c.clone() })],
            Some(("client", Fault::ReleaseOpen { host: c })),
        ),
        FaultKind::FailConnect => (vec![("client", Fault::FailConnect { host: c })], None),
    }
}

/// Collects a case's steps.
#[derive(Default)]
struct Builder {
    steps: Vec<Step>,
    written: usize,
}

impl Builder {
    fn step(&mut self, after_ms: u64, host: &str, action: Action) {
        self.steps.push(Step { after_ms, host: host.into(), action });
    }

    /// Ends the faults whose span is over (all of them at the end of the case).
    fn end_faults(&mut self, pending: &mut Vec<(u8, (&'static str, Fault), bool)>, all: bool) {
        for entry in pending.iter_mut() {
            entry.0 = entry.0.saturating_sub(1);
        }
        let (due, rest): (Vec<_>, Vec<_>) = pending.drain(..).partition(|p| all || p.0 == 0);
        *pending = rest;
        for (_, (host, fault), removed) in due {
            if removed {
                self.pause(0);
            } else {
                self.step(0, host, Action::Fault(fault));
            }
        }
    }

    fn pause(&mut self, after_ms: u64) {
        self.step(after_ms, "client", Action::Pause);
    }

    fn connect(&mut self, conns: &mut usize, options: &TcpOptions) {
        let socket = format!("c{conns}");
        *conns += 1;
        let action = Action::Connect {
            socket: socket.clone(),
            to_host: "server".into(),
            port_key: "tcp".into(),
            options: options.clone(),
        };
        self.step(0, "client", action);
        self.step(0, "client", Action::Watch { socket: socket.clone() });
        self.step(0, "client", Action::ReadAll { socket });
    }

    /// A TCP write of `len` bytes (a running pattern, so INV-07 notices a misplaced byte).
    fn write(&mut self, after_ms: u64, host: &str, socket: &str, len: usize) {
        let data: Vec<serde_json::Value> =
            (self.written..self.written + len).map(|i| serde_json::Value::from((i % 251) as u8)).collect();
        self.written += len;
        self.step(after_ms, host, Action::Write { socket: socket.into(), data: data.into(), wait: false });
    }
}

/// What one case gave.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// The case's index in the campaign.
    pub index: u64,
    /// The case.
    pub case: Case,
    /// The trace's digest.
    pub digest: String,
    /// The failure (interpreter error or broken invariants), if any.
    pub failure: Option<String>,
    /// Fault kinds injected.
    pub injected: Vec<FaultKind>,
    /// Fault kinds whose removal changed the trace.
    pub effective: Vec<FaultKind>,
    /// Coverage goals reached.
    pub goals: Vec<Goal>,
}

/// Interesting situations a campaign should reach (DESIGN §8's coverage goals).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Goal {
    /// A socket reached "halfclosed".
    ReachedHalfClosed,
    /// A reset (call or fault) while a socket was "closing".
    ResetWhileClosing,
    /// A partition while a socket was "opening".
    PartitionWhileOpening,
    /// A write's promise rejected.
    WriteRejected,
    /// `opened` rejected.
    OpenedRejected,
    /// `closed` rejected.
    ClosedRejected,
    /// The peer's FIN ended a readable.
    PeerFin,
    /// The network duplicated a datagram.
    DatagramDuplicated,
}

impl Goal {
    /// Every goal.
    pub const ALL: [Goal; 8] = [
        Goal::ReachedHalfClosed,
        Goal::ResetWhileClosing,
        Goal::PartitionWhileOpening,
        Goal::WriteRejected,
        Goal::OpenedRejected,
        Goal::ClosedRejected,
        Goal::PeerFin,
        Goal::DatagramDuplicated,
    ];

    /// A readable name.
    pub fn name(self) -> &'static str {
        match self {
            Goal::ReachedHalfClosed => "reached halfclosed",
            Goal::ResetWhileClosing => "a reset while closing",
            Goal::PartitionWhileOpening => "a partition while opening",
            Goal::WriteRejected => "a write rejected",
            Goal::OpenedRejected => "opened rejected",
            Goal::ClosedRejected => "closed rejected",
            Goal::PeerFin => "a readable ended by the peer's FIN",
            Goal::DatagramDuplicated => "a datagram duplicated by the network",
        }
    }
}

/// The goals `trace` reaches.
pub fn goals_of(trace: &Trace) -> Vec<Goal> {
    let mut reached = Vec::new();
    let mut states: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for e in &trace.events {
        let any_in = |states: &BTreeMap<(&str, &str), &str>, s: &str| states.values().any(|v| *v == s);
        match &e.what {
            Observation::State { state } => {
                states.insert((&e.host, &e.socket), state);
                if state == "halfclosed" {
                    reached.push(Goal::ReachedHalfClosed);
                }
            }
            Observation::Fault { description }
                if description.starts_with("ResetConnection") && any_in(&states, "closing") =>
            {
                reached.push(Goal::ResetWhileClosing);
            }
            Observation::Call { what }
                if what == "reset"
                    && states.get(&(e.host.as_str(), e.socket.as_str())) == Some(&"closing") =>
            {
                reached.push(Goal::ResetWhileClosing);
            }
            Observation::Fault { description }
                if description.starts_with("Partition") && any_in(&states, "opening") =>
            {
                reached.push(Goal::PartitionWhileOpening);
            }
            Observation::WriteSettled { outcome, .. } if outcome != "ok" => reached.push(Goal::WriteRejected),
            Observation::Opened { outcome, .. } if outcome != "ok" => reached.push(Goal::OpenedRejected),
            Observation::Closed { outcome, .. } if outcome != "ok" => reached.push(Goal::ClosedRejected),
            Observation::ReadDone => reached.push(Goal::PeerFin),
            Observation::Delivered { duplicate_of: Some(_), .. } => reached.push(Goal::DatagramDuplicated),
            _ => {}
        }
    }
    reached.sort();
    reached.dedup();
    reached
}

/// The application-visible part of a trace (faults, step markers and network deliveries left
/// out): what an effective fault must change.
fn visible(trace: &Trace) -> Vec<&crate::trace::TraceEvent> {
    trace
        .events
        .iter()
        .filter(|e| {
            !matches!(
                e.what,
                Observation::Fault { .. } | Observation::Step { .. } | Observation::Delivered { .. }
            )
        })
        .collect()
}

/// Runs one case in the simulator: its trace, and the failure if any.
pub fn run_case(case: &Case) -> (Trace, Option<String>) {
    let (trace, outcome) = interpreter::run(&case.scenario(None), BackendChoice::Sim);
    let violations = model::check(&trace, bounds());
    (trace, failure_of(outcome, &violations))
}

/// INV-02's bound for campaign cases.
pub fn bounds() -> Bounds {
    Bounds { close_within: TIMEOUT * 2 + Duration::from_secs(1) }
}

/// A run's failure: the interpreter's error, or the broken invariants.
pub fn failure_of(outcome: Result<(), String>, violations: &[Violation]) -> Option<String> {
    match (outcome, violations) {
        (Err(e), _) => Some(e),
        (Ok(()), []) => None,
        (Ok(()), v) => Some(v.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
    }
}

/// Runs case `index` of campaign `seed`, with effective-fault counting.
pub fn evaluate(seed: u64, index: u64) -> CaseResult {
    let (case, _) = draw(seed, index);
    evaluate_case(index, case)
}

fn evaluate_case(index: u64, case: Case) -> CaseResult {
    let (trace, failure) = run_case(&case);
    let injected = case.injected();
    let mut effective = Vec::new();
    if failure.is_none() {
        for kind in &injected {
            let (without, _) = interpreter::run(&case.scenario(Some(*kind)), BackendChoice::Sim);
            if visible(&without) != visible(&trace) {
                effective.push(*kind);
            }
        }
    }
    CaseResult { index, digest: trace.digest(), goals: goals_of(&trace), case, failure, injected, effective }
}

/// Shrinks failing case `index` of campaign `seed` with proptest's value tree, for at most
/// `limit`: the smallest case found that still fails, and its failure.
pub fn shrink(seed: u64, index: u64, limit: Duration) -> (Case, String) {
    let (case, mut tree) = draw(seed, index);
    let started = Instant::now();
    let mut best = (case.clone(), run_case(&case).1.unwrap_or_default());
    if !tree.simplify() {
        return best;
    }
    // Bounded by time and by a step count.
    for _ in 0..10_000 {
        if started.elapsed() > limit {
            break;
        }
        let candidate = tree.current();
        match run_case(&candidate).1 {
            Some(failure) => {
                // Flat-mapped strategies may regrow a case while simplifying its profile: keep
                // the smallest failing case seen.
                if candidate.ops.len() <= best.0.ops.len() {
                    best = (candidate, failure);
                }
                if !tree.simplify() {
                    break;
                }
            }
            None => {
                if !tree.complicate() {
                    break;
                }
            }
        }
    }
    best
}

/// A whole campaign's outcome.
#[derive(Debug, Default)]
pub struct Summary {
    /// Cases run.
    pub cases: u64,
    /// Results of failing cases.
    pub failures: Vec<CaseResult>,
    /// Per fault kind: (cases injecting it, cases where it was effective).
    pub faults: BTreeMap<FaultKind, (u64, u64)>,
    /// Per goal: cases reaching it.
    pub goals: BTreeMap<Goal, u64>,
    /// The digest of every case's trace digest, in case order.
    pub digest: String,
}

impl Summary {
    /// Problems with the campaign itself: an enabled fault kind never effective, a goal reached
    /// in under 0.5% of cases (DESIGN §8).
    pub fn shortfalls(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, (injected, effective)) in &self.faults {
            if *injected > 0 && *effective == 0 {
                out.push(format!("fault {} injected in {injected} cases, never effective", kind.name()));
            }
        }
        for goal in Goal::ALL {
            let reached = self.goals.get(&goal).copied().unwrap_or(0);
            if (reached as f64) < self.cases as f64 * 0.005 {
                out.push(format!(
                    "goal '{}' reached in {reached} of {} cases (< 0.5%)",
                    goal.name(),
                    self.cases
                ));
            }
        }
        out
    }
}

/// Runs `cases` cases of campaign `seed` on `jobs` threads, calling `progress` after each.
pub fn run(seed: u64, cases: u64, jobs: usize, progress: &(dyn Fn(&CaseResult) + Sync)) -> Summary {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<CaseResult>>> = Mutex::new(vec![None; cases as usize]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i as u64 >= cases {
                    break;
                }
                let result = evaluate(seed, i as u64);
                progress(&result);
                if let Ok(mut all) = results.lock() {
                    all[i] = Some(result);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();
    let mut summary = Summary { cases, ..Summary::default() };
    let mut digests = Vec::new();
    for r in results.into_iter().flatten() {
        digests.extend_from_slice(r.digest.as_bytes());
        for kind in &r.injected {
            let entry = summary.faults.entry(*kind).or_default();
            entry.0 += 1;
            entry.1 += u64::from(r.effective.contains(kind));
        }
        for goal in &r.goals {
            *summary.goals.entry(*goal).or_default() += 1;
        }
        if r.failure.is_some() {
            summary.failures.push(r);
        }
    }
    summary.digest = format!("{:016x}", fnv1a(&digests));
    summary
}

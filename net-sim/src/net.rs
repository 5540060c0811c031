//! [`SimNet`]: the state one simulation shares between all its hosts — hosts (crashed? which
//! incarnation?), the link-state table every adapter timer consults, the per-purpose random
//! streams, the TCP and UDP tables of the adapter, and the trace.
//!
//! One `SimNet` per simulation: the harness makes one and installs it as the thread's current
//! network while it runs; `network()` captures it. Without a harness (a plain `turmoil::Sim`),
//! hosts share a fallback `SimNet` that lives as long as something uses it, so the next plain
//! simulation on the thread starts afresh. Everything is ordered (`BTreeMap`, `Vec`): nothing
//! iterates a hash map.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::link::{DirLink, LinkProfile};
use crate::rng::{fnv1a, SimRng, FNV_BASIS};
use crate::tcp::TcpTables;
use crate::udp::UdpTables;

/// The shared state of one simulation.
pub(crate) struct SimNet {
    state: Mutex<NetState>,
    /// Made by the harness (host-level faults available), or the fallback of a plain simulation.
    harness: bool,
}

impl SimNet {
    /// A fresh network state for a simulation seeded with `seed`.
    pub(crate) fn new(seed: u64, profile: LinkProfile, harness: bool) -> SimNet {
        SimNet { state: Mutex::new(NetState::new(seed, profile)), harness }
    }

    /// The state, locked. Never held across an `.await`, never while dropping an adapter object
    /// (their `Drop` locks it too), never while calling back into user code.
    pub(crate) fn lock(&self) -> MutexGuard<'_, NetState> {
        // A panic while locked (a failing test) must not turn every later drop into a panic.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a harness runs this simulation.
    pub(crate) fn has_harness(&self) -> bool {
        self.harness
    }
}

impl std::fmt::Debug for SimNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNet").field("harness", &self.harness).finish_non_exhaustive()
    }
}

/// What the harness knows about a host.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostState {
    /// The turmoil host name.
    pub(crate) name: String,
    /// Silent: peers' segments and probes go unanswered, its own sockets say nothing.
    pub(crate) crashed: bool,
    /// Bumped by every restart: connections of an earlier incarnation get RST.
    pub(crate) incarnation: u32,
    /// A client (turmoil cannot crash or restart clients).
    pub(crate) client: bool,
    /// Its software was killed (the host stays up: connects are refused) until it restarts.
    pub(crate) killed: bool,
}

/// Host-level faults the harness applies between simulation steps (turmoil needs `&mut Sim`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostAction {
    /// Stop the host's software silently.
    Crash(IpAddr),
    /// Stop the host's software; its sockets close as a killed process's do.
    Kill(IpAddr),
    /// Start the host's software again.
    Restart(IpAddr),
}

/// The lockable part of [`SimNet`].
pub(crate) struct NetState {
    pub(crate) seed: u64,
    /// The default link profile.
    pub(crate) profile: LinkProfile,
    /// Profiles of particular host pairs (key ordered low, high).
    pub(crate) pair_profiles: BTreeMap<(IpAddr, IpAddr), LinkProfile>,
    pub(crate) hosts: BTreeMap<IpAddr, HostState>,
    /// The link-state table, per direction (from, to).
    links: BTreeMap<(IpAddr, IpAddr), DirLink>,
    rngs: BTreeMap<(&'static str, IpAddr, IpAddr), SimRng>,
    pub(crate) tcp: TcpTables,
    pub(crate) udp: UdpTables,
    /// The kept trace lines, one after another (no allocation per line).
    trace_text: String,
    /// Where each kept line ends in `trace_text`.
    trace_ends: Vec<usize>,
    /// A line past the kept ones is formatted here (for the digest only), reused.
    scratch: String,
    digest: u64,
    next_id: u64,
    /// The latest simulated time seen (for records made where turmoil cannot tell the time).
    pub(crate) last_now: Duration,
    /// The latest deadline any adapter timer has armed (simulated time).
    pub(crate) latest_deadline: Duration,
    /// Host-level faults waiting for the harness.
    pub(crate) actions: Vec<HostAction>,
}

impl NetState {
    fn new(seed: u64, profile: LinkProfile) -> NetState {
        NetState {
            seed,
            profile,
            pair_profiles: BTreeMap::new(),
            hosts: BTreeMap::new(),
            links: BTreeMap::new(),
            rngs: BTreeMap::new(),
            tcp: TcpTables::default(),
            udp: UdpTables::default(),
            trace_text: String::new(),
            trace_ends: Vec::new(),
            scratch: String::new(),
            digest: FNV_BASIS,
            next_id: 1,
            last_now: Duration::ZERO,
            latest_deadline: Duration::ZERO,
            actions: Vec::new(),
        }
    }

    /// Simulated time now: turmoil's clock when a host runs, else the last time seen.
    pub(crate) fn now(&mut self) -> Duration {
        if let Some(now) = sim_now() {
            self.last_now = self.last_now.max(now);
            now
        } else {
            self.last_now
        }
    }

    /// A fresh id (datagrams, connections, sockets): unique within this simulation.
    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Registers `ip` as a host named `name` if it is not known yet.
    pub(crate) fn ensure_host(&mut self, ip: IpAddr, name: &str) {
        self.hosts.entry(ip).or_insert_with(|| HostState { name: name.to_owned(), ..HostState::default() });
    }

    /// Whether the host at `ip` is crashed (silent).
    pub(crate) fn crashed(&self, ip: IpAddr) -> bool {
        self.hosts.get(&ip).is_some_and(|h| h.crashed)
    }

    /// Whether the software of the host at `ip` is stopping or stopped (crashed or killed): its
    /// sockets are frozen, so the library's own close-on-drop, which turmoil runs while tearing
    /// the host's runtime down, cannot act as a live process would; only the kernel model speaks.
    pub(crate) fn frozen(&self, ip: IpAddr) -> bool {
        self.hosts.get(&ip).is_some_and(|h| h.crashed || h.killed)
    }

    /// Whether the software of the host at `ip` was killed (and not restarted yet).
    pub(crate) fn killed(&self, ip: IpAddr) -> bool {
        self.hosts.get(&ip).is_some_and(|h| h.killed)
    }

    /// The incarnation of the host at `ip`.
    pub(crate) fn incarnation(&self, ip: IpAddr) -> u32 {
        self.hosts.get(&ip).map_or(0, |h| h.incarnation)
    }

    /// The state of the direction `from → to`.
    pub(crate) fn link(&self, from: IpAddr, to: IpAddr) -> DirLink {
        self.links.get(&(from, to)).copied().unwrap_or_default()
    }

    /// The state of the direction `from → to`, for changing.
    pub(crate) fn link_mut(&mut self, from: IpAddr, to: IpAddr) -> &mut DirLink {
        self.links.entry((from, to)).or_default()
    }

    /// The profile of the link between `a` and `b`.
    pub(crate) fn profile(&self, a: IpAddr, b: IpAddr) -> LinkProfile {
        self.pair_profiles.get(&ordered(a, b)).copied().unwrap_or(self.profile)
    }

    /// The random stream for `purpose` on the directed link `from → to`.
    pub(crate) fn rng(&mut self, purpose: &'static str, from: IpAddr, to: IpAddr) -> &mut SimRng {
        let seed = self.seed;
        self.rngs
            .entry((purpose, from, to))
            .or_insert_with(|| SimRng::stream(seed, purpose, &format!("{from}>{to}")))
    }

    /// Appends a line to the trace (and to its running digest). Past [`TRACE_LINES_KEPT`] lines
    /// only the digest grows.
    pub(crate) fn record(&mut self, at: Duration, text: std::fmt::Arguments<'_>) {
        let keep = self.trace_ends.len() < TRACE_LINES_KEPT;
        let (buf, start) = if keep {
            let start = self.trace_text.len();
            (&mut self.trace_text, start)
        } else {
            self.scratch.clear();
            (&mut self.scratch, 0)
        };
        let _ = write!(buf, "{:>6}.{:06} ", at.as_secs(), at.subsec_micros());
        let _ = buf.write_fmt(text);
        self.digest = fnv1a(self.digest, &buf.as_bytes()[start..]);
        self.digest = fnv1a(self.digest, b"\n");
        if keep {
            self.trace_ends.push(self.trace_text.len());
        }
    }

    /// Notes a deadline an adapter timer armed (for the harness's default duration).
    pub(crate) fn note_deadline(&mut self, at: Duration) {
        self.latest_deadline = self.latest_deadline.max(at);
    }

    /// The trace so far (the kept lines).
    pub(crate) fn trace(&self) -> Vec<String> {
        let mut start = 0;
        self.trace_ends
            .iter()
            .map(|&end| {
                let line = self.trace_text[start..end].to_owned();
                start = end;
                line
            })
            .collect()
    }

    /// The digest of the trace so far (FNV-1a over its lines).
    pub(crate) fn digest(&self) -> u64 {
        self.digest
    }
}

/// Trace lines a simulation keeps (memory stays bounded in long runs; the digest covers all).
pub const TRACE_LINES_KEPT: usize = 1 << 20;

/// The unordered key of a host pair.
pub(crate) fn ordered(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// turmoil's simulated time, when a host is running (never panics outside a simulation).
pub(crate) fn sim_now() -> Option<Duration> {
    // `sim_elapsed` is itself `None` outside a simulation (one look-up instead of two).
    turmoil::sim_elapsed()
}

thread_local! {
    /// The network of the harness running on this thread, if any.
    static CURRENT: RefCell<Option<Arc<SimNet>>> = const { RefCell::new(None) };
    /// The network plain simulations on this thread share while anything uses it.
    static FALLBACK: RefCell<Weak<SimNet>> = const { RefCell::new(Weak::new()) };
}

/// The network `network()` should join: the running harness's, else the thread's fallback.
pub(crate) fn current() -> Arc<SimNet> {
    if let Some(net) = CURRENT.with(|c| c.borrow().clone()) {
        return net;
    }
    FALLBACK.with(|f| {
        let mut slot = f.borrow_mut();
        if let Some(net) = slot.upgrade() {
            return net;
        }
        let net = Arc::new(SimNet::new(0, LinkProfile::default(), false));
        *slot = Arc::downgrade(&net);
        net
    })
}

/// The harness's network, if a harness runs on this thread.
pub(crate) fn current_harness() -> Option<Arc<SimNet>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Installs a network as the thread's current one until dropped (restoring the previous one).
pub(crate) struct CurrentGuard {
    previous: Option<Arc<SimNet>>,
}

impl CurrentGuard {
    pub(crate) fn install(net: Arc<SimNet>) -> CurrentGuard {
        let previous = CURRENT.with(|c| c.borrow_mut().replace(net));
        CurrentGuard { previous }
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

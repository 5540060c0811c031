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
use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::link::{DirLink, LinkProfile};
use crate::rng::{fnv1a, SimRng, FNV_BASIS};
use crate::tcp::{Gone, TcpTables};
use crate::trace::{Entry, TraceLog};
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
    /// Every host, by address: private, so that every change goes through
    /// [`NetState::host_mut`] or [`NetState::add_host`], which keep `maybe_stopped` right.
    hosts: BTreeMap<IpAddr, HostState>,
    /// Whether any host may be crashed or killed: set by every mutable access to a host's state
    /// (never cleared). While it is `false` no host is, and the per-datagram questions (`crashed`,
    /// `frozen`, `killed`) are answered without a look-up.
    maybe_stopped: bool,
    /// The link-state table, per direction (from, to).
    links: BTreeMap<(IpAddr, IpAddr), DirLink>,
    /// Keyed by purpose and the link's addresses as plain numbers ([`ip_key`]): searched once or
    /// more per datagram, where comparing `IpAddr`s costs several times as much. Never iterated.
    rngs: BTreeMap<(Stream, IpKey, IpKey), SimRng>,
    pub(crate) tcp: TcpTables,
    pub(crate) udp: UdpTables,
    /// The text of the kept text lines, one after another (no allocation per line).
    trace_text: String,
    /// The kept lines in order, packed: a text line's length, or a structured line.
    trace_log: TraceLog,
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
            maybe_stopped: false,
            links: BTreeMap::new(),
            rngs: BTreeMap::new(),
            tcp: TcpTables::default(),
            udp: UdpTables::default(),
            trace_text: String::new(),
            trace_log: TraceLog::default(),
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

    /// Every host the simulation knows, by address.
    pub(crate) fn hosts(&self) -> &BTreeMap<IpAddr, HostState> {
        &self.hosts
    }

    /// Registers (or replaces) the host at `ip`.
    pub(crate) fn add_host(&mut self, ip: IpAddr, host: HostState) {
        self.maybe_stopped |= host.crashed || host.killed;
        self.hosts.insert(ip, host);
    }

    /// The state of the host at `ip`, for changing (from here on, hosts may be stopped).
    pub(crate) fn host_mut(&mut self, ip: IpAddr) -> Option<&mut HostState> {
        self.maybe_stopped = true;
        self.hosts.get_mut(&ip)
    }

    /// Whether the host at `ip` is crashed (silent).
    pub(crate) fn crashed(&self, ip: IpAddr) -> bool {
        self.maybe_stopped && self.hosts.get(&ip).is_some_and(|h| h.crashed)
    }

    /// Whether the software of the host at `ip` is stopping or stopped (crashed or killed): its
    /// sockets are frozen, so the library's own close-on-drop, which turmoil runs while tearing
    /// the host's runtime down, cannot act as a live process would; only the kernel model speaks.
    pub(crate) fn frozen(&self, ip: IpAddr) -> bool {
        self.maybe_stopped && self.hosts.get(&ip).is_some_and(|h| h.crashed || h.killed)
    }

    /// Whether the software of the host at `ip` was killed (and not restarted yet).
    pub(crate) fn killed(&self, ip: IpAddr) -> bool {
        self.maybe_stopped && self.hosts.get(&ip).is_some_and(|h| h.killed)
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
        if self.pair_profiles.is_empty() {
            return self.profile; // no pair has its own (the usual case): no key to build
        }
        self.pair_profiles.get(&ordered(a, b)).copied().unwrap_or(self.profile)
    }

    /// The random stream for `purpose` on the directed link `from → to`.
    pub(crate) fn rng(&mut self, purpose: Stream, from: IpAddr, to: IpAddr) -> &mut SimRng {
        let seed = self.seed;
        self.rngs
            .entry((purpose, ip_key(from), ip_key(to)))
            .or_insert_with(|| SimRng::stream(seed, purpose.name(), &format!("{from}>{to}")))
    }

    /// Appends a line to the trace (and to its running digest). Past [`TRACE_LINES_KEPT`] lines
    /// only the digest grows. Hot lines go through [`NetState::record_line`] instead.
    pub(crate) fn record(&mut self, at: Duration, text: std::fmt::Arguments<'_>) {
        let keep = self.trace_log.len() < TRACE_LINES_KEPT;
        let (buf, start) = if keep {
            let start = self.trace_text.len();
            (&mut self.trace_text, start)
        } else {
            self.scratch.clear();
            (&mut self.scratch, 0)
        };
        let _ = write!(buf, "{} ", Stamp(at));
        let _ = buf.write_fmt(text);
        self.digest = fnv1a(self.digest, &buf.as_bytes()[start..]);
        self.digest = fnv1a(self.digest, b"\n");
        if keep {
            self.trace_log.push_text(self.trace_text.len() - start);
        }
    }

    /// Appends a structured line: the same text as `record` would keep, formatted only when the
    /// trace is read (the hot per-datagram lines would otherwise cost more than the delivery).
    /// The digest folds its fields instead of its text.
    pub(crate) fn record_line(&mut self, at: Duration, line: Line) {
        let mut h = WordHasher(self.digest);
        at.hash(&mut h);
        line.hash(&mut h);
        self.digest = h.0;
        if self.trace_log.len() < TRACE_LINES_KEPT {
            self.trace_log.push_line(at, &line);
        }
    }

    /// Notes a deadline an adapter timer armed (for the harness's default duration).
    pub(crate) fn note_deadline(&mut self, at: Duration) {
        self.latest_deadline = self.latest_deadline.max(at);
    }

    /// The trace so far (the kept lines).
    pub(crate) fn trace(&self) -> Vec<String> {
        let mut start = 0;
        self.trace_log
            .entries()
            .map(|entry| match entry {
                Entry::Text(len) => {
                    let end = start + len;
                    let line = self.trace_text.get(start..end).unwrap_or_default().to_owned();
                    start = end;
                    line
                }
                Entry::Line(at, line) => format!("{} {line}", Stamp(at)),
            })
            .collect()
    }

    /// The digest of the trace so far (FNV-1a over text lines, a word hash over structured ones).
    pub(crate) fn digest(&self) -> u64 {
        self.digest
    }
}

/// The purpose of a per-link random stream (its name is part of the stream's seed). A small key:
/// the stream table is searched once or more per datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stream {
    TcpLoss,
    UdpLoss,
    UdpDup,
    UdpJitter,
    UdpReorder,
    UdpLatency,
}

impl Stream {
    /// The stream's purpose, as `SimRng::stream` takes it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stream::TcpLoss => "tcp-loss",
            Stream::UdpLoss => "udp-loss",
            Stream::UdpDup => "udp-dup",
            Stream::UdpJitter => "udp-jitter",
            Stream::UdpReorder => "udp-reorder",
            Stream::UdpLatency => "udp-latency",
        }
    }
}

/// A hot trace line as its parts (see [`NetState::record_line`]). `Display` gives the exact text
/// the line had when it was formatted on the spot (the conformance interpreter parses it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Line {
    /// A datagram from `from` to `dest`, `len` bytes, and what became of it.
    Udp { id: u64, from: SocketAddr, dest: SocketAddr, len: usize, fate: UdpFate },
    /// A copy of datagram `of` the link duplicated.
    UdpDuplicate { id: u64, of: u64 },
    /// A datagram the receive buffer of the socket on `host:port` had no room for.
    UdpDropped { id: u64, host: IpAddr, port: u16 },
    /// TCP end `id` connected from `local` to `peer`.
    TcpConnected { id: u64, local: SocketAddr, peer: SocketAddr },
    /// TCP end `id` accepted a connection from `origin` on `local`.
    TcpAccepted { id: u64, origin: SocketAddr, local: SocketAddr },
    /// TCP end `id` went away.
    TcpReleased { id: u64, gone: Gone },
}

impl Line {
    /// The line's id: the datagram's, or the TCP end's.
    pub(crate) fn id(&self) -> u64 {
        match *self {
            Line::Udp { id, .. }
            | Line::UdpDuplicate { id, .. }
            | Line::UdpDropped { id, .. }
            | Line::TcpConnected { id, .. }
            | Line::TcpAccepted { id, .. }
            | Line::TcpReleased { id, .. } => id,
        }
    }
}

/// What became of a datagram (the tail of its [`Line::Udp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum UdpFate {
    /// Handed to library socket `to` on the same host.
    Local { to: u64 },
    /// For library socket `to`, lost to a partition or a crashed host.
    Partitioned { to: u64 },
    /// For library socket `to`, lost by the link's loss rate.
    Lost { to: u64 },
    /// For library socket `to`, arriving at `at`.
    Arrives { to: u64, at: Duration },
    /// From a plain turmoil socket, handed to the library socket on `dest`.
    FromTurmoil,
    /// From a plain turmoil socket, lost to a partition or a crashed host.
    FromTurmoilPartitioned,
    /// From a plain turmoil socket, for an address no library socket on the port has.
    FromTurmoilUnbound,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Line::Udp { id, from, dest, len, fate } => {
                // Datagrams from turmoil name the port's host and port apart (`ip:port`, no
                // brackets for IPv6), as their lines always did.
                let (ip, port) = (dest.ip(), dest.port());
                match fate {
                    UdpFate::Local { to } => write!(f, "udp#{id} {from}>{dest} len={len} to #{to} local"),
                    UdpFate::Partitioned { to } => {
                        write!(f, "udp#{id} {from}>{dest} len={len} to #{to} lost: partition")
                    }
                    UdpFate::Lost { to } => write!(f, "udp#{id} {from}>{dest} len={len} to #{to} lost"),
                    UdpFate::Arrives { to, at } => {
                        write!(f, "udp#{id} {from}>{dest} len={len} to #{to} arrives {:.6}", at.as_secs_f64())
                    }
                    UdpFate::FromTurmoil => write!(f, "udp#{id} {from}>{ip}:{port} len={len} from turmoil"),
                    UdpFate::FromTurmoilPartitioned => {
                        write!(f, "udp#{id} {from}>{ip}:{port} len={len} lost: partition")
                    }
                    UdpFate::FromTurmoilUnbound => {
                        write!(f, "udp#{id} {from}>{ip}:{port} len={len} unbound address")
                    }
                }
            }
            Line::UdpDuplicate { id, of } => write!(f, "udp#{id} duplicate of udp#{of}"),
            Line::UdpDropped { id, host, port } => {
                write!(f, "udp#{id} dropped at {host}:{port}: receive buffer full")
            }
            Line::TcpConnected { id, local, peer } => write!(f, "tcp #{id} connected {local}>{peer}"),
            Line::TcpAccepted { id, origin, local } => write!(f, "tcp #{id} accepted {origin}>{local}"),
            Line::TcpReleased { id, gone } => write!(f, "tcp #{id} released ({gone:?})"),
        }
    }
}

/// A line's time stamp: seconds, right-aligned, and microseconds.
struct Stamp(Duration);

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>6}.{:06}", self.0.as_secs(), self.0.subsec_micros())
    }
}

/// Folds a structured line into the running digest, a word at a time (FNV-1a for byte slices).
/// Deterministic: std's `Hash` of integers, addresses and durations feeds it plain values.
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a(self.0, bytes);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // One multiply per word, then a fold of the high half down so every bit of `n` reaches
        // every bit of the state over the next words.
        let h = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 29);
    }

    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as u64);
    }
}

/// Trace lines a simulation keeps (memory stays bounded in long runs; the digest covers all).
pub const TRACE_LINES_KEPT: usize = 1 << 20;

/// An address as a map key that compares cheaply: its family, then its bits (distinct addresses
/// give distinct keys).
type IpKey = (u8, u128);

/// The [`IpKey`] of `ip`.
fn ip_key(ip: IpAddr) -> IpKey {
    match ip {
        IpAddr::V4(a) => (4, u128::from(a.to_bits())),
        IpAddr::V6(a) => (6, a.to_bits()),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every structured line reads exactly as the `format!` it replaced, in both families.
    #[test]
    fn test_structured_lines_keep_their_text() {
        let at = Duration::from_micros(1_234_567);
        for (from, dest) in [
            ("10.0.0.1:5000", "10.0.0.2:9000"),
            ("[fe80::1]:5000", "[fe80::2]:9000"),
            ("[::1]:5000", "[::1]:9000"),
        ] {
            let from: SocketAddr = from.parse().unwrap();
            let dest: SocketAddr = dest.parse().unwrap();
            let (id, len, to) = (7u64, 1200usize, 3u64);
            let (ip, port) = (dest.ip(), dest.port());
            let udp = |fate| Line::Udp { id, from, dest, len, fate };
            let cases = [
                (udp(UdpFate::Local { to }), format!("udp#{id} {from}>{dest} len={len} to #{to} local")),
                (
                    udp(UdpFate::Partitioned { to }),
                    format!("udp#{id} {from}>{dest} len={len} to #{to} lost: partition"),
                ),
                (udp(UdpFate::Lost { to }), format!("udp#{id} {from}>{dest} len={len} to #{to} lost")),
                (
                    udp(UdpFate::Arrives { to, at }),
                    format!("udp#{id} {from}>{dest} len={len} to #{to} arrives {:.6}", at.as_secs_f64()),
                ),
                (udp(UdpFate::FromTurmoil), format!("udp#{id} {from}>{ip}:{port} len={len} from turmoil")),
                (
                    udp(UdpFate::FromTurmoilPartitioned),
                    format!("udp#{id} {from}>{ip}:{port} len={len} lost: partition"),
                ),
                (
                    udp(UdpFate::FromTurmoilUnbound),
                    format!("udp#{id} {from}>{ip}:{port} len={len} unbound address"),
                ),
                (Line::UdpDuplicate { id: 8, of: id }, format!("udp#8 duplicate of udp#{id}")),
                (
                    Line::UdpDropped { id, host: ip, port },
                    format!("udp#{id} dropped at {ip}:{port}: receive buffer full"),
                ),
                (
                    Line::TcpConnected { id, local: from, peer: dest },
                    format!("tcp #{id} connected {from}>{dest}"),
                ),
                (
                    Line::TcpAccepted { id, origin: from, local: dest },
                    format!("tcp #{id} accepted {from}>{dest}"),
                ),
                (Line::TcpReleased { id, gone: Gone::Closed }, format!("tcp #{id} released (Closed)")),
                (Line::TcpReleased { id, gone: Gone::Reset }, format!("tcp #{id} released (Reset)")),
                (Line::TcpReleased { id, gone: Gone::Silent }, format!("tcp #{id} released (Silent)")),
            ];
            for (line, text) in cases {
                let mut st = NetState::new(1, LinkProfile::default());
                st.record(at, format_args!("{text}"));
                st.record_line(at, line);
                let trace = st.trace();
                assert_eq!(trace[0], trace[1]);
                assert_eq!(trace[1], format!("     1.234567 {text}"));
            }
        }
    }

    /// The digest covers lines past the kept ones, and depends on every field.
    #[test]
    fn test_digest_covers_structured_lines() {
        let line = |id| Line::UdpDuplicate { id, of: 1 };
        let digest = |lines: &[Line]| {
            let mut st = NetState::new(1, LinkProfile::default());
            lines.iter().for_each(|l| st.record_line(Duration::from_millis(1), *l));
            st.digest()
        };
        assert_eq!(digest(&[line(2), line(3)]), digest(&[line(2), line(3)]));
        assert_ne!(digest(&[line(2), line(3)]), digest(&[line(3), line(2)]));
        assert_ne!(digest(&[line(2)]), digest(&[line(2), line(2)]));
        let mut st = NetState::new(1, LinkProfile::default());
        (0..TRACE_LINES_KEPT).for_each(|_| st.trace_log.push_text(0));
        let before = st.digest();
        st.record_line(Duration::ZERO, line(2));
        assert_ne!(st.digest(), before);
        assert_eq!(st.trace_log.len(), TRACE_LINES_KEPT);
    }
}

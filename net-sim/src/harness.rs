//! The simulation harness: worlds of named hosts on turmoil, with a seed, link profiles, seeded
//! random streams and the fault API (DESIGN §7). Every fault goes through [`SimFaults`], which
//! keeps the link-state table the adapter's timers consult and records each call in the trace;
//! calling turmoil's `partition`/`hold`/`crash` directly is unsupported.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::link::{LinkProfile, TcpLoss, UdpImpairment};
use crate::net::{current, current_harness, CurrentGuard, HostAction, HostState, SimNet};
use crate::rng::{stream_seed, SimRng};
use crate::tcp::SYN_GIVE_UP;

/// Simulated time the default duration adds after the latest armed timer.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// Datagrams turmoil may queue per socket in one step before the adapter's pump takes them
/// (the adapter's emulated buffer does the bounding and counts the drops).
const TURMOIL_UDP_CAPACITY: usize = 1 << 20;

/// Why a harness call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultError {
    /// No host of this simulation has this name.
    UnknownHost(String),
    /// A link fault between a host and itself: traffic inside one host never crosses a link.
    FaultOnLocalPair(String),
    /// turmoil cannot crash, kill or restart a client (only hosts).
    NotAHost(String),
    /// Host-level faults need the harness ([`Simulation`]); this is a plain turmoil simulation.
    NeedsHarness,
    /// No library socket has this connection.
    NoSuchConnection(SocketAddr, SocketAddr),
    /// A probability outside `[0, 1]`.
    InvalidProbability(String),
}

impl fmt::Display for FaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultError::UnknownHost(h) => write!(f, "no host named {h:?} in this simulation"),
            FaultError::FaultOnLocalPair(h) => {
                write!(f, "a fault between {h:?} and itself: traffic inside one host never crosses a link")
            }
            FaultError::NotAHost(h) => {
                write!(f, "{h:?} is a client: only hosts can crash, be killed or restart")
            }
            FaultError::NeedsHarness => {
                f.write_str("host-level faults need the tcpudp_net_sim::Simulation harness")
            }
            FaultError::NoSuchConnection(a, b) => {
                write!(f, "no library socket has the connection {a} <-> {b}")
            }
            FaultError::InvalidProbability(what) => write!(f, "probability out of [0, 1]: {what}"),
        }
    }
}

impl std::error::Error for FaultError {}

/// Why a simulation could not be built or run.
#[derive(Debug)]
#[non_exhaustive]
pub enum SimError {
    /// A host name is an address of the other family: turmoil worlds have one family.
    MixedFamilies {
        /// The host name (an address literal).
        host: String,
    },
    /// Two hosts (or clients) with one name.
    DuplicateHost(String),
    /// A host's or client's software failed or panicked.
    Software(String),
    /// The clients had not finished when the duration ran out.
    Timeout {
        /// Simulated time elapsed.
        elapsed: Duration,
        /// The limit.
        limit: Duration,
    },
    /// A scheduled fault failed.
    Fault(FaultError),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::MixedFamilies { host } => {
                write!(f, "host {host:?} is an address of the other family (one family per simulation)")
            }
            SimError::DuplicateHost(h) => write!(f, "two hosts named {h:?}"),
            SimError::Software(e) => write!(f, "software failed: {e}"),
            SimError::Timeout { elapsed, limit } => {
                write!(f, "clients unfinished after {elapsed:?} of simulated time (limit {limit:?})")
            }
            SimError::Fault(e) => write!(f, "fault: {e}"),
        }
    }
}

impl std::error::Error for SimError {}

impl From<FaultError> for SimError {
    fn from(e: FaultError) -> Self {
        SimError::Fault(e)
    }
}

/// The settings of a [`Simulation`].
#[derive(Clone, Debug)]
pub struct SimBuilder {
    seed: u64,
    ipv6: bool,
    link: LinkProfile,
    pairs: Vec<(String, String, LinkProfile)>,
    tick: Duration,
    duration: Option<Duration>,
}

impl SimBuilder {
    /// A simulation seeded with `seed`: IPv4, turmoil's default latency, 1 ms ticks, and the
    /// default duration (the latest timer the adapter armed, at least the 127 s connect
    /// timeout, plus [`DEFAULT_GRACE`]).
    pub fn new(seed: u64) -> SimBuilder {
        SimBuilder {
            seed,
            ipv6: false,
            link: LinkProfile::default(),
            pairs: Vec::new(),
            tick: Duration::from_millis(1),
            duration: None,
        }
    }

    /// An IPv6 world (turmoil's `fe80::/64` host addresses).
    pub fn ipv6(mut self) -> SimBuilder {
        self.ipv6 = true;
        self
    }

    /// The latency profile of every link.
    pub fn link(mut self, profile: LinkProfile) -> SimBuilder {
        self.link = profile;
        self
    }

    /// The latency profile of the link between hosts `a` and `b` (TCP: turmoil's per-link
    /// latency, which for a range keeps the global minimum; UDP: exactly this profile).
    pub fn link_between(mut self, a: &str, b: &str, profile: LinkProfile) -> SimBuilder {
        self.pairs.push((a.to_owned(), b.to_owned(), profile));
        self
    }

    /// turmoil's step. Timers fire at their exact times whatever the tick; messages between
    /// hosts are delivered on step boundaries. Long idle simulations run faster with a larger
    /// tick.
    pub fn tick(mut self, tick: Duration) -> SimBuilder {
        self.tick = tick.max(Duration::from_micros(1));
        self
    }

    /// Fails the run when the clients have not finished after this much simulated time.
    pub fn duration(mut self, limit: Duration) -> SimBuilder {
        self.duration = Some(limit);
        self
    }

    /// The simulation.
    pub fn build<'a>(self) -> Simulation<'a> {
        let mut turmoil = turmoil::Builder::new();
        turmoil
            .rng_seed(stream_seed(self.seed, "turmoil", ""))
            .tick_duration(self.tick)
            // The harness enforces its own limit; turmoil's must never fire first.
            .simulation_duration(Duration::from_secs(100 * 365 * 86_400))
            .min_message_latency(self.link.min_latency())
            .max_message_latency(self.link.max_latency())
            .udp_capacity(TURMOIL_UDP_CAPACITY);
        if self.ipv6 {
            turmoil.ip_version(turmoil::IpVersion::V6);
        }
        let net = Arc::new(SimNet::new(self.seed, self.link, true));
        Simulation {
            sim: turmoil.build(),
            faults: SimFaults { net: Arc::clone(&net) },
            net,
            ipv6: self.ipv6,
            pairs: self.pairs,
            scheduled: BTreeMap::new(),
            next_scheduled: 0,
            duration: self.duration,
            seed: self.seed,
        }
    }
}

/// A scheduled fault.
type Scheduled<'a> = Box<dyn FnOnce(&SimFaults) -> Result<(), FaultError> + 'a>;

/// A turmoil simulation run by the harness: hosts, clients, faults, and a trace.
///
/// ```
/// use std::time::Duration;
/// use tcpudp_net_sim::{LinkProfile, SimBuilder};
///
/// let mut sim = SimBuilder::new(7).link(LinkProfile::fixed(Duration::from_millis(5))).build();
/// sim.host("server", || async { std::future::pending::<turmoil::Result>().await }).unwrap();
/// sim.client("client", async {
///     let net = tcpudp_net_sim::network("client", tcpudp::Policy::allow_all())?;
///     tokio::time::sleep(Duration::from_secs(2)).await;
///     # drop(net);
///     Ok(())
/// })
/// .unwrap();
/// sim.at(Duration::from_secs(1), |faults| faults.partition("client", "server"));
/// let report = sim.run().unwrap();
/// assert!(report.trace.iter().any(|line| line.ends_with("fault partition client server")));
/// ```
pub struct Simulation<'a> {
    sim: turmoil::Sim<'a>,
    net: Arc<SimNet>,
    faults: SimFaults,
    ipv6: bool,
    pairs: Vec<(String, String, LinkProfile)>,
    scheduled: BTreeMap<(Duration, u64), Scheduled<'a>>,
    next_scheduled: u64,
    duration: Option<Duration>,
    seed: u64,
}

impl<'a> Simulation<'a> {
    /// Registers a host: `software` starts now and again after every [`SimFaults::restart`].
    /// Its code makes its network with `tcpudp_net_sim::network(name, policy)`.
    ///
    /// # Errors
    ///
    /// [`SimError::MixedFamilies`] for an address literal of the other family,
    /// [`SimError::DuplicateHost`] for a name already taken.
    pub fn host<F, Fut>(&mut self, name: &str, software: F) -> Result<IpAddr, SimError>
    where
        F: Fn() -> Fut + 'a,
        Fut: Future<Output = turmoil::Result> + 'static,
    {
        let ip = self.register(name, false)?;
        let _current = CurrentGuard::install(Arc::clone(&self.net));
        self.sim.host(ip, software);
        Ok(ip)
    }

    /// Registers a client: the simulation ends when every client's software has returned, and
    /// fails with the first client error.
    ///
    /// # Errors
    ///
    /// As [`host`](Self::host).
    pub fn client<Fut>(&mut self, name: &str, software: Fut) -> Result<IpAddr, SimError>
    where
        Fut: Future<Output = turmoil::Result> + 'static,
    {
        let ip = self.register(name, true)?;
        let _current = CurrentGuard::install(Arc::clone(&self.net));
        self.sim.client(ip, software);
        Ok(ip)
    }

    fn register(&mut self, name: &str, client: bool) -> Result<IpAddr, SimError> {
        if let Ok(literal) = name.parse::<IpAddr>() {
            if literal.is_ipv6() != self.ipv6 {
                return Err(SimError::MixedFamilies { host: name.to_owned() });
            }
        }
        let mut st = self.net.lock();
        if st.hosts().values().any(|h| h.name == name) {
            return Err(SimError::DuplicateHost(name.to_owned()));
        }
        let ip = self.sim.lookup(name);
        if st.hosts().contains_key(&ip) {
            return Err(SimError::DuplicateHost(name.to_owned()));
        }
        st.add_host(ip, HostState { name: name.to_owned(), client, ..HostState::default() });
        Ok(ip)
    }

    /// The fault controls (clonable; usable inside host software too).
    pub fn faults(&self) -> SimFaults {
        self.faults.clone()
    }

    /// Runs `action` once simulated time reaches `at` (between two steps, in the order
    /// scheduled). An error fails the run.
    pub fn at<F>(&mut self, at: Duration, action: F)
    where
        F: FnOnce(&SimFaults) -> Result<(), FaultError> + 'a,
    {
        self.scheduled.insert((at, self.next_scheduled), Box::new(action));
        self.next_scheduled += 1;
    }

    /// The address of a registered host.
    pub fn lookup(&self, name: &str) -> Option<IpAddr> {
        self.faults.host_ip(name)
    }

    /// Simulated time so far.
    pub fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    /// The random stream `(seed, purpose, object)` of this simulation.
    pub fn rng(&self, purpose: &str, object: &str) -> SimRng {
        SimRng::stream(self.seed, purpose, object)
    }

    /// The trace so far.
    pub fn trace(&self) -> Vec<String> {
        self.faults.trace()
    }

    /// Runs until every client has finished.
    ///
    /// # Errors
    ///
    /// The first software failure, a scheduled fault's error, or [`SimError::Timeout`].
    pub fn run(&mut self) -> Result<SimReport, SimError> {
        warn_without_tokio_unstable();
        let _current = CurrentGuard::install(Arc::clone(&self.net));
        self.apply_pair_profiles()?;
        loop {
            let elapsed = self.sim.elapsed();
            self.net.lock().last_now = elapsed;
            self.run_scheduled(elapsed)?;
            self.apply_actions();
            let finished = self.sim.step().map_err(|e| SimError::Software(e.to_string()))?;
            let elapsed = self.sim.elapsed();
            self.net.lock().last_now = elapsed;
            self.apply_actions();
            if finished {
                break;
            }
            let limit = self.limit();
            if elapsed > limit {
                return Err(SimError::Timeout { elapsed, limit });
            }
        }
        let st = self.net.lock();
        Ok(SimReport { trace: st.trace(), digest: st.digest(), elapsed: self.sim.elapsed() })
    }

    /// The duration limit now: the one set, else the latest armed adapter timer (at least the
    /// connect timeout) plus the grace.
    fn limit(&self) -> Duration {
        self.duration.unwrap_or_else(|| self.net.lock().latest_deadline.max(SYN_GIVE_UP) + DEFAULT_GRACE)
    }

    fn apply_pair_profiles(&mut self) -> Result<(), SimError> {
        for (a, b, profile) in std::mem::take(&mut self.pairs) {
            let ip_a = self.faults.resolve(&a)?;
            let ip_b = self.faults.resolve(&b)?;
            if ip_a == ip_b {
                return Err(FaultError::FaultOnLocalPair(a).into());
            }
            if profile.is_fixed() {
                self.sim.set_link_latency(ip_a, ip_b, profile.min_latency());
            } else {
                self.sim.set_link_max_message_latency(ip_a, ip_b, profile.max_latency());
            }
            self.net.lock().pair_profiles.insert(crate::net::ordered(ip_a, ip_b), profile);
        }
        Ok(())
    }

    fn run_scheduled(&mut self, elapsed: Duration) -> Result<(), SimError> {
        while let Some(entry) = self.scheduled.first_entry() {
            if entry.key().0 > elapsed {
                break;
            }
            let action = entry.remove();
            action(&self.faults)?;
            self.apply_actions();
        }
        Ok(())
    }

    /// Applies host-level faults (turmoil needs `&mut Sim`, so they wait for a step's end).
    /// No lock is held meanwhile: the host's sockets are dropped with its runtime, and their
    /// `Drop` takes the lock.
    fn apply_actions(&mut self) {
        let actions = std::mem::take(&mut self.net.lock().actions);
        for action in actions {
            match action {
                HostAction::Crash(ip) | HostAction::Kill(ip) => self.sim.crash(ip),
                HostAction::Restart(ip) => {
                    {
                        let mut st = self.net.lock();
                        let now = st.last_now;
                        if let Some(host) = st.host_mut(ip) {
                            if host.crashed {
                                host.crashed = false;
                                host.incarnation += 1;
                            }
                            host.killed = false;
                            let name = host.name.clone();
                            st.record(now, format_args!("host {name} restarts"));
                        }
                    }
                    self.sim.bounce(ip);
                }
            }
        }
    }
}

/// What a finished simulation leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimReport {
    /// Every recorded event, in order, with its simulated time (the first
    /// [`TRACE_LINES_KEPT`](crate::TRACE_LINES_KEPT) of them).
    pub trace: Vec<String>,
    /// FNV-1a digest of the trace: equal seeds give equal digests, run after run and process
    /// after process.
    pub digest: u64,
    /// Simulated time at the end.
    pub elapsed: Duration,
}

/// The fault API of one simulation: cheap to clone, usable from host software and from
/// [`Simulation::at`]. Every call is recorded in the trace.
#[derive(Clone, Debug)]
pub struct SimFaults {
    net: Arc<SimNet>,
}

impl SimFaults {
    /// The faults of the simulation running on this thread: the harness's, or (in a plain
    /// turmoil simulation) the adapter's fallback, which has link faults but no host faults.
    /// `None` outside any simulation.
    pub fn current() -> Option<SimFaults> {
        if let Some(net) = current_harness() {
            return Some(SimFaults { net });
        }
        turmoil::in_simulation().then(|| SimFaults { net: current() })
    }

    /// The address of host `name`.
    pub fn host_ip(&self, name: &str) -> Option<IpAddr> {
        self.net.lock().hosts().iter().find(|(_, h)| h.name == name).map(|(ip, _)| *ip)
    }

    fn resolve(&self, name: &str) -> Result<IpAddr, FaultError> {
        self.host_ip(name).ok_or_else(|| FaultError::UnknownHost(name.to_owned()))
    }

    fn pair(&self, a: &str, b: &str) -> Result<(IpAddr, IpAddr), FaultError> {
        let (ip_a, ip_b) = (self.resolve(a)?, self.resolve(b)?);
        if ip_a == ip_b {
            return Err(FaultError::FaultOnLocalPair(a.to_owned()));
        }
        Ok((ip_a, ip_b))
    }

    fn with_link(
        &self,
        from: &str,
        to: &str,
        what: fmt::Arguments<'_>,
        change: impl FnOnce(&mut crate::link::DirLink),
    ) -> Result<(), FaultError> {
        let (a, b) = self.pair(from, to)?;
        let mut st = self.net.lock();
        let now = st.now();
        change(st.link_mut(a, b));
        st.record(now, format_args!("fault {what}"));
        Ok(())
    }

    /// Both directions between `a` and `b` go down: UDP datagrams are lost, TCP segments wait
    /// (retransmitted on schedule) until [`repair`](Self::repair) or the retransmission budget,
    /// connects wait until the connect timeout, keep-alive probes go unanswered.
    ///
    /// # Errors
    ///
    /// [`FaultError::UnknownHost`], [`FaultError::FaultOnLocalPair`].
    pub fn partition(&self, a: &str, b: &str) -> Result<(), FaultError> {
        self.with_link(a, b, format_args!("partition {a} {b}"), |l| l.partitioned = true)?;
        self.with_link(b, a, format_args!("partition {b} {a}"), |l| l.partitioned = true)
    }

    /// Only `from → to` goes down (TCP data gets through when the other way is down, but its
    /// acknowledgements do not, so it is retransmitted until the budget runs out).
    ///
    /// # Errors
    ///
    /// As [`partition`](Self::partition).
    pub fn partition_oneway(&self, from: &str, to: &str) -> Result<(), FaultError> {
        self.with_link(from, to, format_args!("partition {from} {to}"), |l| l.partitioned = true)
    }

    /// Both directions between `a` and `b` come back up.
    ///
    /// # Errors
    ///
    /// As [`partition`](Self::partition).
    pub fn repair(&self, a: &str, b: &str) -> Result<(), FaultError> {
        self.with_link(a, b, format_args!("repair {a} {b}"), |l| l.partitioned = false)?;
        self.with_link(b, a, format_args!("repair {b} {a}"), |l| l.partitioned = false)
    }

    /// TCP loss on `from → to` (see [`TcpLoss`]).
    ///
    /// # Errors
    ///
    /// As [`partition`](Self::partition), and [`FaultError::InvalidProbability`].
    pub fn tcp_loss(&self, from: &str, to: &str, loss: TcpLoss) -> Result<(), FaultError> {
        if let TcpLoss::Rate(p) = loss {
            check_probability("tcp loss", p)?;
        }
        self.with_link(from, to, format_args!("tcp_loss {from} {to} {loss:?}"), |l| match loss {
            TcpLoss::None => {
                l.tcp_times = None;
                l.tcp_rate = 0.0;
            }
            TcpLoss::Times(k) => l.tcp_times = Some(k),
            TcpLoss::Rate(p) => l.tcp_rate = p,
        })
    }

    /// UDP impairments on `from → to` (replacing earlier ones; the default clears them).
    ///
    /// # Errors
    ///
    /// As [`partition`](Self::partition), and [`FaultError::InvalidProbability`].
    pub fn udp_impair(&self, from: &str, to: &str, impairment: UdpImpairment) -> Result<(), FaultError> {
        check_probability("udp loss", impairment.loss)?;
        check_probability("udp duplicate", impairment.duplicate)?;
        check_probability("udp reorder", impairment.reorder)?;
        self.with_link(from, to, format_args!("udp_impair {from} {to} {impairment:?}"), |l| {
            l.udp = impairment
        })
    }

    /// Resets the connection between `a` and `b` (the two addresses as either end reports them):
    /// each library end gets `ConnectionReset` on its next read or write. A plain turmoil peer
    /// is not reset (turmoil cannot). Returns how many library ends were reset.
    ///
    /// # Errors
    ///
    /// [`FaultError::NoSuchConnection`] when no library socket has it.
    pub fn reset_connection(&self, a: SocketAddr, b: SocketAddr) -> Result<usize, FaultError> {
        {
            let mut st = self.net.lock();
            let now = st.now();
            st.record(now, format_args!("fault reset_connection {a} {b}"));
        }
        match crate::tcp::reset_connection(&self.net, a, b) {
            0 => Err(FaultError::NoSuchConnection(a, b)),
            n => Ok(n),
        }
    }

    fn host_action(
        &self,
        host: &str,
        verb: &str,
        make: fn(IpAddr) -> HostAction,
    ) -> Result<IpAddr, FaultError> {
        if !self.net.has_harness() {
            return Err(FaultError::NeedsHarness);
        }
        let ip = self.resolve(host)?;
        let mut st = self.net.lock();
        if st.hosts().get(&ip).is_some_and(|h| h.client) {
            return Err(FaultError::NotAHost(host.to_owned()));
        }
        let now = st.now();
        st.record(now, format_args!("fault {verb} {host}"));
        st.actions.push(make(ip));
        Ok(ip)
    }

    /// The host goes silent at once: its software stops (at the end of the current step), its
    /// sockets send nothing (no FIN, no RST), peers' segments and probes go unanswered and end
    /// in `TimedOut`. After [`restart`](Self::restart), the next segment a peer sends on an old
    /// connection is answered with RST.
    ///
    /// # Errors
    ///
    /// [`FaultError::UnknownHost`], [`FaultError::NotAHost`], [`FaultError::NeedsHarness`].
    pub fn crash_host(&self, host: &str) -> Result<(), FaultError> {
        let ip = self.host_action(host, "crash_host", HostAction::Crash)?;
        if let Some(h) = self.net.lock().host_mut(ip) {
            h.crashed = true;
        }
        Ok(())
    }

    /// The host's software is killed (at the end of the current step), its kernel stays up:
    /// each connection closes with FIN, or RST where unread data was held; connects to it are
    /// refused until [`restart`](Self::restart).
    ///
    /// # Errors
    ///
    /// As [`crash_host`](Self::crash_host).
    pub fn kill_process(&self, host: &str) -> Result<(), FaultError> {
        let ip = self.host_action(host, "kill_process", HostAction::Kill)?;
        if let Some(h) = self.net.lock().host_mut(ip) {
            h.killed = true;
        }
        Ok(())
    }

    /// Starts the host's software again (after a crash, a kill, or while running: then the
    /// running software is killed first).
    ///
    /// # Errors
    ///
    /// As [`crash_host`](Self::crash_host).
    pub fn restart(&self, host: &str) -> Result<(), FaultError> {
        let ip = self.host_action(host, "restart", HostAction::Restart)?;
        if let Some(h) = self.net.lock().host_mut(ip) {
            // Running software is killed first: frozen like a kill until it starts again.
            h.killed |= !h.crashed;
        }
        Ok(())
    }

    /// Appends an application event to the trace (it then counts in the digest).
    pub fn record(&self, event: impl fmt::Display) {
        let mut st = self.net.lock();
        let now = st.now();
        st.record(now, format_args!("note {event}"));
    }

    /// The trace so far.
    pub fn trace(&self) -> Vec<String> {
        self.net.lock().trace()
    }

    /// The digest of the trace so far.
    pub fn digest(&self) -> u64 {
        self.net.lock().digest()
    }

    /// The random stream `(seed, purpose, object)` of this simulation.
    pub fn rng(&self, purpose: &str, object: &str) -> SimRng {
        SimRng::stream(self.net.lock().seed, purpose, object)
    }
}

fn check_probability(what: &str, p: f64) -> Result<(), FaultError> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(FaultError::InvalidProbability(format!("{what} {p}")))
    }
}

/// DESIGN §2: without `--cfg tokio_unstable` tokio's scheduler is not seeded and runs do not
/// repeat. Said once per process.
fn warn_without_tokio_unstable() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !cfg!(tokio_unstable) && !WARNED.swap(true, Ordering::Relaxed) {
        eprintln!(
            "tcpudp_net_sim: built without --cfg tokio_unstable: simulations will not repeat exactly \
             (add rustflags = [\"--cfg\", \"tokio_unstable\"] to .cargo/config.toml)"
        );
    }
}

/// Whether this build seeds tokio (`--cfg tokio_unstable`), as replay files record.
pub fn tokio_unstable() -> bool {
    cfg!(tokio_unstable)
}

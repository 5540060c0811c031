//! `tcpudp-conformance bench`: our public API beside raw tokio, raw turmoil and the bare core
//! (issue #6).
//!
//! Every real and simulated workload runs twice per round, in the same process: once through
//! `tcpudp` exactly as a user writes it, once through raw code doing the same protocol steps (both
//! wait for the peer's FIN on close). Rounds alternate (ours, raw, ours, raw, …) and each round
//! gives one ratio ours/raw of throughputs; the median, min and max of those ratios are the
//! result, so a ratio ≥ 1 means "as fast as raw". Only same-run ratios mean anything: loopback
//! figures on a small machine swing widely with CPU placement (pin with `taskset -c 0`).
//!
//! The core part drives a bare [`tcpudp_core::TcpMachine`] on the data path; the memory part
//! counts the live heap (the counting allocator of [`alloc`], installed by `main.rs`) with N idle
//! connections open through `tcpudp` and through raw tokio.

pub(crate) mod alloc;
mod core;
mod memory;
mod node;
mod sim;
mod tcp;
mod udp;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Errors of one benchmark step.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A benchmark step's result.
pub(crate) type BenchResult<T> = Result<T, BoxError>;

/// The hang guard of one side of one round (never a measurement).
const ROUND_GUARD: Duration = Duration::from_secs(600);

/// Arguments of `tcpudp-conformance bench`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct BenchArgs {
    /// Multiplies every default size (e.g. 0.01 for a quick run); explicit sizes below win.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Rounds per workload and runtime (each round runs ours, then raw), at least.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds each side's rounds of a workload take at least: a workload with short rounds runs
    /// more of them (at most 4 × `--rounds`). Single 1 GiB tcp-bulk rounds (~0.5 s) swing ±30% on
    /// a 2-vCPU guest, where a median of five strayed 5% from the ratio the CPU times give.
    #[arg(long, default_value_t = 5.0)]
    min_secs: f64,
    /// TCP bulk: bytes per round (default 1 GiB), written in 64 KiB writes.
    #[arg(long)]
    bulk_bytes: Option<u64>,
    /// TCP ping-pong: round trips of 64 B per round (default 100,000).
    #[arg(long)]
    pingpong_trips: Option<u64>,
    /// TCP connect + accept + close: connections per round (default 10,000).
    #[arg(long)]
    connects: Option<u64>,
    /// UDP: 1200-byte datagrams per round (default 500,000).
    #[arg(long)]
    udp_datagrams: Option<u64>,
    /// Simulated TCP bulk: bytes per round (default 1 GiB).
    #[arg(long)]
    sim_bulk_bytes: Option<u64>,
    /// Simulated connects per round (default 10,000).
    #[arg(long)]
    sim_connects: Option<u64>,
    /// Simulated UDP datagrams per round (default 500,000).
    #[arg(long)]
    sim_datagrams: Option<u64>,
    /// Core: machine inputs per round (default 40,000,000).
    #[arg(long)]
    core_inputs: Option<u64>,
    /// Memory: at most this many idle connections (default 10,000; also capped by the
    /// descriptor limit).
    #[arg(long)]
    idle_connections: Option<u64>,
    /// Only these parts, comma-separated: tcp-bulk, tcp-pingpong, tcp-connect, udp,
    /// sim-tcp-bulk, sim-udp, sim-connect, core, memory.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the (informational) multi-thread runtime pass.
    #[arg(long)]
    no_multi_thread: bool,
    /// Also run the real workloads on Node's `net`/`dgram` (needs `node` on PATH; a separate
    /// process, so its column is indicative only).
    #[arg(long)]
    node: bool,
    /// Profiling aid: run only one side of the real and simulated workloads and print its
    /// throughput and heap allocations per unit (no ratios; `perf record` the process).
    #[arg(long, value_enum)]
    side: Option<Side>,
    /// Exit with status 1 when a target is missed.
    #[arg(long)]
    strict: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One side of a comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Side {
    Ours,
    Raw,
}

/// The sizes of one run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    pub(crate) bulk_bytes: u64,
    pub(crate) chunk: usize,
    pub(crate) pingpong_trips: u64,
    pub(crate) message: usize,
    pub(crate) connects: u64,
    pub(crate) udp_datagrams: u64,
    pub(crate) datagram: usize,
    pub(crate) sim_bulk_bytes: u64,
    pub(crate) sim_connects: u64,
    pub(crate) sim_datagrams: u64,
    pub(crate) core_inputs: u64,
    pub(crate) idle_connections: u64,
}

impl Sizes {
    fn from_args(args: &BenchArgs) -> Sizes {
        let scale = if args.scale.is_finite() && args.scale > 0.0 { args.scale } else { 1.0 };
        let scaled = |explicit: Option<u64>, default: u64, min: u64| -> u64 {
            explicit.unwrap_or_else(|| ((default as f64 * scale).round() as u64).max(min)).max(1)
        };
        let chunk = 64 * 1024;
        Sizes {
            bulk_bytes: scaled(args.bulk_bytes, 1 << 30, chunk as u64),
            chunk,
            pingpong_trips: scaled(args.pingpong_trips, 100_000, 1),
            message: 64,
            connects: scaled(args.connects, 10_000, 1),
            udp_datagrams: scaled(args.udp_datagrams, 500_000, 1),
            datagram: 1200,
            sim_bulk_bytes: scaled(args.sim_bulk_bytes, 1 << 30, chunk as u64),
            sim_connects: scaled(args.sim_connects, 10_000, 1),
            sim_datagrams: scaled(args.sim_datagrams, 500_000, 1),
            core_inputs: scaled(args.core_inputs, 40_000_000, 4_000),
            idle_connections: scaled(args.idle_connections, 10_000, 1),
        }
    }
}

/// One side of one round: how much was done, in how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// Units done (bytes, round trips, connections, datagrams received).
    pub(crate) units: f64,
    /// Seconds it took (wall clock).
    pub(crate) secs: f64,
    /// UDP: the fraction of datagrams sent that never arrived.
    pub(crate) loss: Option<f64>,
    /// CPU time the runtime's thread spent on the whole round (current-thread runtime only).
    pub(crate) cpu: Option<CpuTime>,
}

/// User and kernel CPU time, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct CpuTime {
    pub(crate) user: f64,
    pub(crate) sys: f64,
}

impl CpuTime {
    /// The calling thread's CPU time so far (`getrusage(RUSAGE_THREAD)`; `None` elsewhere than
    /// Linux or on failure).
    fn of_this_thread() -> Option<CpuTime> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // SAFETY: all-zero is a valid rusage, and getrusage writes only into it.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: a valid `who` and a pointer to a live rusage.
            if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
                return None;
            }
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            Some(CpuTime { user: secs(usage.ru_utime), sys: secs(usage.ru_stime) })
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        None
    }

    fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime { user: (self.user - earlier.user).max(0.0), sys: (self.sys - earlier.sys).max(0.0) }
    }
}

impl Sample {
    pub(crate) fn new(units: u64, elapsed: Duration) -> Sample {
        Sample { units: units as f64, secs: elapsed.as_secs_f64().max(1e-9), loss: None, cpu: None }
    }

    pub(crate) fn rate(&self) -> f64 {
        self.units / self.secs
    }
}

/// What a workload is, for reporting.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Workload {
    pub(crate) name: &'static str,
    pub(crate) unit: Unit,
    pub(crate) target: f64,
}

/// The unit a workload's throughput is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    Bytes,
    RoundTrips,
    Connections,
    Datagrams,
}

impl Unit {
    fn format(self, per_sec: f64) -> String {
        match self {
            Unit::Bytes => format!("{:.2} GiB/s", per_sec / f64::from(1u32 << 30)),
            Unit::RoundTrips => format!("{:.0} rt/s", per_sec),
            Unit::Connections => format!("{:.0} conn/s", per_sec),
            Unit::Datagrams => format!("{:.0} dgram/s", per_sec),
        }
    }

    /// Units per reported unit (`--side` counts allocations per 64 KiB chunk of bulk data).
    fn per(self) -> f64 {
        if self == Unit::Bytes {
            65_536.0
        } else {
            1.0
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Unit::Bytes => "64 KiB",
            Unit::RoundTrips => "round trip",
            Unit::Connections => "connection",
            Unit::Datagrams => "datagram",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::RoundTrips => "round trips",
            Unit::Connections => "connections",
            Unit::Datagrams => "datagrams",
        }
    }
}

pub(crate) const TCP_BULK: Workload = Workload { name: "tcp-bulk", unit: Unit::Bytes, target: 0.95 };
pub(crate) const TCP_PINGPONG: Workload =
    Workload { name: "tcp-pingpong", unit: Unit::RoundTrips, target: 0.85 };
pub(crate) const TCP_CONNECT: Workload =
    Workload { name: "tcp-connect", unit: Unit::Connections, target: 0.85 };
pub(crate) const UDP: Workload = Workload { name: "udp", unit: Unit::Datagrams, target: 0.90 };
pub(crate) const SIM_TCP_BULK: Workload = Workload { name: "sim-tcp-bulk", unit: Unit::Bytes, target: 0.80 };
pub(crate) const SIM_UDP: Workload = Workload { name: "sim-udp", unit: Unit::Datagrams, target: 0.80 };
pub(crate) const SIM_CONNECT: Workload =
    Workload { name: "sim-connect", unit: Unit::Connections, target: 0.80 };

/// Core target: inputs per second through `handle` + `poll_output`.
const CORE_INPUTS_TARGET: f64 = 20e6;
/// Memory target: bytes of our own state per idle TCP socket.
const IDLE_BYTES_TARGET: f64 = 2048.0;

/// How many rounds a workload runs: `rounds` at least, and more, up to four times as many, until
/// each side's rounds took `min_secs`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    rounds: usize,
    min_secs: f64,
}

impl Plan {
    /// Whether another round is due after `done`.
    fn wants_more(&self, done: &Rounds) -> bool {
        let n = done.ours.len().min(done.raw.len());
        let secs = |s: &[Sample]| s.iter().map(|x| x.secs).sum::<f64>();
        n < self.rounds
            || (n < self.rounds * 4 && (secs(&done.ours) < self.min_secs || secs(&done.raw) < self.min_secs))
    }
}

/// The rounds of one workload on one runtime.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rounds {
    pub(crate) ours: Vec<Sample>,
    pub(crate) raw: Vec<Sample>,
}

impl Rounds {
    fn ratios(&self) -> Vec<f64> {
        self.ours.iter().zip(&self.raw).map(|(o, r)| o.rate() / r.rate()).collect()
    }

    fn summary(&self, unit: Unit) -> Option<Summary> {
        let ratio = Stats::of(self.ratios())?;
        let ours = Stats::of(self.ours.iter().map(Sample::rate).collect())?;
        let raw = Stats::of(self.raw.iter().map(Sample::rate).collect())?;
        let loss = |s: &[Sample]| {
            let v: Vec<f64> = s.iter().filter_map(|x| x.loss).collect();
            (!v.is_empty()).then(|| v.iter().cloned().fold(0.0, f64::max))
        };
        // Median CPU time per reported unit (per 64 KiB for bulk), user and kernel apart.
        let cpu = |s: &[Sample]| -> Option<CpuTime> {
            let per = |f: fn(&CpuTime) -> f64| {
                Stats::of(s.iter().filter_map(|x| Some(f(&x.cpu?) / (x.units / unit.per()))).collect())
            };
            Some(CpuTime { user: per(|c| c.user)?.median, sys: per(|c| c.sys)?.median })
        };
        Some(Summary {
            rounds: self.ours.len().min(self.raw.len()),
            ratio,
            ours,
            raw,
            loss_ours: loss(&self.ours),
            loss_raw: loss(&self.raw),
            cpu: cpu(&self.ours).zip(cpu(&self.raw)),
        })
    }
}

/// Median, min and max.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stats {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Stats {
    pub(crate) fn of(mut values: Vec<f64>) -> Option<Stats> {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        Some(Stats { median, min: values[0], max: values[n - 1] })
    }
}

/// A workload's result on one runtime.
#[derive(Clone, Copy, Debug)]
struct Summary {
    /// Rounds run (pairs of ours and raw).
    rounds: usize,
    ratio: Stats,
    ours: Stats,
    raw: Stats,
    loss_ours: Option<f64>,
    loss_raw: Option<f64>,
    /// Median CPU time per unit, (ours, raw): where a ratio comes from (informational).
    cpu: Option<(CpuTime, CpuTime)>,
}

/// Which tokio runtime a real workload runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    CurrentThread,
    MultiThread,
}

impl Flavor {
    fn runtime(self) -> BenchResult<tokio::runtime::Runtime> {
        let mut builder = match self {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        };
        Ok(builder.enable_all().build()?)
    }
}

/// Runs `ours` and `raw` alternately, as many rounds each as `plan` asks, on a fresh runtime of
/// `flavor` per side and round. A warm-up pair (a tenth of the size, not counted) runs first.
fn alternate<O, OF, R, RF>(flavor: Flavor, plan: Plan, ours: O, raw: R) -> BenchResult<Rounds>
where
    O: Fn(bool) -> OF,
    OF: Future<Output = BenchResult<Sample>>,
    R: Fn(bool) -> RF,
    RF: Future<Output = BenchResult<Sample>>,
{
    let once =
        |fut: std::pin::Pin<Box<dyn Future<Output = BenchResult<Sample>> + '_>>| -> BenchResult<Sample> {
            // On the current-thread runtime everything a round does runs on this thread, so the
            // thread's CPU time is the round's (set-up and runtime included, a small share).
            let before = (flavor == Flavor::CurrentThread).then(CpuTime::of_this_thread).flatten();
            let rt = flavor.runtime()?;
            let mut sample = rt.block_on(async { tokio::time::timeout(ROUND_GUARD, fut).await })??;
            // Dropping the runtime here ends whatever the round left behind (drivers, listeners).
            drop(rt);
            sample.cpu = before.and_then(|b| Some(CpuTime::of_this_thread()?.since(b)));
            Ok(sample)
        };
    alternate_rounds(plan, |w| once(Box::pin(ours(w))), |w| once(Box::pin(raw(w))))
}

/// Runs `ours` and `raw` (each given whether it is the warm-up) alternately: a warm-up pair,
/// then as many rounds as `plan` asks. The simulated workloads call it directly (a turmoil
/// simulation per side and round).
fn alternate_rounds(
    plan: Plan,
    ours: impl Fn(bool) -> BenchResult<Sample>,
    raw: impl Fn(bool) -> BenchResult<Sample>,
) -> BenchResult<Rounds> {
    ours(true)?;
    raw(true)?;
    let mut out = Rounds::default();
    while plan.wants_more(&out) {
        out.ours.push(ours(false)?);
        out.raw.push(raw(false)?);
    }
    Ok(out)
}

/// Scales a size down for the warm-up pair.
pub(crate) fn warm(size: u64, warmup: bool, min: u64) -> u64 {
    if warmup {
        (size / 10).max(min).min(size)
    } else {
        size
    }
}

/// One workload's results.
struct WorkloadResult {
    workload: Workload,
    current: Summary,
    multi: Option<Summary>,
}

/// The whole run's results.
#[derive(Default)]
struct Report {
    workloads: Vec<WorkloadResult>,
    core: Option<core::CoreResult>,
    memory: Option<memory::MemoryResult>,
    node: Vec<(Workload, f64)>,
    failures: Vec<String>,
}

/// `tcpudp-conformance bench`.
pub(crate) fn run(args: BenchArgs) -> ExitCode {
    let sizes = Sizes::from_args(&args);
    let rounds = args.rounds.max(1);
    let plan = Plan { rounds, min_secs: args.min_secs };
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    if !alloc::installed() {
        eprintln!("warning: the counting allocator is not installed; core and memory figures are wrong");
    }
    let machine = machine_line();
    println!("tcpudp bench: {machine}");
    println!(
        "rounds {rounds} or more, until each side ran {:.0} s (ours, raw alternating, same process); sizes: bulk {} MiB, ping-pong {} x {} B, \
         connects {}, udp {} x {} B, sim bulk {} MiB, sim connects {}, sim udp {}, core {} inputs",
        plan.min_secs,
        sizes.bulk_bytes >> 20,
        sizes.pingpong_trips,
        sizes.message,
        sizes.connects,
        sizes.udp_datagrams,
        sizes.datagram,
        sizes.sim_bulk_bytes >> 20,
        sizes.sim_connects,
        sizes.sim_datagrams,
        sizes.core_inputs,
    );
    println!();
    let started = Instant::now();
    if let Some(side) = args.side {
        return profile_side(&args, sizes, rounds, side);
    }
    let mut report = Report::default();

    type RealPair = (Workload, fn(Sizes, bool) -> tcp::BoxFut, fn(Sizes, bool) -> tcp::BoxFut);
    let real: [RealPair; 4] = [
        (TCP_BULK, tcp::bulk_ours, tcp::bulk_raw),
        (TCP_PINGPONG, tcp::pingpong_ours, tcp::pingpong_raw),
        (TCP_CONNECT, tcp::connect_ours, tcp::connect_raw),
        (UDP, udp::udp_ours, udp::udp_raw),
    ];
    for (workload, ours, raw) in real {
        if !wanted(workload.name) {
            continue;
        }
        let mut flavors = vec![Flavor::CurrentThread];
        if !args.no_multi_thread {
            flavors.push(Flavor::MultiThread);
        }
        let mut summaries = Vec::new();
        for flavor in flavors {
            eprint!("{} ({:?}) ...", workload.name, flavor);
            let result = alternate(flavor, plan, |w| ours(sizes, w), |w| raw(sizes, w));
            match result.map(|r| r.summary(workload.unit)) {
                Ok(Some(summary)) => {
                    eprintln!(" ratio {:.3}", summary.ratio.median);
                    summaries.push(summary);
                }
                Ok(None) => {
                    eprintln!(" no samples");
                    report.failures.push(format!("{} ({flavor:?}): no samples", workload.name));
                }
                Err(e) => {
                    eprintln!(" failed: {e}");
                    report.failures.push(format!("{} ({flavor:?}): {e}", workload.name));
                }
            }
        }
        let mut it = summaries.into_iter();
        if let Some(current) = it.next() {
            report.workloads.push(WorkloadResult { workload, current, multi: it.next() });
        }
    }

    type SimPair = (Workload, fn(Sizes, bool) -> BenchResult<Sample>, fn(Sizes, bool) -> BenchResult<Sample>);
    let simulated: [SimPair; 3] = [
        (SIM_TCP_BULK, sim::bulk_ours, sim::bulk_raw),
        (SIM_UDP, sim::udp_ours, sim::udp_raw),
        (SIM_CONNECT, sim::connect_ours, sim::connect_raw),
    ];
    for (workload, ours, raw) in simulated {
        if !wanted(workload.name) {
            continue;
        }
        eprint!("{} ...", workload.name);
        match alternate_rounds(plan, |w| ours(sizes, w), |w| raw(sizes, w)).map(|r| r.summary(workload.unit))
        {
            Ok(Some(current)) => {
                eprintln!(" ratio {:.3}", current.ratio.median);
                report.workloads.push(WorkloadResult { workload, current, multi: None });
            }
            Ok(None) => report.failures.push(format!("{}: no samples", workload.name)),
            Err(e) => {
                eprintln!(" failed: {e}");
                report.failures.push(format!("{}: {e}", workload.name));
            }
        }
    }

    if wanted("core") {
        eprint!("core ...");
        match core::run(sizes, rounds) {
            Ok(result) => {
                eprintln!(" {:.1} M inputs/s", result.inputs_per_sec.median / 1e6);
                report.core = Some(result);
            }
            Err(e) => {
                eprintln!(" failed: {e}");
                report.failures.push(format!("core: {e}"));
            }
        }
    }
    if wanted("memory") {
        eprint!("memory ...");
        match memory::run(sizes) {
            Ok(result) => {
                eprintln!(" {:.0} B per idle socket", result.per_socket);
                report.memory = Some(result);
            }
            Err(e) => {
                eprintln!(" failed: {e}");
                report.failures.push(format!("memory: {e}"));
            }
        }
    }
    if args.node {
        match node::run(sizes, &report_rates(&report)) {
            Ok(rows) => report.node = rows,
            Err(e) => {
                eprintln!("node column skipped: {e}");
            }
        }
    }

    println!();
    let below = print_report(&report);
    println!();
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let doc = json_report(&report, &machine, rounds);
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default()) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if !report.failures.is_empty() {
        for f in &report.failures {
            eprintln!("FAILED {f}");
        }
        return ExitCode::FAILURE;
    }
    if args.strict && below > 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// One profiled round: runs `round` with the counting allocator on and prints its throughput
/// and allocations per unit; false when the round failed.
fn profile_round(workload: &Workload, side: Side, round: impl FnOnce() -> BenchResult<Sample>) -> bool {
    alloc::enable();
    let before = alloc::snapshot();
    let result = round();
    let allocs = alloc::snapshot().allocs - before.allocs;
    alloc::disable();
    match result {
        Ok(s) => {
            println!(
                "{} {side:?}: {}, {:.2} allocations per {}",
                workload.name,
                workload.unit.format(s.rate()),
                allocs as f64 / (s.units / workload.unit.per()).max(1.0),
                workload.unit.singular()
            );
            true
        }
        Err(e) => {
            eprintln!("{} {side:?}: {e}", workload.name);
            false
        }
    }
}

/// `--side`: runs one side of the selected workloads, `rounds` times, on the current-thread
/// runtime, and prints each round's throughput and heap allocations per unit (the counting
/// allocator is on for these runs: timings are for profiles, not for comparison).
fn profile_side(args: &BenchArgs, sizes: Sizes, rounds: usize, side: Side) -> ExitCode {
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    type Real = (Workload, fn(Sizes, bool) -> tcp::BoxFut, fn(Sizes, bool) -> tcp::BoxFut);
    let real: [Real; 4] = [
        (TCP_BULK, tcp::bulk_ours, tcp::bulk_raw),
        (TCP_PINGPONG, tcp::pingpong_ours, tcp::pingpong_raw),
        (TCP_CONNECT, tcp::connect_ours, tcp::connect_raw),
        (UDP, udp::udp_ours, udp::udp_raw),
    ];
    type Simulated =
        (Workload, fn(Sizes, bool) -> BenchResult<Sample>, fn(Sizes, bool) -> BenchResult<Sample>);
    let simulated: [Simulated; 3] = [
        (SIM_TCP_BULK, sim::bulk_ours, sim::bulk_raw),
        (SIM_UDP, sim::udp_ours, sim::udp_raw),
        (SIM_CONNECT, sim::connect_ours, sim::connect_raw),
    ];
    for (workload, ours, raw) in real {
        if !wanted(workload.name) {
            continue;
        }
        let run = if side == Side::Ours { ours } else { raw };
        for _ in 0..rounds {
            let rt = match Flavor::CurrentThread.runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            if !profile_round(&workload, side, || rt.block_on(run(sizes, false))) {
                return ExitCode::FAILURE;
            }
        }
    }
    for (workload, ours, raw) in simulated {
        if !wanted(workload.name) {
            continue;
        }
        let run = if side == Side::Ours { ours } else { raw };
        for _ in 0..rounds {
            if !profile_round(&workload, side, || run(sizes, false)) {
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// Median ours rates of the real workloads (current-thread), for the Node column.
fn report_rates(report: &Report) -> Vec<(Workload, f64)> {
    report
        .workloads
        .iter()
        .filter(|w| !w.workload.name.starts_with("sim-"))
        .map(|w| (w.workload, w.current.ours.median))
        .collect()
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "OK"
    } else {
        "BELOW"
    }
}

/// Prints the tables; returns how many figures are below target.
fn print_report(report: &Report) -> usize {
    let mut below = 0;
    println!(
        "{:<13} {:>6} {:>6} {:>6} {:>6}  {:>7} {:<5}  {:>16} {:>16}  {:>20}",
        "workload", "rounds", "ratio", "min", "max", "target", "", "ours", "raw", "multi-thread ratio"
    );
    for w in &report.workloads {
        let s = &w.current;
        let ok = s.ratio.median >= w.workload.target;
        below += usize::from(!ok);
        let multi = match &w.multi {
            Some(m) => format!("{:.2} ({:.2}-{:.2})", m.ratio.median, m.ratio.min, m.ratio.max),
            None if w.workload.name.starts_with("sim-") => "n/a (turmoil)".to_owned(),
            None => "-".to_owned(),
        };
        println!(
            "{:<13} {:>6} {:>6.3} {:>6.3} {:>6.3}  {:>7} {:<5}  {:>16} {:>16}  {:>20}",
            w.workload.name,
            s.rounds,
            s.ratio.median,
            s.ratio.min,
            s.ratio.max,
            format!(">={:.2}", w.workload.target),
            verdict(ok),
            w.workload.unit.format(s.ours.median),
            w.workload.unit.format(s.raw.median),
            multi,
        );
        if let (Some(lo), Some(lr)) = (s.loss_ours, s.loss_raw) {
            println!("{:<13} loss (worst round): ours {:.3}%, raw {:.3}%", "", lo * 100.0, lr * 100.0);
        }
        if let Some((o, r)) = s.cpu {
            let us = |secs: f64| secs * 1e6;
            println!(
                "{:<13} cpu per {}: ours {:.2} µs user + {:.2} µs kernel, raw {:.2} + {:.2}",
                "",
                w.workload.unit.singular(),
                us(o.user),
                us(o.sys),
                us(r.user),
                us(r.sys),
            );
        }
    }
    if let Some(c) = &report.core {
        let ok = c.inputs_per_sec.median >= CORE_INPUTS_TARGET;
        below += usize::from(!ok);
        println!(
            "core          {:.1} M inputs/s (min {:.1}, max {:.1})   target >=20 M   {}",
            c.inputs_per_sec.median / 1e6,
            c.inputs_per_sec.min / 1e6,
            c.inputs_per_sec.max / 1e6,
            verdict(ok)
        );
        let ok = c.allocs_per_input == 0.0;
        below += usize::from(!ok);
        println!(
            "core          {:.4} allocations per steady-state data input   target 0   {}",
            c.allocs_per_input,
            verdict(ok)
        );
    }
    if let Some(m) = &report.memory {
        let ok = m.per_socket <= IDLE_BYTES_TARGET;
        below += usize::from(!ok);
        println!(
            "memory        {:.0} B of our own state per idle TCP socket ({} sockets: ours {:.0} B, raw tokio {:.0} B each)   target <=2048 B   {}",
            m.per_socket,
            m.sockets,
            m.ours_per_socket,
            m.raw_per_socket,
            verdict(ok)
        );
        println!(
            "allocations   {:.2} per short connection (connect, accept, close both ends), raw tokio {:.2}",
            m.connect_allocs_ours, m.connect_allocs_raw
        );
    }
    if !report.node.is_empty() {
        println!();
        println!("Node (separate process, indicative): ours / node throughput");
        for (w, ratio) in &report.node {
            println!("  {:<13} {:.2}", w.name, ratio);
        }
    }
    below
}

fn json_report(report: &Report, machine: &str, rounds: usize) -> serde_json::Value {
    let workloads: Vec<serde_json::Value> = report
        .workloads
        .iter()
        .map(|w| {
            let s = &w.current;
            let mut v = serde_json::json!({
                "name": w.workload.name,
                "rounds": s.rounds,
                "ratio": s.ratio.median,
                "min": s.ratio.min,
                "max": s.ratio.max,
                "target": w.workload.target,
                "ok": s.ratio.median >= w.workload.target,
                "unit": w.workload.unit.as_str(),
                "ours_per_sec": s.ours.median,
                "raw_per_sec": s.raw.median,
            });
            if let Some(m) = &w.multi {
                v["multi_thread"] =
                    serde_json::json!({ "ratio": m.ratio.median, "min": m.ratio.min, "max": m.ratio.max });
            }
            if let (Some(lo), Some(lr)) = (s.loss_ours, s.loss_raw) {
                v["loss_ours"] = lo.into();
                v["loss_raw"] = lr.into();
            }
            if let Some((o, r)) = s.cpu {
                let us = |c: CpuTime| serde_json::json!({ "user_us": c.user * 1e6, "sys_us": c.sys * 1e6 });
                v["cpu_per_unit"] =
                    serde_json::json!({ "per": w.workload.unit.singular(), "ours": us(o), "raw": us(r) });
            }
            v
        })
        .collect();
    let mut doc = serde_json::json!({
        "workloads": workloads,
        "machine": machine,
        "date": today(),
        "rounds": rounds,
    });
    if let Some(c) = &report.core {
        doc["core"] = serde_json::json!({
            "inputs_per_sec": c.inputs_per_sec.median,
            "inputs_per_sec_min": c.inputs_per_sec.min,
            "inputs_per_sec_max": c.inputs_per_sec.max,
            "allocs_per_input": c.allocs_per_input,
        });
    }
    if let Some(m) = &report.memory {
        doc["idle_socket_bytes"] = m.per_socket.into();
        doc["idle_sockets"] = m.sockets.into();
        doc["idle_connections"] = m.connections.into();
        doc["connect_allocs"] =
            serde_json::json!({ "ours": m.connect_allocs_ours, "raw": m.connect_allocs_raw });
    }
    if !report.node.is_empty() {
        doc["node"] =
            report.node.iter().map(|(w, r)| serde_json::json!({ "name": w.name, "ratio": r })).collect();
    }
    doc
}

/// "N CPUs, model, Linux release".
fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| std::env::consts::OS.to_owned());
    format!("{cpus} CPUs ({model}), Linux {kernel}, {}", today())
}

/// Today's UTC date as YYYY-MM-DD.
fn today() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_median_min_max() {
        let s = Stats::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Stats::of(vec![4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Stats::of(vec![f64::NAN]).is_none());
    }

    #[test]
    fn short_rounds_run_until_each_side_took_its_minimum_time_within_four_times_the_rounds() {
        let plan = Plan { rounds: 2, min_secs: 3.0 };
        let pairs = |n: usize, ours: u64, raw: u64| Rounds {
            ours: vec![Sample::new(1, Duration::from_secs(ours)); n],
            raw: vec![Sample::new(1, Duration::from_secs(raw)); n],
        };
        assert!(plan.wants_more(&pairs(1, 5, 5)), "fewer than `rounds`");
        assert!(!plan.wants_more(&pairs(2, 2, 2)), "each side ran 4 s");
        assert!(plan.wants_more(&pairs(2, 2, 1)), "raw ran only 2 s");
        assert!(!plan.wants_more(&pairs(8, 0, 0)), "at most 4 × rounds");
        assert!(!Plan { rounds: 2, min_secs: 0.0 }.wants_more(&pairs(2, 0, 0)));
    }

    #[test]
    fn cpu_time_per_unit_is_the_median_over_rounds_of_each_side() {
        let sample = |units: u64, user: f64, sys: f64| Sample {
            cpu: Some(CpuTime { user, sys }),
            ..Sample::new(units, Duration::from_secs(1))
        };
        let rounds = Rounds {
            ours: vec![sample(10, 1.0, 2.0), sample(10, 3.0, 4.0), sample(20, 4.0, 4.0)],
            raw: vec![sample(10, 0.5, 1.0), sample(10, 0.5, 1.0), sample(10, 0.7, 3.0)],
        };
        let (ours, raw) = rounds.summary(Unit::Connections).unwrap().cpu.unwrap();
        // Per connection: ours user 0.1/0.3/0.2, kernel 0.2/0.4/0.2.
        assert!((ours.user - 0.2).abs() < 1e-12 && (ours.sys - 0.2).abs() < 1e-12, "{ours:?}");
        assert!((raw.user - 0.05).abs() < 1e-12 && (raw.sys - 0.1).abs() < 1e-12, "{raw:?}");
        // Bulk counts per 64 KiB, not per byte.
        let bulk = Rounds { ours: vec![sample(65_536 * 4, 8.0, 4.0)], raw: vec![sample(65_536, 1.0, 1.0)] };
        let (ours, _) = bulk.summary(Unit::Bytes).unwrap().cpu.unwrap();
        assert_eq!((ours.user, ours.sys), (2.0, 1.0));
        // A side without CPU figures gives none for the workload.
        let partial =
            Rounds { ours: vec![sample(1, 1.0, 1.0)], raw: vec![Sample::new(1, Duration::from_secs(1))] };
        assert!(partial.summary(Unit::Datagrams).unwrap().cpu.is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_thread_cpu_time_is_read_and_never_goes_back() {
        let first = CpuTime::of_this_thread().expect("getrusage(RUSAGE_THREAD) works on Linux");
        let mut x = 0u64;
        for i in 0..100_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let later = CpuTime::of_this_thread().unwrap();
        assert!(later.user >= first.user && later.sys >= first.sys, "{first:?} then {later:?}");
        let spent = later.since(first);
        assert!(spent.user >= 0.0 && spent.sys >= 0.0);
        assert_eq!(first.since(later), CpuTime::default(), "a negative difference is clamped to 0");
    }

    #[test]
    fn today_is_a_date() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}

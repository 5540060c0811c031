//! `tcpudp-conformance`: runs every scenario on each backend and prints the rule × backend matrix
//! (`tcpudp_conformance::matrix`). Exit status 1 when any scenario fails.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tcpudp_conformance::{interpreter, matrix, scenarios, BackendChoice};

mod bench;

/// Counts allocations for `bench`'s core and memory parts; off (one relaxed load) otherwise.
#[global_allocator]
static ALLOCATOR: bench::alloc::CountingAlloc = bench::alloc::CountingAlloc;

#[derive(Parser)]
#[command(name = "tcpudp-conformance", about = "Conformance of tcpudp to the W3C TCP and UDP Socket API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scenarios and print the rule × backend matrix (the default).
    Run(RunArgs),
    /// Disable each transition row of RULES.md §9 in turn and report the rows no scenario catches.
    Mutants,
    /// Benchmark: our API beside raw tokio, raw turmoil and the bare core (issue #6).
    Bench(bench::BenchArgs),
    /// Only the seeded fault campaign (`--seed`, `--cases`, `--jobs`, `--json`), e.g. a long one.
    Campaign(RunArgs),
    /// Replay a replay file: its full trace, then "reproduced bit for bit" or "diverged at event N".
    Replay {
        /// The replay file (written by a failing campaign case).
        file: std::path::PathBuf,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Which backend(s) to run on.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    backend: Which,
    /// Write the matrix and the campaign summary as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// The campaign's seed (the same seed gives the same cases and digest).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Campaign cases (0: no campaign).
    #[arg(long, default_value_t = 1000)]
    cases: u64,
    /// Cases run in parallel (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Seconds spent shrinking each failing case (proptest's max_shrink_time).
    #[arg(long, default_value_t = 60)]
    shrink_secs: u64,
    /// Demonstration: disable this RULES.md §9 row (a `Row` name, e.g. TcpOpenHalfClose) in the
    /// core before the campaign, to watch a failure get caught, shrunk and written.
    #[arg(long)]
    mutate: Option<String>,
    /// Where failing cases are written as replay files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/regressions"))]
    regressions: std::path::PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Sim,
    Real,
    Both,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(args)) => args,
        Some(Command::Bench(args)) => return bench::run(args),
        Some(Command::Mutants) => return mutants(),
        Some(Command::Replay { file }) => return replay(&file),
        Some(Command::Campaign(args)) => {
            let (json, failed) = run_campaign(&args);
            if let Some(path) = &args.json {
                let doc = serde_json::json!({ "campaign": json });
                if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default()) {
                    eprintln!("cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            return if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
        None => cli.run,
    };
    let backends: Vec<BackendChoice> = match args.backend {
        Which::Sim => vec![BackendChoice::Sim],
        Which::Real => vec![BackendChoice::Real],
        Which::Both => vec![BackendChoice::Sim, BackendChoice::Real],
    };
    let matrix = match matrix::run(&matrix::Options { backends, jobs: None }) {
        Ok(matrix) => matrix,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!();
    print!("{}", matrix.render());
    let mut failures = matrix.failures() + matrix.unknown.len();
    if matrix.backends.len() == 2 {
        failures += differential();
    }
    let campaign = if args.cases > 0 && matrix.backends.contains(&BackendChoice::Sim) {
        let (json, failed) = run_campaign(&args);
        failures += failed;
        json
    } else {
        serde_json::Value::Null
    };
    if let Some(path) = &args.json {
        let mut doc = matrix.to_json();
        doc["campaign"] = campaign;
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default()) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Differential fidelity: every fault-free JSON scenario on both backends, projections equal.
/// Returns the number of scenarios that differ.
fn differential() -> usize {
    use tcpudp_conformance::differential;
    let scenarios: Vec<tcpudp_conformance::Scenario> = match matrix::json_scenarios() {
        Ok(all) => all.into_iter().filter(differential::fault_free).collect(),
        Err(e) => {
            println!("DIFFERS (no scenarios): {e}");
            return 1;
        }
    };
    let mut differ = 0;
    for scenario in &scenarios {
        if let Err(e) = differential::check(scenario) {
            differ += 1;
            println!("DIFFERS {}: {e}", scenario.name);
        }
    }
    println!();
    println!(
        "differential fidelity: {} fault-free scenarios on both backends (sim on a fixed {} ms link), {differ} differ",
        scenarios.len(),
        differential::FIXED_LATENCY_MS
    );
    differ
}

/// The seeded fault campaign in the simulator, with a progress bar and a summary; failing cases
/// are shrunk and written as replay files. The summary as JSON, and the number of failures
/// (shortfalls of the campaign itself count as one).
fn run_campaign(args: &RunArgs) -> (serde_json::Value, usize) {
    use tcpudp_conformance::campaign;
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if let Some(name) = &args.mutate {
        let Some(row) = tcpudp_core::Row::ALL.iter().find(|r| format!("{r:?}") == *name) else {
            eprintln!("no §9 row named {name}");
            return (serde_json::Value::Null, 1);
        };
        println!("core mutated: row {row:?} disabled");
        tcpudp_core::state::mutation::disable(Some(*row));
    }
    println!();
    println!(
        "fault campaign: seed {}, {} cases, {jobs} jobs (simulator, swarm fault profiles)",
        args.seed, args.cases
    );
    let bar = indicatif::ProgressBar::new(args.cases);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} cases, {msg} [{elapsed_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let failed_so_far = std::sync::atomic::AtomicUsize::new(0);
    let summary = campaign::run(args.seed, args.cases, jobs, &|r| {
        if r.failure.is_some() {
            failed_so_far.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        bar.set_message(format!("{} failed", failed_so_far.load(std::sync::atomic::Ordering::Relaxed)));
        bar.inc(1);
    });
    bar.finish();
    println!("{} cases, {} failed, digest {}", summary.cases, summary.failures.len(), summary.digest);
    println!("{:<18} {:>9} {:>10}", "fault", "injected", "effective");
    let mut faults = serde_json::Map::new();
    for kind in campaign::FaultKind::ALL {
        let (injected, effective) = summary.faults.get(&kind).copied().unwrap_or((0, 0));
        println!("{:<18} {injected:>9} {effective:>10}", kind.name());
        faults
            .insert(kind.name().into(), serde_json::json!({ "injected": injected, "effective": effective }));
    }
    println!("coverage (cases reaching):");
    let mut goals = serde_json::Map::new();
    for goal in campaign::Goal::ALL {
        let n = summary.goals.get(&goal).copied().unwrap_or(0);
        println!("  {:<40} {n:>5} ({:.1}%)", goal.name(), 100.0 * n as f64 / summary.cases.max(1) as f64);
        goals.insert(goal.name().into(), n.into());
    }
    let mut replays = Vec::new();
    for failure in &summary.failures {
        println!("FAIL case {}: {}", failure.index, failure.failure.as_deref().unwrap_or_default());
        let (case, _) =
            campaign::shrink(args.seed, failure.index, std::time::Duration::from_secs(args.shrink_secs));
        let scenario = case.scenario(None);
        let (trace, outcome) = tcpudp_conformance::interpreter::run(&scenario, BackendChoice::Sim);
        let why =
            campaign::failure_of(outcome, &tcpudp_conformance::model::check(&trace, campaign::bounds()))
                .unwrap_or_else(|| failure.failure.clone().unwrap_or_default());
        match tcpudp_conformance::replay::ReplayFile::new(&scenario, &trace, &why).write(&args.regressions) {
            Ok(path) => {
                println!("  shrunk to {} operations; replay file {}", case.ops.len(), path.display());
                replays.push(path.display().to_string());
            }
            Err(e) => eprintln!("  cannot write the replay file: {e}"),
        }
    }
    let shortfalls = summary.shortfalls();
    for s in &shortfalls {
        println!("CAMPAIGN SHORTFALL: {s}");
    }
    let json = serde_json::json!({
        "seed": args.seed,
        "cases": summary.cases,
        "failures": summary.failures.len(),
        "digest": summary.digest,
        "faults": faults,
        "coverage": goals,
        "replays": replays,
        "shortfalls": shortfalls,
    });
    (json, summary.failures.len() + usize::from(!shortfalls.is_empty()))
}

/// `replay FILE`: runs the file's scenario, prints the full trace and the verdict. Exit 1 when
/// the case still fails.
fn replay(path: &std::path::Path) -> ExitCode {
    use tcpudp_conformance::replay::{self, ReplayFile};
    let file = match ReplayFile::read(path) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{}: seed {}, recorded at commit {} ({})",
        path.display(),
        file.seed,
        file.git_commit,
        file.failure
    );
    let replayed = replay::replay(&file);
    for (i, e) in replayed.trace.events.iter().enumerate() {
        // Payloads print as their length and first bytes: the file has them whole.
        let what = match &e.what {
            tcpudp_conformance::Observation::Read { data, from } => {
                format!("Read {} bytes {:?}… from {from:?}", data.len(), &data[..data.len().min(8)])
            }
            tcpudp_conformance::Observation::WriteIssued { index, data, to } => {
                format!(
                    "WriteIssued #{index} {} bytes {:?}… to {to:?}",
                    data.len(),
                    &data[..data.len().min(8)]
                )
            }
            other => format!("{other:?}"),
        };
        println!("{i:>5} {:>12}us {:<8} {:<6} {what}", e.at_micros, e.host, e.socket);
    }
    match &replayed.failure {
        Some(f) => println!("still fails: {f}"),
        None => println!("passes now"),
    }
    println!("{}", replayed.verdict);
    if replayed.failure.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Each §9 row disabled in turn; the rows no scenario catches are printed. Exit 1 if any.
fn mutants() -> ExitCode {
    use tcpudp_core::state::mutation;
    use tcpudp_core::Row;
    let scenarios = matrix::json_scenarios().unwrap_or_else(|e| {
        eprintln!("{e}");
        Vec::new()
    });
    let mut uncaught = Vec::new();
    for row in Row::ALL {
        mutation::disable(Some(*row));
        let mut caught_by = None;
        for scenario in &scenarios {
            if let (_, Err(e)) = interpreter::run(scenario, BackendChoice::Sim) {
                if !e.starts_with("skip:") {
                    caught_by = Some(scenario.name.clone());
                    break;
                }
            }
        }
        if caught_by.is_none() {
            for registered in scenarios::BUILTIN {
                if registered.run_on(BackendChoice::Sim) != scenarios::Outcome::Pass {
                    caught_by = Some(registered.name.to_owned());
                    break;
                }
            }
        }
        match caught_by {
            Some(name) => println!("caught     {row:<32} by {name}"),
            None => {
                println!("NOT CAUGHT {row}");
                uncaught.push(*row);
            }
        }
    }
    mutation::disable(None);
    println!();
    println!("{} of {} rows caught", Row::ALL.len() - uncaught.len(), Row::ALL.len());
    if uncaught.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

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
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Which backend(s) to run on.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    backend: Which,
    /// Write the matrix as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
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
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&matrix.to_json()).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if matrix.failures() == 0 && matrix.unknown.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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

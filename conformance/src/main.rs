//! `tcpudp-conformance`: runs the built-in scenario worlds on each backend and prints the rule ×
//! backend matrix. Exit status 1 when any scenario fails.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tcpudp_conformance::harness::{run, seed_of};
use tcpudp_conformance::{scenarios, BackendChoice};

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
        None => cli.run,
    };
    let backends: Vec<BackendChoice> = match args.backend {
        Which::Sim => vec![BackendChoice::Sim],
        Which::Real => vec![BackendChoice::Real],
        Which::Both => vec![BackendChoice::Sim, BackendChoice::Real],
    };
    // rule id -> backend -> (status, scenarios)
    let mut matrix: BTreeMap<&str, BTreeMap<&str, (&str, Vec<&str>)>> = BTreeMap::new();
    let mut failures = 0;
    for scenario in scenarios::ALL {
        for &backend in &backends {
            let outcome = run(backend, seed_of(scenario.name), scenario.build);
            let status = match &outcome {
                Ok(()) => "pass",
                Err(e) => {
                    failures += 1;
                    eprintln!("FAIL {} on {}: {e}", scenario.name, backend.as_str());
                    "fail"
                }
            };
            println!("{:<5} {:<4} {}", status, backend.as_str(), scenario.name);
            for rule in scenario.rules {
                let cell =
                    matrix.entry(rule).or_default().entry(backend.as_str()).or_insert(("pass", Vec::new()));
                if status == "fail" {
                    cell.0 = "fail";
                }
                cell.1.push(scenario.name);
            }
        }
    }
    let all_rules: Vec<&str> = include_str!("../rules.tsv")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split('\t').next())
        .collect();
    println!();
    println!("{:<22} {}", "rule", backends.iter().map(|b| format!("{:<9}", b.as_str())).collect::<String>());
    let mut json_rules = serde_json::Map::new();
    for rule in &all_rules {
        let row = matrix.get(rule);
        let mut cells = String::new();
        let mut json_row = serde_json::Map::new();
        let mut names: Vec<&str> = Vec::new();
        for b in &backends {
            let status = row.and_then(|r| r.get(b.as_str())).map(|c| c.0).unwrap_or("untested");
            if let Some(c) = row.and_then(|r| r.get(b.as_str())) {
                names.extend(c.1.iter().copied());
            }
            cells.push_str(&format!("{status:<9}"));
            json_row.insert(b.as_str().into(), status.into());
        }
        names.sort_unstable();
        names.dedup();
        json_row.insert("scenarios".into(), names.into_iter().map(serde_json::Value::from).collect());
        if row.is_some() {
            println!("{rule:<22} {cells}");
        }
        json_rules.insert((*rule).into(), json_row.into());
    }
    let covered = all_rules.iter().filter(|r| matrix.contains_key(*r)).count();
    println!();
    println!(
        "{covered}/{} rules exercised by the built-in scenarios; the workspace tests (cargo test --workspace) check more",
        all_rules.len()
    );
    println!("{} scenario runs, {failures} failed", scenarios::ALL.len() * backends.len());
    if let Some(path) = args.json {
        let doc = serde_json::json!({ "rules": json_rules });
        if let Err(e) = std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap_or_default()) {
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

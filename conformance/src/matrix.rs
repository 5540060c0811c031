//! The rule × backend matrix: runs every scenario (the JSON scenarios of `conformance/scenarios/`
//! through the interpreter, and the registered [`scenarios`](crate::scenarios)) on each chosen
//! backend, and gives every rule of `rules.tsv` a status per backend:
//!
//! - `pass`: a scenario tagged with the rule ran on that backend and every such run passed;
//! - `fail`: a scenario tagged with it failed there;
//! - `skip`: every scenario tagged with it was skipped there, each for a named reason (a capability
//!   the backend lacks, or a program this machine lacks);
//! - `core`: no scenario can reach it through the Rust API ([`scenarios::CORE`]); the core's own
//!   tests check it.
//!
//! A rule with none of these would be `untested`; a test of this crate keeps every rule out of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::scenarios::{self, Outcome, Registered, Runner};
use crate::world::BackendChoice;
use crate::{interpreter, Scenario};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The backends, in column order.
    pub backends: Vec<BackendChoice>,
    /// How many scenario runs at once (default: the machine's parallelism). Each run has its own
    /// runtime or simulation, so independent runs do not share anything but the loopback interface.
    pub jobs: Option<usize>,
}

/// The status of one rule on one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Every run of a scenario tagged with it passed (at least one ran).
    Pass,
    /// A scenario tagged with it failed.
    Fail,
    /// Every scenario tagged with it was skipped, each with a reason.
    Skip,
    /// Only the core's tests can reach it.
    Core,
    /// Nothing checks it (a test keeps this from happening).
    Untested,
}

impl Status {
    /// `"pass"`, `"fail"`, `"skip"`, `"core"` or `"untested"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
            Status::Core => "core",
            Status::Untested => "untested",
        }
    }
}

/// One rule on one backend.
#[derive(Clone, Debug)]
pub struct Cell {
    /// Its status.
    pub status: Status,
    /// Why it is `skip` or `core` (empty otherwise).
    pub reasons: Vec<String>,
}

/// One scenario run.
#[derive(Clone, Debug)]
pub struct RunRecord {
    /// The scenario (`group::name`, or `json::name` for a JSON scenario).
    pub scenario: String,
    /// The backend.
    pub backend: BackendChoice,
    /// What it gave.
    pub outcome: Outcome,
    /// How long it took (wall clock; informative only).
    pub took: Duration,
}

/// The matrix and the runs it was built from.
#[derive(Debug)]
pub struct Matrix {
    /// The backends (columns).
    pub backends: Vec<BackendChoice>,
    /// Every rule of `rules.tsv`, in its order, with its cell per backend and the scenarios
    /// tagged with it.
    pub rules: Vec<(&'static str, Vec<Cell>, Vec<String>)>,
    /// Every run, in registry order.
    pub runs: Vec<RunRecord>,
    /// Rule IDs scenarios name that `rules.tsv` does not list (each a mistake).
    pub unknown: Vec<String>,
}

/// One scenario the matrix runs: its name, rules, and how it runs on a backend.
pub struct Entry {
    /// `group::name` or `json::name`.
    pub name: String,
    /// The rule IDs it is tagged with.
    pub rules: Vec<String>,
    source: Source,
}

enum Source {
    Json(Box<Scenario>),
    Registered(&'static Registered),
}

impl Entry {
    /// Runs it on `backend`.
    pub fn run(&self, backend: BackendChoice) -> Outcome {
        match &self.source {
            Source::Json(scenario) => match interpreter::run(scenario, backend).1 {
                Ok(()) => Outcome::Pass,
                Err(e) => match e.strip_prefix("skip:") {
                    Some(reason) => Outcome::Skip(reason.trim().to_owned()),
                    None => Outcome::Fail(e),
                },
            },
            Source::Registered(registered) => registered.run_on(backend),
        }
    }

    /// Whether it can run on `backend` as far as the registry knows (JSON scenarios may still
    /// skip a fault the backend's harness cannot inject).
    pub fn planned_on(&self, backend: BackendChoice) -> Result<(), &'static str> {
        match &self.source {
            Source::Registered(Registered { run: Runner::Only { backend: only, elsewhere, .. }, .. })
                if *only != backend =>
            {
                Err(elsewhere)
            }
            _ => Ok(()),
        }
    }
}

/// Every rule ID of `rules.tsv`, in its order.
pub fn rule_ids() -> Vec<&'static str> {
    include_str!("../rules.tsv")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split('\t').next())
        .collect()
}

/// The JSON scenarios shipped in `conformance/scenarios/`, by file name; `Err` lists the files
/// that do not parse.
pub fn json_scenarios() -> Result<Vec<Scenario>, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("no scenario folder at {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
    paths.sort();
    let mut scenarios = Vec::new();
    let mut errors = Vec::new();
    for path in &paths {
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| Scenario::from_json(&t).map_err(|e| e.to_string()))
        {
            Ok(s) => scenarios.push(s),
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    if errors.is_empty() {
        Ok(scenarios)
    } else {
        Err(errors.join("\n"))
    }
}

/// Every scenario of the matrix: the JSON ones, then the registry's.
pub fn entries() -> Result<Vec<Entry>, String> {
    let mut entries: Vec<Entry> = json_scenarios()?
        .into_iter()
        .map(|s| Entry {
            name: format!("json::{}", s.name),
            rules: s.rules.clone(),
            source: Source::Json(Box::new(s)),
        })
        .collect();
    entries.extend(scenarios::all().map(|(group, r)| Entry {
        name: format!("{group}::{}", r.name),
        rules: r.rules().into_iter().map(str::to_owned).collect(),
        source: Source::Registered(r),
    }));
    Ok(entries)
}

/// Runs every scenario on every backend of `options` (several at once), printing a line per run
/// as it ends, and builds the matrix.
///
/// Under the environment variable [`scenarios::ONLY_ENV`] (set by
/// [`scenarios::rerun_self`] for a child process) it runs only that scenario and exits the
/// process with its outcome.
pub fn run(options: &Options) -> Result<Matrix, String> {
    let entries = entries()?;
    if let Ok(only) = std::env::var(scenarios::ONLY_ENV) {
        std::process::exit(run_only(&entries, &only));
    }
    let jobs: Vec<(usize, BackendChoice)> =
        (0..entries.len()).flat_map(|i| options.backends.iter().map(move |b| (i, *b))).collect();
    let workers = options
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, jobs.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<RunRecord>>> = Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let at = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(entry, backend)) = jobs.get(at) else { break };
                let entry = &entries[entry];
                let started = Instant::now();
                let outcome = entry.run(backend);
                let record =
                    RunRecord { scenario: entry.name.clone(), backend, outcome, took: started.elapsed() };
                println!("{}", record.line());
                if let Ok(mut results) = results.lock() {
                    results[at] = Some(record);
                }
            });
        }
    });
    let runs: Vec<RunRecord> =
        results.into_inner().map_err(|_| "a scenario thread panicked")?.into_iter().flatten().collect();
    Ok(build(&entries, &options.backends, runs))
}

/// Runs the one scenario `name` (`group::name`, or the bare function name) on the backend(s) it
/// runs on; the process exit code.
fn run_only(entries: &[Entry], name: &str) -> i32 {
    let Some(entry) = entries.iter().find(|e| e.name == name || e.name.rsplit("::").next() == Some(name))
    else {
        eprintln!("no scenario named {name}");
        return 2;
    };
    let mut code = 0;
    for backend in [BackendChoice::Sim, BackendChoice::Real] {
        if entry.planned_on(backend).is_err() {
            continue;
        }
        let started = Instant::now();
        let outcome = entry.run(backend);
        let record = RunRecord { scenario: entry.name.clone(), backend, outcome, took: started.elapsed() };
        println!("{}", record.line());
        if matches!(record.outcome, Outcome::Fail(_)) {
            code = 1;
        }
    }
    code
}

/// The matrix from the runs of `entries` on `backends`.
fn build(entries: &[Entry], backends: &[BackendChoice], runs: Vec<RunRecord>) -> Matrix {
    let ids = rule_ids();
    let known: BTreeSet<&str> = ids.iter().copied().collect();
    let mut unknown = BTreeSet::new();
    // rule -> backend -> outcomes of the runs of scenarios tagged with it.
    let mut seen: BTreeMap<&str, BTreeMap<BackendChoice, Vec<&Outcome>>> = BTreeMap::new();
    let mut tagged: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for entry in entries {
        for rule in &entry.rules {
            if !known.contains(rule.as_str()) {
                unknown.insert(format!("{rule} (in {})", entry.name));
            }
            tagged.entry(rule.as_str()).or_default().push(entry.name.clone());
        }
    }
    let by_name: BTreeMap<&str, &Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    for run in &runs {
        let Some(entry) = by_name.get(run.scenario.as_str()) else { continue };
        for rule in &entry.rules {
            seen.entry(rule.as_str()).or_default().entry(run.backend).or_default().push(&run.outcome);
        }
    }
    let core: BTreeMap<&str, &str> = scenarios::CORE.iter().copied().collect();
    let rules = ids
        .iter()
        .map(|&rule| {
            let cells = backends
                .iter()
                .map(|backend| {
                    let outcomes = seen.get(rule).and_then(|b| b.get(backend)).map_or(&[][..], Vec::as_slice);
                    cell(outcomes, core.get(rule).copied())
                })
                .collect();
            let mut names = tagged.get(rule).cloned().unwrap_or_default();
            names.sort();
            names.dedup();
            (rule, cells, names)
        })
        .collect();
    Matrix { backends: backends.to_vec(), rules, runs, unknown: unknown.into_iter().collect() }
}

/// The cell of a rule from the outcomes of its scenarios' runs on one backend.
fn cell(outcomes: &[&Outcome], core: Option<&str>) -> Cell {
    let mut reasons: Vec<String> = Vec::new();
    let (mut pass, mut fail) = (false, false);
    for outcome in outcomes {
        match outcome {
            Outcome::Pass => pass = true,
            Outcome::Fail(_) => fail = true,
            Outcome::Skip(why) => {
                if !reasons.contains(why) {
                    reasons.push(why.clone());
                }
            }
        }
    }
    let status = if fail {
        Status::Fail
    } else if pass {
        Status::Pass
    } else if !reasons.is_empty() {
        Status::Skip
    } else if let Some(why) = core {
        reasons.push(why.to_owned());
        Status::Core
    } else {
        Status::Untested
    };
    if matches!(status, Status::Pass | Status::Fail) {
        reasons.clear();
    }
    Cell { status, reasons }
}

/// Each rule's status per backend without running anything: `pass` stands for "a scenario
/// tagged with it runs there", `skip` for "every such scenario is bound to the other backend".
pub fn planned(entries: &[Entry]) -> BTreeMap<&'static str, [Status; 2]> {
    let core: BTreeSet<&str> = scenarios::CORE.iter().map(|(id, _)| *id).collect();
    rule_ids()
        .into_iter()
        .map(|rule| {
            let status = [BackendChoice::Sim, BackendChoice::Real].map(|backend| {
                let tagged = entries.iter().filter(|e| e.rules.iter().any(|r| r == rule));
                let mut status = if core.contains(rule) { Status::Core } else { Status::Untested };
                for entry in tagged {
                    match entry.planned_on(backend) {
                        Ok(()) => return Status::Pass,
                        Err(_) => status = Status::Skip,
                    }
                }
                status
            });
            (rule, status)
        })
        .collect()
}

impl RunRecord {
    /// Its line in the command's output.
    pub fn line(&self) -> String {
        let (status, detail) = match &self.outcome {
            Outcome::Pass => ("pass", String::new()),
            Outcome::Fail(e) => ("FAIL", format!(": {e}")),
            Outcome::Skip(why) => ("skip", format!(" ({why})")),
        };
        format!(
            "{status:<5} {:<4} {:>7.2}s {}{detail}",
            self.backend.as_str(),
            self.took.as_secs_f64(),
            self.scenario
        )
    }
}

impl Matrix {
    /// The runs that failed.
    pub fn failures(&self) -> usize {
        self.runs.iter().filter(|r| matches!(r.outcome, Outcome::Fail(_))).count()
    }

    /// How many rules have `status` on the backend of column `column`.
    pub fn count(&self, column: usize, status: Status) -> usize {
        self.rules
            .iter()
            .filter(|(_, cells, _)| cells.get(column).is_some_and(|c| c.status == status))
            .count()
    }

    /// The matrix as text: a line per rule (status per backend, then the reasons of `skip` and
    /// `core` cells), then totals.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let columns: String = self.backends.iter().map(|b| format!("{:<6}", b.as_str())).collect();
        out.push_str(&format!("{:<20} {columns}why not pass\n", "rule"));
        for (rule, cells, _) in &self.rules {
            let statuses: String = cells.iter().map(|c| format!("{:<6}", c.status.as_str())).collect();
            let line = format!("{rule:<20} {statuses}{}", self.reason(cells));
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push('\n');
        for (column, backend) in self.backends.iter().enumerate() {
            let counts: Vec<String> =
                [Status::Pass, Status::Fail, Status::Skip, Status::Core, Status::Untested]
                    .into_iter()
                    .map(|s| format!("{} {}", self.count(column, s), s.as_str()))
                    .collect();
            out.push_str(&format!(
                "{:<4}: {} of {} rules\n",
                backend.as_str(),
                counts.join(", "),
                self.rules.len()
            ));
        }
        let skipped = self.runs.iter().filter(|r| matches!(r.outcome, Outcome::Skip(_))).count();
        out.push_str(&format!(
            "{} scenario runs: {} passed, {} failed, {skipped} skipped\n",
            self.runs.len(),
            self.runs.len() - self.failures() - skipped,
            self.failures()
        ));
        for unknown in &self.unknown {
            out.push_str(&format!("unknown rule ID {unknown}\n"));
        }
        out
    }

    /// The reasons of a rule's `skip` and `core` cells, each prefixed by its backend when the
    /// backends differ.
    fn reason(&self, cells: &[Cell]) -> String {
        let with: Vec<(BackendChoice, &Cell)> =
            self.backends.iter().copied().zip(cells).filter(|(_, c)| !c.reasons.is_empty()).collect();
        let same =
            with.len() == self.backends.len() && with.windows(2).all(|w| w[0].1.reasons == w[1].1.reasons);
        if same {
            return with.first().map(|(_, c)| c.reasons.join("; ")).unwrap_or_default();
        }
        with.iter()
            .map(|(b, c)| format!("{}: {}", b.as_str(), c.reasons.join("; ")))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// `{"rules": {"TCP-CTOR-01": {"sim": "pass", "real": "skip", "scenarios": [...], "reason": ...}}}`
    /// (`reason` only for rules with a `skip` or `core` cell).
    pub fn to_json(&self) -> serde_json::Value {
        let mut rules = serde_json::Map::new();
        for (rule, cells, names) in &self.rules {
            let mut row = serde_json::Map::new();
            for (backend, cell) in self.backends.iter().zip(cells) {
                row.insert(backend.as_str().into(), cell.status.as_str().into());
            }
            row.insert(
                "scenarios".into(),
                names.iter().map(|n| serde_json::Value::from(n.as_str())).collect(),
            );
            let reason = self.reason(cells);
            if !reason.is_empty() {
                row.insert("reason".into(), reason.into());
            }
            rules.insert((*rule).into(), row.into());
        }
        let runs: Vec<serde_json::Value> = self
            .runs
            .iter()
            .map(|r| {
                let (status, detail) = match &r.outcome {
                    Outcome::Pass => ("pass", None),
                    Outcome::Fail(e) => ("fail", Some(e.as_str())),
                    Outcome::Skip(why) => ("skip", Some(why.as_str())),
                };
                serde_json::json!({ "scenario": r.scenario, "backend": r.backend.as_str(), "status": status, "detail": detail })
            })
            .collect();
        serde_json::json!({ "rules": rules, "runs": runs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_wins_then_a_pass_then_skips_then_core() {
        let (pass, fail, skip) = (Outcome::Pass, Outcome::Fail("x".into()), Outcome::Skip("no netem".into()));
        assert_eq!(cell(&[&skip, &pass, &fail], None).status, Status::Fail);
        assert_eq!(cell(&[&skip, &pass], Some("core")).status, Status::Pass);
        let skipped = cell(&[&skip, &skip], Some("core"));
        assert_eq!((skipped.status, skipped.reasons), (Status::Skip, vec!["no netem".to_owned()]));
        assert_eq!(cell(&[], Some("rust types")).status, Status::Core);
        assert_eq!(cell(&[], None).status, Status::Untested);
    }
}

//! Replay files (DESIGN §8): a failing case written as a value — scenario, seed, crate version,
//! git commit, the failing trace (and its digest), whether `tokio_unstable` was on — and replayed
//! from that file alone. The digest is compared only when the file's commit is the build's: then
//! a replay is "reproduced bit for bit" or "diverged at event N".

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::interpreter;
use crate::model;
use crate::scenario::Scenario;
use crate::trace::Trace;
use crate::world::BackendChoice;

/// Version of the replay format.
pub const REPLAY_VERSION: u32 = 1;

/// The git commit this build comes from (`unknown` outside a git checkout).
pub const GIT_COMMIT: &str = env!("TCPUDP_GIT_COMMIT");

/// One replay file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayFile {
    /// Format version ([`REPLAY_VERSION`]).
    pub version: u32,
    /// The scenario that failed (its seed included).
    pub scenario: Scenario,
    /// The seed (also in the scenario; kept at the top for readers).
    pub seed: u64,
    /// `tcpudp-conformance`'s version.
    pub crate_version: String,
    /// The git commit that recorded the file.
    pub git_commit: String,
    /// Whether the build had `--cfg tokio_unstable` (seeded `select!`; DESIGN §2).
    pub tokio_unstable: bool,
    /// The backend it ran on (`"sim"`).
    pub backend: String,
    /// What failed.
    pub failure: String,
    /// The failing trace's digest.
    pub digest: String,
    /// The failing trace.
    pub trace: Trace,
}

impl ReplayFile {
    /// A replay file for `scenario`, which failed with `failure` and recorded `trace`.
    pub fn new(scenario: &Scenario, trace: &Trace, failure: &str) -> ReplayFile {
        ReplayFile {
            version: REPLAY_VERSION,
            scenario: scenario.clone(),
            seed: scenario.seed,
            crate_version: env!("CARGO_PKG_VERSION").to_owned(),
            git_commit: GIT_COMMIT.to_owned(),
            tokio_unstable: cfg!(tokio_unstable),
            backend: trace.backend.clone(),
            failure: failure.to_owned(),
            digest: trace.digest(),
            trace: trace.clone(),
        }
    }

    /// Writes the file into `dir` (created if missing) as `<seed>-<digest>.json`.
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("case-{:016x}-{}.json", self.seed, self.digest));
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Reads a replay file.
    pub fn read(path: &Path) -> Result<ReplayFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: ReplayFile = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if file.version != REPLAY_VERSION {
            return Err(format!(
                "{}: replay format {} (this build reads {REPLAY_VERSION})",
                path.display(),
                file.version
            ));
        }
        Ok(file)
    }
}

/// How a replay compares with the recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Same commit, same digest.
    BitForBit,
    /// Same commit, another trace: the first differing event.
    DivergedAt(usize),
    /// Another commit (or build flags): the digest is not compared.
    NotCompared(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::BitForBit => f.write_str("reproduced bit for bit"),
            Verdict::DivergedAt(n) => write!(f, "diverged at event {n}"),
            Verdict::NotCompared(why) => write!(f, "digest not compared: {why}"),
        }
    }
}

/// What replaying a file gave.
#[derive(Clone, Debug)]
pub struct Replayed {
    /// The new trace.
    pub trace: Trace,
    /// The failure now (interpreter error or broken invariants), if any.
    pub failure: Option<String>,
    /// The comparison with the recording.
    pub verdict: Verdict,
}

/// Replays `file` on its backend and compares.
pub fn replay(file: &ReplayFile) -> Replayed {
    let backend = if file.backend == "real" { BackendChoice::Real } else { BackendChoice::Sim };
    let (trace, outcome) = interpreter::run(&file.scenario, backend);
    let bounds = if file.scenario.tolerant { crate::campaign::bounds() } else { model::Bounds::default() };
    let failure = crate::campaign::failure_of(outcome, &model::check(&trace, bounds));
    let verdict = if file.git_commit != GIT_COMMIT || GIT_COMMIT == "unknown" {
        Verdict::NotCompared(format!("recorded at commit {}, this build is {GIT_COMMIT}", file.git_commit))
    } else if file.tokio_unstable != cfg!(tokio_unstable) {
        Verdict::NotCompared("recorded with another tokio_unstable setting".into())
    } else if trace.digest() == file.digest {
        Verdict::BitForBit
    } else {
        Verdict::DivergedAt(file.trace.first_divergence(&trace).unwrap_or(0))
    };
    Replayed { trace, failure, verdict }
}

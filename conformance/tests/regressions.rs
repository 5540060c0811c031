//! Every replay file under `conformance/regressions/` passes the oracle now (DESIGN §8).

use tcpudp_conformance::replay::{self, ReplayFile, Verdict};

// rule: INV-05, TCP-HALFCLOSE-01
#[test]
fn every_regression_file_replays_and_passes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let files: Vec<_> = paths.iter().filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    assert!(!files.is_empty(), "no regression files in {}", dir.display());
    for path in files {
        let file = ReplayFile::read(path).unwrap_or_else(|e| panic!("{e}"));
        let replayed = replay::replay(&file);
        assert_eq!(replayed.failure, None, "{} fails again", path.display());
        // At the recording commit a changed outcome must show as a divergence.
        if let Verdict::BitForBit = replayed.verdict {
            panic!("{} passes now yet reproduces its failing trace bit for bit", path.display());
        }
    }
}

//! A deliberately broken core (feature `mutations`: one §9 row disabled) makes the campaign fail,
//! and the replay file it writes — under a temporary directory, never in the source tree —
//! reproduces the failure from the file alone, bit for bit at this commit. Its own test binary:
//! the disabled row is process-wide.

use std::time::Duration;

use tcpudp_conformance::campaign;
use tcpudp_conformance::replay::{self, ReplayFile, Verdict};
use tcpudp_core::state::mutation;
use tcpudp_core::Row;

// rule: TCP-OPEN-02, INV-04, INV-05
#[test]
fn a_broken_core_fails_the_campaign_and_its_replay_file_reproduces_the_failure() {
    // halfClose() no longer moves open → halfclosed (RULES.md §9).
    mutation::disable(Some(Row::TcpOpenHalfClose));
    let summary = campaign::run(0xb0_4e11, 32, 2, &|_| {});
    let failure = summary.failures.first().expect("the broken core went unnoticed");
    let (case, why) = campaign::shrink(0xb0_4e11, failure.index, Duration::from_secs(20));
    assert!(case.ops.len() <= failure.case.ops.len());
    let scenario = case.scenario(None);
    let (trace, outcome) =
        tcpudp_conformance::interpreter::run(&scenario, tcpudp_conformance::BackendChoice::Sim);
    let violations = tcpudp_conformance::model::check(&trace, campaign::bounds());
    let failed = campaign::failure_of(outcome, &violations).expect("the shrunk case still fails");
    assert!(!why.is_empty());

    let dir = std::env::temp_dir().join(format!("tcpudp-broken-core-{}", std::process::id()));
    let path = ReplayFile::new(&scenario, &trace, &failed).write(&dir).expect("replay file written");
    assert!(path.starts_with(std::env::temp_dir()));
    let file = ReplayFile::read(&path).expect("replay file read back");
    let replayed = replay::replay(&file);
    assert_eq!(replayed.failure.as_deref(), Some(failed.as_str()), "the replay fails the same way");
    if replay::GIT_COMMIT != "unknown" {
        assert_eq!(replayed.verdict, Verdict::BitForBit);
    }

    // The intact core passes the same file: the failure was the mutation's.
    mutation::disable(None);
    let fixed = replay::replay(&file);
    assert_eq!(fixed.failure, None, "{:?}", fixed.failure);
    assert!(matches!(fixed.verdict, Verdict::DivergedAt(_) | Verdict::NotCompared(_)));
    let _ = std::fs::remove_dir_all(&dir);
}

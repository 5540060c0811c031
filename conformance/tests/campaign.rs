//! The fault campaign in `cargo test`: at least 256 random cases on the simulator with swarm fault
//! profiles, checked by the reference model; every enabled fault kind effective, every coverage
//! goal reached; the same seed gives the same digest.

use tcpudp_conformance::campaign;

/// Cases per `cargo test` run (DESIGN §8: at least 256); `TCPUDP_CASES` runs more.
fn cases() -> u64 {
    std::env::var("TCPUDP_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256).max(256)
}

// rule: INV-01, INV-02, INV-03, INV-04, INV-05, INV-06, INV-07, INV-08, INV-09, INV-10, INV-11
#[test]
fn random_cases_with_swarm_faults_keep_every_invariant() {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = std::time::Instant::now();
    let summary = campaign::run(0x7cb_0de5, cases(), jobs, &|_| {});
    eprintln!("{} cases in {:?}, digest {}", summary.cases, started.elapsed(), summary.digest);
    for (kind, (injected, effective)) in &summary.faults {
        eprintln!("  {:<18} injected {injected:>4}  effective {effective:>4}", kind.name());
    }
    for (goal, n) in &summary.goals {
        eprintln!("  {:<40} {n}", goal.name());
    }
    let failures: Vec<String> = summary
        .failures
        .iter()
        .map(|f| format!("case {}: {}", f.index, f.failure.clone().unwrap_or_default()))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(summary.shortfalls().is_empty(), "{:#?}", summary.shortfalls());
}

//! Every JSON scenario under `conformance/scenarios/` on both backends, through the interpreter.

use tcpudp_conformance::{interpreter, model};
use tcpudp_conformance::{BackendChoice, Observation, Scenario};

fn scenarios() -> Vec<Scenario> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            Scenario::from_json(&std::fs::read_to_string(p).unwrap()).unwrap_or_else(|e| panic!("{p:?}: {e}"))
        })
        .collect()
}

#[test]
fn every_scenario_passes_on_both_backends() {
    let all = scenarios();
    assert!(all.len() >= 2);
    for scenario in &all {
        for backend in [BackendChoice::Sim, BackendChoice::Real] {
            let (trace, outcome) = interpreter::run(scenario, backend);
            // A fault the backend's harness cannot inject is a skip with its reason (DESIGN §8).
            let skipped =
                backend == BackendChoice::Real && outcome.as_ref().is_err_and(|e| e.starts_with("skip:"));
            assert!(
                outcome.is_ok() || skipped,
                "{} on {}: {outcome:?}\n{trace:#?}",
                scenario.name,
                backend.as_str()
            );
            // The reference model (RULES.md §11) holds on every trace.
            let violations = model::check(&trace, model::Bounds::default());
            assert!(
                violations.is_empty(),
                "{} on {}: {violations:#?}\n{}",
                scenario.name,
                backend.as_str(),
                serde_json::to_string(&trace).unwrap_or_default()
            );
        }
    }
}

// rule: GEN-07, TCP-WRITE-03, UDP-WRITE-01
#[test]
fn non_byte_chunks_reject_type_error_and_later_writes_still_work() {
    let all = scenarios();
    let tcp = all.iter().find(|s| s.name == "tcp_non_byte_chunks").unwrap();
    let (trace, outcome) = interpreter::run(tcp, BackendChoice::Sim);
    assert!(outcome.is_ok(), "{outcome:?}");
    let settled: Vec<&str> = trace
        .events
        .iter()
        .filter_map(|e| match &e.what {
            Observation::WriteSettled { outcome, .. } if e.socket == "c" => Some(outcome.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(settled, ["TypeError", "TypeError", "ok"]);
    let udp = all.iter().find(|s| s.name == "udp_non_byte_message").unwrap();
    let (trace, outcome) = interpreter::run(udp, BackendChoice::Sim);
    assert!(outcome.is_ok(), "{outcome:?}");
    let first = trace.events.iter().find_map(|e| match &e.what {
        Observation::WriteSettled { outcome, .. } => Some(outcome.clone()),
        _ => None,
    });
    assert_eq!(first.as_deref(), Some("TypeError"));
}

#[test]
fn the_same_seed_gives_the_same_trace_in_simulation() {
    for scenario in scenarios() {
        let (a, _) = interpreter::run(&scenario, BackendChoice::Sim);
        let (b, _) = interpreter::run(&scenario, BackendChoice::Sim);
        assert_eq!(a.digest(), b.digest(), "{}", scenario.name);
        assert!(!a.events.is_empty());
    }
}

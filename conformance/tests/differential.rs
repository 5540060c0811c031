//! Differential fidelity (DESIGN §8): every fault-free JSON scenario gives the same projection
//! in the simulator (fixed-latency link) and on real sockets.

use tcpudp_conformance::{differential, Scenario};

// rule: GEN-04, TCP-OPEN-01, UDP-OPEN-01
#[test]
fn fault_free_scenarios_project_the_same_on_both_backends() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let mut checked = 0;
    let mut differences = Vec::new();
    for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        let scenario = Scenario::from_json(&std::fs::read_to_string(path).unwrap()).unwrap();
        if !differential::fault_free(&scenario) {
            continue;
        }
        checked += 1;
        if let Err(e) = differential::check(&scenario) {
            differences.push(format!("{}: {e}", scenario.name));
        }
    }
    assert!(checked >= 5, "only {checked} fault-free scenarios");
    assert!(differences.is_empty(), "{differences:#?}");
}

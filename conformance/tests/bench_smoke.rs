//! Smoke test of `tcpudp-conformance bench` (issue #6): every workload at a tiny size, through both
//! sides (ours and raw), on both runtimes, with the JSON report checked for shape. No timing is
//! asserted: the figures only have to exist and be finite. The benchmark itself fails (exit status
//! 1) when a workload loses data or a side errors.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Hang guard for one run of the command.
const GUARD: Duration = Duration::from_secs(300);

const WORKLOADS: [&str; 7] =
    ["tcp-bulk", "tcp-pingpong", "tcp-connect", "udp", "sim-tcp-bulk", "sim-udp", "sim-connect"];

/// Tiny sizes for every part.
const TINY: [&str; 22] = [
    "--rounds",
    "2",
    "--min-secs",
    "0",
    "--bulk-bytes",
    "262144",
    "--pingpong-trips",
    "50",
    "--connects",
    "20",
    "--udp-datagrams",
    "200",
    "--sim-bulk-bytes",
    "262144",
    "--sim-connects",
    "10",
    "--sim-datagrams",
    "200",
    "--core-inputs",
    "40000",
    "--idle-connections",
    "20",
];

/// Waits for `child` within [`GUARD`], killing it on timeout; the exit status and stderr.
fn wait(mut child: Child) -> (bool, String) {
    let deadline = Instant::now() + GUARD;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
                }
                return (status.success(), err);
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("bench did not finish within {GUARD:?}");
            }
        }
    }
}

fn bench(args: &[&str]) -> (bool, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_tcpudp-conformance"))
        .arg("bench")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tcpudp-conformance binary runs");
    wait(child)
}

fn number(v: &serde_json::Value, key: &str) -> f64 {
    let n = v[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number in {v}"));
    assert!(n.is_finite(), "{key} is not finite in {v}");
    n
}

fn check_report(path: &Path) {
    let text = std::fs::read_to_string(path).expect("the JSON report was written");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
    let workloads = doc["workloads"].as_array().expect("workloads is a list");
    for name in WORKLOADS {
        let w = workloads
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("workload {name} missing from {text}"));
        assert_eq!(w["rounds"], 2, "{name}: `--rounds 2 --min-secs 0` runs two rounds: {w}");
        let (ratio, min, max) = (number(w, "ratio"), number(w, "min"), number(w, "max"));
        assert!(ratio > 0.0 && min > 0.0, "{name}: ratios must be positive: {w}");
        assert!(min <= ratio && ratio <= max, "{name}: min <= ratio <= max: {w}");
        assert!(number(w, "ours_per_sec") > 0.0 && number(w, "raw_per_sec") > 0.0, "{name}: {w}");
        if !name.starts_with("sim-") {
            assert!(w["multi_thread"]["ratio"].as_f64().is_some_and(f64::is_finite), "{name}: {w}");
            // The CPU split of the current-thread rounds (informational, never compared; at these
            // sizes the kernel's tick-sampled split may well be zero).
            let cpu = &w["cpu_per_unit"];
            for side in ["ours", "raw"] {
                let (user, sys) = (number(&cpu[side], "user_us"), number(&cpu[side], "sys_us"));
                assert!(user >= 0.0 && sys >= 0.0, "{name}: {w}");
            }
        }
        if name.ends_with("udp") {
            let (lo, lr) = (number(w, "loss_ours"), number(w, "loss_raw"));
            assert!((0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&lr), "{name}: {w}");
        }
    }
    assert_eq!(workloads.len(), WORKLOADS.len(), "exactly the issue's workloads: {text}");
    assert!(number(&doc["core"], "inputs_per_sec") > 0.0);
    assert!(number(&doc["core"], "allocs_per_input") >= 0.0);
    // Counted by the allocator, not timed: 1,416 B per idle socket at 20 connections and at 200
    // (the budget is 2 KiB). A socket that keeps a buffer while idle (its outbox's,
    // ~130 B) goes over.
    let idle = number(&doc, "idle_socket_bytes");
    assert!(idle <= 1536.0, "{idle} B of our own state per idle socket: {text}");
    assert_eq!(doc["idle_sockets"].as_u64(), Some(40), "20 connections, both ends: {text}");
    // Counted, not timed: a short connection through tcpudp made 10 allocations more than raw
    // tokio's 4 (callgrind: 14 against 4); 5 more now. The fault layer held inline, the remote
    // address text inline and no permission request built when every TCP remote is allowed
    // took four (issue #6).
    let (ours, raw) = (number(&doc["connect_allocs"], "ours"), number(&doc["connect_allocs"], "raw"));
    assert!(raw > 0.0 && ours <= raw + 6.0, "{ours} allocations per connection against raw's {raw}: {text}");
}

#[test]
fn bench_runs_every_workload_on_both_sides() {
    let path = std::env::temp_dir().join(format!("tcpudp-bench-smoke-{}.json", std::process::id()));
    let mut args = TINY.to_vec();
    let path_text = path.to_string_lossy().into_owned();
    args.extend(["--json", &path_text]);
    let (ok, stderr) = bench(&args);
    assert!(ok, "bench failed:\n{stderr}");
    check_report(&path);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn bench_profiling_side_runs_alone() {
    for side in ["ours", "raw"] {
        let mut args = TINY.to_vec();
        args.extend(["--side", side, "--only", "tcp-pingpong,udp,sim-connect"]);
        let (ok, stderr) = bench(&args);
        assert!(ok, "bench --side {side} failed:\n{stderr}");
    }
}

//! Routing facts that need a network with only `lo` (DESIGN §6): this test binary re-runs itself
//! inside a new user + network namespace (`unshare -rn`), where nothing is routable and no packet
//! can leave the machine. Skipped, with its reason, where namespaces cannot be made.
#![cfg(target_os = "linux")]

use std::net::IpAddr;
use std::process::Command;

use tcpudp::backend::Backend;
use tcpudp_core::Cause;
use tcpudp_net_real::RealBackend;

const INSIDE: &str = "TCPUDP_NET_REAL_IN_NAMESPACE";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

// rule: TCP-CTOR-07, UDP-CTOR-12, UDP-CTOR-11, SRV-CTOR-04, TCP-CTOR-06, UDP-CTOR-09
#[test]
fn lo_only_namespace_has_no_route_out() {
    let usable = Command::new("unshare").args(["-rn", "ip", "link", "set", "lo", "up"]).output();
    if !usable.as_ref().is_ok_and(|out| out.status.success()) {
        eprintln!("skipped: cannot create a network namespace with `unshare -rn` and `ip` here ({usable:?})");
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new("unshare")
        .arg("-rn")
        .arg(exe)
        .args(["--exact", "inside_namespace", "--include-ignored", "--test-threads=1", "--nocapture"])
        .env(INSIDE, "1")
        .output()
        .expect("run the test binary in a namespace");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "inside the namespace:\n{text}");
    assert!(text.contains("1 passed"), "the inner test ran:\n{text}");
}

// rule: TCP-CTOR-07, UDP-CTOR-12
#[tokio::test]
#[ignore = "runs only inside the namespace made by lo_only_namespace_has_no_route_out"]
async fn inside_namespace() {
    assert_eq!(std::env::var(INSIDE).as_deref(), Ok("1"), "run through lo_only_namespace_has_no_route_out");
    let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip");
    assert!(up.success(), "lo up");
    let b = RealBackend::new().unwrap();

    // No route: connect() of the probe socket fails with ENETUNREACH; nothing is sent.
    assert_eq!(b.route(ip("10.9.9.9")), None);
    assert_eq!(b.route(ip("2001:db8::9")), None);
    assert_eq!(b.route(ip("127.0.0.1")), Some(ip("127.0.0.1")));
    assert_eq!(b.route(ip("::1")), Some(ip("::1")));

    // Not a local address.
    assert_eq!(b.probe_local(ip("192.0.2.1")), Err(Cause::Unreachable));
    assert_eq!(b.probe_local(ip("0.0.0.0")), Ok(()));

    // A TCP connect to an unroutable literal fails at once with "unreachable".
    let err = b
        .connect(
            "10.9.9.9:80".parse().unwrap(),
            None,
            tcpudp_core::options::SocketConfig {
                address_reuse: true,
                no_delay: true,
                send_buffer_size: None,
                receive_buffer_size: None,
            },
        )
        .await
        .err();
    assert_eq!(err, Some(Cause::Unreachable));
}

//! Accept backs off after running out of descriptors (DESIGN §6). Its own test binary: it lowers
//! RLIMIT_NOFILE for the whole process (DESIGN §9).
#![cfg(target_os = "linux")]

use std::future::poll_fn;
use std::io;
use std::task::Poll;
use std::time::Duration;

use tcpudp::backend::{cause_of, Backend};
use tcpudp_core::Cause;
use tcpudp_net_real::RealBackend;

/// Lowers the soft descriptor limit so exhausting it is cheap.
fn lower_fd_limit(to: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on a stack value.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.min(to as libc::rlim_t);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// Opens files until the process is out of descriptors.
fn exhaust_descriptors() -> Vec<std::fs::File> {
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => held.push(file),
            Err(err) if err.raw_os_error() == Some(libc::EMFILE) => return held,
            Err(err) => panic!("unexpected error while exhausting descriptors: {err}"),
        }
    }
}

// rule: SRV-CONNFAIL-01
#[tokio::test(start_paused = true)]
async fn accept_reports_emfile_once_then_backs_off() {
    lower_fd_limit(512);
    let b = RealBackend::new().unwrap();
    let mut listener = b.listen("127.0.0.1:0".parse().unwrap(), true, 16).unwrap();
    let target = listener.local_addr().unwrap();
    // The handshake completes in the kernel backlog; nothing is accepted yet.
    let client = std::net::TcpStream::connect(target).unwrap();

    let held = exhaust_descriptors();
    let err = poll_fn(|cx| listener.poll_accept(cx)).await.err().expect("EMFILE");
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE));
    assert_eq!(cause_of(&err), Cause::ResourcesExhausted);
    drop(held);

    // Descriptors are free again, but the listener is backing off: no accept is tried yet.
    let early = poll_fn(|cx| Poll::Ready(listener.poll_accept(cx).map(|r| r.map(|_| ())))).await;
    assert!(early.is_pending(), "accept must pause after EMFILE");

    // The pause ends (the paused clock advances to it) and the waiting connection is accepted.
    let accepted: io::Result<_> =
        tokio::time::timeout(Duration::from_secs(60), poll_fn(|cx| listener.poll_accept(cx)))
            .await
            .expect("hang guard");
    let accepted = accepted.expect("accepted after the pause");
    assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
}

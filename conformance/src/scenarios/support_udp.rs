//! Helpers shared by the UDP and permission tests: hang guards, one-poll checks, and a raw UDP
//! peer outside the library (tokio on 127.0.0.1 for the real backend, turmoil in simulation).

use std::error::Error;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;

use crate::{BackendChoice, Ctx};
use tcpudp::{ErrorName, ReadyState, SocketError, UdpMessage, UdpOptions, UdpReadable, UdpSocket};

/// Hang guard for one step (never a timing assertion): generous on real sockets, simulated time in
/// the simulator.
pub const GUARD: Duration = Duration::from_secs(20);

/// Loopback as text.
pub const LO: &str = "127.0.0.1";

/// A boxed error for test bodies.
pub type TestError = Box<dyn Error>;

/// Awaits `fut` under the hang guard; a timeout is an error naming `what`.
pub async fn within<F: Future>(what: &str, fut: F) -> Result<F::Output, TestError> {
    tokio::time::timeout(GUARD, fut).await.map_err(|_| format!("hang guard: {what} did not finish").into())
}

/// Polls `fut` exactly once (no waker is kept) and reports whether it was still pending.
pub fn pending_once<F: Future>(fut: F) -> bool {
    let mut fut = pin!(fut);
    fut.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending()
}

/// The error name of a result, or `None` for `Ok`.
pub fn err_name<T>(result: &Result<T, SocketError>) -> Option<ErrorName> {
    result.as_ref().err().map(SocketError::kind)
}

/// Asserts `result` failed with `name`.
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(result: Result<T, SocketError>, name: ErrorName) -> SocketError {
    match result {
        Ok(v) => panic!("expected {name}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), name, "expected {name}, got {e}");
            e
        }
    }
}

/// Reads the next message under the hang guard; `Err` when the readable ended.
pub async fn next_msg(reader: &mut UdpReadable) -> Result<UdpMessage, TestError> {
    match within("read", reader.read()).await?? {
        Some(m) => Ok(m),
        None => Err("the readable ended".into()),
    }
}

/// UDP-ATTR-01, STATE-06: every readyState a UDP socket ever had is "opening", "open" or
/// "closed", in rank order, each at most once.
#[track_caller]
pub fn assert_udp_state_log(sock: &UdpSocket) {
    let log = sock.diag().state_log;
    let rank = |s: &ReadyState| match s {
        ReadyState::Opening => 0,
        ReadyState::Open => 1,
        ReadyState::Closed => 4,
        other => panic!("a UDP socket reported {other:?}; log {log:?}"),
    };
    assert_eq!(log.first(), Some(&ReadyState::Opening), "log {log:?}");
    for pair in log.windows(2) {
        assert!(rank(&pair[0]) < rank(&pair[1]), "readyState went backwards or repeated: {log:?}");
    }
    assert_eq!(log.last(), Some(&sock.ready_state()), "log {log:?}");
}

/// A UDP socket outside the library: a test-owned peer (RULES §0.4 `peer`).
pub enum Peer {
    /// tokio on 127.0.0.1 (or ::1).
    Real(tokio::net::UdpSocket),
    /// turmoil on the current simulated host.
    Sim(turmoil::net::UdpSocket),
}

impl Peer {
    /// Binds an ephemeral port: 127.0.0.1 on real sockets, the wildcard of the current simulated
    /// host (which also receives what is sent to its loopback).
    pub async fn bind(ctx: &Ctx) -> io::Result<Peer> {
        match ctx.backend() {
            BackendChoice::Real => {
                Ok(Peer::Real(tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?))
            }
            BackendChoice::Sim => {
                Ok(Peer::Sim(turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?))
            }
        }
    }

    /// A real peer on `ip` (127.0.0.1 or ::1).
    pub async fn bind_real(ip: IpAddr) -> io::Result<Peer> {
        Ok(Peer::Real(tokio::net::UdpSocket::bind((ip, 0)).await?))
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        match self {
            Peer::Real(s) => s.local_addr().map(|a| a.port()).unwrap_or(0),
            Peer::Sim(s) => s.local_addr().map(|a| a.port()).unwrap_or(0),
        }
    }

    /// Sends one datagram.
    pub async fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        match self {
            Peer::Real(s) => s.send_to(data, to).await.map(|_| ()),
            Peer::Sim(s) => s.send_to(data, to).await.map(|_| ()),
        }
    }

    /// Sends one datagram to `127.0.0.1:port` (the library socket on this host).
    pub async fn send_lo(&self, data: &[u8], port: u16) -> io::Result<()> {
        self.send_to(data, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await
    }

    /// Receives one datagram (under the hang guard).
    pub async fn recv(&self) -> Result<(Vec<u8>, SocketAddr), TestError> {
        let mut buf = vec![0u8; 65_536];
        let (n, from) = match self {
            Peer::Real(s) => within("peer recv", s.recv_from(&mut buf)).await??,
            Peer::Sim(s) => within("peer recv", s.recv_from(&mut buf)).await??,
        };
        buf.truncate(n);
        Ok((buf, from))
    }
}

/// A deterministic generator for test data (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// A generator with this seed (0 is replaced).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

/// A payload of `len` bytes (≥ 4) that starts with `seq` and is filled from `seq`.
pub fn seq_payload(seq: u32, len: usize) -> Vec<u8> {
    let mut data = seq.to_be_bytes().to_vec();
    data.extend((0..len.saturating_sub(4)).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8));
    data
}

/// The sequence number a [`seq_payload`] starts with, if the payload is whole.
pub fn seq_of(data: &[u8]) -> Option<u32> {
    let seq = u32::from_be_bytes(data.get(..4)?.try_into().ok()?);
    (seq_payload(seq, data.len()) == data).then_some(seq)
}

/// UDP-READ-04 / EXT-09: N datagrams to a socket nobody reads. Every datagram read is whole, some
/// were lost by tail drop and counted, the socket stays open. Returns (delivered, dropped).
pub async fn flood_unread_socket(ctx: &Ctx, n: u32) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
    within("opened", sock.opened()).await??;
    let port = sock.local_port().ok_or("no port")?;
    let peer = Peer::bind(ctx).await?;
    for seq in 0..n {
        peer.send_lo(&seq_payload(seq, 64), port).await?;
    }
    let capacity = UdpOptions::default().readable_capacity;
    let mut reader = sock.readable()?;
    let mut delivered = 0u64;
    let mut last: Option<u32> = None;
    let mut check = |data: &[u8]| {
        let seq = seq_of(data).unwrap_or_else(|| panic!("a datagram was not whole: {} bytes", data.len()));
        assert!(last.is_none_or(|l| seq > l), "datagram {seq} out of order or duplicated after {last:?}");
        last = Some(seq);
    };
    // Read what is queued: the queue never holds more than its capacity (INV-19).
    let idle = std::time::Duration::from_millis(500);
    for _ in 0..=n {
        assert!(sock.diag().queued_datagrams <= capacity);
        match tokio::time::timeout(idle, reader.read()).await {
            Ok(read) => {
                let msg = read?.ok_or("the readable ended")?;
                check(&msg.data);
                delivered += 1;
            }
            Err(_) => break,
        }
    }
    peer.send_lo(b"marker", port).await?;
    loop {
        let msg = next_msg(&mut reader).await?;
        if &msg.data[..] == b"marker" {
            break;
        }
        check(&msg.data);
        delivered += 1;
    }
    assert_eq!(sock.ready_state(), ReadyState::Open, "overflow never errors the socket");
    let dropped = sock.dropped_datagrams();
    assert!(delivered < u64::from(n), "all {n} datagrams arrived: nothing overflowed");
    match ctx.backend() {
        BackendChoice::Sim => {
            assert_eq!(delivered + 1 + dropped, u64::from(n) + 1, "delivered {delivered}, dropped {dropped}")
        }
        BackendChoice::Real => {
            assert!(dropped > 0, "no drop counted (delivered {delivered})");
            assert!(delivered + 1 + dropped <= u64::from(n) + 1, "delivered {delivered}, dropped {dropped}");
        }
    }
    within("close", sock.close()).await??;
    Ok((delivered, dropped))
}

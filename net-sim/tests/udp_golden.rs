//! A pinned UDP run: the adapter's delivery, in a harness world with a random-latency link,
//! every UDP impairment, a partition, tail drops of a small receive buffer, local delivery and a
//! plain turmoil sender, must give exactly this trace, these receive times and these counts.
//!
//! Performance work on the UDP path must not change simulated behaviour (same seed, same trace,
//! same times, same drops, same random draws): this test pins one run's digest, so a change of
//! behaviour fails it. Change the constants only for a deliberate change of behaviour.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::Bytes;
use tcpudp::backend::{Backend, UdpBind, UdpTransport};
use tcpudp_core::options::SocketConfig;
use tcpudp_net_sim::{LinkProfile, SimBackend, SimBuilder, Simulation, UdpImpairment};
use tokio::io::ReadBuf;

const PORT: u16 = 9000;

fn udp_bind(port: u16, receive_buffer_size: Option<usize>) -> UdpBind {
    UdpBind {
        local: SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        config: SocketConfig {
            address_reuse: true,
            no_delay: true,
            send_buffer_size: None,
            receive_buffer_size,
        },
        multicast_loopback: false,
        multicast_ttl: 1,
        multicast_interface: None,
    }
}

async fn send_to(u: &mut dyn UdpTransport, data: &[u8], dest: SocketAddr) -> io::Result<()> {
    poll_fn(|cx| u.poll_send_to(cx, data, dest)).await
}

async fn recv_from(u: &mut dyn UdpTransport, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, u64)> {
    poll_fn(|cx| {
        let mut rb = ReadBuf::new(&mut *buf);
        let meta = ready!(u.poll_recv_from(cx, &mut rb))?;
        Poll::Ready(Ok::<_, io::Error>((meta.len, meta.from, meta.dropped_total)))
    })
    .await
}

/// A harness world whose links take 1 ms to `max_latency`, stepping by `tick`, for `secs` seconds.
fn world(seed: u64, max_latency: Duration, tick: Duration, secs: u64) -> Simulation<'static> {
    SimBuilder::new(seed)
        .link(LinkProfile::range(Duration::from_millis(1), max_latency))
        .tick(tick)
        .duration(Duration::from_secs(secs))
        .build()
}

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// One run: (the harness's trace digest, trace lines, a digest of what the server read, reads).
/// `UDP_GOLDEN_DUMP=/tmp/x` writes each run's trace to `/tmp/x-<seed>` (to compare two builds).
fn run(seed: u64, tick: Duration) -> (u64, usize, u64, usize) {
    let log: Rc<RefCell<Vec<String>>> = Rc::default();
    let mut sim = world(seed, Duration::from_millis(40), tick, 20);
    let server_log = Rc::clone(&log);
    sim.host("server", move || {
        let log = Rc::clone(&server_log);
        async move {
            let backend = SimBackend::new("server")?;
            // About eight 1200-byte datagrams fit: tail drops while the reader dawdles.
            let mut rx = backend.bind_udp(udp_bind(PORT, Some(8_000))).expect("bind");
            let mut local = backend.bind_udp(udp_bind(0, None)).expect("bind");
            let mut buf = vec![0u8; 65_536];
            for n in 0u32.. {
                let (len, from, dropped) = recv_from(&mut *rx, &mut buf).await?;
                let at = turmoil::sim_elapsed().expect("on a host").as_micros();
                log.borrow_mut().push(format!("{at} {from} {len} {} {dropped}", buf[0]));
                if n % 7 == 3 {
                    tokio::time::sleep(Duration::from_micros(2_500)).await;
                }
                if n % 11 == 0 {
                    send_to(&mut *local, &[n as u8; 300], (Ipv4Addr::LOCALHOST, PORT).into()).await?;
                }
            }
            Ok(())
        }
    })
    .expect("server");
    sim.client("client", async {
        let backend = SimBackend::new("client")?;
        let mut tx = backend.bind_udp(udp_bind(0, None)).expect("bind");
        let server = SocketAddr::new(turmoil::lookup("server"), PORT);
        tokio::time::sleep(Duration::from_millis(5)).await;
        for i in 0..600u32 {
            let len = 200 + (i as usize * 37) % 1_100;
            send_to(&mut *tx, &vec![i as u8; len], server).await?;
            if i % 9 == 8 {
                tokio::time::sleep(Duration::from_micros(700 + u64::from(i % 5) * 300)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    })
    .expect("client");
    sim.client("plain", async {
        let sock = turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
        let server = (turmoil::lookup("server"), PORT);
        tokio::time::sleep(Duration::from_millis(3)).await;
        for i in 0..80u8 {
            sock.send_to(&[i; 500], server).await?;
            tokio::time::sleep(Duration::from_micros(1_900)).await;
        }
        Ok(())
    })
    .expect("plain");
    let impairment = UdpImpairment {
        loss: 0.05,
        duplicate: 0.07,
        reorder: 0.1,
        reorder_delay: Duration::from_millis(7),
        delay: Duration::from_micros(300),
        jitter: Duration::from_micros(2_000),
    };
    sim.at(Duration::from_millis(20), move |f| f.udp_impair("client", "server", impairment));
    sim.at(Duration::from_millis(60), |f| f.partition("plain", "server"));
    sim.at(Duration::from_millis(90), |f| f.repair("plain", "server"));
    sim.at(Duration::from_millis(120), |f| f.partition_oneway("client", "server"));
    sim.at(Duration::from_millis(130), |f| f.repair("client", "server"));
    let report = sim.run().expect("simulation");
    if let Ok(path) = std::env::var("UDP_GOLDEN_DUMP") {
        std::fs::write(format!("{path}-{seed}"), report.trace.join("\n")).expect("dump");
    }
    let log = log.borrow();
    let reads = log.iter().fold(0xcbf2_9ce4_8422_2325, |h, line| fnv(fnv(h, line.as_bytes()), b"\n"));
    (report.digest, report.trace.len(), reads, log.len())
}

#[test]
fn test_a_pinned_udp_run_keeps_its_trace_times_and_drops() {
    let got = [run(11, Duration::from_millis(1)), run(12, Duration::from_micros(1_500))];
    for (seed, line) in [11, 12].iter().zip(&got) {
        println!("seed {seed}: {line:?}");
    }
    assert_eq!(
        got,
        [
            (11_143_091_672_055_224_577, 1_174, 14_714_971_069_613_882_520, 316),
            (8_340_750_718_030_078_111, 1_114, 11_144_472_472_749_314_273, 327),
        ]
    );
}

/// A receiver waiting for a datagram due later is woken for one sent after it that arrives
/// earlier (the simulator skips the wake-up only for arrivals no earlier than the one it waits
/// for): each is read at its own arrival time.
#[test]
fn test_an_earlier_arrival_wakes_a_receiver_waiting_for_a_later_one() {
    let log: Rc<RefCell<Vec<(u128, u8)>>> = Rc::default();
    let mut sim = world(3, Duration::from_millis(1), Duration::from_millis(1), 5);
    let server_log = Rc::clone(&log);
    sim.host("server", move || {
        let log = Rc::clone(&server_log);
        async move {
            let backend = SimBackend::new("server")?;
            let mut rx = backend.bind_udp(udp_bind(PORT, None)).expect("bind");
            let mut buf = vec![0u8; 16];
            loop {
                recv_from(&mut *rx, &mut buf).await?;
                let at = turmoil::sim_elapsed().expect("on a host").as_millis();
                log.borrow_mut().push((at, buf[0]));
            }
        }
    })
    .expect("server");
    sim.client("client", async {
        let backend = SimBackend::new("client")?;
        let mut tx = backend.bind_udp(udp_bind(0, None)).expect("bind");
        let server = SocketAddr::new(turmoil::lookup("server"), PORT);
        tokio::time::sleep(Duration::from_millis(5)).await;
        send_to(&mut *tx, b"A", server).await?; // 30 ms of extra delay: due at 36 ms
        tokio::time::sleep(Duration::from_millis(7)).await;
        send_to(&mut *tx, b"B", server).await?; // no extra delay: due at 13 ms
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    })
    .expect("client");
    let slow = UdpImpairment { delay: Duration::from_millis(30), ..UdpImpairment::default() };
    sim.at(Duration::ZERO, move |f| f.udp_impair("client", "server", slow));
    sim.at(Duration::from_millis(9), |f| f.udp_impair("client", "server", UdpImpairment::default()));
    sim.run().expect("simulation");
    assert_eq!(*log.borrow(), [(13, b'B'), (36, b'A')]);
}

struct WakeCount(std::sync::atomic::AtomicUsize);

impl std::task::Wake for WakeCount {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A receive says when it handed over the last due datagram and already waits for the next one
/// with the caller's waker (`RecvMeta::registered`, which lets the library skip a receive that
/// would find nothing), and that waiter is then woken by the next datagram.
#[test]
fn test_a_receive_says_when_it_already_waits_for_the_next_datagram() {
    let mut sim = SimBuilder::new(5).build();
    sim.client("solo", async {
        let backend = SimBackend::new("solo")?;
        let mut rx = backend.bind_udp(udp_bind(PORT, None)).expect("bind");
        let mut tx = backend.bind_udp(udp_bind(0, None)).expect("bind");
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
        let wakes = std::sync::Arc::new(WakeCount(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut recv = |rx: &mut dyn UdpTransport| match rx.poll_recv_bytes(&mut cx) {
            Poll::Ready(Ok((data, meta))) => Some((data, meta.registered)),
            Poll::Ready(Err(e)) => panic!("receive failed: {e}"),
            Poll::Pending => None,
        };
        send_to(&mut *tx, b"1", to).await?;
        send_to(&mut *tx, b"2", to).await?;
        assert_eq!(recv(&mut *rx), Some((Bytes::from_static(b"1"), false)), "another one is queued");
        assert_eq!(recv(&mut *rx), Some((Bytes::from_static(b"2"), true)), "the last one, waiting");
        let woken = |w: &WakeCount| w.0.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(woken(&wakes), 0);
        send_to(&mut *tx, b"3", to).await?;
        assert_eq!(woken(&wakes), 1, "the next datagram wakes the waiter");
        assert_eq!(recv(&mut *rx), Some((Bytes::from_static(b"3"), true)));
        assert_eq!(recv(&mut *rx), None);
        Ok(())
    })
    .expect("client");
    sim.run().expect("simulation");
}

//! Bounded memory on real sockets (issue #3): a peer floods a socket whose application does not
//! read, and the process's live heap stays bounded, because the library stops reading from the
//! OS (TCP flow control stops the peer; the kernel tail-drops UDP datagrams). Its own test binary:
//! a counting `#[global_allocator]` measures the live heap of the whole process, so the tests of
//! this file run one at a time (the `SERIAL` lock) on runtimes they build themselves.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tcpudp::{Datagram, Policy, ReadyState, TcpOptions, TcpSocket, UdpOptions, UdpSocket};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Live heap bytes of the process, and the highest value since the last `reset_peak`.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grow(by: usize) {
    let now = LIVE.fetch_add(by as isize, Ordering::Relaxed) + by as isize;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrink(by: usize) {
    LIVE.fetch_sub(by as isize, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            shrink(layout.size());
            grow(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn reset_peak() {
    PEAK.store(live(), Ordering::Relaxed);
}

fn peak() -> isize {
    PEAK.load(Ordering::Relaxed)
}

/// The heap is process-wide: the tests of this binary must not overlap.
static SERIAL: Mutex<()> = Mutex::new(());

const MIB: usize = 1024 * 1024;
/// The bound on heap growth while a peer floods a non-reading socket.
const HEAP_BOUND: isize = 16 * MIB as isize;
const GUARD: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

async fn within<F: std::future::Future>(what: &str, fut: F) -> Result<F::Output, String> {
    tokio::time::timeout(GUARD, fut).await.map_err(|_| format!("hang guard: {what}"))
}

/// The TCP payload: byte `i` of the stream is `i % 251` (a period prime to every chunk size).
const PERIOD: usize = 251;
const TCP_TOTAL: usize = 256 * MIB;
const PEER_CHUNK: usize = 64 * 1024;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % PERIOD) as u8).collect()
}

// rule: TCP-READ-FLOW-01, TCP-READ-PULL-01
#[test]
fn tcp_flood_of_a_non_reading_socket_keeps_the_heap_bounded() -> TestResult {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let rt = runtime();
    rt.block_on(async {
        let net = tcpudp_net_real::network(Policy::allow_all())?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();

        // The peer: a blocking std writer, so it stops exactly when TCP flow control stops it.
        let written = Arc::new(AtomicU64::new(0));
        let peer = {
            let written = written.clone();
            thread::spawn(move || -> std::io::Result<()> {
                let (mut stream, _) = listener.accept()?;
                stream.set_write_timeout(Some(Duration::from_secs(60)))?;
                // A buffer of PEER_CHUNK + PERIOD bytes: every chunk is a slice of it.
                let buf = pattern(PEER_CHUNK + PERIOD);
                let mut off = 0usize;
                while off < TCP_TOTAL {
                    let n = PEER_CHUNK.min(TCP_TOTAL - off);
                    let start = off % PERIOD;
                    stream.write_all(&buf[start..start + n])?;
                    off += n;
                    written.store(off as u64, Ordering::Relaxed);
                }
                stream.flush()?;
                Ok(()) // dropping the stream sends FIN
            })
        };

        let sock = TcpSocket::new(&net, "127.0.0.1", port, TcpOptions::default())?;
        within("opened", sock.opened()).await??;
        let hwm = TcpOptions::default().readable_high_water_mark;
        // The heap before the flood reaches the library (the peer is still in accept or just
        // past it; nothing has been read).
        let before = live();
        reset_peak();

        // Wait, bounded, until the library stopped reading and the peer is blocked: the peer's
        // progress is unchanged for 300 ms in a row while read interest is off.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = u64::MAX;
        let mut stable_since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = written.load(Ordering::Relaxed);
            if now != last {
                last = now;
                stable_since = Instant::now();
            }
            let diag = sock.diag();
            if !diag.read_interest && now > 0 && stable_since.elapsed() >= Duration::from_millis(300) {
                break;
            }
            assert!(Instant::now() < deadline, "the peer never blocked (written {now}, diag {diag:?})");
        }
        let diag = sock.diag();
        let at_block = live();
        let peak_growth = peak() - before;
        let growth = at_block - before;
        let blocked_at = written.load(Ordering::Relaxed) as usize;
        eprintln!(
            "tcp: peer blocked after {} KiB; library queue {} B; heap growth {} KiB (peak {} KiB)",
            blocked_at / 1024,
            diag.queued_read_bytes,
            growth / 1024,
            peak_growth / 1024
        );
        assert!(!diag.read_interest, "TCP-READ-FLOW-01: the library stopped reading");
        assert!(blocked_at < TCP_TOTAL, "TCP-READ-FLOW-01: flow control stopped the peer");
        assert!(
            diag.queued_read_bytes <= hwm + PEER_CHUNK.max(hwm),
            "the inbound queue stays near the high-water mark: {} B",
            diag.queued_read_bytes
        );
        assert!(growth < HEAP_BOUND, "live heap grew by {growth} B while the peer was blocked");
        assert!(peak_growth < HEAP_BOUND, "live heap peaked {peak_growth} B above the baseline");

        // TCP-READ-PULL-01: the app reads; the peer's blocked writes complete, all bytes intact.
        let check = pattern(PEER_CHUNK * 4 + PERIOD);
        let mut reader = sock.readable()?;
        let mut total = 0usize;
        let read_started = Instant::now();
        loop {
            let Some(chunk) = within("read", reader.read()).await?? else { break };
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let n = rest.len().min(PEER_CHUNK * 4);
                let start = total % PERIOD;
                assert!(rest[..n] == check[start..start + n], "payload corrupted near byte {total}");
                total += n;
                rest = &rest[n..];
            }
            assert!(total <= TCP_TOTAL, "more bytes than sent: {total}");
            assert!(read_started.elapsed() < GUARD, "reading 256 MiB took too long ({total} B read)");
        }
        assert_eq!(total, TCP_TOTAL, "every byte arrived, then end of stream");
        peer.join().map_err(|_| "peer panicked")??;
        eprintln!("tcp: read 256 MiB in {:?}", read_started.elapsed());
        within("close", sock.close()).await??;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    eprintln!("tcp: test ran {:?}", started.elapsed());
    Ok(())
}

const UDP_COUNT: u32 = 100_000;
const UDP_SIZE: usize = 1_000;
const MARKER: &[u8] = b"marker";

fn udp_payload(seq: u32) -> Vec<u8> {
    let mut data = vec![(seq % 251) as u8; UDP_SIZE];
    data[..4].copy_from_slice(&seq.to_be_bytes());
    data
}

// rule: UDP-READ-04, EXT-09
#[test]
fn udp_flood_of_a_non_reading_socket_keeps_the_heap_bounded() -> TestResult {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let rt = runtime();
    rt.block_on(async {
        let net = tcpudp_net_real::network(Policy::allow_all())?;
        let sock = UdpSocket::new(
            &net,
            UdpOptions { local_address: Some("127.0.0.1".into()), ..UdpOptions::default() },
        )?;
        within("opened", sock.opened()).await??;
        let port = sock.local_port().ok_or("no local port")?;
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let peer = StdUdpSocket::bind("127.0.0.1:0")?;
        let peer_addr = peer.local_addr()?;
        peer.set_read_timeout(Some(Duration::from_secs(20)))?;

        let before = live();
        reset_peak();
        let done = Arc::new(AtomicBool::new(false));
        let flood = {
            let done = done.clone();
            thread::spawn(move || {
                let mut sent = 0u32;
                for seq in 0..UDP_COUNT {
                    // Paced only by the kernel; a send the kernel refuses (ENOBUFS) is a loss too.
                    if peer.send_to(&udp_payload(seq), to).is_ok() {
                        sent += 1;
                    }
                }
                done.store(true, Ordering::Relaxed);
                (peer, sent)
            })
        };
        // Let the library run (it reads until the readable is full, then stops) while the peer
        // floods; bounded.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "the flood did not finish");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (peer, sent) = flood.join().map_err(|_| "flood panicked")?;
        let growth = live() - before;
        let peak_growth = peak() - before;
        let queued = sock.diag().queued_datagrams;
        eprintln!(
            "udp: peer sent {sent}; {queued} queued in the library; heap growth {} KiB (peak {} KiB)",
            growth / 1024,
            peak_growth / 1024
        );
        assert!(growth < HEAP_BOUND, "live heap grew by {growth} B during the flood");
        assert!(peak_growth < HEAP_BOUND, "live heap peaked {peak_growth} B above the baseline");
        assert_eq!(sock.ready_state(), ReadyState::Open, "a full queue does not error the socket");

        // Read what is queued, then the marker; the marker is the last thing read.
        let mut reader = sock.readable()?;
        let flushed = Instant::now();
        let mut delivered = 0u64;
        let mut next_min = 0u32;
        let mut marker_sent = false;
        loop {
            // Drain what is queued (a read that waits 200 ms means the queue is empty; it is only
            // the cue to send the marker, whose arrival then ends the loop).
            let msg = if marker_sent {
                within("read", reader.read()).await??.ok_or("readable ended")?
            } else {
                match tokio::time::timeout(Duration::from_millis(200), reader.read()).await {
                    Ok(msg) => msg?.ok_or("readable ended")?,
                    Err(_) => {
                        peer.send_to(MARKER, to)?;
                        marker_sent = true;
                        continue;
                    }
                }
            };
            if msg.data[..] == *MARKER {
                break;
            }
            assert_eq!(msg.data.len(), UDP_SIZE, "every datagram read is whole");
            let seq = u32::from_be_bytes(msg.data[..4].try_into()?);
            assert_eq!(msg.data[..], udp_payload(seq)[..], "datagram {seq} intact");
            assert!(seq >= next_min, "datagrams in order on loopback");
            next_min = seq + 1;
            delivered += 1;
            assert!(delivered <= u64::from(UDP_COUNT), "more datagrams than sent");
        }
        delivered += 1; // the marker
        let dropped = sock.dropped_datagrams();
        eprintln!(
            "udp: delivered {delivered} (with the marker), dropped_datagrams {dropped}, read in {:?}",
            flushed.elapsed()
        );
        assert!(dropped > 0, "UDP-READ-04: the kernel's tail drops are counted");
        assert!(delivered < u64::from(UDP_COUNT), "fewer than N arrived");
        assert!(
            delivered + dropped <= u64::from(UDP_COUNT) + 1,
            "delivered {delivered} + dropped {dropped} ≤ N + 1"
        );
        assert_eq!(sock.ready_state(), ReadyState::Open, "still open after the overflow");

        // The socket works normally: an echo round trip.
        let writer = sock.writable()?;
        within("write", writer.write(Datagram::to(&b"ping"[..], "127.0.0.1", peer_addr.port()))).await??;
        let mut buf = [0u8; 64];
        let (n, from) = peer.recv_from(&mut buf)?;
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from, to, "sent from the socket's address");
        peer.send_to(b"pong", to)?;
        let msg = within("read echo", reader.read()).await??.ok_or("readable ended")?;
        assert_eq!(&msg.data[..], b"pong");
        assert_eq!(msg.from, peer_addr);
        assert_eq!(sock.ready_state(), ReadyState::Open);
        drop(reader);
        drop(writer);
        within("close", sock.close()).await??;
        // Keep the peer's receive path honest: nothing else was sent to it.
        peer.set_nonblocking(true)?;
        assert!(peer.recv_from(&mut buf).is_err(), "exactly one datagram reached the peer");
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    eprintln!("udp: test ran {:?}", started.elapsed());
    Ok(())
}

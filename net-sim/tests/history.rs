//! Runs are independent: a simulation's trace does not depend on what ran on the thread before
//! it (DESIGN §8: same seed, same trace). The library keeps per-thread caches (read buffers, a
//! datagram scratch buffer) for speed; none of them may show in what the application observes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcpudp::{Policy, TcpOptions, TcpServerOptions, TcpServerSocket, TcpSocket};
use tcpudp_net_sim::{LinkProfile, SimBuilder};

const PORT: u16 = 7000;

/// One simulation: the client writes `sizes` (one write each, `pause` apart) and closes; the
/// server reads to the end, holding every chunk until then. Returns the sizes of the chunks read.
fn chunks_read(seed: u64, sizes: &'static [usize], pause: Duration) -> Vec<usize> {
    let read = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&read);
    let mut sim = SimBuilder::new(seed).link(LinkProfile::fixed(Duration::from_millis(5))).build();
    sim.host("server", move || {
        let log = Arc::clone(&log);
        async move {
            let net = tcpudp_net_sim::network("server", Policy::allow_all())?;
            let options = TcpServerOptions { local_port: Some(PORT), ..TcpServerOptions::default() };
            let server = TcpServerSocket::new(&net, options)?;
            server.opened().await?;
            let accepted = server.listen().await?;
            let mut readable = accepted.readable()?;
            let mut held = Vec::new();
            while let Some(chunk) = readable.read().await? {
                log.lock().expect("log").push(chunk.len());
                held.push(chunk);
            }
            drop(readable);
            accepted.close().await?;
            std::future::pending::<turmoil::Result>().await
        }
    })
    .expect("server host");
    sim.client("client", async move {
        let net = tcpudp_net_sim::network("client", Policy::allow_all())?;
        let socket = TcpSocket::new(&net, "server", PORT, TcpOptions::default())?;
        socket.opened().await?;
        let writable = socket.writable()?;
        for &size in sizes {
            writable.write(vec![7u8; size]).await?;
            tokio::time::sleep(pause).await;
        }
        drop(writable);
        socket.close().await?;
        Ok(())
    })
    .expect("client host");
    sim.run().expect("the simulation runs");
    let read = read.lock().expect("log").clone();
    read
}

// design: DESIGN §8 (same seed, same trace)
#[test]
fn a_simulation_reads_the_same_chunks_whatever_ran_on_the_thread_before() {
    let later = || chunks_read(2, &[60_000, 60_000], Duration::from_millis(200));
    let alone = std::thread::spawn(later).join().expect("fresh thread");
    assert_eq!(alone.iter().sum::<usize>(), 120_000, "{alone:?}");
    let after = std::thread::spawn(move || {
        // Leaves this thread's caches holding buffers that earlier reads used part of.
        let earlier = chunks_read(1, &[20_000, 3_000, 500], Duration::from_millis(200));
        assert_eq!(earlier.iter().sum::<usize>(), 23_500);
        later()
    })
    .join()
    .expect("thread with history");
    assert_eq!(after, alone, "the chunks read depend on an earlier simulation on the thread");
}

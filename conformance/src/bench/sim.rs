//! Simulated workloads: TCP bulk, UDP and connect + accept + close through `tcpudp-net-sim`,
//! beside raw turmoil sockets in the same simulation set-up (same seed, same latencies, same
//! hosts). Throughput is per wall-clock second: what a simulation test pays for our layer.
//!
//! Each round is one turmoil simulation with a host "server" and a client "client". The client
//! waits for the server's "listening" flag (a shared cell, polled every simulated millisecond)
//! before it starts, so no connect races the bind.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tcpudp::{
    Datagram, Policy, TcpOptions, TcpServerOptions, TcpServerSocket, TcpSocket, UdpOptions, UdpSocket,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::udp::WINDOW;
use super::{warm, BenchResult, Sample, Sizes};

/// The seed of every benchmark simulation.
const SEED: u64 = 6;
/// The port the server host listens on.
const PORT: u16 = 9000;
/// Simulated time a round may take (a hang guard only).
const SIM_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// Simulated time without progress after which the UDP sender counts outstanding datagrams lost.
const UDP_STALL: Duration = Duration::from_secs(1);

type SimResult = Result<(), Box<dyn std::error::Error>>;

/// What one simulated round reports back: units done and wall-clock time, set by its bodies.
#[derive(Default)]
struct Outcome {
    ready: Cell<bool>,
    units: Cell<u64>,
    received: Cell<u64>,
    elapsed: Cell<Option<Duration>>,
    loss: Cell<Option<f64>>,
}

fn simulation() -> turmoil::Sim<'static> {
    turmoil::Builder::new().rng_seed(SEED).simulation_duration(SIM_LIMIT).build()
}

fn server_ip() -> IpAddr {
    turmoil::lookup("server")
}

/// Waits (one simulated millisecond at a time) until the server is listening.
async fn until_ready(outcome: &Outcome) {
    while !outcome.ready.get() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs the simulation and turns the outcome into a sample.
fn finish(mut sim: turmoil::Sim<'static>, outcome: &Outcome, expected: Option<u64>) -> BenchResult<Sample> {
    sim.run().map_err(|e| format!("simulation failed: {e}"))?;
    let elapsed = outcome.elapsed.get().ok_or("the client did not report")?;
    let units = outcome.units.get();
    if let Some(expected) = expected {
        if units != expected {
            return Err(format!("{units} of {expected} units done").into());
        }
    }
    let mut sample = Sample::new(units, elapsed);
    sample.loss = outcome.loss.get();
    Ok(sample)
}

// ---- bulk ---------------------------------------------------------------------------------

pub(crate) fn bulk_ours(sizes: Sizes, warmup: bool) -> BenchResult<Sample> {
    let total = warm(sizes.sim_bulk_bytes, warmup, sizes.chunk as u64);
    let outcome = Rc::new(Outcome::default());
    let mut sim = simulation();
    let o = outcome.clone();
    sim.host("server", move || {
        let o = o.clone();
        async move {
            let net = tcpudp_net_sim::network("server", Policy::allow_all())?;
            let options = TcpServerOptions { local_port: Some(PORT), ..TcpServerOptions::default() };
            let server = TcpServerSocket::new(&net, options)?;
            server.opened().await?;
            o.ready.set(true);
            let accepted = server.listen().await?;
            let mut readable = accepted.readable()?;
            let mut got = 0u64;
            while let Some(chunk) = readable.read().await? {
                got += chunk.len() as u64;
            }
            drop(readable);
            accepted.close().await?;
            o.units.set(got);
            SimResult::Ok(())
        }
    });
    let o = outcome.clone();
    let chunk = sizes.chunk;
    sim.client("client", async move {
        let net = tcpudp_net_sim::network("client", Policy::allow_all())?;
        until_ready(&o).await;
        let sock = TcpSocket::new(&net, &server_ip().to_string(), PORT, TcpOptions::default())?;
        sock.opened().await?;
        let start = Instant::now();
        let data = Bytes::from(vec![0x5a; chunk]);
        let writable = sock.writable()?;
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(chunk as u64) as usize;
            writable.write(data.slice(..n)).await?;
            sent += n as u64;
        }
        drop(writable);
        sock.close().await?;
        o.elapsed.set(Some(start.elapsed()));
        Ok(())
    });
    finish(sim, &outcome, Some(total))
}

pub(crate) fn bulk_raw(sizes: Sizes, warmup: bool) -> BenchResult<Sample> {
    let total = warm(sizes.sim_bulk_bytes, warmup, sizes.chunk as u64);
    let outcome = Rc::new(Outcome::default());
    let mut sim = simulation();
    let o = outcome.clone();
    let chunk = sizes.chunk;
    sim.host("server", move || {
        let o = o.clone();
        async move {
            let listener = turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).await?;
            o.ready.set(true);
            let (mut stream, _) = listener.accept().await?;
            let mut buf = vec![0u8; chunk];
            let mut got = 0u64;
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            raw_close(stream).await?;
            o.units.set(got);
            SimResult::Ok(())
        }
    });
    let o = outcome.clone();
    sim.client("client", async move {
        until_ready(&o).await;
        let mut stream = turmoil::net::TcpStream::connect((server_ip(), PORT)).await?;
        let start = Instant::now();
        let data = vec![0x5a; chunk];
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(chunk as u64) as usize;
            stream.write_all(&data[..n]).await?;
            sent += n as u64;
        }
        raw_close(stream).await?;
        o.elapsed.set(Some(start.elapsed()));
        Ok(())
    });
    finish(sim, &outcome, Some(total))
}

/// FIN, then wait for the peer's FIN (the steps of our `close()`).
async fn raw_close(mut stream: turmoil::net::TcpStream) -> SimResult {
    stream.shutdown().await?;
    let mut sink = [0u8; 1024];
    while stream.read(&mut sink).await? != 0 {}
    Ok(())
}

// ---- UDP ------------------------------------------------------------------------------------

/// The sender's credit window, polled every simulated millisecond (see `udp.rs`).
async fn credit(o: &Outcome, sent: u64, lost: &mut u64) {
    let mut waited = Duration::ZERO;
    let mut seen = o.received.get();
    while sent.saturating_sub(o.received.get() + *lost) >= WINDOW {
        tokio::time::sleep(Duration::from_millis(1)).await;
        waited += Duration::from_millis(1);
        if o.received.get() != seen {
            seen = o.received.get();
            waited = Duration::ZERO;
        } else if waited >= UDP_STALL {
            *lost = sent - seen;
        }
    }
}

/// Waits until all `sent` arrived (or nothing came for [`UDP_STALL`]); records the outcome.
async fn udp_finish(o: &Outcome, sent: u64, start: Instant) {
    let mut lost = 0;
    credit(o, sent, &mut lost).await; // Drains to below the window first.
    let mut waited = Duration::ZERO;
    let mut seen = o.received.get();
    while o.received.get() < sent && waited < UDP_STALL {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if o.received.get() != seen {
            seen = o.received.get();
            waited = Duration::ZERO;
        } else {
            waited += Duration::from_millis(1);
        }
    }
    let received = o.received.get();
    o.units.set(received);
    o.elapsed.set(Some(start.elapsed()));
    o.loss.set(Some(1.0 - received as f64 / sent.max(1) as f64));
}

pub(crate) fn udp_ours(sizes: Sizes, warmup: bool) -> BenchResult<Sample> {
    let count = warm(sizes.sim_datagrams, warmup, 1);
    let outcome = Rc::new(Outcome::default());
    let mut sim = simulation();
    let o = outcome.clone();
    sim.host("server", move || {
        let o = o.clone();
        async move {
            let net = tcpudp_net_sim::network("server", Policy::allow_all())?;
            let rx = UdpSocket::new(&net, UdpOptions { local_port: Some(PORT), ..UdpOptions::default() })?;
            rx.opened().await?;
            o.ready.set(true);
            let mut readable = rx.readable()?;
            while let Some(_message) = readable.read().await? {
                o.received.set(o.received.get() + 1);
            }
            SimResult::Ok(())
        }
    });
    let o = outcome.clone();
    let size = sizes.datagram;
    sim.client("client", async move {
        let net = tcpudp_net_sim::network("client", Policy::allow_all())?;
        until_ready(&o).await;
        let options = UdpOptions {
            remote_address: Some(server_ip().to_string()),
            remote_port: Some(PORT),
            ..UdpOptions::default()
        };
        let tx = UdpSocket::new(&net, options)?;
        tx.opened().await?;
        let writable = tx.writable()?;
        let payload = Bytes::from(vec![0xa5; size]);
        let start = Instant::now();
        let mut lost = 0;
        for sent in 0..count {
            credit(&o, sent, &mut lost).await;
            writable.write(Datagram::new(payload.clone())).await?;
        }
        udp_finish(&o, count, start).await;
        Ok(())
    });
    finish(sim, &outcome, None)
}

pub(crate) fn udp_raw(sizes: Sizes, warmup: bool) -> BenchResult<Sample> {
    let count = warm(sizes.sim_datagrams, warmup, 1);
    let outcome = Rc::new(Outcome::default());
    let mut sim = simulation();
    let o = outcome.clone();
    sim.host("server", move || {
        let o = o.clone();
        async move {
            let rx = turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)).await?;
            o.ready.set(true);
            let mut buf = vec![0u8; 65_536];
            loop {
                rx.recv_from(&mut buf).await?;
                o.received.set(o.received.get() + 1);
            }
        }
    });
    let o = outcome.clone();
    let size = sizes.datagram;
    sim.client("client", async move {
        until_ready(&o).await;
        let tx = turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
        let dest = (server_ip(), PORT);
        let payload = vec![0xa5; size];
        let start = Instant::now();
        let mut lost = 0;
        for sent in 0..count {
            credit(&o, sent, &mut lost).await;
            tx.send_to(&payload, dest).await?;
        }
        udp_finish(&o, count, start).await;
        Ok(())
    });
    finish(sim, &outcome, None)
}

// ---- connect + accept + close -----------------------------------------------------------

pub(crate) fn connect_ours(sizes: Sizes, warmup: bool) -> BenchResult<Sample> {
    let count = warm(sizes.sim_connects, warmup, 1);
    let outcome = Rc::new(Outcome::default());
    let mut sim = simulation();
    let o = outcome.clone();
    sim.host("server", move || {
        let o = o.clone();
        async move {
            let net = tcpudp_net_sim::network("server", Policy::allow_all())?;
            let options = TcpServerOptions { local_port: Some(PORT), ..TcpServerOptions::default() };
            let server = TcpServerSocket::new(&net, options)?;
            server.opened().await?;
            o.ready.set(true);
            loop {
                let accepted = server.listen().await?;
                accepted.close().await?;
            }
        }
    });
    let o = outcome.clone();
    sim.client("client", async move {
        let net = tcpudp_net_sim::network("client", Policy::allow_all())?;
        until_ready(&o).await;
        let ip = server_ip().to_string();
        let start = Instant::now();
        for _ in 0..count {
            let sock = TcpSocket::new(&net, &ip, PORT, TcpOptions::default())?;
            sock.opened().await?;
            sock.close().await?;
        }
        o.units.set(count);
        o.elapsed.set(Some(start.elapsed()));
        Ok(())
    });
    finish(sim, &outcome, Some(count))
}

pub(crate) fn connect_raw(sizes: Sizes, warmup: bool) -> BenchResult<Sample> {
    let count = warm(sizes.sim_connects, warmup, 1);
    let outcome = Rc::new(Outcome::default());
    let mut sim = simulation();
    let o = outcome.clone();
    sim.host("server", move || {
        let o = o.clone();
        async move {
            let listener = turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).await?;
            o.ready.set(true);
            loop {
                let (stream, _) = listener.accept().await?;
                raw_close(stream).await?;
            }
        }
    });
    let o = outcome.clone();
    sim.client("client", async move {
        until_ready(&o).await;
        let ip = server_ip();
        let start = Instant::now();
        for _ in 0..count {
            let stream = turmoil::net::TcpStream::connect((ip, PORT)).await?;
            raw_close(stream).await?;
        }
        o.units.set(count);
        o.elapsed.set(Some(start.elapsed()));
        Ok(())
    });
    finish(sim, &outcome, Some(count))
}

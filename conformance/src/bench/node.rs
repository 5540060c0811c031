//! The optional Node column (`--node`): the real workloads on Node's `net` and `dgram`, written as a
//! Node user writes them (`write` until it returns false, then wait for `drain`; `end()` and wait
//! for `close`, i.e. for the peer's FIN too), with the same sizes, TCP_NODELAY and UDP credit
//! window. Node runs in a separate process after our rounds, so its column is indicative only:
//! it is ours (median of this run's current-thread rounds) / Node (median of its rounds).

use std::process::Command;

use super::{BenchResult, Sizes, Stats, Workload, TCP_BULK, TCP_CONNECT, TCP_PINGPONG, UDP};

/// Node rounds per workload.
const NODE_ROUNDS: usize = 3;

const SCRIPT: &str = r#"
'use strict';
const net = require('net');
const dgram = require('dgram');
const { once } = require('events');
const now = () => Number(process.hrtime.bigint()) / 1e9;

async function listen() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return server;
}

async function pair(server) {
  const accepted = once(server, 'connection');
  const client = net.connect(server.address().port, '127.0.0.1');
  await once(client, 'connect');
  const [sock] = await accepted;
  client.setNoDelay(true);
  sock.setNoDelay(true);
  return [client, sock];
}

const closed = (s) => new Promise((resolve, reject) => { s.on('close', resolve); s.on('error', reject); });

async function bulk(total, chunkSize) {
  const server = await listen();
  const [client, sock] = await pair(server);
  server.close();
  const done = Promise.all([closed(client), closed(sock)]);
  let got = 0;
  sock.on('data', (d) => { got += d.length; });
  client.resume();
  const chunk = Buffer.alloc(chunkSize, 0x5a);
  const start = now();
  let sent = 0;
  while (sent < total) {
    const n = Math.min(chunkSize, total - sent);
    if (!client.write(n === chunkSize ? chunk : chunk.subarray(0, n))) await once(client, 'drain');
    sent += n;
  }
  client.end();
  await done;
  const secs = now() - start;
  if (got !== total) throw new Error(`bulk: ${got} of ${total}`);
  return total / secs;
}

async function pingpong(trips, size) {
  const server = await listen();
  const [client, sock] = await pair(server);
  server.close();
  const done = Promise.all([closed(client), closed(sock)]);
  sock.on('data', (d) => sock.write(d));
  const msg = Buffer.alloc(size, 0x42);
  const start = now();
  await new Promise((resolve) => {
    let left = trips;
    let got = 0;
    client.on('data', (d) => {
      got += d.length;
      while (got >= size) {
        got -= size;
        left -= 1;
        if (left === 0) return resolve();
        client.write(msg);
      }
    });
    client.write(msg);
  });
  const secs = now() - start;
  client.end();
  await done;
  return trips / secs;
}

async function connect(count) {
  const server = await listen();
  const start = now();
  for (let i = 0; i < count; i++) {
    const [client, sock] = await pair(server);
    const done = Promise.all([closed(client), closed(sock)]);
    client.resume();
    sock.resume();
    client.end();
    sock.end();
    await done;
  }
  const secs = now() - start;
  server.close();
  return count / secs;
}

async function udp(count, size) {
  const rx = dgram.createSocket('udp4');
  rx.bind(0, '127.0.0.1');
  await once(rx, 'listening');
  const port = rx.address().port;
  const tx = dgram.createSocket('udp4');
  tx.bind(0, '127.0.0.1');
  await once(tx, 'listening');
  let received = 0;
  let last = 0;
  let wake = null;
  const start = now();
  rx.on('message', () => {
    received += 1;
    last = now();
    if (wake) { const w = wake; wake = null; w(); }
  });
  const credit = () => new Promise((resolve) => { wake = resolve; setTimeout(resolve, 100); });
  const payload = Buffer.alloc(size, 0xa5);
  let lost = 0;
  for (let sent = 0; sent < count; sent++) {
    while (sent - received - lost >= 32) {
      const before = received;
      await credit();
      if (received === before) lost = sent - received;
    }
    await new Promise((resolve, reject) => tx.send(payload, port, '127.0.0.1', (e) => (e ? reject(e) : resolve())));
  }
  while (received < count) {
    const before = received;
    await credit();
    if (received === before) break;
  }
  rx.close();
  tx.close();
  return received / (last - start);
}

(async () => {
  const [workload, rounds, a, b] = process.argv.slice(2);
  const run = { 'tcp-bulk': bulk, 'tcp-pingpong': pingpong, 'tcp-connect': connect, 'udp': udp }[workload];
  for (let r = 0; r < Number(rounds); r++) {
    const rate = await run(Number(a), Number(b));
    console.log(`rate ${rate}`);
  }
})().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
"#;

/// Runs the real workloads on Node; returns ours / Node for each workload ours ran.
pub(crate) fn run(sizes: Sizes, ours: &[(Workload, f64)]) -> BenchResult<Vec<(Workload, f64)>> {
    let version = Command::new("node").arg("--version").output().map_err(|e| format!("no node: {e}"))?;
    if !version.status.success() {
        return Err("`node --version` failed".into());
    }
    let path = std::env::temp_dir().join(format!("tcpudp-bench-{}.js", std::process::id()));
    std::fs::write(&path, SCRIPT)?;
    let result = run_all(&path, sizes, ours);
    let _ = std::fs::remove_file(&path);
    result
}

fn run_all(
    path: &std::path::Path,
    sizes: Sizes,
    ours: &[(Workload, f64)],
) -> BenchResult<Vec<(Workload, f64)>> {
    let mut rows = Vec::new();
    for &(workload, ours_rate) in ours {
        let args: [u64; 2] = match workload.name {
            n if n == TCP_BULK.name => [sizes.bulk_bytes, sizes.chunk as u64],
            n if n == TCP_PINGPONG.name => [sizes.pingpong_trips, sizes.message as u64],
            n if n == TCP_CONNECT.name => [sizes.connects, 0],
            n if n == UDP.name => [sizes.udp_datagrams, sizes.datagram as u64],
            _ => continue,
        };
        eprint!("node {} ...", workload.name);
        let out = Command::new("node")
            .arg(path)
            .arg(workload.name)
            .arg(NODE_ROUNDS.to_string())
            .args(args.iter().map(u64::to_string))
            .output()?;
        if !out.status.success() {
            eprintln!(" failed");
            return Err(format!("node {}: {}", workload.name, String::from_utf8_lossy(&out.stderr)).into());
        }
        let rates: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("rate "))
            .filter_map(|r| r.trim().parse().ok())
            .collect();
        let node = Stats::of(rates).ok_or("node printed no rates")?;
        eprintln!(" ours/node {:.2}", ours_rate / node.median);
        rows.push((workload, ours_rate / node.median));
    }
    Ok(rows)
}

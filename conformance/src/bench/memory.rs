//! Our own state per idle open TCP socket: (live heap with N connections open through `tcpudp` −
//! live heap with N raw tokio stream pairs) / 2N, both ends in this process. Also the heap
//! allocations one short connection makes (connect, accept, close both ends, lock-step), through
//! `tcpudp` and through raw tokio, counted the same way.
//!
//! The soft descriptor limit is raised to the hard one first, and N = min(10,000, (hard − 200) / 2)
//! connections (two descriptors each). Each phase runs on a fresh current-thread runtime; the heap
//! is counted (by the counting allocator) from just before the first connection to when every
//! socket has settled idle, and includes the `Vec` the application keeps its sockets in.

use std::time::Duration;

use tokio::net::TcpStream;

use super::tcp::{our_pair, our_server, raw_close, raw_listener, raw_pair};
use super::{alloc, BenchResult, Sizes};

/// Descriptors left for everything else.
const SPARE_FDS: u64 = 200;
/// Short connections made before allocations are counted (pools and tables reach their steady
/// size), then counted.
const CYCLES_WARM: u64 = 50;
const CYCLES_COUNTED: u64 = 200;

/// The memory figures.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MemoryResult {
    /// Our own state per idle socket (bytes).
    pub(crate) per_socket: f64,
    /// Sockets the figure averages over (both ends of every connection).
    pub(crate) sockets: u64,
    /// Connections open in each phase.
    pub(crate) connections: u64,
    /// Live heap per socket with `tcpudp`.
    pub(crate) ours_per_socket: f64,
    /// Live heap per socket with raw tokio.
    pub(crate) raw_per_socket: f64,
    /// Heap allocations per short connection through `tcpudp` (both ends, open to closed).
    pub(crate) connect_allocs_ours: f64,
    /// The same with raw tokio.
    pub(crate) connect_allocs_raw: f64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the (new) soft limit.
pub(crate) fn raise_nofile_limit() -> BenchResult<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    #[allow(clippy::useless_conversion, reason = "rlim_t is not u64 on every platform")]
    let soft = u64::try_from(limit.rlim_cur).unwrap_or(u64::MAX);
    Ok(soft.min(1 << 20))
}

/// Lets every driver run until nothing is left to do.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn runtime() -> BenchResult<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Live heap bytes with `n` idle connections through `tcpudp`.
async fn ours(n: u64) -> BenchResult<i64> {
    let net = tcpudp_net_real::network(tcpudp::Policy::allow_all())?;
    let (server, port) = our_server(&net).await?;
    settle().await;
    alloc::enable();
    let before = alloc::snapshot();
    let mut sockets = Vec::with_capacity(2 * n as usize);
    for _ in 0..n {
        let (client, accepted) = our_pair(&net, &server, port).await?;
        sockets.push(client);
        sockets.push(accepted);
    }
    settle().await;
    let live = alloc::snapshot().live - before.live;
    alloc::disable();
    let closing: Vec<_> = sockets.iter().map(|s| s.close()).collect();
    for closed in closing {
        closed.await?;
    }
    drop(sockets);
    drop(server);
    settle().await;
    Ok(live)
}

/// Live heap bytes with `n` idle raw tokio stream pairs.
async fn raw(n: u64) -> BenchResult<i64> {
    let (listener, addr) = raw_listener().await?;
    settle().await;
    alloc::enable();
    let before = alloc::snapshot();
    let mut sockets: Vec<TcpStream> = Vec::with_capacity(2 * n as usize);
    for _ in 0..n {
        let (client, accepted) = raw_pair(&listener, addr).await?;
        sockets.push(client);
        sockets.push(accepted);
    }
    settle().await;
    let live = alloc::snapshot().live - before.live;
    alloc::disable();
    drop(sockets);
    drop(listener);
    settle().await;
    Ok(live)
}

/// Heap allocations per call of `cycle`: `CYCLES_WARM` calls uncounted (pools and tables reach
/// their steady size), then the mean over `CYCLES_COUNTED`.
async fn allocs_per_cycle(mut cycle: impl AsyncFnMut() -> BenchResult<()>) -> BenchResult<f64> {
    for _ in 0..CYCLES_WARM {
        cycle().await?;
    }
    alloc::enable();
    let before = alloc::snapshot();
    let counted = async {
        for _ in 0..CYCLES_COUNTED {
            cycle().await?;
        }
        BenchResult::Ok(())
    }
    .await;
    let allocs = alloc::snapshot().allocs - before.allocs;
    alloc::disable();
    counted?;
    Ok(allocs as f64 / CYCLES_COUNTED as f64)
}

/// Allocations per short connection through `tcpudp`: connect, accept, close both ends.
async fn ours_cycles() -> BenchResult<f64> {
    let net = tcpudp_net_real::network(tcpudp::Policy::allow_all())?;
    let (server, port) = our_server(&net).await?;
    allocs_per_cycle(async || {
        let (client, accepted) = our_pair(&net, &server, port).await?;
        let (a, b) = tokio::join!(client.close(), accepted.close());
        a?;
        b?;
        Ok(())
    })
    .await
}

/// The same with raw tokio.
async fn raw_cycles() -> BenchResult<f64> {
    let (listener, addr) = raw_listener().await?;
    allocs_per_cycle(async || {
        let (client, accepted) = raw_pair(&listener, addr).await?;
        let (a, b) = tokio::join!(raw_close(client), raw_close(accepted));
        a?;
        b?;
        Ok(())
    })
    .await
}

/// Raw, ours, raw, ours; the smaller heap of each side (the figures are near-deterministic; the
/// repeat guards against a one-off growth of a runtime table).
pub(crate) fn run(sizes: Sizes) -> BenchResult<MemoryResult> {
    let limit = raise_nofile_limit()?;
    let connections = sizes.idle_connections.min(limit.saturating_sub(SPARE_FDS) / 2);
    if connections == 0 {
        return Err(format!("descriptor limit {limit} leaves no room for idle connections").into());
    }
    let mut raw_live = i64::MAX;
    let mut ours_live = i64::MAX;
    for _ in 0..2 {
        raw_live = raw_live.min(runtime()?.block_on(raw(connections))?);
        ours_live = ours_live.min(runtime()?.block_on(ours(connections))?);
    }
    let sockets = 2 * connections;
    let per = |live: i64| live as f64 / sockets as f64;
    let connect_allocs_raw = runtime()?.block_on(raw_cycles())?;
    let connect_allocs_ours = runtime()?.block_on(ours_cycles())?;
    Ok(MemoryResult {
        per_socket: per(ours_live - raw_live),
        sockets,
        connections,
        ours_per_socket: per(ours_live),
        raw_per_socket: per(raw_live),
        connect_allocs_ours,
        connect_allocs_raw,
    })
}

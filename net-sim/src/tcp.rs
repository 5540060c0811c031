//! TCP on the simulated network: [`SimTcpStream`] (one end of a connection), [`SimListener`],
//! the client's connect, and the per-end "kernel" that models what turmoil lacks.
//!
//! turmoil carries the bytes (establishment, ordering, flow control, latency) and a raw
//! `turmoil::net` peer interoperates unchanged. What turmoil cannot do is modelled here, per
//! end, on simulated time (DESIGN §7):
//!
//! - **Loss and partitions**: a segment is written into turmoil only when a transmission
//!   attempt gets through the link-state table; each failed attempt costs one retransmission
//!   timeout (200 ms, doubling, capped at 120 s), and a segment that fails 15 times ends the
//!   connection with `TimedOut` on both ends. Data waits in order behind the segment in
//!   retransmission, exactly as an application sees TCP.
//! - **Keep-alive**: probes are timers plus a look at the link table and the peer, counted as
//!   Linux's `tcp_keepalive_timer` counts them.
//! - **Resets, crashes, kills**: signals between two library ends go through the shared
//!   connection record. turmoil's own FIN or RST, sent when a turmoil stream is dropped, is
//!   believed only from plain turmoil peers (or when the model delivered that FIN): so a
//!   crashed host is silent, and a partition hides a close.
//! - **Backlog**: listeners accept from turmoil at once into the adapter's accept queue, and a
//!   connect waits (SYN retries at 1, 3, 7, 15, 31, 63 s; `TimedOut` at 127 s) while the queue
//!   is full, the link is partitioned, or the server host is silent.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tcpudp::backend::{cause_of, BoxFuture, ListenerTransport, TcpDiag, TcpTransport};
use tcpudp_core::options::{KeepAlive, SocketConfig};
use tcpudp_core::Cause;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use turmoil::net::{TcpListener, TcpStream};

use crate::host::{poll_now, sim_guard, HostCtx};
use crate::net::{Line, NetState, SimNet, Stream};
use crate::{DEFAULT_KEEP_ALIVE_COUNT, DEFAULT_KEEP_ALIVE_IDLE, DEFAULT_KEEP_ALIVE_INTERVAL};

/// The first retransmission timeout (Linux's `TCP_RTO_MIN`).
pub const RTO_INITIAL: Duration = Duration::from_millis(200);

/// The largest retransmission timeout (Linux's `TCP_RTO_MAX`).
pub const RTO_MAX: Duration = Duration::from_secs(120);

/// Consecutive losses of one segment after which the connection times out.
pub const RETRANSMISSION_BUDGET: u32 = 15;

/// When a connect sends its SYN, counted from the start (Linux: 1 s, doubling, 6 retries).
pub const SYN_SCHEDULE: [Duration; 7] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(7),
    Duration::from_secs(15),
    Duration::from_secs(31),
    Duration::from_secs(63),
];

/// When a connect whose SYNs all went unanswered gives up (`TimedOut`).
pub const SYN_GIVE_UP: Duration = Duration::from_secs(127);

/// Segments an end queues for transmission before `poll_write` waits (the send buffer).
const SEND_QUEUE: usize = 64;

/// Linux's `somaxconn` cap on a listener's backlog.
const SOMAXCONN: u32 = 4096;

/// SYNs of library clients in flight to one listener (turmoil panics when 64 wait in its queue
/// within one step).
const MAX_SYNS_IN_FLIGHT: usize = 48;

/// The retransmission timeout after `losses` consecutive losses (1 = the first).
pub fn backoff(losses: u32) -> Duration {
    let shift = losses.saturating_sub(1).min(20);
    (RTO_INITIAL * (1u32 << shift)).min(RTO_MAX)
}

/// (client host, client address, server address): names one connection in the simulation.
type ConnKey = (IpAddr, SocketAddr, SocketAddr);

const CLIENT: usize = 0;
const SERVER: usize = 1;

/// How an end went away (what its peer's later segments meet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Gone {
    /// Closed with FIN: a FIN or probe is still answered (FIN_WAIT_2 / TIME_WAIT), data gets RST.
    Closed,
    /// Reset: everything gets RST.
    Reset,
    /// Its host crashed: nothing is answered (until the host restarts).
    Silent,
}

/// One connection, as both ends share it.
#[derive(Default)]
struct Conn {
    /// The live ends (ids in `TcpTables::ends`).
    ends: [Option<u64>; 2],
    /// Which sides are (were) library sockets; the others are plain turmoil peers.
    library: [bool; 2],
    /// The side's FIN was delivered by the model: a turmoil end of stream from it is genuine.
    fin: [bool; 2],
    /// How a side that went away went.
    gone: [Option<Gone>; 2],
}

/// What one end has queued for transmission.
enum Seg {
    Data(Bytes),
    Fin,
}

/// One library end of a connection: its turmoil stream and its "kernel" state.
struct TcpEnd {
    host: IpAddr,
    key: ConnKey,
    side: usize,
    local: SocketAddr,
    peer: SocketAddr,
    peer_host: IpAddr,
    peer_incarnation: u32,
    stream: Option<TcpStream>,
    /// turmoil gave an end of stream or reset the model did not send: stop reading turmoil.
    turmoil_done: bool,
    sendq: VecDeque<Seg>,
    /// Consecutive losses of the head segment.
    attempts: u32,
    /// When the head segment is tried again.
    next_at: Option<Instant>,
    /// The head segment reached the peer already (its ACK was lost): retransmissions only.
    head_delivered: bool,
    /// Losses still forced on the head segment (`TcpLoss::Times`).
    head_forced: Option<u32>,
    fin_queued: bool,
    error: Option<io::ErrorKind>,
    keep_alive: Option<KeepAlive>,
    ka_at: Option<Instant>,
    probes_out: u32,
    /// When the peer was last heard from (data, ACK, probe answer).
    last_rcv: Instant,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    kernel_waker: Option<Waker>,
    /// The transport was dropped: the kernel flushes what is queued, then closes (orphan).
    user_dropped: bool,
    kernel_alive: bool,
}

impl TcpEnd {
    fn wakers(&mut self) -> impl Iterator<Item = Waker> {
        [self.read_waker.take(), self.write_waker.take(), self.kernel_waker.take()].into_iter().flatten()
    }
}

/// A listener's part of the shared state.
struct ListenerEntry {
    id: u64,
    listener: Option<Arc<TcpListener>>,
    accept: Option<BoxFuture<'static, io::Result<(TcpStream, SocketAddr)>>>,
    task_waker: Option<Waker>,
    driver_waker: Option<Waker>,
    /// Accepted ends waiting for `poll_accept` (the accept queue).
    queue: VecDeque<u64>,
    /// SYNs of library clients on their way.
    reservations: VecDeque<u64>,
    /// How many connections the accept queue holds (backlog + 1, as Linux).
    limit: usize,
}

/// The TCP part of the shared state.
#[derive(Default)]
pub(crate) struct TcpTables {
    ends: BTreeMap<u64, TcpEnd>,
    conns: BTreeMap<ConnKey, Conn>,
    listeners: BTreeMap<(IpAddr, u16), ListenerEntry>,
}

/// What a transmission attempt met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Reached the peer; `acked`: its answer came back.
    Delivered { acked: bool },
    /// Lost (partition, silent host, loss draw).
    Lost(&'static str),
    /// Answered with RST.
    Reset,
}

/// What is being sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Data,
    Fin,
    Probe,
}

/// The simulated time `at` (a host-runtime instant) stands for.
fn global(st: &mut NetState, at: Instant) -> Duration {
    let now = Instant::now();
    st.now() + at.saturating_duration_since(now)
}

/// One transmission attempt of end `id` (towards its peer), drawing loss from the link table.
fn attempt(st: &mut NetState, id: u64, kind: Kind) -> Outcome {
    let Some(end) = st.tcp.ends.get(&id) else { return Outcome::Lost("released") };
    let (from, to, incarnation, key, side) =
        (end.host, end.peer_host, end.peer_incarnation, end.key, end.side);
    let gone = st.tcp.conns.get(&key).and_then(|c| c.gone[1 - side]);
    let answer_gone = |gone: Gone| match (gone, kind) {
        (Gone::Closed, Kind::Fin | Kind::Probe) => Outcome::Delivered { acked: true },
        (Gone::Silent, _) => Outcome::Lost("silent peer"),
        _ => Outcome::Reset,
    };
    if from == to {
        return gone.map_or(Outcome::Delivered { acked: true }, answer_gone);
    }
    let link = st.link(from, to);
    if st.crashed(to) {
        return Outcome::Lost("host down");
    }
    if link.partitioned {
        return Outcome::Lost("partition");
    }
    if st.incarnation(to) != incarnation {
        return Outcome::Reset; // a restarted host knows nothing of the connection
    }
    if let Some(gone) = gone {
        return answer_gone(gone);
    }
    if kind != Kind::Probe {
        if let Some(end) = st.tcp.ends.get_mut(&id) {
            if let Some(forced) = end.head_forced.as_mut().filter(|k| **k > 0) {
                *forced -= 1;
                return Outcome::Lost("loss");
            }
        }
    }
    if link.tcp_rate > 0.0 && st.rng(Stream::TcpLoss, from, to).chance(link.tcp_rate) {
        return Outcome::Lost("loss");
    }
    Outcome::Delivered { acked: !st.link(to, from).partitioned }
}

/// Nothing can happen to a segment of `end` now: it may be written straight into turmoil.
fn clean(st: &NetState, end: &TcpEnd) -> bool {
    let gone = st.tcp.conns.get(&end.key).and_then(|c| c.gone[1 - end.side]);
    if gone.is_some() {
        return false;
    }
    end.host == end.peer_host
        || (st.link(end.host, end.peer_host).tcp_clean()
            && !st.link(end.peer_host, end.host).partitioned
            && !st.crashed(end.peer_host)
            && st.incarnation(end.peer_host) == end.peer_incarnation)
}

/// Sets `id`'s error (the first one sticks) and collects its wakers.
fn set_error(st: &mut NetState, id: u64, kind: io::ErrorKind, wake: &mut Vec<Waker>) {
    if let Some(end) = st.tcp.ends.get_mut(&id) {
        if end.error.is_none() {
            end.error = Some(kind);
            end.sendq.clear();
            wake.extend(end.wakers());
        }
    }
}

/// The library end at the other side of `id`, if any is alive.
fn peer_of(st: &NetState, id: u64) -> Option<u64> {
    let end = st.tcp.ends.get(&id)?;
    st.tcp.conns.get(&end.key)?.ends[1 - end.side]
}

/// An RST from `id` to its peer: a library peer reachable now gets `ConnectionReset`.
fn rst_to_peer(st: &mut NetState, id: u64, wake: &mut Vec<Waker>) {
    let Some(end) = st.tcp.ends.get(&id) else { return };
    let (from, to, incarnation) = (end.host, end.peer_host, end.peer_incarnation);
    let reachable = from == to
        || (!st.link(from, to).partitioned && !st.crashed(to) && st.incarnation(to) == incarnation);
    if let Some(peer) = peer_of(st, id).filter(|_| reachable) {
        let now = st.now();
        st.record(now, format_args!("tcp #{id} rst -> #{peer}"));
        set_error(st, peer, io::ErrorKind::ConnectionReset, wake);
    }
}

/// Removes end `id`; returns its turmoil stream, to be dropped outside the lock.
fn finalize(st: &mut NetState, id: u64, gone: Gone) -> Option<TcpStream> {
    let mut end = st.tcp.ends.remove(&id)?;
    let now = st.last_now;
    st.record_line(now, Line::TcpReleased { id, gone });
    if let Some(conn) = st.tcp.conns.get_mut(&end.key) {
        conn.ends[end.side] = None;
        conn.gone[end.side].get_or_insert(gone);
        if conn.ends.iter().all(Option::is_none) {
            st.tcp.conns.remove(&end.key);
        }
    }
    end.stream.take()
}

/// The last word of an end whose kernel cannot run any more: queued data is discarded, the FIN
/// gets one attempt (a delivered FIN makes turmoil's end of stream, sent when the stream is
/// dropped, genuine for the peer).
fn final_sync(st: &mut NetState, id: u64, wake: &mut Vec<Waker>) -> Option<TcpStream> {
    let end = st.tcp.ends.get(&id)?;
    if st.crashed(end.host) {
        return finalize(st, id, Gone::Silent);
    }
    if end.error.is_some() {
        return finalize(st, id, Gone::Reset);
    }
    let (key, side) = (end.key, end.side);
    let sent = st.tcp.conns.get(&key).is_some_and(|c| c.fin[side]);
    if !sent && matches!(attempt(st, id, Kind::Fin), Outcome::Delivered { .. }) {
        mark_fin(st, key, side, wake);
    }
    finalize(st, id, Gone::Closed)
}

/// Side `side` of `key` delivered its FIN: the peer may believe turmoil's end of stream.
fn mark_fin(st: &mut NetState, key: ConnKey, side: usize, wake: &mut Vec<Waker>) {
    if let Some(conn) = st.tcp.conns.get_mut(&key) {
        conn.fin[side] = true;
        if let Some(peer) = conn.ends[1 - side] {
            if let Some(w) = st.tcp.ends.get_mut(&peer).and_then(|e| e.read_waker.take()) {
                wake.push(w);
            }
        }
    }
}

/// Whether turmoil holds data this end has not read (closing then sends RST, as Linux).
fn has_unread(stream: &mut TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    matches!(Pin::new(stream).poll_peek(&mut cx, &mut buf), Poll::Ready(Ok(n)) if n > 0)
}

/// Creates an end (and its connection record) for a freshly established turmoil stream and
/// starts its kernel on the host's runtime.
fn new_end(
    host: &HostCtx,
    st: &mut NetState,
    stream: TcpStream,
    key: ConnKey,
    side: usize,
    peer_host: IpAddr,
) -> io::Result<u64> {
    let id = st.next_id();
    let local = stream.local_addr()?;
    let peer = stream.peer_addr()?;
    let end = TcpEnd {
        host: host.ip,
        key,
        side,
        local,
        peer,
        peer_host,
        peer_incarnation: st.incarnation(peer_host),
        stream: Some(stream),
        turmoil_done: false,
        sendq: VecDeque::new(),
        attempts: 0,
        next_at: None,
        head_delivered: false,
        head_forced: None,
        fin_queued: false,
        error: None,
        keep_alive: None,
        ka_at: None,
        probes_out: 0,
        last_rcv: Instant::now(),
        read_waker: None,
        write_waker: None,
        kernel_waker: None,
        user_dropped: false,
        kernel_alive: true,
    };
    st.tcp.ends.insert(id, end);
    let conn = st.tcp.conns.entry(key).or_default();
    conn.ends[side] = Some(id);
    conn.library[side] = true;
    conn.fin[side] = false;
    conn.gone[side] = None;
    drop(host.runtime.spawn(kernel(Arc::clone(&host.net), id)));
    Ok(id)
}

/// What a kernel poll decided.
enum Step {
    Done(Option<TcpStream>),
    Wait(Option<Instant>),
}

/// The kernel of end `id`: transmissions on the retransmission schedule, keep-alive probes, and
/// the orphan's flush after the transport is dropped. Lives until the end is released. The
/// guard is made before the future, so it runs even if the task is dropped unpolled.
fn kernel(net: Arc<SimNet>, id: u64) -> impl Future<Output = ()> + Send {
    let guard = KernelGuard { net: Arc::clone(&net), id };
    async move {
        let _guard = guard;
        kernel_loop(net, id).await;
    }
}

async fn kernel_loop(net: Arc<SimNet>, id: u64) {
    // Made by the first deadline, inside the task's own allocation: most ends never arm one (no
    // loss, no keep-alive), and a boxed timer cost each end an allocation.
    let mut sleep = pin!(None::<tokio::time::Sleep>);
    let mut armed: Option<Instant> = None;
    std::future::poll_fn(|cx| {
        let mut wake = Vec::new();
        let step = {
            let mut st = net.lock();
            kernel_step(&mut st, id, cx, &mut wake)
        };
        wake.into_iter().for_each(Waker::wake);
        match step {
            Step::Done(stream) => {
                drop(stream);
                Poll::Ready(())
            }
            Step::Wait(None) => {
                armed = None;
                Poll::Pending
            }
            Step::Wait(Some(at)) => {
                if armed != Some(at) {
                    match sleep.as_mut().as_pin_mut() {
                        Some(timer) => timer.reset(at),
                        None => sleep.set(Some(tokio::time::sleep_until(at))),
                    }
                    armed = Some(at);
                }
                if sleep.as_mut().as_pin_mut().is_some_and(|timer| timer.poll(cx).is_ready()) {
                    armed = None;
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    })
    .await;
}

/// Releases the end when the kernel is dropped with the host's runtime (crash, kill, end of the
/// simulation) after its transport.
struct KernelGuard {
    net: Arc<SimNet>,
    id: u64,
}

impl Drop for KernelGuard {
    fn drop(&mut self) {
        let mut wake = Vec::new();
        let stream = {
            let mut st = self.net.lock();
            match st.tcp.ends.get_mut(&self.id) {
                Some(end) => {
                    end.kernel_alive = false;
                    if end.user_dropped {
                        final_sync(&mut st, self.id, &mut wake)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        drop(stream);
        wake.into_iter().for_each(Waker::wake);
    }
}

fn kernel_step(st: &mut NetState, id: u64, cx: &mut Context<'_>, wake: &mut Vec<Waker>) -> Step {
    let now = Instant::now();
    let Some(end) = st.tcp.ends.get_mut(&id) else { return Step::Done(None) };
    if !end.kernel_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        end.kernel_waker = Some(cx.waker().clone());
    }
    let host = end.host;
    if st.crashed(host) {
        return Step::Wait(None); // frozen until the runtime is dropped
    }
    transmit(st, id, now, cx, wake);
    keep_alive(st, id, now, wake);
    let Some(end) = st.tcp.ends.get_mut(&id) else { return Step::Done(None) };
    if end.user_dropped && (end.error.is_some() || end.sendq.is_empty()) {
        let gone = if end.error.is_some() { Gone::Reset } else { Gone::Closed };
        return Step::Done(finalize(st, id, gone));
    }
    if end.error.is_some() {
        return Step::Wait(None);
    }
    let retransmit = end.next_at.filter(|_| !end.sendq.is_empty());
    let deadline = match (retransmit, end.ka_at.filter(|_| end.keep_alive.is_some())) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(at) = deadline {
        let at_global = global(st, at);
        st.note_deadline(at_global);
    }
    Step::Wait(deadline)
}

/// Sends what the schedule allows: the head segment when due, then the ones behind it.
fn transmit(st: &mut NetState, id: u64, now: Instant, cx: &mut Context<'_>, wake: &mut Vec<Waker>) {
    loop {
        let Some(end) = st.tcp.ends.get_mut(&id) else { return };
        if end.error.is_some() {
            return;
        }
        let Some(head) = end.sendq.front() else { return };
        if end.next_at.is_some_and(|at| at > now) {
            return;
        }
        let kind = if matches!(head, Seg::Fin) { Kind::Fin } else { Kind::Data };
        if end.attempts >= RETRANSMISSION_BUDGET {
            timed_out(st, id, wake);
            return;
        }
        if !end.head_delivered {
            // Flow control: a free slot in the peer's receive queue (turmoil's credit).
            let Some(stream) = end.stream.as_ref() else { return };
            let credit = pin!(stream.writable()).poll(cx);
            match credit {
                Poll::Pending => return,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => {
                    set_error(st, id, io::ErrorKind::ConnectionReset, wake);
                    return;
                }
            }
        }
        if end.head_forced.is_none() {
            let (from, to) = (end.host, end.peer_host);
            let forced = if from == to { None } else { st.link_mut(from, to).tcp_times.take() };
            if let Some(end) = st.tcp.ends.get_mut(&id) {
                end.head_forced = Some(forced.unwrap_or(0));
            }
        }
        let outcome = attempt(st, id, kind);
        let g = st.now();
        let Some(end) = st.tcp.ends.get_mut(&id) else { return };
        match outcome {
            Outcome::Reset => {
                st.record(g, format_args!("tcp #{id} {kind:?} answered with rst"));
                set_error(st, id, io::ErrorKind::ConnectionReset, wake);
                return;
            }
            Outcome::Lost(why) => {
                end.attempts += 1;
                let wait = backoff(end.attempts);
                end.next_at = Some(now + wait);
                let n = end.attempts;
                st.record(g, format_args!("tcp #{id} {kind:?} lost ({why}) x{n}, retry in {wait:?}"));
            }
            Outcome::Delivered { acked } => {
                if !end.head_delivered {
                    let Some(stream) = end.stream.as_mut() else { return };
                    let written = match end.sendq.front() {
                        Some(Seg::Data(data)) => stream.try_write(data).map(drop),
                        Some(Seg::Fin) => match Pin::new(&mut *stream).poll_shutdown(cx) {
                            Poll::Ready(result) => result,
                            Poll::Pending => return,
                        },
                        None => return,
                    };
                    match written {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(_) => {
                            set_error(st, id, io::ErrorKind::ConnectionReset, wake);
                            return;
                        }
                    }
                    if kind == Kind::Fin {
                        let (key, side) = (end.key, end.side);
                        mark_fin(st, key, side, wake);
                    }
                }
                let Some(end) = st.tcp.ends.get_mut(&id) else { return };
                if acked {
                    let retried = end.attempts;
                    end.sendq.pop_front();
                    end.attempts = 0;
                    end.next_at = None;
                    end.head_delivered = false;
                    end.head_forced = None;
                    end.last_rcv = now;
                    end.probes_out = 0;
                    if end.sendq.len() < SEND_QUEUE {
                        wake.extend(end.write_waker.take());
                    }
                    if retried > 0 {
                        st.record(g, format_args!("tcp #{id} {kind:?} delivered after {retried} losses"));
                    }
                } else {
                    end.head_delivered = true;
                    end.attempts += 1;
                    let wait = backoff(end.attempts);
                    end.next_at = Some(now + wait);
                    let n = end.attempts;
                    st.record(g, format_args!("tcp #{id} {kind:?} delivered, ack lost x{n}"));
                }
            }
        }
    }
}

/// The retransmission budget of `id`'s head segment ran out: `TimedOut` on both ends.
fn timed_out(st: &mut NetState, id: u64, wake: &mut Vec<Waker>) {
    let now = st.now();
    let peer = peer_of(st, id).filter(|p| st.tcp.ends.get(p).is_some_and(|e| !st.crashed(e.host)));
    st.record(
        now,
        format_args!(
            "tcp #{id} timed out (retransmissions){}",
            peer.map_or(String::new(), |p| format!(", and #{p}"))
        ),
    );
    set_error(st, id, io::ErrorKind::TimedOut, wake);
    if let Some(peer) = peer {
        set_error(st, peer, io::ErrorKind::TimedOut, wake);
    }
}

/// Linux's `tcp_keepalive_timer`, on simulated time.
fn keep_alive(st: &mut NetState, id: u64, now: Instant, wake: &mut Vec<Waker>) {
    let g = st.now();
    let Some(end) = st.tcp.ends.get_mut(&id) else { return };
    let (Some(ka), Some(at)) = (end.keep_alive, end.ka_at) else { return };
    if end.error.is_some() || at > now {
        return;
    }
    let idle = ka.idle.unwrap_or(DEFAULT_KEEP_ALIVE_IDLE);
    let interval = ka.interval.unwrap_or(DEFAULT_KEEP_ALIVE_INTERVAL);
    let count = if ka.count == 0 { DEFAULT_KEEP_ALIVE_COUNT } else { ka.count };
    if !end.sendq.is_empty() {
        // "It is alive without keep-alive": the retransmission timer watches the peer.
        end.ka_at = Some(now + idle);
        return;
    }
    let elapsed = now.saturating_duration_since(end.last_rcv);
    if elapsed < idle {
        end.ka_at = Some(end.last_rcv + idle);
        return;
    }
    if end.probes_out >= count {
        let sent = end.probes_out;
        st.record(g, format_args!("tcp #{id} keep-alive: {sent} probes unanswered, timed out"));
        rst_to_peer(st, id, wake);
        set_error(st, id, io::ErrorKind::TimedOut, wake);
        return;
    }
    let outcome = attempt(st, id, Kind::Probe);
    let Some(end) = st.tcp.ends.get_mut(&id) else { return };
    end.probes_out += 1;
    end.ka_at = Some(now + interval);
    match outcome {
        Outcome::Delivered { acked: true } => {
            end.probes_out = 0;
            end.last_rcv = now;
            st.record(g, format_args!("tcp #{id} keep-alive probe answered"));
        }
        Outcome::Delivered { acked: false } | Outcome::Lost(_) => {
            let n = end.probes_out;
            st.record(g, format_args!("tcp #{id} keep-alive probe {n} unanswered"));
        }
        Outcome::Reset => {
            st.record(g, format_args!("tcp #{id} keep-alive probe answered with rst"));
            set_error(st, id, io::ErrorKind::ConnectionReset, wake);
        }
    }
}

/// The simulator's `Backend::connect`: SYNs on Linux's schedule through the link table, then
/// turmoil's connect.
pub(crate) fn connect(
    host: Arc<HostCtx>,
    remote: SocketAddr,
    config: SocketConfig,
) -> BoxFuture<'static, Result<Box<dyn TcpTransport>, Cause>> {
    Box::pin(async move {
        let target = host.connect_target(remote)?;
        sim_guard()?;
        let to_host = host.host_of(target.ip()).ok_or(Cause::Unreachable)?;
        let start = Instant::now();
        let mut attempt_no = 0;
        let reservation = loop {
            match syn(&host, to_host, target) {
                Syn::Go(reservation) => break reservation,
                Syn::Hang => std::future::pending::<()>().await,
                Syn::Refused(after) => {
                    tokio::time::sleep(after).await;
                    return Err(Cause::Refused);
                }
                Syn::Lost => {}
            }
            attempt_no += 1;
            match SYN_SCHEDULE.get(attempt_no) {
                Some(offset) => tokio::time::sleep_until(start + *offset).await,
                None => {
                    tokio::time::sleep_until(start + SYN_GIVE_UP).await;
                    let mut st = host.net.lock();
                    let now = st.now();
                    st.record(now, format_args!("tcp connect {}>{target} timed out", host.name));
                    return Err(Cause::TimedOut);
                }
            }
        };
        let guard = Reservation { net: Arc::clone(&host.net), held: reservation };
        let stream = TcpStream::connect(target).await.map_err(|e| cause_of(&e));
        drop(guard);
        let stream = stream?;
        let mut st = host.net.lock();
        let key = (
            host.ip,
            stream.local_addr().map_err(|e| cause_of(&e))?,
            stream.peer_addr().map_err(|e| cause_of(&e))?,
        );
        let id = new_end(&host, &mut st, stream, key, CLIENT, to_host).map_err(|e| cause_of(&e))?;
        let now = st.now();
        st.record_line(now, Line::TcpConnected { id, local: key.1, peer: key.2 });
        drop(st);
        Ok(Box::new(SimTcpStream {
            host,
            id,
            local: key.1,
            peer: key.2,
            config,
            keep_alive: None,
            released: false,
        }) as Box<dyn TcpTransport>)
    })
}

/// What one SYN met.
enum Syn {
    /// Through; the listener's reservation taken, if the listener is a library one.
    Go(Option<((IpAddr, u16), u64)>),
    /// Lost (partition, silent host, full backlog): try again later.
    Lost,
    /// Answered with RST by a host whose software was killed (after this long: one trip).
    Refused(Duration),
    /// This host is crashed: its software never runs again.
    Hang,
}

fn syn(host: &HostCtx, to_host: IpAddr, target: SocketAddr) -> Syn {
    let mut st = host.net.lock();
    let now = st.now();
    if st.crashed(host.ip) {
        return Syn::Hang;
    }
    if to_host != host.ip {
        let why = if st.crashed(to_host) {
            Some("host down")
        } else if st.link(host.ip, to_host).partitioned || st.link(to_host, host.ip).partitioned {
            Some("partition")
        } else {
            let rate = st.link(host.ip, to_host).tcp_rate;
            (rate > 0.0 && st.rng(Stream::TcpLoss, host.ip, to_host).chance(rate)).then_some("loss")
        };
        if let Some(why) = why {
            st.record(now, format_args!("tcp syn {}>{target} lost ({why})", host.name));
            return Syn::Lost;
        }
    }
    if st.killed(to_host) {
        // turmoil delivers nothing to a host whose software is down; its kernel would refuse.
        st.record(now, format_args!("tcp syn {}>{target} refused: process killed", host.name));
        return Syn::Refused(st.profile(host.ip, to_host).min_latency());
    }
    let key = (to_host, target.port());
    let reservation = st.next_id();
    let Some(listener) = st.tcp.listeners.get_mut(&key) else { return Syn::Go(None) };
    if listener.queue.len() + listener.reservations.len() >= listener.limit
        || listener.reservations.len() >= MAX_SYNS_IN_FLIGHT
    {
        st.record(now, format_args!("tcp syn {}>{target} dropped: accept queue full", host.name));
        return Syn::Lost;
    }
    listener.reservations.push_back(reservation);
    Syn::Go(Some((key, reservation)))
}

/// A SYN's place in a listener's count, given back if the connect ends without being accepted.
struct Reservation {
    net: Arc<SimNet>,
    held: Option<((IpAddr, u16), u64)>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((key, id)) = self.held {
            if let Some(l) = self.net.lock().tcp.listeners.get_mut(&key) {
                l.reservations.retain(|r| *r != id);
            }
        }
    }
}

/// One library end of a simulated TCP connection.
pub(crate) struct SimTcpStream {
    host: Arc<HostCtx>,
    id: u64,
    local: SocketAddr,
    peer: SocketAddr,
    config: SocketConfig,
    /// Recorded for `diag()`.
    keep_alive: Option<KeepAlive>,
    /// `reset()` released the end already.
    released: bool,
}

impl TcpTransport for SimTcpStream {
    /// turmoil's bytes; the model's errors first. An end of stream (or reset) turmoil reports
    /// that the model did not send is not believed from a library peer (it came from a dropped
    /// stream of a crashed host, or across a partition): the read waits instead.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut st = self.host.net.lock();
        if st.frozen(self.host.ip) {
            return Poll::Pending;
        }
        let Some(end) = st.tcp.ends.get_mut(&self.id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if let Some(kind) = end.error {
            return Poll::Ready(Err(kind.into()));
        }
        if !end.read_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            end.read_waker = Some(cx.waker().clone());
        }
        let (key, other) = (end.key, 1 - end.side);
        let genuine = st.tcp.conns.get(&key).is_none_or(|c| !c.library[other] || c.fin[other]);
        let Some(end) = st.tcp.ends.get_mut(&self.id) else { return Poll::Pending };
        if end.turmoil_done {
            return if genuine { Poll::Ready(Ok(())) } else { Poll::Pending };
        }
        let Some(stream) = end.stream.as_mut() else { return Poll::Pending };
        let before = buf.filled().len();
        match Pin::new(stream).poll_read(cx, buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                end.last_rcv = Instant::now();
                end.probes_out = 0;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(result) => {
                if genuine {
                    end.last_rcv = Instant::now();
                    Poll::Ready(result)
                } else {
                    end.turmoil_done = true;
                    Poll::Pending
                }
            }
        }
    }

    /// Queues `data` as one segment (or writes it straight into turmoil when nothing can happen
    /// to it on the way); waits while 64 segments are queued.
    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut wake = Vec::new();
        let mut st = self.host.net.lock();
        if st.frozen(self.host.ip) {
            return Poll::Pending;
        }
        let Some(end) = st.tcp.ends.get(&self.id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if let Some(kind) = end.error {
            return Poll::Ready(Err(kind.into()));
        }
        if end.fin_queued {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let direct = end.sendq.is_empty() && clean(&st, end);
        let Some(end) = st.tcp.ends.get_mut(&self.id) else { return Poll::Pending };
        if direct {
            // Nothing queued and nothing can happen on the way: straight into turmoil, waiting
            // on its window exactly as a plain turmoil stream would (the kernel has nothing to
            // send, so this task is the only one waiting for turmoil's credit).
            let Some(stream) = end.stream.as_ref() else { return Poll::Pending };
            for _ in 0..2 {
                match stream.try_write(data) {
                    Ok(n) => {
                        end.last_rcv = Instant::now();
                        return Poll::Ready(Ok(n));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let credit = pin!(stream.writable()).poll(cx);
                        if credit.is_pending() {
                            return Poll::Pending;
                        }
                    }
                    Err(_) => {
                        set_error(&mut st, self.id, io::ErrorKind::ConnectionReset, &mut wake);
                        drop(st);
                        wake.into_iter().for_each(Waker::wake);
                        return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
                    }
                }
            }
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if end.sendq.len() >= SEND_QUEUE {
            end.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        end.sendq.push_back(Seg::Data(Bytes::copy_from_slice(data)));
        wake.extend(end.kernel_waker.take());
        drop(st);
        wake.into_iter().for_each(Waker::wake);
        Poll::Ready(Ok(data.len()))
    }

    /// Queues the FIN behind the data (as `shutdown(SHUT_WR)`); the kernel sends it once the
    /// peer's receive queue has a free slot (a FIN into a full window would be parked for ever
    /// by turmoil, DESIGN §7). A second call is a no-op.
    fn poll_shutdown(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.host.net.lock();
        if st.frozen(self.host.ip) {
            return Poll::Pending;
        }
        let Some(end) = st.tcp.ends.get_mut(&self.id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if let Some(kind) = end.error {
            return Poll::Ready(Err(kind.into()));
        }
        if !end.fin_queued {
            end.fin_queued = true;
            end.sendq.push_back(Seg::Fin);
            let kernel = end.kernel_waker.take();
            drop(st);
            kernel.into_iter().for_each(Waker::wake);
        }
        Poll::Ready(Ok(()))
    }

    /// RST: a library peer reachable now gets `ConnectionReset`; this end is released at once.
    /// A plain turmoil peer sees what turmoil sends when a stream is dropped (FIN, or RST with
    /// unread data): turmoil cannot send RST on demand.
    fn reset(mut self: Box<Self>) {
        let mut wake = Vec::new();
        let stream = {
            let mut st = self.host.net.lock();
            let now = st.now();
            if st.tcp.ends.contains_key(&self.id) {
                st.record(now, format_args!("tcp #{} reset()", self.id));
                let gone = if st.crashed(self.host.ip) {
                    Gone::Silent
                } else {
                    rst_to_peer(&mut st, self.id, &mut wake);
                    Gone::Reset
                };
                finalize(&mut st, self.id, gone)
            } else {
                None
            }
        };
        self.released = true;
        drop(stream);
        wake.into_iter().for_each(Waker::wake);
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }

    /// Keep-alive as Linux applies `SO_KEEPALIVE` then `TCP_KEEPIDLE`: switching it on arms the
    /// timer one idle time from now; an explicit idle time re-arms it from the last segment
    /// received (at once if that is longer ago); the probe count is not reset.
    fn set_keep_alive(&mut self, keep_alive: Option<KeepAlive>) -> io::Result<()> {
        self.keep_alive = keep_alive;
        let mut st = self.host.net.lock();
        let g = st.now();
        let now = Instant::now();
        let Some(end) = st.tcp.ends.get_mut(&self.id) else { return Ok(()) };
        match keep_alive {
            None => {
                end.keep_alive = None;
                end.ka_at = None;
            }
            Some(ka) => {
                if end.keep_alive.is_none() {
                    end.ka_at = Some(now + ka.idle.unwrap_or(DEFAULT_KEEP_ALIVE_IDLE));
                }
                if let Some(idle) = ka.idle {
                    end.ka_at = Some((end.last_rcv + idle).max(now));
                }
                end.keep_alive = Some(ka);
            }
        }
        let kernel = end.kernel_waker.take();
        st.record(g, format_args!("tcp #{} keep-alive {keep_alive:?}", self.id));
        drop(st);
        kernel.into_iter().for_each(Waker::wake);
        Ok(())
    }

    /// The recorded values: turmoil models none of these options. Keep-alive timing the caller
    /// left to the OS reads back as Linux's defaults.
    fn diag(&self) -> TcpDiag {
        let ka = self.keep_alive;
        TcpDiag {
            no_delay: Some(self.config.no_delay),
            address_reuse: Some(self.config.address_reuse),
            keep_alive: Some(ka.is_some()),
            keep_alive_idle: ka.map(|k| k.idle.unwrap_or(DEFAULT_KEEP_ALIVE_IDLE).as_secs()),
            keep_alive_interval: ka.map(|k| k.interval.unwrap_or(DEFAULT_KEEP_ALIVE_INTERVAL).as_secs()),
            keep_alive_count: ka.map(|k| if k.count == 0 { DEFAULT_KEEP_ALIVE_COUNT } else { k.count }),
            send_buffer_size: self.config.send_buffer_size,
            receive_buffer_size: self.config.receive_buffer_size,
        }
    }
}

impl Drop for SimTcpStream {
    /// Close without `reset()`: unread data means RST (as Linux); otherwise the queued data and
    /// a FIN are flushed by the kernel as an orphan. A crashed host's ends go silently.
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let mut wake = Vec::new();
        let stream = {
            let mut st = self.host.net.lock();
            match st.tcp.ends.get_mut(&self.id) {
                None => None,
                Some(end) => {
                    end.user_dropped = true;
                    let unread = end.error.is_none() && end.stream.as_mut().is_some_and(has_unread);
                    if st.crashed(self.host.ip) {
                        finalize(&mut st, self.id, Gone::Silent)
                    } else if st.tcp.ends.get(&self.id).is_some_and(|e| e.error.is_some()) {
                        finalize(&mut st, self.id, Gone::Reset)
                    } else if unread {
                        let now = st.last_now;
                        st.record(now, format_args!("tcp #{} closed with unread data: rst", self.id));
                        rst_to_peer(&mut st, self.id, &mut wake);
                        finalize(&mut st, self.id, Gone::Reset)
                    } else {
                        let end = st.tcp.ends.get_mut(&self.id);
                        match end {
                            Some(end) if end.kernel_alive => {
                                if !end.fin_queued {
                                    end.fin_queued = true;
                                    end.sendq.push_back(Seg::Fin);
                                }
                                wake.extend(end.kernel_waker.take());
                                None
                            }
                            _ => final_sync(&mut st, self.id, &mut wake),
                        }
                    }
                }
            }
        };
        drop(stream);
        wake.into_iter().for_each(Waker::wake);
    }
}

/// The simulator's `Backend::listen`: turmoil's listener, accepted from at once into the
/// adapter's accept queue (backlog + 1 connections, as Linux).
pub(crate) fn listen(
    host: &Arc<HostCtx>,
    local: SocketAddr,
    address_reuse: bool,
    backlog: u32,
) -> Result<SimListener, Cause> {
    sim_guard()?;
    let target = host.bind_target(local)?;
    let listener = poll_now(TcpListener::bind(target)).ok_or(Cause::Other)?.map_err(|e| cause_of(&e))?;
    let bound = listener.local_addr().map_err(|e| cause_of(&e))?;
    let key = (host.ip, bound.port());
    let mut st = host.net.lock();
    let id = st.next_id();
    let now = st.now();
    let limit = usize::try_from(backlog.min(SOMAXCONN)).unwrap_or(4096) + 1;
    st.tcp.listeners.insert(
        key,
        ListenerEntry {
            id,
            listener: Some(Arc::new(listener)),
            accept: None,
            task_waker: None,
            driver_waker: None,
            queue: VecDeque::new(),
            reservations: VecDeque::new(),
            limit,
        },
    );
    st.record(now, format_args!("tcp listen {}:{} as #{id} backlog {backlog}", host.name, bound.port()));
    drop(st);
    drop(host.runtime.spawn(accept_loop(Arc::clone(host), key, id)));
    Ok(SimListener {
        host: Arc::clone(host),
        key,
        id,
        local: host.reported_local(local, bound),
        accepted_config: SocketConfig {
            address_reuse,
            no_delay: true,
            send_buffer_size: None,
            receive_buffer_size: None,
        },
    })
}

/// Accepts every connection turmoil establishes, at once, into the accept queue.
async fn accept_loop(host: Arc<HostCtx>, key: (IpAddr, u16), id: u64) {
    std::future::poll_fn(|cx| {
        let mut wake = Vec::new();
        let mut st = host.net.lock();
        let result = loop {
            let Some(l) = st.tcp.listeners.get_mut(&key).filter(|l| l.id == id) else {
                break Poll::Ready(());
            };
            if !l.task_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                l.task_waker = Some(cx.waker().clone());
            }
            let Some(listener) = l.listener.clone() else { break Poll::Ready(()) };
            let accept = l.accept.get_or_insert_with(|| Box::pin(async move { listener.accept().await }));
            match accept.as_mut().poll(cx) {
                Poll::Pending => break Poll::Pending,
                Poll::Ready(result) => {
                    l.accept = None;
                    match result {
                        Ok((stream, origin)) => accepted(&host, &mut st, key, stream, origin, &mut wake),
                        Err(_) => break Poll::Ready(()),
                    }
                }
            }
        };
        drop(st);
        wake.into_iter().for_each(Waker::wake);
        result
    })
    .await;
}

fn accepted(
    host: &HostCtx,
    st: &mut NetState,
    key: (IpAddr, u16),
    stream: TcpStream,
    origin: SocketAddr,
    wake: &mut Vec<Waker>,
) {
    let Ok(local) = stream.local_addr() else { return };
    let client_host = if origin.ip().is_loopback() { host.ip } else { origin.ip() };
    let conn = (client_host, origin, local);
    let Ok(id) = new_end(host, st, stream, conn, SERVER, client_host) else { return };
    let now = st.now();
    st.record_line(now, Line::TcpAccepted { id, origin, local });
    if let Some(l) = st.tcp.listeners.get_mut(&key) {
        l.reservations.pop_front();
        l.queue.push_back(id);
        wake.extend(l.driver_waker.take());
    }
}

/// A simulated listening socket.
pub(crate) struct SimListener {
    host: Arc<HostCtx>,
    key: (IpAddr, u16),
    id: u64,
    /// The address reported: the requested one (the host's own address is bound as the wildcard).
    local: SocketAddr,
    /// Accepted sockets report the server's `addressReuse` and `noDelay` true (AMB-39).
    accepted_config: SocketConfig,
}

impl ListenerTransport for SimListener {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Box<dyn TcpTransport>>> {
        let mut st = self.host.net.lock();
        if st.frozen(self.host.ip) {
            return Poll::Pending;
        }
        let Some(l) = st.tcp.listeners.get_mut(&self.key).filter(|l| l.id == self.id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let Some(id) = l.queue.pop_front() else {
            l.driver_waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let (local, peer) = st.tcp.ends.get(&id).map_or((self.local, self.local), |e| (e.local, e.peer));
        Poll::Ready(Ok(Box::new(SimTcpStream {
            host: Arc::clone(&self.host),
            id,
            local,
            peer,
            config: self.accepted_config,
            keep_alive: None,
            released: false,
        })))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl Drop for SimListener {
    /// Stops listening at once (the port can be bound again right away); connections still in
    /// the accept queue are reset, as Linux does when a listener closes.
    fn drop(&mut self) {
        let mut wake = Vec::new();
        let mut streams = Vec::new();
        let entry = {
            let mut st = self.host.net.lock();
            let entry = match st.tcp.listeners.get(&self.key) {
                Some(l) if l.id == self.id => st.tcp.listeners.remove(&self.key),
                _ => None,
            };
            if let Some(entry) = &entry {
                for id in entry.queue.iter().copied() {
                    let gone = if st.crashed(self.host.ip) {
                        Gone::Silent
                    } else {
                        rst_to_peer(&mut st, id, &mut wake);
                        Gone::Reset
                    };
                    streams.extend(finalize(&mut st, id, gone));
                }
            }
            entry
        };
        if let Some(entry) = entry {
            let ListenerEntry { listener, accept, task_waker, .. } = entry;
            drop(accept);
            drop(listener);
            wake.extend(task_waker);
        }
        drop(streams);
        wake.into_iter().for_each(Waker::wake);
    }
}

/// Resets every library end of the connection between `a` and `b` (either order): each gets
/// `ConnectionReset` on its next read or write. Returns how many ends were reset.
pub(crate) fn reset_connection(net: &SimNet, a: SocketAddr, b: SocketAddr) -> usize {
    let mut wake = Vec::new();
    let mut st = net.lock();
    let now = st.now();
    let ids: Vec<u64> = st
        .tcp
        .ends
        .iter()
        .filter(|(_, e)| (e.local == a && e.peer == b) || (e.local == b && e.peer == a))
        .map(|(id, _)| *id)
        .collect();
    for id in &ids {
        st.record(now, format_args!("tcp #{id} reset by the harness"));
        set_error(&mut st, *id, io::ErrorKind::ConnectionReset, &mut wake);
    }
    drop(st);
    wake.into_iter().for_each(Waker::wake);
    ids.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_backoff_schedule() {
        let ms = |n: u32| backoff(n).as_millis();
        assert_eq!((ms(1), ms(2), ms(3), ms(10), ms(11), ms(15)), (200, 400, 800, 102_400, 120_000, 120_000));
        // One segment lost k times is delivered after rto·(2^k − 1) (k ≤ 10).
        for k in 1..=10u32 {
            let total: Duration = (1..=k).map(backoff).sum();
            assert_eq!(total, RTO_INITIAL * ((1 << k) - 1), "k = {k}");
        }
        // The budget: 15 losses end the connection after 804.6 s.
        let budget: Duration = (1..=RETRANSMISSION_BUDGET).map(backoff).sum();
        assert_eq!(budget, Duration::from_millis(804_600));
    }
}

//! UDP on the simulated network: [`SimUdp`], the adapter's own delivery between library
//! sockets, and the pump that takes datagrams from plain turmoil sockets.
//!
//! Between library sockets the adapter delivers datagrams itself (never through turmoil): only
//! so can it know a datagram's destination (group or unicast, which of several sockets sharing a
//! port), apply the *sender's* multicast loopback flag, draw impairments per link, and count
//! every tail drop of the emulated, byte-bounded receive buffer. Each library socket's port is
//! also bound in turmoil (one turmoil socket per host and port, shared by every library socket
//! on it), so plain `turmoil::net` peers can send to it and receive from it.
//!
//! Arrivals are kept in time order and settled into the receive buffer lazily: the buffer only
//! shrinks when the socket reads, and every read settles what is due first, so deciding a tail
//! drop late gives the same answer as deciding it on arrival. Senders settle the receiver's due
//! arrivals too, which keeps the pending list (and memory) bounded while nobody reads.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tcpudp::backend::{cause_of, BoxFuture, RecvMeta, UdpBind, UdpDiag, UdpTransport};
use tcpudp_core::Cause;
use tokio::io::ReadBuf;
use tokio::time::Sleep;

use crate::host::{io_error, poll_now, HostCtx};
use crate::link::UdpImpairment;
use crate::net::{Line, NetState, SimNet, Stream, UdpFate};
use crate::{MAX_DATAGRAM_V4, MAX_DATAGRAM_V6};

/// Linux's default `SO_RCVBUF` for UDP (`net.core.rmem_default`).
pub const DEFAULT_UDP_RECEIVE_BUFFER: usize = 212_992;

/// Bytes a queued datagram costs the emulated receive buffer on top of its payload (an
/// approximation of a Linux socket buffer's per-packet overhead).
pub const UDP_DATAGRAM_OVERHEAD: usize = 768;

/// Linux's smallest receive buffer (`SOCK_MIN_RCVBUF`, rounded).
const MIN_RECEIVE_BUFFER: usize = 2_304;

/// Datagrams one pump poll moves before yielding.
const PUMP_BUDGET: usize = 256;
/// The most payload a receive hands over (a longer datagram is truncated to it, as a receive
/// into a buffer of this size would be): the API's room for one datagram.
const RECV_ROOM: usize = 65_536;

/// The UDP part of the shared state.
#[derive(Default)]
pub(crate) struct UdpTables {
    /// Every library UDP socket, by id (ids grow: a higher id was bound later).
    ends: BTreeMap<u64, UdpEnd>,
    /// Bound ports, by (host address, port).
    ports: BTreeMap<(IpAddr, u16), UdpPort>,
}

/// One bound port of one host: the turmoil socket and the library sockets sharing it.
struct UdpPort {
    /// Identifies this binding (a pump of an earlier binding of the same port stops).
    id: u64,
    socket: Arc<turmoil::net::UdpSocket>,
    /// The pump's pending `readable()` (it holds the turmoil socket's receive lock).
    readable: Option<BoxFuture<'static, io::Result<()>>>,
    pump_waker: Option<Waker>,
    /// Library sockets on this port, in bind order.
    members: Vec<u64>,
}

/// A datagram on its way to, or waiting in, a library socket.
struct Arrival {
    id: u64,
    data: Bytes,
    from: SocketAddr,
}

/// One library UDP socket's receive side and options.
struct UdpEnd {
    host: IpAddr,
    port: u16,
    /// The address asked for (the wildcard, loopback or the host's address).
    bind_ip: IpAddr,
    reuse: bool,
    /// The sender's multicast loopback flag (IP_MULTICAST_LOOP).
    loopback: bool,
    groups: BTreeSet<IpAddr>,
    /// Datagrams in flight, sorted by (arrival time, order). Mostly appended at the back: a deque
    /// keeps its room, where a tree allocated a node whenever it went from empty to one.
    arrivals: VecDeque<((Duration, u64), Arrival)>,
    /// The emulated receive buffer.
    queue: VecDeque<Arrival>,
    used: usize,
    capacity: usize,
    dropped: u64,
    waker: Option<Waker>,
    /// The arrival time the socket's pending receive sleeps until (`None`: not sleeping, or not
    /// known to be). An arrival no earlier than it needs no wake-up: the socket looks at every
    /// due arrival when it wakes then (one wake per datagram instead of two).
    sleeping_until: Option<Duration>,
}

impl UdpEnd {
    /// Moves every arrival due by `now` into the buffer, tail-dropping what does not fit.
    /// Returns the ids dropped (for the trace).
    fn settle(&mut self, now: Duration) -> Vec<u64> {
        let mut dropped = Vec::new();
        while let Some(((at, _), _)) = self.arrivals.front() {
            if *at > now {
                break;
            }
            let Some((_, arrival)) = self.arrivals.pop_front() else { break };
            let charge = arrival.data.len() + UDP_DATAGRAM_OVERHEAD;
            if self.used > 0 && self.used + charge > self.capacity {
                self.dropped += 1;
                dropped.push(arrival.id);
            } else {
                self.used += charge;
                self.queue.push_back(arrival);
            }
        }
        dropped
    }

    /// Whether a datagram sent to `dst` (as unicast) matches this socket's bound address, and
    /// how well (2: exactly, 1: through the wildcard).
    fn unicast_score(&self, dst: IpAddr) -> u8 {
        if self.bind_ip == dst {
            2
        } else if self.bind_ip.is_unspecified() {
            1
        } else {
            0
        }
    }

    /// Whether this socket receives datagrams sent to `group`: it joined, and it is bound to the
    /// wildcard (or to the group itself) — a unicast-bound socket never does (UDP-MCAST-08).
    fn receives_group(&self, group: IpAddr) -> bool {
        self.groups.contains(&group) && (self.bind_ip.is_unspecified() || self.bind_ip == group)
    }
}

/// Records the tail drops (datagram ids, in order) of a library socket's buffer on `host:port`.
#[cold]
#[inline(never)]
fn record_drops(st: &mut NetState, (host, port): (IpAddr, u16), dropped: Vec<u64>, now: Duration) {
    for id in dropped {
        st.record_line(now, Line::UdpDropped { id, host, port });
    }
}

/// Puts a datagram on its way to library socket `to`, arriving at `at`; returns the receiver's
/// waker. The receiver is looked up once: its due arrivals are settled first (and this datagram
/// after it if due at once), their drops recorded in that order at the end.
fn push_arrival(st: &mut NetState, to: u64, at: Duration, arrival: Arrival, now: Duration) -> Option<Waker> {
    let order = st.next_id();
    let end = st.udp.ends.get_mut(&to)?;
    let mut dropped = end.settle(now);
    let key = (at, order);
    // Order ids grow, so a datagram arriving no earlier than the last one goes at the back.
    if end.arrivals.back().is_none_or(|(k, _)| *k < key) {
        end.arrivals.push_back((key, arrival));
    } else {
        let i = end.arrivals.partition_point(|(k, _)| *k < key);
        end.arrivals.insert(i, (key, arrival));
    }
    if at <= now {
        dropped.extend(end.settle(now));
    }
    let waker = if at > now && end.sleeping_until.is_some_and(|until| until <= at) {
        None // it wakes for an earlier arrival, and settles this one then if due
    } else {
        end.waker.clone()
    };
    if !dropped.is_empty() {
        let key = (end.host, end.port);
        record_drops(st, key, dropped, now);
    }
    st.note_deadline(at);
    waker
}

/// Binds a library UDP socket on `host` (the `Backend::bind_udp` of the simulator).
pub(crate) fn bind(host: &Arc<HostCtx>, bind: UdpBind) -> Result<SimUdp, Cause> {
    let ip = bind.local.ip();
    // Validates the address (family, an address of this host); the turmoil socket itself is
    // always bound to the wildcard, the adapter matches addresses.
    host.bind_target(bind.local)?;
    let wildcard = SocketAddr::new(host.unspecified(), bind.local.port());
    let capacity = bind
        .config
        .receive_buffer_size
        .map_or(DEFAULT_UDP_RECEIVE_BUFFER, |n| n.saturating_mul(2).max(MIN_RECEIVE_BUFFER));
    let net = &host.net;
    let mut st = net.lock();
    let id = st.next_id();
    let now = st.now();
    let mut port = bind.local.port();
    let new_port = port == 0 || !st.udp.ports.contains_key(&(host.ip, port));
    if new_port {
        let socket = poll_now(turmoil::net::UdpSocket::bind(wildcard))
            .ok_or(Cause::Other)?
            .map_err(|e| cause_of(&e))?;
        port = socket.local_addr().map_err(|e| cause_of(&e))?.port();
        st.udp.ports.insert(
            (host.ip, port),
            UdpPort { id, socket: Arc::new(socket), readable: None, pump_waker: None, members: Vec::new() },
        );
        let pump = pump(Arc::clone(net), (host.ip, port), id);
        drop(host.runtime.spawn(pump));
    } else {
        // Several sockets on one port (SO_REUSEADDR, as Linux): allowed when their addresses do
        // not overlap, or when every one of them asked for reuse.
        let members = &st.udp.ports[&(host.ip, port)].members;
        let conflict = members.iter().filter_map(|m| st.udp.ends.get(m)).any(|m| {
            let overlap = m.bind_ip.is_unspecified() || ip.is_unspecified() || m.bind_ip == ip;
            overlap && !(m.reuse && bind.config.address_reuse)
        });
        if conflict {
            return Err(Cause::AddressInUse);
        }
    }
    let end = UdpEnd {
        host: host.ip,
        port,
        bind_ip: if ip == host.ip { host.ip } else { ip },
        reuse: bind.config.address_reuse,
        loopback: bind.multicast_loopback,
        groups: BTreeSet::new(),
        arrivals: VecDeque::new(),
        queue: VecDeque::new(),
        used: 0,
        capacity,
        dropped: 0,
        waker: None,
        sleeping_until: None,
    };
    st.udp.ends.insert(id, end);
    if let Some(p) = st.udp.ports.get_mut(&(host.ip, port)) {
        p.members.push(id);
    }
    st.record(now, format_args!("udp bind {}:{port} as #{id} ({})", host.name, SocketAddr::new(ip, port)));
    drop(st);
    let local = host.reported_local(bind.local, SocketAddr::new(ip, port));
    Ok(SimUdp {
        host: Arc::clone(host),
        id,
        local,
        bind,
        received: 0,
        sleep: None,
        sleep_for: None,
        wake: Vec::new(),
    })
}

/// Takes datagrams plain turmoil sockets send to a bound port and hands each to the library
/// socket it is for. Ends when the port is released.
async fn pump(net: Arc<SimNet>, key: (IpAddr, u16), binding: u64) {
    let mut buf = vec![0u8; 65_536];
    std::future::poll_fn(|cx| {
        let mut wake = Vec::new();
        let mut st = net.lock();
        for _ in 0..PUMP_BUDGET {
            let Some(port) = st.udp.ports.get_mut(&key) else { return Poll::Ready(()) };
            if port.id != binding {
                return Poll::Ready(());
            }
            if !port.pump_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                port.pump_waker = Some(cx.waker().clone());
            }
            if let Some(mut readable) = port.readable.take() {
                match readable.as_mut().poll(cx) {
                    Poll::Pending => {
                        port.readable = Some(readable);
                        drop(st);
                        wake.into_iter().for_each(Waker::wake);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Ready(Ok(())) => {}
                }
            }
            let socket = Arc::clone(&port.socket);
            match socket.try_recv_from(&mut buf) {
                Ok((len, from)) => {
                    if let Some(w) = deliver_from_turmoil(&mut st, key, &buf[..len], from) {
                        wake.push(w);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    port_readable(&mut st, key, socket);
                }
                Err(_) => return Poll::Ready(()),
            }
        }
        drop(st);
        wake.into_iter().for_each(Waker::wake);
        cx.waker().wake_by_ref(); // budget used up: yield, then go on
        Poll::Pending
    })
    .await;
}

fn port_readable(st: &mut NetState, key: (IpAddr, u16), socket: Arc<turmoil::net::UdpSocket>) {
    if let Some(port) = st.udp.ports.get_mut(&key) {
        port.readable = Some(Box::pin(async move { socket.readable().await }));
    }
}

/// A datagram a plain turmoil socket sent to `key`: to the library socket it is for (the
/// unicast rule; turmoil cannot tell whether it was sent to a group). Datagrams from library
/// sockets are skipped (the adapter delivered them already), as are those arriving over a
/// partitioned link.
fn deliver_from_turmoil(
    st: &mut NetState,
    key: (IpAddr, u16),
    data: &[u8],
    from: SocketAddr,
) -> Option<Waker> {
    let now = st.now();
    let from_host = if from.ip().is_loopback() { key.0 } else { from.ip() };
    if st.udp.ports.contains_key(&(from_host, from.port())) {
        return None;
    }
    let id = st.next_id();
    if from_host != key.0 && (st.link(from_host, key.0).partitioned || st.crashed(key.0)) {
        st.record_line(now, turmoil_line(id, from, key, data.len(), UdpFate::FromTurmoilPartitioned));
        return None;
    }
    let dst = if from.ip().is_loopback() { from.ip() } else { key.0 };
    let Some(to) = pick_unicast(st, key, dst) else {
        st.record_line(now, turmoil_line(id, from, key, data.len(), UdpFate::FromTurmoilUnbound));
        return None;
    };
    st.record_line(now, turmoil_line(id, from, key, data.len(), UdpFate::FromTurmoil));
    let arrival = Arrival { id, data: Bytes::copy_from_slice(data), from };
    push_arrival(st, to, now, arrival, now)
}

/// The trace line of a datagram from a plain turmoil socket to the port `key`.
fn turmoil_line(id: u64, from: SocketAddr, key: (IpAddr, u16), len: usize, fate: UdpFate) -> Line {
    Line::Udp { id, from, dest: SocketAddr::new(key.0, key.1), len, fate }
}

/// The library socket on `key` a unicast datagram to `dst` goes to: the best address match,
/// then the most recently bound (SO_REUSEADDR on Linux).
fn pick_unicast(st: &NetState, key: (IpAddr, u16), dst: IpAddr) -> Option<u64> {
    pick_member(st, st.udp.ports.get(&key)?, dst)
}

/// As [`pick_unicast`], on a port already looked up.
fn pick_member(st: &NetState, port: &UdpPort, dst: IpAddr) -> Option<u64> {
    port.members
        .iter()
        .filter_map(|id| {
            let score = st.udp.ends.get(id)?.unicast_score(dst);
            (score > 0).then_some((score, *id))
        })
        .max()
        .map(|(_, id)| id)
}

/// One simulated UDP socket (a library socket).
pub(crate) struct SimUdp {
    host: Arc<HostCtx>,
    id: u64,
    /// The address reported: the requested one, with the port bound.
    local: SocketAddr,
    /// The options asked for, as recorded.
    bind: UdpBind,
    /// Datagrams handed to the caller.
    received: u64,
    /// Wakes the reader when the earliest in-flight datagram arrives.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The arrival time `sleep` is armed for.
    sleep_for: Option<Duration>,
    /// Room for the wakers one send collects (kept between sends).
    wake: Vec<Waker>,
}

impl SimUdp {
    /// The IPv4 interface a membership may name: none, the wildcard, loopback or this host.
    fn check_interface(&self) -> io::Result<()> {
        match self.bind.multicast_interface {
            None => Ok(()),
            Some(ip) if ip == self.host.ip => Ok(()),
            Some(ip) if self.host.same_family(ip) && (ip.is_unspecified() || ip.is_loopback()) => Ok(()),
            Some(ip) => Err(io_error(Cause::Unreachable, &format!("{ip} is not an interface of this host"))),
        }
    }

    /// The source address a datagram to `dest` carries.
    fn source(&self, bind_ip: IpAddr, dest: IpAddr) -> SocketAddr {
        let ip = if dest.is_loopback() {
            if bind_ip == self.host.ip {
                bind_ip
            } else {
                self.host.loopback()
            }
        } else if bind_ip.is_unspecified() {
            self.host.ip
        } else {
            bind_ip
        };
        SocketAddr::new(ip, self.local.port())
    }

    /// Checks and sends one datagram: a datagram larger than the family's maximum is rejected
    /// (`EMSGSIZE`), the wildcard means this host, and an address no host has swallows it.
    fn checked_send(&mut self, data: Bytes, dest: SocketAddr) -> io::Result<()> {
        if !self.host.same_family(dest.ip()) {
            return Err(send_refused(Cause::FamilyMismatch, "destination of the other family"));
        }
        let max = if dest.is_ipv4() { MAX_DATAGRAM_V4 } else { MAX_DATAGRAM_V6 };
        if data.len() > max {
            return Err(send_refused(Cause::MessageTooLarge, "datagram too large"));
        }
        let dest = if dest.ip().is_unspecified() {
            SocketAddr::new(self.host.loopback(), dest.port())
        } else {
            dest
        };
        self.send(data, dest)
    }

    /// Sends one datagram (already checked) from this socket.
    fn send(&mut self, data: Bytes, dest: SocketAddr) -> io::Result<()> {
        // The receivers' wakers, woken after the lock is released; the list keeps its room.
        let mut wake = std::mem::take(&mut self.wake);
        let result = self.send_collecting(data, dest, &mut wake);
        if !wake.is_empty() {
            wake.drain(..).for_each(Waker::wake);
        }
        self.wake = wake;
        result
    }

    /// Sends one datagram, collecting the wakers to wake in `wake`. The unicast delivery to a
    /// library socket is the hot path; every other case is out of line, to keep this small.
    fn send_collecting(&self, data: Bytes, dest: SocketAddr, wake: &mut Vec<Waker>) -> io::Result<()> {
        let host = &self.host;
        let net = &host.net;
        let mut st = net.lock();
        let now = st.now();
        if st.frozen(host.ip) {
            return Ok(()); // a crashed host (or a killed process) says nothing
        }
        let Some(me) = st.udp.ends.get(&self.id) else {
            return Err(released());
        };
        let (bind_ip, loopback) = (me.bind_ip, me.loopback);
        let from = self.source(bind_ip, dest.ip());
        if dest.ip().is_multicast() {
            self.send_multicast(&mut st, loopback, from, dest, data, now, wake);
            return Ok(());
        }
        let to_host = host.host_of(dest.ip());
        // A library port at the destination (one look-up), and the socket on it it is for.
        let library_port = to_host.and_then(|h| {
            let port = st.udp.ports.get(&(h, dest.port()))?;
            Some((h, pick_member(&st, port, dest.ip())))
        });
        match library_port {
            Some((to_host, Some(to))) => deliver(&mut st, host.ip, to_host, to, from, dest, data, now, wake),
            Some((_, None)) => record_unbound(&mut st, from, dest, data.len(), now),
            None => self.send_turmoil(&mut st, to_host, from, dest, data, now),
        }
        Ok(())
    }

    /// A datagram to a multicast group: a copy to every library socket that joined it (the
    /// sender's loopback flag deciding for this host's), and one through turmoil for plain
    /// turmoil members.
    #[inline(never)]
    #[allow(clippy::too_many_arguments, reason = "one send's whole description")]
    fn send_multicast(
        &self,
        st: &mut NetState,
        loopback: bool,
        from: SocketAddr,
        dest: SocketAddr,
        data: Bytes,
        now: Duration,
        wake: &mut Vec<Waker>,
    ) {
        let host = &self.host;
        let members: Vec<(u64, IpAddr)> = st
            .udp
            .ends
            .iter()
            .filter(|(_, e)| e.port == dest.port() && e.receives_group(dest.ip()))
            .map(|(id, e)| (*id, e.host))
            .collect();
        for (to, to_host) in members {
            if to_host == host.ip && !loopback {
                continue; // the sender's flag decides (UDP-MCAST-07), default off
            }
            deliver(st, host.ip, to_host, to, from, dest, data.clone(), now, wake);
        }
        // Plain turmoil members (library sockets never join in turmoil, so only they).
        if let Some(port) = st.udp.ports.get(&(host.ip, self.local.port())) {
            let _ = port.socket.try_send_to(&data, dest);
        }
    }

    /// A datagram to a plain turmoil socket (or to an address nobody has): through turmoil, with
    /// this link's partition and impairments applied here.
    #[inline(never)]
    fn send_turmoil(
        &self,
        st: &mut NetState,
        to_host: Option<IpAddr>,
        from: SocketAddr,
        dest: SocketAddr,
        data: Bytes,
        now: Duration,
    ) {
        let id = st.next_id();
        let me = self.host.ip;
        let mut copies = 1;
        let mut delay = Duration::ZERO;
        if let Some(to) = to_host.filter(|to| *to != me) {
            let link = st.link(me, to);
            if link.partitioned || st.crashed(to) {
                st.record(now, format_args!("udp#{id} {from}>{dest} len={} lost: partition", data.len()));
                return;
            }
            let imp = link.udp;
            if imp.loss > 0.0 && st.rng(Stream::UdpLoss, me, to).chance(imp.loss) {
                st.record(now, format_args!("udp#{id} {from}>{dest} len={} lost", data.len()));
                return;
            }
            delay = impairment_delay(st, &imp, me, to);
            if imp.duplicate > 0.0 && st.rng(Stream::UdpDup, me, to).chance(imp.duplicate) {
                copies = 2;
            }
        }
        st.record(
            now,
            format_args!("udp#{id} {from}>{dest} len={} via turmoil x{copies} after {delay:?}", data.len()),
        );
        let Some(port) = st.udp.ports.get(&(me, self.local.port())) else { return };
        let socket = Arc::clone(&port.socket);
        if delay.is_zero() {
            for _ in 0..copies {
                // Refused: no host has the address; the datagram is lost, as on a real network.
                let _ = socket.try_send_to(&data, dest);
            }
        } else {
            drop(self.host.runtime.spawn(async move {
                tokio::time::sleep(delay).await;
                for _ in 0..copies {
                    let _ = socket.try_send_to(&data, dest);
                }
            }));
        }
    }
}

/// The impairment delay of one datagram on `from → to` with impairments `imp` (fixed delay,
/// jitter, reordering); draws only for the impairments set.
fn impairment_delay(st: &mut NetState, imp: &UdpImpairment, from: IpAddr, to: IpAddr) -> Duration {
    if imp.jitter.is_zero() && imp.reorder <= 0.0 {
        return imp.delay; // no draw (the usual case)
    }
    drawn_delay(st, imp, from, to)
}

/// [`impairment_delay`] with jitter or reordering set.
#[cold]
#[inline(never)]
fn drawn_delay(st: &mut NetState, imp: &UdpImpairment, from: IpAddr, to: IpAddr) -> Duration {
    let mut delay = imp.delay;
    if !imp.jitter.is_zero() {
        let micros = u64::try_from(imp.jitter.as_micros()).unwrap_or(u64::MAX);
        delay += Duration::from_micros(st.rng(Stream::UdpJitter, from, to).below(micros.saturating_add(1)));
    }
    if imp.reorder > 0.0 && st.rng(Stream::UdpReorder, from, to).chance(imp.reorder) {
        delay += imp.reorder_delay;
    }
    delay
}

/// Delivers one datagram from host `from_host` to library socket `to` on `to_host`: at once
/// inside one host; over a link with its latency, partition and impairments otherwise. The
/// receiver's waker goes to `wake`. Lost and duplicated datagrams are handled out of line.
#[allow(clippy::too_many_arguments, reason = "one delivery's whole description")]
fn deliver(
    st: &mut NetState,
    from_host: IpAddr,
    to_host: IpAddr,
    to: u64,
    from: SocketAddr,
    dest: SocketAddr,
    data: Bytes,
    now: Duration,
    wake: &mut Vec<Waker>,
) {
    let id = st.next_id();
    let len = data.len();
    if from_host == to_host {
        st.record_line(now, Line::Udp { id, from, dest, len, fate: UdpFate::Local { to } });
        wake.extend(push_arrival(st, to, now, Arrival { id, data, from }, now));
        return;
    }
    let link = st.link(from_host, to_host);
    if link.partitioned || st.crashed(to_host) {
        return record_lost(st, now, Line::Udp { id, from, dest, len, fate: UdpFate::Partitioned { to } });
    }
    let imp = link.udp;
    if imp.loss > 0.0 && st.rng(Stream::UdpLoss, from_host, to_host).chance(imp.loss) {
        return record_lost(st, now, Line::Udp { id, from, dest, len, fate: UdpFate::Lost { to } });
    }
    let profile = st.profile(from_host, to_host);
    let latency = profile.sample(st.rng(Stream::UdpLatency, from_host, to_host));
    let at = now + latency + impairment_delay(st, &imp, from_host, to_host);
    st.record_line(now, Line::Udp { id, from, dest, len, fate: UdpFate::Arrives { to, at } });
    if imp.duplicate > 0.0 && st.rng(Stream::UdpDup, from_host, to_host).chance(imp.duplicate) {
        return deliver_twice(st, to, at, Arrival { id, data, from }, now, wake);
    }
    wake.extend(push_arrival(st, to, at, Arrival { id, data, from }, now));
}

/// A datagram the link duplicates: the original, then its copy, both arriving at `at`.
#[cold]
#[inline(never)]
fn deliver_twice(
    st: &mut NetState,
    to: u64,
    at: Duration,
    arrival: Arrival,
    now: Duration,
    wake: &mut Vec<Waker>,
) {
    let (id, data, from) = (arrival.id, arrival.data.clone(), arrival.from);
    wake.extend(push_arrival(st, to, at, arrival, now));
    let dup = st.next_id();
    st.record_line(now, Line::UdpDuplicate { id: dup, of: id });
    wake.extend(push_arrival(st, to, at, Arrival { id: dup, data, from }, now));
}

/// Records a datagram lost on its link (partition, crashed host or loss rate).
#[cold]
#[inline(never)]
fn record_lost(st: &mut NetState, now: Duration, line: Line) {
    st.record_line(now, line);
}

/// Records a datagram to a port whose library sockets are bound to another address.
#[cold]
#[inline(never)]
fn record_unbound(st: &mut NetState, from: SocketAddr, dest: SocketAddr, len: usize, now: Duration) {
    let id = st.next_id();
    st.record(now, format_args!("udp#{id} {from}>{dest} len={len} unbound address"));
}

/// The error of an operation on a socket the adapter no longer has.
#[cold]
#[inline(never)]
fn released() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket released")
}

/// A send the adapter refuses (family, size).
#[cold]
#[inline(never)]
fn send_refused(cause: Cause, message: &str) -> io::Error {
    io_error(cause, message)
}

impl SimUdp {
    /// The next datagram of the emulated receive buffer (settling arrivals due by now first), with
    /// its metadata; `dropped_total` counts its tail drops so far.
    fn poll_next_arrival(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Bytes, RecvMeta)>> {
        for _ in 0..4 {
            let (popped, next) = {
                let mut st = self.host.net.lock();
                let now = st.now();
                if st.frozen(self.host.ip) {
                    return frozen_receive(&mut st, self.id);
                }
                let Some(mut end) = st.udp.ends.get_mut(&self.id) else {
                    return Poll::Ready(Err(released()));
                };
                let dropped = end.settle(now);
                if !dropped.is_empty() {
                    let key = (end.host, end.port);
                    record_drops(&mut st, key, dropped, now);
                    let Some(again) = st.udp.ends.get_mut(&self.id) else {
                        return Poll::Ready(Err(released()));
                    };
                    end = again;
                }
                end.sleeping_until = None; // set again below when this call sleeps
                let mut popped = end.queue.pop_front().map(|arrival| {
                    end.used -= arrival.data.len() + UDP_DATAGRAM_OVERHEAD;
                    let meta = RecvMeta {
                        len: arrival.data.len(),
                        from: arrival.from,
                        dropped_total: end.dropped,
                        registered: false,
                    };
                    (arrival.data, meta)
                });
                if popped.is_some() {
                    self.received += 1;
                }
                if let Some(more_queued) = popped.take_if(|_| !end.queue.is_empty()) {
                    return Poll::Ready(Ok(more_queued)); // the caller polls again for the rest
                }
                // Nothing (more) is due: wait for the next arrival now, with the caller's waker (a
                // datagram handed over below says so, and spares the caller a poll that would
                // only come back here, at the same instant, to do this).
                if !end.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    end.waker = Some(cx.waker().clone());
                }
                // The sleep below is armed for the first arrival (if it has passed already, the
                // next turn of this loop looks again).
                end.sleeping_until = end.arrivals.front().map(|((at, _), _)| *at);
                (popped, end.sleeping_until.map(|at| (at, now)))
            };
            let registered = |(data, meta): (Bytes, RecvMeta)| (data, RecvMeta { registered: true, ..meta });
            let Some((at, now)) = next else {
                return popped.map_or(Poll::Pending, |p| Poll::Ready(Ok(registered(p))));
            };
            if self.sleep_for != Some(at) {
                let deadline = tokio::time::Instant::now() + at.saturating_sub(now);
                match &mut self.sleep {
                    Some(sleep) => sleep.as_mut().reset(deadline),
                    None => self.sleep = Some(first_sleep(deadline)),
                }
                self.sleep_for = Some(at);
            }
            match self.sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    self.sleep_for = None;
                    if let Some(p) = popped {
                        return Poll::Ready(Ok(p)); // not registered: the caller polls again
                    }
                }
                _ => return popped.map_or(Poll::Pending, |p| Poll::Ready(Ok(registered(p)))),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A receive on a crashed host (or a killed process): nothing until it runs again.
#[cold]
#[inline(never)]
fn frozen_receive<T>(st: &mut NetState, id: u64) -> Poll<T> {
    if let Some(end) = st.udp.ends.get_mut(&id) {
        end.sleeping_until = None; // any arrival wakes it once it runs again
    }
    Poll::Pending
}

/// The receive's sleep, made once per socket (then reset): out of line, as it is large.
#[cold]
#[inline(never)]
fn first_sleep(deadline: tokio::time::Instant) -> Pin<Box<Sleep>> {
    Box::pin(tokio::time::sleep_until(deadline))
}

impl UdpTransport for SimUdp {
    /// The next datagram of the emulated receive buffer (settling arrivals due by now first);
    /// `dropped_total` counts its tail drops so far.
    fn poll_recv_from(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<RecvMeta>> {
        self.poll_next_arrival(cx).map_ok(|(data, meta)| {
            let len = data.len().min(buf.remaining());
            buf.put_slice(&data[..len]);
            RecvMeta { len, ..meta }
        })
    }

    /// As `poll_recv_from`, handing the datagram's `Bytes` over without a copy.
    fn poll_recv_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Bytes, RecvMeta)>> {
        self.poll_next_arrival(cx).map_ok(|(data, meta)| {
            let len = data.len().min(RECV_ROOM);
            // A slice of a fresh `Bytes` allocates its shared header: only when truncating.
            let data = if len < data.len() { data.slice(..len) } else { data };
            (data, RecvMeta { len, ..meta })
        })
    }

    /// Sends one datagram. A datagram larger than the family's maximum is rejected (`EMSGSIZE`),
    /// the wildcard means this host, and an address no host has swallows it. Never blocks.
    fn poll_send_to(&mut self, _cx: &mut Context<'_>, data: &[u8], dest: SocketAddr) -> Poll<io::Result<()>> {
        Poll::Ready(self.checked_send(Bytes::copy_from_slice(data), dest))
    }

    /// As `poll_send_to`, keeping the caller's `Bytes` (no copy of the payload).
    fn poll_send_bytes(
        &mut self,
        _cx: &mut Context<'_>,
        data: &Bytes,
        dest: SocketAddr,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(self.checked_send(data.clone(), dest))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// Joins `group` (the adapter's membership; as Linux, joining twice is `EADDRINUSE`).
    fn join_multicast(&mut self, group: IpAddr) -> io::Result<()> {
        if !self.host.same_family(group) {
            return Err(io_error(Cause::FamilyMismatch, "group of the other family"));
        }
        if !group.is_multicast() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a multicast group"));
        }
        self.check_interface()?;
        let mut st = self.host.net.lock();
        let now = st.now();
        let end = st.udp.ends.get_mut(&self.id).ok_or(io::ErrorKind::NotConnected)?;
        if !end.groups.insert(group) {
            return Err(io_error(Cause::AddressInUse, "already a member"));
        }
        st.record(now, format_args!("udp #{} joins {group}", self.id));
        Ok(())
    }

    /// Leaves `group` (`AddrNotAvailable` when not a member).
    fn leave_multicast(&mut self, group: IpAddr) -> io::Result<()> {
        if !self.host.same_family(group) {
            return Err(io_error(Cause::FamilyMismatch, "group of the other family"));
        }
        self.check_interface()?;
        let mut st = self.host.net.lock();
        let now = st.now();
        let end = st.udp.ends.get_mut(&self.id).ok_or(io::ErrorKind::NotConnected)?;
        if !end.groups.remove(&group) {
            return Err(io_error(Cause::Unreachable, "not a member"));
        }
        st.record(now, format_args!("udp #{} leaves {group}", self.id));
        Ok(())
    }

    /// The recorded options, the receive count, and the emulated buffer's size as Linux reports
    /// `SO_RCVBUF` (twice the request).
    fn diag(&self) -> UdpDiag {
        UdpDiag {
            address_reuse: Some(self.bind.config.address_reuse),
            multicast_loopback: Some(self.bind.multicast_loopback),
            multicast_ttl: Some(self.bind.multicast_ttl),
            multicast_interface: self.bind.multicast_interface,
            send_buffer_size: self.bind.config.send_buffer_size,
            receive_buffer_size: self.bind.config.receive_buffer_size,
            received: self.received,
            receive_calls: None,
        }
    }
}

impl Drop for SimUdp {
    /// Releases the socket; the last one on a port unbinds the turmoil socket at once (so the
    /// port can be bound again right away) and stops the pump.
    fn drop(&mut self) {
        let released = {
            let mut st = self.host.net.lock();
            let now = st.last_now;
            st.udp.ends.remove(&self.id);
            let key = (self.host.ip, self.local.port());
            let empty = st.udp.ports.get_mut(&key).is_some_and(|p| {
                p.members.retain(|m| *m != self.id);
                p.members.is_empty()
            });
            st.record(now, format_args!("udp close #{}", self.id));
            if empty {
                st.udp.ports.remove(&key)
            } else {
                None
            }
        };
        // Outside the lock: turmoil's unbind, and the pump's wake (it finds the port gone).
        if let Some(port) = released {
            let UdpPort { socket, readable, pump_waker, .. } = port;
            drop(readable);
            drop(socket);
            if let Some(w) = pump_waker {
                w.wake();
            }
        }
    }
}

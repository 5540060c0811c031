//! The real harness's loopback proxy (DESIGN §8): network faults on real sockets, where every
//! host shares 127.0.0.1 and the kernel offers no link to break.
//!
//! A scenario that injects network faults on the real backend connects and sends through here:
//! one front per (sending host, receiving host, published port), on 127.0.0.1:0. TCP fronts
//! accept, connect to the real server and pump both directions; a link between two hosts can
//! then be delayed, stalled (a partition: forwarding stops and data waits in the proxy and the
//! kernels' buffers until repair) or reset (both sides closed with zero linger, so each gets an
//! RST). While two hosts are cut, connects between them hang: the front's backlog drops to 0, a
//! filler connection fills its accept queue and nothing is accepted, so the kernel drops the
//! SYNs and the client retries them (about 1 s, 3 s, 7 s after the first) until repair. UDP fronts
//! forward each datagram from a per-source upstream socket, so replies find their way back,
//! after a seeded per-link draw of loss, duplication, reordering and delay, and drop everything
//! across a partition; datagrams already sent when a link changes go by its old state.
//!
//! What it cannot do (the capability table): TCP loss (the proxy terminates TCP, and netem is
//! unavailable), a partition that keep-alive would notice (the proxy's kernel answers the
//! probes), host crashes. A refused connect through the proxy looks accepted, then reset (the
//! front accepts before the server is asked), so scenarios expecting refusals do not inject
//! network faults.
//!
//! Addresses seen through the proxy are its own; [`Proxy::origin`] maps them back to the peer's,
//! so a trace shows the same sources as without the proxy.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tcpudp_net_sim::SimRng;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// How long a reordered datagram is held back, so later ones overtake it, here and in the
/// simulator's scenarios: longer than the default simulated link's worst latency (100 ms), so
/// the next datagram overtakes it whatever the latency draws.
pub const REORDER_DELAY: Duration = Duration::from_millis(250);

/// Chunks one TCP direction holds between its reader and its writer (each up to [`CHUNK`]).
const TCP_QUEUE: usize = 16;

/// Largest chunk read at once from a TCP stream.
const CHUNK: usize = 16 * 1024;

/// Datagrams waiting for their delivery time, across the whole proxy; more are dropped.
const UDP_QUEUE: usize = 1024;

/// Upstream sockets (distinct sources) one UDP front serves; datagrams from more are dropped.
const UDP_SOURCES: usize = 64;

/// The state of one direction between two hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Link {
    /// Partitioned: TCP stalls, UDP drops.
    cut: bool,
    /// Extra delay of every TCP chunk and UDP datagram.
    delay: Duration,
    /// UDP per-mille rates.
    loss: u32,
    duplicate: u32,
    reorder: u32,
}

/// The loopback proxy of one world. Cheap to clone; every task it starts ends with
/// [`shutdown`](Proxy::shutdown) (or with the runtime).
#[derive(Clone)]
pub struct Proxy {
    inner: Rc<Inner>,
}

struct Inner {
    seed: u64,
    /// Directed links (from host, to host).
    links: RefCell<BTreeMap<(String, String), Link>>,
    /// Bumped on every link change; stalled writers wait on it.
    changed: watch::Sender<u64>,
    /// Per-link generators for UDP draws (seeded: no thread RNG).
    rngs: RefCell<BTreeMap<(String, String), SimRng>>,
    tcp_fronts: RefCell<BTreeMap<(String, String, u16), Rc<TcpFront>>>,
    udp_fronts: RefCell<BTreeMap<(String, String, u16), Rc<UdpFront>>>,
    conns: RefCell<BTreeMap<u64, Conn>>,
    next_conn: Cell<u64>,
    /// Proxy-side address → the address of the peer it stands for.
    origins: RefCell<BTreeMap<SocketAddr, SocketAddr>>,
    /// Datagrams to deliver later, to the scheduler task (started with the first UDP front).
    udp_out: RefCell<Option<mpsc::Sender<Outgoing>>>,
    /// Fronts, UDP return paths and the scheduler.
    tasks: RefCell<Vec<AbortHandle>>,
}

/// One TCP front: what `from` connects to in order to reach `to`'s server at `target`.
struct TcpFront {
    from: String,
    to: String,
    listener: TcpListener,
    target: SocketAddr,
    /// While the hosts are cut, connects hang: the backlog is 0, a filler connection fills the
    /// accept queue and nothing is accepted, so the kernel drops new SYNs (the client retries).
    filler: RefCell<Option<socket2::Socket>>,
    /// Fillers' addresses, dropped when the accept loop meets them after the cut.
    fillers: RefCell<Vec<SocketAddr>>,
    hanging: Cell<bool>,
}

/// One proxied TCP connection: the client's side (`down`) and the server's (`up`).
struct Conn {
    /// The client's address, as the front saw it.
    client: SocketAddr,
    /// The proxy's address as the server sees it.
    upstream: SocketAddr,
    down: Rc<TcpStream>,
    up: Rc<TcpStream>,
    pumps: Vec<AbortHandle>,
    /// Directions that delivered their end of stream.
    finished: u8,
}

/// One UDP front: what `from` sends to reach `to`'s socket at `target`.
struct UdpFront {
    from: String,
    to: String,
    socket: Rc<Udp>,
    target: SocketAddr,
    /// Per source: the socket that forwards its datagrams (and receives the replies).
    upstreams: RefCell<BTreeMap<SocketAddr, Rc<Udp>>>,
}

/// A proxy UDP socket, with a second handle on it that reads what the kernel holds, and sends,
/// even before the runtime has noticed readiness (tokio's `try_*` answer from its cache).
struct Udp {
    io: UdpSocket,
    raw: std::net::UdpSocket,
}

/// A datagram due at `at`.
struct Outgoing {
    at: Instant,
    socket: Rc<Udp>,
    /// `None` for a connected upstream socket.
    to: Option<SocketAddr>,
    data: Bytes,
}

/// What a TCP reader hands its writer.
enum Piece {
    Data(Instant, Bytes),
    End(Instant),
}

impl Proxy {
    /// A proxy whose UDP draws come from `seed`. Binds nothing until a front is asked for.
    pub fn new(seed: u64) -> Proxy {
        Proxy {
            inner: Rc::new(Inner {
                seed,
                links: RefCell::new(BTreeMap::new()),
                changed: watch::channel(0).0,
                rngs: RefCell::new(BTreeMap::new()),
                tcp_fronts: RefCell::new(BTreeMap::new()),
                udp_fronts: RefCell::new(BTreeMap::new()),
                conns: RefCell::new(BTreeMap::new()),
                next_conn: Cell::new(0),
                origins: RefCell::new(BTreeMap::new()),
                udp_out: RefCell::new(None),
                tasks: RefCell::new(Vec::new()),
            }),
        }
    }

    /// The port `from` connects to in order to reach `to`'s TCP server on `port` through the
    /// proxy (one front per triple, started on first use). Needs the world's `LocalSet`.
    pub fn tcp_port(&self, from: &str, to: &str, port: u16) -> io::Result<u16> {
        let key = (from.to_owned(), to.to_owned(), port);
        if let Some(front) = self.inner.tcp_fronts.borrow().get(&key) {
            return front.listener.local_addr().map(|a| a.port());
        }
        let std = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        std.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std)?;
        let address = listener.local_addr()?;
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        self.inner.origins.borrow_mut().insert(address, target);
        let front = Rc::new(TcpFront {
            from: from.to_owned(),
            to: to.to_owned(),
            listener,
            target,
            filler: RefCell::new(None),
            fillers: RefCell::new(Vec::new()),
            hanging: Cell::new(false),
        });
        self.inner.tcp_fronts.borrow_mut().insert(key, front.clone());
        // A connect across a cut hangs from its first SYN.
        self.refresh_hang(&front)?;
        let task = tokio::task::spawn_local(self.clone().accept_loop(front));
        self.inner.tasks.borrow_mut().push(task.abort_handle());
        Ok(address.port())
    }

    /// The port `from` sends to in order to reach `to`'s UDP socket on `port` through the proxy.
    pub fn udp_port(&self, from: &str, to: &str, port: u16) -> io::Result<u16> {
        let key = (from.to_owned(), to.to_owned(), port);
        if let Some(front) = self.inner.udp_fronts.borrow().get(&key) {
            return front.socket.io.local_addr().map(|a| a.port());
        }
        self.start_scheduler();
        let socket = Rc::new(Udp::bind(None)?);
        let address = socket.io.local_addr()?;
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        self.inner.origins.borrow_mut().insert(address, target);
        let front = Rc::new(UdpFront {
            from: from.to_owned(),
            to: to.to_owned(),
            socket,
            target,
            upstreams: RefCell::new(BTreeMap::new()),
        });
        let task = tokio::task::spawn_local(self.clone().udp_front(front.clone()));
        self.inner.tasks.borrow_mut().push(task.abort_handle());
        self.inner.udp_fronts.borrow_mut().insert(key, front);
        Ok(address.port())
    }

    /// The address `seen` stands for: the real peer's when `seen` is one of the proxy's own
    /// sockets, `seen` itself otherwise.
    pub fn origin(&self, seen: SocketAddr) -> SocketAddr {
        self.inner.origins.borrow().get(&seen).copied().unwrap_or(seen)
    }

    /// Cuts (`true`) or restores `from → to`: TCP stalls, UDP drops.
    pub fn set_cut(&self, from: &str, to: &str, cut: bool) {
        self.update(from, to, |l| l.cut = cut);
    }

    /// Every TCP chunk and UDP datagram `from → to` takes `delay` longer.
    pub fn set_delay(&self, from: &str, to: &str, delay: Duration) {
        self.update(from, to, |l| l.delay = delay);
    }

    /// UDP datagrams `from → to` are lost, duplicated or held back (by [`REORDER_DELAY`]) with
    /// these per-mille rates (replacing earlier ones).
    pub fn set_udp(&self, from: &str, to: &str, loss: u32, duplicate: u32, reorder: u32) {
        self.update(from, to, |l| {
            l.loss = loss.min(1000);
            l.duplicate = duplicate.min(1000);
            l.reorder = reorder.min(1000);
        });
    }

    /// Resets the proxied connection of the socket whose ends are `local` and `remote` (the
    /// client's or the server's): both sides are closed with zero linger, so each gets an RST.
    /// `false` when no connection matches.
    pub fn reset(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        let id = self
            .inner
            .conns
            .borrow()
            .iter()
            .find_map(|(id, c)| (c.client == local || c.upstream == remote).then_some(*id));
        match id {
            Some(id) => {
                self.inner.reset_conn(id);
                true
            }
            None => false,
        }
    }

    /// Ends every task and closes every socket of the proxy (connections with an RST).
    pub fn shutdown(&self) {
        for task in self.inner.tasks.borrow_mut().drain(..) {
            task.abort();
        }
        let ids: Vec<u64> = self.inner.conns.borrow().keys().copied().collect();
        for id in ids {
            self.inner.reset_conn(id);
        }
        self.inner.udp_out.borrow_mut().take();
    }

    fn update(&self, from: &str, to: &str, change: impl FnOnce(&mut Link)) {
        // Datagrams already sent are on the link before the change: on loopback they wait in
        // the proxy's receive buffers, so forward them under the old state first.
        let fronts: Vec<Rc<UdpFront>> = self.inner.udp_fronts.borrow().values().cloned().collect();
        for front in &fronts {
            self.drain_front(front);
            let upstreams: Vec<(SocketAddr, Rc<Udp>)> =
                front.upstreams.borrow().iter().map(|(a, s)| (*a, s.clone())).collect();
            for (source, up) in upstreams {
                self.drain_back(front, source, &up);
            }
        }
        change(self.inner.links.borrow_mut().entry((from.to_owned(), to.to_owned())).or_default());
        let fronts: Vec<Rc<TcpFront>> = self.inner.tcp_fronts.borrow().values().cloned().collect();
        for front in &fronts {
            // Without a hang a connect across the cut would open at once; the run goes on.
            let _ = self.refresh_hang(front);
        }
        self.inner.changed.send_modify(|generation| *generation += 1);
    }

    /// Makes connects to `front` hang while its hosts are cut either way (a SYN or its answer
    /// would be lost), and accepts again once they are not.
    fn refresh_hang(&self, front: &TcpFront) -> io::Result<()> {
        let cut = self.link(&front.from, &front.to).cut || self.link(&front.to, &front.from).cut;
        if cut == front.hanging.get() {
            return Ok(());
        }
        front.hanging.set(cut);
        let listener = socket2::SockRef::from(&front.listener);
        if cut {
            listener.listen(0)?;
            let filler = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            filler.set_nonblocking(true)?;
            let address = front.listener.local_addr()?;
            match filler.connect(&address.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            if let Some(local) = filler.local_addr()?.as_socket() {
                front.fillers.borrow_mut().push(local);
            }
            *front.filler.borrow_mut() = Some(filler);
        } else {
            listener.listen(1024)?;
            front.filler.borrow_mut().take();
        }
        Ok(())
    }

    fn link(&self, from: &str, to: &str) -> Link {
        self.inner.links.borrow().get(&(from.to_owned(), to.to_owned())).copied().unwrap_or_default()
    }

    // ---- TCP ----------------------------------------------------------------------------------

    async fn accept_loop(self, front: Rc<TcpFront>) {
        let mut changes = self.inner.changed.subscribe();
        loop {
            changes.borrow_and_update();
            if front.hanging.get() {
                // Nothing is accepted while the hosts are cut: the queue stays full.
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let accepted = tokio::select! {
                biased;
                changed = changes.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => return,
                },
                accepted = front.listener.accept() => accepted,
            };
            // Ends with an accept error (the listener is gone) or when shutdown aborts it.
            let Ok((down, client)) = accepted else { return };
            if front.fillers.borrow().contains(&client) {
                continue; // A hang's filler: dropped.
            }
            let conn =
                self.clone().open_conn(down, client, front.from.clone(), front.to.clone(), front.target);
            let task = tokio::task::spawn_local(conn);
            self.inner.tasks.borrow_mut().push(task.abort_handle());
        }
    }

    async fn open_conn(
        self,
        down: TcpStream,
        client: SocketAddr,
        from: String,
        to: String,
        target: SocketAddr,
    ) {
        let up = match TcpStream::connect(target).await {
            Ok(up) => up,
            Err(_) => {
                // The server is gone or refuses: the client, already accepted, gets an RST.
                abort_stream(&down);
                return;
            }
        };
        let Ok(upstream) = up.local_addr() else {
            abort_stream(&down);
            abort_stream(&up);
            return;
        };
        // Chunks go on as they come: the peers' own Nagle settings already shaped them.
        let _ = (down.set_nodelay(true), up.set_nodelay(true));
        self.inner.origins.borrow_mut().insert(upstream, client);
        let id = self.inner.next_conn.get();
        self.inner.next_conn.set(id + 1);
        let (down, up) = (Rc::new(down), Rc::new(up));
        let mut pumps = Vec::new();
        for (src, dst, a, b) in [(&down, &up, &from, &to), (&up, &down, &to, &from)] {
            let (tx, rx) = mpsc::channel(TCP_QUEUE);
            pumps.push(tokio::task::spawn_local(self.clone().tcp_reader(id, src.clone(), tx)).abort_handle());
            pumps.push(
                tokio::task::spawn_local(self.clone().tcp_writer(id, dst.clone(), rx, a.clone(), b.clone()))
                    .abort_handle(),
            );
        }
        let conn = Conn { client, upstream, down, up, pumps, finished: 0 };
        self.inner.conns.borrow_mut().insert(id, conn);
    }

    /// Reads one side into the queue; an error resets the connection (an RST goes on through).
    async fn tcp_reader(self, id: u64, src: Rc<TcpStream>, tx: mpsc::Sender<Piece>) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            if src.readable().await.is_err() {
                self.inner.reset_conn(id);
                return;
            }
            match src.try_read(&mut buf) {
                Ok(0) => {
                    let _ = tx.send(Piece::End(Instant::now())).await;
                    return;
                }
                Ok(n) => {
                    if tx.send(Piece::Data(Instant::now(), Bytes::copy_from_slice(&buf[..n]))).await.is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.inner.reset_conn(id);
                    return;
                }
            }
        }
    }

    /// Writes the queue to the other side, each piece once the link is up and its delay passed.
    async fn tcp_writer(
        self,
        id: u64,
        dst: Rc<TcpStream>,
        mut rx: mpsc::Receiver<Piece>,
        from: String,
        to: String,
    ) {
        let mut changes = self.inner.changed.subscribe();
        while let Some(piece) = rx.recv().await {
            let read_at = match &piece {
                Piece::Data(at, _) | Piece::End(at) => *at,
            };
            // A stall holds the piece here; a delay holds it until its time, re-checked after a
            // change of the link (a repair, a new delay).
            loop {
                let link = self.link(&from, &to);
                let due = read_at + link.delay;
                if !link.cut && Instant::now() >= due {
                    break;
                }
                changes.borrow_and_update();
                if link.cut {
                    if changes.changed().await.is_err() {
                        return;
                    }
                } else {
                    tokio::select! {
                        biased;
                        changed = changes.changed() => if changed.is_err() { return },
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
            }
            match piece {
                Piece::Data(_, data) => {
                    if write_all(&dst, &data).await.is_err() {
                        self.inner.reset_conn(id);
                        return;
                    }
                }
                Piece::End(_) => {
                    let _ = socket2::SockRef::from(&*dst).shutdown(Shutdown::Write);
                    self.inner.finish_direction(id);
                    return;
                }
            }
        }
    }

    // ---- UDP ----------------------------------------------------------------------------------

    fn start_scheduler(&self) {
        if self.inner.udp_out.borrow().is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel(UDP_QUEUE);
        *self.inner.udp_out.borrow_mut() = Some(tx);
        let task = tokio::task::spawn_local(scheduler(rx));
        self.inner.tasks.borrow_mut().push(task.abort_handle());
    }

    /// Forwards what `front` receives, as it arrives.
    async fn udp_front(self, front: Rc<UdpFront>) {
        // Ends when the socket fails or when shutdown aborts it.
        while front.socket.io.readable().await.is_ok() {
            self.drain_front(&front);
        }
    }

    /// Forwards every datagram waiting at `front` (without blocking).
    fn drain_front(&self, front: &Rc<UdpFront>) {
        let mut buf = vec![0u8; 65_536];
        while let Some((n, source)) = front.socket.recv_now(&mut buf) {
            let data = Bytes::copy_from_slice(&buf[..n]);
            let Some(up) = self.upstream(front, source) else { continue };
            self.impair(&front.from, &front.to, data, up, None);
        }
    }

    /// The upstream socket of `source` at `front`, made (with its return path) on first use;
    /// `None` beyond [`UDP_SOURCES`] or when no socket can be bound (the datagram is lost).
    fn upstream(&self, front: &Rc<UdpFront>, source: SocketAddr) -> Option<Rc<Udp>> {
        if let Some(up) = front.upstreams.borrow().get(&source) {
            return Some(up.clone());
        }
        if front.upstreams.borrow().len() >= UDP_SOURCES {
            return None;
        }
        let up = Rc::new(Udp::bind(Some(front.target)).ok()?);
        self.inner.origins.borrow_mut().insert(up.io.local_addr().ok()?, source);
        front.upstreams.borrow_mut().insert(source, up.clone());
        let task = tokio::task::spawn_local(self.clone().udp_back(front.clone(), source, up.clone()));
        self.inner.tasks.borrow_mut().push(task.abort_handle());
        Some(up)
    }

    /// Replies the server sends to a source's upstream socket go back to that source from the
    /// front, so they come from the address the source sent to.
    async fn udp_back(self, front: Rc<UdpFront>, source: SocketAddr, up: Rc<Udp>) {
        while up.io.readable().await.is_ok() {
            self.drain_back(&front, source, &up);
        }
    }

    /// Forwards every reply waiting at `up` back to `source` (without blocking).
    fn drain_back(&self, front: &UdpFront, source: SocketAddr, up: &Udp) {
        let mut buf = vec![0u8; 65_536];
        while let Some((n, _)) = up.recv_now(&mut buf) {
            let data = Bytes::copy_from_slice(&buf[..n]);
            self.impair(&front.to, &front.from, data, front.socket.clone(), Some(source));
        }
    }

    /// One datagram `from → to`: dropped, or scheduled once or twice, maybe held back.
    fn impair(&self, from: &str, to: &str, data: Bytes, socket: Rc<Udp>, dest: Option<SocketAddr>) {
        let link = self.link(from, to);
        if link.cut {
            return;
        }
        let key = (from.to_owned(), to.to_owned());
        let (lost, copies, held) = {
            let mut rngs = self.inner.rngs.borrow_mut();
            let rng = rngs
                .entry(key)
                .or_insert_with(|| SimRng::stream(self.inner.seed, "proxy-udp", &format!("{from}>{to}")));
            let mut draw = |per_mille: u32| per_mille > 0 && rng.below(1000) < u64::from(per_mille);
            let lost = draw(link.loss);
            let copies = if draw(link.duplicate) { 2 } else { 1 };
            (lost, copies, draw(link.reorder))
        };
        if lost {
            return;
        }
        let at = Instant::now() + link.delay + if held { REORDER_DELAY } else { Duration::ZERO };
        let Some(out) = self.inner.udp_out.borrow().clone() else { return };
        for _ in 0..copies {
            // A full queue drops the datagram, as a full router would.
            let _ = out.try_send(Outgoing { at, socket: socket.clone(), to: dest, data: data.clone() });
        }
    }
}

impl Inner {
    fn reset_conn(&self, id: u64) {
        let Some(conn) = self.conns.borrow_mut().remove(&id) else { return };
        for pump in &conn.pumps {
            pump.abort();
        }
        abort_stream(&conn.down);
        abort_stream(&conn.up);
        // The streams close (with an RST) when the aborted pumps drop their references.
        drop(conn);
    }

    fn finish_direction(&self, id: u64) {
        let done = {
            let mut conns = self.conns.borrow_mut();
            let Some(conn) = conns.get_mut(&id) else { return };
            conn.finished += 1;
            conn.finished == 2
        };
        if done {
            // Both ends of stream delivered: the sides close normally once the pumps are gone.
            self.conns.borrow_mut().remove(&id);
        }
    }
}

/// Delivers datagrams at their times, in time order (ties in arrival order).
async fn scheduler(mut rx: mpsc::Receiver<Outgoing>) {
    let mut pending: BTreeMap<(Instant, u64), Outgoing> = BTreeMap::new();
    let mut seq = 0u64;
    loop {
        let next = pending.keys().next().map(|(at, _)| *at);
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                if let Some((_, out)) = pending.pop_first() {
                    // UDP: a failed send is a lost datagram.
                    // Straight to the kernel: the runtime may not have seen a new socket writable yet.
                    let _ = match out.to {
                        Some(to) => out.socket.raw.send_to(&out.data, to),
                        None => out.socket.raw.send(&out.data),
                    };
                }
            }
            incoming = rx.recv() => match incoming {
                Some(out) => {
                    pending.insert((out.at, seq), out);
                    seq += 1;
                }
                None => return,
            },
        }
    }
}

impl Udp {
    fn bind(connect: Option<SocketAddr>) -> io::Result<Udp> {
        let io = bind_udp(connect)?;
        let raw = socket2::SockRef::from(&io).try_clone()?.into();
        Ok(Udp { io, raw })
    }

    /// The next datagram waiting, if any, without blocking. Through the runtime first, so its
    /// readiness is cleared when nothing is left; then straight from the kernel.
    fn recv_now(&self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        self.io.try_recv_from(buf).or_else(|_| self.raw.recv_from(buf)).ok()
    }
}

fn bind_udp(connect: Option<SocketAddr>) -> io::Result<UdpSocket> {
    let std = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    if let Some(target) = connect {
        std.connect(target)?;
    }
    std.set_nonblocking(true)?;
    UdpSocket::from_std(std)
}

/// Zero linger: closing the stream sends an RST instead of a FIN.
fn abort_stream(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_loopback(test: impl std::future::Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&rt, test);
    }

    // rule: UDP-READ-02, UDP-READ-03
    #[test]
    fn udp_through_the_proxy_maps_sources_back_and_a_cut_drops() {
        on_loopback(async {
            let proxy = Proxy::new(1);
            let server = bind_udp(None).unwrap();
            let client = bind_udp(None).unwrap();
            let (server_addr, client_addr) = (server.local_addr().unwrap(), client.local_addr().unwrap());
            let front = SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                proxy.udp_port("c", "s", server_addr.port()).unwrap(),
            ));
            client.send_to(b"hi", front).await.unwrap();
            let mut buf = [0u8; 16];
            let (n, seen) = server.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"hi");
            assert_ne!(seen, client_addr, "the server sees the proxy");
            assert_eq!(proxy.origin(seen), client_addr);
            server.send_to(b"back", seen).await.unwrap();
            let (n, seen) = client.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"back");
            assert_eq!(seen, front);
            assert_eq!(proxy.origin(seen), server_addr);
            // Across a cut the datagram is lost: the marker sent after repair is the next thing.
            proxy.set_cut("c", "s", true);
            client.send_to(b"lost", front).await.unwrap();
            proxy.set_udp("c", "s", 0, 1000, 0);
            client.send_to(b"lost too", front).await.unwrap();
            proxy.set_cut("c", "s", false);
            client.send_to(b"marker", front).await.unwrap();
            for _ in 0..2 {
                let (n, _) = server.recv_from(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], b"marker", "duplicated after the repair, nothing before");
            }
            proxy.shutdown();
        });
    }

    /// Writes on `held` (whose link is impaired), then a marker on `other` (unimpaired):
    /// the marker arrives and the held bytes do not, until `lift`.
    async fn held_until_lifted(lift: impl FnOnce(), held: [&mut TcpStream; 2], other: [&mut TcpStream; 2]) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let [held, held_at_server] = held;
        let [other, other_at_server] = other;
        let mut buf = [0u8; 8];
        held.write_all(b"held").await.unwrap();
        other.write_all(b"marker").await.unwrap();
        other_at_server.read_exact(&mut buf[..6]).await.unwrap();
        assert_eq!(&buf[..6], b"marker");
        tokio::task::yield_now().await;
        assert_eq!(held_at_server.try_read(&mut buf).map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
        lift();
        held_at_server.read_exact(&mut buf[..4]).await.unwrap();
        assert_eq!(&buf[..4], b"held");
    }

    // rule: TCP-WRITE-04, TCP-READ-01
    #[test]
    fn a_stall_or_a_delay_holds_tcp_data_until_lifted_while_other_links_flow() {
        on_loopback(async {
            let proxy = Proxy::new(3);
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let target = listener.local_addr().unwrap().port();
            let front = |from| (Ipv4Addr::LOCALHOST, proxy.tcp_port(from, "s", target).unwrap());
            let mut held = TcpStream::connect(front("c")).await.unwrap();
            let (mut held_at_server, _) = listener.accept().await.unwrap();
            let mut other = TcpStream::connect(front("x")).await.unwrap();
            let (mut other_at_server, _) = listener.accept().await.unwrap();
            proxy.set_cut("c", "s", true);
            let lift = || proxy.set_cut("c", "s", false);
            held_until_lifted(lift, [&mut held, &mut held_at_server], [&mut other, &mut other_at_server])
                .await;
            // A delay far longer than the test: lifting it delivers at once.
            proxy.set_delay("c", "s", Duration::from_secs(3600));
            let lift = || proxy.set_delay("c", "s", Duration::ZERO);
            held_until_lifted(lift, [&mut held, &mut held_at_server], [&mut other, &mut other_at_server])
                .await;
            proxy.shutdown();
        });
    }

    // rule: EXT-04
    #[test]
    fn a_proxy_reset_sends_an_rst_to_both_sides() {
        on_loopback(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let proxy = Proxy::new(2);
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let port = proxy.tcp_port("c", "s", listener.local_addr().unwrap().port()).unwrap();
            let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            client.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            assert!(!proxy.reset(server.local_addr().unwrap(), server.local_addr().unwrap()));
            assert!(proxy.reset(client.local_addr().unwrap(), client.peer_addr().unwrap()));
            let kind = |r: io::Result<usize>| r.map_err(|e| e.kind());
            assert_eq!(kind(client.read(&mut buf).await), Err(io::ErrorKind::ConnectionReset));
            assert_eq!(kind(server.read(&mut buf).await), Err(io::ErrorKind::ConnectionReset));
            proxy.shutdown();
        });
    }
}

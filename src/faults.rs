//! Fault hooks for conditions loopback cannot produce (RULES.md §0.4 `fault`), on either backend.
//!
//! Every [`Network`](crate::Network) wraps its backend in a [`FaultBackend`]: with no fault armed it
//! only forwards calls and counts live OS (or simulator) sockets, which is what
//! `Network::faults().open_sockets()` reports (GEN-01, GEN-14). Tests arm faults through
//! [`Faults`]; a fault is consumed by the first operation it applies to unless said otherwise.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tcpudp_core::address::HostName;
use tcpudp_core::options::{KeepAlive, SocketConfig};
use tcpudp_core::Cause;
use tokio::io::ReadBuf;

use crate::backend::{
    Backend, BackendKind, BoxFuture, ListenerTransport, RecvMeta, TcpDiag, TcpTransport, UdpBind, UdpDiag,
    UdpTransport,
};
use crate::shared::{lock, Mutex, Spares};

/// The fault controls of one network. Cheap to clone; all clones control the same faults.
#[derive(Clone, Default)]
pub struct Faults {
    inner: Arc<FaultState>,
}

#[derive(Default)]
struct FaultState {
    armed: Mutex<Armed>,
    hold: HoldGate,
    open_sockets: AtomicU64,
    created_sockets: AtomicU64,
    conversion: AtomicBool,
    /// Sends still to fail (`fail_send`): an atomic, so a send with none armed takes no lock.
    fail_send: AtomicU64,
    /// Whether `recv_errors` may hold an entry: a receive with none queued takes no lock.
    recv_armed: AtomicBool,
    /// Whether `hang_connect` or `fail_connect` is armed: a connect with neither takes no lock.
    connect_armed: AtomicBool,
    /// Accepts still to fail (`exhaust_accept`): an accept with none armed takes no lock.
    exhaust_accept: AtomicU64,
}

#[derive(Default)]
struct Armed {
    hang_connect: bool,
    fail_connect: Option<Cause>,
    fail_bind: Option<Cause>,
    fail_membership: bool,
    recv_errors: VecDeque<io::ErrorKind>,
    no_route: BTreeSet<IpAddr>,
    resolves: BTreeMap<String, Result<Vec<IpAddr>, Cause>>,
    held_names: BTreeSet<String>,
    lookups: Vec<String>,
    /// Every live transport's link, for `drop_link`; a transport empties its slot when dropped
    /// and the slot is reused, so the list stays as long as the most links ever open at once and
    /// making a link costs O(1) however many are open.
    links: Vec<Option<Arc<Link>>>,
    /// Empty slots of `links`, the last freed first.
    free_links: Vec<usize>,
    /// Links of gone transports, kept for the next ones (a short connection then allocates no
    /// link); reused only once nothing else holds them.
    spare_links: Spares<Link, 8>,
}

/// Per-transport fault state: a dropped link fails every later operation.
struct Link {
    /// Its place in `Armed::links`.
    slot: usize,
    dropped: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Link {
    /// A spare link, made new for `slot` (only its owner holds it).
    fn reset(&mut self, slot: usize) {
        self.slot = slot;
        *self.dropped.get_mut() = false;
        *self.waker.get_mut() = None;
    }

    /// Fails once the link is dropped. Takes no lock: the waker is only stored when the operation
    /// has to wait ([`Link::pending`]).
    fn check(&self) -> io::Result<()> {
        if self.dropped.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::NetworkDown, "link dropped (fault)"));
        }
        Ok(())
    }

    /// The transport said "pending": note who waits, so `drop_link` can wake it, then look at the
    /// flag again (a drop between the first check and the registration is not lost).
    fn pending<T>(&self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        {
            let mut slot = lock(&self.waker);
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        match self.check() {
            Ok(()) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Runs one transport operation behind the link's state.
    fn guard<T>(
        &self,
        cx: &mut Context<'_>,
        op: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        self.check()?;
        match op(cx) {
            Poll::Pending => self.pending(cx),
            ready => ready,
        }
    }
}

/// "Held" sockets stay opening until released. Wakers, not a thread or a timer, so a simulation
/// stays deterministic.
#[derive(Default)]
struct HoldGate {
    held: AtomicBool,
    generation: AtomicU64,
    waiters: Mutex<Vec<Waker>>,
}

impl HoldGate {
    fn wake_all(&self) {
        for w in lock(&self.waiters).drain(..) {
            w.wake();
        }
    }

    fn register(&self, waker: &Waker) {
        let mut waiters = lock(&self.waiters);
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }
}

/// A socket created while opening was held: its opening is reported only after release.
#[derive(Clone)]
pub struct HoldTicket {
    state: Arc<FaultState>,
    generation: u64,
}

impl HoldTicket {
    /// Ready once the hold this ticket was taken under has been released.
    pub(crate) fn poll_released(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.released() {
            return Poll::Ready(());
        }
        self.state.hold.register(cx.waker());
        // Checked again after registering, so a release in between is not lost.
        if self.released() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn released(&self) -> bool {
        let gate = &self.state.hold;
        gate.generation.load(Ordering::SeqCst) > self.generation || !gate.held.load(Ordering::SeqCst)
    }
}

impl Faults {
    /// Sockets created from now on stay "opening" until [`release_open`](Self::release_open):
    /// setup, listen, connect and resolution are not reported.
    pub fn hold_open(&self) {
        self.inner.hold.held.store(true, Ordering::SeqCst);
    }

    /// Lets held sockets finish opening.
    pub fn release_open(&self) {
        let gate = &self.inner.hold;
        gate.held.store(false, Ordering::SeqCst);
        gate.generation.fetch_add(1, Ordering::SeqCst);
        gate.wake_all();
    }

    /// A ticket for a socket being created now, if opening is held.
    pub(crate) fn hold_ticket(&self) -> Option<HoldTicket> {
        let gate = &self.inner.hold;
        gate.held.load(Ordering::SeqCst).then(|| HoldTicket {
            state: self.inner.clone(),
            generation: gate.generation.load(Ordering::SeqCst),
        })
    }

    /// Every later connect hangs (until the connect timeout).
    pub fn hang_connect(&self) {
        lock(&self.inner.armed).hang_connect = true;
        self.inner.connect_armed.store(true, Ordering::SeqCst);
    }

    /// The next connect fails with `cause`.
    pub fn fail_connect(&self, cause: Cause) {
        lock(&self.inner.armed).fail_connect = Some(cause);
        self.inner.connect_armed.store(true, Ordering::SeqCst);
    }

    /// The next UDP bind or server listen fails with `cause`.
    pub fn fail_bind(&self, cause: Cause) {
        lock(&self.inner.armed).fail_bind = Some(cause);
    }

    /// The next send (TCP write or UDP datagram) fails.
    pub fn fail_send(&self) {
        self.inner.fail_send.fetch_add(1, Ordering::SeqCst);
    }

    /// The next accept cannot be served (as EMFILE).
    pub fn exhaust_accept(&self) {
        self.inner.exhaust_accept.fetch_add(1, Ordering::SeqCst);
    }

    /// The next multicast membership call fails.
    pub fn fail_membership(&self) {
        lock(&self.inner.armed).fail_membership = true;
    }

    /// The next UDP receive reports one transient error of this kind.
    pub fn recv_error(&self, kind: io::ErrorKind) {
        lock(&self.inner.armed).recv_errors.push_back(kind);
        self.inner.recv_armed.store(true, Ordering::SeqCst);
    }

    /// Routing finds no interface for `addr`.
    pub fn no_route(&self, addr: IpAddr) {
        lock(&self.inner.armed).no_route.insert(addr);
    }

    /// The resolver answers `name` with `result` (the only source of names but "localhost").
    pub fn resolve(&self, name: &str, result: Result<Vec<IpAddr>, Cause>) {
        lock(&self.inner.armed).resolves.insert(name.to_ascii_lowercase(), result);
    }

    /// Lookups of `name` wait until [`release_resolve`](Self::release_resolve).
    pub fn hold_resolve(&self, name: &str) {
        lock(&self.inner.armed).held_names.insert(name.to_ascii_lowercase());
    }

    /// Lets held lookups of `name` answer.
    pub fn release_resolve(&self, name: &str) {
        lock(&self.inner.armed).held_names.remove(&name.to_ascii_lowercase());
        self.inner.hold.wake_all();
    }

    /// Every host name looked up so far, in order.
    pub fn lookups(&self) -> Vec<String> {
        lock(&self.inner.armed).lookups.clone()
    }

    /// Received data on every socket fails conversion from now on (only a fault can do this).
    pub fn fail_conversion(&self) {
        self.inner.conversion.store(true, Ordering::SeqCst);
    }

    /// Whether received data should fail conversion.
    pub(crate) fn conversion_fails(&self) -> bool {
        self.inner.conversion.load(Ordering::SeqCst)
    }

    /// Every existing socket's link goes down: each later operation on it fails.
    pub fn drop_link(&self) {
        let links: Vec<_> = lock(&self.inner.armed).links.iter().flatten().cloned().collect();
        for link in links {
            link.dropped.store(true, Ordering::SeqCst);
            if let Some(w) = lock(&link.waker).take() {
                w.wake();
            }
        }
    }

    /// OS (or simulator) sockets the library holds now.
    pub fn open_sockets(&self) -> u64 {
        self.inner.open_sockets.load(Ordering::SeqCst)
    }

    /// OS (or simulator) sockets the library has created so far (connect, listen, bind, accept).
    pub fn created_sockets(&self) -> u64 {
        self.inner.created_sockets.load(Ordering::SeqCst)
    }

    /// A connected transport behind the fault hooks (its link made now).
    pub(crate) fn wrap_tcp(&self, transport: Box<dyn TcpTransport>) -> FaultTcp {
        FaultTcp::new(transport, self.clone())
    }

    fn new_link(&self) -> Arc<Link> {
        let mut armed = lock(&self.inner.armed);
        let slot = armed.free_links.pop().unwrap_or(armed.links.len());
        let link = armed.spare_links.take(|link| link.reset(slot)).unwrap_or_else(|| {
            Arc::new(Link { slot, dropped: AtomicBool::new(false), waker: Mutex::new(None) })
        });
        if slot == armed.links.len() {
            armed.links.push(Some(link.clone()));
        } else {
            armed.links[slot] = Some(link.clone());
        }
        self.inner.created_sockets.fetch_add(1, Ordering::SeqCst);
        self.inner.open_sockets.fetch_add(1, Ordering::SeqCst);
        link
    }

    /// A transport is gone: its link leaves the registry and the socket is no longer open.
    fn release_link(&self, link: &Link) {
        {
            let mut armed = lock(&self.inner.armed);
            if let Some(entry) = armed.links.get_mut(link.slot) {
                let gone = entry.take();
                armed.free_links.push(link.slot);
                if let Some(gone) = gone {
                    armed.spare_links.keep(gone);
                }
            }
        }
        self.inner.open_sockets.fetch_sub(1, Ordering::SeqCst);
    }

    /// The armed connect faults (hang, and the one-shot failure), taking the failure.
    fn take_connect_faults(&self) -> (bool, Option<Cause>) {
        if !self.inner.connect_armed.load(Ordering::SeqCst) {
            return (false, None);
        }
        let mut armed = lock(&self.inner.armed);
        let faults = (armed.hang_connect, armed.fail_connect.take());
        if !armed.hang_connect {
            self.inner.connect_armed.store(false, Ordering::SeqCst);
        }
        faults
    }

    fn take_accept_exhaustion(&self) -> bool {
        take_one(&self.inner.exhaust_accept)
    }

    fn take_send_failure(&self) -> bool {
        take_one(&self.inner.fail_send)
    }

    /// Whether a receive error is armed (the next receive fails).
    fn recv_error_armed(&self) -> bool {
        self.inner.recv_armed.load(Ordering::SeqCst)
    }

    /// The next armed receive error, if any (no lock when none is armed).
    fn take_recv_error(&self) -> Option<io::ErrorKind> {
        if !self.recv_error_armed() {
            return None;
        }
        let mut armed = lock(&self.inner.armed);
        let kind = armed.recv_errors.pop_front();
        if armed.recv_errors.is_empty() {
            self.inner.recv_armed.store(false, Ordering::SeqCst);
        }
        kind
    }
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults").field("open_sockets", &self.open_sockets()).finish_non_exhaustive()
    }
}

/// A backend with the fault hooks in front of it.
pub(crate) struct FaultBackend {
    inner: Box<dyn Backend>,
    faults: Faults,
}

impl FaultBackend {
    pub(crate) fn new(inner: Box<dyn Backend>, faults: Faults) -> Self {
        FaultBackend { inner, faults }
    }

    /// [`Backend::connect`] with the armed connect faults, giving the transport without its fault
    /// wrapper ([`Faults::wrap_tcp`] adds it once the connection is there). With nothing armed,
    /// the backend's own future is handed on as it is: no box of ours around it per connection.
    pub(crate) fn connect(
        &self,
        remote: SocketAddr,
        local: Option<SocketAddr>,
        config: SocketConfig,
    ) -> BoxFuture<'static, Result<Box<dyn TcpTransport>, Cause>> {
        let ticket = self.faults.hold_ticket();
        let (hang, fail) = self.faults.take_connect_faults();
        if ticket.is_none() && !hang && fail.is_none() {
            return self.inner.connect(remote, local, config);
        }
        let connect = (!hang && fail.is_none()).then(|| self.inner.connect(remote, local, config));
        Box::pin(async move {
            if let Some(ticket) = ticket {
                std::future::poll_fn(|cx| ticket.poll_released(cx)).await;
            }
            if let Some(cause) = fail {
                return Err(cause);
            }
            let Some(connect) = connect else {
                return std::future::pending().await; // hang_connect: only the connect timeout ends it.
            };
            connect.await
        })
    }

    /// [`Backend::bind_udp`] behind the fault hooks, by its own type: the UDP glue keeps it
    /// unboxed, so each send and receive makes one dynamic call (the backend's), not two.
    pub(crate) fn bind_udp(&self, bind: UdpBind) -> Result<FaultUdp, Cause> {
        if let Some(cause) = lock(&self.faults.inner.armed).fail_bind.take() {
            return Err(cause);
        }
        let inner = self.inner.bind_udp(bind)?;
        Ok(FaultUdp { link: self.faults.new_link(), inner, faults: self.faults.clone() })
    }

    pub(crate) fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    pub(crate) fn probe_local(&self, ip: IpAddr) -> Result<(), Cause> {
        self.inner.probe_local(ip)
    }

    pub(crate) fn route(&self, remote: IpAddr) -> Option<IpAddr> {
        if lock(&self.faults.inner.armed).no_route.contains(&remote) {
            return None;
        }
        self.inner.route(remote)
    }

    pub(crate) fn resolve(&self, name: &HostName) -> BoxFuture<'static, Result<Vec<IpAddr>, Cause>> {
        let key = name.as_str().to_ascii_lowercase();
        let ticket = self.faults.hold_ticket();
        let (scripted, faults) = {
            let mut armed = lock(&self.faults.inner.armed);
            armed.lookups.push(key.clone());
            (armed.resolves.get(&key).cloned(), self.faults.clone())
        };
        let real = match scripted {
            Some(_) => None,
            None => Some(self.inner.resolve(name)),
        };
        Box::pin(async move {
            if let Some(ticket) = ticket {
                std::future::poll_fn(|cx| ticket.poll_released(cx)).await;
            }
            // hold_resolve: wait until the name is released (the connect timeout bounds it).
            std::future::poll_fn(|cx| {
                if !lock(&faults.inner.armed).held_names.contains(&key) {
                    return Poll::Ready(());
                }
                faults.inner.hold.register(cx.waker());
                if lock(&faults.inner.armed).held_names.contains(&key) {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            match (scripted, real) {
                (Some(result), _) => result,
                (None, Some(fut)) => fut.await,
                (None, None) => Err(Cause::HostNotFound),
            }
        })
    }

    pub(crate) fn listen(
        &self,
        local: SocketAddr,
        address_reuse: bool,
        backlog: u32,
    ) -> Result<FaultListener, Cause> {
        if let Some(cause) = lock(&self.faults.inner.armed).fail_bind.take() {
            return Err(cause);
        }
        let inner = self.inner.listen(local, address_reuse, backlog)?;
        Ok(FaultListener { link: self.faults.new_link(), inner, faults: self.faults.clone() })
    }
}

/// A TCP transport behind the fault hooks. A socket holds it inline (no allocation of its own per
/// connection, issue #6); a TLS session wraps it boxed.
pub(crate) struct FaultTcp {
    link: Arc<Link>,
    /// `None` once reset.
    inner: Option<Box<dyn TcpTransport>>,
    faults: Faults,
}

impl FaultTcp {
    fn new(inner: Box<dyn TcpTransport>, faults: Faults) -> Self {
        FaultTcp { link: faults.new_link(), inner: Some(inner), faults }
    }

    fn inner(&mut self) -> io::Result<&mut Box<dyn TcpTransport>> {
        self.inner.as_mut().ok_or_else(reset_error)
    }

    /// [`TcpTransport::reset`] of a transport held inline.
    pub(crate) fn reset_inline(mut self) {
        if let Some(inner) = self.inner.take() {
            inner.reset();
        }
    }
}

/// Takes one of the faults `counter` holds, if any (no lock).
fn take_one(counter: &AtomicU64) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

/// The error of an operation on a transport that was reset.
fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "reset")
}

impl Drop for FaultTcp {
    fn drop(&mut self) {
        self.faults.release_link(&self.link);
    }
}

impl TcpTransport for FaultTcp {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let inner = self.inner.as_mut().ok_or_else(reset_error)?;
        self.link.guard(cx, |cx| inner.poll_read(cx, buf))
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.link.check()?;
        if self.faults.take_send_failure() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "send failed (fault)")));
        }
        let inner = self.inner.as_mut().ok_or_else(reset_error)?;
        self.link.guard(cx, |cx| inner.poll_write(cx, data))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let inner = self.inner.as_mut().ok_or_else(reset_error)?;
        self.link.guard(cx, |cx| inner.poll_shutdown(cx))
    }

    fn reset(self: Box<Self>) {
        (*self).reset_inline();
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.as_ref().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?.local_addr()
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.as_ref().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?.peer_addr()
    }

    fn set_keep_alive(&mut self, keep_alive: Option<KeepAlive>) -> io::Result<()> {
        self.inner()?.set_keep_alive(keep_alive)
    }

    fn diag(&self) -> TcpDiag {
        self.inner.as_ref().map(|t| t.diag()).unwrap_or_default()
    }
}

/// A listener behind the fault hooks.
pub(crate) struct FaultListener {
    link: Arc<Link>,
    inner: Box<dyn ListenerTransport>,
    faults: Faults,
}

impl Drop for FaultListener {
    fn drop(&mut self) {
        self.faults.release_link(&self.link);
    }
}

impl FaultListener {
    /// As [`ListenerTransport::poll_accept`], the connection behind the fault hooks (unboxed).
    pub(crate) fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<FaultTcp>> {
        self.link.check()?;
        if self.faults.take_accept_exhaustion() {
            return Poll::Ready(Err(io::Error::from_raw_os_error(24))); // EMFILE
        }
        let (inner, faults) = (&mut self.inner, &self.faults);
        self.link.guard(cx, |cx| inner.poll_accept(cx).map_ok(|t| FaultTcp::new(t, faults.clone())))
    }

    /// As [`ListenerTransport::poll_error`].
    pub(crate) fn poll_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let inner = &mut self.inner;
        match self.link.guard(cx, |cx| inner.poll_error(cx).map(Err::<(), _>)) {
            Poll::Ready(Err(e)) => Poll::Ready(e),
            _ => Poll::Pending,
        }
    }

    /// As [`ListenerTransport::local_addr`].
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A UDP transport behind the fault hooks.
pub(crate) struct FaultUdp {
    link: Arc<Link>,
    inner: Box<dyn UdpTransport>,
    faults: Faults,
}

impl Drop for FaultUdp {
    fn drop(&mut self) {
        self.faults.release_link(&self.link);
    }
}

impl FaultUdp {
    /// A dropped link or an armed receive error fails the receive (either form of it).
    fn recv_gate(&self) -> io::Result<()> {
        self.link.check()?;
        match self.faults.take_recv_error() {
            Some(kind) => Err(io::Error::new(kind, "receive error (fault)")),
            None => Ok(()),
        }
    }

    /// A datagram whose transport already waits for the next one (`registered`): the link notes
    /// the waiter too, as for a pending receive (so `drop_link` wakes it), and an armed receive
    /// error, or a link dropped meanwhile, asks for the poll that reports it.
    fn recv_registered(&self, cx: &mut Context<'_>, meta: RecvMeta) -> RecvMeta {
        if !meta.registered {
            return meta;
        }
        let registered = !self.faults.recv_error_armed() && self.link.pending::<()>(cx).is_pending();
        RecvMeta { registered, ..meta }
    }

    /// A dropped link or an armed send failure fails the send (either form of it).
    fn send_gate(&self) -> io::Result<()> {
        self.link.check()?;
        if self.faults.take_send_failure() {
            return Err(io::Error::other("send failed (fault)"));
        }
        Ok(())
    }
}

impl UdpTransport for FaultUdp {
    fn poll_recv_from(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<RecvMeta>> {
        self.recv_gate()?;
        let inner = &mut self.inner;
        let polled = self.link.guard(cx, |cx| inner.poll_recv_from(cx, buf));
        polled.map_ok(|meta| self.recv_registered(cx, meta))
    }

    fn poll_recv_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(bytes::Bytes, RecvMeta)>> {
        self.recv_gate()?;
        let inner = &mut self.inner;
        let mut polled = self.link.guard(cx, |cx| inner.poll_recv_bytes(cx));
        // In place: the payload and its metadata are not moved once more per datagram.
        if let Poll::Ready(Ok((_, meta))) = &mut polled {
            if meta.registered {
                *meta = self.recv_registered(cx, *meta);
            }
        }
        polled
    }

    fn poll_send_to(&mut self, cx: &mut Context<'_>, data: &[u8], dest: SocketAddr) -> Poll<io::Result<()>> {
        self.send_gate()?;
        let inner = &mut self.inner;
        self.link.guard(cx, |cx| inner.poll_send_to(cx, data, dest))
    }

    fn poll_send_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &bytes::Bytes,
        dest: SocketAddr,
    ) -> Poll<io::Result<()>> {
        self.send_gate()?;
        let inner = &mut self.inner;
        self.link.guard(cx, |cx| inner.poll_send_bytes(cx, data, dest))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn join_multicast(&mut self, group: IpAddr) -> io::Result<()> {
        if std::mem::take(&mut lock(&self.faults.inner.armed).fail_membership) {
            return Err(io::Error::new(io::ErrorKind::AddrNotAvailable, "membership refused (fault)"));
        }
        self.inner.join_multicast(group)
    }

    fn leave_multicast(&mut self, group: IpAddr) -> io::Result<()> {
        if std::mem::take(&mut lock(&self.faults.inner.armed).fail_membership) {
            return Err(io::Error::new(io::ErrorKind::AddrNotAvailable, "membership refused (fault)"));
        }
        self.inner.leave_multicast(group)
    }

    fn diag(&self) -> UdpDiag {
        self.inner.diag()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::Faults;

    /// A link's slot is freed with its transport and reused: a network that has opened and closed
    /// many connections keeps a registry as long as the most open at once (O(1) per new link),
    /// and `drop_link` reaches exactly the live ones.
    // rule: GEN-14
    #[test]
    fn link_slots_are_reused_and_drop_link_reaches_the_live_ones() {
        let faults = Faults::default();
        for _ in 0..1_000 {
            let link = faults.new_link();
            faults.release_link(&link);
        }
        assert_eq!(faults.open_sockets(), 0);
        assert_eq!(faults.created_sockets(), 1_000);
        let live: Vec<_> = (0..3).map(|_| faults.new_link()).collect();
        let gone = faults.new_link();
        faults.release_link(&gone);
        assert_eq!(super::lock(&faults.inner.armed).links.len(), 4, "slots reused, not appended");
        assert_eq!(faults.open_sockets(), 3);
        faults.drop_link();
        assert!(live.iter().all(|l| l.dropped.load(Ordering::SeqCst)));
        assert!(!gone.dropped.load(Ordering::SeqCst), "a released link is no longer reached");
    }

    /// A short connection allocates no link: a released one is reused once nothing holds it, as
    /// new (a dropped link's state does not carry over), and never while something still does.
    // rule: GEN-14
    #[test]
    fn a_released_link_is_reused_as_new_only_once_nothing_holds_it() {
        let faults = Faults::default();
        let link = faults.new_link();
        faults.drop_link();
        assert!(link.dropped.load(Ordering::SeqCst));
        let first = std::sync::Arc::as_ptr(&link);
        faults.release_link(&link);
        drop(link);
        let next = faults.new_link();
        assert_eq!(std::sync::Arc::as_ptr(&next), first, "reused");
        assert!(!next.dropped.load(Ordering::SeqCst), "made new");
        let held = next.clone();
        faults.release_link(&next);
        drop(next);
        let other = faults.new_link();
        assert_ne!(std::sync::Arc::as_ptr(&other), std::sync::Arc::as_ptr(&held), "still held: not reused");
        faults.drop_link();
        assert!(other.dropped.load(Ordering::SeqCst));
        assert!(!held.dropped.load(Ordering::SeqCst), "a released link is no longer reached");
        assert_eq!(faults.open_sockets(), 1);
    }
}

//! Pieces every socket kind shares: the lock helper, waker lists, settle-once promise futures and
//! the write-promise bookkeeping.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

pub(crate) use parking_lot::{Mutex, MutexGuard};
use tcpudp_core::{ReadyState, SocketError};

/// Locks `m`. The data behind our locks stays consistent between statements, so a lock has no
/// poisoning: a panicking task must not take every other handle of the socket down with it.
#[inline]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
}

/// Wakers of everyone waiting for one thing. Usually one task waits (the application awaiting
/// `opened`, say): that waker is kept inline, so the common case allocates nothing; a second
/// waiter moves them all into a `Vec`. The same size as a `Vec` (the enum uses its niche).
#[derive(Debug)]
pub(crate) enum WakerList {
    One(Option<Waker>),
    Many(Vec<Waker>),
}

impl Default for WakerList {
    fn default() -> Self {
        WakerList::One(None)
    }
}

impl WakerList {
    pub(crate) fn register(&mut self, waker: &Waker) {
        match self {
            WakerList::One(slot) => match slot {
                None => *slot = Some(waker.clone()),
                Some(w) if w.will_wake(waker) => {}
                Some(_) => {
                    let first = slot.take();
                    *self = WakerList::Many(first.into_iter().chain([waker.clone()]).collect());
                }
            },
            WakerList::Many(list) => {
                if !list.iter().any(|w| w.will_wake(waker)) {
                    list.push(waker.clone());
                }
            }
        }
    }

    pub(crate) fn wake_all(&mut self) {
        match self {
            WakerList::One(slot) => {
                if let Some(w) = slot.take() {
                    w.wake();
                }
            }
            WakerList::Many(list) => {
                for w in list.drain(..) {
                    w.wake();
                }
            }
        }
    }

    /// Takes out `waker`'s task (polling now, it needs no wake-up for what it is about to see).
    pub(crate) fn forget(&mut self, waker: &Waker) {
        match self {
            WakerList::One(slot) => {
                if slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *slot = None;
                }
            }
            WakerList::Many(list) => list.retain(|w| !w.will_wake(waker)),
        }
    }
}

/// Counts one step of a driver loop's budget; `false` once it is spent. Then the I/O may still be
/// ready with no waker registered (the last poll returned `Ready`), so the driver is woken to carry
/// on where this call stopped: without it a burst longer than the budget could stall.
pub(crate) fn take_step(budget: &mut usize, driver: Option<&Waker>) -> bool {
    if *budget == 0 {
        if let Some(w) = driver {
            w.wake_by_ref();
        }
        return false;
    }
    *budget -= 1;
    true
}

/// `fault.hold_open()`: whether a socket created while held may report its opening yet. Clears the
/// ticket once released.
pub(crate) fn hold_released(hold: &mut Option<crate::faults::HoldTicket>, cx: &mut Context<'_>) -> bool {
    match hold {
        Some(ticket) if ticket.poll_released(cx).is_pending() => false,
        _ => {
            *hold = None;
            true
        }
    }
}

/// One read's outcome as a fused stream item: an error is yielded once, then the stream ends, as
/// it does after done (INV-06).
pub(crate) fn stream_item<T>(
    ended: &mut bool,
    read: Poll<Result<Option<T>, SocketError>>,
) -> Poll<Option<Result<T, SocketError>>> {
    if *ended {
        return Poll::Ready(None);
    }
    match read {
        Poll::Ready(Ok(Some(item))) => Poll::Ready(Some(Ok(item))),
        Poll::Ready(Ok(None)) => {
            *ended = true;
            Poll::Ready(None)
        }
        Poll::Ready(Err(e)) => {
            *ended = true;
            Poll::Ready(Some(Err(e)))
        }
        Poll::Pending => Poll::Pending,
    }
}

/// The time for one call's inputs, read when a transition first needs it and then kept in `at`:
/// one instant per call, and no clock read for the data path, whose inputs never need one
/// (`TcpMachine::handle_lazy`, `UdpMachine::handle_lazy`).
pub(crate) fn lazy_now<'a>(
    net: &'a crate::Network,
    at: &'a mut Option<tcpudp_core::Instant>,
) -> impl FnMut() -> tcpudp_core::Instant + 'a {
    move || *at.get_or_insert_with(|| net.now())
}

/// Which transport directions a socket's `process` call polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Polls {
    All,
    /// Not reading: a write need not look for received data. Skipping a read poll loses no
    /// wake-up (the last one left its waker registered), and the driver or a reader reads.
    Sends,
}

/// Which of a socket's two promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    Opened,
    Closed,
}

/// A socket whose `opened`/`closed` promises can be polled.
pub(crate) trait PromiseSource: Send + Sync + 'static {
    fn poll_promise(&self, which: Which, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>>;

    /// A future that polled pending is ready or gone: whatever its task was given for awaiting
    /// goes back (TCP: the driver's wake-ups, [`crate::drivers::DriverLink`]).
    fn release_waiter(&self) {}
}

/// The `opened` or `closed` promise of a socket: a shared future that any number of holders can
/// await, before or after it settles, all seeing the one outcome (GEN-05, INV-20). Holding it does
/// not keep the socket open (GEN-12).
#[must_use = "a promise does nothing unless awaited"]
pub struct SocketPromise {
    source: Arc<dyn PromiseSource>,
    which: Which,
    /// This future polled pending and has not been ready since: its task may hold what the
    /// source gives an awaiting task ([`PromiseSource::release_waiter`]).
    waiting: bool,
}

impl SocketPromise {
    pub(crate) fn new(source: Arc<dyn PromiseSource>, which: Which) -> Self {
        SocketPromise { source, which, waiting: false }
    }
}

impl Clone for SocketPromise {
    /// The same promise, not yet awaited.
    fn clone(&self) -> Self {
        SocketPromise::new(self.source.clone(), self.which)
    }
}

impl Future for SocketPromise {
    type Output = Result<(), SocketError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let polled = this.source.poll_promise(this.which, cx);
        if polled.is_pending() {
            this.waiting = true;
        } else if std::mem::take(&mut this.waiting) {
            this.source.release_waiter();
        }
        polled
    }
}

impl Drop for SocketPromise {
    fn drop(&mut self) {
        if self.waiting {
            self.source.release_waiter();
        }
    }
}

impl std::fmt::Debug for SocketPromise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketPromise").field("which", &self.which).finish_non_exhaustive()
    }
}

/// Where the application side of `opened`/`closed` waits.
#[derive(Debug, Default)]
pub(crate) struct PromiseWaiters {
    pub(crate) opened: WakerList,
    pub(crate) closed: WakerList,
}

impl PromiseWaiters {
    /// Takes `waker`'s task out of promise `which`'s waiters: it is polling that promise now and
    /// sees its outcome (it registers again if it still waits).
    pub(crate) fn forget(&mut self, which: Which, waker: &Waker) {
        match which {
            Which::Opened => self.opened.forget(waker),
            Which::Closed => self.closed.forget(waker),
        }
    }

    /// Polls one promise given the machine's outcome.
    pub(crate) fn poll(
        &mut self,
        which: Which,
        outcome: Option<&Result<(), SocketError>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SocketError>> {
        match outcome {
            Some(result) => Poll::Ready(result.clone()),
            None => {
                match which {
                    Which::Opened => self.opened.register(cx.waker()),
                    Which::Closed => self.closed.register(cx.waker()),
                }
                Poll::Pending
            }
        }
    }
}

/// Write promises: writes settle in order (INV-11), so one counter says which are settled; the
/// errors of rejected writes wait here until their future reads (or drops) them.
#[derive(Debug, Default)]
pub(crate) struct WriteBook {
    next_id: u64,
    settled_upto: u64,
    /// Pending write futures (id, waker): a short list, kept as a `Vec` so the data path does not
    /// allocate a tree node per awaited write.
    waiters: Vec<(u64, Waker)>,
    pub(crate) ready: WakerList,
    flush: WakerList,
    /// Made by the first rejected write: a socket whose writes all succeed keeps 8 bytes for it,
    /// not 48 (the TCP socket's shared state stays in the allocator's fast size classes).
    failures: Option<Box<WriteFailures>>,
}

/// The errors of rejected writes.
#[derive(Debug, Default)]
struct WriteFailures {
    /// Per write id, until its future reads (or drops) it.
    errors: BTreeMap<u64, SocketError>,
    /// The last one, for flushes.
    last: Option<SocketError>,
}

impl WriteBook {
    /// A fresh, strictly increasing write id (ids start at 1).
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The id of the last write issued (0 when none).
    pub(crate) fn last_id(&self) -> u64 {
        self.next_id
    }

    pub(crate) fn settle(&mut self, id: u64, result: Result<(), SocketError>) {
        self.settled_upto = self.settled_upto.max(id);
        if let Err(e) = result {
            let failures = self.failures.get_or_insert_with(Box::default);
            failures.last = Some(e.clone());
            failures.errors.insert(id, e);
        }
        self.flush.wake_all();
        // Wakers of every settled write, in id order (the list is short; usually one, and none
        // when a write settles while it is being issued).
        if !self.waiters.is_empty() {
            self.waiters.sort_unstable_by_key(|(waiting, _)| *waiting);
            let settled = self.waiters.partition_point(|(waiting, _)| *waiting <= id);
            for (_, w) in self.waiters.drain(..settled) {
                w.wake();
            }
        }
        if self.waiters.is_empty() && self.waiters.capacity() > 4 {
            self.waiters = Vec::new(); // a burst of waiters gives its room back
        }
    }

    /// The outcome of write `id` when it has settled (taken: no future reads it later), else
    /// `None`.
    pub(crate) fn take_settled(&mut self, id: u64) -> Option<Result<(), SocketError>> {
        (id <= self.settled_upto).then(|| match self.failures.as_mut().and_then(|f| f.errors.remove(&id)) {
            Some(e) => Err(e),
            None => Ok(()),
        })
    }

    pub(crate) fn poll(&mut self, id: u64, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        if let Some(outcome) = self.take_settled(id) {
            self.remove_waiter(id);
            return Poll::Ready(outcome);
        }
        match self.waiters.iter_mut().find(|(waiting, _)| *waiting == id) {
            Some((_, w)) => {
                if !w.will_wake(cx.waker()) {
                    *w = cx.waker().clone();
                }
            }
            None => self.waiters.push((id, cx.waker().clone())),
        }
        Poll::Pending
    }

    /// A write future went away: forget what it would have read.
    pub(crate) fn forget(&mut self, id: u64) {
        if let Some(failures) = &mut self.failures {
            failures.errors.remove(&id);
        }
        self.remove_waiter(id);
    }

    fn remove_waiter(&mut self, id: u64) {
        if let Some(i) = self.waiters.iter().position(|(waiting, _)| *waiting == id) {
            self.waiters.swap_remove(i);
        }
    }

    /// Whether every write issued so far has settled; the last error among them, if any.
    pub(crate) fn poll_flushed(&mut self, upto: u64, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        if upto <= self.settled_upto {
            return Poll::Ready(match self.failures.as_ref().and_then(|f| f.last.as_ref()) {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            });
        }
        self.flush.register(cx.waker());
        Poll::Pending
    }
}

/// A bounded log of readyState changes for `diag()`, inline (no allocation per socket): one byte
/// per state, the unused slots `None` (no length field: the TCP socket's shared state stays
/// within the allocator's fast size classes, see its size test).
#[derive(Debug, Clone)]
pub(crate) struct StateLog {
    states: [Option<ReadyState>; ReadyState::ALL.len()],
}

impl StateLog {
    pub(crate) fn new(first: ReadyState) -> Self {
        let mut states = [None; ReadyState::ALL.len()];
        states[0] = Some(first);
        StateLog { states }
    }

    pub(crate) fn push(&mut self, state: ReadyState) {
        // Every change raises the rank, so no socket has more states than exist; a log that is
        // somehow full keeps its last entry current rather than growing.
        let last = self.states.len() - 1;
        let at = self.states.iter().position(Option::is_none).unwrap_or(last);
        self.states[at] = Some(state);
    }

    pub(crate) fn to_vec(&self) -> Vec<ReadyState> {
        self.states.iter().flatten().copied().collect()
    }
}

/// Shared allocations of gone objects (a finished socket's driver waker, a gone transport's fault
/// link), kept for new ones so that a short connection allocates none. One is handed out again
/// only once nothing else holds it (`Arc::get_mut`): a clone still held elsewhere can then never
/// reach the new owner. At most `MAX` are kept.
pub(crate) struct Spares<T, const MAX: usize> {
    kept: Vec<Arc<T>>,
}

impl<T, const MAX: usize> Default for Spares<T, MAX> {
    fn default() -> Self {
        Spares { kept: Vec::new() }
    }
}

impl<T, const MAX: usize> Spares<T, MAX> {
    /// Keeps `spare` for later (dropped when `MAX` are kept).
    pub(crate) fn keep(&mut self, spare: Arc<T>) {
        if self.kept.len() < MAX {
            self.kept.push(spare);
        }
    }

    /// A kept allocation nothing else holds, made over by `make_over` for its new owner.
    pub(crate) fn take(&mut self, make_over: impl FnOnce(&mut T)) -> Option<Arc<T>> {
        let at = self.kept.iter_mut().position(|spare| Arc::get_mut(spare).is_some())?;
        let mut spare = self.kept.swap_remove(at);
        make_over(Arc::get_mut(&mut spare)?);
        Some(spare)
    }

    /// The first one kept (tests look at it).
    #[cfg(test)]
    pub(crate) fn first(&self) -> Option<&Arc<T>> {
        self.kept.first()
    }
}

/// A socket whose write promises can be polled (TCP and UDP share the futures below).
pub(crate) trait WriteSource: Send + Sync + 'static {
    fn poll_write(&self, id: u64, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>>;
    fn forget_write(&self, id: u64);
    fn poll_flushed(&self, upto: u64, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>>;
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>>;
}

/// A write's promise. The write happens whether or not this is awaited (GEN-10).
#[must_use = "the write happens anyway; await this to learn its outcome"]
pub struct WriteFuture {
    /// Where the outcome is read while it is unknown; `None` once the future has it.
    source: Option<Arc<dyn WriteSource>>,
    id: u64,
    /// The outcome of a write that settled while it was issued (the usual case when the socket
    /// has room): the future owns it, and polling it touches no shared state.
    settled: Option<Result<(), SocketError>>,
}

impl WriteFuture {
    pub(crate) fn new(source: Arc<dyn WriteSource>, id: u64) -> Self {
        WriteFuture { source: Some(source), id, settled: None }
    }

    /// The promise of write `id`, just issued to `source`: settled already when `writes` has its
    /// outcome (the write went out, or was refused, while it was issued).
    pub(crate) fn issued<S: WriteSource>(writes: &mut WriteBook, id: u64, source: &Arc<S>) -> Self {
        match writes.take_settled(id) {
            Some(outcome) => WriteFuture::settled(id, outcome),
            None => WriteFuture::new(source.clone(), id),
        }
    }

    fn settled(id: u64, outcome: Result<(), SocketError>) -> Self {
        WriteFuture { source: None, id, settled: Some(outcome) }
    }
}

impl Future for WriteFuture {
    type Output = Result<(), SocketError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(outcome) = self.settled.take() {
            return Poll::Ready(outcome);
        }
        // Polled again after it was ready: the outcome was handed out already.
        let Some(source) = &self.source else { return Poll::Ready(Ok(())) };
        let result = source.poll_write(self.id, cx);
        if result.is_ready() {
            self.source = None;
        }
        result
    }
}

impl Drop for WriteFuture {
    fn drop(&mut self) {
        if let Some(source) = &self.source {
            source.forget_write(self.id);
        }
    }
}

impl std::fmt::Debug for WriteFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteFuture").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Resolves when the writable has room (desired size above zero).
#[must_use = "futures do nothing unless awaited"]
pub struct ReadyFuture {
    source: Arc<dyn WriteSource>,
}

impl ReadyFuture {
    pub(crate) fn new(source: Arc<dyn WriteSource>) -> Self {
        ReadyFuture { source }
    }
}

impl Future for ReadyFuture {
    type Output = Result<(), SocketError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.source.poll_ready(cx)
    }
}

/// Resolves when every write up to a point has settled, with the last failure if any.
#[must_use = "futures do nothing unless awaited"]
pub struct FlushFuture {
    source: Arc<dyn WriteSource>,
    upto: u64,
}

impl FlushFuture {
    pub(crate) fn new(source: Arc<dyn WriteSource>, upto: u64) -> Self {
        FlushFuture { source, upto }
    }
}

impl Future for FlushFuture {
    type Output = Result<(), SocketError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.source.poll_flushed(self.upto, cx)
    }
}

/// A task that takes a socket's wake-ups while it waits, in place of the socket's driver (a
/// waiting reader, [`ReadRoute`]; a task awaiting `opened` or `closed`,
/// [`crate::drivers::DriverLink`]), and whether it was handed one it has not acted on yet: that
/// one goes to the driver if the task stops waiting first, so no wake-up is lost.
#[derive(Debug, Default)]
pub(crate) struct Handover {
    waiter: Option<Waker>,
    handed: bool,
}

impl Handover {
    /// `waker`'s task waits: the wake-ups go to it.
    pub(crate) fn wait(&mut self, waker: &Waker) {
        if !self.waiter.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waiter = Some(waker.clone());
        }
    }

    /// A wake-up came: the waiting task to wake, now handed it (it waits no more), or `None` when
    /// no task waits (the driver's turn).
    pub(crate) fn take_for_wake(&mut self) -> Option<Waker> {
        let waiter = self.waiter.take();
        self.handed |= waiter.is_some();
        waiter
    }

    /// Whether a wake-up was handed over and not acted on since; the caller acts on it now.
    pub(crate) fn take_handed(&mut self) -> bool {
        std::mem::take(&mut self.handed)
    }

    /// The task stops waiting (it polls, or goes): whether it leaves a handed wake-up not acted
    /// on, for the driver.
    pub(crate) fn release(&mut self) -> bool {
        self.waiter = None;
        self.take_handed()
    }
}

/// Routes a transport's read wake-ups straight to the application's reader while one waits in a
/// read, and to the socket's driver otherwise.
///
/// Without it every received message costs two task polls: the driver, woken by the transport,
/// moves the data into the machine and wakes the reader. A waiting reader runs the same
/// `process()` itself, so it can be woken directly (ping-pong traffic halves its task polls).
/// The transport's read direction is always polled with this one waker, from the reader and the
/// driver alike, so there is still exactly one registered poller per direction (DESIGN §5).
///
/// A wake-up handed to a reader that does not poll again is not lost: a readable that goes away
/// passes it to the driver ([`ReadRoute::release`]), so does a pending `opened`/`closed` promise
/// ([`ReadRoute::pass_on`]), and any later readiness of the transport goes to the driver anyway
/// (the reader's slot empties when it is woken). Application calls re-poll the transport too.
#[derive(Debug, Default)]
pub(crate) struct ReadRoute {
    slot: Mutex<RouteSlot>,
    /// The transport's read side last answered "pending" to a poll with this route's waker, and
    /// the route has not been woken since: polling it again would find nothing ([`ReadRoute::armed`]).
    registered: AtomicBool,
}

#[derive(Debug, Default)]
struct RouteSlot {
    reader: Handover,
    driver: Option<Waker>,
}

impl ReadRoute {
    /// A route falling back to `driver` (one allocation, made when a reader first waits; its
    /// waker is `Waker::from(route)`, no allocation).
    pub(crate) fn new(driver: &Waker) -> Arc<ReadRoute> {
        Arc::new(ReadRoute {
            slot: Mutex::new(RouteSlot { driver: Some(driver.clone()), ..RouteSlot::default() }),
            registered: AtomicBool::new(false),
        })
    }

    /// Runs `poll`, a poll of the transport's read side with `route`'s waker (when there is a
    /// route), and keeps [`ReadRoute::armed`] true exactly when it leaves the read side registered.
    /// The flag is set before the poll, so a wake-up racing with it clears the flag after, never
    /// before.
    pub(crate) fn poll_armed<T>(route: Option<&ReadRoute>, poll: impl FnOnce() -> Poll<T>) -> Poll<T> {
        Self::poll_armed_unless(route, poll, |_| false)
    }

    /// As [`ReadRoute::poll_armed`], for a transport whose ready answer may say it left the route's
    /// waker registered all the same (`still_registered`, a UDP receive's `RecvMeta::registered`):
    /// such an answer keeps the flag. Only a disarm is skipped, never a re-arm, so a wake-up
    /// racing with the poll still clears it.
    pub(crate) fn poll_armed_unless<T>(
        route: Option<&ReadRoute>,
        poll: impl FnOnce() -> Poll<T>,
        still_registered: impl FnOnce(&T) -> bool,
    ) -> Poll<T> {
        if let Some(route) = route {
            route.registered.store(true, Ordering::SeqCst);
        }
        let polled = poll();
        if let (Poll::Ready(answer), Some(route)) = (&polled, route) {
            if !still_registered(answer) {
                route.disarm();
            }
        }
        polled
    }

    /// The read side was not left registered (the poll was ready), or must be polled again (the
    /// transport changed).
    pub(crate) fn disarm(&self) {
        self.registered.store(false, Ordering::SeqCst);
    }

    /// Whether the read side waits registered with this route and nothing woke it since: a read
    /// that finds its queue empty need not poll it (the transport's wake-up brings it back).
    pub(crate) fn armed(&self) -> bool {
        self.registered.load(Ordering::SeqCst)
    }

    /// The driver's waker changed (or the driver finished: `None`).
    pub(crate) fn set_driver(&self, driver: Option<&Waker>) {
        lock(&self.slot).driver = driver.cloned();
    }

    /// The reader is polling: wake-ups go to the driver until it waits again.
    pub(crate) fn reader_polling(&self) {
        let mut slot = lock(&self.slot);
        slot.reader.release();
    }

    /// The reader waits with `waker`.
    pub(crate) fn reader_waits(&self, waker: &Waker) {
        let mut slot = lock(&self.slot);
        slot.reader.wait(waker);
    }

    /// The reader went away: later wake-ups go to the driver, and one the reader was handed but
    /// never acted on is passed on to it.
    pub(crate) fn release(&self) {
        let driver = {
            let mut slot = lock(&self.slot);
            slot.reader.release().then(|| slot.driver.clone()).flatten()
        };
        if let Some(w) = driver {
            w.wake();
        }
    }

    /// Someone waits for what a wake-up the reader was handed may carry (a FIN, say, for
    /// `closed`) while the reader has not polled since: the driver acts on it instead.
    pub(crate) fn pass_on(&self) {
        let driver = {
            let mut slot = lock(&self.slot);
            slot.reader.take_handed().then(|| slot.driver.clone()).flatten()
        };
        if let Some(w) = driver {
            w.wake();
        }
    }
}

/// A socket's end of its [`ReadRoute`], kept under the socket's lock: the route (made when a
/// reader first waits), its waker, and whether the reader's waker is in it.
#[derive(Debug, Default)]
pub(crate) struct SocketRoute {
    route: Option<Arc<ReadRoute>>,
    /// `Waker::from(route)`, made once with it.
    waker: Option<Waker>,
    /// The reader's waker is in the route (set by `reader_waits`, cleared by `reader_polling`):
    /// a read that follows a ready one need not lock the route to clear it.
    reader_in: bool,
}

impl SocketRoute {
    /// The route, once a reader has waited.
    pub(crate) fn get(&self) -> Option<&ReadRoute> {
        self.route.as_deref()
    }

    /// The reader is polling (locks the route only when the reader waited there).
    pub(crate) fn reader_polling(&mut self) {
        if let Some(route) = self.route.as_ref().filter(|_| self.reader_in) {
            route.reader_polling();
            self.reader_in = false;
        }
    }

    /// The reader waits with `waker`. The first wait makes the route, falling back to `driver`
    /// (none without a driver or once the socket released its transport). Later wake-ups come
    /// straight to the reader once the transport is polled with the route's waker.
    pub(crate) fn reader_waits(&mut self, waker: &Waker, driver: Option<&Waker>, released: bool) {
        if self.route.is_none() && !released {
            if let Some(driver) = driver {
                let route = ReadRoute::new(driver);
                self.waker = Some(Waker::from(route.clone()));
                self.route = Some(route);
            }
        }
        if let Some(route) = &self.route {
            route.reader_waits(waker);
            self.reader_in = true;
        }
    }

    /// The route's waker, lent to a pass's steps (put back with [`SocketRoute::put_waker`]).
    pub(crate) fn take_waker(&mut self) -> Option<Waker> {
        self.waker.take()
    }

    /// Puts back what [`SocketRoute::take_waker`] lent.
    pub(crate) fn put_waker(&mut self, waker: Option<Waker>) {
        self.waker = waker;
    }

    /// The transport no longer holds the route's registration (it changed, or the reader's
    /// interest did): the next read polls it again.
    pub(crate) fn disarm(&self) {
        if let Some(route) = &self.route {
            route.disarm();
        }
    }

    /// The driver's waker changed.
    pub(crate) fn driver_changed(&self, driver: &Waker) {
        if let Some(route) = &self.route {
            route.set_driver(Some(driver));
        }
    }

    /// The driver finished: the route (and the cycle through its driver waker) goes.
    pub(crate) fn finish(&mut self) {
        self.waker = None;
        if let Some(route) = self.route.take() {
            route.set_driver(None);
        }
    }
}

impl std::task::Wake for ReadRoute {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.disarm();
        let target = {
            let mut slot = lock(&self.slot);
            slot.reader.take_for_wake().or_else(|| slot.driver.clone())
        };
        if let Some(w) = target {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::WakerList;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn every_distinct_waiter_is_woken_once() {
        let (a, wa) = counter();
        let (b, wb) = counter();
        let (c, wc) = counter();
        let mut list = WakerList::default();
        list.register(&wa);
        list.register(&wa); // the same task again: kept once
        list.wake_all();
        assert_eq!(a.0.load(Ordering::Relaxed), 1);
        list.wake_all(); // nothing left
        assert_eq!(a.0.load(Ordering::Relaxed), 1);
        for w in [&wa, &wb, &wb, &wc] {
            list.register(w);
        }
        list.wake_all();
        let counts: Vec<usize> = [&a, &b, &c].iter().map(|n| n.0.load(Ordering::Relaxed)).collect();
        assert_eq!(counts, [2, 1, 1]);
    }

    // rule: GEN-10, INV-11
    #[test]
    fn a_write_settled_while_issued_hands_its_outcome_to_its_promise_once() {
        use std::future::Future;
        use std::task::{Context, Poll};

        use tcpudp_core::SocketError;

        use super::{WriteBook, WriteFuture};

        let mut book = WriteBook::default();
        let (first, second) = (book.next_id(), book.next_id());
        assert_eq!(book.take_settled(first), None, "not settled yet");
        book.settle(first, Ok(()));
        book.settle(second, Err(SocketError::network(tcpudp_core::Cause::Reset)));
        assert_eq!(book.take_settled(first), Some(Ok(())));
        let refused = book.take_settled(second).expect("settled");
        assert!(refused.is_err());
        // Taken: the book keeps no error for a future to read later (the flush still reports it).
        assert_eq!(book.take_settled(second), Some(Ok(())));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(book.poll_flushed(second, &mut cx), Poll::Ready(Err(_))));

        let mut promise = std::pin::pin!(WriteFuture::settled(second, refused));
        assert!(matches!(promise.as_mut().poll(&mut cx), Poll::Ready(Err(_))));
    }

    #[test]
    fn a_waker_list_is_no_bigger_than_a_vec() {
        // Per-socket memory (≤ 2 KiB per idle socket, DESIGN §5) holds several of these.
        assert_eq!(std::mem::size_of::<WakerList>(), std::mem::size_of::<Vec<Waker>>());
    }
}

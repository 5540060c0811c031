//! A few tasks per network drive its TCP sockets: read DESIGN §5 (the driver) first.
//!
//! A socket's driver polls its transport when the application is not doing so and fires its
//! timers. Each used to be a tokio task of its own: per socket a task cell (allocated aligned, so
//! past the allocator's per-thread cache), its scheduling, and the runtime's task bookkeeping on
//! every wake-up, which a short connection paid twice (client and accepted end; issue #6,
//! tcp-connect). Here a network's sockets share one task per worker of the runtime (they take
//! the tasks in turn, so background work still spreads over the workers). A socket's driver
//! waker puts the socket in its task's run queue (once, however often it is woken) and wakes the
//! task, which drives the queued sockets in wake order, a bounded number per poll.
//!
//! Ownership is as before: the run queue's table holds each socket until its driver reports it
//! finished, as its task's future did, and a socket's waker refers to the table only weakly, so a
//! socket and its waker make no cycle. A task lives as long as its network: dropped by a runtime
//! that shuts down, it gives up every socket it held (as the runtime dropping each driver task
//! did), and it ends once the network is gone (no socket holds it then).
//!
//! Deterministic under simulation: sockets are driven in the order they were woken, and table
//! slots are reused last freed first; nothing depends on a hash or the clock.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::task::{Poll, Wake, Waker};

use crate::shared::{lock, Handover, Mutex, Spares};

/// Sockets driven per poll of the task before it lets other tasks run.
const BUDGET: usize = 32;

/// A socket the network's task drives.
pub(crate) trait Driven: Send + Sync + 'static {
    /// Polls the socket's driver with `waker` (the socket's own, the same on every call):
    /// `Ready` once the socket is finished and needs no more driving.
    fn drive(&self, waker: &Waker) -> Poll<()>;
}

/// The run queue of one network's sockets.
pub(crate) struct Drivers {
    state: Mutex<State>,
    /// Where the task runs (the network's runtime).
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    /// Empty slots, the last freed first.
    free: Vec<usize>,
    /// Slots to drive, in wake order; each at most once (`Slot::queued`).
    queue: VecDeque<usize>,
    /// The task's waker while it waits for a socket to be woken.
    task: Option<Waker>,
    /// The task is spawned and has not ended.
    running: bool,
    /// Counts the tasks spawned: a task that ends gives up the table only if no later task
    /// took it over meanwhile.
    epoch: u64,
    /// The network is gone: the task ends.
    closed: bool,
    /// Wakers of finished sockets, for new ones: a short connection then allocates no waker.
    /// One is reused only once no clone of it is left (the runtime's I/O driver may hold one
    /// until its next turn), so no wake of a finished socket reaches a new one through it.
    spare_wakers: Spares<SlotWaker, 8>,
}

#[derive(Default)]
struct Slot {
    socket: Option<(Arc<dyn Driven>, Waker)>,
    /// The allocation behind the socket's waker, which goes to `State::spare_wakers` with it.
    waker_alloc: Option<Arc<SlotWaker>>,
    /// Bumped when the slot is emptied: a waker of the slot's earlier socket finds it stale.
    generation: u64,
    queued: bool,
}

/// A socket's driver waker: its slot, and the generation of the slot it was made for.
#[derive(Debug)]
struct SlotWaker {
    drivers: Weak<Drivers>,
    slot: usize,
    generation: u64,
    /// Where the driver's wake-ups go instead while a task awaits one of the socket's promises
    /// ([`DriverLink`]).
    forward: Mutex<Handover>,
}

/// A socket's hold on its driver, for the application side: while a task awaits one of the
/// socket's promises as it comes due (`opened` while the connection is being made, `closed`
/// during the closing handshake), the driver's wake-ups (its transport's readiness, its
/// deadlines) go to that task, which does the driver's work itself when it polls the promise.
///
/// Why: a connection's opening and its closing each used to cost two task polls, the driver's
/// (woken by the transport) and then the awaiting task's (woken by the driver once the promise
/// settled); the awaiting task does the same pass itself (issue #6, tcp-connect; on the
/// multi-thread runtime the driver's task may run on another worker, and the hop cost most of
/// a connection's time). Nothing is lost when the task stops awaiting: a promise future that
/// registered lets go of the wake-ups when it is ready or dropped, and hands one it was given but
/// did not act on to the driver. A task that keeps such a future without polling it delays the
/// socket's pass until it polls again, as a reader does with the read route
/// ([`crate::shared::ReadRoute`]); the hand-over is limited to opening and closing for that.
#[derive(Clone, Debug)]
pub(crate) struct DriverLink(Arc<SlotWaker>);

impl DriverLink {
    /// `waker`'s task awaits a promise of the socket: the driver's wake-ups go to it.
    pub(crate) fn set_waiter(&self, waker: &Waker) {
        lock(&self.0.forward).wait(waker);
    }

    /// Whether a wake-up of the driver went to an awaiting task and nobody acted on it since (the
    /// caller does the driver's work now).
    pub(crate) fn take_handed(&self) -> bool {
        lock(&self.0.forward).take_handed()
    }

    /// The awaiting task is done awaiting (its promise settled, or its future went): the
    /// driver's wake-ups go to the driver again, and one handed over but not acted on is queued
    /// for it.
    pub(crate) fn release_waiter(&self) {
        let handed = lock(&self.0.forward).release();
        if handed {
            self.0.queue_drive();
        }
    }

    /// The socket finished in a pass the application side made: the table lets it go (as it
    /// does when the driver's pass finishes it). What it held is returned, to drop outside any
    /// lock.
    pub(crate) fn finish(&self) -> Option<(Arc<dyn Driven>, Waker)> {
        self.0.drivers.upgrade()?.finish(self.0.slot, self.0.generation)
    }
}

/// What the task does next after one look at the queue.
enum Next {
    Drive(Arc<dyn Driven>, Waker, usize, u64),
    Wait,
    End,
}

impl Drivers {
    pub(crate) fn new(runtime: tokio::runtime::Handle) -> Drivers {
        Drivers { state: Mutex::new(State::default()), runtime }
    }

    /// Takes `socket` into the table and queues its first drive (spawning the task when it does
    /// not run).
    #[cfg(test)]
    pub(crate) fn start(self: &Arc<Self>, socket: Arc<dyn Driven>) {
        self.register(socket).0.wake();
    }

    /// Takes `socket` into the table (spawning the task when it does not run) and gives its
    /// driver waker, without a drive queued: the caller makes the socket's first pass with that
    /// waker itself, and wakes it should the socket need a drive (issue #6: a drive queued only
    /// to register the new socket's wakers with its transport cost a task wake-up and a pass).
    /// Also gives the socket's [`DriverLink`].
    pub(crate) fn register(self: &Arc<Self>, socket: Arc<dyn Driven>) -> (Waker, DriverLink) {
        let (spawn, waker) = {
            let mut state = lock(&self.state);
            let slot = match state.free.pop() {
                Some(slot) => slot,
                None => {
                    state.slots.push(Slot::default());
                    state.slots.len() - 1
                }
            };
            let generation = state.slots[slot].generation;
            let made_over = |w: &mut SlotWaker| {
                (w.slot, w.generation) = (slot, generation);
                *w.forward.get_mut() = Handover::default();
            };
            let waker = state.spare_wakers.take(made_over).unwrap_or_else(|| {
                Arc::new(SlotWaker {
                    drivers: Arc::downgrade(self),
                    slot,
                    generation,
                    forward: Mutex::new(Handover::default()),
                })
            });
            let entry = &mut state.slots[slot];
            let socket_waker = Waker::from(waker.clone());
            entry.socket = Some((socket, socket_waker.clone()));
            entry.waker_alloc = Some(waker.clone());
            let spawn = !std::mem::replace(&mut state.running, true);
            if spawn {
                state.epoch += 1;
            }
            (spawn.then_some(state.epoch), (socket_waker, DriverLink(waker)))
        };
        if let Some(epoch) = spawn {
            drop(self.runtime.spawn(run(TaskGuard { drivers: self.clone(), epoch })));
        }
        waker
    }

    /// The network is gone: the task ends when it next looks.
    pub(crate) fn close(&self) {
        let task = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.task.take()
        };
        if let Some(task) = task {
            task.wake();
        }
    }

    /// Queues slot `slot`'s socket when the slot still holds the socket the waker was made for.
    fn wake_slot(&self, slot: usize, generation: u64) {
        let task = {
            let mut state = lock(&self.state);
            let Some(entry) = state.slots.get_mut(slot) else { return };
            if entry.generation != generation || entry.queued || entry.socket.is_none() {
                return;
            }
            state.enqueue(slot)
        };
        if let Some(task) = task {
            task.wake();
        }
    }

    /// The next socket to drive, or what the task does instead (`task` is registered to wait).
    fn next(&self, task: &Waker) -> Next {
        let mut state = lock(&self.state);
        while let Some(slot) = state.queue.pop_front() {
            let entry = &mut state.slots[slot];
            entry.queued = false;
            if let Some((socket, waker)) = &entry.socket {
                return Next::Drive(socket.clone(), waker.clone(), slot, entry.generation);
            }
        }
        if state.closed && state.slots.iter().all(|s| s.socket.is_none()) {
            state.running = false;
            return Next::End;
        }
        if !state.task.as_ref().is_some_and(|w| w.will_wake(task)) {
            state.task = Some(task.clone());
        }
        Next::Wait
    }

    /// Slot `slot`'s socket is finished: the table lets it go.
    fn finish(&self, slot: usize, generation: u64) -> Option<(Arc<dyn Driven>, Waker)> {
        let mut state = lock(&self.state);
        let entry = &mut state.slots[slot];
        if entry.generation != generation {
            return None;
        }
        entry.generation += 1;
        entry.queued = false;
        let socket = entry.socket.take();
        let waker = entry.waker_alloc.take();
        state.free.push(slot);
        if let Some(waker) = waker {
            state.spare_wakers.keep(waker);
        }
        socket
    }

    /// Task `epoch` is gone (its runtime shut down, or it ended): the table lets every socket
    /// go, unless a later task runs it.
    fn abandon(&self, epoch: u64) -> Vec<(Arc<dyn Driven>, Waker)> {
        let mut state = lock(&self.state);
        let state = &mut *state;
        if state.epoch != epoch {
            return Vec::new();
        }
        state.running = false;
        state.task = None;
        state.queue.clear();
        let mut sockets = Vec::new();
        for (i, entry) in state.slots.iter_mut().enumerate() {
            if let Some(socket) = entry.socket.take() {
                entry.generation += 1;
                entry.queued = false;
                sockets.push(socket);
                state.free.push(i);
            }
        }
        sockets
    }
}

impl State {
    /// Queues `slot` for a drive; the task's waker, if it waits, to wake outside the lock.
    fn enqueue(&mut self, slot: usize) -> Option<Waker> {
        self.slots[slot].queued = true;
        self.queue.push_back(slot);
        self.task.take()
    }
}

impl SlotWaker {
    /// Queues the socket for a drive by the network's task.
    fn queue_drive(&self) {
        if let Some(drivers) = self.drivers.upgrade() {
            drivers.wake_slot(self.slot, self.generation);
        }
    }
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waiter = lock(&self.forward).take_for_wake();
        match waiter {
            Some(waiter) => waiter.wake(),
            None => self.queue_drive(),
        }
    }
}

/// The task's hold on its run queue: dropped (the task ended, or its runtime dropped it), the
/// queue gives up the sockets it holds, outside its lock (dropping one may close a transport).
struct TaskGuard {
    drivers: Arc<Drivers>,
    epoch: u64,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        drop(self.drivers.abandon(self.epoch));
    }
}

/// The network's driver task.
async fn run(guard: TaskGuard) {
    let drivers = &guard.drivers;
    std::future::poll_fn(|cx| {
        for _ in 0..BUDGET {
            match drivers.next(cx.waker()) {
                Next::Drive(socket, waker, slot, generation) => {
                    // A driver that panics (a bug) ends for its socket alone, as its own task
                    // would have: the table lets it go and the task drives the others on.
                    let drive = std::panic::AssertUnwindSafe(|| socket.drive(&waker));
                    if std::panic::catch_unwind(drive).map_or(true, |p| p.is_ready()) {
                        drop(drivers.finish(slot, generation));
                    }
                }
                Next::Wait => return Poll::Pending,
                Next::End => return Poll::Ready(()),
            }
        }
        // Let other tasks run; the queue is still there at the next poll.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A socket that records its drives and finishes after `lifetime` of them.
    struct Probe {
        drives: AtomicUsize,
        lifetime: usize,
        waker: Mutex<Option<Waker>>,
    }

    impl Probe {
        fn new(lifetime: usize) -> Arc<Probe> {
            Arc::new(Probe { drives: AtomicUsize::new(0), lifetime, waker: Mutex::new(None) })
        }

        fn drives(&self) -> usize {
            self.drives.load(Ordering::SeqCst)
        }

        fn wake(&self) {
            lock(&self.waker).clone().expect("driven once").wake();
        }
    }

    impl Driven for Probe {
        fn drive(&self, waker: &Waker) -> Poll<()> {
            *lock(&self.waker) = Some(waker.clone());
            let n = self.drives.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= self.lifetime {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    fn drivers() -> Arc<Drivers> {
        Arc::new(Drivers::new(tokio::runtime::Handle::current()))
    }

    #[tokio::test]
    async fn a_woken_socket_is_driven_once_per_wake_burst_and_let_go_when_finished() {
        let drivers = drivers();
        let probe = Probe::new(3);
        drivers.start(probe.clone());
        settle().await;
        assert_eq!(probe.drives(), 1, "the first drive follows start");
        // Three wakes before the task runs queue the socket once.
        probe.wake();
        probe.wake();
        probe.wake();
        settle().await;
        assert_eq!(probe.drives(), 2);
        probe.wake();
        settle().await;
        assert_eq!(probe.drives(), 3, "finished at its third drive");
        assert_eq!(Arc::strong_count(&probe), 1, "the table let it go");
        // A waker of a finished socket wakes nothing, not even the slot's next socket.
        let next = Probe::new(10);
        drivers.start(next.clone());
        settle().await;
        assert_eq!(next.drives(), 1);
        probe.wake();
        settle().await;
        assert_eq!(next.drives(), 1, "a stale waker finds its slot reused");
        drivers.close();
        settle().await;
        assert_eq!(Arc::strong_count(&next), 2, "a live socket stays held after close");
    }

    /// A registered socket makes its first pass itself: the table drives it only once its waker
    /// wakes, and the waker it gave is the one every drive passes.
    #[tokio::test]
    async fn a_registered_socket_is_driven_only_once_woken() {
        let drivers = drivers();
        let probe = Probe::new(2);
        let (waker, _link) = drivers.register(probe.clone());
        settle().await;
        assert_eq!(probe.drives(), 0, "register queues no drive");
        waker.wake_by_ref();
        settle().await;
        assert_eq!(probe.drives(), 1);
        assert!(lock(&probe.waker).as_ref().is_some_and(|w| w.will_wake(&waker)));
        waker.wake();
        settle().await;
        assert_eq!(Arc::strong_count(&probe), 1, "finished at its second drive, and let go");
    }

    /// A short connection allocates no driver waker: a new socket takes a finished one's, unless
    /// a clone of it is still held somewhere (then a stale wake could reach the new socket
    /// through it, and a fresh one is made).
    #[tokio::test]
    async fn a_finished_sockets_waker_is_reused_only_once_no_clone_is_left() {
        let drivers = drivers();
        let alloc = |d: &Drivers, slot: usize| {
            lock(&d.state).slots[slot].waker_alloc.as_ref().map(|w| Arc::as_ptr(w) as usize)
        };
        let first = Probe::new(1);
        drivers.start(first.clone());
        settle().await;
        assert_eq!(first.drives(), 1);
        assert_eq!(alloc(&drivers, 0), None);
        let made = lock(&drivers.state).spare_wakers.first().map(|w| Arc::as_ptr(w) as usize);
        assert!(made.is_some(), "kept once its socket finished");
        *lock(&first.waker) = None;
        let second = Probe::new(1);
        drivers.start(second.clone());
        assert_eq!(alloc(&drivers, 0), made, "no clone left: reused");
        settle().await;
        assert_eq!(second.drives(), 1);
        // `second` keeps its waker: the third socket must not share it.
        let third = Probe::new(10);
        drivers.start(third.clone());
        assert!(alloc(&drivers, 0).is_some());
        assert_ne!(alloc(&drivers, 0), made, "a clone is held: a fresh waker");
        settle().await;
        assert_eq!(third.drives(), 1);
        second.wake();
        settle().await;
        assert_eq!(third.drives(), 1, "the old waker stays stale");
        third.wake();
        settle().await;
        assert_eq!(third.drives(), 2);
    }

    #[test]
    fn a_runtime_that_shuts_down_lets_every_socket_go() {
        let probe = Probe::new(usize::MAX);
        {
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            rt.block_on(async {
                let drivers = drivers();
                drivers.start(probe.clone());
                settle().await;
            });
            assert_eq!(probe.drives(), 1);
            assert!(Arc::strong_count(&probe) > 1, "held while its task lives");
        }
        assert_eq!(Arc::strong_count(&probe), 1, "the dropped task let it go");
        probe.wake(); // the queue is gone: nothing happens
    }

    /// A socket whose driver panics at its first drive.
    struct Panics;

    impl Driven for Panics {
        fn drive(&self, _: &Waker) -> Poll<()> {
            panic!("a driver bug (expected by this test)");
        }
    }

    #[tokio::test]
    async fn a_driver_that_panics_ends_for_its_socket_alone() {
        let drivers = drivers();
        let bad = Arc::new(Panics);
        let good = Probe::new(usize::MAX);
        drivers.start(bad.clone());
        drivers.start(good.clone());
        settle().await;
        assert_eq!(Arc::strong_count(&bad), 1, "let go");
        assert_eq!(good.drives(), 1, "driven after the panic");
        good.wake();
        settle().await;
        assert_eq!(good.drives(), 2, "the task lives on");
    }

    #[tokio::test]
    async fn the_task_ends_once_closed_and_empty_and_a_later_start_spawns_it_again() {
        let drivers = drivers();
        let first = Probe::new(1);
        drivers.start(first.clone());
        settle().await;
        drivers.close();
        settle().await;
        assert!(!lock(&drivers.state).running, "ended");
        let second = Probe::new(2);
        drivers.start(second.clone());
        settle().await;
        assert_eq!(second.drives(), 1);
        assert!(lock(&drivers.state).running);
    }

    #[tokio::test]
    async fn a_task_that_ends_leaves_the_table_to_a_later_one() {
        let drivers = drivers();
        let probe = Probe::new(usize::MAX);
        drivers.start(probe.clone());
        settle().await;
        let first = lock(&drivers.state).epoch;
        lock(&drivers.state).epoch += 1; // as if a later task had taken over
        drop(TaskGuard { drivers: drivers.clone(), epoch: first });
        assert_eq!(Arc::strong_count(&probe), 2, "still in the table");
        drop(TaskGuard { drivers: drivers.clone(), epoch: first + 1 });
        assert_eq!(Arc::strong_count(&probe), 1, "the current task's end lets it go");
    }

    #[tokio::test]
    async fn a_long_queue_is_driven_in_wake_order_a_budget_at_a_time() {
        let drivers = drivers();
        lock(&drivers.state).running = true; // this test polls the task itself
        let probes: Vec<_> = (0..BUDGET * 2 + 1).map(|_| Probe::new(usize::MAX)).collect();
        for p in &probes {
            drivers.start(p.clone());
        }
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut task = std::pin::pin!(run(TaskGuard { drivers: drivers.clone(), epoch: 0 }));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(task.as_mut().poll(&mut cx).is_pending());
        let driven: Vec<usize> = probes.iter().map(|p| p.drives()).collect();
        assert_eq!(driven.iter().sum::<usize>(), BUDGET, "one budget per poll");
        assert!(driven[..BUDGET].iter().all(|&d| d == 1), "in start order");
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "it woke itself to go on");
        assert!(task.as_mut().poll(&mut cx).is_pending());
        assert!(task.as_mut().poll(&mut cx).is_pending());
        assert!(probes.iter().all(|p| p.drives() == 1));
        assert_eq!(woken.0.load(Ordering::SeqCst), 2, "the last poll waits for a wake-up");
    }

    /// While a task awaits one of a socket's promises, the driver's wake-ups go to that task
    /// (which does the pass itself) instead of queueing a drive; once it stops awaiting, they go
    /// to the driver again, and one it was handed but did not act on is queued for the driver.
    #[tokio::test]
    async fn an_awaiting_task_takes_the_drivers_wake_ups_until_it_lets_them_go() {
        let drivers = drivers();
        let probe = Probe::new(usize::MAX);
        let (waker, link) = drivers.register(probe.clone());
        let awaiting = Arc::new(Count(AtomicUsize::new(0)));
        link.set_waiter(&Waker::from(awaiting.clone()));
        waker.wake_by_ref();
        settle().await;
        assert_eq!(awaiting.0.load(Ordering::SeqCst), 1, "the awaiting task was woken");
        assert_eq!(probe.drives(), 0, "no drive queued");
        assert!(link.take_handed(), "it was handed the wake-up");
        assert!(!link.take_handed(), "once");
        // Handed over at most once per registration: the next wake-up queues a drive.
        waker.wake_by_ref();
        settle().await;
        assert_eq!((awaiting.0.load(Ordering::SeqCst), probe.drives()), (1, 1));
        // A task that stops awaiting without acting on a wake-up hands it to the driver.
        link.set_waiter(&Waker::from(awaiting.clone()));
        waker.wake_by_ref();
        link.release_waiter();
        settle().await;
        assert_eq!((awaiting.0.load(Ordering::SeqCst), probe.drives()), (2, 2), "passed on");
        // Released: wake-ups go to the driver.
        waker.wake_by_ref();
        settle().await;
        assert_eq!((awaiting.0.load(Ordering::SeqCst), probe.drives()), (2, 3));
        // A socket finished by the awaiting task's pass leaves the table.
        assert!(link.finish().is_some(), "let go");
        assert!(link.finish().is_none(), "once");
        assert_eq!(Arc::strong_count(&probe), 1);
        waker.wake_by_ref();
        settle().await;
        assert_eq!(probe.drives(), 3, "a finished socket's waker wakes nothing");
    }

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

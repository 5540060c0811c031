//! One timer per network for every socket's deadline: read DESIGN §5 (the driver) first.
//!
//! A TCP driver with a deadline (connect timeout, close timeout) registers it here instead of
//! arming a tokio timer of its own. The network's timer task sleeps until the earliest deadline
//! and wakes the drivers whose deadlines have come; each driver then reads the clock and feeds its
//! machine the timeout as before. A driver polled for anything else reads no clock: a deadline is
//! due only once the task has reached it ([`Timers::may_be_due`]).
//!
//! Why: a tokio timer per socket cost an allocation, a timer-wheel insert and remove, and, when it
//! was the runtime's earliest timer, a write to the I/O driver's eventfd, for every connection,
//! although most deadlines never fire (a close completes long before its timeout). Here a new
//! deadline later than the one the task sleeps until costs a slab insert and nothing else; the
//! task sleeps on, wakes at the stale deadline if nothing earlier came, and sleeps again until the
//! earliest deadline still registered.
//!
//! The task looks at least every [`LOOK`] while deadlines are registered. So a deadline further
//! off than that never needs a wake-up, even when it is earlier than every other: a stream of
//! short connections, whose close timeout (60 s) comes before the connect timeout (127 s) the task
//! last saw, would otherwise wake it twice per connection (issue #6, tcp-connect).
//!
//! When the last deadline goes, the task lingers briefly ([`LINGER`]) from its next look on and
//! then ends, rather than sleeping on until a stale deadline: a timer in tokio's wheel makes every
//! park of the runtime dearer (a clock read and a timed wait), which an open connection that sends
//! messages and no longer has any deadline should not pay for longer than `LOOK` and the linger.
//! The linger keeps a stream of short connections from re-spawning the task or re-arming its timer
//! for each one; going without a wake-up, the last deadline costs no task poll either.
//!
//! Most deadlines go again before the task next looks (a connect or a close that completes): a new
//! one goes to a slab first, O(1) to add and to take out, and only those still there when the task
//! looks move into the ordered map (per connection, the map's inserts and removals cost more than
//! the rest of the timer work, issue #6).
//!
//! Deterministic under simulation: entries are ordered by (deadline, socket id), never by hash.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use tcpudp_core::{DeadlineSlot, Instant};

use crate::network::Network;
use crate::shared::{lock, Mutex};

/// How long the timer task lives on once no deadline is registered.
const LINGER: Duration = Duration::from_millis(100);

/// The longest the timer task sleeps between two looks while deadlines are registered: a new
/// deadline further off than this from the task's last look needs no wake-up, however early it is
/// among the others. As short as the linger: once the last deadline goes (which wakes nothing),
/// the runtime's parks stay timed for at most `LOOK` and the linger, as a connection that stays
/// open pays (tcp-pingpong paid 3.8% more instructions with 1 s, the timer staying in the wheel
/// for most of a round).
const LOOK: Duration = LINGER;

/// The deadlines of one network's sockets.
pub(crate) struct Timers {
    state: Mutex<State>,
    /// The time the timer task last looked at, in microseconds of the network's clock: no
    /// deadline after it is due yet, so a driver polled for I/O reads no clock to know that.
    reached: AtomicU64,
}

/// Where a socket's deadline is on the timer: what the socket keeps, and gives back to
/// [`Timers::set`] to move it.
///
/// 16 bytes (the deadline as a `DeadlineSlot`, not an `Option<Instant>`): it is part of every
/// TCP socket's state, which must stay in the allocator's fast size classes (issue #6, `tcp.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Armed {
    /// The deadline, if the socket has one on the timer.
    at: DeadlineSlot,
    /// Its slot in `State::recent`, valid while the task has not moved it to the map.
    slot: usize,
}

impl Default for Armed {
    fn default() -> Self {
        Armed { at: DeadlineSlot::NONE, slot: 0 }
    }
}

impl Armed {
    /// The deadline the socket has on the timer.
    pub(crate) fn at(&self) -> Option<Instant> {
        self.at.get()
    }
}

#[derive(Default)]
struct State {
    /// (deadline, socket id) → the waker of that socket's driver: the deadlines the task has seen.
    entries: BTreeMap<(Instant, u64), Waker>,
    /// Deadlines set since the task last looked (`None`: a free slot).
    recent: Vec<Option<Recent>>,
    /// Free slots of `recent`, the last freed first.
    recent_free: Vec<usize>,
    /// Deadlines in `recent`.
    recent_live: usize,
    /// The deadline the timer task sleeps until (`None`: it does not sleep, or does not run).
    armed: Option<Instant>,
    /// `armed` is the end of the task's linger, not a socket's deadline.
    lingering: bool,
    /// The timer task's waker while it runs.
    task: Option<Waker>,
    running: bool,
}

/// A deadline set since the timer task last looked.
struct Recent {
    at: Instant,
    id: u64,
    waker: Waker,
}

/// What [`Timers::set`] must do once the state is updated.
#[derive(Debug)]
enum SetAction {
    Nothing,
    /// Start the timer task.
    Spawn,
    /// Wake the timer task.
    Wake(Waker),
}

/// What the timer task does after one look at the state.
#[derive(Debug)]
enum Step {
    /// No deadline is left and the linger is over.
    End,
    /// Wake these drivers, then sleep until `next` (`None`: until woken).
    Sleep { due: Vec<Waker>, next: Option<Instant> },
}

impl Timers {
    pub(crate) fn new() -> Timers {
        Timers { state: Mutex::new(State::default()), reached: AtomicU64::new(0) }
    }

    /// Whether `deadline` may have come: only once the timer task has looked at a time at or past
    /// it (and so woken, or is about to wake, its driver). A deadline the task has not reached is
    /// not due however late the driver runs: the task's wake-up follows and the driver fires it
    /// then. Reads no clock.
    pub(crate) fn may_be_due(&self, deadline: Instant) -> bool {
        deadline.as_micros() <= self.reached.load(Ordering::Acquire)
    }

    /// Moves socket `id`'s deadline from `armed` (the one it has here) to `new` (either may be
    /// `None`), to wake `waker`, and records `new` in `armed`. Also call it with `new` equal to
    /// `armed` when the driver's waker changed.
    pub(crate) fn set(
        self: &Arc<Self>,
        net: &Network,
        id: u64,
        armed: &mut Armed,
        new: Option<Instant>,
        waker: &Waker,
    ) {
        let (action, now_armed) = lock(&self.state).set(id, *armed, new, waker);
        *armed = now_armed;
        match action {
            SetAction::Nothing => {}
            // Its first poll sleeps until the earliest deadline.
            SetAction::Spawn => net.spawn(run(self.clone(), net.clock())),
            SetAction::Wake(task) => task.wake(),
        }
    }
}

impl State {
    fn set(&mut self, id: u64, old: Armed, new: Option<Instant>, waker: &Waker) -> (SetAction, Armed) {
        if let Some(at) = old.at() {
            self.remove(id, at, old.slot);
        }
        // The last deadline going needs no wake-up either: the task sleeps until a stale one at
        // most `LOOK` away, and lingers from that look on.
        // As the slot keeps it (a saturated deadline a microsecond earlier), so that taking it
        // out finds it.
        let Some(at) = new.and_then(|at| DeadlineSlot::at(at).get()) else {
            return (SetAction::Nothing, Armed::default());
        };
        let armed = Armed {
            at: DeadlineSlot::at(at),
            slot: self.add_recent(Recent { at, id, waker: waker.clone() }),
        };
        // Only a deadline earlier than the one the task sleeps until needs the task to act.
        if self.armed.is_some_and(|armed| armed <= at) {
            return (SetAction::Nothing, armed);
        }
        if !self.running {
            self.running = true;
            return (SetAction::Spawn, armed);
        }
        // Running but not polled yet: its first poll sees this entry.
        (self.task.clone().map_or(SetAction::Nothing, SetAction::Wake), armed)
    }

    fn add_recent(&mut self, entry: Recent) -> usize {
        self.recent_live += 1;
        match self.recent_free.pop() {
            Some(slot) => {
                self.recent[slot] = Some(entry);
                slot
            }
            None => {
                self.recent.push(Some(entry));
                self.recent.len() - 1
            }
        }
    }

    /// Takes socket `id`'s deadline `at` out: from `slot` of `recent` if it is still there, else
    /// from the map.
    fn remove(&mut self, id: u64, at: Instant, slot: usize) {
        let recent = self.recent.get_mut(slot);
        if let Some(entry) = recent.filter(|e| e.as_ref().is_some_and(|e| e.id == id && e.at == at)) {
            *entry = None;
            self.recent_free.push(slot);
            self.recent_live -= 1;
        } else {
            self.entries.remove(&(at, id));
        }
    }

    /// The task looks: the recent deadlines move into the map.
    fn settle_recent(&mut self) {
        for entry in self.recent.drain(..).flatten() {
            self.entries.insert((entry.at, entry.id), entry.waker);
        }
        self.recent_free.clear();
        self.recent_live = 0;
    }

    /// One look by the timer task (polled with `task`) at `now`.
    fn step(&mut self, now: Instant, task: &Waker) -> Step {
        if !self.task.as_ref().is_some_and(|w| w.will_wake(task)) {
            self.task = Some(task.clone());
        }
        self.settle_recent();
        if self.entries.is_empty() {
            if self.lingering && self.armed.is_some_and(|end| end <= now) {
                self.armed = None;
                self.lingering = false;
                self.task = None;
                self.running = false;
                return Step::End;
            }
            if !self.lingering {
                self.lingering = true;
                self.armed = Some(now + LINGER);
            }
            return Step::Sleep { due: Vec::new(), next: self.armed };
        }
        self.lingering = false;
        // Due entries stay until their drivers move or drop their deadlines.
        let due = self.entries.range(..=(now, u64::MAX)).map(|(_, w)| w.clone()).collect();
        let later = (Bound::Excluded((now, u64::MAX)), Bound::Unbounded);
        // `None`: only due entries are left, and their drivers are about to move them. The task
        // looks again within `LOOK` however late the next deadline is.
        self.armed = self.entries.range(later).next().map(|(&(at, _), _)| at.min(now + LOOK));
        Step::Sleep { due, next: self.armed }
    }
}

/// The timer task: wakes the drivers whose deadlines have come, then sleeps until the earliest
/// deadline still registered; lingers, then ends, when none is.
async fn run(timers: Arc<Timers>, clock: crate::network::Clock) {
    // Made on the first deadline (boxed: `Sleep` is not `Unpin`).
    let mut sleep: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        for _ in 0..4 {
            let now = clock.now();
            // Published before any driver is woken for it ([`Timers::may_be_due`]).
            timers.reached.fetch_max(now.as_micros(), Ordering::Release);
            let step = lock(&timers.state).step(now, cx.waker());
            let Step::Sleep { due, next } = step else { return Poll::Ready(()) };
            due.into_iter().for_each(Waker::wake);
            let Some(at) = next else { return Poll::Pending };
            let deadline = clock.to_tokio(at);
            let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // Bounded: let other tasks run, then carry on.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    use std::time::Duration;

    use tcpudp_core::{DeadlineSlot, Instant};

    use super::{Armed, SetAction, State, Step, LINGER, LOOK};

    impl State {
        /// `set` as a driver calls it, for socket `id` whose deadline here is `old`.
        fn set_at(
            &mut self,
            id: u64,
            old: Option<Instant>,
            new: Option<Instant>,
            waker: &Waker,
        ) -> SetAction {
            self.set(
                id,
                Armed { at: old.map_or(DeadlineSlot::NONE, DeadlineSlot::at), slot: self.slot_of(id) },
                new,
                waker,
            )
            .0
        }

        fn is_empty(&self) -> bool {
            self.entries.is_empty() && self.recent_live == 0
        }

        fn slot_of(&self, id: u64) -> usize {
            self.recent.iter().position(|e| e.as_ref().is_some_and(|e| e.id == id)).unwrap_or(usize::MAX)
        }
    }

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> Waker {
        Waker::from(Arc::new(Count::default()))
    }

    fn at(millis: u64) -> Instant {
        Instant::from_micros(0) + Duration::from_millis(millis)
    }

    fn next(step: Step) -> Option<Instant> {
        match step {
            Step::Sleep { next, .. } => next,
            Step::End => panic!("the task ended"),
        }
    }

    /// A task polled once at 0 for socket 1's deadline at 10 s: it sleeps until its next look,
    /// `LOOK` later.
    fn sleeping(task: &Waker, driver: &Waker) -> State {
        let mut state = State::default();
        assert!(matches!(state.set_at(1, None, Some(at(10_000)), driver), SetAction::Spawn));
        assert_eq!(next(state.step(at(0), task)), Some(at(0) + LOOK));
        state
    }

    #[test]
    fn the_task_lingers_then_ends_once_the_last_deadline_goes() {
        let (task, driver) = (waker(), waker());
        let mut state = sleeping(&task, &driver);
        // The deadline goes long before it comes: no wake-up, and the task's next look (`LOOK`
        // on, not at 10 s) finds none and lingers, so its timer leaves tokio's wheel then.
        assert!(matches!(state.set_at(1, Some(at(10_000)), None, &driver), SetAction::Nothing));
        let linger_end = at(0) + LOOK + LINGER;
        assert_eq!(next(state.step(at(0) + LOOK, &task)), Some(linger_end));
        // Deadlines that come and go within the linger cost the task nothing.
        assert!(matches!(state.set_at(2, None, Some(at(20_000)), &driver), SetAction::Nothing));
        assert!(matches!(state.set_at(2, Some(at(20_000)), None, &driver), SetAction::Nothing));
        assert_eq!(
            next(state.step(Instant::from_micros(linger_end.as_micros() - 1), &task)),
            Some(linger_end)
        );
        assert!(matches!(state.step(linger_end, &task), Step::End));
        assert!(!state.running && state.armed.is_none() && state.task.is_none());
        // The next deadline starts a new task.
        assert!(matches!(state.set_at(3, None, Some(at(30_000)), &driver), SetAction::Spawn));
    }

    #[test]
    fn a_deadline_set_during_the_linger_keeps_the_task_for_it() {
        let (task, driver) = (waker(), waker());
        let mut state = sleeping(&task, &driver);
        let _ = state.set_at(1, Some(at(10_000)), None, &driver);
        let linger_end = at(1_000) + LINGER;
        assert_eq!(next(state.step(at(1_000), &task)), Some(linger_end));
        // Later than the linger's end: the task sees it when the linger ends, and looks again
        // `LOOK` on.
        assert!(matches!(state.set_at(2, None, Some(at(20_000)), &driver), SetAction::Nothing));
        assert_eq!(next(state.step(linger_end, &task)), Some(linger_end + LOOK));
        assert!(!state.lingering);
        match state.step(at(20_000), &task) {
            Step::Sleep { due, next } => {
                assert!(due.len() == 1 && due[0].will_wake(&driver));
                assert_eq!(next, None);
            }
            Step::End => panic!("ended with a deadline due"),
        }
        // Earlier than the linger's end: the task must act at once.
        let _ = state.set_at(2, Some(at(20_000)), None, &driver);
        assert_eq!(next(state.step(at(21_000), &task)), Some(at(21_000) + LINGER));
        let early = at(21_000) + LINGER / 2;
        assert!(matches!(state.set_at(3, None, Some(early), &driver), SetAction::Wake(_)));
        assert_eq!(next(state.step(at(21_010), &task)), Some(early));
    }

    #[test]
    fn a_deadline_gone_before_the_task_first_runs_needs_no_wake() {
        let driver = waker();
        let mut state = State::default();
        assert!(matches!(state.set_at(1, None, Some(at(10_000)), &driver), SetAction::Spawn));
        assert!(matches!(state.set_at(1, Some(at(10_000)), None, &driver), SetAction::Nothing));
        // Its first poll finds nothing and lingers.
        let task = waker();
        assert_eq!(next(state.step(at(5), &task)), Some(at(5) + LINGER));
    }

    /// A deadline set and gone between two looks of the task never reaches the ordered map; one
    /// still set when the task looks moves there and is taken out of it later, and a socket's
    /// old slot, reused by another socket meanwhile, does not take the other's deadline out.
    #[test]
    fn deadlines_gone_before_the_task_looks_never_reach_the_map() {
        let (task, driver) = (waker(), waker());
        let mut state = sleeping(&task, &driver);
        assert!(state.entries.len() == 1 && state.recent_live == 0, "the first look moved it");
        let (_, short) = state.set(2, Armed::default(), Some(at(20_000)), &driver);
        assert_eq!((state.entries.len(), state.recent_live), (1, 1));
        let (_, gone) = state.set(2, short, None, &driver);
        assert_eq!(gone, Armed::default());
        assert_eq!((state.entries.len(), state.recent_live), (1, 0), "never in the map");
        let (_, kept) = state.set(3, Armed::default(), Some(at(30_000)), &driver);
        assert_eq!(next(state.step(at(1), &task)), Some(at(1) + LOOK));
        assert_eq!((state.entries.len(), state.recent_live), (2, 0), "moved at the look");
        // Socket 4 takes the slot socket 3 had: moving 3's deadline must leave 4's alone.
        let (_, other) = state.set(4, Armed::default(), Some(at(40_000)), &driver);
        assert_eq!(other.slot, kept.slot);
        let (_, _) = state.set(3, kept, None, &driver);
        assert_eq!((state.entries.len(), state.recent_live), (1, 1));
        assert!(state.entries.keys().all(|&(_, id)| id == 1));
        let _ = state.set(4, other, None, &driver);
        let _ = state.set(1, Armed { at: DeadlineSlot::at(at(10_000)), slot: usize::MAX }, None, &driver);
        assert!(state.is_empty());
    }

    /// A deadline further off than `LOOK` needs no wake-up even when it is the earliest, and the
    /// last one going needs none either: a stream of lock-step connections (connect deadline at
    /// 127 s, then both ends' close deadlines at 60 s, each gone again before the task looks)
    /// costs the task one look per `LOOK` and no wake-up (issue #6: two per connection before).
    #[test]
    fn short_connections_cost_the_task_no_wake_up() {
        let (task, driver) = (waker(), waker());
        let mut state = sleeping(&task, &driver);
        let _ = state.set_at(1, Some(at(10_000)), None, &driver);
        let (connect, close) = (Duration::from_secs(127), Duration::from_secs(60));
        let mut looks = 0;
        let mut next_look = at(0) + LOOK;
        for i in 0..1_000u64 {
            let now = at(i); // one connection per millisecond
            let (client, server) = (10 + 2 * i, 11 + 2 * i);
            let mut actions = vec![state.set_at(client, None, Some(now + connect), &driver)];
            // The task looks while the runtime waits, for the connection or for the FINs.
            if now >= next_look {
                looks += 1;
                next_look = next(state.step(now, &task)).expect("the task sleeps until a time");
            }
            actions.push(state.set_at(client, Some(now + connect), None, &driver));
            actions.push(state.set_at(client, None, Some(now + close), &driver));
            actions.push(state.set_at(server, None, Some(now + close), &driver));
            actions.push(state.set_at(server, Some(now + close), None, &driver));
            actions.push(state.set_at(client, Some(now + close), None, &driver));
            assert!(actions.iter().all(|a| matches!(a, SetAction::Nothing)), "connection {i}: {actions:?}");
        }
        assert_eq!(looks, 9, "one look per LOOK (at 100, 200, …, 900 ms)");
        assert!(state.is_empty());
    }
}

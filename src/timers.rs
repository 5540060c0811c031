//! One timer per network for every socket's deadline: read DESIGN §5 (the driver) first.
//!
//! A TCP driver with a deadline (connect timeout, close timeout) registers it here instead of
//! arming a tokio timer of its own. The network's timer task sleeps until the earliest deadline
//! and wakes the drivers whose deadlines have come; each driver then reads the clock and feeds its
//! machine the timeout as before.
//!
//! Why: a tokio timer per socket cost an allocation, a timer-wheel insert and remove, and, when it
//! was the runtime's earliest timer, a write to the I/O driver's eventfd, for every connection,
//! although most deadlines never fire (a close completes long before its timeout). Here a new
//! deadline later than the one the task sleeps until costs a map insert and nothing else; the task
//! sleeps on, wakes at the stale deadline if nothing earlier came, and sleeps again until the
//! earliest deadline still registered.
//!
//! Deterministic under simulation: entries are ordered by (deadline, socket id), never by hash.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use tcpudp_core::Instant;

use crate::network::Network;
use crate::shared::lock;

/// The deadlines of one network's sockets.
pub(crate) struct Timers {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (deadline, socket id) → the waker of that socket's driver.
    entries: BTreeMap<(Instant, u64), Waker>,
    /// The deadline the timer task sleeps until (`None`: it does not sleep, or does not run).
    armed: Option<Instant>,
    /// The timer task's waker while it runs.
    task: Option<Waker>,
    running: bool,
}

impl Timers {
    pub(crate) fn new() -> Timers {
        Timers { state: Mutex::new(State::default()) }
    }

    /// Moves socket `id`'s deadline from `old` to `new` (either may be `None`), to wake `waker`.
    /// Also call it with `old == new` when the driver's waker changed.
    pub(crate) fn set(
        self: &Arc<Self>,
        net: &Network,
        id: u64,
        old: Option<Instant>,
        new: Option<Instant>,
        waker: &Waker,
    ) {
        let task = {
            let mut state = lock(&self.state);
            if let Some(old) = old {
                state.entries.remove(&(old, id));
            }
            let Some(at) = new else { return };
            state.entries.insert((at, id), waker.clone());
            // Only a deadline earlier than the one the task sleeps until needs the task to act.
            if state.armed.is_some_and(|armed| armed <= at) {
                return;
            }
            if !state.running {
                state.running = true;
                drop(state);
                // Its first poll sleeps until the earliest deadline.
                net.spawn(Box::pin(run(self.clone(), net.clock())));
                return;
            }
            // Running but not polled yet: its first poll sees this entry.
            state.task.clone()
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// The timer task: wakes the drivers whose deadlines have come, then sleeps until the earliest
/// deadline still registered; ends when none is.
async fn run(timers: Arc<Timers>, clock: crate::network::Clock) {
    // Made on the first deadline (boxed: `Sleep` is not `Unpin`).
    let mut sleep: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        for _ in 0..4 {
            let (due, next) = {
                let mut state = lock(&timers.state);
                if state.entries.is_empty() {
                    state.armed = None;
                    state.task = None;
                    state.running = false;
                    return Poll::Ready(());
                }
                if !state.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    state.task = Some(cx.waker().clone());
                }
                let now = clock.now();
                // Due entries stay until their drivers move or drop their deadlines.
                let due: Vec<Waker> =
                    state.entries.range(..=(now, u64::MAX)).map(|(_, w)| w.clone()).collect();
                let later = (Bound::Excluded((now, u64::MAX)), Bound::Unbounded);
                // `None`: only due entries are left, and their drivers are about to move them.
                state.armed = state.entries.range(later).next().map(|(&(at, _), _)| at);
                (due, state.armed)
            };
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

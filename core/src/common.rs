//! Pieces every machine shares: settle-once promises, the output queue, the readyState choke point.

use std::collections::VecDeque;

use crate::error::SocketError;
use crate::io::{Event, Output};
use crate::state::{ReadyState, Row, SocketKind};

/// Outputs waiting for `poll_output`. An idle socket keeps no room for them (it stays small); the
/// room goes to a per-thread spare list when the queue empties and comes back from it at the next
/// output, so a socket's outputs cost no allocation once a thread has handled a few sockets (a
/// connection's machines emptied and refilled their queues five times: ~1,000 instructions of
/// allocator work per connection, issue #6). The list holds capacity only, never an output:
/// nothing a machine does depends on it.
#[derive(Debug)]
pub(crate) struct Outbox(VecDeque<Output>);

impl Outbox {
    pub(crate) fn new() -> Self {
        Outbox(VecDeque::new())
    }

    #[inline]
    pub(crate) fn io(&mut self, cmd: crate::io::IoCommand) {
        self.push(Output::Io(cmd));
    }

    #[inline]
    pub(crate) fn event(&mut self, ev: Event) {
        self.push(Output::Event(ev));
    }

    #[inline]
    fn push(&mut self, out: Output) {
        if self.0.capacity() == 0 {
            self.0 = spare::take();
        }
        self.0.push_back(out);
    }

    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Output> {
        self.0.pop_front()
    }

    /// Gives the capacity back when nothing waits (an idle socket stays small).
    pub(crate) fn release_if_empty(&mut self) {
        if self.0.is_empty() && self.0.capacity() > 0 {
            spare::give(std::mem::take(&mut self.0));
        }
    }
}

impl Drop for Outbox {
    /// A machine that goes (a closed socket) hands its room on too.
    fn drop(&mut self) {
        self.release_if_empty();
    }
}

/// Empty output queues with room, per thread.
mod spare {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use crate::io::Output;

    /// Queues kept per thread: enough for the sockets one task handles at once.
    pub(super) const KEPT: usize = 8;
    /// A queue that grew past this (a burst) is not kept: its room would outlive the burst.
    const MAX_ROOM: usize = 16;

    thread_local! {
        static SPARE: RefCell<Vec<VecDeque<Output>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty queue, with room when the thread has one spare.
    pub(super) fn take() -> VecDeque<Output> {
        SPARE.try_with(|spare| spare.try_borrow_mut().ok()?.pop()).ok().flatten().unwrap_or_default()
    }

    /// Keeps an empty queue's room for the next one (dropped when the list is full).
    pub(super) fn give(queue: VecDeque<Output>) {
        if !queue.is_empty() || queue.capacity() > MAX_ROOM {
            return;
        }
        let _ = SPARE.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut() {
                if spare.len() < KEPT {
                    spare.push(queue);
                }
            }
        });
    }
}

/// `opened` or `closed`: settles at most once (INV-01, INV-02).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Promise {
    #[default]
    Pending,
    Settled(Result<(), SocketError>),
}

impl Promise {
    pub(crate) fn is_pending(&self) -> bool {
        matches!(self, Promise::Pending)
    }

    pub(crate) fn outcome(&self) -> Option<&Result<(), SocketError>> {
        match self {
            Promise::Pending => None,
            Promise::Settled(r) => Some(r),
        }
    }

    /// Settles if pending, emitting `event(result)`; a second settle is ignored.
    pub(crate) fn settle(
        &mut self,
        result: Result<(), SocketError>,
        out: &mut Outbox,
        event: fn(Result<(), SocketError>) -> Event,
    ) {
        if self.is_pending() {
            *self = Promise::Settled(result.clone());
            out.event(event(result));
        }
    }
}

/// The readyState with its one mutation point, which enforces RULES.md §9.
#[derive(Debug)]
pub(crate) struct StateCell {
    kind: SocketKind,
    state: ReadyState,
    #[cfg(feature = "mutations")]
    disabled: Option<Row>,
}

impl StateCell {
    pub(crate) fn new(kind: SocketKind, state: ReadyState) -> Self {
        StateCell {
            kind,
            state,
            #[cfg(feature = "mutations")]
            disabled: crate::state::mutation::disabled(),
        }
    }

    pub(crate) fn get(&self) -> ReadyState {
        self.state
    }

    #[cfg(feature = "mutations")]
    pub(crate) fn disable(&mut self, row: Option<Row>) {
        self.disabled = row;
    }

    /// The choke point: moves along `row` if the table allows it. A move the table forbids is a bug
    /// in the machine; it is refused (debug builds assert) rather than corrupting the state.
    pub(crate) fn set(&mut self, row: Row, out: &mut Outbox) -> bool {
        let (kind, from, to) = row.edge();
        #[cfg(feature = "mutations")]
        if self.disabled == Some(row) {
            return false;
        }
        // Every row's edge is in the §9 table by construction (`Row::allows` holds for it): what
        // can go wrong is the socket kind or the state the row starts from.
        let ok = kind == self.kind && from == self.state;
        // With a row disabled (mutation testing) later rows may start from the wrong state: refuse
        // them quietly there, so the suite sees the mutant's behaviour instead of a panic.
        #[cfg(feature = "mutations")]
        let mutated = self.disabled.is_some();
        #[cfg(not(feature = "mutations"))]
        let mutated = false;
        debug_assert!(ok || mutated, "{row} taken from {} on a {}", self.state, self.kind);
        if ok {
            self.state = to;
            out.event(Event::StateChanged { from, to });
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable() -> Event {
        Event::Readable
    }

    /// Each test runs on a thread of its own: the spare list starts empty here.
    #[test]
    fn an_emptied_outbox_hands_its_room_to_the_next_one() {
        let mut first = Outbox::new();
        first.event(readable());
        let room = first.0.capacity();
        assert!(room > 0);
        assert!(first.pop().is_some());
        first.release_if_empty();
        assert_eq!(first.0.capacity(), 0, "an idle outbox keeps no room");
        let mut second = Outbox::new();
        second.event(readable());
        assert_eq!(second.0.capacity(), room, "the room came from the spare list");
        assert!(spare::take().capacity() == 0, "and left it");
    }

    #[test]
    fn an_outbox_with_outputs_keeps_them_in_order() {
        let mut out = Outbox::new();
        out.io(crate::io::IoCommand::ShutdownWrite);
        out.event(readable());
        out.release_if_empty();
        assert!(matches!(out.pop(), Some(Output::Io(crate::io::IoCommand::ShutdownWrite))));
        assert!(matches!(out.pop(), Some(Output::Event(Event::Readable))));
        assert!(out.pop().is_none());
    }

    #[test]
    fn a_dropped_outbox_hands_its_room_on_and_the_list_stays_bounded() {
        let outboxes: Vec<Outbox> = (0..spare::KEPT + 3)
            .map(|_| {
                let mut out = Outbox::new();
                out.event(readable());
                out.pop();
                out
            })
            .collect();
        drop(outboxes);
        let kept = std::iter::from_fn(|| Some(spare::take()).filter(|q| q.capacity() > 0)).count();
        assert_eq!(kept, spare::KEPT);
    }
}

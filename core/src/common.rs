//! Pieces every machine shares: settle-once promises, the output queue, the readyState choke point.

use std::collections::VecDeque;

use crate::error::SocketError;
use crate::io::{Event, Output};
use crate::state::{ReadyState, Row, SocketKind};

/// Outputs waiting for `poll_output`. Allocated on first use (an idle socket stays small); once it
/// has grown to a socket's working size the data path never allocates again.
#[derive(Debug)]
pub(crate) struct Outbox(VecDeque<Output>);

impl Outbox {
    pub(crate) fn new() -> Self {
        Outbox(VecDeque::new())
    }

    #[inline]
    pub(crate) fn io(&mut self, cmd: crate::io::IoCommand) {
        self.0.push_back(Output::Io(cmd));
    }

    #[inline]
    pub(crate) fn event(&mut self, ev: Event) {
        self.0.push_back(Output::Event(ev));
    }

    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Output> {
        self.0.pop_front()
    }

    /// Gives the capacity back when nothing waits (an idle socket stays small).
    pub(crate) fn release_if_empty(&mut self) {
        if self.0.is_empty() && self.0.capacity() > 0 {
            self.0 = VecDeque::new();
        }
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

//! `TCPServerSocket`: read RULES.md §5 (SRV-*), §9.3, AMB-07/08/09, AMB-38–43, AMB-55, EXT-08 and
//! INV-15/16 before editing.
//!
//! [`TcpServerMachine`] owns the server's readyState, its `opened` and `closed` futures and the
//! queue of pending `listen()` calls. The backend owns the sockets: it creates the listening socket
//! (`IoCommand::Listen`), accepts from the OS backlog while asked to (`IoCommand::AcceptInterest`)
//! and holds every accepted connection under a [`ConnId`](crate::io::ConnId) until the API builds its `TcpMachine`
//! (from [`TcpServerMachine::accepted_spec`]) or the machine releases it
//! (`IoCommand::CloseConnection`).
//!
//! # Delivery (AMB-40, INV-15)
//!
//! Each `listen()` means "accept the next connection". Pending calls are served first in, first
//! out. Accepting from the OS is flow-controlled: `AcceptInterest(true)` is emitted when the
//! server is open and the first `listen()` starts waiting, `AcceptInterest(false)` when none waits
//! any more, so connections nobody asked for wait in the OS backlog. A connection the backend
//! accepted anyway (a race with `AcceptInterest(false)`), or one returned by a dropped `listen()`
//! future (`ReturnConnection`, GEN-11), waits in the machine's own backlog for the next call. A
//! connection is never lost and never delivered twice: it goes to exactly one `listen()`, or, once
//! the server is closed, is released with `CloseConnection`.
//!
//! # TLS servers (EXT-08)
//!
//! With `use_secure_transport`, the backend runs each connection's handshake before reporting it:
//! it reports `Accepted` only once the handshake finished (so connections arrive in
//! handshake-completion order) and reports a failed or timed-out handshake as `AcceptFailed`
//! (SRV-CONNFAIL-01/02). The logic here is therefore the same for plain and TLS servers.
//!
//! # Accepted sockets (INV-16)
//!
//! A delivered connection is a separate `TcpMachine`. No server transition (close, error) touches
//! it: only connections still held by this machine are released when it closes.

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::common::{Outbox, Promise, StateCell};
use crate::error::SocketError;
use crate::io::{
    AcceptedConnection, AppCommand, Deadline, Event, Input, IoCommand, IoEvent, ListenId, Output,
};
use crate::options::{AcceptedSpec, ServerSpec};
use crate::state::{ReadyState, Row, SocketKind};
use crate::time::Instant;

/// Initial capacity of the pending-listen queue and of the machine's backlog.
const QUEUE_CAPACITY: usize = 4;

/// The sans-IO state machine of one `TCPServerSocket` (RULES.md §5, §9.3).
#[derive(Debug)]
pub struct TcpServerMachine {
    spec: ServerSpec,
    state: StateCell,
    opened: Promise,
    closed: Promise,
    out: Outbox,
    /// The bound address, once `Listening` reported it (AMB-07).
    local: Option<SocketAddr>,
    /// `listen()` calls waiting for a connection, oldest first.
    pending: VecDeque<ListenId>,
    /// Connections accepted with no `listen()` waiting, oldest first. Invariant: `pending` and
    /// `backlog` are never both non-empty.
    backlog: VecDeque<AcceptedConnection>,
    /// The last `AcceptInterest` value emitted (false until the first `true`).
    accepting: bool,
}

impl TcpServerMachine {
    /// Builds the machine from its checked spec (the trace's first record is
    /// `Input::Open(OpenSpec::TcpServer(spec))`): readyState "opening", `opened` and `closed`
    /// pending (SRV-CTOR-08), and `IoCommand::Listen` queued for the backend.
    pub fn new(_now: Instant, spec: ServerSpec) -> Self {
        let mut out = Outbox::new();
        out.io(IoCommand::Listen {
            local: SocketAddr::new(spec.local_address, spec.local_port),
            address_reuse: spec.address_reuse,
            backlog: spec.backlog,
        });
        TcpServerMachine {
            spec,
            state: StateCell::new(SocketKind::TcpServer, ReadyState::Opening),
            opened: Promise::Pending,
            closed: Promise::Pending,
            out,
            local: None,
            pending: VecDeque::with_capacity(QUEUE_CAPACITY),
            backlog: VecDeque::with_capacity(QUEUE_CAPACITY),
            accepting: false,
        }
    }

    /// Handles one input.
    ///
    /// `Err` is what the spec throws synchronously, which for a server is only misuse: commands of
    /// another socket kind (`TypeError`) and `Input::Open` (`InvalidStateError`), both without
    /// effect. `listen()` and `close()` return promises, so their failures are events (GEN-02).
    /// Backend events that do not apply in the current state are ignored. Never panics.
    #[inline]
    pub fn handle(&mut self, now: Instant, input: Input) -> Result<(), SocketError> {
        self.handle_lazy(&mut || now, input)
    }

    /// As [`handle`](Self::handle), with the time read from `now` only when a transition needs
    /// it: a server arms no timers, so never (a caller pays no clock read per connection).
    pub fn handle_lazy(&mut self, now: &mut dyn FnMut() -> Instant, input: Input) -> Result<(), SocketError> {
        let _ = now; // No timers.
        match input {
            Input::Open(_) => Err(SocketError::invalid_state()),
            Input::App(cmd) => self.handle_app(cmd),
            Input::Io(ev) => self.handle_io(ev),
            // No timers: the backend bounds each TLS handshake itself (AMB-44).
            Input::Timeout => Ok(()),
        }
    }

    /// The next output, oldest first. Drain until `None` after every `handle`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    /// Always `None`: a server arms no timers.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Deadline> {
        None
    }

    /// The current readyState: never "halfclosed" or "closing" (STATE-06).
    pub fn ready_state(&self) -> ReadyState {
        self.state.get()
    }

    /// The outcome of `opened`, `None` while pending.
    pub fn opened(&self) -> Option<&Result<(), SocketError>> {
        self.opened.outcome()
    }

    /// The outcome of `closed`, `None` while pending. `close()` returns this same future (GEN-06).
    pub fn closed(&self) -> Option<&Result<(), SocketError>> {
        self.closed.outcome()
    }

    /// The bound address with the real port, once the listening socket is ready (AMB-07): always
    /// known by the time `opened` resolves, and kept after the server closes.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Lets the conformance suite disable one §9.3 row (feature `mutations`).
    #[cfg(feature = "mutations")]
    pub fn disable_row(&mut self, row: Option<Row>) {
        self.state.disable(row);
    }

    /// The spec of the socket built for a delivered connection (SRV-ACCEPT-01/02): its addresses and
    /// the server's options for accepted sockets.
    pub fn accepted_spec(&self, conn: &AcceptedConnection) -> AcceptedSpec {
        AcceptedSpec { local: conn.local, remote: conn.remote, tcp: self.spec.accepted.clone() }
    }

    /// The checked constructor spec.
    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }

    /// Diagnostics: `listen()` calls waiting for a connection.
    pub fn pending_listens(&self) -> usize {
        self.pending.len()
    }

    /// Diagnostics: connections held by the machine, waiting for a `listen()`.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Diagnostics: whether the backend was last asked to accept from the OS backlog.
    pub fn accept_interest(&self) -> bool {
        self.accepting
    }

    fn handle_app(&mut self, cmd: AppCommand) -> Result<(), SocketError> {
        match cmd {
            AppCommand::Listen { id } => self.listen(id),
            AppCommand::CancelListen { id } => {
                // GEN-11: give up the place; an unknown or settled id changes nothing.
                if let Some(pos) = self.pending.iter().position(|p| *p == id) {
                    self.pending.remove(pos);
                    self.update_accept_interest();
                }
            }
            AppCommand::ReturnConnection { conn, local, remote } => {
                self.return_connection(AcceptedConnection { conn, local, remote });
            }
            AppCommand::Close => self.close(),
            // Read, Write, SendDatagram, WriterClose, WriterAbort, HalfClose, Reset, StartTls,
            // JoinMulticast, LeaveMulticast, and whatever other kinds add later.
            _ => return Err(SocketError::type_error().with_message("not a TCPServerSocket operation")),
        }
        Ok(())
    }

    fn handle_io(&mut self, ev: IoEvent) -> Result<(), SocketError> {
        let state = self.state.get();
        match ev {
            IoEvent::Listening { local } => {
                if state == ReadyState::Opening {
                    // SRV-OPEN-01, GEN-09: the state first, then `opened`.
                    self.local = Some(local);
                    self.state.set(Row::ServerOpeningListening, &mut self.out);
                    self.opened.settle(Ok(()), &mut self.out, Event::Opened);
                    self.update_accept_interest();
                }
            }
            IoEvent::ListenFailed { cause } => {
                if state == ReadyState::Opening {
                    // SRV-OPEN-02, A-42.
                    let e = SocketError::network(cause);
                    self.shut(Row::ServerOpeningCreationFails, e.clone(), e.clone(), Err(e));
                }
            }
            IoEvent::Failed { cause } => {
                let e = SocketError::network(cause);
                match state {
                    // SRV-ERR-01, A-42.
                    ReadyState::Open => self.shut(Row::ServerOpenError, e.clone(), e.clone(), Err(e)),
                    // The listening socket failed before it was ready: a creation failure.
                    ReadyState::Opening => {
                        self.shut(Row::ServerOpeningCreationFails, e.clone(), e.clone(), Err(e))
                    }
                    _ => {}
                }
            }
            IoEvent::Accepted { conn, local, remote } => {
                let accepted = AcceptedConnection { conn, local, remote };
                if state == ReadyState::Closed {
                    // Accepted before the backend saw our Close: nobody will take it.
                    self.out.io(IoCommand::CloseConnection { conn });
                } else if let Some(id) = self.pending.pop_front() {
                    self.out.event(Event::ListenSettled { id, result: Ok(accepted) });
                    self.update_accept_interest();
                } else {
                    self.backlog.push_back(accepted);
                }
            }
            IoEvent::AcceptFailed { cause } => {
                // SRV-CONNFAIL-01; with no listen pending the failure is dropped. The
                // server stays open.
                if state != ReadyState::Closed {
                    if let Some(id) = self.pending.pop_front() {
                        let result = Err(SocketError::network(cause));
                        self.out.event(Event::ListenSettled { id, result });
                        self.update_accept_interest();
                    }
                }
            }
            // Events of other socket kinds (Connected, Received, Datagram, TlsDone…).
            _ => return Err(SocketError::type_error().with_message("not a TCPServerSocket event")),
        }
        Ok(())
    }

    /// `listen()`: a rejection when closed (SRV-LISTEN-01, GEN-02), otherwise the next connection,
    /// at once from the backlog or FIFO after the calls already waiting (SRV-LISTEN-02..04).
    fn listen(&mut self, id: ListenId) {
        if self.state.get() == ReadyState::Closed {
            let result = Err(SocketError::invalid_state().with_message("the server is closed"));
            self.out.event(Event::ListenSettled { id, result });
        } else if self.pending.contains(&id) {
            // The id of a call still waiting: misuse by the caller. The waiting call keeps its place.
            let result = Err(SocketError::type_error().with_message("listen id already pending"));
            self.out.event(Event::ListenSettled { id, result });
        } else if let Some(accepted) = self.backlog.pop_front() {
            self.out.event(Event::ListenSettled { id, result: Ok(accepted) });
        } else {
            self.pending.push_back(id);
            self.update_accept_interest();
        }
    }

    /// GEN-11: a connection whose `listen()` future was dropped before taking it goes to the next
    /// waiting call, or to the front of the backlog (it arrived before everything held there).
    fn return_connection(&mut self, accepted: AcceptedConnection) {
        if self.state.get() == ReadyState::Closed {
            self.out.io(IoCommand::CloseConnection { conn: accepted.conn });
        } else if self.backlog.iter().any(|c| c.conn == accepted.conn) {
            // Returned twice: holding it once is what keeps it from being delivered twice.
        } else if let Some(id) = self.pending.pop_front() {
            self.out.event(Event::ListenSettled { id, result: Ok(accepted) });
            self.update_accept_interest();
        } else {
            self.backlog.push_front(accepted);
        }
    }

    /// `close()` (SRV-CLOSE-01..05, A-42). Closed: no effect, the settled `closed` stays as it is.
    fn close(&mut self) {
        match self.state.get() {
            ReadyState::Opening => {
                // SRV-CLOSE-03: opened rejects AbortError, closed resolves (INV-03's exception).
                self.shut(Row::ServerOpeningClose, SocketError::abort(), SocketError::abort(), Ok(()));
            }
            ReadyState::Open => {
                // `opened` is already resolved; the AbortError below only goes to the listens.
                self.shut(Row::ServerOpenClose, SocketError::abort(), SocketError::abort(), Ok(()));
            }
            _ => {}
        }
    }

    /// Every transition to "closed": the state first (GEN-09); then the resources (GEN-14): held
    /// connections, then the listening socket; then `opened` if still pending, the pending
    /// listens in call order, and `closed` last. Delivered connections are not touched (INV-16).
    fn shut(&mut self, row: Row, opened: SocketError, listens: SocketError, closed: Result<(), SocketError>) {
        self.state.set(row, &mut self.out);
        while let Some(held) = self.backlog.pop_front() {
            self.out.io(IoCommand::CloseConnection { conn: held.conn });
        }
        // Closing the listening socket also ends accepting: no AcceptInterest(false) is needed.
        self.accepting = false;
        self.out.io(IoCommand::Close);
        // Ignored when `opened` already settled (INV-01).
        self.opened.settle(Err(opened), &mut self.out, Event::Opened);
        while let Some(id) = self.pending.pop_front() {
            self.out.event(Event::ListenSettled { id, result: Err(listens.clone()) });
        }
        self.closed.settle(closed, &mut self.out, Event::Closed);
    }

    /// Accept from the OS only while open and some `listen()` waits (AMB-40).
    fn update_accept_interest(&mut self) {
        let want = self.state.get() == ReadyState::Open && !self.pending.is_empty();
        if want != self.accepting {
            self.accepting = want;
            self.out.io(IoCommand::AcceptInterest(want));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::address::Remote;
    use crate::error::{Cause, ErrorName};
    use crate::io::ConnId;
    use crate::options::{
        KeepAliveMode, SocketConfig, TcpSpec, DEFAULT_BACKLOG, DEFAULT_CLOSE_TIMEOUT,
        DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEP_ALIVE_COUNT, DEFAULT_TCP_READABLE_HWM, DEFAULT_WRITABLE_HWM,
    };

    const BOUND_PORT: u16 = 40_000;

    fn t0() -> Instant {
        Instant::ZERO
    }

    fn spec() -> ServerSpec {
        ServerSpec {
            local_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 0,
            address_reuse: true,
            use_secure_transport: false,
            backlog: DEFAULT_BACKLOG,
            accepted: std::sync::Arc::new(TcpSpec {
                remote: Remote::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                remote_port: 1,
                local_address: None,
                local_port: None,
                config: SocketConfig {
                    address_reuse: true,
                    no_delay: true,
                    send_buffer_size: None,
                    receive_buffer_size: None,
                },
                keep_alive: KeepAliveMode::Off,
                keep_alive_sparse_interval: None,
                keep_alive_count: DEFAULT_KEEP_ALIVE_COUNT,
                use_secure_transport: false,
                allow_half_open: false,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                close_timeout: DEFAULT_CLOSE_TIMEOUT,
                readable_high_water_mark: DEFAULT_TCP_READABLE_HWM,
                writable_high_water_mark: DEFAULT_WRITABLE_HWM,
            }),
        }
    }

    fn bound() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), BOUND_PORT)
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), port)
    }

    fn conn(n: u64) -> AcceptedConnection {
        AcceptedConnection { conn: ConnId(n), local: bound(), remote: peer(50_000 + n as u16) }
    }

    fn drain(m: &mut TcpServerMachine) -> Vec<Output> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }

    fn server_opening() -> TcpServerMachine {
        let mut m = TcpServerMachine::new(t0(), spec());
        drain(&mut m);
        m
    }

    fn server_open() -> TcpServerMachine {
        let mut m = server_opening();
        io(&mut m, IoEvent::Listening { local: bound() });
        drain(&mut m);
        m
    }

    fn server_closed() -> TcpServerMachine {
        let mut m = server_open();
        app(&mut m, AppCommand::Close);
        drain(&mut m);
        m
    }

    fn app(m: &mut TcpServerMachine, cmd: AppCommand) {
        m.handle(t0(), Input::App(cmd)).expect("server command");
    }

    fn io(m: &mut TcpServerMachine, ev: IoEvent) {
        m.handle(t0(), Input::Io(ev)).expect("server event");
    }

    fn listen(m: &mut TcpServerMachine, id: u64) {
        app(m, AppCommand::Listen { id: ListenId(id) });
    }

    fn accept(m: &mut TcpServerMachine, n: u64) {
        let c = conn(n);
        io(m, IoEvent::Accepted { conn: c.conn, local: c.local, remote: c.remote });
    }

    /// `(id, result)` of every `ListenSettled` in `outs`, in order.
    fn settled(outs: &[Output]) -> Vec<(u64, Result<AcceptedConnection, ErrorName>)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Event(Event::ListenSettled { id, result }) => {
                    Some((id.0, result.clone().map_err(|e| e.kind())))
                }
                _ => None,
            })
            .collect()
    }

    fn has(outs: &[Output], want: &Output) -> bool {
        outs.contains(want)
    }

    fn pos(outs: &[Output], want: &Output) -> usize {
        outs.iter().position(|o| o == want).unwrap_or_else(|| panic!("{want:?} not in {outs:?}"))
    }

    fn state_changed(from: ReadyState, to: ReadyState) -> Output {
        Output::Event(Event::StateChanged { from, to })
    }

    fn closed_event(result: Result<(), SocketError>) -> Output {
        Output::Event(Event::Closed(result))
    }

    /// A server arms no timers, so `handle_lazy` never reads the time: the library passes its
    /// clock lazily and pays no read per `listen()` or accepted connection.
    // rule: SRV-ACCEPT-01
    #[test]
    fn no_input_reads_the_clock() {
        let mut m = server_opening();
        let mut reads = 0;
        let c = conn(1);
        let inputs = [
            Input::Io(IoEvent::Listening { local: bound() }),
            Input::App(AppCommand::Listen { id: ListenId(1) }),
            Input::Io(IoEvent::Accepted { conn: c.conn, local: c.local, remote: c.remote }),
            Input::App(AppCommand::Listen { id: ListenId(2) }),
            Input::App(AppCommand::CancelListen { id: ListenId(2) }),
            Input::Timeout,
            Input::App(AppCommand::Close),
        ];
        for input in inputs {
            let _ = m.handle_lazy(
                &mut || {
                    reads += 1;
                    t0()
                },
                input,
            );
            drain(&mut m);
        }
        assert_eq!(m.ready_state(), ReadyState::Closed);
        assert_eq!(reads, 0, "a server input read the clock");
    }

    // rule: SRV-CTOR-08
    #[test]
    fn test_new_is_opening_and_asks_to_listen() {
        let mut m = TcpServerMachine::new(t0(), ServerSpec { local_port: 8080, backlog: 7, ..spec() });
        assert_eq!(m.ready_state(), ReadyState::Opening);
        assert_eq!(m.opened(), None);
        assert_eq!(m.closed(), None);
        assert_eq!(m.local_addr(), None);
        assert_eq!(m.poll_timeout(), None);
        let outs = drain(&mut m);
        assert_eq!(
            outs,
            [Output::Io(IoCommand::Listen {
                local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
                address_reuse: true,
                backlog: 7,
            })]
        );
    }

    // rule: SRV-CTOR-05, SRV-OPEN-01, GEN-09
    #[test]
    fn test_opening_listening_opens_with_the_bound_port() {
        let mut m = server_opening();
        assert_eq!(m.spec().local_port, 0);
        io(&mut m, IoEvent::Listening { local: bound() });
        let outs = drain(&mut m);
        assert_eq!(
            outs,
            [state_changed(ReadyState::Opening, ReadyState::Open), Output::Event(Event::Opened(Ok(())))]
        );
        assert_eq!(m.ready_state(), ReadyState::Open);
        assert_eq!(m.opened(), Some(&Ok(())));
        assert_eq!(m.closed(), None);
        assert_eq!(m.local_addr(), Some(bound()));
        // No listen waits: the OS backlog holds new connections (AMB-40).
        assert!(!m.accept_interest());
    }

    // rule: SRV-OPEN-02, ERR-06, GEN-14
    #[test]
    fn test_opening_listen_failed_closes_with_network_error() {
        let mut m = server_opening();
        listen(&mut m, 1);
        listen(&mut m, 2);
        assert!(drain(&mut m).is_empty(), "no accept interest while opening");
        io(&mut m, IoEvent::ListenFailed { cause: Cause::AddressInUse });
        let outs = drain(&mut m);
        let ne = SocketError::network(Cause::AddressInUse);
        assert_eq!(m.ready_state(), ReadyState::Closed);
        assert_eq!(m.opened(), Some(&Err(ne.clone())));
        assert_eq!(m.closed(), Some(&Err(ne.clone())));
        assert_eq!(m.local_addr(), None);
        assert_eq!(settled(&outs), [(1, Err(ErrorName::NetworkError)), (2, Err(ErrorName::NetworkError))]);
        let change = pos(&outs, &state_changed(ReadyState::Opening, ReadyState::Closed));
        let release = pos(&outs, &Output::Io(IoCommand::Close));
        let opened = pos(&outs, &Output::Event(Event::Opened(Err(ne.clone()))));
        let closed = pos(&outs, &closed_event(Err(ne)));
        assert!(change < opened && release < closed && opened < closed, "{outs:?}");
        assert_eq!(m.pending_listens(), 0);
    }

    // rule: SRV-ERR-01, GEN-14
    #[test]
    fn test_open_failed_closes_rejects_listens_and_releases_held_connections() {
        let mut m = server_open();
        accept(&mut m, 1); // raced in: held in the machine's backlog
        listen(&mut m, 10); // takes conn 1
        listen(&mut m, 11); // waits
        drain(&mut m);
        // A dropped listen's connection comes back and goes to the waiting call 11.
        let returned = AcceptedConnection { conn: ConnId(7), local: bound(), remote: peer(7) };
        app(&mut m, AppCommand::ReturnConnection { conn: ConnId(7), local: bound(), remote: peer(7) });
        assert_eq!(settled(&drain(&mut m)), [(11, Ok(returned))]);
        accept(&mut m, 2); // no listen waits: held
        listen(&mut m, 12);
        listen(&mut m, 13);
        drain(&mut m);
        accept(&mut m, 3); // 13 waits, so it resolves
        accept(&mut m, 4); // held
        listen(&mut m, 14);
        listen(&mut m, 15);
        drain(&mut m);
        assert_eq!(m.pending_listens(), 1);
        io(&mut m, IoEvent::Failed { cause: Cause::Unreachable });
        let outs = drain(&mut m);
        let ne = SocketError::network(Cause::Unreachable);
        assert_eq!(m.ready_state(), ReadyState::Closed);
        assert_eq!(m.opened(), Some(&Ok(())), "opened keeps its outcome");
        assert_eq!(m.closed(), Some(&Err(ne.clone())));
        assert_eq!(settled(&outs), [(15, Err(ErrorName::NetworkError))]);
        // Only the listening socket is released: every connection was delivered (INV-16).
        assert!(!outs.iter().any(|o| matches!(o, Output::Io(IoCommand::CloseConnection { .. }))));
        assert!(pos(&outs, &Output::Io(IoCommand::Close)) < pos(&outs, &closed_event(Err(ne))));
        assert_eq!(outs[0], state_changed(ReadyState::Open, ReadyState::Closed));
    }

    // rule: SRV-ERR-01, GEN-14
    #[test]
    fn test_open_failed_releases_backlog_connections() {
        let mut m = server_open();
        accept(&mut m, 1);
        accept(&mut m, 2);
        drain(&mut m);
        io(&mut m, IoEvent::Failed { cause: Cause::Other });
        let outs = drain(&mut m);
        let close1 = pos(&outs, &Output::Io(IoCommand::CloseConnection { conn: ConnId(1) }));
        let close2 = pos(&outs, &Output::Io(IoCommand::CloseConnection { conn: ConnId(2) }));
        let closed = pos(&outs, &closed_event(Err(SocketError::network(Cause::Other))));
        assert!(close1 < close2 && close2 < closed);
        assert_eq!(m.backlog_len(), 0);
    }

    // rule: SRV-LISTEN-01, GEN-02, ERR-08
    #[test]
    fn test_closed_listen_rejects_invalid_state_asynchronously() {
        let mut m = server_closed();
        let r = m.handle(t0(), Input::App(AppCommand::Listen { id: ListenId(5) }));
        assert_eq!(r, Ok(()), "listen never fails synchronously");
        let outs = drain(&mut m);
        assert_eq!(settled(&outs), [(5, Err(ErrorName::InvalidStateError))]);
        assert_eq!(outs.len(), 1);
        assert_eq!(m.pending_listens(), 0);
    }

    // rule: SRV-LISTEN-02
    #[test]
    fn test_open_two_listens_are_two_pending_calls() {
        let mut m = server_open();
        listen(&mut m, 1);
        assert_eq!(drain(&mut m), [Output::Io(IoCommand::AcceptInterest(true))]);
        listen(&mut m, 2);
        assert_eq!(drain(&mut m), [], "interest is already on; both calls pending");
        assert_eq!(m.pending_listens(), 2);
        accept(&mut m, 1);
        assert_eq!(settled(&drain(&mut m)), [(1, Ok(conn(1)))]);
        assert_eq!(m.pending_listens(), 1, "each call gets its own connection");
    }

    // rule: SRV-LISTEN-03, GEN-10
    #[test]
    fn test_open_three_listens_are_served_in_call_order() {
        let mut m = server_open();
        for id in [1, 2, 3] {
            listen(&mut m, id);
        }
        drain(&mut m);
        for n in [1, 2, 3] {
            accept(&mut m, n);
        }
        let outs = drain(&mut m);
        assert_eq!(settled(&outs), [(1, Ok(conn(1))), (2, Ok(conn(2))), (3, Ok(conn(3)))]);
        assert_eq!(outs.last(), Some(&Output::Io(IoCommand::AcceptInterest(false))));
        assert!(!m.accept_interest());
    }

    // rule: SRV-LISTEN-03
    #[test]
    fn test_open_connections_without_listen_wait_in_arrival_order() {
        let mut m = server_open();
        accept(&mut m, 1);
        accept(&mut m, 2);
        assert_eq!(drain(&mut m), []);
        assert_eq!(m.backlog_len(), 2);
        listen(&mut m, 1);
        listen(&mut m, 2);
        // Served from the backlog at once: no accept interest needed.
        assert_eq!(settled(&drain(&mut m)), [(1, Ok(conn(1))), (2, Ok(conn(2)))]);
        assert_eq!(m.backlog_len(), 0);
        listen(&mut m, 3);
        assert_eq!(drain(&mut m), [Output::Io(IoCommand::AcceptInterest(true))]);
    }

    // rule: SRV-LISTEN-04
    #[test]
    fn test_opening_listen_resolves_once_open_and_a_connection_arrives() {
        let mut m = server_opening();
        listen(&mut m, 1);
        assert_eq!(drain(&mut m), [], "no accepting before the socket listens");
        io(&mut m, IoEvent::Listening { local: bound() });
        assert_eq!(
            drain(&mut m),
            [
                state_changed(ReadyState::Opening, ReadyState::Open),
                Output::Event(Event::Opened(Ok(()))),
                Output::Io(IoCommand::AcceptInterest(true)),
            ]
        );
        accept(&mut m, 1);
        assert_eq!(
            drain(&mut m),
            [
                Output::Event(Event::ListenSettled { id: ListenId(1), result: Ok(conn(1)) }),
                Output::Io(IoCommand::AcceptInterest(false)),
            ]
        );
    }

    // rule: SRV-ACCEPT-01
    #[test]
    fn test_open_accepted_carries_its_addresses() {
        let mut m = server_open();
        listen(&mut m, 1);
        drain(&mut m);
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), BOUND_PORT);
        let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), 61_234);
        io(&mut m, IoEvent::Accepted { conn: ConnId(42), local, remote });
        let got = settled(&drain(&mut m));
        let expected = AcceptedConnection { conn: ConnId(42), local, remote };
        assert_eq!(got, [(1, Ok(expected))]);
        let acc = m.accepted_spec(&expected);
        assert_eq!((acc.local, acc.remote), (local, remote));
        assert_eq!(acc.tcp, spec().accepted);
    }

    // rule: SRV-CONNFAIL-01
    #[test]
    fn test_open_accept_failed_rejects_the_oldest_listen_and_stays_open() {
        let mut m = server_open();
        listen(&mut m, 1);
        listen(&mut m, 2);
        drain(&mut m);
        io(&mut m, IoEvent::AcceptFailed { cause: Cause::ResourcesExhausted });
        let outs = drain(&mut m);
        assert_eq!(settled(&outs), [(1, Err(ErrorName::NetworkError))]);
        match &outs[..] {
            [Output::Event(Event::ListenSettled { result: Err(e), .. })] => {
                assert_eq!(e.cause(), Some(Cause::ResourcesExhausted));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(m.ready_state(), ReadyState::Open);
        assert_eq!(m.closed(), None);
        accept(&mut m, 1);
        assert_eq!(settled(&drain(&mut m)), [(2, Ok(conn(1)))]);
    }

    // rule: SRV-CONNFAIL-02
    #[test]
    fn test_open_accept_failed_without_listen_is_dropped() {
        let mut m = server_open();
        io(&mut m, IoEvent::AcceptFailed { cause: Cause::ResourcesExhausted });
        assert_eq!(drain(&mut m), []);
        listen(&mut m, 1);
        assert_eq!(drain(&mut m), [Output::Io(IoCommand::AcceptInterest(true))], "no stored failure");
        accept(&mut m, 1);
        assert_eq!(settled(&drain(&mut m)), [(1, Ok(conn(1)))]);
        assert_eq!(m.ready_state(), ReadyState::Open);
    }

    // rule: SRV-CLOSE-01, GEN-06, GEN-09, GEN-14
    #[test]
    fn test_open_close_resolves_closed() {
        let mut m = server_open();
        app(&mut m, AppCommand::Close);
        let outs = drain(&mut m);
        assert_eq!(
            outs,
            [
                state_changed(ReadyState::Open, ReadyState::Closed),
                Output::Io(IoCommand::Close),
                closed_event(Ok(())),
            ]
        );
        assert_eq!(m.ready_state(), ReadyState::Closed);
        assert_eq!(m.closed(), Some(&Ok(())));
        assert_eq!(m.opened(), Some(&Ok(())));
        assert_eq!(m.local_addr(), Some(bound()), "the bound address stays known");
    }

    // rule: SRV-CLOSE-02, GEN-14
    #[test]
    fn test_open_close_stops_listening_and_leaves_delivered_connections_alone() {
        let mut m = server_open();
        listen(&mut m, 1);
        accept(&mut m, 1); // delivered
        accept(&mut m, 2); // held
        drain(&mut m);
        app(&mut m, AppCommand::Close);
        let outs = drain(&mut m);
        let releases: Vec<&Output> =
            outs.iter().filter(|o| matches!(o, Output::Io(IoCommand::CloseConnection { .. }))).collect();
        assert_eq!(releases, [&Output::Io(IoCommand::CloseConnection { conn: ConnId(2) })]);
        assert!(has(&outs, &Output::Io(IoCommand::Close)));
        // A connection the backend accepted before it saw Close is released, not delivered.
        accept(&mut m, 3);
        assert_eq!(drain(&mut m), [Output::Io(IoCommand::CloseConnection { conn: ConnId(3) })]);
        // Late listening-socket reports change nothing.
        io(&mut m, IoEvent::Listening { local: bound() });
        io(&mut m, IoEvent::AcceptFailed { cause: Cause::Other });
        io(&mut m, IoEvent::Failed { cause: Cause::Other });
        assert_eq!(drain(&mut m), []);
        assert_eq!(m.closed(), Some(&Ok(())));
    }

    // rule: SRV-CLOSE-03, ERR-07, GEN-09, GEN-14
    #[test]
    fn test_opening_close_rejects_opened_abort_and_resolves_closed() {
        let mut m = server_opening();
        app(&mut m, AppCommand::Close);
        let outs = drain(&mut m);
        assert_eq!(
            outs,
            [
                state_changed(ReadyState::Opening, ReadyState::Closed),
                Output::Io(IoCommand::Close),
                Output::Event(Event::Opened(Err(SocketError::abort()))),
                closed_event(Ok(())),
            ]
        );
        assert_eq!(m.opened().map(|r| r.as_ref().map_err(|e| e.kind())), Some(Err(ErrorName::AbortError)));
        assert_eq!(m.closed(), Some(&Ok(())));
        // The listening socket reported after close: ignored (the backend got Close).
        io(&mut m, IoEvent::Listening { local: bound() });
        assert_eq!(drain(&mut m), []);
        assert_eq!(m.ready_state(), ReadyState::Closed);
        assert_eq!(m.local_addr(), None);
    }

    // rule: SRV-CLOSE-04, ERR-07
    #[test]
    fn test_open_close_rejects_pending_listens_with_abort_error() {
        let mut m = server_open();
        listen(&mut m, 1);
        listen(&mut m, 2);
        drain(&mut m);
        app(&mut m, AppCommand::Close);
        let outs = drain(&mut m);
        assert_eq!(settled(&outs), [(1, Err(ErrorName::AbortError)), (2, Err(ErrorName::AbortError))]);
        assert_eq!(outs.last(), Some(&closed_event(Ok(()))), "closed settles last");
        assert_eq!(m.pending_listens(), 0);
        assert!(!m.accept_interest());
    }

    // rule: SRV-CLOSE-04, ERR-07
    #[test]
    fn test_opening_close_rejects_pending_listens_with_abort_error() {
        let mut m = server_opening();
        listen(&mut m, 1);
        app(&mut m, AppCommand::Close);
        assert_eq!(settled(&drain(&mut m)), [(1, Err(ErrorName::AbortError))]);
    }

    // rule: SRV-CLOSE-05, GEN-06
    #[test]
    fn test_closed_close_again_keeps_the_original_outcome() {
        let mut m = server_open();
        io(&mut m, IoEvent::Failed { cause: Cause::Reset });
        drain(&mut m);
        let first = m.closed().cloned();
        assert_eq!(first.clone().map(|r| r.map_err(|e| e.kind())), Some(Err(ErrorName::NetworkError)));
        app(&mut m, AppCommand::Close);
        assert_eq!(drain(&mut m), [], "no new effects");
        assert_eq!(m.closed().cloned(), first);
        let mut m = server_closed();
        app(&mut m, AppCommand::Close);
        assert_eq!(drain(&mut m), []);
        assert_eq!(m.closed(), Some(&Ok(())));
    }

    // rule: GEN-05
    #[test]
    fn test_open_opened_and_closed_keep_one_outcome() {
        let mut m = server_opening();
        io(&mut m, IoEvent::Listening { local: bound() });
        let before = m.opened().cloned();
        // A second report of the listening socket settles nothing again.
        io(&mut m, IoEvent::Listening { local: peer(1) });
        io(&mut m, IoEvent::ListenFailed { cause: Cause::Other });
        let outs = drain(&mut m);
        assert_eq!(outs.iter().filter(|o| matches!(o, Output::Event(Event::Opened(_)))).count(), 1);
        assert_eq!(m.opened().cloned(), before);
        assert_eq!(m.local_addr(), Some(bound()));
        app(&mut m, AppCommand::Close);
        io(&mut m, IoEvent::Failed { cause: Cause::Other });
        app(&mut m, AppCommand::Close);
        let outs = drain(&mut m);
        assert_eq!(outs.iter().filter(|o| matches!(o, Output::Event(Event::Closed(_)))).count(), 1);
        assert_eq!(m.closed(), Some(&Ok(())));
        assert_eq!(m.opened(), Some(&Ok(())));
    }

    // rule: GEN-11
    #[test]
    fn test_open_cancel_listen_gives_its_place_to_the_next_call() {
        let mut m = server_open();
        listen(&mut m, 1);
        listen(&mut m, 2);
        drain(&mut m);
        app(&mut m, AppCommand::CancelListen { id: ListenId(1) });
        app(&mut m, AppCommand::CancelListen { id: ListenId(99) }); // unknown: no-op
        assert_eq!(drain(&mut m), []);
        assert_eq!(m.pending_listens(), 1);
        accept(&mut m, 1);
        assert_eq!(settled(&drain(&mut m)), [(2, Ok(conn(1)))]);
    }

    // rule: GEN-11
    #[test]
    fn test_open_cancel_last_listen_stops_accepting_and_keeps_the_connection_for_later() {
        let mut m = server_open();
        listen(&mut m, 1);
        drain(&mut m);
        app(&mut m, AppCommand::CancelListen { id: ListenId(1) });
        assert_eq!(drain(&mut m), [Output::Io(IoCommand::AcceptInterest(false))]);
        // The backend raced and accepted anyway: held for the next listen.
        accept(&mut m, 1);
        assert_eq!(drain(&mut m), []);
        listen(&mut m, 2);
        assert_eq!(settled(&drain(&mut m)), [(2, Ok(conn(1)))]);
    }

    // rule: GEN-11
    #[test]
    fn test_open_returned_connection_goes_to_the_next_listen_or_first_in_backlog() {
        let mut m = server_open();
        listen(&mut m, 1);
        accept(&mut m, 1);
        drain(&mut m);
        // Listen 1's future was dropped before taking conn 1; conn 2 arrived meanwhile.
        accept(&mut m, 2);
        let c1 = conn(1);
        app(&mut m, AppCommand::ReturnConnection { conn: c1.conn, local: c1.local, remote: c1.remote });
        app(&mut m, AppCommand::ReturnConnection { conn: c1.conn, local: c1.local, remote: c1.remote });
        assert_eq!(m.backlog_len(), 2, "a second return does not duplicate it");
        listen(&mut m, 2);
        listen(&mut m, 3);
        assert_eq!(settled(&drain(&mut m)), [(2, Ok(conn(1))), (3, Ok(conn(2)))]);
        // With a call waiting, a returned connection goes straight to it.
        listen(&mut m, 4);
        drain(&mut m);
        let c3 = conn(3);
        app(&mut m, AppCommand::ReturnConnection { conn: c3.conn, local: c3.local, remote: c3.remote });
        assert_eq!(settled(&drain(&mut m)), [(4, Ok(conn(3)))]);
    }

    // rule: GEN-11, SRV-CLOSE-02
    #[test]
    fn test_closed_returned_connection_is_released() {
        let mut m = server_closed();
        let c = conn(1);
        app(&mut m, AppCommand::ReturnConnection { conn: c.conn, local: c.local, remote: c.remote });
        assert_eq!(drain(&mut m), [Output::Io(IoCommand::CloseConnection { conn: ConnId(1) })]);
    }

    #[test]
    fn test_open_duplicate_listen_id_rejects_type_error_and_keeps_the_first() {
        let mut m = server_open();
        listen(&mut m, 1);
        drain(&mut m);
        listen(&mut m, 1);
        assert_eq!(settled(&drain(&mut m)), [(1, Err(ErrorName::TypeError))]);
        assert_eq!(m.pending_listens(), 1);
        accept(&mut m, 1);
        assert_eq!(settled(&drain(&mut m)), [(1, Ok(conn(1)))]);
    }

    #[test]
    fn test_any_state_other_kind_inputs_are_type_errors_without_effect() {
        for mut m in [server_opening(), server_open(), server_closed()] {
            let state = m.ready_state();
            let cmds = [
                AppCommand::Read,
                AppCommand::Write { id: crate::io::WriteId(1), data: bytes::Bytes::from_static(b"x") },
                AppCommand::WriterClose,
                AppCommand::WriterAbort { reason: None },
                AppCommand::HalfClose,
                AppCommand::Reset,
                AppCommand::StartTls,
                AppCommand::JoinMulticast { group: IpAddr::V4(Ipv4Addr::new(239, 0, 0, 1)) },
            ];
            for cmd in cmds {
                let r = m.handle(t0(), Input::App(cmd));
                assert_eq!(r.map_err(|e| e.kind()), Err(ErrorName::TypeError));
            }
            let events = [
                IoEvent::Connected { local: bound(), remote: peer(1) },
                IoEvent::Received(bytes::Bytes::from_static(b"x")),
                IoEvent::Bound { local: bound() },
                IoEvent::TlsDone { alpn: None },
            ];
            for ev in events {
                let r = m.handle(t0(), Input::Io(ev));
                assert_eq!(r.map_err(|e| e.kind()), Err(ErrorName::TypeError));
            }
            let r = m.handle(t0(), Input::Open(Box::new(crate::io::OpenSpec::TcpServer(spec()))));
            assert_eq!(r.map_err(|e| e.kind()), Err(ErrorName::InvalidStateError));
            assert_eq!(m.handle(t0(), Input::Timeout), Ok(()));
            assert_eq!(drain(&mut m), []);
            assert_eq!(m.ready_state(), state);
            assert_eq!(m.poll_timeout(), None);
        }
    }

    // rule: STATE-06
    #[test]
    fn test_any_path_never_reports_closing_or_halfclosed() {
        let paths: [&[Input]; 4] = [
            &[Input::Io(IoEvent::Listening { local: bound() }), Input::App(AppCommand::Close)],
            &[Input::Io(IoEvent::ListenFailed { cause: Cause::Other })],
            &[Input::App(AppCommand::Close)],
            &[
                Input::Io(IoEvent::Listening { local: bound() }),
                Input::Io(IoEvent::Failed { cause: Cause::Reset }),
            ],
        ];
        for path in paths {
            let mut m = TcpServerMachine::new(t0(), spec());
            let mut seen = vec![m.ready_state()];
            for input in path {
                m.handle(t0(), input.clone()).expect("server input");
                for out in drain(&mut m) {
                    if let Output::Event(Event::StateChanged { to, .. }) = out {
                        seen.push(to);
                    }
                }
            }
            assert!(!seen.contains(&ReadyState::Closing) && !seen.contains(&ReadyState::HalfClosed));
            assert_eq!(seen.last(), Some(&ReadyState::Closed), "{path:?}");
        }
    }

    /// One step of the INV-15 property test.
    #[derive(Clone, Debug)]
    enum Op {
        Listening,
        Listen,
        /// Cancel the pending listen at this index (mod the number pending), if any.
        Cancel(usize),
        Accepted,
        AcceptFailed,
        /// Return the delivered connection at this index (mod the number held), if any.
        Return(usize),
        Close,
        Failed,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => Just(Op::Listening),
            4 => Just(Op::Listen),
            1 => any::<usize>().prop_map(Op::Cancel),
            4 => Just(Op::Accepted),
            1 => Just(Op::AcceptFailed),
            1 => any::<usize>().prop_map(Op::Return),
            1 => Just(Op::Close),
            1 => Just(Op::Failed),
        ]
    }

    /// Where a connection is, as seen from outside the machine.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Loc {
        Machine,
        App,
        Released,
    }

    proptest! {
        // rule: SRV-LISTEN-03, SRV-CLOSE-04, GEN-10, GEN-11, STATE-06, INV-15
        #[test]
        fn prop_every_connection_goes_to_one_listen_in_call_order_or_is_released(
            ops in proptest::collection::vec(op(), 0..60)
        ) {
            let mut m = server_opening();
            let mut next_listen = 0u64;
            let mut next_conn = 0u64;
            // Listens the model expects the machine to hold, in call order.
            let mut waiting: VecDeque<ListenId> = VecDeque::new();
            let mut loc: BTreeMap<ConnId, Loc> = BTreeMap::new();
            let mut interest = false;
            let mut closed = false;
            for op in ops.into_iter().chain([Op::Close]) {
                // The id of a listen made on a closed server: it must be rejected at once.
                let mut on_closed = None;
                match op {
                    Op::Listening => io(&mut m, IoEvent::Listening { local: bound() }),
                    Op::Listen => {
                        next_listen += 1;
                        if closed {
                            on_closed = Some(ListenId(next_listen));
                        } else {
                            waiting.push_back(ListenId(next_listen));
                        }
                        listen(&mut m, next_listen);
                    }
                    Op::Cancel(i) => {
                        if !waiting.is_empty() {
                            let id = waiting.remove(i % waiting.len()).expect("index in range");
                            app(&mut m, AppCommand::CancelListen { id });
                        }
                    }
                    Op::Accepted => {
                        next_conn += 1;
                        loc.insert(ConnId(next_conn), Loc::Machine);
                        accept(&mut m, next_conn);
                    }
                    Op::AcceptFailed => io(&mut m, IoEvent::AcceptFailed { cause: Cause::ResourcesExhausted }),
                    Op::Return(i) => {
                        let held: Vec<ConnId> =
                            loc.iter().filter(|(_, l)| **l == Loc::App).map(|(c, _)| *c).collect();
                        if !held.is_empty() {
                            let c = conn(held[i % held.len()].0);
                            loc.insert(c.conn, Loc::Machine);
                            app(&mut m, AppCommand::ReturnConnection { conn: c.conn, local: c.local, remote: c.remote });
                        }
                    }
                    Op::Close => app(&mut m, AppCommand::Close),
                    Op::Failed => io(&mut m, IoEvent::Failed { cause: Cause::Reset }),
                }
                for out in drain(&mut m) {
                    match out {
                        Output::Event(Event::StateChanged { to, .. }) => {
                            prop_assert!(to == ReadyState::Open || to == ReadyState::Closed);
                            if to == ReadyState::Closed {
                                closed = true;
                            }
                        }
                        Output::Event(Event::ListenSettled { id, result }) => {
                            if on_closed == Some(id) {
                                prop_assert_eq!(result.map_err(|e| e.kind()), Err(ErrorName::InvalidStateError));
                                continue;
                            }
                            // Served in call order: always the oldest waiting call.
                            prop_assert_eq!(waiting.pop_front(), Some(id));
                            if let Ok(c) = result {
                                prop_assert!(!closed, "a connection after closed");
                                prop_assert_eq!(loc.insert(c.conn, Loc::App), Some(Loc::Machine));
                                prop_assert_eq!(c, conn(c.conn.0));
                            }
                        }
                        Output::Io(IoCommand::CloseConnection { conn }) => {
                            prop_assert!(closed);
                            prop_assert_eq!(loc.insert(conn, Loc::Released), Some(Loc::Machine));
                        }
                        Output::Io(IoCommand::AcceptInterest(on)) => {
                            prop_assert_ne!(on, interest, "a repeated AcceptInterest");
                            interest = on;
                        }
                        _ => {}
                    }
                }
                prop_assert_eq!(m.pending_listens(), waiting.len());
                let in_machine = loc.values().filter(|l| **l == Loc::Machine).count();
                prop_assert_eq!(m.backlog_len(), in_machine, "a connection was lost or duplicated");
                prop_assert!(m.pending_listens() == 0 || m.backlog_len() == 0);
                let want = m.ready_state() == ReadyState::Open && m.pending_listens() > 0;
                prop_assert_eq!(m.accept_interest(), want);
                if m.ready_state() == ReadyState::Open {
                    prop_assert_eq!(interest, want);
                }
            }
            // After the final close nothing waits and nothing is held: every connection is with
            // the application or released.
            prop_assert!(closed);
            prop_assert!(waiting.is_empty());
            prop_assert!(loc.values().all(|l| *l != Loc::Machine));
        }
    }
}

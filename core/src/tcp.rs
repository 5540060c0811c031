//! `TCPSocket`: read RULES.md §4 (TCP-*), §9.2 and §9.4 (EXT-01 to EXT-07) before editing.
//!
//! One [`TcpMachine`] per socket. It owns the readyState, the `opened`/`closed` promises, the
//! readable queue (bytes, high-water mark, read interest) and the writable queue (one write handed to
//! the transport at a time, so an abort can still discard the rest, A-18).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::address::Remote;
use crate::common::{Outbox, Promise, StateCell};
use crate::error::{Cause, ErrorName, SocketError, TlsCause};
use crate::io::{
    AppCommand, Deadline, Event, Input, IoCommand, IoEvent, Output, ReadResult, TimerKind, WriteId,
};
use crate::options::{
    AcceptedSpec, KeepAlive, KeepAliveMode, TcpSpec, KEEP_ALIVE_FREQUENT, KEEP_ALIVE_FREQUENT_SPAN,
};
use crate::state::{ReadyState, Row, SocketKind};
use crate::time::{DeadlineSlot, Instant};

/// The sans-IO machine of one `TCPSocket`.
#[derive(Debug)]
pub struct TcpMachine {
    /// Behind a pointer: read only at connect, on timers and for high-water marks, and 160 bytes
    /// inline would keep the glue's per-socket allocation out of the allocator's fast size
    /// classes. Shared: an accepted socket's is its server's (no allocation per connection).
    spec: Arc<TcpSpec>,
    state: StateCell,
    opened: Promise,
    closed: Promise,
    out: Outbox,
    phase: Phase,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    alpn: Option<Box<[u8]>>,
    readable: Readable,
    writable: Writable,
    connect_deadline: DeadlineSlot,
    close_deadline: DeadlineSlot,
    keep_alive_switch: DeadlineSlot,
}

/// Where the connection is, below the readyState.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Waiting for the resolver.
    Resolving,
    /// Trying one address; `candidates[next..]` follow in resolver order (AMB-60).
    Connecting { candidates: Vec<IpAddr>, next: usize },
    /// TCP is up; the TLS handshake runs (EXT-05), or `start_tls()` upgrades an open socket (EXT-07).
    Handshaking,
    /// Connected; data may flow.
    Established,
    /// Released.
    Gone,
}

#[derive(Debug)]
struct Readable {
    queue: VecDeque<Bytes>,
    bytes: usize,
    end: Option<ReadEnd>,
    /// The peer's FIN arrived; it reads as done after the queued data.
    peer_fin: bool,
    interest: bool,
    reader_waiting: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadEnd {
    Done,
    Errored(SocketError),
}

#[derive(Debug)]
struct Writable {
    queue: VecDeque<QueuedWrite>,
    /// Bytes of writes not yet settled that will be sent (desired size = hwm − bytes).
    bytes: usize,
    in_flight: Option<(WriteId, usize)>,
    last_id: Option<WriteId>,
    /// Set once the writable no longer accepts writes: the error later writes get.
    refuse: Option<SocketError>,
    /// Set when every queued (not in-flight) write must be rejected with it (abort, error).
    discard: Option<SocketError>,
    fin_requested: bool,
    fin_sent: bool,
    fin_done: bool,
}

#[derive(Debug)]
struct QueuedWrite {
    id: WriteId,
    data: Bytes,
    reject: Option<SocketError>,
}

impl TcpMachine {
    /// A `TCPSocket` constructor succeeded: starts "opening" and asks to resolve or connect.
    pub fn new(now: Instant, spec: TcpSpec) -> Self {
        let mut m = Self::blank(Arc::new(spec), ReadyState::Opening);
        m.connect_deadline = DeadlineSlot::at(now + m.spec.connect_timeout);
        match m.spec.remote.clone() {
            Remote::Name(name) => {
                m.phase = Phase::Resolving;
                m.out.io(IoCommand::Resolve { name });
            }
            // One candidate and none after it (no allocation for the list).
            Remote::Ip(ip) => m.connect_to(ip, Vec::new(), 0),
        }
        m
    }

    /// A socket a server accepted: "open" from the start with `opened` resolved (AMB-39).
    pub fn accepted(now: Instant, spec: AcceptedSpec) -> Self {
        Self::accepted_lazy(&mut || now, spec)
    }

    /// As [`accepted`](Self::accepted), with the time read from `now` only if a deadline is armed
    /// at once (none is: the connection is already established).
    pub fn accepted_lazy(now: &mut dyn FnMut() -> Instant, spec: AcceptedSpec) -> Self {
        let mut m = Self::blank(spec.tcp, ReadyState::Open);
        m.local = Some(spec.local);
        m.remote = Some(spec.remote);
        m.phase = Phase::Established;
        m.opened.settle(Ok(()), &mut m.out, Event::Opened);
        m.start_established(now);
        m
    }

    fn blank(spec: Arc<TcpSpec>, state: ReadyState) -> Self {
        TcpMachine {
            spec,
            state: StateCell::new(SocketKind::Tcp, state),
            opened: Promise::Pending,
            closed: Promise::Pending,
            out: Outbox::new(),
            phase: Phase::Resolving,
            local: None,
            remote: None,
            alpn: None,
            readable: Readable {
                queue: VecDeque::new(),
                bytes: 0,
                end: None,
                peer_fin: false,
                interest: false,
                reader_waiting: false,
            },
            writable: Writable {
                queue: VecDeque::new(),
                bytes: 0,
                in_flight: None,
                last_id: None,
                refuse: None,
                discard: None,
                fin_requested: false,
                fin_sent: false,
                fin_done: false,
            },
            connect_deadline: DeadlineSlot::NONE,
            close_deadline: DeadlineSlot::NONE,
            keep_alive_switch: DeadlineSlot::NONE,
        }
    }

    /// Handles one input. `Err` is what the spec throws synchronously (only `start_tls()` misuse
    /// and commands of another socket kind); everything else is reported through events.
    #[inline]
    pub fn handle(&mut self, now: Instant, input: Input) -> Result<(), SocketError> {
        self.handle_lazy(&mut || now, input)
    }

    /// As [`handle`](Self::handle), with the time read from `now` only when a transition needs it
    /// (to arm or fire a timer). Data inputs (reads, writes, received data, written data) never
    /// need it, so a caller whose clock read costs something pays it only on the rare transitions.
    #[inline]
    pub fn handle_lazy(&mut self, now: &mut dyn FnMut() -> Instant, input: Input) -> Result<(), SocketError> {
        match input {
            Input::Open(_) => {
                Err(SocketError::invalid_state().with_message("the socket is already constructed"))
            }
            Input::App(cmd) => self.handle_app(now, cmd),
            Input::Io(ev) => self.handle_io(now, ev),
            Input::Timeout => {
                self.handle_timeout(now());
                Ok(())
            }
        }
    }

    /// The next output, in the order produced; call until `None` after every `handle`.
    #[inline]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    /// The earliest armed timer.
    pub fn poll_timeout(&self) -> Option<Deadline> {
        [
            (self.connect_deadline.get(), TimerKind::Connect),
            (self.close_deadline.get(), TimerKind::Close),
            (self.keep_alive_switch.get(), TimerKind::KeepAliveSparse),
        ]
        .into_iter()
        .filter_map(|(at, kind)| at.map(|at| Deadline { at, kind }))
        .min_by_key(|d| d.at)
    }

    /// The readyState.
    pub fn ready_state(&self) -> ReadyState {
        self.state.get()
    }

    /// `opened`'s outcome, `None` while pending.
    pub fn opened(&self) -> Option<&Result<(), SocketError>> {
        self.opened.outcome()
    }

    /// `closed`'s outcome, `None` while pending.
    pub fn closed(&self) -> Option<&Result<(), SocketError>> {
        self.closed.outcome()
    }

    /// The local address and port, once connected (TCP-CTOR-08, TCP-CTOR-09).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The peer's address and port, once connected.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// The ALPN protocol TLS negotiated, once open.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// The writable's desired size: high-water mark minus the bytes of unsettled writes.
    pub fn desired_size(&self) -> i64 {
        self.spec.writable_high_water_mark as i64 - self.writable.bytes as i64
    }

    /// Bytes waiting in the readable queue.
    pub fn queued_read_bytes(&self) -> usize {
        self.readable.bytes
    }

    /// Bytes of writes not yet settled.
    pub fn queued_write_bytes(&self) -> usize {
        self.writable.bytes
    }

    /// Whether the machine currently wants the transport read.
    pub fn read_interest(&self) -> bool {
        self.readable.interest
    }

    /// The checked specification the socket was built from.
    pub fn spec(&self) -> &TcpSpec {
        &self.spec
    }

    /// Gives back the capacity of empty queues, so an idle socket keeps little state (DESIGN §5:
    /// ≤ 2 KiB). The driver calls it when it goes idle; the next data allocates again.
    pub fn release_idle_buffers(&mut self) {
        self.out.release_if_empty();
        if self.readable.queue.is_empty() && self.readable.queue.capacity() > 0 {
            self.readable.queue = VecDeque::new();
        }
        if self.writable.queue.is_empty() && self.writable.queue.capacity() > 0 {
            self.writable.queue = VecDeque::new();
        }
    }

    /// Mutation testing: make the state refuse one §9 row (the `mutants` command).
    #[cfg(feature = "mutations")]
    pub fn disable_row(&mut self, row: Option<Row>) {
        self.state.disable(row);
    }

    // ---- the write shortcut ---------------------------------------------------------------

    /// The data path's shortcut for the common write, quinn-style: a non-empty write the machine
    /// would hand straight to the backend is taken in flight here, with no input or output. That
    /// is when the connection is established (no TLS upgrade in progress), no write is queued or
    /// in flight, the writable accepts writes and `id` is above the last one. The caller writes it
    /// at once and reports it written with [`send_done`](Self::send_done), settling the write's
    /// promise itself; anything else (a partial write that must wait, a failure) it reports as
    /// usual through [`handle`](Self::handle) (`Wrote` settles with `WriteSettled`).
    ///
    /// `false` changes nothing: the caller hands the write in as `AppCommand::Write`.
    pub fn send_at_once(&mut self, id: WriteId, len: usize) -> bool {
        let idle = self.phase == Phase::Established
            && len > 0
            && self.writable.in_flight.is_none()
            && self.writable.queue.is_empty()
            && self.writable.discard.is_none()
            && self.writable.refuse.is_none();
        if !idle || self.writable.last_id.is_some_and(|last| id <= last) {
            return false;
        }
        self.writable.last_id = Some(id);
        self.writable.bytes += len;
        self.writable.in_flight = Some((id, len));
        true
    }

    /// A write taken with [`send_at_once`](Self::send_at_once) was written whole at once: it
    /// settles without a `WriteSettled` event (the caller settles its promise). `false` when
    /// `id` is not the write in flight (nothing changes).
    pub fn send_done(&mut self, id: WriteId) -> bool {
        match self.writable.in_flight {
            Some((in_flight, len)) if in_flight == id => {
                self.writable.in_flight = None;
                let was_full = self.desired_size() <= 0;
                self.writable.bytes -= len;
                if was_full && self.desired_size() > 0 {
                    self.out.event(Event::WritableReady);
                }
                self.pump();
                true
            }
            _ => false,
        }
    }

    // ---- the read shortcut ----------------------------------------------------------------

    /// The data path's shortcut for the common read, quinn-style: the next received chunk,
    /// exactly as `AppCommand::Read` would hand it out while the readable has not ended, with no
    /// input and no `Read` event. `None` when the readable ended or nothing is queued: the caller
    /// reads through `AppCommand::Read`, which reports the end (done, an error, the peer's FIN
    /// with its auto-close) or waits for data.
    pub fn take_chunk(&mut self) -> Option<Bytes> {
        if self.readable.end.is_some() {
            return None;
        }
        let chunk = self.readable.queue.pop_front()?;
        self.readable.bytes -= chunk.len();
        self.update_read_interest();
        Some(chunk)
    }

    /// Whether a chunk received now may go straight to the reader asking for it, with no input
    /// ([`deliver_at_once`](Self::deliver_at_once)): the stream is open to data, nothing is
    /// queued and reading is on. Ask before reading the transport.
    pub fn may_deliver_at_once(&self) -> bool {
        self.phase == Phase::Established
            && self.readable.queue.is_empty()
            && self.readable.end.is_none()
            && !self.readable.peer_fin
            && self.readable.interest
    }

    /// The receive shortcut: the caller, a reader with nothing queued, read a (non-empty) chunk
    /// from the transport and hands it to itself. Received and taken at once, the chunk would
    /// leave the queue empty and reading on, as they are: only the reader's earlier wait ends
    /// (its `Readable` is not needed: the reader is here). `false` when
    /// [`may_deliver_at_once`](Self::may_deliver_at_once) is not true (nothing changes): the
    /// caller hands the chunk in as `IoEvent::Received`. An end of stream or a failure the read
    /// found always goes in through [`handle`](Self::handle).
    pub fn deliver_at_once(&mut self) -> bool {
        if !self.may_deliver_at_once() {
            return false;
        }
        self.readable.reader_waiting = false;
        true
    }

    /// The wait shortcut: the caller, a reader with nothing queued, found the transport's read
    /// side empty, and waits. Exactly what `AppCommand::Read` does then (it only notes the
    /// reader waiting, for a `Readable` when data comes), with no input. `false` when
    /// [`may_deliver_at_once`](Self::may_deliver_at_once) is not true (nothing changes): the
    /// caller reads through `AppCommand::Read`.
    pub fn wait_at_once(&mut self) -> bool {
        if !self.may_deliver_at_once() {
            return false;
        }
        self.readable.reader_waiting = true;
        true
    }

    // ---- application commands -------------------------------------------------------------

    fn handle_app(&mut self, now: &mut dyn FnMut() -> Instant, cmd: AppCommand) -> Result<(), SocketError> {
        match cmd {
            AppCommand::Read => self.read(now),
            AppCommand::Close => self.close(now),
            AppCommand::Write { id, data } => self.write(id, data),
            AppCommand::HalfClose | AppCommand::WriterClose => self.half_close(now),
            AppCommand::WriterAbort { reason } => {
                let err = match reason {
                    Some(r) => SocketError::abort().with_message(r),
                    None => SocketError::abort(),
                };
                self.abort_writable(now, err);
            }
            AppCommand::Reset => self.reset(),
            AppCommand::StartTls => return self.start_tls(),
            AppCommand::SendDatagram { .. }
            | AppCommand::Listen { .. }
            | AppCommand::CancelListen { .. }
            | AppCommand::ReturnConnection { .. }
            | AppCommand::JoinMulticast { .. }
            | AppCommand::LeaveMulticast { .. } => {
                return Err(SocketError::type_error().with_message("not a TCPSocket operation"))
            }
        }
        Ok(())
    }

    fn read(&mut self, now: &mut dyn FnMut() -> Instant) {
        if let Some(end) = &self.readable.end {
            let result = match end {
                ReadEnd::Done => ReadResult::Done,
                ReadEnd::Errored(e) => ReadResult::Error(e.clone()),
            };
            self.out.event(Event::Read(result));
            return;
        }
        if let Some(chunk) = self.readable.queue.pop_front() {
            self.readable.bytes -= chunk.len();
            self.out.event(Event::Read(ReadResult::Chunk(chunk)));
            self.update_read_interest();
            return;
        }
        if self.readable.peer_fin {
            self.readable.end = Some(ReadEnd::Done);
            self.readable.reader_waiting = false;
            self.out.event(Event::Read(ReadResult::Done));
            // the auto-close fires when the application has read done, not when the FIN came.
            if self.state.get() == ReadyState::Open && !self.spec.allow_half_open {
                self.begin_closing(now, Row::TcpOpenPeerFinAutoClose);
            }
            return;
        }
        self.readable.reader_waiting = true;
    }

    fn write(&mut self, id: WriteId, data: Bytes) {
        let mut reject = self.writable.discard.clone().or_else(|| self.writable.refuse.clone());
        if self.writable.last_id.is_some_and(|last| id <= last) {
            reject = Some(SocketError::type_error().with_message("write ids must increase"));
        } else {
            self.writable.last_id = Some(id);
        }
        if reject.is_none() {
            self.writable.bytes += data.len();
        }
        self.writable.queue.push_back(QueuedWrite { id, data, reject });
        self.pump();
    }

    fn half_close(&mut self, now: &mut dyn FnMut() -> Instant) {
        if !self.writable_accepts_close() {
            return; // A-51, TCP-WRITE-CLOSE-02/05: no second FIN, no error.
        }
        self.writable.refuse = Some(closed_stream());
        self.writable.fin_requested = true;
        match self.state.get() {
            // TCP-WRITE-CLOSE-03: carried out once connected.
            ReadyState::Opening => {}
            ReadyState::Open if self.readable.peer_fin && self.spec.allow_half_open => {
                self.begin_closing(now, Row::TcpOpenHalfOpenClose);
            }
            ReadyState::Open => {
                self.state.set(Row::TcpOpenHalfClose, &mut self.out);
            }
            _ => {}
        }
        self.pump();
        self.check_closing_complete();
    }

    fn writable_accepts_close(&self) -> bool {
        matches!(self.state.get(), ReadyState::Opening | ReadyState::Open) && !self.writable.fin_requested
    }

    fn abort_writable(&mut self, now: &mut dyn FnMut() -> Instant, err: SocketError) {
        if !self.writable_accepts_close() {
            // Already closing: still discard what has not been handed over, FIN stays as planned.
            if !self.writable.fin_sent && self.state.get() != ReadyState::Closed {
                self.discard_queued(err);
                self.pump();
            }
            return;
        }
        self.discard_queued(err.clone());
        self.half_close(now);
        self.writable.refuse = Some(err);
    }

    /// Every write not yet handed over rejects with `err`, in order after the in-flight one.
    fn discard_queued(&mut self, err: SocketError) {
        for w in &mut self.writable.queue {
            if w.reject.is_none() {
                self.writable.bytes -= w.data.len();
                w.reject = Some(err.clone());
            }
        }
        self.writable.discard = Some(err);
    }

    fn close(&mut self, now: &mut dyn FnMut() -> Instant) {
        match self.state.get() {
            ReadyState::Opening => {
                let err = SocketError::abort();
                self.state.set(Row::TcpOpeningClose, &mut self.out);
                self.end_readable(ReadEnd::Done);
                self.release(IoCommand::Close);
                self.opened.settle(Err(err.clone()), &mut self.out, Event::Opened);
                self.fail_writable(err.clone());
                self.closed.settle(Err(err), &mut self.out, Event::Closed);
            }
            ReadyState::Open => {
                let row = if self.readable.peer_fin && self.spec.allow_half_open {
                    Row::TcpOpenHalfOpenClose
                } else {
                    Row::TcpOpenClose
                };
                self.end_readable(ReadEnd::Done);
                self.begin_closing(now, row);
            }
            ReadyState::HalfClosed => {
                self.end_readable(ReadEnd::Done);
                self.begin_closing(now, Row::TcpHalfClosedClose);
            }
            ReadyState::Closing | ReadyState::Closed => {} // TCP-READ-CANCEL-01, INV-12.
        }
    }

    /// Enters "closing": the internal writable close flushes, then sends FIN; the close
    /// timeout bounds the whole handshake.
    fn begin_closing(&mut self, now: &mut dyn FnMut() -> Instant, row: Row) {
        self.state.set(row, &mut self.out);
        if self.writable.refuse.is_none() {
            self.writable.refuse = Some(closed_stream());
        }
        self.writable.fin_requested = true;
        self.close_deadline = DeadlineSlot::at(now() + self.spec.close_timeout);
        // Keep reading so the peer's FIN is seen; data after close() is discarded (TCP-READ-CANCEL-05).
        self.update_read_interest();
        self.pump();
        self.check_closing_complete();
    }

    fn reset(&mut self) {
        let row = match self.state.get() {
            ReadyState::Opening => Row::TcpOpeningReset,
            ReadyState::Open => Row::TcpOpenReset,
            ReadyState::HalfClosed => Row::TcpHalfClosedReset,
            ReadyState::Closing => Row::TcpClosingReset,
            ReadyState::Closed => return,
        };
        let err = SocketError::abort().with_message("reset");
        let connected = matches!(self.phase, Phase::Established | Phase::Handshaking);
        self.state.set(row, &mut self.out);
        self.release(if connected { IoCommand::Reset } else { IoCommand::Close });
        self.opened.settle(Err(err.clone()), &mut self.out, Event::Opened);
        self.end_readable(ReadEnd::Errored(err.clone()));
        self.fail_writable(err.clone());
        self.closed.settle(Err(err), &mut self.out, Event::Closed);
    }

    fn start_tls(&mut self) -> Result<(), SocketError> {
        let busy = self.readable.reader_waiting
            || !self.writable.queue.is_empty()
            || self.writable.in_flight.is_some();
        if self.state.get() != ReadyState::Open
            || self.phase != Phase::Established
            || self.spec.use_secure_transport
            || self.alpn.is_some()
            || busy
        {
            return Err(
                SocketError::invalid_state().with_message("start_tls needs an idle open plain socket")
            );
        }
        self.phase = Phase::Handshaking;
        self.out.io(IoCommand::TlsHandshake);
        Ok(())
    }

    // ---- backend events ------------------------------------------------------------------

    fn handle_io(&mut self, now: &mut dyn FnMut() -> Instant, ev: IoEvent) -> Result<(), SocketError> {
        if matches!(
            ev,
            IoEvent::Listening { .. }
                | IoEvent::ListenFailed { .. }
                | IoEvent::Accepted { .. }
                | IoEvent::AcceptFailed { .. }
                | IoEvent::Bound { .. }
                | IoEvent::BindFailed { .. }
                | IoEvent::Datagram { .. }
                | IoEvent::Sent { .. }
                | IoEvent::SendFailed { .. }
                | IoEvent::TransientError { .. }
        ) {
            return Err(SocketError::type_error().with_message("not a TCPSocket event"));
        }
        if self.phase == Phase::Gone {
            return Ok(()); // Late reports for a released socket change nothing (INV-17).
        }
        match ev {
            IoEvent::Resolved { addrs } if self.phase == Phase::Resolving => {
                self.try_candidates(addrs, Cause::HostNotFound)
            }
            IoEvent::ResolveFailed { cause } if self.phase == Phase::Resolving => {
                self.fail_opening(SocketError::network(cause))
            }
            IoEvent::Connected { local, remote } if matches!(self.phase, Phase::Connecting { .. }) => {
                self.local = Some(local);
                self.remote = Some(remote);
                if self.spec.use_secure_transport {
                    self.phase = Phase::Handshaking;
                    self.out.io(IoCommand::TlsHandshake);
                } else {
                    self.phase = Phase::Established;
                    self.establish(now);
                }
            }
            IoEvent::ConnectFailed { cause } => {
                if let Phase::Connecting { candidates, next } = &mut self.phase {
                    let (candidates, next) = (std::mem::take(candidates), *next);
                    self.phase = Phase::Connecting { candidates: Vec::new(), next };
                    self.connect_next(candidates, next, cause);
                }
            }
            IoEvent::TlsDone { alpn } if self.phase == Phase::Handshaking => {
                self.phase = Phase::Established;
                self.alpn = Some(alpn.unwrap_or_default().into_boxed_slice());
                if self.state.get() == ReadyState::Opening {
                    self.establish(now);
                } else {
                    self.pump();
                }
            }
            IoEvent::TlsFailed { cause } if self.phase == Phase::Handshaking => {
                let err = SocketError::network(Cause::Tls(cause));
                match self.state.get() {
                    ReadyState::Opening => self.fail_opening(err),
                    ReadyState::Open => {
                        self.fail_connection(Row::TcpOpenStartTlsFails, err, IoCommand::Reset)
                    }
                    // start_tls(), then halfClose() or close() while the upgrade ran: the connection
                    // is lost in the state it reached (A-22, TCP-READ-ERR-02).
                    ReadyState::HalfClosed => {
                        self.fail_connection(Row::TcpHalfClosedConnectionLost, err, IoCommand::Reset)
                    }
                    ReadyState::Closing => {
                        self.fail_connection(Row::TcpClosingHandshakeFails, err, IoCommand::Reset)
                    }
                    ReadyState::Closed => {}
                }
            }
            IoEvent::Received(data) => self.received(data),
            IoEvent::PeerFin => self.peer_fin(),
            IoEvent::Wrote { id } => self.wrote(id),
            IoEvent::WriteShutdown if self.writable.fin_sent => {
                self.writable.fin_done = true;
                self.check_closing_complete();
            }
            IoEvent::Failed { cause } => self.connection_lost(SocketError::network(cause)),
            IoEvent::ConversionFailed => {
                let err = SocketError::with_cause(ErrorName::TypeError, Cause::Conversion);
                match self.state.get() {
                    ReadyState::Open => {
                        self.fail_connection(Row::TcpOpenConversionFails, err, IoCommand::Reset)
                    }
                    ReadyState::HalfClosed => {
                        self.fail_connection(Row::TcpHalfClosedConnectionLost, err, IoCommand::Reset)
                    }
                    _ => {} // Opening has no data; after close() data is discarded unread.
                }
            }
            _ => {} // Not for this phase (a late report): ignored.
        }
        Ok(())
    }

    fn try_candidates(&mut self, candidates: Vec<IpAddr>, if_none: Cause) {
        self.connect_next(candidates, 0, if_none);
    }

    /// Connects to `candidates[next]`, or fails the opening with `last` when none is left.
    fn connect_next(&mut self, candidates: Vec<IpAddr>, next: usize, last: Cause) {
        let Some(ip) = candidates.get(next).copied() else {
            self.fail_opening(SocketError::network(last));
            return;
        };
        self.connect_to(ip, candidates, next + 1);
    }

    /// Connects to `ip`; `candidates[next..]` are the ones to try after it.
    fn connect_to(&mut self, ip: IpAddr, candidates: Vec<IpAddr>, next: usize) {
        let local = match (self.spec.local_address, self.spec.local_port) {
            (None, None) => None,
            (addr, port) => {
                let unspecified = if ip.is_ipv4() {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                };
                Some(SocketAddr::new(addr.unwrap_or(unspecified), port.unwrap_or(0)))
            }
        };
        self.phase = Phase::Connecting { candidates, next };
        self.out.io(IoCommand::Connect {
            remote: SocketAddr::new(ip, self.spec.remote_port),
            local,
            config: self.spec_config(),
        });
    }

    fn spec_config(&self) -> crate::options::SocketConfig {
        crate::options::SocketConfig {
            address_reuse: self.spec.config.address_reuse,
            no_delay: self.spec.config.no_delay,
            send_buffer_size: self.spec.config.send_buffer_size,
            receive_buffer_size: self.spec.config.receive_buffer_size,
        }
    }

    /// Opening succeeded (TCP connected, and TLS done when asked for).
    fn establish(&mut self, now: &mut dyn FnMut() -> Instant) {
        self.connect_deadline = DeadlineSlot::NONE;
        self.state.set(Row::TcpOpeningConnected, &mut self.out);
        self.opened.settle(Ok(()), &mut self.out, Event::Opened);
        self.start_established(now);
        if self.writable.fin_requested && self.state.get() == ReadyState::Open {
            // TCP-WRITE-CLOSE-03: a half-close asked for while opening happens now.
            self.state.set(Row::TcpOpenHalfClose, &mut self.out);
        }
        self.pump();
    }

    fn start_established(&mut self, now: &mut dyn FnMut() -> Instant) {
        self.update_read_interest();
        let count = self.spec.keep_alive_count;
        let sparse = self.spec.keep_alive_sparse_interval;
        let keep_alive = match self.spec.keep_alive {
            KeepAliveMode::Off => None,
            KeepAliveMode::Sparse => Some(KeepAlive { idle: sparse, interval: sparse, count }),
            KeepAliveMode::FrequentThenSparse => {
                self.keep_alive_switch = DeadlineSlot::at(now() + KEEP_ALIVE_FREQUENT_SPAN);
                Some(KeepAlive {
                    idle: Some(KEEP_ALIVE_FREQUENT),
                    interval: Some(KEEP_ALIVE_FREQUENT),
                    count,
                })
            }
        };
        if keep_alive.is_some() {
            self.out.io(IoCommand::SetKeepAlive(keep_alive));
        }
    }

    fn received(&mut self, data: Bytes) {
        if self.readable.end.is_some() || self.readable.peer_fin || self.phase != Phase::Established {
            return; // After close() or an error nothing more is delivered (INV-06).
        }
        if data.is_empty() {
            return;
        }
        self.readable.bytes += data.len();
        self.readable.queue.push_back(data);
        self.update_read_interest();
        self.wake_reader();
    }

    fn peer_fin(&mut self) {
        if self.readable.peer_fin || self.phase != Phase::Established {
            return;
        }
        self.readable.peer_fin = true;
        self.wake_reader();
        self.check_closing_complete();
        // After the close check: a FIN that completes closing releases the transport, and a
        // released one needs no "stop reading" first (two outputs fewer per connection).
        self.update_read_interest();
    }

    fn wrote(&mut self, id: WriteId) {
        match self.writable.in_flight {
            Some((in_flight, len)) if in_flight == id => {
                self.writable.in_flight = None;
                let was_full = self.desired_size() <= 0;
                self.writable.bytes -= len;
                self.out.event(Event::WriteSettled { id, result: Ok(()) });
                if was_full && self.desired_size() > 0 {
                    self.out.event(Event::WritableReady);
                }
                self.pump();
            }
            _ => {} // Not the write in flight: a stale report, ignored.
        }
    }

    fn connection_lost(&mut self, err: SocketError) {
        match self.state.get() {
            // EXT-04 in opening: as TCP-OPEN-02.
            ReadyState::Opening => self.fail_opening(err),
            ReadyState::Open => self.fail_connection(Row::TcpOpenConnectionLost, err, IoCommand::Close),
            ReadyState::HalfClosed => {
                self.fail_connection(Row::TcpHalfClosedConnectionLost, err, IoCommand::Close)
            }
            ReadyState::Closing => self.fail_connection(Row::TcpClosingHandshakeFails, err, IoCommand::Close),
            ReadyState::Closed => {}
        }
    }

    // ---- timers ----------------------------------------------------------------------------

    fn handle_timeout(&mut self, now: Instant) {
        if self.connect_deadline.is_due(now) {
            self.connect_deadline = DeadlineSlot::NONE;
            if self.state.get() == ReadyState::Opening {
                let cause = if self.phase == Phase::Handshaking {
                    Cause::Tls(TlsCause::HandshakeTimeout)
                } else {
                    Cause::TimedOut
                };
                self.fail_opening(SocketError::network(cause));
            }
        }
        if self.close_deadline.is_due(now) {
            self.close_deadline = DeadlineSlot::NONE;
            if self.state.get() == ReadyState::Closing {
                let err = SocketError::network(Cause::TimedOut).with_message("close timeout");
                self.fail_connection(Row::TcpClosingHandshakeFails, err, IoCommand::Reset);
            }
        }
        if self.keep_alive_switch.is_due(now) {
            self.keep_alive_switch = DeadlineSlot::NONE;
            if !matches!(self.state.get(), ReadyState::Closed) {
                let sparse = self.spec.keep_alive_sparse_interval;
                let count = self.spec.keep_alive_count;
                self.out.io(IoCommand::SetKeepAlive(Some(KeepAlive {
                    idle: sparse,
                    interval: sparse,
                    count,
                })));
            }
        }
    }

    // ---- shared steps -----------------------------------------------------------------------

    /// Hands the next write to the transport, settles rejected and empty writes in order, and sends
    /// FIN once everything before it has been written.
    fn pump(&mut self) {
        while self.writable.in_flight.is_none() {
            let Some(front) = self.writable.queue.front() else { break };
            if front.reject.is_some() {
                let Some(w) = self.writable.queue.pop_front() else { break };
                self.out.event(Event::WriteSettled {
                    id: w.id,
                    result: Err(w.reject.unwrap_or_else(closed_stream)),
                });
                continue;
            }
            if self.phase != Phase::Established {
                break; // Queued until connected (TCP-OPEN-04) or while TLS is upgrading (EXT-07).
            }
            let Some(w) = self.writable.queue.pop_front() else { break };
            if w.data.is_empty() {
                // TCP-WRITE-07: resolves in order, sends nothing, never ends the stream.
                self.out.event(Event::WriteSettled { id: w.id, result: Ok(()) });
                continue;
            }
            self.writable.in_flight = Some((w.id, w.data.len()));
            self.out.io(IoCommand::Send { id: w.id, data: w.data });
        }
        let flushed = self.writable.queue.is_empty() && self.writable.in_flight.is_none();
        if flushed
            && self.writable.fin_requested
            && !self.writable.fin_sent
            && self.phase == Phase::Established
        {
            self.writable.fin_sent = true;
            self.out.io(IoCommand::ShutdownWrite);
        }
    }

    /// Both FINs exchanged: "halfclosed" or "closing" ends in "closed" with `closed` resolved.
    fn check_closing_complete(&mut self) {
        if !(self.writable.fin_done && self.readable.peer_fin) {
            return;
        }
        let row = match self.state.get() {
            ReadyState::HalfClosed => Row::TcpHalfClosedPeerFin,
            ReadyState::Closing => Row::TcpClosingHandshakeCompletes,
            _ => return,
        };
        self.close_deadline = DeadlineSlot::NONE;
        self.keep_alive_switch = DeadlineSlot::NONE;
        self.state.set(row, &mut self.out);
        self.release(IoCommand::Close);
        self.closed.settle(Ok(()), &mut self.out, Event::Closed);
    }

    /// The opening failed: TCP-OPEN-02 and TCP-OPEN-03.
    fn fail_opening(&mut self, err: SocketError) {
        if self.state.get() != ReadyState::Opening {
            return;
        }
        self.state.set(Row::TcpOpeningConnectFails, &mut self.out);
        self.release(IoCommand::Close);
        self.opened.settle(Err(err.clone()), &mut self.out, Event::Opened);
        self.end_readable(ReadEnd::Errored(err.clone()));
        self.fail_writable(err.clone());
        self.closed.settle(Err(err), &mut self.out, Event::Closed);
    }

    /// An established connection failed: readable errored if still active, writable errored,
    /// `closed` rejected (TCP-READ-ERR-*, A-23).
    fn fail_connection(&mut self, row: Row, err: SocketError, release: IoCommand) {
        self.state.set(row, &mut self.out);
        self.release(release);
        self.end_readable(ReadEnd::Errored(err.clone()));
        self.fail_writable(err.clone());
        self.closed.settle(Err(err), &mut self.out, Event::Closed);
    }

    /// Rejects the in-flight write and every queued one with `err`, in order; later writes too.
    fn fail_writable(&mut self, err: SocketError) {
        if let Some((id, _)) = self.writable.in_flight.take() {
            self.out.event(Event::WriteSettled { id, result: Err(err.clone()) });
        }
        while let Some(w) = self.writable.queue.pop_front() {
            self.out.event(Event::WriteSettled {
                id: w.id,
                result: Err(w.reject.unwrap_or_else(|| err.clone())),
            });
        }
        self.writable.bytes = 0;
        self.writable.refuse = Some(err.clone());
        self.writable.discard = Some(err);
    }

    /// Ends the readable: done after `close()` (queued data discarded) or errored. A readable that
    /// already ended keeps its first ending (INV-06).
    fn end_readable(&mut self, end: ReadEnd) {
        if self.readable.end.is_some() {
            return;
        }
        self.readable.queue.clear();
        self.readable.bytes = 0;
        self.readable.end = Some(end);
        self.wake_reader();
    }

    /// Releases the transport and stops every timer (GEN-14).
    fn release(&mut self, how: IoCommand) {
        self.connect_deadline = DeadlineSlot::NONE;
        self.close_deadline = DeadlineSlot::NONE;
        self.keep_alive_switch = DeadlineSlot::NONE;
        if self.phase != Phase::Gone {
            self.phase = Phase::Gone;
            self.readable.interest = false;
            self.out.io(how);
        }
    }

    fn wake_reader(&mut self) {
        if self.readable.reader_waiting {
            self.readable.reader_waiting = false;
            self.out.event(Event::Readable);
        }
    }

    /// Read interest is on while the queue is below the high-water mark (TCP-READ-FLOW-01,
    /// TCP-READ-PULL-01), and always after `close()` (to see the FIN); off once the FIN is in.
    fn update_read_interest(&mut self) {
        if self.phase == Phase::Gone {
            return;
        }
        let want = !self.readable.peer_fin
            && (self.readable.end.is_some() || self.readable.bytes < self.spec.readable_high_water_mark);
        if want != self.readable.interest {
            self.readable.interest = want;
            self.out.io(IoCommand::ReadInterest(want));
        }
    }
}

fn closed_stream() -> SocketError {
    SocketError::with_cause(ErrorName::TypeError, Cause::StreamClosed)
}

/// How long "frequent-then-sparse" keeps its frequent timing (for documentation and tests).
pub const FREQUENT_SPAN: Duration = KEEP_ALIVE_FREQUENT_SPAN;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::HostName;
    use crate::options::{SocketConfig, DEFAULT_CLOSE_TIMEOUT, DEFAULT_CONNECT_TIMEOUT};

    const T0: Instant = Instant::ZERO;

    fn spec() -> TcpSpec {
        TcpSpec {
            remote: Remote::Ip("127.0.0.1".parse().unwrap()),
            remote_port: 7,
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
            keep_alive_count: 9,
            use_secure_transport: false,
            allow_half_open: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            readable_high_water_mark: 16,
            writable_high_water_mark: 16,
        }
    }

    fn local() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:7".parse().unwrap()
    }

    fn drain(m: &mut TcpMachine) -> Vec<Output> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }

    fn io(m: &mut TcpMachine, ev: IoEvent) -> Vec<Output> {
        m.handle(T0, Input::Io(ev)).unwrap();
        drain(m)
    }

    fn app(m: &mut TcpMachine, cmd: AppCommand) -> Vec<Output> {
        m.handle(T0, Input::App(cmd)).unwrap();
        drain(m)
    }

    fn write(m: &mut TcpMachine, id: u64, data: &'static [u8]) -> Vec<Output> {
        app(m, AppCommand::Write { id: WriteId(id), data: Bytes::from_static(data) })
    }

    fn read(m: &mut TcpMachine) -> Option<ReadResult> {
        app(m, AppCommand::Read).into_iter().find_map(|o| match o {
            Output::Event(Event::Read(r)) => Some(r),
            _ => None,
        })
    }

    fn settled(outs: &[Output]) -> Vec<(u64, Result<(), ErrorName>)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Event(Event::WriteSettled { id, result }) => {
                    Some((id.0, result.clone().map_err(|e| e.kind())))
                }
                _ => None,
            })
            .collect()
    }

    fn states(outs: &[Output]) -> Vec<ReadyState> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Event(Event::StateChanged { to, .. }) => Some(*to),
                _ => None,
            })
            .collect()
    }

    fn has_io(outs: &[Output], cmd: &IoCommand) -> bool {
        outs.iter().any(|o| o == &Output::Io(cmd.clone()))
    }

    fn sends(outs: &[Output]) -> Vec<(u64, Bytes)> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Io(IoCommand::Send { id, data }) => Some((id.0, data.clone())),
                _ => None,
            })
            .collect()
    }

    fn socket_opening() -> TcpMachine {
        let mut m = TcpMachine::new(T0, spec());
        drain(&mut m);
        m
    }

    fn socket_open() -> TcpMachine {
        let mut m = socket_opening();
        io(&mut m, IoEvent::Connected { local: local(), remote: peer() });
        m
    }

    /// Handles `input` with a clock that counts its reads and says `at`.
    fn lazy(m: &mut TcpMachine, at: Instant, input: Input) -> usize {
        let mut reads = 0;
        let _ = m.handle_lazy(
            &mut || {
                reads += 1;
                at
            },
            input,
        );
        drain(m);
        reads
    }

    // rule: TCP-READ-ERR-02
    #[test]
    fn data_inputs_never_read_the_clock_and_closing_reads_it_for_its_deadline() {
        let mut m = socket_open();
        let t1 = T0 + Duration::from_secs(1);
        let data = [
            Input::App(AppCommand::Write { id: WriteId(1), data: Bytes::from_static(b"ping") }),
            Input::Io(IoEvent::Wrote { id: WriteId(1) }),
            Input::App(AppCommand::Read),
            Input::Io(IoEvent::Received(Bytes::from_static(b"pong"))),
            Input::App(AppCommand::Read),
        ];
        for input in data {
            assert_eq!(lazy(&mut m, t1, input), 0, "a data input read the clock");
        }
        // close() arms the close timeout from the time it reads.
        assert_eq!(lazy(&mut m, t1, Input::App(AppCommand::Close)), 1);
        assert_eq!(m.poll_timeout().map(|d| d.at), Some(t1 + DEFAULT_CLOSE_TIMEOUT));
    }

    fn socket_halfclosed() -> TcpMachine {
        let mut m = socket_open();
        app(&mut m, AppCommand::HalfClose);
        io(&mut m, IoEvent::WriteShutdown);
        assert_eq!(m.ready_state(), ReadyState::HalfClosed);
        m
    }

    fn socket_closing() -> TcpMachine {
        let mut m = socket_open();
        app(&mut m, AppCommand::Close);
        assert_eq!(m.ready_state(), ReadyState::Closing);
        m
    }

    fn socket_closed() -> TcpMachine {
        let mut m = socket_closing();
        io(&mut m, IoEvent::WriteShutdown);
        io(&mut m, IoEvent::PeerFin);
        assert_eq!(m.ready_state(), ReadyState::Closed);
        m
    }

    // rule: TCP-CTOR-13, STATE-01
    #[test]
    fn test_new_literal_connects_and_is_opening() {
        let mut m = TcpMachine::new(T0, spec());
        let outs = drain(&mut m);
        assert_eq!(m.ready_state(), ReadyState::Opening);
        assert!(m.opened().is_none() && m.closed().is_none());
        assert!(
            matches!(&outs[..], [Output::Io(IoCommand::Connect { remote, local: None, .. })] if *remote == peer())
        );
        assert_eq!(
            m.poll_timeout(),
            Some(Deadline { at: T0 + DEFAULT_CONNECT_TIMEOUT, kind: TimerKind::Connect })
        );
    }

    // rule: TCP-OPEN-01, STATE-02, GEN-09, TCP-CTOR-08, TCP-CTOR-09
    #[test]
    fn test_opening_connected_opens_state_before_promise() {
        let mut m = socket_opening();
        let outs = io(&mut m, IoEvent::Connected { local: local(), remote: peer() });
        let pos_state = outs.iter().position(|o| matches!(o, Output::Event(Event::StateChanged { .. })));
        let pos_opened = outs.iter().position(|o| matches!(o, Output::Event(Event::Opened(Ok(())))));
        assert!(pos_state.unwrap() < pos_opened.unwrap());
        assert_eq!(m.ready_state(), ReadyState::Open);
        assert_eq!(m.local_addr(), Some(local()));
        assert!(has_io(&outs, &IoCommand::ReadInterest(true)));
        assert_eq!(m.poll_timeout(), None);
    }

    // rule: TCP-OPEN-02, TCP-OPEN-03, ERR-06, GEN-14, EXT-04
    #[test]
    fn test_opening_connect_failed_rejects_everything_with_network_error() {
        let mut m = socket_opening();
        write(&mut m, 1, b"a");
        app(&mut m, AppCommand::Read);
        let outs = io(&mut m, IoEvent::ConnectFailed { cause: Cause::Refused });
        assert_eq!(m.ready_state(), ReadyState::Closed);
        assert_eq!(m.opened().unwrap().as_ref().unwrap_err().kind(), ErrorName::NetworkError);
        assert_eq!(m.closed().unwrap().as_ref().unwrap_err().cause(), Some(Cause::Refused));
        assert_eq!(settled(&outs), vec![(1, Err(ErrorName::NetworkError))]);
        let close_at = outs.iter().position(|o| o == &Output::Io(IoCommand::Close)).unwrap();
        let closed_at = outs.iter().position(|o| matches!(o, Output::Event(Event::Closed(_)))).unwrap();
        assert!(close_at < closed_at);
        assert!(matches!(read(&mut m), Some(ReadResult::Error(e)) if e.kind() == ErrorName::NetworkError));
    }

    // rule: TCP-OPEN-04, TCP-WRITE-04
    #[test]
    fn test_opening_writes_are_queued_then_sent_in_order() {
        let mut m = socket_opening();
        assert!(sends(&write(&mut m, 1, b"a")).is_empty());
        write(&mut m, 2, b"b");
        write(&mut m, 3, b"c");
        let outs = io(&mut m, IoEvent::Connected { local: local(), remote: peer() });
        assert_eq!(sends(&outs), vec![(1, Bytes::from_static(b"a"))]);
        let outs = io(&mut m, IoEvent::Wrote { id: WriteId(1) });
        assert_eq!(settled(&outs), vec![(1, Ok(()))]);
        assert_eq!(sends(&outs), vec![(2, Bytes::from_static(b"b"))]);
        let outs = io(&mut m, IoEvent::Wrote { id: WriteId(2) });
        assert_eq!(sends(&outs), vec![(3, Bytes::from_static(b"c"))]);
    }

    // rule: TCP-OPEN-05, AMB-49
    #[test]
    fn test_opening_connect_timeout_fails_with_timed_out() {
        let mut m = socket_opening();
        let limit = T0 + DEFAULT_CONNECT_TIMEOUT;
        m.handle(Instant::from_micros(limit.as_micros() - 1), Input::Timeout).unwrap();
        assert_eq!(m.ready_state(), ReadyState::Opening);
        m.handle(limit, Input::Timeout).unwrap();
        assert_eq!(m.ready_state(), ReadyState::Closed);
        assert_eq!(m.opened().unwrap().as_ref().unwrap_err().cause(), Some(Cause::TimedOut));
    }

    // rule: TCP-OPEN-06, TCP-CTOR-07
    #[test]
    fn test_opening_host_name_tries_addresses_in_resolver_order() {
        let mut s = spec();
        s.remote = Remote::Name(HostName::parse("svc").unwrap());
        let mut m = TcpMachine::new(T0, s);
        assert!(matches!(&drain(&mut m)[..], [Output::Io(IoCommand::Resolve { .. })]));
        let v6: IpAddr = "::1".parse().unwrap();
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let outs = io(&mut m, IoEvent::Resolved { addrs: vec![v6, v4] });
        assert!(matches!(&outs[..], [Output::Io(IoCommand::Connect { remote, .. })] if remote.ip() == v6));
        let outs = io(&mut m, IoEvent::ConnectFailed { cause: Cause::Refused });
        assert!(matches!(&outs[..], [Output::Io(IoCommand::Connect { remote, .. })] if remote.ip() == v4));
        io(&mut m, IoEvent::Connected { local: local(), remote: peer() });
        assert_eq!(m.ready_state(), ReadyState::Open);
        // All fail: NetworkError.
        let mut s = spec();
        s.remote = Remote::Name(HostName::parse("svc").unwrap());
        let mut m = TcpMachine::new(T0, s);
        drain(&mut m);
        io(&mut m, IoEvent::Resolved { addrs: vec![v6, v4] });
        io(&mut m, IoEvent::ConnectFailed { cause: Cause::Refused });
        io(&mut m, IoEvent::ConnectFailed { cause: Cause::Refused });
        assert_eq!(m.opened().unwrap().as_ref().unwrap_err().kind(), ErrorName::NetworkError);
        // Resolution failure.
        let mut s = spec();
        s.remote = Remote::Name(HostName::parse("nohost.test").unwrap());
        let mut m = TcpMachine::new(T0, s);
        io(&mut m, IoEvent::ResolveFailed { cause: Cause::HostNotFound });
        assert_eq!(m.closed().unwrap().as_ref().unwrap_err().cause(), Some(Cause::HostNotFound));
    }

    /// The peer's FIN stops reading while the socket stays open (half-closed by the peer), but a
    /// FIN that completes closing releases the transport with no "stop reading" before it.
    // rule: TCP-READ-FLOW-01, STATE-01
    #[test]
    fn test_peer_fin_stops_reading_unless_it_completes_closing() {
        let mut m = socket_open();
        let outs = io(&mut m, IoEvent::PeerFin);
        assert_eq!(m.ready_state(), ReadyState::Open);
        assert!(has_io(&outs, &IoCommand::ReadInterest(false)));
        assert!(!m.read_interest());

        let mut m = socket_closing();
        io(&mut m, IoEvent::WriteShutdown);
        let outs = io(&mut m, IoEvent::PeerFin);
        assert_eq!(m.ready_state(), ReadyState::Closed);
        assert!(has_io(&outs, &IoCommand::Close));
        assert!(!has_io(&outs, &IoCommand::ReadInterest(false)), "released: no interest change first");
        assert!(!m.read_interest());
    }

    // rule: TCP-READ-01, GEN-08, TCP-READ-FLOW-01, TCP-READ-PULL-01, INV-19
    #[test]
    fn test_open_received_flows_until_high_water_mark() {
        let mut m = socket_open();
        let outs = io(&mut m, IoEvent::Received(Bytes::from_static(b"0123456789")));
        assert!(!has_io(&outs, &IoCommand::ReadInterest(false)));
        let outs = io(&mut m, IoEvent::Received(Bytes::from_static(b"abcdefgh")));
        assert!(has_io(&outs, &IoCommand::ReadInterest(false)));
        assert!(!m.read_interest());
        assert_eq!(read(&mut m), Some(ReadResult::Chunk(Bytes::from_static(b"0123456789"))));
        assert!(m.read_interest(), "below the mark again: reading resumes");
        assert_eq!(read(&mut m), Some(ReadResult::Chunk(Bytes::from_static(b"abcdefgh"))));
    }

    /// The write shortcut takes a write only where the machine would hand it straight on, and
    /// leaves the socket as a write sent through inputs would.
    // rule: TCP-WRITE-01, TCP-OPEN-04, INV-11, TCP-WRITE-07
    #[test]
    fn test_open_send_at_once_takes_only_a_write_nothing_is_ahead_of() {
        let mut m = socket_opening();
        assert!(!m.send_at_once(WriteId(1), 3), "queued until connected (TCP-OPEN-04)");
        let mut m = socket_open();
        let hwm = m.desired_size();
        assert!(!m.send_at_once(WriteId(1), 0), "an empty write goes through inputs (TCP-WRITE-07)");
        assert!(m.send_at_once(WriteId(1), 3));
        assert!(drain(&mut m).is_empty());
        assert_eq!(m.desired_size(), hwm - 3);
        assert!(!m.send_at_once(WriteId(2), 3), "one in flight: the next queues (INV-11)");
        // A write queued behind it goes out when it is done.
        let outs = write(&mut m, 2, b"two");
        assert!(sends(&outs).is_empty());
        assert!(!m.send_done(WriteId(2)));
        assert!(m.send_done(WriteId(1)));
        let outs = drain(&mut m);
        assert_eq!(sends(&outs).len(), 1);
        assert!(settled(&outs).is_empty(), "the caller settled write 1 itself");
        let outs = io(&mut m, IoEvent::Wrote { id: WriteId(2) });
        assert_eq!(settled(&outs), vec![(2, Ok(()))]);
        assert!(!m.send_at_once(WriteId(2), 3), "ids must increase");
        // After half-close nothing is taken.
        app(&mut m, AppCommand::HalfClose);
        assert!(!m.send_at_once(WriteId(3), 3));
        let mut m = socket_closed();
        assert!(!m.send_at_once(WriteId(9), 3));
        // A write as large as the mark wakes `ready()` once written.
        let mut m = socket_open();
        let big = usize::try_from(m.desired_size()).unwrap();
        assert!(m.send_at_once(WriteId(1), big));
        assert!(m.send_done(WriteId(1)));
        assert!(drain(&mut m).contains(&Output::Event(Event::WritableReady)));
    }

    /// The read shortcut hands out chunks as `Read` would, resumes reading as `Read` does, and
    /// leaves the end of the readable (the peer's FIN and its auto-close) to `Read`.
    // rule: TCP-READ-01, TCP-READ-FLOW-01, TCP-READ-CLOSE-02, AMB-20, INV-06
    #[test]
    fn test_open_take_chunk_hands_out_the_queue_and_leaves_the_end_to_read() {
        let mut m = socket_open();
        assert_eq!(m.take_chunk(), None);
        io(&mut m, IoEvent::Received(Bytes::from_static(b"0123456789")));
        io(&mut m, IoEvent::Received(Bytes::from_static(b"abcdefgh")));
        assert!(!m.read_interest());
        assert_eq!(m.take_chunk(), Some(Bytes::from_static(b"0123456789")));
        assert!(has_io(&drain(&mut m), &IoCommand::ReadInterest(true)));
        io(&mut m, IoEvent::PeerFin);
        assert_eq!(m.take_chunk(), Some(Bytes::from_static(b"abcdefgh")), "data before the FIN");
        assert!(drain(&mut m).is_empty());
        assert_eq!(m.take_chunk(), None);
        assert_eq!(m.ready_state(), ReadyState::Open, "the FIN's auto-close waits for Read");
        let outs = app(&mut m, AppCommand::Read);
        assert!(outs.contains(&Output::Event(Event::Read(ReadResult::Done))));
        assert_eq!(states(&outs), vec![ReadyState::Closing]);
        // An errored readable reports its error first, whatever is queued.
        let mut m = socket_open();
        io(&mut m, IoEvent::Received(Bytes::from_static(b"unread")));
        io(&mut m, IoEvent::Failed { cause: Cause::Reset });
        assert_eq!(m.take_chunk(), None);
    }

    /// The receive shortcut applies exactly where a chunk received and taken at once would leave
    /// the machine as it was: open, nothing queued, reading on. It ends a reader's wait as the
    /// `Readable` would, and declines after the FIN, after an error, while data is queued, while
    /// reading is off, and before the socket is open.
    // rule: TCP-READ-01, TCP-READ-FLOW-01, INV-06
    #[test]
    fn test_open_deliver_at_once_only_where_receive_then_take_changes_nothing() {
        let mut m = socket_open();
        assert!(m.may_deliver_at_once());
        // A reader that waited: the shortcut ends its wait, and a chunk received later finds no
        // one waiting (no `Readable` for a reader that was already answered).
        assert!(app(&mut m, AppCommand::Read).is_empty());
        assert!(m.deliver_at_once());
        assert!(drain(&mut m).is_empty(), "no input, no output");
        let outs = io(&mut m, IoEvent::Received(Bytes::from_static(b"later")));
        assert!(!outs.contains(&Output::Event(Event::Readable)));
        // Queued data: declined (it must come first).
        assert!(!m.may_deliver_at_once() && !m.deliver_at_once());
        assert_eq!(m.take_chunk(), Some(Bytes::from_static(b"later")));
        drain(&mut m);
        assert!(m.deliver_at_once());
        // Reading off (the queue at its mark) is declined too.
        let mut full = socket_open();
        let mark = full.spec.readable_high_water_mark;
        io(&mut full, IoEvent::Received(Bytes::from(vec![0u8; mark])));
        assert!(!full.read_interest() && !full.may_deliver_at_once());
        // After the FIN, after a failure, before opening: declined.
        io(&mut m, IoEvent::PeerFin);
        assert!(!m.deliver_at_once());
        let mut failed = socket_open();
        io(&mut failed, IoEvent::Failed { cause: Cause::Reset });
        assert!(!failed.deliver_at_once());
        let mut opening = socket_opening();
        assert!(!opening.deliver_at_once());
    }

    /// The wait shortcut leaves the machine as a `Read` that finds nothing does: the next chunk
    /// received wakes the reader with `Readable`. It declines wherever `Read` would answer at once
    /// (queued data, the FIN, an error).
    // rule: TCP-READ-01, INV-06
    #[test]
    fn test_open_wait_at_once_waits_as_read_does() {
        let mut m = socket_open();
        assert!(m.wait_at_once());
        assert!(drain(&mut m).is_empty());
        let outs = io(&mut m, IoEvent::Received(Bytes::from_static(b"data")));
        assert!(outs.contains(&Output::Event(Event::Readable)), "the waiting reader is woken");
        assert!(!m.wait_at_once(), "data queued: Read hands it out");
        assert_eq!(m.take_chunk(), Some(Bytes::from_static(b"data")));
        io(&mut m, IoEvent::PeerFin);
        assert!(!m.wait_at_once(), "the FIN: Read reports the end");
        let mut failed = socket_open();
        io(&mut failed, IoEvent::Failed { cause: Cause::Reset });
        assert!(!failed.wait_at_once());
    }

    // rule: TCP-READ-CLOSE-02, AMB-20, TCP-WRITE-06
    #[test]
    fn test_open_peer_fin_auto_closes_after_the_app_reads_done() {
        let mut m = socket_open();
        io(&mut m, IoEvent::Received(Bytes::from_static(b"req")));
        let outs = io(&mut m, IoEvent::PeerFin);
        assert!(states(&outs).is_empty());
        assert_eq!(m.ready_state(), ReadyState::Open);
        assert_eq!(read(&mut m), Some(ReadResult::Chunk(Bytes::from_static(b"req"))));
        let outs = write(&mut m, 1, b"ack");
        assert_eq!(sends(&outs).len(), 1);
        let outs = app(&mut m, AppCommand::Read);
        assert!(outs.contains(&Output::Event(Event::Read(ReadResult::Done))));
        assert_eq!(states(&outs), vec![ReadyState::Closing]);
        let outs = write(&mut m, 2, b"late");
        assert!(settled(&outs).is_empty(), "settles in order, after write 1");
        let outs = io(&mut m, IoEvent::Wrote { id: WriteId(1) });
        assert_eq!(settled(&outs), vec![(1, Ok(())), (2, Err(ErrorName::TypeError))]);
        assert!(has_io(&outs, &IoCommand::ShutdownWrite));
        let outs = io(&mut m, IoEvent::WriteShutdown);
        assert_eq!(states(&outs), vec![ReadyState::Closed]);
        assert_eq!(m.closed(), Some(&Ok(())));
    }

    // rule: EXT-01, EXT-02, DICT-TCPOPT-08
    #[test]
    fn test_open_peer_fin_with_allow_half_open_keeps_writing() {
        let mut s = spec();
        s.allow_half_open = true;
        let mut m = TcpMachine::new(T0, s);
        io(&mut m, IoEvent::Connected { local: local(), remote: peer() });
        io(&mut m, IoEvent::PeerFin);
        assert_eq!(read(&mut m), Some(ReadResult::Done));
        assert_eq!(m.ready_state(), ReadyState::Open);
        let outs = write(&mut m, 1, b"resp");
        assert_eq!(sends(&outs).len(), 1);
        let outs = app(&mut m, AppCommand::HalfClose);
        assert_eq!(states(&outs), vec![ReadyState::Closing]);
        let outs = io(&mut m, IoEvent::Wrote { id: WriteId(1) });
        assert!(has_io(&outs, &IoCommand::ShutdownWrite));
        let outs = io(&mut m, IoEvent::WriteShutdown);
        assert_eq!(states(&outs), vec![ReadyState::Closed]);
        assert_eq!(m.closed(), Some(&Ok(())));
    }

    // rule: EXT-02, TCP-CLOSE-04
    #[test]
    fn test_half_open_stalled_flush_ends_at_close_timeout() {
        let mut s = spec();
        s.allow_half_open = true;
        s.close_timeout = Duration::from_secs(1);
        let mut m = TcpMachine::new(T0, s);
        io(&mut m, IoEvent::Connected { local: local(), remote: peer() });
        io(&mut m, IoEvent::PeerFin);
        write(&mut m, 1, b"stuck");
        app(&mut m, AppCommand::Close);
        assert_eq!(m.ready_state(), ReadyState::Closing);
        m.handle(Instant::from_micros(999_999), Input::Timeout).unwrap();
        assert!(m.closed().is_none());
        m.handle(Instant::from_micros(1_000_000), Input::Timeout).unwrap();
        let outs = drain(&mut m);
        assert_eq!(m.closed().unwrap().as_ref().unwrap_err().kind(), ErrorName::NetworkError);
        assert!(has_io(&outs, &IoCommand::Reset));
        assert_eq!(settled(&outs), vec![(1, Err(ErrorName::NetworkError))]);
    }

    // rule: TCP-READ-CANCEL-03, TCP-CLOSE-01, GEN-10, TCP-WRITE-CLOSE-02, AMB-57
    #[test]
    fn test_open_close_flushes_then_fin_then_waits_for_peer() {
        let mut m = socket_open();
        write(&mut m, 1, b"abc");
        write(&mut m, 2, b"def");
        let outs = app(&mut m, AppCommand::Close);
        assert_eq!(states(&outs), vec![ReadyState::Closing]);
        assert!(!has_io(&outs, &IoCommand::ShutdownWrite), "FIN only after the flush");
        io(&mut m, IoEvent::Wrote { id: WriteId(1) });
        let outs = io(&mut m, IoEvent::Wrote { id: WriteId(2) });
        assert!(has_io(&outs, &IoCommand::ShutdownWrite));
        assert!(app(&mut m, AppCommand::HalfClose).is_empty(), "no second FIN");
        io(&mut m, IoEvent::WriteShutdown);
        assert!(m.closed().is_none());
        io(&mut m, IoEvent::Received(Bytes::from_static(b"discarded")));
        let outs = io(&mut m, IoEvent::PeerFin);
        assert_eq!(states(&outs), vec![ReadyState::Closed]);
        assert_eq!(m.closed(), Some(&Ok(())));
    }

    // rule: TCP-READ-CANCEL-05, TCP-CLOSE-02, AMB-52
    #[test]
    fn test_open_close_ends_pending_and_later_reads_with_done() {
        let mut m = socket_open();
        io(&mut m, IoEvent::Received(Bytes::from_static(b"unread")));
        assert!(app(&mut m, AppCommand::Read).iter().any(|o| matches!(o, Output::Event(Event::Read(_)))));
        assert!(app(&mut m, AppCommand::Read).is_empty(), "waiting reader");
        let outs = app(&mut m, AppCommand::Close);
        assert!(outs.contains(&Output::Event(Event::Readable)));
        assert_eq!(read(&mut m), Some(ReadResult::Done));
        io(&mut m, IoEvent::Received(Bytes::from_static(b"more")));
        assert_eq!(read(&mut m), Some(ReadResult::Done));
    }

    // rule: TCP-READ-CANCEL-02, ERR-07, AMB-11, AMB-16
    #[test]
    fn test_opening_close_aborts_everything() {
        let mut m = socket_opening();
        write(&mut m, 1, b"x");
        let outs = app(&mut m, AppCommand::Close);
        assert_eq!(states(&outs), vec![ReadyState::Closed]);
        assert_eq!(m.opened().unwrap().as_ref().unwrap_err().kind(), ErrorName::AbortError);
        assert_eq!(m.closed().unwrap().as_ref().unwrap_err().kind(), ErrorName::AbortError);
        assert_eq!(settled(&outs), vec![(1, Err(ErrorName::AbortError))]);
        assert!(has_io(&outs, &IoCommand::Close));
        assert_eq!(read(&mut m), Some(ReadResult::Done));
        let outs = write(&mut m, 2, b"y");
        assert_eq!(settled(&outs), vec![(2, Err(ErrorName::AbortError))]);
        // A late Connected changes nothing.
        let outs = io(&mut m, IoEvent::Connected { local: local(), remote: peer() });
        assert!(outs.is_empty());
    }

    // rule: TCP-CLOSE-03, TCP-READ-CANCEL-01, INV-12, GEN-06
    #[test]
    fn test_closing_and_closed_close_again_has_no_effect() {
        let mut m = socket_closing();
        assert!(app(&mut m, AppCommand::Close).is_empty());
        let mut m = socket_closed();
        let before = m.closed().cloned();
        assert!(app(&mut m, AppCommand::Close).is_empty());
        assert_eq!(m.closed().cloned(), before);
    }

    // rule: TCP-WRITE-CLOSE-01, TCP-WRITE-CLOSE-04, TCP-HALFCLOSE-01, STATE-05
    #[test]
    fn test_open_half_close_fin_after_queued_writes() {
        let mut m = socket_open();
        for i in 1..=3 {
            write(&mut m, i, b"w");
        }
        let outs = app(&mut m, AppCommand::HalfClose);
        assert_eq!(states(&outs), vec![ReadyState::HalfClosed]);
        assert!(!has_io(&outs, &IoCommand::ShutdownWrite));
        io(&mut m, IoEvent::Wrote { id: WriteId(1) });
        io(&mut m, IoEvent::Wrote { id: WriteId(2) });
        let outs = io(&mut m, IoEvent::Wrote { id: WriteId(3) });
        assert!(has_io(&outs, &IoCommand::ShutdownWrite));
        // Receiving continues.
        io(&mut m, IoEvent::WriteShutdown);
        io(&mut m, IoEvent::Received(Bytes::from_static(b"late")));
        assert_eq!(read(&mut m), Some(ReadResult::Chunk(Bytes::from_static(b"late"))));
    }

    // rule: TCP-WRITE-CLOSE-03
    #[test]
    fn test_opening_half_close_waits_for_connection() {
        let mut m = socket_opening();
        assert!(app(&mut m, AppCommand::HalfClose).is_empty());
        let outs = io(&mut m, IoEvent::Connected { local: local(), remote: peer() });
        assert_eq!(states(&outs), vec![ReadyState::Open, ReadyState::HalfClosed]);
        assert!(outs.contains(&Output::Event(Event::Opened(Ok(())))));
        assert!(has_io(&outs, &IoCommand::ShutdownWrite));
    }

    // rule: TCP-WRITE-CLOSE-05, AMB-51, TCP-WRITE-06, ERR-09
    #[test]
    fn test_halfclosed_half_close_again_is_a_no_op_and_writes_reject_type_error() {
        let mut m = socket_halfclosed();
        assert!(app(&mut m, AppCommand::HalfClose).is_empty());
        assert_eq!(m.ready_state(), ReadyState::HalfClosed);
        let outs = write(&mut m, 9, b"x");
        assert_eq!(settled(&outs), vec![(9, Err(ErrorName::TypeError))]);
        assert!(sends(&outs).is_empty());
    }

    // rule: TCP-HALFCLOSE-02, TCP-READ-CLOSE-01, TCP-READ-CLOSE-03
    #[test]
    fn test_halfclosed_peer_fin_closes_and_data_is_still_read() {
        let mut m = socket_halfclosed();
        io(&mut m, IoEvent::Received(Bytes::from_static(b"echo")));
        let outs = io(&mut m, IoEvent::PeerFin);
        assert_eq!(states(&outs), vec![ReadyState::Closed]);
        assert_eq!(m.closed(), Some(&Ok(())));
        assert_eq!(read(&mut m), Some(ReadResult::Chunk(Bytes::from_static(b"echo"))));
        assert_eq!(read(&mut m), Some(ReadResult::Done));
    }

    // rule: TCP-READ-CANCEL-04, AMB-21
    #[test]
    fn test_halfclosed_close_goes_closing_then_closed_on_peer_fin() {
        let mut m = socket_halfclosed();
        io(&mut m, IoEvent::Received(Bytes::from_static(b"unread")));
        let outs = app(&mut m, AppCommand::Close);
        assert_eq!(states(&outs), vec![ReadyState::Closing]);
        assert_eq!(read(&mut m), Some(ReadResult::Done));
        io(&mut m, IoEvent::PeerFin);
        assert_eq!(m.closed(), Some(&Ok(())));
    }

    // rule: TCP-READ-ERR-01, TCP-WRITE-02, TCP-WRITE-05, EXT-04, AMB-23
    #[test]
    fn test_open_connection_lost_errors_both_streams() {
        let mut m = socket_open();
        write(&mut m, 1, b"a");
        write(&mut m, 2, b"b");
        let outs = io(&mut m, IoEvent::Failed { cause: Cause::Reset });
        assert_eq!(
            settled(&outs),
            vec![(1, Err(ErrorName::NetworkError)), (2, Err(ErrorName::NetworkError))]
        );
        assert_eq!(m.ready_state(), ReadyState::Closed);
        assert_eq!(m.closed().unwrap().as_ref().unwrap_err().cause(), Some(Cause::Reset));
        assert!(matches!(read(&mut m), Some(ReadResult::Error(e)) if e.kind() == ErrorName::NetworkError));
        assert_eq!(settled(&write(&mut m, 3, b"c")), vec![(3, Err(ErrorName::NetworkError))]);
    }

    // rule: TCP-READ-ERR-04, AMB-22
    #[test]
    fn test_halfclosed_connection_lost_rejects_closed() {
        let mut m = socket_halfclosed();
        io(&mut m, IoEvent::Failed { cause: Cause::Reset });
        assert_eq!(m.ready_state(), ReadyState::Closed);
        assert_eq!(m.closed().unwrap().as_ref().unwrap_err().kind(), ErrorName::NetworkError);
    }

    // rule: TCP-READ-ERR-02
    #[test]
    fn test_closing_peer_reset_rejects_closed() {
        let mut m = socket_closing();
        io(&mut m, IoEvent::Failed { cause: Cause::Reset });
        assert_eq!(m.closed().unwrap().as_ref().unwrap_err().kind(), ErrorName::NetworkError);
        assert_eq!(read(&mut m), Some(ReadResult::Done), "the readable was already done");
    }

    // rule: TCP-CLOSE-04, AMB-26
    #[test]
    fn test_closing_close_timeout_rejects_network_error_and_releases() {
        let mut m = socket_closing();
        io(&mut m, IoEvent::WriteShutdown);
        let at = m.poll_timeout().unwrap();
        assert_eq!((at.at, at.kind), (T0 + DEFAULT_CLOSE_TIMEOUT, TimerKind::Close));
        m.handle(at.at, Input::Timeout).unwrap();
        let outs = drain(&mut m);
        assert!(has_io(&outs, &IoCommand::Reset));
        assert_eq!(m.closed().unwrap().as_ref().unwrap_err().cause(), Some(Cause::TimedOut));
    }

    // rule: TCP-READ-ERR-03, ERR-09
    #[test]
    fn test_open_conversion_failure_is_type_error() {
        let mut m = socket_open();
        io(&mut m, IoEvent::ConversionFailed);
        assert_eq!(m.closed().unwrap().as_ref().unwrap_err().kind(), ErrorName::TypeError);
        assert_eq!(settled(&write(&mut m, 1, b"x")), vec![(1, Err(ErrorName::TypeError))]);
    }

    // rule: TCP-WRITE-07
    #[test]
    fn test_open_empty_write_resolves_in_order_without_sending() {
        let mut m = socket_open();
        write(&mut m, 1, b"a");
        write(&mut m, 2, b"");
        write(&mut m, 3, b"b");
        let outs = io(&mut m, IoEvent::Wrote { id: WriteId(1) });
        assert_eq!(settled(&outs), vec![(1, Ok(())), (2, Ok(()))]);
        assert_eq!(sends(&outs), vec![(3, Bytes::from_static(b"b"))]);
    }

    // rule: TCP-WRITE-ABORT-01, AMB-18, ERR-07
    #[test]
    fn test_open_writer_abort_discards_queued_after_in_flight_then_fin() {
        let mut m = socket_open();
        write(&mut m, 1, b"a");
        write(&mut m, 2, b"b");
        write(&mut m, 3, b"c");
        let outs = app(&mut m, AppCommand::WriterAbort { reason: Some("stop".into()) });
        assert_eq!(states(&outs), vec![ReadyState::HalfClosed]);
        assert!(settled(&outs).is_empty(), "rejections wait for the in-flight write");
        let outs = io(&mut m, IoEvent::Wrote { id: WriteId(1) });
        assert_eq!(
            settled(&outs),
            vec![(1, Ok(())), (2, Err(ErrorName::AbortError)), (3, Err(ErrorName::AbortError))]
        );
        assert!(has_io(&outs, &IoCommand::ShutdownWrite));
        let outs = write(&mut m, 4, b"d");
        match &outs[..] {
            [Output::Event(Event::WriteSettled { result: Err(e), .. })] => {
                assert_eq!((e.kind(), e.message()), (ErrorName::AbortError, Some("stop")))
            }
            other => panic!("{other:?}"),
        }
    }

    // rule: EXT-03
    #[test]
    fn test_every_live_state_reset_aborts_everything() {
        for mut m in [socket_opening(), socket_open(), socket_halfclosed(), socket_closing()] {
            let was_connected = m.ready_state() != ReadyState::Opening;
            let closing_before = m.ready_state() == ReadyState::Closing;
            write(&mut m, 100, b"q");
            let outs = app(&mut m, AppCommand::Reset);
            assert_eq!(m.ready_state(), ReadyState::Closed);
            assert_eq!(m.closed().unwrap().as_ref().unwrap_err().kind(), ErrorName::AbortError);
            assert_eq!(m.opened().unwrap().is_ok(), was_connected);
            assert!(has_io(&outs, if was_connected { &IoCommand::Reset } else { &IoCommand::Close }));
            match read(&mut m) {
                // close() already ended the readable with done; it stays done (INV-06, TCP-READ-CANCEL-05).
                Some(ReadResult::Done) => assert!(closing_before),
                Some(ReadResult::Error(e)) => assert_eq!(e.kind(), ErrorName::AbortError),
                other => panic!("{other:?}"),
            }
        }
        let mut m = socket_closed();
        assert!(app(&mut m, AppCommand::Reset).is_empty());
    }

    // rule: EXT-05, EXT-06, TCP-CTOR-15
    #[test]
    fn test_opening_tls_handshake_gates_opened() {
        let mut s = spec();
        s.use_secure_transport = true;
        let mut m = TcpMachine::new(T0, s.clone());
        drain(&mut m);
        let outs = io(&mut m, IoEvent::Connected { local: local(), remote: peer() });
        assert_eq!(outs, vec![Output::Io(IoCommand::TlsHandshake)]);
        assert_eq!(m.ready_state(), ReadyState::Opening);
        io(&mut m, IoEvent::TlsDone { alpn: Some(b"h2".to_vec()) });
        assert_eq!(m.ready_state(), ReadyState::Open);
        assert_eq!(m.alpn(), Some(&b"h2"[..]));
        let mut m = TcpMachine::new(T0, s.clone());
        io(&mut m, IoEvent::Connected { local: local(), remote: peer() });
        io(&mut m, IoEvent::TlsFailed { cause: TlsCause::UnknownIssuer });
        assert_eq!(
            m.opened().unwrap().as_ref().unwrap_err().cause(),
            Some(Cause::Tls(TlsCause::UnknownIssuer))
        );
        let mut m = TcpMachine::new(T0, s);
        io(&mut m, IoEvent::Connected { local: local(), remote: peer() });
        m.handle(T0 + DEFAULT_CONNECT_TIMEOUT, Input::Timeout).unwrap();
        assert_eq!(
            m.opened().unwrap().as_ref().unwrap_err().cause(),
            Some(Cause::Tls(TlsCause::HandshakeTimeout))
        );
    }

    // rule: EXT-07, ERR-08
    #[test]
    fn test_open_start_tls_holds_traffic_and_rejects_when_busy() {
        let mut m = socket_open();
        app(&mut m, AppCommand::Read);
        let err = m.handle(T0, Input::App(AppCommand::StartTls)).unwrap_err();
        assert_eq!(err.kind(), ErrorName::InvalidStateError);
        let mut m = socket_open();
        assert_eq!(app(&mut m, AppCommand::StartTls), vec![Output::Io(IoCommand::TlsHandshake)]);
        assert!(sends(&write(&mut m, 1, b"held")).is_empty());
        let outs = io(&mut m, IoEvent::TlsDone { alpn: None });
        assert_eq!(sends(&outs).len(), 1);
        let mut m = socket_open();
        app(&mut m, AppCommand::StartTls);
        io(&mut m, IoEvent::TlsFailed { cause: TlsCause::Protocol });
        assert_eq!(m.closed().unwrap().as_ref().unwrap_err().cause(), Some(Cause::Tls(TlsCause::Protocol)));
    }

    // rule: ENUM-KA-01, ENUM-KA-02, ENUM-KA-03, TCP-CTOR-16, DICT-TCPOPT-06, DICT-TCPOPT-07
    #[test]
    fn test_keep_alive_schedules() {
        let keep_alive = |outs: &[Output]| {
            outs.iter()
                .find_map(|o| match o {
                    Output::Io(IoCommand::SetKeepAlive(k)) => Some(*k),
                    _ => None,
                })
                .flatten()
        };
        let outs = {
            let mut m = socket_opening();
            io(&mut m, IoEvent::Connected { local: local(), remote: peer() })
        };
        assert_eq!(keep_alive(&outs), None, "off by default: nothing set");
        let mut s = spec();
        s.keep_alive = KeepAliveMode::Sparse;
        s.keep_alive_sparse_interval = Some(Duration::from_secs(5));
        let mut m = TcpMachine::new(T0, s);
        let outs = io(&mut m, IoEvent::Connected { local: local(), remote: peer() });
        let five = Some(Duration::from_secs(5));
        assert_eq!(keep_alive(&outs), Some(KeepAlive { idle: five, interval: five, count: 9 }));
        assert_eq!(m.poll_timeout(), None);
        let mut s = spec();
        s.keep_alive = KeepAliveMode::FrequentThenSparse;
        s.keep_alive_sparse_interval = Some(Duration::from_secs(30));
        let mut m = TcpMachine::new(T0, s);
        let t1 = Instant::from_micros(5_000_000);
        m.handle(t1, Input::Io(IoEvent::Connected { local: local(), remote: peer() })).unwrap();
        let outs = drain(&mut m);
        let ten = Some(Duration::from_secs(10));
        assert_eq!(keep_alive(&outs), Some(KeepAlive { idle: ten, interval: ten, count: 9 }));
        let at = m.poll_timeout().unwrap();
        assert_eq!((at.at, at.kind), (t1 + Duration::from_secs(60), TimerKind::KeepAliveSparse));
        m.handle(at.at, Input::Timeout).unwrap();
        let thirty = Some(Duration::from_secs(30));
        assert_eq!(keep_alive(&drain(&mut m)), Some(KeepAlive { idle: thirty, interval: thirty, count: 9 }));
        // A peer declared dead by keep-alive is a lost connection.
        io(&mut m, IoEvent::Failed { cause: Cause::TimedOut });
        assert_eq!(m.closed().unwrap().as_ref().unwrap_err().kind(), ErrorName::NetworkError);
    }

    // rule: SRV-ACCEPT-02, INV-01
    #[test]
    fn test_accepted_starts_open_with_opened_resolved() {
        let mut m =
            TcpMachine::accepted(T0, AcceptedSpec { local: peer(), remote: local(), tcp: spec().into() });
        let outs = drain(&mut m);
        assert_eq!(m.ready_state(), ReadyState::Open);
        assert!(outs.contains(&Output::Event(Event::Opened(Ok(())))));
        assert_eq!(sends(&write(&mut m, 1, b"hi")).len(), 1);
    }

    /// An accepted connection is established already: making its machine arms no deadline and so
    /// reads no clock (the library passes its clock lazily, one read less per connection).
    // rule: SRV-ACCEPT-02
    #[test]
    fn accepted_machine_reads_no_clock() {
        let mut reads = 0;
        let mut now = || {
            reads += 1;
            T0
        };
        let mut m = TcpMachine::accepted_lazy(
            &mut now,
            AcceptedSpec { local: peer(), remote: local(), tcp: spec().into() },
        );
        drain(&mut m);
        assert_eq!(m.ready_state(), ReadyState::Open);
        assert_eq!(m.poll_timeout(), None);
        assert_eq!(reads, 0, "making an accepted machine read the clock");
    }

    // rule: GEN-03, INV-11
    #[test]
    fn test_foreign_commands_are_type_errors_without_effect() {
        let mut m = socket_open();
        let err = m.handle(T0, Input::App(AppCommand::Listen { id: crate::io::ListenId(1) })).unwrap_err();
        assert_eq!(err.kind(), ErrorName::TypeError);
        assert!(drain(&mut m).is_empty());
        assert_eq!(
            m.handle(T0, Input::Open(Box::new(crate::io::OpenSpec::Tcp(spec())))).unwrap_err().kind(),
            ErrorName::InvalidStateError
        );
        // Non-increasing ids reject that write only.
        write(&mut m, 5, b"a");
        let outs = write(&mut m, 5, b"b");
        assert!(outs.is_empty(), "rejected in order, after write 5");
        let outs = io(&mut m, IoEvent::Wrote { id: WriteId(5) });
        assert_eq!(settled(&outs), vec![(5, Ok(())), (5, Err(ErrorName::TypeError))]);
    }

    // rule: TCP-WRITE-04
    #[test]
    fn test_open_desired_size_and_writable_ready() {
        let mut m = socket_open();
        assert_eq!(m.desired_size(), 16);
        write(&mut m, 1, b"0123456789abcdef");
        assert_eq!(m.desired_size(), 0);
        let outs = io(&mut m, IoEvent::Wrote { id: WriteId(1) });
        assert!(outs.contains(&Output::Event(Event::WritableReady)));
        assert_eq!(m.desired_size(), 16);
    }
}

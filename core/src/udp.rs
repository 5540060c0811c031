//! `UDPSocket`: read RULES.md §3 (UDP-*), §9.1, EXT-09, AMB-12/13/16/18/23/28/33–35/50/53/58 and
//! DESIGN §3.6/§3.8 before editing.
//!
//! One [`UdpMachine`] per socket. It owns the readyState, the `opened`/`closed` promises, the
//! readable queue (whole datagrams, bounded by a capacity in datagrams, read interest) and the
//! writable queue (one datagram handed to the backend at a time, so writes settle in order and an
//! abort can still discard the rest, A-18).
//!
//! # How the API layer drives it
//!
//! - **Construction** (DESIGN §3.8): the API binds synchronously, builds the machine with
//!   [`UdpMachine::new`] and hands it the bind result as the first `Io` input
//!   (`IoEvent::Bound` / `IoEvent::BindFailed`). A default remote that is a host name is then
//!   resolved (`IoCommand::Resolve`); the socket opens once the first address of its family is
//!   known (AMB-60).
//! - **Writes**: the API turns a `UDPMessage` into a destination with [`choose_destination`] (or
//!   [`UdpMachine::destination_for`]), applies the permission check (SecurityError, UDP-WRITE-04)
//!   and passes the result, `Ok` or `Err`, in `AppCommand::SendDatagram`. `handle` always returns
//!   `Ok` for a write: every outcome, including a rejection known at once, arrives as
//!   `Event::WriteSettled` in write order (GEN-03, INV-11).
//! - **Default remote given as a host name**: the destination keeps the *name*
//!   (`Destination::Name`), so the permission check compares the text the caller gave
//!   (DICT-PERM-09: no DNS). When the write reaches the backend, the machine replaces a name equal
//!   to the default remote name by the address resolved at open ([`UdpMachine::resolved_default`]),
//!   so the default is looked up once (AMB-60); any other name is resolved by the backend for that
//!   write (UDP-WRITE-13).
//! - **Multicast**: `handle(JoinMulticast)` checks the group and the state; on `Ok` the API calls
//!   the backend synchronously. If the backend refuses (NetworkError, UDP-MCAST-06) the API should
//!   hand the machine `LeaveMulticast` for the same group, so [`UdpMachine::memberships`] stays
//!   exact (leave never fails while opening or open).
//!
//! # Decisions where RULES.md is silent
//!
//! - `IoEvent::Failed` while "opening" (before or after the bind) is a setup failure
//!   (UDP-OPEN-02); `ConversionFailed` while "opening" is ignored (nothing is read before open).
//! - A datagram the backend reports between the bind and the open is queued like any other.
//! - `close()` in "open" keeps the OS socket for the flush (AMB-13); a fatal error during that
//!   flush rejects the unsent writes and `closed` with `NetworkError` (the readable stays done).
//! - A datagram delivered while the queue is full (racing `ReadInterest(false)`) is dropped and
//!   counted in [`UdpMachine::dropped_datagrams`], so the queue never exceeds its capacity (INV-19).
//! - A write with a non-increasing [`WriteId`] rejects `TypeError`, in order, without consuming the
//!   id sequence. A write rejected on arrival (writable closed or errored) still settles after the
//!   writes before it (INV-11).
//! - A setup failure or `close()` while "opening" rejects every queued write with the opening
//!   error, even one the API had already rejected (its sink never ran, A-16).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;

use crate::address::Remote;
use crate::common::{Outbox, Promise, StateCell};
use crate::error::{Cause, ErrorName, SocketError};
use crate::io::{
    AppCommand, Deadline, Destination, Event, Input, IoCommand, IoEvent, Output, ReadResult, UdpMessage,
    WriteId,
};
use crate::options::UdpSpec;
use crate::state::{ReadyState, Row, SocketKind};
use crate::time::Instant;

/// The sans-IO machine of one `UDPSocket`.
#[derive(Debug)]
pub struct UdpMachine {
    spec: UdpSpec,
    state: StateCell,
    opened: Promise,
    closed: Promise,
    out: Outbox,
    phase: Phase,
    local: Option<SocketAddr>,
    resolved_default: Option<IpAddr>,
    readable: Readable,
    writable: Writable,
    memberships: Vec<IpAddr>,
}

/// Where the socket is, below the readyState. The machine's logic follows the phase; the readyState
/// only reports it (so a disabled row in mutation testing shows up as a wrong state, not a hang).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// "opening": waiting for the constructor's bind result.
    Binding,
    /// "opening": bound; the default remote's host name is being resolved.
    Resolving,
    /// "open".
    Open,
    /// "closed" by `close()` in "open": the OS socket is kept until the queued datagrams are sent
    /// (AMB-13).
    Flushing,
    /// "closed" and the OS socket released (`IoCommand::Close` emitted).
    Released,
}

#[derive(Debug)]
struct Readable {
    queue: VecDeque<UdpMessage>,
    /// Most datagrams the queue holds (INV-19); at least 1.
    capacity: usize,
    /// Set once the readable is closed (done) or errored; the first end wins (INV-06).
    end: Option<ReadEnd>,
    /// What the backend was last told with `ReadInterest`.
    interest: bool,
    reader_waiting: bool,
    /// Largest `dropped_total` the backend reported.
    dropped_backend: u64,
    /// Datagrams the backend delivered while the queue was already full (a race with
    /// `ReadInterest(false)`), dropped here so the queue stays bounded.
    dropped_here: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadEnd {
    Done,
    Errored(SocketError),
}

#[derive(Debug)]
struct Writable {
    /// Writes not yet handed to the backend, in write order (settled ones are removed).
    queue: VecDeque<QueuedWrite>,
    /// Bytes of the in-flight write and of queued writes that may still be sent.
    bytes: usize,
    /// The one write the backend holds: its id and counted size.
    in_flight: Option<(WriteId, usize)>,
    last_id: Option<WriteId>,
    /// Closed cleanly (writer close or socket `close()`): later writes reject TypeError.
    closed: bool,
    /// Errored (abort, setup failure, fatal error): later writes reject with it. Takes precedence
    /// over `closed` (UDP-WRITE-10: "after an error close, the stored error").
    error: Option<SocketError>,
}

#[derive(Debug)]
struct QueuedWrite {
    id: WriteId,
    /// Bytes this write counts in `Writable::bytes` (0 for a write rejected on arrival).
    size: usize,
    job: Job,
}

#[derive(Debug)]
enum Job {
    /// To be checked and sent when it reaches the head of the queue after opening.
    Send { data: Bytes, dest: Result<Destination, SocketError> },
    /// Already decided: settles with this error when it reaches the head of the queue.
    Reject(SocketError),
}

impl UdpMachine {
    /// A `UDPSocket` constructor succeeded: the socket starts "opening" with both promises pending
    /// (UDP-CTOR-19). Nothing is emitted: the constructor bound the socket synchronously and its
    /// result is the first `Io` input (`Bound` or `BindFailed`, DESIGN §3.8).
    pub fn new(now: Instant, spec: UdpSpec) -> Self {
        let _ = now; // UDP arms no timers.
        let capacity = spec.readable_capacity.max(1);
        UdpMachine {
            spec,
            state: StateCell::new(SocketKind::Udp, ReadyState::Opening),
            opened: Promise::Pending,
            closed: Promise::Pending,
            out: Outbox::new(),
            phase: Phase::Binding,
            local: None,
            resolved_default: None,
            readable: Readable {
                // Grows to `capacity` once, then never reallocates (steady state allocates nothing).
                queue: VecDeque::new(),
                capacity,
                end: None,
                interest: false,
                reader_waiting: false,
                dropped_backend: 0,
                dropped_here: 0,
            },
            writable: Writable {
                queue: VecDeque::new(),
                bytes: 0,
                in_flight: None,
                last_id: None,
                closed: false,
                error: None,
            },
            memberships: Vec::new(),
        }
    }

    /// Handles one input.
    ///
    /// `Err` is what the spec throws synchronously: `joinMulticast`/`leaveMulticast` errors
    /// (UDP-MCAST-03/04), an input of another socket kind (`TypeError`, no effect) and
    /// `Input::Open` (`InvalidStateError`, no effect). Everything else — write rejections included —
    /// is reported through events. Backend events that do not apply in the current state are
    /// ignored. Never panics.
    #[inline]
    pub fn handle(&mut self, now: Instant, input: Input) -> Result<(), SocketError> {
        self.handle_lazy(&mut || now, input)
    }

    /// As [`handle`](Self::handle), with the time read from `now` only when a transition needs
    /// it: a UDP socket arms no timers, so never (a caller pays no clock read per datagram).
    #[inline]
    pub fn handle_lazy(&mut self, now: &mut dyn FnMut() -> Instant, input: Input) -> Result<(), SocketError> {
        let _ = now; // UDP arms no timers.
        let before = self.desired_size();
        let result = match input {
            Input::Open(_) => {
                return Err(SocketError::invalid_state().with_message("the socket is already constructed"))
            }
            Input::App(cmd) => self.handle_app(cmd),
            Input::Io(ev) => self.handle_io(ev),
            Input::Timeout => Ok(()),
        };
        // Wake `ready()` when backpressure clears on a writable that still accepts writes.
        if before <= 0 && self.desired_size() > 0 && self.writable.error.is_none() {
            self.out.event(Event::WritableReady);
        }
        result
    }

    /// The next output, in the order produced; call until `None` after every `handle`.
    #[inline]
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    /// The earliest armed timer: always `None`, UDP has no timers (a flush after `close()` is
    /// bounded by the backend's send, INV-02).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Deadline> {
        None
    }

    /// The readyState: only ever "opening", "open" or "closed" (UDP-ATTR-01).
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

    /// The bound local address and port, once `Bound` arrived (UDP-CTOR-15: the real port).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The checked specification the socket was built from.
    pub fn spec(&self) -> &UdpSpec {
        &self.spec
    }

    /// The writable's desired size: the writable high-water mark minus the bytes of the in-flight
    /// write and of queued writes that may still be sent. Reported as is whatever the writable's
    /// state; the API reports errored/closed writables through [`UdpMachine::writable_error`].
    pub fn desired_size(&self) -> i64 {
        let hwm = i64::try_from(self.spec.writable_high_water_mark).unwrap_or(i64::MAX);
        let queued = i64::try_from(self.writable.bytes).unwrap_or(i64::MAX);
        hwm.saturating_sub(queued)
    }

    /// The error a new write would get, `None` while the writable accepts writes: `TypeError`
    /// after writer close or a clean `close()` (UDP-WRITE-10), the stored error after an abort
    /// (A-18) or an error close (A-23).
    pub fn writable_error(&self) -> Option<SocketError> {
        self.write_refusal()
    }

    /// Datagrams waiting in the readable queue (at most the readable capacity, INV-19).
    pub fn queued_datagrams(&self) -> usize {
        self.readable.queue.len()
    }

    /// Bytes of writes not yet settled that may still be sent (in-flight included).
    pub fn queued_write_bytes(&self) -> usize {
        self.writable.bytes
    }

    /// Writes not yet settled (in-flight included). A writer `close()` completes when this is 0.
    pub fn pending_writes(&self) -> usize {
        self.writable.queue.len() + usize::from(self.writable.in_flight.is_some())
    }

    /// Whether the machine currently wants the backend to read datagrams (EXT-09).
    pub fn read_interest(&self) -> bool {
        self.readable.interest
    }

    /// Datagrams lost to a full receive buffer (UDP-READ-04, AMB-33): the largest drop counter the
    /// backend reported, plus datagrams the backend delivered while the queue was already full.
    pub fn dropped_datagrams(&self) -> u64 {
        self.readable.dropped_backend.saturating_add(self.readable.dropped_here)
    }

    /// Multicast groups joined and not left, sorted (diag). Cleared when the socket is released.
    pub fn memberships(&self) -> &[IpAddr] {
        &self.memberships
    }

    /// The address a host-name default remote resolved to during opening (AMB-60), once known.
    pub fn resolved_default(&self) -> Option<IpAddr> {
        self.resolved_default
    }

    /// Where a write naming neither address nor port goes, when the constructor gave both defaults:
    /// the literal, or — for a host name — the resolved address once open, the name before.
    pub fn default_destination(&self) -> Option<Destination> {
        let port = self.spec.remote_port.filter(|p| *p != 0)?;
        Some(match self.spec.remote.as_ref()? {
            Remote::Ip(ip) => Destination::Addr(SocketAddr::new(*ip, port)),
            Remote::Name(name) => match self.resolved_default {
                Some(ip) => Destination::Addr(SocketAddr::new(ip, port)),
                None => Destination::Name(name.clone(), port),
            },
        })
    }

    /// [`choose_destination`] with this socket's defaults.
    pub fn destination_for(
        &self,
        remote_address: Option<&str>,
        remote_port: Option<u16>,
    ) -> Result<Destination, SocketError> {
        choose_destination(&self.spec, remote_address, remote_port)
    }

    // ---- the write shortcut ---------------------------------------------------------------

    /// The data path's shortcut for the common write, quinn-style: a write the machine would hand
    /// straight to the backend is taken in flight here, with no input or output, and its address
    /// returned. That is when the socket is open, no write is queued or in flight, the writable
    /// accepts writes, `id` is above the last one, and `dest` is an address the machine's checks
    /// pass (family, size). The caller sends it at once and reports the outcome with
    /// [`send_done`](Self::send_done), settling the write's promise itself; or, when the backend
    /// cannot take it yet, later as `IoEvent::Sent`/`SendFailed` through
    /// [`handle`](Self::handle) (which settles it with `WriteSettled`, as for any write).
    ///
    /// `None` changes nothing: the caller hands the write in as `AppCommand::SendDatagram`,
    /// where it is queued, rejected or sent in the usual way.
    pub fn send_at_once(
        &mut self,
        id: WriteId,
        len: usize,
        dest: &Result<Destination, SocketError>,
    ) -> Option<SocketAddr> {
        let Ok(Destination::Addr(addr)) = dest else { return None };
        let idle = self.phase == Phase::Open
            && self.writable.in_flight.is_none()
            && self.writable.queue.is_empty()
            && self.writable.error.is_none()
            && !self.writable.closed;
        if !idle
            || self.writable.last_id.is_some_and(|last| id <= last)
            || addr.is_ipv4() != self.is_ipv4()
            || len > self.spec.max_datagram()
        {
            return None;
        }
        self.writable.last_id = Some(id);
        self.writable.bytes = self.writable.bytes.saturating_add(len);
        self.writable.in_flight = Some((id, len));
        Some(*addr)
    }

    /// A write taken with [`send_at_once`](Self::send_at_once) was sent at once, or failed at
    /// once (which fails that write only, A-28: the same bookkeeping): it settles without a
    /// `WriteSettled` event, the caller settling its promise. `false` when `id` is not the write
    /// in flight (nothing changes).
    pub fn send_done(&mut self, id: WriteId) -> bool {
        match self.writable.in_flight {
            Some((current, size)) if current == id => {
                let before = self.desired_size();
                self.writable.in_flight = None;
                self.writable.bytes = self.writable.bytes.saturating_sub(size);
                self.pump();
                if before <= 0 && self.desired_size() > 0 && self.writable.error.is_none() {
                    self.out.event(Event::WritableReady);
                }
                true
            }
            _ => false,
        }
    }

    // ---- the read shortcut ----------------------------------------------------------------

    /// The data path's shortcut for the common read: the next queued datagram, exactly as
    /// `AppCommand::Read` would hand it out, with no input and no `Read` event. `None` when
    /// none is queued: the caller reads through `AppCommand::Read`, which also reports the end of
    /// the readable or waits for the next datagram.
    pub fn take_datagram(&mut self) -> Option<UdpMessage> {
        let msg = self.readable.queue.pop_front()?;
        self.update_read_interest();
        Some(msg)
    }

    /// The read shortcut's other half: whether a datagram the backend delivers now, while the
    /// reader asks for one, may go straight to that reader instead of through the queue: the
    /// socket is open, the readable has not ended and nothing is queued ahead of it (the reader
    /// then no longer waits). Records the backend's drop counter either way, as
    /// `IoEvent::Datagram` does. `false` changes nothing else: the caller hands the datagram in
    /// as `IoEvent::Datagram`.
    pub fn deliver_at_once(&mut self, dropped_total: u64) -> bool {
        self.readable.dropped_backend = self.readable.dropped_backend.max(dropped_total);
        let direct =
            self.phase == Phase::Open && self.readable.end.is_none() && self.readable.queue.is_empty();
        if direct {
            self.readable.reader_waiting = false;
        }
        direct
    }

    /// Mutation testing: make the state refuse one §9 row (the `mutants` command).
    #[cfg(feature = "mutations")]
    pub fn disable_row(&mut self, row: Option<Row>) {
        self.state.disable(row);
    }

    // ---- application commands -------------------------------------------------------------

    // The once-per-socket transitions (open, close, failures, memberships) are `#[cold]`: out of
    // line, they leave the per-datagram code (write, send done, datagram, read) small in the
    // instruction cache.
    fn handle_app(&mut self, cmd: AppCommand) -> Result<(), SocketError> {
        match cmd {
            AppCommand::Read => self.read(),
            AppCommand::Close => self.close(),
            AppCommand::SendDatagram { id, data, dest } => self.write(id, data, dest),
            AppCommand::WriterClose => self.writer_close(),
            AppCommand::WriterAbort { reason } => self.writer_abort(reason),
            AppCommand::JoinMulticast { group } => return self.join(group),
            AppCommand::LeaveMulticast { group } => return self.leave(group),
            _ => return Err(SocketError::type_error().with_message("not a UDPSocket operation")),
        }
        Ok(())
    }

    fn read(&mut self) {
        if let Some(msg) = self.readable.queue.pop_front() {
            self.out.event(Event::Read(ReadResult::Message(msg)));
            self.update_read_interest();
            return;
        }
        match &self.readable.end {
            Some(ReadEnd::Done) => self.out.event(Event::Read(ReadResult::Done)),
            Some(ReadEnd::Errored(e)) => self.out.event(Event::Read(ReadResult::Error(e.clone()))),
            None => self.readable.reader_waiting = true,
        }
    }

    /// `close()` or readable cancel (UDP-CLOSE-01, UDP-READ-CANCEL-*).
    #[cold]
    #[inline(never)]
    fn close(&mut self) {
        match self.phase {
            Phase::Binding | Phase::Resolving => {
                // UDP-READ-CANCEL-02, A-12, A-16.
                let err = SocketError::abort();
                self.state.set(Row::UdpOpeningClose, &mut self.out);
                self.opened.settle(Err(err.clone()), &mut self.out, Event::Opened);
                self.end_readable(ReadEnd::Done);
                self.error_writable(err.clone());
                self.release();
                self.closed.settle(Err(err), &mut self.out, Event::Closed);
            }
            Phase::Open => {
                // UDP-READ-CANCEL-03, A-13: "closed" at once, reads done at once, queued datagrams
                // still sent, then the socket is released and `closed` resolves.
                self.phase = Phase::Flushing;
                self.state.set(Row::UdpOpenClose, &mut self.out);
                self.end_readable(ReadEnd::Done);
                self.writable.closed = true;
                self.pump();
                self.update_read_interest();
            }
            // UDP-READ-CANCEL-01, UDP-CLOSE-03: no effect.
            Phase::Flushing | Phase::Released => {}
        }
    }

    fn write(&mut self, id: WriteId, data: Bytes, dest: Result<Destination, SocketError>) {
        let refusal = if self.writable.last_id.is_some_and(|last| id <= last) {
            Some(SocketError::type_error().with_message("write ids must increase"))
        } else {
            self.writable.last_id = Some(id);
            self.write_refusal()
        };
        let entry = match refusal {
            Some(err) => QueuedWrite { id, size: 0, job: Job::Reject(err) },
            None => {
                let size = data.len();
                self.writable.bytes = self.writable.bytes.saturating_add(size);
                if self.phase == Phase::Open
                    && self.writable.in_flight.is_none()
                    && self.writable.queue.is_empty()
                {
                    // Nothing ahead of it: straight to the backend, as `pump` would hand it on
                    // (the common case of one write at a time skips the queue).
                    self.send(id, size, data, dest);
                    return;
                }
                QueuedWrite { id, size, job: Job::Send { data, dest } }
            }
        };
        self.writable.queue.push_back(entry);
        self.pump();
    }

    /// Writer `close()`: only the writable closes; queued datagrams are still sent, the socket
    /// stays open and keeps receiving (AMB-53, UDP-WRITE-09).
    #[cold]
    #[inline(never)]
    fn writer_close(&mut self) {
        if self.write_refusal().is_none() {
            self.writable.closed = true;
        }
    }

    /// Writer `abort(reason)`: the in-flight write completes; queued and later writes reject
    /// AbortError carrying the reason (A-18, AMB-53). The socket stays open.
    #[cold]
    #[inline(never)]
    fn writer_abort(&mut self, reason: Option<Arc<str>>) {
        if self.writable.error.is_some() {
            return;
        }
        if self.writable.closed && self.pending_writes() == 0 {
            return; // Already closed and flushed: abort of a closed stream does nothing.
        }
        let err = match reason {
            Some(r) => SocketError::abort().with_message(r),
            None => SocketError::abort(),
        };
        self.writable.error = Some(err.clone());
        for w in self.writable.queue.iter_mut() {
            if matches!(w.job, Job::Send { .. }) {
                self.writable.bytes = self.writable.bytes.saturating_sub(w.size);
                w.size = 0;
                w.job = Job::Reject(err.clone());
            }
        }
        self.pump();
    }

    #[cold]
    #[inline(never)]
    fn join(&mut self, group: IpAddr) -> Result<(), SocketError> {
        self.check_membership_call(group)?;
        if let Err(at) = self.memberships.binary_search(&group) {
            self.memberships.insert(at, group);
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn leave(&mut self, group: IpAddr) -> Result<(), SocketError> {
        self.check_membership_call(group)?;
        // UDP-MCAST-05: leaving a group never joined is Ok.
        if let Ok(at) = self.memberships.binary_search(&group) {
            self.memberships.remove(at);
        }
        Ok(())
    }

    /// UDP-MCAST-03 (a multicast literal, checked first as the API parses it first), then
    /// UDP-MCAST-04 (not "closed"; "opening" acts at once like "open").
    fn check_membership_call(&self, group: IpAddr) -> Result<(), SocketError> {
        if !group.is_multicast() {
            return Err(
                SocketError::invalid_access().with_message(format!("not a multicast address: {group}"))
            );
        }
        match self.phase {
            Phase::Flushing | Phase::Released => {
                Err(SocketError::invalid_state().with_message("the socket is closed"))
            }
            Phase::Binding | Phase::Resolving | Phase::Open => Ok(()),
        }
    }

    // ---- backend events -------------------------------------------------------------------

    fn handle_io(&mut self, ev: IoEvent) -> Result<(), SocketError> {
        match ev {
            IoEvent::Bound { local } => self.on_bound(local),
            IoEvent::BindFailed { cause } => {
                if self.phase == Phase::Binding {
                    self.fail_setup(SocketError::network(cause));
                }
            }
            IoEvent::Resolved { addrs } => self.on_resolved(&addrs),
            IoEvent::ResolveFailed { cause } => {
                if self.phase == Phase::Resolving {
                    self.fail_setup(SocketError::network(cause));
                }
            }
            IoEvent::Datagram { data, from, dropped_total } => self.on_datagram(data, from, dropped_total),
            IoEvent::Sent { id } => self.on_send_done(id, Ok(())),
            IoEvent::SendFailed { id, cause } => self.on_send_done(id, Err(SocketError::network(cause))),
            // A-35, UDP-READ-ERR-03: per-datagram receive errors are ignored.
            IoEvent::TransientError { .. } => {}
            IoEvent::Failed { cause } => self.on_failed(SocketError::network(cause)),
            IoEvent::ConversionFailed => {
                if self.phase == Phase::Open {
                    let err = SocketError::with_cause(ErrorName::TypeError, Cause::Conversion);
                    self.fail_open(err, Row::UdpOpenConversionFails);
                }
            }
            _ => return Err(SocketError::type_error().with_message("not a UDP backend event")),
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn on_bound(&mut self, local: SocketAddr) {
        if self.phase != Phase::Binding {
            return;
        }
        self.local = Some(local);
        match self.spec.remote_name().cloned() {
            Some(name) => {
                self.phase = Phase::Resolving;
                self.out.io(IoCommand::Resolve { name });
            }
            None => self.open(),
        }
    }

    #[cold]
    #[inline(never)]
    fn on_resolved(&mut self, addrs: &[IpAddr]) {
        if self.phase != Phase::Resolving {
            return;
        }
        let v4 = self.is_ipv4();
        match addrs.iter().find(|ip| ip.is_ipv4() == v4) {
            Some(ip) => {
                self.resolved_default = Some(*ip);
                self.open();
            }
            None if addrs.is_empty() => self.fail_setup(SocketError::network(Cause::HostNotFound)),
            None => self.fail_setup(
                SocketError::network(Cause::FamilyMismatch)
                    .with_message("the remote name has no address of the socket's family"),
            ),
        }
    }

    fn on_datagram(&mut self, data: Bytes, from: SocketAddr, dropped_total: u64) {
        self.readable.dropped_backend = self.readable.dropped_backend.max(dropped_total);
        if self.readable.end.is_some() || matches!(self.phase, Phase::Flushing | Phase::Released) {
            return; // INV-06: nothing is delivered after the readable ended.
        }
        if self.readable.queue.len() >= self.readable.capacity {
            // INV-19: arrived despite `ReadInterest(false)`; counted, never queued.
            self.readable.dropped_here = self.readable.dropped_here.saturating_add(1);
            return;
        }
        self.readable.queue.push_back(UdpMessage { data, from });
        if self.readable.reader_waiting {
            self.readable.reader_waiting = false;
            self.out.event(Event::Readable);
        }
        self.update_read_interest();
    }

    fn on_send_done(&mut self, id: WriteId, result: Result<(), SocketError>) {
        match self.writable.in_flight {
            Some((current, size)) if current == id => {
                self.writable.in_flight = None;
                self.settle_write(id, size, result);
                self.pump();
            }
            _ => {} // Not the write the backend holds: stale, ignored.
        }
    }

    #[cold]
    #[inline(never)]
    fn on_failed(&mut self, err: SocketError) {
        match self.phase {
            // The socket died before it opened: a setup failure (UDP-OPEN-02).
            Phase::Binding | Phase::Resolving => self.fail_setup(err),
            Phase::Open => self.fail_open(err, Row::UdpOpenFatalError),
            // The flush after `close()` cannot finish: the rest of the queue and `closed` reject.
            Phase::Flushing => {
                self.error_writable(err.clone());
                self.release();
                self.closed.settle(Err(err), &mut self.out, Event::Closed);
            }
            Phase::Released => {}
        }
    }

    // ---- transitions ----------------------------------------------------------------------

    /// UDP-OPEN-01, UDP-OPEN-04: state, then `opened`, then reading and the queued writes.
    #[cold]
    #[inline(never)]
    fn open(&mut self) {
        self.phase = Phase::Open;
        self.state.set(Row::UdpOpeningSetupSucceeds, &mut self.out);
        self.opened.settle(Ok(()), &mut self.out, Event::Opened);
        self.update_read_interest();
        self.pump();
    }

    /// UDP-OPEN-02, UDP-OPEN-03 (A-16, A-23): everything rejects with `err`; the socket is released
    /// before `closed` settles (GEN-14).
    #[cold]
    #[inline(never)]
    fn fail_setup(&mut self, err: SocketError) {
        self.state.set(Row::UdpOpeningSetupFails, &mut self.out);
        self.opened.settle(Err(err.clone()), &mut self.out, Event::Opened);
        self.end_readable(ReadEnd::Errored(err.clone()));
        self.error_writable(err.clone());
        self.release();
        self.closed.settle(Err(err), &mut self.out, Event::Closed);
    }

    /// UDP-READ-ERR-01/02 (A-23): readable and writable errored, released, `closed` rejects.
    #[cold]
    #[inline(never)]
    fn fail_open(&mut self, err: SocketError, row: Row) {
        self.state.set(row, &mut self.out);
        self.end_readable(ReadEnd::Errored(err.clone()));
        self.error_writable(err.clone());
        self.release();
        self.closed.settle(Err(err), &mut self.out, Event::Closed);
    }

    /// Closes or errors the readable once: queued datagrams are discarded and a waiting reader is
    /// woken to read the end.
    #[cold]
    #[inline(never)]
    fn end_readable(&mut self, end: ReadEnd) {
        if self.readable.end.is_some() {
            return;
        }
        self.readable.queue.clear();
        self.readable.end = Some(end);
        if self.readable.reader_waiting {
            self.readable.reader_waiting = false;
            self.out.event(Event::Readable);
        }
    }

    /// Errors the writable (the first error is kept) and settles every unsettled write now, in
    /// order: the in-flight one and queued sends with `err`, decided rejections with their own.
    #[cold]
    #[inline(never)]
    fn error_writable(&mut self, err: SocketError) {
        if self.writable.error.is_none() {
            self.writable.error = Some(err.clone());
        }
        if let Some((id, size)) = self.writable.in_flight.take() {
            self.settle_write(id, size, Err(err.clone()));
        }
        while let Some(w) = self.writable.queue.pop_front() {
            let result = match w.job {
                Job::Reject(e) => Err(e),
                Job::Send { .. } => Err(err.clone()),
            };
            self.settle_write(w.id, w.size, result);
        }
    }

    /// Releases the OS socket once (GEN-14: always before `closed` settles).
    #[cold]
    #[inline(never)]
    fn release(&mut self) {
        if self.phase == Phase::Released {
            return;
        }
        self.phase = Phase::Released;
        self.out.io(IoCommand::Close);
        self.readable.interest = false;
        self.memberships.clear();
    }

    // ---- the write queue ------------------------------------------------------------------

    /// Moves the write queue: settles decided rejections, checks and hands the head to the
    /// backend (one at a time), and finishes a `close()` flush once nothing is left.
    fn pump(&mut self) {
        while self.writable.in_flight.is_none() {
            let Some(head) = self.writable.queue.front() else { break };
            if matches!(head.job, Job::Send { .. }) && matches!(self.phase, Phase::Binding | Phase::Resolving)
            {
                break; // UDP-OPEN-04: held until the socket opens.
            }
            let Some(w) = self.writable.queue.pop_front() else { break };
            match w.job {
                Job::Reject(err) => self.settle_write(w.id, w.size, Err(err)),
                Job::Send { data, dest } => {
                    if self.phase == Phase::Released {
                        // Defensive: a released socket sends nothing (INV-17).
                        let err = self.write_refusal().unwrap_or_else(SocketError::type_error);
                        self.settle_write(w.id, w.size, Err(err));
                    } else {
                        self.send(w.id, w.size, data, dest);
                    }
                }
            }
        }
        if self.phase == Phase::Flushing && self.pending_writes() == 0 {
            // A-13: the flush is done; release, then resolve `closed`.
            self.release();
            self.closed.settle(Ok(()), &mut self.out, Event::Closed);
        }
    }

    /// Hands a write to the backend after the machine's checks ([`UdpMachine::check_send`]), or
    /// rejects it: the one place a write becomes in flight.
    fn send(&mut self, id: WriteId, size: usize, data: Bytes, dest: Result<Destination, SocketError>) {
        match self.check_send(dest, data.len()) {
            Ok(dest) => {
                self.writable.in_flight = Some((id, size));
                self.out.io(IoCommand::SendTo { id, dest, data });
            }
            Err(err) => self.settle_write(id, size, Err(err)),
        }
    }

    /// The machine's own checks before a send: the API's verdict (A-28), the address family
    /// (UDP-WRITE-14) and the size limit (UDP-WRITE-07). Substitutes the default remote's resolved
    /// address for its name (AMB-60).
    fn check_send(
        &self,
        dest: Result<Destination, SocketError>,
        len: usize,
    ) -> Result<Destination, SocketError> {
        let dest = match dest? {
            Destination::Addr(addr) => {
                if addr.is_ipv4() != self.is_ipv4() {
                    return Err(family_mismatch(addr));
                }
                Destination::Addr(addr)
            }
            Destination::Name(name, port) => match self.resolved_default {
                Some(ip) if self.spec.remote_name() == Some(&name) => {
                    Destination::Addr(SocketAddr::new(ip, port))
                }
                _ => Destination::Name(name, port),
            },
        };
        if len > self.spec.max_datagram() {
            return Err(too_large(len, self.spec.max_datagram()));
        }
        Ok(dest)
    }

    fn settle_write(&mut self, id: WriteId, size: usize, result: Result<(), SocketError>) {
        self.writable.bytes = self.writable.bytes.saturating_sub(size);
        self.out.event(Event::WriteSettled { id, result });
    }

    /// What a new write gets instead of being queued, if anything.
    fn write_refusal(&self) -> Option<SocketError> {
        if let Some(err) = &self.writable.error {
            return Some(err.clone());
        }
        if self.writable.closed || self.phase == Phase::Released {
            return Some(SocketError::with_cause(ErrorName::TypeError, Cause::StreamClosed));
        }
        None
    }

    // ---- helpers --------------------------------------------------------------------------

    fn update_read_interest(&mut self) {
        let want = self.phase == Phase::Open
            && self.readable.end.is_none()
            && self.readable.queue.len() < self.readable.capacity;
        if want != self.readable.interest {
            self.readable.interest = want;
            self.out.io(IoCommand::ReadInterest(want));
        }
    }

    fn is_ipv4(&self) -> bool {
        self.local.map_or(self.spec.bind_address.is_ipv4(), |l| l.is_ipv4())
    }
}

/// The error of a write to an address of the other family (UDP-WRITE-14).
#[cold]
#[inline(never)]
fn family_mismatch(addr: SocketAddr) -> SocketError {
    SocketError::network(Cause::FamilyMismatch)
        .with_message(format!("{addr} is not of the socket's address family"))
}

/// The error of a datagram larger than the largest one (UDP-WRITE-07).
#[cold]
#[inline(never)]
fn too_large(len: usize, max: usize) -> SocketError {
    SocketError::network(Cause::MessageTooLarge)
        .with_message(format!("{len} bytes exceed the largest datagram ({max})"))
}

/// Chooses a write's destination from a `UDPMessage`'s `remoteAddress`/`remotePort` and the
/// socket's defaults, in the check order of UDP-WRITE-13:
///
/// 1. no address in the message nor a default (UDP-WRITE-02), or no port in either (UDP-WRITE-03):
///    `InvalidAccessError`;
/// 2. an invalid message address (GEN-13) or a port 0: `InvalidAccessError`;
/// 3. each field falls back to its default on its own (UDP-WRITE-05, AMB-50).
///
/// A host name — given in the message or as the default — stays a [`Destination::Name`], so the
/// permission check that follows (SecurityError, UDP-WRITE-04, done by the API) compares the text
/// the caller gave. The machine sends a name equal to the default remote to the address resolved at
/// open; the backend resolves any other name for that write. Pure: no I/O, no state.
pub fn choose_destination(
    spec: &UdpSpec,
    remote_address: Option<&str>,
    remote_port: Option<u16>,
) -> Result<Destination, SocketError> {
    if remote_address.is_none() && spec.remote.is_none() {
        return Err(SocketError::invalid_access().with_message("no destination address"));
    }
    let default_port = spec.remote_port.filter(|p| *p != 0);
    if remote_port.is_none() && default_port.is_none() {
        return Err(SocketError::invalid_access().with_message("no destination port"));
    }
    let parsed = remote_address.map(Remote::parse).transpose()?;
    if remote_port == Some(0) {
        return Err(SocketError::invalid_access().with_message("destination port 0"));
    }
    let remote = match (parsed, &spec.remote) {
        (Some(r), _) => r,
        (None, Some(r)) => r.clone(),
        (None, None) => return Err(SocketError::invalid_access().with_message("no destination address")),
    };
    let port = match remote_port.or(default_port) {
        Some(p) => p,
        None => return Err(SocketError::invalid_access().with_message("no destination port")),
    };
    Ok(match remote {
        Remote::Ip(ip) => Destination::Addr(SocketAddr::new(ip, port)),
        Remote::Name(name) => Destination::Name(name, port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::HostName;
    use crate::options::{SocketConfig, MAX_DATAGRAM_V4, MAX_DATAGRAM_V6};
    use proptest::prelude::*;
    use ReadyState::{Closed, Open, Opening};

    const LOCAL: &str = "127.0.0.1:5000";
    const PEER: &str = "127.0.0.1:6000";
    const OTHER: &str = "127.0.0.2:7000";
    const CAPACITY: usize = 4;
    const HWM: usize = 100;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A spec as `checks::udp_spec` would build it for `udp({})` on IPv4, with small queues.
    fn spec() -> UdpSpec {
        UdpSpec {
            bind_address: ip("0.0.0.0"),
            local_port: 0,
            remote: None,
            remote_port: None,
            config: SocketConfig {
                address_reuse: true,
                no_delay: false,
                send_buffer_size: None,
                receive_buffer_size: None,
            },
            loopback: false,
            multicast_ttl: 1,
            multicast_interface: None,
            readable_capacity: CAPACITY,
            writable_high_water_mark: HWM,
        }
    }

    fn spec_with(f: impl FnOnce(&mut UdpSpec)) -> UdpSpec {
        let mut s = spec();
        f(&mut s);
        s
    }

    fn now() -> Instant {
        Instant::from_micros(1)
    }

    fn drain(m: &mut UdpMachine) -> Vec<Output> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }

    fn events(outs: &[Output]) -> Vec<Event> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(e.clone()),
                Output::Io(_) => None,
            })
            .collect()
    }

    fn ios(outs: &[Output]) -> Vec<IoCommand> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Io(c) => Some(c.clone()),
                Output::Event(_) => None,
            })
            .collect()
    }

    fn settled(outs: &[Output]) -> Vec<(u64, Result<(), SocketError>)> {
        events(outs)
            .into_iter()
            .filter_map(|e| match e {
                Event::WriteSettled { id, result } => Some((id.0, result)),
                _ => None,
            })
            .collect()
    }

    fn sent_ids(outs: &[Output]) -> Vec<u64> {
        ios(outs)
            .into_iter()
            .filter_map(|c| match c {
                IoCommand::SendTo { id, .. } => Some(id.0),
                _ => None,
            })
            .collect()
    }

    fn names(results: &[(u64, Result<(), SocketError>)]) -> Vec<(u64, Option<ErrorName>)> {
        results.iter().map(|(id, r)| (*id, r.as_ref().err().map(SocketError::kind))).collect()
    }

    /// The one write settled in `outs`, which must be write `id` and rejected.
    fn single_error(outs: &[Output], id: u64) -> SocketError {
        match settled(outs).as_slice() {
            [(got, Err(err))] if *got == id => err.clone(),
            other => panic!("expected write {id} rejected, got {other:?}"),
        }
    }

    fn io(m: &mut UdpMachine, ev: IoEvent) -> Vec<Output> {
        m.handle(now(), Input::Io(ev)).unwrap();
        drain(m)
    }

    fn app(m: &mut UdpMachine, cmd: AppCommand) -> Vec<Output> {
        m.handle(now(), Input::App(cmd)).unwrap();
        drain(m)
    }

    fn write_to(m: &mut UdpMachine, id: u64, data: &'static [u8], to: &str) -> Vec<Output> {
        app(
            m,
            AppCommand::SendDatagram {
                id: WriteId(id),
                data: Bytes::from_static(data),
                dest: Ok(Destination::Addr(addr(to))),
            },
        )
    }

    fn datagram(m: &mut UdpMachine, data: &'static [u8], from: &str, dropped_total: u64) -> Vec<Output> {
        io(m, IoEvent::Datagram { data: Bytes::from_static(data), from: addr(from), dropped_total })
    }

    fn read(m: &mut UdpMachine) -> Vec<Event> {
        events(&app(m, AppCommand::Read))
    }

    fn build(spec: UdpSpec) -> UdpMachine {
        let mut m = UdpMachine::new(Instant::ZERO, spec);
        assert!(drain(&mut m).is_empty());
        m
    }

    fn socket_opening() -> UdpMachine {
        build(spec())
    }

    fn socket_open() -> UdpMachine {
        let mut m = socket_opening();
        io(&mut m, IoEvent::Bound { local: addr(LOCAL) });
        assert_eq!(m.ready_state(), Open);
        m
    }

    /// The write shortcut takes a write only where the machine would hand it straight on, and
    /// leaves the socket as a sent-and-settled write through inputs would.
    // rule: UDP-WRITE-06, UDP-WRITE-07, UDP-WRITE-14, INV-11, UDP-OPEN-04
    #[test]
    fn send_at_once_takes_only_a_write_nothing_is_ahead_of() {
        let to = Ok(Destination::Addr(addr(PEER)));
        // Opening: writes wait for the open (UDP-OPEN-04), so not at once.
        let mut m = socket_opening();
        assert_eq!(m.send_at_once(WriteId(1), 4, &to), None);
        let mut m = socket_open();
        let hwm = m.desired_size();
        assert_eq!(m.send_at_once(WriteId(1), 4, &to), Some(addr(PEER)));
        assert!(drain(&mut m).is_empty(), "no output: the caller sends and settles");
        assert_eq!((m.pending_writes(), m.queued_write_bytes()), (1, 4));
        // One in flight: the next queues behind it (INV-11), through inputs.
        assert_eq!(m.send_at_once(WriteId(2), 4, &to), None);
        assert!(!m.send_done(WriteId(2)), "not the write in flight");
        assert!(m.send_done(WriteId(1)));
        assert!(drain(&mut m).is_empty());
        assert_eq!((m.pending_writes(), m.desired_size()), (0, hwm));
        // Ids must increase; a name, the other family or an oversized datagram go through inputs,
        // whose checks reject them.
        assert_eq!(m.send_at_once(WriteId(1), 4, &to), None);
        let name = Ok(Destination::Name(HostName::parse("example.test").unwrap(), 9));
        assert_eq!(m.send_at_once(WriteId(3), 4, &name), None);
        assert_eq!(m.send_at_once(WriteId(3), 4, &Ok(Destination::Addr(addr("[::1]:9")))), None);
        assert_eq!(m.send_at_once(WriteId(3), m.spec().max_datagram() + 1, &to), None);
        assert_eq!(m.send_at_once(WriteId(3), 4, &Err(SocketError::security())), None);
        assert_eq!(m.pending_writes(), 0);
        // After writer close, and once closed, nothing is taken.
        app(&mut m, AppCommand::WriterClose);
        assert_eq!(m.send_at_once(WriteId(3), 4, &to), None);
        let mut m = socket_closed();
        assert_eq!(m.send_at_once(WriteId(9), 4, &to), None);
    }

    /// A write the shortcut took whose send waits completes through inputs, settled by
    /// `WriteSettled`; a write larger than the high-water mark wakes `ready()` when it settles.
    // rule: UDP-WRITE-06, INV-11
    #[test]
    fn send_at_once_then_later_report_settles_through_outputs() {
        let to = Ok(Destination::Addr(addr(PEER)));
        let mut m = socket_open();
        assert!(m.send_at_once(WriteId(1), 4, &to).is_some());
        // A second write queues behind the one the backend holds.
        assert!(write_to(&mut m, 2, b"next", PEER).is_empty());
        let outs = io(&mut m, IoEvent::Sent { id: WriteId(1) });
        assert_eq!(settled(&outs), vec![(1, Ok(()))]);
        assert!(outs.iter().any(|o| matches!(o, Output::Io(IoCommand::SendTo { id: WriteId(2), .. }))));
        let mut m = socket_open();
        let big = usize::try_from(m.desired_size()).unwrap();
        assert!(m.send_at_once(WriteId(1), big, &to).is_some());
        assert!(m.desired_size() <= 0);
        assert!(m.send_done(WriteId(1)));
        assert!(events(&drain(&mut m)).contains(&Event::WritableReady));
    }

    /// A UDP socket arms no timers, so `handle_lazy` never reads the time: the library passes its
    /// clock lazily and pays no read per datagram.
    #[test]
    fn no_input_reads_the_clock() {
        let mut m = socket_opening();
        let mut reads = 0;
        let inputs = [
            Input::Io(IoEvent::Bound { local: addr(LOCAL) }),
            Input::App(AppCommand::SendDatagram {
                id: WriteId(1),
                data: Bytes::from_static(b"ping"),
                dest: Ok(Destination::Addr(addr(PEER))),
            }),
            Input::Io(IoEvent::Sent { id: WriteId(1) }),
            Input::App(AppCommand::Read),
            Input::Io(IoEvent::Datagram {
                data: Bytes::from_static(b"pong"),
                from: addr(PEER),
                dropped_total: 0,
            }),
            Input::App(AppCommand::Read),
            Input::App(AppCommand::Close),
        ];
        for input in inputs {
            let _ = m.handle_lazy(
                &mut || {
                    reads += 1;
                    Instant::ZERO
                },
                input,
            );
            drain(&mut m);
        }
        assert_eq!(reads, 0, "a UDP input read the clock");
        assert_eq!(m.ready_state(), Closed);
        assert_eq!(m.poll_timeout(), None);
    }

    fn socket_closed() -> UdpMachine {
        let mut m = socket_open();
        app(&mut m, AppCommand::Close);
        assert_eq!(m.ready_state(), Closed);
        assert_eq!(m.closed(), Some(&Ok(())));
        m
    }

    /// The socket of a host-name default remote, bound and waiting for the resolver.
    fn socket_resolving() -> UdpMachine {
        let mut m = build(spec_with(|s| {
            s.remote = Some(Remote::parse("svc.test").unwrap());
            s.remote_port = Some(9000);
        }));
        let outs = io(&mut m, IoEvent::Bound { local: addr(LOCAL) });
        assert_eq!(ios(&outs), [IoCommand::Resolve { name: HostName::parse("svc.test").unwrap() }]);
        m
    }

    fn position(outs: &[Output], pred: impl Fn(&Output) -> bool) -> usize {
        outs.iter().position(pred).expect("output missing")
    }

    fn is_close(o: &Output) -> bool {
        matches!(o, Output::Io(IoCommand::Close))
    }

    fn is_closed_event(o: &Output) -> bool {
        matches!(o, Output::Event(Event::Closed(_)))
    }

    // ---- construction and opening -----------------------------------------------------------

    // rule: UDP-CTOR-19, STATE-01
    #[test]
    fn test_opening_new_is_opening_with_pending_promises() {
        let mut m = socket_opening();
        assert_eq!(m.ready_state(), Opening);
        assert_eq!(m.opened(), None);
        assert_eq!(m.closed(), None);
        assert_eq!(m.local_addr(), None);
        assert_eq!(m.poll_timeout(), None);
        // The readable and writable exist: a read waits, a write is held.
        assert!(read(&mut m).is_empty());
        assert!(write_to(&mut m, 1, b"x", PEER).is_empty());
        assert_eq!(m.pending_writes(), 1);
    }

    // rule: UDP-CTOR-21, UDP-OPEN-02, ERR-06, GEN-14
    #[test]
    fn test_opening_bind_failed_rejects_asynchronously() {
        let mut m = socket_opening();
        assert!(read(&mut m).is_empty());
        // The bind conflict is not thrown: `handle` is Ok and the failure is in the events.
        let outs = io(&mut m, IoEvent::BindFailed { cause: Cause::AddressInUse });
        let ne = SocketError::network(Cause::AddressInUse);
        assert_eq!(m.ready_state(), Closed);
        assert_eq!(m.opened(), Some(&Err(ne.clone())));
        assert_eq!(m.closed(), Some(&Err(ne.clone())));
        assert!(events(&outs).contains(&Event::Readable));
        assert!(position(&outs, is_close) < position(&outs, is_closed_event));
        assert_eq!(read(&mut m), [Event::Read(ReadResult::Error(ne.clone()))]);
        assert_eq!(read(&mut m), [Event::Read(ReadResult::Error(ne))]);
        // A late Bound is ignored.
        assert!(io(&mut m, IoEvent::Bound { local: addr(LOCAL) }).is_empty());
        assert_eq!(m.ready_state(), Closed);
    }

    // rule: UDP-OPEN-01, GEN-09, INV-04
    #[test]
    fn test_opening_bound_opens_state_before_opened() {
        let mut m = socket_opening();
        let outs = io(&mut m, IoEvent::Bound { local: addr(LOCAL) });
        assert_eq!(
            outs,
            [
                Output::Event(Event::StateChanged { from: Opening, to: Open }),
                Output::Event(Event::Opened(Ok(()))),
                Output::Io(IoCommand::ReadInterest(true)),
            ]
        );
        assert_eq!(m.ready_state(), Open);
        assert_eq!(m.local_addr(), Some(addr(LOCAL)));
        assert_eq!(m.closed(), None);
    }

    // rule: UDP-OPEN-03, ERR-06
    #[test]
    fn test_opening_setup_fails_rejects_queued_writes_with_the_same_error() {
        let mut m = socket_opening();
        write_to(&mut m, 1, b"a", PEER);
        // Even a write the API already rejected gets the opening error: it never reached the sink.
        app(
            &mut m,
            AppCommand::SendDatagram {
                id: WriteId(2),
                data: Bytes::from_static(b"b"),
                dest: Err(SocketError::invalid_access()),
            },
        );
        let outs = io(&mut m, IoEvent::BindFailed { cause: Cause::AddressInUse });
        let ne = SocketError::network(Cause::AddressInUse);
        assert_eq!(settled(&outs), [(1, Err(ne.clone())), (2, Err(ne.clone()))]);
        assert!(sent_ids(&outs).is_empty());
        assert!(
            position(&outs, |o| matches!(o, Output::Event(Event::WriteSettled { .. })))
                < position(&outs, is_closed_event)
        );
        // The writable is errored: later writes get the same error, asynchronously.
        let later = write_to(&mut m, 3, b"c", PEER);
        assert_eq!(settled(&later), [(3, Err(ne))]);
    }

    // rule: UDP-OPEN-04, GEN-10
    #[test]
    fn test_opening_writes_are_held_then_sent_in_order_one_at_a_time() {
        let mut m = socket_opening();
        for id in 1..=3 {
            assert!(write_to(&mut m, id, b"seq", PEER).is_empty());
        }
        let outs = io(&mut m, IoEvent::Bound { local: addr(LOCAL) });
        // Opened first, then only the head is handed over.
        assert!(
            position(&outs, |o| matches!(o, Output::Event(Event::Opened(_))))
                < position(&outs, |o| matches!(o, Output::Io(IoCommand::SendTo { .. })))
        );
        assert_eq!(sent_ids(&outs), [1]);
        let outs = io(&mut m, IoEvent::Sent { id: WriteId(1) });
        assert_eq!(settled(&outs), [(1, Ok(()))]);
        assert_eq!(sent_ids(&outs), [2]);
        let outs = io(&mut m, IoEvent::Sent { id: WriteId(2) });
        assert_eq!(sent_ids(&outs), [3]);
        let outs = io(&mut m, IoEvent::Sent { id: WriteId(3) });
        assert_eq!(settled(&outs), [(3, Ok(()))]);
        assert_eq!(m.pending_writes(), 0);
    }

    // rule: UDP-CTOR-13, UDP-OPEN-01
    #[test]
    fn test_resolving_resolved_opens_and_defaults_use_the_first_address_of_the_family() {
        let mut m = socket_resolving();
        assert_eq!(m.ready_state(), Opening);
        assert_eq!(
            m.default_destination(),
            Some(Destination::Name(HostName::parse("svc.test").unwrap(), 9000))
        );
        // A write issued while resolving keeps the name (permission compares the text).
        let dest = m.destination_for(None, None).unwrap();
        assert_eq!(dest, Destination::Name(HostName::parse("SVC.test").unwrap(), 9000));
        app(
            &mut m,
            AppCommand::SendDatagram { id: WriteId(1), data: Bytes::from_static(b"x"), dest: Ok(dest) },
        );
        let outs = io(&mut m, IoEvent::Resolved { addrs: vec![ip("::1"), ip("127.0.0.7"), ip("127.0.0.8")] });
        assert_eq!(m.ready_state(), Open);
        assert_eq!(m.resolved_default(), Some(ip("127.0.0.7")));
        assert_eq!(m.default_destination(), Some(Destination::Addr(addr("127.0.0.7:9000"))));
        // The queued write goes to the resolved address, not to a second lookup.
        assert!(ios(&outs).contains(&IoCommand::SendTo {
            id: WriteId(1),
            dest: Destination::Addr(addr("127.0.0.7:9000")),
            data: Bytes::from_static(b"x"),
        }));
        // Another name is resolved by the backend for its write (UDP-WRITE-13).
        io(&mut m, IoEvent::Sent { id: WriteId(1) });
        let other = m.destination_for(Some("other.test"), None).unwrap();
        let outs = app(
            &mut m,
            AppCommand::SendDatagram {
                id: WriteId(2),
                data: Bytes::from_static(b"y"),
                dest: Ok(other.clone()),
            },
        );
        assert!(ios(&outs).contains(&IoCommand::SendTo {
            id: WriteId(2),
            dest: other,
            data: Bytes::from_static(b"y")
        }));
    }

    // rule: UDP-CTOR-12, UDP-OPEN-02, ERR-06
    #[test]
    fn test_resolving_failures_fail_the_setup_with_network_error() {
        let mut m = socket_resolving();
        io(&mut m, IoEvent::ResolveFailed { cause: Cause::HostNotFound });
        assert_eq!(m.opened(), Some(&Err(SocketError::network(Cause::HostNotFound))));
        assert_eq!(m.closed(), Some(&Err(SocketError::network(Cause::HostNotFound))));
        assert_eq!(m.ready_state(), Closed);

        // Only addresses of the other family: also a setup failure.
        let mut m = socket_resolving();
        let outs = io(&mut m, IoEvent::Resolved { addrs: vec![ip("::1")] });
        let opened = m.opened().unwrap().clone().unwrap_err();
        assert_eq!((opened.kind(), opened.cause()), (ErrorName::NetworkError, Some(Cause::FamilyMismatch)));
        assert!(position(&outs, is_close) < position(&outs, is_closed_event));
        assert_eq!(m.resolved_default(), None);
    }

    // ---- reading ---------------------------------------------------------------------------

    // rule: UDP-READ-01, UDP-READ-02, UDP-READ-03, DICT-MSG-01, DICT-MSG-02, DICT-MSG-03, INV-10
    #[test]
    fn test_open_datagram_is_one_whole_message_with_its_source() {
        let mut m = socket_open();
        let payload = Bytes::from(vec![7u8; 1400]);
        io(&mut m, IoEvent::Datagram { data: payload.clone(), from: addr(PEER), dropped_total: 0 });
        let ev = read(&mut m);
        let [Event::Read(ReadResult::Message(msg))] = ev.as_slice() else { panic!("{ev:?}") };
        assert_eq!(msg.data, payload);
        assert_eq!(msg.data.as_ptr(), payload.as_ptr(), "moved, not copied");
        assert_eq!(msg.from, addr(PEER));
        assert_eq!(m.queued_datagrams(), 0);
    }

    // rule: UDP-ATTR-02
    #[test]
    fn test_open_datagram_from_another_source_than_the_default_is_delivered() {
        let mut m = build(spec_with(|s| {
            s.remote = Some(Remote::parse("127.0.0.1").unwrap());
            s.remote_port = Some(6000);
        }));
        io(&mut m, IoEvent::Bound { local: addr(LOCAL) });
        datagram(&mut m, b"from b", OTHER, 0);
        let ev = read(&mut m);
        assert_eq!(
            ev,
            [Event::Read(ReadResult::Message(UdpMessage {
                data: Bytes::from_static(b"from b"),
                from: addr(OTHER)
            }))]
        );
    }

    // rule: UDP-READ-05
    #[test]
    fn test_open_datagrams_queue_without_a_pending_read() {
        let mut m = socket_open();
        for d in [&b"1"[..], b"2", b"3"] {
            let outs = io(
                &mut m,
                IoEvent::Datagram { data: Bytes::from_static(d), from: addr(PEER), dropped_total: 0 },
            );
            assert!(events(&outs).is_empty(), "no reader waits, nothing to wake");
        }
        assert_eq!(m.queued_datagrams(), 3);
        let got: Vec<Event> = (0..3).flat_map(|_| read(&mut m)).collect();
        let data: Vec<&[u8]> = got
            .iter()
            .map(|e| match e {
                Event::Read(ReadResult::Message(msg)) => &msg.data[..],
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(data, [&b"1"[..], b"2", b"3"]);
    }

    // rule: UDP-READ-06, DICT-MSG-01
    #[test]
    fn test_open_zero_length_datagram_is_delivered() {
        let mut m = socket_open();
        datagram(&mut m, b"", PEER, 0);
        let ev = read(&mut m);
        assert_eq!(
            ev,
            [Event::Read(ReadResult::Message(UdpMessage { data: Bytes::new(), from: addr(PEER) }))]
        );
    }

    // rule: UDP-READ-04, EXT-09, INV-19
    #[test]
    fn test_open_full_queue_stops_reading_without_error_and_counts_drops() {
        let mut m = socket_open();
        for i in 0..CAPACITY - 1 {
            let outs = datagram(&mut m, b"d", PEER, 0);
            assert!(ios(&outs).is_empty(), "datagram {i}");
        }
        let outs = datagram(&mut m, b"d", PEER, 3);
        assert_eq!(ios(&outs), [IoCommand::ReadInterest(false)]);
        assert!(!m.read_interest());
        // One more that raced the interest change: dropped here and counted, never queued.
        let outs = datagram(&mut m, b"late", PEER, 5);
        assert!(outs.is_empty());
        assert_eq!(m.queued_datagrams(), CAPACITY);
        assert_eq!(m.dropped_datagrams(), 5 + 1);
        assert_eq!(m.ready_state(), Open);
        assert_eq!(m.closed(), None);
        // Reading brings it below capacity: reading resumes.
        let outs = app(&mut m, AppCommand::Read);
        assert_eq!(ios(&outs), [IoCommand::ReadInterest(true)]);
        // The backend's counter only grows as seen: an older value does not lower it.
        datagram(&mut m, b"d", PEER, 2);
        assert_eq!(m.dropped_datagrams(), 6);
    }

    /// The read shortcut hands out what `Read` would, in order, and resumes reading as `Read`
    /// does; with nothing queued it leaves the read to `Read`.
    // rule: UDP-READ-01, UDP-READ-04, EXT-09, INV-19
    #[test]
    fn take_datagram_hands_out_the_queue_as_read_would() {
        let mut m = socket_open();
        assert_eq!(m.take_datagram(), None);
        assert!(drain(&mut m).is_empty());
        for i in 0..CAPACITY {
            datagram(&mut m, if i == 0 { b"first" } else { b"d" }, PEER, 0);
        }
        assert!(!m.read_interest());
        let first = m.take_datagram().unwrap();
        assert_eq!(first, UdpMessage { data: Bytes::from_static(b"first"), from: addr(PEER) });
        assert_eq!(ios(&drain(&mut m)), [IoCommand::ReadInterest(true)]);
        while m.take_datagram().is_some() {}
        assert!(drain(&mut m).is_empty());
        // Empty: `Read` waits, and the next datagram is announced to it.
        assert!(read(&mut m).is_empty());
        assert_eq!(events(&datagram(&mut m, b"x", PEER, 0)), [Event::Readable]);
        // Closed: nothing queued is handed out, `Read` reports done.
        app(&mut m, AppCommand::Close);
        assert_eq!(m.take_datagram(), None);
        assert_eq!(read(&mut m), [Event::Read(ReadResult::Done)]);
    }

    /// A datagram goes straight to the asking reader only when nothing is queued ahead of it
    /// and the readable is open; the drop counter is recorded either way.
    // rule: UDP-READ-01, UDP-READ-04, INV-06, AMB-33
    #[test]
    fn deliver_at_once_only_with_nothing_ahead_and_the_readable_open() {
        let mut m = socket_opening();
        assert!(!m.deliver_at_once(0), "not open yet");
        let mut m = socket_open();
        // A reader that waited is satisfied by the datagram handed to it.
        assert!(read(&mut m).is_empty());
        assert!(m.deliver_at_once(4));
        assert_eq!(m.dropped_datagrams(), 4);
        assert!(drain(&mut m).is_empty());
        assert!(events(&datagram(&mut m, b"queued", PEER, 0)).is_empty(), "no reader waits now");
        // One queued: a new datagram must go behind it.
        assert!(!m.deliver_at_once(2));
        assert_eq!(m.dropped_datagrams(), 4, "the counter only grows");
        assert_eq!(m.take_datagram().map(|d| d.data), Some(Bytes::from_static(b"queued")));
        assert!(m.deliver_at_once(7));
        assert_eq!(m.dropped_datagrams(), 7);
        // Closed: the readable is done (INV-06).
        app(&mut m, AppCommand::Close);
        assert!(!m.deliver_at_once(0));
    }

    // rule: UDP-READ-ERR-01, ERR-06, GEN-14, INV-06, INV-11
    #[test]
    fn test_open_fatal_error_errors_everything_with_network_error() {
        let mut m = socket_open();
        datagram(&mut m, b"unread", PEER, 0);
        write_to(&mut m, 1, b"in flight", PEER);
        write_to(&mut m, 2, b"queued", PEER);
        let outs = io(&mut m, IoEvent::Failed { cause: Cause::Unreachable });
        let ne = SocketError::network(Cause::Unreachable);
        assert_eq!(events(&outs)[0], Event::StateChanged { from: Open, to: Closed });
        assert_eq!(settled(&outs), [(1, Err(ne.clone())), (2, Err(ne.clone()))]);
        assert!(position(&outs, is_close) < position(&outs, is_closed_event));
        assert_eq!(m.closed(), Some(&Err(ne.clone())));
        assert_eq!(m.opened(), Some(&Ok(())));
        // The readable is errored: queued data is gone, every read gives the error.
        assert_eq!(read(&mut m), [Event::Read(ReadResult::Error(ne.clone()))]);
        assert_eq!(read(&mut m), [Event::Read(ReadResult::Error(ne.clone()))]);
        // Nothing is delivered after the readable ended.
        assert!(datagram(&mut m, b"late", PEER, 0).is_empty());
        // The writable is errored with the same error.
        assert_eq!(settled(&write_to(&mut m, 3, b"x", PEER)), [(3, Err(ne))]);
        // The late answer of the backend for write 1 changes nothing.
        assert!(io(&mut m, IoEvent::Sent { id: WriteId(1) }).is_empty());
    }

    // rule: UDP-READ-ERR-02, ERR-09
    #[test]
    fn test_open_conversion_failure_errors_everything_with_type_error() {
        let mut m = socket_open();
        assert!(read(&mut m).is_empty());
        let outs = io(&mut m, IoEvent::ConversionFailed);
        assert!(events(&outs).contains(&Event::Readable));
        let closed = m.closed().unwrap().clone().unwrap_err();
        assert_eq!(closed.kind(), ErrorName::TypeError);
        assert_eq!(m.ready_state(), Closed);
        assert_eq!(read(&mut m), [Event::Read(ReadResult::Error(closed.clone()))]);
        assert_eq!(settled(&write_to(&mut m, 1, b"x", PEER)), [(1, Err(closed))]);
    }

    // rule: UDP-READ-ERR-03
    #[test]
    fn test_open_transient_error_is_ignored() {
        let mut m = socket_open();
        let outs = io(&mut m, IoEvent::TransientError { cause: Cause::Refused });
        assert!(outs.is_empty());
        assert_eq!(m.ready_state(), Open);
        datagram(&mut m, b"x", PEER, 0);
        assert_eq!(
            read(&mut m),
            [Event::Read(ReadResult::Message(UdpMessage {
                data: Bytes::from_static(b"x"),
                from: addr(PEER)
            }))]
        );
    }

    // ---- close and cancel ------------------------------------------------------------------

    // rule: UDP-READ-CANCEL-01, UDP-CLOSE-03, GEN-05, GEN-06, INV-12
    #[test]
    fn test_closed_close_has_no_effect() {
        let mut m = socket_closed();
        let before = m.closed().cloned();
        for _ in 0..3 {
            assert!(app(&mut m, AppCommand::Close).is_empty());
        }
        assert_eq!(m.closed().cloned(), before);
        assert_eq!(m.opened(), Some(&Ok(())));
        assert_eq!(m.ready_state(), Closed);
    }

    // rule: UDP-READ-CANCEL-02, UDP-CLOSE-01, ERR-07, GEN-14, INV-03
    #[test]
    fn test_opening_close_aborts_opened_closed_and_queued_writes() {
        let mut m = socket_opening();
        assert!(read(&mut m).is_empty());
        write_to(&mut m, 1, b"a", PEER);
        write_to(&mut m, 2, b"b", PEER);
        let outs = app(&mut m, AppCommand::Close);
        let ae = SocketError::abort();
        assert_eq!(m.ready_state(), Closed);
        assert_eq!(m.opened(), Some(&Err(ae.clone())));
        assert_eq!(m.closed(), Some(&Err(ae.clone())));
        let ev = events(&outs);
        assert_eq!(ev[0], Event::StateChanged { from: Opening, to: Closed });
        assert!(ev.contains(&Event::Readable));
        assert_eq!(settled(&outs), [(1, Err(ae.clone())), (2, Err(ae.clone()))]);
        assert!(
            position(&outs, |o| matches!(o, Output::Event(Event::Opened(_))))
                < position(&outs, is_closed_event)
        );
        assert!(position(&outs, is_close) < position(&outs, is_closed_event));
        // Reads give done; a late bind result changes nothing.
        assert_eq!(read(&mut m), [Event::Read(ReadResult::Done)]);
        assert!(io(&mut m, IoEvent::Bound { local: addr(LOCAL) }).is_empty());
        assert_eq!(m.opened(), Some(&Err(ae.clone())));
        // Later writes reject with the stored AbortError.
        assert_eq!(settled(&write_to(&mut m, 3, b"c", PEER)), [(3, Err(ae))]);
    }

    // rule: UDP-READ-CANCEL-03, UDP-CLOSE-01, GEN-14, INV-17
    #[test]
    fn test_open_close_flushes_queued_writes_then_releases() {
        let mut m = socket_open();
        for id in 1..=3 {
            write_to(&mut m, id, b"q", PEER);
        }
        let outs = app(&mut m, AppCommand::Close);
        // "closed" at once, `closed` waits for the flush; reading stops.
        assert_eq!(m.ready_state(), Closed);
        assert_eq!(m.closed(), None);
        assert_eq!(events(&outs), [Event::StateChanged { from: Open, to: Closed }]);
        assert_eq!(ios(&outs), [IoCommand::ReadInterest(false)]);
        // Writes after close reject TypeError, after the queued ones.
        assert!(write_to(&mut m, 4, b"late", PEER).is_empty());
        assert_eq!(sent_ids(&io(&mut m, IoEvent::Sent { id: WriteId(1) })), [2]);
        assert_eq!(sent_ids(&io(&mut m, IoEvent::Sent { id: WriteId(2) })), [3]);
        let outs = io(&mut m, IoEvent::Sent { id: WriteId(3) });
        assert_eq!(names(&settled(&outs)), [(3, None), (4, Some(ErrorName::TypeError))]);
        assert_eq!(
            outs[outs.len() - 2..],
            [Output::Io(IoCommand::Close), Output::Event(Event::Closed(Ok(())))]
        );
        assert_eq!(m.closed(), Some(&Ok(())));
    }

    // rule: UDP-READ-CANCEL-03, GEN-14
    #[test]
    fn test_open_close_without_writes_releases_at_once() {
        let mut m = socket_open();
        let outs = app(&mut m, AppCommand::Close);
        assert_eq!(
            outs,
            [
                Output::Event(Event::StateChanged { from: Open, to: Closed }),
                Output::Io(IoCommand::Close),
                Output::Event(Event::Closed(Ok(()))),
            ]
        );
    }

    // rule: UDP-READ-CANCEL-04, UDP-CLOSE-02, INV-06
    #[test]
    fn test_open_close_ends_pending_and_later_reads_with_done() {
        let mut m = socket_open();
        datagram(&mut m, b"1", PEER, 0);
        read(&mut m);
        // A reader holds the stream with a pending read.
        assert!(read(&mut m).is_empty());
        write_to(&mut m, 1, b"keep the socket", PEER);
        let outs = app(&mut m, AppCommand::Close);
        assert!(events(&outs).contains(&Event::Readable));
        assert_eq!(read(&mut m), [Event::Read(ReadResult::Done)]);
        // During the flush the OS socket still exists, but datagrams are never delivered.
        assert!(datagram(&mut m, b"2", PEER, 0).is_empty());
        assert_eq!(read(&mut m), [Event::Read(ReadResult::Done)]);
        assert_eq!(m.queued_datagrams(), 0);
    }

    // rule: UDP-READ-CANCEL-03, UDP-READ-CANCEL-04
    #[test]
    fn test_open_close_discards_queued_datagrams() {
        let mut m = socket_open();
        datagram(&mut m, b"unread", PEER, 0);
        app(&mut m, AppCommand::Close);
        assert_eq!(m.queued_datagrams(), 0);
        assert_eq!(read(&mut m), [Event::Read(ReadResult::Done)]);
    }

    // rule: ERR-06, INV-02
    #[test]
    fn test_closed_flush_failure_rejects_the_rest_and_closed() {
        let mut m = socket_open();
        write_to(&mut m, 1, b"a", PEER);
        write_to(&mut m, 2, b"b", PEER);
        app(&mut m, AppCommand::Close);
        let outs = io(&mut m, IoEvent::Failed { cause: Cause::Other });
        let ne = SocketError::network(Cause::Other);
        assert_eq!(settled(&outs), [(1, Err(ne.clone())), (2, Err(ne.clone()))]);
        assert!(position(&outs, is_close) < position(&outs, is_closed_event));
        assert_eq!(m.closed(), Some(&Err(ne)));
        // The readable stays done (it ended first).
        assert_eq!(read(&mut m), [Event::Read(ReadResult::Done)]);
    }

    // ---- writing ---------------------------------------------------------------------------

    // rule: UDP-WRITE-06, UDP-WRITE-07, GEN-10, DICT-MSG-01
    #[test]
    fn test_open_write_sends_the_data_unmodified_and_resolves() {
        let mut m = socket_open();
        let data = Bytes::from(vec![1u8, 2, 3]);
        let outs = app(
            &mut m,
            AppCommand::SendDatagram {
                id: WriteId(1),
                data: data.clone(),
                dest: Ok(Destination::Addr(addr(PEER))),
            },
        );
        let [Output::Io(IoCommand::SendTo { id, dest, data: sent })] = outs.as_slice() else {
            panic!("{outs:?}")
        };
        assert_eq!((*id, dest), (WriteId(1), &Destination::Addr(addr(PEER))));
        assert_eq!(sent.as_ptr(), data.as_ptr(), "moved, not copied");
        assert_eq!(sent, &data);
        assert_eq!(settled(&io(&mut m, IoEvent::Sent { id: WriteId(1) })), [(1, Ok(()))]);
    }

    // rule: UDP-WRITE-07, UDP-WRITE-08, ERR-06
    #[test]
    fn test_open_send_failed_and_oversize_reject_only_that_write() {
        let mut m = socket_open();
        write_to(&mut m, 1, b"a", PEER);
        let outs = io(&mut m, IoEvent::SendFailed { id: WriteId(1), cause: Cause::Unreachable });
        assert_eq!(settled(&outs), [(1, Err(SocketError::network(Cause::Unreachable)))]);

        // IPv4: 65,507 bytes is sent, 65,508 is refused without reaching the backend.
        let max = Bytes::from(vec![0u8; MAX_DATAGRAM_V4]);
        let big = Bytes::from(vec![0u8; MAX_DATAGRAM_V4 + 1]);
        let outs = app(
            &mut m,
            AppCommand::SendDatagram { id: WriteId(2), data: big, dest: Ok(Destination::Addr(addr(PEER))) },
        );
        let err = single_error(&outs, 2);
        assert_eq!((err.kind(), err.cause()), (ErrorName::NetworkError, Some(Cause::MessageTooLarge)));
        assert!(sent_ids(&outs).is_empty());
        let outs = app(
            &mut m,
            AppCommand::SendDatagram { id: WriteId(3), data: max, dest: Ok(Destination::Addr(addr(PEER))) },
        );
        assert_eq!(sent_ids(&outs), [3]);
        io(&mut m, IoEvent::Sent { id: WriteId(3) });
        // Still open, reading works, later writes work, close resolves Ok.
        assert_eq!(m.ready_state(), Open);
        datagram(&mut m, b"r", PEER, 0);
        assert_eq!(read(&mut m).len(), 1);
        assert_eq!(sent_ids(&write_to(&mut m, 4, b"ok", PEER)), [4]);
        io(&mut m, IoEvent::Sent { id: WriteId(4) });
        app(&mut m, AppCommand::Close);
        assert_eq!(m.closed(), Some(&Ok(())));
    }

    // rule: UDP-WRITE-07
    #[test]
    fn test_open_ipv6_socket_allows_the_larger_ipv6_maximum() {
        let mut m = build(spec_with(|s| s.bind_address = ip("::")));
        io(&mut m, IoEvent::Bound { local: addr("[::1]:5000") });
        let max = Bytes::from(vec![0u8; MAX_DATAGRAM_V6]);
        let outs = app(
            &mut m,
            AppCommand::SendDatagram {
                id: WriteId(1),
                data: max,
                dest: Ok(Destination::Addr(addr("[::1]:6000"))),
            },
        );
        assert_eq!(sent_ids(&outs), [1]);
        io(&mut m, IoEvent::Sent { id: WriteId(1) });
        let big = Bytes::from(vec![0u8; MAX_DATAGRAM_V6 + 1]);
        let outs = app(
            &mut m,
            AppCommand::SendDatagram {
                id: WriteId(2),
                data: big,
                dest: Ok(Destination::Addr(addr("[::1]:6000"))),
            },
        );
        assert_eq!(names(&settled(&outs)), [(2, Some(ErrorName::NetworkError))]);
    }

    // rule: UDP-WRITE-14, UDP-WRITE-08, ERR-06
    #[test]
    fn test_open_write_to_the_other_family_rejects_network_error() {
        let mut m = socket_open();
        let outs = write_to(&mut m, 1, b"x", "[::1]:6000");
        let err = single_error(&outs, 1);
        assert_eq!((err.kind(), err.cause()), (ErrorName::NetworkError, Some(Cause::FamilyMismatch)));
        assert!(sent_ids(&outs).is_empty());
        assert_eq!(sent_ids(&write_to(&mut m, 2, b"y", PEER)), [2]);
        // An IPv6 socket writes to ::1 and refuses IPv4.
        let mut m6 = build(spec_with(|s| s.bind_address = ip("::")));
        io(&mut m6, IoEvent::Bound { local: addr("[::]:5000") });
        assert_eq!(sent_ids(&write_to(&mut m6, 1, b"x", "[::1]:6000")), [1]);
        io(&mut m6, IoEvent::Sent { id: WriteId(1) });
        assert_eq!(names(&settled(&write_to(&mut m6, 2, b"x", PEER))), [(2, Some(ErrorName::NetworkError))]);
    }

    // rule: UDP-WRITE-08, UDP-WRITE-04, INV-11, GEN-03, ERR-03, ERR-05
    #[test]
    fn test_open_rejected_destinations_settle_in_order_and_leave_the_writable_usable() {
        let mut m = socket_open();
        write_to(&mut m, 1, b"first", PEER);
        // The API's verdicts: a missing destination and a refused permission. `handle` is Ok.
        for (id, err) in [(2, SocketError::invalid_access()), (3, SocketError::security())] {
            let r = m.handle(
                now(),
                Input::App(AppCommand::SendDatagram {
                    id: WriteId(id),
                    data: Bytes::from_static(b"no"),
                    dest: Err(err),
                }),
            );
            assert_eq!(r, Ok(()));
        }
        write_to(&mut m, 4, b"last", PEER);
        // Nothing settles before write 1 (in flight) does.
        assert!(settled(&drain(&mut m)).is_empty());
        let outs = io(&mut m, IoEvent::Sent { id: WriteId(1) });
        assert_eq!(
            names(&settled(&outs)),
            [(1, None), (2, Some(ErrorName::InvalidAccessError)), (3, Some(ErrorName::SecurityError))]
        );
        assert_eq!(sent_ids(&outs), [4]);
        assert_eq!(m.ready_state(), Open);
        assert_eq!(m.closed(), None);
    }

    // rule: UDP-WRITE-09, UDP-WRITE-10, ERR-09
    #[test]
    fn test_open_writer_close_closes_only_the_writable() {
        let mut m = socket_open();
        write_to(&mut m, 1, b"a", PEER);
        write_to(&mut m, 2, b"b", PEER);
        let outs = app(&mut m, AppCommand::WriterClose);
        assert!(outs.is_empty());
        assert_eq!(m.ready_state(), Open);
        // Queued datagrams are still sent; a later write rejects TypeError in order.
        write_to(&mut m, 3, b"c", PEER);
        assert_eq!(sent_ids(&io(&mut m, IoEvent::Sent { id: WriteId(1) })), [2]);
        let outs = io(&mut m, IoEvent::Sent { id: WriteId(2) });
        assert_eq!(names(&settled(&outs)), [(2, None), (3, Some(ErrorName::TypeError))]);
        assert_eq!(m.writable_error().map(|e| e.kind()), Some(ErrorName::TypeError));
        // Reception continues.
        datagram(&mut m, b"in", PEER, 0);
        assert_eq!(read(&mut m).len(), 1);
        assert_eq!(m.ready_state(), Open);
    }

    // rule: UDP-WRITE-09, ERR-07, INV-11
    #[test]
    fn test_open_writer_abort_lets_the_in_flight_write_finish_and_rejects_the_rest() {
        let mut m = socket_open();
        for id in 1..=3 {
            write_to(&mut m, id, b"0123456789", PEER);
        }
        assert_eq!(m.queued_write_bytes(), 30);
        let outs = app(&mut m, AppCommand::WriterAbort { reason: Some(Arc::from("stop")) });
        // Write 1 is with the backend: 2 and 3 wait for it to settle first.
        assert!(settled(&outs).is_empty());
        assert_eq!(m.queued_write_bytes(), 10);
        write_to(&mut m, 4, b"later", PEER);
        let outs = io(&mut m, IoEvent::Sent { id: WriteId(1) });
        let results = settled(&outs);
        assert_eq!(results[0], (1, Ok(())));
        for (id, r) in &results[1..] {
            let err = r.clone().unwrap_err();
            assert_eq!((err.kind(), err.message()), (ErrorName::AbortError, Some("stop")), "write {id}");
        }
        assert_eq!(results.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(sent_ids(&outs).is_empty());
        assert_eq!(m.ready_state(), Open);
        datagram(&mut m, b"in", PEER, 0);
        assert_eq!(read(&mut m).len(), 1);
    }

    // rule: UDP-WRITE-10, ERR-09
    #[test]
    fn test_closed_write_rejects_type_error_after_clean_close() {
        let mut m = socket_closed();
        let r = m.handle(
            now(),
            Input::App(AppCommand::SendDatagram {
                id: WriteId(1),
                data: Bytes::from_static(b"x"),
                dest: Ok(Destination::Addr(addr(PEER))),
            }),
        );
        assert_eq!(r, Ok(()), "GEN-03: never synchronous");
        let outs = drain(&mut m);
        assert_eq!(names(&settled(&outs)), [(1, Some(ErrorName::TypeError))]);
        assert!(sent_ids(&outs).is_empty());
    }

    // rule: INV-11, GEN-04
    #[test]
    fn test_open_non_increasing_write_id_rejects_type_error_in_order() {
        let mut m = socket_open();
        write_to(&mut m, 5, b"a", PEER);
        let outs = write_to(&mut m, 5, b"dup", PEER);
        assert!(outs.is_empty(), "waits for write 5");
        write_to(&mut m, 3, b"older", PEER);
        let outs = io(&mut m, IoEvent::Sent { id: WriteId(5) });
        assert_eq!(
            names(&settled(&outs)),
            [(5, None), (5, Some(ErrorName::TypeError)), (3, Some(ErrorName::TypeError))]
        );
        // The id sequence continues from the last accepted one.
        assert_eq!(sent_ids(&write_to(&mut m, 6, b"b", PEER)), [6]);
    }

    // rule: UDP-WRITE-08
    #[test]
    fn test_open_stale_send_answers_are_ignored() {
        let mut m = socket_open();
        write_to(&mut m, 1, b"a", PEER);
        assert!(io(&mut m, IoEvent::Sent { id: WriteId(9) }).is_empty());
        assert!(io(&mut m, IoEvent::SendFailed { id: WriteId(0), cause: Cause::Other }).is_empty());
        assert_eq!(m.pending_writes(), 1);
    }

    // rule: UDP-WRITE-08
    #[test]
    fn test_open_desired_size_and_writable_ready() {
        let mut m = socket_open();
        assert_eq!(m.desired_size(), HWM as i64);
        let chunk = Bytes::from(vec![0u8; 60]);
        for id in 1..=2 {
            app(
                &mut m,
                AppCommand::SendDatagram {
                    id: WriteId(id),
                    data: chunk.clone(),
                    dest: Ok(Destination::Addr(addr(PEER))),
                },
            );
        }
        assert_eq!(m.desired_size(), HWM as i64 - 120);
        // 120 → 60 bytes: desired size rises above zero once.
        let outs = io(&mut m, IoEvent::Sent { id: WriteId(1) });
        assert_eq!(m.desired_size(), 40);
        assert_eq!(events(&outs).last(), Some(&Event::WritableReady));
        let outs = io(&mut m, IoEvent::Sent { id: WriteId(2) });
        assert!(!events(&outs).contains(&Event::WritableReady));
        assert_eq!(m.desired_size(), HWM as i64);
    }

    // ---- destination choice ----------------------------------------------------------------

    // rule: UDP-WRITE-02, DICT-UDPOPT-03, ERR-05
    #[test]
    fn test_choose_destination_without_any_address_is_invalid_access() {
        let s = spec_with(|s| s.remote_port = Some(9));
        let err = choose_destination(&s, None, Some(9)).unwrap_err();
        assert_eq!(err.kind(), ErrorName::InvalidAccessError);
        assert_eq!(choose_destination(&s, None, None).unwrap_err().kind(), ErrorName::InvalidAccessError);
    }

    // rule: UDP-WRITE-03, DICT-UDPOPT-04, ERR-05
    #[test]
    fn test_choose_destination_without_any_port_is_invalid_access() {
        let s = spec_with(|s| s.remote = Some(Remote::parse("127.0.0.1").unwrap()));
        assert_eq!(choose_destination(&s, None, None).unwrap_err().kind(), ErrorName::InvalidAccessError);
        assert_eq!(
            choose_destination(&s, Some("127.0.0.2"), None).unwrap_err().kind(),
            ErrorName::InvalidAccessError
        );
        // With the port given in the message, the default address is used (AMB-50).
        assert_eq!(choose_destination(&s, None, Some(9)), Ok(Destination::Addr(addr("127.0.0.1:9"))));
    }

    // rule: UDP-WRITE-05, DICT-MSG-02, DICT-MSG-03
    #[test]
    fn test_choose_destination_falls_back_per_field() {
        let s = spec_with(|s| {
            s.remote = Some(Remote::parse("127.0.0.1").unwrap());
            s.remote_port = Some(1111);
        });
        assert_eq!(choose_destination(&s, None, None), Ok(Destination::Addr(addr("127.0.0.1:1111"))));
        assert_eq!(choose_destination(&s, None, Some(2222)), Ok(Destination::Addr(addr("127.0.0.1:2222"))));
        assert_eq!(
            choose_destination(&s, Some("127.0.0.3"), None),
            Ok(Destination::Addr(addr("127.0.0.3:1111")))
        );
        assert_eq!(
            choose_destination(&s, Some("::1"), Some(3)),
            Ok(Destination::Addr(addr("[::1]:3"))),
            "the family is the machine's check (UDP-WRITE-14)"
        );
        assert_eq!(
            choose_destination(&s, Some("Peer.test"), None),
            Ok(Destination::Name(HostName::parse("peer.test").unwrap(), 1111))
        );
    }

    // rule: UDP-WRITE-13, GEN-13, ERR-05
    #[test]
    fn test_choose_destination_checks_in_the_spec_order() {
        let none = spec();
        for bad in ["300.1.1.1", "a..b", "", "[::1]", "127.1"] {
            assert_eq!(
                choose_destination(&none, Some(bad), Some(9)).unwrap_err().kind(),
                ErrorName::InvalidAccessError,
                "{bad:?}"
            );
        }
        assert_eq!(
            choose_destination(&none, Some("127.0.0.1"), Some(0)).unwrap_err().kind(),
            ErrorName::InvalidAccessError
        );
        // Missing comes before invalid: an invalid address with no port anywhere is "no port".
        let err = choose_destination(&none, Some("300.1.1.1"), None).unwrap_err();
        assert_eq!(err.message(), Some("no destination port"));
        let err = choose_destination(&none, Some("300.1.1.1"), Some(0)).unwrap_err();
        assert_ne!(err.message(), Some("destination port 0"), "the address is checked before the port");
    }

    // rule: UDP-WRITE-13, UDP-WRITE-08
    #[test]
    fn test_open_name_destination_is_resolved_by_the_backend_and_its_failure_only_fails_it() {
        let mut m = socket_open();
        let dest = m.destination_for(Some("gone.test"), Some(9)).unwrap();
        let outs = app(
            &mut m,
            AppCommand::SendDatagram {
                id: WriteId(1),
                data: Bytes::from_static(b"x"),
                dest: Ok(dest.clone()),
            },
        );
        assert_eq!(ios(&outs), [IoCommand::SendTo { id: WriteId(1), dest, data: Bytes::from_static(b"x") }]);
        let outs = io(&mut m, IoEvent::SendFailed { id: WriteId(1), cause: Cause::HostNotFound });
        assert_eq!(names(&settled(&outs)), [(1, Some(ErrorName::NetworkError))]);
        assert_eq!(sent_ids(&write_to(&mut m, 2, b"y", PEER)), [2]);
    }

    // ---- multicast -------------------------------------------------------------------------

    // rule: UDP-MCAST-03, ERR-05
    #[test]
    fn test_open_join_non_multicast_is_invalid_access() {
        let mut m = socket_open();
        for cmd in [
            AppCommand::JoinMulticast { group: ip("127.0.0.1") },
            AppCommand::LeaveMulticast { group: ip("::1") },
        ] {
            let err = m.handle(now(), Input::App(cmd)).unwrap_err();
            assert_eq!(err.kind(), ErrorName::InvalidAccessError);
        }
        assert!(m.memberships().is_empty());
        assert!(drain(&mut m).is_empty());
    }

    // rule: UDP-MCAST-04, ERR-08
    #[test]
    fn test_closed_join_and_leave_are_invalid_state() {
        let mut m = socket_closed();
        for cmd in [
            AppCommand::JoinMulticast { group: ip("239.255.0.1") },
            AppCommand::LeaveMulticast { group: ip("239.255.0.1") },
        ] {
            assert_eq!(m.handle(now(), Input::App(cmd)).unwrap_err().kind(), ErrorName::InvalidStateError);
        }
        // Also while the flush after close() is still running: readyState is already "closed".
        let mut m = socket_open();
        write_to(&mut m, 1, b"x", PEER);
        app(&mut m, AppCommand::Close);
        let r = m.handle(now(), Input::App(AppCommand::JoinMulticast { group: ip("239.255.0.1") }));
        assert_eq!(r.unwrap_err().kind(), ErrorName::InvalidStateError);
    }

    // rule: UDP-MCAST-04
    #[test]
    fn test_opening_join_acts_at_once_and_survives_into_open() {
        let mut m = socket_opening();
        let g = ip("239.255.0.1");
        assert_eq!(m.handle(now(), Input::App(AppCommand::JoinMulticast { group: g })), Ok(()));
        assert_eq!(m.memberships(), [g]);
        io(&mut m, IoEvent::Bound { local: addr(LOCAL) });
        assert_eq!(m.memberships(), [g]);
        // Dropped with the socket if opening fails.
        let mut m = socket_opening();
        app(&mut m, AppCommand::JoinMulticast { group: g });
        io(&mut m, IoEvent::BindFailed { cause: Cause::AddressInUse });
        assert!(m.memberships().is_empty());
    }

    // rule: UDP-MCAST-05
    #[test]
    fn test_open_memberships_are_tracked_sorted_and_leave_unknown_is_ok() {
        let mut m = socket_open();
        assert_eq!(
            m.handle(now(), Input::App(AppCommand::LeaveMulticast { group: ip("239.1.1.1") })),
            Ok(())
        );
        for g in ["239.9.9.9", "224.0.0.251", "239.9.9.9"] {
            app(&mut m, AppCommand::JoinMulticast { group: ip(g) });
        }
        assert_eq!(m.memberships(), [ip("224.0.0.251"), ip("239.9.9.9")]);
        app(&mut m, AppCommand::LeaveMulticast { group: ip("239.9.9.9") });
        assert_eq!(m.memberships(), [ip("224.0.0.251")]);
        assert_eq!(m.ready_state(), Open);
    }

    // ---- misuse ----------------------------------------------------------------------------

    // rule: GEN-04, ERR-09
    #[test]
    fn test_open_inputs_of_other_kinds_are_type_errors_without_effect() {
        let mut m = socket_open();
        let foreign = [
            Input::App(AppCommand::Write { id: WriteId(1), data: Bytes::new() }),
            Input::App(AppCommand::HalfClose),
            Input::App(AppCommand::Reset),
            Input::App(AppCommand::StartTls),
            Input::App(AppCommand::Listen { id: crate::io::ListenId(1) }),
            Input::Io(IoEvent::PeerFin),
            Input::Io(IoEvent::Received(Bytes::from_static(b"x"))),
            Input::Io(IoEvent::Connected { local: addr(LOCAL), remote: addr(PEER) }),
        ];
        for input in foreign {
            assert_eq!(m.handle(now(), input).unwrap_err().kind(), ErrorName::TypeError);
        }
        let again = Input::Open(Box::new(crate::io::OpenSpec::Udp(spec())));
        assert_eq!(m.handle(now(), again).unwrap_err().kind(), ErrorName::InvalidStateError);
        assert!(drain(&mut m).is_empty());
        assert_eq!(m.ready_state(), Open);
        assert_eq!(m.handle(now(), Input::Timeout), Ok(()));
    }

    // rule: UDP-ATTR-01, STATE-06
    #[test]
    fn test_open_close_and_abort_never_use_closing_or_halfclosed() {
        let mut m = socket_open();
        write_to(&mut m, 1, b"a", PEER);
        app(&mut m, AppCommand::WriterClose);
        app(&mut m, AppCommand::WriterAbort { reason: None });
        assert_eq!(m.ready_state(), Open);
        let outs = app(&mut m, AppCommand::Close);
        assert_eq!(events(&outs)[0], Event::StateChanged { from: Open, to: Closed });
    }

    // ---- property test ---------------------------------------------------------------------

    #[derive(Clone, Debug)]
    enum Op {
        Bound(bool),
        Resolved(bool),
        Read,
        Close,
        Write(u8, bool),
        WriterClose,
        WriterAbort,
        Sent(bool),
        Datagram(u8),
        Failed,
        Conversion,
        Transient,
        Join(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<bool>().prop_map(Op::Bound),
            any::<bool>().prop_map(Op::Resolved),
            Just(Op::Read),
            Just(Op::Close),
            (0u8..4, any::<bool>()).prop_map(|(t, ok)| Op::Write(t, ok)),
            Just(Op::WriterClose),
            Just(Op::WriterAbort),
            any::<bool>().prop_map(Op::Sent),
            (0u8..3).prop_map(Op::Datagram),
            Just(Op::Failed),
            Just(Op::Conversion),
            Just(Op::Transient),
            any::<bool>().prop_map(Op::Join),
        ]
    }

    proptest! {
        // rule: UDP-ATTR-01, STATE-06, GEN-09, GEN-14, INV-11
        #[test]
        fn prop_any_sequence_keeps_the_udp_invariants(
            named in any::<bool>(),
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let mut m = build(spec_with(|s| if named {
                s.remote = Some(Remote::parse("svc.test").unwrap());
                s.remote_port = Some(9);
            }));
            let mut state = Opening;
            let mut issued = Vec::new();
            let mut settled_ids = Vec::new();
            let mut in_flight: Option<WriteId> = None;
            let mut released = false;
            let (mut opened_events, mut closed_events) = (0, 0);
            let mut next_id = 1;
            for op in ops {
                let input = match op {
                    Op::Bound(ok) => Input::Io(if ok {
                        IoEvent::Bound { local: addr(LOCAL) }
                    } else {
                        IoEvent::BindFailed { cause: Cause::AddressInUse }
                    }),
                    Op::Resolved(ok) => Input::Io(if ok {
                        IoEvent::Resolved { addrs: vec![ip("127.0.0.9")] }
                    } else {
                        IoEvent::ResolveFailed { cause: Cause::HostNotFound }
                    }),
                    Op::Read => Input::App(AppCommand::Read),
                    Op::Close => Input::App(AppCommand::Close),
                    Op::Write(target, ok) => {
                        let dest = match target {
                            0 => Ok(Destination::Addr(addr(PEER))),
                            1 => Ok(Destination::Addr(addr("[::1]:9"))),
                            2 => Ok(Destination::Name(HostName::parse("svc.test").unwrap(), 9)),
                            _ => Err(SocketError::security()),
                        };
                        let dest = if ok { dest } else { Err(SocketError::invalid_access()) };
                        issued.push(next_id);
                        next_id += 1;
                        Input::App(AppCommand::SendDatagram { id: WriteId(next_id - 1), data: Bytes::from_static(b"p"), dest })
                    }
                    Op::WriterClose => Input::App(AppCommand::WriterClose),
                    Op::WriterAbort => Input::App(AppCommand::WriterAbort { reason: Some(Arc::from("r")) }),
                    Op::Sent(ok) => {
                        let id = in_flight.unwrap_or(WriteId(0));
                        Input::Io(if ok { IoEvent::Sent { id } } else { IoEvent::SendFailed { id, cause: Cause::Other } })
                    }
                    Op::Datagram(n) => Input::Io(IoEvent::Datagram { data: Bytes::from(vec![n; n as usize]), from: addr(PEER), dropped_total: u64::from(n) }),
                    Op::Failed => Input::Io(IoEvent::Failed { cause: Cause::Unreachable }),
                    Op::Conversion => Input::Io(IoEvent::ConversionFailed),
                    Op::Transient => Input::Io(IoEvent::TransientError { cause: Cause::Refused }),
                    Op::Join(leave) => Input::App(if leave {
                        AppCommand::LeaveMulticast { group: ip("239.1.2.3") }
                    } else {
                        AppCommand::JoinMulticast { group: ip("239.1.2.3") }
                    }),
                };
                let is_join = matches!(input, Input::App(AppCommand::JoinMulticast { .. } | AppCommand::LeaveMulticast { .. }));
                let r = m.handle(now(), input);
                if !is_join {
                    prop_assert!(r.is_ok());
                }
                for o in drain(&mut m) {
                    match o {
                        Output::Event(Event::StateChanged { from, to }) => {
                            prop_assert_eq!(from, state);
                            prop_assert!(to.rank() > from.rank());
                            prop_assert!(matches!(to, Open | Closed));
                            state = to;
                        }
                        Output::Event(Event::Opened(_)) => {
                            opened_events += 1;
                            prop_assert_ne!(state, Opening, "state changes before opened settles");
                        }
                        Output::Event(Event::Closed(_)) => {
                            closed_events += 1;
                            prop_assert_eq!(state, Closed);
                            prop_assert!(released, "GEN-14: Close before Closed");
                            prop_assert_eq!(opened_events, 1, "INV-03");
                        }
                        Output::Event(Event::WriteSettled { id, .. }) => {
                            if in_flight == Some(id) {
                                in_flight = None;
                            }
                            settled_ids.push(id.0);
                        }
                        Output::Io(IoCommand::SendTo { id, .. }) => {
                            prop_assert!(in_flight.is_none(), "one write at a time");
                            prop_assert!(!released, "INV-17");
                            in_flight = Some(id);
                        }
                        Output::Io(IoCommand::Close) => {
                            prop_assert!(!released, "released once");
                            released = true;
                        }
                        _ => {}
                    }
                }
                prop_assert_eq!(m.ready_state(), state);
                prop_assert!(m.queued_datagrams() <= CAPACITY);
                prop_assert!(opened_events <= 1 && closed_events <= 1);
            }
            // INV-11: writes settle in issue order, each once.
            prop_assert_eq!(&settled_ids[..], &issued[..settled_ids.len()]);
        }
    }
}

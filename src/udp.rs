//! `UDPSocket`: read RULES.md §3 and DESIGN §3.8 before editing.
//!
//! The constructor binds synchronously (its result is the machine's first input); multicast joins
//! and leaves act on the OS socket at once and report OS refusals synchronously (A-31). Writes run
//! their destination and permission checks here, then queue in the machine, so every write —
//! rejected or sent — settles in order (INV-11) and only that write fails (A-28). As for TCP, the
//! transport's receive side is polled with a [`ReadRoute`]'s waker once a reader has waited: an
//! arriving datagram wakes the waiting reader, which receives it itself, instead of the driver,
//! which would receive it and wake the reader (two task polls, and in simulation a hop between
//! turmoil's host task set and the runtime's scheduler, per wake-up).

use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tcpudp_core::address::{canonical, parse_multicast_group};
use tcpudp_core::checks;
use tcpudp_core::options::UdpOptions;
use tcpudp_core::permission::PermissionRequest;
use tcpudp_core::{
    AppCommand, Cause, Destination, ErrorName, Event, Input, IoCommand, IoEvent, Output, ReadResult,
    ReadyState, SocketError, UdpMachine, WriteId,
};

use crate::backend::{cause_of, BoxFuture, UdpBind, UdpDiag, UdpTransport};
use crate::faults::FaultUdp;
use crate::network::Network;
use crate::shared::{
    hold_released, lazy_now, lock, stream_item, take_step, FlushFuture, Mutex, Polls, PromiseSource,
    PromiseWaiters, ReadRoute, ReadyFuture, SocketPromise, SocketRoute, StateLog, Which, WriteBook,
    WriteFuture, WriteSource,
};

/// A datagram to send: the spec's `UDPMessage` as a write takes it. Missing destination fields
/// fall back, each on its own, to the socket's `remoteAddress`/`remotePort` (UDP-WRITE-05).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Datagram {
    /// The payload, sent as exactly one datagram.
    pub data: Bytes,
    /// Destination address (host name or IP literal), overriding the default.
    pub remote_address: Option<String>,
    /// Destination port, overriding the default.
    pub remote_port: Option<u16>,
}

impl Datagram {
    /// A datagram to the socket's default destination.
    pub fn new(data: impl Into<Bytes>) -> Self {
        Datagram { data: data.into(), remote_address: None, remote_port: None }
    }

    /// A datagram to `address:port`.
    pub fn to(data: impl Into<Bytes>, address: impl Into<String>, port: u16) -> Self {
        Datagram { data: data.into(), remote_address: Some(address.into()), remote_port: Some(port) }
    }
}

/// A received datagram: the whole payload and its source (UDP-READ-01..03).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpMessage {
    /// The payload.
    pub data: Bytes,
    /// The source address and port.
    pub from: SocketAddr,
}

impl UdpMessage {
    /// `remoteAddress`: the source address in canonical text (AMB-54).
    pub fn remote_address(&self) -> String {
        canonical(self.from.ip())
    }

    /// `remotePort`: the source port.
    pub fn remote_port(&self) -> u16 {
        self.from.port()
    }
}

/// A `UDPSocket`.
///
/// ```no_run
/// # async fn demo(net: tcpudp::Network) -> Result<(), tcpudp::SocketError> {
/// use tcpudp::{Datagram, UdpOptions, UdpSocket};
/// let sock = UdpSocket::new(&net, UdpOptions::default())?;
/// sock.opened().await?;
/// sock.writable()?.write(Datagram::to(&b"hello"[..], "127.0.0.1", 9999)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct UdpSocket {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<UdpShared>,
}

pub(crate) struct UdpShared {
    id: u64,
    net: Network,
    options: UdpOptions,
    inner: Mutex<Inner>,
    span: tracing::Span,
}

struct Inner {
    machine: UdpMachine,
    io: UdpIo,
    promises: PromiseWaiters,
    writes: WriteBook,
    read_result: Option<ReadResult>,
    readable_signal: bool,
    reader: Option<Waker>,
    reader_locked: bool,
    writer_locked: bool,
    state_log: StateLog,
    /// The last IP destination found permitted, with the policy generation it was read at: the
    /// same destination is not checked (and its address not formatted) again until the policy
    /// changes.
    permitted: Option<(SocketAddr, u64)>,
    /// `destination_for(None, None)`: the machine's spec never changes, so a write to the default
    /// destination reuses it.
    default_destination: Result<Destination, SocketError>,
}

#[derive(Default)]
struct UdpIo {
    transport: Option<FaultUdp>,
    hold: Option<crate::faults::HoldTicket>,
    reports: VecDeque<IoEvent>,
    resolving_default: Option<BoxFuture<'static, Result<Vec<IpAddr>, Cause>>>,
    sending: Option<Sending>,
    read_interest: bool,
    /// The last receive poll was pending, or handed over a datagram saying it waits for the next
    /// (`RecvMeta::registered`), so the driver's waker is registered with the transport (cleared
    /// when a receive returns anything else and whenever the read interest changes). Consulted
    /// only while there is no route (a route's wake-up may go to the reader, see `route`).
    recv_armed: bool,
    /// The transport said, handing over this pass's last datagram, that it waits for the next
    /// one with the pass's waker (`RecvMeta::registered`): the rest of the pass skips the
    /// receive that would find nothing. Cleared at the start of every pass.
    recv_parked: bool,
    released: bool,
    driver: Option<Waker>,
    /// Where the transport's receive wake-ups go, once a reader has waited ([`ReadRoute`]).
    route: SocketRoute,
    received: u64,
    diag: UdpDiag,
}

struct Sending {
    id: WriteId,
    data: Bytes,
    to: SendTarget,
}

enum SendTarget {
    Addr(SocketAddr),
    Resolving(u16, BoxFuture<'static, Result<Vec<IpAddr>, Cause>>),
}

impl UdpSocket {
    /// `new UDPSocket(options)`. Synchronous errors in the spec's order (UDP-CTOR-20):
    /// `SecurityError`, `InvalidAccessError` (bad remote, port 0, unusable local address, no
    /// route). A bind conflict is not thrown: `opened` rejects `NetworkError` (UDP-CTOR-21).
    pub fn new(net: &Network, options: UdpOptions) -> Result<Self, SocketError> {
        let mut options = options;
        if options.multicast_interface.is_none() {
            options.multicast_interface = net.multicast_interface();
        }
        let spec = checks::udp_spec(&mut net.checks(), &options)?;
        let bind = UdpBind {
            local: SocketAddr::new(spec.bind_address, spec.local_port),
            config: spec.config,
            multicast_loopback: spec.loopback,
            multicast_ttl: spec.multicast_ttl,
            multicast_interface: spec.multicast_interface,
        };
        let id = net.next_id();
        let span = tracing::debug_span!(
            "socket",
            id,
            kind = "udp",
            backend = net.backend_kind().as_str(),
            local = tracing::field::Empty,
        );
        let machine = UdpMachine::new(net.now(), spec);
        let default_destination = machine.destination_for(None, None);
        let mut io = UdpIo { hold: net.faults().hold_ticket(), ..UdpIo::default() };
        // DESIGN §3.8: the bind happens now; its outcome is the machine's first input.
        match net.backend().bind_udp(bind) {
            Ok(transport) => match transport.local_addr() {
                Ok(local) => {
                    io.diag = transport.diag();
                    io.transport = Some(transport);
                    io.reports.push_back(IoEvent::Bound { local });
                }
                Err(e) => io.reports.push_back(IoEvent::BindFailed { cause: cause_of(&e) }),
            },
            Err(cause) => io.reports.push_back(IoEvent::BindFailed { cause }),
        }
        let shared = Arc::new(UdpShared {
            id,
            net: net.clone(),
            options,
            inner: Mutex::new(Inner {
                machine,
                io,
                promises: PromiseWaiters::default(),
                writes: WriteBook::default(),
                read_result: None,
                readable_signal: false,
                reader: None,
                reader_locked: false,
                writer_locked: false,
                state_log: StateLog::new(ReadyState::Opening),
                permitted: None,
                default_destination,
            }),
            span,
        });
        lock(&shared.inner).process(&shared);
        net.spawn(drive(shared.clone()));
        Ok(UdpSocket { handle: Arc::new(Handle { shared }) })
    }

    fn shared(&self) -> &Arc<UdpShared> {
        &self.handle.shared
    }

    /// `readyState`: "opening", "open" or "closed" (UDP-ATTR-01).
    pub fn ready_state(&self) -> ReadyState {
        lock(&self.shared().inner).machine.ready_state()
    }

    /// `remoteAddress` as given (UDP-CTOR-02/04).
    pub fn remote_address(&self) -> Option<&str> {
        self.shared().options.remote_address.as_deref()
    }

    /// `remotePort` as given.
    pub fn remote_port(&self) -> Option<u16> {
        self.shared().options.remote_port
    }

    /// `localAddress`: as given; else the address bound by routing for an IP-literal remote
    /// (UDP-CTOR-13); `None` when not tied to an interface (UDP-CTOR-14).
    pub fn local_address(&self) -> Option<String> {
        if let Some(given) = &self.shared().options.local_address {
            return Some(given.clone());
        }
        let inner = lock(&self.shared().inner);
        let bind = inner.machine.spec().bind_address;
        (!bind.is_unspecified()).then(|| canonical(bind))
    }

    /// `localPort`: as given, else the bound port once known (A-07).
    pub fn local_port(&self) -> Option<u16> {
        if let Some(port) = self.shared().options.local_port.filter(|&p| p != 0) {
            return Some(port);
        }
        lock(&self.shared().inner).machine.local_addr().map(|a| a.port())
    }

    /// `addressReuse`.
    pub fn address_reuse(&self) -> bool {
        self.shared().options.address_reuse
    }

    /// `loopback` (multicast loopback of this socket's sends).
    pub fn loopback(&self) -> bool {
        self.shared().options.loopback
    }

    /// `opened`.
    pub fn opened(&self) -> SocketPromise {
        SocketPromise::new(self.shared().clone(), Which::Opened)
    }

    /// `closed`.
    pub fn closed(&self) -> SocketPromise {
        SocketPromise::new(self.shared().clone(), Which::Closed)
    }

    /// `close()`: reads end at once, queued datagrams are still sent, then `closed` resolves.
    pub fn close(&self) -> SocketPromise {
        self.shared().app_command(AppCommand::Close);
        self.closed()
    }

    /// `joinMulticast(group)`: `InvalidAccessError` for a non-multicast address,
    /// `InvalidStateError` when closed, `NetworkError` when the OS refuses (A-31).
    pub fn join_multicast(&self, group: &str) -> Result<(), SocketError> {
        self.membership(group, true)
    }

    /// `leaveMulticast(group)`; leaving a group never joined is a no-op.
    pub fn leave_multicast(&self, group: &str) -> Result<(), SocketError> {
        self.membership(group, false)
    }

    fn membership(&self, group: &str, join: bool) -> Result<(), SocketError> {
        let group = parse_multicast_group(group)?;
        let shared = self.shared();
        let mut inner = lock(&shared.inner);
        let cmd =
            if join { AppCommand::JoinMulticast { group } } else { AppCommand::LeaveMulticast { group } };
        inner.machine.handle_lazy(&mut lazy_now(&shared.net, &mut None), Input::App(cmd))?;
        let outcome = match &mut inner.io.transport {
            Some(t) if join => t.join_multicast(group),
            Some(t) => match t.leave_multicast(group) {
                // Leaving a group never joined is fine (UDP-MCAST-05).
                Err(e)
                    if e.raw_os_error() == Some(99) || e.kind() == std::io::ErrorKind::AddrNotAvailable =>
                {
                    Ok(())
                }
                other => other,
            },
            None => Ok(()), // The bind failed: the membership goes with the socket (UDP-MCAST-04).
        };
        if let Err(e) = outcome {
            if join {
                let leave = Input::App(AppCommand::LeaveMulticast { group });
                let _ = inner.machine.handle_lazy(&mut lazy_now(&shared.net, &mut None), leave);
            }
            inner.process(shared);
            return Err(SocketError::network(cause_of(&e)).with_message(e.to_string()));
        }
        inner.process(shared);
        Ok(())
    }

    /// The readable stream of messages. `TypeError` while another is held.
    pub fn readable(&self) -> Result<UdpReadable, SocketError> {
        let mut inner = lock(&self.shared().inner);
        if inner.reader_locked {
            return Err(SocketError::with_cause(ErrorName::TypeError, Cause::StreamLocked));
        }
        inner.reader_locked = true;
        Ok(UdpReadable { handle: self.handle.clone(), ended: false })
    }

    /// The writable stream of datagrams. `TypeError` while another is held.
    pub fn writable(&self) -> Result<UdpWritable, SocketError> {
        let mut inner = lock(&self.shared().inner);
        if inner.writer_locked {
            return Err(SocketError::with_cause(ErrorName::TypeError, Cause::StreamLocked));
        }
        inner.writer_locked = true;
        Ok(UdpWritable { handle: self.handle.clone() })
    }

    /// Datagrams the kernel (or emulated) receive buffer dropped because the readable was full,
    /// current as of the last datagram received (AMB-33).
    pub fn dropped_datagrams(&self) -> u64 {
        lock(&self.shared().inner).machine.dropped_datagrams()
    }

    /// Option values read back and queue sizes.
    pub fn diag(&self) -> UdpSocketDiag {
        let inner = lock(&self.shared().inner);
        let mut options =
            inner.io.transport.as_ref().map(|t| t.diag()).unwrap_or_else(|| inner.io.diag.clone());
        options.received = inner.io.received;
        UdpSocketDiag {
            state_log: inner.state_log.to_vec(),
            queued_datagrams: inner.machine.queued_datagrams(),
            queued_write_bytes: inner.machine.queued_write_bytes(),
            memberships: inner.machine.memberships().to_vec(),
            dropped_datagrams: inner.machine.dropped_datagrams(),
            transport_open: inner.io.transport.is_some(),
            options,
        }
    }
}

impl std::fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSocket")
            .field("id", &self.shared().id)
            .field("ready_state", &self.ready_state())
            .finish()
    }
}

/// What [`UdpSocket::diag`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpSocketDiag {
    /// Every readyState the socket has had.
    pub state_log: Vec<ReadyState>,
    /// Datagrams waiting in the readable.
    pub queued_datagrams: usize,
    /// Bytes of unsettled writes.
    pub queued_write_bytes: usize,
    /// Groups joined.
    pub memberships: Vec<IpAddr>,
    /// `dropped_datagrams()`.
    pub dropped_datagrams: u64,
    /// Whether the library still holds an OS (or simulator) socket.
    pub transport_open: bool,
    /// Option values read back; `received` counts datagrams the transport delivered.
    pub options: UdpDiag,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // GEN-12: queued datagrams are still sent, then the socket is released.
        self.shared.app_command(AppCommand::Close);
    }
}

impl UdpShared {
    fn app_command(&self, cmd: AppCommand) {
        let mut inner = lock(&self.inner);
        let _ = inner.machine.handle_lazy(&mut lazy_now(&self.net, &mut None), Input::App(cmd));
        inner.process(self);
    }

    /// `write(datagram)`'s promise: settled already when the datagram went out (or was refused)
    /// while it was issued.
    fn write_promise(self: &Arc<Self>, datagram: Datagram) -> WriteFuture {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let id = self.write_locked(inner, datagram);
        WriteFuture::issued(&mut inner.writes, id, self)
    }

    fn write_locked(&self, inner: &mut Inner, datagram: Datagram) -> u64 {
        let id = inner.writes.next_id();
        let dest = match (datagram.remote_address.as_deref(), datagram.remote_port) {
            (None, None) => inner.default_destination.clone(),
            (address, port) => inner.machine.destination_for(address, port),
        }
        .and_then(|dest| self.permitted(dest, &mut inner.permitted));
        if inner.io.may_step_at_once() {
            if let Some(addr) = inner.machine.send_at_once(WriteId(id), datagram.data.len(), &dest) {
                inner.send_now(self, WriteId(id), datagram.data, addr);
                return id;
            }
        }
        let cmd = AppCommand::SendDatagram { id: WriteId(id), data: datagram.data, dest };
        // The machine reads the time only if a transition needs it (a UDP one never does).
        let _ = inner.machine.handle_lazy(&mut lazy_now(&self.net, &mut None), Input::App(cmd));
        inner.send_at_once(self);
        if inner.io.may_report(Polls::Sends) {
            inner.process_with(self, Polls::Sends);
        }
        id
    }

    /// UDP-WRITE-04: the effective destination must be permitted (prompt counts as not). `cache`
    /// keeps the last permitted IP destination while the policy's generation stays the same.
    fn permitted(
        &self,
        dest: Destination,
        cache: &mut Option<(SocketAddr, u64)>,
    ) -> Result<Destination, SocketError> {
        let policy = self.net.policy();
        let request = match &dest {
            Destination::Addr(addr) => {
                if *cache == Some((*addr, policy.generation())) {
                    return Ok(dest);
                }
                PermissionRequest::udp_write(&addr.ip().to_string(), addr.port())
            }
            Destination::Name(name, port) => PermissionRequest::udp_write(name.as_str(), *port),
        };
        let (state, generation) = policy.state_at(&request);
        if state.is_granted() {
            if let Destination::Addr(addr) = &dest {
                *cache = Some((*addr, generation));
            }
            Ok(dest)
        } else {
            Err(SocketError::security().with_message("sending to this destination is not permitted"))
        }
    }

    fn poll_read(&self, cx: &mut Context<'_>) -> Poll<Result<Option<UdpMessage>, SocketError>> {
        let mut inner = lock(&self.inner);
        // Polling now: what this poll receives needs no wake-up (which would poll the reader's
        // task once more for nothing); a pending poll registers again below.
        inner.reader = None;
        inner.io.route.reader_polling();
        let mut now = None;
        if let Some(message) = inner.receive_at_once(self) {
            return Poll::Ready(Ok(Some(message)));
        }
        // Datagrams first, when the machine has none queued: a read that found its queue empty
        // would leave it a waiting reader, and read again once the pass below received (two reads
        // and a wake-up event per datagram).
        if inner.machine.queued_datagrams() == 0 && inner.io.read_interest && !inner.io.recv_registered() {
            inner.process_with(self, Polls::All);
        }
        if let Some(message) = inner.machine.take_datagram() {
            while let Some(out) = inner.machine.poll_output() {
                inner.apply(self, out);
            }
            inner.after_read(self);
            return Poll::Ready(Ok(Some(UdpMessage { data: message.data, from: message.from })));
        }
        for _ in 0..2 {
            inner.read_result = None;
            inner.readable_signal = false;
            let _ =
                inner.machine.handle_lazy(&mut lazy_now(&self.net, &mut now), Input::App(AppCommand::Read));
            while let Some(out) = inner.machine.poll_output() {
                inner.apply(self, out);
            }
            inner.after_read(self);
            if let Some(result) = inner.read_result.take() {
                return Poll::Ready(match result {
                    ReadResult::Message(m) => Ok(Some(UdpMessage { data: m.data, from: m.from })),
                    ReadResult::Done => Ok(None),
                    ReadResult::Error(e) => Err(e),
                    ReadResult::Chunk(data) => {
                        Ok(Some(UdpMessage { data, from: SocketAddr::from(([0, 0, 0, 0], 0)) }))
                    }
                });
            }
            if !inner.readable_signal {
                break;
            }
        }
        inner.reader = Some(cx.waker().clone());
        // Later receive wake-ups come straight here (once the transport is polled with the
        // route's waker; until then the driver's registration stands, and the driver wakes this
        // reader as before).
        let io = &mut inner.io;
        io.route.reader_waits(cx.waker(), io.driver.as_ref(), io.released);
        Poll::Pending
    }

    /// A reader that may have been handed a receive wake-up went away: the driver takes it.
    fn release_reader(&self) {
        if let Some(route) = lock(&self.inner).io.route.get() {
            route.release();
        }
    }
}

impl PromiseSource for UdpShared {
    fn poll_promise(&self, which: Which, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let outcome = match which {
            Which::Opened => inner.machine.opened(),
            Which::Closed => inner.machine.closed(),
        };
        let polled = inner.promises.poll(which, outcome, cx);
        // A receive error the reader was handed but has not acted on may settle this promise.
        if let (Poll::Pending, Some(route)) = (&polled, inner.io.route.get()) {
            route.pass_on();
        }
        polled
    }
}

impl WriteSource for UdpShared {
    fn poll_write(&self, id: u64, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        lock(&self.inner).writes.poll(id, cx)
    }

    fn forget_write(&self, id: u64) {
        lock(&self.inner).writes.forget(id);
    }

    fn poll_flushed(&self, upto: u64, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        lock(&self.inner).writes.poll_flushed(upto, cx)
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        let mut inner = lock(&self.inner);
        if inner.machine.desired_size() > 0 || inner.machine.ready_state() == ReadyState::Closed {
            return Poll::Ready(Ok(()));
        }
        inner.writes.ready.register(cx.waker());
        Poll::Pending
    }
}

impl Inner {
    fn process(&mut self, shared: &UdpShared) {
        self.process_with(shared, Polls::All);
    }

    /// The read shortcut: with nothing queued in the machine and the transport not known to be
    /// empty, one receive, polled as the pass would, whose datagram goes straight to this reader
    /// when the machine agrees ([`UdpMachine::deliver_at_once`]). Anything else the receive
    /// brings (an error, a datagram the machine must queue or drop) is handed in as the pass
    /// would, and the read goes on the usual way.
    fn receive_at_once(&mut self, shared: &UdpShared) -> Option<UdpMessage> {
        if self.machine.queued_datagrams() != 0
            || !self.io.read_interest
            || self.io.recv_registered()
            || !self.io.may_step_at_once()
        {
            return None;
        }
        let read_waker = self.io.route.take_waker();
        let driver = self.io.driver.take();
        let report = match read_waker.as_ref().or(driver.as_ref()) {
            Some(waker) => self.io.receive(&mut Context::from_waker(waker)),
            None => None,
        };
        self.io.driver = driver;
        self.io.route.put_waker(read_waker);
        let report = match report? {
            IoEvent::Datagram { .. } if shared.net.faults().conversion_fails() => IoEvent::ConversionFailed,
            other => other,
        };
        match report {
            IoEvent::Datagram { data, from, dropped_total }
                if self.machine.deliver_at_once(dropped_total) =>
            {
                Some(UdpMessage { data, from })
            }
            other => {
                let _ = self.machine.handle_lazy(&mut lazy_now(&shared.net, &mut None), Input::Io(other));
                while let Some(out) = self.machine.poll_output() {
                    self.apply(shared, out);
                }
                None
            }
        }
    }

    /// The pass after a read: it need not look for datagrams while the transport waits
    /// registered and nothing woke it since, and a pass with nothing to do is skipped.
    fn after_read(&mut self, shared: &UdpShared) {
        let polls = if self.io.recv_registered() { Polls::Sends } else { Polls::All };
        if polls == Polls::All || self.io.may_report(polls) {
            self.process_with(shared, polls);
        }
    }

    /// A write's outputs, applied in order, with the common one — a datagram to an address,
    /// handed straight on by the machine — sent to the transport here and its report handed back
    /// at once, instead of through [`Inner::process_with`]'s general pass (which costs a write
    /// more than the machine does). A datagram the pass would hold back (a report not yet handed
    /// in, a held opening, no driver yet, a send already waiting) is left to the pass.
    fn send_at_once(&mut self, shared: &UdpShared) {
        while let Some(out) = self.machine.poll_output() {
            match out {
                Output::Io(IoCommand::SendTo { id, dest: Destination::Addr(addr), data })
                    if self.io.may_step_at_once() =>
                {
                    if let Some(report) = self.io.send_now(id, data, addr) {
                        let _ = self
                            .machine
                            .handle_lazy(&mut lazy_now(&shared.net, &mut None), Input::Io(report));
                    }
                }
                other => self.apply(shared, other),
            }
        }
    }

    /// Sends a write the machine took with [`UdpMachine::send_at_once`] and settles it: at once
    /// when the transport takes (or refuses) it, else later through the pass, which finds it in
    /// `sending`.
    fn send_now(&mut self, shared: &UdpShared, id: WriteId, data: Bytes, addr: SocketAddr) {
        let Some(report) = self.io.send_now(id, data, addr) else { return };
        let result = match report {
            IoEvent::SendFailed { cause, .. } => Err(SocketError::network(cause)),
            _ => Ok(()),
        };
        if self.machine.send_done(id) {
            self.writes.settle(id.0, result);
        }
        while let Some(out) = self.machine.poll_output() {
            self.apply(shared, out);
        }
    }

    fn process_with(&mut self, shared: &UdpShared, polls: Polls) {
        let mut budget = 64;
        // The driver's waker is set only outside a call (by `drive`): it is lent to this call's
        // steps instead of cloned for each, and put back below.
        let driver = self.io.driver.take();
        let read_waker = self.io.route.take_waker();
        self.io.recv_parked = false;
        let mut now = None; // one instant per call, read only if a step needs it

        while take_step(&mut budget, driver.as_ref()) {
            while let Some(out) = self.machine.poll_output() {
                self.apply(shared, out);
            }
            let Some(waker) = &driver else { break };
            if !self.io.may_report(polls) {
                break; // Nothing to poll: poll_once would find nothing.
            }
            let mut cx = Context::from_waker(waker);
            // The receive side is polled with the route's waker once there is a route.
            let mut read_cx = Context::from_waker(read_waker.as_ref().unwrap_or(waker));
            // fault.hold_open(): the bind's outcome is reported only after release.
            if !hold_released(&mut self.io.hold, &mut cx) {
                break;
            }
            let Some(report) =
                self.io.reports.pop_front().or_else(|| self.io.poll_once(&mut cx, &mut read_cx, polls))
            else {
                break;
            };
            let report = match report {
                IoEvent::Datagram { .. } if shared.net.faults().conversion_fails() => {
                    IoEvent::ConversionFailed
                }
                other => other,
            };
            let _ = self.machine.handle_lazy(&mut lazy_now(&shared.net, &mut now), Input::Io(report));
        }
        self.io.driver = driver;
        self.io.route.put_waker(read_waker);
        while let Some(out) = self.machine.poll_output() {
            self.apply(shared, out);
        }
        debug_assert!(self.machine.poll_timeout().is_none(), "UDP arms no timers: its driver has none");
    }

    /// Applies one output: the per-datagram ones here, the rest out of line ([`Inner::apply_rare`]),
    /// so the passes' hot code stays small in the instruction cache.
    fn apply(&mut self, shared: &UdpShared, out: Output) {
        match out {
            Output::Io(IoCommand::SendTo { id, dest, data }) => {
                let to = match dest {
                    Destination::Addr(addr) => SendTarget::Addr(addr),
                    Destination::Name(name, port) => SendTarget::Resolving(port, shared.net.resolve(&name)),
                };
                self.io.sending = Some(Sending { id, data, to });
            }
            Output::Event(Event::Read(result)) => self.read_result = Some(result),
            Output::Event(Event::Readable) => {
                self.readable_signal = true;
                if let Some(w) = self.reader.take() {
                    w.wake();
                }
            }
            Output::Event(Event::WriteSettled { id, result }) => self.writes.settle(id.0, result),
            Output::Event(Event::WritableReady) => self.writes.ready.wake_all(),
            other => self.apply_rare(shared, other),
        }
    }

    /// The outputs a socket sees a few times in its life (and `ReadInterest`, which changes only
    /// when the readable fills or drains).
    #[cold]
    #[inline(never)]
    fn apply_rare(&mut self, shared: &UdpShared, out: Output) {
        match out {
            Output::Io(IoCommand::Resolve { name }) => {
                self.io.resolving_default = Some(shared.net.resolve(&name))
            }
            Output::Io(IoCommand::ReadInterest(on)) => {
                self.io.read_interest = on;
                self.io.recv_armed = false;
                self.io.route.disarm(); // the next reader polls the receive side again
            }
            Output::Io(IoCommand::Close) | Output::Io(IoCommand::Reset) => {
                if let Some(t) = self.io.transport.take() {
                    self.io.diag = t.diag();
                }
                self.io.route.disarm(); // no transport registers it any more
                self.io.sending = None;
                self.io.resolving_default = None;
                self.io.read_interest = false;
                self.io.recv_armed = false;
                self.io.released = true;
            }
            Output::Io(_) => {}
            Output::Event(Event::StateChanged { from, to }) => {
                tracing::debug!(parent: &shared.span, %from, %to, "ready_state");
                self.state_log.push(to);
            }
            Output::Event(Event::Opened(result)) => {
                if let Some(local) = self.machine.local_addr() {
                    shared.span.record("local", tracing::field::display(local));
                }
                tracing::debug!(parent: &shared.span, ok = result.is_ok(), "opened");
                self.promises.opened.wake_all();
            }
            Output::Event(Event::Closed(result)) => {
                tracing::debug!(parent: &shared.span, ok = result.is_ok(), "closed");
                self.promises.closed.wake_all();
            }
            Output::Event(_) => {}
        }
    }
}

impl UdpIo {
    /// Whether a step may find something to report: a queued report, a pending resolution, a
    /// datagram to send, or (when `polls` allows) datagrams to receive.
    fn may_report(&self, polls: Polls) -> bool {
        !self.reports.is_empty()
            || self.resolving_default.is_some()
            || self.sending.is_some()
            || (self.read_interest && polls == Polls::All && !self.recv_parked && self.transport.is_some())
    }

    /// Whether the transport's receive side waits registered and nothing woke it since: a
    /// receive now would find nothing. With a route, its wake-up comes to the reader (or to the
    /// driver when no reader waits) and clears it; without one, the driver is woken, receives,
    /// and wakes the reader.
    fn recv_registered(&self) -> bool {
        match self.route.get() {
            Some(route) => route.armed(),
            None => self.recv_armed,
        }
    }

    /// Whether a send or a receive may be done now, outside the general pass: nothing the pass
    /// would handle first (a queued report, a send waiting, a held opening) and a driver to
    /// register with should the transport have no room or no datagram.
    fn may_step_at_once(&self) -> bool {
        self.driver.is_some()
            && self.transport.is_some()
            && self.sending.is_none()
            && self.reports.is_empty()
            && self.hold.is_none()
    }

    /// Sends `data` to `addr` now; the report, or `None` when the transport is full (the send
    /// then waits in `sending`, registered with the driver, as the pass leaves one).
    fn send_now(&mut self, id: WriteId, data: Bytes, addr: SocketAddr) -> Option<IoEvent> {
        let (Some(driver), Some(transport)) = (&self.driver, &mut self.transport) else {
            self.sending = Some(Sending { id, data, to: SendTarget::Addr(addr) });
            return None;
        };
        match transport.poll_send_bytes(&mut Context::from_waker(driver), &data, addr) {
            Poll::Ready(Ok(())) => Some(IoEvent::Sent { id }),
            Poll::Ready(Err(e)) => Some(send_failed(id, &e)),
            Poll::Pending => {
                self.sending = Some(Sending { id, data, to: SendTarget::Addr(addr) });
                None
            }
        }
    }

    /// One step: the receive side is polled with `read_cx` (the [`ReadRoute`]'s waker once there
    /// is one), the rest with `cx`.
    fn poll_once(
        &mut self,
        cx: &mut Context<'_>,
        read_cx: &mut Context<'_>,
        polls: Polls,
    ) -> Option<IoEvent> {
        if self.resolving_default.is_some() {
            if let Some(report) = self.poll_resolving_default(cx) {
                return Some(report);
            }
        }
        let transport = self.transport.as_mut()?;
        if let Some(sending) = &mut self.sending {
            let id = sending.id;
            if let SendTarget::Resolving(port, fut) = &mut sending.to {
                match poll_resolving_target(&*transport, *port, fut, cx) {
                    Poll::Ready(Ok(addr)) => sending.to = SendTarget::Addr(addr),
                    Poll::Ready(Err(cause)) => {
                        self.sending = None;
                        return Some(IoEvent::SendFailed { id, cause });
                    }
                    Poll::Pending => {}
                }
            }
            if let SendTarget::Addr(addr) = sending.to {
                match transport.poll_send_bytes(cx, &sending.data, addr) {
                    Poll::Ready(Ok(())) => {
                        self.sending = None;
                        return Some(IoEvent::Sent { id });
                    }
                    Poll::Ready(Err(e)) => {
                        self.sending = None;
                        return Some(send_failed(id, &e));
                    }
                    Poll::Pending => {}
                }
            }
        }
        if self.read_interest && polls == Polls::All && !self.recv_parked {
            return self.receive(read_cx);
        }
        None
    }

    /// One receive, polled with `read_cx`: the datagram's report, or an error's; `None` when
    /// nothing is there (the transport is then registered with `read_cx`'s waker).
    fn receive(&mut self, read_cx: &mut Context<'_>) -> Option<IoEvent> {
        let transport = self.transport.as_mut()?;
        // The route knows whether the receive side is left registered with its waker: after
        // a pending poll, or a datagram the transport says it already waits past.
        let route = self.route.get();
        let polled = ReadRoute::poll_armed_unless(
            route,
            || transport.poll_recv_bytes(read_cx),
            |answer| answer.as_ref().is_ok_and(|(_, meta)| meta.registered),
        );
        // Registered for the next datagram: pending, or a datagram the transport said so of.
        self.recv_armed = match &polled {
            Poll::Pending => true,
            Poll::Ready(Ok((_, meta))) => meta.registered,
            Poll::Ready(Err(_)) => false,
        };
        match polled {
            Poll::Ready(Ok((data, meta))) => {
                self.received += 1;
                self.recv_parked = meta.registered;
                return Some(IoEvent::Datagram { data, from: meta.from, dropped_total: meta.dropped_total });
            }
            Poll::Ready(Err(e)) => return Some(recv_failed(&e)),
            Poll::Pending => {}
        }
        None
    }

    /// The default remote's resolution, once it answers (once per socket: out of line).
    #[cold]
    #[inline(never)]
    fn poll_resolving_default(&mut self, cx: &mut Context<'_>) -> Option<IoEvent> {
        let result = match self.resolving_default.as_mut()?.as_mut().poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => return None,
        };
        self.resolving_default = None;
        Some(match result {
            Ok(addrs) => IoEvent::Resolved { addrs },
            Err(cause) => IoEvent::ResolveFailed { cause },
        })
    }
}

/// A write's destination name, once resolved: its first address of the transport's family.
#[cold]
#[inline(never)]
fn poll_resolving_target(
    transport: &dyn UdpTransport,
    port: u16,
    fut: &mut BoxFuture<'static, Result<Vec<IpAddr>, Cause>>,
    cx: &mut Context<'_>,
) -> Poll<Result<SocketAddr, Cause>> {
    match fut.as_mut().poll(cx) {
        Poll::Ready(Ok(addrs)) => {
            let family_v4 = transport.local_addr().map(|a| a.is_ipv4()).unwrap_or(true);
            Poll::Ready(match addrs.into_iter().find(|ip| ip.is_ipv4() == family_v4) {
                Some(ip) => Ok(SocketAddr::new(ip, port)),
                None => Err(Cause::FamilyMismatch),
            })
        }
        Poll::Ready(Err(cause)) => Poll::Ready(Err(cause)),
        Poll::Pending => Poll::Pending,
    }
}

/// The report of a send the transport refused.
#[cold]
#[inline(never)]
fn send_failed(id: WriteId, e: &std::io::Error) -> IoEvent {
    IoEvent::SendFailed { id, cause: cause_of(e) }
}

/// The report of a receive error. A-35: ICMP-derived errors are per datagram, never fatal.
#[cold]
#[inline(never)]
fn recv_failed(e: &std::io::Error) -> IoEvent {
    use std::io::ErrorKind::*;
    let cause = cause_of(e);
    match e.kind() {
        ConnectionRefused | HostUnreachable | NetworkUnreachable | ConnectionReset => {
            IoEvent::TransientError { cause }
        }
        _ => IoEvent::Failed { cause },
    }
}

async fn drive(shared: Arc<UdpShared>) {
    std::future::poll_fn(|cx| {
        let mut inner = lock(&shared.inner);
        if !inner.io.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            inner.io.driver = Some(cx.waker().clone());
            inner.io.route.driver_changed(cx.waker());
        }
        inner.process(&shared);
        if inner.machine.ready_state() == ReadyState::Closed && inner.io.released {
            inner.io.driver = None;
            inner.io.route.finish();
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await
}

/// The readable stream of a UDP socket: one [`UdpMessage`] per datagram.
pub struct UdpReadable {
    handle: Arc<Handle>,
    ended: bool,
}

impl UdpReadable {
    /// The next message; `Ok(None)` once closed. Cancel-safe (GEN-11).
    pub fn read(&mut self) -> UdpReadFuture<'_> {
        UdpReadFuture { readable: self }
    }

    /// Readable cancel: the same steps as `close()`.
    pub fn cancel(&self) -> SocketPromise {
        self.handle.shared.app_command(AppCommand::Close);
        SocketPromise::new(self.handle.shared.clone(), Which::Closed)
    }
}

impl Drop for UdpReadable {
    fn drop(&mut self) {
        self.handle.shared.release_reader();
        lock(&self.handle.shared.inner).reader_locked = false;
    }
}

/// The future of [`UdpReadable::read`].
#[must_use = "futures do nothing unless awaited"]
pub struct UdpReadFuture<'a> {
    readable: &'a mut UdpReadable,
}

impl Future for UdpReadFuture<'_> {
    type Output = Result<Option<UdpMessage>, SocketError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.readable.handle.shared.poll_read(cx)
    }
}

impl futures_core::Stream for UdpReadable {
    type Item = Result<UdpMessage, SocketError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let read = if this.ended { Poll::Ready(Ok(None)) } else { this.handle.shared.poll_read(cx) };
        stream_item(&mut this.ended, read)
    }
}

impl futures_core::FusedStream for UdpReadable {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

/// The writable stream of a UDP socket.
pub struct UdpWritable {
    handle: Arc<Handle>,
}

impl UdpWritable {
    /// Sends one datagram (queued at once; GEN-10). A rejected write fails alone (A-28).
    pub fn write(&self, datagram: Datagram) -> WriteFuture {
        self.handle.shared.write_promise(datagram)
    }

    /// The desired size in bytes.
    pub fn desired_size(&self) -> i64 {
        lock(&self.handle.shared.inner).machine.desired_size()
    }

    /// Resolves when the desired size is above zero.
    pub fn ready(&self) -> ReadyFuture {
        ReadyFuture::new(self.handle.shared.clone())
    }

    /// `writer.close()`: closes only the writable; queued datagrams are still sent (A-53).
    pub fn close(&self) -> FlushFuture {
        self.handle.shared.app_command(AppCommand::WriterClose);
        let upto = lock(&self.handle.shared.inner).writes.last_id();
        FlushFuture::new(self.handle.shared.clone(), upto)
    }

    /// `writer.abort(reason)`: drops queued datagrams; their writes reject `AbortError`.
    pub fn abort(&self, reason: Option<&str>) {
        self.handle.shared.app_command(AppCommand::WriterAbort { reason: reason.map(Into::into) });
    }
}

impl Drop for UdpWritable {
    fn drop(&mut self) {
        lock(&self.handle.shared.inner).writer_locked = false;
    }
}

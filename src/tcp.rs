//! `TCPSocket`: read RULES.md §4 and DESIGN §5 before editing.
//!
//! A [`TcpSocket`] is a handle to shared state: the core's [`TcpMachine`] and the transport, behind
//! one lock. Application calls run the machine and the transport inline (no task hop on the data
//! path); the socket's driver, run by one of the network's driver tasks ([`crate::drivers`]),
//! finishes what would block. The transport is polled with the driver's waker, except its read
//! direction, which a [`ReadRoute`] wakes: the waiting reader if there is one, else the driver.
//! Either way exactly one waker is registered per direction.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use compact_str::CompactString;
use tcpudp_core::address::canonical_with;
use tcpudp_core::checks;
use tcpudp_core::options::{AcceptedSpec, TcpOptions};
use tcpudp_core::{
    AppCommand, Cause, ErrorName, Event, Input, IoCommand, IoEvent, Output, ReadResult, ReadyState,
    SocketError, TcpMachine, WriteId,
};
use tokio::io::ReadBuf;

use crate::backend::{BoxFuture, TcpDiag, TcpTransport};
use crate::drivers::DriverLink;
use crate::faults::FaultTcp;
use crate::network::Network;
use crate::shared::{
    lazy_now, lock, stream_item, FlushFuture, Mutex, Polls, PromiseSource, PromiseWaiters, ReadRoute,
    ReadyFuture, SocketPromise, SocketRoute, StateLog, Which, WriteBook, WriteFuture, WriteSource,
};

/// Largest read from the transport at once.
const READ_CHUNK: usize = 64 * 1024;
/// Transport steps one call may take before yielding to other tasks.
const STEP_BUDGET: usize = 64;

/// A `TCPSocket`: a client connection, or one a [`TcpServerSocket`](crate::TcpServerSocket)
/// accepted.
///
/// Clone it freely: every clone is the same socket. Dropping the last handle (sockets, readables
/// and writables) runs `close()` in the background (GEN-12).
///
/// ```no_run
/// # async fn demo(net: tcpudp::Network) -> Result<(), tcpudp::SocketError> {
/// use tcpudp::{TcpOptions, TcpSocket};
/// let sock = TcpSocket::new(&net, "127.0.0.1", 7, TcpOptions::default())?;
/// sock.opened().await?;
/// let writer = sock.writable()?;
/// writer.write(&b"ping"[..]).await?;
/// let mut reader = sock.readable()?;
/// let echo = reader.read().await?; // Ok(None) is the end of the stream
/// sock.close().await?;
/// # let _ = echo; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TcpSocket {
    handle: Handle,
}

/// Keeps the socket alive for the application; the last one to go closes it. A count in the
/// shared state, not an `Arc` of its own: one allocation fewer per socket.
struct Handle {
    shared: Arc<TcpShared>,
}

impl Handle {
    fn new(shared: Arc<TcpShared>) -> Handle {
        shared.handles.fetch_add(1, Ordering::Relaxed);
        Handle { shared }
    }
}

impl Clone for Handle {
    fn clone(&self) -> Handle {
        Handle::new(self.shared.clone())
    }
}

pub(crate) struct TcpShared {
    id: u64,
    /// Live [`Handle`]s (sockets, readables, writables).
    handles: AtomicUsize,
    net: Network,
    attrs: Attributes,
    inner: Mutex<Inner>,
    span: tracing::Span,
}

/// What the constructor was given (reported as given, AMB-54).
#[derive(Debug, Clone)]
struct Attributes {
    /// Inline up to 24 bytes (any IPv4 text, `::1`, most host names): no allocation per socket
    /// for the usual address (issue #6). `local_address` stays boxed, 8 bytes fewer than a
    /// `String` (see `TcpShared`'s size test): it is rarely given.
    remote_address: CompactString,
    remote_port: u16,
    local_address: Option<Box<str>>,
    /// 0 when not given (a given 0 counts as absent): 8 bytes fewer than `Option<u16>` here.
    local_port: u16,
    address_reuse: bool,
    no_delay: bool,
    use_secure_transport: bool,
}

struct Inner {
    machine: TcpMachine,
    io: TransportSide,
    app: AppSide,
}

/// The backend side: the transport and the I/O the machine asked for.
#[derive(Default)]
struct TransportSide {
    transport: Option<Transport>,
    /// The resolution or connection in progress (one at a time: the machine asks for a
    /// connection once its resolution is done).
    opening: Opening,
    sending: Option<(WriteId, Bytes)>,
    shutdown_pending: bool,
    read_interest: bool,
    /// The read side was left registered with the driver's waker (no route) and the driver has
    /// not run since: its wake-up brings the driver, so a pass from the application side need not
    /// poll the read side again (it would find nothing). Cleared by every drive.
    read_armed: bool,
    read_buf: BytesMut,
    released: bool,
    driver: Option<Waker>,
    /// The driver's wake-ups go to a task awaiting `opened` or `closed` meanwhile, which does the
    /// driver's work ([`DriverLink`]).
    link: Option<DriverLink>,
    /// Where the transport's read wake-ups go, once a reader has waited ([`ReadRoute`]).
    route: SocketRoute,
    /// The deadline the driver has on the network's timer ([`crate::timers`]); an idle socket
    /// without deadlines has none (DESIGN §5).
    armed: crate::timers::Armed,
    /// Options the last `diag()` read while the transport was open (diag() after close).
    diag: Option<Box<TcpDiag>>,
    /// TLS hook (issue #7): the handshake in progress, ALPN and `start_tls()` state.
    tls: crate::tls::TlsSlot,
}

/// What [`Inner::receive_now`] did.
enum Receive {
    /// A chunk for the reader.
    Chunk(Bytes),
    /// The read side found nothing and waits registered.
    Waiting,
    /// What the read found went to the machine.
    Fed,
    /// Not done (the read goes the usual way).
    Declined,
}

/// A socket's connection: behind the fault hooks as the backend made it, held inline (no
/// allocation of its own per connection, issue #6), or a TLS session that wraps it.
pub(crate) enum Transport {
    /// The backend's connection behind the fault hooks.
    Plain(FaultTcp),
    /// A TLS session (which holds the fault-hooked connection inside).
    Session(Box<dyn TcpTransport>),
}

impl Transport {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(t) => t.poll_read(cx, buf),
            Transport::Session(t) => t.poll_read(cx, buf),
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Transport::Plain(t) => t.poll_write(cx, data),
            Transport::Session(t) => t.poll_write(cx, data),
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Plain(t) => t.poll_shutdown(cx),
            Transport::Session(t) => t.poll_shutdown(cx),
        }
    }

    fn reset(self) {
        match self {
            Transport::Plain(t) => t.reset_inline(),
            Transport::Session(t) => t.reset(),
        }
    }

    pub(crate) fn as_dyn(&self) -> &dyn TcpTransport {
        match self {
            Transport::Plain(t) => t,
            Transport::Session(t) => &**t,
        }
    }

    fn set_keep_alive(&mut self, keep_alive: Option<tcpudp_core::options::KeepAlive>) -> io::Result<()> {
        match self {
            Transport::Plain(t) => t.set_keep_alive(keep_alive),
            Transport::Session(t) => t.set_keep_alive(keep_alive),
        }
    }

    /// The transport for a layer that takes any (a TLS session about to wrap it).
    pub(crate) fn into_boxed(self) -> Box<dyn TcpTransport> {
        match self {
            Transport::Plain(t) => Box::new(t),
            Transport::Session(t) => t,
        }
    }
}

/// What a socket still opening waits for.
#[derive(Default)]
enum Opening {
    #[default]
    Idle,
    Resolving(BoxFuture<'static, Result<Vec<std::net::IpAddr>, Cause>>),
    /// The connection; its transport comes without the fault hooks, which the network's faults
    /// add once it is there.
    Connecting(BoxFuture<'static, Result<Box<dyn TcpTransport>, Cause>>),
    /// The connection the constructor's first poll completed; the driver reports it. Its
    /// transport, behind the fault hooks already, waits in [`TransportSide::transport`] (held
    /// here it would make every socket's state 16 bytes larger, issue #6).
    Connected(Result<(), Cause>),
}

/// The application side: results and waiters.
#[derive(Default)]
struct AppSide {
    promises: PromiseWaiters,
    writes: WriteBook,
    /// What the read in progress got, as `read()` gives it (40 bytes; the machine's
    /// `ReadResult` is 64, its datagram variant being UDP's).
    read_result: Option<Result<Option<Bytes>, SocketError>>,
    readable_signal: bool,
    reader: Option<Waker>,
    reader_locked: bool,
    writer_locked: bool,
    state_log: Option<StateLog>,
}

impl TcpSocket {
    /// `new TCPSocket(remoteAddress, remotePort, options)`.
    ///
    /// Synchronous errors, in the spec's order (TCP-CTOR-14): `SecurityError` (no permission),
    /// `InvalidAccessError` (bad address, port 0, unusable local address, no route, bad keep-alive
    /// interval), `TypeError` (a zero buffer size), `NotSupportedError` (TLS without support).
    /// Nothing is sent when it fails (GEN-01). The socket starts "opening"; the connection is made
    /// in the background.
    pub fn new(
        net: &Network,
        remote_address: &str,
        remote_port: u16,
        options: TcpOptions,
    ) -> Result<Self, SocketError> {
        let spec = checks::tcp_spec(&mut net.checks(), remote_address, remote_port, &options)?;
        let attrs = Attributes {
            remote_address: CompactString::from(remote_address),
            remote_port,
            local_address: options.local_address.as_deref().map(Box::from),
            local_port: options.local_port.unwrap_or(0),
            address_reuse: options.address_reuse,
            no_delay: options.no_delay,
            use_secure_transport: options.use_secure_transport,
        };
        let machine = TcpMachine::new(net.now(), spec);
        Ok(Self::start(net, attrs, machine, None, crate::tls::TlsSlot::default()))
    }

    /// A socket for a connection the server accepted.
    pub(crate) fn accepted(
        net: &Network,
        spec: AcceptedSpec,
        transport: Transport,
        tls_alpn: Option<Vec<u8>>,
    ) -> Self {
        let attrs = Attributes {
            remote_address: canonical_with(spec.remote.ip(), |text| CompactString::new(text)),
            remote_port: spec.remote.port(),
            local_address: None,
            local_port: 0,
            address_reuse: spec.tcp.config.address_reuse,
            no_delay: true,
            use_secure_transport: spec.tcp.use_secure_transport,
        };
        let machine = TcpMachine::accepted_lazy(&mut lazy_now(net, &mut None), spec);
        // TLS hook (issue #7): an accepted socket runs the server side of `start_tls()`; its slot
        // is in place before the first pass, which may already read.
        Self::start(net, attrs, machine, Some(transport), crate::tls::TlsSlot::accepted(tls_alpn))
    }

    fn start(
        net: &Network,
        attrs: Attributes,
        machine: TcpMachine,
        transport: Option<Transport>,
        tls: crate::tls::TlsSlot,
    ) -> Self {
        let id = net.next_id();
        let span = tracing::debug_span!(
            "socket",
            id,
            kind = "tcp",
            backend = net.backend_kind().as_str(),
            local = tracing::field::Empty,
            remote = %format_args!("{}:{}", attrs.remote_address, attrs.remote_port),
        );
        let state_log = Some(StateLog::new(machine.ready_state()));
        // Written into its allocation: `Arc::new` copies its argument there, and every part named
        // first was one more copy (issue #6: ~1 KiB, several times per socket).
        let mut shared = Arc::<TcpShared>::new_uninit();
        Arc::get_mut(&mut shared).expect("a new Arc has no other owner").write(TcpShared {
            id,
            handles: AtomicUsize::new(0),
            net: net.clone(),
            attrs,
            inner: Mutex::new(Inner {
                machine,
                io: TransportSide { transport, tls, ..TransportSide::default() },
                app: AppSide { state_log, ..AppSide::default() },
            }),
            span,
        });
        // SAFETY: written in full just above.
        let shared = unsafe { shared.assume_init() };
        let (driver, link) = net.drivers(id).register(shared.clone());
        let needs_drive = {
            let mut inner = lock(&shared.inner);
            inner.io.link = Some(link);
            inner.first_pass(&shared, &driver)
        };
        if needs_drive {
            driver.wake();
        }
        TcpSocket { handle: Handle::new(shared) }
    }

    fn shared(&self) -> &Arc<TcpShared> {
        &self.handle.shared
    }

    /// `readyState`.
    pub fn ready_state(&self) -> ReadyState {
        lock(&self.shared().inner).machine.ready_state()
    }

    /// `remoteAddress`, exactly as given (TCP-CTOR-04); for an accepted socket, the peer's
    /// address in canonical text.
    pub fn remote_address(&self) -> &str {
        &self.shared().attrs.remote_address
    }

    /// `remotePort`.
    pub fn remote_port(&self) -> u16 {
        self.shared().attrs.remote_port
    }

    /// `localAddress`: as given, else the bound address once known (at the latest when `opened`
    /// resolves, TCP-ATTR-01).
    pub fn local_address(&self) -> Option<String> {
        if let Some(given) = &self.shared().attrs.local_address {
            return Some(given.to_string());
        }
        let local = lock(&self.shared().inner).machine.local_addr();
        local.map(|a| tcpudp_core::address::canonical(a.ip()))
    }

    /// `localPort`: as given, else the bound port once known.
    pub fn local_port(&self) -> Option<u16> {
        let given = self.shared().attrs.local_port;
        if given != 0 {
            return Some(given);
        }
        let local = lock(&self.shared().inner).machine.local_addr();
        local.map(|a| a.port())
    }

    /// `addressReuse`.
    pub fn address_reuse(&self) -> bool {
        self.shared().attrs.address_reuse
    }

    /// `noDelay`.
    pub fn no_delay(&self) -> bool {
        self.shared().attrs.no_delay
    }

    /// `useSecureTransport`.
    pub fn use_secure_transport(&self) -> bool {
        self.shared().attrs.use_secure_transport
    }

    /// Extension (TLS, issue #7): the ALPN protocol the TLS handshake negotiated, once it is done
    /// (`None` for plain sockets and when no protocol was agreed).
    pub fn alpn(&self) -> Option<Vec<u8>> {
        lock(&self.shared().inner).io.tls.alpn()
    }

    /// Extension (EXT-07): upgrades this open plain socket to TLS in place — the client side,
    /// or the server side for a socket a server accepted (with server credentials in the TLS
    /// context). Reads and writes are held until the handshake settles. Bytes already waiting in
    /// the readable are the first bytes the TLS session reads, so read everything the plain
    /// protocol sends before the upgrade first. Rejects `InvalidStateError` while a read is
    /// pending or writes are queued (or when the socket is not open and plain); on a failed
    /// handshake the socket closes with `NetworkError` (cause TLS). Bounded by the TLS context's
    /// handshake timeout.
    pub fn start_tls(&self) -> crate::StartTlsFuture {
        let shared = self.shared().clone();
        let early = shared.start_tls();
        crate::StartTlsFuture::new(shared, early)
    }

    /// `opened`: resolves once "open", rejects if opening fails.
    pub fn opened(&self) -> SocketPromise {
        SocketPromise::new(self.shared().clone(), Which::Opened)
    }

    /// `closed`: settles once "closed".
    pub fn closed(&self) -> SocketPromise {
        SocketPromise::new(self.shared().clone(), Which::Closed)
    }

    /// `close()`: runs the readable cancel steps (flush, FIN, wait for the peer's FIN, bounded by
    /// the close timeout) and returns the `closed` promise. Works whatever is locked (A-14).
    pub fn close(&self) -> SocketPromise {
        self.shared().app_command(AppCommand::Close);
        self.closed()
    }

    /// `halfClose()`: FIN after the queued writes; receiving continues. Never fails (A-51).
    pub fn half_close(&self) {
        self.shared().app_command(AppCommand::HalfClose);
    }

    /// Extension (EXT-03): abandons the connection with RST; everything pending rejects
    /// `AbortError`.
    pub fn reset(&self) {
        self.shared().app_command(AppCommand::Reset);
    }

    /// The readable stream. `TypeError` while another readable of this socket is held.
    pub fn readable(&self) -> Result<TcpReadable, SocketError> {
        let mut inner = lock(&self.shared().inner);
        if inner.app.reader_locked {
            return Err(SocketError::with_cause(ErrorName::TypeError, Cause::StreamLocked));
        }
        inner.app.reader_locked = true;
        Ok(TcpReadable { handle: self.handle.clone(), ended: false })
    }

    /// The writable stream. `TypeError` while another writable of this socket is held.
    pub fn writable(&self) -> Result<TcpWritable, SocketError> {
        let mut inner = lock(&self.shared().inner);
        if inner.app.writer_locked {
            return Err(SocketError::with_cause(ErrorName::TypeError, Cause::StreamLocked));
        }
        inner.app.writer_locked = true;
        Ok(TcpWritable { handle: self.handle.clone(), pending_flush: None })
    }

    /// Both streams as one `tokio::io::AsyncRead + AsyncWrite` value (for codecs, TLS, `copy`…).
    pub fn into_io(self) -> Result<TcpIo, SocketError> {
        let readable = self.readable()?;
        let writable = self.writable()?;
        Ok(TcpIo { readable, writable, leftover: Bytes::new(), in_write: None })
    }

    /// Inbound bytes received and queued in the library, not yet read (a cheap part of
    /// [`diag`](Self::diag): no option is read back from the OS).
    pub fn queued_read_bytes(&self) -> usize {
        lock(&self.shared().inner).machine.queued_read_bytes()
    }

    /// Option values read back from the OS (or the simulator's model) and the library's queues.
    ///
    /// Options are read back only when asked: once the socket has released its OS (or simulator)
    /// socket, `options` are the values the last `diag()` call read while it was open (all `None`
    /// if there was none), so closing a socket costs no read-back.
    pub fn diag(&self) -> TcpSocketDiag {
        let mut inner = lock(&self.shared().inner);
        let options = match &inner.io.transport {
            Some(t) => {
                let options = t.as_dyn().diag();
                inner.io.diag = Some(Box::new(options.clone()));
                options
            }
            None => inner.io.diag.as_deref().cloned().unwrap_or_default(),
        };
        TcpSocketDiag {
            state_log: inner.app.state_log.as_ref().map(StateLog::to_vec).unwrap_or_default(),
            queued_read_bytes: inner.machine.queued_read_bytes(),
            queued_write_bytes: inner.machine.queued_write_bytes(),
            read_interest: inner.machine.read_interest(),
            transport_open: inner.io.transport.is_some(),
            options,
            local_addr: inner.machine.local_addr(),
            remote_addr: inner.machine.remote_addr(),
        }
    }
}

impl std::fmt::Debug for TcpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpSocket")
            .field("id", &self.shared().id)
            .field("remote", &format_args!("{}:{}", self.remote_address(), self.remote_port()))
            .field("ready_state", &self.ready_state())
            .finish()
    }
}

/// What [`TcpSocket::diag`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpSocketDiag {
    /// Every readyState the socket has had, in order.
    pub state_log: Vec<ReadyState>,
    /// Bytes waiting in the readable.
    pub queued_read_bytes: usize,
    /// Bytes of unsettled writes.
    pub queued_write_bytes: usize,
    /// Whether the library is reading from the transport.
    pub read_interest: bool,
    /// Whether the library still holds an OS (or simulator) socket.
    pub transport_open: bool,
    /// Option values read back.
    pub options: TcpDiag,
    /// The connection's local address and port, once connected.
    pub local_addr: Option<std::net::SocketAddr>,
    /// The peer's address and port, once connected.
    pub remote_addr: Option<std::net::SocketAddr>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // GEN-12: the last handle gone runs close() in the background (bounded by the close
        // timeout); the driver's run queue keeps the shared state until the socket is closed. AcqRel:
        // whatever the other handles did happens before this close.
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.close_on_drop();
        }
    }
}

impl TcpShared {
    fn app_command(&self, cmd: AppCommand) {
        let mut inner = lock(&self.inner);
        let mut now = None;
        // Commands that reach here never fail synchronously (start_tls has its own path).
        let _ = inner.machine.handle_lazy(&mut lazy_now(&self.net, &mut now), Input::App(cmd));
        inner.process_with(self, Polls::All, &mut now);
    }

    /// GEN-12 for the last handle: `close()`, unless the socket is closed already (the usual end
    /// of `close().await`), where it would change nothing and cost a clock read and a pass.
    fn close_on_drop(&self) {
        if lock(&self.inner).machine.ready_state() != ReadyState::Closed {
            self.app_command(AppCommand::Close);
        }
    }

    fn poll_read(&self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, SocketError>> {
        let mut inner = lock(&self.inner);
        // Polling now: what this poll receives needs no wake-up (which would poll the reader's
        // task once more for nothing); a pending poll registers again below.
        inner.app.reader = None;
        inner.io.route.reader_polling();
        // At most one clock read per call (no time passes that matters here), and none unless a
        // transition needs it: a read or what it receives never does.
        let mut now = None;
        // The read side waits registered with the route and nothing woke it: polling it would
        // find nothing. Else the first turn polls it.
        let first = match inner.io.route.get() {
            Some(route) if route.armed() => Polls::Sends,
            _ => Polls::All,
        };
        // Data the machine holds goes out without a `Read` input or event (the pass a read has
        // runs all the same).
        if let Some(chunk) = inner.machine.take_chunk() {
            inner.process_with(self, first, &mut now);
            return Poll::Ready(Ok(Some(chunk)));
        }
        // None held: the transport's read side first, so that one read serves instead of a read
        // that waits, a `Readable` event and a second read; a chunk it gets goes straight to the
        // reader when the machine allows (no input, no output).
        let mut first = first;
        if first == Polls::All {
            match inner.receive_now(self, &mut now) {
                Receive::Chunk(chunk) => return Poll::Ready(Ok(Some(chunk))),
                // Nothing came: the reader waits as a `Read` would have it wait.
                Receive::Waiting if inner.machine.wait_at_once() => return inner.reader_waits(cx.waker()),
                Receive::Waiting => first = Polls::Sends,
                Receive::Fed | Receive::Declined => {}
            }
        }
        if first == Polls::All {
            inner.process_with(self, Polls::All, &mut now);
            if let Some(chunk) = inner.machine.take_chunk() {
                inner.process_with(self, Polls::Sends, &mut now);
                return Poll::Ready(Ok(Some(chunk)));
            }
            first = Polls::Sends;
        }
        // The second turn only collects what the first one received: that one polled the
        // transport's read side until it was pending (registered) or out of budget (the driver
        // woken), so polling it again would find nothing.
        for polls in [first, Polls::Sends] {
            inner.app.read_result = None;
            inner.app.readable_signal = false;
            let _ =
                inner.machine.handle_lazy(&mut lazy_now(&self.net, &mut now), Input::App(AppCommand::Read));
            inner.process_with(self, polls, &mut now);
            if let Some(result) = inner.app.read_result.take() {
                return Poll::Ready(result);
            }
            if !inner.app.readable_signal {
                break;
            }
        }
        inner.reader_waits(cx.waker())
    }

    /// A reader that may have been handed a read wake-up went away.
    fn release_reader(&self) {
        if let Some(route) = lock(&self.inner).io.route.get() {
            route.release();
        }
    }

    fn write(&self, data: Bytes) -> u64 {
        self.write_locked(&mut lock(&self.inner), data)
    }

    /// `write(chunk)`'s promise: settled already when the chunk went out while it was issued.
    fn write_promise(self: &Arc<Self>, data: Bytes) -> WriteFuture {
        let mut inner = lock(&self.inner);
        let id = self.write_locked(&mut inner, data);
        WriteFuture::issued(&mut inner.app.writes, id, self)
    }

    fn write_locked(&self, inner: &mut Inner, data: Bytes) -> u64 {
        let id = inner.app.writes.next_id();
        let mut now = None;
        if inner.io.may_send_at_once() && inner.machine.send_at_once(WriteId(id), data.len()) {
            inner.send_now(self, WriteId(id), data, &mut now);
            return id;
        }
        let write = Input::App(AppCommand::Write { id: WriteId(id), data });
        let _ = inner.machine.handle_lazy(&mut lazy_now(&self.net, &mut now), write);
        inner.process_with(self, Polls::Sends, &mut now);
        id
    }
}

// TLS hook (issue #7): `start_tls()` (EXT-07).
impl TcpShared {
    fn start_tls(&self) -> Option<Result<(), SocketError>> {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        if let Err(e) = inner.io.tls.begin_upgrade(&self.net) {
            return Some(Err(e));
        }
        let now = self.net.now();
        if let Err(e) = inner.machine.handle(now, Input::App(AppCommand::StartTls)) {
            inner.io.tls.abandon_upgrade();
            return Some(Err(e));
        }
        // Bytes already in the readable are fed to the TLS session first: take them out of the
        // queue before the handshake command wraps the transport.
        let mut outputs: Vec<Output> = std::iter::from_fn(|| inner.machine.poll_output()).collect();
        while inner.machine.queued_read_bytes() > 0 {
            let _ = inner.machine.handle(now, Input::App(AppCommand::Read));
            while let Some(out) = inner.machine.poll_output() {
                match out {
                    Output::Event(Event::Read(ReadResult::Chunk(data))) => inner.io.tls.push_prefix(data),
                    other => outputs.push(other),
                }
            }
        }
        for out in outputs {
            inner.apply(self, out);
        }
        inner.process(self);
        None
    }
}

impl crate::tls::UpgradeSource for TcpShared {
    fn poll_upgrade(&self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        lock(&self.inner).io.tls.poll_upgrade(cx)
    }
}

impl PromiseSource for TcpShared {
    fn poll_promise(&self, which: Which, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        // A wake-up of the driver came to this task, which awaits a promise: the driver's pass is
        // made here, instead of in the driver's task and then this one ([`DriverLink`]).
        let handed = {
            let mut inner = lock(&self.inner);
            match (&inner.io.link, &inner.io.driver) {
                (Some(link), Some(driver)) if link.take_handed() => {
                    let handed = (link.clone(), driver.clone());
                    // What the pass settles, this poll sees: no wake-up of this task for it.
                    inner.app.promises.forget(which, cx.waker());
                    Some(handed)
                }
                _ => None,
            }
        };
        if let Some((link, driver)) = handed {
            if crate::drivers::Driven::drive(self, &driver).is_ready() {
                drop(link.finish());
            }
        }
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let outcome = match which {
            Which::Opened => inner.machine.opened(),
            Which::Closed => inner.machine.closed(),
        };
        let polled = inner.app.promises.poll(which, outcome, cx);
        if polled.is_pending() {
            // Only while what it awaits is under way (the connection being made, the closing
            // handshake): a task that awaits `closed` through an open connection's life takes no
            // wake-ups that other tasks' writes need, and one that holds its future unpolled for
            // a while can delay only a socket that is opening or closing.
            let under_way = matches!(
                (which, inner.machine.ready_state()),
                (Which::Opened, ReadyState::Opening) | (Which::Closed, ReadyState::Closing)
            );
            if let Some(link) = inner.io.link.as_ref().filter(|_| under_way) {
                link.set_waiter(cx.waker());
            }
            if let Some(route) = inner.io.route.get() {
                route.pass_on();
            }
        }
        polled
    }

    fn release_waiter(&self) {
        if let Some(link) = &lock(&self.inner).io.link {
            link.release_waiter();
        }
    }
}

impl WriteSource for TcpShared {
    fn poll_write(&self, id: u64, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        lock(&self.inner).app.writes.poll(id, cx)
    }

    fn forget_write(&self, id: u64) {
        lock(&self.inner).app.writes.forget(id);
    }

    fn poll_flushed(&self, upto: u64, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        lock(&self.inner).app.writes.poll_flushed(upto, cx)
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        let mut inner = lock(&self.inner);
        if inner.machine.desired_size() > 0 || inner.machine.ready_state() == ReadyState::Closed {
            return Poll::Ready(Ok(()));
        }
        inner.app.writes.ready.register(cx.waker());
        Poll::Pending
    }
}

impl Inner {
    /// Writes a chunk the machine took with [`TcpMachine::send_at_once`]: settled at once when
    /// the transport takes all of it; else the rest waits in `sending` for the pass (registered
    /// with the driver), or the failure is handed in as the pass would.
    fn send_now(
        &mut self,
        shared: &TcpShared,
        id: WriteId,
        data: Bytes,
        now: &mut Option<tcpudp_core::Instant>,
    ) {
        self.io.sending = Some((id, data));
        let report = match (&self.io.driver, &mut self.io.transport) {
            (Some(driver), Some(transport)) => {
                poll_sending(&mut self.io.sending, transport, &mut Context::from_waker(driver))
            }
            _ => None,
        };
        match report {
            Some(IoEvent::Wrote { id }) if self.machine.send_done(id) => {
                self.app.writes.settle(id.0, Ok(()));
                while let Some(out) = self.machine.poll_output() {
                    self.apply(shared, out);
                }
            }
            Some(report) => {
                let _ = self.machine.handle_lazy(&mut lazy_now(&shared.net, now), Input::Io(report));
                self.process_with(shared, Polls::Sends, now);
            }
            None => {}
        }
    }

    /// The reader waits with `waker`.
    fn reader_waits<T>(&mut self, waker: &Waker) -> Poll<T> {
        self.app.reader = Some(waker.clone());
        // Later read wake-ups come straight here (once the driver runs: the route falls back to it).
        let io = &mut self.io;
        io.route.reader_waits(waker, io.driver.as_ref(), io.released);
        Poll::Pending
    }

    /// One read of the transport's read side for a reader with nothing queued, outside a pass
    /// (the read side only, as the pass would poll it): a chunk the machine lets go straight to
    /// the reader ([`TcpMachine::deliver_at_once`]) comes back; anything else the read found
    /// goes to the machine as the pass would hand it in.
    fn receive_now(&mut self, shared: &TcpShared, now: &mut Option<tcpudp_core::Instant>) -> Receive {
        let io = &mut self.io;
        let ready = io.read_interest
            && io.transport.is_some()
            && io.driver.is_some()
            && matches!(io.opening, Opening::Idle)
            && self.machine.may_deliver_at_once();
        if !ready {
            return Receive::Declined;
        }
        // As in a pass: the route's waker for the read side once there is a route.
        let driver = io.driver.take();
        let read_waker = io.route.take_waker();
        let event = read_waker
            .as_ref()
            .or(driver.as_ref())
            .and_then(|waker| io.poll_receive(&mut Context::from_waker(waker)));
        io.driver = driver;
        io.route.put_waker(read_waker);
        let event = match event {
            None => return Receive::Waiting,
            Some(IoEvent::Received(_)) if shared.net.faults().conversion_fails() => IoEvent::ConversionFailed,
            Some(IoEvent::Received(chunk)) if self.machine.deliver_at_once() => return Receive::Chunk(chunk),
            Some(event) => event,
        };
        let _ = self.machine.handle_lazy(&mut lazy_now(&shared.net, now), Input::Io(event));
        Receive::Fed
    }

    /// Runs the machine's outputs and the transport until nothing more can happen without
    /// waiting. Transport polls use the driver's waker, reads the [`ReadRoute`]'s once there is
    /// one (DESIGN §5: one registered waker per direction).
    fn process(&mut self, shared: &TcpShared) {
        self.process_with(shared, Polls::All, &mut None);
    }

    /// As [`Inner::process`], polling only the directions `polls` names.
    /// `now` is the call's clock read once made ([`lazy_now`]).
    fn process_with(&mut self, shared: &TcpShared, polls: Polls, now: &mut Option<tcpudp_core::Instant>) {
        self.run(shared, polls, now);
        // A deadline that moved (close() armed the close timeout, say) goes on the network's
        // timer here, for the driver to wake at: waking the driver to do it would cost a poll.
        // A driver not polled yet has no waker to give; its first poll arms the deadline.
        let wanted = self.machine.poll_timeout().map(|d| d.at);
        let io = &mut self.io;
        if wanted != io.armed.at() {
            if let Some(w) = &io.driver {
                shared.net.timers().set(&shared.net, shared.id, &mut io.armed, wanted, w);
            }
        }
    }

    /// The steps of [`Inner::process_with`] without the timer check: the driver arms its timer
    /// itself right after (waking it for that would cost it a second poll).
    fn run(&mut self, shared: &TcpShared, polls: Polls, now: &mut Option<tcpudp_core::Instant>) {
        // Neither waker changes during a call (the driver and the route are set outside it), and
        // no step reads them from here: they are lent to the steps, not cloned (no reference
        // count traffic per call), and put back after.
        let waker = self.io.driver.take();
        let read_waker = self.io.route.take_waker();
        self.steps(shared, polls, now, waker.as_ref(), read_waker.as_ref());
        self.io.driver = waker;
        self.io.route.put_waker(read_waker);
    }

    fn steps(
        &mut self,
        shared: &TcpShared,
        polls: Polls,
        now: &mut Option<tcpudp_core::Instant>,
        waker: Option<&Waker>,
        read_waker: Option<&Waker>,
    ) {
        let mut budget = STEP_BUDGET;
        loop {
            while let Some(out) = self.machine.poll_output() {
                self.apply(shared, out);
            }
            let Some(waker) = waker else { break };
            let mut cx = Context::from_waker(waker);
            let mut read_cx = Context::from_waker(read_waker.unwrap_or(waker));
            let Some(mut event) = self.io.poll_once(&mut cx, &mut read_cx, polls, shared.net.faults()) else {
                break;
            };
            if matches!(event, IoEvent::Received(_)) && shared.net.faults().conversion_fails() {
                event = IoEvent::ConversionFailed;
            }
            // At most one clock read per call: the steps of one call happen at one instant.
            let _ = self.machine.handle_lazy(&mut lazy_now(&shared.net, now), Input::Io(event));
            budget -= 1;
            if budget == 0 {
                // Let other tasks run; the driver picks up where this left off.
                waker.wake_by_ref();
                while let Some(out) = self.machine.poll_output() {
                    self.apply(shared, out);
                }
                break;
            }
        }
    }

    fn apply(&mut self, shared: &TcpShared, out: Output) {
        match out {
            Output::Io(cmd) => self.io.apply(shared, cmd),
            Output::Event(ev) => self.app_event(shared, ev),
        }
    }

    fn app_event(&mut self, shared: &TcpShared, ev: Event) {
        match ev {
            Event::StateChanged { from, to } => {
                tracing::debug!(parent: &shared.span, %from, %to, "ready_state");
                if let Some(log) = &mut self.app.state_log {
                    log.push(to);
                }
            }
            Event::Opened(result) => {
                if let Some(local) = self.machine.local_addr() {
                    shared.span.record("local", tracing::field::display(local));
                }
                tracing::debug!(parent: &shared.span, ok = result.is_ok(), "opened");
                self.app.promises.opened.wake_all();
            }
            Event::Closed(result) => {
                match &result {
                    Ok(()) => tracing::debug!(parent: &shared.span, "closed"),
                    Err(e) => tracing::debug!(parent: &shared.span, error = %e, "closed"),
                }
                self.app.promises.closed.wake_all();
            }
            Event::Read(result) => {
                self.app.read_result = Some(match result {
                    ReadResult::Chunk(bytes) => Ok(Some(bytes)),
                    ReadResult::Done => Ok(None),
                    ReadResult::Error(e) => Err(e),
                    ReadResult::Message(m) => Ok(Some(m.data)),
                });
            }
            Event::Readable => {
                self.app.readable_signal = true;
                if let Some(w) = self.app.reader.take() {
                    w.wake();
                }
            }
            Event::WriteSettled { id, result } => self.app.writes.settle(id.0, result),
            Event::WritableReady => self.app.writes.ready.wake_all(),
            _ => {}
        }
    }

    /// The new socket's first pass with its driver's waker, made by its constructor instead of
    /// by a queued drive (which cost a task wake-up and a pass per socket, issue #6): it arms the
    /// socket's deadline, and starts the connection (TCP-CTOR-13: the SYN goes now, so a peer's
    /// `listen()` made next finds the connection already queued) or registers an accepted
    /// socket's read side. A connection that is already there waits for the driver (`true`: wake
    /// it), so the constructor returns a socket still "opening" whatever happened; so does a
    /// resolution, which the driver starts, and a socket finished at once, which only a drive
    /// lets go of.
    fn first_pass(&mut self, shared: &TcpShared, driver: &Waker) -> bool {
        // The machine's first outputs (the connection to make, an accepted socket's read
        // interest), with no transport polled yet.
        while let Some(out) = self.machine.poll_output() {
            self.apply(shared, out);
        }
        let io = &mut self.io;
        io.driver = Some(driver.clone());
        io.route.driver_changed(driver);
        let needs_drive = match &mut io.opening {
            Opening::Connecting(fut) => match fut.as_mut().poll(&mut Context::from_waker(driver)) {
                Poll::Ready(result) => {
                    io.opening = Opening::Connected(io.keep(result, shared.net.faults()));
                    true
                }
                Poll::Pending => false,
            },
            Opening::Connected(_) | Opening::Resolving(_) => true,
            // An accepted socket: the pass registers its read side (and arms any deadline).
            Opening::Idle => {
                self.process(shared);
                self.finished()
            }
        };
        let wanted = self.machine.poll_timeout().map(|d| d.at);
        if wanted != self.io.armed.at() {
            shared.net.timers().set(&shared.net, shared.id, &mut self.io.armed, wanted, driver);
        }
        self.machine.release_idle_buffers(); // as a drive does: an idle socket keeps none
        needs_drive
    }

    fn finished(&self) -> bool {
        self.machine.ready_state() == ReadyState::Closed && self.io.released
    }
}

impl TransportSide {
    /// Whether a write may go to the transport now, outside the pass: nothing the pass would do
    /// first (a connection or resolution in progress, a write or FIN waiting, a TLS handshake
    /// holding the transport) and a driver to register with should the transport have no room.
    fn may_send_at_once(&self) -> bool {
        self.driver.is_some()
            && self.transport.is_some()
            && self.sending.is_none()
            && !self.shutdown_pending
            && matches!(self.opening, Opening::Idle)
    }

    fn apply(&mut self, shared: &TcpShared, cmd: IoCommand) {
        match cmd {
            IoCommand::Resolve { name } => self.opening = Opening::Resolving(shared.net.resolve(&name)),
            IoCommand::Connect { remote, local, config } => {
                let connect = shared.net.backend().connect(remote, local, config);
                self.opening = Opening::Connecting(connect);
            }
            IoCommand::Send { id, data } => self.sending = Some((id, data)),
            IoCommand::ShutdownWrite => self.shutdown_pending = true,
            IoCommand::ReadInterest(on) => {
                self.read_interest = on;
                self.read_armed = false;
            }
            IoCommand::SetKeepAlive(keep_alive) => {
                self.tls.set_keep_alive(keep_alive); // TLS hook: a handshake may hold the transport.
                if let Some(t) = &mut self.transport {
                    if let Err(e) = t.set_keep_alive(keep_alive) {
                        tracing::debug!(parent: &shared.span, error = %e, "keep-alive not applied");
                    }
                }
            }
            IoCommand::TlsHandshake => {
                // The session polls the transport with its own waker, and hands back a new one.
                self.route.disarm();
                // TLS hook (issue #7): the session takes the transport until the handshake settles.
                self.tls.start(
                    &shared.net,
                    &shared.attrs.remote_address[..],
                    self.transport.take().map(Transport::into_boxed),
                );
            }
            IoCommand::Close => self.release(None),
            IoCommand::Reset => self.release(Some(())),
            _ => {}
        }
    }

    fn release(&mut self, reset: Option<()>) {
        self.opening = Opening::Idle;
        self.sending = None;
        self.shutdown_pending = false;
        self.read_interest = false;
        read_pool::give(std::mem::take(&mut self.read_buf));
        if let Some(t) = self.transport.take() {
            if reset.is_some() {
                t.reset();
            }
        }
        self.tls.release(reset.is_some()); // TLS hook: a handshake in progress ends too.
        self.released = true;
    }

    /// A connection attempt ended: the transport, behind the fault hooks (and counted) from now
    /// on, is kept in `transport` until [`connected`](Self::connected) reports it.
    fn keep(
        &mut self,
        result: Result<Box<dyn TcpTransport>, Cause>,
        faults: &crate::faults::Faults,
    ) -> Result<(), Cause> {
        result.map(|t| self.transport = Some(Transport::Plain(faults.wrap_tcp(t))))
    }

    /// The connection is there (kept in `transport`) or failed: its report. A transport whose
    /// addresses cannot be read is let go.
    fn connected(&mut self, result: Result<(), Cause>) -> IoEvent {
        self.opening = Opening::Idle;
        let addrs = match (result, &self.transport) {
            (Err(cause), _) => Err(cause),
            // Not there: a release emptied it (it empties `opening` too, so this does not happen).
            (Ok(()), None) => Err(Cause::Other),
            (Ok(()), Some(t)) => match (t.as_dyn().local_addr(), t.as_dyn().peer_addr()) {
                (Ok(local), Ok(remote)) => Ok((local, remote)),
                (Err(e), _) | (_, Err(e)) => Err(crate::backend::cause_of(&e)),
            },
        };
        match addrs {
            Ok((local, remote)) => IoEvent::Connected { local, remote },
            Err(cause) => {
                self.transport = None;
                IoEvent::ConnectFailed { cause }
            }
        }
    }

    /// One step of I/O: the first report a pending operation has, if any. The read direction is
    /// polled with `read_cx` (the [`ReadRoute`]'s waker once there is one), the rest with `cx`.
    fn poll_once(
        &mut self,
        cx: &mut Context<'_>,
        read_cx: &mut Context<'_>,
        polls: Polls,
        faults: &crate::faults::Faults,
    ) -> Option<IoEvent> {
        match &mut self.opening {
            Opening::Idle => {}
            Opening::Resolving(fut) => {
                if let Poll::Ready(result) = fut.as_mut().poll(cx) {
                    self.opening = Opening::Idle;
                    return Some(match result {
                        Ok(addrs) => IoEvent::Resolved { addrs },
                        Err(cause) => IoEvent::ResolveFailed { cause },
                    });
                }
            }
            Opening::Connecting(fut) => {
                if let Poll::Ready(result) = fut.as_mut().poll(cx) {
                    let kept = self.keep(result, faults);
                    return Some(self.connected(kept));
                }
            }
            Opening::Connected(_) => {
                if let Opening::Connected(result) = std::mem::take(&mut self.opening) {
                    return Some(self.connected(result));
                }
            }
        }
        // TLS hook (issue #7): a handshake in progress reports TlsDone/TlsFailed (or an I/O failure).
        // Transport errors below go through `tls::io_cause`, which also reads the TLS layer's
        // causes (`Cause::Tls`, `Cause::Truncated`).
        if let Some(event) = self.tls.poll(cx, &mut self.transport) {
            // The transport may be a TLS session now, with reads of its own buffered.
            self.read_armed = false;
            return Some(event);
        }
        let transport = self.transport.as_mut()?;
        if self.sending.is_some() {
            if let Some(report) = poll_sending(&mut self.sending, transport, cx) {
                return Some(report);
            }
        } else if self.shutdown_pending {
            match transport.poll_shutdown(cx) {
                Poll::Ready(Ok(())) => {
                    self.shutdown_pending = false;
                    return Some(IoEvent::WriteShutdown);
                }
                Poll::Ready(Err(e)) => {
                    self.shutdown_pending = false;
                    return Some(IoEvent::Failed { cause: crate::tls::io_cause(&e) });
                }
                Poll::Pending => {}
            }
        }
        if self.read_interest && polls == Polls::All {
            return self.poll_receive(read_cx);
        }
        None
    }

    /// Polls the read side once (with reading on): what it found, `None` when nothing came (left
    /// registered with `read_cx`, or not polled: registered with the driver's waker already).
    fn poll_receive(&mut self, read_cx: &mut Context<'_>) -> Option<IoEvent> {
        let transport = self.transport.as_mut()?;
        // The route knows whether the read side is left registered with its waker (`read_cx`
        // is the route's waker whenever there is a route); without one, `read_armed` does.
        let route = self.route.get();
        if route.is_none() && self.read_armed {
            return None;
        }
        // Read at once, without asking the transport first whether a read may find something: a
        // pass polls the read side after a wake-up, which usually brought data, and a second
        // readiness check per read cost as much as the read's own (issue #6, tcp-pingpong). A
        // read that finds nothing gives the buffer back to the thread's pool below.
        read_pool::make_room(&mut self.read_buf);
        let spare = self.read_buf.spare_capacity_mut();
        // Never more than a fresh buffer holds, whatever this one's history (see `read_pool`).
        let room = spare.len().min(READ_CHUNK);
        let mut buf = ReadBuf::uninit(&mut spare[..room]);
        match ReadRoute::poll_armed(route, || transport.poll_read(read_cx, &mut buf)) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                if n == 0 {
                    self.read_interest = false;
                    read_pool::give(std::mem::take(&mut self.read_buf));
                    return Some(IoEvent::PeerFin);
                }
                // SAFETY: `ReadBuf::filled` guarantees the first `n` bytes of the spare
                // capacity were initialised by the read.
                unsafe { self.read_buf.set_len(n) };
                // A fresh `Bytes` that no one will write to again (GEN-08).
                let chunk = self.read_buf.split().freeze();
                if self.read_buf.capacity() == 0 {
                    // Full: the pool may get the whole allocation back once the chunk goes.
                    read_pool::give_filled(std::mem::take(&mut self.read_buf));
                }
                return Some(IoEvent::Received(chunk));
            }
            Poll::Ready(Err(e)) => {
                self.read_interest = false;
                read_pool::give(std::mem::take(&mut self.read_buf));
                return Some(IoEvent::Failed { cause: crate::tls::io_cause(&e) });
            }
            Poll::Pending => {
                self.read_armed = route.is_none();
                // Nothing to read: an idle socket keeps no read buffer of its own (DESIGN §5:
                // ≤ 2 KiB per idle socket), the thread's pool takes it for any socket's read.
                read_pool::give(std::mem::take(&mut self.read_buf));
            }
        }
        None
    }
}

/// Writes what `sending` holds: the report once it is all written or the write failed (either
/// empties `sending`), `None` while the transport has no room (registered with `cx`).
fn poll_sending(
    sending: &mut Option<(WriteId, Bytes)>,
    transport: &mut Transport,
    cx: &mut Context<'_>,
) -> Option<IoEvent> {
    let (id, data) = sending.as_mut()?;
    loop {
        match transport.poll_write(cx, data) {
            Poll::Ready(Ok(0)) => {
                *sending = None;
                return Some(IoEvent::Failed { cause: Cause::Reset });
            }
            Poll::Ready(Ok(n)) => {
                let _ = data.split_to(n);
                if data.is_empty() {
                    let id = *id;
                    *sending = None;
                    return Some(IoEvent::Wrote { id });
                }
            }
            Poll::Ready(Err(e)) => {
                *sending = None;
                return Some(IoEvent::Failed { cause: crate::tls::io_cause(&e) });
            }
            Poll::Pending => return None,
        }
    }
}

/// Read buffers between reads: a few per thread, shared by every socket polled there.
///
/// A socket waiting for data holds no buffer (DESIGN §5); taking a warm one here instead of
/// allocating 64 KiB per read avoids a malloc, and the page faults of a heap that glibc trims and
/// grows again, per read (the cost showed in every workload: per connection, per ping-pong
/// message, per bulk chunk after each pause). A buffer whose chunks the application still holds
/// is not reused in place: `reserve` then allocates a fresh one.
///
/// The pool is invisible: it hands out only a buffer with the whole [`READ_CHUNK`] of room, as a
/// fresh allocation has, so where a read's chunk ends depends on the socket's own history alone.
/// (A pooled buffer with less room cut reads short where a fresh one would not: in the simulator
/// a case's trace then depended on which cases ran on the thread before it.)
mod read_pool {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::READ_CHUNK;

    /// Buffers kept per thread (at most 4 × 64 KiB in all).
    const KEPT: usize = 4;
    /// Less room than this is not worth a read: find a bigger buffer.
    const MIN_ROOM: usize = READ_CHUNK / 4;

    thread_local! {
        static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// Gives `buf` room for a read: its own allocation back when every chunk split from it is
    /// gone, else a pooled buffer with a whole [`READ_CHUNK`] of room (or that can get it back),
    /// else a fresh allocation.
    pub(super) fn make_room(buf: &mut BytesMut) {
        if buf.capacity() >= MIN_ROOM || buf.try_reclaim(READ_CHUNK) {
            return;
        }
        let pooled = POOL
            .try_with(|pool| {
                let mut pool = pool.try_borrow_mut().ok()?;
                // Newest first: the buffer given back last is the one still in the CPU's cache.
                let i = pool.iter_mut().rposition(|b| b.try_reclaim(READ_CHUNK))?;
                Some(pool.remove(i))
            })
            .ok()
            .flatten();
        match pooled {
            Some(pooled) => give(std::mem::replace(buf, pooled)),
            None => buf.reserve(READ_CHUNK),
        }
    }

    /// Keeps an empty buffer with room for a later read (dropped when the pool is full); one
    /// without room is not kept.
    pub(super) fn give(buf: BytesMut) {
        if buf.capacity() > 0 {
            give_filled(buf);
        }
    }

    /// As [`give`], for an empty buffer a read filled to the end: no room, but it holds (a share
    /// of) its allocation.
    pub(super) fn give_filled(buf: BytesMut) {
        if !buf.is_empty() {
            return;
        }
        let _ = POOL.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                if pool.len() < KEPT {
                    pool.push(buf);
                }
            }
        });
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Room a socket without a buffer gets for its next read.
        fn room_of_next_read() -> usize {
            let mut buf = BytesMut::new();
            make_room(&mut buf);
            let room = buf.capacity();
            give(buf);
            room
        }

        #[test]
        fn a_pooled_buffer_gives_the_room_of_a_fresh_one_whatever_its_history() {
            let fresh = room_of_next_read();
            assert_eq!(fresh, READ_CHUNK);
            // Another socket read 20 KiB into a pooled buffer and the application still holds
            // the chunk: the buffer has room for more, but not a fresh buffer's worth.
            let mut other = BytesMut::new();
            make_room(&mut other);
            other.extend_from_slice(&[7; 20 * 1024]);
            let held = other.split().freeze();
            assert!(other.capacity() >= MIN_ROOM && other.capacity() < READ_CHUNK);
            give(other);
            assert_eq!(room_of_next_read(), fresh, "a read would be cut short by the pool's history");
            drop(held);
            assert_eq!(room_of_next_read(), fresh);
        }
    }
}

/// The driver: polls the transport when the application is not doing so, and fires timers. The
/// socket's driver task ([`crate::drivers`]) calls it with the socket's own waker, and so does a
/// task awaiting `opened` or `closed` that was handed the driver's wake-up ([`DriverLink`]).
impl crate::drivers::Driven for TcpShared {
    fn drive(&self, waker: &Waker) -> Poll<()> {
        let _span = self.span.enter();
        let mut inner = lock(&self.inner);
        let new_waker = !inner.io.driver.as_ref().is_some_and(|w| w.will_wake(waker));
        if new_waker {
            inner.io.driver = Some(waker.clone());
            inner.io.route.driver_changed(waker);
        }
        // Bounded: each Timeout clears at least the deadline it fired for. The clock is read only
        // when the timer task has reached a deadline, and once for this poll.
        let mut now = None;
        for _ in 0..4 {
            let Some(d) = inner.machine.poll_timeout() else { break };
            if !self.net.timers().may_be_due(d.at) {
                break;
            }
            let at = *now.get_or_insert_with(|| self.net.now());
            if d.at > at {
                break;
            }
            let _ = inner.machine.handle(at, Input::Timeout);
        }
        // Woken, maybe by the read side: this pass polls it.
        inner.io.read_armed = false;
        inner.run(self, Polls::All, &mut now);
        let finished = inner.finished();
        let wanted = if finished { None } else { inner.machine.poll_timeout().map(|d| d.at) };
        if wanted != inner.io.armed.at() || (new_waker && wanted.is_some()) {
            self.net.timers().set(&self.net, self.id, &mut inner.io.armed, wanted, waker);
        }
        if finished {
            inner.io.driver = None;
            inner.io.route.finish();
            return Poll::Ready(());
        }
        inner.machine.release_idle_buffers();
        Poll::Pending
    }
}

/// The readable stream of a TCP socket (the lock on it while held).
///
/// `read()` gives `Ok(Some(chunk))`, `Ok(None)` at the end, or the stored error on every call
/// after a failure (INV-06). As a [`futures_core::Stream`] it yields an error once, then ends.
pub struct TcpReadable {
    handle: Handle,
    ended: bool,
}

impl TcpReadable {
    /// Reads the next chunk. Cancel-safe: dropping the future loses nothing (GEN-11).
    pub fn read(&mut self) -> ReadFuture<'_> {
        ReadFuture { readable: self }
    }

    /// Readable cancel: the same steps as `close()` (TCP-CLOSE-01).
    pub fn cancel(&self) -> SocketPromise {
        self.handle.shared.app_command(AppCommand::Close);
        SocketPromise::new(self.handle.shared.clone(), Which::Closed)
    }

    /// The socket this readable belongs to.
    pub fn socket(&self) -> TcpSocket {
        TcpSocket { handle: self.handle.clone() }
    }
}

impl Drop for TcpReadable {
    fn drop(&mut self) {
        self.handle.shared.release_reader();
        lock(&self.handle.shared.inner).app.reader_locked = false;
    }
}

/// The future of [`TcpReadable::read`].
#[must_use = "futures do nothing unless awaited"]
pub struct ReadFuture<'a> {
    readable: &'a mut TcpReadable,
}

impl Future for ReadFuture<'_> {
    type Output = Result<Option<Bytes>, SocketError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.readable.handle.shared.poll_read(cx)
    }
}

impl futures_core::Stream for TcpReadable {
    type Item = Result<Bytes, SocketError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let read = if this.ended { Poll::Ready(Ok(None)) } else { this.handle.shared.poll_read(cx) };
        stream_item(&mut this.ended, read)
    }
}

impl futures_core::FusedStream for TcpReadable {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

/// The writable stream of a TCP socket (the lock on it while held).
pub struct TcpWritable {
    handle: Handle,
    pending_flush: Option<u64>,
}

impl TcpWritable {
    /// Queues `chunk` at once and returns its promise (GEN-10: dropping it does not cancel the
    /// write). Writes settle in order (INV-11).
    pub fn write(&self, chunk: impl Into<Bytes>) -> WriteFuture {
        self.handle.shared.write_promise(chunk.into())
    }

    /// The desired size: high-water mark minus queued bytes (backpressure when ≤ 0).
    pub fn desired_size(&self) -> i64 {
        lock(&self.handle.shared.inner).machine.desired_size()
    }

    /// Resolves when the desired size is above zero (Streams' `writer.ready`).
    pub fn ready(&self) -> ReadyFuture {
        ReadyFuture::new(self.handle.shared.clone())
    }

    /// `writer.close()`: half-close after the queued writes (TCP-WRITE-CLOSE-01); resolves when
    /// every write before it has settled, with the last failure if any.
    pub fn close(&self) -> FlushFuture {
        self.handle.shared.app_command(AppCommand::WriterClose);
        let upto = lock(&self.handle.shared.inner).app.writes.last_id();
        FlushFuture::new(self.handle.shared.clone(), upto)
    }

    /// `writer.abort(reason)`: discards queued writes (they reject `AbortError` with `reason`),
    /// then FIN — not RST (A-18).
    pub fn abort(&self, reason: Option<&str>) {
        self.handle.shared.app_command(AppCommand::WriterAbort { reason: reason.map(Into::into) });
    }

    /// The socket this writable belongs to.
    pub fn socket(&self) -> TcpSocket {
        TcpSocket { handle: self.handle.clone() }
    }
}

impl Drop for TcpWritable {
    fn drop(&mut self) {
        lock(&self.handle.shared.inner).app.writer_locked = false;
    }
}

impl futures_sink::Sink<Bytes> for TcpWritable {
    type Error = SocketError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        self.handle.shared.poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<(), SocketError> {
        let id = self.handle.shared.write(item);
        self.pending_flush = Some(id);
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        let Some(upto) = self.pending_flush else { return Poll::Ready(Ok(())) };
        let result = self.handle.shared.poll_flushed(upto, cx);
        if result.is_ready() {
            self.pending_flush = None;
        }
        result
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        if self.pending_flush.is_none() {
            self.handle.shared.app_command(AppCommand::WriterClose);
            let upto = lock(&self.handle.shared.inner).app.writes.last_id();
            self.pending_flush = Some(upto);
        }
        self.poll_flush(cx)
    }
}

/// A TCP socket as `tokio::io::AsyncRead + AsyncWrite` (from [`TcpSocket::into_io`]).
pub struct TcpIo {
    readable: TcpReadable,
    writable: TcpWritable,
    leftover: Bytes,
    in_write: Option<u64>,
}

impl TcpIo {
    /// The socket.
    pub fn socket(&self) -> TcpSocket {
        self.readable.socket()
    }
}

impl tokio::io::AsyncRead for TcpIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.leftover.is_empty() {
            match self.readable.handle.shared.poll_read(cx) {
                Poll::Ready(Ok(Some(chunk))) => self.leftover = chunk,
                Poll::Ready(Ok(None)) => return Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.leftover.len().min(buf.remaining());
        let chunk = self.leftover.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for TcpIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let shared = self.writable.handle.shared.clone();
        {
            let mut inner = lock(&shared.inner);
            if inner.machine.desired_size() <= 0 && inner.machine.ready_state() != ReadyState::Closed {
                inner.app.writes.ready.register(cx.waker());
                return Poll::Pending;
            }
        }
        // Report an earlier write's failure here, since AsyncWrite has no per-write promise.
        if let Some(id) = self.in_write {
            if let Poll::Ready(Err(e)) = lock(&shared.inner).app.writes.poll(id, cx) {
                self.in_write = None;
                return Poll::Ready(Err(e.into()));
            }
        }
        let id = shared.write(Bytes::copy_from_slice(data));
        if let Some(previous) = self.in_write.replace(id) {
            lock(&shared.inner).app.writes.forget(previous);
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let upto = lock(&self.writable.handle.shared.inner).app.writes.last_id();
        lock(&self.writable.handle.shared.inner).app.writes.poll_flushed(upto, cx).map_err(Into::into)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &self.writable.handle.shared;
        shared.app_command(AppCommand::WriterClose);
        let upto = lock(&shared.inner).app.writes.last_id();
        lock(&shared.inner).app.writes.poll_flushed(upto, cx).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every TCP socket allocates its shared state once, behind an `Arc` (16 bytes of counts).
    /// glibc serves requests up to 1,024 bytes from its per-thread cache in a few dozen
    /// instructions; a larger one goes through the general allocator, which cost ~650
    /// instructions per socket to allocate and more to free (issue #6, tcp-connect). A field
    /// added here must be paid for by one made smaller or boxed.
    #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
    #[test]
    fn shared_state_fits_the_allocators_per_thread_cache() {
        let arc_counts = 2 * std::mem::size_of::<usize>();
        let request = std::mem::size_of::<TcpShared>() + arc_counts;
        assert!(request <= 1024, "Arc<TcpShared> asks for {request} bytes");
    }
}

//! What goes into a machine ([`Input`]) and what comes out ([`Output`]).
//!
//! One vocabulary for all three machines, so one trace format and one replay loop serve them all
//! (DESIGN §4). A machine given an input that is not for its kind returns `TypeError` and changes
//! nothing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;

use crate::address::HostName;
use crate::error::{Cause, SocketError, TlsCause};
use crate::options::{AcceptedSpec, KeepAlive, ServerSpec, SocketConfig, TcpSpec, UdpSpec};
use crate::state::ReadyState;
use crate::time::Instant;

/// Identifies one write (its promise). Chosen by the caller, strictly increasing per socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct WriteId(pub u64);

/// Identifies one `listen()` call (its promise). Chosen by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ListenId(pub u64);

/// Identifies one accepted connection the backend holds for a server. Chosen by the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ConnId(pub u64);

/// Everything a machine reacts to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Input {
    /// The constructor's checked specification: always the first record of a trace. Machines are
    /// built from it (`TcpMachine::new`); handling it again is `InvalidStateError`. Boxed: the
    /// specification is large and comes once per socket, while every other input is moved on the
    /// data path (an unboxed one made `Input` 224 bytes instead of 88).
    Open(Box<OpenSpec>),
    /// A call the application made.
    App(AppCommand),
    /// Something the backend reports.
    Io(IoEvent),
    /// The deadline from `poll_timeout` (or an earlier one) has passed.
    Timeout,
}

/// The first input of each machine kind.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum OpenSpec {
    /// A `TCPSocket` constructor.
    Tcp(TcpSpec),
    /// A socket accepted by a server: starts "open".
    TcpAccepted(AcceptedSpec),
    /// A `TCPServerSocket` constructor.
    TcpServer(ServerSpec),
    /// A `UDPSocket` constructor.
    Udp(UdpSpec),
}

/// Where a UDP datagram goes, once the message and the defaults are combined (UDP-WRITE-05).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Destination {
    /// An IP literal and port.
    Addr(SocketAddr),
    /// A host name, resolved for this write (UDP-WRITE-13).
    Name(HostName, u16),
}

/// Calls the application makes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum AppCommand {
    /// Take the next chunk or datagram from the readable. Answered by [`Event::Read`] at once when
    /// something is there; otherwise nothing is emitted, the reader is noted as waiting, and
    /// [`Event::Readable`] says when to ask again.
    Read,
    /// `close()` or readable cancel (the same steps, TCP-CLOSE-01, UDP-CLOSE-01).
    Close,
    /// TCP `write(chunk)`.
    Write {
        /// The write's id.
        id: WriteId,
        /// The bytes.
        data: Bytes,
    },
    /// UDP `write(message)`, with its destination already chosen and checked by
    /// `udp::choose_destination` and the permission policy: an `Err` rejects this write, in order.
    SendDatagram {
        /// The write's id.
        id: WriteId,
        /// The payload.
        data: Bytes,
        /// The destination, or the error that rejects this write.
        dest: Result<Destination, SocketError>,
    },
    /// Writer `close()`: TCP half-close after the flush; UDP closes the writable only.
    WriterClose,
    /// Writer `abort(reason)`: discard queued writes.
    WriterAbort {
        /// The reason, carried as the `AbortError` message.
        reason: Option<Arc<str>>,
    },
    /// TCP `halfClose()`.
    HalfClose,
    /// TCP `reset()` (EXT-03).
    Reset,
    /// TCP `start_tls()` (EXT-07).
    StartTls,
    /// Server `listen()`.
    Listen {
        /// The call's id.
        id: ListenId,
    },
    /// A pending `listen()` future was dropped: give up its place (GEN-11).
    CancelListen {
        /// The call's id.
        id: ListenId,
    },
    /// A connection handed to a `listen()` whose future was dropped before taking it: give it to the
    /// next pending or later `listen()` (GEN-11).
    ReturnConnection {
        /// The connection.
        conn: ConnId,
        /// Its addresses.
        local: SocketAddr,
        /// Its addresses.
        remote: SocketAddr,
    },
    /// UDP `joinMulticast(group)`; the group is already parsed.
    JoinMulticast {
        /// The group.
        group: IpAddr,
    },
    /// UDP `leaveMulticast(group)`.
    LeaveMulticast {
        /// The group.
        group: IpAddr,
    },
}

/// What the backend reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum IoEvent {
    /// A host name resolved, in resolver order.
    Resolved {
        /// The addresses.
        addrs: Vec<IpAddr>,
    },
    /// A host name did not resolve.
    ResolveFailed {
        /// Why.
        cause: Cause,
    },
    /// The TCP connection to the address last asked for is established.
    Connected {
        /// Local address and port in use.
        local: SocketAddr,
        /// The peer's address and port.
        remote: SocketAddr,
    },
    /// The TCP connection attempt to the address last asked for failed.
    ConnectFailed {
        /// Why.
        cause: Cause,
    },
    /// TCP bytes arrived.
    Received(Bytes),
    /// The peer's FIN arrived (after all its data).
    PeerFin,
    /// The write handed over with `Send { id }` is complete.
    Wrote {
        /// The write.
        id: WriteId,
    },
    /// Our FIN has been handed to the transport.
    WriteShutdown,
    /// TLS handshake finished.
    TlsDone {
        /// The negotiated ALPN protocol.
        alpn: Option<Vec<u8>>,
    },
    /// TLS handshake failed.
    TlsFailed {
        /// Which check.
        cause: TlsCause,
    },
    /// A fatal error on the socket: TCP connection lost (RST, retransmissions, keep-alive), UDP
    /// socket invalidated, server listening socket failed. A failed TCP send is reported this way.
    Failed {
        /// Why.
        cause: Cause,
    },
    /// Received data could not be converted to bytes (only a fault can cause this).
    ConversionFailed,
    /// The server's listening socket is ready.
    Listening {
        /// Bound address and port.
        local: SocketAddr,
    },
    /// The server's listening socket could not be created.
    ListenFailed {
        /// Why.
        cause: Cause,
    },
    /// A connection was accepted and is held by the backend as `conn`.
    Accepted {
        /// The backend's handle.
        conn: ConnId,
        /// Local address and port.
        local: SocketAddr,
        /// The peer's address and port.
        remote: SocketAddr,
    },
    /// An incoming connection could not be served (EMFILE, failed TLS handshake…).
    AcceptFailed {
        /// Why.
        cause: Cause,
    },
    /// The UDP socket is bound (synchronously, in the constructor: DESIGN §3.8).
    Bound {
        /// Bound address and port.
        local: SocketAddr,
    },
    /// The UDP bind failed.
    BindFailed {
        /// Why.
        cause: Cause,
    },
    /// A datagram arrived.
    Datagram {
        /// The payload.
        data: Bytes,
        /// The source.
        from: SocketAddr,
        /// The kernel's (or emulated buffer's) drop counter as of this datagram (SO_RXQ_OVFL).
        dropped_total: u64,
    },
    /// The datagram of write `id` was sent.
    Sent {
        /// The write.
        id: WriteId,
    },
    /// The datagram of write `id` could not be sent (only that write fails, A-28).
    SendFailed {
        /// The write.
        id: WriteId,
        /// Why.
        cause: Cause,
    },
    /// A per-datagram receive error (ICMP-derived): ignored.
    TransientError {
        /// Which.
        cause: Cause,
    },
}

/// What a machine asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[must_use]
pub enum Output {
    /// An I/O command for the backend.
    Io(IoCommand),
    /// Something the application layer must settle or wake.
    Event(Event),
}

/// I/O commands, executed by the backend in the order emitted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum IoCommand {
    /// Resolve a host name; answer `Resolved` or `ResolveFailed`.
    Resolve {
        /// The name.
        name: HostName,
    },
    /// Open a TCP connection; answer `Connected` or `ConnectFailed`.
    Connect {
        /// Where to.
        remote: SocketAddr,
        /// Local address/port to bind first, if any.
        local: Option<SocketAddr>,
        /// Options applied before connecting.
        config: SocketConfig,
    },
    /// Run the TLS client handshake (after `Connected`, or for `start_tls`).
    TlsHandshake,
    /// Hand bytes to the transport; answer `Wrote` (or `Failed`).
    Send {
        /// The write.
        id: WriteId,
        /// The bytes.
        data: Bytes,
    },
    /// Send FIN; answer `WriteShutdown`.
    ShutdownWrite,
    /// Start or stop reading from the transport (flow control, TCP-READ-FLOW-01; UDP, AMB-33).
    ReadInterest(bool),
    /// Apply keep-alive timing (None: keep-alive off).
    SetKeepAlive(Option<KeepAlive>),
    /// Create the listening socket; answer `Listening` or `ListenFailed`.
    Listen {
        /// Address and port.
        local: SocketAddr,
        /// SO_REUSEADDR.
        address_reuse: bool,
        /// Backlog.
        backlog: u32,
    },
    /// Start or stop accepting from the OS backlog (on only while a `listen()` waits).
    AcceptInterest(bool),
    /// Release an accepted connection nobody will take (the server closed).
    CloseConnection {
        /// The connection.
        conn: ConnId,
    },
    /// Send a datagram; answer `Sent` or `SendFailed`.
    SendTo {
        /// The write.
        id: WriteId,
        /// Where to.
        dest: Destination,
        /// The payload.
        data: Bytes,
    },
    /// Release the socket gracefully (after the flush and FIN exchange, or an abandoned open).
    Close,
    /// Abortive release: RST (zero linger).
    Reset,
}

/// What one read returns.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ReadResult {
    /// A TCP chunk.
    Chunk(Bytes),
    /// A UDP message.
    Message(UdpMessage),
    /// The readable is done (`Ok(None)`).
    Done,
    /// The readable is errored; every later read gives the same error (INV-06).
    Error(SocketError),
}

/// A received datagram: its data and source.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct UdpMessage {
    /// The payload, whole.
    pub data: Bytes,
    /// The source address and port.
    pub from: SocketAddr,
}

/// Events for the application layer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Event {
    /// readyState changed.
    StateChanged {
        /// Before.
        from: ReadyState,
        /// After.
        to: ReadyState,
    },
    /// `opened` settled (once, INV-01).
    Opened(Result<(), SocketError>),
    /// `closed` settled (once, INV-02).
    Closed(Result<(), SocketError>),
    /// The answer to `App(Read)`.
    Read(ReadResult),
    /// A waiting reader should read again.
    Readable,
    /// A write's promise settled (in write order, INV-11).
    WriteSettled {
        /// The write.
        id: WriteId,
        /// Its outcome.
        result: Result<(), SocketError>,
    },
    /// The writable's desired size rose above zero (wake `ready()`).
    WritableReady,
    /// A `listen()` promise settled.
    ListenSettled {
        /// The call.
        id: ListenId,
        /// The accepted connection, or the rejection.
        result: Result<AcceptedConnection, SocketError>,
    },
}

/// A connection the server hands to a `listen()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AcceptedConnection {
    /// The backend's handle.
    pub conn: ConnId,
    /// Local address and port.
    pub local: SocketAddr,
    /// The peer's address and port.
    pub remote: SocketAddr,
}

/// Which timer a deadline belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum TimerKind {
    /// The connect timeout (AMB-49).
    Connect,
    /// The close timeout (AMB-26).
    Close,
    /// The switch from frequent to sparse keep-alive probes.
    KeepAliveSparse,
}

/// The next deadline a machine wants to be woken at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[must_use]
pub struct Deadline {
    /// When.
    pub at: Instant,
    /// Which timer.
    pub kind: TimerKind,
}

/// One record of a machine's trace: the input and when it was handled.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TraceRecord {
    /// When.
    pub at: Instant,
    /// What.
    pub input: Input,
}

/// Version of the serde schema of [`Input`], [`Output`] and [`TraceRecord`]. Bump on any change
/// that makes an old replay file mean something else.
pub const SCHEMA_VERSION: u32 = 1;

#[cfg(test)]
mod tests {
    use super::{Input, Output};

    /// Every data-path input and output is moved by value through `handle` and `poll_output` (four
    /// of each per datagram): the once-per-socket payloads are boxed so that the common ones set
    /// the size. An unboxed `OpenSpec` made `Input` 224 bytes.
    #[test]
    fn data_path_inputs_and_outputs_stay_small() {
        assert!(std::mem::size_of::<Input>() <= 96, "Input is {} bytes", std::mem::size_of::<Input>());
        assert!(std::mem::size_of::<Output>() <= 104, "Output is {} bytes", std::mem::size_of::<Output>());
    }
}

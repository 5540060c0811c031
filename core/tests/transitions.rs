//! The exhaustive transition test: read RULES.md §9 (with §9.4) and §11 before editing.
//!
//! Every machine kind is built in every reachable state (the fixtures below), then every input of a
//! representative list — every `AppCommand`, every `IoEvent`, `Input::Timeout` before, at and after
//! each armed deadline, and `Input::Open` — is applied to a fresh copy. Each run is then carried to
//! the end of the socket's life twice, once with a backend that answers everything successfully and
//! once with one that fails everything. The [`support::Observer`] checks every output (only §9
//! edges, strictly increasing ranks, settle-once promises in GEN-09 order, INV-01..06, INV-12,
//! INV-17, GEN-14). Every observed transition is attributed to the §9 row its cause names (an
//! unattributable transition fails), and every row of `Row::ALL` must be exercised.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use support::*;
use tcpudp_core::address::HostName;
use tcpudp_core::{
    AppCommand, Cause, ConnId, Destination, ErrorName, Event, Input, IoCommand, IoEvent, ListenId, Output,
    ReadResult, ReadyState, Row, SocketError, SocketKind, TlsCause, WriteId,
};

// ---- fixtures: every reachable state ------------------------------------------------------------

/// A machine built in one reachable state.
struct Fixture {
    name: &'static str,
    state: ReadyState,
    build: fn() -> Driver,
}

fn send(id: u64, data: &'static [u8]) -> AppCommand {
    AppCommand::SendDatagram {
        id: WriteId(id),
        data: Bytes::from_static(data),
        dest: Ok(Destination::Addr(other_addr())),
    }
}

fn connected() -> IoEvent {
    IoEvent::Connected { local: local_addr(), remote: peer_addr() }
}

fn received(data: &'static [u8]) -> IoEvent {
    IoEvent::Received(Bytes::from_static(data))
}

fn tcp_open_with(spec: tcpudp_core::options::TcpSpec) -> Driver {
    let mut d = Driver::tcp(spec);
    d.io(connected());
    d
}

fn tcp_open() -> Driver {
    tcp_open_with(tcp_spec())
}

fn tcp_fixtures() -> Vec<Fixture> {
    use ReadyState::*;
    vec![
        Fixture { name: "tcp opening: resolving", state: Opening, build: || Driver::tcp(tcp_name_spec()) },
        Fixture { name: "tcp opening: connecting", state: Opening, build: || Driver::tcp(tcp_spec()) },
        Fixture {
            name: "tcp opening: connecting, one more address to try",
            state: Opening,
            build: || {
                let mut d = Driver::tcp(tcp_name_spec());
                let addrs = vec!["::1".parse().unwrap(), peer_addr().ip()];
                d.io(IoEvent::Resolved { addrs });
                d
            },
        },
        Fixture {
            name: "tcp opening: writes queued",
            state: Opening,
            build: || {
                let mut d = Driver::tcp(tcp_spec());
                d.write(1, b"ab");
                d.write(2, b"");
                d.write(3, b"cd");
                d
            },
        },
        Fixture {
            name: "tcp opening: half-close requested",
            state: Opening,
            build: || {
                let mut d = Driver::tcp(tcp_spec());
                d.write(1, b"ab");
                d.app(AppCommand::HalfClose);
                d
            },
        },
        Fixture {
            name: "tcp opening: TLS handshaking",
            state: Opening,
            build: || {
                let mut d = Driver::tcp(tcp_tls_spec());
                d.io(connected());
                d
            },
        },
        Fixture { name: "tcp open", state: Open, build: tcp_open },
        Fixture { name: "tcp open: accepted", state: Open, build: || Driver::tcp_accepted(accepted_spec()) },
        Fixture {
            name: "tcp open: write in flight, one queued, data unread",
            state: Open,
            build: || {
                let mut d = tcp_open();
                d.write(1, b"0123456789");
                d.write(2, b"abcdefghij");
                d.io(received(b"hello"));
                d
            },
        },
        Fixture {
            name: "tcp open: readable full (flow stopped)",
            state: Open,
            build: || {
                let mut d = tcp_open();
                d.io(received(b"0123456789abcdef"));
                d
            },
        },
        Fixture {
            name: "tcp open: reader waiting",
            state: Open,
            build: || {
                let mut d = tcp_open();
                d.app(AppCommand::Read);
                d
            },
        },
        Fixture {
            name: "tcp open: keep-alive switch armed",
            state: Open,
            build: || tcp_open_with(tcp_keep_alive_spec()),
        },
        Fixture {
            name: "tcp open: start_tls handshaking",
            state: Open,
            build: || {
                let mut d = tcp_open();
                d.app(AppCommand::StartTls);
                d
            },
        },
        Fixture {
            name: "tcp open: peer FIN behind unread data",
            state: Open,
            build: || {
                let mut d = tcp_open();
                d.io(received(b"tail"));
                d.io(IoEvent::PeerFin);
                d
            },
        },
        Fixture {
            name: "tcp open: peer FIN, nothing left to read",
            state: Open,
            build: || {
                let mut d = tcp_open();
                d.write(1, b"ack");
                d.io(IoEvent::PeerFin);
                d
            },
        },
        Fixture {
            name: "tcp open: half-open, peer FIN behind unread data",
            state: Open,
            build: || {
                let mut d = tcp_open_with(tcp_half_open_spec());
                d.io(received(b"req"));
                d.io(IoEvent::PeerFin);
                d
            },
        },
        Fixture {
            name: "tcp open: half-open, read done",
            state: Open,
            build: || {
                let mut d = tcp_open_with(tcp_half_open_spec());
                d.io(IoEvent::PeerFin);
                d.app(AppCommand::Read);
                d
            },
        },
        Fixture {
            name: "tcp halfclosed: FIN pending behind a write",
            state: HalfClosed,
            build: || {
                let mut d = tcp_open();
                d.write(1, b"abc");
                d.app(AppCommand::HalfClose);
                d
            },
        },
        Fixture {
            name: "tcp halfclosed: FIN sent",
            state: HalfClosed,
            build: || {
                let mut d = tcp_open();
                d.app(AppCommand::WriterClose);
                d
            },
        },
        Fixture {
            name: "tcp halfclosed: FIN done",
            state: HalfClosed,
            build: || {
                let mut d = tcp_open();
                d.app(AppCommand::HalfClose);
                d.io(IoEvent::WriteShutdown);
                d
            },
        },
        Fixture {
            name: "tcp halfclosed: by abort, write in flight",
            state: HalfClosed,
            build: || {
                let mut d = tcp_open();
                d.write(1, b"abc");
                d.write(2, b"def");
                d.app(AppCommand::WriterAbort { reason: Some("stop".into()) });
                d
            },
        },
        Fixture {
            name: "tcp halfclosed: peer FIN in, our FIN not done",
            state: HalfClosed,
            build: || {
                let mut d = tcp_open();
                d.app(AppCommand::HalfClose);
                d.io(received(b"late"));
                d.io(IoEvent::PeerFin);
                d
            },
        },
        Fixture {
            name: "tcp halfclosed: during start_tls",
            state: HalfClosed,
            build: || {
                let mut d = tcp_open();
                d.app(AppCommand::StartTls);
                d.app(AppCommand::HalfClose);
                d
            },
        },
        Fixture {
            name: "tcp closing: flush pending",
            state: Closing,
            build: || {
                let mut d = tcp_open();
                d.write(1, b"abc");
                d.app(AppCommand::Close);
                d
            },
        },
        Fixture {
            name: "tcp closing: FIN sent",
            state: Closing,
            build: || {
                let mut d = tcp_open();
                d.app(AppCommand::Close);
                d
            },
        },
        Fixture {
            name: "tcp closing: FIN done, waiting for the peer",
            state: Closing,
            build: || {
                let mut d = tcp_open();
                d.app(AppCommand::Close);
                d.io(IoEvent::WriteShutdown);
                d
            },
        },
        Fixture {
            name: "tcp closing: auto-close after the peer's FIN",
            state: Closing,
            build: || {
                let mut d = tcp_open();
                d.io(IoEvent::PeerFin);
                d.app(AppCommand::Read);
                d
            },
        },
        Fixture {
            name: "tcp closing: half-open close (EXT-02)",
            state: Closing,
            build: || {
                let mut d = tcp_open_with(tcp_half_open_spec());
                d.io(IoEvent::PeerFin);
                d.app(AppCommand::Read);
                d.write(1, b"resp");
                d.app(AppCommand::HalfClose);
                d
            },
        },
        Fixture {
            name: "tcp closing: from halfclosed",
            state: Closing,
            build: || {
                let mut d = tcp_open();
                d.app(AppCommand::HalfClose);
                d.io(received(b"unread"));
                d.app(AppCommand::Close);
                d
            },
        },
        Fixture {
            name: "tcp closing: during start_tls",
            state: Closing,
            build: || {
                let mut d = tcp_open();
                d.app(AppCommand::StartTls);
                d.app(AppCommand::Close);
                d
            },
        },
        Fixture {
            name: "tcp closed: clean",
            state: Closed,
            build: || {
                let mut d = tcp_open();
                d.app(AppCommand::Close);
                d.io(IoEvent::WriteShutdown);
                d.io(IoEvent::PeerFin);
                d
            },
        },
        Fixture {
            name: "tcp closed: connect failed",
            state: Closed,
            build: || {
                let mut d = Driver::tcp(tcp_spec());
                d.write(1, b"x");
                d.io(IoEvent::ConnectFailed { cause: Cause::Refused });
                d
            },
        },
        Fixture {
            name: "tcp closed: aborted while opening",
            state: Closed,
            build: || {
                let mut d = Driver::tcp(tcp_spec());
                d.app(AppCommand::Close);
                d
            },
        },
        Fixture {
            name: "tcp closed: connection lost",
            state: Closed,
            build: || {
                let mut d = tcp_open();
                d.write(1, b"x");
                d.io(IoEvent::Failed { cause: Cause::Reset });
                d
            },
        },
        Fixture {
            name: "tcp closed: reset",
            state: Closed,
            build: || {
                let mut d = tcp_open();
                d.app(AppCommand::Reset);
                d
            },
        },
        Fixture {
            name: "tcp closed: close timeout",
            state: Closed,
            build: || {
                let mut d = tcp_open();
                d.app(AppCommand::Close);
                d.io(IoEvent::WriteShutdown);
                d.fire_next_timer().unwrap_or_else(|e| panic!("{e}"));
                d
            },
        },
        Fixture {
            name: "tcp closed: conversion failed",
            state: Closed,
            build: || {
                let mut d = tcp_open();
                d.io(IoEvent::ConversionFailed);
                d
            },
        },
    ]
}

fn udp_open() -> Driver {
    let mut d = Driver::udp(udp_spec());
    d.io(IoEvent::Bound { local: local_addr() });
    d
}

fn udp_fixtures() -> Vec<Fixture> {
    use ReadyState::*;
    vec![
        Fixture { name: "udp opening: binding", state: Opening, build: || Driver::udp(udp_spec()) },
        Fixture {
            name: "udp opening: write queued",
            state: Opening,
            build: || {
                let mut d = Driver::udp(udp_spec());
                d.app(send(1, b"early"));
                d
            },
        },
        Fixture {
            name: "udp opening: resolving the default remote",
            state: Opening,
            build: || {
                let mut d = Driver::udp(udp_name_spec());
                d.io(IoEvent::Bound { local: "0.0.0.0:40000".parse().unwrap() });
                d
            },
        },
        Fixture { name: "udp open", state: Open, build: udp_open },
        Fixture {
            name: "udp open: write in flight, one queued, datagram unread",
            state: Open,
            build: || {
                let mut d = udp_open();
                d.app(send(1, b"one"));
                d.app(send(2, b"two"));
                d.io(IoEvent::Datagram {
                    data: Bytes::from_static(b"in"),
                    from: other_addr(),
                    dropped_total: 0,
                });
                d
            },
        },
        Fixture {
            name: "udp open: readable full",
            state: Open,
            build: || {
                let mut d = udp_open();
                for _ in 0..2 {
                    let data = Bytes::from_static(b"d");
                    d.io(IoEvent::Datagram { data, from: other_addr(), dropped_total: 0 });
                }
                d
            },
        },
        Fixture {
            name: "udp open: reader waiting",
            state: Open,
            build: || {
                let mut d = udp_open();
                d.app(AppCommand::Read);
                d
            },
        },
        Fixture {
            name: "udp open: writable closed",
            state: Open,
            build: || {
                let mut d = udp_open();
                d.app(AppCommand::WriterClose);
                d
            },
        },
        Fixture {
            name: "udp open: writable aborted, write in flight",
            state: Open,
            build: || {
                let mut d = udp_open();
                d.app(send(1, b"one"));
                d.app(send(2, b"two"));
                d.app(AppCommand::WriterAbort { reason: None });
                d
            },
        },
        Fixture {
            name: "udp open: multicast member",
            state: Open,
            build: || {
                let mut d = udp_open();
                d.app(AppCommand::JoinMulticast { group: group() });
                d
            },
        },
        Fixture {
            name: "udp closed: flushing queued datagrams",
            state: Closed,
            build: || {
                let mut d = udp_open();
                d.app(send(1, b"one"));
                d.app(send(2, b"two"));
                d.app(AppCommand::Close);
                d
            },
        },
        Fixture {
            name: "udp closed: clean",
            state: Closed,
            build: || {
                let mut d = udp_open();
                d.app(AppCommand::Close);
                d
            },
        },
        Fixture {
            name: "udp closed: setup failed",
            state: Closed,
            build: || {
                let mut d = Driver::udp(udp_spec());
                d.app(send(1, b"early"));
                d.io(IoEvent::BindFailed { cause: Cause::AddressInUse });
                d
            },
        },
        Fixture {
            name: "udp closed: aborted while opening",
            state: Closed,
            build: || {
                let mut d = Driver::udp(udp_spec());
                d.app(AppCommand::Close);
                d
            },
        },
        Fixture {
            name: "udp closed: fatal error",
            state: Closed,
            build: || {
                let mut d = udp_open();
                d.io(IoEvent::Failed { cause: Cause::Unreachable });
                d
            },
        },
        Fixture {
            name: "udp closed: conversion failed",
            state: Closed,
            build: || {
                let mut d = udp_open();
                d.io(IoEvent::ConversionFailed);
                d
            },
        },
    ]
}

fn server_open() -> Driver {
    let mut d = Driver::server(server_spec());
    d.io(IoEvent::Listening { local: local_addr() });
    d
}

fn server_fixtures() -> Vec<Fixture> {
    use ReadyState::*;
    vec![
        Fixture { name: "server opening", state: Opening, build: || Driver::server(server_spec()) },
        Fixture {
            name: "server opening: listen pending",
            state: Opening,
            build: || {
                let mut d = Driver::server(server_spec());
                d.app(AppCommand::Listen { id: ListenId(1) });
                d
            },
        },
        Fixture { name: "server open", state: Open, build: server_open },
        Fixture {
            name: "server open: two listens pending",
            state: Open,
            build: || {
                let mut d = server_open();
                d.app(AppCommand::Listen { id: ListenId(1) });
                d.app(AppCommand::Listen { id: ListenId(2) });
                d
            },
        },
        Fixture {
            name: "server open: connection held in the backlog",
            state: Open,
            build: || {
                let mut d = server_open();
                d.io(IoEvent::Accepted { conn: ConnId(1), local: local_addr(), remote: other_addr() });
                d
            },
        },
        Fixture {
            name: "server closed: clean",
            state: Closed,
            build: || {
                let mut d = server_open();
                d.app(AppCommand::Close);
                d
            },
        },
        Fixture {
            name: "server closed: closed while opening",
            state: Closed,
            build: || {
                let mut d = Driver::server(server_spec());
                d.app(AppCommand::Close);
                d
            },
        },
        Fixture {
            name: "server closed: creation failed",
            state: Closed,
            build: || {
                let mut d = Driver::server(server_spec());
                d.io(IoEvent::ListenFailed { cause: Cause::AddressInUse });
                d
            },
        },
        Fixture {
            name: "server closed: error",
            state: Closed,
            build: || {
                let mut d = server_open();
                d.app(AppCommand::Listen { id: ListenId(1) });
                d.io(IoEvent::Failed { cause: Cause::Other });
                d
            },
        },
    ]
}

fn all_fixtures() -> Vec<Fixture> {
    let mut all = tcp_fixtures();
    all.extend(udp_fixtures());
    all.extend(server_fixtures());
    all
}

// ---- the inputs ---------------------------------------------------------------------------------

/// One stimulus applied to a fixture.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // A handful per fixture, built once each.
enum Stimulus {
    /// One input at an instant.
    At(Instant, Input),
    /// `Timeout` at each armed deadline in turn, until none is armed.
    TimersInOrder,
}

/// Every `AppCommand` and `IoEvent` variant (some in several flavours) and `Input::Open`.
fn representative_inputs() -> Vec<Input> {
    let v6: SocketAddr = "[::1]:6000".parse().unwrap();
    let name = HostName::parse("svc.test").unwrap();
    let app = [
        AppCommand::Read,
        AppCommand::Close,
        AppCommand::Write { id: WriteId(100), data: Bytes::from_static(b"xyz") },
        AppCommand::Write { id: WriteId(100), data: Bytes::new() },
        send(100, b"dgram"),
        send(100, b""),
        AppCommand::SendDatagram {
            id: WriteId(100),
            data: Bytes::from_static(b"v6"),
            dest: Ok(Destination::Addr(v6)),
        },
        AppCommand::SendDatagram {
            id: WriteId(100),
            data: Bytes::from_static(b"named"),
            dest: Ok(Destination::Name(name, 6000)),
        },
        AppCommand::SendDatagram {
            id: WriteId(100),
            data: Bytes::from_static(b"refused"),
            dest: Err(SocketError::security()),
        },
        AppCommand::SendDatagram {
            id: WriteId(100),
            data: Bytes::from(vec![0u8; 70_000]),
            dest: Ok(Destination::Addr(other_addr())),
        },
        AppCommand::WriterClose,
        AppCommand::WriterAbort { reason: None },
        AppCommand::WriterAbort { reason: Some("stop".into()) },
        AppCommand::HalfClose,
        AppCommand::Reset,
        AppCommand::StartTls,
        AppCommand::Listen { id: ListenId(100) },
        AppCommand::CancelListen { id: ListenId(1) },
        AppCommand::CancelListen { id: ListenId(99) },
        AppCommand::ReturnConnection { conn: ConnId(50), local: local_addr(), remote: other_addr() },
        AppCommand::JoinMulticast { group: group() },
        AppCommand::JoinMulticast { group: peer_addr().ip() },
        AppCommand::LeaveMulticast { group: group() },
    ];
    let io = [
        IoEvent::Resolved { addrs: vec![peer_addr().ip()] },
        IoEvent::Resolved { addrs: vec!["::1".parse().unwrap()] },
        IoEvent::Resolved { addrs: vec![] },
        IoEvent::ResolveFailed { cause: Cause::HostNotFound },
        connected(),
        IoEvent::ConnectFailed { cause: Cause::Refused },
        received(b"data"),
        received(b""),
        IoEvent::PeerFin,
        IoEvent::Wrote { id: WriteId(1) },
        IoEvent::Wrote { id: WriteId(99) },
        IoEvent::WriteShutdown,
        IoEvent::TlsDone { alpn: Some(b"h2".to_vec()) },
        IoEvent::TlsFailed { cause: TlsCause::NameMismatch },
        IoEvent::Failed { cause: Cause::Reset },
        IoEvent::Failed { cause: Cause::TimedOut },
        IoEvent::ConversionFailed,
        IoEvent::Listening { local: local_addr() },
        IoEvent::ListenFailed { cause: Cause::AddressInUse },
        IoEvent::Accepted { conn: ConnId(60), local: local_addr(), remote: other_addr() },
        IoEvent::AcceptFailed { cause: Cause::ResourcesExhausted },
        IoEvent::Bound { local: local_addr() },
        IoEvent::BindFailed { cause: Cause::AddressInUse },
        IoEvent::Datagram { data: Bytes::from_static(b"dgram"), from: other_addr(), dropped_total: 0 },
        IoEvent::Datagram { data: Bytes::new(), from: other_addr(), dropped_total: 3 },
        IoEvent::Sent { id: WriteId(1) },
        IoEvent::Sent { id: WriteId(99) },
        IoEvent::SendFailed { id: WriteId(1), cause: Cause::MessageTooLarge },
        IoEvent::TransientError { cause: Cause::Refused },
    ];
    let mut inputs: Vec<Input> = app.into_iter().map(Input::App).collect();
    inputs.extend(io.into_iter().map(Input::Io));
    inputs.extend(open_inputs());
    inputs
}

/// The representative inputs at the fixture's instant, plus `Timeout` now, 1 µs before the earliest
/// deadline, at it, long after every deadline, and at each armed deadline in turn.
fn stimuli(d: &Driver) -> Vec<Stimulus> {
    let now = d.now;
    let mut all: Vec<Stimulus> = representative_inputs().into_iter().map(|i| Stimulus::At(now, i)).collect();
    all.push(Stimulus::At(now, Input::Timeout));
    if let Some(deadline) = d.m.poll_timeout() {
        let before = Instant::from_micros(deadline.at.as_micros().saturating_sub(1)).max(now);
        all.push(Stimulus::At(before, Input::Timeout));
        all.push(Stimulus::At(deadline.at, Input::Timeout));
    }
    all.push(Stimulus::At(Instant::from_micros(u64::MAX), Input::Timeout));
    all.push(Stimulus::TimersInOrder);
    all
}

fn apply(d: &mut Driver, stimulus: &Stimulus) -> Result<(), String> {
    match stimulus {
        Stimulus::At(at, input) => d.step(*at, input.clone()).map(drop),
        Stimulus::TimersInOrder => {
            for _ in 0..8 {
                if !d.fire_next_timer()? {
                    return Ok(());
                }
            }
            Err("timers keep re-arming".into())
        }
    }
}

// ---- attribution of transitions to rows ---------------------------------------------------------

/// The §9 row whose event is `input` and whose edge is `from -> to`, or `None` when the cause does
/// not match any row with that edge (a transition the tables do not allow for that event).
fn attribute(
    kind: SocketKind,
    input: &Input,
    from: ReadyState,
    to: ReadyState,
    half_open: bool,
) -> Option<Row> {
    use AppCommand as A;
    use IoEvent as E;
    use ReadyState::*;
    use Row::*;
    use SocketKind::{Tcp, TcpServer as Server, Udp};
    let app = |i: &Input| match i {
        Input::App(c) => Some(c.clone()),
        _ => None,
    };
    let io = |i: &Input| match i {
        Input::Io(e) => Some(e.clone()),
        _ => None,
    };
    let timeout = matches!(input, Input::Timeout);
    let row = match (kind, from, to) {
        (Tcp, Opening, Open) => match io(input)? {
            E::Connected { .. } | E::TlsDone { .. } => TcpOpeningConnected,
            _ => return None,
        },
        (Tcp, Opening, Closed) if timeout => TcpOpeningConnectFails,
        (Tcp, Opening, Closed) => match (app(input), io(input)) {
            (Some(A::Close), _) => TcpOpeningClose,
            (Some(A::Reset), _) => TcpOpeningReset,
            (
                _,
                Some(
                    E::ConnectFailed { .. }
                    | E::ResolveFailed { .. }
                    | E::Resolved { .. }
                    | E::TlsFailed { .. }
                    | E::Failed { .. },
                ),
            ) => TcpOpeningConnectFails,
            _ => return None,
        },
        (Tcp, Open, HalfClosed) => match (app(input), io(input)) {
            (Some(A::HalfClose | A::WriterClose | A::WriterAbort { .. }), _) if !half_open => {
                TcpOpenHalfClose
            }
            // TCP-WRITE-CLOSE-03: a half-close requested while opening happens once connected.
            (_, Some(E::Connected { .. } | E::TlsDone { .. })) => TcpOpenHalfClose,
            _ => return None,
        },
        (Tcp, Open, Closing) => match app(input)? {
            A::Close if half_open => TcpOpenHalfOpenClose,
            A::Close => TcpOpenClose,
            A::HalfClose | A::WriterClose | A::WriterAbort { .. } if half_open => TcpOpenHalfOpenClose,
            A::Read if !half_open => TcpOpenPeerFinAutoClose,
            _ => return None,
        },
        (Tcp, Open, Closed) => match (app(input), io(input)) {
            (Some(A::Reset), _) => TcpOpenReset,
            (_, Some(E::Failed { .. })) => TcpOpenConnectionLost,
            (_, Some(E::ConversionFailed)) => TcpOpenConversionFails,
            (_, Some(E::TlsFailed { .. })) => TcpOpenStartTlsFails,
            _ => return None,
        },
        (Tcp, HalfClosed, Closed) => match (app(input), io(input)) {
            (Some(A::Reset), _) => TcpHalfClosedReset,
            // The handshake completes with the peer's FIN, or with our FIN's completion when the
            // peer's FIN was already in.
            (_, Some(E::PeerFin | E::WriteShutdown)) => TcpHalfClosedPeerFin,
            // A failed start_tls() handshake after halfClose() is a lost connection (EXT-07).
            (_, Some(E::Failed { .. } | E::ConversionFailed | E::TlsFailed { .. })) => {
                TcpHalfClosedConnectionLost
            }
            _ => return None,
        },
        (Tcp, HalfClosed, Closing) => match app(input)? {
            A::Close => TcpHalfClosedClose,
            _ => return None,
        },
        (Tcp, Closing, Closed) if timeout => TcpClosingHandshakeFails,
        (Tcp, Closing, Closed) => match (app(input), io(input)) {
            (Some(A::Reset), _) => TcpClosingReset,
            (_, Some(E::PeerFin | E::WriteShutdown)) => TcpClosingHandshakeCompletes,
            // …and after close(), a failed closing handshake (EXT-07).
            (_, Some(E::Failed { .. } | E::TlsFailed { .. })) => TcpClosingHandshakeFails,
            _ => return None,
        },
        (Udp, Opening, Open) => match io(input)? {
            E::Bound { .. } | E::Resolved { .. } => UdpOpeningSetupSucceeds,
            _ => return None,
        },
        (Udp, Opening, Closed) => match (app(input), io(input)) {
            (Some(A::Close), _) => UdpOpeningClose,
            (
                _,
                Some(E::BindFailed { .. } | E::ResolveFailed { .. } | E::Resolved { .. } | E::Failed { .. }),
            ) => UdpOpeningSetupFails,
            _ => return None,
        },
        (Udp, Open, Closed) => match (app(input), io(input)) {
            (Some(A::Close), _) => UdpOpenClose,
            (_, Some(E::Failed { .. })) => UdpOpenFatalError,
            (_, Some(E::ConversionFailed)) => UdpOpenConversionFails,
            _ => return None,
        },
        (Server, Opening, Open) => match io(input)? {
            E::Listening { .. } => ServerOpeningListening,
            _ => return None,
        },
        (Server, Opening, Closed) => match (app(input), io(input)) {
            (Some(A::Close), _) => ServerOpeningClose,
            (_, Some(E::ListenFailed { .. } | E::Failed { .. })) => ServerOpeningCreationFails,
            _ => return None,
        },
        (Server, Open, Closed) => match (app(input), io(input)) {
            (Some(A::Close), _) => ServerOpenClose,
            (_, Some(E::Failed { .. })) => ServerOpenError,
            _ => return None,
        },
        _ => return None,
    };
    debug_assert_eq!(row.edge(), (kind, from, to));
    Some(row)
}

/// Attributes every transition of `d`'s life to a row, counting them in `rows`; returns the row
/// that entered "closed", if any.
fn attribute_all(d: &Driver, context: &str, rows: &mut BTreeMap<Row, String>) -> Result<Option<Row>, String> {
    let kind = d.m.kind();
    let mut into_closed = None;
    for rec in &d.log {
        for &(from, to) in &rec.transitions {
            let Some(row) = attribute(kind, &rec.input, from, to, rec.half_open) else {
                return Err(format!(
                    "{context}: {kind} {from} -> {to} caused by {:?} matches no §9 row for that event\n{}",
                    rec.input,
                    d.history()
                ));
            };
            rows.entry(row).or_insert_with(|| format!("{context}: {}", input_name(&rec.input)));
            if to == ReadyState::Closed {
                into_closed = Some(row);
            }
        }
    }
    Ok(into_closed)
}

/// The outcomes the §9 row that entered "closed" prescribes: `opened` (for rows leaving
/// "opening") and `closed`, by error name.
fn prescribed_outcome(row: Row) -> (Option<Result<(), ErrorName>>, Result<(), ErrorName>) {
    use ErrorName::{AbortError as AE, NetworkError as NE, TypeError as TE};
    use Row::*;
    match row {
        // TCP-OPEN-02, EXT-04 (opening), EXT-06; TCP-READ-CANCEL-02; EXT-03.
        TcpOpeningConnectFails => (Some(Err(NE)), Err(NE)),
        TcpOpeningClose | TcpOpeningReset => (Some(Err(AE)), Err(AE)),
        // TCP-READ-ERR-01, EXT-04; EXT-07; TCP-READ-ERR-02, TCP-CLOSE-04; TCP-READ-ERR-03.
        TcpOpenConnectionLost | TcpOpenStartTlsFails | TcpClosingHandshakeFails => (None, Err(NE)),
        TcpOpenConversionFails => (None, Err(TE)),
        TcpOpenReset | TcpHalfClosedReset | TcpClosingReset => (None, Err(AE)),
        // TCP-READ-CLOSE-01, TCP-HALFCLOSE-02, EXT-02.
        TcpHalfClosedPeerFin | TcpClosingHandshakeCompletes => (None, Ok(())),
        // TCP-READ-ERR-04 (NetworkError; TypeError when a conversion failed, TCP-READ-ERR-03).
        TcpHalfClosedConnectionLost => (None, Err(NE)),
        // UDP-OPEN-02; UDP-READ-CANCEL-02; UDP-READ-CANCEL-03; UDP-READ-ERR-01/-02.
        UdpOpeningSetupFails => (Some(Err(NE)), Err(NE)),
        UdpOpeningClose => (Some(Err(AE)), Err(AE)),
        UdpOpenClose => (None, Ok(())),
        UdpOpenFatalError => (None, Err(NE)),
        UdpOpenConversionFails => (None, Err(TE)),
        // SRV-OPEN-02; SRV-CLOSE-03; SRV-CLOSE-01; SRV-ERR-01.
        ServerOpeningCreationFails => (Some(Err(NE)), Err(NE)),
        ServerOpeningClose => (Some(Err(AE)), Ok(())),
        ServerOpenClose => (None, Ok(())),
        ServerOpenError => (None, Err(NE)),
        // Rows that do not enter "closed".
        TcpOpeningConnected
        | TcpOpenHalfClose
        | TcpOpenClose
        | TcpOpenPeerFinAutoClose
        | TcpOpenHalfOpenClose
        | TcpHalfClosedClose
        | UdpOpeningSetupSucceeds
        | ServerOpeningListening => unreachable!("{row} does not enter closed"),
    }
}

/// Checks the final `opened`/`closed` against what the row that closed the socket prescribes.
fn check_outcome(d: &Driver, row: Row) -> Result<(), String> {
    let name =
        |r: Option<&Result<(), SocketError>>| r.map(|r| r.as_ref().map(|_| ()).map_err(SocketError::kind));
    let (opened, closed) = (name(d.m.opened()), name(d.m.closed()));
    let (want_opened, mut want_closed) = prescribed_outcome(row);
    let conversion = d.log.iter().any(|r| {
        matches!(r.input, Input::Io(IoEvent::ConversionFailed))
            && r.transitions.contains(&(ReadyState::HalfClosed, ReadyState::Closed))
    });
    if row == Row::TcpHalfClosedConnectionLost && conversion {
        want_closed = Err(ErrorName::TypeError);
    }
    // UDP closed by close() keeps its socket for the flush; the machine's documented
    // decision: a fatal error during the flush rejects `closed` with NetworkError.
    let closed_at = d.log.iter().position(|r| r.transitions.iter().any(|t| t.1 == ReadyState::Closed));
    let failed_after = closed_at.is_some_and(|at| {
        d.log[at + 1..]
            .iter()
            .any(|r| matches!(r.input, Input::Io(IoEvent::Failed { .. })) && !r.outs.is_empty())
    });
    if row == Row::UdpOpenClose && failed_after {
        want_closed = Err(ErrorName::NetworkError);
    }
    if closed != Some(want_closed) || want_opened.is_some_and(|w| opened != Some(w)) {
        return Err(format!(
            "{row}: opened {opened:?} / closed {closed:?}, the row prescribes {want_opened:?} / {want_closed:?}"
        ));
    }
    Ok(())
}

// ---- per-pair expectations ----------------------------------------------------------------------

/// Whether `input` is one of `kind`'s own (the others are of another socket kind).
fn belongs(kind: SocketKind, input: &Input) -> bool {
    use AppCommand as A;
    use IoEvent as E;
    match (kind, input) {
        (_, Input::Timeout | Input::Open(_)) => true,
        (SocketKind::Tcp, Input::App(c)) => matches!(
            c,
            A::Read
                | A::Close
                | A::Write { .. }
                | A::WriterClose
                | A::WriterAbort { .. }
                | A::HalfClose
                | A::Reset
                | A::StartTls
        ),
        (SocketKind::Tcp, Input::Io(e)) => matches!(
            e,
            E::Resolved { .. }
                | E::ResolveFailed { .. }
                | E::Connected { .. }
                | E::ConnectFailed { .. }
                | E::Received(_)
                | E::PeerFin
                | E::Wrote { .. }
                | E::WriteShutdown
                | E::TlsDone { .. }
                | E::TlsFailed { .. }
                | E::Failed { .. }
                | E::ConversionFailed
        ),
        (SocketKind::Udp, Input::App(c)) => matches!(
            c,
            A::Read
                | A::Close
                | A::SendDatagram { .. }
                | A::WriterClose
                | A::WriterAbort { .. }
                | A::JoinMulticast { .. }
                | A::LeaveMulticast { .. }
        ),
        (SocketKind::Udp, Input::Io(e)) => matches!(
            e,
            E::Resolved { .. }
                | E::ResolveFailed { .. }
                | E::Bound { .. }
                | E::BindFailed { .. }
                | E::Datagram { .. }
                | E::Sent { .. }
                | E::SendFailed { .. }
                | E::TransientError { .. }
                | E::Failed { .. }
                | E::ConversionFailed
        ),
        (SocketKind::TcpServer, Input::App(c)) => {
            matches!(c, A::Listen { .. } | A::CancelListen { .. } | A::ReturnConnection { .. } | A::Close)
        }
        (SocketKind::TcpServer, Input::Io(e)) => matches!(
            e,
            E::Listening { .. }
                | E::ListenFailed { .. }
                | E::Failed { .. }
                | E::Accepted { .. }
                | E::AcceptFailed { .. }
        ),
        _ => false,
    }
}

/// §9 "closed | any operation | closed | no effect": only answers to reads, writes and listens, and
/// the release of a connection a closed server still receives.
fn check_closed_has_no_effect(kind: SocketKind, input: &Input, outs: &[Output]) -> Result<(), String> {
    for out in outs {
        let ok = match out {
            Output::Event(Event::Read(ReadResult::Done | ReadResult::Error(_))) => true,
            Output::Event(Event::WriteSettled { result: Err(_), .. }) => true,
            Output::Event(Event::ListenSettled { result: Err(e), .. }) => {
                e.kind() == ErrorName::InvalidStateError
            }
            Output::Io(IoCommand::CloseConnection { .. }) => matches!(
                input,
                Input::Io(IoEvent::Accepted { .. }) | Input::App(AppCommand::ReturnConnection { .. })
            ),
            _ => false,
        };
        if !ok {
            return Err(format!("closed socket: {} produced {out:?}", input_name(input)));
        }
    }
    // Still answered: a read (done or the stored error), a write (rejected), a listen
    // (InvalidStateError, SRV-LISTEN-01).
    let count = |f: fn(&Output) -> bool| outs.iter().filter(|o| f(o)).count();
    let answered = match (kind, input) {
        (SocketKind::Tcp | SocketKind::Udp, Input::App(AppCommand::Read)) => {
            count(|o| matches!(o, Output::Event(Event::Read(_)))) == 1
        }
        (SocketKind::Tcp, Input::App(AppCommand::Write { .. }))
        | (SocketKind::Udp, Input::App(AppCommand::SendDatagram { .. })) => {
            count(|o| matches!(o, Output::Event(Event::WriteSettled { .. }))) == 1
        }
        (SocketKind::TcpServer, Input::App(AppCommand::Listen { .. })) => {
            count(|o| matches!(o, Output::Event(Event::ListenSettled { .. }))) == 1
        }
        _ => true,
    };
    if !answered {
        return Err(format!("closed socket: {} was not answered: {outs:?}", input_name(input)));
    }
    Ok(())
}

/// A failed pair: the message, and the input (with the state it met) of the step that failed.
type Failure = (String, Option<Box<(Input, ReadyState)>>);

/// Runs one (fixture, stimulus) pair, then carries the socket to the end of its life with a backend
/// that answers `ok`; checks everything and attributes every transition.
fn run_pair(
    fx: &Fixture,
    stimulus: &Stimulus,
    ok: bool,
    rows: &mut BTreeMap<Row, String>,
) -> Result<(), Failure> {
    let mut d = (fx.build)();
    check_pair(&mut d, fx, stimulus, ok, rows).map_err(|e| (e, d.failed_at.take().map(Box::new)))
}

/// [`run_pair`] on a mutant: `row` is disabled once the fixture is built.
#[cfg(feature = "mutations")]
fn run_mutant_pair(fx: &Fixture, stimulus: &Stimulus, ok: bool, row: Row) -> Result<(), Failure> {
    let mut d = (fx.build)();
    d.m.disable_row(Some(row));
    let mut rows = BTreeMap::new();
    check_pair(&mut d, fx, stimulus, ok, &mut rows).map_err(|e| (e, d.failed_at.take().map(Box::new)))
}

fn check_pair(
    d: &mut Driver,
    fx: &Fixture,
    stimulus: &Stimulus,
    ok: bool,
    rows: &mut BTreeMap<Row, String>,
) -> Result<(), String> {
    let context = format!("[{}] + {stimulus:?} (backend ok: {ok})", fx.name);
    let kind = d.m.kind();
    let before = d.m.ready_state();
    let finished = before == ReadyState::Closed && d.m.closed().is_some();
    let mark = d.log.len();
    apply(d, stimulus).map_err(|e| format!("{context}: {e}"))?;
    for rec in &d.log[mark..] {
        if !belongs(kind, &rec.input) {
            // Another socket kind's input: TypeError for commands, and never any effect.
            if !rec.outs.is_empty() || d.m.ready_state() != before {
                return Err(format!("{context}: a foreign input had effects: {:?}", rec.outs));
            }
            if matches!(rec.input, Input::App(_))
                && rec.result.as_ref().err().map(SocketError::kind) != Some(ErrorName::TypeError)
            {
                return Err(format!("{context}: a foreign command returned {:?}", rec.result));
            }
        }
        if finished {
            check_closed_has_no_effect(kind, &rec.input, &rec.outs).map_err(|e| format!("{context}: {e}"))?;
        }
    }
    if finished && d.m.ready_state() != ReadyState::Closed {
        return Err(format!("{context}: left closed"));
    }
    d.settle(ok).map_err(|e| format!("{context}: {e}"))?;
    // INV-02: once close() or reset() was called, closed settles (within the timers, which settle()
    // ran out).
    if (d.obs.close_calls > 0 || d.obs.reset_called) && d.m.closed().is_none() {
        return Err(format!(
            "{context}: INV-02: closed still pending after close()/reset()\n{}",
            d.history()
        ));
    }
    match attribute_all(d, &context, rows)? {
        Some(row) => check_outcome(d, row).map_err(|e| format!("{context}: {e}\n{}", d.history())),
        None => Ok(()),
    }
}

/// Machine bugs found by this walk and reported to the lead: which socket kind, and which input in
/// which state triggers it. Pairs failing that way are set aside (and reproduced by an `#[ignore]`d
/// test) so the rest of the walk stays meaningful; an entry the walk no longer hits fails the walk,
/// so fixing the bug forces removing its entry (and un-ignoring its test).
#[allow(clippy::type_complexity)]
const KNOWN_BUGS: &[(SocketKind, &str, fn(&Input, ReadyState) -> bool)] = &[];

/// Which entry of [`KNOWN_BUGS`] a failure is, if any.
fn known_bug(kind: SocketKind, failure: &Failure) -> Option<usize> {
    let (input, state) = failure.1.as_deref()?;
    KNOWN_BUGS.iter().position(|(k, _, hit)| *k == kind && hit(input, *state))
}

#[cfg(feature = "mutations")]
fn is_known_bug(kind: SocketKind, failure: &Failure) -> bool {
    known_bug(kind, failure).is_some()
}

fn walk(fixtures: &[Fixture]) -> BTreeMap<Row, String> {
    let mut rows = BTreeMap::new();
    let mut failures = Vec::new();
    let mut known_hits = vec![0usize; KNOWN_BUGS.len()];
    let kind = (fixtures[0].build)().m.kind();
    for fx in fixtures {
        let probe = (fx.build)();
        assert_eq!(probe.m.ready_state(), fx.state, "fixture [{}] is in the wrong state", fx.name);
        for stimulus in stimuli(&probe) {
            for ok in [true, false] {
                if let Err(failure) = run_pair(fx, &stimulus, ok, &mut rows) {
                    match known_bug(kind, &failure) {
                        Some(i) => known_hits[i] += 1,
                        None => failures.push(failure.0),
                    }
                }
            }
        }
    }
    if !failures.is_empty() {
        // One line per distinct problem, then the first failure in full.
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for f in &failures {
            let head = f.lines().next().unwrap_or_default();
            let key = head
                .split_once("(backend ok: ")
                .and_then(|(_, r)| r.split_once("): "))
                .map_or(head, |(_, r)| r);
            *kinds.entry(key.to_string()).or_default() += 1;
        }
        let summary: Vec<String> = kinds.iter().map(|(k, n)| format!("  {n} x {k}")).collect();
        panic!("{} failing pairs:\n{}\nthe first:\n{}", failures.len(), summary.join("\n"), failures[0]);
    }
    for (i, (k, text, _)) in KNOWN_BUGS.iter().enumerate() {
        assert!(
            *k != kind || known_hits[i] > 0,
            "known bug no longer happens, remove it from KNOWN_BUGS: {text}"
        );
    }
    rows
}

fn assert_rows_covered(kind: SocketKind, rows: &BTreeMap<Row, String>) {
    let missing: Vec<Row> =
        Row::ALL.iter().copied().filter(|r| r.edge().0 == kind && !rows.contains_key(r)).collect();
    assert!(missing.is_empty(), "{kind}: rows no (state, input) pair exercises: {missing:?}");
}

// ---- the tests ----------------------------------------------------------------------------------

// rule: STATE-01, STATE-02, STATE-03, STATE-04, STATE-05, TCP-ATTR-01, GEN-09, GEN-14, EXT-01, EXT-02, EXT-03, EXT-04, EXT-05, EXT-06, EXT-07
// rule: TCP-OPEN-01, TCP-OPEN-02, TCP-OPEN-05, TCP-READ-CANCEL-01, TCP-READ-CANCEL-02, TCP-READ-CANCEL-03, TCP-READ-CANCEL-04, TCP-READ-CLOSE-01, TCP-READ-CLOSE-02, TCP-READ-CLOSE-03
// rule: TCP-READ-ERR-01, TCP-READ-ERR-02, TCP-READ-ERR-03, TCP-READ-ERR-04, TCP-CLOSE-01, TCP-CLOSE-03, TCP-CLOSE-04, TCP-HALFCLOSE-02
// rule: TCP-WRITE-CLOSE-02, TCP-WRITE-CLOSE-03, TCP-WRITE-CLOSE-04, TCP-WRITE-CLOSE-05, ERR-06, ERR-07
#[test]
fn tcp_every_state_and_input_moves_only_along_section_9_2_and_9_4() {
    let rows = walk(&tcp_fixtures());
    assert_rows_covered(SocketKind::Tcp, &rows);
}

// rule: STATE-01, STATE-02, STATE-04, STATE-06, UDP-ATTR-01, GEN-09, GEN-14, UDP-OPEN-01, UDP-OPEN-02
// rule: UDP-READ-CANCEL-01, UDP-READ-CANCEL-02, UDP-READ-CANCEL-03, UDP-READ-ERR-01, UDP-READ-ERR-02, UDP-CLOSE-01, UDP-CLOSE-03
#[test]
fn udp_every_state_and_input_moves_only_along_section_9_1() {
    let rows = walk(&udp_fixtures());
    assert_rows_covered(SocketKind::Udp, &rows);
}

// rule: STATE-01, STATE-02, STATE-04, STATE-06, GEN-09, GEN-14, SRV-OPEN-01, SRV-OPEN-02, SRV-ERR-01
// rule: SRV-CLOSE-01, SRV-CLOSE-03, SRV-CLOSE-05, SRV-LISTEN-01
#[test]
fn server_every_state_and_input_moves_only_along_section_9_3() {
    let rows = walk(&server_fixtures());
    assert_rows_covered(SocketKind::TcpServer, &rows);
}

/// The variant names serde knows for `T`, read from its "unknown variant" error.
#[cfg(feature = "serde")]
fn serde_variants<T: serde::de::DeserializeOwned>() -> Vec<String> {
    let err = match serde_json::from_str::<T>("\"__no_such_variant__\"") {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a variant named __no_such_variant__ exists"),
    };
    let list = err.split("expected one of").nth(1).unwrap_or_else(|| panic!("unexpected error: {err}"));
    list.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

// rule: (none: checks that the walk's input list names every variant)
#[cfg(feature = "serde")]
#[test]
fn the_input_list_covers_every_variant() {
    let inputs = representative_inputs();
    let names: Vec<String> = inputs.iter().map(input_name).collect();
    for v in serde_variants::<AppCommand>() {
        assert!(names.contains(&format!("App({v})")), "no input exercises AppCommand::{v}");
    }
    for v in serde_variants::<IoEvent>() {
        assert!(names.contains(&format!("Io({v})")), "no input exercises IoEvent::{v}");
    }
    for v in serde_variants::<Input>() {
        let covered = match v.as_str() {
            "Timeout" => true, // every fixture gets Timeout before, at and after its deadlines
            other => names.iter().any(|n| n.starts_with(other)),
        };
        assert!(covered, "no input exercises Input::{v}");
    }
    assert_eq!(serde_variants::<Input>().len(), 4, "a new Input variant: add it to the walk");
}

// rule: STATE-01, STATE-03, STATE-04, STATE-05, STATE-06
#[test]
fn every_row_has_an_attributable_cause_and_the_table_is_consistent() {
    // The attribution used by the walk accepts each row's own edge, and rows of one kind share no
    // (edge, cause) pair: two rows with the same edge differ by their event.
    for row in Row::ALL {
        let (kind, from, to) = row.edge();
        assert!(to.rank() > from.rank() && from != ReadyState::Closed && to != ReadyState::Opening, "{row}");
        assert!(Row::allows(kind, from, to));
        if kind != SocketKind::Tcp {
            for state in [from, to] {
                assert!(
                    !matches!(state, ReadyState::HalfClosed | ReadyState::Closing),
                    "{row}: {kind} in {state}"
                );
            }
        }
    }
    let mut seen: BTreeMap<(SocketKind, ReadyState, ReadyState, String, bool), Row> = BTreeMap::new();
    for input in representative_inputs().into_iter().chain([Input::Timeout]) {
        for row in Row::ALL {
            let (kind, from, to) = row.edge();
            for half_open in [false, true] {
                if let Some(found) = attribute(kind, &input, from, to, half_open) {
                    assert_eq!(found.edge(), row.edge());
                    let key = (kind, from, to, input_name(&input), half_open);
                    if let Some(other) = seen.insert(key, found) {
                        assert_eq!(other, found, "one cause attributed to two rows");
                    }
                }
            }
        }
    }
}

/// EXT-07 failure after the state moved on: `start_tls()` on an open socket, then `halfClose()`
/// (or `close()`) while the handshake runs, then the handshake fails. Expected: "closed" through
/// the row of a lost connection in that state (TcpHalfClosedConnectionLost /
/// TcpClosingHandshakeFails), `closed` rejects NetworkError (cause TLS). Actual: `handle` takes
/// `Row::TcpOpenStartTlsFails` (open only) from "halfclosed"/"closing": a debug build panics in
/// `StateCell::set`; a release build settles `closed` while the state stays "halfclosed" or
/// "closing" for ever (INV-04, INV-05).
// rule: EXT-07, TCP-READ-ERR-04, TCP-READ-ERR-02
#[test]
fn test_halfclosed_and_closing_start_tls_failure_closes_the_socket() {
    for (then, row_state) in
        [(AppCommand::HalfClose, ReadyState::HalfClosed), (AppCommand::Close, ReadyState::Closing)]
    {
        let mut d = tcp_open();
        d.app(AppCommand::StartTls);
        d.app(then);
        assert_eq!(d.m.ready_state(), row_state);
        let outs = d
            .input(Input::Io(IoEvent::TlsFailed { cause: TlsCause::Protocol }))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(state_changes(&outs), [(row_state, ReadyState::Closed)]);
        let closed = d.m.closed().cloned().expect("closed settled");
        assert_eq!(
            closed.map_err(|e| (e.kind(), e.cause())),
            Err((ErrorName::NetworkError, Some(Cause::Tls(TlsCause::Protocol))))
        );
    }
}

/// The machine-shape contract: an `Io` input of another socket kind is `Err(TypeError)` with no
/// effect (the server and UDP machines do this; see the report for TCP).
// rule: (none: the machine-shape contract, notes/machine-shape.md)
#[test]
fn foreign_io_events_are_type_errors_on_every_machine() {
    let mut failures = Vec::new();
    for fx in all_fixtures() {
        for input in representative_inputs() {
            let mut d = (fx.build)();
            let kind = d.m.kind();
            if belongs(kind, &input) || !matches!(input, Input::Io(_)) {
                continue;
            }
            let result = d.input(input.clone()).unwrap_or_else(|e| panic!("{e}"));
            let got = d.log.last().map(|r| r.result.clone());
            if !result.is_empty()
                || got.as_ref().and_then(|r| r.as_ref().err()).map(SocketError::kind)
                    != Some(ErrorName::TypeError)
            {
                failures.push(format!("[{}] {}: {got:?}", fx.name, input_name(&input)));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} foreign Io events not refused, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// With feature `mutations`: disabling the row a transition was attributed to must remove that
/// transition, so the attribution names the row the machine really took.
// rule: STATE-01, STATE-04
#[cfg(feature = "mutations")]
#[test]
fn attribution_matches_the_row_each_machine_takes() {
    let mut checked = 0;
    for fx in all_fixtures() {
        let probe = (fx.build)();
        for stimulus in stimuli(&probe) {
            let Stimulus::At(at, input) = &stimulus else { continue };
            let mut d = (fx.build)();
            let mark = d.log.len();
            if apply(&mut d, &stimulus).is_err() {
                continue;
            }
            let kind = d.m.kind();
            for rec in &d.log[mark..] {
                for &(from, to) in &rec.transitions {
                    let Some(row) = attribute(kind, &rec.input, from, to, rec.half_open) else { continue };
                    let mut mutant = (fx.build)();
                    mutant.m.disable_row(Some(row));
                    let _ = mutant.m.handle(*at, input.clone());
                    let outs = drain(&mut mutant.m);
                    assert!(
                        !state_changes(&outs).contains(&(from, to)),
                        "[{}] + {}: {from} -> {to} still happens with {row} disabled",
                        fx.name,
                        input_name(input)
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} transitions checked");
}

/// With feature `mutations`: the walk catches every mutant that disables one row of §9 (the walk's
/// checks can fail, and each row has a pair that depends on it).
// rule: STATE-01, STATE-04
#[cfg(feature = "mutations")]
#[test]
fn the_walk_catches_every_single_row_mutant() {
    let fixtures = all_fixtures();
    let mut survivors = Vec::new();
    for &row in Row::ALL {
        let caught = fixtures.iter().filter(|fx| (fx.build)().m.kind() == row.edge().0).any(|fx| {
            let probe = (fx.build)();
            stimuli(&probe).iter().any(|st| {
                [true, false].iter().any(|&ok| {
                    run_mutant_pair(fx, st, ok, row).is_err_and(|f| !is_known_bug(row.edge().0, &f))
                })
            })
        });
        if !caught {
            survivors.push(row);
        }
    }
    assert!(survivors.is_empty(), "mutants the walk does not catch: {survivors:?}");
}

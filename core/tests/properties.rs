//! Property tests: random input sequences against each bare machine, driven by a fake backend and
//! peer ([`support::FakePeer`]) that answers the machine's I/O commands plausibly. Read RULES.md §11
//! (INV-01..19) before editing.
//!
//! Every step goes through [`support::Driver`], whose observer checks the invariants common to all
//! kinds (INV-01..06, INV-12, INV-17, GEN-09, GEN-14, the §9 tables). Each property adds the
//! kind's own model: TCP byte integrity and write settlement (INV-07, -08, -09, -11, -18, -19),
//! UDP datagram integrity and per-write failures (INV-10, -11, -19, A-28), server delivery
//! (INV-15). Each case ends by letting the backend answer everything and the timers run out, then
//! checks what must have settled (INV-02).

mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use support::*;
use tcpudp_core::address::HostName;
use tcpudp_core::options::{KeepAliveMode, TcpOptions, TcpSpec, UdpOptions};
use tcpudp_core::{
    AppCommand, Cause, ConnId, Destination, ErrorName, Event, Input, IoCommand, IoEvent, ListenId, Output,
    ReadResult, ReadyState, SocketError, WriteId,
};

/// At least 1,000 cases per property; shrinking bounded to a minute (DESIGN §8).
fn config() -> ProptestConfig {
    ProptestConfig { cases: 1000, max_shrink_time: 60_000, ..ProptestConfig::default() }
}

/// Fresh, recognisable bytes: each call continues a sequence, so reordering or duplication shows.
#[derive(Debug, Default)]
struct Source(u32);

impl Source {
    fn take(&mut self, len: usize) -> Bytes {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                self.0 += 1;
                (self.0 % 251) as u8
            })
            .collect();
        Bytes::from(bytes)
    }
}

/// Inputs that are stale or of another socket kind: ignored, or refused with no effect.
fn junk(i: u8) -> Input {
    let other = other_addr();
    match i % 10 {
        0 => Input::Io(IoEvent::Wrote { id: WriteId(1_000_000) }),
        1 => Input::Io(IoEvent::Sent { id: WriteId(1_000_000) }),
        2 => Input::Io(IoEvent::TransientError { cause: Cause::Refused }),
        3 => {
            Input::Io(IoEvent::Datagram { data: Bytes::from_static(b"stray"), from: other, dropped_total: 0 })
        }
        4 => Input::Io(IoEvent::Accepted { conn: ConnId(1_000_000), local: local_addr(), remote: other }),
        5 => Input::App(AppCommand::Listen { id: ListenId(1_000_000) }),
        6 => Input::App(AppCommand::Write { id: WriteId(2_000_000), data: Bytes::from_static(b"w") }),
        7 => Input::App(AppCommand::JoinMulticast { group: group() }),
        8 => open_inputs()[usize::from(i) % 4].clone(),
        _ => Input::Io(IoEvent::Bound { local: local_addr() }),
    }
}

/// Whether a junk input may legitimately change a machine of this kind (then it is not sent).
fn junk_applies(kind: tcpudp_core::SocketKind, input: &Input) -> bool {
    use tcpudp_core::SocketKind::*;
    matches!(
        (kind, input),
        (Tcp, Input::App(AppCommand::Write { .. }))
            | (TcpServer, Input::App(AppCommand::Listen { .. }))
            | (TcpServer, Input::Io(IoEvent::Accepted { .. }))
            | (Udp, Input::Io(IoEvent::Datagram { .. } | IoEvent::Bound { .. }))
            | (Udp, Input::App(AppCommand::JoinMulticast { .. }))
    )
}

fn fail<T>(text: impl Into<String>) -> Result<T, String> {
    Err(text.into())
}

// ==== TCP ========================================================================================

#[derive(Clone, Copy, Debug)]
enum TcpStart {
    Literal,
    Name,
    Tls,
    Accepted,
}

#[derive(Clone, Debug)]
struct TcpCase {
    start: TcpStart,
    /// Open first (the backend answers the opening successfully), then run `ops`.
    open_first: bool,
    allow_half_open: bool,
    keep_alive: bool,
    readable_hwm: usize,
    writable_hwm: usize,
    ops: Vec<TcpOp>,
}

#[derive(Clone, Debug)]
enum TcpOp {
    Read,
    Write(u8),
    Close,
    HalfClose,
    WriterClose,
    WriterAbort,
    Reset,
    StartTls,
    /// The backend answers its oldest pending command (`true`: success).
    Answer(bool),
    /// The peer sends this many bytes (when it plausibly can).
    PeerData(u8),
    PeerFin,
    /// The connection is lost (RST, timeout, keep-alive).
    Lost(u8),
    ConversionFailed,
    /// Time passes (seconds), then `Timeout`.
    Advance(u16),
    FireTimer,
    Junk(u8),
}

fn tcp_op() -> impl Strategy<Value = TcpOp> {
    prop_oneof![
        16 => (0u8..16).prop_map(|n| TcpOp::Answer(n != 0)),
        10 => Just(TcpOp::Read),
        10 => (0u8..24).prop_map(TcpOp::Write),
        10 => (1u8..24).prop_map(TcpOp::PeerData),
        2 => Just(TcpOp::PeerFin),
        1 => Just(TcpOp::Close),
        1 => Just(TcpOp::HalfClose),
        1 => Just(TcpOp::WriterClose),
        1 => Just(TcpOp::WriterAbort),
        1 => Just(TcpOp::Reset),
        1 => Just(TcpOp::StartTls),
        1 => (0u8..3).prop_map(TcpOp::Lost),
        1 => Just(TcpOp::ConversionFailed),
        1 => (1u16..200).prop_map(TcpOp::Advance),
        1 => Just(TcpOp::FireTimer),
        1 => any::<u8>().prop_map(TcpOp::Junk),
    ]
}

fn tcp_case() -> impl Strategy<Value = TcpCase> {
    (
        prop_oneof![
            Just(TcpStart::Literal),
            Just(TcpStart::Name),
            Just(TcpStart::Tls),
            Just(TcpStart::Accepted)
        ],
        (0u8..4).prop_map(|n| n != 0),
        any::<bool>(),
        any::<bool>(),
        1usize..40,
        1usize..40,
        proptest::collection::vec(tcp_op(), 0..100),
    )
        .prop_map(|(start, open_first, allow_half_open, keep_alive, readable_hwm, writable_hwm, ops)| {
            TcpCase { start, open_first, allow_half_open, keep_alive, readable_hwm, writable_hwm, ops }
        })
}

/// One write as the application issued it.
#[derive(Debug)]
struct WriteRec {
    id: WriteId,
    data: Bytes,
    /// The first write rejection already emitted when this write was issued (INV-11).
    after_rejection: Option<SocketError>,
    /// A writer abort came before this write (then AbortError is the stored error, A-18).
    after_abort: bool,
    settled: Option<Result<(), SocketError>>,
    sent: bool,
}

/// What the TCP property knows beyond the driver: the application's view of both streams.
#[derive(Debug, Default)]
struct TcpModel {
    writes: Vec<WriteRec>,
    next_id: u64,
    first_rejection: Option<SocketError>,
    /// A writer abort was handled.
    aborted: bool,
    last_sent: Option<WriteId>,
    fin_emitted: bool,
    handshaking: bool,
    /// Bytes the peer put on the wire to us, in order.
    peer_sent: Vec<u8>,
    largest_chunk: usize,
    /// Bytes the application read, in order.
    app_read: Vec<u8>,
}

impl TcpModel {
    fn write(&mut self, id: WriteId) -> Result<&mut WriteRec, String> {
        self.writes.iter_mut().find(|w| w.id == id).ok_or_else(|| format!("unknown write {id:?}"))
    }

    /// Checks one step's outputs in order, against the model (and the peer, already updated).
    fn check(&mut self, d: &Driver, input: &Input, outs: &[Output], hwm: usize) -> Result<(), String> {
        if matches!(input, Input::Io(IoEvent::TlsDone { .. } | IoEvent::TlsFailed { .. })) {
            self.handshaking = false;
        }
        for out in outs {
            match out {
                Output::Io(IoCommand::TlsHandshake) => self.handshaking = true,
                Output::Io(IoCommand::Send { id, data }) => {
                    // TCP-OPEN-04, EXT-05, EXT-07: nothing flows before opened or during a handshake.
                    if d.obs.opened != Some(Ok(())) || self.handshaking {
                        return fail(format!("Send {id:?} before open or during a TLS handshake"));
                    }
                    // INV-09: no byte after our FIN.
                    if self.fin_emitted {
                        return fail(format!("INV-09: Send {id:?} after the FIN"));
                    }
                    // INV-08: in write order, no loss in the middle (nothing after a rejection).
                    if self.last_sent.is_some_and(|last| *id <= last) {
                        return fail(format!("INV-08: Send {id:?} after {:?}", self.last_sent));
                    }
                    let skipped: Vec<WriteId> = self
                        .writes
                        .iter()
                        .filter(|w| Some(w.id) > self.last_sent && w.id < *id && !w.data.is_empty())
                        .map(|w| w.id)
                        .collect();
                    if !skipped.is_empty() {
                        return fail(format!("INV-08: Send {id:?} skips writes {skipped:?}"));
                    }
                    let w = self.write(*id)?;
                    // TCP-WRITE-01, GEN-08: the chunk itself (moved, never copied).
                    if data.as_ptr() != w.data.as_ptr() || data.len() != w.data.len() || data.is_empty() {
                        return fail(format!("Send {id:?} does not carry the written bytes"));
                    }
                    w.sent = true;
                    self.last_sent = Some(*id);
                }
                Output::Io(IoCommand::ShutdownWrite) => {
                    // INV-09, INV-18, TCP-WRITE-CLOSE-01: the FIN follows the flush of every write.
                    for w in &self.writes {
                        match &w.settled {
                            None => return fail(format!("INV-09: FIN before write {:?} settled", w.id)),
                            Some(Ok(())) if !w.data.is_empty() && !w.sent => {
                                return fail(format!("INV-09: write {:?} resolved unsent before FIN", w.id));
                            }
                            _ => {}
                        }
                    }
                    self.fin_emitted = true;
                }
                Output::Event(Event::WriteSettled { id, result }) => {
                    let closed = d.obs.closed.clone();
                    let w = self.write(*id)?;
                    if w.settled.is_some() {
                        return fail(format!("INV-11: write {id:?} settled twice"));
                    }
                    match (result, &w.after_rejection) {
                        // TCP-WRITE-01: resolved only once the transport took all its bytes.
                        (Ok(()), _)
                            if !w.data.is_empty() && !d.peer.received.iter().any(|(i, _)| i == id) =>
                        {
                            return fail(format!("write {id:?} resolved before the transport took it"));
                        }
                        // INV-11, TCP-WRITE-05: once a write rejected, later writes reject too…
                        (Ok(()), Some(first)) => {
                            return fail(format!(
                                "INV-11: write {id:?} resolved after a rejection ({first:?})"
                            ));
                        }
                        // …with the same error, or the stored error of an error close, or
                        // AbortError once the writer aborted (A-18: any later write).
                        (Err(e), Some(first))
                            if e.kind() != first.kind()
                                && !matches!(&closed, Some(Err(c)) if c.kind() == e.kind())
                                && !(w.after_abort && e.kind() == ErrorName::AbortError) =>
                        {
                            return fail(format!(
                                "INV-11: write {id:?} rejected {e:?} after an earlier rejection {first:?} (closed: {closed:?})"
                            ));
                        }
                        _ => {}
                    }
                    // GEN-04: every rejection carries a catalog name (by type); TypeError, AbortError
                    // and NetworkError are the only ones a TCP write may get (ERR-06, -07, -09).
                    if let Err(e) = result {
                        if !matches!(
                            e.kind(),
                            ErrorName::TypeError | ErrorName::AbortError | ErrorName::NetworkError
                        ) {
                            return fail(format!("write {id:?} rejected with {e:?}"));
                        }
                    }
                    w.settled = Some(result.clone());
                    if let Err(e) = result {
                        if self.first_rejection.is_none() {
                            self.first_rejection = Some(e.clone());
                        }
                    }
                }
                Output::Event(Event::Read(ReadResult::Chunk(chunk))) => {
                    self.app_read.extend_from_slice(chunk);
                    // INV-07, TCP-READ-01: what was read is a prefix of what the peer sent.
                    if !self.peer_sent.starts_with(&self.app_read) {
                        return fail("INV-07: the bytes read are not a prefix of the bytes sent");
                    }
                }
                Output::Event(Event::Read(ReadResult::Done)) => {
                    // INV-07: a readable that ends with the peer's FIN (no close(), no reset()) has
                    // delivered every byte.
                    let cut = d.obs.close_cut || d.obs.reset_called;
                    if !cut && !d.peer.peer_fin_sent {
                        return fail("read done without the peer's FIN or a close()");
                    }
                    if !cut && self.app_read != self.peer_sent {
                        return fail(format!(
                            "INV-07: done after {} of {} bytes",
                            self.app_read.len(),
                            self.peer_sent.len()
                        ));
                    }
                }
                Output::Event(Event::Read(ReadResult::Message(_))) => {
                    return fail("a TCP read gave a message")
                }
                _ => {}
            }
        }
        let m = d.m.tcp().ok_or("not a TCP machine")?;
        // INV-19, TCP-READ-FLOW-01: at most the high-water mark plus one chunk is queued.
        if m.queued_read_bytes() > hwm + self.largest_chunk {
            return fail(format!("INV-19: {} bytes queued (mark {hwm})", m.queued_read_bytes()));
        }
        Ok(())
    }
}

fn run_tcp(case: TcpCase) -> Result<(), String> {
    let opts = TcpOptions {
        allow_half_open: case.allow_half_open,
        readable_high_water_mark: case.readable_hwm,
        writable_high_water_mark: case.writable_hwm,
        keep_alive: if case.keep_alive { KeepAliveMode::FrequentThenSparse } else { KeepAliveMode::Off },
        keep_alive_sparse_interval: case.keep_alive.then_some(20),
        close_timeout: std::time::Duration::from_secs(30),
        ..TcpOptions::default()
    };
    let spec: TcpSpec =
        tcp_spec_for(if matches!(case.start, TcpStart::Name) { "svc.test" } else { "127.0.0.1" }, &opts);
    let mut d = match case.start {
        TcpStart::Literal | TcpStart::Name => Driver::tcp(spec),
        TcpStart::Tls => Driver::tcp(TcpSpec { use_secure_transport: true, ..spec }),
        TcpStart::Accepted => {
            let mut accepted = accepted_spec();
            accepted.tcp = TcpSpec { remote: accepted.tcp.remote.clone(), remote_port: 0, ..spec }.into();
            Driver::tcp_accepted(accepted)
        }
    };
    let mut model = TcpModel { next_id: 1, ..TcpModel::default() };
    let mut src = Source::default();
    let hwm = case.readable_hwm;
    let opening = (0..4).map(|_| TcpOp::Answer(true)).take_while(|_| case.open_first);
    for op in opening.chain(case.ops) {
        let input = match op {
            TcpOp::Read => Input::App(AppCommand::Read),
            TcpOp::Write(len) => {
                let id = WriteId(model.next_id);
                model.next_id += 1;
                let data = src.take(usize::from(len));
                model.writes.push(WriteRec {
                    id,
                    data: data.clone(),
                    after_rejection: model.first_rejection.clone(),
                    after_abort: model.aborted,
                    settled: None,
                    sent: false,
                });
                Input::App(AppCommand::Write { id, data })
            }
            TcpOp::Close => Input::App(AppCommand::Close),
            TcpOp::HalfClose => Input::App(AppCommand::HalfClose),
            TcpOp::WriterClose => Input::App(AppCommand::WriterClose),
            TcpOp::WriterAbort => Input::App(AppCommand::WriterAbort { reason: Some("stop".into()) }),
            TcpOp::Reset => Input::App(AppCommand::Reset),
            TcpOp::StartTls => Input::App(AppCommand::StartTls),
            TcpOp::Answer(ok) => match d.peer.answer(ok) {
                Some(input) => input,
                None => continue,
            },
            TcpOp::PeerData(len) => {
                let p = &d.peer;
                if !p.connected || p.released || p.peer_fin_sent || !p.read_interest || p.handshaking() {
                    continue;
                }
                let data = src.take(usize::from(len));
                model.peer_sent.extend_from_slice(&data);
                model.largest_chunk = model.largest_chunk.max(data.len());
                Input::Io(IoEvent::Received(data))
            }
            TcpOp::PeerFin => {
                let p = &mut d.peer;
                if !p.connected || p.released || p.peer_fin_sent || !p.read_interest || p.handshaking() {
                    continue;
                }
                p.peer_fin_sent = true;
                Input::Io(IoEvent::PeerFin)
            }
            TcpOp::Lost(c) => {
                if d.peer.released {
                    continue;
                }
                let cause = [Cause::Reset, Cause::TimedOut, Cause::Unreachable][usize::from(c) % 3];
                Input::Io(IoEvent::Failed { cause })
            }
            TcpOp::ConversionFailed => {
                if !d.peer.connected || d.peer.released {
                    continue;
                }
                Input::Io(IoEvent::ConversionFailed)
            }
            TcpOp::Advance(secs) => {
                let at = d.now + std::time::Duration::from_secs(u64::from(secs));
                let outs = d.step(at, Input::Timeout)?;
                model.check(&d, &Input::Timeout, &outs, hwm)?;
                continue;
            }
            TcpOp::FireTimer => {
                let Some(deadline) = d.m.poll_timeout() else { continue };
                let outs = d.step(deadline.at.max(d.now), Input::Timeout)?;
                model.check(&d, &Input::Timeout, &outs, hwm)?;
                continue;
            }
            TcpOp::Junk(i) => {
                let input = junk(i);
                if junk_applies(d.m.kind(), &input) {
                    continue;
                }
                input
            }
        };
        let outs = d.input(input.clone())?;
        model.check(&d, &input, &outs, hwm)?;
        if matches!(input, Input::App(AppCommand::WriterAbort { .. })) {
            model.aborted = true;
        }
        if let (Input::App(AppCommand::StartTls), Some(Err(e))) = (&input, d.log.last().map(|r| &r.result)) {
            // EXT-07: refused synchronously only with InvalidStateError.
            if e.kind() != ErrorName::InvalidStateError {
                return fail(format!("start_tls() threw {e:?}"));
            }
        }
    }
    // The end of the case: the backend answers everything, the timers run out.
    let mark = d.log.len();
    d.settle(true)?;
    for rec in &d.log[mark..] {
        model.check(&d, &rec.input, &rec.outs, hwm)?;
    }
    // INV-02: after close() or reset(), closed settles (bounded by the timers settle() ran out).
    if (d.obs.close_calls > 0 || d.obs.reset_called) && d.obs.closed.is_none() {
        return fail(format!("INV-02: closed pending after close()/reset()\n{}", d.history()));
    }
    if d.obs.state == ReadyState::Closed {
        // Every promise settles: no write is left pending on a closed socket.
        if let Some(w) = model.writes.iter().find(|w| w.settled.is_none()) {
            return fail(format!("write {:?} never settled on a closed socket", w.id));
        }
    }
    // INV-08: the peer received exactly the writes that resolved, in order; INV-09: FIN last.
    let resolved: Vec<WriteId> = model
        .writes
        .iter()
        .filter(|w| w.settled == Some(Ok(())) && !w.data.is_empty())
        .map(|w| w.id)
        .collect();
    let received: Vec<WriteId> = d.peer.received.iter().map(|(id, _)| *id).collect();
    if resolved != received {
        return fail(format!("INV-08: resolved writes {resolved:?} but the peer received {received:?}"));
    }
    if d.peer.fin_after.is_some_and(|n| n != d.peer.received.len()) {
        return fail("INV-09: bytes after the FIN");
    }
    Ok(())
}

// ==== UDP ========================================================================================

#[derive(Clone, Debug)]
struct UdpCase {
    named: bool,
    bind_ok: bool,
    capacity: usize,
    ops: Vec<UdpOp>,
}

#[derive(Clone, Debug)]
enum UdpOp {
    Read,
    /// A write of this length to one of several destinations (see `run_udp`).
    Send(u8, u8),
    WriterClose,
    WriterAbort,
    Close,
    Join(bool),
    Leave,
    Answer(bool),
    Datagram(u8),
    Fatal,
    ConversionFailed,
    Transient,
    Timeout,
    Junk(u8),
}

fn udp_op() -> impl Strategy<Value = UdpOp> {
    prop_oneof![
        20 => (0u8..16).prop_map(|n| UdpOp::Answer(n != 0)),
        15 => Just(UdpOp::Read),
        15 => (0u8..24, 0u8..10).prop_map(|(len, dest)| UdpOp::Send(len, dest)),
        15 => (0u8..24).prop_map(UdpOp::Datagram),
        2 => Just(UdpOp::WriterClose),
        2 => Just(UdpOp::WriterAbort),
        2 => Just(UdpOp::Close),
        2 => any::<bool>().prop_map(UdpOp::Join),
        1 => Just(UdpOp::Leave),
        1 => Just(UdpOp::Fatal),
        1 => Just(UdpOp::ConversionFailed),
        2 => Just(UdpOp::Transient),
        2 => Just(UdpOp::Timeout),
        2 => any::<u8>().prop_map(UdpOp::Junk),
    ]
}

fn udp_case() -> impl Strategy<Value = UdpCase> {
    (any::<bool>(), (0u8..10).prop_map(|n| n != 0), 1usize..5, proptest::collection::vec(udp_op(), 0..80))
        .prop_map(|(named, bind_ok, capacity, ops)| UdpCase { named, bind_ok, capacity, ops })
}

#[derive(Debug)]
struct UdpWrite {
    id: WriteId,
    data: Bytes,
    /// Addressed to the other address family (UDP-WRITE-14).
    other_family: bool,
    /// `writable_error()` when the write was issued.
    refused_with: Option<SocketError>,
    settled: bool,
}

fn run_udp(case: UdpCase) -> Result<(), String> {
    let opts = UdpOptions {
        remote_address: Some(if case.named { "svc.test" } else { "127.0.0.1" }.into()),
        readable_capacity: case.capacity,
        ..udp_options()
    };
    let spec = tcpudp_core::checks::udp_spec(&mut tcpudp_core::checks::AllowAll, &opts)
        .map_err(|e| e.to_string())?;
    let max = spec.max_datagram();
    let mut d = Driver::udp(spec);
    // DESIGN §3.8: the synchronous bind's result is the first input.
    let bound: SocketAddr = if case.named { "0.0.0.0:40000".parse().unwrap() } else { local_addr() };
    d.io(if case.bind_ok {
        IoEvent::Bound { local: bound }
    } else {
        IoEvent::BindFailed { cause: Cause::AddressInUse }
    });
    let mut src = Source::default();
    let mut writes: Vec<UdpWrite> = Vec::new();
    let mut next_id = 1;
    let mut delivered: Vec<(Bytes, SocketAddr)> = Vec::new();
    let mut read_upto = 0usize;
    let mut last_sent: Option<WriteId> = None;
    let mut ended_by_app = false;
    for op in case.ops {
        let input = match op {
            UdpOp::Read => Input::App(AppCommand::Read),
            UdpOp::Send(len, dest) => {
                let id = WriteId(next_id);
                next_id += 1;
                let data =
                    if dest == 9 { Bytes::from(vec![7u8; max + 1]) } else { src.take(usize::from(len)) };
                let family = dest;
                let dest = match dest {
                    0..=4 => Ok(Destination::Addr(other_addr())),
                    5 => Ok(Destination::Addr("[::1]:6000".parse().unwrap())),
                    6 => Ok(Destination::Name(HostName::parse("svc.test").unwrap(), 6000)),
                    7 => Err(SocketError::invalid_access()),
                    8 => Err(SocketError::security()),
                    _ => Ok(Destination::Addr(other_addr())),
                };
                let refused_with = d.m.udp().and_then(|m| m.writable_error());
                let other_family = family == 5;
                writes.push(UdpWrite { id, data: data.clone(), other_family, settled: false, refused_with });
                Input::App(AppCommand::SendDatagram { id, data, dest })
            }
            UdpOp::WriterClose => Input::App(AppCommand::WriterClose),
            UdpOp::WriterAbort => Input::App(AppCommand::WriterAbort { reason: None }),
            UdpOp::Close => Input::App(AppCommand::Close),
            UdpOp::Join(good) => {
                let g = if good { group() } else { peer_addr().ip() };
                Input::App(AppCommand::JoinMulticast { group: g })
            }
            UdpOp::Leave => Input::App(AppCommand::LeaveMulticast { group: group() }),
            UdpOp::Answer(ok) => match d.peer.answer(ok) {
                Some(input) => input,
                None => continue,
            },
            UdpOp::Datagram(len) => {
                if !case.bind_ok || d.peer.released {
                    continue;
                }
                let data = src.take(usize::from(len));
                delivered.push((data.clone(), other_addr()));
                Input::Io(IoEvent::Datagram { data, from: other_addr(), dropped_total: 0 })
            }
            UdpOp::Fatal => Input::Io(IoEvent::Failed { cause: Cause::Unreachable }),
            UdpOp::ConversionFailed => Input::Io(IoEvent::ConversionFailed),
            UdpOp::Transient => Input::Io(IoEvent::TransientError { cause: Cause::Refused }),
            UdpOp::Timeout => Input::Timeout,
            UdpOp::Junk(i) => {
                let input = junk(i);
                if junk_applies(d.m.kind(), &input) {
                    continue;
                }
                input
            }
        };
        let state_before = d.m.ready_state();
        let outs = d.input(input.clone())?;
        let result = d.log.last().map(|r| r.result.clone()).unwrap_or(Ok(()));
        if matches!(
            input,
            Input::App(AppCommand::WriterClose | AppCommand::WriterAbort { .. } | AppCommand::Close)
        ) {
            ended_by_app = true;
        }
        // UDP-MCAST-03, UDP-MCAST-04: a unicast group is InvalidAccessError; closed is
        // InvalidStateError; opening and open act at once.
        if let Input::App(AppCommand::JoinMulticast { group: g } | AppCommand::LeaveMulticast { group: g }) =
            &input
        {
            let expected = if !g.is_multicast() {
                Err(ErrorName::InvalidAccessError)
            } else if state_before == ReadyState::Closed {
                Err(ErrorName::InvalidStateError)
            } else {
                Ok(())
            };
            if result.as_ref().map_err(SocketError::kind) != expected.as_ref().map_err(|e| *e) {
                return fail(format!("{input:?} in {state_before} gave {result:?}"));
            }
        }
        check_udp_outputs(&d, &outs, &mut writes, &delivered, &mut read_upto, &mut last_sent, max)?;
        let m = d.m.udp().ok_or("not a UDP machine")?;
        // INV-19, EXT-09: the queue never exceeds its capacity.
        if m.queued_datagrams() > case.capacity {
            return fail(format!(
                "INV-19: {} datagrams queued (capacity {})",
                m.queued_datagrams(),
                case.capacity
            ));
        }
        // UDP-READ-04, EXT-09, A-33: a full queue stops reading; overflow never changes the state.
        if m.queued_datagrams() >= case.capacity && d.peer.read_interest {
            return fail("EXT-09: the queue is full but reading goes on");
        }
        if matches!(input, Input::Io(IoEvent::Datagram { .. })) && d.m.ready_state() != state_before {
            return fail("UDP-READ-04: a datagram changed the state");
        }
        // INV-11, A-28, UDP-WRITE-08: a single rejected datagram never ends the writable; only the
        // application (writer close/abort, close) or a fatal error does.
        if m.writable_error().is_some() && !ended_by_app && d.obs.state != ReadyState::Closed {
            return fail(format!("A-28: the writable ended by itself: {:?}", m.writable_error()));
        }
    }
    let mark = d.log.len();
    d.settle(true)?;
    for rec in &d.log[mark..] {
        check_udp_outputs(&d, &rec.outs, &mut writes, &delivered, &mut read_upto, &mut last_sent, max)?;
    }
    // INV-02: closed, once reached, settles after the flush; every write settles.
    if d.obs.state == ReadyState::Closed {
        if d.obs.closed.is_none() {
            return fail("INV-02: closed pending after the flush");
        }
        if let Some(w) = writes.iter().find(|w| !w.settled) {
            return fail(format!("write {:?} never settled on a closed socket", w.id));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_udp_outputs(
    d: &Driver,
    outs: &[Output],
    writes: &mut [UdpWrite],
    delivered: &[(Bytes, SocketAddr)],
    read_upto: &mut usize,
    last_sent: &mut Option<WriteId>,
    max: usize,
) -> Result<(), String> {
    for out in outs {
        match out {
            Output::Io(IoCommand::SendTo { id, dest, data }) => {
                // UDP-OPEN-04: only after opening, in issue order, one datagram per write, unmodified.
                if d.obs.opened != Some(Ok(())) {
                    return fail(format!("SendTo {id:?} before the socket opened"));
                }
                if last_sent.is_some_and(|last| *id <= last) {
                    return fail(format!("SendTo {id:?} after {last_sent:?}"));
                }
                *last_sent = Some(*id);
                let w = writes.iter().find(|w| w.id == *id).ok_or("SendTo of an unknown write")?;
                if data.as_ptr() != w.data.as_ptr() || data.len() != w.data.len() || data.len() > max {
                    return fail(format!("SendTo {id:?} does not carry its datagram"));
                }
                // UDP-WRITE-14: never to the other family.
                if let Destination::Addr(a) = dest {
                    if !a.is_ipv4() {
                        return fail(format!("SendTo {id:?} to the other family {a}"));
                    }
                }
                if w.refused_with.is_some() {
                    return fail(format!("SendTo {id:?} of a write issued to an ended writable"));
                }
            }
            Output::Event(Event::WriteSettled { id, result }) => {
                let w = writes.iter_mut().find(|w| w.id == *id).ok_or("settled an unknown write")?;
                if w.settled {
                    return fail(format!("INV-11: write {id:?} settled twice"));
                }
                w.settled = true;
                // UDP-WRITE-14: a datagram for the other family is never sent: NetworkError (or
                // AbortError when the opening or the writable was aborted first, or the error that
                // closed the socket first, A-23).
                let closing_error =
                    d.obs.closed.as_ref().and_then(|c| c.as_ref().err()).map(SocketError::kind);
                if w.other_family && w.refused_with.is_none() {
                    match result {
                        Err(e) if matches!(e.kind(), ErrorName::NetworkError | ErrorName::AbortError) => {}
                        Err(e) if Some(e.kind()) == closing_error => {}
                        other => return fail(format!("write {id:?} to the other family settled {other:?}")),
                    }
                }
                // INV-11, UDP-WRITE-10: a write issued to an ended writable rejects with its error.
                if let Some(refusal) = &w.refused_with {
                    match result {
                        Err(e) if e.kind() == refusal.kind() => {}
                        other => {
                            return fail(format!("write {id:?} issued after {refusal:?} settled {other:?}"));
                        }
                    }
                }
            }
            Output::Event(Event::Read(ReadResult::Message(msg))) => {
                // INV-10: each message is exactly one delivered datagram, in order, never twice.
                let pos = delivered[*read_upto..]
                    .iter()
                    .position(|(data, from)| {
                        data.as_ptr() == msg.data.as_ptr()
                            && data.len() == msg.data.len()
                            && *from == msg.from
                    })
                    .ok_or_else(|| format!("INV-10: read {msg:?} matches no later delivered datagram"))?;
                *read_upto += pos + 1;
            }
            Output::Event(Event::Read(ReadResult::Chunk(_))) => return fail("a UDP read gave a chunk"),
            _ => {}
        }
    }
    Ok(())
}

// ==== server =====================================================================================

#[derive(Clone, Debug)]
enum SrvOp {
    Listen,
    Cancel(u8),
    Return(u8),
    Close,
    Answer(bool),
    Accept,
    AcceptFailed,
    Fatal,
    Timeout,
    Junk(u8),
}

fn srv_op() -> impl Strategy<Value = SrvOp> {
    prop_oneof![
        3 => (0u8..8).prop_map(|n| SrvOp::Answer(n != 0)),
        5 => Just(SrvOp::Listen),
        5 => Just(SrvOp::Accept),
        1 => any::<u8>().prop_map(SrvOp::Cancel),
        1 => any::<u8>().prop_map(SrvOp::Return),
        1 => Just(SrvOp::AcceptFailed),
        1 => Just(SrvOp::Close),
        1 => Just(SrvOp::Fatal),
        1 => Just(SrvOp::Timeout),
        1 => any::<u8>().prop_map(SrvOp::Junk),
    ]
}

/// Where a connection is, seen from outside the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    /// Held by the machine (backlog), waiting for a `listen()`.
    Held,
    /// Delivered to the application through a `listen()`.
    App,
    /// Released with `CloseConnection`.
    Released,
}

fn run_server(ops: Vec<SrvOp>) -> Result<(), String> {
    let mut d = Driver::server(server_spec());
    let mut next_listen = 1;
    let mut next_conn = 1;
    let mut waiting: VecDeque<ListenId> = VecDeque::new();
    let mut issued: BTreeSet<ListenId> = BTreeSet::new();
    let mut loc: BTreeMap<ConnId, Loc> = BTreeMap::new();
    for op in ops {
        let input = match op {
            SrvOp::Listen => {
                let id = ListenId(next_listen);
                next_listen += 1;
                issued.insert(id);
                Input::App(AppCommand::Listen { id })
            }
            SrvOp::Cancel(k) => {
                let Some(id) = issued.iter().nth(usize::from(k) % issued.len().max(1)).copied() else {
                    continue;
                };
                Input::App(AppCommand::CancelListen { id })
            }
            SrvOp::Return(k) => {
                let mine: Vec<ConnId> =
                    loc.iter().filter(|(_, l)| **l == Loc::App).map(|(c, _)| *c).collect();
                let Some(conn) = mine.get(usize::from(k) % mine.len().max(1)).copied() else { continue };
                Input::App(AppCommand::ReturnConnection { conn, local: local_addr(), remote: other_addr() })
            }
            SrvOp::Close => Input::App(AppCommand::Close),
            SrvOp::Answer(ok) => match d.peer.answer(ok) {
                Some(input) => input,
                None => continue,
            },
            SrvOp::Accept => {
                if d.obs.state != ReadyState::Open || d.peer.released {
                    continue;
                }
                let conn = ConnId(next_conn);
                next_conn += 1;
                Input::Io(IoEvent::Accepted { conn, local: local_addr(), remote: other_addr() })
            }
            SrvOp::AcceptFailed => Input::Io(IoEvent::AcceptFailed { cause: Cause::ResourcesExhausted }),
            SrvOp::Fatal => Input::Io(IoEvent::Failed { cause: Cause::Other }),
            SrvOp::Timeout => Input::Timeout,
            SrvOp::Junk(i) => {
                let input = junk(i);
                if junk_applies(d.m.kind(), &input) {
                    continue;
                }
                input
            }
        };
        let state_before = d.obs.state;
        let closed_before = state_before == ReadyState::Closed;
        let outs = d.input(input.clone())?;
        // The model's view of where each connection and listen now is.
        match &input {
            Input::Io(IoEvent::Accepted { conn, .. }) => {
                loc.insert(*conn, Loc::Held);
            }
            Input::App(AppCommand::ReturnConnection { conn, .. }) => {
                loc.insert(*conn, Loc::Held);
            }
            Input::App(AppCommand::Listen { id }) => waiting.push_back(*id),
            Input::App(AppCommand::CancelListen { id }) => waiting.retain(|w| w != id),
            _ => {}
        }
        for out in &outs {
            match out {
                Output::Event(Event::ListenSettled { id, result }) => {
                    // SRV-LISTEN-01, SRV-CLOSE-04, SRV-OPEN-02, SRV-ERR-01, SRV-CONNFAIL-01 (A-41,
                    // a rejection's name follows its cause.
                    if let Err(e) = result {
                        let want = match &input {
                            Input::App(AppCommand::Listen { .. }) => ErrorName::InvalidStateError,
                            Input::App(AppCommand::Close) => ErrorName::AbortError,
                            Input::Io(
                                IoEvent::Failed { .. }
                                | IoEvent::ListenFailed { .. }
                                | IoEvent::AcceptFailed { .. },
                            ) => ErrorName::NetworkError,
                            other => return fail(format!("listen {id:?} rejected {e:?} on {other:?}")),
                        };
                        if e.kind() != want {
                            return fail(format!("listen {id:?} rejected {e:?}, expected {want}"));
                        }
                    }
                    // SRV-LISTEN-03, INV-15: served in call order, each once.
                    if waiting.front() != Some(id) {
                        return fail(format!(
                            "listen {id:?} settled out of order (waiting: {waiting:?})\n{}",
                            d.history()
                        ));
                    }
                    waiting.pop_front();
                    if let Ok(acc) = result {
                        // INV-15: one connection, one listen; none after the server closed.
                        if closed_before || d.obs.state == ReadyState::Closed {
                            return fail(format!("INV-15: a closed server delivered {acc:?}"));
                        }
                        if loc.get(&acc.conn) != Some(&Loc::Held) {
                            return fail(format!(
                                "INV-15: {:?} delivered from {:?}",
                                acc.conn,
                                loc.get(&acc.conn)
                            ));
                        }
                        loc.insert(acc.conn, Loc::App);
                    }
                }
                Output::Io(IoCommand::CloseConnection { conn }) => {
                    if loc.get(conn) != Some(&Loc::Held) {
                        return fail(format!("{conn:?} released from {:?}", loc.get(conn)));
                    }
                    loc.insert(*conn, Loc::Released);
                }
                _ => {}
            }
        }
        // SRV-CONNFAIL-01/-02: an unservable connection rejects at most the oldest listen and
        // leaves the server as it was.
        if matches!(input, Input::Io(IoEvent::AcceptFailed { .. })) {
            let settled =
                outs.iter().filter(|o| matches!(o, Output::Event(Event::ListenSettled { .. }))).count();
            if settled > 1 || d.obs.state != state_before {
                return fail(format!("AcceptFailed settled {settled} listens / moved the state"));
            }
        }
        // AMB-40: accept from the OS only while open and a listen() waits.
        let want = d.obs.state == ReadyState::Open && !waiting.is_empty();
        if d.peer.accept_interest != want {
            return fail(format!("AcceptInterest {} but {want} expected", d.peer.accept_interest));
        }
        if d.obs.state == ReadyState::Closed {
            // A-42, SRV-CLOSE-04: no listen() is left pending; no connection is left held.
            if !waiting.is_empty() {
                return fail(format!("listens {waiting:?} pending on a closed server"));
            }
            if let Some((c, _)) = loc.iter().find(|(_, l)| **l == Loc::Held) {
                return fail(format!("{c:?} still held by a closed server"));
            }
        }
    }
    d.settle(true)?;
    Ok(())
}

// ==== the properties =============================================================================

proptest! {
    #![proptest_config(config())]

    // rule: TCP-READ-01, TCP-WRITE-01, TCP-WRITE-04, TCP-WRITE-05, TCP-OPEN-04, TCP-READ-FLOW-01, TCP-READ-CANCEL-05, TCP-WRITE-CLOSE-01, TCP-CLOSE-03, STATE-02, STATE-05, GEN-04, GEN-09, GEN-14, TCP-ATTR-01
    // INV-01, INV-02, INV-03, INV-04, INV-05, INV-06, INV-07, INV-08, INV-09, INV-11, INV-12, INV-17, INV-18, INV-19
    #[test]
    fn tcp_random_sequences_keep_every_invariant(case in tcp_case()) {
        run_tcp(case).map_err(TestCaseError::fail)?;
    }

    // rule: UDP-ATTR-01, STATE-06, UDP-READ-01, UDP-READ-04, UDP-OPEN-04, UDP-WRITE-08, UDP-WRITE-10, UDP-WRITE-14, UDP-MCAST-03, UDP-MCAST-04, UDP-READ-CANCEL-04, UDP-CLOSE-03, EXT-09, GEN-09, GEN-14
    // INV-01, INV-02, INV-03, INV-04, INV-05, INV-06, INV-10, INV-11, INV-12, INV-17, INV-19
    #[test]
    fn udp_random_sequences_keep_every_invariant(case in udp_case()) {
        run_udp(case).map_err(TestCaseError::fail)?;
    }

    // rule: SRV-LISTEN-03, SRV-CLOSE-04, SRV-CLOSE-05, SRV-CONNFAIL-01, SRV-CONNFAIL-02, GEN-11, STATE-06, GEN-09, GEN-14
    // INV-01, INV-02, INV-03, INV-04, INV-05, INV-12, INV-15
    #[test]
    fn server_random_sequences_keep_every_invariant(ops in proptest::collection::vec(srv_op(), 0..80)) {
        run_server(ops).map_err(TestCaseError::fail)?;
    }
}

// ==== regressions found by the properties =======================================================

/// Found by the TCP property (INV-11, A-18): `halfClose()` while a write is queued, then the writer
/// aborts. The queued write rejects AbortError, and so must every later write ("any later write",
/// A-18); they used to reject TypeError because the closed-stream error took precedence over the
/// abort's (fixed in `tcp.rs`, `TcpMachine::write`).
// rule: TCP-WRITE-ABORT-01, ERR-07
#[test]
fn test_halfclosed_writer_abort_later_writes_reject_abort_error() {
    let mut d = Driver::tcp(tcp_spec());
    d.io(IoEvent::Connected { local: local_addr(), remote: peer_addr() });
    d.write(1, b"in flight");
    d.write(2, b"queued");
    d.app(AppCommand::HalfClose);
    d.app(AppCommand::WriterAbort { reason: Some("stop".into()) });
    d.write(3, b"late");
    let outs = d.io(IoEvent::Wrote { id: WriteId(1) });
    type Outcome = Result<(), (ErrorName, Option<String>)>;
    let settled: Vec<(u64, Outcome)> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Event(Event::WriteSettled { id, result }) => {
                Some((id.0, result.clone().map_err(|e| (e.kind(), e.message().map(str::to_string)))))
            }
            _ => None,
        })
        .collect();
    let abort = Err((ErrorName::AbortError, Some("stop".to_string())));
    assert_eq!(settled, [(1, Ok(())), (2, abort.clone()), (3, abort)]);
    assert!(outs.contains(&Output::Io(IoCommand::ShutdownWrite)), "FIN after the in-flight write");
}

//! Shared fixtures for the core's integration tests: checked specs, one wrapper over the three
//! machines, a lifetime [`Observer`] that checks RULES.md §9 and §11 on every output, a plausible
//! [`FakePeer`] that answers a machine's I/O commands, and a [`Driver`] tying them together.
//!
//! Read RULES.md §9 (transition tables) and §11 (invariants) before editing: the observer is the
//! executable form of both.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use tcpudp_core::checks::{self, AllowAll};
use tcpudp_core::options::{
    AcceptedSpec, KeepAliveMode, ServerSpec, TcpOptions, TcpServerOptions, TcpSpec, UdpOptions, UdpSpec,
};
use tcpudp_core::{
    AppCommand, Cause, Deadline, ErrorName, Event, Input, IoCommand, IoEvent, ListenId, OpenSpec, Output,
    ReadResult, ReadyState, SocketError, SocketKind, TcpMachine, TcpServerMachine, TlsCause, UdpMachine,
    WriteId,
};

/// The instant fixtures are built and stimulated at (1 s after the epoch, so "1 µs before" exists).
pub const T0: Instant = Instant::from_micros(1_000_000);

pub use tcpudp_core::Instant;

/// The TCP peer's address (remote of client sockets).
pub fn peer_addr() -> SocketAddr {
    "127.0.0.1:7".parse().expect("literal")
}

/// The local address the fake backend reports for connections and UDP binds.
pub fn local_addr() -> SocketAddr {
    "127.0.0.1:40000".parse().expect("literal")
}

/// Another host's address, for datagrams and accepted connections.
pub fn other_addr() -> SocketAddr {
    "127.0.0.2:6000".parse().expect("literal")
}

/// A multicast group.
pub fn group() -> IpAddr {
    "239.255.0.1".parse().expect("literal")
}

// ---- checked specs ------------------------------------------------------------------------------

/// The options client fixtures use: small queues so flow control and backpressure are reachable.
pub fn tcp_options() -> TcpOptions {
    TcpOptions { readable_high_water_mark: 16, writable_high_water_mark: 16, ..TcpOptions::default() }
}

/// `tcp("127.0.0.1", 7, opts)` as the constructor checks build it.
pub fn tcp_spec_for(remote: &str, opts: &TcpOptions) -> TcpSpec {
    checks::tcp_spec(&mut AllowAll, remote, 7, opts).expect("the constructor checks pass")
}

/// `tcp("127.0.0.1", 7, tcp_options())`.
pub fn tcp_spec() -> TcpSpec {
    tcp_spec_for("127.0.0.1", &tcp_options())
}

/// `tcp("svc.test", 7, tcp_options())`: resolved while opening.
pub fn tcp_name_spec() -> TcpSpec {
    tcp_spec_for("svc.test", &tcp_options())
}

/// A TLS client spec. `AllowAll` has no TLS, so the flag is set after the checks (as a TLS build
/// would have produced it).
pub fn tcp_tls_spec() -> TcpSpec {
    TcpSpec { use_secure_transport: true, ..tcp_spec() }
}

/// `allow_half_open: true` (EXT-01, EXT-02).
pub fn tcp_half_open_spec() -> TcpSpec {
    tcp_spec_for("127.0.0.1", &TcpOptions { allow_half_open: true, ..tcp_options() })
}

/// Keep-alive "frequent-then-sparse" with a 30 s sparse interval: arms the switch timer when open.
pub fn tcp_keep_alive_spec() -> TcpSpec {
    let opts = TcpOptions {
        keep_alive: KeepAliveMode::FrequentThenSparse,
        keep_alive_sparse_interval: Some(30),
        ..tcp_options()
    };
    tcp_spec_for("127.0.0.1", &opts)
}

/// An accepted socket's spec.
pub fn accepted_spec() -> AcceptedSpec {
    AcceptedSpec { local: local_addr(), remote: other_addr(), tcp: server_spec().accepted }
}

/// `udp({remoteAddress: "127.0.0.1", remotePort: 6000, readableCapacity: 2})`.
pub fn udp_options() -> UdpOptions {
    UdpOptions {
        remote_address: Some("127.0.0.1".into()),
        remote_port: Some(6000),
        readable_capacity: 2,
        writable_high_water_mark: 16,
        ..UdpOptions::default()
    }
}

/// The UDP spec of [`udp_options`].
pub fn udp_spec() -> UdpSpec {
    checks::udp_spec(&mut AllowAll, &udp_options()).expect("the constructor checks pass")
}

/// A UDP socket whose default remote is a host name: it resolves after the bind.
pub fn udp_name_spec() -> UdpSpec {
    let opts = UdpOptions { remote_address: Some("svc.test".into()), ..udp_options() };
    checks::udp_spec(&mut AllowAll, &opts).expect("the constructor checks pass")
}

/// `server({localAddress: "127.0.0.1"})` with small queues for its accepted sockets.
pub fn server_spec() -> ServerSpec {
    let opts = TcpServerOptions {
        local_address: Some("127.0.0.1".into()),
        accepted: tcp_options(),
        ..TcpServerOptions::default()
    };
    checks::server_spec(&mut AllowAll, &opts).expect("the constructor checks pass")
}

/// One `Input::Open` of each kind: handling any of them on a built machine is `InvalidStateError`.
pub fn open_inputs() -> Vec<Input> {
    vec![
        Input::Open(Box::new(OpenSpec::Tcp(tcp_spec()))),
        Input::Open(Box::new(OpenSpec::TcpAccepted(accepted_spec()))),
        Input::Open(Box::new(OpenSpec::TcpServer(server_spec()))),
        Input::Open(Box::new(OpenSpec::Udp(udp_spec()))),
    ]
}

// ---- one wrapper over the three machines --------------------------------------------------------

/// Any of the three machines, with the common surface of `machine-shape.md`.
#[derive(Debug)]
pub enum AnyMachine {
    /// A `TCPSocket` (client or accepted).
    Tcp(TcpMachine),
    /// A `UDPSocket`.
    Udp(UdpMachine),
    /// A `TCPServerSocket`.
    Server(TcpServerMachine),
}

impl AnyMachine {
    /// Which table of §9 applies.
    pub fn kind(&self) -> SocketKind {
        match self {
            AnyMachine::Tcp(_) => SocketKind::Tcp,
            AnyMachine::Udp(_) => SocketKind::Udp,
            AnyMachine::Server(_) => SocketKind::TcpServer,
        }
    }

    /// `handle`.
    pub fn handle(&mut self, now: Instant, input: Input) -> Result<(), SocketError> {
        match self {
            AnyMachine::Tcp(m) => m.handle(now, input),
            AnyMachine::Udp(m) => m.handle(now, input),
            AnyMachine::Server(m) => m.handle(now, input),
        }
    }

    /// `poll_output`.
    pub fn poll_output(&mut self) -> Option<Output> {
        match self {
            AnyMachine::Tcp(m) => m.poll_output(),
            AnyMachine::Udp(m) => m.poll_output(),
            AnyMachine::Server(m) => m.poll_output(),
        }
    }

    /// `poll_timeout`.
    pub fn poll_timeout(&self) -> Option<Deadline> {
        match self {
            AnyMachine::Tcp(m) => m.poll_timeout(),
            AnyMachine::Udp(m) => m.poll_timeout(),
            AnyMachine::Server(m) => m.poll_timeout(),
        }
    }

    /// `ready_state`.
    pub fn ready_state(&self) -> ReadyState {
        match self {
            AnyMachine::Tcp(m) => m.ready_state(),
            AnyMachine::Udp(m) => m.ready_state(),
            AnyMachine::Server(m) => m.ready_state(),
        }
    }

    /// `opened`.
    pub fn opened(&self) -> Option<&Result<(), SocketError>> {
        match self {
            AnyMachine::Tcp(m) => m.opened(),
            AnyMachine::Udp(m) => m.opened(),
            AnyMachine::Server(m) => m.opened(),
        }
    }

    /// `closed`.
    pub fn closed(&self) -> Option<&Result<(), SocketError>> {
        match self {
            AnyMachine::Tcp(m) => m.closed(),
            AnyMachine::Udp(m) => m.closed(),
            AnyMachine::Server(m) => m.closed(),
        }
    }

    /// The TCP machine, if this is one.
    pub fn tcp(&self) -> Option<&TcpMachine> {
        match self {
            AnyMachine::Tcp(m) => Some(m),
            _ => None,
        }
    }

    /// The UDP machine, if this is one.
    pub fn udp(&self) -> Option<&UdpMachine> {
        match self {
            AnyMachine::Udp(m) => Some(m),
            _ => None,
        }
    }

    /// Mutation testing: make the machine refuse one row.
    #[cfg(feature = "mutations")]
    pub fn disable_row(&mut self, row: Option<tcpudp_core::Row>) {
        match self {
            AnyMachine::Tcp(m) => m.disable_row(row),
            AnyMachine::Udp(m) => m.disable_row(row),
            AnyMachine::Server(m) => m.disable_row(row),
        }
    }
}

/// Every output queued by the machine, in order.
pub fn drain(m: &mut AnyMachine) -> Vec<Output> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

/// The `(from, to)` of every `StateChanged` in `outs`, in order.
pub fn state_changes(outs: &[Output]) -> Vec<(ReadyState, ReadyState)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(Event::StateChanged { from, to }) => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

/// A short name for an input's variant, for messages and coverage.
pub fn input_name(input: &Input) -> String {
    match input {
        Input::Open(_) => "Open".into(),
        Input::App(cmd) => format!("App({})", first_word(&format!("{cmd:?}"))),
        Input::Io(ev) => format!("Io({})", first_word(&format!("{ev:?}"))),
        Input::Timeout => "Timeout".into(),
        _ => format!("{input:?}"),
    }
}

fn first_word(debug: &str) -> String {
    debug.split(|c: char| !c.is_alphanumeric()).next().unwrap_or_default().to_string()
}

// ---- the lifetime observer ----------------------------------------------------------------------

/// Watches every input and output of one machine over its whole life and checks the rules that
/// hold for every socket kind: the §9 tables and ranks (INV-05, STATE-01..06), settle-once promises
/// (INV-01, INV-02), their order relative to the state (GEN-09, INV-03, INV-04), release before
/// `closed` (GEN-14), no I/O after release (INV-17), idempotent `close()` (INV-12), sticky read
/// endings (INV-06), writes and listens settling once and in order (INV-11, INV-15), and
/// synchronous errors having no effect.
#[derive(Debug)]
pub struct Observer {
    /// Which table applies.
    pub kind: SocketKind,
    /// The state as the `StateChanged` events tell it.
    pub state: ReadyState,
    /// Whether the state has ever been "open".
    pub visited_open: bool,
    /// `opened` as the events tell it.
    pub opened: Option<Result<(), SocketError>>,
    /// `closed` as the events tell it.
    pub closed: Option<Result<(), SocketError>>,
    /// Every transition, in order.
    pub transitions: Vec<(ReadyState, ReadyState)>,
    /// `IoCommand::Close` or `Reset` emitted (the OS socket released).
    pub released: bool,
    /// `App(Close)` calls handled so far.
    pub close_calls: usize,
    /// A `close()` cancelled the readable (called before "closing"/"closed"; later calls do
    /// nothing, TCP-READ-CANCEL-01, so buffered data before the peer's FIN is still read).
    pub close_cut: bool,
    /// `App(Reset)` handled while not closed.
    pub reset_called: bool,
    /// The first `Done` or `Error` a read returned (INV-06).
    pub read_end: Option<ReadResult>,
    /// Write ids settled so far, in order.
    pub settled_writes: Vec<(WriteId, Result<(), SocketError>)>,
    /// Listen ids settled so far.
    pub settled_listens: BTreeSet<ListenId>,
    /// TCP: the socket's `allow_half_open` (A-20, EXT-01).
    pub allow_half_open: bool,
    /// TCP: our FIN was sent (`ShutdownWrite`).
    pub fin_sent: bool,
}

impl Observer {
    /// A machine of `kind` that starts in `initial` (opening, or open for an accepted socket).
    pub fn new(kind: SocketKind, initial: ReadyState) -> Self {
        Observer {
            kind,
            state: initial,
            visited_open: initial == ReadyState::Open,
            opened: None,
            closed: None,
            transitions: Vec::new(),
            released: false,
            close_calls: 0,
            close_cut: false,
            reset_called: false,
            read_end: None,
            settled_writes: Vec::new(),
            settled_listens: BTreeSet::new(),
            allow_half_open: false,
            fin_sent: false,
        }
    }

    /// Checks one `handle` call: its input, its synchronous result and the outputs it produced.
    pub fn observe(
        &mut self,
        input: &Input,
        result: &Result<(), SocketError>,
        outs: &[Output],
    ) -> Result<(), String> {
        if let Err(e) = result {
            // What the spec "throws" has no effect (machine-shape: "with no effect").
            if !outs.is_empty() {
                return Err(format!("handle returned {e:?} but produced {outs:?}"));
            }
        }
        match input {
            Input::Open(_) => match result {
                Err(e) if e.kind() == ErrorName::InvalidStateError => {}
                other => return Err(format!("Input::Open on a built machine gave {other:?}")),
            },
            Input::App(AppCommand::Close) if result.is_ok() => {
                // INV-12, TCP-CLOSE-03, UDP-CLOSE-03, SRV-CLOSE-05: only the first call has effects.
                if self.close_calls > 0 && !outs.is_empty() {
                    return Err(format!("INV-12: close() #{} had effects: {outs:?}", self.close_calls + 1));
                }
                self.close_calls += 1;
                self.close_cut |= !matches!(self.state, ReadyState::Closing | ReadyState::Closed);
            }
            Input::App(AppCommand::Reset)
                if self.kind == SocketKind::Tcp && self.state != ReadyState::Closed =>
            {
                self.reset_called = true;
            }
            _ => {}
        }
        let reads = outs.iter().filter(|o| matches!(o, Output::Event(Event::Read(_)))).count();
        let max_reads = usize::from(matches!(input, Input::App(AppCommand::Read)));
        if reads > max_reads {
            return Err(format!("{reads} Read answers to {}: {outs:?}", input_name(input)));
        }
        for out in outs {
            self.output(out)?;
        }
        let read_done = outs.iter().any(|o| matches!(o, Output::Event(Event::Read(ReadResult::Done))));
        if self.kind == SocketKind::Tcp
            && read_done
            && self.state == ReadyState::Open
            && !self.allow_half_open
        {
            // TCP-READ-CLOSE-02, A-20: reading done after the peer's FIN starts the auto-close.
            return Err("A-20: the read returned done but the socket stayed open".into());
        }
        let moved = outs.iter().any(|o| matches!(o, Output::Event(Event::StateChanged { .. })));
        if self.kind == SocketKind::Tcp
            && self.allow_half_open
            && moved
            && matches!(input, Input::App(AppCommand::Read))
        {
            // EXT-01: with allow_half_open, reading to the peer's FIN changes only the readable.
            return Err("EXT-01: a read changed the state of a half-open socket".into());
        }
        if matches!(input, Input::App(AppCommand::Close)) && result.is_ok() {
            // GEN-10: close() takes effect when called (closing, or closed at once).
            let ok = match self.kind {
                SocketKind::Tcp => matches!(self.state, ReadyState::Closing | ReadyState::Closed),
                _ => self.state == ReadyState::Closed,
            };
            if !ok {
                return Err(format!("close() left the {} socket {}", self.kind, self.state));
            }
        }
        Ok(())
    }

    /// Outputs the machine produced outside `handle` (its constructor).
    pub fn observe_constructor(&mut self, outs: &[Output]) -> Result<(), String> {
        for out in outs {
            self.output(out)?;
        }
        Ok(())
    }

    fn output(&mut self, out: &Output) -> Result<(), String> {
        match out {
            Output::Io(cmd) => self.io(cmd),
            Output::Event(ev) => self.event(ev),
        }
    }

    fn io(&mut self, cmd: &IoCommand) -> Result<(), String> {
        if self.released {
            // INV-17, GEN-14: nothing but releasing a connection a closed server still held.
            if !matches!(cmd, IoCommand::CloseConnection { .. }) {
                return Err(format!("INV-17: {cmd:?} after the socket was released"));
            }
        }
        if matches!(cmd, IoCommand::Close | IoCommand::Reset) {
            self.released = true;
        }
        // TCP-WRITE-CLOSE-02, TCP-WRITE-CLOSE-05, A-51: one FIN at most.
        if matches!(cmd, IoCommand::ShutdownWrite) {
            if self.fin_sent {
                return Err("a second FIN".into());
            }
            self.fin_sent = true;
        }
        // STATE-05, A-19: our FIN goes out only in "halfclosed" or "closing" (open means not sent).
        if matches!(cmd, IoCommand::ShutdownWrite)
            && !matches!(self.state, ReadyState::HalfClosed | ReadyState::Closing)
        {
            return Err(format!("A-19: FIN sent in state {}", self.state));
        }
        Ok(())
    }

    fn event(&mut self, ev: &Event) -> Result<(), String> {
        use ReadyState::*;
        match ev {
            Event::StateChanged { from, to } => {
                let (kind, from, to) = (self.kind, *from, *to);
                if from != self.state {
                    return Err(format!("StateChanged from {from} but the state was {}", self.state));
                }
                // STATE-01..06, UDP-ATTR-01, INV-05: only §9 edges, strictly up the ranks.
                if !tcpudp_core::Row::allows(kind, from, to) {
                    return Err(format!("{kind}: {from} -> {to} is in no §9 row"));
                }
                if to.rank() <= from.rank() {
                    return Err(format!("{kind}: {from} -> {to} does not increase the rank"));
                }
                if from == Closed || to == Opening {
                    return Err(format!("{kind}: {from} -> {to} leaves closed or re-enters opening"));
                }
                if kind != SocketKind::Tcp && matches!(to, HalfClosed | Closing) {
                    return Err(format!("{kind} entered {to}"));
                }
                self.state = to;
                self.visited_open |= to == Open;
                self.transitions.push((from, to));
            }
            Event::Opened(result) => {
                if let Some(first) = &self.opened {
                    return Err(format!("INV-01: opened settled twice ({first:?}, then {result:?})"));
                }
                if self.closed.is_some() {
                    return Err("INV-03: opened settled after closed".into());
                }
                match result {
                    // INV-04, GEN-09: the state change comes first; INV-01: only if it was open.
                    Ok(()) if self.state == Opening || !self.visited_open => {
                        return Err(format!("INV-04: opened resolved in state {}", self.state));
                    }
                    Err(e) if self.visited_open || self.state != Closed => {
                        return Err(format!(
                            "INV-01: opened rejected {e:?} in {} (was open: {})",
                            self.state, self.visited_open
                        ));
                    }
                    _ => {}
                }
                self.opened = Some(result.clone());
            }
            Event::Closed(result) => {
                if let Some(first) = &self.closed {
                    return Err(format!("INV-02: closed settled twice ({first:?}, then {result:?})"));
                }
                // INV-04, GEN-09: "closed" is already the state.
                if self.state != Closed {
                    return Err(format!("INV-04: closed settled in state {}", self.state));
                }
                // GEN-14: resources released no later than `closed`.
                if !self.released {
                    return Err("GEN-14: closed settled before the socket was released".into());
                }
                // INV-03: never before opened; same error name (server close in opening excepted).
                match (&self.opened, result) {
                    (None, _) => return Err("INV-03: closed settled before opened".into()),
                    (Some(Err(o)), Err(c)) if o.kind() == c.kind() => {}
                    (Some(Err(o)), Ok(()))
                        if self.kind == SocketKind::TcpServer
                            && o.kind() == ErrorName::AbortError
                            && self.transitions == [(Opening, Closed)] => {}
                    (Some(Err(o)), c) => {
                        return Err(format!("INV-03: opened rejected {o:?} but closed gave {c:?}"));
                    }
                    (Some(Ok(())), _) => {}
                }
                self.closed = Some(result.clone());
            }
            Event::Read(r) => {
                // INV-06: once done or errored, always the same.
                if let Some(end) = &self.read_end {
                    if r != end {
                        return Err(format!("INV-06: a read gave {r:?} after {end:?}"));
                    }
                }
                if matches!(r, ReadResult::Done | ReadResult::Error(_)) {
                    self.read_end = Some(r.clone());
                }
                // TCP-READ-CANCEL-05, UDP-READ-CANCEL-04: nothing is delivered after close().
                if self.close_cut && matches!(r, ReadResult::Chunk(_) | ReadResult::Message(_)) {
                    return Err(format!("a read delivered {r:?} after close()"));
                }
            }
            Event::WriteSettled { id, result } => {
                // INV-11: in write order (the tests use increasing ids), each once.
                if let Some((last, _)) = self.settled_writes.last() {
                    if id <= last {
                        return Err(format!("INV-11: write {id:?} settled after write {last:?}"));
                    }
                }
                self.settled_writes.push((*id, result.clone()));
            }
            Event::ListenSettled { id, .. } => {
                let first = self.settled_listens.insert(*id);
                if !first {
                    return Err(format!("listen {id:?} settled twice"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks the machine's accessors against what the events said, after a `handle` call.
    pub fn check_machine(&self, m: &AnyMachine) -> Result<(), String> {
        use ReadyState::*;
        if m.ready_state() != self.state {
            return Err(format!("ready_state() {} but the events say {}", m.ready_state(), self.state));
        }
        if m.opened() != self.opened.as_ref() || m.closed() != self.closed.as_ref() {
            return Err(format!(
                "opened()/closed() {:?}/{:?} but the events say {:?}/{:?}",
                m.opened(),
                m.closed(),
                self.opened,
                self.closed
            ));
        }
        match self.state {
            Opening if self.opened.is_some() || self.closed.is_some() => {
                return Err("STATE-01: a promise settled while opening".into());
            }
            // STATE-02: whenever the state is open (or past it without failing), opened resolved.
            Open | HalfClosed | Closing if self.opened != Some(Ok(())) => {
                return Err(format!("STATE-02: {} with opened {:?}", self.state, self.opened));
            }
            // INV-02: closed settles when "closed" is reached; only a UDP flush may delay it,
            // and only until the socket is released.
            Closed if self.closed.is_none() && (self.kind != SocketKind::Udp || self.released) => {
                return Err(format!("INV-02: closed pending in state closed (released: {})", self.released));
            }
            Closed if self.opened.is_none() => return Err("INV-01: closed but opened pending".into()),
            _ => {}
        }
        Ok(())
    }
}

// ---- a plausible backend ------------------------------------------------------------------------

/// A fake backend and peer: remembers the commands a machine emitted that need an answer, answers
/// them on request (success or failure), and tracks what a real peer would know (bytes received,
/// FIN, read interest).
#[derive(Debug, Default)]
pub struct FakePeer {
    /// Commands waiting for an answer, oldest first.
    pub pending: VecDeque<IoCommand>,
    /// TCP bytes the peer received (answered `Wrote`), in order, with their write ids.
    pub received: Vec<(WriteId, Bytes)>,
    /// Ids of UDP datagrams the peer saw sent.
    pub datagrams_sent: Vec<WriteId>,
    /// Our FIN reached the peer (`WriteShutdown` answered) after this many received writes.
    pub fin_after: Option<usize>,
    /// The transport was connected (Connected delivered, or an accepted socket).
    pub connected: bool,
    /// The OS socket was released (Close or Reset).
    pub released: bool,
    /// The last `ReadInterest`.
    pub read_interest: bool,
    /// The last `AcceptInterest`.
    pub accept_interest: bool,
    /// The peer sent its FIN.
    pub peer_fin_sent: bool,
}

impl FakePeer {
    /// Records the machine's outputs.
    pub fn absorb(&mut self, outs: &[Output]) {
        for out in outs {
            let Output::Io(cmd) = out else { continue };
            match cmd {
                IoCommand::ReadInterest(on) => self.read_interest = *on,
                IoCommand::AcceptInterest(on) => self.accept_interest = *on,
                IoCommand::Close | IoCommand::Reset => {
                    // Releasing the socket also ends reading and accepting.
                    self.released = true;
                    self.read_interest = false;
                    self.accept_interest = false;
                    self.pending.clear();
                }
                IoCommand::SetKeepAlive(_) | IoCommand::CloseConnection { .. } => {}
                _ => self.pending.push_back(cmd.clone()),
            }
        }
    }

    /// Forgets the pending command an input answers (the input may come from a test directly).
    pub fn note_input(&mut self, input: &Input) {
        let Input::Io(ev) = input else { return };
        let answers = |cmd: &IoCommand| match (ev, cmd) {
            (IoEvent::Resolved { .. } | IoEvent::ResolveFailed { .. }, IoCommand::Resolve { .. }) => true,
            (IoEvent::Connected { .. } | IoEvent::ConnectFailed { .. }, IoCommand::Connect { .. }) => true,
            (IoEvent::TlsDone { .. } | IoEvent::TlsFailed { .. }, IoCommand::TlsHandshake) => true,
            (IoEvent::Wrote { id }, IoCommand::Send { id: sent, .. }) => id == sent,
            (IoEvent::WriteShutdown, IoCommand::ShutdownWrite) => true,
            (IoEvent::Sent { id } | IoEvent::SendFailed { id, .. }, IoCommand::SendTo { id: sent, .. }) => {
                id == sent
            }
            (IoEvent::Listening { .. } | IoEvent::ListenFailed { .. }, IoCommand::Listen { .. }) => true,
            _ => false,
        };
        if let Some(pos) = self.pending.iter().position(answers) {
            let cmd = self.pending.remove(pos);
            match (ev, cmd) {
                (IoEvent::Connected { .. }, _) => self.connected = true,
                (IoEvent::Wrote { id }, Some(IoCommand::Send { data, .. })) => {
                    self.received.push((*id, data));
                }
                (IoEvent::WriteShutdown, _) => self.fin_after = Some(self.received.len()),
                (IoEvent::Sent { id }, _) => self.datagrams_sent.push(*id),
                _ => {}
            }
        }
    }

    /// The answer to the oldest pending command: success when `ok`, else a failure.
    pub fn answer(&self, ok: bool) -> Option<Input> {
        let cmd = self.pending.front()?;
        Some(Input::Io(answer_to(cmd, ok)?))
    }

    /// Whether a TLS handshake is waiting for its answer (no plaintext flows meanwhile).
    pub fn handshaking(&self) -> bool {
        self.pending.iter().any(|c| matches!(c, IoCommand::TlsHandshake))
    }

    /// Concatenation of the bytes the peer received.
    pub fn received_bytes(&self) -> Vec<u8> {
        self.received.iter().flat_map(|(_, b)| b.iter().copied()).collect()
    }
}

/// The backend's answer to `cmd`: success, or the typical failure.
pub fn answer_to(cmd: &IoCommand, ok: bool) -> Option<IoEvent> {
    Some(match (cmd, ok) {
        (IoCommand::Resolve { .. }, true) => {
            IoEvent::Resolved { addrs: vec!["::1".parse().expect("literal"), peer_addr().ip()] }
        }
        (IoCommand::Resolve { .. }, false) => IoEvent::ResolveFailed { cause: Cause::HostNotFound },
        (IoCommand::Connect { remote, .. }, true) => {
            IoEvent::Connected { local: local_addr(), remote: *remote }
        }
        (IoCommand::Connect { .. }, false) => IoEvent::ConnectFailed { cause: Cause::Refused },
        (IoCommand::TlsHandshake, true) => IoEvent::TlsDone { alpn: None },
        (IoCommand::TlsHandshake, false) => IoEvent::TlsFailed { cause: TlsCause::Protocol },
        (IoCommand::Send { id, .. }, true) => IoEvent::Wrote { id: *id },
        (IoCommand::Send { .. } | IoCommand::ShutdownWrite, false) => IoEvent::Failed { cause: Cause::Reset },
        (IoCommand::ShutdownWrite, true) => IoEvent::WriteShutdown,
        (IoCommand::SendTo { id, .. }, true) => IoEvent::Sent { id: *id },
        (IoCommand::SendTo { id, .. }, false) => IoEvent::SendFailed { id: *id, cause: Cause::Unreachable },
        (IoCommand::Listen { local, .. }, true) => {
            let port = if local.port() == 0 { 40_001 } else { local.port() };
            IoEvent::Listening { local: SocketAddr::new(local.ip(), port) }
        }
        (IoCommand::Listen { .. }, false) => IoEvent::ListenFailed { cause: Cause::AddressInUse },
        _ => return None,
    })
}

// ---- the driver ---------------------------------------------------------------------------------

/// One handled input and what it did to the state.
#[derive(Clone, Debug)]
pub struct StepRecord {
    /// The input.
    pub input: Input,
    /// Its synchronous result.
    pub result: Result<(), SocketError>,
    /// The transitions it caused, in order.
    pub transitions: Vec<(ReadyState, ReadyState)>,
    /// TCP: `allow_half_open` and the peer's FIN already seen while open (EXT-01 sub-state).
    pub half_open: bool,
    /// Its outputs.
    pub outs: Vec<Output>,
}

/// A machine, its observer and its fake peer, with the log of everything handled.
#[derive(Debug)]
pub struct Driver {
    /// The machine.
    pub m: AnyMachine,
    /// The lifetime checks.
    pub obs: Observer,
    /// The backend.
    pub peer: FakePeer,
    /// The last instant handled.
    pub now: Instant,
    /// Every input handled, in order.
    pub log: Vec<StepRecord>,
    /// The input (and the state it was handled in) of the step that broke a rule, if any.
    pub failed_at: Option<(Input, ReadyState)>,
    peer_fin_while_open: bool,
}

impl Driver {
    fn build(m: AnyMachine) -> Self {
        let mut d = Driver {
            obs: Observer::new(m.kind(), m.ready_state()),
            m,
            peer: FakePeer::default(),
            now: T0,
            log: Vec::new(),
            failed_at: None,
            peer_fin_while_open: false,
        };
        d.obs.allow_half_open = d.m.tcp().is_some_and(|m| m.spec().allow_half_open);
        let outs = drain(&mut d.m);
        d.peer.absorb(&outs);
        if let Err(e) = d.obs.observe_constructor(&outs).and_then(|()| d.obs.check_machine(&d.m)) {
            panic!("constructor: {e}");
        }
        d
    }

    /// A `TCPSocket` built at [`T0`].
    pub fn tcp(spec: TcpSpec) -> Self {
        Self::build(AnyMachine::Tcp(TcpMachine::new(T0, spec)))
    }

    /// An accepted `TCPSocket` built at [`T0`].
    pub fn tcp_accepted(spec: AcceptedSpec) -> Self {
        let mut d = Self::build(AnyMachine::Tcp(TcpMachine::accepted(T0, spec)));
        d.peer.connected = true;
        d
    }

    /// A `UDPSocket` built at [`T0`].
    pub fn udp(spec: UdpSpec) -> Self {
        Self::build(AnyMachine::Udp(UdpMachine::new(T0, spec)))
    }

    /// A `TCPServerSocket` built at [`T0`].
    pub fn server(spec: ServerSpec) -> Self {
        Self::build(AnyMachine::Server(TcpServerMachine::new(T0, spec)))
    }

    /// Handles `input` at `now`, checks everything, and returns the outputs; a panic or a broken
    /// rule is an `Err` naming the input and the history.
    pub fn step(&mut self, now: Instant, input: Input) -> Result<Vec<Output>, String> {
        let half_open = self.half_open();
        let before = self.m.ready_state();
        let m = &mut self.m;
        let copy = input.clone();
        let result = catch_unwind(AssertUnwindSafe(|| m.handle(now, copy))).map_err(|p| {
            self.failed_at = Some((input.clone(), before));
            format!("handle panicked on {input:?}: {}\n{}", panic_text(&*p), self.history())
        })?;
        let outs = drain(&mut self.m);
        self.now = now;
        if matches!(input, Input::Io(IoEvent::PeerFin)) && before == ReadyState::Open {
            self.peer_fin_while_open = true;
        }
        self.peer.note_input(&input);
        self.peer.absorb(&outs);
        let checked = self.obs.observe(&input, &result, &outs).and_then(|()| self.obs.check_machine(&self.m));
        self.log.push(StepRecord {
            input: input.clone(),
            result: result.clone(),
            transitions: state_changes(&outs),
            half_open,
            outs: outs.clone(),
        });
        if checked.is_err() {
            self.failed_at = Some((input.clone(), before));
        }
        checked.map_err(|e| format!("{e}\n  after {input:?} -> {result:?}\n{}", self.history()))?;
        Ok(outs)
    }

    /// [`Driver::step`] at the current instant.
    pub fn input(&mut self, input: Input) -> Result<Vec<Output>, String> {
        self.step(self.now, input)
    }

    /// An application command at the current instant; panics on a broken rule (fixtures).
    pub fn app(&mut self, cmd: AppCommand) -> Vec<Output> {
        self.input(Input::App(cmd)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A backend event at the current instant; panics on a broken rule (fixtures).
    pub fn io(&mut self, ev: IoEvent) -> Vec<Output> {
        self.input(Input::Io(ev)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A TCP write of static bytes.
    pub fn write(&mut self, id: u64, data: &'static [u8]) -> Vec<Output> {
        self.app(AppCommand::Write { id: WriteId(id), data: Bytes::from_static(data) })
    }

    /// Answers the oldest pending command (success or failure); `false` when nothing is pending.
    pub fn answer(&mut self, ok: bool) -> Result<bool, String> {
        match self.peer.answer(ok) {
            Some(input) => self.input(input).map(|_| true),
            None => Ok(false),
        }
    }

    /// Fires the earliest armed timer; `false` when none is armed.
    pub fn fire_next_timer(&mut self) -> Result<bool, String> {
        match self.m.poll_timeout() {
            Some(d) => self.step(d.at.max(self.now), Input::Timeout).map(|_| true),
            None => Ok(false),
        }
    }

    /// Lets the backend answer everything (`ok` or failing) and the timers run out, as a
    /// bounded number of rounds; what the machine does meanwhile is checked like any step.
    pub fn settle(&mut self, ok: bool) -> Result<(), String> {
        for _ in 0..64 {
            if self.answer(ok)? {
                continue;
            }
            if !self.fire_next_timer()? {
                return Ok(());
            }
        }
        Err(format!("the machine did not settle\n{}", self.history()))
    }

    /// TCP: `allow_half_open` and the peer's FIN seen while open (the EXT-01 sub-state).
    pub fn half_open(&self) -> bool {
        self.peer_fin_while_open && self.m.tcp().is_some_and(|m| m.spec().allow_half_open)
    }

    /// The inputs handled so far, for failure messages.
    pub fn history(&self) -> String {
        let mut text = String::from("  history:\n");
        for r in &self.log {
            text.push_str(&format!("    {:?} -> {:?} {:?}\n", r.input, r.result, r.transitions));
        }
        text
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "<non-string panic>".into())
}

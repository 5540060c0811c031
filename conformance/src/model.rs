//! The reference model: the invariants of RULES.md §11 checked on a recorded [`Trace`].
//!
//! Read RULES.md §11 before editing. The model sees only what the interpreter recorded through
//! the public API (states, promise outcomes, reads, writes, calls) and, in the simulator, the
//! datagrams the network delivered. Each check names its invariant; a trace with no event an
//! invariant speaks about passes it vacuously (INV-14 speaks only about traces with permission
//! queries; INV-16 about servers closed while connections they accepted live).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::trace::{Observation, Trace, TraceEvent};

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's ID, e.g. `"INV-05"`.
    pub invariant: &'static str,
    /// The index of the event where it shows.
    pub event: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at event {}: {}", self.invariant, self.event, self.message)
    }
}

/// What the model needs besides the trace.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// `closed` must settle within this after `close()` or `reset()` (INV-02: the connect
    /// timeout plus the close timeout, plus the time to send queued datagrams).
    pub close_within: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        let tcp = tcpudp::TcpOptions::default();
        Bounds { close_within: tcp.connect_timeout + tcp.close_timeout + Duration::from_secs(1) }
    }
}

/// Checks every invariant on `trace`; empty when all hold.
pub fn check(trace: &Trace, bounds: Bounds) -> Vec<Violation> {
    let model = Model::build(trace);
    let mut out = Vec::new();
    for (key, sock) in &model.sockets {
        sock.check_states(key, &mut out);
        sock.check_promises(key, &mut out);
        sock.check_reads(key, &mut out);
        sock.check_writes(key, &mut out);
        sock.check_close(key, &model, bounds, &mut out);
        sock.check_calls(key, &model, &mut out);
    }
    model.check_error_names(trace, &mut out);
    model.check_streams(&mut out);
    model.check_datagrams(&mut out);
    model.check_accepts(&mut out);
    check_permissions(trace, &mut out);
    out.sort_by_key(|v| v.event);
    out
}

/// Socket identity: (host, scenario name).
type Key = (String, String);

/// Whether `name` is an error name of the catalog (RULES.md §8).
fn in_catalog(name: &str) -> bool {
    tcpudp_core::ErrorName::ALL.iter().any(|n| n.name() == name)
}

fn rank(state: &str) -> Option<u8> {
    match state {
        "opening" => Some(0),
        "open" => Some(1),
        "halfclosed" => Some(2),
        "closing" => Some(3),
        "closed" => Some(4),
        _ => None,
    }
}

/// What one socket did, with event indexes.
#[derive(Default)]
struct Sock {
    kind: String,
    /// (event, state, time in microseconds)
    states: Vec<(usize, String, u64)>,
    opened: Vec<(usize, String, Option<String>)>,
    closed: Vec<(usize, String, Option<String>, bool)>,
    close_settled: Vec<(usize, String)>,
    calls: Vec<(usize, u64, String)>,
    watched: bool,
    reads: Vec<(usize, Vec<u8>, Option<String>)>,
    end: Option<(usize, String)>,
    after_end: Option<(usize, String)>,
    issued: Vec<(usize, u64, Vec<u8>, Option<String>)>,
    settled: Vec<(usize, Option<u64>, String)>,
    queued: Vec<(usize, u64, u64)>,
    local: Option<String>,
    remote: Option<String>,
    accepted_by: Option<(usize, String)>,
}

struct Model {
    sockets: BTreeMap<Key, Sock>,
    /// (event, at, from, to, bytes, duplicate)
    delivered: Vec<(usize, u64, String, String, usize, bool)>,
    /// The last time of the trace (microseconds) per host.
    end_at: BTreeMap<String, u64>,
    faults: Vec<usize>,
    /// Indexes of the `Step` events (step boundaries).
    steps: Vec<usize>,
    /// The host of each `Step` event, by index.
    step_hosts: BTreeMap<usize, String>,
    /// A fault made the network duplicate datagrams.
    duplicating: bool,
}

impl Model {
    fn build(trace: &Trace) -> Model {
        let mut sockets: BTreeMap<Key, Sock> = BTreeMap::new();
        let mut delivered = Vec::new();
        let mut end_at = BTreeMap::new();
        let mut faults = Vec::new();
        let mut steps = Vec::new();
        let mut step_hosts = BTreeMap::new();
        for (i, TraceEvent { at_micros, host, socket, what }) in trace.events.iter().enumerate() {
            if let Observation::Delivered { bytes, from, to, duplicate_of, .. } = what {
                delivered.push((i, *at_micros, from.clone(), to.clone(), *bytes, duplicate_of.is_some()));
                continue;
            }
            if !host.is_empty() {
                let at = end_at.entry(host.clone()).or_insert(0);
                *at = (*at).max(*at_micros);
            }
            match what {
                Observation::Fault { .. } => faults.push(i),
                Observation::Step { .. } => {
                    steps.push(i);
                    step_hosts.insert(i, host.clone());
                }
                _ => {}
            }
            if socket.is_empty() {
                continue;
            }
            let s = sockets.entry((host.clone(), socket.clone())).or_default();
            match what {
                Observation::Created { socket_kind } => s.kind = socket_kind.clone(),
                Observation::State { state } => s.states.push((i, state.clone(), *at_micros)),
                Observation::Opened { outcome, state } => s.opened.push((i, outcome.clone(), state.clone())),
                Observation::Closed { outcome, state, opened_pending } => {
                    s.closed.push((i, outcome.clone(), state.clone(), *opened_pending))
                }
                Observation::CloseSettled { outcome } => s.close_settled.push((i, outcome.clone())),
                Observation::Call { what } if what == "watch" => s.watched = true,
                Observation::Call { what } => s.calls.push((i, *at_micros, what.clone())),
                Observation::Endpoints { local, remote } => {
                    s.local = Some(local.clone());
                    s.remote = remote.clone();
                }
                Observation::Accepted { server } => s.accepted_by = Some((i, server.clone())),
                Observation::Read { data, from } => s.reads.push((i, data.clone(), from.clone())),
                Observation::ReadDone => s.end = Some((i, "done".into())),
                Observation::ReadError { name } => s.end = Some((i, name.clone())),
                Observation::ReadAfterEnd { outcome } => s.after_end = Some((i, outcome.clone())),
                Observation::WriteIssued { index, data, to } => {
                    s.issued.push((i, *index, data.clone(), to.clone()))
                }
                Observation::WriteSettled { outcome, index } => s.settled.push((i, *index, outcome.clone())),
                Observation::Queued { inbound, high_water_mark } => {
                    s.queued.push((i, *inbound, *high_water_mark))
                }
                _ => {}
            }
        }
        let duplicating = trace.events.iter().any(|e| match &e.what {
            Observation::Fault { description } => {
                description.starts_with("UdpImpair") && !description.contains("duplicate: 0")
            }
            _ => false,
        });
        Model { sockets, delivered, end_at, faults, steps, step_hosts, duplicating }
    }

    /// INV-13: every error carries a catalog name; constructors throw only the four allowed.
    fn check_error_names(&self, trace: &Trace, out: &mut Vec<Violation>) {
        for (i, e) in trace.events.iter().enumerate() {
            let names: Vec<&str> = match &e.what {
                Observation::Opened { outcome, .. }
                | Observation::Closed { outcome, .. }
                | Observation::CloseSettled { outcome }
                | Observation::WriteSettled { outcome, .. } => vec![outcome],
                Observation::ReadError { name } => vec![name],
                Observation::ReadAfterEnd { outcome } if outcome != "done" && outcome != "data" => {
                    vec![outcome]
                }
                Observation::ConstructorError { name, .. } => {
                    if !["SecurityError", "InvalidAccessError", "TypeError", "NotSupportedError"]
                        .contains(&name.as_str())
                    {
                        out.push(violation("INV-13", i, format!("a constructor threw {name}")));
                    }
                    vec![name]
                }
                _ => vec![],
            };
            for name in names {
                if name != "ok" && !in_catalog(name) {
                    out.push(violation("INV-13", i, format!("{name} is not a catalog error name")));
                }
            }
        }
    }

    fn step_host(&self, index: usize) -> Option<&String> {
        self.step_hosts.get(&index)
    }

    /// INV-07, INV-08, INV-09, INV-18: bytes read by one end against bytes written by its peer.
    fn check_streams(&self, out: &mut Vec<Violation>) {
        for ((host, name), reader) in &self.sockets {
            if reader.kind != "tcp" {
                continue;
            }
            let Some((local, remote)) = reader.local.as_ref().zip(reader.remote.as_ref()) else { continue };
            // The peer: the TCP socket whose local address is this one's remote and vice versa.
            let Some((_, writer)) = self.sockets.iter().find(|(_, w)| {
                w.kind == "tcp" && w.local.as_ref() == Some(remote) && w.remote.as_ref() == Some(local)
            }) else {
                continue;
            };
            let read: Vec<u8> = reader.reads.iter().flat_map(|r| r.1.iter().copied()).collect();
            let mut issued = writer.issued.clone();
            issued.sort_by_key(|w| w.1);
            let written: Vec<u8> = issued.iter().flat_map(|w| w.2.iter().copied()).collect();
            let at = reader.reads.last().map_or(0, |r| r.0);
            if !written.starts_with(&read) {
                let diverge = read.iter().zip(&written).position(|(a, b)| a != b).unwrap_or(written.len());
                out.push(violation(
                    "INV-07",
                    at,
                    format!(
                        "{host}/{name} read {} bytes that are not a prefix of the {} its peer wrote (differ at byte {diverge})",
                        read.len(),
                        written.len()
                    ),
                ));
                continue;
            }
            // The writer's first close() or half_close(): bytes queued after it are never sent.
            let fin = writer.calls.iter().find(|c| c.2 == "close" || c.2 == "half_close").map(|c| c.0);
            let Some(fin) = fin else { continue };
            let before: Vec<&(usize, u64, Vec<u8>, Option<String>)> =
                issued.iter().filter(|w| w.0 < fin).collect();
            let before_len: usize = before.iter().map(|w| w.2.len()).sum();
            if read.len() > before_len {
                out.push(violation(
                    "INV-09",
                    at,
                    format!(
                        "{host}/{name} read {} bytes but its peer queued only {before_len} before closing",
                        read.len()
                    ),
                ));
            }
            let all_ok =
                before.iter().all(|w| writer.settled.iter().any(|s| s.1 == Some(w.1) && s.2 == "ok"));
            // The reader's own close() or reset() ends its readable early: not the peer's EOF.
            let clean_end = reader.end.as_ref().is_some_and(|e| e.1 == "done")
                && !reader.calls.iter().any(|c| c.2 == "close" || c.2 == "reset");
            let aborted = writer.calls.iter().any(|c| c.2 == "reset");
            if clean_end && all_ok && !aborted && read.len() != before_len {
                let invariant = if writer.calls.iter().any(|c| c.0 == fin && c.2 == "half_close") {
                    "INV-18"
                } else {
                    "INV-08"
                };
                out.push(violation(
                    invariant,
                    reader.end.as_ref().map_or(at, |e| e.0),
                    format!(
                        "{host}/{name} saw EOF after {} bytes; its peer's writes before closing resolved with {before_len}",
                        read.len()
                    ),
                ));
            }
        }
    }

    /// INV-10: every datagram read equals one datagram sent to it by its source, never more
    /// often than the network delivered it; INV-17 for UDP: nothing sent after "closed".
    fn check_datagrams(&self, out: &mut Vec<Violation>) {
        let udp: Vec<(&Key, &Sock)> = self.sockets.iter().filter(|(_, s)| s.kind == "udp").collect();
        for (key, reader) in &udp {
            let mut seen: BTreeMap<(String, Vec<u8>), usize> = BTreeMap::new();
            for (i, data, from) in &reader.reads {
                let Some(from) = from else { continue };
                let senders: Vec<&Sock> = udp
                    .iter()
                    .filter(|(_, s)| same_endpoint(s.local.as_deref(), from))
                    .map(|(_, s)| *s)
                    .collect();
                let to_me = |to: &Option<String>| match (to, reader.local.as_deref()) {
                    (Some(to), Some(local)) => {
                        same_endpoint(Some(local), to) || port_of(to) == port_of(local)
                    }
                    _ => true,
                };
                let sent = senders
                    .iter()
                    .flat_map(|s| s.issued.iter())
                    .filter(|w| &w.2 == data && to_me(&w.3))
                    .count();
                if sent == 0 {
                    out.push(violation(
                        "INV-10",
                        *i,
                        format!(
                            "{}/{} read a {}-byte datagram from {from} that no socket sent it",
                            key.0,
                            key.1,
                            data.len()
                        ),
                    ));
                    continue;
                }
                // The simulator lists the copies it made; the real harness's proxy only says
                // that it duplicates (a fault event), so then any datagram may come twice.
                let duplicated = self.delivered.iter().any(|d| d.5 && d.2 == *from && d.4 == data.len())
                    || self.duplicating;
                let count = seen.entry((from.clone(), data.clone())).or_insert(0);
                *count += 1;
                if *count > sent * if duplicated { 2 } else { 1 } {
                    out.push(violation(
                        "INV-10",
                        *i,
                        format!(
                            "{}/{} read a datagram from {from} {count} times; it was sent {sent} times",
                            key.0, key.1
                        ),
                    ));
                }
            }
            // INV-17: no datagram leaves a socket once it is "closed" (network times are send
            // times; the state's time is when the interpreter saw it, at or after the change). A
            // graceful close() flushes datagrams queued before it (AMB-13): only sockets closed
            // otherwise are checked.
            if reader.calls.iter().any(|c| c.2 == "close") {
                continue;
            }
            let Some(closed_at) = reader.states.iter().find(|s| s.1 == "closed").map(|s| s.2) else {
                continue;
            };
            if let Some((i, ..)) = self
                .delivered
                .iter()
                .find(|d| d.1 > closed_at && same_endpoint(reader.local.as_deref(), &d.2))
            {
                out.push(violation(
                    "INV-17",
                    *i,
                    format!("{}/{} sent a datagram after closed", key.0, key.1),
                ));
            }
        }
    }

    /// INV-15 (accepted sockets, not after the server closed) and INV-16 (server isolation).
    fn check_accepts(&self, out: &mut Vec<Violation>) {
        for ((host, name), sock) in &self.sockets {
            let Some((i, server)) = &sock.accepted_by else { continue };
            let Some(srv) = self.sockets.get(&(host.clone(), server.clone())) else { continue };
            if let Some(closed) = srv.states.iter().find(|s| s.1 == "closed") {
                if closed.0 < *i {
                    out.push(violation(
                        "INV-15",
                        *i,
                        format!("{host}/{server} delivered {name} after it closed"),
                    ));
                }
            }
            // A server's close never moves a socket it accepted: no state change of the
            // accepted socket is recorded together with the server's close call.
            for call in srv.calls.iter().filter(|c| c.2 == "close") {
                let next_step = self.steps.iter().copied().find(|s| *s > call.0).unwrap_or(usize::MAX);
                let in_step = |i: usize| i > call.0 && i < next_step;
                if let Some(change) = sock.states.iter().find(|s| in_step(s.0) && s.1 == "closed") {
                    // The peer may have closed or reset the connection at the same moment.
                    let peer = self.sockets.values().find(|p| {
                        p.kind == "tcp"
                            && p.local.is_some()
                            && p.local == sock.remote
                            && p.remote == sock.local
                    });
                    let peer_ended = peer.is_none_or(|p| {
                        !p.calls.is_empty() || p.states.iter().any(|s| s.0 < change.0 && s.1 == "closed")
                    });
                    let other_cause = !sock.calls.is_empty()
                        || peer_ended
                        || sock.end.as_ref().is_some_and(|e| e.0 < change.0)
                        || self.faults.iter().any(|f| in_step(*f));
                    if !other_cause {
                        out.push(violation(
                            "INV-16",
                            change.0,
                            format!("{host}/{name} closed when its server {server} closed"),
                        ));
                    }
                }
            }
        }
    }
}

impl Sock {
    /// INV-05: ranks strictly increase along §9; "opening" only first; UDP and servers never
    /// half-closed or closing.
    fn check_states(&self, key: &Key, out: &mut Vec<Violation>) {
        let mut last: Option<u8> = None;
        for (n, (i, state, _)) in self.states.iter().enumerate() {
            let Some(r) = rank(state) else {
                out.push(violation("INV-05", *i, format!("{}/{} in unknown state {state}", key.0, key.1)));
                continue;
            };
            if r == 0 && n > 0 {
                out.push(violation("INV-05", *i, format!("{}/{} back in opening", key.0, key.1)));
            }
            if last.is_some_and(|l| r <= l) {
                out.push(violation(
                    "INV-05",
                    *i,
                    format!("{}/{} moved from rank {last:?} to {state}", key.0, key.1),
                ));
            }
            if (self.kind == "udp" || self.kind == "server") && (r == 2 || r == 3) {
                out.push(violation("INV-05", *i, format!("{} {}/{} shows {state}", self.kind, key.0, key.1)));
            }
            last = Some(r);
        }
    }

    /// INV-01, INV-02, INV-03, INV-04, INV-20, INV-12.
    fn check_promises(&self, key: &Key, out: &mut Vec<Violation>) {
        let who = format!("{}/{}", key.0, key.1);
        let was_open = self.states.iter().any(|s| matches!(s.1.as_str(), "open" | "halfclosed" | "closing"))
            || self.accepted_by.is_some();
        if let Some((first_i, first, _)) = self.opened.first() {
            for (i, outcome, state) in &self.opened {
                if outcome != first {
                    out.push(violation("INV-20", *i, format!("{who} opened seen as {outcome} and {first}")));
                }
                if outcome == "ok" && state.as_deref().is_some_and(|s| rank(s).unwrap_or(0) < 1) {
                    out.push(violation("INV-04", *i, format!("{who} opened resolved while {state:?}")));
                }
            }
            if first == "ok" && !was_open {
                out.push(violation(
                    "INV-01",
                    *first_i,
                    format!("{who} opened resolved but it never was open"),
                ));
            }
            if first != "ok" && was_open {
                out.push(violation(
                    "INV-01",
                    *first_i,
                    format!("{who} opened rejected ({first}) but it was open"),
                ));
            }
        }
        if let Some((first_i, first, ..)) = self.closed.first() {
            for (i, outcome, state, opened_pending) in &self.closed {
                if outcome != first {
                    out.push(violation("INV-20", *i, format!("{who} closed seen as {outcome} and {first}")));
                }
                if state.as_deref().is_some_and(|s| s != "closed") {
                    out.push(violation("INV-04", *i, format!("{who} closed settled while {state:?}")));
                }
                if *opened_pending {
                    out.push(violation("INV-03", *i, format!("{who} closed settled before opened")));
                }
            }
            if let Some((_, opened, _)) = self.opened.first() {
                let server_abort = self.kind == "server" && opened == "AbortError" && first == "ok";
                if opened != "ok" && opened != first && !server_abort {
                    out.push(violation(
                        "INV-03",
                        *first_i,
                        format!("{who} opened rejected with {opened} but closed with {first}"),
                    ));
                }
            }
            for (i, outcome) in &self.close_settled {
                if outcome != first {
                    out.push(violation(
                        "INV-12",
                        *i,
                        format!("{who} close() gave {outcome}, closed {first}"),
                    ));
                }
            }
        }
        let reached_closed = self.states.iter().find(|s| s.1 == "closed");
        if let Some((i, ..)) = reached_closed {
            if self.watched && self.closed.is_empty() {
                out.push(violation("INV-02", *i, format!("{who} reached closed but closed never settled")));
            }
        }
        let outcomes: Vec<&String> = self.close_settled.iter().map(|c| &c.1).collect();
        if outcomes.windows(2).any(|w| w[0] != w[1]) {
            out.push(violation(
                "INV-12",
                self.close_settled[0].0,
                format!("{who} close() calls disagree: {outcomes:?}"),
            ));
        }
    }

    /// INV-06: after the readable ends, it stays ended and nothing more is read; INV-19: the
    /// inbound queue stays within the high-water mark plus one read chunk.
    fn check_reads(&self, key: &Key, out: &mut Vec<Violation>) {
        if let Some((end_i, end)) = &self.end {
            if let Some((i, ..)) = self.reads.iter().find(|r| r.0 > *end_i) {
                out.push(violation(
                    "INV-06",
                    *i,
                    format!("{}/{} read data after its readable ended", key.0, key.1),
                ));
            }
            if let Some((i, again)) = &self.after_end {
                if again != end {
                    out.push(violation(
                        "INV-06",
                        *i,
                        format!("{}/{} readable ended with {end}, then read {again}", key.0, key.1),
                    ));
                }
            }
        }
        const READ_CHUNK: u64 = 64 * 1024;
        for (i, inbound, hwm) in &self.queued {
            if *inbound > hwm + READ_CHUNK {
                out.push(violation(
                    "INV-19",
                    *i,
                    format!("{}/{} holds {inbound} inbound bytes, high-water mark {hwm}", key.0, key.1),
                ));
            }
        }
    }

    /// INV-11: writes settle in issue order; on TCP one rejection rejects every later write
    /// with the same name.
    fn check_writes(&self, key: &Key, out: &mut Vec<Violation>) {
        let mut last: Option<u64> = None;
        let mut rejected: Option<&str> = None;
        for (i, index, outcome) in &self.settled {
            let Some(index) = index else { continue };
            if last.is_some_and(|l| *index < l) {
                out.push(violation(
                    "INV-11",
                    *i,
                    format!("{}/{} write {index} settled after write {last:?}", key.0, key.1),
                ));
            }
            last = Some(last.map_or(*index, |l| l.max(*index)));
            // TypeError is a write issued after the writable was closed (halfClose, close): it
            // is rejected when issued, without erroring the stream, so it is not "later".
            if self.kind == "tcp" && outcome != "TypeError" {
                if let Some(first) = rejected {
                    if outcome != first {
                        out.push(violation(
                            "INV-11",
                            *i,
                            format!(
                                "{}/{} write {index} settled {outcome} after a write rejected {first}",
                                key.0, key.1
                            ),
                        ));
                    }
                } else if outcome != "ok" && outcome != "TypeError" {
                    // TypeError is a write after the writable was closed (halfClose, close):
                    // that rejects the write without erroring the stream.
                    rejected = Some(outcome);
                }
            }
        }
    }

    /// RULES.md §9: the application's own calls move readyState at once: `reset()` to "closed";
    /// `close()` from "opening" to "closed", from "open" or "halfclosed" to "closing" or further;
    /// `halfClose()` from "open" to "halfclosed" or further. The interpreter records states right
    /// after each step, so the move shows before the host's next step.
    fn check_calls(&self, key: &Key, model: &Model, out: &mut Vec<Violation>) {
        if self.kind != "tcp" {
            return;
        }
        for (i, _, what) in &self.calls {
            let before = self.states.iter().rev().find(|s| s.0 < *i).map(|s| s.1.as_str());
            let step_end =
                model.steps.iter().copied().find(|s| *s > *i && model.step_host(*s) == Some(&key.0));
            let after = self
                .states
                .iter()
                .find(|s| s.0 > *i && step_end.is_none_or(|end| s.0 < end))
                .map(|s| s.1.as_str());
            let expected: &[&str] = match (what.as_str(), before) {
                ("reset", Some(b)) if b != "closed" => &["closed"],
                ("close", Some("opening")) => &["closed"],
                ("close", Some("open" | "halfclosed")) => &["closing", "closed"],
                ("half_close", Some("open")) => &["halfclosed", "closing", "closed"],
                _ => continue,
            };
            if !after.is_some_and(|a| expected.contains(&a)) {
                out.push(violation(
                    "§9",
                    *i,
                    format!(
                        "{}/{}: {what}() in {} left readyState {} (expected {})",
                        key.0,
                        key.1,
                        before.unwrap_or("?"),
                        after.unwrap_or(before.unwrap_or("?")),
                        expected.join(" or ")
                    ),
                ));
            }
        }
    }

    /// INV-02: once `close()` or `reset()` was called, "closed" comes within the bound.
    fn check_close(&self, key: &Key, model: &Model, bounds: Bounds, out: &mut Vec<Violation>) {
        let Some((i, at, _)) = self.calls.iter().find(|c| c.2 == "close" || c.2 == "reset") else { return };
        let end = model.end_at.get(&key.0).copied().unwrap_or(0);
        let bound = bounds.close_within.as_micros() as u64;
        if end > at + bound && !self.states.iter().any(|s| s.1 == "closed") {
            out.push(violation(
                "INV-02",
                *i,
                format!("{}/{} not closed {} ms after close()/reset()", key.0, key.1, (end - at) / 1000),
            ));
        }
    }
}

/// INV-14: `hasPermission` never prompts; after `requestPermission` resolved for a target,
/// constructing to it never throws SecurityError; after `hasPermission` said "denied", it does.
/// (The scenarios' policies never change after the start, and store no denials.)
fn check_permissions(trace: &Trace, out: &mut Vec<Violation>) {
    let mut granted: Vec<(&str, &str)> = Vec::new();
    let mut denied: Vec<(&str, &str)> = Vec::new();
    for (i, e) in trace.events.iter().enumerate() {
        match &e.what {
            Observation::Permission { query, target, outcome, prompts_before, prompts_after } => {
                if query == "has" && prompts_after != prompts_before {
                    out.push(violation("INV-14", i, format!("hasPermission({target}) prompted the user")));
                }
                if query == "request" && outcome == "ok" {
                    granted.push((&e.host, target));
                }
                if query == "has" && outcome == "denied" {
                    denied.push((&e.host, target));
                }
            }
            Observation::ConstructorError { name, target: Some(target) }
                if name == "SecurityError" && granted.contains(&(e.host.as_str(), target.as_str())) =>
            {
                out.push(violation(
                    "INV-14",
                    i,
                    format!("constructing to {target} threw SecurityError after a grant"),
                ));
            }
            Observation::Constructed { target } if denied.contains(&(e.host.as_str(), target.as_str())) => {
                out.push(violation(
                    "INV-14",
                    i,
                    format!("constructing to {target} succeeded although denied"),
                ));
            }
            _ => {}
        }
    }
}

fn violation(invariant: &'static str, event: usize, message: String) -> Violation {
    Violation { invariant, event, message }
}

/// Whether `addr` names the socket whose local address is `local` (a wildcard local address
/// matches any address with its port).
fn same_endpoint(local: Option<&str>, addr: &str) -> bool {
    let Some(local) = local else { return false };
    if local == addr {
        return true;
    }
    let (Ok(l), Ok(a)) = (local.parse::<std::net::SocketAddr>(), addr.parse::<std::net::SocketAddr>()) else {
        return false;
    };
    l.port() == a.port() && l.ip().is_unspecified()
}

fn port_of(addr: &str) -> Option<u16> {
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(host: &str, socket: &str, what: Observation) -> TraceEvent {
        TraceEvent { at_micros: 0, host: host.into(), socket: socket.into(), what }
    }

    fn trace(events: Vec<TraceEvent>) -> Trace {
        let mut t = Trace::new("t", "sim", 1);
        t.events = events;
        t
    }

    fn state(s: &str) -> Observation {
        Observation::State { state: s.into() }
    }

    fn invariants(t: &Trace) -> Vec<&'static str> {
        check(t, Bounds::default()).into_iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn a_clean_connection_passes() {
        let tcp = || Observation::Created { socket_kind: "tcp".into() };
        let t = trace(vec![
            event("a", "c", tcp()),
            event("a", "c", state("opening")),
            event("a", "c", state("open")),
            event("a", "c", Observation::Opened { outcome: "ok".into(), state: Some("open".into()) }),
            event(
                "a",
                "c",
                Observation::Endpoints { local: "1.1.1.1:5".into(), remote: Some("2.2.2.2:7".into()) },
            ),
            event("b", "s", tcp()),
            event(
                "b",
                "s",
                Observation::Endpoints { local: "2.2.2.2:7".into(), remote: Some("1.1.1.1:5".into()) },
            ),
            event("a", "c", Observation::WriteIssued { index: 0, data: b"hi".to_vec(), to: None }),
            event("a", "c", Observation::WriteSettled { outcome: "ok".into(), index: Some(0) }),
            event("a", "c", Observation::Call { what: "close".into() }),
            event("b", "s", Observation::Read { data: b"hi".to_vec(), from: None }),
            event("b", "s", Observation::ReadDone),
            event("a", "c", state("closed")),
            event(
                "a",
                "c",
                Observation::Closed {
                    outcome: "ok".into(),
                    state: Some("closed".into()),
                    opened_pending: false,
                },
            ),
        ]);
        assert_eq!(invariants(&t), Vec::<&str>::new());
    }

    #[test]
    fn each_broken_invariant_is_named() {
        let tcp = || Observation::Created { socket_kind: "tcp".into() };
        // INV-05: back to open after closing.
        let t = trace(vec![
            event("a", "c", tcp()),
            event("a", "c", state("closing")),
            event("a", "c", state("open")),
        ]);
        assert_eq!(invariants(&t), ["INV-05"]);
        // INV-03: closed before opened.
        let t = trace(vec![
            event("a", "c", tcp()),
            event("a", "c", state("closed")),
            event(
                "a",
                "c",
                Observation::Closed {
                    outcome: "NetworkError".into(),
                    state: Some("closed".into()),
                    opened_pending: true,
                },
            ),
        ]);
        assert!(invariants(&t).contains(&"INV-03"));
        // INV-07: bytes the peer never wrote.
        let t = trace(vec![
            event("a", "c", tcp()),
            event(
                "a",
                "c",
                Observation::Endpoints { local: "1.1.1.1:5".into(), remote: Some("2.2.2.2:7".into()) },
            ),
            event("b", "s", tcp()),
            event(
                "b",
                "s",
                Observation::Endpoints { local: "2.2.2.2:7".into(), remote: Some("1.1.1.1:5".into()) },
            ),
            event("a", "c", Observation::WriteIssued { index: 0, data: b"hi".to_vec(), to: None }),
            event("b", "s", Observation::Read { data: b"ho".to_vec(), from: None }),
        ]);
        assert_eq!(invariants(&t), ["INV-07"]);
        // INV-06: data after the end.
        let t = trace(vec![
            event("a", "c", tcp()),
            event("a", "c", Observation::ReadDone),
            event("a", "c", Observation::ReadAfterEnd { outcome: "data".into() }),
        ]);
        assert_eq!(invariants(&t), ["INV-06"]);
        // INV-11: out of order, and a success after a rejection on TCP.
        let t = trace(vec![
            event("a", "c", tcp()),
            event("a", "c", Observation::WriteSettled { outcome: "NetworkError".into(), index: Some(0) }),
            event("a", "c", Observation::WriteSettled { outcome: "ok".into(), index: Some(1) }),
        ]);
        assert_eq!(invariants(&t), ["INV-11"]);
        // INV-13: not a catalog name; a constructor throwing NetworkError.
        let t = trace(vec![
            event("a", "c", tcp()),
            event("a", "c", Observation::ConstructorError { name: "NetworkError".into(), target: None }),
        ]);
        assert_eq!(invariants(&t), ["INV-13"]);
        // INV-10: a datagram read twice that was sent once, and no duplicate in the network.
        let udp = || Observation::Created { socket_kind: "udp".into() };
        let t = trace(vec![
            event("a", "u", udp()),
            event("a", "u", Observation::Endpoints { local: "1.1.1.1:5".into(), remote: None }),
            event("b", "v", udp()),
            event("b", "v", Observation::Endpoints { local: "2.2.2.2:7".into(), remote: None }),
            event(
                "a",
                "u",
                Observation::WriteIssued { index: 0, data: b"x".to_vec(), to: Some("2.2.2.2:7".into()) },
            ),
            event("b", "v", Observation::Read { data: b"x".to_vec(), from: Some("1.1.1.1:5".into()) }),
            event("b", "v", Observation::Read { data: b"x".to_vec(), from: Some("1.1.1.1:5".into()) }),
        ]);
        assert_eq!(invariants(&t), ["INV-10"]);
        // INV-14: a query that prompted; a grant followed by SecurityError.
        let permission = |query: &str, outcome: &str, after: u64| Observation::Permission {
            query: query.into(),
            target: "tcp:s:p".into(),
            outcome: outcome.into(),
            prompts_before: 0,
            prompts_after: after,
        };
        let t = trace(vec![event("a", "", permission("has", "prompt", 1))]);
        assert_eq!(invariants(&t), ["INV-14"]);
        let t = trace(vec![
            event("a", "", permission("request", "ok", 1)),
            event(
                "a",
                "c",
                Observation::ConstructorError {
                    name: "SecurityError".into(),
                    target: Some("tcp:s:p".into()),
                },
            ),
        ]);
        assert_eq!(invariants(&t), ["INV-14"]);
        // INV-19: an inbound queue past the mark plus a chunk.
        let t = trace(vec![
            event("a", "c", tcp()),
            event("a", "c", Observation::Queued { inbound: 1 << 20, high_water_mark: 1024 }),
        ]);
        assert_eq!(invariants(&t), ["INV-19"]);
    }
}

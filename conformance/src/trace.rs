//! Traces: what a run observed, in order, with a digest for determinism checks and replay files.

use serde::{Deserialize, Serialize};

/// Version of the trace format.
pub const TRACE_VERSION: u32 = 2;

/// Everything one run observed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// Format version ([`TRACE_VERSION`]).
    pub version: u32,
    /// The scenario's name.
    pub scenario: String,
    /// `"real"` or `"sim"`.
    pub backend: String,
    /// The seed.
    pub seed: u64,
    /// Events in the order observed.
    pub events: Vec<TraceEvent>,
}

/// One observation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Microseconds since the run started (simulated time in the simulator).
    pub at_micros: u64,
    /// The host.
    pub host: String,
    /// The socket's scenario name (or "" for host-level events).
    pub socket: String,
    /// What happened.
    pub what: Observation,
}

/// What was observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
#[allow(missing_docs)] // Field names say what they hold; each variant documents its meaning.
pub enum Observation {
    /// The host starts step `index` of the scenario.
    Step { index: usize },
    /// The host's last event: every step done and the settle time over.
    End,
    /// The scenario made this socket: `"tcp"`, `"server"` or `"udp"`.
    Created { socket_kind: String },
    /// readyState changed (spec spelling).
    State { state: String },
    /// `opened` settled: `"ok"` or the error name; `state` is readyState when the observer ran.
    Opened {
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
    },
    /// `closed` settled; `state` is readyState when the observer ran and `opened_pending` says
    /// whether `opened` was still unsettled then (INV-03).
    Closed {
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        opened_pending: bool,
    },
    /// A `close()` call's own future settled (INV-12).
    CloseSettled { outcome: String },
    /// The application called `close()`, `half_close()` or `reset()` (spec-neutral names).
    Call { what: String },
    /// The socket's addresses once open (`ip:port`).
    Endpoints { local: String, remote: Option<String> },
    /// A server accepted this socket (the event's socket), in `listen()` order.
    Accepted { server: String },
    /// Bytes read (TCP) or one datagram's payload (UDP) and its source for UDP.
    Read { data: Vec<u8>, from: Option<String> },
    /// The readable ended.
    ReadDone,
    /// A read failed with this error name.
    ReadError { name: String },
    /// A read after the readable ended: `"done"`, an error name, or `"data"` (INV-06).
    ReadAfterEnd { outcome: String },
    /// A write was issued: its index on this socket, its bytes and, for UDP, its destination.
    WriteIssued {
        index: u64,
        data: Vec<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// A write settled (`index` as issued, when known).
    WriteSettled {
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u64>,
    },
    /// Inbound bytes queued in the library (TCP), sampled, with the high-water mark (INV-19).
    Queued { inbound: u64, high_water_mark: u64 },
    /// A constructor failed synchronously with this error name (INV-13); `target` names what a
    /// TCP socket was to connect to (`tcp:HOST:PORT`, INV-14).
    ConstructorError {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
    /// A TCP socket was constructed to `target` (`tcp:HOST:PORT`) without throwing (INV-14).
    Constructed { target: String },
    /// A permission query (`"has"`) or request (`"request"`) for `target` and its outcome (a
    /// state, `"ok"` or an error name), with the policy's prompt count before and after.
    Permission { query: String, target: String, outcome: String, prompts_before: u64, prompts_after: u64 },
    /// The network delivered a datagram (simulator), with its network id (INV-10): `from` and
    /// `to` as `ip:port`, and the id of the datagram it duplicates, if it is a copy.
    Delivered {
        id: u64,
        bytes: usize,
        #[serde(default)]
        from: String,
        #[serde(default)]
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duplicate_of: Option<u64>,
    },
    /// A fault was injected.
    Fault { description: String },
    /// An operation of a tolerant scenario (a random campaign case) could not run, e.g. on a
    /// socket that was never accepted; not a failure.
    Skipped { message: String },
    /// A step's expectation failed.
    Failure { message: String },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Trace {
    /// A new, empty trace.
    pub fn new(scenario: &str, backend: &str, seed: u64) -> Self {
        Trace {
            version: TRACE_VERSION,
            scenario: scenario.into(),
            backend: backend.into(),
            seed,
            events: Vec::new(),
        }
    }

    /// A 64-bit FNV-1a digest of the canonical JSON, as 16 hex digits. Equal traces give equal
    /// digests on every machine (no hash-map order, no addresses of memory).
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{:016x}", fnv1a(&json))
    }

    /// The index of the first event where two traces differ, if they do.
    pub fn first_divergence(&self, other: &Trace) -> Option<usize> {
        let common = self.events.iter().zip(&other.events).position(|(a, b)| a != b);
        match common {
            Some(i) => Some(i),
            None if self.events.len() != other.events.len() => {
                Some(self.events.len().min(other.events.len()))
            }
            None => None,
        }
    }
}

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_and_divergence_follow_the_events() {
        let mut a = Trace::new("s", "sim", 1);
        let b = a.clone();
        assert_eq!(a.digest(), b.digest());
        a.events.push(TraceEvent {
            at_micros: 5,
            host: "h".into(),
            socket: "s".into(),
            what: Observation::State { state: "open".into() },
        });
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.first_divergence(&b), Some(0));
        assert_eq!(a.first_divergence(&a.clone()), None);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}

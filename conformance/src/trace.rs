//! Traces: what a run observed, in order, with a digest for determinism checks and replay files.

use serde::{Deserialize, Serialize};

/// Version of the trace format.
pub const TRACE_VERSION: u32 = 1;

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
    /// readyState changed (spec spelling).
    State { state: String },
    /// `opened` settled: `"ok"` or the error name.
    Opened { outcome: String },
    /// `closed` settled.
    Closed { outcome: String },
    /// Bytes read (TCP) or one datagram's payload (UDP) and its source for UDP.
    Read { data: Vec<u8>, from: Option<String> },
    /// The readable ended.
    ReadDone,
    /// A read failed with this error name.
    ReadError { name: String },
    /// A write settled.
    WriteSettled { outcome: String },
    /// The network delivered a datagram (simulator), with its network id (INV-10).
    Delivered { id: u64, bytes: usize },
    /// A fault was injected.
    Fault { description: String },
    /// A step's expectation failed.
    Failure { message: String },
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

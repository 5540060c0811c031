//! Differential fidelity (DESIGN §8): a fault-free scenario runs in the simulator (on a
//! fixed-latency link) and on real sockets, and what the application saw must be the same. The
//! traces differ in addresses, ports and times, so each is reduced to a [`Projection`]:
//! addresses as role names, ports as first-seen ordinals, TCP bytes concatenated per socket, UDP
//! datagrams in order per socket, readyState sequences, promise outcomes by error name.

use std::collections::BTreeMap;

use crate::interpreter;
use crate::scenario::{Action, Scenario};
use crate::trace::{Observation, Trace};
use crate::world::BackendChoice;

/// The simulator's link latency for differential runs (fixed: no natural reordering).
pub const FIXED_LATENCY_MS: u64 = 1;

/// What one socket showed the application.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketView {
    /// readyState changes, in order.
    pub states: Vec<String>,
    /// `opened` outcomes (each observer's, repeats folded).
    pub opened: Vec<String>,
    /// `closed` outcomes (repeats folded).
    pub closed: Vec<String>,
    /// TCP: every byte read, concatenated.
    pub bytes: Vec<u8>,
    /// UDP: every datagram read, in order, with its source's role.
    pub datagrams: Vec<(Vec<u8>, String)>,
    /// How the readable ended: "done" or an error name.
    pub read_end: Option<String>,
    /// Write outcomes in issue order.
    pub writes: Vec<String>,
    /// `close()` outcomes.
    pub close: Vec<String>,
}

/// A trace reduced to what must agree across backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Projection {
    /// Per socket (`host/name`).
    pub sockets: BTreeMap<String, SocketView>,
}

impl Projection {
    /// The projection of `trace`.
    pub fn of(trace: &Trace) -> Projection {
        // Roles by address: each socket's local address names it.
        let mut roles: BTreeMap<String, String> = BTreeMap::new();
        for e in &trace.events {
            if let Observation::Endpoints { local, .. } = &e.what {
                roles.insert(local.clone(), format!("{}/{}", e.host, e.socket));
            }
        }
        let mut ordinals: BTreeMap<u16, usize> = BTreeMap::new();
        let mut role_of = |addr: &str| -> String {
            if let Some(role) = roles.get(addr) {
                return role.clone();
            }
            let port = addr.parse::<std::net::SocketAddr>().map(|a| a.port()).unwrap_or(0);
            // A wildcard-bound socket is named by its port.
            if let Some((_, role)) = roles.iter().find(|(local, _)| {
                local
                    .parse::<std::net::SocketAddr>()
                    .is_ok_and(|l| l.ip().is_unspecified() && l.port() == port)
            }) {
                return role.clone();
            }
            let next = ordinals.len();
            format!("port#{}", ordinals.entry(port).or_insert(next))
        };
        let mut p = Projection::default();
        for e in &trace.events {
            if e.socket.is_empty() {
                continue;
            }
            let v = p.sockets.entry(format!("{}/{}", e.host, e.socket)).or_default();
            let push_folded = |list: &mut Vec<String>, item: &str| {
                if list.last().map(String::as_str) != Some(item) {
                    list.push(item.to_owned());
                }
            };
            match &e.what {
                Observation::State { state } => v.states.push(state.clone()),
                Observation::Opened { outcome, .. } => push_folded(&mut v.opened, outcome),
                Observation::Closed { outcome, .. } => push_folded(&mut v.closed, outcome),
                Observation::Read { data, from: None } => v.bytes.extend_from_slice(data),
                Observation::Read { data, from: Some(from) } => {
                    v.datagrams.push((data.clone(), role_of(from)))
                }
                Observation::ReadDone => v.read_end = Some("done".into()),
                Observation::ReadError { name } => v.read_end = Some(name.clone()),
                Observation::WriteSettled { outcome, .. } => v.writes.push(outcome.clone()),
                Observation::CloseSettled { outcome } => v.close.push(outcome.clone()),
                _ => {}
            }
        }
        p
    }

    /// The first socket whose views differ, described; `None` when equal.
    pub fn difference(&self, other: &Projection) -> Option<String> {
        let names: std::collections::BTreeSet<&String> =
            self.sockets.keys().chain(other.sockets.keys()).collect();
        for name in names {
            let (a, b) = (self.sockets.get(name), other.sockets.get(name));
            if a != b {
                return Some(format!("{name}: {a:?} vs {b:?}"));
            }
        }
        None
    }
}

/// Whether `scenario` is fault-free (no fault step of any kind).
pub fn fault_free(scenario: &Scenario) -> bool {
    !scenario.steps.iter().any(|s| matches!(s.action, Action::Fault(_)))
}

/// Runs a fault-free scenario on both backends (the simulator on a fixed-latency link) and
/// compares projections: `Err` names the first difference or a failed run.
pub fn check(scenario: &Scenario) -> Result<(), String> {
    let mut sim = scenario.clone();
    sim.fixed_latency_ms = Some(FIXED_LATENCY_MS);
    let (sim_trace, sim_outcome) = interpreter::run(&sim, BackendChoice::Sim);
    sim_outcome.map_err(|e| format!("sim: {e}"))?;
    let (real_trace, real_outcome) = interpreter::run(scenario, BackendChoice::Real);
    real_outcome.map_err(|e| format!("real: {e}"))?;
    match Projection::of(&sim_trace).difference(&Projection::of(&real_trace)) {
        None => Ok(()),
        Some(d) => Err(format!("sim and real differ at {d}")),
    }
}

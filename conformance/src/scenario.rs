//! Scenarios as data (DESIGN §8): a seed, a topology and steps at simulated offsets. Serialized as
//! JSON for replay files; the interpreter that runs a scenario against any `Network` builds on it.

use serde::{Deserialize, Serialize};
use tcpudp::{TcpOptions, TcpServerOptions, UdpOptions};

/// Version of the scenario format; bump when an old file would mean something else.
pub const SCENARIO_VERSION: u32 = 1;

/// One scenario: what to build, what to do, what to expect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    /// Format version ([`SCENARIO_VERSION`]).
    pub version: u32,
    /// A unique, descriptive name.
    pub name: String,
    /// The rule IDs of RULES.md this scenario checks.
    pub rules: Vec<String>,
    /// The seed (simulation, fault draws).
    pub seed: u64,
    /// Hosts of the world.
    pub hosts: Vec<String>,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// A random campaign case: an operation that cannot run (a socket never accepted, a
    /// constructor that throws) is recorded as an observation, not a failure; the reference
    /// model is the oracle.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tolerant: bool,
    /// Milliseconds the world keeps running after the last step, so background observers
    /// (`watch`, `read_all`, unawaited writes) see their promises settle.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub settle_ms: u64,
    /// Simulator only: every link has this fixed latency in milliseconds instead of turmoil's
    /// random 0–100 ms (the differential fidelity check uses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_latency_ms: Option<u64>,
    /// Every host's permission policy: `"allow_all"` (the default), `"deny_all"`,
    /// `"prompt:grant"` / `"prompt:deny"` (nothing decided; prompts answered so), or
    /// `"allow:RULE,RULE"` (the rule grammar of `Policy::allow_list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// One step: an operation through the public API or a fault, at a simulated offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Milliseconds after the previous step (simulated time in the simulator).
    pub after_ms: u64,
    /// The host that performs it.
    pub host: String,
    /// What it does.
    pub action: Action,
}

/// Operations and expectations. Sockets are named by the scenario; ports travel through
/// published keys so real runs never race for a fixed port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
#[allow(missing_docs)] // Field names say what they hold; each variant documents its meaning.
pub enum Action {
    /// A `TCPServerSocket`, its port published under `publish` once open (unless `wait` is false:
    /// then nothing is awaited or published).
    Listen {
        server: String,
        options: TcpServerOptions,
        publish: String,
        #[serde(default = "yes")]
        wait: bool,
    },
    /// `listen()` on `server`; the accepted socket is named `socket`.
    Accept { server: String, socket: String },
    /// A `TCPSocket` to `to_host` at the port published under `port_key`.
    Connect { socket: String, to_host: String, port_key: String, options: TcpOptions },
    /// A `UDPSocket`, its port published under `publish` once open (unless `wait` is false).
    Bind {
        socket: String,
        options: UdpOptions,
        publish: String,
        #[serde(default = "yes")]
        wait: bool,
    },
    /// A write of bytes (TCP) or a datagram to the socket's default destination (UDP). `data` may
    /// be any JSON value: anything but a byte array rejects `TypeError` (GEN-07, the dynamic layer).
    ///
    /// With `wait: false` the step does not await the write's promise: its settlement is
    /// recorded whenever it happens.
    Write {
        socket: String,
        data: serde_json::Value,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        wait: bool,
    },
    /// A UDP datagram to `to_host` at the port published under `port_key`.
    SendTo {
        socket: String,
        to_host: String,
        port_key: String,
        data: Vec<u8>,
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        wait: bool,
    },
    /// Observes `opened` and `closed` of `socket` in the background (records each settlement
    /// with the readyState seen by the observer).
    Watch { socket: String },
    /// Reads `socket` in the background until its readable ends, then once more (INV-06).
    ReadAll { socket: String },
    /// Accepts every connection of `server` in the background, naming them `prefix0`,
    /// `prefix1`, …, each watched and read to the end.
    AcceptAll { server: String, prefix: String },
    /// Reads until `bytes` bytes arrived (TCP) or one datagram (UDP), or end of stream.
    Read { socket: String, bytes: usize, expect: Option<Vec<u8>> },
    /// Reads to the end of the stream.
    ReadToEnd { socket: String },
    /// `halfClose()`.
    HalfClose { socket: String },
    /// `close()`.
    Close { socket: String },
    /// `reset()`.
    Reset { socket: String },
    /// Awaits `opened`; `expect` is `"ok"` or an error name.
    AwaitOpened { socket: String, expect: String },
    /// Awaits `closed`; `expect` is `"ok"` or an error name.
    AwaitClosed { socket: String, expect: String },
    /// Checks readyState (spec spelling).
    ExpectState { socket: String, state: String },
    /// `start_tls()` on an open plain TCP socket (EXT-07); `expect` is `"ok"` or an error name.
    /// Awaited unless `wait` is false: then it settles in the background (a mismatch still
    /// fails the run), so the peer's side can start in a later step. The host's TLS context is
    /// its network's: the default trusts the webpki roots, [`Action::UseTls`] the test CA.
    StartTls {
        socket: String,
        expect: String,
        #[serde(default = "yes")]
        wait: bool,
    },
    /// The host's network gets the conformance test PKI (`conformance/tls/`): trust in its CA
    /// and the name `tls.test` as SNI and verified name; with `serve`, also the `tls.test` leaf
    /// as server credentials.
    UseTls { serve: bool },
    /// A fault.
    Fault(Fault),
    /// Nothing: the step only waits its `after_ms` (a fault taken out of a case keeps its time).
    Pause,
    /// `navigator.tcpPermission.hasPermission` (`request: false`) or `requestPermission`
    /// (`request: true`) for connections to `to_host` at the port published under `port_key`.
    TcpPermission { to_host: String, port_key: String, request: bool },
    /// `navigator.tcpServerPermission.requestPermission()` with default options (what a
    /// `listen` with default options needs).
    TcpServerPermission,
}

/// Faults a harness may inject (its capability table says which it can).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
#[non_exhaustive]
#[allow(missing_docs)] // Field names say what they hold; each variant documents its meaning.
pub enum Fault {
    /// Both directions between two hosts cut.
    Partition { a: String, b: String },
    /// One direction cut.
    PartitionOneway { from: String, to: String },
    /// Cuts repaired.
    Repair { a: String, b: String },
    /// The host goes silent.
    CrashHost { host: String },
    /// The host's process ends (FIN, or RST with unread data).
    KillProcess { host: String },
    /// The host comes back.
    Restart { host: String },
    /// One connection reset on both ends.
    ResetConnection { socket: String },
    /// TCP segments between two hosts lost `times` times in a row.
    TcpLoss { a: String, b: String, times: u32 },
    /// UDP datagrams from `a` to `b` impaired (per-mille rates; a reordered datagram is held
    /// back 250 ms so later ones overtake it). Replaces the link's earlier UDP impairment.
    UdpImpair { a: String, b: String, loss: u32, duplicate: u32, reorder: u32 },
    /// Everything between two hosts, both ways, takes `ms` longer: TCP chunks and UDP datagrams
    /// through the real harness's proxy. In the simulator only UDP datagrams are delayed (TCP
    /// latency is turmoil's, fixed when the simulation is built), replacing the links' earlier
    /// UDP impairments.
    Delay { a: String, b: String, ms: u64 },
    /// Every link of a host's network drops (the library's own fault hook).
    DropLink { host: String },
    /// Sockets the host creates from now on stay "opening" (library hook).
    HoldOpen { host: String },
    /// Held sockets finish opening.
    ReleaseOpen { host: String },
    /// The host's next UDP bind or server listen fails (address in use).
    FailBind { host: String },
    /// The host's next connect is refused.
    FailConnect { host: String },
    /// Data the host receives from now on fails conversion.
    FailConversion { host: String },
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Scenario {
    /// Parses a scenario from JSON.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The scenario as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // rule: DICT-GEN-01
    #[test]
    fn scenarios_round_trip_through_json_with_defaults_for_omitted_options() {
        let s = Scenario {
            version: SCENARIO_VERSION,
            name: "echo".into(),
            rules: vec!["TCP-OPEN-01".into()],
            seed: 7,
            hosts: vec!["server".into(), "client".into()],
            steps: vec![Step {
                after_ms: 0,
                host: "client".into(),
                action: Action::Connect {
                    socket: "c".into(),
                    to_host: "server".into(),
                    port_key: "echo".into(),
                    options: TcpOptions::default(),
                },
            }],
            tolerant: false,
            settle_ms: 0,
            fixed_latency_ms: None,
            policy: None,
        };
        let back = Scenario::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        let sparse = r#"{"version":1,"name":"x","rules":[],"seed":1,"hosts":["a"],"steps":[
            {"after_ms":0,"host":"a","action":{"op":"connect","socket":"c","to_host":"a","port_key":"p","options":{}}}]}"#;
        let parsed = Scenario::from_json(sparse).unwrap();
        match &parsed.steps[0].action {
            Action::Connect { options, .. } => assert_eq!(options, &TcpOptions::default()),
            other => panic!("{other:?}"),
        }
    }
}

//! The simulated backend of `tcpudp`: the [`Backend`](tcpudp::backend::Backend) on turmoil 0.7.2,
//! plus the fault layer turmoil lacks, and the [`Simulation`] harness worlds are built with.
//!
//! Read DESIGN §7 before editing: it lists turmoil's measured flaws and what the adapter does
//! about each.
//!
//! ```
//! use std::time::Duration;
//! use tcpudp_net_sim::{LinkProfile, SimBuilder, TcpLoss};
//!
//! let mut sim = SimBuilder::new(1).link(LinkProfile::fixed(Duration::from_millis(10))).build();
//! sim.host("server", || async {
//!     let net = tcpudp_net_sim::network("server", tcpudp::Policy::allow_all())?;
//!     # drop(net);
//!     std::future::pending::<turmoil::Result>().await
//! })?;
//! sim.client("client", async {
//!     let net = tcpudp_net_sim::network("client", tcpudp::Policy::allow_all())?;
//!     # drop(net);
//!     Ok(())
//! })?;
//! // Faults go through the harness (from `at`, or from host software via `faults()`).
//! sim.at(Duration::from_secs(1), |f| f.tcp_loss("client", "server", TcpLoss::Times(3)));
//! let report = sim.run()?;
//! println!("{:016x}", report.digest);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Simulations must be built with `--cfg tokio_unstable` (this workspace's `.cargo/config.toml`
//! sets it): only then does turmoil seed each host's tokio scheduler, and runs repeat exactly.
//! The harness seeds turmoil from its own seed (`hash(seed, "turmoil")`); a plain
//! `turmoil::Sim` must be given a seed (`Builder::rng_seed`), else its latencies come from the
//! OS RNG.
//!
//! # The model
//!
//! turmoil carries TCP bytes (establishment, order, its 64-segment flow-control window,
//! latency) and hosts, runtimes, time and DNS. Over it, per simulation, the adapter keeps a
//! link-state table (per direction: partitioned? TCP loss? UDP impairments?) and host states
//! (crashed? incarnation), which every adapter timer consults:
//!
//! - each TCP end has a small "kernel" task: a segment enters turmoil only when a transmission
//!   attempt gets through the table; failed attempts wait 200 ms, doubling, capped at 120 s;
//!   15 consecutive losses of one segment end the connection with `TimedOut` on both ends
//!   (after 804.6 s); keep-alive probes are timers plus a look at the table and the peer;
//! - UDP between library sockets is delivered by the adapter itself (latency drawn from the
//!   link profile), into an emulated byte-bounded receive buffer that counts its tail drops;
//! - randomness comes from the seed, one stream per purpose and directed link
//!   (`hash(seed, "udp-loss", "a>b")`, …, see [`SimRng`]).
//!
//! Plain `turmoil::net` sockets interoperate with library sockets (they are the test "peers"
//! of RULES.md §0.4). Faults act on what library sockets send, and on UDP arriving at them.
//!
//! # Fidelity
//!
//! Status: **modelled** (behaves as on Linux), **approximated** (same observable outcome, a
//! simpler mechanism or timing), **recorded** (stored and read back by `diag()`, no effect),
//! **not modelled**.
//!
//! | Option or behaviour | Status | Default in the simulator |
//! |---|---|---|
//! | TCP connect, accept, data, FIN, end of stream | modelled (turmoil's bytes, unsplit stream; the FIN waits for a free receive slot) | |
//! | TCP flow control | approximated: turmoil's window of 64 segments of any size, plus 64 queued segments per sending end | |
//! | Connect refused (nothing listening) | modelled: `Refused` after one trip | |
//! | Connect into a partition, or to a crashed host | modelled: SYNs at 0, 1, 3, 7, 15, 31, 63 s; `TimedOut` at 127 s (the core's connect timeout, 127 s, fires then too) | |
//! | Connect timeout, close timeout | the core's timers, on simulated time | 127 s, 60 s |
//! | Listener backlog | modelled: accept queue of backlog + 1 (capped at 4,096 + 1); a SYN to a full queue is dropped and retried on the SYN schedule; never a panic, never a refusal. At most 48 SYNs of library clients in flight per listener (a turmoil limit) | backlog 1,024 (the core's) |
//! | Connect to an address no host has, or to a multicast group | `Unreachable` at once | |
//! | A refused connect | turmoil keeps its stream socket registered (one ephemeral port leaked per refusal) | |
//! | Client local address and port (`local` of `connect`) | not modelled: the host address (loopback for loopback remotes) and the next ephemeral port | |
//! | TCP segment loss ([`TcpLoss`]) | modelled as applications see it: retransmission delay, RTO 200 ms doubling to 120 s, `TimedOut` on both ends after 15 losses of one segment | none |
//! | Partition, one-way partition | modelled: TCP data waits (retransmitted on schedule) and is delivered at the first retransmission after repair, unless the budget runs out first; a one-way partition loses acknowledgements (data arrives, the sender retransmits until the budget runs out); UDP datagrams are dropped at send; segments already inside turmoil (sent before the partition) still arrive | none |
//! | `reset()` | modelled towards library peers (they get `ConnectionReset` if reachable); towards a plain turmoil peer approximated by turmoil's drop (FIN, or RST with unread data) | |
//! | `reset_connection` fault | modelled on every library end of the connection; a plain turmoil peer is not reset | |
//! | Close with unread data | modelled: RST | |
//! | Close with queued data | modelled: the end flushes as an orphan (data, then FIN) | |
//! | `crash_host` | modelled: silent (no FIN, no RST); peers time out; after `restart` a peer's next segment or probe gets RST | |
//! | `kill_process` | modelled: the host's sockets freeze at the call (turmoil's teardown runs the library's close-on-drop, which a killed process could not), then each connection closes with FIN, or RST where unread data sat in the simulated kernel; segments still queued for retransmission are discarded; connects to the host are refused until `restart` | |
//! | `restart` | modelled: the software starts again (running software is killed first); after a crash the host has a new incarnation | |
//! | Keep-alive probing | modelled: Linux's `tcp_keepalive_timer` (probes only on an idle connection; switching it on arms the timer one idle time ahead, a new idle time re-arms it from the last segment received, the probe count survives the `frequent-then-sparse` switch; `TimedOut` after `count` unanswered probes, with an RST to a reachable peer); approximated: a healthy peer's answer takes no time | off; idle 7,200 s, interval 75 s, count 9 where the OS default applies |
//! | `noDelay` | recorded (no Nagle model) | true |
//! | TCP and UDP buffer sizes | recorded; the UDP receive buffer size also bounds the emulated buffer (twice the request, as Linux) | UDP receive buffer 212,992 bytes |
//! | `addressReuse`, TCP | modelled: a listener may bind a port whose earlier listener closed while its connections linger; a second live listener on a port fails, whatever the flag; no TIME_WAIT | true |
//! | `addressReuse`, UDP | modelled: several sockets on one port when all asked for reuse (or their addresses do not overlap); unicast goes to the best address match, then the most recently bound; a group datagram to every member | true |
//! | Binding the host's own address | modelled for UDP (loopback traffic does not reach it); TCP listeners bind the wildcard | |
//! | UDP receive queue | modelled: byte-bounded emulated buffer (payload + 768 bytes per datagram), tail drop, counted in `dropped_total` | |
//! | UDP datagram size | modelled: 65,507 bytes (IPv4) / 65,527 (IPv6); larger sends fail | |
//! | UDP loss, duplication, reordering, delay, jitter ([`UdpImpairment`]) | modelled per datagram between library sockets; towards plain turmoil sockets loss, duplication and extra delay | none |
//! | UDP to an address no host has, or to an unbound port | lost, as on a real network (no ICMP) | |
//! | Multicast membership | modelled by the adapter, per socket: only sockets that joined and are bound to the wildcard receive a group | |
//! | Multicast loopback | modelled: the *sender's* flag decides whether members on its own host receive | false |
//! | Multicast TTL, interface | recorded (the interface must be one of the host's) | TTL 1 |
//! | Multicast from plain turmoil senders | approximated: delivered to library sockets as unicast (turmoil does not tell the destination) | |
//! | Traffic inside one host | never crosses a link: no latency (UDP) or turmoil's one tick (TCP), no faults | |
//! | IPv6 | modelled: turmoil's `fe80::/64` addresses, one family per simulation | IPv4 |
//! | Host names | turmoil's DNS, read without registering names; `localhost` is loopback | |
//! | Link latency ([`LinkProfile`]) | TCP: turmoil's; UDP between library sockets: the adapter's draw from the same distribution | 0–100 ms (turmoil's), or `fixed` |
//! | Simulation duration | the harness's limit: the one set, else the latest armed adapter timer (at least 127 s) + 60 s | |
//! | Time | exact for timers whatever the step; messages between hosts move on step edges (± one step) | step 1 ms |
//!
//! In a plain `turmoil::Sim` (no harness) everything above works except host-level faults, the
//! UDP latency follows the default profile whatever the `Builder` says, and turmoil's 64-datagram
//! socket queues may drop datagrams the adapter cannot count (the harness raises them).
#![warn(missing_docs, unreachable_pub)]

mod backend;
mod harness;
mod host;
mod link;
mod net;
pub mod rng;
mod tcp;
mod trace;
mod udp;

use std::time::Duration;

pub use backend::SimBackend;
pub use harness::{
    tokio_unstable, FaultError, SimBuilder, SimError, SimFaults, SimReport, Simulation, DEFAULT_GRACE,
};
pub use link::{LinkProfile, TcpLoss, UdpImpairment};
pub use net::TRACE_LINES_KEPT;
pub use rng::SimRng;
pub use tcp::{backoff, RETRANSMISSION_BUDGET, RTO_INITIAL, RTO_MAX, SYN_GIVE_UP, SYN_SCHEDULE};
pub use udp::{DEFAULT_UDP_RECEIVE_BUFFER, UDP_DATAGRAM_OVERHEAD};

/// The largest IPv4 UDP payload: 65,535 − 20 (IP header) − 8 (UDP header).
pub const MAX_DATAGRAM_V4: usize = 65_507;

/// The largest IPv6 UDP payload without jumbograms: 65,535 − 8 (UDP header).
pub const MAX_DATAGRAM_V6: usize = 65_527;

/// Keep-alive idle time when the caller left it to the OS (Linux's `tcp_keepalive_time`).
pub const DEFAULT_KEEP_ALIVE_IDLE: Duration = Duration::from_secs(7_200);

/// Keep-alive probe interval when left to the OS (Linux's `tcp_keepalive_intvl`).
pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(75);

/// Keep-alive probe count when the caller gave 0 (Linux's `tcp_keepalive_probes`).
pub const DEFAULT_KEEP_ALIVE_COUNT: u32 = 9;

/// A [`Network`](tcpudp::Network) for turmoil host `host_name`, with `policy`.
///
/// Call it from that host's software (`Simulation::host`/`client`, or a plain turmoil
/// simulation's `sim.host(..)`/`sim.client(..)`): turmoil cannot tell code which host it runs
/// on, so the caller names it (see [`SimBackend::new`] for what is checked).
///
/// # Errors
///
/// `NotSupportedError` outside a turmoil simulation or off a host, `InvalidAccessError` when the
/// simulation's DNS does not know `host_name`. Never panics.
pub fn network(host_name: &str, policy: tcpudp::Policy) -> Result<tcpudp::Network, tcpudp_core::SocketError> {
    Ok(tcpudp::Network::new(SimBackend::new(host_name)?, policy))
}

#[cfg(test)]
mod tests {
    /// DESIGN §2: tokio's scheduler and `select!` are seeded only under `tokio_unstable`; an
    /// environment `RUSTFLAGS` silently replaces the workspace config that sets it.
    #[test]
    #[allow(clippy::assertions_on_constants, reason = "the constant is the build's cfg, which is the point")]
    fn test_build_has_tokio_unstable() {
        assert!(cfg!(tokio_unstable), "build with --cfg tokio_unstable (see .cargo/config.toml)");
        assert!(super::tokio_unstable());
    }
}

//! The simulated backend of `tcpudp`: the [`Backend`](tcpudp::backend::Backend) on turmoil 0.7.2.
//!
//! Read DESIGN §7 before editing: it lists turmoil's measured flaws and what the adapter does
//! about each. This is the first step: a correct, deterministic, minimal backend (TCP connect,
//! accept, echo and half-close; UDP send and receive; multicast membership; DNS). The fault
//! layer (partitions, loss, resets, crashes, keep-alive probing, the emulated UDP buffer) comes
//! next, as a harness around the same transports.
//!
//! ```no_run
//! # fn demo() -> turmoil::Result {
//! let mut sim = turmoil::Builder::new().rng_seed(1).build();
//! sim.client("client", async {
//!     let net = tcpudp_net_sim::network("client", tcpudp::Policy::allow_all())?;
//!     # drop(net);
//!     Ok(())
//! });
//! sim.run()
//! # }
//! ```
//!
//! Simulations must be built with `--cfg tokio_unstable` (this workspace's `.cargo/config.toml`
//! sets it): only then does turmoil seed each host's tokio scheduler, and runs repeat exactly.
//! Give turmoil a seed too (`Builder::rng_seed`): unseeded, its latencies come from the OS RNG.
//!
//! # Fidelity
//!
//! What this step models, approximates, or leaves out (the fault layer fills in the third column):
//!
//! | Feature | Status |
//! |---|---|
//! | TCP connect, accept, data, FIN, end of stream | turmoil's, unsplit stream; FIN waits for a free receive slot (DESIGN §7) |
//! | TCP flow control | turmoil's: 64 segments in flight per direction (`tcp_capacity`), any segment size |
//! | Connect refused (nothing listening) | turmoil's: `Refused` after one round trip |
//! | Connect to an address no host has, or to a multicast group | `Unreachable` at once (turmoil would leak a port, then refuse) |
//! | A refused connect, or one abandoned before its SYN-ACK (connect timeout) | turmoil keeps its stream socket (and port) registered for ever (to be fixed) |
//! | Client local address/port (`local` of `connect`) | not modelled: the host address (loopback for loopback remotes) and the next ephemeral port |
//! | `reset()` | approximated: the stream is dropped; the peer sees RST only if unread data was held, else FIN |
//! | Keep-alive, `noDelay`, buffer sizes, multicast TTL | recorded and read back by `diag()`, not modelled |
//! | Listener backlog | turmoil's `tcp_capacity` (64); overflow panics the simulation (to be fixed) |
//! | `addressReuse` | recorded; turmoil allows one bind per port and protocol per host |
//! | Binding the host's own address | bound as the wildcard (also receives loopback traffic) |
//! | UDP receive queue | turmoil's 64 datagrams, silent tail drop, `dropped_total` always 0 |
//! | UDP datagram size | limited by the adapter to 65,507 bytes (IPv4) / 65,527 (IPv6) |
//! | UDP to an address no host has | sent and lost, as on a real network |
//! | Multicast membership | turmoil's (interface `0.0.0.0`/loopback only, IPv6 index 0) |
//! | Multicast loopback | turmoil's: the *receiving* socket's flag decides, default on |
//! | Host names | turmoil's DNS, read without registering names; `localhost` is loopback |
//! | Keep-alive defaults read back when left to the OS | idle 7,200 s, interval 75 s (Linux) |
#![warn(missing_docs, unreachable_pub)]

mod backend;
mod host;
mod tcp;
mod udp;

use std::time::Duration;

pub use backend::SimBackend;

/// The largest IPv4 UDP payload: 65,535 − 20 (IP header) − 8 (UDP header).
pub const MAX_DATAGRAM_V4: usize = 65_507;

/// The largest IPv6 UDP payload without jumbograms: 65,535 − 8 (UDP header).
pub const MAX_DATAGRAM_V6: usize = 65_527;

/// Keep-alive idle time reported when the caller left it to the OS (Linux's `tcp_keepalive_time`).
pub const DEFAULT_KEEP_ALIVE_IDLE: Duration = Duration::from_secs(7_200);

/// Keep-alive probe interval reported when left to the OS (Linux's `tcp_keepalive_intvl`).
pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(75);

/// A [`Network`](tcpudp::Network) for turmoil host `host_name`, with `policy`.
///
/// Call it from that host's software (`sim.host(..)` or `sim.client(..)`): turmoil cannot tell
/// code which host it runs on, so the caller names it (see [`SimBackend::new`] for what is
/// checked).
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
    }
}

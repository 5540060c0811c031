//! Sans-IO state machines for the W3C "TCP and UDP Socket API".
//!
//! Every readyState transition and every promise rule of the spec is decided here, and only here
//! (`../shared/spec/RULES.md` is the contract). There is no tokio, no clock, no randomness and no
//! I/O in this crate: a machine is driven by [`Input`]s stamped with an [`Instant`] the caller
//! passes in, and asks for I/O by emitting [`Output`]s.
//!
//! ```
//! use tcpudp_core::{Instant, UdpMachine, Input, IoEvent, Output, Event, ReadyState};
//! use tcpudp_core::checks::{self, Checks};
//! use tcpudp_core::options::UdpOptions;
//!
//! // A constructor check with a policy that allows everything and an OS that agrees.
//! let spec = checks::udp_spec(&mut checks::AllowAll, &UdpOptions::default()).unwrap();
//! let mut udp = UdpMachine::new(Instant::ZERO, spec);
//! udp.handle(Instant::ZERO, Input::Io(IoEvent::Bound { local: "127.0.0.1:5000".parse().unwrap() }))
//!     .unwrap();
//! let mut opened = false;
//! while let Some(out) = udp.poll_output() {
//!     if let Output::Event(Event::Opened(Ok(()))) = out {
//!         opened = true;
//!     }
//! }
//! assert!(opened);
//! assert_eq!(udp.ready_state(), ReadyState::Open);
//! ```
//!
//! # Decisions (DESIGN §3)
//!
//! - **One machine per socket**: [`TcpMachine`], [`TcpServerMachine`], [`UdpMachine`], each with
//!   `handle(now, Input)`, `poll_output()` and `poll_timeout()`. Synchronous errors returned by
//!   `handle` are what the spec "throws"; everything asynchronous is an [`Event`].
//! - **Time**: [`Instant`] is microseconds since the `Network`'s epoch; the caller reads the clock.
//! - **Serde schema** (feature `serde`): [`Input`], [`Output`] and [`TraceRecord`] serialize;
//!   [`SCHEMA_VERSION`] names the format. A log of `(Instant, Input)` replays a machine exactly.
//! - **Errors**: [`ErrorName`] holds the spec's names, [`Cause`] refines them; [`SocketError`] is
//!   `Clone + Eq` and converts into `std::io::Error`.
//! - **Queues**: TCP readable high-water mark in bytes (64 KiB), UDP readable capacity in datagrams
//!   (64), writable high-water mark in bytes (64 KiB). A full TCP readable turns read interest off
//!   (the peer is flow-controlled); a full UDP readable turns it off too and the kernel (or emulated)
//!   buffer tail-drops, counted in `dropped_datagrams()` (AMB-33). Overflow never errors a socket.
//! - **Option defaults**: the spec's (`noDelay` true, `addressReuse` true, multicast `loopback`
//!   false, keep-alive off) and the extensions' (connect timeout 127 s over the whole opening, close
//!   timeout 60 s, `allow_half_open` false, keep-alive count 9, backlog 1024, multicast TTL 1): see
//!   [`options`].
//! - **Constructor checks** run in the spec's order in [`checks`], asking a [`checks::Checks`]
//!   oracle for permission and for the OS facts (is this local address usable, which local address
//!   routes to that remote); their answers are carried inside the spec, so replay needs no I/O. A
//!   UDP socket binds synchronously in its constructor; the bind result is its first `Io` input.
//! - **Keep-alive** is scheduled here (`SetKeepAlive` at open and, for frequent-then-sparse, again at
//!   +60 s); the backend probes and reports a lost connection.
#![warn(missing_docs, unreachable_pub)]

pub mod address;
pub mod checks;
mod common;
pub mod error;
pub mod io;
pub mod options;
pub mod permission;
pub mod server;
pub mod state;
pub mod tcp;
mod time;
pub mod udp;

pub use error::{Cause, ErrorName, SocketError, TlsCause};
pub use io::{
    AcceptedConnection, AppCommand, ConnId, Deadline, Destination, Event, Input, IoCommand, IoEvent,
    ListenId, OpenSpec, Output, ReadResult, TimerKind, TraceRecord, UdpMessage, WriteId, SCHEMA_VERSION,
};
pub use server::TcpServerMachine;
pub use state::{ReadyState, Row, SocketKind};
pub use tcp::TcpMachine;
pub use time::{DeadlineSlot, Instant};
pub use udp::UdpMachine;

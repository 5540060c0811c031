//! The conformance suite of `tcpudp`: worlds that run the same application code on real sockets
//! and in the simulator, the [`on_both_backends!`] macro that registers each (and makes it a pair
//! of tests, `real::name` and `sim::name`), the [`scenarios`] registry and the rule × backend
//! [`matrix`] the `tcpudp-conformance` command prints.
//!
//! ```ignore
//! tcpudp_conformance::on_both_backends! {
//!     /// rule: TCP-OPEN-01
//!     fn connects(world: &mut World) {
//!         world.host("server", |ctx| async move { /* a TcpServerSocket */ Ok(()) });
//!         world.client("client", |ctx| async move { /* a TcpSocket */ Ok(()) });
//!     }
//! }
//! ```
#![warn(missing_docs, unreachable_pub)]

pub mod campaign;
pub mod differential;
pub mod harness;
pub mod interpreter;
pub mod matrix;
pub mod model;
pub mod proxy;
pub mod replay;
pub mod scenario;
pub mod scenarios;
pub mod trace;
mod world;

pub use scenario::{Action, Fault, Scenario, Step};
pub use trace::{Observation, Trace, TraceEvent};
pub use world::{BackendChoice, Body, BodyResult, Ctx, Directory, World};

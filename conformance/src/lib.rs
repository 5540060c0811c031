//! The conformance suite of `tcpudp`: worlds that run the same application code on real sockets
//! and in the simulator, and the [`on_both_backends!`] macro that makes each a pair of tests
//! (`real::name` and `sim::name`).
//!
//! ```ignore
//! tcpudp_conformance::on_both_backends! {
//!     // rule: TCP-OPEN-01
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

/// Defines each `fn name(world: &mut World) { … }` and a `#[test]` for it on each backend:
/// `real::name` and `sim::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($( $(#[$meta:meta])* fn $name:ident($world:ident : &mut World) $body:block )*) => {
        $( $(#[$meta])* fn $name($world: &mut $crate::World) $body )*

        mod real {
            $( #[test] fn $name() { $crate::harness::check($crate::BackendChoice::Real, stringify!($name), super::$name) } )*
        }

        mod sim {
            $( #[test] fn $name() { $crate::harness::check($crate::BackendChoice::Sim, stringify!($name), super::$name) } )*
        }
    };
}

//! The W3C "TCP and UDP Socket API" for Rust, deterministic and simulation-testable.
//!
//! Write networking code once against [`TcpSocket`], [`TcpServerSocket`] and [`UdpSocket`], and
//! choose the network by value: `tcpudp_net_real::network(policy)` for real sockets,
//! `tcpudp_net_sim::network(host, policy)` inside a turmoil simulation. Every readyState
//! transition and promise rule is decided by the sans-IO machines of [`tcpudp_core`]; this crate
//! drives them and runs the I/O a [`Backend`](backend::Backend) offers.
//!
//! ```no_run
//! use tcpudp::{Network, SocketError, TcpOptions, TcpSocket};
//! use bytes::Bytes;
//!
//! pub async fn banner(net: &Network, host: &str, port: u16) -> Result<Bytes, SocketError> {
//!     let sock = TcpSocket::new(net, host, port, TcpOptions::default())?; // SecurityError etc. are synchronous
//!     sock.opened().await?;
//!     let first = sock.readable()?.read().await?.unwrap_or_default(); // Ok(None) = end of stream
//!     sock.close().await?;
//!     Ok(first)
//! }
//! ```
//!
//! Simulation users: add `rustflags = ["--cfg", "tokio_unstable"]` to `.cargo/config.toml` (as this
//! workspace does) so tokio's `select!` is seeded and runs repeat exactly.
#![warn(missing_docs, unreachable_pub)]

pub mod backend;
mod drivers;
mod faults;
mod network;
mod policy;
mod server;
mod shared;
mod tcp;
mod timers;
// TLS (issue #7): one layer over every backend's TCP transport.
mod tls;
mod udp;

pub use faults::{Faults, HoldTicket};
pub use network::Network;
pub use policy::{Policy, PromptFn, TcpPermission, TcpServerPermission, UdpPermission};
pub use server::{ListenFuture, ServerDiag, TcpServerSocket};
pub use shared::{FlushFuture, ReadyFuture, SocketPromise, WriteFuture};
pub use tcp::{ReadFuture, TcpIo, TcpReadable, TcpSocket, TcpSocketDiag, TcpWritable};
pub use tls::{
    StartTlsFuture, TlsContext, TlsContextBuilder, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_SIM_EPOCH_SECS,
};
pub use udp::{Datagram, UdpMessage, UdpReadFuture, UdpReadable, UdpSocket, UdpSocketDiag, UdpWritable};

pub use tcpudp_core as core_machines;
pub use tcpudp_core::options::{KeepAliveMode, TcpOptions, TcpServerOptions, UdpOptions};
pub use tcpudp_core::permission::{
    PermissionKind, PermissionRequest, PermissionState, TcpPermissionOptions, TcpServerPermissionOptions,
    UdpPermissionOptions,
};
pub use tcpudp_core::{Cause, ErrorName, ReadyState, SocketError, TlsCause};

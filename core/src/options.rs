//! The spec's option dictionaries (RULES.md §6), the extensions of DESIGN §3.7, and the parsed
//! specifications the machines are opened with.
//!
//! Read RULES.md §6 and §3.1/§4.1/§5 (constructors) before editing. User-facing `*Options` carry
//! text as the caller gave it; the `*Spec` types are what a successful constructor check produced
//! (parse, don't validate): machines accept only specs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::address::{HostName, Remote};

/// Default TCP readable high-water mark: 64 KiB (DESIGN §3.6, AMB-36).
pub const DEFAULT_TCP_READABLE_HWM: usize = 64 * 1024;
/// Default UDP readable capacity: 64 datagrams.
pub const DEFAULT_UDP_READABLE_CAPACITY: usize = 64;
/// Default writable high-water mark: 64 KiB.
pub const DEFAULT_WRITABLE_HWM: usize = 64 * 1024;
/// Default connect timeout: 127 s, Linux's SYN-retry span (AMB-49).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(127);
/// Default close timeout: 60 s, as Linux `tcp_fin_timeout` (AMB-26).
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default keep-alive probe count before the peer is declared dead (Linux TCP_KEEPCNT).
pub const DEFAULT_KEEP_ALIVE_COUNT: u32 = 9;
/// Default listen backlog.
pub const DEFAULT_BACKLOG: u32 = 1024;
/// Default multicast TTL.
pub const DEFAULT_MULTICAST_TTL: u32 = 1;
/// Keep-alive idle time and interval used during the first minute of "frequent-then-sparse".
pub const KEEP_ALIVE_FREQUENT: Duration = Duration::from_secs(10);
/// How long "frequent-then-sparse" stays frequent, from the moment the connection opens.
pub const KEEP_ALIVE_FREQUENT_SPAN: Duration = Duration::from_secs(60);
/// Largest valid `tcpKeepAliveSparseIntvl`, in seconds (the Linux limit, A-45).
pub const MAX_KEEP_ALIVE_INTERVAL_SECS: u32 = 32_767;
/// Largest UDP payload on an IPv4 socket.
pub const MAX_DATAGRAM_V4: usize = 65_507;
/// Largest UDP payload on an IPv6 socket.
pub const MAX_DATAGRAM_V6: usize = 65_527;

/// The spec's `TCPKeepAliveOptions` enumeration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum KeepAliveMode {
    /// No keep-alive probes (the default).
    #[default]
    Off,
    /// Probes every 10 s for the first minute after opening, then every sparse interval.
    FrequentThenSparse,
    /// Probes every sparse interval from the start.
    Sparse,
}

/// `TCPOptions` plus the extensions of DESIGN §3.7.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct TcpOptions {
    /// `localAddress`: an IP literal to bind; absent: chosen by routing.
    pub local_address: Option<String>,
    /// `localPort`: absent or 0: ephemeral.
    pub local_port: Option<u16>,
    /// `addressReuse` (default true).
    pub address_reuse: bool,
    /// `noDelay` (default true: Nagle off).
    pub no_delay: bool,
    /// `useSecureTransport` (default false).
    pub use_secure_transport: bool,
    /// `tcpKeepAliveOptions` (default off).
    pub keep_alive: KeepAliveMode,
    /// `tcpKeepAliveSparseIntvl` in seconds; absent: OS default timing.
    pub keep_alive_sparse_interval: Option<u32>,
    /// Extension: unanswered probes before the peer is dead (default 9).
    pub keep_alive_count: u32,
    /// Extension: keep the writable usable after the peer's FIN (default false).
    pub allow_half_open: bool,
    /// Extension: bound on the whole opening (default 127 s, AMB-49).
    pub connect_timeout: Duration,
    /// Extension: bound on the closing handshake (default 60 s, AMB-26).
    pub close_timeout: Duration,
    /// Extension: readable high-water mark in bytes (default 64 KiB).
    pub readable_high_water_mark: usize,
    /// Extension: writable high-water mark in bytes (default 64 KiB).
    pub writable_high_water_mark: usize,
    /// Extension: SO_SNDBUF; absent: the OS default. 0 is a `TypeError`.
    pub send_buffer_size: Option<usize>,
    /// Extension: SO_RCVBUF; absent: the OS default. 0 is a `TypeError`.
    pub receive_buffer_size: Option<usize>,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            local_address: None,
            local_port: None,
            address_reuse: true,
            no_delay: true,
            use_secure_transport: false,
            keep_alive: KeepAliveMode::Off,
            keep_alive_sparse_interval: None,
            keep_alive_count: DEFAULT_KEEP_ALIVE_COUNT,
            allow_half_open: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            readable_high_water_mark: DEFAULT_TCP_READABLE_HWM,
            writable_high_water_mark: DEFAULT_WRITABLE_HWM,
            send_buffer_size: None,
            receive_buffer_size: None,
        }
    }
}

/// `TCPServerOptions` plus extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct TcpServerOptions {
    /// `localAddress`: an IP literal, "0.0.0.0" or "::"; absent: any IPv4 address.
    pub local_address: Option<String>,
    /// `localPort`: absent or 0: ephemeral.
    pub local_port: Option<u16>,
    /// `addressReuse` (default true).
    pub address_reuse: bool,
    /// `useSecureTransport` (default false).
    pub use_secure_transport: bool,
    /// Extension: listen backlog (default 1024).
    pub backlog: u32,
    /// Extension: options of accepted sockets' queues and timers (local fields ignored).
    pub accepted: TcpOptions,
}

impl Default for TcpServerOptions {
    fn default() -> Self {
        TcpServerOptions {
            local_address: None,
            local_port: None,
            address_reuse: true,
            use_secure_transport: false,
            backlog: DEFAULT_BACKLOG,
            accepted: TcpOptions::default(),
        }
    }
}

/// `UDPOptions` plus extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct UdpOptions {
    /// `localAddress`: an IP literal, "0.0.0.0" or "::".
    pub local_address: Option<String>,
    /// `localPort`: absent or 0: ephemeral.
    pub local_port: Option<u16>,
    /// `remoteAddress`: default destination address (host name or IP literal).
    pub remote_address: Option<String>,
    /// `remotePort`: default destination port; 0 is invalid.
    pub remote_port: Option<u16>,
    /// `addressReuse` (default true).
    pub address_reuse: bool,
    /// `loopback`: multicast loopback of this socket's sends (default false).
    pub loopback: bool,
    /// Extension: readable capacity in datagrams (default 64).
    pub readable_capacity: usize,
    /// Extension: writable high-water mark in bytes (default 64 KiB).
    pub writable_high_water_mark: usize,
    /// Extension: SO_SNDBUF; absent: OS default. 0 is a `TypeError`.
    pub send_buffer_size: Option<usize>,
    /// Extension: SO_RCVBUF; absent: OS default. 0 is a `TypeError`.
    pub receive_buffer_size: Option<usize>,
    /// Extension: multicast TTL (default 1).
    pub multicast_ttl: u32,
    /// Extension: multicast interface address (default: the OS choice, A-58).
    pub multicast_interface: Option<IpAddr>,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            local_address: None,
            local_port: None,
            remote_address: None,
            remote_port: None,
            address_reuse: true,
            loopback: false,
            readable_capacity: DEFAULT_UDP_READABLE_CAPACITY,
            writable_high_water_mark: DEFAULT_WRITABLE_HWM,
            send_buffer_size: None,
            receive_buffer_size: None,
            multicast_ttl: DEFAULT_MULTICAST_TTL,
            multicast_interface: None,
        }
    }
}

/// Keep-alive timing handed to the backend (`SetKeepAlive`). `None` fields mean the OS default
/// (real backend) or 7,200 s / 75 s (simulator, DESIGN §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KeepAlive {
    /// Idle time before the first probe.
    pub idle: Option<Duration>,
    /// Time between probes.
    pub interval: Option<Duration>,
    /// Unanswered probes before the peer is declared dead.
    pub count: u32,
}

/// Socket options every connect or accepted socket applies (the static part; keep-alive is
/// scheduled by the machine).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SocketConfig {
    /// SO_REUSEADDR.
    pub address_reuse: bool,
    /// TCP_NODELAY (TCP only).
    pub no_delay: bool,
    /// SO_SNDBUF.
    pub send_buffer_size: Option<usize>,
    /// SO_RCVBUF.
    pub receive_buffer_size: Option<usize>,
}

/// A checked `TCPSocket` construction: what the constructor accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TcpSpec {
    /// The remote, parsed (GEN-13).
    pub remote: Remote,
    /// The remote port (never 0).
    pub remote_port: u16,
    /// The local address to bind, when given (checked usable for the remote).
    pub local_address: Option<IpAddr>,
    /// The local port to bind, when given and non-zero.
    pub local_port: Option<u16>,
    /// Static socket options.
    pub config: SocketConfig,
    /// Keep-alive mode.
    pub keep_alive: KeepAliveMode,
    /// Sparse interval (1..=32,767 s) when given.
    pub keep_alive_sparse_interval: Option<Duration>,
    /// Probe count.
    pub keep_alive_count: u32,
    /// `useSecureTransport`.
    pub use_secure_transport: bool,
    /// Extension.
    pub allow_half_open: bool,
    /// Bound on the whole opening.
    pub connect_timeout: Duration,
    /// Bound on the closing handshake.
    pub close_timeout: Duration,
    /// Readable high-water mark (bytes, ≥ 1).
    pub readable_high_water_mark: usize,
    /// Writable high-water mark (bytes, ≥ 1).
    pub writable_high_water_mark: usize,
}

/// An accepted connection as the server hands it to a new [`TcpMachine`](crate::TcpMachine).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AcceptedSpec {
    /// Local address and port of the connection.
    pub local: SocketAddr,
    /// The peer's address and port.
    pub remote: SocketAddr,
    /// Options for queues and timers (local and remote fields unused): the server's
    /// [`ServerSpec::accepted`], shared by every connection it accepts.
    pub tcp: Arc<TcpSpec>,
}

/// A checked `TCPServerSocket` construction.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ServerSpec {
    /// The address to bind: the given literal, or the IPv4 wildcard when absent.
    pub local_address: IpAddr,
    /// Port to bind; 0 means ephemeral.
    pub local_port: u16,
    /// SO_REUSEADDR.
    pub address_reuse: bool,
    /// `useSecureTransport`.
    pub use_secure_transport: bool,
    /// Listen backlog.
    pub backlog: u32,
    /// Spec for accepted sockets, shared with each (no copy or allocation per connection).
    pub accepted: Arc<TcpSpec>,
}

/// A checked `UDPSocket` construction.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct UdpSpec {
    /// The address the constructor binds (given, routed, or a wildcard of the chosen family).
    pub bind_address: IpAddr,
    /// Port to bind; 0 means ephemeral.
    pub local_port: u16,
    /// Default destination address, parsed.
    pub remote: Option<Remote>,
    /// Default destination port.
    pub remote_port: Option<u16>,
    /// Static options.
    pub config: SocketConfig,
    /// Multicast loopback of this socket's sends.
    pub loopback: bool,
    /// Multicast TTL.
    pub multicast_ttl: u32,
    /// Multicast interface.
    pub multicast_interface: Option<IpAddr>,
    /// Readable capacity in datagrams (≥ 1).
    pub readable_capacity: usize,
    /// Writable high-water mark in bytes (≥ 1).
    pub writable_high_water_mark: usize,
}

impl UdpSpec {
    /// Largest payload this socket can send (65,507 on IPv4, 65,527 on IPv6; UDP-WRITE-07).
    pub fn max_datagram(&self) -> usize {
        if self.bind_address.is_ipv4() {
            MAX_DATAGRAM_V4
        } else {
            MAX_DATAGRAM_V6
        }
    }
}

/// A host name to resolve for a UDP default destination, if the spec has one.
impl UdpSpec {
    /// The default destination's host name when it is not an IP literal.
    pub fn remote_name(&self) -> Option<&HostName> {
        match &self.remote {
            Some(Remote::Name(name)) => Some(name),
            _ => None,
        }
    }
}

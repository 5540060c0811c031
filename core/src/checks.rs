//! Constructor checks in the spec's order: read RULES.md §3.1 (UDP-CTOR-*), §4.1 (TCP-CTOR-*),
//! §5 (SRV-CTOR-*), §6 (DICT-*OPT-*), PERM-GEN-01, GEN-01, GEN-13, ERR-04, ERR-11 and AMB-05,
//! AMB-06, AMB-09, AMB-39, AMB-44, AMB-45 before editing.
//!
//! Parse, don't validate: [`tcp_spec`], [`server_spec`] and [`udp_spec`] turn a constructor's
//! arguments into the spec a machine is opened with, or into the error the constructor throws. The
//! first failing check decides the error. Everything the checks need from outside (the permission
//! state, whether a local address is usable, which local address routes to a remote, TLS support)
//! comes from a [`Checks`] oracle, which the async layer implements over its policy and backend;
//! the answers end up inside the spec, so replaying a machine needs no I/O.
//!
//! Orders: TCP (TCP-CTOR-14) permission, remote address, remote port, `localAddress`, `localPort`,
//! keep-alive, TLS; server (SRV-CTOR-10) permission, `localAddress`, `localPort`, TLS; UDP
//! (UDP-CTOR-20) permission, `remoteAddress`, `remotePort`, `localAddress`, `localPort`. The
//! permission request carries the caller's raw text, so a denial wins over an invalid address
//! (PERM-GEN-01), and when permission fails the oracle is asked nothing else (GEN-01: no traffic).
//!
//! Decisions where the spec is silent:
//! - The `localAddress` step, with an IP-literal remote, checks the family (no dual stack, AMB-09),
//!   that the address is usable ([`Checks::probe_local`]; the wildcards `0.0.0.0` and `::` are
//!   never probed), and that some interface routes to the remote ([`Checks::route`]): a local
//!   address cannot be usable for a remote no interface reaches. With a host-name remote only the
//!   address itself is checked (the family is unknown until resolution, AMB-05). Without
//!   `localAddress`, an IP-literal remote must be routable (TCP-CTOR-07, UDP-CTOR-12); a TCP spec
//!   does not keep the routed address (the machine learns its local address when connected), a UDP
//!   spec binds it (UDP-CTOR-13).
//! - Keep-alive (only when not "off"; everything is ignored when off): the sparse interval must be
//!   1..=32,767 s and `keep_alive_count` 1..=[`MAX_KEEP_ALIVE_COUNT`] (Linux's TCP_KEEPCNT
//!   range), else `InvalidAccessError`.
//! - Extension options are checked last, after every check of the spec, so they never change which
//!   error a spec test sees; a value no socket can use is a `TypeError` (a conversion failure,
//!   ERR-09): a high-water mark or UDP readable capacity of 0, a buffer size of 0 or above
//!   `i32::MAX`, a connect or close timeout shorter than 1 µs, a backlog above `i32::MAX`, a
//!   multicast TTL above 255.
//!
//! Constructors therefore only ever fail with `SecurityError`, `InvalidAccessError`, `TypeError`
//! or `NotSupportedError` (INV-13).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use crate::address::{parse_local_address, Remote};
use crate::error::{Cause, ErrorName, SocketError};
use crate::options::{
    KeepAliveMode, ServerSpec, SocketConfig, TcpOptions, TcpServerOptions, TcpSpec, UdpOptions, UdpSpec,
    MAX_KEEP_ALIVE_INTERVAL_SECS,
};
use crate::permission::{PermissionRequest, PermissionState};

/// Largest valid `keep_alive_count` (Linux's limit for TCP_KEEPCNT).
pub const MAX_KEEP_ALIVE_COUNT: u32 = 127;

/// The oracle the constructor checks consult: the permission policy and synchronous OS facts
/// (DESIGN §3.9). The async layer implements it over its policy and backend.
pub trait Checks {
    /// The permission state for `request` (the raw text the caller gave). Only `Granted` lets the
    /// constructor go on; `Denied` and `Prompt` throw `SecurityError`.
    fn permission(&mut self, request: &PermissionRequest) -> PermissionState;

    /// The permission state of every `TCPSocket` request (a remote address and port only), when
    /// it does not depend on the address or port: the constructor then asks nothing more. `None`
    /// (the default): ask [`permission`](Self::permission) with the request.
    fn tcp_remote_permission_for_all(&mut self) -> Option<PermissionState> {
        None
    }

    /// Whether `ip` is usable as a local address: `Ok`, or why not (real backend: bind a
    /// throw-away socket to `(ip, 0)`). Never called for the wildcards `0.0.0.0` and `::`.
    fn probe_local(&mut self, ip: IpAddr) -> Result<(), Cause>;

    /// The local address the routing table picks to reach `remote`, or `None` when no interface
    /// can reach it (real backend: `connect()` an unbound UDP socket, which sends nothing, and
    /// read its local address).
    fn route(&mut self, remote: IpAddr) -> Option<IpAddr>;

    /// Whether this build can make TLS client connections (TCP-CTOR-15).
    fn tls_client_supported(&self) -> bool;

    /// Whether this build has TLS and server credentials are configured (SRV-CTOR-09).
    fn tls_server_configured(&self) -> bool;
}

/// A [`Checks`] for tests and documentation: every permission granted, and a host whose only
/// interface is `lo`. Usable local addresses are 127.0.0.0/8 and `::1` (and the wildcards, which
/// are never probed); a loopback or unspecified remote routes from `127.0.0.1` or `::1`, anything
/// else is unreachable. No TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowAll;

impl Checks for AllowAll {
    fn permission(&mut self, _request: &PermissionRequest) -> PermissionState {
        PermissionState::Granted
    }

    fn probe_local(&mut self, ip: IpAddr) -> Result<(), Cause> {
        if ip.is_loopback() || ip.is_unspecified() {
            Ok(())
        } else {
            Err(Cause::Unreachable)
        }
    }

    fn route(&mut self, remote: IpAddr) -> Option<IpAddr> {
        match remote {
            IpAddr::V4(v4) if v4.is_loopback() || v4.is_unspecified() => {
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
            }
            IpAddr::V6(v6) if v6.is_loopback() || v6.is_unspecified() => {
                Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
            }
            _ => None,
        }
    }

    fn tls_client_supported(&self) -> bool {
        false
    }

    fn tls_server_configured(&self) -> bool {
        false
    }
}

/// The `TCPSocket(remoteAddress, remotePort, options)` constructor checks (TCP-CTOR-01..17), in
/// the order of TCP-CTOR-14. `local_address` of the spec is the given literal (a routed address is
/// only checked, not kept); a `local_port` of 0 becomes `None`; the keep-alive interval is `None`
/// when keep-alive is off.
pub fn tcp_spec(
    checks: &mut (impl Checks + ?Sized),
    remote_address: &str,
    remote_port: u16,
    opts: &TcpOptions,
) -> Result<TcpSpec, SocketError> {
    if checks.tcp_remote_permission_for_all() != Some(PermissionState::Granted) {
        check_permission(checks, &PermissionRequest::tcp_socket(remote_address, remote_port))?;
    }
    let remote = Remote::parse(remote_address)?;
    check_remote_port(remote_port)?;
    let local_address = match &opts.local_address {
        Some(text) => Some(check_local_for_remote(checks, text, Some(&remote))?),
        None => {
            if let Remote::Ip(ip) = remote {
                routed(checks, ip)?;
            }
            None
        }
    };
    let local_port = opts.local_port.filter(|&p| p != 0);
    let keep_alive_sparse_interval = check_keep_alive(opts)?;
    if opts.use_secure_transport && !checks.tls_client_supported() {
        return Err(not_supported("useSecureTransport: this build has no TLS client support"));
    }
    check_tcp_extensions(opts)?;
    Ok(TcpSpec {
        remote,
        remote_port,
        local_address,
        local_port,
        config: SocketConfig {
            address_reuse: opts.address_reuse,
            no_delay: opts.no_delay,
            send_buffer_size: opts.send_buffer_size,
            receive_buffer_size: opts.receive_buffer_size,
        },
        keep_alive: opts.keep_alive,
        keep_alive_sparse_interval,
        keep_alive_count: opts.keep_alive_count,
        use_secure_transport: opts.use_secure_transport,
        allow_half_open: opts.allow_half_open,
        connect_timeout: opts.connect_timeout,
        close_timeout: opts.close_timeout,
        readable_high_water_mark: opts.readable_high_water_mark,
        writable_high_water_mark: opts.writable_high_water_mark,
    })
}

/// The `TCPServerSocket(options)` constructor checks (SRV-CTOR-01..12), in the order of
/// SRV-CTOR-10, then the accepted sockets' options (`opts.accepted`: keep-alive as in
/// [`tcp_spec`], then the extensions).
///
/// An absent `localAddress` binds the IPv4 wildcard; `"0.0.0.0"` and `"::"` are accepted
/// as given; any other literal must pass [`Checks::probe_local`]. The accepted sockets' template
/// takes its queues, timers, keep-alive, buffer sizes and `allow_half_open` from `opts.accepted`;
/// `noDelay` is always true and `addressReuse` and `useSecureTransport` are the server's (AMB-39,
/// EXT-08). Its remote (the unspecified address of the server's family, port 0) and local fields
/// are placeholders: each accepted connection's real addresses are in its `AcceptedSpec`.
pub fn server_spec(
    checks: &mut (impl Checks + ?Sized),
    opts: &TcpServerOptions,
) -> Result<ServerSpec, SocketError> {
    check_permission(checks, &PermissionRequest::tcp_server(opts))?;
    let local_address = match &opts.local_address {
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(text) => {
            let ip = parse_local_address(text)?;
            check_usable_local(checks, ip)?;
            ip
        }
    };
    let local_port = opts.local_port.unwrap_or(0);
    if opts.use_secure_transport && !checks.tls_server_configured() {
        return Err(not_supported("useSecureTransport: no TLS support or no server credentials configured"));
    }
    let accepted = &opts.accepted;
    let keep_alive_sparse_interval = check_keep_alive(accepted)?;
    check_tcp_extensions(accepted)?;
    if opts.backlog > i32::MAX as u32 {
        return Err(type_error(format!("backlog {} is above {}", opts.backlog, i32::MAX)));
    }
    let placeholder = match local_address {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    Ok(ServerSpec {
        local_address,
        local_port,
        address_reuse: opts.address_reuse,
        use_secure_transport: opts.use_secure_transport,
        backlog: opts.backlog,
        accepted: Arc::new(TcpSpec {
            remote: Remote::Ip(placeholder),
            remote_port: 0,
            local_address: None,
            local_port: None,
            config: SocketConfig {
                address_reuse: opts.address_reuse,
                no_delay: true,
                send_buffer_size: accepted.send_buffer_size,
                receive_buffer_size: accepted.receive_buffer_size,
            },
            keep_alive: accepted.keep_alive,
            keep_alive_sparse_interval,
            keep_alive_count: accepted.keep_alive_count,
            use_secure_transport: opts.use_secure_transport,
            allow_half_open: accepted.allow_half_open,
            connect_timeout: accepted.connect_timeout,
            close_timeout: accepted.close_timeout,
            readable_high_water_mark: accepted.readable_high_water_mark,
            writable_high_water_mark: accepted.writable_high_water_mark,
        }),
    })
}

/// The `UDPSocket(options)` constructor checks (UDP-CTOR-01..23), in the order of UDP-CTOR-20.
///
/// `bind_address`: the given `localAddress` (probed unless a wildcard; its family must match an
/// IP-literal remote, UDP-CTOR-09, UDP-CTOR-23); else, for an IP-literal remote, the routed local
/// address (UDP-CTOR-12/13); else the IPv4 wildcard, also for a host-name remote, which is resolved
/// while opening. `local_port` 0 means ephemeral.
pub fn udp_spec(checks: &mut (impl Checks + ?Sized), opts: &UdpOptions) -> Result<UdpSpec, SocketError> {
    check_permission(checks, &PermissionRequest::udp_socket(opts))?;
    let remote = opts.remote_address.as_deref().map(Remote::parse).transpose()?;
    if let Some(port) = opts.remote_port {
        check_remote_port(port)?;
    }
    let bind_address = match (&opts.local_address, &remote) {
        (Some(text), remote) => check_local_for_remote(checks, text, remote.as_ref())?,
        (None, Some(Remote::Ip(ip))) => routed(checks, *ip)?,
        (None, _) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let local_port = opts.local_port.unwrap_or(0);
    check_udp_extensions(opts)?;
    Ok(UdpSpec {
        bind_address,
        local_port,
        remote,
        remote_port: opts.remote_port,
        config: SocketConfig {
            address_reuse: opts.address_reuse,
            // TCP only; unused by UDP sockets.
            no_delay: false,
            send_buffer_size: opts.send_buffer_size,
            receive_buffer_size: opts.receive_buffer_size,
        },
        loopback: opts.loopback,
        multicast_ttl: opts.multicast_ttl,
        multicast_interface: opts.multicast_interface,
        readable_capacity: opts.readable_capacity,
        writable_high_water_mark: opts.writable_high_water_mark,
    })
}

/// Step 1 of every constructor (PERM-GEN-01): only `granted` goes on.
fn check_permission(
    checks: &mut (impl Checks + ?Sized),
    request: &PermissionRequest,
) -> Result<(), SocketError> {
    match checks.permission(request) {
        PermissionState::Granted => Ok(()),
        PermissionState::Denied => {
            Err(SocketError::security().with_message(format!("{} permission denied", request.kind)))
        }
        PermissionState::Prompt => Err(SocketError::security()
            .with_message(format!("{} permission not granted (requestPermission first)", request.kind))),
    }
}

/// A remote port of 0 is invalid (AMB-06).
fn check_remote_port(port: u16) -> Result<(), SocketError> {
    if port == 0 {
        Err(SocketError::invalid_access().with_message("remote port 0 is not a valid port"))
    } else {
        Ok(())
    }
}

/// The `localAddress` step of a client socket: an IP literal, of the remote's family when the
/// remote is a literal, usable, and (for a literal remote) with a route to the remote.
fn check_local_for_remote(
    checks: &mut (impl Checks + ?Sized),
    text: &str,
    remote: Option<&Remote>,
) -> Result<IpAddr, SocketError> {
    let ip = parse_local_address(text)?;
    let remote_ip = remote.and_then(Remote::ip);
    if let Some(r) = remote_ip {
        if r.is_ipv4() != ip.is_ipv4() {
            return Err(invalid(Cause::FamilyMismatch, format!("local address {ip} cannot reach {r}")));
        }
    }
    check_usable_local(checks, ip)?;
    if let Some(r) = remote_ip {
        routed(checks, r)?;
    }
    Ok(ip)
}

/// A wildcard is always usable; any other address must pass the probe.
fn check_usable_local(checks: &mut (impl Checks + ?Sized), ip: IpAddr) -> Result<(), SocketError> {
    if ip.is_unspecified() {
        return Ok(());
    }
    checks.probe_local(ip).map_err(|cause| invalid(cause, format!("{ip} is not a usable local address")))
}

/// The local address routing picks for `remote`; no route (or a route of the other family, which
/// a correct oracle never gives) is `InvalidAccessError`.
fn routed(checks: &mut (impl Checks + ?Sized), remote: IpAddr) -> Result<IpAddr, SocketError> {
    match checks.route(remote) {
        Some(local) if local.is_ipv4() == remote.is_ipv4() => Ok(local),
        Some(local) => Err(invalid(
            Cause::FamilyMismatch,
            format!("routing picked {local}, of the other family, for {remote}"),
        )),
        None => Err(invalid(Cause::Unreachable, format!("no local interface can reach {remote}"))),
    }
}

/// TCP-CTOR-17, A-45: the sparse interval (seconds) when keep-alive is on, and the probe count.
fn check_keep_alive(opts: &TcpOptions) -> Result<Option<Duration>, SocketError> {
    if opts.keep_alive == KeepAliveMode::Off {
        return Ok(None);
    }
    let interval = match opts.keep_alive_sparse_interval {
        None => None,
        Some(secs) if (1..=MAX_KEEP_ALIVE_INTERVAL_SECS).contains(&secs) => {
            Some(Duration::from_secs(secs.into()))
        }
        Some(secs) => {
            return Err(SocketError::invalid_access().with_message(format!(
                "tcpKeepAliveSparseIntvl must be 1..={MAX_KEEP_ALIVE_INTERVAL_SECS} seconds, not {secs}"
            )))
        }
    };
    if !(1..=MAX_KEEP_ALIVE_COUNT).contains(&opts.keep_alive_count) {
        return Err(SocketError::invalid_access().with_message(format!(
            "keep_alive_count must be 1..={MAX_KEEP_ALIVE_COUNT}, not {}",
            opts.keep_alive_count
        )));
    }
    Ok(interval)
}

/// The extension options of a TCP socket (last, `TypeError`).
fn check_tcp_extensions(opts: &TcpOptions) -> Result<(), SocketError> {
    check_buffer_size("send_buffer_size", opts.send_buffer_size)?;
    check_buffer_size("receive_buffer_size", opts.receive_buffer_size)?;
    check_positive("readable_high_water_mark", opts.readable_high_water_mark)?;
    check_positive("writable_high_water_mark", opts.writable_high_water_mark)?;
    check_timeout("connect_timeout", opts.connect_timeout)?;
    check_timeout("close_timeout", opts.close_timeout)
}

/// The extension options of a UDP socket (last, `TypeError`).
fn check_udp_extensions(opts: &UdpOptions) -> Result<(), SocketError> {
    check_buffer_size("send_buffer_size", opts.send_buffer_size)?;
    check_buffer_size("receive_buffer_size", opts.receive_buffer_size)?;
    check_positive("readable_capacity", opts.readable_capacity)?;
    check_positive("writable_high_water_mark", opts.writable_high_water_mark)?;
    if opts.multicast_ttl > 255 {
        return Err(type_error(format!("multicast_ttl must be 0..=255, not {}", opts.multicast_ttl)));
    }
    Ok(())
}

fn check_buffer_size(name: &str, size: Option<usize>) -> Result<(), SocketError> {
    match size {
        Some(n) if n == 0 || n > i32::MAX as usize => {
            Err(type_error(format!("{name} must be 1..={}, not {n}", i32::MAX)))
        }
        _ => Ok(()),
    }
}

fn check_positive(name: &str, value: usize) -> Result<(), SocketError> {
    if value == 0 {
        Err(type_error(format!("{name} must be at least 1")))
    } else {
        Ok(())
    }
}

fn check_timeout(name: &str, timeout: Duration) -> Result<(), SocketError> {
    if timeout.as_micros() == 0 {
        Err(type_error(format!("{name} must be at least 1 µs")))
    } else {
        Ok(())
    }
}

fn invalid(cause: Cause, message: String) -> SocketError {
    SocketError::with_cause(ErrorName::InvalidAccessError, cause).with_message(message)
}

fn type_error(message: String) -> SocketError {
    SocketError::type_error().with_message(message)
}

fn not_supported(message: &'static str) -> SocketError {
    SocketError::new(ErrorName::NotSupportedError).with_message(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{DEFAULT_CLOSE_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEP_ALIVE_COUNT};
    use crate::permission::{PermissionKind, PermissionStore};
    use proptest::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Call {
        Permission(PermissionRequest),
        Probe(IpAddr),
        Route(IpAddr),
    }

    /// A fake host: permissions from a store, usable local addresses and routes from lists, and a
    /// log of every question asked.
    #[derive(Debug, Default)]
    struct Fake {
        store: PermissionStore,
        local: Vec<IpAddr>,
        routes: Vec<(IpAddr, IpAddr)>,
        tls_client: bool,
        tls_server: bool,
        calls: Vec<Call>,
    }

    impl Checks for Fake {
        fn permission(&mut self, request: &PermissionRequest) -> PermissionState {
            self.calls.push(Call::Permission(request.clone()));
            self.store.state(request)
        }

        fn probe_local(&mut self, ip: IpAddr) -> Result<(), Cause> {
            self.calls.push(Call::Probe(ip));
            if self.local.contains(&ip) {
                Ok(())
            } else {
                Err(Cause::Unreachable)
            }
        }

        fn route(&mut self, remote: IpAddr) -> Option<IpAddr> {
            self.calls.push(Call::Route(remote));
            self.routes.iter().find(|(r, _)| *r == remote).map(|(_, l)| *l)
        }

        fn tls_client_supported(&self) -> bool {
            self.tls_client
        }

        fn tls_server_configured(&self) -> bool {
            self.tls_server
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Everything allowed; lo with 127.0.0.1 and ::1; routes to 127.0.0.1, 127.0.0.2 and ::1.
    fn host() -> Fake {
        Fake {
            store: PermissionStore::allow_all(),
            local: vec![ip("127.0.0.1"), ip("::1")],
            routes: vec![
                (ip("127.0.0.1"), ip("127.0.0.1")),
                (ip("127.0.0.2"), ip("127.0.0.1")),
                (ip("::1"), ip("::1")),
            ],
            ..Fake::default()
        }
    }

    fn host_denying() -> Fake {
        Fake { store: PermissionStore::deny_all(), ..host() }
    }

    fn host_prompting() -> Fake {
        Fake { store: PermissionStore::new(), ..host() }
    }

    fn host_with_tls() -> Fake {
        Fake { tls_client: true, tls_server: true, ..host() }
    }

    fn err<T: std::fmt::Debug>(result: Result<T, SocketError>) -> SocketError {
        result.unwrap_err()
    }

    fn only_permission_asked(fake: &Fake) -> bool {
        matches!(fake.calls.as_slice(), [Call::Permission(_)])
    }

    fn udp_opts(
        remote: Option<&str>,
        rport: Option<u16>,
        local: Option<&str>,
        lport: Option<u16>,
    ) -> UdpOptions {
        UdpOptions {
            remote_address: remote.map(str::to_owned),
            remote_port: rport,
            local_address: local.map(str::to_owned),
            local_port: lport,
            ..UdpOptions::default()
        }
    }

    fn tcp_local(local: &str) -> TcpOptions {
        TcpOptions { local_address: Some(local.to_owned()), ..TcpOptions::default() }
    }

    fn keep_alive(mode: KeepAliveMode, interval: Option<u32>) -> TcpOptions {
        TcpOptions { keep_alive: mode, keep_alive_sparse_interval: interval, ..TcpOptions::default() }
    }

    fn srv_local(local: &str) -> TcpServerOptions {
        TcpServerOptions { local_address: Some(local.to_owned()), ..TcpServerOptions::default() }
    }

    // ---- UDP ----------------------------------------------------------------------------------

    // rule: DICT-GEN-01, DICT-UDPOPT-01, DICT-UDPOPT-02, DICT-UDPOPT-03, DICT-UDPOPT-04, DICT-UDPOPT-05, DICT-UDPOPT-06, UDP-CTOR-04, UDP-CTOR-07, UDP-CTOR-14, UDP-CTOR-15, UDP-CTOR-17, UDP-CTOR-18
    #[test]
    fn test_udp_default_options_bind_ipv4_wildcard_ephemeral() {
        let mut fake = host();
        let spec = udp_spec(&mut fake, &UdpOptions::default()).unwrap();
        assert_eq!(spec.bind_address, ip("0.0.0.0"));
        assert_eq!(spec.local_port, 0);
        assert_eq!(spec.remote, None);
        assert_eq!(spec.remote_port, None);
        assert!(spec.config.address_reuse);
        assert!(!spec.loopback);
        assert_eq!((spec.config.send_buffer_size, spec.config.receive_buffer_size), (None, None));
        assert_eq!(fake.calls, [Call::Permission(PermissionRequest::new(PermissionKind::Udp))]);
        // The doc example's oracle gives the same spec.
        assert_eq!(udp_spec(&mut AllowAll, &UdpOptions::default()).unwrap(), spec);
    }

    // rule: UDP-CTOR-01, PERM-GEN-01, ERR-01, GEN-01
    #[test]
    fn test_udp_without_permission_throws_security_error_and_asks_nothing_else() {
        for mut fake in [host_denying(), host_prompting()] {
            let opts = udp_opts(Some("300.1.1.1"), Some(0), Some("192.0.2.1"), Some(5000));
            let e = err(udp_spec(&mut fake, &opts));
            assert_eq!(e.kind(), ErrorName::SecurityError);
            assert!(only_permission_asked(&fake), "{:?}", fake.calls);
            assert_eq!(fake.calls, [Call::Permission(PermissionRequest::udp_socket(&opts))]);
        }
    }

    // rule: UDP-CTOR-02, UDP-CTOR-05, UDP-CTOR-13, UDP-CTOR-08
    #[test]
    fn test_udp_remote_literal_binds_routed_address() {
        let mut fake = host();
        let spec = udp_spec(&mut fake, &udp_opts(Some("127.0.0.2"), Some(9), None, None)).unwrap();
        assert_eq!(spec.remote, Some(Remote::Ip(ip("127.0.0.2"))));
        assert_eq!(spec.remote_port, Some(9));
        assert_eq!(spec.bind_address, ip("127.0.0.1"));
        assert_eq!(fake.calls[1..], [Call::Route(ip("127.0.0.2"))]);
        let spec = udp_spec(&mut host(), &udp_opts(Some("0:0:0:0:0:0:0:1"), None, None, None)).unwrap();
        assert_eq!(spec.bind_address, ip("::1"));
        assert_eq!(spec.max_datagram(), 65_527);
    }

    // rule: UDP-CTOR-02, UDP-CTOR-13, DICT-UDPOPT-01
    #[test]
    fn test_udp_remote_host_name_binds_ipv4_wildcard_without_routing() {
        let mut fake = host();
        let spec = udp_spec(&mut fake, &udp_opts(Some("Svc-1.test"), Some(9), None, None)).unwrap();
        assert_eq!(spec.remote.as_ref().map(ToString::to_string).as_deref(), Some("Svc-1.test"));
        assert_eq!(spec.remote_name().map(|n| n.as_str()), Some("Svc-1.test"));
        assert_eq!(spec.bind_address, ip("0.0.0.0"));
        assert!(only_permission_asked(&fake), "{:?}", fake.calls);
    }

    // rule: UDP-CTOR-03, ERR-04, GEN-13
    #[test]
    fn test_udp_invalid_remote_is_invalid_access_error() {
        for bad in ["300.1.1.1", "a..b", "", "[::1]", "127.1"] {
            let mut fake = host();
            let e = err(udp_spec(&mut fake, &udp_opts(Some(bad), Some(9), None, None)));
            assert_eq!(e.kind(), ErrorName::InvalidAccessError, "{bad:?}");
            assert!(only_permission_asked(&fake));
        }
    }

    // rule: UDP-CTOR-06, ERR-04
    #[test]
    fn test_udp_remote_port_zero_is_invalid_access_error() {
        let e = err(udp_spec(&mut host(), &udp_opts(Some("127.0.0.1"), Some(0), None, None)));
        assert_eq!(e.kind(), ErrorName::InvalidAccessError);
        let e = err(udp_spec(&mut host(), &udp_opts(None, Some(0), None, None)));
        assert_eq!(e.kind(), ErrorName::InvalidAccessError);
        assert!(udp_spec(&mut host(), &udp_opts(None, Some(1), None, None)).is_ok());
    }

    // rule: UDP-CTOR-08
    #[test]
    fn test_udp_local_and_remote_of_one_family_bind_local() {
        let mut fake = host();
        let spec =
            udp_spec(&mut fake, &udp_opts(Some("127.0.0.1"), Some(9), Some("127.0.0.1"), None)).unwrap();
        assert_eq!(spec.bind_address, ip("127.0.0.1"));
        assert_eq!(fake.calls[1..], [Call::Probe(ip("127.0.0.1")), Call::Route(ip("127.0.0.1"))]);
    }

    // rule: UDP-CTOR-09, ERR-04
    #[test]
    fn test_udp_local_unusable_for_remote_is_invalid_access_error() {
        // Family mismatch, decided without asking the OS.
        let mut fake = host();
        let e = err(udp_spec(&mut fake, &udp_opts(Some("::1"), Some(9), Some("127.0.0.1"), None)));
        assert_eq!((e.kind(), e.cause()), (ErrorName::InvalidAccessError, Some(Cause::FamilyMismatch)));
        assert!(only_permission_asked(&fake));
        // Not a local address.
        let e = err(udp_spec(&mut host(), &udp_opts(Some("127.0.0.1"), Some(9), Some("192.0.2.1"), None)));
        assert_eq!(e.kind(), ErrorName::InvalidAccessError);
        // A local address, but no interface reaches the remote.
        let e = err(udp_spec(&mut host(), &udp_opts(Some("127.0.0.9"), Some(9), Some("127.0.0.1"), None)));
        assert_eq!((e.kind(), e.cause()), (ErrorName::InvalidAccessError, Some(Cause::Unreachable)));
        // localAddress must be a literal.
        let e = err(udp_spec(&mut host(), &udp_opts(Some("127.0.0.1"), Some(9), Some("localhost"), None)));
        assert_eq!(e.kind(), ErrorName::InvalidAccessError);
    }

    // rule: UDP-CTOR-10, UDP-CTOR-16
    #[test]
    fn test_udp_local_without_remote_binds_it() {
        let mut fake = host();
        let spec = udp_spec(&mut fake, &udp_opts(None, None, Some("::1"), Some(5353))).unwrap();
        assert_eq!((spec.bind_address, spec.local_port), (ip("::1"), 5353));
        assert_eq!(fake.calls[1..], [Call::Probe(ip("::1"))]);
        // With a host-name remote, only the address itself is checked.
        let mut fake = host();
        let spec = udp_spec(&mut fake, &udp_opts(Some("localhost"), None, Some("::1"), None)).unwrap();
        assert_eq!(spec.bind_address, ip("::1"));
        assert_eq!(fake.calls[1..], [Call::Probe(ip("::1"))]);
    }

    // rule: UDP-CTOR-11, ERR-04
    #[test]
    fn test_udp_non_local_address_without_remote_is_invalid_access_error() {
        let e = err(udp_spec(&mut host(), &udp_opts(None, None, Some("192.0.2.1"), None)));
        assert_eq!((e.kind(), e.cause()), (ErrorName::InvalidAccessError, Some(Cause::Unreachable)));
        let e = err(udp_spec(&mut AllowAll, &udp_opts(None, None, Some("192.0.2.1"), None)));
        assert_eq!(e.kind(), ErrorName::InvalidAccessError);
    }

    // rule: UDP-CTOR-12, ERR-04
    #[test]
    fn test_udp_unroutable_literal_remote_is_invalid_access_error() {
        let mut fake = host();
        let e = err(udp_spec(&mut fake, &udp_opts(Some("127.0.0.9"), Some(9), None, None)));
        assert_eq!((e.kind(), e.cause()), (ErrorName::InvalidAccessError, Some(Cause::Unreachable)));
        assert_eq!(fake.calls[1..], [Call::Route(ip("127.0.0.9"))]);
        let e = err(udp_spec(&mut AllowAll, &udp_opts(Some("10.9.9.9"), Some(9), None, None)));
        assert_eq!(e.kind(), ErrorName::InvalidAccessError);
        // A host name is not routed at construction.
        assert!(udp_spec(&mut host(), &udp_opts(Some("nohost.test"), Some(9), None, None)).is_ok());
    }

    // rule: UDP-CTOR-16, UDP-CTOR-21
    #[test]
    fn test_udp_local_port_is_not_checked_synchronously() {
        let mut fake = host();
        let spec = udp_spec(&mut fake, &udp_opts(None, None, None, Some(5000))).unwrap();
        assert_eq!(spec.local_port, 5000);
        // No question about the port: a bind conflict can only surface while opening.
        assert!(only_permission_asked(&fake));
        assert_eq!(udp_spec(&mut host(), &udp_opts(None, None, None, Some(0))).unwrap().local_port, 0);
    }

    // rule: UDP-CTOR-17, UDP-CTOR-18
    #[test]
    fn test_udp_flags_are_carried() {
        let opts = UdpOptions { address_reuse: false, loopback: true, ..UdpOptions::default() };
        let spec = udp_spec(&mut host(), &opts).unwrap();
        assert!(!spec.config.address_reuse);
        assert!(spec.loopback);
    }

    // rule: UDP-CTOR-23, UDP-CTOR-09
    #[test]
    fn test_udp_wildcard_local_literals_bind_that_family_unprobed() {
        let mut fake = host();
        let spec = udp_spec(&mut fake, &udp_opts(None, None, Some("::"), None)).unwrap();
        assert_eq!(spec.bind_address, ip("::"));
        assert!(only_permission_asked(&fake));
        let mut fake = host();
        let spec = udp_spec(&mut fake, &udp_opts(Some("::1"), Some(9), Some("::"), None)).unwrap();
        assert_eq!(spec.bind_address, ip("::"));
        assert_eq!(fake.calls[1..], [Call::Route(ip("::1"))]);
        let e = err(udp_spec(&mut host(), &udp_opts(Some("::1"), Some(9), Some("0.0.0.0"), None)));
        assert_eq!((e.kind(), e.cause()), (ErrorName::InvalidAccessError, Some(Cause::FamilyMismatch)));
    }

    // rule: UDP-CTOR-20, PERM-GEN-01
    #[test]
    fn test_udp_checks_run_in_spec_order() {
        // permission before everything
        let e = err(udp_spec(&mut host_denying(), &udp_opts(Some("a..b"), Some(0), Some("x"), None)));
        assert_eq!(e.kind(), ErrorName::SecurityError);
        // remoteAddress before remotePort
        let e = err(udp_spec(&mut host(), &udp_opts(Some("a..b"), Some(0), Some("x"), None)));
        assert!(e.message().unwrap().contains("a..b"), "{e}");
        // remotePort before localAddress
        let e = err(udp_spec(&mut host(), &udp_opts(Some("127.0.0.1"), Some(0), Some("x"), None)));
        assert!(e.message().unwrap().contains("port"), "{e}");
        // localAddress before the extension options
        let opts = UdpOptions { readable_capacity: 0, ..udp_opts(None, None, Some("x"), None) };
        let e = err(udp_spec(&mut host(), &opts));
        assert_eq!(e.kind(), ErrorName::InvalidAccessError);
        assert!(e.message().unwrap().contains("\"x\""), "{e}");
    }

    // rule: PERM-GEN-05, DICT-PERM-03, DICT-PERM-04, DICT-PERM-09
    #[test]
    fn test_udp_constructor_follows_stored_decisions() {
        let mut fake = Fake { store: PermissionStore::new(), ..host() };
        fake.store.answer(PermissionRequest::new(PermissionKind::Udp), true).unwrap();
        assert!(udp_spec(&mut fake, &UdpOptions::default()).is_ok());
        assert!(udp_spec(&mut fake, &udp_opts(Some("127.0.0.2"), Some(9), None, None)).is_ok());
        let e = err(udp_spec(&mut fake, &udp_opts(None, None, Some("127.0.0.1"), None)));
        assert_eq!(e.kind(), ErrorName::SecurityError);
        let e = err(udp_spec(&mut fake, &udp_opts(None, None, None, Some(5000))));
        assert_eq!(e.kind(), ErrorName::SecurityError);
        let o = udp_opts(Some("127.0.0.2"), Some(9), None, None);
        fake.store.answer(PermissionRequest::udp_socket(&o), false).unwrap_err();
        assert_eq!(err(udp_spec(&mut fake, &o)).kind(), ErrorName::SecurityError);
        assert!(udp_spec(&mut fake, &UdpOptions::default()).is_ok());
    }

    #[test]
    fn test_udp_extension_options_are_type_errors() {
        for opts in [
            UdpOptions { readable_capacity: 0, ..UdpOptions::default() },
            UdpOptions { writable_high_water_mark: 0, ..UdpOptions::default() },
            UdpOptions { send_buffer_size: Some(0), ..UdpOptions::default() },
            UdpOptions { receive_buffer_size: Some(usize::MAX), ..UdpOptions::default() },
            UdpOptions { multicast_ttl: 256, ..UdpOptions::default() },
        ] {
            assert_eq!(err(udp_spec(&mut host(), &opts)).kind(), ErrorName::TypeError, "{opts:?}");
        }
        let opts = UdpOptions { multicast_ttl: 255, send_buffer_size: Some(1), ..UdpOptions::default() };
        assert!(udp_spec(&mut host(), &opts).is_ok());
    }

    // ---- TCP ----------------------------------------------------------------------------------

    // rule: DICT-TCPOPT-01, DICT-TCPOPT-02, DICT-TCPOPT-03, DICT-TCPOPT-04, DICT-TCPOPT-05, DICT-TCPOPT-06, DICT-TCPOPT-08, TCP-CTOR-08, TCP-CTOR-09, TCP-CTOR-11, TCP-CTOR-12, DICT-GEN-01
    #[test]
    fn test_tcp_default_options() {
        let mut fake = host();
        let spec = tcp_spec(&mut fake, "127.0.0.1", 7, &TcpOptions::default()).unwrap();
        assert_eq!((spec.remote.clone(), spec.remote_port), (Remote::Ip(ip("127.0.0.1")), 7));
        assert_eq!((spec.local_address, spec.local_port), (None, None));
        assert!(spec.config.address_reuse && spec.config.no_delay);
        assert!(!spec.use_secure_transport && !spec.allow_half_open);
        assert_eq!((spec.keep_alive, spec.keep_alive_sparse_interval), (KeepAliveMode::Off, None));
        assert_eq!(spec.keep_alive_count, DEFAULT_KEEP_ALIVE_COUNT);
        assert_eq!(
            (spec.connect_timeout, spec.close_timeout),
            (DEFAULT_CONNECT_TIMEOUT, DEFAULT_CLOSE_TIMEOUT)
        );
        // Routed (TCP-CTOR-08), but the routed address is only checked.
        assert_eq!(
            fake.calls,
            [Call::Permission(PermissionRequest::tcp_socket("127.0.0.1", 7)), Call::Route(ip("127.0.0.1"))]
        );
    }

    // rule: TCP-CTOR-01, PERM-GEN-01, ERR-01, GEN-01
    #[test]
    fn test_tcp_without_permission_throws_security_error_and_asks_nothing_else() {
        for mut fake in [host_denying(), host_prompting()] {
            let e = err(tcp_spec(&mut fake, "1.2.3.4.5", 0, &tcp_local("192.0.2.1")));
            assert_eq!(e.kind(), ErrorName::SecurityError);
            assert_eq!(fake.calls, [Call::Permission(PermissionRequest::tcp_socket("1.2.3.4.5", 0))]);
        }
        // A TCP grant for another port does not help.
        let mut fake = Fake { store: PermissionStore::new(), ..host() };
        fake.store.grant(PermissionRequest::tcp_socket("127.0.0.1", 80));
        assert_eq!(
            err(tcp_spec(&mut fake, "127.0.0.1", 81, &TcpOptions::default())).kind(),
            ErrorName::SecurityError
        );
        assert!(tcp_spec(&mut fake, "127.0.0.1", 80, &TcpOptions::default()).is_ok());
    }

    // rule: TCP-CTOR-02, ERR-04, GEN-13
    #[test]
    fn test_tcp_invalid_remote_is_invalid_access_error() {
        for bad in ["1.2.3.4.5", "010.0.0.1", "-a.test", "", "::1%lo", "host.123"] {
            let mut fake = host();
            let e = err(tcp_spec(&mut fake, bad, 80, &TcpOptions::default()));
            assert_eq!(e.kind(), ErrorName::InvalidAccessError, "{bad:?}");
            assert!(only_permission_asked(&fake));
        }
    }

    // rule: TCP-CTOR-03, ERR-04
    #[test]
    fn test_tcp_remote_port_zero_is_invalid_access_error() {
        let mut fake = host();
        let e = err(tcp_spec(&mut fake, "127.0.0.1", 0, &TcpOptions::default()));
        assert_eq!(e.kind(), ErrorName::InvalidAccessError);
        assert!(only_permission_asked(&fake));
        assert!(tcp_spec(&mut host(), "127.0.0.1", 65535, &TcpOptions::default()).is_ok());
    }

    // rule: TCP-CTOR-04
    #[test]
    fn test_tcp_remote_is_kept_as_given() {
        let spec = tcp_spec(&mut host(), "LocalHost", 80, &TcpOptions::default()).unwrap();
        assert_eq!(spec.remote.to_string(), "LocalHost");
        assert_eq!(spec.remote_port, 80);
        let spec = tcp_spec(&mut host(), "0:0:0:0:0:0:0:1", 80, &TcpOptions::default()).unwrap();
        assert_eq!(spec.remote, Remote::Ip(ip("::1")));
    }

    // rule: TCP-CTOR-05, TCP-CTOR-10
    #[test]
    fn test_tcp_usable_local_address_and_port_are_bound() {
        let mut fake = host();
        let opts = TcpOptions { local_port: Some(4000), ..tcp_local("127.0.0.1") };
        let spec = tcp_spec(&mut fake, "127.0.0.2", 80, &opts).unwrap();
        assert_eq!((spec.local_address, spec.local_port), (Some(ip("127.0.0.1")), Some(4000)));
        assert_eq!(fake.calls[1..], [Call::Probe(ip("127.0.0.1")), Call::Route(ip("127.0.0.2"))]);
        // A host-name remote: only the address itself can be checked.
        let mut fake = host();
        let spec = tcp_spec(&mut fake, "localhost", 80, &tcp_local("::1")).unwrap();
        assert_eq!(spec.local_address, Some(ip("::1")));
        assert_eq!(fake.calls[1..], [Call::Probe(ip("::1"))]);
    }

    // rule: TCP-CTOR-06, ERR-04
    #[test]
    fn test_tcp_unusable_local_address_is_invalid_access_error() {
        let cases = [
            ("127.0.0.1", "192.0.2.1", Some(Cause::Unreachable)),
            ("::1", "127.0.0.1", Some(Cause::FamilyMismatch)),
            ("127.0.0.1", "::1", Some(Cause::FamilyMismatch)),
            ("127.0.0.9", "127.0.0.1", Some(Cause::Unreachable)),
            ("127.0.0.1", "localhost", None),
            ("127.0.0.1", "[::1]", None),
        ];
        for (remote, local, cause) in cases {
            let e = err(tcp_spec(&mut host(), remote, 80, &tcp_local(local)));
            assert_eq!((e.kind(), e.cause()), (ErrorName::InvalidAccessError, cause), "{remote} {local}");
        }
    }

    // rule: TCP-CTOR-07, ERR-04
    #[test]
    fn test_tcp_unroutable_literal_is_invalid_access_error_but_names_wait() {
        let mut fake = host();
        let e = err(tcp_spec(&mut fake, "127.0.0.9", 80, &TcpOptions::default()));
        assert_eq!((e.kind(), e.cause()), (ErrorName::InvalidAccessError, Some(Cause::Unreachable)));
        assert_eq!(fake.calls[1..], [Call::Route(ip("127.0.0.9"))]);
        assert_eq!(
            err(tcp_spec(&mut AllowAll, "10.9.9.9", 80, &TcpOptions::default())).kind(),
            ErrorName::InvalidAccessError
        );
        let mut fake = host();
        assert!(tcp_spec(&mut fake, "nohost.test", 80, &TcpOptions::default()).is_ok());
        assert!(only_permission_asked(&fake));
    }

    // rule: TCP-CTOR-09, DICT-TCPOPT-02
    #[test]
    fn test_tcp_local_port_zero_is_ephemeral() {
        let opts = TcpOptions { local_port: Some(0), ..TcpOptions::default() };
        assert_eq!(tcp_spec(&mut host(), "127.0.0.1", 80, &opts).unwrap().local_port, None);
    }

    // rule: TCP-CTOR-11, TCP-CTOR-12
    #[test]
    fn test_tcp_flags_are_carried() {
        let opts = TcpOptions {
            address_reuse: false,
            no_delay: false,
            allow_half_open: true,
            ..TcpOptions::default()
        };
        let spec = tcp_spec(&mut host(), "127.0.0.1", 80, &opts).unwrap();
        assert!(!spec.config.address_reuse && !spec.config.no_delay && spec.allow_half_open);
    }

    // rule: TCP-CTOR-14, PERM-GEN-01
    #[test]
    fn test_tcp_checks_run_in_spec_order() {
        let bad_ka = keep_alive(KeepAliveMode::Sparse, Some(0));
        // permission before the address
        assert_eq!(err(tcp_spec(&mut host_denying(), "a..b", 0, &bad_ka)).kind(), ErrorName::SecurityError);
        // address before the keep-alive options
        let e = err(tcp_spec(&mut host(), "a..b", 80, &bad_ka));
        assert!(e.message().unwrap().contains("a..b"), "{e}");
        // address before port
        let e = err(tcp_spec(&mut host(), "a..b", 0, &bad_ka));
        assert!(e.message().unwrap().contains("a..b"), "{e}");
        // port before localAddress
        let opts = TcpOptions { local_address: Some("x".into()), ..bad_ka.clone() };
        let e = err(tcp_spec(&mut host(), "127.0.0.1", 0, &opts));
        assert!(e.message().unwrap().contains("port"), "{e}");
        // localAddress before keep-alive
        let e = err(tcp_spec(&mut host(), "127.0.0.1", 80, &opts));
        assert!(e.message().unwrap().contains("\"x\""), "{e}");
        // keep-alive before TLS
        let tls = TcpOptions { use_secure_transport: true, ..bad_ka.clone() };
        let e = err(tcp_spec(&mut host(), "127.0.0.1", 80, &tls));
        assert_eq!(e.kind(), ErrorName::InvalidAccessError);
        assert!(e.message().unwrap().contains("tcpKeepAliveSparseIntvl"), "{e}");
        // TLS before the extension options
        let tls =
            TcpOptions { use_secure_transport: true, readable_high_water_mark: 0, ..TcpOptions::default() };
        assert_eq!(err(tcp_spec(&mut host(), "127.0.0.1", 80, &tls)).kind(), ErrorName::NotSupportedError);
    }

    // rule: TCP-CTOR-15, ERR-11
    #[test]
    fn test_tcp_tls_without_support_is_not_supported_error() {
        let opts = TcpOptions { use_secure_transport: true, ..TcpOptions::default() };
        let e = err(tcp_spec(&mut host(), "localhost", 443, &opts));
        assert_eq!(e.kind(), ErrorName::NotSupportedError);
        assert_eq!(e.name(), "NotSupportedError");
        assert_eq!(
            err(tcp_spec(&mut AllowAll, "localhost", 443, &opts)).kind(),
            ErrorName::NotSupportedError
        );
        let spec = tcp_spec(&mut host_with_tls(), "localhost", 443, &opts).unwrap();
        assert!(spec.use_secure_transport);
    }

    // rule: TCP-CTOR-16, TCP-CTOR-17, DICT-TCPOPT-07
    #[test]
    fn test_tcp_keep_alive_options() {
        for mode in [KeepAliveMode::Sparse, KeepAliveMode::FrequentThenSparse] {
            for bad in [0, 32_768, u32::MAX] {
                let e = err(tcp_spec(&mut host(), "127.0.0.1", 80, &keep_alive(mode, Some(bad))));
                assert_eq!(e.kind(), ErrorName::InvalidAccessError, "{mode:?} {bad}");
            }
            let spec = tcp_spec(&mut host(), "127.0.0.1", 80, &keep_alive(mode, Some(32_767))).unwrap();
            assert_eq!(spec.keep_alive_sparse_interval, Some(Duration::from_secs(32_767)));
            assert_eq!(spec.keep_alive, mode);
            let spec = tcp_spec(&mut host(), "127.0.0.1", 80, &keep_alive(mode, Some(1))).unwrap();
            assert_eq!(spec.keep_alive_sparse_interval, Some(Duration::from_secs(1)));
            // Absent: the OS default timing.
            let spec = tcp_spec(&mut host(), "127.0.0.1", 80, &keep_alive(mode, None)).unwrap();
            assert_eq!(spec.keep_alive_sparse_interval, None);
        }
        // Ignored when off.
        let spec = tcp_spec(&mut host(), "127.0.0.1", 80, &keep_alive(KeepAliveMode::Off, Some(0))).unwrap();
        assert_eq!((spec.keep_alive, spec.keep_alive_sparse_interval), (KeepAliveMode::Off, None));
    }

    // rule: TCP-CTOR-17
    #[test]
    fn test_tcp_keep_alive_count_must_be_in_range_when_on() {
        for (count, ok) in
            [(0, false), (1, true), (MAX_KEEP_ALIVE_COUNT, true), (MAX_KEEP_ALIVE_COUNT + 1, false)]
        {
            let opts = TcpOptions { keep_alive_count: count, ..keep_alive(KeepAliveMode::Sparse, Some(5)) };
            let result = tcp_spec(&mut host(), "127.0.0.1", 80, &opts);
            assert_eq!(result.is_ok(), ok, "{count}");
            if let Err(e) = result {
                assert_eq!(e.kind(), ErrorName::InvalidAccessError);
            }
            let off = TcpOptions { keep_alive_count: count, ..TcpOptions::default() };
            assert!(tcp_spec(&mut host(), "127.0.0.1", 80, &off).is_ok());
        }
    }

    #[test]
    fn test_tcp_extension_options_are_type_errors() {
        for opts in [
            TcpOptions { readable_high_water_mark: 0, ..TcpOptions::default() },
            TcpOptions { writable_high_water_mark: 0, ..TcpOptions::default() },
            TcpOptions { send_buffer_size: Some(0), ..TcpOptions::default() },
            TcpOptions { receive_buffer_size: Some(0), ..TcpOptions::default() },
            TcpOptions { connect_timeout: Duration::ZERO, ..TcpOptions::default() },
            TcpOptions { close_timeout: Duration::from_nanos(999), ..TcpOptions::default() },
        ] {
            assert_eq!(
                err(tcp_spec(&mut host(), "127.0.0.1", 80, &opts)).kind(),
                ErrorName::TypeError,
                "{opts:?}"
            );
        }
        let opts = TcpOptions {
            readable_high_water_mark: 1,
            connect_timeout: Duration::from_micros(1),
            send_buffer_size: Some(i32::MAX as usize),
            ..TcpOptions::default()
        };
        assert!(tcp_spec(&mut host(), "127.0.0.1", 80, &opts).is_ok());
    }

    // ---- server -------------------------------------------------------------------------------

    // rule: SRV-CTOR-02, SRV-CTOR-05, SRV-CTOR-07, DICT-SRVOPT-01, DICT-SRVOPT-02, DICT-SRVOPT-03, DICT-SRVOPT-04, DICT-GEN-01
    #[test]
    fn test_server_default_options_listen_on_ipv4_wildcard() {
        let mut fake = host();
        let spec = server_spec(&mut fake, &TcpServerOptions::default()).unwrap();
        assert_eq!((spec.local_address, spec.local_port), (ip("0.0.0.0"), 0));
        assert!(spec.address_reuse && !spec.use_secure_transport);
        assert_eq!(spec.backlog, crate::options::DEFAULT_BACKLOG);
        assert!(only_permission_asked(&fake));
        assert_eq!(server_spec(&mut AllowAll, &TcpServerOptions::default()).unwrap(), spec);
    }

    // rule: SRV-CTOR-01, PERM-GEN-01, ERR-01, GEN-01
    #[test]
    fn test_server_without_permission_throws_security_error_and_asks_nothing_else() {
        for mut fake in [host_denying(), host_prompting()] {
            let opts = TcpServerOptions { local_port: Some(6789), ..srv_local("not-an-ip") };
            let e = err(server_spec(&mut fake, &opts));
            assert_eq!(e.kind(), ErrorName::SecurityError);
            assert_eq!(fake.calls, [Call::Permission(PermissionRequest::tcp_server(&opts))]);
        }
    }

    // rule: SRV-CTOR-03, SRV-CTOR-06
    #[test]
    fn test_server_local_literal_is_probed_and_bound() {
        let mut fake = host();
        let opts = TcpServerOptions { local_port: Some(6789), ..srv_local("127.0.0.1") };
        let spec = server_spec(&mut fake, &opts).unwrap();
        assert_eq!((spec.local_address, spec.local_port), (ip("127.0.0.1"), 6789));
        assert_eq!(fake.calls[1..], [Call::Probe(ip("127.0.0.1"))]);
    }

    // rule: SRV-CTOR-04, ERR-04
    #[test]
    fn test_server_non_local_address_is_invalid_access_error() {
        for bad in ["192.0.2.1", "localhost", "", "[::1]"] {
            let e = err(server_spec(&mut host(), &srv_local(bad)));
            assert_eq!(e.kind(), ErrorName::InvalidAccessError, "{bad:?}");
        }
    }

    // rule: SRV-CTOR-07
    #[test]
    fn test_server_address_reuse_is_carried() {
        let spec = server_spec(&mut host(), &TcpServerOptions { address_reuse: false, ..Default::default() })
            .unwrap();
        assert!(!spec.address_reuse);
    }

    // rule: SRV-CTOR-09, ERR-11
    #[test]
    fn test_server_tls_needs_configured_credentials() {
        let opts = TcpServerOptions { use_secure_transport: true, ..TcpServerOptions::default() };
        assert_eq!(err(server_spec(&mut host(), &opts)).kind(), ErrorName::NotSupportedError);
        // Client TLS support alone is not enough.
        let mut client_only = Fake { tls_client: true, ..host() };
        assert_eq!(err(server_spec(&mut client_only, &opts)).kind(), ErrorName::NotSupportedError);
        let spec = server_spec(&mut host_with_tls(), &opts).unwrap();
        assert!(spec.use_secure_transport && spec.accepted.use_secure_transport);
    }

    // rule: SRV-CTOR-10, PERM-GEN-01
    #[test]
    fn test_server_checks_run_in_spec_order() {
        let opts = TcpServerOptions {
            use_secure_transport: true,
            accepted: TcpOptions {
                readable_high_water_mark: 0,
                ..keep_alive(KeepAliveMode::Sparse, Some(0))
            },
            ..srv_local("x")
        };
        assert_eq!(err(server_spec(&mut host_denying(), &opts)).kind(), ErrorName::SecurityError);
        assert_eq!(err(server_spec(&mut host(), &opts)).kind(), ErrorName::InvalidAccessError);
        let opts = TcpServerOptions { local_address: None, ..opts };
        assert_eq!(err(server_spec(&mut host(), &opts)).kind(), ErrorName::NotSupportedError);
        let e = err(server_spec(&mut host_with_tls(), &opts));
        assert_eq!(e.kind(), ErrorName::InvalidAccessError);
        assert!(e.message().unwrap().contains("tcpKeepAliveSparseIntvl"), "{e}");
        let opts = TcpServerOptions {
            accepted: TcpOptions { readable_high_water_mark: 0, ..Default::default() },
            ..opts
        };
        assert_eq!(err(server_spec(&mut host_with_tls(), &opts)).kind(), ErrorName::TypeError);
    }

    // rule: SRV-CTOR-11
    #[test]
    fn test_server_wildcard_literals_are_accepted_unprobed() {
        for (text, family_v4) in [("0.0.0.0", true), ("::", false)] {
            let mut fake = host();
            let spec = server_spec(&mut fake, &srv_local(text)).unwrap();
            assert_eq!(spec.local_address, ip(text));
            assert_eq!(spec.accepted.remote.ip().map(|a| a.is_ipv4()), Some(family_v4));
            assert!(only_permission_asked(&fake));
        }
    }

    // rule: SRV-ACCEPT-02
    #[test]
    fn test_server_accepted_template_forces_no_delay_and_inherits_reuse() {
        let accepted = TcpOptions {
            no_delay: false,
            address_reuse: true,
            allow_half_open: true,
            readable_high_water_mark: 1024,
            local_address: Some("not even checked".into()),
            ..keep_alive(KeepAliveMode::Sparse, Some(30))
        };
        let opts = TcpServerOptions { address_reuse: false, accepted, ..TcpServerOptions::default() };
        let spec = server_spec(&mut host(), &opts).unwrap();
        let t = &spec.accepted;
        assert!(t.config.no_delay && !t.config.address_reuse && t.allow_half_open);
        assert_eq!(t.readable_high_water_mark, 1024);
        assert_eq!(t.keep_alive_sparse_interval, Some(Duration::from_secs(30)));
        assert_eq!((t.local_address, t.local_port, t.remote_port), (None, None, 0));
        let big = TcpServerOptions { backlog: u32::MAX, ..TcpServerOptions::default() };
        assert_eq!(err(server_spec(&mut host(), &big)).kind(), ErrorName::TypeError);
    }

    // rule: DICT-PERM-07, DICT-PERM-08
    #[test]
    fn test_server_constructor_follows_stored_decisions() {
        let mut fake = Fake { store: PermissionStore::new(), ..host() };
        fake.store.grant(PermissionRequest::tcp_server(&TcpServerOptions {
            local_port: Some(6789),
            ..Default::default()
        }));
        assert!(server_spec(&mut fake, &TcpServerOptions { local_port: Some(6789), ..Default::default() })
            .is_ok());
        let with_addr = TcpServerOptions { local_port: Some(6789), ..srv_local("127.0.0.1") };
        assert_eq!(err(server_spec(&mut fake, &with_addr)).kind(), ErrorName::SecurityError);
        let other_port = TcpServerOptions { local_port: Some(6790), ..Default::default() };
        assert_eq!(err(server_spec(&mut fake, &other_port)).kind(), ErrorName::SecurityError);
        // A request naming fewer fields is covered (DICT-PERM-09 c).
        assert!(server_spec(&mut fake, &TcpServerOptions::default()).is_ok());
    }

    // ---- properties ---------------------------------------------------------------------------

    /// An oracle with fixed random answers that counts the questions.
    #[derive(Debug)]
    struct Random {
        permission: PermissionState,
        probe: Result<(), Cause>,
        route: Option<IpAddr>,
        tls_client: bool,
        tls_server: bool,
        os_questions: usize,
    }

    impl Checks for Random {
        fn permission(&mut self, _request: &PermissionRequest) -> PermissionState {
            self.permission
        }
        fn probe_local(&mut self, _ip: IpAddr) -> Result<(), Cause> {
            self.os_questions += 1;
            self.probe
        }
        fn route(&mut self, _remote: IpAddr) -> Option<IpAddr> {
            self.os_questions += 1;
            self.route
        }
        fn tls_client_supported(&self) -> bool {
            self.tls_client
        }
        fn tls_server_configured(&self) -> bool {
            self.tls_server
        }
    }

    fn random_checks() -> impl Strategy<Value = Random> {
        (
            prop::sample::select(
                &[PermissionState::Granted, PermissionState::Denied, PermissionState::Prompt][..],
            ),
            any::<bool>(),
            prop::option::of(prop::sample::select(&["127.0.0.1", "::1", "10.0.0.1"][..])),
            any::<(bool, bool)>(),
        )
            .prop_map(|(permission, probe_ok, route, (tls_client, tls_server))| Random {
                permission,
                probe: if probe_ok { Ok(()) } else { Err(Cause::Unreachable) },
                route: route.map(ip),
                tls_client,
                tls_server,
                os_questions: 0,
            })
    }

    fn address_text() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(
                &[
                    "127.0.0.1",
                    "::1",
                    "0.0.0.0",
                    "::",
                    "localhost",
                    "a..b",
                    "",
                    "[::1]",
                    "300.1.1.1",
                    "::ffff:1.2.3.4"
                ][..]
            )
            .prop_map(str::to_owned),
            "[a-z0-9.:-]{0,16}",
            ".{0,8}",
        ]
    }

    fn interesting_u32() -> impl Strategy<Value = u32> {
        prop_oneof![prop::sample::select(&[0u32, 1, 127, 128, 255, 256, 32_767, 32_768][..]), any::<u32>()]
    }

    fn tcp_options() -> impl Strategy<Value = TcpOptions> {
        (
            prop::option::of(address_text()),
            prop::option::of(any::<u16>()),
            prop::sample::select(
                &[KeepAliveMode::Off, KeepAliveMode::Sparse, KeepAliveMode::FrequentThenSparse][..],
            ),
            prop::option::of(interesting_u32()),
            interesting_u32(),
            any::<(bool, bool, bool)>(),
            prop::sample::select(&[0usize, 1, 65_536][..]),
            prop::option::of(prop::sample::select(&[0usize, 1, usize::MAX][..])),
            prop::sample::select(vec![
                Duration::ZERO,
                Duration::from_nanos(1),
                Duration::from_secs(1),
                Duration::MAX,
            ]),
        )
            .prop_map(|(la, lp, mode, intvl, count, (tls, reuse, nd), hwm, buf, timeout)| {
                TcpOptions {
                    local_address: la,
                    local_port: lp,
                    address_reuse: reuse,
                    no_delay: nd,
                    use_secure_transport: tls,
                    keep_alive: mode,
                    keep_alive_sparse_interval: intvl,
                    keep_alive_count: count,
                    readable_high_water_mark: hwm,
                    send_buffer_size: buf,
                    connect_timeout: timeout,
                    ..TcpOptions::default()
                }
            })
    }

    fn udp_options() -> impl Strategy<Value = UdpOptions> {
        (
            prop::option::of(address_text()),
            prop::option::of(any::<u16>()),
            prop::option::of(address_text()),
            prop::option::of(any::<u16>()),
            prop::sample::select(&[0usize, 1, 64][..]),
            interesting_u32(),
            prop::option::of(prop::sample::select(&[0usize, 1, usize::MAX][..])),
        )
            .prop_map(|(ra, rp, la, lp, cap, ttl, buf)| UdpOptions {
                remote_address: ra,
                remote_port: rp,
                local_address: la,
                local_port: lp,
                readable_capacity: cap,
                multicast_ttl: ttl,
                receive_buffer_size: buf,
                ..UdpOptions::default()
            })
    }

    const CONSTRUCTOR_ERRORS: [ErrorName; 4] = [
        ErrorName::SecurityError,
        ErrorName::InvalidAccessError,
        ErrorName::TypeError,
        ErrorName::NotSupportedError,
    ];

    fn check_outcome<T>(result: &Result<T, SocketError>, checks: &Random) -> Result<(), TestCaseError> {
        if let Err(e) = result {
            prop_assert!(CONSTRUCTOR_ERRORS.contains(&e.kind()), "{:?}", e);
        }
        if checks.permission != PermissionState::Granted {
            prop_assert_eq!(result.as_ref().err().map(SocketError::kind), Some(ErrorName::SecurityError));
            prop_assert_eq!(checks.os_questions, 0);
        }
        Ok(())
    }

    proptest! {
        // rule: INV-13, GEN-01, ERR-04, ERR-11, PERM-GEN-01
        #[test]
        fn prop_constructors_only_throw_constructor_errors(
            mut checks in random_checks(),
            remote in address_text(),
            port in any::<u16>(),
            tcp_opts in tcp_options(),
            udp_opts in udp_options(),
            server_local in prop::option::of(address_text()),
            server_tls in any::<bool>(),
        ) {
            let result = tcp_spec(&mut checks, &remote, port, &tcp_opts);
            check_outcome(&result, &checks)?;
            if let Ok(spec) = result {
                prop_assert!(spec.remote_port != 0);
                prop_assert!(spec.local_port != Some(0));
                if let (Some(l), Some(r)) = (spec.local_address, spec.remote.ip()) {
                    prop_assert_eq!(l.is_ipv4(), r.is_ipv4());
                }
                if let Some(i) = spec.keep_alive_sparse_interval {
                    prop_assert!(spec.keep_alive != KeepAliveMode::Off);
                    prop_assert!((1..=32_767).contains(&i.as_secs()));
                }
                prop_assert!(!spec.use_secure_transport || checks.tls_client);
            }

            checks.os_questions = 0;
            let result = udp_spec(&mut checks, &udp_opts);
            check_outcome(&result, &checks)?;
            if let Ok(spec) = result {
                prop_assert!(spec.remote_port != Some(0));
                if let Some(r) = spec.remote.as_ref().and_then(Remote::ip) {
                    prop_assert_eq!(spec.bind_address.is_ipv4(), r.is_ipv4());
                }
                prop_assert!(spec.readable_capacity >= 1 && spec.multicast_ttl <= 255);
            }

            checks.os_questions = 0;
            let opts = TcpServerOptions {
                local_address: server_local,
                use_secure_transport: server_tls,
                accepted: tcp_opts,
                ..TcpServerOptions::default()
            };
            let result = server_spec(&mut checks, &opts);
            check_outcome(&result, &checks)?;
            if let Ok(spec) = result {
                prop_assert!(spec.accepted.config.no_delay);
                prop_assert!(!spec.use_secure_transport || checks.tls_server);
                if opts.local_address.is_none() {
                    prop_assert_eq!(spec.local_address, ip("0.0.0.0"));
                }
            }
        }
    }
}

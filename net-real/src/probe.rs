//! Constructor-check oracles and name resolution. Read DESIGN §3.9 and RULES.md TCP-CTOR-06/07,
//! UDP-CTOR-09..13, SRV-CTOR-04/11 (AMB-09) before editing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tcpudp::backend::cause_of;
use tcpudp_core::address::HostName;
use tcpudp_core::Cause;

/// Is `ip` a local interface address or a wildcard? Binds a throw-away UDP socket to `(ip, 0)`;
/// sends nothing. Any failure is [`Cause::Unreachable`] (the checks turn it into
/// `InvalidAccessError`).
pub(crate) fn probe_local(ip: IpAddr) -> Result<(), Cause> {
    if ip.is_unspecified() {
        return Ok(());
    }
    let probe = || -> std::io::Result<()> {
        let addr = SocketAddr::new(ip, 0);
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&addr.into())
    };
    probe().map_err(|_| Cause::Unreachable)
}

/// Which local address the routing table picks for `remote`: connects an unbound UDP socket to
/// `(remote, 9)` (no datagram is sent) and reads its local address. `None` when unreachable.
pub(crate) fn route(remote: IpAddr) -> Option<IpAddr> {
    let remote = remote.to_canonical();
    let target = SocketAddr::new(remote, 9);
    let socket = Socket::new(Domain::for_address(target), Type::DGRAM, Some(Protocol::UDP)).ok()?;
    if target.is_ipv6() {
        socket.set_only_v6(true).ok()?;
    }
    socket.connect(&target.into()).ok()?;
    let local = socket.local_addr().ok()?.as_socket()?;
    let ip = local.ip().to_canonical();
    let unspecified = match ip {
        IpAddr::V4(v4) => v4 == Ipv4Addr::UNSPECIFIED,
        IpAddr::V6(v6) => v6 == Ipv6Addr::UNSPECIFIED,
    };
    (!unspecified).then_some(ip)
}

/// How long a route found for a remote address is reused without asking the OS again.
pub const ROUTE_CACHE_TTL: Duration = Duration::from_secs(1);

/// Entries a [`RouteCache`] keeps (the oldest goes first).
const ROUTE_CACHE_ENTRIES: usize = 8;

/// Recent positive answers of [`route`]: (remote, local, when found).
#[derive(Debug, Default)]
pub(crate) struct RouteCache(Vec<(IpAddr, IpAddr, Instant)>);

impl RouteCache {
    /// The local address cached for `remote`, if found less than [`ROUTE_CACHE_TTL`] ago.
    pub(crate) fn get(&self, remote: IpAddr, now: Instant) -> Option<IpAddr> {
        self.0
            .iter()
            .find(|(r, _, at)| *r == remote && now.saturating_duration_since(*at) < ROUTE_CACHE_TTL)
            .map(|(_, local, _)| *local)
    }

    /// Remembers that `remote` routes from `local` as of `now`.
    pub(crate) fn put(&mut self, remote: IpAddr, local: IpAddr, now: Instant) {
        self.0.retain(|(r, _, at)| *r != remote && now.saturating_duration_since(*at) < ROUTE_CACHE_TTL);
        if self.0.len() >= ROUTE_CACHE_ENTRIES {
            self.0.remove(0);
        }
        self.0.push((remote, local, now));
    }
}

/// Resolves `name` with the system resolver, in resolver order without duplicates. Any failure,
/// or no address, is [`Cause::HostNotFound`].
pub(crate) async fn resolve(name: HostName) -> Result<Vec<IpAddr>, Cause> {
    let found = tokio::net::lookup_host((name.as_str(), 0)).await.map_err(|err| {
        // getaddrinfo errors carry no io::ErrorKind worth keeping apart: a name that does not
        // resolve is "host not found" whatever the reason (resolution failures are NetworkError).
        match cause_of(&err) {
            Cause::ResourcesExhausted => Cause::ResourcesExhausted,
            _ => Cause::HostNotFound,
        }
    })?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for addr in found {
        let ip = addr.ip().to_canonical();
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if ips.is_empty() {
        return Err(Cause::HostNotFound);
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    // rule: UDP-CTOR-23, SRV-CTOR-11
    #[test]
    fn test_probe_local_wildcards_and_loopback_ok() {
        for ip in ["0.0.0.0", "::", "127.0.0.1", "::1"] {
            assert_eq!(probe_local(ip.parse().unwrap()), Ok(()), "{ip}");
        }
    }

    // rule: UDP-CTOR-11, SRV-CTOR-04, TCP-CTOR-06
    #[test]
    fn test_probe_local_foreign_address_unreachable() {
        // Binding fails with EADDRNOTAVAIL; nothing is sent.
        assert_eq!(probe_local("192.0.2.1".parse().unwrap()), Err(Cause::Unreachable));
        assert_eq!(probe_local("2001:db8::1".parse().unwrap()), Err(Cause::Unreachable));
    }

    // rule: UDP-CTOR-13, UDP-CTOR-08
    #[test]
    fn test_route_loopback_is_itself() {
        assert_eq!(route("127.0.0.1".parse().unwrap()), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(route("::1".parse().unwrap()), Some("::1".parse().unwrap()));
        assert_eq!(route("::ffff:127.0.0.1".parse().unwrap()), Some("127.0.0.1".parse().unwrap()));
    }

    // rule: TCP-CTOR-08, UDP-CTOR-13
    #[test]
    fn test_route_cache_keeps_answers_for_the_ttl_only() {
        let (remote, local) = (IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 1]));
        let t0 = Instant::now();
        let mut cache = RouteCache::default();
        assert_eq!(cache.get(remote, t0), None);
        cache.put(remote, local, t0);
        assert_eq!(cache.get(remote, t0 + ROUTE_CACHE_TTL / 2), Some(local));
        assert_eq!(cache.get(IpAddr::from([127, 0, 0, 2]), t0), None);
        assert_eq!(cache.get(remote, t0 + ROUTE_CACHE_TTL), None, "expired");
        for i in 0..2 * ROUTE_CACHE_ENTRIES as u8 {
            cache.put(IpAddr::from([10, 0, 0, i]), local, t0);
        }
        assert!(cache.0.len() <= ROUTE_CACHE_ENTRIES);
    }

    // rule: UDP-CTOR-02
    #[tokio::test]
    async fn test_resolve_localhost_finds_loopback() {
        let name = HostName::parse("localhost").unwrap();
        let ips = resolve(name).await.expect("localhost resolves");
        assert!(ips.iter().all(|ip| ip.is_loopback()), "{ips:?}");
        assert!(ips.contains(&"127.0.0.1".parse().unwrap()), "{ips:?}");
        let mut deduped = ips.clone();
        deduped.sort();
        deduped.dedup();
        assert_eq!(deduped.len(), ips.len());
    }
}

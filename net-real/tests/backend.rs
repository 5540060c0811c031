//! The real backend through the `Backend` trait, on loopback only (DESIGN §6, §9).

use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::task::Poll;
use std::time::Duration;

use tcpudp::backend::{
    cause_of, Backend, BackendKind, ListenerTransport, RecvMeta, TcpTransport, UdpBind, UdpTransport,
};
use tcpudp_core::address::HostName;
use tcpudp_core::options::{KeepAlive, SocketConfig};
use tcpudp_core::Cause;
use tcpudp_net_real::RealBackend;
use tokio::io::ReadBuf;

/// Hang guard: far above anything loopback needs; never a timing assertion.
const GUARD: Duration = Duration::from_secs(20);

fn backend() -> RealBackend {
    RealBackend::new().expect("inside a tokio runtime")
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn config() -> SocketConfig {
    SocketConfig { address_reuse: true, no_delay: true, send_buffer_size: None, receive_buffer_size: None }
}

async fn guard<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(out) => out,
        Err(_) => panic!("hang guard: {what}"),
    }
}

async fn connect(b: &RealBackend, remote: SocketAddr, cfg: SocketConfig) -> Box<dyn TcpTransport> {
    guard("connect", b.connect(remote, None, cfg)).await.expect("connect")
}

async fn accept(listener: &mut Box<dyn ListenerTransport>) -> io::Result<Box<dyn TcpTransport>> {
    guard("accept", poll_fn(|cx| listener.poll_accept(cx))).await
}

/// A connected pair on `listen_on` (client, accepted).
async fn tcp_pair(
    b: &RealBackend,
    listen_on: &str,
    cfg: SocketConfig,
) -> (Box<dyn TcpTransport>, Box<dyn TcpTransport>) {
    let mut listener = b.listen(addr(listen_on), true, 16).expect("listen");
    let target = listener.local_addr().expect("listener address");
    let (client, server) = tokio::join!(connect(b, target, cfg), accept(&mut listener));
    (client, server.expect("accept"))
}

async fn read(t: &mut Box<dyn TcpTransport>, buf: &mut [u8]) -> io::Result<usize> {
    guard(
        "read",
        poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut *buf);
            std::task::ready!(t.poll_read(cx, &mut rb))?;
            Poll::Ready(Ok(rb.filled().len()))
        }),
    )
    .await
}

async fn write_all(t: &mut Box<dyn TcpTransport>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = guard("write", poll_fn(|cx| t.poll_write(cx, data))).await?;
        data = &data[n..];
    }
    Ok(())
}

async fn read_exact(t: &mut Box<dyn TcpTransport>, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while out.len() < len {
        let n = read(t, &mut buf).await.expect("read");
        assert_ne!(n, 0, "unexpected end of stream");
        out.extend_from_slice(&buf[..n]);
    }
    out
}

fn udp_bind(local: &str, reuse: bool) -> UdpBind {
    UdpBind {
        local: addr(local),
        config: SocketConfig { address_reuse: reuse, ..config() },
        multicast_loopback: false,
        multicast_ttl: 1,
        multicast_interface: None,
    }
}

async fn recv(t: &mut Box<dyn UdpTransport>, buf: &mut [u8]) -> io::Result<RecvMeta> {
    guard("recv", poll_fn(|cx| t.poll_recv_from(cx, &mut ReadBuf::new(&mut *buf)))).await
}

/// One poll with the task's waker: `None` when nothing is queued (readiness already known).
/// Unconstrained, so tokio's cooperative budget cannot make a non-empty socket look empty.
async fn recv_now(t: &mut Box<dyn UdpTransport>, buf: &mut [u8]) -> Option<io::Result<RecvMeta>> {
    tokio::task::unconstrained(poll_fn(|cx| match t.poll_recv_from(cx, &mut ReadBuf::new(&mut *buf)) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending => Poll::Ready(None),
    }))
    .await
}

async fn send(t: &mut Box<dyn UdpTransport>, data: &[u8], dest: SocketAddr) -> io::Result<()> {
    guard("send", poll_fn(|cx| t.poll_send_to(cx, data, dest))).await
}

// rule: UDP-CTOR-23, SRV-CTOR-11, UDP-CTOR-10
#[tokio::test]
async fn probe_local_accepts_loopback_and_wildcards() {
    let b = backend();
    assert_eq!(b.kind(), BackendKind::Real);
    for text in ["127.0.0.1", "0.0.0.0", "::", "::1"] {
        assert_eq!(b.probe_local(ip(text)), Ok(()), "{text}");
    }
}

// rule: UDP-CTOR-11, SRV-CTOR-04, TCP-CTOR-06
#[tokio::test]
async fn probe_local_rejects_foreign_literal() {
    // The bind fails with EADDRNOTAVAIL; nothing is sent.
    assert_eq!(backend().probe_local(ip("192.0.2.1")), Err(Cause::Unreachable));
}

// rule: UDP-CTOR-13, TCP-CTOR-08
#[tokio::test]
async fn route_to_loopback_is_loopback() {
    let b = backend();
    assert_eq!(b.route(ip("127.0.0.1")), Some(ip("127.0.0.1")));
    assert_eq!(b.route(ip("::1")), Some(ip("::1")));
}

// rule: UDP-CTOR-02
#[tokio::test]
async fn resolve_localhost() {
    let ips =
        guard("resolve", backend().resolve(&HostName::parse("localhost").unwrap())).await.expect("resolves");
    assert!(ips.contains(&ip("127.0.0.1")), "{ips:?}");
    let mut sorted = ips.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ips.len(), "no duplicates: {ips:?}");
}

// rule: TCP-OPEN-01, SRV-ACCEPT-01, SRV-ACCEPT-02, TCP-CTOR-09
#[tokio::test]
async fn tcp_echo_on_both_families() {
    let b = backend();
    for listen_on in ["127.0.0.1:0", "[::1]:0"] {
        let (mut client, mut server) = tcp_pair(&b, listen_on, config()).await;
        assert_eq!(client.local_addr().unwrap(), server.peer_addr().unwrap());
        assert_eq!(client.peer_addr().unwrap(), server.local_addr().unwrap());
        assert_ne!(client.local_addr().unwrap().port(), 0);
        // AMB-39: accepted sockets have noDelay true.
        assert_eq!(server.diag().no_delay, Some(true));

        write_all(&mut client, b"ping").await.unwrap();
        let got = read_exact(&mut server, 4).await;
        write_all(&mut server, &got).await.unwrap();
        assert_eq!(read_exact(&mut client, 4).await, b"ping");

        // FIN: the peer reads end of stream.
        guard("shutdown", poll_fn(|cx| client.poll_shutdown(cx))).await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(read(&mut server, &mut buf).await.unwrap(), 0, "{listen_on}");
    }
}

// rule: TCP-CTOR-10
#[tokio::test]
async fn tcp_connect_binds_local_address() {
    let b = backend();
    let mut listener = b.listen(addr("127.0.0.1:0"), true, 16).unwrap();
    let target = listener.local_addr().unwrap();
    let local = addr("127.0.0.1:0");
    let (client, server) =
        tokio::join!(guard("connect", b.connect(target, Some(local), config())), accept(&mut listener));
    let (client, server) = (client.expect("connect"), server.expect("accept"));
    assert_eq!(client.local_addr().unwrap().ip(), local.ip());
    assert_eq!(server.peer_addr().unwrap(), client.local_addr().unwrap());
}

// rule: TCP-OPEN-02
#[tokio::test]
async fn tcp_connect_to_closed_port_is_refused() {
    let b = backend();
    let port = {
        let listener = b.listen(addr("127.0.0.1:0"), true, 1).unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = guard("connect", b.connect(SocketAddr::new(ip("127.0.0.1"), port), None, config())).await.err();
    assert_eq!(err, Some(Cause::Refused));
}

// rule: SRV-CTOR-11, SRV-CTOR-02
#[tokio::test]
async fn ipv6_wildcard_listener_is_v6_only() {
    let b = backend();
    let mut listener = b.listen(addr("[::]:0"), true, 16).unwrap();
    let port = listener.local_addr().unwrap().port();
    let refused =
        guard("connect v4", b.connect(SocketAddr::new(ip("127.0.0.1"), port), None, config())).await.err();
    assert_eq!(refused, Some(Cause::Refused), "\"::\" must not accept IPv4");
    let (client, server) =
        tokio::join!(connect(&b, SocketAddr::new(ip("::1"), port), config()), accept(&mut listener));
    assert_eq!(server.unwrap().peer_addr().unwrap(), client.local_addr().unwrap());

    // And the IPv4 wildcard never accepts IPv6.
    let listener = b.listen(addr("0.0.0.0:0"), true, 16).unwrap();
    let port = listener.local_addr().unwrap().port();
    let refused =
        guard("connect v6", b.connect(SocketAddr::new(ip("::1"), port), None, config())).await.err();
    assert_eq!(refused, Some(Cause::Refused));
}

// rule: SRV-CTOR-12
#[tokio::test]
async fn live_listener_never_shared_and_time_wait_rebind_needs_reuse() {
    let b = backend();
    let mut first = b.listen(addr("127.0.0.1:0"), true, 16).unwrap();
    let local = first.local_addr().unwrap();
    assert_eq!(b.listen(local, true, 16).err(), Some(Cause::AddressInUse));
    assert_eq!(b.listen(local, false, 16).err(), Some(Cause::AddressInUse));

    // The accepted side closes first, so its end (on port P) lingers in FIN_WAIT/TIME_WAIT.
    let (mut client, server) = tokio::join!(connect(&b, local, config()), accept(&mut first));
    let mut server = server.unwrap();
    guard("shutdown", poll_fn(|cx| server.poll_shutdown(cx))).await.unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(read(&mut client, &mut buf).await.unwrap(), 0);
    drop(server);
    drop(client);
    drop(first);

    assert_eq!(b.listen(local, false, 16).err(), Some(Cause::AddressInUse));
    let again = b.listen(local, true, 16).expect("reuse rebinds over TIME_WAIT");
    assert_eq!(again.local_addr().unwrap(), local);
}

// rule: EXT-03, TCP-READ-ERR-01
#[tokio::test]
async fn reset_makes_peer_read_fail_with_reset() {
    let b = backend();
    let (client, mut server) = tcp_pair(&b, "127.0.0.1:0", config()).await;
    client.reset();
    let mut buf = [0u8; 8];
    let err = read(&mut server, &mut buf).await.expect_err("RST, not FIN");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(cause_of(&err), Cause::Reset);
}

// rule: TCP-CTOR-12, TCP-CTOR-11, TCP-CTOR-16, ENUM-KA-01, DICT-TCPOPT-06
#[tokio::test]
async fn tcp_options_read_back_from_the_os() {
    let b = backend();
    let cfg = SocketConfig {
        address_reuse: false,
        no_delay: false,
        send_buffer_size: Some(32_768),
        receive_buffer_size: Some(48_000),
    };
    let (client, _server) = tcp_pair(&b, "127.0.0.1:0", cfg).await;
    let diag = client.diag();
    assert_eq!(diag.no_delay, Some(false));
    assert_eq!(diag.address_reuse, Some(false));
    assert_eq!(diag.keep_alive, Some(false), "keep-alive off by default");
    assert!(diag.send_buffer_size.unwrap() >= 32_768, "{diag:?}");
    assert!(diag.receive_buffer_size.unwrap() >= 48_000, "{diag:?}");

    let (client, _server) = tcp_pair(&b, "[::1]:0", config()).await;
    let diag = client.diag();
    assert_eq!(diag.no_delay, Some(true));
    assert_eq!(diag.address_reuse, Some(true));
}

// rule: ENUM-KA-02, ENUM-KA-03, TCP-CTOR-16
#[tokio::test]
async fn keep_alive_timing_applied_and_turned_off() {
    let b = backend();
    let (mut client, _server) = tcp_pair(&b, "127.0.0.1:0", config()).await;
    // frequent-then-sparse: 10 s during the first minute...
    let ten = Some(Duration::from_secs(10));
    client.set_keep_alive(Some(KeepAlive { idle: ten, interval: ten, count: 9 })).unwrap();
    let diag = client.diag();
    assert_eq!(diag.keep_alive, Some(true));
    assert_eq!(
        (diag.keep_alive_idle, diag.keep_alive_interval, diag.keep_alive_count),
        (Some(10), Some(10), Some(9))
    );
    // ...then the sparse interval.
    let sparse = Some(Duration::from_secs(30));
    client.set_keep_alive(Some(KeepAlive { idle: sparse, interval: sparse, count: 4 })).unwrap();
    let diag = client.diag();
    assert_eq!(
        (diag.keep_alive_idle, diag.keep_alive_interval, diag.keep_alive_count),
        (Some(30), Some(30), Some(4))
    );
    client.set_keep_alive(None).unwrap();
    assert_eq!(client.diag().keep_alive, Some(false));
}

/// The host's keep-alive defaults (what TCP_KEEPIDLE / TCP_KEEPINTVL report when untouched).
fn host_keep_alive_defaults() -> (u64, u64) {
    let read = |name: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    (read("tcp_keepalive_time"), read("tcp_keepalive_intvl"))
}

// rule: DICT-TCPOPT-07, ENUM-KA-03
#[tokio::test]
async fn keep_alive_without_interval_uses_host_defaults() {
    let b = backend();
    let (mut client, _server) = tcp_pair(&b, "127.0.0.1:0", config()).await;
    let (idle, interval) = host_keep_alive_defaults();
    client.set_keep_alive(Some(KeepAlive { idle: None, interval: None, count: 9 })).unwrap();
    let diag = client.diag();
    assert_eq!(diag.keep_alive, Some(true));
    assert_eq!(
        (diag.keep_alive_idle, diag.keep_alive_interval, diag.keep_alive_count),
        (Some(idle), Some(interval), Some(9))
    );

    // After explicit timing, "OS default" writes the host's defaults back.
    let ten = Some(Duration::from_secs(10));
    client.set_keep_alive(Some(KeepAlive { idle: ten, interval: ten, count: 9 })).unwrap();
    client.set_keep_alive(Some(KeepAlive { idle: None, interval: None, count: 9 })).unwrap();
    let diag = client.diag();
    assert_eq!((diag.keep_alive_idle, diag.keep_alive_interval), (Some(idle), Some(interval)));
}

// rule: UDP-CTOR-22, UDP-OPEN-02
#[tokio::test]
async fn udp_port_shared_only_when_all_reuse() {
    let b = backend();
    let first = b.bind_udp(udp_bind("127.0.0.1:0", true)).unwrap();
    let local = first.local_addr().unwrap();
    let second = b.bind_udp(UdpBind { local, ..udp_bind("127.0.0.1:0", true) }).expect("both reuse");
    assert_eq!(second.local_addr().unwrap(), local);
    let third = b.bind_udp(UdpBind { local, ..udp_bind("127.0.0.1:0", false) });
    assert_eq!(third.err(), Some(Cause::AddressInUse));

    // Reverse order: the first without reuse keeps the port.
    let exclusive = b.bind_udp(udp_bind("127.0.0.1:0", false)).unwrap();
    let local = exclusive.local_addr().unwrap();
    assert_eq!(
        b.bind_udp(UdpBind { local, ..udp_bind("127.0.0.1:0", true) }).err(),
        Some(Cause::AddressInUse)
    );
}

// rule: UDP-READ-01, UDP-READ-02, UDP-READ-03, UDP-READ-06, UDP-CTOR-23
#[tokio::test]
async fn udp_receives_with_canonical_source_on_both_families() {
    let b = backend();
    for (local, peer_on) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::]:0", "[::1]:0")] {
        let mut socket = b.bind_udp(udp_bind(local, true)).unwrap();
        let port = socket.local_addr().unwrap().port();
        let peer = std::net::UdpSocket::bind(peer_on).unwrap();
        let dest = SocketAddr::new(peer.local_addr().unwrap().ip(), port);
        peer.send_to(b"hello", dest).unwrap();
        peer.send_to(b"", dest).unwrap();
        let mut buf = vec![0u8; 65_535];
        let meta = recv(&mut socket, &mut buf).await.unwrap();
        assert_eq!((meta.len, &buf[..meta.len]), (5, &b"hello"[..]));
        assert_eq!(meta.from, peer.local_addr().unwrap());
        let meta = recv(&mut socket, &mut buf).await.unwrap();
        assert_eq!(meta.len, 0, "zero-length datagram delivered");
        assert_eq!(socket.diag().received, 2);
        assert_eq!(meta.dropped_total, 0);
    }
}

// rule: UDP-READ-04, EXT-09
#[tokio::test]
async fn udp_overflow_is_counted_by_the_kernel() {
    const N: u32 = 5_000;
    let b = backend();
    let mut socket = b.bind_udp(udp_bind("127.0.0.1:0", true)).unwrap();
    let dest = socket.local_addr().unwrap();
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for seq in 0..N {
        let mut datagram = [0u8; 64];
        datagram[..4].copy_from_slice(&seq.to_be_bytes());
        peer.send_to(&datagram, dest).unwrap();
    }
    // Read everything queued: the first read waits for readiness, later ones stop at EAGAIN.
    let mut buf = vec![0u8; 65_535];
    let mut delivered = 0u64;
    let mut last_seq = None;
    let mut next = Some(recv(&mut socket, &mut buf).await);
    while let Some(result) = next {
        let meta = result.expect("overflow never errors the socket");
        assert_eq!(meta.len, 64, "every datagram whole");
        let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
        assert!(last_seq.is_none_or(|last| seq > last), "in order");
        last_seq = Some(seq);
        delivered += 1;
        next = recv_now(&mut socket, &mut buf).await;
    }
    assert!(delivered < u64::from(N), "the kernel buffer must have overflowed ({delivered})");
    // The marker carries the drop count (SO_RXQ_OVFL travels with each datagram).
    peer.send_to(&N.to_be_bytes(), dest).unwrap();
    let marker = recv(&mut socket, &mut buf).await.unwrap();
    assert_eq!(&buf[..4], &N.to_be_bytes());
    delivered += 1;
    assert!(marker.dropped_total > 0, "drops counted: {marker:?}");
    assert!(delivered + marker.dropped_total <= u64::from(N) + 1, "{delivered} + {}", marker.dropped_total);
}

// rule: UDP-WRITE-07
#[tokio::test]
async fn udp_datagram_size_limits_per_family() {
    let b = backend();
    for (local, max) in [("127.0.0.1:0", 65_507usize), ("[::1]:0", 65_527)] {
        let mut socket = b.bind_udp(udp_bind(local, true)).unwrap();
        let dest = socket.local_addr().unwrap();
        let payload = vec![7u8; max + 1];
        send(&mut socket, &payload[..max], dest).await.expect("largest datagram");
        let mut buf = vec![0u8; 65_535];
        let meta = recv(&mut socket, &mut buf).await.unwrap();
        assert_eq!(meta.len, max, "received whole");
        let err = send(&mut socket, &payload, dest).await.expect_err("one byte too many");
        assert_eq!(cause_of(&err), Cause::MessageTooLarge, "{local}: {err}");
    }
}

// rule: UDP-WRITE-14, UDP-WRITE-12
#[tokio::test]
async fn udp_send_to_other_family_fails_only_that_send() {
    let b = backend();
    let mut v4 = b.bind_udp(udp_bind("127.0.0.1:0", true)).unwrap();
    let err = send(&mut v4, b"x", addr("[::1]:9")).await.expect_err("IPv4 socket, IPv6 destination");
    assert_eq!(cause_of(&err), Cause::FamilyMismatch, "{err}");
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    send(&mut v4, b"after", peer.local_addr().unwrap()).await.expect("next send works");
    let mut buf = [0u8; 16];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"after"[..], v4.local_addr().unwrap()));

    let mut v6 = b.bind_udp(udp_bind("[::]:0", true)).unwrap();
    assert!(send(&mut v6, b"x", addr("127.0.0.1:9")).await.is_err(), "\"::\" is IPv6 only");
    let peer6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
    send(&mut v6, b"six", peer6.local_addr().unwrap()).await.expect("IPv6 to ::1");
    let (n, _) = peer6.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"six");
}

fn multicast_bind(local: &str, loopback: bool) -> UdpBind {
    UdpBind {
        local: addr(local),
        config: config(),
        multicast_loopback: loopback,
        multicast_ttl: 0,
        multicast_interface: Some(ip("127.0.0.1")),
    }
}

// rule: UDP-MCAST-07, UDP-CTOR-18, DICT-UDPOPT-06, UDP-CTOR-17
#[tokio::test]
async fn udp_options_read_back_from_the_os() {
    let b = backend();
    let mut bind = multicast_bind("0.0.0.0:0", false);
    bind.config.receive_buffer_size = Some(40_000);
    bind.config.send_buffer_size = Some(20_000);
    let socket = b.bind_udp(bind).unwrap();
    let diag = socket.diag();
    assert_eq!(diag.multicast_loopback, Some(false), "IP_MULTICAST_LOOP set explicitly (AMB-32)");
    assert_eq!(diag.multicast_ttl, Some(0));
    assert_eq!(diag.multicast_interface, Some(ip("127.0.0.1")));
    assert_eq!(diag.address_reuse, Some(true));
    assert!(diag.receive_buffer_size.unwrap() >= 40_000, "{diag:?}");
    assert!(diag.send_buffer_size.unwrap() >= 20_000, "{diag:?}");
    assert_eq!(diag.received, 0);

    let socket = b.bind_udp(UdpBind { multicast_ttl: 3, ..multicast_bind("0.0.0.0:0", true) }).unwrap();
    let diag = socket.diag();
    assert_eq!((diag.multicast_loopback, diag.multicast_ttl), (Some(true), Some(3)));

    let socket = b.bind_udp(udp_bind("0.0.0.0:0", false)).unwrap();
    let diag = socket.diag();
    assert_eq!((diag.address_reuse, diag.multicast_interface), (Some(false), None));

    // IPv6 socket, interface named by 127.0.0.1: IPV6_MULTICAST_IF is lo's index.
    let socket = b.bind_udp(multicast_bind("[::]:0", false)).unwrap();
    let diag = socket.diag();
    assert_eq!(diag.multicast_loopback, Some(false));
    assert_eq!(diag.multicast_interface.map(|ip| ip.is_loopback()), Some(true), "{diag:?}");
}

// rule: UDP-MCAST-01, UDP-MCAST-02, UDP-MCAST-05, UDP-MCAST-08, UDP-WRITE-11
#[tokio::test]
async fn multicast_membership_is_per_socket() {
    let b = backend();
    let (g1, g2, g3) = (ip("239.255.77.1"), ip("239.255.77.2"), ip("239.255.77.3"));
    let mut a = b.bind_udp(multicast_bind("0.0.0.0:0", false)).unwrap();
    let port = a.local_addr().unwrap().port();
    let mut w = b.bind_udp(multicast_bind(&format!("0.0.0.0:{port}"), false)).unwrap();
    let mut sender = b.bind_udp(multicast_bind("127.0.0.1:0", true)).unwrap();
    let to = |group: IpAddr| SocketAddr::new(group, port);

    a.leave_multicast(g1).expect("leaving a group never joined is a no-op");
    a.join_multicast(g1).unwrap();
    a.join_multicast(g1).expect("joining twice is a no-op");
    w.join_multicast(g2).unwrap();

    // G1 reaches A; W did not join G1, so its first datagram is the G2 marker (IP_MULTICAST_ALL=0).
    send(&mut sender, b"g1", to(g1)).await.unwrap();
    send(&mut sender, b"g2", to(g2)).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let meta = recv(&mut a, &mut buf).await.unwrap();
    assert_eq!(&buf[..meta.len], b"g1");
    assert_eq!(meta.from, sender.local_addr().unwrap());
    let meta = recv(&mut w, &mut buf).await.unwrap();
    assert_eq!(&buf[..meta.len], b"g2", "W must not receive a group it did not join");

    // After A leaves G1 (and joins G3 as a marker), G1 no longer reaches it.
    a.leave_multicast(g1).unwrap();
    a.join_multicast(g3).unwrap();
    w.join_multicast(g1).unwrap();
    send(&mut sender, b"g1 again", to(g1)).await.unwrap();
    send(&mut sender, b"g3", to(g3)).await.unwrap();
    let meta = recv(&mut w, &mut buf).await.unwrap();
    assert_eq!(&buf[..meta.len], b"g1 again", "the witness still gets G1");
    let meta = recv(&mut a, &mut buf).await.unwrap();
    assert_eq!(&buf[..meta.len], b"g3", "A left G1");
    assert_eq!(a.diag().received, 2);
}

// rule: UDP-MCAST-06
#[tokio::test]
async fn multicast_group_of_other_family_is_refused() {
    let b = backend();
    let mut v4 = b.bind_udp(multicast_bind("0.0.0.0:0", false)).unwrap();
    let err = v4.join_multicast(ip("ff15::1")).expect_err("IPv6 group on an IPv4 socket");
    assert_eq!(cause_of(&err), Cause::FamilyMismatch);
    let mut v6 = b.bind_udp(multicast_bind("[::]:0", false)).unwrap();
    let err = v6
        .join_multicast(IpAddr::V4(Ipv4Addr::new(239, 255, 77, 9)))
        .expect_err("IPv4 group on an IPv6 socket");
    assert_eq!(cause_of(&err), Cause::FamilyMismatch);
}

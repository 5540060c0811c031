//! The adapter's model through the `Backend` trait, in harness worlds: port sharing and release,
//! the accept queue, IPv6 worlds, the fault API's trace, and the random streams.

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::task::{ready, Poll};
use std::time::Duration;

use tcpudp::backend::{Backend, ListenerTransport, TcpTransport, UdpBind, UdpTransport};
use tcpudp_core::options::SocketConfig;
use tcpudp_core::Cause;
use tcpudp_net_sim::{LinkProfile, SimBackend, SimBuilder, SimRng, TcpLoss};
use tokio::io::ReadBuf;

fn config(address_reuse: bool) -> SocketConfig {
    SocketConfig { address_reuse, no_delay: true, send_buffer_size: None, receive_buffer_size: None }
}

fn udp_bind(local: SocketAddr, address_reuse: bool) -> UdpBind {
    UdpBind {
        local,
        config: config(address_reuse),
        multicast_loopback: false,
        multicast_ttl: 1,
        multicast_interface: None,
    }
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

async fn send_to(u: &mut dyn UdpTransport, data: &[u8], dest: SocketAddr) -> io::Result<()> {
    poll_fn(|cx| u.poll_send_to(cx, data, dest)).await
}

async fn recv_from(u: &mut dyn UdpTransport) -> io::Result<(Vec<u8>, SocketAddr, u64)> {
    let mut buf = vec![0u8; 65_535];
    let meta = poll_fn(|cx| {
        let mut rb = ReadBuf::new(&mut buf);
        let meta = ready!(u.poll_recv_from(cx, &mut rb))?;
        Poll::Ready(Ok::<_, io::Error>(meta))
    })
    .await?;
    buf.truncate(meta.len);
    Ok((buf, meta.from, meta.dropped_total))
}

async fn accept(l: &mut dyn ListenerTransport) -> io::Result<Box<dyn TcpTransport>> {
    poll_fn(|cx| l.poll_accept(cx)).await
}

#[test]
fn test_udp_port_sharing_follows_linux_reuse_rules() {
    let mut sim = SimBuilder::new(1).build();
    sim.client("client", async {
        let backend = SimBackend::new("client")?;
        let me = backend.host_ip();
        let first = backend.bind_udp(udp_bind(any(5000), false)).expect("bind");
        // The same port, overlapping addresses, without reuse on both: in use.
        assert_eq!(backend.bind_udp(udp_bind(any(5000), true)).err(), Some(Cause::AddressInUse));
        assert_eq!(backend.bind_udp(udp_bind((me, 5000).into(), false)).err(), Some(Cause::AddressInUse));
        drop(first);
        // Released at once: bound again right away.
        let _again = backend.bind_udp(udp_bind(any(5000), true)).expect("port released at once");
        let _shared = backend.bind_udp(udp_bind(any(5000), true)).expect("both asked for reuse");
        // Non-overlapping addresses share a port without reuse (as Linux).
        let _lo = backend.bind_udp(udp_bind((Ipv4Addr::LOCALHOST, 5001).into(), false)).expect("loopback");
        let _own = backend.bind_udp(udp_bind((me, 5001).into(), false)).expect("own address");
        Ok(())
    })
    .expect("client");
    sim.run().expect("simulation");
}

#[test]
fn test_a_socket_bound_to_the_host_address_does_not_get_loopback_traffic() {
    let mut sim = SimBuilder::new(2).build();
    sim.client("client", async {
        let backend = SimBackend::new("client")?;
        let me = backend.host_ip();
        let mut own = backend.bind_udp(udp_bind((me, 5000).into(), true)).expect("own address");
        let mut wild = backend.bind_udp(udp_bind(any(5000), true)).expect("wildcard");
        let mut sender = backend.bind_udp(udp_bind(any(0), true)).expect("sender");
        send_to(&mut *sender, b"to loopback", (Ipv4Addr::LOCALHOST, 5000).into()).await?;
        send_to(&mut *sender, b"to me", (me, 5000).into()).await?;
        let (data, from, _) = recv_from(&mut *wild).await?;
        assert_eq!((data.as_slice(), from.ip()), (&b"to loopback"[..], IpAddr::from(Ipv4Addr::LOCALHOST)));
        let (data, from, _) = recv_from(&mut *own).await?;
        assert_eq!((data.as_slice(), from.ip()), (&b"to me"[..], me));
        Ok(())
    })
    .expect("client");
    sim.run().expect("simulation");
}

#[test]
fn test_dropped_total_counts_tail_drops_of_the_emulated_buffer() {
    let mut sim = SimBuilder::new(3).build();
    sim.client("client", async {
        let backend = SimBackend::new("client")?;
        // A 4 KiB receive buffer (8 KiB as Linux reports it): 7 datagrams of 400 bytes fit.
        let mut bind = udp_bind(any(5000), true);
        bind.config.receive_buffer_size = Some(4096);
        let mut rx = backend.bind_udp(bind).expect("bind");
        let mut tx = backend.bind_udp(udp_bind(any(0), true)).expect("bind");
        for i in 0..20u8 {
            send_to(&mut *tx, &[i; 400], (Ipv4Addr::LOCALHOST, 5000).into()).await?;
        }
        let per = 400 + tcpudp_net_sim::UDP_DATAGRAM_OVERHEAD;
        let fit = 8192 / per; // tail drop once the next one would not fit
        for i in 0..fit {
            let (data, _, dropped) = recv_from(&mut *rx).await?;
            assert_eq!(data, vec![i as u8; 400]);
            assert_eq!(dropped, (20 - fit) as u64, "current as of this datagram");
        }
        send_to(&mut *tx, b"marker", (Ipv4Addr::LOCALHOST, 5000).into()).await?;
        assert_eq!(recv_from(&mut *rx).await?.0, b"marker", "the next thing after the queued ones");
        Ok(())
    })
    .expect("client");
    sim.run().expect("simulation");
}

#[test]
fn test_a_closed_listener_resets_its_queue_and_frees_its_port_at_once() {
    let mut sim = SimBuilder::new(4).link(LinkProfile::fixed(Duration::from_millis(5))).build();
    sim.host("server", || async {
        let backend = SimBackend::new("server")?;
        let listener = backend.listen(any(7000), true, 16).expect("listen");
        tokio::time::sleep(Duration::from_secs(1)).await; // the client's connection waits queued
        drop(listener);
        let mut again = backend.listen(any(7000), true, 16).expect("the port is free at once");
        let _second = accept(&mut *again).await?;
        std::future::pending::<()>().await;
        Ok(())
    })
    .expect("server");
    sim.client("client", async {
        let backend = SimBackend::new("client")?;
        let server = tcpudp_net_sim::SimFaults::current().and_then(|f| f.host_ip("server")).expect("server");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut first = backend.connect((server, 7000).into(), None, config(true)).await.expect("queued");
        let mut buf = [0u8; 8];
        let outcome = poll_fn(|cx| first.poll_read(cx, &mut ReadBuf::new(&mut buf))).await;
        assert_eq!(outcome.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset));
        backend.connect((server, 7000).into(), None, config(true)).await.expect("the new listener");
        Ok(())
    })
    .expect("client");
    sim.run().expect("simulation");
}

#[test]
fn test_ipv6_world_with_faults() {
    let mut sim = SimBuilder::new(5).ipv6().link(LinkProfile::fixed(Duration::from_millis(5))).build();
    sim.host("server", || async {
        let backend = SimBackend::new("server")?;
        let mut udp = backend.bind_udp(udp_bind((Ipv6Addr::UNSPECIFIED, 9000).into(), true)).expect("bind");
        loop {
            let (data, from, _) = recv_from(&mut *udp).await?;
            send_to(&mut *udp, &data, from).await?;
        }
    })
    .expect("server");
    let faults = sim.faults();
    sim.client("client", async move {
        let backend = SimBackend::new("client")?;
        assert!(backend.host_ip().is_ipv6());
        let server = faults.host_ip("server").expect("server");
        let mut udp = backend.bind_udp(udp_bind((Ipv6Addr::UNSPECIFIED, 0).into(), true)).expect("bind");
        faults.partition("client", "server")?;
        send_to(&mut *udp, b"lost", (server, 9000).into()).await?;
        faults.repair("client", "server")?;
        send_to(&mut *udp, b"echo", (server, 9000).into()).await?;
        assert_eq!(recv_from(&mut *udp).await?.0, b"echo", "the first was dropped by the partition");
        Ok(())
    })
    .expect("client");
    let report = sim.run().expect("simulation");
    assert!(report.trace.iter().any(|l| l.contains("lost: partition")), "{:#?}", report.trace);
}

#[test]
fn test_every_fault_call_is_in_the_trace() {
    let mut sim = SimBuilder::new(6).build();
    sim.host("server", || async { std::future::pending::<turmoil::Result>().await }).expect("server");
    sim.client("client", async { Ok(()) }).expect("client");
    sim.at(Duration::ZERO, |f| f.partition("client", "server"));
    sim.at(Duration::ZERO, |f| f.tcp_loss("client", "server", TcpLoss::Times(2)));
    sim.at(Duration::ZERO, |f| f.repair("client", "server"));
    let report = sim.run().expect("simulation");
    let faults: Vec<&str> =
        report.trace.iter().filter_map(|l| l.split_once(" fault ").map(|(_, f)| f)).collect();
    assert_eq!(
        faults,
        [
            "partition client server",
            "partition server client",
            "tcp_loss client server Times(2)",
            "repair client server",
            "repair server client"
        ]
    );
}

#[test]
fn test_the_simulations_random_streams_depend_on_seed_purpose_and_object_only() {
    let sim = SimBuilder::new(7).build();
    let mut a = sim.rng("workload", "client");
    assert_eq!(a.next_u64(), SimRng::stream(7, "workload", "client").next_u64());
    assert_ne!(sim.rng("workload", "server").next_u64(), SimRng::stream(7, "workload", "client").next_u64());
}

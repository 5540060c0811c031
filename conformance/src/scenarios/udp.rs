//! UDPSocket through the public API, on both backends (RULES.md §3, §9.1, DICT-UDPOPT, DICT-MSG,
//! EXT-09, STATE-06). Real-only checks (options read back, IPv6, multicast sharing a port,
//! namespaces) are in `real_udp.rs`.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::support_udp::{
    assert_err, assert_udp_state_log, err_name, flood_unread_socket, next_msg, pending_once, seq_of,
    seq_payload, within, Peer, Rng, LO,
};
use crate::{BackendChoice, Ctx};
use bytes::Bytes;
use tcpudp::{Cause, Datagram, ErrorName, Policy, ReadyState, UdpOptions, UdpSocket};
use tcpudp_core::permission::{PermissionRequest, PermissionStore, UdpPermissionOptions};

crate::only_on! {

    fn lo(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    fn remote(address: &str, port: u16) -> UdpOptions {
        UdpOptions { remote_address: Some(address.into()), remote_port: Some(port), ..UdpOptions::default() }
    }

    fn udp_grant(address: Option<&str>, port: Option<u16>) -> PermissionRequest {
        PermissionRequest::from(UdpPermissionOptions {
            remote_address: address.map(Into::into),
            remote_port: port,
            ..UdpPermissionOptions::default()
        })
    }

    /// Options for multicast tests: the interface pinned to loopback and TTL 0 (RULES §0.4), on both
    /// backends (the simulator accepts the loopback interface).
    fn mcast(options: UdpOptions) -> UdpOptions {
        UdpOptions { multicast_interface: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), multicast_ttl: 0, ..options }
    }

    /// The simulator may reorder datagrams between hosts, so a causal marker there is backed by one
    /// simulated second of silence (RULES §0.4 `not_within`, exact in simulation).
    async fn nothing_more_in_sim(
        ctx: &Ctx,
        reader: &mut tcpudp::UdpReadable,
    ) -> Result<(), Box<dyn std::error::Error>> {
        if ctx.backend() == BackendChoice::Sim {
            let late = tokio::time::timeout(std::time::Duration::from_secs(1), reader.read()).await;
            assert!(late.is_err(), "something arrived after the marker: {late:?}");
        }
        Ok(())
    }

    on_both_backends! {
        /// rule: UDP-CTOR-04, UDP-CTOR-07, UDP-CTOR-14, UDP-CTOR-15, UDP-CTOR-17, UDP-CTOR-18, DICT-UDPOPT-01, DICT-UDPOPT-02, DICT-UDPOPT-03, DICT-UDPOPT-04, DICT-UDPOPT-05, DICT-UDPOPT-06, UDP-OPEN-01
        fn default_options_attributes(world: &mut World) {
            world.client("client", |ctx| async move {
                let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                assert_eq!(sock.remote_address(), None);
                assert_eq!(sock.remote_port(), None);
                assert_eq!(sock.local_address(), None);
                assert!(sock.address_reuse());
                assert!(!sock.loopback());
                within("opened", sock.opened()).await??;
                assert_eq!(sock.ready_state(), ReadyState::Open);
                let port = sock.local_port().ok_or("no local port after opened")?;
                assert_ne!(port, 0);
                assert_eq!(sock.local_address(), None, "the wildcard is not tied to an interface");
                // Not tied to one interface: a datagram to 127.0.0.1:port arrives.
                let peer = Peer::bind(&ctx).await?;
                peer.send_lo(b"hi", port).await?;
                let mut reader = sock.readable()?;
                let msg = next_msg(&mut reader).await?;
                assert_eq!(&msg.data[..], b"hi");
                // No default destination: a write must name one (DICT-UDPOPT-03/04).
                let writer = sock.writable()?;
                assert_err(within("write", writer.write(Datagram::new(&b"x"[..]))).await?, ErrorName::InvalidAccessError);
                assert_err(
                    within("write", writer.write(Datagram { remote_address: Some(LO.into()), ..Datagram::new(&b"x"[..]) })).await?,
                    ErrorName::InvalidAccessError,
                );
                let explicit = UdpSocket::new(
                    &ctx.net,
                    UdpOptions { address_reuse: false, loopback: true, ..UdpOptions::default() },
                )?;
                assert!(!explicit.address_reuse());
                assert!(explicit.loopback());
                within("opened", explicit.opened()).await??;
                within("close", sock.close()).await??;
                within("close", explicit.close()).await??;
                Ok(())
            });
        }

        /// rule: UDP-CTOR-02, UDP-CTOR-05, UDP-CTOR-08, UDP-CTOR-10, UDP-CTOR-13, UDP-CTOR-23, UDP-WRITE-06
        fn given_addresses_are_reported(world: &mut World) {
            world.client("client", |ctx| async move {
                let peer = Peer::bind(&ctx).await?;
                let p = peer.port();
                // Remote literal, no local address: bound by routing to 127.0.0.1 (UDP-CTOR-13).
                let routed = UdpSocket::new(&ctx.net, remote(LO, p))?;
                assert_eq!(routed.remote_address(), Some(LO));
                assert_eq!(routed.remote_port(), Some(p));
                assert_eq!(routed.local_address().as_deref(), Some(LO));
                within("opened", routed.opened()).await??;
                assert_eq!(routed.local_address().as_deref(), Some(LO));
                // The default destination is used (UDP-CTOR-02/05), as exactly one datagram.
                within("write", routed.writable()?.write(Datagram::new(&b"to-default"[..]))).await??;
                let (data, from) = peer.recv().await?;
                assert_eq!(data, b"to-default");
                assert_eq!(from.port(), routed.local_port().ok_or("no port")?);
                // Local and remote both given (UDP-CTOR-08).
                let both = UdpSocket::new(
                    &ctx.net,
                    UdpOptions { local_address: Some(LO.into()), ..remote(LO, p) },
                )?;
                assert_eq!(both.local_address().as_deref(), Some(LO));
                within("opened", both.opened()).await??;
                within("write", both.writable()?.write(Datagram::new(&b"both"[..]))).await??;
                assert_eq!(peer.recv().await?.0, b"both");
                // Local only (UDP-CTOR-10): receives on 127.0.0.1.
                let local = UdpSocket::new(&ctx.net, UdpOptions { local_address: Some(LO.into()), ..UdpOptions::default() })?;
                assert_eq!(local.local_address().as_deref(), Some(LO));
                assert_eq!(local.remote_address(), None);
                within("opened", local.opened()).await??;
                peer.send_lo(b"local", local.local_port().ok_or("no port")?).await?;
                assert_eq!(&next_msg(&mut local.readable()?).await?.data[..], b"local");
                // The IPv4 wildcard literal is reported as given and bound (UDP-CTOR-23).
                let wild = UdpSocket::new(&ctx.net, UdpOptions { local_address: Some("0.0.0.0".into()), ..remote(LO, p) })?;
                assert_eq!(wild.local_address().as_deref(), Some("0.0.0.0"));
                within("opened", wild.opened()).await??;
                within("write", wild.writable()?.write(Datagram::new(&b"wild"[..]))).await??;
                assert_eq!(peer.recv().await?.0, b"wild");
                peer.send_lo(b"to-wild", wild.local_port().ok_or("no port")?).await?;
                assert_eq!(&next_msg(&mut wild.readable()?).await?.data[..], b"to-wild");
                for s in [&routed, &both, &local, &wild] {
                    within("close", s.close()).await??;
                }
                Ok(())
            });
        }

        /// rule: UDP-CTOR-16
        fn local_port_is_bound(world: &mut World) {
            world.client("client", |ctx| async move {
                // A port known to be free: one this test bound and released (GEN-14).
                let first = UdpSocket::new(&ctx.net, UdpOptions { address_reuse: false, ..UdpOptions::default() })?;
                within("opened", first.opened()).await??;
                let p = first.local_port().ok_or("no port")?;
                within("close", first.close()).await??;
                let sock = UdpSocket::new(&ctx.net, UdpOptions { local_port: Some(p), address_reuse: false, ..UdpOptions::default() })?;
                assert_eq!(sock.local_port(), Some(p));
                within("opened", sock.opened()).await??;
                assert_eq!(sock.local_port(), Some(p));
                let peer = Peer::bind(&ctx).await?;
                peer.send_lo(b"p", p).await?;
                let msg = next_msg(&mut sock.readable()?).await?;
                assert_eq!(&msg.data[..], b"p");
                Ok(())
            });
        }

        /// rule: UDP-CTOR-03, UDP-CTOR-06, UDP-CTOR-09, UDP-CTOR-20, GEN-01
        fn invalid_constructor_input_throws(world: &mut World) {
            world.client("client", |ctx| async move {
                let created = ctx.net.faults().created_sockets();
                for bad in ["300.1.1.1", "1.2.3.4.5", "127.1", "010.0.0.1", "a..b", "-a.test", "", "[::1]"] {
                    let r = UdpSocket::new(&ctx.net, remote(bad, 9));
                    assert_eq!(err_name(&r), Some(ErrorName::InvalidAccessError), "remote {bad:?}");
                    let r = UdpSocket::new(&ctx.net, UdpOptions { remote_address: Some(bad.into()), ..UdpOptions::default() });
                    assert_eq!(err_name(&r), Some(ErrorName::InvalidAccessError), "remote {bad:?} without port");
                }
                assert!(ctx.net.faults().lookups().is_empty(), "an invalid address was looked up: {:?}", ctx.net.faults().lookups());
                let r = UdpSocket::new(&ctx.net, remote(LO, 0));
                assert_eq!(err_name(&r), Some(ErrorName::InvalidAccessError), "remote port 0");
                let r = UdpSocket::new(&ctx.net, UdpOptions { remote_port: Some(0), ..UdpOptions::default() });
                assert_eq!(err_name(&r), Some(ErrorName::InvalidAccessError), "remote port 0 alone");
                // Family mismatch between local and remote (UDP-CTOR-09).
                let r = UdpSocket::new(&ctx.net, UdpOptions { local_address: Some(LO.into()), ..remote("::1", 9) });
                assert_eq!(err_name(&r), Some(ErrorName::InvalidAccessError), "local 127.0.0.1 for remote ::1");
                // Local address must be an IP literal.
                for bad_local in ["localhost", "127.1", "", "[::1]"] {
                    let r = UdpSocket::new(&ctx.net, UdpOptions { local_address: Some(bad_local.into()), ..UdpOptions::default() });
                    assert_eq!(err_name(&r), Some(ErrorName::InvalidAccessError), "local {bad_local:?}");
                }
                // Bad address and bad port at once: InvalidAccessError (UDP-CTOR-20).
                let r = UdpSocket::new(&ctx.net, remote("300.1.1.1", 0));
                assert_eq!(err_name(&r), Some(ErrorName::InvalidAccessError));
                assert_eq!(ctx.net.faults().created_sockets(), created, "a failed constructor made a socket");
                assert_eq!(ctx.net.faults().open_sockets(), 0);
                // Permission is checked first (UDP-CTOR-20): a denial beats every invalid field.
                ctx.net.policy().deny(PermissionRequest::new(tcpudp::PermissionKind::Udp));
                let r = UdpSocket::new(&ctx.net, UdpOptions { local_address: Some("x".into()), ..remote("300.1.1.1", 0) });
                assert_eq!(err_name(&r), Some(ErrorName::SecurityError));
                assert_eq!(ctx.net.faults().created_sockets(), created);
                Ok(())
            });
        }

        /// rule: UDP-CTOR-01, PERM-GEN-01, ERR-01, GEN-01
        fn denied_constructor_throws_security_error(world: &mut World) {
            world.policy(Policy::deny_all);
            world.client("client", |ctx| async move {
                let created = ctx.net.faults().created_sockets();
                for opts in [UdpOptions::default(), remote(LO, 9), remote("300.1.1.1", 0), UdpOptions { local_port: Some(4000), ..UdpOptions::default() }] {
                    let r = UdpSocket::new(&ctx.net, opts.clone());
                    assert_eq!(err_name(&r), Some(ErrorName::SecurityError), "{opts:?}");
                }
                assert_eq!(ctx.net.faults().created_sockets(), created, "no socket may be created");
                assert_eq!(ctx.net.faults().open_sockets(), 0);
                assert!(ctx.net.faults().lookups().is_empty());
                Ok(())
            });
        }

        /// rule: UDP-CTOR-12, UDP-CTOR-13, DICT-UDPOPT-01
        fn unroutable_and_host_name_remotes(world: &mut World) {
            world.client("client", |ctx| async move {
                let nowhere: IpAddr = "127.0.0.9".parse()?;
                ctx.net.faults().no_route(nowhere);
                let created = ctx.net.faults().created_sockets();
                let r = UdpSocket::new(&ctx.net, remote("127.0.0.9", 9));
                assert_eq!(err_name(&r), Some(ErrorName::InvalidAccessError), "no route to an IP literal");
                assert_eq!(ctx.net.faults().created_sockets(), created);
                // A host name is resolved while opening: its failure rejects opened and closed.
                ctx.net.faults().resolve("nohost.test", Err(Cause::HostNotFound));
                let sock = UdpSocket::new(&ctx.net, remote("nohost.test", 9))?;
                assert_eq!(sock.remote_address(), Some("nohost.test"));
                assert_err(within("opened", sock.opened()).await?, ErrorName::NetworkError);
                assert_err(within("closed", sock.closed()).await?, ErrorName::NetworkError);
                assert_eq!(sock.ready_state(), ReadyState::Closed);
                assert_udp_state_log(&sock);
                // A name that resolves: bound to the wildcard (attribute None), writes reach it.
                let peer = Peer::bind(&ctx).await?;
                ctx.net.faults().resolve("svc", Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]));
                let named = UdpSocket::new(&ctx.net, remote("svc", peer.port()))?;
                assert_eq!(named.local_address(), None);
                assert_eq!(named.remote_address(), Some("svc"));
                within("opened", named.opened()).await??;
                assert_eq!(named.local_address(), None);
                within("write", named.writable()?.write(Datagram::new(&b"via svc"[..]))).await??;
                let (data, _) = peer.recv().await?;
                assert_eq!(data, b"via svc");
                assert!(ctx.net.faults().lookups().iter().any(|n| n == "svc"));
                within("close", named.close()).await??;
                Ok(())
            });
        }

        /// rule: UDP-CTOR-19, UDP-OPEN-01, UDP-OPEN-04, STATE-06, UDP-ATTR-01
        fn opening_is_held_and_writes_wait(world: &mut World) {
            world.client("client", |ctx| async move {
                let peer = Peer::bind(&ctx).await?;
                ctx.net.faults().hold_open();
                let sock = UdpSocket::new(&ctx.net, remote(LO, peer.port()))?;
                assert_eq!(sock.ready_state(), ReadyState::Opening);
                assert!(pending_once(sock.opened()), "opened settled while opening was held");
                assert!(pending_once(sock.closed()), "closed settled while opening was held");
                let mut reader = sock.readable()?;
                let writer = sock.writable()?;
                let writes: Vec<_> = (0..3u32).map(|i| writer.write(Datagram::new(seq_payload(i, 16)))).collect();
                // Still opening a moment later: nothing was reported.
                tokio::task::yield_now().await;
                assert_eq!(sock.ready_state(), ReadyState::Opening);
                assert!(pending_once(reader.read()), "a read completed while opening");
                ctx.net.faults().release_open();
                within("opened", sock.opened()).await??;
                assert_eq!(sock.ready_state(), ReadyState::Open);
                for w in writes {
                    within("held write", w).await??;
                }
                for i in 0..3u32 {
                    let (data, _) = peer.recv().await?;
                    assert_eq!(seq_of(&data), Some(i), "held writes are sent in issue order");
                }
                within("close", sock.close()).await??;
                assert_udp_state_log(&sock);
                assert_eq!(sock.diag().state_log, [ReadyState::Opening, ReadyState::Open, ReadyState::Closed]);
                Ok(())
            });
        }

        /// rule: UDP-CTOR-21, UDP-OPEN-02, UDP-OPEN-03, UDP-CTOR-22, ERR-06
        fn bind_conflict_fails_opening(world: &mut World) {
            world.client("client", |ctx| async move {
                let holder = UdpSocket::new(&ctx.net, UdpOptions { address_reuse: false, ..UdpOptions::default() })?;
                within("opened", holder.opened()).await??;
                let p = holder.local_port().ok_or("no port")?;
                let baseline = ctx.net.faults().open_sockets();
                for reuse in [false, true] {
                    // Not thrown (UDP-CTOR-21): reported through opened.
                    let sock = UdpSocket::new(&ctx.net, UdpOptions { local_port: Some(p), address_reuse: reuse, ..UdpOptions::default() })?;
                    let mut reader = sock.readable()?;
                    let writer = sock.writable()?;
                    let early = writer.write(Datagram::to(&b"early"[..], LO, 9));
                    assert_err(within("opened", sock.opened()).await?, ErrorName::NetworkError);
                    assert_err(within("closed", sock.closed()).await?, ErrorName::NetworkError);
                    assert_eq!(sock.ready_state(), ReadyState::Closed);
                    assert_err(within("read", reader.read()).await?, ErrorName::NetworkError);
                    assert_err(within("queued write", early).await?, ErrorName::NetworkError);
                    assert!(!sock.diag().transport_open, "resources released");
                    assert_eq!(ctx.net.faults().open_sockets(), baseline);
                    assert_udp_state_log(&sock);
                }
                // The holder is unaffected.
                assert_eq!(holder.ready_state(), ReadyState::Open);
                within("close", holder.close()).await??;
                Ok(())
            });
        }

        /// rule: UDP-OPEN-02
        fn injected_bind_failure_fails_opening(world: &mut World) {
            world.client("client", |ctx| async move {
                ctx.net.faults().fail_bind(Cause::AddressInUse);
                let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                let e = assert_err(within("opened", sock.opened()).await?, ErrorName::NetworkError);
                assert_eq!(e.cause(), Some(Cause::AddressInUse));
                assert_err(within("closed", sock.closed()).await?, ErrorName::NetworkError);
                assert_err(within("read", sock.readable()?.read()).await?, ErrorName::NetworkError);
                assert_eq!(sock.ready_state(), ReadyState::Closed);
                assert_eq!(ctx.net.faults().open_sockets(), 0);
                // The fault was consumed: the next socket opens.
                let next = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                within("opened", next.opened()).await??;
                Ok(())
            });
        }

        /// rule: UDP-READ-01, UDP-READ-02, UDP-READ-03, DICT-MSG-02, DICT-MSG-03
        fn fifty_datagrams_of_random_sizes(world: &mut World) {
            world.client("client", |ctx| async move {
                let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                within("opened", sock.opened()).await??;
                let port = sock.local_port().ok_or("no port")?;
                let peer = Peer::bind(&ctx).await?;
                let mut reader = sock.readable()?;
                let mut rng = Rng::new(0x5eed_0001);
                for seq in 0..50u32 {
                    let sent = seq_payload(seq, rng.range(4, 1_400));
                    peer.send_lo(&sent, port).await?;
                    let msg = next_msg(&mut reader).await?;
                    assert_eq!(seq_of(&msg.data), Some(seq), "datagram {seq} not whole");
                    assert_eq!(&msg.data[..], &sent[..]);
                    assert_eq!(msg.remote_address(), LO);
                    assert_eq!(msg.remote_port(), peer.port());
                    assert_eq!(msg.from, lo(peer.port()));
                }
                within("close", sock.close()).await??;
                Ok(())
            });
        }

        /// rule: UDP-READ-06, UDP-WRITE-06
        fn zero_length_datagrams(world: &mut World) {
            world.client("client", |ctx| async move {
                let peer = Peer::bind(&ctx).await?;
                let sock = UdpSocket::new(&ctx.net, remote(LO, peer.port()))?;
                within("opened", sock.opened()).await??;
                peer.send_lo(b"", sock.local_port().ok_or("no port")?).await?;
                let msg = next_msg(&mut sock.readable()?).await?;
                assert_eq!(msg.data.len(), 0);
                assert_eq!(msg.from, lo(peer.port()));
                within("write", sock.writable()?.write(Datagram::new(Bytes::new()))).await??;
                let (data, _) = peer.recv().await?;
                assert!(data.is_empty());
                Ok(())
            });
        }

        /// rule: UDP-READ-05
        fn reception_does_not_wait_for_reads(world: &mut World) {
            world.client("client", |ctx| async move {
                let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                within("opened", sock.opened()).await??;
                let port = sock.local_port().ok_or("no port")?;
                let peer = Peer::bind(&ctx).await?;
                for i in 0..3u32 {
                    peer.send_lo(&seq_payload(i, 8), port).await?;
                }
                // No read is pending: the library still takes the datagrams in.
                within("queued", async {
                    while sock.diag().queued_datagrams < 3 {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                })
                .await?;
                let mut reader = sock.readable()?;
                for i in 0..3u32 {
                    assert_eq!(seq_of(&next_msg(&mut reader).await?.data), Some(i));
                }
                Ok(())
            });
        }

        /// rule: UDP-ATTR-02
        fn default_remote_does_not_filter(world: &mut World) {
            world.host("b", |ctx| async move {
                let peer_b = Peer::bind(&ctx).await?;
                let target = ctx.lookup("target").await;
                // Real: 127.0.0.1 (another port); sim: another host.
                let at: IpAddr = ctx.address_of("client").parse()?;
                peer_b.send_to(b"from-b", SocketAddr::new(at, target)).await?;
                ctx.publish("b-port", peer_b.port());
                std::future::pending::<()>().await;
                Ok(())
            });
            world.client("client", |ctx| async move {
                let peer_a = Peer::bind(&ctx).await?;
                // Default remote = peer A; bound to the wildcard so another host can reach it.
                let wildcard = UdpSocket::new(&ctx.net, UdpOptions { local_address: Some("0.0.0.0".into()), ..remote(LO, peer_a.port()) })?;
                within("opened", wildcard.opened()).await??;
                ctx.publish("target", wildcard.local_port().ok_or("no port")?);
                let msg = next_msg(&mut wildcard.readable()?).await?;
                assert_eq!(&msg.data[..], b"from-b");
                let b_port = ctx.lookup("b-port").await;
                assert_eq!(msg.remote_port(), b_port);
                assert_eq!(msg.remote_address(), ctx.address_of("b"));
                assert_ne!(msg.from, lo(peer_a.port()));
                Ok(())
            });
        }

        /// rule: UDP-READ-ERR-01, UDP-WRITE-10, GEN-14, ERR-06
        fn dropped_link_errors_the_socket(world: &mut World) {
            world.client("client", |ctx| async move {
                let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                within("opened", sock.opened()).await??;
                let mut reader = sock.readable()?;
                let writer = sock.writable()?;
                ctx.net.faults().drop_link();
                let e = assert_err(within("read", reader.read()).await?, ErrorName::NetworkError);
                assert_err(within("closed", sock.closed()).await?, ErrorName::NetworkError);
                assert_eq!(sock.ready_state(), ReadyState::Closed);
                // The stored error, on every later read and write (A-23, INV-06).
                assert_eq!(within("read", reader.read()).await?, Err(e.clone()));
                let w = within("write", writer.write(Datagram::to(&b"x"[..], LO, 9))).await?;
                assert_eq!(err_name(&w), Some(ErrorName::NetworkError));
                assert_eq!(within("close", sock.close()).await?, Err(e.clone()), "close() returns the settled closed");
                assert_eq!(ctx.net.faults().open_sockets(), 0, "released (GEN-14)");
                assert_udp_state_log(&sock);
                Ok(())
            });
        }

        /// rule: UDP-READ-ERR-02, ERR-09
        fn unconvertible_data_errors_the_socket(world: &mut World) {
            world.client("client", |ctx| async move {
                let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                within("opened", sock.opened()).await??;
                let mut reader = sock.readable()?;
                let writer = sock.writable()?;
                let peer = Peer::bind(&ctx).await?;
                ctx.net.faults().fail_conversion();
                peer.send_lo(b"bad", sock.local_port().ok_or("no port")?).await?;
                assert_err(within("read", reader.read()).await?, ErrorName::TypeError);
                assert_err(within("closed", sock.closed()).await?, ErrorName::TypeError);
                assert_eq!(sock.ready_state(), ReadyState::Closed);
                assert_err(within("write", writer.write(Datagram::to(&b"x"[..], LO, peer.port()))).await?, ErrorName::TypeError);
                assert_udp_state_log(&sock);
                Ok(())
            });
        }

        /// rule: UDP-READ-ERR-03
        fn transient_receive_error_is_skipped(world: &mut World) {
            world.client("client", |ctx| async move {
                let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                within("opened", sock.opened()).await??;
                let mut reader = sock.readable()?;
                let peer = Peer::bind(&ctx).await?;
                for kind in [ErrorKind::ConnectionRefused, ErrorKind::HostUnreachable] {
                    ctx.net.faults().recv_error(kind);
                    peer.send_lo(b"x", sock.local_port().ok_or("no port")?).await?;
                    let msg = next_msg(&mut reader).await?;
                    assert_eq!(&msg.data[..], b"x");
                    assert_eq!(sock.ready_state(), ReadyState::Open);
                }
                Ok(())
            });
        }

        /// rule: UDP-READ-CANCEL-02, UDP-CLOSE-01, ERR-07, UDP-MCAST-04
        fn close_while_opening_aborts(world: &mut World) {
            world.client("client", |ctx| async move {
                ctx.net.faults().hold_open();
                let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                let writer = sock.writable()?;
                let mut reader = sock.readable()?;
                let queued = writer.write(Datagram::to(&b"q"[..], LO, 9));
                let closed = sock.close();
                assert_eq!(sock.ready_state(), ReadyState::Closed);
                assert_err(within("opened", sock.opened()).await?, ErrorName::AbortError);
                assert_err(within("closed", closed).await?, ErrorName::AbortError);
                assert_err(within("queued write", queued).await?, ErrorName::AbortError);
                assert_eq!(within("read", reader.read()).await??, None);
                assert_err(sock.join_multicast("239.255.0.1"), ErrorName::InvalidStateError);
                ctx.net.faults().release_open();
                tokio::task::yield_now().await;
                assert_eq!(sock.ready_state(), ReadyState::Closed);
                assert_err(within("opened", sock.opened()).await?, ErrorName::AbortError);
                assert_err(within("closed", sock.closed()).await?, ErrorName::AbortError);
                assert_eq!(sock.diag().state_log, [ReadyState::Opening, ReadyState::Closed]);
                Ok(())
            });
        }

        /// rule: UDP-READ-CANCEL-03, UDP-READ-CANCEL-04, UDP-CLOSE-01, GEN-06, GEN-14
        fn close_while_open_flushes(world: &mut World) {
            world.client("client", |ctx| async move {
                let peer = Peer::bind(&ctx).await?;
                let baseline = ctx.net.faults().open_sockets();
                let sock = UdpSocket::new(&ctx.net, remote(LO, peer.port()))?;
                within("opened", sock.opened()).await??;
                let port = sock.local_port().ok_or("no port")?;
                let mut reader = sock.readable()?;
                let writer = sock.writable()?;
                // A read pending at close() ends with done.
                let pending_read = tokio::task::spawn_local(async move {
                    let first = reader.read().await;
                    let second = reader.read().await;
                    (first, second)
                });
                tokio::task::yield_now().await;
                let writes: Vec<_> = (0..5u32).map(|i| writer.write(Datagram::new(seq_payload(i, 32)))).collect();
                let closed = sock.close();
                assert_eq!(sock.ready_state(), ReadyState::Closed);
                within("closed", closed).await??;
                assert_eq!(within("close again", sock.close()).await?, within("closed", sock.closed()).await?);
                for w in writes {
                    within("flushed write", w).await??;
                }
                for i in 0..5u32 {
                    assert_eq!(seq_of(&peer.recv().await?.0), Some(i), "queued datagram {i} was sent");
                }
                let (first, second) = within("pending read", pending_read).await??;
                assert_eq!(first?, None);
                assert_eq!(second?, None);
                // Datagrams sent later are never read.
                let _ = peer.send_lo(b"late", port).await;
                let mut reader = sock.readable()?;
                assert_eq!(within("read", reader.read()).await??, None);
                assert_eq!(ctx.net.faults().open_sockets(), baseline, "released after the flush");
                assert_udp_state_log(&sock);
                Ok(())
            });
        }

        /// rule: UDP-READ-CANCEL-01, UDP-CLOSE-02, UDP-CLOSE-03, GEN-05
        fn close_is_idempotent_and_ignores_locks(world: &mut World) {
            world.client("client", |ctx| async move {
                let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                within("opened", sock.opened()).await??;
                let opened_before = sock.opened();
                let mut reader = sock.readable()?;
                let writer = sock.writable()?;
                let read = tokio::task::spawn_local(async move { reader.read().await.map(|m| m.is_none()) });
                tokio::task::yield_now().await;
                let outcomes = [sock.close(), sock.close(), sock.close()];
                let mut results = Vec::new();
                for c in outcomes {
                    results.push(within("close", c).await?);
                }
                assert!(results.iter().all(|r| r == &Ok(())), "{results:?}");
                assert!(within("pending read", read).await???, "the pending read gives done");
                assert_eq!(sock.diag().state_log, [ReadyState::Opening, ReadyState::Open, ReadyState::Closed]);
                // In "closed": close() and cancel change nothing.
                assert_eq!(within("close", sock.close()).await?, Ok(()));
                drop(writer);
                let reader = sock.readable()?;
                assert_eq!(within("cancel", reader.cancel()).await?, Ok(()));
                assert_eq!(sock.ready_state(), ReadyState::Closed);
                assert_eq!(within("opened", opened_before).await?, Ok(()));
                assert_eq!(within("opened", sock.opened()).await?, Ok(()));
                assert_eq!(sock.diag().state_log, [ReadyState::Opening, ReadyState::Open, ReadyState::Closed]);
                Ok(())
            });
        }

        /// rule: UDP-WRITE-02, UDP-WRITE-03, UDP-WRITE-08, UDP-WRITE-13, GEN-03, ERR-05, DICT-UDPOPT-03, DICT-UDPOPT-04
        fn writes_without_a_valid_destination_reject_alone(world: &mut World) {
            world.client("client", |ctx| async move {
                let peer = Peer::bind(&ctx).await?;
                let p = peer.port();
                let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                within("opened", sock.opened()).await??;
                let writer = sock.writable()?;
                let mut reader = sock.readable()?;
                let port = sock.local_port().ok_or("no port")?;
                ctx.net.faults().resolve("gone.test", Err(Cause::HostNotFound));
                let rejected: Vec<(Datagram, ErrorName)> = vec![
                    (Datagram::new(&b"no address"[..]), ErrorName::InvalidAccessError),
                    (Datagram { remote_address: Some(LO.into()), ..Datagram::new(&b"no port"[..]) }, ErrorName::InvalidAccessError),
                    (Datagram { remote_port: Some(p), ..Datagram::new(&b"no address, port"[..]) }, ErrorName::InvalidAccessError),
                    (Datagram::to(&b"bad address"[..], "300.1.1.1", p), ErrorName::InvalidAccessError),
                    (Datagram::to(&b"bad name"[..], "a..b", p), ErrorName::InvalidAccessError),
                    (Datagram::to(&b"bracketed"[..], "[::1]", p), ErrorName::InvalidAccessError),
                    (Datagram::to(&b"port 0"[..], LO, 0), ErrorName::InvalidAccessError),
                    (Datagram::to(&b"unresolvable"[..], "gone.test", p), ErrorName::NetworkError),
                ];
                for (datagram, name) in rejected {
                    let what = String::from_utf8_lossy(&datagram.data).into_owned();
                    let r = within("write", writer.write(datagram)).await?;
                    assert_eq!(err_name(&r), Some(name), "{what}: {r:?}");
                    // Only that write failed (UDP-WRITE-08): the next one is sent.
                    within("write", writer.write(Datagram::to(what.clone().into_bytes(), LO, p))).await??;
                    let (data, _) = peer.recv().await?;
                    assert_eq!(data, what.as_bytes(), "the rejected datagram was sent, or the valid one was not");
                    // Reads still work, and the state is unchanged.
                    peer.send_lo(b"r", port).await?;
                    assert_eq!(&next_msg(&mut reader).await?.data[..], b"r");
                    assert_eq!(sock.ready_state(), ReadyState::Open);
                }
                assert!(ctx.net.faults().lookups().iter().all(|n| n == "gone.test"), "{:?}", ctx.net.faults().lookups());
                // A default address without a default port, and the reverse (UDP-WRITE-03, AMB-50).
                let addr_only = UdpSocket::new(&ctx.net, UdpOptions { remote_address: Some(LO.into()), ..UdpOptions::default() })?;
                let w = addr_only.writable()?;
                assert_err(within("write", w.write(Datagram::new(&b"x"[..]))).await?, ErrorName::InvalidAccessError);
                within("write", w.write(Datagram { remote_port: Some(p), ..Datagram::new(&b"addr-default"[..]) })).await??;
                assert_eq!(peer.recv().await?.0, b"addr-default");
                let port_only = UdpSocket::new(&ctx.net, UdpOptions { remote_port: Some(p), ..UdpOptions::default() })?;
                let w = port_only.writable()?;
                assert_err(within("write", w.write(Datagram::new(&b"x"[..]))).await?, ErrorName::InvalidAccessError);
                within("write", w.write(Datagram { remote_address: Some(LO.into()), ..Datagram::new(&b"port-default"[..]) })).await??;
                assert_eq!(peer.recv().await?.0, b"port-default");
                within("close", sock.close()).await??;
                assert_udp_state_log(&sock);
                Ok(())
            });
        }

        /// rule: UDP-WRITE-05, DICT-MSG-02, DICT-MSG-03, UDP-WRITE-13
        fn each_destination_field_falls_back_alone(world: &mut World) {
            world.client("client", |ctx| async move {
                let p1 = Peer::bind(&ctx).await?;
                let p2 = Peer::bind(&ctx).await?;
                let sock = UdpSocket::new(&ctx.net, remote(LO, p1.port()))?;
                let writer = sock.writable()?;
                within("write", writer.write(Datagram { remote_port: Some(p2.port()), ..Datagram::new(&b"port only"[..]) })).await??;
                assert_eq!(p2.recv().await?.0, b"port only");
                ctx.net.faults().resolve("peer.test", Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]));
                within("write", writer.write(Datagram { remote_address: Some("peer.test".into()), ..Datagram::new(&b"address only"[..]) })).await??;
                assert_eq!(p1.recv().await?.0, b"address only");
                within("write", writer.write(Datagram::to(&b"both"[..], "Peer.TEST", p2.port()))).await??;
                assert_eq!(p2.recv().await?.0, b"both");
                within("write", writer.write(Datagram::new(&b"neither"[..]))).await??;
                assert_eq!(p1.recv().await?.0, b"neither");
                Ok(())
            });
        }

        /// rule: UDP-WRITE-04, UDP-WRITE-08, UDP-WRITE-13, ERR-03, DICT-PERM-09
        fn write_to_a_destination_not_permitted(world: &mut World) {
            world.policy(|| Policy::from_store(PermissionStore::new()));
            world.client("client", |ctx| async move {
                let a = Peer::bind(&ctx).await?;
                let b = Peer::bind(&ctx).await?;
                // Only peer A is granted; that grant also covers `udp({})` (DICT-PERM-09).
                ctx.net.policy().grant(udp_grant(Some(LO), Some(a.port())));
                let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                within("opened", sock.opened()).await??;
                let writer = sock.writable()?;
                let e = assert_err(within("write", writer.write(Datagram::to(&b"to b"[..], LO, b.port()))).await?, ErrorName::SecurityError);
                assert_eq!(e.cause(), Some(Cause::PermissionDenied));
                // Check order: a missing port beats the permission check (UDP-WRITE-13).
                assert_err(
                    within("write", writer.write(Datagram { remote_address: Some("127.0.0.2".into()), ..Datagram::new(&b"x"[..]) })).await?,
                    ErrorName::InvalidAccessError,
                );
                // B receives nothing: the marker from A is the next thing it sees.
                a.send_to(b"marker", lo(b.port())).await?;
                assert_eq!(b.recv().await?.0, b"marker");
                // The writable stays usable (UDP-WRITE-08).
                within("write", writer.write(Datagram::to(&b"to a"[..], LO, a.port()))).await??;
                assert_eq!(a.recv().await?.0, b"to a");
                // A default destination that is not permitted is refused per write too.
                let to_b = UdpSocket::new(&ctx.net, UdpOptions { remote_port: Some(b.port()), ..UdpOptions::default() });
                assert_err(to_b.map(|_| ()), ErrorName::SecurityError);
                assert_eq!(sock.ready_state(), ReadyState::Open);
                within("close", sock.close()).await??;
                Ok(())
            });
        }

        /// rule: UDP-WRITE-07, UDP-WRITE-08, UDP-WRITE-06
        fn datagram_size_limit_and_send_failure(world: &mut World) {
            world.client("client", |ctx| async move {
                let peer = Peer::bind(&ctx).await?;
                let sock = UdpSocket::new(&ctx.net, remote(LO, peer.port()))?;
                within("opened", sock.opened()).await??;
                let writer = sock.writable()?;
                let largest = Bytes::from(seq_payload(7, 65_507));
                within("write 65507", writer.write(Datagram::new(largest.clone()))).await??;
                let (data, _) = peer.recv().await?;
                assert_eq!(data.len(), 65_507);
                assert_eq!(&data[..], &largest[..]);
                let e = assert_err(within("write 65508", writer.write(Datagram::new(vec![0u8; 65_508]))).await?, ErrorName::NetworkError);
                assert_eq!(e.cause(), Some(Cause::MessageTooLarge));
                ctx.net.faults().fail_send();
                assert_err(within("write", writer.write(Datagram::new(&b"fails"[..]))).await?, ErrorName::NetworkError);
                within("write", writer.write(Datagram::new(&b"after"[..]))).await??;
                assert_eq!(peer.recv().await?.0, b"after", "neither failed datagram was sent");
                assert_eq!(sock.ready_state(), ReadyState::Open);
                within("close", sock.close()).await??;
                Ok(())
            });
        }

        /// rule: UDP-WRITE-12, UDP-WRITE-14, UDP-WRITE-08, ERR-06
        fn write_to_the_other_family_rejects_alone(world: &mut World) {
            world.client("client", |ctx| async move {
                let peer = Peer::bind(&ctx).await?;
                let bound = UdpSocket::new(&ctx.net, UdpOptions { local_address: Some(LO.into()), ..UdpOptions::default() })?;
                let wild = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                for sock in [&bound, &wild] {
                    within("opened", sock.opened()).await??;
                    let writer = sock.writable()?;
                    assert_err(within("write ::1", writer.write(Datagram::to(&b"v6"[..], "::1", peer.port()))).await?, ErrorName::NetworkError);
                    within("write", writer.write(Datagram::to(&b"v4"[..], LO, peer.port()))).await??;
                    assert_eq!(peer.recv().await?.0, b"v4", "nothing went to ::1");
                    assert_eq!(sock.ready_state(), ReadyState::Open);
                }
                Ok(())
            });
        }

        /// rule: UDP-WRITE-09, UDP-WRITE-10, ERR-09, STATE-06
        fn writer_close_keeps_the_socket_open(world: &mut World) {
            world.client("client", |ctx| async move {
                let peer = Peer::bind(&ctx).await?;
                let sock = UdpSocket::new(&ctx.net, remote(LO, peer.port()))?;
                within("opened", sock.opened()).await??;
                let writer = sock.writable()?;
                let last = writer.write(Datagram::new(&b"before close"[..]));
                within("writer close", writer.close()).await??;
                within("write", last).await??;
                assert_eq!(peer.recv().await?.0, b"before close");
                assert_eq!(sock.ready_state(), ReadyState::Open);
                assert_err(within("write after close", writer.write(Datagram::new(&b"x"[..]))).await?, ErrorName::TypeError);
                // Reception continues.
                let mut reader = sock.readable()?;
                peer.send_lo(b"still", sock.local_port().ok_or("no port")?).await?;
                assert_eq!(&next_msg(&mut reader).await?.data[..], b"still");
                drop(writer);
                assert_err(within("write", sock.writable()?.write(Datagram::new(&b"x"[..]))).await?, ErrorName::TypeError);
                within("close", sock.close()).await??;
                // After a clean socket close, writes reject TypeError too.
                assert_err(within("write", sock.writable()?.write(Datagram::new(&b"x"[..]))).await?, ErrorName::TypeError);
                assert_udp_state_log(&sock);
                Ok(())
            });
        }

        /// rule: UDP-WRITE-09, ERR-07
        fn writer_abort_discards_queued_datagrams(world: &mut World) {
            world.client("client", |ctx| async move {
                let peer = Peer::bind(&ctx).await?;
                ctx.net.faults().hold_open();
                let sock = UdpSocket::new(&ctx.net, remote(LO, peer.port()))?;
                let writer = sock.writable()?;
                let queued = [writer.write(Datagram::new(&b"a"[..])), writer.write(Datagram::new(&b"b"[..]))];
                writer.abort(Some("stop"));
                ctx.net.faults().release_open();
                within("opened", sock.opened()).await??;
                for w in queued {
                    let e = assert_err(within("discarded write", w).await?, ErrorName::AbortError);
                    assert_eq!(e.message(), Some("stop"));
                }
                let e = assert_err(within("later write", writer.write(Datagram::new(&b"c"[..]))).await?, ErrorName::AbortError);
                assert_eq!(e.message(), Some("stop"));
                assert_eq!(sock.ready_state(), ReadyState::Open);
                // Nothing was sent: a marker from another socket is the peer's first datagram.
                let other = UdpSocket::new(&ctx.net, remote(LO, peer.port()))?;
                within("marker", other.writable()?.write(Datagram::new(&b"marker"[..]))).await??;
                assert_eq!(peer.recv().await?.0, b"marker");
                // Reception continues.
                peer.send_lo(b"in", sock.local_port().ok_or("no port")?).await?;
                assert_eq!(&next_msg(&mut sock.readable()?).await?.data[..], b"in");
                within("close", sock.close()).await??;
                Ok(())
            });
        }

        /// rule: UDP-READ-04, EXT-09
        fn unread_socket_drops_and_counts(world: &mut World) {
            world.client("client", |ctx| async move {
                // Sim: delivered + dropped == N + 1 exactly; real: <= N + 1 with drops counted.
                flood_unread_socket(&ctx, 5_000).await?;
                Ok(())
            });
        }

        /// rule: UDP-MCAST-03, UDP-MCAST-04, UDP-MCAST-05, UDP-MCAST-06, ERR-05, ERR-08
        fn membership_errors(world: &mut World) {
            world.client("client", |ctx| async move {
                let sock = UdpSocket::new(&ctx.net, mcast(UdpOptions::default()))?;
                within("opened", sock.opened()).await??;
                for bad in ["127.0.0.1", "0.0.0.0", "", "x", "300.1.1.1", "239.255.0.01", "[ff02::1]", "239.255.0.1:9", "localhost"] {
                    assert_err(sock.join_multicast(bad), ErrorName::InvalidAccessError);
                    assert_err(sock.leave_multicast(bad), ErrorName::InvalidAccessError);
                }
                // Leaving a group never joined (UDP-MCAST-05).
                sock.leave_multicast("239.255.0.1")?;
                // The OS refuses (UDP-MCAST-06): NetworkError, the socket stays open, no membership.
                ctx.net.faults().fail_membership();
                assert_err(sock.join_multicast("239.255.0.1"), ErrorName::NetworkError);
                assert_eq!(sock.ready_state(), ReadyState::Open);
                assert!(sock.diag().memberships.is_empty(), "{:?}", sock.diag().memberships);
                sock.join_multicast("239.255.0.1")?;
                assert_eq!(sock.diag().memberships, [IpAddr::V4(Ipv4Addr::new(239, 255, 0, 1))]);
                sock.leave_multicast("239.255.0.1")?;
                assert!(sock.diag().memberships.is_empty());
                within("close", sock.close()).await??;
                // "closed" (UDP-MCAST-04): InvalidStateError.
                assert_err(sock.join_multicast("239.255.0.1"), ErrorName::InvalidStateError);
                assert_err(sock.leave_multicast("239.255.0.1"), ErrorName::InvalidStateError);

                // "opening": joins act at once; an OS refusal throws and the socket keeps opening.
                ctx.net.faults().hold_open();
                let held = UdpSocket::new(&ctx.net, mcast(UdpOptions::default()))?;
                held.join_multicast("239.255.0.2")?;
                ctx.net.faults().fail_membership();
                assert_err(held.join_multicast("239.255.0.3"), ErrorName::NetworkError);
                assert_eq!(held.ready_state(), ReadyState::Opening);
                ctx.net.faults().release_open();
                within("opened", held.opened()).await??;
                assert_eq!(held.diag().memberships, [IpAddr::V4(Ipv4Addr::new(239, 255, 0, 2))]);

                // A bind conflict: the join is accepted, then opening fails.
                let holder = UdpSocket::new(&ctx.net, UdpOptions { address_reuse: false, ..UdpOptions::default() })?;
                within("opened", holder.opened()).await??;
                let conflict = UdpSocket::new(
                    &ctx.net,
                    mcast(UdpOptions { local_port: holder.local_port(), address_reuse: false, ..UdpOptions::default() }),
                )?;
                conflict.join_multicast("239.255.0.4")?;
                assert_err(within("opened", conflict.opened()).await?, ErrorName::NetworkError);
                assert_err(conflict.join_multicast("239.255.0.4"), ErrorName::InvalidStateError);
                Ok(())
            });
        }

        /// rule: UDP-MCAST-01, UDP-MCAST-04, UDP-MCAST-08, UDP-WRITE-11, UDP-CTOR-22
        fn only_joined_sockets_receive_a_group(world: &mut World) {
            // A joins 239.255.0.1 while opening; B, on the same port (real: shared with reuse; sim: on
            // another host), joins only the marker group 239.255.0.2.
            world.client("a", |ctx| async move {
                ctx.net.faults().hold_open();
                let a = UdpSocket::new(&ctx.net, mcast(UdpOptions::default()))?;
                a.join_multicast("239.255.0.1")?;
                ctx.net.faults().release_open();
                within("opened", a.opened()).await??;
                ctx.publish("port", a.local_port().ok_or("no port")?);
                let mut reader = a.readable()?;
                let _ = ctx.lookup("b-ready").await;
                ctx.publish("a-ready", 1);
                let msg = next_msg(&mut reader).await?;
                assert_eq!(&msg.data[..], b"group-1");
                let _ = ctx.lookup("b-done").await;
                Ok(())
            });
            world.client("b", |ctx| async move {
                let port = ctx.lookup("port").await;
                let b = UdpSocket::new(&ctx.net, mcast(UdpOptions { local_port: Some(port), ..UdpOptions::default() }))?;
                within("opened", b.opened()).await??;
                b.join_multicast("239.255.0.2")?;
                let mut reader = b.readable()?;
                ctx.publish("b-ready", 1);
                let msg = next_msg(&mut reader).await?;
                assert_eq!(&msg.data[..], b"marker", "B got a group it did not join");
                nothing_more_in_sim(&ctx, &mut reader).await?;
                assert_eq!(b.diag().options.received, 1);
                ctx.publish("b-done", 1);
                Ok(())
            });
            world.client("sender", |ctx| async move {
                let port = ctx.lookup("port").await;
                let _ = ctx.lookup("a-ready").await;
                let s = UdpSocket::new(&ctx.net, mcast(UdpOptions { loopback: true, ..UdpOptions::default() }))?;
                let w = s.writable()?;
                // Not a member itself (UDP-WRITE-11).
                within("group write", w.write(Datagram::to(&b"group-1"[..], "239.255.0.1", port))).await??;
                within("marker write", w.write(Datagram::to(&b"marker"[..], "239.255.0.2", port))).await??;
                let _ = ctx.lookup("b-done").await;
                Ok(())
            });
        }

        /// rule: UDP-MCAST-02
        fn leaving_stops_reception(world: &mut World) {
            world.client("a", |ctx| async move {
                let a = UdpSocket::new(&ctx.net, mcast(UdpOptions::default()))?;
                within("opened", a.opened()).await??;
                ctx.publish("port", a.local_port().ok_or("no port")?);
                a.join_multicast("239.255.0.1")?;
                a.join_multicast("239.255.0.2")?;
                a.leave_multicast("239.255.0.1")?;
                assert_eq!(a.diag().memberships, [IpAddr::V4(Ipv4Addr::new(239, 255, 0, 2))]);
                let mut reader = a.readable()?;
                let _ = ctx.lookup("w-ready").await;
                ctx.publish("a-ready", 1);
                let msg = next_msg(&mut reader).await?;
                assert_eq!(&msg.data[..], b"marker", "A still received the group it left");
                nothing_more_in_sim(&ctx, &mut reader).await?;
                let _ = ctx.lookup("w-done").await;
                Ok(())
            });
            world.client("w", |ctx| async move {
                let port = ctx.lookup("port").await;
                let w = UdpSocket::new(&ctx.net, mcast(UdpOptions { local_port: Some(port), ..UdpOptions::default() }))?;
                within("opened", w.opened()).await??;
                w.join_multicast("239.255.0.1")?;
                let mut reader = w.readable()?;
                ctx.publish("w-ready", 1);
                let mut got = vec![next_msg(&mut reader).await?.data, next_msg(&mut reader).await?.data];
                got.sort();
                assert_eq!(got, [&b"group-1"[..], &b"group-1 again"[..]]);
                ctx.publish("w-done", 1);
                Ok(())
            });
            world.client("sender", |ctx| async move {
                let port = ctx.lookup("port").await;
                let _ = ctx.lookup("a-ready").await;
                let s = UdpSocket::new(&ctx.net, mcast(UdpOptions { loopback: true, ..UdpOptions::default() }))?;
                let w = s.writable()?;
                within("write", w.write(Datagram::to(&b"group-1"[..], "239.255.0.1", port))).await??;
                within("write", w.write(Datagram::to(&b"group-1 again"[..], "239.255.0.1", port))).await??;
                within("write", w.write(Datagram::to(&b"marker"[..], "239.255.0.2", port))).await??;
                let _ = ctx.lookup("w-done").await;
                Ok(())
            });
        }

        /// rule: UDP-ATTR-01, STATE-06, ERR-09, GEN-04, UDP-MCAST-03
        fn bad_input_never_panics(world: &mut World) {
            world.client("client", |ctx| async move {
                // Opening (held), open, closed cleanly, closed by a failed opening.
                ctx.net.faults().hold_open();
                let opening = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                let held_writes = poke_everything(&opening, "opening")?;
                assert_eq!(opening.ready_state(), ReadyState::Opening);
                ctx.net.faults().release_open();
                settle_bad_writes(held_writes, "opening").await?;
                let open = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                within("opened", open.opened()).await??;
                settle_bad_writes(poke_everything(&open, "open")?, "open").await?;
                let closed = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                within("opened", closed.opened()).await??;
                within("close", closed.close()).await??;
                settle_bad_writes(poke_everything(&closed, "closed")?, "closed").await?;
                ctx.net.faults().fail_bind(Cause::AddressInUse);
                let failed = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                let _ = within("opened", failed.opened()).await?;
                settle_bad_writes(poke_everything(&failed, "failed")?, "failed").await?;
                for s in [&opening, &open, &closed, &failed] {
                    let _ = within("close", s.close()).await?;
                    assert_eq!(s.ready_state(), ReadyState::Closed);
                    assert_udp_state_log(s);
                }
                Ok(())
            });
        }
    }

    /// Calls every `UdpSocket` method with bad input; only named errors may come back. Returns the
    /// futures of the bad writes (they settle only once the socket has opened, A-16).
    fn poke_everything(
        sock: &UdpSocket,
        state: &str,
    ) -> Result<Vec<tcpudp::WriteFuture>, Box<dyn std::error::Error>> {
        let _ = (
            sock.ready_state(),
            sock.remote_address(),
            sock.remote_port(),
            sock.local_address(),
            sock.local_port(),
        );
        let _ = (sock.address_reuse(), sock.loopback(), sock.dropped_datagrams(), sock.diag());
        let _ = pending_once(sock.opened());
        let _ = pending_once(sock.closed());
        let long = "9".repeat(10_000);
        for group in [
            "",
            "x",
            "127.0.0.1",
            "::1",
            "300.1.1.1",
            "239.255.0.1.5",
            "[ff02::1]",
            " 239.255.0.1",
            long.as_str(),
            "ff02::1",
        ] {
            for r in [sock.join_multicast(group), sock.leave_multicast(group)] {
                let name = err_name(&r);
                if group == "ff02::1" {
                    // A valid group of the other family: refused somehow, or ignored.
                    assert!(
                        matches!(
                            name,
                            None | Some(
                                ErrorName::NetworkError
                                    | ErrorName::InvalidStateError
                                    | ErrorName::InvalidAccessError
                            )
                        ),
                        "{state}: {group}: {r:?}"
                    );
                } else if state == "open" || state == "opening" {
                    assert_eq!(name, Some(ErrorName::InvalidAccessError), "{state}: {group:?}");
                } else {
                    assert!(
                        matches!(name, Some(ErrorName::InvalidAccessError | ErrorName::InvalidStateError)),
                        "{state}: {group:?}: {r:?}"
                    );
                }
            }
        }
        // The stream locks (§0.3): a second reader or writer is a TypeError; dropping releases.
        let reader = sock.readable()?;
        assert_err(sock.readable().map(|_| ()), ErrorName::TypeError);
        let writer = sock.writable()?;
        assert_err(sock.writable().map(|_| ()), ErrorName::TypeError);
        let bad = [
            Datagram::new(&b"no destination"[..]),
            Datagram::to(&b"empty address"[..], "", 9),
            Datagram::to(&b"bad address"[..], "300.1.1.1", 9),
            Datagram::to(&b"port 0"[..], LO, 0),
            Datagram::to(vec![0u8; 70_000], LO, 9),
            Datagram::to(&b"other family"[..], "::1", 9),
            Datagram::to(&b"long name"[..], long.as_str(), 9),
        ];
        let writes: Vec<_> = bad.into_iter().map(|d| writer.write(d)).collect();
        let _ = writer.desired_size();
        drop((reader, writer));
        let again = sock.readable()?;
        drop(again);
        let _ = sock.writable()?;
        Ok(writes)
    }

    /// Every bad write rejects with a named error (and none is sent).
    async fn settle_bad_writes(
        writes: Vec<tcpudp::WriteFuture>,
        state: &str,
    ) -> Result<(), Box<dyn std::error::Error>> {
        for w in writes {
            let r = within("bad write", w).await?;
            assert!(
                matches!(
                    err_name(&r),
                    Some(
                        ErrorName::InvalidAccessError
                            | ErrorName::NetworkError
                            | ErrorName::TypeError
                            | ErrorName::AbortError
                    )
                ),
                "{state}: {r:?}"
            );
        }
        Ok(())
    }

    /// UDP-MCAST-07 in simulation: the *sending* socket's `loopback` decides whether members on the
    /// sending host receive; members on other hosts receive either way. (On real sockets `lo` delivers
    /// regardless; `real_udp.rs` checks this inside a namespace with a veth pair.)
    fn multicast_loopback_is_the_senders_option(world: &mut crate::World) {
        // Each round has its own group: both rounds' members share an ephemeral port number on
        // different hosts, so one round's group datagram must not count against the other.
        for (sender_loopback, round, group) in [(false, "quiet", "239.255.0.7"), (true, "looped", "239.255.0.8")]
        {
            let key = format!("{round}-port");
            let ready = format!("{round}-ready");
            let done = format!("{round}-done");
            let (k, r, d) = (key.clone(), ready.clone(), done.clone());
            world.client(&format!("remote-{round}"), move |ctx| {
                let (key, ready, done) = (k.clone(), r.clone(), d.clone());
                async move {
                    let port = ctx.lookup(&key).await;
                    let member = UdpSocket::new(
                        &ctx.net,
                        mcast(UdpOptions { local_port: Some(port), ..UdpOptions::default() }),
                    )?;
                    within("opened", member.opened()).await??;
                    member.join_multicast(group)?;
                    ctx.publish(&ready, 1);
                    let msg = next_msg(&mut member.readable()?).await?;
                    assert_eq!(&msg.data[..], b"group", "another host receives whatever the sender's loopback");
                    ctx.publish(&done, 1);
                    Ok(())
                }
            });
            let (ready, done) = (ready.clone(), done.clone());
            world.client(&format!("sender-{round}"), move |ctx| {
                let (key, ready, done) = (key.clone(), ready.clone(), done.clone());
                async move {
                    // The local member asks for loopback itself: only the sender's flag may count.
                    let local =
                        UdpSocket::new(&ctx.net, mcast(UdpOptions { loopback: true, ..UdpOptions::default() }))?;
                    within("opened", local.opened()).await??;
                    let port = local.local_port().ok_or("no port")?;
                    local.join_multicast(group)?;
                    ctx.publish(&key, port);
                    let _ = ctx.lookup(&ready).await;
                    let sender = UdpSocket::new(
                        &ctx.net,
                        mcast(UdpOptions { loopback: sender_loopback, ..UdpOptions::default() }),
                    )?;
                    assert_eq!(sender.diag().options.multicast_loopback, Some(sender_loopback));
                    let w = sender.writable()?;
                    within("group write", w.write(Datagram::to(&b"group"[..], group, port))).await??;
                    within("marker write", w.write(Datagram::to(&b"marker"[..], LO, port))).await??;
                    let mut reader = local.readable()?;
                    let first = next_msg(&mut reader).await?;
                    if sender_loopback {
                        assert_eq!(&first.data[..], b"group", "loopback on: the local member receives");
                        assert_eq!(&next_msg(&mut reader).await?.data[..], b"marker");
                    } else {
                        assert_eq!(&first.data[..], b"marker", "loopback off: no local member receives");
                        nothing_more_in_sim(&ctx, &mut reader).await?;
                    }
                    let _ = ctx.lookup(&done).await;
                    Ok(())
                }
            });
        }
    }

    /// rule: UDP-MCAST-07, DICT-UDPOPT-06
    #[only(
        Sim,
        "the sender's loopback flag seen from another host needs a second host: on real sockets it is checked inside a network namespace (real_udp)"
    )]
    fn sim_multicast_loopback_is_the_senders_option() {
        crate::harness::check(
            BackendChoice::Sim,
            "sim_multicast_loopback",
            multicast_loopback_is_the_senders_option,
        );
    }
}

//! `TcpSocket` at API level on both backends (RULES.md §4, §9.2, §9.4 EXT-01..04, GEN-*): the
//! library against raw peers it did not write (tokio sockets on real loopback, `turmoil::net`
//! sockets in the simulator).

use std::future::Future;
use std::net::IpAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use crate::{BackendChoice, Ctx};
use bytes::Bytes;
use tcpudp::{Cause, ErrorName, KeepAliveMode, Policy, ReadyState, TcpOptions, TcpSocket};
use tokio::io::AsyncWriteExt;

use super::support::*;

/// The address text of `host` and its IP.
fn ip_of(ctx: &Ctx, host: &str) -> IpAddr {
    ctx.address_of(host).parse().expect("an IP literal")
}

/// What our own socket's local address should read as: 127.0.0.1 on loopback, the simulated
/// host's own address in simulation.
fn own_address(ctx: &Ctx) -> String {
    ctx.address_of(&ctx.name)
}

/// A raw peer that accepts one connection, publishes its port under "peer" and hands the stream to
/// `then`.
fn one_peer<F, Fut>(world: &mut crate::World, then: F)
where
    F: Fn(Ctx, RawStream) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<(), TestError>> + 'static,
{
    let then = Rc::new(then);
    world.host("peer", move |ctx| {
        let then = then.clone();
        async move {
            let listener = RawListener::bind(&ctx).await?;
            ctx.publish("peer", listener.port());
            let (stream, _) = listener.accept().await?;
            then(ctx, stream).await
        }
    });
}

/// The peer resets while the app's read, polled once, is left alone (kept, or dropped with its
/// readable); the app then awaits `closed`.
fn reader_stops_polling_then_peer_resets(world: &mut crate::World, drop_the_readable: bool) {
    guard(world);
    let go = Flag::default();
    let g = go.clone();
    one_peer(world, move |_ctx, stream| {
        let go = g.clone();
        async move {
            go.wait().await;
            stream.reset().await?;
            Ok(())
        }
    });
    world.client("app", move |ctx| {
        let go = go.clone();
        async move {
            let sock = connect(&ctx, TcpOptions::default()).await?;
            sock.opened().await?;
            sock.writable()?.write(Bytes::from_static(b"unread")).await?; // the peer resets on it
            let mut reader = sock.readable()?;
            let mut pending = reader.read();
            // Twice: the second poll waits on the socket's read route, as a reader that has read
            // before does.
            assert!(poll_now(&mut pending).await.is_pending());
            assert!(poll_now(&mut pending).await.is_pending());
            go.set();
            if drop_the_readable {
                tokio::time::sleep(Duration::from_millis(50)).await; // the reset arrives meanwhile
                drop(pending);
                drop(reader);
            }
            let e = assert_err(within(10, "closed", sock.closed()).await?, ErrorName::NetworkError);
            assert_eq!(e.cause(), Some(Cause::Reset));
            assert_eq!(sock.ready_state(), ReadyState::Closed);
            Ok(())
        }
    });
}

/// A raw peer that writes "x" once the returned flag is set, then holds the connection open.
fn peer_writes_x_when_told(world: &mut crate::World) -> Flag {
    let go = Flag::default();
    let g = go.clone();
    one_peer(world, move |_ctx, mut stream| {
        let go = g.clone();
        async move {
            go.wait().await;
            stream.write_all(b"x").await?;
            hold_forever(stream).await
        }
    });
    go
}

/// Connects the library to the peer published as "peer".
async fn connect(ctx: &Ctx, opts: TcpOptions) -> Result<TcpSocket, TestError> {
    let port = ctx.lookup("peer").await;
    Ok(TcpSocket::new(&ctx.net, &ctx.address_of("peer"), port, opts)?)
}

/// Keeps the stream open (no FIN, no reset) until the world ends.
async fn hold_forever(stream: RawStream) -> Result<(), TestError> {
    let _keep = stream;
    std::future::pending::<()>().await;
    Ok(())
}

/// Reads to EOF, checks it equals `expected`, then sends FIN.
async fn expect_then_fin(mut stream: RawStream, expected: Vec<u8>) -> Result<(), TestError> {
    let got = within(60, "peer read to EOF", stream.read_all()).await??;
    assert_eq!(got.len(), expected.len(), "peer got {} bytes, expected {}", got.len(), expected.len());
    assert!(got == expected, "peer bytes differ from what was written");
    stream.shutdown().await?;
    hold_forever(stream).await
}

/// The host's keep-alive default `name` from /proc/sys/net/ipv4 (Linux), else `stock`.
fn host_keep_alive(name: &str, stock: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(stock)
}

fn state_log(sock: &TcpSocket) -> Vec<ReadyState> {
    sock.diag().state_log
}

on_both_backends! {
    /// rule: GEN-01, TCP-CTOR-01, TCP-CTOR-02, TCP-CTOR-03, TCP-CTOR-06, TCP-CTOR-07, TCP-CTOR-14, TCP-CTOR-15, TCP-CTOR-17, GEN-13, ERR-01, ERR-04, ERR-11, PERM-GEN-01
    fn constructor_checks_fail_synchronously_and_create_nothing(world: &mut World) {
        guard(world);
        world.client("app", |ctx| async move {
            let faults = ctx.net.faults().clone();
            let (created, open) = (faults.created_sockets(), faults.open_sockets());
            let denied = net_with(&ctx, Policy::deny_all());
            let dfaults = denied.faults().clone();
            // Permission is checked first, before the address (TCP-CTOR-14, PERM-GEN-01).
            assert_err(TcpSocket::new(&denied, "127.0.0.1", 80, TcpOptions::default()), ErrorName::SecurityError);
            assert_err(TcpSocket::new(&denied, "1.2.3.4.5", 0, TcpOptions::default()), ErrorName::SecurityError);
            assert_eq!((dfaults.created_sockets(), dfaults.open_sockets()), (0, 0), "a denied constructor made a socket");
            assert!(dfaults.lookups().is_empty());

            // GEN-13: invalid remotes, never looked up.
            for bad in ["1.2.3.4.5", "300.1.1.1", "127.1", "010.0.0.1", "a..b", "-a.test", "", "[::1]"] {
                assert_err(TcpSocket::new(&ctx.net, bad, 80, TcpOptions::default()), ErrorName::InvalidAccessError);
            }
            // TCP-CTOR-03: port 0.
            assert_err(TcpSocket::new(&ctx.net, "127.0.0.1", 0, TcpOptions::default()), ErrorName::InvalidAccessError);
            // TCP-CTOR-06: a local address of the other family.
            let mismatch = TcpOptions { local_address: Some("127.0.0.1".into()), ..TcpOptions::default() };
            assert_err(TcpSocket::new(&ctx.net, "::1", 80, mismatch), ErrorName::InvalidAccessError);
            // TCP-CTOR-07: no route for an IP literal (a loopback one: nothing could leave the machine).
            ctx.net.faults().no_route("127.0.0.9".parse().unwrap());
            assert_err(TcpSocket::new(&ctx.net, "127.0.0.9", 80, TcpOptions::default()), ErrorName::InvalidAccessError);
            // TCP-CTOR-17: keep-alive interval bounds.
            for mode in [KeepAliveMode::Sparse, KeepAliveMode::FrequentThenSparse] {
                for bad in [0, 32_768] {
                    let opts = TcpOptions { keep_alive: mode, keep_alive_sparse_interval: Some(bad), ..TcpOptions::default() };
                    assert_err(TcpSocket::new(&ctx.net, "127.0.0.1", 80, opts), ErrorName::InvalidAccessError);
                }
            }
            // TCP-CTOR-14: address before keep-alive, keep-alive before TLS.
            let ka0 = TcpOptions { keep_alive: KeepAliveMode::Sparse, keep_alive_sparse_interval: Some(0), ..TcpOptions::default() };
            assert_err(TcpSocket::new(&ctx.net, "1.2.3.4.5", 80, ka0.clone()), ErrorName::InvalidAccessError);
            let ka0_tls = TcpOptions { use_secure_transport: true, ..ka0 };
            assert_err(TcpSocket::new(&ctx.net, "127.0.0.1", 80, ka0_tls), ErrorName::InvalidAccessError);
            // TCP-CTOR-15: TLS switched off in this network's context.
            ctx.net.set_tls(tcpudp::TlsContext::disabled());
            let tls = TcpOptions { use_secure_transport: true, ..TcpOptions::default() };
            assert_err(TcpSocket::new(&ctx.net, "127.0.0.1", 80, tls), ErrorName::NotSupportedError);
            assert!(faults.lookups().is_empty(), "invalid names were looked up: {:?}", faults.lookups());
            assert_eq!((faults.created_sockets(), faults.open_sockets()), (created, open), "a failed constructor made a socket");

            // 32,767 is the largest valid interval.
            let port = refused_port(&ctx).await;
            let ok = TcpOptions { keep_alive: KeepAliveMode::Sparse, keep_alive_sparse_interval: Some(32_767), ..TcpOptions::default() };
            let sock = TcpSocket::new(&ctx.net, &own_address(&ctx), port, ok)?;
            let _ = within(30, "refused connect", sock.closed()).await?;
            Ok(())
        });
    }

    /// rule: TCP-CTOR-04, TCP-CTOR-05, TCP-CTOR-08, TCP-CTOR-09, TCP-CTOR-11, TCP-CTOR-12, TCP-CTOR-16, TCP-ATTR-01, DICT-TCPOPT-01, DICT-TCPOPT-02, DICT-TCPOPT-03, DICT-TCPOPT-04, DICT-TCPOPT-05, DICT-TCPOPT-06, DICT-TCPOPT-07, TCP-OPEN-01, STATE-02, GEN-09
    fn attributes_as_given_and_as_learned(world: &mut World) {
        guard(world);
        let seen: Slot<Vec<std::net::SocketAddr>> = Slot::default();
        let peer_seen = seen.clone();
        world.host("peer", move |ctx| {
            let seen = peer_seen.clone();
            async move {
                let listener = RawListener::bind(&ctx).await?;
                ctx.publish("peer", listener.port());
                let mut held = Vec::new();
                let mut sources = Vec::new();
                loop {
                    let (stream, from) = listener.accept().await?;
                    sources.push(from);
                    seen.put(sources.clone());
                    held.push(stream); // Accepts and stays silent.
                }
            }
        });
        world.client("app", move |ctx| {
            let seen = seen.clone();
            async move {
                let port = ctx.lookup("peer").await;
                let peer = ctx.address_of("peer");
                let me = own_address(&ctx);

                // Defaults (DICT-TCPOPT-01..06).
                let sock = TcpSocket::new(&ctx.net, &peer, port, TcpOptions::default())?;
                let fixed = (sock.remote_address().to_owned(), sock.remote_port(), sock.address_reuse(), sock.no_delay());
                assert_eq!(fixed, (peer.clone(), port, true, true));
                assert!(!sock.use_secure_transport());
                assert_eq!(sock.ready_state(), ReadyState::Opening);
                sock.opened().await?;
                // GEN-09: the peer is silent, so nothing can have moved the state past Open.
                assert_eq!(sock.ready_state(), ReadyState::Open);
                assert_eq!(sock.local_address(), Some(me.clone()), "TCP-CTOR-08");
                let local_port = sock.local_port().ok_or("no local port after opened")?;
                assert_ne!(local_port, 0);
                let sources = within(10, "peer saw the connection", seen.get()).await?;
                assert_eq!(sources.last().map(|a| a.port()), Some(local_port), "TCP-CTOR-09: the peer sees our port");
                let diag = sock.diag();
                assert_eq!(diag.options.no_delay, Some(true), "TCP_NODELAY");
                assert_eq!(diag.options.address_reuse, Some(true), "SO_REUSEADDR");
                assert_eq!(diag.options.keep_alive, Some(false), "keep-alive off by default");
                assert_eq!((sock.remote_address().to_owned(), sock.remote_port(), sock.address_reuse(), sock.no_delay()), fixed);

                // noDelay false, addressReuse false.
                let opts = TcpOptions { no_delay: false, address_reuse: false, ..TcpOptions::default() };
                let plain = TcpSocket::new(&ctx.net, &peer, port, opts)?;
                assert!(!plain.no_delay() && !plain.address_reuse());
                plain.opened().await?;
                assert_eq!(plain.diag().options.no_delay, Some(false));
                assert_eq!(plain.diag().options.address_reuse, Some(false));

                // TCP-CTOR-05: a given local address is reported as given, and used.
                let opts = TcpOptions { local_address: Some(me.clone()), ..TcpOptions::default() };
                let bound = TcpSocket::new(&ctx.net, &peer, port, opts)?;
                assert_eq!(bound.local_address(), Some(me.clone()));
                bound.opened().await?;
                assert_eq!(bound.local_address(), Some(me.clone()));
                let sources = within(10, "third accept", async {
                    loop {
                        let s = seen.get().await;
                        if s.len() >= 3 {
                            break s;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }).await?;
                assert_eq!(sources[2].ip().to_string(), me, "the peer sees the given source address");

                // TCP-CTOR-08 with a host name: None while resolution is held, then the bound address.
                ctx.net.faults().resolve("svc.test", Ok(vec![ip_of(&ctx, "peer")]));
                ctx.net.faults().hold_resolve("svc.test");
                let named = TcpSocket::new(&ctx.net, "svc.test", port, TcpOptions::default())?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert_eq!(named.ready_state(), ReadyState::Opening);
                assert_eq!(named.local_address(), None);
                assert_eq!(named.local_port(), None);
                ctx.net.faults().release_resolve("svc.test");
                within(10, "named opened", named.opened()).await??;
                assert_eq!(named.remote_address(), "svc.test", "A-54: the name stays");
                assert_eq!(named.local_address(), Some(me.clone()));
                assert!(named.local_port().is_some());

                // TCP-CTOR-16: keep-alive values reach the socket (sim: recorded values).
                let opts = TcpOptions { keep_alive: KeepAliveMode::Sparse, keep_alive_sparse_interval: Some(30), ..TcpOptions::default() };
                let ka = TcpSocket::new(&ctx.net, &peer, port, opts)?;
                ka.opened().await?;
                let d = ka.diag().options;
                assert_eq!((d.keep_alive, d.keep_alive_idle, d.keep_alive_interval, d.keep_alive_count), (Some(true), Some(30), Some(30), Some(9)));

                // DICT-TCPOPT-07: "sparse" without an interval: the OS defaults (sim: 7,200 s and 75 s), 9 probes.
                let opts = TcpOptions { keep_alive: KeepAliveMode::Sparse, ..TcpOptions::default() };
                let os = TcpSocket::new(&ctx.net, &peer, port, opts)?;
                os.opened().await?;
                let (idle, interval) = match ctx.backend() {
                    BackendChoice::Real => (host_keep_alive("tcp_keepalive_time", 7_200), host_keep_alive("tcp_keepalive_intvl", 75)),
                    BackendChoice::Sim => (7_200, 75),
                };
                let d = os.diag().options;
                assert_eq!((d.keep_alive, d.keep_alive_idle, d.keep_alive_interval, d.keep_alive_count), (Some(true), Some(idle), Some(interval), Some(9)));

                for s in [&sock, &plain, &bound, &named, &ka, &os] {
                    s.reset();
                    assert_eq!(s.ready_state(), ReadyState::Closed);
                }
                // TCP-ATTR-01: the fixed attributes did not change, and the learned ones stay.
                assert_eq!((sock.remote_address().to_owned(), sock.remote_port(), sock.address_reuse(), sock.no_delay()), fixed);
                assert_eq!(sock.local_port(), Some(local_port));
                assert_eq!(sock.local_address(), Some(me));
                Ok(())
            }
        });
    }

    /// rule: TCP-CTOR-13, TCP-OPEN-04, STATE-01, TCP-WRITE-01, TCP-READ-CLOSE-01
    fn opening_under_hold_queues_writes(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, stream| expect_then_fin(stream, b"abc".to_vec()));
        world.client("app", |ctx| async move {
            let port = ctx.lookup("peer").await;
            ctx.net.faults().hold_open();
            let sock = TcpSocket::new(&ctx.net, &ctx.address_of("peer"), port, TcpOptions::default())?;
            assert_eq!(sock.ready_state(), ReadyState::Opening);
            let (mut opened, mut closed) = (sock.opened(), sock.closed());
            assert!(poll_once(&mut opened).is_pending() && poll_once(&mut closed).is_pending());
            let mut reader = sock.readable()?;
            let writer = sock.writable()?;
            let writes: Vec<_> = [&b"a"[..], b"b", b"c"].into_iter().map(|c| writer.write(Bytes::from_static(c))).collect();
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(sock.ready_state(), ReadyState::Opening, "held sockets stay opening");
            assert!(poll_once(&mut opened).is_pending());
            ctx.net.faults().release_open();
            within(10, "opened", opened).await??;
            for w in writes {
                within(10, "queued write", w).await??;
            }
            sock.half_close();
            assert_eq!(within(10, "peer FIN", reader.read()).await??, None);
            within(10, "closed", closed).await??;
            assert_eq!(state_log(&sock), [ReadyState::Opening, ReadyState::Open, ReadyState::HalfClosed, ReadyState::Closed]);
            Ok(())
        });
    }

    /// rule: TCP-WRITE-CLOSE-03, TCP-HALFCLOSE-01
    fn half_close_while_opening_waits_for_the_connection(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, stream| expect_then_fin(stream, Vec::new()));
        world.client("app", |ctx| async move {
            let port = ctx.lookup("peer").await;
            ctx.net.faults().hold_open();
            let sock = TcpSocket::new(&ctx.net, &ctx.address_of("peer"), port, TcpOptions::default())?;
            sock.half_close();
            assert_eq!(sock.ready_state(), ReadyState::Opening);
            ctx.net.faults().release_open();
            within(10, "opened", sock.opened()).await??;
            let mut reader = sock.readable()?;
            assert_eq!(within(10, "peer FIN", reader.read()).await??, None);
            within(10, "closed", sock.closed()).await??;
            assert_eq!(state_log(&sock), [ReadyState::Opening, ReadyState::Open, ReadyState::HalfClosed, ReadyState::Closed]);
            Ok(())
        });
    }

    /// rule: TCP-OPEN-02, TCP-OPEN-03, EXT-04, GEN-05, GEN-09, GEN-14, ERR-06
    fn refused_connect_fails_every_future(world: &mut World) {
        guard(world);
        world.client("app", |ctx| async move {
            let baseline = ctx.net.faults().open_sockets();
            let port = refused_port(&ctx).await;
            let sock = TcpSocket::new(&ctx.net, &own_address(&ctx), port, TcpOptions::default())?;
            let early_opened = sock.opened();
            let write = sock.writable()?.write(Bytes::from_static(b"x"));
            let closed = sock.closed();
            let result = within(30, "closed", closed.clone()).await?;
            // GEN-09: the continuation of closed sees Closed.
            assert_eq!(sock.ready_state(), ReadyState::Closed);
            let e = assert_err(result, ErrorName::NetworkError);
            assert_eq!(e.cause(), Some(Cause::Refused));
            let opened = assert_err(early_opened.await, ErrorName::NetworkError);
            assert_eq!(assert_err(sock.opened().await, ErrorName::NetworkError), opened, "GEN-05");
            assert_err(write.await, ErrorName::NetworkError);
            assert_err(sock.readable()?.read().await, ErrorName::NetworkError);
            assert_err(sock.writable()?.write(Bytes::from_static(b"y")).await, ErrorName::NetworkError);
            assert_eq!(state_log(&sock), [ReadyState::Opening, ReadyState::Closed]);
            assert_eq!(ctx.net.faults().open_sockets(), baseline, "GEN-14");
            Ok(())
        });
    }

    /// rule: TCP-OPEN-02, TCP-CTOR-07, GEN-13
    fn unresolvable_name_fails_opening(world: &mut World) {
        guard(world);
        world.client("app", |ctx| async move {
            ctx.net.faults().resolve("nohost.test", Err(Cause::HostNotFound));
            let sock = TcpSocket::new(&ctx.net, "nohost.test", 80, TcpOptions::default())?;
            assert_eq!(sock.ready_state(), ReadyState::Opening);
            let e = assert_err(within(30, "opened", sock.opened()).await?, ErrorName::NetworkError);
            assert_eq!(e.cause(), Some(Cause::HostNotFound));
            assert_err(sock.closed().await, ErrorName::NetworkError);
            assert_err(sock.readable()?.read().await, ErrorName::NetworkError);
            assert_eq!(sock.ready_state(), ReadyState::Closed);
            assert_eq!(sock.remote_address(), "nohost.test");
            assert_eq!(ctx.net.faults().lookups(), ["nohost.test"]);
            Ok(())
        });
    }

    /// rule: TCP-OPEN-05, TCP-OPEN-02
    fn connect_timeout_ends_a_hanging_connect(world: &mut World) {
        guard(world);
        world.client("app", |ctx| async move {
            ctx.net.faults().hang_connect();
            let sim = ctx.backend() == BackendChoice::Sim;
            let timeout = if sim { Duration::from_secs(1) } else { Duration::from_millis(200) };
            let t0 = tokio::time::Instant::now();
            let sock = TcpSocket::new(&ctx.net, &own_address(&ctx), 80, TcpOptions { connect_timeout: timeout, ..TcpOptions::default() })?;
            let mut opened = sock.opened();
            assert!(poll_once(&mut opened).is_pending());
            if sim {
                tokio::time::sleep(Duration::from_millis(999)).await;
                assert!(poll_once(&mut opened).is_pending(), "opened settled before the connect timeout");
                assert_eq!(sock.ready_state(), ReadyState::Opening);
            }
            let e = assert_err(within(30, "connect timeout", opened).await?, ErrorName::NetworkError);
            assert_eq!(e.cause(), Some(Cause::TimedOut));
            if sim {
                let elapsed = t0.elapsed();
                assert!(elapsed >= timeout && elapsed <= timeout + Duration::from_millis(5), "timed out at {elapsed:?}");
            }
            assert_err(sock.closed().await, ErrorName::NetworkError);
            assert_eq!(sock.ready_state(), ReadyState::Closed);
            Ok(())
        });
    }

    /// rule: TCP-READ-CANCEL-02, TCP-CLOSE-01, GEN-06, GEN-14, ERR-07
    fn close_while_opening_aborts(world: &mut World) {
        guard(world);
        world.client("app", |ctx| async move {
            let baseline = ctx.net.faults().open_sockets();
            ctx.net.faults().hang_connect();
            let sock = TcpSocket::new(&ctx.net, &own_address(&ctx), 80, TcpOptions::default())?;
            let mut reader = sock.readable()?;
            let write = sock.writable()?.write(Bytes::from_static(b"queued"));
            let closing = sock.close();
            assert_eq!(sock.ready_state(), ReadyState::Closed, "A-11: closed at once, never closing");
            assert_err(sock.opened().await, ErrorName::AbortError);
            let c = assert_err(closing.await, ErrorName::AbortError);
            assert_eq!(assert_err(sock.closed().await, ErrorName::AbortError), c, "GEN-06");
            assert_err(write.await, ErrorName::AbortError);
            assert_eq!(reader.read().await?, None, "reads give done");
            assert_eq!(state_log(&sock), [ReadyState::Opening, ReadyState::Closed]);
            assert_eq!(ctx.net.faults().open_sockets(), baseline);
            Ok(())
        });
    }

    /// rule: TCP-OPEN-06
    fn several_addresses_are_tried_in_order(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, stream| hold_forever(stream));
        world.client("app", |ctx| async move {
            let port = ctx.lookup("peer").await;
            // ::1 first: refused on loopback (nothing listens there), the other family in simulation.
            ctx.net.faults().resolve("svc.test", Ok(vec!["::1".parse().unwrap(), ip_of(&ctx, "peer")]));
            let sock = TcpSocket::new(&ctx.net, "svc.test", port, TcpOptions::default())?;
            within(30, "opened", sock.opened()).await??;
            assert_eq!(sock.remote_address(), "svc.test");
            assert_eq!(sock.remote_port(), port);
            sock.reset();
            let refused = refused_port(&ctx).await;
            ctx.net.faults().resolve("none.test", Ok(vec!["::1".parse().unwrap(), ip_of(&ctx, &ctx.name)]));
            let none = TcpSocket::new(&ctx.net, "none.test", refused, TcpOptions::default())?;
            assert_err(within(30, "opened", none.opened()).await?, ErrorName::NetworkError);
            assert_eq!(ctx.net.faults().lookups(), ["svc.test", "none.test"]);
            Ok(())
        });
    }

    /// rule: TCP-READ-01, GEN-08, TCP-READ-CLOSE-02
    fn ten_mib_arrive_intact(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, mut stream| async move {
            let data = pattern(1, 10 << 20);
            for chunk in data.chunks(64 * 1024) {
                stream.write_all(chunk).await?;
            }
            stream.shutdown().await?;
            assert!(stream.read_all().await?.is_empty(), "the app sends nothing but FIN");
            hold_forever(stream).await
        });
        world.client("app", |ctx| async move {
            let sock = connect(&ctx, TcpOptions::default()).await?;
            let mut reader = sock.readable()?;
            let first = within(30, "first chunk", reader.read()).await??.ok_or("no data")?;
            let first_copy = first.to_vec();
            let mut got = first_copy.clone();
            got.extend(within(60, "10 MiB", read_to_end(&mut reader)).await??);
            assert_eq!(got.len(), 10 << 20);
            assert!(got == pattern(1, 10 << 20), "the concatenated chunks differ from the bytes sent");
            assert_eq!(&first[..], &first_copy[..], "GEN-08: an early chunk changed");
            within(30, "closed after done", sock.closed()).await??;
            Ok(())
        });
    }

    /// rule: TCP-READ-FLOW-01, TCP-READ-PULL-01
    /// invariant: INV-19
    fn inbound_queue_stays_bounded_then_resumes(world: &mut World) {
        guard(world);
        let blocked = Flag::default();
        let total: Slot<usize> = Slot::default();
        let (b, t) = (blocked.clone(), total.clone());
        one_peer(world, move |_ctx, mut stream| {
            let (blocked, total) = (b.clone(), t.clone());
            async move {
                let data = pattern(7, 64 << 20);
                let mut sent = 0;
                // Non-blocking writes until the kernel (or the simulator's window) pushes back.
                while sent < data.len() {
                    match stream.try_write(&data[sent..(sent + 16 * 1024).min(data.len())]) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                    if sent % (1 << 20) == 0 {
                        tokio::task::yield_now().await; // let the app's side read if it would
                    }
                }
                assert!(sent < data.len(), "the peer never got WouldBlock: no flow control");
                blocked.set();
                let end = sent + (1 << 20);
                stream.write_all(&data[sent..end]).await?;
                // A FIN into a full window is parked for ever by turmoil (DESIGN §7): send it once
                // a write credit is free, as real TCP does.
                stream.writable().await?;
                stream.shutdown().await?;
                total.put(end);
                hold_forever(stream).await
            }
        });
        world.client("app", move |ctx| {
            let (blocked, total) = (blocked.clone(), total.clone());
            async move {
                let hwm = 64 * 1024;
                let sock = connect(&ctx, TcpOptions { readable_high_water_mark: hwm, ..TcpOptions::default() }).await?;
                sock.opened().await?;
                within(60, "peer blocked", blocked.wait()).await?;
                // Segments already in flight (up to the link's latency) may still arrive.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let diag = sock.diag();
                assert!(diag.queued_read_bytes <= hwm + 64 * 1024, "queued {} bytes", diag.queued_read_bytes);
                assert!(!diag.read_interest, "still reading with a full queue");
                let mut reader = sock.readable()?;
                let got = within(60, "everything", read_to_end(&mut reader)).await??;
                let total = total.get().await;
                assert_eq!(got.len(), total);
                assert!(got == pattern(7, total), "bytes differ");
                within(30, "closed", sock.closed()).await??;
                Ok(())
            }
        });
    }

    /// rule: TCP-READ-01, TCP-READ-CLOSE-02
    // DESIGN §5: a reader parked while the peer sends data then FIN never hangs (50 rounds).
    fn parked_reader_sees_data_then_fin(world: &mut World) {
        guard(world);
        const ROUNDS: usize = 50;
        const SIZES: [usize; 10] = [0, 1, 100, 1460, 16 * 1024, 65_535, 65_536, 65_537, 131_072, 300_000];
        world.host("peer", |ctx| async move {
            let listener = RawListener::bind(&ctx).await?;
            ctx.publish("peer", listener.port());
            for round in 0..ROUNDS {
                let (mut stream, _) = listener.accept().await?;
                let go = stream.read_n(1).await?;
                assert_eq!(go, b"g");
                let size = SIZES[round % SIZES.len()] + round;
                stream.write_all(&pattern(round as u64, size)).await?;
                stream.shutdown().await?;
                assert!(stream.read_all().await?.is_empty());
            }
            Ok(())
        });
        world.client("app", |ctx| async move {
            let port = ctx.lookup("peer").await;
            for round in 0..ROUNDS {
                let sock = TcpSocket::new(&ctx.net, &ctx.address_of("peer"), port, TcpOptions::default())?;
                sock.opened().await?;
                let mut reader = sock.readable()?;
                let mut got = Vec::new();
                {
                    let mut parked = reader.read();
                    assert!(poll_now(&mut parked).await.is_pending(), "data before the go signal");
                    sock.writable()?.write(Bytes::from_static(b"g")).await?;
                    if let Some(chunk) = within(30, "parked read", parked).await?? {
                        got.extend_from_slice(&chunk);
                    }
                }
                got.extend(within(30, "rest", read_to_end(&mut reader)).await??);
                let size = SIZES[round % SIZES.len()] + round;
                assert_eq!(got.len(), size, "round {round}");
                assert!(got == pattern(round as u64, size), "round {round}: bytes differ");
                within(30, "closed", sock.closed()).await??;
            }
            Ok(())
        });
    }

    /// rule: TCP-READ-CLOSE-02, STATE-03, GEN-09, TCP-WRITE-06
    fn peer_fin_closes_after_the_app_reads_done(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, mut stream| async move {
            stream.write_all(b"req").await?;
            stream.shutdown().await?;
            let got = within(30, "reply", stream.read_all()).await??;
            assert_eq!(got, b"ack");
            hold_forever(stream).await
        });
        world.client("app", |ctx| async move {
            let sock = connect(&ctx, TcpOptions::default()).await?;
            let mut reader = sock.readable()?;
            let writer = sock.writable()?;
            assert_eq!(read_n(&mut reader, 3).await?, b"req");
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(sock.ready_state(), ReadyState::Open, "the FIN alone does not close (A-20)");
            let ack = writer.write(Bytes::from_static(b"ack"));
            assert_eq!(within(10, "done", reader.read()).await??, None);
            let late = writer.write(Bytes::from_static(b"late"));
            assert_err(late.await, ErrorName::TypeError);
            within(10, "ack", ack).await??;
            within(30, "closed", sock.closed()).await??;
            assert_eq!(sock.ready_state(), ReadyState::Closed, "GEN-09");
            assert_eq!(state_log(&sock), [ReadyState::Opening, ReadyState::Open, ReadyState::Closing, ReadyState::Closed]);
            Ok(())
        });
    }

    /// rule: TCP-HALFCLOSE-01, TCP-HALFCLOSE-02, TCP-WRITE-CLOSE-04, TCP-WRITE-CLOSE-05, TCP-WRITE-06, TCP-READ-CLOSE-01, TCP-READ-CLOSE-03, STATE-05, GEN-03
    fn half_close_keeps_receiving_until_the_peer_fin(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, mut stream| async move {
            let got = within(30, "EOF", stream.read_all()).await??;
            assert_eq!(got, b"hello", "nothing after half_close is sent");
            stream.write_all(b"late").await?;
            stream.shutdown().await?;
            hold_forever(stream).await
        });
        world.client("app", |ctx| async move {
            let sock = connect(&ctx, TcpOptions::default()).await?;
            sock.opened().await?;
            let writer = sock.writable()?; // held while half_close() runs
            let hello = writer.write(Bytes::from_static(b"hello"));
            sock.half_close();
            assert_eq!(sock.ready_state(), ReadyState::HalfClosed);
            sock.half_close();
            assert_eq!(sock.ready_state(), ReadyState::HalfClosed, "A-51: no-op");
            // GEN-03: the write returns a future; its rejection is TypeError.
            let after = writer.write(Bytes::from_static(b"x"));
            assert_err(after.await, ErrorName::TypeError);
            within(10, "hello", hello).await??;
            let mut reader = sock.readable()?;
            assert_eq!(within(30, "late", read_to_end(&mut reader)).await??, b"late");
            within(30, "closed", sock.closed()).await??;
            assert_eq!(state_log(&sock), [ReadyState::Opening, ReadyState::Open, ReadyState::HalfClosed, ReadyState::Closed]);
            Ok(())
        });
    }

    /// rule: TCP-READ-ERR-01, EXT-04, TCP-WRITE-02, TCP-WRITE-05, GEN-14, ERR-06
    /// invariant: INV-06
    fn peer_reset_while_open_errors_everything(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, stream| async move {
            stream.reset().await?;
            Ok(())
        });
        world.client("app", |ctx| async move {
            let baseline = ctx.net.faults().open_sockets();
            let sock = connect(&ctx, TcpOptions::default()).await?;
            sock.opened().await?;
            let mut reader = sock.readable()?;
            let writer = sock.writable()?;
            writer.write(Bytes::from_static(b"unread")).await?;
            let e = assert_err(within(30, "read", reader.read()).await?, ErrorName::NetworkError);
            assert_eq!(e.cause(), Some(Cause::Reset));
            assert_eq!(assert_err(reader.read().await, ErrorName::NetworkError), e, "INV-06: the same error again");
            assert_eq!(assert_err(sock.closed().await, ErrorName::NetworkError), e);
            assert_eq!(sock.ready_state(), ReadyState::Closed);
            let w1 = assert_err(writer.write(Bytes::from_static(b"a")).await, ErrorName::NetworkError);
            let w2 = assert_err(writer.write(Bytes::from_static(b"b")).await, ErrorName::NetworkError);
            assert_eq!(w1, w2, "TCP-WRITE-05");
            assert_eq!(assert_err(sock.close().await, ErrorName::NetworkError), e, "close() keeps the outcome");
            assert_eq!(ctx.net.faults().open_sockets(), baseline, "GEN-14");
            Ok(())
        });
    }

    /// rule: TCP-READ-ERR-04, EXT-04
    fn peer_reset_while_halfclosed(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, stream| async move {
            stream.reset().await?;
            Ok(())
        });
        world.client("app", |ctx| async move {
            let sock = connect(&ctx, TcpOptions::default()).await?;
            sock.opened().await?;
            sock.writable()?.write(Bytes::from_static(b"unread")).await?;
            sock.half_close();
            assert_eq!(sock.ready_state(), ReadyState::HalfClosed);
            assert_err(within(30, "closed", sock.closed()).await?, ErrorName::NetworkError);
            assert_eq!(sock.ready_state(), ReadyState::Closed);
            assert_err(sock.readable()?.read().await, ErrorName::NetworkError);
            Ok(())
        });
    }

    /// rule: TCP-READ-ERR-02, EXT-04
    fn peer_reset_while_closing(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, stream| async move {
            stream.reset().await?;
            Ok(())
        });
        world.client("app", |ctx| async move {
            let sock = connect(&ctx, TcpOptions::default()).await?;
            sock.opened().await?;
            let mut reader = sock.readable()?;
            sock.writable()?.write(Bytes::from_static(b"unread")).await?;
            let closing = sock.close();
            assert_eq!(sock.ready_state(), ReadyState::Closing);
            let e = assert_err(within(30, "closed", closing).await?, ErrorName::NetworkError);
            assert_eq!(e.cause(), Some(Cause::Reset));
            assert_eq!(sock.ready_state(), ReadyState::Closed);
            assert_eq!(reader.read().await?, None, "the readable ended at close(): not errored later");
            assert_eq!(state_log(&sock), [ReadyState::Opening, ReadyState::Open, ReadyState::Closing, ReadyState::Closed]);
            Ok(())
        });
    }

    /// rule: TCP-READ-ERR-01, TCP-WRITE-02, GEN-14
    fn dropped_link_fails_the_connection(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, stream| hold_forever(stream));
        world.client("app", |ctx| async move {
            let baseline = ctx.net.faults().open_sockets();
            let sock = connect(&ctx, TcpOptions::default()).await?;
            sock.opened().await?;
            let mut reader = sock.readable()?;
            let mut pending = reader.read();
            assert!(poll_now(&mut pending).await.is_pending());
            ctx.net.faults().drop_link();
            assert_err(within(10, "read", pending).await?, ErrorName::NetworkError);
            assert_err(sock.closed().await, ErrorName::NetworkError);
            assert_err(sock.writable()?.write(Bytes::from_static(b"x")).await, ErrorName::NetworkError);
            assert_eq!(sock.ready_state(), ReadyState::Closed);
            assert_eq!(ctx.net.faults().open_sockets(), baseline);
            Ok(())
        });
    }

    /// rule: TCP-READ-ERR-03, ERR-09
    fn unconvertible_data_errors_with_type_error(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, mut stream| async move {
            stream.write_all(b"data").await?;
            hold_forever(stream).await
        });
        world.client("app", |ctx| async move {
            ctx.net.faults().fail_conversion();
            let sock = connect(&ctx, TcpOptions::default()).await?;
            let mut reader = sock.readable()?;
            let e = assert_err(within(30, "read", reader.read()).await?, ErrorName::TypeError);
            assert_eq!(e.cause(), Some(Cause::Conversion));
            assert_eq!(assert_err(sock.closed().await, ErrorName::TypeError), e);
            assert_eq!(assert_err(sock.writable()?.write(Bytes::from_static(b"x")).await, ErrorName::TypeError), e);
            assert_eq!(sock.ready_state(), ReadyState::Closed);
            Ok(())
        });
    }

    /// rule: TCP-READ-CANCEL-03, TCP-CLOSE-01, TCP-WRITE-CLOSE-02, GEN-10, GEN-06
    /// invariant: INV-09
    fn close_flushes_queued_writes_then_fin(world: &mut World) {
        guard(world);
        let mut expected = b"ab".to_vec();
        expected.extend(pattern(3, 1 << 20));
        one_peer(world, move |_ctx, stream| expect_then_fin(stream, expected.clone()));
        world.client("app", |ctx| async move {
            let sock = connect(&ctx, TcpOptions::default()).await?;
            let closed = sock.closed();
            sock.opened().await?;
            let writer = sock.writable()?;
            // GEN-10: nothing below is polled.
            drop(writer.write(Bytes::from_static(b"a")));
            drop(writer.write(Bytes::from_static(b"b")));
            for chunk in pattern(3, 1 << 20).chunks(64 * 1024) {
                drop(writer.write(Bytes::copy_from_slice(chunk)));
            }
            drop(sock.close());
            assert_eq!(sock.ready_state(), ReadyState::Closing, "closing right after close() returns");
            sock.half_close();
            assert_eq!(sock.ready_state(), ReadyState::Closing, "TCP-WRITE-CLOSE-02: no effect");
            within(60, "closed", closed).await??;
            assert_eq!(sock.close().await, Ok(()), "GEN-06");
            Ok(())
        });
    }

    /// rule: TCP-READ-CANCEL-04
    fn close_in_halfclosed_waits_for_the_peer(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, mut stream| async move {
            assert!(within(30, "EOF", stream.read_all()).await??.is_empty());
            stream.write_all(b"discarded").await?;
            stream.shutdown().await?;
            hold_forever(stream).await
        });
        world.client("app", |ctx| async move {
            let sock = connect(&ctx, TcpOptions::default()).await?;
            sock.opened().await?;
            let mut reader = sock.readable()?;
            sock.half_close();
            let closing = sock.close();
            assert_eq!(sock.ready_state(), ReadyState::Closing);
            assert_eq!(reader.read().await?, None);
            within(30, "closed", closing).await??;
            assert_eq!(reader.read().await?, None, "unread data is discarded");
            assert_eq!(state_log(&sock), [ReadyState::Opening, ReadyState::Open, ReadyState::HalfClosed, ReadyState::Closing, ReadyState::Closed]);
            Ok(())
        });
    }

    /// rule: TCP-READ-CANCEL-05, TCP-CLOSE-02
    fn read_pending_at_close_gives_done(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, mut stream| async move {
            stream.write_all(b"first").await?;
            assert!(within(30, "EOF", stream.read_all()).await??.is_empty());
            for _ in 0..50 {
                stream.write_all(&[7u8; 1000]).await?; // keeps sending after the app's close()
            }
            stream.shutdown().await?;
            hold_forever(stream).await
        });
        world.client("app", |ctx| async move {
            let sock = connect(&ctx, TcpOptions::default()).await?;
            let mut reader = sock.readable()?;
            assert_eq!(read_n(&mut reader, 5).await?, b"first");
            let mut pending = reader.read();
            assert!(poll_now(&mut pending).await.is_pending());
            let closing = sock.close(); // the reader is locked and a read pending
            assert_eq!(poll_once(&mut pending), Poll::Ready(Ok(None)), "ready with done at its first poll after close()");
            within(30, "closed", closing).await??;
            assert_eq!(reader.read().await?, None);
            Ok(())
        });
    }

    /// rule: TCP-CLOSE-03, TCP-READ-CANCEL-01, GEN-06, GEN-05
    /// invariant: INV-12
    fn repeated_close_returns_the_same_outcome(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, stream| expect_then_fin(stream, Vec::new()));
        world.client("app", |ctx| async move {
            let sock = connect(&ctx, TcpOptions::default()).await?;
            sock.opened().await?;
            let (a, b, c) = (sock.close(), sock.close(), sock.close());
            assert_eq!(state_log(&sock), [ReadyState::Opening, ReadyState::Open, ReadyState::Closing], "one transition only");
            let (a, b, c) = (within(30, "a", a).await?, within(30, "b", b).await?, within(30, "c", c).await?);
            assert_eq!((&a, &b), (&c, &c));
            assert_eq!(a, Ok(()));
            let mut late = sock.close();
            assert_eq!(poll_once(&mut late), Poll::Ready(Ok(())), "settled at once after closed");
            assert_eq!(state_log(&sock), [ReadyState::Opening, ReadyState::Open, ReadyState::Closing, ReadyState::Closed]);
            Ok(())
        });
    }

    /// rule: TCP-CLOSE-04, TCP-READ-ERR-02, GEN-14
    fn close_timeout_when_the_peer_never_fins(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, mut stream| async move {
            assert!(within(30, "EOF", stream.read_all()).await??.is_empty());
            hold_forever(stream).await // never closes
        });
        world.client("app", |ctx| async move {
            let baseline = ctx.net.faults().open_sockets();
            let sim = ctx.backend() == BackendChoice::Sim;
            let timeout = if sim { Duration::from_secs(1) } else { Duration::from_millis(200) };
            let sock = connect(&ctx, TcpOptions { close_timeout: timeout, ..TcpOptions::default() }).await?;
            sock.opened().await?;
            let t0 = tokio::time::Instant::now();
            let mut closing = sock.close();
            if sim {
                tokio::time::sleep(timeout - Duration::from_millis(1)).await;
                assert!(poll_once(&mut closing).is_pending(), "closed settled before the close timeout");
                assert_eq!(sock.ready_state(), ReadyState::Closing);
            }
            let e = assert_err(within(30, "close timeout", closing).await?, ErrorName::NetworkError);
            assert_eq!(e.cause(), Some(Cause::TimedOut));
            if sim {
                let elapsed = t0.elapsed();
                assert!(elapsed >= timeout && elapsed <= timeout + Duration::from_millis(5), "closed at {elapsed:?}");
            }
            assert_eq!(sock.ready_state(), ReadyState::Closed);
            assert_eq!(ctx.net.faults().open_sockets(), baseline, "released at the close timeout");
            Ok(())
        });
    }

    /// rule: TCP-CLOSE-04, TCP-READ-ERR-02, GEN-14
    fn close_timeout_when_the_flush_stalls(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, stream| hold_forever(stream)); // never reads
        world.client("app", |ctx| async move {
            let baseline = ctx.net.faults().open_sockets();
            let timeout = Duration::from_millis(if ctx.backend() == BackendChoice::Sim { 1000 } else { 300 });
            let sock = connect(&ctx, TcpOptions { close_timeout: timeout, ..TcpOptions::default() }).await?;
            sock.opened().await?;
            let writer = sock.writable()?;
            let writes: Vec<_> = pattern(5, 8 << 20).chunks(64 * 1024).map(|c| writer.write(Bytes::copy_from_slice(c))).collect();
            let closing = sock.close();
            assert_eq!(sock.ready_state(), ReadyState::Closing);
            assert_err(within(30, "close timeout", closing).await?, ErrorName::NetworkError);
            assert_eq!(sock.ready_state(), ReadyState::Closed);
            let mut rejected = 0;
            for w in writes {
                if w.await.is_err() {
                    rejected += 1;
                }
            }
            if ctx.backend() == BackendChoice::Sim {
                assert!(rejected > 0, "the simulator holds 64 segments: the flush must have stalled");
            }
            assert_eq!(ctx.net.faults().open_sockets(), baseline);
            Ok(())
        });
    }

    /// rule: TCP-WRITE-01, TCP-WRITE-04, TCP-WRITE-07
    /// invariant: INV-08, INV-11
    fn writes_arrive_in_order_and_settle_in_order(world: &mut World) {
        guard(world);
        let chunks: Vec<Vec<u8>> = (0..200u64).map(|i| {
            let len = (pattern(i, 8)[0] as usize * 97 + i as usize * 13) % 20_000;
            if i % 17 == 0 { Vec::new() } else { pattern(1000 + i, len) }
        }).collect();
        let expected: Vec<u8> = chunks.concat();
        one_peer(world, move |_ctx, stream| expect_then_fin(stream, expected.clone()));
        world.client("app", move |ctx| {
            let chunks = chunks.clone();
            async move {
                let sock = connect(&ctx, TcpOptions::default()).await?;
                sock.opened().await?;
                let writer = sock.writable()?;
                let mut futs: Vec<Option<tcpudp::WriteFuture>> = chunks.iter().map(|c| Some(writer.write(Bytes::from(c.clone())))).collect();
                let mut done = vec![false; futs.len()];
                within(60, "writes", std::future::poll_fn(|cx| {
                    // Polled last to first: a later write ready before an earlier one would show.
                    for i in (0..futs.len()).rev() {
                        if let Some(f) = futs[i].as_mut() {
                            if let Poll::Ready(r) = std::pin::Pin::new(f).poll(cx) {
                                assert_eq!(r, Ok(()), "write {i}");
                                futs[i] = None;
                                done[i] = true;
                            }
                        }
                    }
                    let settled = done.iter().take_while(|d| **d).count();
                    assert!(done[settled..].iter().all(|d| !d), "a write settled before an earlier one");
                    if settled == done.len() { Poll::Ready(()) } else { Poll::Pending }
                })).await?;
                sock.half_close();
                let mut reader = sock.readable()?;
                assert_eq!(within(30, "peer FIN", reader.read()).await??, None);
                within(30, "closed", sock.closed()).await??;
                Ok(())
            }
        });
    }

    /// rule: TCP-WRITE-07
    fn empty_write_resolves_in_order_and_sends_nothing(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, stream| expect_then_fin(stream, b"ab".to_vec()));
        world.client("app", |ctx| async move {
            let sock = connect(&ctx, TcpOptions::default()).await?;
            let writer = sock.writable()?;
            let (a, e, b) = (writer.write(&b"a"[..]), writer.write(Bytes::new()), writer.write(&b"b"[..]));
            sock.half_close();
            within(30, "a", a).await??;
            within(30, "empty", e).await??;
            within(30, "b", b).await??;
            within(30, "closed", sock.closed()).await??;
            Ok(())
        });
    }

    /// rule: TCP-WRITE-CLOSE-01, STATE-05
    fn writer_close_after_queued_writes(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, stream| expect_then_fin(stream, b"onetwothree".to_vec()));
        world.client("app", |ctx| async move {
            let sock = connect(&ctx, TcpOptions::default()).await?;
            let writer = sock.writable()?;
            let writes = [writer.write(&b"one"[..]), writer.write(&b"two"[..]), writer.write(&b"three"[..])];
            let flushed = writer.close();
            within(30, "writer close", flushed).await??;
            assert_eq!(sock.ready_state(), ReadyState::HalfClosed);
            for w in writes {
                assert_eq!(w.await, Ok(()));
            }
            assert_err(writer.write(&b"more"[..]).await, ErrorName::TypeError);
            within(30, "closed", sock.closed()).await??;
            Ok(())
        });
    }

    /// rule: TCP-WRITE-ABORT-01, ERR-07, STATE-05
    /// invariant: INV-18
    fn writer_abort_discards_queued_then_fin(world: &mut World) {
        guard(world);
        let resume = Flag::default();
        let got: Slot<Vec<u8>> = Slot::default();
        let (r, g) = (resume.clone(), got.clone());
        one_peer(world, move |_ctx, mut stream| {
            let (resume, got) = (r.clone(), g.clone());
            async move {
                resume.wait().await; // stopped reading until then
                let all = within(60, "EOF", stream.read_all()).await??; // an error here would be a reset
                got.put(all);
                stream.shutdown().await?;
                hold_forever(stream).await
            }
        });
        world.client("app", move |ctx| {
            let (resume, got) = (resume.clone(), got.clone());
            async move {
                let sock = connect(&ctx, TcpOptions { send_buffer_size: Some(16 * 1024), ..TcpOptions::default() }).await?;
                sock.opened().await?;
                let writer = sock.writable()?;
                let chunks: Vec<Vec<u8>> = (0..64).map(|i| pattern(200 + i, 64 * 1024)).collect();
                let writes: Vec<_> = chunks.iter().map(|c| writer.write(Bytes::from(c.clone()))).collect();
                writer.abort(Some("stop"));
                assert_eq!(sock.ready_state(), ReadyState::HalfClosed);
                resume.set();
                let mut sent = Vec::new();
                let mut aborted = 0;
                for (i, w) in writes.into_iter().enumerate() {
                    match within(60, "write", w).await? {
                        Ok(()) => {
                            assert_eq!(aborted, 0, "write {i} resolved after a discarded one");
                            sent.extend_from_slice(&chunks[i]);
                        }
                        Err(e) => {
                            assert_eq!(e.kind(), ErrorName::AbortError);
                            assert_eq!(e.message(), Some("stop"));
                            aborted += 1;
                        }
                    }
                }
                let peer = within(60, "peer bytes", got.get()).await?;
                assert_eq!(peer.len(), sent.len());
                assert!(peer == sent, "the peer got something other than the resolved writes");
                assert_err(writer.write(&b"later"[..]).await, ErrorName::AbortError);
                let mut reader = sock.readable()?;
                assert_eq!(within(30, "peer FIN", reader.read()).await??, None);
                within(30, "closed", sock.closed()).await??;
                Ok(())
            }
        });
    }

    /// rule: GEN-11
    fn dropped_read_loses_no_chunk(world: &mut World) {
        guard(world);
        let go = peer_writes_x_when_told(world);
        world.client("app", move |ctx| {
            let go = go.clone();
            async move {
                let sock = connect(&ctx, TcpOptions::default()).await?;
                sock.opened().await?;
                let mut reader = sock.readable()?;
                {
                    let mut pending = reader.read();
                    assert!(poll_now(&mut pending).await.is_pending());
                }
                go.set();
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert_eq!(within(30, "x", reader.read()).await??.as_deref(), Some(&b"x"[..]));
                sock.reset();
                Ok(())
            }
        });
    }

    /// A read polled once and then left alone does not keep a peer's reset from the socket: the
    /// transport's wake-up went to that reader, which never acts on it; awaiting `closed` hands
    /// it to the socket's driver.
    /// rule: TCP-READ-ERR-01, GEN-11
    fn a_reader_that_stops_polling_does_not_hide_a_reset(world: &mut World) {
        reader_stops_polling_then_peer_resets(world, false);
    }

    /// As above, with the pending read and the readable dropped instead.
    /// rule: TCP-READ-ERR-01, GEN-11
    fn a_dropped_reader_does_not_hide_a_reset(world: &mut World) {
        reader_stops_polling_then_peer_resets(world, true);
    }

    /// A read that waits is woken once when data arrives, and the poll that then returns the
    /// data does not wake its own task again (a second, empty poll per message: it doubled the
    /// task polls of a ping-pong).
    /// rule: TCP-READ-01
    fn a_completed_read_does_not_wake_its_own_task_again(world: &mut World) {
        guard(world);
        let go = peer_writes_x_when_told(world);
        world.client("app", move |ctx| {
            let go = go.clone();
            async move {
                let sock = connect(&ctx, TcpOptions::default()).await?;
                sock.opened().await?;
                let mut reader = sock.readable()?;
                let wakes = WakeCount::new();
                let waker = wakes.waker();
                let mut cx = std::task::Context::from_waker(&waker);
                let mut pending = reader.read();
                // Twice: the second poll waits on the socket's read route, as a reader that has
                // read before does (the transport then wakes the reader itself).
                assert!(std::pin::Pin::new(&mut pending).poll(&mut cx).is_pending());
                assert!(std::pin::Pin::new(&mut pending).poll(&mut cx).is_pending());
                assert_eq!(wakes.get(), 0);
                go.set();
                within(30, "the reader's wake-up", wakes.at_least(1)).await?;
                match std::pin::Pin::new(&mut pending).poll(&mut cx) {
                    Poll::Ready(Ok(Some(chunk))) => assert_eq!(&chunk[..], b"x"),
                    other => panic!("expected the chunk, got {other:?}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert_eq!(wakes.get(), 1, "the read that returned the chunk woke its task again");
                sock.reset();
                Ok(())
            }
        });
    }

    /// rule: GEN-12, GEN-14
    fn dropping_every_handle_flushes_and_closes(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, stream| expect_then_fin(stream, b"onetwothree".to_vec()));
        world.client("app", |ctx| async move {
            let baseline = ctx.net.faults().open_sockets();
            let sock = connect(&ctx, TcpOptions::default()).await?;
            let closed = sock.closed();
            sock.opened().await?;
            let writer = sock.writable()?;
            for c in [&b"one"[..], b"two", b"three"] {
                drop(writer.write(c));
            }
            drop((writer, sock));
            within(30, "closed", closed).await??;
            assert_eq!(ctx.net.faults().open_sockets(), baseline);
            Ok(())
        });
    }

    /// rule: EXT-01, EXT-02, DICT-TCPOPT-08
    fn allow_half_open_keeps_writing_after_the_peer_fin(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, mut stream| async move {
            stream.write_all(b"req").await?;
            stream.shutdown().await?;
            assert_eq!(within(30, "resp", stream.read_all()).await??, b"resp");
            hold_forever(stream).await
        });
        world.client("app", |ctx| async move {
            let sock = connect(&ctx, TcpOptions { allow_half_open: true, ..TcpOptions::default() }).await?;
            let mut reader = sock.readable()?;
            assert_eq!(within(30, "req", read_to_end(&mut reader)).await??, b"req");
            assert_eq!(sock.ready_state(), ReadyState::Open, "EXT-01");
            sock.writable()?.write(&b"resp"[..]).await?;
            sock.half_close();
            within(30, "closed", sock.closed()).await??;
            assert_eq!(state_log(&sock), [ReadyState::Opening, ReadyState::Open, ReadyState::Closing, ReadyState::Closed]);
            Ok(())
        });
    }

    /// rule: EXT-02, TCP-CLOSE-04
    fn allow_half_open_stalled_flush_times_out(world: &mut World) {
        guard(world);
        one_peer(world, |_ctx, mut stream| async move {
            stream.shutdown().await?;
            hold_forever(stream).await // never reads
        });
        world.client("app", |ctx| async move {
            let timeout = Duration::from_millis(if ctx.backend() == BackendChoice::Sim { 1000 } else { 300 });
            let opts = TcpOptions { allow_half_open: true, close_timeout: timeout, ..TcpOptions::default() };
            let sock = connect(&ctx, opts).await?;
            let mut reader = sock.readable()?;
            assert_eq!(within(30, "done", reader.read()).await??, None);
            let writer = sock.writable()?;
            for c in pattern(9, 8 << 20).chunks(64 * 1024) {
                drop(writer.write(Bytes::copy_from_slice(c)));
            }
            sock.half_close();
            assert_eq!(sock.ready_state(), ReadyState::Closing);
            let e = assert_err(within(30, "closed", sock.closed()).await?, ErrorName::NetworkError);
            assert_eq!(e.cause(), Some(Cause::TimedOut));
            Ok(())
        });
    }

    /// rule: EXT-03, ERR-07, GEN-14
    fn reset_in_every_state_aborts_everything(world: &mut World) {
        guard(world);
        let done: Slot<usize> = Slot::default();
        let peer_done = done.clone();
        world.host("peer", move |ctx| {
            let done = peer_done.clone();
            async move {
                let listener = RawListener::bind(&ctx).await?;
                ctx.publish("peer", listener.port());
                let mut checked = 0;
                loop {
                    let (mut stream, _) = listener.accept().await?;
                    let result = within(30, "peer read after reset", stream.read_all()).await?;
                    if ctx.backend() == BackendChoice::Real {
                        let e = result.map(|v| v.len()).expect_err("the peer sees a reset, not EOF");
                        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
                    }
                    checked += 1;
                    done.put(checked);
                }
            }
        });
        world.client("app", move |ctx| {
            let done = done.clone();
            async move {
                let baseline = ctx.net.faults().open_sockets();
                let port = ctx.lookup("peer").await;
                let peer = ctx.address_of("peer");

                // Opening (held): nothing connected, so nothing to reset on the wire.
                ctx.net.faults().hold_open();
                let sock = TcpSocket::new(&ctx.net, &peer, port, TcpOptions::default())?;
                let write = sock.writable()?.write(&b"queued"[..]);
                sock.reset();
                assert_eq!(sock.ready_state(), ReadyState::Closed);
                assert_err(sock.opened().await, ErrorName::AbortError);
                assert_err(sock.closed().await, ErrorName::AbortError);
                assert_err(write.await, ErrorName::AbortError);
                assert_err(sock.readable()?.read().await, ErrorName::AbortError);
                ctx.net.faults().release_open();

                for (round, state) in [ReadyState::Open, ReadyState::HalfClosed, ReadyState::Closing].into_iter().enumerate() {
                    let sock = TcpSocket::new(&ctx.net, &peer, port, TcpOptions::default())?;
                    let mut opened = sock.opened();
                    within(30, "opened", &mut opened).await??;
                    let writer = sock.writable()?;
                    let writes: Vec<_> = (0..128).map(|i| writer.write(Bytes::from(pattern(i, 64 * 1024)))).collect();
                    match state {
                        ReadyState::HalfClosed => sock.half_close(),
                        ReadyState::Closing => drop(sock.close()),
                        _ => {}
                    }
                    assert_eq!(sock.ready_state(), state);
                    sock.reset();
                    assert_eq!(sock.ready_state(), ReadyState::Closed);
                    assert_eq!(poll_once(&mut opened), Poll::Ready(Ok(())), "a settled opened stays");
                    let e = assert_err(sock.closed().await, ErrorName::AbortError);
                    let mut aborted = 0;
                    for w in writes {
                        match w.await {
                            Ok(()) => assert_eq!(aborted, 0, "a write resolved after an aborted one"),
                            Err(e) => {
                                assert_eq!(e.kind(), ErrorName::AbortError);
                                aborted += 1;
                            }
                        }
                    }
                    assert!(aborted > 0, "128 x 64 KiB to a peer that does not read: some were queued");
                    let read = sock.readable()?.read().await;
                    if state == ReadyState::Closing {
                        assert_eq!(read, Ok(None), "the readable already ended at close()");
                    } else {
                        assert_eq!(assert_err(read, ErrorName::AbortError), e);
                    }
                    assert_err(writer.write(&b"later"[..]).await, ErrorName::AbortError);
                    within(30, "peer saw it", async { while done.get().await <= round { tokio::time::sleep(Duration::from_millis(1)).await; } }).await?;
                }
                assert_eq!(ctx.net.faults().open_sockets(), baseline);
                Ok(())
            }
        });
    }

    /// rule: GEN-04, GEN-02, GEN-03, TCP-READ-CANCEL-01, TCP-WRITE-CLOSE-02, TCP-WRITE-CLOSE-05, TCP-CLOSE-02, TCP-HALFCLOSE-01
    // Bad input never panics: every method in every state, repeated closes, second readable()/writable().
    fn every_method_in_every_state_never_panics(world: &mut World) {
        guard(world);
        world.host("peer", |ctx| async move {
            let listener = RawListener::bind(&ctx).await?;
            ctx.publish("peer", listener.port());
            let mut held = Vec::new();
            loop {
                held.push(listener.accept().await?.0); // never reads, never closes
            }
        });
        world.client("app", |ctx| async move {
            let port = ctx.lookup("peer").await;
            let peer = ctx.address_of("peer");
            let held_net = net_with(&ctx, Policy::allow_all());
            held_net.faults().hold_open();
            let refused = refused_port(&ctx).await;
            let opts = || TcpOptions { close_timeout: Duration::from_millis(300), ..TcpOptions::default() };
            for sequence in 0..4 {
                for state in ["opening", "open", "halfclosed", "closing", "closed-reset", "closed-error", "closed-abort"] {
                    let sock = match state {
                        "opening" => TcpSocket::new(&held_net, &peer, port, opts())?,
                        "closed-error" => {
                            let s = TcpSocket::new(&ctx.net, &own_address(&ctx), refused, opts())?;
                            let _ = within(30, "refused", s.closed()).await?;
                            s
                        }
                        "closed-abort" => {
                            let s = TcpSocket::new(&held_net, &peer, port, opts())?;
                            drop(s.close());
                            s
                        }
                        _ => {
                            let s = TcpSocket::new(&ctx.net, &peer, port, opts())?;
                            within(30, "opened", s.opened()).await??;
                            match state {
                                "halfclosed" => s.half_close(),
                                "closing" => drop(s.close()),
                                "closed-reset" => s.reset(),
                                _ => {}
                            }
                            s
                        }
                    };
                    let before = sock.ready_state();
                    exercise(&sock).await;
                    assert_eq!(sock.ready_state(), before, "{state}: the read-only calls changed the state");
                    // The mutating calls, in an order per sequence, each twice.
                    let calls: [&dyn Fn(&TcpSocket); 6] = [
                        &|s| s.half_close(),
                        &|s| drop(s.close()),
                        &|s| s.reset(),
                        &|s| if let Ok(w) = s.writable() { w.abort(Some("why")) },
                        &|s| if let Ok(r) = s.readable() { drop(r.cancel()) },
                        &|s| if let Ok(w) = s.writable() { drop(w.close()) },
                    ];
                    for k in 0..calls.len() {
                        let call = calls[(k + sequence) % calls.len()];
                        call(&sock);
                        call(&sock);
                        exercise(&sock).await;
                    }
                    assert_eq!(sock.ready_state(), ReadyState::Closed, "{state}: reset() always ends in closed");
                    let c = within(30, "closed", sock.closed()).await?;
                    assert_eq!(within(30, "close", sock.close()).await?, c);
                }
            }
            Ok(())
        });
    }
}

/// Every non-mutating call, and every stream call, on `sock`: no panic, errors are catalog errors,
/// the second `readable()`/`writable()` while one is held is `TypeError`.
async fn exercise(sock: &TcpSocket) {
    use futures_core::Stream;
    use futures_sink::Sink;
    let _ = (
        sock.ready_state(),
        sock.remote_address(),
        sock.remote_port(),
        sock.local_address(),
        sock.local_port(),
    );
    let _ = (
        sock.address_reuse(),
        sock.no_delay(),
        sock.use_secure_transport(),
        sock.diag(),
        format!("{sock:?}"),
    );
    let _ = poll_once(&mut sock.opened());
    let _ = poll_once(&mut sock.closed());
    let mut reader = sock.readable().expect("no readable held");
    let e = sock.readable().map(|_| ()).expect_err("second readable while one is held");
    assert_eq!((e.kind(), e.cause()), (ErrorName::TypeError, Some(Cause::StreamLocked)));
    if let Poll::Ready(Err(e)) = poll_once(&mut reader.read()) {
        assert!(ErrorName::ALL.contains(&e.kind()));
    }
    let _ = std::pin::Pin::new(&mut reader)
        .poll_next(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    let _ = reader.socket();
    let mut writer = sock.writable().expect("no writable held");
    let e = sock.writable().map(|_| ()).expect_err("second writable while one is held");
    assert_eq!(e.kind(), ErrorName::TypeError);
    let _ = writer.desired_size();
    let _ = poll_once(&mut writer.ready());
    if let Poll::Ready(Err(e)) = poll_once(&mut writer.write(Bytes::new())) {
        assert!(ErrorName::ALL.contains(&e.kind()));
    }
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if let Poll::Ready(Ok(())) = std::pin::Pin::new(&mut writer).poll_ready(&mut cx) {
        let _ = std::pin::Pin::new(&mut writer).start_send(Bytes::new());
        let _ = std::pin::Pin::new(&mut writer).poll_flush(&mut cx);
    }
    drop((reader, writer));
    // Both locks are free again.
    let mut io = sock.clone().into_io().expect("locks released");
    let mut buf = [0u8; 16];
    let mut rb = tokio::io::ReadBuf::new(&mut buf);
    let _ = tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut io), &mut cx, &mut rb);
    let _ = tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut io), &mut cx);
    let _ = io.socket();
    drop(io);
    tokio::task::yield_now().await;
}

//! `TcpServerSocket` at API level on both backends (RULES.md §5, §9.3): the library's server against
//! raw clients it did not write (tokio sockets on real loopback, `turmoil::net` in the simulator).

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use crate::{BackendChoice, Ctx};
use tcpudp::{Cause, ErrorName, Policy, ReadyState, TcpServerOptions, TcpServerSocket, TcpSocket};
use tokio::io::AsyncWriteExt;

use super::support::*;

/// A port for a server to bind explicitly: a port just released on loopback, a fixed free one in
/// simulation (the simulator hands out ephemeral ports from 49152 up).
async fn free_port(ctx: &Ctx) -> u16 {
    match ctx.backend() {
        BackendChoice::Real => refused_port(ctx).await,
        BackendChoice::Sim => 4321,
    }
}

/// A server with the default options, open, its port published as "server" for clients.
async fn open_published(ctx: &Ctx) -> Result<TcpServerSocket, TestError> {
    let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
    server.opened().await?;
    ctx.publish("server", server.local_port().ok_or("no port")?);
    Ok(server)
}

/// Echoes what the accepted socket reads until it ends.
async fn echo(sock: TcpSocket) -> Result<(), tcpudp::SocketError> {
    let mut reader = sock.readable()?;
    let writer = sock.writable()?;
    while let Some(chunk) = reader.read().await? {
        writer.write(chunk).await?;
    }
    Ok(())
}

/// One echo round trip through a raw client stream.
async fn round_trip(stream: &mut RawStream, msg: &[u8]) -> Result<(), TestError> {
    stream.write_all(msg).await?;
    let got = within(30, "echo", stream.read_n(msg.len())).await??;
    assert_eq!(got, msg);
    Ok(())
}

/// Whether a raw connect to `port` on `host` is refused.
async fn refused(ctx: &Ctx, host: &str, port: u16) -> Result<bool, TestError> {
    match within(30, "connect", RawStream::connect(ctx, host, port)).await? {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(true),
        Err(e) => Err(format!("connect failed otherwise: {e}").into()),
    }
}

on_both_backends! {
    /// rule: SRV-CTOR-01, SRV-CTOR-04, SRV-CTOR-09, SRV-CTOR-10, GEN-01, ERR-01, ERR-04, ERR-11
    fn server_constructor_checks_fail_synchronously(world: &mut World) {
        guard(world);
        world.client("app", |ctx| async move {
            let denied = net_with(&ctx, Policy::deny_all());
            let port = free_port(&ctx).await;
            let opts = TcpServerOptions { local_port: Some(port), ..TcpServerOptions::default() };
            assert_err(TcpServerSocket::new(&denied, opts), ErrorName::SecurityError);
            // SRV-CTOR-10: permission first.
            let bad = TcpServerOptions { local_address: Some("300.1.1.1".into()), ..TcpServerOptions::default() };
            assert_err(TcpServerSocket::new(&denied, bad.clone()), ErrorName::SecurityError);
            assert_eq!((denied.faults().created_sockets(), denied.faults().open_sockets()), (0, 0));
            assert!(refused(&ctx, &ctx.name, port).await?, "a denied server must not listen");

            let (created, open) = (ctx.net.faults().created_sockets(), ctx.net.faults().open_sockets());
            assert_err(TcpServerSocket::new(&ctx.net, bad), ErrorName::InvalidAccessError);
            let name = TcpServerOptions { local_address: Some("localhost".into()), ..TcpServerOptions::default() };
            assert_err(TcpServerSocket::new(&ctx.net, name), ErrorName::InvalidAccessError);
            if ctx.backend() == BackendChoice::Sim {
                // SRV-CTOR-04: not an address of this host. (Real: only inside a namespace with only
                // lo, DESIGN §6, which these tests do not make.)
                let foreign = TcpServerOptions { local_address: Some("10.9.9.9".into()), ..TcpServerOptions::default() };
                assert_err(TcpServerSocket::new(&ctx.net, foreign), ErrorName::InvalidAccessError);
            }
            // SRV-CTOR-09: no TLS in this build.
            let tls = TcpServerOptions { use_secure_transport: true, ..TcpServerOptions::default() };
            assert_err(TcpServerSocket::new(&ctx.net, tls), ErrorName::NotSupportedError);
            assert_eq!((ctx.net.faults().created_sockets(), ctx.net.faults().open_sockets()), (created, open));
            Ok(())
        });
    }

    /// rule: SRV-CTOR-02, SRV-CTOR-05, SRV-CTOR-07, SRV-ACCEPT-01, SRV-ACCEPT-02, SRV-LISTEN-02, DICT-SRVOPT-01, DICT-SRVOPT-02, DICT-SRVOPT-03, DICT-SRVOPT-04, GEN-09
    fn accepted_socket_attributes_without_tcp_permission(world: &mut World) {
        guard(world);
        // Only the server permission: accepted sockets need no TCP permission.
        world.policy(|| Policy::allow_list(["tcp-server:*:*"]).expect("rule"));
        let client_port: Slot<(String, u16)> = Slot::default();
        let connected = Flag::default();
        let (cp, cn) = (client_port.clone(), connected.clone());
        world.host("server", move |ctx| {
            let (client_port, connected) = (cp.clone(), cn.clone());
            async move {
                let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
                assert_eq!(server.ready_state(), ReadyState::Opening);
                assert_eq!(server.local_address(), None, "SRV-CTOR-02");
                assert!(server.address_reuse(), "SRV-CTOR-07");
                assert!(!server.use_secure_transport());
                server.opened().await?;
                assert_eq!(server.ready_state(), ReadyState::Open, "GEN-09");
                let port = server.local_port().ok_or("SRV-CTOR-05: no port after opened")?;
                assert_ne!(port, 0);
                ctx.publish("server", port);
                // SRV-LISTEN-02: two calls, two pending futures.
                let (mut first, mut second) = (server.listen(), server.listen());
                assert!(poll_once(&mut first).is_pending() && poll_once(&mut second).is_pending());
                connected.set();
                let acc = within(30, "listen", &mut first).await??;
                assert!(poll_once(&mut second).is_pending());
                let (addr, cport) = client_port.get().await;
                assert_eq!(acc.remote_address(), addr, "canonical peer address");
                assert_eq!(acc.remote_port(), cport);
                assert_eq!(acc.local_port(), Some(port));
                assert_eq!(acc.local_address(), Some(ctx.address_of("server")));
                assert_eq!(acc.ready_state(), ReadyState::Open);
                assert_eq!(poll_once(&mut acc.opened()), Poll::Ready(Ok(())), "opened already resolved");
                assert!(poll_once(&mut acc.closed()).is_pending());
                assert!(acc.no_delay());
                assert!(acc.address_reuse(), "inherited from the server");
                assert_eq!(acc.diag().options.no_delay, Some(true));
                echo(acc).await?;
                drop(second);
                // addressReuse false is inherited too.
                let server = TcpServerSocket::new(&ctx.net, TcpServerOptions { address_reuse: false, ..TcpServerOptions::default() })?;
                assert!(!server.address_reuse());
                server.opened().await?;
                ctx.publish("server2", server.local_port().ok_or("no port")?);
                let acc = server.listen().await?;
                assert!(!acc.address_reuse());
                echo(acc).await?;
                Ok(())
            }
        });
        world.client("client", move |ctx| {
            let (client_port, connected) = (client_port.clone(), connected.clone());
            async move {
                let port = ctx.lookup("server").await;
                connected.wait().await;
                let mut stream = within(30, "connect", RawStream::connect(&ctx, "server", port)).await??;
                let local = stream.local_addr()?;
                client_port.put((local.ip().to_string(), local.port()));
                round_trip(&mut stream, b"ping").await?;
                stream.shutdown().await?;
                assert!(within(30, "EOF", stream.read_all()).await??.is_empty());
                let port = ctx.lookup("server2").await;
                let mut stream = RawStream::connect(&ctx, "server", port).await?;
                round_trip(&mut stream, b"pong").await?;
                Ok(())
            }
        });
    }

    /// rule: SRV-OPEN-01
    fn client_connects_before_the_first_listen(world: &mut World) {
        guard(world);
        let connected = Flag::default();
        let c = connected.clone();
        world.host("server", move |ctx| {
            let connected = c.clone();
            async move {
                let server = open_published(&ctx).await?;
                // the OS is listening once opened resolves; no listen() is needed to connect.
                within(30, "client connected before any listen()", connected.wait()).await?;
                echo(within(30, "listen", server.listen()).await??).await?;
                Ok(())
            }
        });
        world.client("client", move |ctx| {
            let connected = connected.clone();
            async move {
                let port = ctx.lookup("server").await;
                let mut stream = within(30, "connect before listen()", RawStream::connect(&ctx, "server", port)).await??;
                connected.set();
                round_trip(&mut stream, b"early").await?;
                Ok(())
            }
        });
    }

    /// A connection whose peer sent its data and its FIN before any `listen()`: the accepted
    /// socket's first pass (in the `listen()` poll that makes it) finds both, and nothing is lost;
    /// the socket is still "open" until its reader sees the end.
    /// rule: SRV-OPEN-01, TCP-READ-01, TCP-READ-CLOSE-02
    fn data_and_fin_sent_before_listen_are_read_in_full(world: &mut World) {
        guard(world);
        let sent = Flag::default();
        let s = sent.clone();
        world.host("server", move |ctx| {
            let sent = s.clone();
            async move {
                let server = open_published(&ctx).await?;
                within(30, "client sent and shut down", sent.wait()).await?;
                // Time for both to reach the server's side of the connection (the simulator's latency).
                tokio::time::sleep(Duration::from_millis(50)).await;
                let sock = within(30, "listen", server.listen()).await??;
                assert_eq!(sock.ready_state(), ReadyState::Open, "open until the reader sees the end");
                let mut reader = sock.readable()?;
                let got = within(30, "read to the end", read_to_end(&mut reader)).await??;
                assert_eq!(got, b"early, then FIN");
                within(30, "closed", sock.closed()).await??;
                Ok(())
            }
        });
        world.client("client", move |ctx| {
            let sent = sent.clone();
            async move {
                let port = ctx.lookup("server").await;
                let mut stream = within(30, "connect", RawStream::connect(&ctx, "server", port)).await??;
                stream.write_all(b"early, then FIN").await?;
                stream.shutdown().await?;
                sent.set();
                let rest = within(30, "the server's FIN", stream.read_all()).await??;
                assert!(rest.is_empty(), "the server sent nothing: {rest:?}");
                Ok(())
            }
        });
    }

    /// rule: SRV-LISTEN-03, SRV-LISTEN-04, GEN-10
    /// invariant: INV-15
    fn listens_are_served_in_call_order(world: &mut World) {
        guard(world);
        let tags: Slot<Vec<u8>> = Slot::default();
        let t = tags.clone();
        world.host("server", move |ctx| {
            let tags = t.clone();
            async move {
                let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
                // SRV-LISTEN-04: listen() while opening is allowed.
                let mut futs = [server.listen(), server.listen(), server.listen()];
                assert_eq!(server.ready_state(), ReadyState::Opening);
                server.opened().await?;
                ctx.publish("server", server.local_port().ok_or("no port")?);
                // Polled in reverse order: still served in call order (GEN-10).
                let mut got: Vec<Option<TcpSocket>> = vec![None, None, None];
                within(60, "three listens", std::future::poll_fn(|cx| {
                    for i in (0..3).rev() {
                        if got[i].is_none() {
                            if let Poll::Ready(r) = std::pin::Pin::new(&mut futs[i]).poll(cx) {
                                got[i] = Some(r.expect("accepted"));
                            }
                        }
                    }
                    if got.iter().all(Option::is_some) { Poll::Ready(()) } else { Poll::Pending }
                })).await?;
                let mut order = Vec::new();
                for sock in got.into_iter().flatten() {
                    let mut reader = sock.readable()?;
                    order.push(read_n(&mut reader, 1).await?[0]);
                }
                // A connection made with no listen() pending waits for the next call.
                ctx.publish("backlog", 1);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let late = within(30, "backlog listen", server.listen()).await??;
                let mut reader = late.readable()?;
                order.push(read_n(&mut reader, 1).await?[0]);
                tags.put(order);
                Ok(())
            }
        });
        world.client("client", move |ctx| {
            let tags = tags.clone();
            async move {
                let port = ctx.lookup("server").await;
                let mut streams = Vec::new();
                for tag in [b'1', b'2', b'3'] {
                    let mut s = within(30, "connect", RawStream::connect(&ctx, "server", port)).await??;
                    s.write_all(&[tag]).await?;
                    // The next client connects only once this one was delivered (its tag read).
                    streams.push(s);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                ctx.lookup("backlog").await;
                let connect = RawStream::connect(&ctx, "server", port);
                let mut s = within(30, "backlog connect", connect).await??;
                s.write_all(b"4").await?;
                streams.push(s);
                assert_eq!(within(30, "order", tags.get()).await?, b"1234");
                Ok(())
            }
        });
    }

    /// rule: GEN-11, SRV-LISTEN-03
    fn dropped_listen_loses_no_connection(world: &mut World) {
        guard(world);
        let dropped = Flag::default();
        let d = dropped.clone();
        world.host("server", move |ctx| {
            let dropped = d.clone();
            async move {
                let server = open_published(&ctx).await?;
                {
                    let mut first = server.listen();
                    assert!(poll_now(&mut first).await.is_pending());
                }
                dropped.set();
                tokio::time::sleep(Duration::from_millis(50)).await;
                let sock = within(30, "next listen", server.listen()).await??;
                echo(sock).await?;
                Ok(())
            }
        });
        world.client("client", move |ctx| {
            let dropped = dropped.clone();
            async move {
                let port = ctx.lookup("server").await;
                dropped.wait().await;
                let mut s = within(30, "connect", RawStream::connect(&ctx, "server", port)).await??;
                round_trip(&mut s, b"kept").await?;
                Ok(())
            }
        });
    }

    /// rule: SRV-CONNFAIL-01, ERR-06
    fn unservable_connection_rejects_the_oldest_listen(world: &mut World) {
        guard(world);
        world.host("server", |ctx| async move {
            let server = open_published(&ctx).await?;
            ctx.net.faults().exhaust_accept();
            let (oldest, next) = (server.listen(), server.listen());
            let e = assert_err(within(30, "oldest listen", oldest).await?, ErrorName::NetworkError);
            assert_eq!(e.cause(), Some(Cause::ResourcesExhausted));
            assert_eq!(server.ready_state(), ReadyState::Open, "the server stays open");
            ctx.publish("failed", 1);
            echo(within(30, "next listen", next).await??).await?;
            Ok(())
        });
        world.client("client", |ctx| async move {
            let port = ctx.lookup("server").await;
            ctx.lookup("failed").await;
            let mut s = within(30, "connect", RawStream::connect(&ctx, "server", port)).await??;
            round_trip(&mut s, b"after").await?;
            Ok(())
        });
    }

    /// rule: SRV-CTOR-08, SRV-CLOSE-03, SRV-LISTEN-01, GEN-02, ERR-07, ERR-08
    fn close_while_opening(world: &mut World) {
        guard(world);
        world.client("app", |ctx| async move {
            let port = free_port(&ctx).await;
            ctx.net.faults().hold_open();
            let server = TcpServerSocket::new(&ctx.net, TcpServerOptions { local_port: Some(port), ..TcpServerOptions::default() })?;
            assert_eq!(server.ready_state(), ReadyState::Opening);
            let (mut opened, mut closed) = (server.opened(), server.closed());
            assert!(poll_once(&mut opened).is_pending() && poll_once(&mut closed).is_pending());
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(poll_once(&mut opened).is_pending(), "held");
            let pending = server.listen();
            let closing = server.close();
            assert_eq!(server.ready_state(), ReadyState::Closed);
            assert_err(opened.await, ErrorName::AbortError);
            assert_eq!(closing.await, Ok(()));
            assert_eq!(closed.await, Ok(()));
            assert_err(pending.await, ErrorName::AbortError);
            // GEN-02: listen() on a closed server returns a future that rejects.
            let late = server.listen();
            assert_err(late.await, ErrorName::InvalidStateError);
            ctx.net.faults().release_open();
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(refused(&ctx, &ctx.name, port).await?, "nothing listens after release");
            assert_eq!(server.diag().state_log, [ReadyState::Opening, ReadyState::Closed]);
            Ok(())
        });
    }

    /// rule: SRV-CTOR-08, SRV-CTOR-06, SRV-CTOR-03, SRV-OPEN-01
    fn held_server_opens_on_release(world: &mut World) {
        guard(world);
        world.host("server", |ctx| async move {
            let port = free_port(&ctx).await;
            let me = ctx.address_of("server");
            ctx.net.faults().hold_open();
            let opts = TcpServerOptions { local_port: Some(port), local_address: Some(me.clone()), ..TcpServerOptions::default() };
            let server = TcpServerSocket::new(&ctx.net, opts)?;
            assert_eq!(server.local_port(), Some(port), "SRV-CTOR-06: as given from construction");
            assert_eq!(server.local_address(), Some(me.clone()), "SRV-CTOR-03");
            let (mut opened, mut closed) = (server.opened(), server.closed());
            assert!(poll_once(&mut opened).is_pending() && poll_once(&mut closed).is_pending());
            ctx.net.faults().release_open();
            within(30, "opened", opened).await??;
            assert_eq!(server.ready_state(), ReadyState::Open);
            assert!(poll_once(&mut closed).is_pending());
            ctx.publish("server", port);
            echo(within(30, "listen", server.listen()).await??).await?;
            Ok(())
        });
        world.client("client", |ctx| async move {
            let port = ctx.lookup("server").await;
            let mut s = within(30, "connect", RawStream::connect(&ctx, "server", port)).await??;
            round_trip(&mut s, b"held").await?;
            Ok(())
        });
    }

    /// rule: SRV-OPEN-02, SRV-CTOR-12, ERR-06
    fn port_with_a_live_listener_is_never_shared(world: &mut World) {
        guard(world);
        world.client("app", |ctx| async move {
            let peer = RawListener::bind(&ctx).await?;
            let port = peer.port();
            for reuse in [false, true] {
                let opts = TcpServerOptions { local_port: Some(port), address_reuse: reuse, ..TcpServerOptions::default() };
                let server = TcpServerSocket::new(&ctx.net, opts)?; // a bind conflict is not thrown
                let pending = server.listen();
                let e = assert_err(within(30, "opened", server.opened()).await?, ErrorName::NetworkError);
                assert_eq!(e.cause(), Some(Cause::AddressInUse));
                assert_err(server.closed().await, ErrorName::NetworkError);
                assert_err(pending.await, ErrorName::NetworkError);
                assert_eq!(server.ready_state(), ReadyState::Closed);
            }
            // Two library servers on one port: the second fails.
            let first = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
            first.opened().await?;
            let port = first.local_port().ok_or("no port")?;
            let second = TcpServerSocket::new(&ctx.net, TcpServerOptions { local_port: Some(port), ..TcpServerOptions::default() })?;
            assert_err(within(30, "opened", second.opened()).await?, ErrorName::NetworkError);
            assert_eq!(first.ready_state(), ReadyState::Open);
            drop(peer);
            Ok(())
        });
    }

    /// rule: SRV-CLOSE-01, SRV-CLOSE-02, SRV-CLOSE-04, SRV-CLOSE-05, SRV-LISTEN-01, GEN-02, GEN-06
    /// invariant: INV-15, INV-16
    fn close_stops_listening_and_leaves_accepted_sockets(world: &mut World) {
        guard(world);
        world.host("server", |ctx| async move {
            let baseline = ctx.net.faults().open_sockets();
            let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
            server.opened().await?;
            let port = server.local_port().ok_or("no port")?;
            ctx.publish("server", port);
            let acc = within(30, "listen", server.listen()).await??;
            let pending = server.listen();
            let closing = server.close();
            assert_eq!(server.ready_state(), ReadyState::Closed);
            assert_eq!(within(10, "close", closing).await?, Ok(()));
            assert_eq!(server.closed().await, Ok(()), "GEN-06");
            assert_eq!(server.close().await, Ok(()), "SRV-CLOSE-05");
            assert_err(pending.await, ErrorName::AbortError);
            assert_err(server.listen().await, ErrorName::InvalidStateError);
            assert_eq!(server.diag().state_log, [ReadyState::Opening, ReadyState::Open, ReadyState::Closed]);
            assert!(!server.diag().listener_open);
            // INV-16: the accepted socket is untouched.
            assert_eq!(acc.ready_state(), ReadyState::Open);
            assert!(poll_once(&mut acc.closed()).is_pending());
            ctx.publish("closed", 1);
            echo(acc.clone()).await?;
            within(30, "accepted closed", acc.closed()).await??;
            assert_eq!(ctx.net.faults().open_sockets(), baseline);
            Ok(())
        });
        world.client("client", |ctx| async move {
            let port = ctx.lookup("server").await;
            let mut s = within(30, "connect", RawStream::connect(&ctx, "server", port)).await??;
            ctx.lookup("closed").await;
            assert!(refused(&ctx, "server", port).await?, "SRV-CLOSE-02: new connects are refused");
            round_trip(&mut s, b"still here").await?;
            s.shutdown().await?;
            assert!(within(30, "EOF", s.read_all()).await??.is_empty());
            Ok(())
        });
    }

    /// rule: SRV-ERR-01, SRV-CLOSE-05, ERR-06
    fn dropped_link_fails_the_server(world: &mut World) {
        guard(world);
        world.client("app", |ctx| async move {
            let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
            server.opened().await?;
            let pending = server.listen();
            ctx.net.faults().drop_link();
            assert_err(within(30, "pending listen", pending).await?, ErrorName::NetworkError);
            let e = assert_err(within(30, "closed", server.closed()).await?, ErrorName::NetworkError);
            assert_eq!(server.ready_state(), ReadyState::Closed);
            assert_eq!(assert_err(server.close().await, ErrorName::NetworkError), e, "SRV-CLOSE-05: the rejection stays");
            assert_err(server.listen().await, ErrorName::InvalidStateError);
            // "Accepted sockets are not affected" is not checked here: drop_link() drops every
            // link of this network, the accepted sockets' too (see the report).
            Ok(())
        });
    }

    /// rule: GEN-12, GEN-14
    /// invariant: INV-16
    fn dropping_the_server_stops_listening_only(world: &mut World) {
        guard(world);
        world.host("server", |ctx| async move {
            let baseline = ctx.net.faults().open_sockets();
            let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
            let closed = server.closed();
            server.opened().await?;
            ctx.publish("server", server.local_port().ok_or("no port")?);
            let acc = within(30, "listen", server.listen()).await??;
            drop(server);
            within(10, "server closed", closed).await??;
            assert_eq!(ctx.net.faults().open_sockets(), baseline + 1, "only the accepted socket is left");
            ctx.publish("dropped", 1);
            echo(acc.clone()).await?;
            within(30, "accepted closed", acc.closed()).await??;
            assert_eq!(ctx.net.faults().open_sockets(), baseline);
            Ok(())
        });
        world.client("client", |ctx| async move {
            let port = ctx.lookup("server").await;
            let mut s = within(30, "connect", RawStream::connect(&ctx, "server", port)).await??;
            ctx.lookup("dropped").await;
            assert!(refused(&ctx, "server", port).await?, "a dropped server stops listening");
            round_trip(&mut s, b"echo").await?;
            s.shutdown().await?;
            assert!(within(30, "EOF", s.read_all()).await??.is_empty());
            Ok(())
        });
    }

    /// rule: GEN-04, GEN-02, SRV-LISTEN-01, SRV-CLOSE-05
    // Bad input never panics: every server method in every state, repeated close and listen.
    fn every_server_method_in_every_state_never_panics(world: &mut World) {
        guard(world);
        world.client("app", |ctx| async move {
            let held = net_with(&ctx, Policy::allow_all());
            held.faults().hold_open();
            let taken = RawListener::bind(&ctx).await?;
            for state in ["opening", "open", "closed", "failed"] {
                let server = match state {
                    "opening" => TcpServerSocket::new(&held, TcpServerOptions::default())?,
                    "failed" => {
                        let s = TcpServerSocket::new(&ctx.net, TcpServerOptions { local_port: Some(taken.port()), ..TcpServerOptions::default() })?;
                        let _ = s.closed().await;
                        s
                    }
                    _ => {
                        let s = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
                        s.opened().await?;
                        if state == "closed" {
                            s.close().await?;
                        }
                        s
                    }
                };
                for _ in 0..2 {
                    let _ = (server.ready_state(), server.local_address(), server.local_port(), server.address_reuse());
                    let _ = (server.use_secure_transport(), server.diag(), format!("{server:?}"));
                    let _ = poll_once(&mut server.opened());
                    let _ = poll_once(&mut server.closed());
                    let mut l = server.listen();
                    if let Poll::Ready(r) = poll_once(&mut l) {
                        let e = r.expect_err("no client connects here");
                        assert!(ErrorName::ALL.contains(&e.kind()));
                        // Polled again after completion: an error, not a panic.
                        let _ = poll_once(&mut l);
                    }
                    drop(l);
                    let _ = poll_once(&mut server.close());
                    drop(server.clone().close());
                }
                assert_eq!(server.ready_state(), ReadyState::Closed);
                let outcome = within(10, "closed", server.closed()).await?;
                assert_eq!(server.close().await, outcome);
                assert_err(server.listen().await, ErrorName::InvalidStateError);
            }
            Ok(())
        });
    }
}

//! TLS (`useSecureTransport`, `start_tls()`) on both backends: handshakes gate `opened`, every
//! verification failure names its cause, servers deliver connections in handshake-completion
//! order, STARTTLS upgrades in place, truncation is an error, and in simulation the ciphertext on
//! the wire repeats exactly for a seed. Certificates are generated at test time (rcgen, Ed25519).

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use super::tls_support::{read_n, within, Leaf, Pki, RawListener, RawTls, TestError};
use crate::{BackendChoice, Ctx, World};
use bytes::Bytes;
use tcpudp::{
    Cause, ErrorName, KeepAliveMode, Network, Policy, ReadyState, SocketError, TcpOptions, TcpServerOptions,
    TcpServerSocket, TcpSocket, TlsCause, TlsContext,
};

crate::only_on! {

    /// The DNS name clients use for the server (scripted in each client's resolver).
    const NAME: &str = "tls.test";

    fn guard(world: &mut World) {
        if world.backend() == BackendChoice::Real {
            world.duration(Duration::from_secs(60));
        }
    }

    fn server_ip(ctx: &Ctx) -> IpAddr {
        ctx.address_of("server").parse().expect("server address")
    }

    /// `NAME` resolves to the server host on this client's network.
    fn resolve_server(ctx: &Ctx) {
        ctx.net.faults().resolve(NAME, Ok(vec![server_ip(ctx)]));
    }

    /// Another network of this host (its own TLS context).
    fn another_net(ctx: &Ctx) -> Network {
        match ctx.backend() {
            BackendChoice::Real => tcpudp_net_real::network(Policy::allow_all()).expect("real network"),
            BackendChoice::Sim => tcpudp_net_sim::network(&ctx.name, Policy::allow_all()).expect("sim network"),
        }
    }

    fn trusting(pki: &Pki) -> TlsContext {
        TlsContext::builder().root_certificates_pem(&pki.ca_pem).build().expect("client TLS context")
    }

    fn serving(leaf: &Leaf) -> TlsContext {
        TlsContext::builder()
            .server_credentials_pem(&leaf.cert_pem, &leaf.key_pem)
            .build()
            .expect("server TLS context")
    }

    fn tls() -> TcpOptions {
        TcpOptions { use_secure_transport: true, ..TcpOptions::default() }
    }

    fn tls_server() -> TcpServerOptions {
        TcpServerOptions { use_secure_transport: true, ..TcpServerOptions::default() }
    }

    fn tls_cause(result: &Result<(), SocketError>) -> Option<Cause> {
        result.as_ref().err().and_then(SocketError::cause)
    }

    #[track_caller]
    fn expect_network(result: &Result<(), SocketError>, cause: Cause, what: &str) -> Result<(), TestError> {
        match result {
            Err(e) if e.kind() == ErrorName::NetworkError && e.cause() == Some(cause) => Ok(()),
            other => Err(format!("{what}: expected NetworkError ({cause}), got {other:?}").into()),
        }
    }

    fn check(ok: bool, what: &str) -> Result<(), TestError> {
        if ok {
            Ok(())
        } else {
            Err(format!("check failed: {what}").into())
        }
    }

    /// A TLS echo server on `net`: serves `count` connections, one at a time, until each peer ends.
    async fn tls_echo(net: &Network, ctx: &Ctx, key: &str, count: usize) -> Result<(), TestError> {
        let server = TcpServerSocket::new(net, tls_server())?;
        server.opened().await?;
        ctx.publish(key, server.local_port().ok_or("no port")?);
        for _ in 0..count {
            let conn = server.listen().await?;
            check(conn.use_secure_transport(), "an accepted socket of a TLS server is secure")?;
            let mut reader = conn.readable()?;
            let writer = conn.writable()?;
            while let Some(chunk) = reader.read().await? {
                drop(writer.write(chunk));
            }
            drop((reader, writer));
            conn.closed().await?;
        }
        Ok(())
    }

    /// A client round trip over `sock`: echo, half-close (close_notify then FIN), clean end.
    async fn round_trip(sock: &TcpSocket, data: &'static [u8]) -> Result<(), TestError> {
        let writer = sock.writable()?;
        writer.write(Bytes::from_static(data)).await?;
        let mut reader = sock.readable()?;
        check(read_n(&mut reader, data.len()).await? == data, "echoed through TLS")?;
        sock.half_close();
        // The peer's close_notify ends the readable cleanly.
        check(reader.read().await?.is_none(), "done after the peer's close_notify")?;
        within(30, "closed", sock.closed()).await??;
        Ok(())
    }

    // Servers are registered as clients too (`World::client`): every body runs to its end inside the
    // simulation, so no socket is dropped after the simulation stopped.
    on_both_backends! {
        /// rule: TCP-CTOR-15, EXT-05, EXT-08, SRV-CTOR-09
        fn tls_echo_by_host_name_with_alpn(world: &mut World) {
            guard(world);
            let pki = Rc::new(Pki::new("tcpudp test CA"));
            let leaf = Rc::new(pki.leaf(&[NAME]));
            world.client("server", move |ctx| {
                let leaf = leaf.clone();
                async move {
                    let tls = TlsContext::builder()
                        .server_credentials_pem(&leaf.cert_pem, &leaf.key_pem)
                        .alpn_protocols(["h2", "http/1.1"])
                        .build()?;
                    ctx.net.set_tls(tls);
                    let server = TcpServerSocket::new(&ctx.net, tls_server())?;
                    check(server.use_secure_transport(), "useSecureTransport as given")?;
                    server.opened().await?;
                    ctx.publish("tls", server.local_port().ok_or("no port")?);
                    let conn = server.listen().await?;
                    check(conn.alpn().as_deref() == Some(&b"h2"[..]), "the server sees the negotiated ALPN")?;
                    let mut reader = conn.readable()?;
                    let writer = conn.writable()?;
                    while let Some(chunk) = reader.read().await? {
                        drop(writer.write(chunk));
                    }
                    drop((reader, writer));
                    conn.closed().await?;
                    Ok(())
                }
            });
            world.client("client", move |ctx| {
                let pki = pki.clone();
                async move {
                    resolve_server(&ctx);
                    ctx.net.set_tls(TlsContext::builder().root_certificates_pem(&pki.ca_pem).alpn_protocols(["h2"]).build()?);
                    let port = ctx.lookup("tls").await;
                    let sock = TcpSocket::new(&ctx.net, NAME, port, tls())?;
                    check(sock.use_secure_transport(), "useSecureTransport as given")?;
                    check(sock.ready_state() == ReadyState::Opening, "opening while the handshake runs")?;
                    within(30, "opened", sock.opened()).await??;
                    // `opened` resolved only after the handshake: its result is already known.
                    check(sock.alpn().as_deref() == Some(&b"h2"[..]), "ALPN known when opened resolves")?;
                    check(sock.ready_state() == ReadyState::Open, "open")?;
                    round_trip(&sock, b"hello over TLS").await
                }
            });
        }

        /// rule: TCP-CTOR-15, EXT-05, EXT-06
        fn tls_ip_literal_is_checked_against_ip_sans(world: &mut World) {
            guard(world);
            let pki = Rc::new(Pki::new("tcpudp test CA"));
            let dns_only = Rc::new(pki.leaf(&[NAME]));
            let pki2 = pki.clone();
            world.client("server", move |ctx| {
                let (pki, dns_only) = (pki2.clone(), dns_only.clone());
                async move {
                    // Two servers, two networks: one with a DNS-only certificate, one whose
                    // certificate names this host's address.
                    ctx.net.set_tls(serving(&dns_only));
                    let by_ip = another_net(&ctx);
                    by_ip.set_tls(serving(&pki.leaf(&[&ctx.address_of("server")])));
                    let dns_server = TcpServerSocket::new(&ctx.net, tls_server())?;
                    dns_server.opened().await?;
                    let failing = dns_server.listen();
                    ctx.publish("dns", dns_server.local_port().ok_or("no port")?);
                    let ip = tls_echo(&by_ip, &ctx, "ip", 1);
                    let (failed, served) = tokio::join!(failing, ip);
                    // The client aborts the handshake: an unservable connection (EXT-08).
                    check(matches!(&failed, Err(e) if e.kind() == ErrorName::NetworkError), "listen() rejects NetworkError")?;
                    served?;
                    // The client with an SNI override is served with the DNS-only certificate.
                    let conn = within(30, "listen", dns_server.listen()).await??;
                    let mut reader = conn.readable()?;
                    let writer = conn.writable()?;
                    while let Some(chunk) = reader.read().await? {
                        drop(writer.write(chunk));
                    }
                    drop((reader, writer));
                    conn.closed().await?;
                    Ok(())
                }
            });
            world.client("client", move |ctx| {
                let pki = pki.clone();
                async move {
                    ctx.net.set_tls(trusting(&pki));
                    let literal = ctx.address_of("server");
                    let sock = TcpSocket::new(&ctx.net, &literal, ctx.lookup("dns").await, tls())?;
                    let opened = within(30, "opened", sock.opened()).await?;
                    expect_network(&opened, Cause::Tls(TlsCause::NameMismatch), "an IP literal without an IP SAN")?;
                    expect_network(&sock.closed().await, Cause::Tls(TlsCause::NameMismatch), "closed")?;
                    check(sock.ready_state() == ReadyState::Closed, "closed after a failed handshake")?;
                    let sock = TcpSocket::new(&ctx.net, &literal, ctx.lookup("ip").await, tls())?;
                    within(30, "opened", sock.opened()).await??;
                    check(sock.alpn().is_none(), "no ALPN offered, none negotiated")?;
                    round_trip(&sock, b"by address").await?;
                    // SNI override: the IP literal again, verified (and sent as SNI) as NAME instead.
                    let sni = another_net(&ctx);
                    sni.set_tls(TlsContext::builder().root_certificates_pem(&pki.ca_pem).server_name(NAME).build()?);
                    let sock = TcpSocket::new(&sni, &literal, ctx.lookup("dns").await, tls())?;
                    within(30, "opened", sock.opened()).await??;
                    round_trip(&sock, b"with an SNI override").await
                }
            });
        }

        /// rule: TCP-CTOR-15, EXT-06
        fn tls_wrong_host_name_fails_with_name_mismatch(world: &mut World) {
            bad_certificate(world, |pki| pki.leaf(&["other.test"]), TlsCause::NameMismatch);
        }

        /// rule: TCP-CTOR-15, EXT-06
        fn tls_untrusted_root_fails_with_unknown_issuer(world: &mut World) {
            bad_certificate(world, |_| Pki::new("someone else's CA").leaf(&[NAME]), TlsCause::UnknownIssuer);
        }

        /// rule: TCP-CTOR-15, EXT-06
        fn tls_self_signed_certificate_fails_with_unknown_issuer(world: &mut World) {
            bad_certificate(world, |_| Pki::self_signed(&[NAME]), TlsCause::UnknownIssuer);
        }

        /// rule: TCP-CTOR-15, EXT-06
        fn tls_expired_certificate_fails_with_expired(world: &mut World) {
            bad_certificate(
                world,
                |pki| {
                    pki.leaf_with(&[NAME], |p| {
                        p.not_before = rcgen::date_time_ymd(1995, 1, 1);
                        p.not_after = rcgen::date_time_ymd(2000, 1, 1);
                    })
                },
                TlsCause::Expired,
            );
        }

        /// rule: TCP-CTOR-15, EXT-06, EXT-08, SRV-CONNFAIL-01
        fn tls_client_certificate_required(world: &mut World) {
            guard(world);
            let pki = Rc::new(Pki::new("tcpudp test CA"));
            let pki2 = pki.clone();
            world.client("server", move |ctx| {
                let pki = pki2.clone();
                async move {
                    let leaf = pki.leaf(&[NAME]);
                    let tls = TlsContext::builder()
                        .server_credentials_pem(&leaf.cert_pem, &leaf.key_pem)
                        .client_auth_roots_pem(&pki.ca_pem, true)
                        .build()?;
                    ctx.net.set_tls(tls);
                    let server = TcpServerSocket::new(&ctx.net, tls_server())?;
                    server.opened().await?;
                    let first = server.listen();
                    ctx.publish("mtls", server.local_port().ok_or("no port")?);
                    let failed = first.await;
                    match &failed {
                        Err(e) if e.kind() == ErrorName::NetworkError => {
                            check(e.cause() == Some(Cause::Tls(TlsCause::ClientCertificate)), "cause: client certificate")?
                        }
                        other => return Err(format!("a client without a certificate: {other:?}").into()),
                    }
                    // The server stays open; the next client (with a certificate) is served.
                    let conn = server.listen().await?;
                    let mut reader = conn.readable()?;
                    let writer = conn.writable()?;
                    while let Some(chunk) = reader.read().await? {
                        drop(writer.write(chunk));
                    }
                    drop((reader, writer));
                    conn.closed().await?;
                    Ok(())
                }
            });
            world.client("client", move |ctx| {
                let pki = pki.clone();
                async move {
                    resolve_server(&ctx);
                    ctx.net.set_tls(trusting(&pki));
                    let port = ctx.lookup("mtls").await;
                    let sock = TcpSocket::new(&ctx.net, NAME, port, tls())?;
                    // TLS 1.3 finishes the client's handshake before the server judges the (missing)
                    // certificate, so `opened` may resolve; the server's alert then fails the socket.
                    let _ = within(30, "opened", sock.opened()).await?;
                    let closed = within(30, "closed", sock.closed()).await?;
                    expect_network(&closed, Cause::Tls(TlsCause::ClientCertificate), "no client certificate")?;

                    let me = pki.leaf(&[]);
                    ctx.net.set_tls(
                        TlsContext::builder()
                            .root_certificates_pem(&pki.ca_pem)
                            .client_credentials_pem(&me.cert_pem, &me.key_pem)
                            .build()?,
                    );
                    let sock = TcpSocket::new(&ctx.net, NAME, port, tls())?;
                    within(30, "opened", sock.opened()).await??;
                    round_trip(&sock, b"with a certificate").await
                }
            });
        }

        /// rule: SRV-CTOR-09, EXT-08, SRV-CONNFAIL-01, SRV-LISTEN-03
        fn tls_server_delivers_in_handshake_completion_order(world: &mut World) {
            guard(world);
            let pki = Rc::new(Pki::new("tcpudp test CA"));
            let leaf = Rc::new(pki.leaf(&[NAME]));
            world.client("server", move |ctx| {
                let leaf = leaf.clone();
                async move {
                    ctx.net.set_tls(serving(&leaf));
                    let server = TcpServerSocket::new(&ctx.net, tls_server())?;
                    server.opened().await?;
                    let first = server.listen();
                    ctx.publish("srv", server.local_port().ok_or("no port")?);
                    // A plain client sending "GET /" is unservable: the pending listen rejects.
                    let failed = within(30, "first listen", first).await?;
                    check(matches!(&failed, Err(e) if e.kind() == ErrorName::NetworkError), "garbage → NetworkError")?;
                    check(server.ready_state() == ReadyState::Open, "the server stays open")?;
                    // The silent client (still in its handshake) does not hold up the TLS client.
                    let conn = within(30, "second listen", server.listen()).await??;
                    let mut reader = conn.readable()?;
                    check(read_n(&mut reader, 5).await? == b"third", "the TLS client is delivered first")?;
                    conn.writable()?.write(Bytes::from_static(b"ok")).await?;
                    Ok(())
                }
            });
            world.client("client", move |ctx| {
                let pki = pki.clone();
                async move {
                    resolve_server(&ctx);
                    ctx.net.set_tls(trusting(&pki));
                    let port = ctx.lookup("srv").await;
                    let plain = TcpOptions::default();
                    let silent = TcpSocket::new(&ctx.net, &ctx.address_of("server"), port, plain.clone())?;
                    within(30, "silent opened", silent.opened()).await??;
                    let garbage = TcpSocket::new(&ctx.net, &ctx.address_of("server"), port, plain)?;
                    within(30, "garbage opened", garbage.opened()).await??;
                    garbage.writable()?.write(Bytes::from_static(b"GET /\r\n")).await?;
                    // The server drops it (maybe after an alert): the connection ends either way.
                    let mut rest = garbage.readable()?;
                    while let Ok(Some(_)) = within(30, "garbage end", rest.read()).await? {}
                    let sock = TcpSocket::new(&ctx.net, NAME, port, tls())?;
                    within(30, "opened", sock.opened()).await??;
                    sock.writable()?.write(Bytes::from_static(b"third")).await?;
                    let mut reader = sock.readable()?;
                    check(read_n(&mut reader, 2).await? == b"ok", "served")?;
                    drop(silent);
                    Ok(())
                }
            });
        }

        /// rule: EXT-08, SRV-CONNFAIL-01, SRV-CONNFAIL-02
        fn tls_server_handshake_timeout_is_unservable(world: &mut World) {
            guard(world);
            let pki = Rc::new(Pki::new("tcpudp test CA"));
            let leaf = Rc::new(pki.leaf(&[NAME]));
            world.client("server", move |ctx| {
                let leaf = leaf.clone();
                async move {
                    ctx.net.set_tls(
                        TlsContext::builder()
                            .server_credentials_pem(&leaf.cert_pem, &leaf.key_pem)
                            .handshake_timeout(Duration::from_secs(1))
                            .build()?,
                    );
                    let server = TcpServerSocket::new(&ctx.net, tls_server())?;
                    server.opened().await?;
                    let first = server.listen();
                    ctx.publish("srv", server.local_port().ok_or("no port")?);
                    let started = tokio::time::Instant::now();
                    let failed = within(30, "listen", first).await?;
                    match &failed {
                        Err(e) if e.kind() == ErrorName::NetworkError => {
                            check(e.cause() == Some(Cause::Tls(TlsCause::HandshakeTimeout)), "cause: handshake timeout")?
                        }
                        other => return Err(format!("a silent client: {other:?}").into()),
                    }
                    if ctx.backend() == BackendChoice::Sim {
                        check(started.elapsed() >= Duration::from_secs(1), "not before the handshake timeout")?;
                    }
                    // The next good client is served.
                    let conn = within(30, "listen", server.listen()).await??;
                    conn.writable()?.write(Bytes::from_static(b"ok")).await?;
                    Ok(())
                }
            });
            world.client("client", move |ctx| {
                let pki = pki.clone();
                async move {
                    resolve_server(&ctx);
                    ctx.net.set_tls(trusting(&pki));
                    let port = ctx.lookup("srv").await;
                    let silent = TcpSocket::new(&ctx.net, &ctx.address_of("server"), port, TcpOptions::default())?;
                    within(30, "silent opened", silent.opened()).await??;
                    // The server gives up on the silent client: it ends the connection.
                    let mut reader = silent.readable()?;
                    let _ = within(30, "silent end", reader.read()).await?;
                    let sock = TcpSocket::new(&ctx.net, NAME, port, tls())?;
                    within(30, "opened", sock.opened()).await??;
                    let mut reader = sock.readable()?;
                    check(read_n(&mut reader, 2).await? == b"ok", "served after the timeout")?;
                    Ok(())
                }
            });
        }

        /// rule: EXT-05, EXT-06
        /// (and RULES.md ambiguity note AMB-49: how long a connection attempt may take)
        fn tls_client_handshake_bounded_by_connect_timeout(world: &mut World) {
            guard(world);
            world.client("server", |ctx| async move {
                // Accepts (the OS backlog completes the TCP handshake) and never answers.
                let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
                server.opened().await?;
                ctx.publish("mute", server.local_port().ok_or("no port")?);
                let conn = server.listen().await?;
                let mut reader = conn.readable()?;
                while let Ok(Some(_)) = reader.read().await {}
                let _ = conn.closed().await;
                Ok(())
            });
            world.client("client", |ctx| async move {
                let port = ctx.lookup("mute").await;
                let opts = TcpOptions { connect_timeout: Duration::from_secs(1), ..tls() };
                let started = tokio::time::Instant::now();
                let sock = TcpSocket::new(&ctx.net, &ctx.address_of("server"), port, opts)?;
                let opened = within(30, "opened", sock.opened()).await?;
                expect_network(&opened, Cause::Tls(TlsCause::HandshakeTimeout), "a silent server")?;
                expect_network(&sock.closed().await, Cause::Tls(TlsCause::HandshakeTimeout), "closed")?;
                if ctx.backend() == BackendChoice::Sim {
                    check(started.elapsed() >= Duration::from_secs(1), "not before the connect timeout")?;
                    check(started.elapsed() < Duration::from_secs(2), "at the connect timeout")?;
                }
                Ok(())
            });
        }

        /// rule: TCP-CTOR-15, EXT-06
        fn tls_peer_answering_plain_text_fails_with_protocol(world: &mut World) {
            guard(world);
            world.client("server", |ctx| async move {
                let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
                server.opened().await?;
                ctx.publish("plain", server.local_port().ok_or("no port")?);
                let conn = server.listen().await?;
                let mut reader = conn.readable()?;
                let _client_hello = reader.read().await?;
                conn.writable()?.write(Bytes::from_static(b"HELLO\r\n")).await?;
                let _ = conn.close().await;
                Ok(())
            });
            world.client("client", |ctx| async move {
                let port = ctx.lookup("plain").await;
                let sock = TcpSocket::new(&ctx.net, &ctx.address_of("server"), port, tls())?;
                let writes = sock.writable()?.write(Bytes::from_static(b"queued before open"));
                let opened = within(30, "opened", sock.opened()).await?;
                expect_network(&opened, Cause::Tls(TlsCause::Protocol), "plain text instead of a ServerHello")?;
                // EXT-06: queued writes reject NetworkError; the readable is errored.
                check(matches!(writes.await, Err(e) if e.kind() == ErrorName::NetworkError), "queued write rejects")?;
                let read = sock.readable()?.read().await;
                check(matches!(read, Err(e) if e.kind() == ErrorName::NetworkError), "readable errored")?;
                Ok(())
            });
        }

        /// rule: EXT-07, ERR-08
        fn start_tls_upgrades_an_open_socket(world: &mut World) {
            guard(world);
            let pki = Rc::new(Pki::new("tcpudp test CA"));
            let leaf = Rc::new(pki.leaf(&[NAME]));
            world.client("server", move |ctx| {
                let leaf = leaf.clone();
                async move {
                    // A plain server whose accepted sockets can run the server side of STARTTLS.
                    ctx.net.set_tls(serving(&leaf));
                    let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
                    server.opened().await?;
                    ctx.publish("smtp", server.local_port().ok_or("no port")?);
                    let conn = server.listen().await?;
                    let mut reader = conn.readable()?;
                    check(read_n(&mut reader, 10).await? == b"STARTTLS\r\n", "command")?;
                    conn.writable()?.write(Bytes::from_static(b"GO\r\n")).await?;
                    // Let the ClientHello arrive in the readable before upgrading: it is fed to the
                    // TLS session first.
                    for _ in 0..1000 {
                        if conn.diag().queued_read_bytes > 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    check(conn.diag().queued_read_bytes > 0, "the ClientHello waits in the readable")?;
                    within(30, "server start_tls", conn.start_tls()).await??;
                    check(conn.ready_state() == ReadyState::Open, "still open")?;
                    let writer = conn.writable()?;
                    while let Some(chunk) = reader.read().await? {
                        drop(writer.write(chunk));
                    }
                    drop((reader, writer));
                    conn.closed().await?;
                    Ok(())
                }
            });
            world.client("client", move |ctx| {
                let pki = pki.clone();
                async move {
                    resolve_server(&ctx);
                    ctx.net.set_tls(trusting(&pki));
                    let sock = TcpSocket::new(&ctx.net, NAME, ctx.lookup("smtp").await, TcpOptions::default())?;
                    within(30, "opened", sock.opened()).await??;
                    check(sock.alpn().is_none(), "plain so far")?;
                    let mut reader = sock.readable()?;
                    {
                        // A read pending: start_tls() rejects InvalidStateError (and changes nothing).
                        let mut pending = Box::pin(reader.read());
                        check(tls_support_poll_once(&mut pending).is_pending(), "nothing to read yet")?;
                        let busy = sock.start_tls().await;
                        check(matches!(&busy, Err(e) if e.kind() == ErrorName::InvalidStateError), "busy → InvalidStateError")?;
                    }
                    let writer = sock.writable()?;
                    writer.write(Bytes::from_static(b"STARTTLS\r\n")).await?;
                    check(read_n(&mut reader, 4).await? == b"GO\r\n", "go-ahead")?;
                    within(30, "client start_tls", sock.start_tls()).await??;
                    check(sock.ready_state() == ReadyState::Open, "open after the upgrade")?;
                    let again = sock.start_tls().await;
                    check(matches!(&again, Err(e) if e.kind() == ErrorName::InvalidStateError), "a second start_tls")?;
                    drop((reader, writer));
                    round_trip(&sock, b"now encrypted").await
                }
            });
        }

        /// rule: EXT-07, ERR-06
        fn start_tls_failure_closes_the_socket(world: &mut World) {
            guard(world);
            let pki = Rc::new(Pki::new("tcpudp test CA"));
            world.client("server", |ctx| async move {
                let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
                server.opened().await?;
                ctx.publish("smtp", server.local_port().ok_or("no port")?);
                let conn = server.listen().await?;
                let mut reader = conn.readable()?;
                check(read_n(&mut reader, 10).await? == b"STARTTLS\r\n", "command")?;
                let writer = conn.writable()?;
                writer.write(Bytes::from_static(b"GO\r\n")).await?;
                let _client_hello = reader.read().await?;
                writer.write(Bytes::from_static(b"NOPE\r\n")).await?;
                drop((reader, writer));
                let _ = conn.close().await;
                Ok(())
            });
            world.client("client", move |ctx| {
                let pki = pki.clone();
                async move {
                    resolve_server(&ctx);
                    ctx.net.set_tls(trusting(&pki));
                    let sock = TcpSocket::new(&ctx.net, NAME, ctx.lookup("smtp").await, TcpOptions::default())?;
                    within(30, "opened", sock.opened()).await??;
                    let mut reader = sock.readable()?;
                    let writer = sock.writable()?;
                    writer.write(Bytes::from_static(b"STARTTLS\r\n")).await?;
                    check(read_n(&mut reader, 4).await? == b"GO\r\n", "go-ahead")?;
                    let upgraded = within(30, "start_tls", sock.start_tls()).await?;
                    expect_network(&upgraded, Cause::Tls(TlsCause::Protocol), "start_tls")?;
                    expect_network(&sock.closed().await, Cause::Tls(TlsCause::Protocol), "closed")?;
                    check(sock.ready_state() == ReadyState::Closed, "closed")?;
                    let read = reader.read().await;
                    check(matches!(read, Err(e) if e.kind() == ErrorName::NetworkError), "readable errored")?;
                    let write = writer.write(Bytes::from_static(b"x")).await;
                    check(matches!(write, Err(e) if e.kind() == ErrorName::NetworkError), "writable errored")?;
                    Ok(())
                }
            });
        }

        /// rule: ERR-06
        fn tls_end_without_close_notify_is_truncation(world: &mut World) {
            guard(world);
            let pki = Rc::new(Pki::new("tcpudp test CA"));
            let leaf = Rc::new(pki.leaf(&[NAME]));
            world.client("server", move |ctx| {
                let leaf = leaf.clone();
                async move {
                    // A TLS peer this library did not write, which cuts the connection (FIN without
                    // close_notify) after its data.
                    let (listener, port) = RawListener::bind(&ctx, 4433).await?;
                    ctx.publish("raw", port);
                    let stream = listener.accept().await?;
                    let mut peer = RawTls::accept(stream, &leaf).await?;
                    check(peer.recv(4).await? == b"ping", "request")?;
                    peer.send(b"partial answer").await?;
                    // Cut only once the client has the data: a failed connection discards what the
                    // application has not read yet (TCP-READ-ERR-01).
                    check(peer.recv(3).await? == b"ack", "acknowledged")?;
                    peer.cut().await?;
                    Ok(())
                }
            });
            world.client("client", move |ctx| {
                let pki = pki.clone();
                async move {
                    resolve_server(&ctx);
                    ctx.net.set_tls(trusting(&pki));
                    let sock = TcpSocket::new(&ctx.net, NAME, ctx.lookup("raw").await, tls())?;
                    within(30, "opened", sock.opened()).await??;
                    sock.writable()?.write(Bytes::from_static(b"ping")).await?;
                    let mut reader = sock.readable()?;
                    check(read_n(&mut reader, 14).await? == b"partial answer", "data before the cut")?;
                    sock.writable()?.write(Bytes::from_static(b"ack")).await?;
                    let end = within(30, "read", reader.read()).await?;
                    match end {
                        Err(e) if e.kind() == ErrorName::NetworkError && e.cause() == Some(Cause::Truncated) => {}
                        other => return Err(format!("a cut without close_notify: {other:?}").into()),
                    }
                    expect_network(&sock.closed().await, Cause::Truncated, "closed")?;
                    Ok(())
                }
            });
        }

        /// rule: TCP-CTOR-14, TCP-CTOR-15, SRV-CTOR-09, SRV-CTOR-10, ERR-11, DICT-TCPOPT-05, DICT-SRVOPT-04
        fn tls_constructor_checks(world: &mut World) {
            guard(world);
            world.client("server", |ctx| async move {
                // DICT-SRVOPT-04: plain by default.
                check(!TcpServerOptions::default().use_secure_transport, "server default is plain")?;
                let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
                check(!server.use_secure_transport(), "plain server")?;
                server.opened().await?;
                ctx.publish("plain", server.local_port().ok_or("no port")?);
                let conn = server.listen().await?;
                check(!conn.use_secure_transport(), "plain accepted socket")?;
                let mut reader = conn.readable()?;
                // The bytes on the wire are the plain bytes the client wrote.
                check(read_n(&mut reader, 5).await? == b"plain", "plain text")?;
                Ok(())
            });
            world.client("client", |ctx| async move {
                let faults = ctx.net.faults().clone();
                let (created, open) = (faults.created_sockets(), faults.open_sockets());
                // SRV-CTOR-09, ERR-11: no server credentials in the context.
                let e = TcpServerSocket::new(&ctx.net, tls_server()).unwrap_err();
                check(e.kind() == ErrorName::NotSupportedError, "TLS server without credentials → NotSupportedError")?;
                // SRV-CTOR-10: the local address is checked before TLS support.
                let bad = TcpServerOptions { local_address: Some("300.1.1.1".into()), ..tls_server() };
                check(TcpServerSocket::new(&ctx.net, bad).unwrap_err().kind() == ErrorName::InvalidAccessError, "address first")?;
                // ... and permission before everything.
                let denied = match ctx.backend() {
                    BackendChoice::Real => tcpudp_net_real::network(Policy::deny_all())?,
                    BackendChoice::Sim => tcpudp_net_sim::network(&ctx.name, Policy::deny_all())?,
                };
                check(TcpServerSocket::new(&denied, tls_server()).unwrap_err().kind() == ErrorName::SecurityError, "permission first")?;
                check(TcpSocket::new(&denied, "127.0.0.1", 443, tls()).unwrap_err().kind() == ErrorName::SecurityError, "permission first")?;

                // TCP-CTOR-15, ERR-11: a context without TLS behaves as a build without TLS.
                let no_tls = another_net(&ctx);
                no_tls.set_tls(TlsContext::disabled());
                let e = TcpSocket::new(&no_tls, "127.0.0.1", 443, tls()).unwrap_err();
                check(e.kind() == ErrorName::NotSupportedError, "no TLS → NotSupportedError")?;
                // TCP-CTOR-14: keep-alive (interval 0) is checked before TLS support.
                let ka0 = TcpOptions { keep_alive: KeepAliveMode::Sparse, keep_alive_sparse_interval: Some(0), ..tls() };
                check(TcpSocket::new(&no_tls, "127.0.0.1", 443, ka0).unwrap_err().kind() == ErrorName::InvalidAccessError, "keep-alive before TLS")?;
                // Even with credentials, a disabled context refuses a TLS server.
                let leaf = Pki::new("ca").leaf(&["x.test"]);
                let creds = TlsContext::builder().server_credentials_der(vec![leaf.cert_der.clone()], leaf.key_der.clone()).build()?;
                check(creds.has_server_credentials() && creds.enabled(), "credentials from DER")?;
                no_tls.set_tls(TlsContext::disabled());
                check(TcpServerSocket::new(&no_tls, tls_server()).unwrap_err().kind() == ErrorName::NotSupportedError, "disabled server")?;
                check((faults.created_sockets(), faults.open_sockets()) == (created, open), "failed constructors made no socket")?;
                // Bad credentials are refused when the context is built.
                let e = TlsContext::builder().server_credentials_pem("not pem", "not pem").build().unwrap_err();
                check(e.kind() == ErrorName::TypeError, "bad PEM → TypeError")?;

                // DICT-TCPOPT-05: plain by default; a plain peer works.
                check(!TcpOptions::default().use_secure_transport, "client default is plain")?;
                let sock = TcpSocket::new(&ctx.net, &ctx.address_of("server"), ctx.lookup("plain").await, TcpOptions::default())?;
                check(!sock.use_secure_transport(), "plain socket")?;
                within(30, "opened", sock.opened()).await??;
                check(sock.alpn().is_none(), "no ALPN on a plain socket")?;
                sock.writable()?.write(Bytes::from_static(b"plain")).await?;
                Ok(())
            });
        }
    }

    /// Polls a future once with a no-op waker.
    fn tls_support_poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> std::task::Poll<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::Pin::new(fut).poll(&mut cx)
    }

    /// A client that trusts the test CA connects to `NAME` served with `make(pki)`'s certificate:
    /// `opened` and `closed` reject NetworkError with `expected`; the server's pending `listen()`
    /// rejects NetworkError (the client aborted the handshake, EXT-08).
    fn bad_certificate(world: &mut World, make: fn(&Pki) -> Leaf, expected: TlsCause) {
        guard(world);
        let pki = Rc::new(Pki::new("tcpudp test CA"));
        let leaf = Rc::new(make(&pki));
        world.client("server", move |ctx| {
            let leaf = leaf.clone();
            async move {
                ctx.net.set_tls(serving(&leaf));
                let server = TcpServerSocket::new(&ctx.net, tls_server())?;
                server.opened().await?;
                let pending = server.listen();
                ctx.publish("bad", server.local_port().ok_or("no port")?);
                let failed = within(30, "listen", pending).await?;
                check(
                    matches!(&failed, Err(e) if e.kind() == ErrorName::NetworkError),
                    "listen() rejects NetworkError",
                )?;
                check(matches!(&failed, Err(e) if matches!(e.cause(), Some(Cause::Tls(_)))), "with a TLS cause")?;
                Ok(())
            }
        });
        world.client("client", move |ctx| {
            let pki = pki.clone();
            async move {
                resolve_server(&ctx);
                ctx.net.set_tls(trusting(&pki));
                let sock = TcpSocket::new(&ctx.net, NAME, ctx.lookup("bad").await, tls())?;
                let opened = within(30, "opened", sock.opened()).await?;
                expect_network(&opened, Cause::Tls(expected), "opened")?;
                expect_network(&sock.closed().await, Cause::Tls(expected), "closed")?;
                check(sock.ready_state() == ReadyState::Closed, "closed")?;
                check(tls_cause(&opened) == Some(Cause::Tls(expected)), "cause")?;
                Ok(())
            }
        });
    }

    // ---- determinism (simulation) and the build ---------------------------------------------------

    /// The ciphertext a relay between a TLS client and a TLS server saw, per direction.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    struct Wire {
        to_server: Vec<u8>,
        to_client: Vec<u8>,
        plaintext: Vec<u8>,
    }

    fn digest(bytes: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().to_vec()
    }

    /// One TLS echo through a relay host in simulation; returns what crossed the relay.
    fn relayed_tls_run(seed: u64, pki: Rc<Pki>, leaf: Rc<Leaf>) -> Result<Wire, String> {
        let wire = Rc::new(RefCell::new(Wire::default()));
        let out = wire.clone();
        crate::harness::run_with(BackendChoice::Sim, seed, move |world: &mut World| {
            world.client("server", move |ctx| {
                let leaf = leaf.clone();
                async move {
                    ctx.net.set_tls(
                        TlsContext::builder()
                            .server_credentials_pem(&leaf.cert_pem, &leaf.key_pem)
                            .alpn_protocols(["h2"])
                            .sim_seed(seed)
                            .build()?,
                    );
                    tls_echo(&ctx.net, &ctx, "tls", 1).await
                }
            });
            let relay_wire = wire.clone();
            world.client("relay", move |ctx| {
                let wire = relay_wire.clone();
                async move {
                    let (listener, port) = RawListener::bind(&ctx, 7000).await?;
                    ctx.publish("relay", port);
                    let upstream_port = ctx.lookup("tls").await;
                    let mut down = listener.accept().await?;
                    let mut up = super::tls_support::raw_connect(&ctx, "server", upstream_port).await?;
                    relay(&mut down, &mut up, &wire).await?;
                    Ok(())
                }
            });
            world.client("client", move |ctx| {
                let (pki, wire) = (pki.clone(), wire.clone());
                async move {
                    ctx.net.faults().resolve(NAME, Ok(vec![ctx.address_of("relay").parse()?]));
                    ctx.net.set_tls(
                        TlsContext::builder()
                            .root_certificates_pem(&pki.ca_pem)
                            .alpn_protocols(["h2"])
                            .sim_seed(seed)
                            .build()?,
                    );
                    let sock = TcpSocket::new(&ctx.net, NAME, ctx.lookup("relay").await, tls())?;
                    sock.opened().await?;
                    let writer = sock.writable()?;
                    let mut reader = sock.readable()?;
                    for msg in [&b"first message"[..], b"second", b"third and last"] {
                        writer.write(Bytes::copy_from_slice(msg)).await?;
                        let echoed = read_n(&mut reader, msg.len()).await?;
                        wire.borrow_mut().plaintext.extend_from_slice(&echoed);
                    }
                    sock.half_close();
                    check(reader.read().await?.is_none(), "clean end")?;
                    sock.closed().await?;
                    Ok(())
                }
            });
        })?;
        let result = out.borrow().clone();
        Ok(result)
    }

    /// Copies both directions until both have ended, recording the bytes.
    async fn relay(
        down: &mut Box<dyn super::tls_support::RawStream>,
        up: &mut Box<dyn super::tls_support::RawStream>,
        wire: &Rc<RefCell<Wire>>,
    ) -> Result<(), TestError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut a, mut b) = (vec![0u8; 8192], vec![0u8; 8192]);
        let (mut down_open, mut up_open) = (true, true);
        while down_open || up_open {
            tokio::select! {
                biased;
                n = down.read(&mut a), if down_open => {
                    let n = n?;
                    if n == 0 { down_open = false; up.shutdown().await?; } else {
                        wire.borrow_mut().to_server.extend_from_slice(&a[..n]);
                        up.write_all(&a[..n]).await?;
                    }
                }
                n = up.read(&mut b), if up_open => {
                    let n = n?;
                    if n == 0 { up_open = false; down.shutdown().await?; } else {
                        wire.borrow_mut().to_client.extend_from_slice(&b[..n]);
                        down.write_all(&b[..n]).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// rule: EXT-05, EXT-08
    #[only(Sim, "the same ciphertext for a seed needs the simulator's seeded randomness: real TLS draws from the OS")]
    fn sim_tls_ciphertext_repeats_for_a_seed() {
        // The same certificates for every run: only the seed may change the bytes.
        let pki = Rc::new(Pki::new("tcpudp test CA"));
        let leaf = Rc::new(pki.leaf(&[NAME]));
        let first = relayed_tls_run(7, pki.clone(), leaf.clone()).expect("first run");
        let second = relayed_tls_run(7, pki.clone(), leaf.clone()).expect("second run");
        assert_eq!(first.plaintext, b"first messagesecondthird and last");
        assert!(first.to_server.len() > 200 && first.to_client.len() > 200, "a handshake crossed the relay");
        assert!(!first.to_server.windows(6).any(|w| w == b"second"), "the relay saw only ciphertext");
        assert_eq!(
            (digest(&first.to_server), digest(&first.to_client)),
            (digest(&second.to_server), digest(&second.to_client)),
            "the same seed gives the same ciphertext on the wire"
        );
        let other = relayed_tls_run(8, pki, leaf).expect("run with another seed");
        assert_eq!(other.plaintext, first.plaintext);
        assert_ne!(digest(&other.to_server), digest(&first.to_server), "another seed, other ciphertext");
    }

    /// rule: ERR-11
    #[only(Sim, "a property of the build, not of a backend: checked once")]
    fn exactly_one_rustls_crypto_provider() {
        // Configurations are built with an explicit provider: no process default is ever installed.
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).expect("Cargo.lock");
        let packages: Vec<&str> =
            lock.lines().filter_map(|l| l.strip_prefix("name = \"")).map(|l| l.trim_end_matches('"')).collect();
        assert!(packages.contains(&"ring"), "ring is the provider");
        assert!(packages.contains(&"rustls"));
        for other in ["aws-lc-rs", "aws-lc-sys", "aws-lc-fips-sys", "rustls-openssl", "rustls-graviola"] {
            assert!(!packages.contains(&other), "a second crypto provider is in the build: {other}");
        }
        let _ring: fn() -> rustls::crypto::CryptoProvider = rustls::crypto::ring::default_provider;
    }
}

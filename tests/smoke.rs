//! The same application code on both backends: TCP echo, accept order, UDP echo.

use bytes::Bytes;
use tcpudp::{Datagram, ReadyState, TcpOptions, TcpServerOptions, TcpServerSocket, TcpSocket, UdpOptions, UdpSocket};
use tcpudp_conformance::{on_both_backends, BodyResult, Ctx};

/// An echo server on `ctx`'s network: answers every connection until the peer closes.
async fn echo_server(ctx: Ctx) -> BodyResult {
    let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
    server.opened().await?;
    ctx.publish("echo", server.local_port().ok_or("no port")?);
    loop {
        let conn = server.listen().await?;
        tokio::task::spawn_local(async move {
            let mut reader = conn.readable()?;
            let writer = conn.writable()?;
            while let Some(chunk) = reader.read().await? {
                let _ = writer.write(chunk);
            }
            drop((reader, writer));
            conn.closed().await?;
            Ok::<(), tcpudp::SocketError>(())
        });
    }
}

async fn read_exactly(reader: &mut tcpudp::TcpReadable, n: usize) -> Result<Vec<u8>, tcpudp::SocketError> {
    let mut got = Vec::new();
    while got.len() < n {
        match reader.read().await? {
            Some(chunk) => got.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(got)
}

on_both_backends! {
    // rule: TCP-OPEN-01, TCP-WRITE-01, TCP-READ-01, TCP-HALFCLOSE-02, TCP-READ-CLOSE-01, SRV-OPEN-01, SRV-ACCEPT-01
    fn tcp_echo(world: &mut World) {
        world.host("server", echo_server);
        world.client("client", |ctx| async move {
            let port = ctx.lookup("echo").await;
            let sock = TcpSocket::new(&ctx.net, &ctx.address_of("server"), port, TcpOptions::default())?;
            assert_eq!(sock.ready_state(), ReadyState::Opening);
            sock.opened().await?;
            assert_eq!(sock.ready_state(), ReadyState::Open);
            assert!(sock.local_port().is_some());
            let writer = sock.writable()?;
            writer.write(Bytes::from_static(b"hello ")).await?;
            writer.write(Bytes::from_static(b"world")).await?;
            let mut reader = sock.readable()?;
            let echoed = read_exactly(&mut reader, 11).await?;
            assert_eq!(echoed, b"hello world");
            sock.half_close();
            assert_eq!(reader.read().await?, None);
            sock.closed().await?;
            assert_eq!(sock.ready_state(), ReadyState::Closed);
            Ok(())
        });
    }

    // rule: SRV-LISTEN-03, GEN-10
    fn accepts_in_order(world: &mut World) {
        world.host("server", |ctx| async move {
            let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
            server.opened().await?;
            ctx.publish("srv", server.local_port().ok_or("no port")?);
            for expected in [b'1', b'2'] {
                let conn = server.listen().await?;
                let mut reader = conn.readable()?;
                let first = reader.read().await?.ok_or("no data")?;
                assert_eq!(first[0], expected);
                conn.writable()?.write(Bytes::from_static(b"ok")).await?;
            }
            Ok(())
        });
        world.client("client", |ctx| async move {
            let port = ctx.lookup("srv").await;
            for tag in [&b"1"[..], &b"2"[..]] {
                let sock = TcpSocket::new(&ctx.net, &ctx.address_of("server"), port, TcpOptions::default())?;
                sock.writable()?.write(Bytes::copy_from_slice(tag)).await?;
                let reply = sock.readable()?.read().await?;
                assert_eq!(reply.as_deref(), Some(&b"ok"[..]));
                sock.close().await.ok();
            }
            Ok(())
        });
    }

    // rule: UDP-OPEN-01, UDP-WRITE-06, UDP-READ-01, UDP-READ-02, UDP-READ-03, UDP-CTOR-15
    fn udp_echo(world: &mut World) {
        world.host("server", |ctx| async move {
            let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
            sock.opened().await?;
            ctx.publish("udp", sock.local_port().ok_or("no port")?);
            let mut reader = sock.readable()?;
            let writer = sock.writable()?;
            while let Some(msg) = reader.read().await? {
                writer.write(Datagram::to(msg.data.clone(), msg.remote_address(), msg.remote_port())).await?;
            }
            Ok(())
        });
        world.client("client", |ctx| async move {
            let port = ctx.lookup("udp").await;
            let opts = UdpOptions { remote_address: Some(ctx.address_of("server")), remote_port: Some(port), ..UdpOptions::default() };
            let sock = UdpSocket::new(&ctx.net, opts)?;
            sock.opened().await?;
            let local_port = sock.local_port().ok_or("no port")?;
            assert_ne!(local_port, 0);
            sock.writable()?.write(Datagram::new(Bytes::from_static(b"ping"))).await?;
            let msg = sock.readable()?.read().await?.ok_or("closed")?;
            assert_eq!(&msg.data[..], b"ping");
            assert_eq!(msg.remote_port(), port);
            assert_eq!(msg.remote_address(), ctx.address_of("server"));
            sock.close().await?;
            Ok(())
        });
    }
}

//! The same application code on both backends: TCP echo, accept order, UDP echo. The first
//! scenarios the command runs, and the ones `tcpudp-conformance mutants` runs with each §9 row
//! disabled.

use bytes::Bytes;
use tcpudp::{
    Datagram, ReadyState, SocketError, TcpOptions, TcpReadable, TcpServerOptions, TcpServerSocket, TcpSocket,
    UdpOptions, UdpSocket,
};

use crate::world::{BodyResult, Ctx};

crate::on_both_backends! {
    /// Echo round trip, half-close, clean close.
    /// rule: TCP-OPEN-01, TCP-WRITE-01, TCP-READ-01, TCP-HALFCLOSE-02, TCP-READ-CLOSE-01, SRV-OPEN-01, SRV-ACCEPT-01
    fn tcp_echo(world: &mut World) {
        world.host("server", echo_server);
        world.client("client", |ctx| async move {
            let port = ctx.lookup("echo").await;
            let sock = TcpSocket::new(&ctx.net, &ctx.address_of("server"), port, TcpOptions::default())?;
            check(sock.ready_state() == ReadyState::Opening, "starts opening")?;
            sock.opened().await?;
            check(sock.ready_state() == ReadyState::Open, "open after opened")?;
            check(sock.local_port().is_some(), "local port known once open")?;
            let writer = sock.writable()?;
            writer.write(Bytes::from_static(b"hello ")).await?;
            writer.write(Bytes::from_static(b"world")).await?;
            let mut reader = sock.readable()?;
            let echoed = read_exactly(&mut reader, 11).await?;
            check(echoed == b"hello world", "echoed bytes")?;
            sock.half_close();
            check(reader.read().await?.is_none(), "end of stream after the peer's FIN")?;
            sock.closed().await?;
            check(sock.ready_state() == ReadyState::Closed, "closed")?;
            Ok(())
        });
    }

    /// Two connections accepted in connection order.
    /// rule: SRV-LISTEN-03, GEN-10
    fn accepts_in_order(world: &mut World) {
        world.host("server", |ctx| async move {
            let server = TcpServerSocket::new(&ctx.net, TcpServerOptions::default())?;
            server.opened().await?;
            ctx.publish("srv", server.local_port().ok_or("no port")?);
            for expected in [b'1', b'2'] {
                let conn = server.listen().await?;
                let mut reader = conn.readable()?;
                let first = reader.read().await?.ok_or("no data")?;
                check(first[0] == expected, "connections accepted in order")?;
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
                check(reply.as_deref() == Some(&b"ok"[..]), "reply")?;
                sock.close().await.ok();
            }
            Ok(())
        });
    }

    /// UDP echo with the source address and port of each message.
    /// rule: UDP-OPEN-01, UDP-WRITE-06, UDP-READ-01, UDP-READ-02, UDP-READ-03, UDP-CTOR-15
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
            let opts = UdpOptions {
                remote_address: Some(ctx.address_of("server")),
                remote_port: Some(port),
                ..UdpOptions::default()
            };
            let sock = UdpSocket::new(&ctx.net, opts)?;
            sock.opened().await?;
            check(sock.local_port().is_some_and(|p| p != 0), "ephemeral port known once open")?;
            sock.writable()?.write(Datagram::new(Bytes::from_static(b"ping"))).await?;
            let msg = sock.readable()?.read().await?.ok_or("closed")?;
            check(&msg.data[..] == b"ping", "echoed datagram")?;
            check(msg.remote_port() == port, "source port")?;
            check(msg.remote_address() == ctx.address_of("server"), "source address")?;
            sock.close().await?;
            Ok(())
        });
    }
}

/// An echo server on `ctx`'s network, its port published as "echo": answers every connection
/// until the peer closes.
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
                // Echo without waiting for each write: they settle in order anyway.
                drop(writer.write(chunk));
            }
            drop((reader, writer));
            conn.closed().await?;
            Ok::<(), SocketError>(())
        });
    }
}

/// Reads until `n` bytes arrived or the stream ended.
async fn read_exactly(reader: &mut TcpReadable, n: usize) -> Result<Vec<u8>, SocketError> {
    let mut got = Vec::new();
    while got.len() < n {
        match reader.read().await? {
            Some(chunk) => got.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(got)
}

/// An expectation inside a world body: `Err` with `what` when it does not hold.
fn check(holds: bool, what: &str) -> BodyResult {
    if holds {
        Ok(())
    } else {
        Err(format!("expectation failed: {what}").into())
    }
}

//! Real TCP workloads: bulk, ping-pong, connect + accept + close. Each is written twice: through
//! `tcpudp`'s public API as a user writes it, and through raw tokio doing the same protocol steps
//! with the same socket options (TCP_NODELAY on, as our default `noDelay`; SO_REUSEADDR on the
//! client, as our default `addressReuse`; both ends wait for the peer's FIN on close).
//!
//! Both sides run their two ends as two spawned tasks, so the multi-thread runtime can put them on
//! different workers.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use tcpudp::{Policy, TcpOptions, TcpServerOptions, TcpServerSocket, TcpSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket as RawTcpSocket, TcpStream};

use super::{warm, BenchResult, Sample, Sizes};

/// A boxed round of one side.
pub(crate) type BoxFut = Pin<Box<dyn Future<Output = BenchResult<Sample>> + Send>>;

/// Our server on 127.0.0.1, an ephemeral port, listening.
pub(crate) async fn our_server(net: &tcpudp::Network) -> BenchResult<(TcpServerSocket, u16)> {
    let options = TcpServerOptions { local_address: Some("127.0.0.1".into()), ..TcpServerOptions::default() };
    let server = TcpServerSocket::new(net, options)?;
    server.opened().await?;
    let port = server.local_port().ok_or("the server reports no port")?;
    Ok((server, port))
}

/// An open connection through `tcpudp`: (client, accepted).
pub(crate) async fn our_pair(
    net: &tcpudp::Network,
    server: &TcpServerSocket,
    port: u16,
) -> BenchResult<(TcpSocket, TcpSocket)> {
    let client = TcpSocket::new(net, "127.0.0.1", port, TcpOptions::default())?;
    let (accepted, opened) = tokio::join!(server.listen(), client.opened());
    opened?;
    Ok((client, accepted?))
}

/// A raw listener on 127.0.0.1, an ephemeral port.
pub(crate) async fn raw_listener() -> BenchResult<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// A raw connection: (client, accepted), with our defaults' socket options: SO_REUSEADDR on the
/// client (`addressReuse`, default true, TCP-CTOR-11, which the real backend sets on every client
/// socket) and TCP_NODELAY on both (`noDelay`).
pub(crate) async fn raw_pair(
    listener: &TcpListener,
    addr: SocketAddr,
) -> BenchResult<(TcpStream, TcpStream)> {
    let connect = async {
        let socket = if addr.is_ipv4() { RawTcpSocket::new_v4()? } else { RawTcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.connect(addr).await
    };
    let (client, accepted) = tokio::join!(connect, listener.accept());
    let (client, (accepted, _)) = (client?, accepted?);
    client.set_nodelay(true)?;
    accepted.set_nodelay(true)?;
    Ok((client, accepted))
}

/// Raw close with the same steps as `close()`: FIN, then wait for the peer's FIN (discarding data).
pub(crate) async fn raw_close(mut stream: TcpStream) -> BenchResult<()> {
    stream.shutdown().await?;
    let mut sink = [0u8; 1024];
    while stream.read(&mut sink).await? != 0 {}
    Ok(())
}

fn join_err(e: tokio::task::JoinError) -> super::BoxError {
    format!("task failed: {e}").into()
}

// ---- bulk ---------------------------------------------------------------------------------

/// 64 KiB writes, each awaited; the reader discards; then both close.
pub(crate) fn bulk_ours(sizes: Sizes, warmup: bool) -> BoxFut {
    Box::pin(async move {
        let total = warm(sizes.bulk_bytes, warmup, sizes.chunk as u64);
        let net = tcpudp_net_real::network(Policy::allow_all())?;
        let (server, port) = our_server(&net).await?;
        let (client, accepted) = our_pair(&net, &server, port).await?;
        drop(server);
        let start = Instant::now();
        let reader = tokio::spawn(async move {
            let mut readable = accepted.readable()?;
            let mut got = 0u64;
            while let Some(chunk) = readable.read().await? {
                got += chunk.len() as u64;
            }
            drop(readable);
            accepted.close().await?;
            BenchResult::Ok(got)
        });
        let writer = tokio::spawn(async move {
            let data = Bytes::from(vec![0x5a; sizes.chunk]);
            let writable = client.writable()?;
            let mut sent = 0u64;
            while sent < total {
                let n = (total - sent).min(sizes.chunk as u64) as usize;
                writable.write(data.slice(..n)).await?;
                sent += n as u64;
            }
            drop(writable);
            client.close().await?;
            BenchResult::Ok(())
        });
        writer.await.map_err(join_err)??;
        let got = reader.await.map_err(join_err)??;
        let elapsed = start.elapsed();
        if got != total {
            return Err(format!("bulk (ours): {got} of {total} bytes arrived").into());
        }
        Ok(Sample::new(total, elapsed))
    })
}

/// The same with raw tokio: `write_all` per 64 KiB, a 64 KiB read buffer.
pub(crate) fn bulk_raw(sizes: Sizes, warmup: bool) -> BoxFut {
    Box::pin(async move {
        let total = warm(sizes.bulk_bytes, warmup, sizes.chunk as u64);
        let (listener, addr) = raw_listener().await?;
        let (mut client, mut accepted) = raw_pair(&listener, addr).await?;
        drop(listener);
        let start = Instant::now();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; sizes.chunk];
            let mut got = 0u64;
            loop {
                let n = accepted.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            raw_close(accepted).await?;
            BenchResult::Ok(got)
        });
        let writer = tokio::spawn(async move {
            let data = vec![0x5a; sizes.chunk];
            let mut sent = 0u64;
            while sent < total {
                let n = (total - sent).min(sizes.chunk as u64) as usize;
                client.write_all(&data[..n]).await?;
                sent += n as u64;
            }
            raw_close(client).await?;
            BenchResult::Ok(())
        });
        writer.await.map_err(join_err)??;
        let got = reader.await.map_err(join_err)??;
        let elapsed = start.elapsed();
        if got != total {
            return Err(format!("bulk (raw): {got} of {total} bytes arrived").into());
        }
        Ok(Sample::new(total, elapsed))
    })
}

// ---- ping-pong ------------------------------------------------------------------------------

/// The client writes 64 B and waits for the echo, `trips` times; the server echoes what it reads.
pub(crate) fn pingpong_ours(sizes: Sizes, warmup: bool) -> BoxFut {
    Box::pin(async move {
        let trips = warm(sizes.pingpong_trips, warmup, 1);
        let net = tcpudp_net_real::network(Policy::allow_all())?;
        let (server, port) = our_server(&net).await?;
        let (client, accepted) = our_pair(&net, &server, port).await?;
        drop(server);
        let start = Instant::now();
        let echo = tokio::spawn(async move {
            let mut readable = accepted.readable()?;
            let writable = accepted.writable()?;
            while let Some(chunk) = readable.read().await? {
                writable.write(chunk).await?;
            }
            drop((readable, writable));
            accepted.close().await?;
            BenchResult::Ok(())
        });
        let message = sizes.message;
        let pinger = tokio::spawn(async move {
            let msg = Bytes::from(vec![0x42; message]);
            let mut readable = client.readable()?;
            let writable = client.writable()?;
            for _ in 0..trips {
                writable.write(msg.clone()).await?;
                let mut got = 0;
                while got < message {
                    match readable.read().await? {
                        Some(chunk) => got += chunk.len(),
                        None => return Err("ping-pong (ours): early end of stream".into()),
                    }
                }
            }
            drop((readable, writable));
            client.close().await?;
            BenchResult::Ok(())
        });
        pinger.await.map_err(join_err)??;
        echo.await.map_err(join_err)??;
        Ok(Sample::new(trips, start.elapsed()))
    })
}

/// The same with raw tokio: `write_all` and `read_exact` on the client, read/echo on the server.
pub(crate) fn pingpong_raw(sizes: Sizes, warmup: bool) -> BoxFut {
    Box::pin(async move {
        let trips = warm(sizes.pingpong_trips, warmup, 1);
        let (listener, addr) = raw_listener().await?;
        let (mut client, mut accepted) = raw_pair(&listener, addr).await?;
        drop(listener);
        let start = Instant::now();
        let echo = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = accepted.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                accepted.write_all(&buf[..n]).await?;
            }
            raw_close(accepted).await?;
            BenchResult::Ok(())
        });
        let message = sizes.message;
        let pinger = tokio::spawn(async move {
            let msg = vec![0x42; message];
            let mut buf = vec![0u8; message];
            for _ in 0..trips {
                client.write_all(&msg).await?;
                client.read_exact(&mut buf).await?;
            }
            raw_close(client).await?;
            BenchResult::Ok(())
        });
        pinger.await.map_err(join_err)??;
        echo.await.map_err(join_err)??;
        Ok(Sample::new(trips, start.elapsed()))
    })
}

// ---- connect + accept + close -----------------------------------------------------------

/// Lock-step: construct, `listen()` and `opened` together, then both ends `close()` together.
pub(crate) fn connect_ours(sizes: Sizes, warmup: bool) -> BoxFut {
    Box::pin(async move {
        let count = warm(sizes.connects, warmup, 1);
        let net = tcpudp_net_real::network(Policy::allow_all())?;
        let (server, port) = our_server(&net).await?;
        let task = tokio::spawn(async move {
            let start = Instant::now();
            for _ in 0..count {
                let client = TcpSocket::new(&net, "127.0.0.1", port, TcpOptions::default())?;
                let (accepted, opened) = tokio::join!(server.listen(), client.opened());
                opened?;
                let accepted = accepted?;
                let (a, b) = tokio::join!(client.close(), accepted.close());
                a?;
                b?;
            }
            BenchResult::Ok(start.elapsed())
        });
        let elapsed = task.await.map_err(join_err)??;
        Ok(Sample::new(count, elapsed))
    })
}

/// The same with raw tokio: connect and accept together, then FIN and wait for FIN on both.
pub(crate) fn connect_raw(sizes: Sizes, warmup: bool) -> BoxFut {
    Box::pin(async move {
        let count = warm(sizes.connects, warmup, 1);
        let (listener, addr) = raw_listener().await?;
        let task = tokio::spawn(async move {
            let start = Instant::now();
            for _ in 0..count {
                let (client, accepted) = raw_pair(&listener, addr).await?;
                let (a, b) = tokio::join!(raw_close(client), raw_close(accepted));
                a?;
                b?;
            }
            BenchResult::Ok(start.elapsed())
        });
        let elapsed = task.await.map_err(join_err)??;
        Ok(Sample::new(count, elapsed))
    })
}

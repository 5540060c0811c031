//! The readable and the writable of one socket used from different tasks of a multi-thread runtime
//! (issue #3), and every handle type being `Clone + Send + Sync + 'static` where the design says so.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use tcpudp::{Policy, TcpOptions, TcpServerSocket, TcpSocket, UdpSocket};

fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
fn assert_sendable<T: Send + 'static>() {}

#[test]
fn handles_are_clone_send_sync_and_streams_are_send() {
    assert_shareable::<tcpudp::Network>();
    assert_shareable::<TcpSocket>();
    assert_shareable::<TcpServerSocket>();
    assert_shareable::<UdpSocket>();
    assert_shareable::<tcpudp::SocketPromise>();
    assert_sendable::<tcpudp::TcpReadable>();
    assert_sendable::<tcpudp::TcpWritable>();
    assert_sendable::<tcpudp::UdpReadable>();
    assert_sendable::<tcpudp::UdpWritable>();
    assert_sendable::<tcpudp::WriteFuture>();
}

// rule: TCP-WRITE-04, TCP-READ-01
#[test]
fn reader_and_writer_on_different_tasks_of_a_multi_thread_runtime() {
    // An echo peer this library did not write: a std::net listener in a thread.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).unwrap();
        }
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let net = tcpudp_net_real::network(Policy::allow_all()).unwrap();
        let sock = TcpSocket::new(&net, "127.0.0.1", port, TcpOptions::default()).unwrap();
        sock.opened().await.unwrap();
        let total: usize = 4 * 1024 * 1024;
        let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
        let expected = data.clone();
        let writer = sock.writable().unwrap();
        let mut reader = sock.readable().unwrap();
        let write_task = tokio::spawn(async move {
            for chunk in data.chunks(32 * 1024) {
                writer.ready().await.unwrap();
                drop(writer.write(Bytes::copy_from_slice(chunk)));
            }
            writer.close().await
        });
        let read_task = tokio::spawn(async move {
            let mut got = Vec::with_capacity(total);
            while let Some(chunk) = reader.read().await? {
                got.extend_from_slice(&chunk);
            }
            Ok::<_, tcpudp::SocketError>(got)
        });
        let guard = Duration::from_secs(120); // hang guard only
        tokio::time::timeout(guard, write_task).await.unwrap().unwrap().unwrap();
        let got = tokio::time::timeout(guard, read_task).await.unwrap().unwrap().unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "echoed bytes differ");
        tokio::time::timeout(guard, sock.closed()).await.unwrap().unwrap();
    });
    peer.join().unwrap();
}

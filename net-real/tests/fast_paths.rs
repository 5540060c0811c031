//! The shortcuts the performance work took (issue #6) keep their semantics, on loopback: a UDP
//! write's permission decision is reused only while the policy is unchanged, and a TCP socket's
//! options are read back when asked (after close, the last values read), a waiting UDP reader
//! is woken by the transport itself, and so is a task awaiting a TCP socket's closing handshake.

use std::future::Future;
use std::time::Duration;

use tcpudp::{
    Datagram, Policy, TcpOptions, TcpServerOptions, TcpServerSocket, TcpSocket, UdpOptions, UdpReadable,
    UdpSocket,
};
use tcpudp_core::permission::PermissionRequest;
use tcpudp_core::{ErrorName, ReadyState};

/// Hang guard: far above anything loopback needs; never a timing assertion.
const GUARD: Duration = Duration::from_secs(20);

async fn guard<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(out) => out,
        Err(_) => panic!("hang guard: {what}"),
    }
}

fn loopback_udp(net: &tcpudp::Network) -> UdpSocket {
    let options = UdpOptions { local_address: Some("127.0.0.1".into()), ..UdpOptions::default() };
    UdpSocket::new(net, options).expect("udp socket")
}

/// An opened loopback socket, its readable, and where a plain sender reaches it.
async fn open_receiver(net: &tcpudp::Network) -> (UdpSocket, UdpReadable, (&'static str, u16)) {
    let rx = loopback_udp(net);
    guard("rx opened", rx.opened()).await.expect("rx opened");
    let to = ("127.0.0.1", rx.local_port().expect("rx port"));
    let readable = rx.readable().expect("readable");
    (rx, readable, to)
}

// rule: UDP-WRITE-04
#[tokio::test]
async fn udp_write_permission_follows_policy_changes() {
    let policy = Policy::allow_all();
    let net = tcpudp_net_real::network(policy.clone()).expect("network");
    let rx = loopback_udp(&net);
    guard("rx opened", rx.opened()).await.expect("rx opened");
    let port = rx.local_port().expect("rx port");
    let tx = loopback_udp(&net);
    guard("tx opened", tx.opened()).await.expect("tx opened");
    let writer = tx.writable().expect("writable");
    let mut reader = rx.readable().expect("readable");

    // Permitted twice (the second time from the remembered decision): both arrive.
    for payload in [&b"one"[..], b"two"] {
        guard("write", writer.write(Datagram::to(payload, "127.0.0.1", port))).await.expect("permitted");
        let got = guard("read", reader.read()).await.expect("read").expect("a datagram");
        assert_eq!(&got.data[..], payload);
    }

    // The policy now denies this destination: the remembered grant must not be used.
    policy.deny(PermissionRequest::udp_write("127.0.0.1", port));
    let err = guard("denied write", writer.write(Datagram::to(&b"three"[..], "127.0.0.1", port)))
        .await
        .expect_err("denied after the policy changed");
    assert_eq!(err.kind(), ErrorName::SecurityError);

    // Nothing of it was sent: a marker from a socket of another network (whose policy still
    // allows this destination) is the next thing rx reads.
    let net2 = tcpudp_net_real::network(Policy::allow_all()).expect("network");
    let other = loopback_udp(&net2);
    guard("other opened", other.opened()).await.expect("other opened");
    let other_writer = other.writable().expect("writable");
    guard("marker", other_writer.write(Datagram::to(&b"marker"[..], "127.0.0.1", port))).await.expect("sent");
    let next = guard("marker read", reader.read()).await.expect("read").expect("marker");
    assert_eq!(&next.data[..], b"marker");

    // Only that write failed: the same writer still sends elsewhere.
    let other_port = other.local_port().expect("other port");
    guard("elsewhere", writer.write(Datagram::to(&b"four"[..], "127.0.0.1", other_port)))
        .await
        .expect("sent");
    let mut other_reader = other.readable().expect("readable");
    let got = guard("elsewhere read", other_reader.read()).await.expect("read").expect("a datagram");
    assert_eq!(&got.data[..], b"four");
}

/// A listening server on 127.0.0.1.
async fn loopback_server(net: &tcpudp::Network) -> TcpServerSocket {
    let options = TcpServerOptions { local_address: Some("127.0.0.1".into()), ..TcpServerOptions::default() };
    let server = TcpServerSocket::new(net, options).expect("server");
    guard("server opened", server.opened()).await.expect("listening");
    server
}

/// A client connected to `server` with `options`, and the server's end: both open.
async fn connect(
    net: &tcpudp::Network,
    server: &TcpServerSocket,
    options: TcpOptions,
) -> (TcpSocket, TcpSocket) {
    let port = server.local_port().expect("server port");
    let client = TcpSocket::new(net, "127.0.0.1", port, options).expect("client");
    let (accepted, opened) = guard("accept", async { tokio::join!(server.listen(), client.opened()) }).await;
    opened.expect("opened");
    (client, accepted.expect("accepted"))
}

// rule: TCP-CTOR-12, TCP-CTOR-16
#[tokio::test]
async fn tcp_options_read_back_when_asked_and_kept_after_close() {
    let net = tcpudp_net_real::network(Policy::allow_all()).expect("network");
    let server = loopback_server(&net).await;
    let (asked, accepted) =
        connect(&net, &server, TcpOptions { no_delay: false, ..TcpOptions::default() }).await;
    let open = asked.diag();
    assert!(open.transport_open);
    assert_eq!(open.options.no_delay, Some(false), "read back from the OS while open");
    assert_eq!(open.options.keep_alive, Some(false));
    let (a, b) = guard("close", async { tokio::join!(asked.close(), accepted.close()) }).await;
    a.expect("client closed");
    b.expect("server side closed");
    assert_eq!(asked.ready_state(), ReadyState::Closed);
    let closed = asked.diag();
    assert!(!closed.transport_open);
    assert_eq!(closed.options, open.options, "after close: the values last read");

    // A socket never asked reads nothing back, before or after close.
    let (silent, accepted) = connect(&net, &server, TcpOptions::default()).await;
    let (a, b) = guard("close", async { tokio::join!(silent.close(), accepted.close()) }).await;
    a.expect("client closed");
    b.expect("server side closed");
    assert_eq!(silent.diag().options, tcpudp::backend::TcpDiag::default());
}

// The constructor sends the SYN itself: on a current-thread runtime that is not polled while
// this test blocks, no driver can run, yet the connection reaches the listener's backlog.
// rule: TCP-CTOR-13
#[tokio::test]
async fn tcp_constructor_starts_the_connection_and_reports_opening() {
    let net = tcpudp_net_real::network(Policy::allow_all()).expect("network");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("raw listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("address").port();

    let sock = TcpSocket::new(&net, "127.0.0.1", port, TcpOptions::default()).expect("client");
    assert_eq!(sock.ready_state(), ReadyState::Opening, "the constructor returns in opening");
    // Bounded in count and time; the runtime is not polled in between (no await).
    let mut accepted = None;
    for _ in 0..2_000 {
        match listener.accept() {
            Ok((stream, _)) => {
                accepted = Some(stream);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    let accepted = accepted.expect("the constructor's SYN reached the backlog");
    assert_eq!(sock.ready_state(), ReadyState::Opening, "nothing is reported before the driver runs");
    guard("opened", sock.opened()).await.expect("opened");
    assert_eq!(sock.local_port(), Some(accepted.peer_addr().expect("peer").port()));
    sock.reset();
}

// A connect that fails inside the constructor's first poll (the local port is taken: bind fails
// at once) is still reported by the driver, after the constructor returned in "opening".
// rule: TCP-CTOR-13, TCP-OPEN-02
#[tokio::test]
async fn tcp_connect_failing_in_the_constructor_still_opens_then_fails() {
    let net = tcpudp_net_real::network(Policy::allow_all()).expect("network");
    let target = std::net::TcpListener::bind("127.0.0.1:0").expect("target");
    let port = target.local_addr().expect("address").port();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("taken");
    let local_port = taken.local_addr().expect("address").port();

    let options = TcpOptions {
        local_address: Some("127.0.0.1".into()),
        local_port: Some(local_port),
        ..TcpOptions::default()
    };
    let sock = TcpSocket::new(&net, "127.0.0.1", port, options).expect("client");
    assert_eq!(sock.ready_state(), ReadyState::Opening);
    let err = guard("opened", sock.opened()).await.expect_err("the local port is taken");
    assert_eq!(err.kind(), ErrorName::NetworkError);
    assert_eq!(err.cause(), Some(tcpudp_core::Cause::AddressInUse));
    assert_eq!(sock.ready_state(), ReadyState::Closed);
}

/// Counts wake-ups: stands in for the task of a reader that waits.
struct Count(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Count {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Lets the runtime run (a millisecond at a time, bounded) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("hang guard: {what}");
}

/// A waiting UDP reader is woken by the transport itself and receives the datagram on its own
/// poll (the driver does not run for it), and a readable dropped after it was woken hands the
/// wake-up to the driver, so the datagram is still received and queued.
// rule: UDP-READ-01, GEN-11
#[tokio::test]
async fn udp_waiting_reader_is_woken_by_the_transport_and_a_dropped_one_hands_over() {
    use std::pin::Pin;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::task::{Context, Waker};

    let net = tcpudp_net_real::network(Policy::allow_all()).expect("network");
    let (rx, mut readable, to) = open_receiver(&net).await;
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("tx");

    // The first datagram takes the usual path (the driver's registration stands until the
    // receive side is polled with the reader's route); after it the route is registered.
    tx.send_to(b"one", to).expect("send one");
    let got = guard("read one", readable.read()).await.expect("read").expect("a datagram");
    assert_eq!(&got.data[..], b"one");

    // The reader waits.
    let count = Arc::new(Count(0.into()));
    let waker = Waker::from(count.clone());
    {
        let mut read = readable.read();
        assert!(Pin::new(&mut read).poll(&mut Context::from_waker(&waker)).is_pending());
    }
    tx.send_to(b"two", to).expect("send two");
    until("the reader is woken", || count.0.load(Ordering::SeqCst) > 0).await;
    // Woken by the transport: the datagram is still the kernel's, the driver took nothing.
    let diag = rx.diag();
    assert_eq!((diag.queued_datagrams, diag.options.received), (0, 1), "the driver received it");

    // The woken reader goes away without reading: the driver takes the wake-up and receives.
    drop(readable);
    until("the driver receives", || rx.diag().queued_datagrams == 1).await;
    let mut readable = rx.readable().expect("a new readable");
    let got = guard("read two", readable.read()).await.expect("read").expect("a datagram");
    assert_eq!(&got.data[..], b"two");
}

/// A task awaiting `closed` during the closing handshake takes the driver's wake-ups: the peer's
/// FIN wakes it, and the driver does not run for it (the socket is still closing until the task
/// polls). A `closed` future dropped after it was woken hands the wake-up to the driver, so the
/// socket still closes.
// rule: TCP-CLOSE-01, GEN-11
#[tokio::test]
async fn tcp_closing_task_is_woken_by_the_transport_and_a_dropped_promise_hands_over() {
    use std::pin::Pin;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::task::{Context, Waker};

    let net = tcpudp_net_real::network(Policy::allow_all()).expect("network");
    let server = loopback_server(&net).await;
    let (client, accepted) = connect(&net, &server, TcpOptions::default()).await;

    let count = Arc::new(Count(0.into()));
    let waker = Waker::from(count.clone());
    {
        // The client closes (its FIN goes) and a task awaits its `closed`.
        let mut closed = client.close();
        assert!(Pin::new(&mut closed).poll(&mut Context::from_waker(&waker)).is_pending());
        assert_eq!(client.ready_state(), ReadyState::Closing);
        // The peer closes too: its FIN wakes the awaiting task, not the driver.
        guard("the peer closes", accepted.close()).await.expect("peer closed");
        until("the awaiting task is woken", || count.0.load(Ordering::SeqCst) > 0).await;
        assert_eq!(client.ready_state(), ReadyState::Closing, "the driver did not take the FIN");
    } // The woken future goes away without polling again.
    until("the driver finishes the close", || client.ready_state() == ReadyState::Closed).await;
    guard("closed", client.closed()).await.expect("closed cleanly");
}

/// A batched receive that comes back short ended at an empty queue, so the socket goes back to
/// waiting for the next edge without the system call that would only report EAGAIN: lock-step
/// datagrams cost one receive call each, not two. A burst is still taken whole, and nothing is
/// missed after the readiness was cleared that way (each lock-step read below would hang).
// rule: UDP-READ-01
#[tokio::test]
async fn udp_short_batch_clears_readiness_without_an_empty_receive() {
    const TRIPS: u64 = 50;
    let net = tcpudp_net_real::network(Policy::allow_all()).expect("network");
    let (rx, mut readable, to) = open_receiver(&net).await;
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("tx");
    for i in 0..TRIPS {
        // The reader waits before each datagram is sent, as a receiver that keeps up does.
        let mut read = std::pin::pin!(readable.read());
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "nothing was sent yet");
        tx.send_to(&i.to_be_bytes(), to).expect("send");
        let got = guard("lock-step read", read).await.expect("read").expect("a datagram");
        assert_eq!(&got.data[..], &i.to_be_bytes());
    }
    let calls = rx.diag().options.receive_calls.expect("the real backend counts its receive calls");
    // One per datagram, and a few for the first read's registration; a receive that finds the
    // queue empty before each datagram would make it 2 × TRIPS.
    assert!((TRIPS..TRIPS + 5).contains(&calls), "{calls} receive calls for {TRIPS} datagrams");

    // A burst: queued datagrams all arrive, in order.
    for i in 0..10u8 {
        tx.send_to(&[i; 3], to).expect("send");
    }
    for i in 0..10u8 {
        let got = guard("burst read", readable.read()).await.expect("read").expect("a datagram");
        assert_eq!(&got.data[..], &[i; 3]);
    }
    assert_eq!(rx.diag().options.received, TRIPS + 10);
}

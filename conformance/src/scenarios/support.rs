//! Helpers shared by `tcp.rs`, `server.rs` and `real_tcp_peers.rs`: raw peers the
//! library did not write (tokio sockets on real loopback, `turmoil::net` sockets in the simulator),
//! one-poll checks, read loops, deterministic data and small signals between a world's bodies.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::{BackendChoice, Ctx, World};
use tcpudp::{ErrorName, Network, Policy, SocketError, TcpReadable};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// A boxed error for world bodies.
pub type TestError = Box<dyn std::error::Error>;

/// A hang guard for worlds: 30 s of wall-clock time on real sockets (the simulator keeps its
/// simulated default, which costs no wall-clock time).
pub fn guard(world: &mut World) {
    if world.backend() == BackendChoice::Real {
        world.duration(Duration::from_secs(30));
    }
}

/// A second network of this host with another policy (the world's policy applies to `ctx.net`).
pub fn net_with(ctx: &Ctx, policy: Policy) -> Network {
    match ctx.backend() {
        BackendChoice::Real => tcpudp_net_real::network(policy).expect("real network"),
        BackendChoice::Sim => tcpudp_net_sim::network(&ctx.name, policy).expect("sim network"),
    }
}

/// Counts the wake-ups of the wakers it makes.
#[derive(Default)]
pub struct WakeCount(std::sync::atomic::AtomicUsize);

impl WakeCount {
    /// A new count at zero.
    pub fn new() -> std::sync::Arc<WakeCount> {
        std::sync::Arc::default()
    }

    /// A waker that adds one per wake-up.
    pub fn waker(self: &std::sync::Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }

    /// Wake-ups so far.
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits (1 ms steps of tokio time) until there were at least `n` wake-ups; callers bound it
    /// with [`within`].
    pub async fn at_least(&self, n: usize) {
        while self.get() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl std::task::Wake for WakeCount {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Polls `fut` once with a waker that does nothing: `Pending` or its output.
pub fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(fut).poll(&mut cx)
}

/// Polls `fut` once with the calling task's own waker (so a parked future wakes this task).
pub async fn poll_now<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// Awaits `fut` with a hang guard of `secs` seconds (tokio time: simulated in the simulator).
pub async fn within<F: Future>(secs: u64, what: &str, fut: F) -> Result<F::Output, TestError> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .map_err(|_| format!("hang guard: {what} did not finish within {secs} s").into())
}

/// Asserts `result` is an error named `name`.
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(result: Result<T, SocketError>, name: ErrorName) -> SocketError {
    match result {
        Err(e) => {
            assert_eq!(e.kind(), name, "expected {name:?}, got {e}");
            e
        }
        Ok(v) => panic!("expected {name:?}, got Ok({v:?})"),
    }
}

/// Reads chunks until done; an error ends it.
pub async fn read_to_end(reader: &mut TcpReadable) -> Result<Vec<u8>, SocketError> {
    let mut got = Vec::new();
    while let Some(chunk) = reader.read().await? {
        got.extend_from_slice(&chunk);
    }
    Ok(got)
}

/// Reads until `n` bytes arrived (or the stream ended first).
pub async fn read_n(reader: &mut TcpReadable, n: usize) -> Result<Vec<u8>, SocketError> {
    let mut got = Vec::new();
    while got.len() < n {
        match reader.read().await? {
            Some(chunk) => got.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(got)
}

/// `len` deterministic pseudo-random bytes (xorshift64*), different for each `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A one-way event between bodies of one world (set once, awaited by anyone).
#[derive(Clone)]
pub struct Flag(Rc<tokio::sync::watch::Sender<bool>>);

impl Default for Flag {
    fn default() -> Self {
        Flag(Rc::new(tokio::sync::watch::channel(false).0))
    }
}

impl Flag {
    /// Raises the flag.
    pub fn set(&self) {
        self.0.send_replace(true);
    }

    /// Waits until the flag is raised.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Whether it is raised.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }
}

/// A value handed from one body to another.
pub struct Slot<T>(Rc<RefCell<Option<T>>>, Flag);

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot(self.0.clone(), self.1.clone())
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot(Rc::new(RefCell::new(None)), Flag::default())
    }
}

impl<T: Clone> Slot<T> {
    /// Stores the value and wakes the waiters.
    pub fn put(&self, value: T) {
        *self.0.borrow_mut() = Some(value);
        self.1.set();
    }

    /// Waits for the value.
    pub async fn get(&self) -> T {
        self.1.wait().await;
        self.0.borrow().clone().expect("set with the flag")
    }
}

/// A listening socket the library did not make: tokio on 127.0.0.1 (real), `turmoil::net` (sim).
pub enum RawListener {
    /// Real loopback.
    Real(tokio::net::TcpListener),
    /// Simulated.
    Sim(turmoil::net::TcpListener),
}

impl RawListener {
    /// Binds an ephemeral port (127.0.0.1 on real sockets, the host's wildcard in simulation).
    pub async fn bind(ctx: &Ctx) -> io::Result<RawListener> {
        Ok(match ctx.backend() {
            BackendChoice::Real => RawListener::Real(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
            BackendChoice::Sim => RawListener::Sim(turmoil::net::TcpListener::bind("0.0.0.0:0").await?),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        match self {
            RawListener::Real(l) => l.local_addr().expect("bound").port(),
            RawListener::Sim(l) => l.local_addr().expect("bound").port(),
        }
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<(RawStream, SocketAddr)> {
        match self {
            RawListener::Real(l) => l.accept().await.map(|(s, a)| (RawStream::Real(s), a)),
            RawListener::Sim(l) => l.accept().await.map(|(s, a)| (RawStream::Sim(s), a)),
        }
    }
}

/// A connection the library did not make.
pub enum RawStream {
    /// Real loopback.
    Real(tokio::net::TcpStream),
    /// Simulated.
    Sim(turmoil::net::TcpStream),
}

impl RawStream {
    /// Connects to `host`:`port` (`host` as `ctx.address_of` gives it).
    pub async fn connect(ctx: &Ctx, host: &str, port: u16) -> io::Result<RawStream> {
        let addr: SocketAddr = format!("{}:{port}", ctx.address_of(host))
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Self::connect_addr(ctx, addr).await
    }

    /// Connects to `addr`.
    pub async fn connect_addr(ctx: &Ctx, addr: SocketAddr) -> io::Result<RawStream> {
        Ok(match ctx.backend() {
            BackendChoice::Real => RawStream::Real(tokio::net::TcpStream::connect(addr).await?),
            BackendChoice::Sim => RawStream::Sim(turmoil::net::TcpStream::connect(addr).await?),
        })
    }

    /// Our address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            RawStream::Real(s) => s.local_addr(),
            RawStream::Sim(s) => s.local_addr(),
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            RawStream::Real(s) => s.peer_addr(),
            RawStream::Sim(s) => s.peer_addr(),
        }
    }

    /// Non-blocking write.
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            RawStream::Real(s) => s.try_write(data),
            RawStream::Sim(s) => s.try_write(data),
        }
    }

    /// Waits until a write could make progress.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            RawStream::Real(s) => s.writable().await,
            RawStream::Sim(s) => s.writable().await,
        }
    }

    /// Waits for data without consuming it; 0 at end of stream.
    pub async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            RawStream::Real(s) => s.peek(buf).await,
            RawStream::Sim(s) => s.peek(buf).await,
        }
    }

    /// Reads until end of stream.
    pub async fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_to_end(&mut out).await?;
        Ok(out)
    }

    /// Reads exactly `n` bytes.
    pub async fn read_n(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0; n];
        self.read_exact(&mut out).await?;
        Ok(out)
    }

    /// Ends the connection with RST. Waits first until data we have not read is here: a simulated
    /// stream sends RST only when dropped with unread data (real: SO_LINGER 0 then close).
    pub async fn reset(mut self) -> io::Result<()> {
        let mut one = [0u8; 1];
        let n = self.peek(&mut one).await?;
        if n == 0 {
            return Err(io::Error::other("reset needs unread data from the library first"));
        }
        if let RawStream::Real(s) = &self {
            s.set_zero_linger()?;
        }
        drop(self);
        Ok(())
    }
}

impl AsyncRead for RawStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Real(s) => Pin::new(s).poll_read(cx, buf),
            RawStream::Sim(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RawStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RawStream::Real(s) => Pin::new(s).poll_write(cx, data),
            RawStream::Sim(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Real(s) => Pin::new(s).poll_flush(cx),
            RawStream::Sim(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Real(s) => Pin::new(s).poll_shutdown(cx),
            RawStream::Sim(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A refused port: real, a listener bound and dropped at once; sim, a port nothing binds on
/// `host` (the simulator assigns ephemeral ports from 49152 up, so 9 is never bound).
pub async fn refused_port(ctx: &Ctx) -> u16 {
    match ctx.backend() {
        BackendChoice::Real => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("bound").port()
        }
        BackendChoice::Sim => 9,
    }
}

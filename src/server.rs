//! `TCPServerSocket`: read RULES.md §5 and DESIGN §5 before editing.
//!
//! The listening socket is created during "opening" and accepts into the OS backlog from then on
//! (A-40); the library takes connections out of the backlog only while a `listen()` waits, so a
//! connection nobody asked for yet stays where the OS keeps it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tcpudp_core::checks;
use tcpudp_core::options::TcpServerOptions;
use tcpudp_core::{
    AcceptedConnection, AppCommand, ConnId, Event, Input, IoCommand, IoEvent, ListenId, Output, ReadyState,
    SocketError, TcpServerMachine,
};

use crate::backend::cause_of;
use crate::faults::FaultListener;
use crate::network::Network;
use crate::shared::{
    hold_released, lazy_now, lock, take_step, Mutex, PromiseSource, PromiseWaiters, SocketPromise, StateLog,
    Which,
};
use crate::tcp::{TcpSocket, Transport};

/// A `TCPServerSocket`.
///
/// ```no_run
/// # async fn demo(net: tcpudp::Network) -> Result<(), tcpudp::SocketError> {
/// use tcpudp::{TcpServerOptions, TcpServerSocket};
/// let server = TcpServerSocket::new(&net, TcpServerOptions::default())?;
/// server.opened().await?;
/// println!("listening on port {:?}", server.local_port());
/// let conn = server.listen().await?; // one connection per call, in call order
/// conn.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TcpServerSocket {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<ServerShared>,
}

pub(crate) struct ServerShared {
    id: u64,
    net: Network,
    local_address: Option<String>,
    local_port: Option<u16>,
    address_reuse: bool,
    use_secure_transport: bool,
    inner: Mutex<Inner>,
    span: tracing::Span,
}

struct Inner {
    machine: TcpServerMachine,
    io: ServerIo,
    promises: PromiseWaiters,
    listens: IdMap<u64, ListenSlot>,
    next_listen: u64,
    state_log: StateLog,
}

#[derive(Default)]
struct ServerIo {
    listener: Option<FaultListener>,
    hold: Option<crate::faults::HoldTicket>,
    accept_interest: bool,
    held: IdMap<ConnId, Transport>,
    next_conn: u64,
    reports: VecDeque<IoEvent>,
    driver: Option<Waker>,
    released: bool,
    /// TLS hook (issue #7): handshakes of accepted connections, for a TLS server (EXT-08).
    tls: Option<crate::tls::TlsAcceptor>,
}

#[derive(Default)]
struct ListenSlot {
    waker: Option<Waker>,
    result: Option<Result<AcceptedConnection, SocketError>>,
}

impl TcpServerSocket {
    /// `new TCPServerSocket(options)`. Synchronous errors in the spec's order (SRV-CTOR-10):
    /// `SecurityError`, `InvalidAccessError` (not a local address), `NotSupportedError` (TLS).
    pub fn new(net: &Network, options: TcpServerOptions) -> Result<Self, SocketError> {
        let spec = checks::server_spec(&mut net.checks(), &options)?;
        let id = net.next_id();
        let span = tracing::debug_span!(
            "socket",
            id,
            kind = "tcp-server",
            backend = net.backend_kind().as_str(),
            local = tracing::field::Empty,
        );
        let machine = TcpServerMachine::new(net.now(), spec);
        let shared = Arc::new(ServerShared {
            id,
            net: net.clone(),
            local_address: options.local_address.clone(),
            local_port: options.local_port.filter(|&p| p != 0),
            address_reuse: options.address_reuse,
            use_secure_transport: options.use_secure_transport,
            inner: Mutex::new(Inner {
                machine,
                io: ServerIo {
                    hold: net.faults().hold_ticket(),
                    tls: options.use_secure_transport.then(|| crate::tls::TlsAcceptor::new(net)),
                    ..ServerIo::default()
                },
                promises: PromiseWaiters::default(),
                listens: IdMap::default(),
                next_listen: 0,
                state_log: StateLog::new(ReadyState::Opening),
            }),
            span,
        });
        lock(&shared.inner).process(&shared);
        net.spawn(drive(shared.clone()));
        Ok(TcpServerSocket { handle: Arc::new(Handle { shared }) })
    }

    fn shared(&self) -> &Arc<ServerShared> {
        &self.handle.shared
    }

    /// `readyState`: "opening", "open" or "closed".
    pub fn ready_state(&self) -> ReadyState {
        lock(&self.shared().inner).machine.ready_state()
    }

    /// `localAddress` as given; `None` when absent (any IPv4 address, SRV-CTOR-02).
    pub fn local_address(&self) -> Option<String> {
        self.shared().local_address.clone()
    }

    /// `localPort`: as given, else the bound port once listening (A-07).
    pub fn local_port(&self) -> Option<u16> {
        if let Some(port) = self.shared().local_port {
            return Some(port);
        }
        lock(&self.shared().inner).machine.local_addr().map(|a| a.port())
    }

    /// `addressReuse`.
    pub fn address_reuse(&self) -> bool {
        self.shared().address_reuse
    }

    /// `useSecureTransport`.
    pub fn use_secure_transport(&self) -> bool {
        self.shared().use_secure_transport
    }

    /// `opened`.
    pub fn opened(&self) -> SocketPromise {
        SocketPromise::new(self.shared().clone(), Which::Opened)
    }

    /// `closed`.
    pub fn closed(&self) -> SocketPromise {
        SocketPromise::new(self.shared().clone(), Which::Closed)
    }

    /// `listen()`: the next connection. Calls are served in call order (SRV-LISTEN-03); on a closed
    /// server the future rejects `InvalidStateError`. Dropping the future gives up its place and
    /// never loses a connection (GEN-11).
    pub fn listen(&self) -> ListenFuture {
        let shared = self.shared().clone();
        let id = {
            let mut inner = lock(&shared.inner);
            inner.next_listen += 1;
            let id = inner.next_listen;
            inner.listens.insert(id, ListenSlot::default());
            inner.feed(&shared.net, Input::App(AppCommand::Listen { id: ListenId(id) }));
            inner.process(&shared);
            id
        };
        ListenFuture { shared, id, done: false }
    }

    /// `close()`: stops listening; accepted sockets are not affected (SRV-CLOSE-02).
    pub fn close(&self) -> SocketPromise {
        self.shared().app_command(AppCommand::Close);
        self.closed()
    }

    /// The readyState log and queue sizes.
    pub fn diag(&self) -> ServerDiag {
        let inner = lock(&self.shared().inner);
        ServerDiag {
            state_log: inner.state_log.to_vec(),
            pending_listens: inner.machine.pending_listens(),
            listener_open: inner.io.listener.is_some(),
        }
    }
}

impl std::fmt::Debug for TcpServerSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpServerSocket")
            .field("id", &self.shared().id)
            .field("ready_state", &self.ready_state())
            .finish()
    }
}

/// What [`TcpServerSocket::diag`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerDiag {
    /// Every readyState the server has had.
    pub state_log: Vec<ReadyState>,
    /// `listen()` calls waiting.
    pub pending_listens: usize,
    /// Whether the library still holds the listening socket.
    pub listener_open: bool,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // GEN-12: dropping the server stops listening; accepted sockets live on.
        self.shared.app_command(AppCommand::Close);
    }
}

impl ServerShared {
    fn app_command(&self, cmd: AppCommand) {
        let mut inner = lock(&self.inner);
        inner.feed(&self.net, Input::App(cmd));
        inner.process(self);
    }
}

impl PromiseSource for ServerShared {
    fn poll_promise(&self, which: Which, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let outcome = match which {
            Which::Opened => inner.machine.opened(),
            Which::Closed => inner.machine.closed(),
        };
        inner.promises.poll(which, outcome, cx)
    }
}

impl Inner {
    /// Feeds the machine one input. A server arms no timers: the clock is handed over lazily
    /// and never read.
    fn feed(&mut self, net: &Network, input: Input) {
        let _ = self.machine.handle_lazy(&mut lazy_now(net, &mut None), input);
    }

    fn process(&mut self, shared: &ServerShared) {
        let mut budget = 64;
        while take_step(&mut budget, self.io.driver.as_ref()) {
            while let Some(out) = self.machine.poll_output() {
                self.apply(shared, out);
            }
            let Some(waker) = self.io.driver.clone() else { break };
            let mut cx = Context::from_waker(&waker);
            // fault.hold_open(): listening is reported only after release.
            if !hold_released(&mut self.io.hold, &mut cx) {
                break;
            }
            let Some(report) = self.io.reports.pop_front().or_else(|| self.io.poll_accept(&mut cx)) else {
                break;
            };
            self.feed(&shared.net, Input::Io(report));
        }
        while let Some(out) = self.machine.poll_output() {
            self.apply(shared, out);
        }
    }

    fn apply(&mut self, shared: &ServerShared, out: Output) {
        match out {
            Output::Io(IoCommand::Listen { local, address_reuse, backlog }) => {
                match shared.net.backend().listen(local, address_reuse, backlog) {
                    Ok(listener) => {
                        let report = match listener.local_addr() {
                            Ok(local) => IoEvent::Listening { local },
                            Err(e) => IoEvent::ListenFailed { cause: cause_of(&e) },
                        };
                        self.io.listener = Some(listener);
                        self.io.reports.push_back(report);
                    }
                    Err(cause) => self.io.reports.push_back(IoEvent::ListenFailed { cause }),
                }
            }
            Output::Io(IoCommand::AcceptInterest(on)) => self.io.accept_interest = on,
            Output::Io(IoCommand::CloseConnection { conn }) => {
                self.io.held.remove(&conn);
                if let Some(tls) = &mut self.io.tls {
                    tls.take_alpn(conn); // TLS hook
                }
            }
            Output::Io(IoCommand::Close) => {
                self.io.tls = None; // TLS hook: handshakes in progress end with the server.
                self.io.listener = None;
                self.io.accept_interest = false;
                self.io.held.clear();
                self.io.released = true;
            }
            Output::Io(_) => {}
            Output::Event(Event::StateChanged { from, to }) => {
                tracing::debug!(parent: &shared.span, %from, %to, "ready_state");
                self.state_log.push(to);
            }
            Output::Event(Event::Opened(result)) => {
                if let Some(local) = self.machine.local_addr() {
                    shared.span.record("local", tracing::field::display(local));
                }
                tracing::debug!(parent: &shared.span, ok = result.is_ok(), "opened");
                self.promises.opened.wake_all();
            }
            Output::Event(Event::Closed(result)) => {
                tracing::debug!(parent: &shared.span, ok = result.is_ok(), "closed");
                self.promises.closed.wake_all();
            }
            Output::Event(Event::ListenSettled { id, result }) => match self.listens.get_mut(&id.0) {
                Some(slot) => {
                    slot.result = Some(result);
                    if let Some(w) = slot.waker.take() {
                        w.wake();
                    }
                }
                None => {
                    // The future is gone: give the connection to the next listen (GEN-11).
                    if let Ok(conn) = result {
                        self.return_connection(shared, conn);
                    }
                }
            },
            Output::Event(_) => {}
        }
    }

    fn return_connection(&mut self, shared: &ServerShared, conn: AcceptedConnection) {
        let cmd = AppCommand::ReturnConnection { conn: conn.conn, local: conn.local, remote: conn.remote };
        self.feed(&shared.net, Input::App(cmd));
    }
}

impl ServerIo {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Option<IoEvent> {
        let listener = self.listener.as_mut()?;
        if let Poll::Ready(e) = listener.poll_error(cx) {
            return Some(IoEvent::Failed { cause: cause_of(&e) });
        }
        // TLS hook (issue #7, EXT-08): a connection is reported once its handshake settles (in
        // completion order); a failed or timed-out handshake is an unservable connection.
        let mut alpn = None;
        let next = match self.tls.as_mut().and_then(|tls| tls.poll(cx)) {
            Some(Ok((transport, negotiated))) => {
                alpn = negotiated;
                Poll::Ready(Ok(Transport::Session(transport)))
            }
            Some(Err(cause)) => return Some(IoEvent::AcceptFailed { cause }),
            None if !self.accept_interest => return None,
            None => match &mut self.tls {
                Some(tls) => {
                    if tls.has_room() {
                        match listener.poll_accept(cx) {
                            Poll::Ready(Ok(transport)) => {
                                // Its handshake starts; poll again for it and the next connection.
                                tls.admit(Box::new(transport));
                                cx.waker().wake_by_ref();
                            }
                            Poll::Ready(Err(e)) => {
                                return Some(IoEvent::AcceptFailed { cause: cause_of(&e) })
                            }
                            Poll::Pending => {}
                        }
                    }
                    return None;
                }
                None => listener.poll_accept(cx).map_ok(Transport::Plain),
            },
        };
        match next {
            Poll::Ready(Ok(transport)) => {
                match (transport.as_dyn().local_addr(), transport.as_dyn().peer_addr()) {
                    (Ok(local), Ok(remote)) => {
                        self.next_conn += 1;
                        let conn = ConnId(self.next_conn);
                        self.held.insert(conn, transport);
                        if let Some(tls) = &mut self.tls {
                            tls.record_alpn(conn, alpn); // TLS hook
                        }
                        Some(IoEvent::Accepted { conn, local, remote })
                    }
                    (Err(e), _) | (_, Err(e)) => Some(IoEvent::AcceptFailed { cause: cause_of(&e) }),
                }
            }
            Poll::Ready(Err(e)) => Some(IoEvent::AcceptFailed { cause: cause_of(&e) }),
            Poll::Pending => None,
        }
    }
}

async fn drive(shared: Arc<ServerShared>) {
    std::future::poll_fn(|cx| {
        let mut inner = lock(&shared.inner);
        if !inner.io.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            inner.io.driver = Some(cx.waker().clone());
        }
        inner.process(&shared);
        if inner.machine.ready_state() == ReadyState::Closed && inner.io.released {
            inner.io.driver = None;
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await
}

/// The future of [`TcpServerSocket::listen`].
#[must_use = "the listen() call is made anyway; await this to get the connection"]
pub struct ListenFuture {
    shared: Arc<ServerShared>,
    id: u64,
    done: bool,
}

impl Future for ListenFuture {
    type Output = Result<TcpSocket, SocketError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let shared = self.shared.clone();
        let mut inner = lock(&shared.inner);
        let Some(slot) = inner.listens.get_mut(&self.id) else {
            return Poll::Ready(Err(
                SocketError::invalid_state().with_message("listen() polled after completion")
            ));
        };
        match slot.result.take() {
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Some(result) => {
                inner.listens.remove(&self.id);
                self.done = true;
                let conn = match result {
                    Ok(conn) => conn,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                let Some(transport) = inner.io.held.remove(&conn.conn) else {
                    return Poll::Ready(Err(SocketError::network(tcpudp_core::Cause::Other)));
                };
                let spec = inner.machine.accepted_spec(&conn);
                let alpn = inner.io.tls.as_mut().and_then(|tls| tls.take_alpn(conn.conn)); // TLS hook
                drop(inner);
                Poll::Ready(Ok(TcpSocket::accepted(&shared.net, spec, transport, alpn)))
            }
        }
    }
}

impl Drop for ListenFuture {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let shared = self.shared.clone();
        let mut inner = lock(&shared.inner);
        let Some(slot) = inner.listens.remove(&self.id) else { return };
        match slot.result {
            Some(Ok(conn)) => inner.return_connection(&shared, conn),
            Some(Err(_)) => {}
            None => {
                inner.feed(&shared.net, Input::App(AppCommand::CancelListen { id: ListenId(self.id) }));
            }
        }
        inner.process(&shared);
    }
}

/// The `listen()` calls or accepted connections a server holds, by id, in id order.
///
/// Ids come in rising order, so an entry goes to the back, and a lookup is a binary search over
/// the few entries a server holds at a time: a `BTreeMap` cost its node searches and rebalancing
/// for every connection (issue #6, tcp-connect: ~200 instructions per connection for the two).
struct IdMap<K, V> {
    entries: VecDeque<(K, V)>,
}

impl<K, V> Default for IdMap<K, V> {
    fn default() -> Self {
        IdMap { entries: VecDeque::new() }
    }
}

impl<K: Ord + Copy, V> IdMap<K, V> {
    fn insert(&mut self, key: K, value: V) {
        match self.entries.back() {
            Some((last, _)) if *last >= key => match self.position(&key) {
                Ok(i) => self.entries[i].1 = value,
                Err(i) => self.entries.insert(i, (key, value)),
            },
            _ => self.entries.push_back((key, value)),
        }
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.position(key).ok()?;
        Some(&mut self.entries[i].1)
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        // Usually the oldest entry (calls and connections are served in order): taken from the
        // front without a search, and without the general remove's code, which is several times
        // the size (issue #6: the code a connection runs costs as much as its instructions).
        if self.entries.front().is_some_and(|(k, _)| k == key) {
            return self.entries.pop_front().map(|(_, v)| v);
        }
        let i = self.position(key).ok()?;
        self.entries.remove(i).map(|(_, v)| v)
    }

    /// Where `key` is (`Ok`), or where it would go (`Err`).
    fn position(&self, key: &K) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.cmp(key))
    }

    fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::IdMap;

    #[test]
    fn an_id_map_keeps_id_order_and_its_room() {
        let mut map = IdMap::default();
        for id in [1u64, 2, 3, 5] {
            map.insert(id, id * 10);
        }
        map.insert(4, 40); // out of order: goes between
        map.insert(2, 21); // again: replaces
        assert_eq!(
            map.entries.iter().copied().collect::<Vec<_>>(),
            [(1, 10), (2, 21), (3, 30), (4, 40), (5, 50)]
        );
        assert_eq!(map.get_mut(&3).map(|v| *v), Some(30));
        assert_eq!(map.get_mut(&6), None);
        assert_eq!(map.remove(&1), Some(10));
        assert_eq!(map.remove(&4), Some(40));
        assert_eq!(map.remove(&4), None);
        assert_eq!(map.entries.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 3, 5]);
        let room = map.entries.capacity();
        map.clear();
        map.insert(7, 70);
        assert_eq!(map.remove(&7), Some(70));
        assert_eq!(map.entries.capacity(), room, "emptied, it keeps its room");
    }
}

//! Real UDP sockets. Read DESIGN §3.6, §3.8, §6 and RULES.md UDP-CTOR-22, UDP-READ-04,
//! UDP-WRITE-07/12/14, UDP-MCAST-*, AMB-09, AMB-32, AMB-33, AMB-35, AMB-46 and AMB-58 before editing.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::task::{Context, Poll};

use bytes::Bytes;
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockRef, Socket, Type};
use tcpudp::backend::{cause_of, RecvMeta, UdpBind, UdpDiag, UdpTransport};
use tcpudp_core::Cause;
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::runtime::Handle;

use crate::os;

/// Creates and binds a UDP socket with every option of `bind` applied first.
pub(crate) fn bind(handle: &Handle, bind: UdpBind) -> Result<Box<dyn UdpTransport>, Cause> {
    match open(handle, bind) {
        Ok(socket) => Ok(Box::new(socket)),
        Err(err) => Err(cause_of(&err)),
    }
}

fn open(handle: &Handle, bind: UdpBind) -> io::Result<RealUdp> {
    let v6 = bind.local.is_ipv6();
    let socket = Socket::new(Domain::for_address(bind.local), dgram_type(), Some(Protocol::UDP))?;
    // Linux shares a UDP port between sockets that all set SO_REUSEADDR (AMB-46). For an
    // ephemeral port it is set only after the bind: with SO_REUSEADDR already on, the kernel's
    // port search skips nothing bound with SO_REUSEADDR, so two unrelated sockets could get the
    // same ephemeral port (measured: ~5% of 3,000 binds) and unicast would reach only one.
    let ephemeral = bind.local.port() == 0;
    if bind.config.address_reuse && !ephemeral {
        socket.set_reuse_address(true)?; // off on a new socket
    }
    if let Some(size) = bind.config.send_buffer_size {
        socket.set_send_buffer_size(size)?;
    }
    if let Some(size) = bind.config.receive_buffer_size {
        socket.set_recv_buffer_size(size)?;
    }
    let interface = bind.multicast_interface.map(|ip| ip.to_canonical());
    let membership = if v6 {
        socket.set_only_v6(true)?;
        socket.set_multicast_loop_v6(bind.multicast_loopback)?;
        socket.set_multicast_hops_v6(bind.multicast_ttl)?;
        let index = match interface {
            Some(ip) => os::interface_index_of(ip)?,
            None => 0,
        };
        if index != 0 {
            socket.set_multicast_if_v6(index)?;
        }
        #[cfg(target_os = "linux")]
        if let Err(err) = socket.set_multicast_all_v6(false) {
            // IPV6_MULTICAST_ALL exists since Linux 4.20; older kernels deliver as before.
            tracing::debug!(error = %err, "IPV6_MULTICAST_ALL=0 not supported");
        }
        MulticastInterface::Index(index)
    } else {
        socket.set_multicast_loop_v4(bind.multicast_loopback)?;
        socket.set_multicast_ttl_v4(bind.multicast_ttl)?;
        #[cfg(target_os = "linux")]
        socket.set_multicast_all_v4(false)?;
        match interface {
            Some(IpAddr::V4(ip)) => {
                socket.set_multicast_if_v4(&ip)?;
                MulticastInterface::Address(ip)
            }
            Some(ip @ IpAddr::V6(_)) => {
                let index = os::interface_index_of(ip)?;
                os::set_multicast_if_v4_index(&socket, index)?;
                MulticastInterface::Index(index)
            }
            None => MulticastInterface::Address(Ipv4Addr::UNSPECIFIED),
        }
    };
    #[cfg(unix)]
    os::enable_drop_count(&socket)?;
    if !cfg!(any(target_os = "linux", target_os = "android")) {
        socket.set_nonblocking(true)?; // Linux and Android made it non-blocking already
    }
    socket.bind(&bind.local.into())?;
    if ephemeral && bind.config.address_reuse {
        socket.set_reuse_address(true)?;
    }
    let _runtime = handle.enter();
    let socket = UdpSocket::from_std(socket.into())?;
    Ok(RealUdp {
        socket,
        v6,
        interface,
        membership,
        joined: Vec::new(),
        received: 0,
        receive_calls: 0,
        drops: DropCounter::default(),
        #[cfg(unix)]
        slab: None,
        #[cfg(any(target_os = "linux", target_os = "android"))]
        batch: Vec::new(),
    })
}

/// A datagram socket type; on Linux non-blocking from the start (SOCK_NONBLOCK saves two `fcntl`
/// calls per socket, as for streams).
fn dgram_type() -> Type {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return Type::DGRAM.nonblocking();
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return Type::DGRAM;
}

/// The interface used for memberships (and already applied as IP_MULTICAST_IF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MulticastInterface {
    /// IPv4 socket, interface named by address; 0.0.0.0 is the OS's choice.
    Address(Ipv4Addr),
    /// Interface index; 0 is the OS's choice.
    Index(u32),
}

/// Extends the kernel's 32-bit SO_RXQ_OVFL counter to a monotonic 64-bit total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DropCounter {
    last: u32,
    total: u64,
}

impl DropCounter {
    /// Takes the counter carried by one datagram (absent: no drop had happened when it was
    /// queued) and returns the running total.
    fn update(&mut self, carried: Option<u32>) -> u64 {
        if let Some(now) = carried {
            self.total += u64::from(now.wrapping_sub(self.last));
            self.last = now;
        }
        self.total
    }
}

/// One bound UDP socket.
#[derive(Debug)]
pub(crate) struct RealUdp {
    socket: UdpSocket,
    v6: bool,
    /// The configured multicast interface (canonical), for `diag`.
    interface: Option<IpAddr>,
    membership: MulticastInterface,
    /// Groups this socket joined: joining twice and leaving a group never joined are no-ops
    /// (UDP-MCAST-05).
    joined: Vec<IpAddr>,
    received: u64,
    /// Receive system calls made (`recvmmsg` on Linux), for `diag`.
    receive_calls: u64,
    drops: DropCounter,
    /// Where datagrams are received while they keep coming; `None` once a receive found nothing.
    #[cfg(unix)]
    slab: Option<bytes::BytesMut>,
    /// Datagrams one batched receive took beyond the first, last one first (handed out by the
    /// next polls, in arrival order, before the socket is read again).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    batch: Vec<(Bytes, os::Datagram)>,
}

impl Drop for RealUdp {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(slab) = self.slab.take() {
            slab::give_back(slab);
        }
    }
}

impl RealUdp {
    fn membership(&self, group: IpAddr, join: bool) -> io::Result<()> {
        let socket = SockRef::from(&self.socket);
        match (group, self.membership) {
            (IpAddr::V4(group), MulticastInterface::Address(interface)) if !self.v6 => {
                if join {
                    socket.join_multicast_v4(&group, &interface)
                } else {
                    socket.leave_multicast_v4(&group, &interface)
                }
            }
            (IpAddr::V4(group), MulticastInterface::Index(index)) if !self.v6 => {
                let interface = InterfaceIndexOrAddress::Index(index);
                if join {
                    socket.join_multicast_v4_n(&group, &interface)
                } else {
                    socket.leave_multicast_v4_n(&group, &interface)
                }
            }
            (IpAddr::V6(group), MulticastInterface::Index(index)) if self.v6 => {
                if join {
                    socket.join_multicast_v6(&group, index)
                } else {
                    socket.leave_multicast_v6(&group, index)
                }
            }
            _ => Err(family_mismatch()),
        }
    }
}

/// The error of a group of the other address family (EAFNOSUPPORT, so `cause_of` says
/// `FamilyMismatch`).
fn family_mismatch() -> io::Error {
    #[cfg(unix)]
    return io::Error::from_raw_os_error(libc::EAFNOSUPPORT);
    #[cfg(not(unix))]
    return io::Error::new(io::ErrorKind::InvalidInput, "group of the other address family");
}

impl UdpTransport for RealUdp {
    #[cfg(unix)]
    fn poll_recv_from(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<RecvMeta>> {
        use std::os::fd::AsRawFd;
        use tokio::io::Interest;

        let fd = self.socket.as_raw_fd();
        loop {
            std::task::ready!(self.socket.poll_recv_ready(cx))?;
            // SAFETY: recv_datagram only writes into these bytes and reports how many it
            // initialised; nothing de-initialises them.
            let unfilled = unsafe { buf.unfilled_mut() };
            let calls = &mut self.receive_calls;
            match self.socket.try_io(Interest::READABLE, || {
                *calls += 1;
                os::recv_datagram(fd, unfilled)
            }) {
                Ok(datagram) => {
                    // SAFETY: the kernel wrote `len` payload bytes at the start of the unfilled part.
                    unsafe { buf.assume_init(datagram.len) };
                    buf.advance(datagram.len);
                    self.received += 1;
                    let dropped_total = self.drops.update(datagram.drops);
                    return Poll::Ready(Ok(RecvMeta {
                        len: datagram.len,
                        from: datagram.from,
                        dropped_total,
                        registered: false,
                    }));
                }
                // Readiness was stale: tokio cleared it, wait for the next edge.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                // Includes ICMP-derived ECONNREFUSED / EHOSTUNREACH / ENETUNREACH, which the API
                // layer skips as transient (AMB-35).
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    /// Hands each payload out as a slice of the socket's receive slab (no allocation per datagram
    /// while they keep coming). On Linux and Android one `recvmmsg` takes up to `os::BATCH`
    /// queued datagrams and the next polls hand them out in order; elsewhere each datagram is
    /// received straight into the slab.
    #[cfg(unix)]
    fn poll_recv_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Bytes, RecvMeta)>> {
        use std::os::fd::AsRawFd;
        use tokio::io::Interest;

        let fd = self.socket.as_raw_fd();
        // tokio's task budget, as `poll_recv_ready` would take it: a flood still makes the task
        // yield now and then.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            let received = match self.batch.pop() {
                Some(taken) => Ok(taken),
                None => {
                    // Try first (`try_io` receives only when tokio holds readiness, and clears it
                    // on EAGAIN); register for the next edge only when that finds nothing.
                    let slab = self.slab.get_or_insert_with(slab::take);
                    let batch = &mut self.batch;
                    let calls = &mut self.receive_calls;
                    let mut drained = None;
                    let received = self.socket.try_io(Interest::READABLE, || {
                        *calls += 1;
                        let first = slab::receive_batch(slab, fd, batch)?;
                        if batch.len() + 1 < os::BATCH {
                            // A short batch ended at an empty queue: the EAGAIN the next receive
                            // would get is known now, so tokio clears the readiness this call
                            // consumed (not a newer one: it checks the event's tick) and the
                            // socket waits for the next edge without that second system call
                            // (tokio does the same for a short stream read, tokio#5866).
                            drained = Some(first);
                            return Err(io::ErrorKind::WouldBlock.into());
                        }
                        Ok(first)
                    });
                    match drained {
                        Some(first) => Ok(first),
                        None => received,
                    }
                }
            };
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            let received = {
                let slab = self.slab.get_or_insert_with(slab::take);
                let calls = &mut self.receive_calls;
                self.socket.try_io(Interest::READABLE, || {
                    *calls += 1;
                    tcpudp::backend::with_scratch(|scratch| slab::receive(slab, scratch, fd))
                })
            };
            match received {
                Ok((data, datagram)) => {
                    coop.made_progress();
                    self.received += 1;
                    let dropped_total = self.drops.update(datagram.drops);
                    let meta =
                        RecvMeta { len: datagram.len, from: datagram.from, dropped_total, registered: false };
                    return Poll::Ready(Ok((data, meta)));
                }
                // Not readable (or readiness was stale, which tokio cleared): wait for the next
                // edge, or receive again if one came in the meantime.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing queued: the socket may now stay idle for long, so its slab goes
                    // back to the thread (see `slab`).
                    if let Some(slab) = self.slab.take() {
                        slab::give_back(slab);
                    }
                    std::task::ready!(self.socket.poll_recv_ready(cx))?;
                }
                // Includes ICMP-derived errors, which the API layer skips as transient (AMB-35).
                Err(err) => {
                    coop.made_progress();
                    return Poll::Ready(Err(err));
                }
            }
        }
    }

    #[cfg(not(unix))]
    fn poll_recv_from(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<RecvMeta>> {
        let before = buf.filled().len();
        let from = std::task::ready!(self.socket.poll_recv_from(cx, buf))?;
        self.received += 1;
        let len = buf.filled().len() - before;
        Poll::Ready(Ok(RecvMeta { len, from: os::canonical(from), dropped_total: 0, registered: false }))
    }

    fn poll_send_to(&mut self, cx: &mut Context<'_>, data: &[u8], dest: SocketAddr) -> Poll<io::Result<()>> {
        // EMSGSIZE (over 65,507 bytes on IPv4, 65,527 on IPv6) and a destination of the other
        // family (EAFNOSUPPORT / ENETUNREACH) come back as errors of this send only.
        // As tokio's `poll_send_to`, trying the send before asking for readiness (which the
        // common case, a socket with room, does not need).
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            match self.socket.try_send_to(data, dest) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    std::task::ready!(self.socket.poll_send_ready(cx))?;
                }
                sent => {
                    coop.made_progress();
                    return Poll::Ready(sent.map(|_| ()));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr().map(os::canonical)
    }

    fn join_multicast(&mut self, group: IpAddr) -> io::Result<()> {
        if self.joined.contains(&group) {
            return Ok(());
        }
        self.membership(group, true)?;
        self.joined.push(group);
        Ok(())
    }

    fn leave_multicast(&mut self, group: IpAddr) -> io::Result<()> {
        let Some(position) = self.joined.iter().position(|joined| *joined == group) else {
            return Ok(());
        };
        self.membership(group, false)?;
        self.joined.swap_remove(position);
        Ok(())
    }

    fn diag(&self) -> UdpDiag {
        let socket = SockRef::from(&self.socket);
        let (multicast_loopback, multicast_ttl, multicast_interface) = if self.v6 {
            let interface = socket
                .multicast_if_v6()
                .ok()
                .filter(|&index| index != 0)
                .and_then(|index| os::interface_address(index, self.interface, true));
            (socket.multicast_loop_v6().ok(), socket.multicast_hops_v6().ok(), interface)
        } else {
            let interface = match (socket.multicast_if_v4(), self.membership) {
                (Ok(ip), _) if !ip.is_unspecified() => Some(IpAddr::V4(ip)),
                // Set by index: the kernel reports 0.0.0.0, so name the interface by an address.
                (Ok(_), MulticastInterface::Index(index)) if index != 0 => {
                    os::interface_address(index, self.interface, false)
                }
                _ => None,
            };
            (socket.multicast_loop_v4().ok(), socket.multicast_ttl_v4().ok(), interface)
        };
        UdpDiag {
            address_reuse: socket.reuse_address().ok(),
            multicast_loopback,
            multicast_ttl,
            multicast_interface,
            send_buffer_size: socket.send_buffer_size().ok(),
            receive_buffer_size: socket.recv_buffer_size().ok(),
            received: self.received,
            receive_calls: Some(self.receive_calls),
        }
    }
}

/// The receive slab: where a socket receives, each datagram's payload then split off as its own
/// `Bytes` (quinn's approach) instead of copied out of a scratch buffer.
///
/// Memory: a socket holds a slab only while datagrams keep coming. A receive that finds nothing
/// (EAGAIN) hands the slab to the thread, which keeps one spare slab for the next socket that
/// receives, so an idle socket holds nothing and a thread at most one spare. A payload handed
/// out keeps its whole slab ([`SLAB`] bytes) allocated until it, and every other payload cut from
/// that slab, is dropped; the slab is reused in place once nothing cut from it is alive, else a new
/// one is taken.
///
/// Linux and Android receive in batches ([`receive_batch`]): one `recvmmsg` fills up to
/// `os::BATCH` regions of a per-thread room (each as large as the largest datagram), and each
/// payload is copied into the slab. A burst of queued datagrams then costs one system call per
/// batch instead of one each (a 1,200-byte copy is far cheaper than a system call), and the slab
/// stays densely packed. Elsewhere a receive offers the slab's spare room followed by the caller's
/// scratch buffer (`recvmsg` with two iovecs), and the rare datagram that spills into the scratch
/// is copied into a fresh slab, as every datagram was before.
#[cfg(unix)]
mod slab {
    use std::cell::Cell;
    use std::io;
    use std::mem::MaybeUninit;
    use std::os::fd::RawFd;

    use bytes::{Bytes, BytesMut};

    use crate::os;

    /// Bytes per slab.
    pub(super) const SLAB: usize = 32 * 1024;
    /// A slab with less spare room than this is replaced before a receive, so datagrams up to this
    /// size are always received without a copy.
    pub(super) const MIN_SPARE: usize = 2 * 1024;
    /// Room for the largest datagram (the kernel truncates a longer payload silently).
    const DATAGRAM_ROOM: usize = 65_535;

    thread_local! {
        /// The slab of the thread's sockets that are not receiving (see [`give_back`]).
        static SPARE: Cell<Option<BytesMut>> = const { Cell::new(None) };
    }

    /// A slab to receive into: the thread's spare one, else an empty one (filled on first use).
    pub(super) fn take() -> BytesMut {
        SPARE.try_with(|spare| spare.take()).ok().flatten().unwrap_or_default()
    }

    /// Hands a socket's slab back to the thread: kept as its spare unless the spare it has already
    /// has more room (the other is dropped; its memory goes once its payloads are dropped).
    pub(super) fn give_back(slab: BytesMut) {
        let _ = SPARE.try_with(|spare| {
            let best = match spare.take() {
                Some(kept) if kept.capacity() >= slab.capacity() => kept,
                _ => slab,
            };
            spare.set(Some(best));
        });
    }

    /// Receives one datagram from `fd` into `slab`, spilling into `scratch`; returns the payload.
    /// (Linux and Android receive in batches, [`receive_batch`].)
    #[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
    pub(super) fn receive(
        slab: &mut BytesMut,
        scratch: &mut [u8],
        fd: RawFd,
    ) -> io::Result<(Bytes, os::Datagram)> {
        debug_assert!(slab.is_empty());
        // The spare room and the scratch together must hold the largest datagram.
        let needed = DATAGRAM_ROOM.saturating_sub(scratch.len()).max(MIN_SPARE);
        if slab.capacity() < needed && !slab.try_reclaim(SLAB.max(needed)) {
            *slab = BytesMut::with_capacity(SLAB.max(needed));
        }
        // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and recvmsg only writes
        // initialised bytes into the scratch.
        let rest = unsafe { &mut *(scratch as *mut [u8] as *mut [MaybeUninit<u8>]) };
        let spare = slab.spare_capacity_mut();
        let room = spare.len();
        let datagram = os::recv_datagram_split(fd, spare, rest)?;
        let in_slab = datagram.len.min(room);
        // SAFETY: the kernel wrote the first `in_slab` bytes of the spare room.
        unsafe { slab.set_len(in_slab) };
        let data = if datagram.len <= room {
            slab.split_to(in_slab).freeze()
        } else {
            // Spilled into the scratch: copy the whole payload into a fresh slab.
            let spilled = datagram.len - room;
            let mut fresh = BytesMut::with_capacity(SLAB.max(datagram.len));
            fresh.extend_from_slice(&slab[..]);
            fresh.extend_from_slice(&scratch[..spilled]);
            *slab = fresh;
            slab.split_to(datagram.len).freeze()
        };
        Ok((data, datagram))
    }

    /// Where a batched receive lands: one region of the largest datagram's size per batch slot
    /// (`os::BATCH` × 64 KiB per thread that receives, made on its first batch; none per socket),
    /// and the batch's metadata.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    struct BatchRoom {
        bufs: Box<[u8]>,
        datagrams: Vec<os::Datagram>,
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    thread_local! {
        static BATCH_ROOM: std::cell::RefCell<Option<BatchRoom>> = const { std::cell::RefCell::new(None) };
    }

    /// Receives up to `os::BATCH` datagrams from `fd` with one system call (`recvmmsg`) into the
    /// thread's batch room, then copies each payload into `slab` and hands it out as a slice of it
    /// (a copy of a datagram is far cheaper than the system call a batch saves; the slab stays
    /// densely packed). Returns the first; the others go to `later`, last first.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) fn receive_batch(
        slab: &mut BytesMut,
        fd: RawFd,
        later: &mut Vec<(Bytes, os::Datagram)>,
    ) -> io::Result<(Bytes, os::Datagram)> {
        debug_assert!(slab.is_empty() && later.is_empty());
        let taken = BATCH_ROOM.try_with(|room| {
            // Never re-entered (a receive does not call back into sockets), but never panic.
            let Ok(mut room) = room.try_borrow_mut() else {
                return Err(io::Error::other("the receive batch room is in use"));
            };
            let BatchRoom { bufs, datagrams } = room.get_or_insert_with(|| BatchRoom {
                bufs: vec![0u8; DATAGRAM_ROOM * os::BATCH].into_boxed_slice(),
                datagrams: Vec::with_capacity(os::BATCH),
            });
            let mut iovs: [libc::iovec; os::BATCH] = std::array::from_fn(|i| libc::iovec {
                iov_base: bufs[i * DATAGRAM_ROOM..].as_mut_ptr().cast(),
                iov_len: DATAGRAM_ROOM,
            });
            // SAFETY: the iovecs are disjoint regions of `bufs`, borrowed mutably for the call.
            unsafe { os::recv_datagrams(fd, &mut iovs, datagrams)? };
            // Room for the whole batch first, while no payload of it holds the slab: the slab is
            // then reclaimed in place whenever the earlier payloads are gone, instead of being
            // replaced (a fresh allocation, cold in the cache) when it fills up mid-batch.
            let total: usize = datagrams.iter().map(|d| d.len).sum();
            if slab.capacity() < total && !slab.try_reclaim(SLAB.max(total)) {
                *slab = BytesMut::with_capacity(SLAB.max(total));
            }
            let mut first = None;
            for (i, datagram) in datagrams.drain(..).enumerate() {
                let payload = &bufs[i * DATAGRAM_ROOM..][..datagram.len];
                slab.extend_from_slice(payload); // fits: room for the batch was made above
                let data = slab.split().freeze();
                match first {
                    None => first = Some((data, datagram)),
                    Some(_) => later.push((data, datagram)),
                }
            }
            later.reverse();
            first.ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))
        });
        match taken {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("the receive batch room is gone (thread ending)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Receives datagrams of `sizes` through [`slab::receive`] with `slab` and checks each payload.
    #[cfg(unix)]
    fn receive_sizes(slab: &mut bytes::BytesMut, sizes: &[usize]) -> Vec<Bytes> {
        use std::os::fd::AsRawFd;
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut scratch = vec![0u8; 65_536];
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let payload: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
                tx.send_to(&payload, rx.local_addr().unwrap()).unwrap();
                let (data, datagram) = slab::receive(slab, &mut scratch, rx.as_raw_fd()).unwrap();
                assert_eq!(datagram.len, size);
                assert_eq!(datagram.from, tx.local_addr().unwrap());
                assert_eq!(&data[..], &payload[..], "payload {i} of {size} bytes");
                data
            })
            .collect()
    }

    // rule: UDP-READ-01
    #[cfg(unix)]
    #[test]
    fn test_slab_receive_cuts_payloads_from_one_slab() {
        let mut slab = bytes::BytesMut::new();
        let got = receive_sizes(&mut slab, &[1200, 1, 0, 1200]);
        // Cut from one allocation, back to back: no copy, no allocation per datagram.
        let base = got[0].as_ptr() as usize;
        assert_eq!(got[1].as_ptr() as usize, base + 1200);
        assert_eq!(got[3].as_ptr() as usize, base + 1201);
        assert!(slab.capacity() <= slab::SLAB - 2401);
    }

    /// A non-blocking loopback receiver (as the batched receive needs) and a sender.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn nonblocking_receiver_and_sender() -> (std::net::UdpSocket, std::net::UdpSocket) {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        (rx, std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
    }

    /// A batch gets its room before any of its payloads is cut, so a slab whose earlier payloads
    /// are all gone is reclaimed in place even when the batch would fill it halfway through: the
    /// socket keeps receiving into one allocation.
    // rule: UDP-READ-01
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn test_batched_receive_reuses_its_slab_when_a_batch_would_fill_it() {
        use std::os::fd::AsRawFd;
        let (rx, tx) = nonblocking_receiver_and_sender();
        let mut slab = bytes::BytesMut::new();
        let mut later = Vec::new();
        let mut base = None;
        // Two 10,000-byte datagrams per batch: the second batch does not fit what the first left.
        for round in 0..6u8 {
            for i in 0..2u8 {
                tx.send_to(&[round ^ i; 10_000], rx.local_addr().unwrap()).unwrap();
            }
            let (first, _) = slab::receive_batch(&mut slab, rx.as_raw_fd(), &mut later).unwrap();
            let (second, _) = later.pop().expect("both datagrams in one batch");
            assert_eq!((first[0], second[0], first.len(), second.len()), (round, round ^ 1, 10_000, 10_000));
            let start = *base.get_or_insert(first.as_ptr() as usize);
            for payload in [&first, &second] {
                let at = payload.as_ptr() as usize;
                assert!((start..start + slab::SLAB).contains(&at), "round {round}: a new slab was made");
            }
        }
    }

    // rule: UDP-READ-01
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn test_batched_receive_hands_out_every_datagram_whole_and_in_order() {
        use std::os::fd::AsRawFd;
        let (rx, tx) = nonblocking_receiver_and_sender();
        // More than one batch, with every size class: empty, small, one past a slab's room, the
        // largest IPv4 datagram.
        let sizes = [1200, 0, 65_507, 1, 40_000, 1200, 33_000, 7, 65_507, 2];
        let payloads: Vec<Vec<u8>> =
            sizes.iter().enumerate().map(|(i, &n)| (0..n).map(|b| (b * 13 + i) as u8).collect()).collect();
        let mut slab = bytes::BytesMut::new();
        let mut later = Vec::new();
        let mut got = Vec::new();
        // Five at a time: all of them at once would overflow the default receive buffer.
        for group in payloads.chunks(5) {
            for p in group {
                tx.send_to(p, rx.local_addr().unwrap()).unwrap();
            }
            let want = got.len() + group.len();
            while got.len() < want {
                match later.pop() {
                    Some(taken) => got.push(taken),
                    None => got.push(slab::receive_batch(&mut slab, rx.as_raw_fd(), &mut later).unwrap()),
                }
            }
        }
        for (i, ((data, datagram), sent)) in got.iter().zip(&payloads).enumerate() {
            assert_eq!(datagram.len, sent.len(), "datagram {i}");
            assert_eq!(&data[..], &sent[..], "datagram {i}");
            assert_eq!(datagram.from, tx.local_addr().unwrap());
        }
        assert!(later.is_empty());
        // Queued datagrams are taken several per system call.
        for i in 0..3u8 {
            tx.send_to(&[i; 10], rx.local_addr().unwrap()).unwrap();
        }
        let (first, _) = slab::receive_batch(&mut slab, rx.as_raw_fd(), &mut later).unwrap();
        assert_eq!(&first[..], &[0; 10]);
        assert_eq!(later.len(), os::BATCH.min(3) - 1);
        let rest: Vec<Vec<u8>> = later.drain(..).rev().map(|(d, _)| d.to_vec()).collect();
        assert_eq!(rest, vec![vec![1; 10], vec![2; 10]]);
        // Nothing left: WouldBlock, as for a single receive.
        let empty = slab::receive_batch(&mut slab, rx.as_raw_fd(), &mut later).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
    }

    // rule: UDP-READ-01
    #[cfg(unix)]
    #[test]
    fn test_slab_receive_spills_long_datagrams_into_the_scratch_whole() {
        let mut slab = bytes::BytesMut::new();
        // Leave less spare room than the next datagram: it spills into the scratch and is copied.
        let filler = slab::SLAB - slab::MIN_SPARE - 100;
        let got = receive_sizes(&mut slab, &[filler, 30_000, 65_507, 10]);
        assert_eq!(got[1].len(), 30_000);
        assert_eq!(got[2].len(), 65_507);
        assert_eq!(got[3].len(), 10);
    }

    // rule: UDP-READ-01
    #[cfg(unix)]
    #[test]
    fn test_slab_is_reused_in_place_once_its_payloads_are_dropped() {
        let mut slab = bytes::BytesMut::new();
        // Just enough to leave less than MIN_SPARE, all from one slab.
        let count = (slab::SLAB - slab::MIN_SPARE) / 1200 + 1;
        let got = receive_sizes(&mut slab, &vec![1200; count]);
        let first = got[0].as_ptr() as usize;
        assert_eq!(got[count - 1].as_ptr() as usize, first + (count - 1) * 1200);
        drop(got);
        // The slab ran low and nothing cut from it is alive: the next receive reuses it.
        let again = receive_sizes(&mut slab, &[1200]);
        assert_eq!(again[0].as_ptr() as usize, first);
        // A held payload keeps its slab: a new one is taken instead of overwriting it.
        let held = receive_sizes(&mut slab, &vec![1200; count]);
        let next = receive_sizes(&mut slab, &[1200]);
        assert!(held.iter().all(|h| h.as_ptr() != next[0].as_ptr()));
        assert_eq!(held[0][..4], [0, 7, 14, 21]);
    }

    // rule: UDP-READ-01
    #[cfg(unix)]
    #[tokio::test]
    async fn test_idle_socket_gives_its_slab_back_to_the_thread() {
        let bind = UdpBind {
            local: SocketAddr::from(([127, 0, 0, 1], 0)),
            config: tcpudp_core::options::SocketConfig {
                address_reuse: false,
                no_delay: false,
                send_buffer_size: None,
                receive_buffer_size: None,
            },
            multicast_loopback: false,
            multicast_ttl: 1,
            multicast_interface: None,
        };
        let mut rx = open(&Handle::current(), bind).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        tx.send_to(b"one", to).unwrap();
        tx.send_to(b"two", to).unwrap();
        let (first, _) = std::future::poll_fn(|cx| rx.poll_recv_bytes(cx)).await.unwrap();
        assert_eq!(&first[..], b"one");
        // Receiving: the socket keeps its slab, the second payload cut right after the first.
        assert!(rx.slab.is_some());
        let (second, _) = std::future::poll_fn(|cx| rx.poll_recv_bytes(cx)).await.unwrap();
        assert_eq!(second.as_ptr() as usize, first.as_ptr() as usize + 3);
        // Nothing more: the slab goes to the thread's spare, and the next receive takes it again.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(rx.poll_recv_bytes(&mut cx).is_pending());
        assert!(rx.slab.is_none());
        let spare = slab::take();
        assert!(spare.capacity() > 0);
        slab::give_back(spare);
        tx.send_to(b"three", to).unwrap();
        let (third, _) = std::future::poll_fn(|cx| rx.poll_recv_bytes(cx)).await.unwrap();
        assert_eq!(&third[..], b"three");
        assert_eq!(third.as_ptr() as usize, second.as_ptr() as usize + 3);
    }

    // rule: UDP-READ-04
    #[test]
    fn test_drop_counter_extends_and_wraps() {
        let mut counter = DropCounter::default();
        assert_eq!(counter.update(None), 0);
        assert_eq!(counter.update(Some(5)), 5);
        assert_eq!(counter.update(None), 5);
        assert_eq!(counter.update(Some(7)), 7);
        counter.last = u32::MAX - 1;
        counter.total = u64::from(u32::MAX - 1);
        assert_eq!(counter.update(Some(3)), u64::from(u32::MAX) + 4);
    }
}

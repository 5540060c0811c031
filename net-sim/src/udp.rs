//! The UDP transport on turmoil: [`SimUdp`].

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tcpudp::backend::{BoxFuture, RecvMeta, UdpBind, UdpDiag, UdpTransport};
use tcpudp_core::Cause;
use tokio::io::ReadBuf;
use turmoil::net::UdpSocket;

use crate::host::{io_error, HostCtx};
use crate::{MAX_DATAGRAM_V4, MAX_DATAGRAM_V6};

/// One simulated UDP socket.
pub(crate) struct SimUdp {
    /// The stored `readable()` future, while one is pending. Declared before `socket` so it is
    /// dropped first. While it pends it holds the socket's internal receive lock, so it is always
    /// polled to completion before `try_recv_from` is tried again.
    readable: Option<BoxFuture<'static, io::Result<()>>>,
    socket: Arc<UdpSocket>,
    host: Arc<HostCtx>,
    /// The address reported: the requested one (the host's own address is bound as the wildcard).
    local: SocketAddr,
    /// The options asked for, as recorded (turmoil models only the multicast loop flag).
    bind: UdpBind,
    /// Datagrams handed to the caller.
    received: u64,
}

impl SimUdp {
    /// Wraps a bound turmoil socket and sets its multicast loop flag.
    pub(crate) fn new(
        host: Arc<HostCtx>,
        socket: UdpSocket,
        local: SocketAddr,
        bind: UdpBind,
    ) -> io::Result<SimUdp> {
        match host.ip {
            IpAddr::V4(_) => socket.set_multicast_loop_v4(bind.multicast_loopback)?,
            IpAddr::V6(_) => socket.set_multicast_loop_v6(bind.multicast_loopback)?,
        }
        Ok(SimUdp { readable: None, socket: Arc::new(socket), host, local, bind, received: 0 })
    }

    /// The IPv4 interface argument turmoil accepts for a membership: only `0.0.0.0` and loopback
    /// (the host's own address and no choice mean `0.0.0.0`).
    fn interface_v4(&self) -> io::Result<Ipv4Addr> {
        match self.bind.multicast_interface {
            None => Ok(Ipv4Addr::UNSPECIFIED),
            Some(IpAddr::V4(ip)) if ip.is_unspecified() || ip.is_loopback() => Ok(ip),
            Some(ip) if ip == self.host.ip => Ok(Ipv4Addr::UNSPECIFIED),
            Some(ip) => Err(io_error(Cause::Unreachable, &format!("{ip} is not an interface of this host"))),
        }
    }

    /// The IPv6 interface index turmoil accepts: only 0 (any).
    fn interface_v6(&self) -> io::Result<u32> {
        match self.bind.multicast_interface {
            None => Ok(0),
            Some(ip) if ip == self.host.ip || (ip.is_ipv6() && (ip.is_unspecified() || ip.is_loopback())) => {
                Ok(0)
            }
            Some(ip) => Err(io_error(Cause::Unreachable, &format!("{ip} is not an interface of this host"))),
        }
    }
}

impl UdpTransport for SimUdp {
    /// `try_recv_from`, and when the queue is empty a stored `readable()` future (turmoil has no
    /// `poll_recv_from`). `dropped_total` is 0: turmoil drops silently past 64 queued datagrams
    /// and does not count (the emulated receive buffer will).
    fn poll_recv_from(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<RecvMeta>> {
        loop {
            if let Some(readable) = self.readable.as_mut() {
                let result = ready!(readable.as_mut().poll(cx));
                self.readable = None;
                result?;
            }
            match self.socket.try_recv_from(buf.initialize_unfilled()) {
                Ok((len, from)) => {
                    buf.advance(len);
                    self.received += 1;
                    return Poll::Ready(Ok(RecvMeta { len, from, dropped_total: 0 }));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let socket = Arc::clone(&self.socket);
                    self.readable = Some(Box::pin(async move { socket.readable().await }));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// `try_send_to`. A datagram larger than the family's maximum is rejected (`EMSGSIZE`;
    /// turmoil has no limit), the wildcard means this host, and a destination turmoil has no
    /// link to is sent into the void, as on a real network (turmoil would refuse it). turmoil
    /// never applies backpressure to UDP: should `try_send_to` ever block, its `writable()` is
    /// polled (a fresh future each time: it is stateless) and the task yields once.
    fn poll_send_to(&mut self, cx: &mut Context<'_>, data: &[u8], dest: SocketAddr) -> Poll<io::Result<()>> {
        if !self.host.same_family(dest.ip()) {
            return Poll::Ready(Err(io_error(Cause::FamilyMismatch, "destination of the other family")));
        }
        let max = if dest.is_ipv4() { MAX_DATAGRAM_V4 } else { MAX_DATAGRAM_V6 };
        if data.len() > max {
            return Poll::Ready(Err(io_error(Cause::MessageTooLarge, "datagram too large")));
        }
        let dest = if dest.ip().is_unspecified() {
            SocketAddr::new(self.host.loopback(), dest.port())
        } else {
            dest
        };
        match self.socket.try_send_to(data, dest) {
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Poll::Ready(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready!(pin!(self.socket.writable()).poll(cx))?;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// turmoil's `join_multicast_v4` / `join_multicast_v6` on the socket's multicast interface.
    fn join_multicast(&mut self, group: IpAddr) -> io::Result<()> {
        match (group, self.host.ip) {
            (IpAddr::V4(group), IpAddr::V4(_)) => self.socket.join_multicast_v4(group, self.interface_v4()?),
            (IpAddr::V6(group), IpAddr::V6(_)) => self.socket.join_multicast_v6(&group, self.interface_v6()?),
            _ => Err(io_error(Cause::FamilyMismatch, "group of the other family")),
        }
    }

    /// turmoil's `leave_multicast_v4` / `leave_multicast_v6` (`AddrNotAvailable` when not joined).
    fn leave_multicast(&mut self, group: IpAddr) -> io::Result<()> {
        match (group, self.host.ip) {
            (IpAddr::V4(group), IpAddr::V4(_)) => self.socket.leave_multicast_v4(group, self.interface_v4()?),
            (IpAddr::V6(group), IpAddr::V6(_)) => {
                self.socket.leave_multicast_v6(&group, self.interface_v6()?)
            }
            _ => Err(io_error(Cause::FamilyMismatch, "group of the other family")),
        }
    }

    /// The recorded options (turmoil applies only the loop flag) and the receive count.
    fn diag(&self) -> UdpDiag {
        UdpDiag {
            address_reuse: Some(self.bind.config.address_reuse),
            multicast_loopback: Some(self.bind.multicast_loopback),
            multicast_ttl: Some(self.bind.multicast_ttl),
            multicast_interface: self.bind.multicast_interface,
            send_buffer_size: self.bind.config.send_buffer_size,
            receive_buffer_size: self.bind.config.receive_buffer_size,
            received: self.received,
        }
    }
}

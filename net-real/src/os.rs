//! OS helpers socket2 does not cover: interface lookup, SO_RXQ_OVFL, `recvmsg` with control data,
//! IP_MULTICAST_IF by index. Read DESIGN §6 and RULES.md AMB-33, AMB-58 before editing.

use std::io;
use std::net::{IpAddr, SocketAddr};

/// The address the OS reported, in canonical form: an IPv4-mapped IPv6 address becomes IPv4
/// (AMB-54).
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// `io::Error` for "this address is not on any interface".
fn no_such_interface(ip: IpAddr) -> io::Error {
    io::Error::new(io::ErrorKind::AddrNotAvailable, format!("no interface has the address {ip}"))
}

#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(unix)]
mod unix {
    use std::ffi::CStr;
    use std::io;
    use std::mem::{self, MaybeUninit};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::{AsRawFd, RawFd};

    use super::{canonical, no_such_interface};

    /// Calls `f` with each (interface name, address) pair of the host's interfaces.
    fn for_each_interface_address(mut f: impl FnMut(&CStr, IpAddr)) -> io::Result<()> {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs writes a list head into `list`, which we free below.
        if unsafe { libc::getifaddrs(&mut list) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cursor = list;
        while !cursor.is_null() {
            // SAFETY: `cursor` is a non-null node of the list getifaddrs returned, alive until freeifaddrs.
            let entry = unsafe { &*cursor };
            if !entry.ifa_addr.is_null() && !entry.ifa_name.is_null() {
                // SAFETY: ifa_addr points to a sockaddr whose family tells its real type, and
                // ifa_name to a NUL-terminated string, both owned by the list.
                let (addr, name) = unsafe { (sockaddr_ip(entry.ifa_addr), CStr::from_ptr(entry.ifa_name)) };
                if let Some(ip) = addr {
                    f(name, ip);
                }
            }
            cursor = entry.ifa_next;
        }
        // SAFETY: `list` came from getifaddrs and is freed exactly once.
        unsafe { libc::freeifaddrs(list) };
        Ok(())
    }

    /// The IP of a `sockaddr` of family AF_INET or AF_INET6.
    ///
    /// # Safety
    /// `addr` must point to a valid sockaddr whose `sa_family` matches its real size.
    unsafe fn sockaddr_ip(addr: *const libc::sockaddr) -> Option<IpAddr> {
        match i32::from((*addr).sa_family) {
            libc::AF_INET => {
                let sin = &*(addr as *const libc::sockaddr_in);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
            }
            libc::AF_INET6 => {
                let sin6 = &*(addr as *const libc::sockaddr_in6);
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }

    /// The index of the interface that owns `ip` (either family).
    pub(crate) fn interface_index_of(ip: IpAddr) -> io::Result<u32> {
        let ip = ip.to_canonical();
        let mut found = None;
        for_each_interface_address(|name, addr| {
            if found.is_none() && addr == ip {
                // SAFETY: `name` is a valid NUL-terminated C string.
                let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
                if index != 0 {
                    found = Some(index);
                }
            }
        })?;
        found.ok_or_else(|| no_such_interface(ip))
    }

    /// An address of the interface with `index`: `preferred` when that interface owns it, else
    /// its first address of `family_v6`'s family, else its first address.
    pub(crate) fn interface_address(
        index: u32,
        preferred: Option<IpAddr>,
        family_v6: bool,
    ) -> Option<IpAddr> {
        if let Some(ip) = preferred {
            if interface_index_of(ip).ok() == Some(index) {
                return Some(ip);
            }
        }
        let mut same_family = None;
        let mut any = None;
        let _ = for_each_interface_address(|name, addr| {
            // SAFETY: `name` is a valid NUL-terminated C string.
            if unsafe { libc::if_nametoindex(name.as_ptr()) } != index {
                return;
            }
            any = any.or(Some(addr));
            if addr.is_ipv6() == family_v6 {
                same_family = same_family.or(Some(addr));
            }
        });
        same_family.or(any)
    }

    fn setsockopt_int(
        fd: RawFd,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: the option value is a c_int living on the stack for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// SO_RXQ_OVFL=1: every received datagram carries the socket's running drop count (Linux).
    #[cfg(target_os = "linux")]
    pub(crate) fn enable_drop_count(socket: &impl AsRawFd) -> io::Result<()> {
        setsockopt_int(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)
    }

    /// Not available here: the drop count stays 0.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn enable_drop_count(_socket: &impl AsRawFd) -> io::Result<()> {
        Ok(())
    }

    /// IP_MULTICAST_IF by interface index (for an IPv4 socket whose interface is named by an IPv6
    /// address).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) fn set_multicast_if_v4_index(socket: &impl AsRawFd, index: u32) -> io::Result<()> {
        let mreqn = libc::ip_mreqn {
            imr_multiaddr: libc::in_addr { s_addr: 0 },
            imr_address: libc::in_addr { s_addr: 0 },
            imr_ifindex: libc::c_int::try_from(index)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        };
        // SAFETY: the option value is an ip_mreqn living on the stack for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                (&mreqn as *const libc::ip_mreqn).cast(),
                mem::size_of::<libc::ip_mreqn>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Not available here.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(crate) fn set_multicast_if_v4_index(_socket: &impl AsRawFd, _index: u32) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "IP_MULTICAST_IF by interface index"))
    }

    /// One datagram read by [`recv_datagram`].
    #[derive(Debug)]
    pub(crate) struct Datagram {
        /// Payload bytes written to the buffer.
        pub(crate) len: usize,
        /// Source, canonical.
        pub(crate) from: SocketAddr,
        /// The SO_RXQ_OVFL value carried with the datagram; `None` when absent (no drop yet).
        pub(crate) drops: Option<u32>,
    }

    /// Control buffer for `recvmsg`, aligned for `cmsghdr`; room for a few small messages.
    #[repr(C, align(8))]
    struct ControlBuffer([u8; 128]);

    /// Reads one datagram with `recvmsg` (non-blocking fd), with its source and drop counter.
    pub(crate) fn recv_datagram(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<Datagram> {
        recv_datagram_split(fd, buf, &mut [])
    }

    /// [`recv_datagram`] into `first`, continued in `rest` when the payload is longer than
    /// `first`: `len` counts the bytes written to both, `first` filled before `rest`.
    pub(crate) fn recv_datagram_split(
        fd: RawFd,
        first: &mut [MaybeUninit<u8>],
        rest: &mut [MaybeUninit<u8>],
    ) -> io::Result<Datagram> {
        // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut control = ControlBuffer([0; 128]);
        let mut iov = [
            libc::iovec { iov_base: first.as_mut_ptr().cast(), iov_len: first.len() },
            libc::iovec { iov_base: rest.as_mut_ptr().cast(), iov_len: rest.len() },
        ];
        let room = first.len() + rest.len();
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = if rest.is_empty() { 1 } else { 2 };
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len() as _;
        let n = loop {
            // SAFETY: every pointer in `msg` refers to a live buffer of the stated length; the
            // kernel writes at most that many bytes (payload bytes become initialised).
            let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        // SAFETY: recvmsg filled `storage` and `msg`.
        unsafe { received(&storage, &msg, n.min(room)) }
    }

    /// The [`Datagram`] `recvmsg`/`recvmmsg` reported with `msg` (source in `storage`).
    ///
    /// # Safety
    /// The kernel must have filled `storage` with a sockaddr of `msg.msg_namelen` bytes.
    unsafe fn received(
        storage: &libc::sockaddr_storage,
        msg: &libc::msghdr,
        len: usize,
    ) -> io::Result<Datagram> {
        // SAFETY: as the caller vouches.
        let from = unsafe { storage_to_socket_addr(storage, msg.msg_namelen) }.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "datagram without an IP source address")
        })?;
        Ok(Datagram { len, from: canonical(from), drops: drop_count(msg) })
    }

    /// Datagrams one [`recv_datagrams`] call takes at most.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) const BATCH: usize = 4;

    /// Reads up to [`BATCH`] datagrams with one `recvmmsg` (non-blocking fd), datagram `i` into
    /// `iovs[i]`, with their sources and drop counters, into `out` (cleared first). `Ok` means at
    /// least one was read; an empty queue is `WouldBlock`, as for `recvmsg`.
    ///
    /// # Safety
    /// Every iovec must describe a live, writable buffer of its stated length that nothing else
    /// uses during the call.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) unsafe fn recv_datagrams(
        fd: RawFd,
        iovs: &mut [libc::iovec; BATCH],
        out: &mut Vec<Datagram>,
    ) -> io::Result<()> {
        out.clear();
        // SAFETY: all-zero is a valid sockaddr_storage and mmsghdr.
        let mut storage: [libc::sockaddr_storage; BATCH] = unsafe { mem::zeroed() };
        let mut control: [ControlBuffer; BATCH] = std::array::from_fn(|_| ControlBuffer([0; 128]));
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for (i, m) in msgs.iter_mut().enumerate() {
            m.msg_hdr.msg_name = (&mut storage[i] as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_iov = &mut iovs[i];
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = control[i].0.as_mut_ptr().cast();
            m.msg_hdr.msg_controllen = control[i].0.len() as _;
        }
        let n = loop {
            // SAFETY: every pointer in `msgs` refers to a live buffer of the stated length (the
            // caller vouches for the iovecs); the kernel writes at most that many bytes.
            let n = unsafe {
                libc::recvmmsg(fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, 0, std::ptr::null_mut())
            };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        for (i, m) in msgs.iter().take(n).enumerate() {
            let len = (m.msg_len as usize).min(iovs[i].iov_len);
            // SAFETY: recvmmsg filled the first `n` entries of `storage` and `msgs`.
            out.push(unsafe { received(&storage[i], &m.msg_hdr, len) }?);
        }
        Ok(())
    }

    /// The SO_RXQ_OVFL control message of a received `msg`, if any.
    #[cfg(target_os = "linux")]
    fn drop_count(msg: &libc::msghdr) -> Option<u32> {
        let mut found = None;
        // SAFETY: `msg` was filled by recvmsg; the CMSG_* macros stay within msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(msg);
            while !cmsg.is_null() {
                let header = &*cmsg;
                if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SO_RXQ_OVFL {
                    found = Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<u32>()));
                }
                cmsg = libc::CMSG_NXTHDR(msg, cmsg);
            }
        }
        found
    }

    /// Not available here.
    #[cfg(not(target_os = "linux"))]
    fn drop_count(_msg: &libc::msghdr) -> Option<u32> {
        None
    }

    /// # Safety
    /// `storage` must hold a sockaddr of `len` bytes written by the kernel.
    unsafe fn storage_to_socket_addr(
        storage: &libc::sockaddr_storage,
        len: libc::socklen_t,
    ) -> Option<SocketAddr> {
        let len = len as usize;
        match i32::from(storage.ss_family) {
            libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
                let sin = &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
                let sin6 = &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// Interface lookup is not implemented on this platform: only the OS's choice (index 0) works.
#[cfg(not(unix))]
pub(crate) fn interface_index_of(ip: IpAddr) -> io::Result<u32> {
    Err(no_such_interface(ip))
}

/// Not available on this platform.
#[cfg(not(unix))]
pub(crate) fn set_multicast_if_v4_index(_socket: &socket2::Socket, _index: u32) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "IP_MULTICAST_IF by interface index"))
}

/// Interface lookup is not implemented on this platform.
#[cfg(not(unix))]
pub(crate) fn interface_address(_index: u32, preferred: Option<IpAddr>, _family_v6: bool) -> Option<IpAddr> {
    preferred
}

#[cfg(test)]
mod tests {
    use super::*;

    // rule: SRV-ACCEPT-01
    #[test]
    fn test_canonical_unmaps_ipv4_mapped() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        assert_eq!(canonical(mapped), "127.0.0.1:80".parse::<SocketAddr>().unwrap());
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    // rule: UDP-MCAST-08
    #[cfg(unix)]
    #[test]
    fn test_loopback_interface_index_round_trips() {
        let lo = interface_index_of(IpAddr::from([127, 0, 0, 1])).expect("lo has 127.0.0.1");
        assert_ne!(lo, 0);
        assert_eq!(
            interface_address(lo, Some(IpAddr::from([127, 0, 0, 1])), false),
            Some(IpAddr::from([127, 0, 0, 1]))
        );
        assert!(interface_index_of(IpAddr::from([192, 0, 2, 1])).is_err());
    }
}

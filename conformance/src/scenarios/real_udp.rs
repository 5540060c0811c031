//! UDPSocket rules that only real sockets can show: option values read back from the OS, several
//! sockets sharing a port, IPv6 on ::1, kernel drop counting, multicast on loopback with the
//! interface pinned to 127.0.0.1 and TTL 0 (AMB-58), and — inside a network namespace this test
//! makes — unroutable and non-local addresses and multicast loopback on a veth pair.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;

use super::support_udp::{assert_err, err_name, next_msg, within, Peer, LO};
use tcpudp::{Datagram, ErrorName, Network, Policy, ReadyState, UdpOptions, UdpSocket};

/// Why these tests do not run on the other backend.
const IN_SIM: &str =
    "the kernel's own state (socket options read back, shared ports, IPv6 on ::1, IGMP membership, network namespaces) does not exist in the simulator";

crate::only_on! {

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A real network whose UDP sockets use 127.0.0.1 for multicast (AMB-58).
    fn lo_net() -> Network {
        tcpudp_net_real::network_with_multicast_interface(Policy::allow_all(), Some(LOOPBACK))
            .expect("real network")
    }

    /// Multicast options: TTL 0, so nothing could be forwarded even off `lo`.
    fn ttl0(options: UdpOptions) -> UdpOptions {
        UdpOptions { multicast_ttl: 0, ..options }
    }

    fn v6_lo(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv6Addr::LOCALHOST, port))
    }

    /// The groups `/proc/net/igmp` lists for interface `lo` (None when the file cannot be read).
    fn igmp_groups_on_lo() -> Option<Vec<Ipv4Addr>> {
        let text = std::fs::read_to_string("/proc/net/igmp").ok()?;
        let mut groups = Vec::new();
        let mut on_lo = false;
        for line in text.lines().skip(1) {
            if !line.starts_with(char::is_whitespace) {
                // "Idx\tDevice    : Count Querier" lines start an interface block.
                on_lo = line.split_whitespace().nth(1) == Some("lo");
            } else if on_lo {
                if let Some(hex) = line.split_whitespace().next() {
                    if let Ok(raw) = u32::from_str_radix(hex, 16) {
                        // The kernel prints the address in host byte order (little-endian here).
                        groups.push(Ipv4Addr::from(raw.swap_bytes()));
                    }
                }
            }
        }
        Some(groups)
    }

    /// rule: UDP-CTOR-17, UDP-CTOR-18, DICT-UDPOPT-05, DICT-UDPOPT-06, UDP-MCAST-07, UDP-MCAST-08
    #[only(Real, IN_SIM)]
    async fn options_are_applied_and_read_back() -> TestResult {
        let net = lo_net();
        let default = UdpSocket::new(&net, UdpOptions::default())?;
        within("opened", default.opened()).await??;
        let d = default.diag().options;
        assert_eq!(d.address_reuse, Some(true), "SO_REUSEADDR follows addressReuse (default true)");
        assert_eq!(
            d.multicast_loopback,
            Some(false),
            "IP_MULTICAST_LOOP is set from loopback (default false, AMB-32)"
        );
        assert_eq!(d.multicast_ttl, Some(1), "default multicast TTL");
        assert_eq!(d.multicast_interface, Some(LOOPBACK), "IP_MULTICAST_IF is the network's interface");

        let explicit = UdpSocket::new(
            &net,
            UdpOptions {
                address_reuse: false,
                loopback: true,
                multicast_ttl: 0,
                receive_buffer_size: Some(100_000),
                send_buffer_size: Some(50_000),
                ..UdpOptions::default()
            },
        )?;
        within("opened", explicit.opened()).await??;
        assert!(!explicit.address_reuse());
        assert!(explicit.loopback());
        let e = explicit.diag().options;
        assert_eq!(e.address_reuse, Some(false));
        assert_eq!(e.multicast_loopback, Some(true));
        assert_eq!(e.multicast_ttl, Some(0));
        assert!(e.receive_buffer_size.is_some_and(|n| n >= 100_000), "{e:?}");
        assert!(e.send_buffer_size.is_some_and(|n| n >= 50_000), "{e:?}");

        // A socket's own interface option wins over the network's.
        let plain = tcpudp_net_real::network(Policy::allow_all())?;
        let own =
            UdpSocket::new(&plain, UdpOptions { multicast_interface: Some(LOOPBACK), ..UdpOptions::default() })?;
        within("opened", own.opened()).await??;
        assert_eq!(own.diag().options.multicast_interface, Some(LOOPBACK));

        // The membership is on lo (UDP-MCAST-08).
        let group = Ipv4Addr::new(239, 255, 77, 1);
        default.join_multicast(&group.to_string())?;
        assert_eq!(default.diag().memberships, [IpAddr::V4(group)]);
        match igmp_groups_on_lo() {
            Some(groups) => assert!(groups.contains(&group), "{group} not joined on lo: {groups:?}"),
            None => eprintln!("skipped the /proc/net/igmp check: the file cannot be read here"),
        }
        default.leave_multicast(&group.to_string())?;
        if let Some(groups) = igmp_groups_on_lo() {
            assert!(!groups.contains(&group), "{group} still joined on lo after leaving: {groups:?}");
        }
        Ok(())
    }

    /// rule: UDP-CTOR-22, UDP-OPEN-02, UDP-MCAST-01, UDP-MCAST-08
    #[only(Real, IN_SIM)]
    async fn address_reuse_shares_a_port() -> TestResult {
        let net = lo_net();
        let a = UdpSocket::new(&net, ttl0(UdpOptions::default()))?;
        within("opened", a.opened()).await??;
        let p = a.local_port().ok_or("no port")?;
        let b = UdpSocket::new(&net, ttl0(UdpOptions { local_port: Some(p), ..UdpOptions::default() }))?;
        within("opened", b.opened()).await??;
        assert_eq!(b.local_port(), Some(p));
        // A group datagram to P reaches both when both joined.
        a.join_multicast("239.255.77.2")?;
        b.join_multicast("239.255.77.2")?;
        let sender = UdpSocket::new(&net, ttl0(UdpOptions { loopback: true, ..UdpOptions::default() }))?;
        within("write", sender.writable()?.write(Datagram::to(&b"both"[..], "239.255.77.2", p))).await??;
        assert_eq!(&next_msg(&mut a.readable()?).await?.data[..], b"both");
        assert_eq!(&next_msg(&mut b.readable()?).await?.data[..], b"both");
        // A later socket without reuse cannot share the port.
        let exclusive = UdpSocket::new(
            &net,
            UdpOptions { local_port: Some(p), address_reuse: false, ..UdpOptions::default() },
        )?;
        assert_err(within("opened", exclusive.opened()).await?, ErrorName::NetworkError);
        // Nor can a socket with reuse share a port held without it.
        let held = UdpSocket::new(&net, UdpOptions { address_reuse: false, ..UdpOptions::default() })?;
        within("opened", held.opened()).await??;
        let q = held.local_port().ok_or("no port")?;
        let late = UdpSocket::new(&net, UdpOptions { local_port: Some(q), ..UdpOptions::default() })?;
        assert_err(within("opened", late.opened()).await?, ErrorName::NetworkError);
        // A std socket holding a port without reuse, as the rule's peer.
        let std_peer = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let r = std_peer.local_addr()?.port();
        let blocked = UdpSocket::new(
            &net,
            UdpOptions { local_port: Some(r), address_reuse: false, ..UdpOptions::default() },
        )?;
        assert_err(within("opened", blocked.opened()).await?, ErrorName::NetworkError);
        assert_eq!(blocked.ready_state(), ReadyState::Closed);
        Ok(())
    }

    /// rule: UDP-CTOR-15, UDP-CTOR-22
    #[only(Real, IN_SIM)]
    async fn ephemeral_ports_are_never_shared_by_accident() -> TestResult {
        // Every socket here has addressReuse true (SO_REUSEADDR). A port is shared only when a
        // socket asks for that port; two ephemeral binds must never land on the same port (else
        // unicast reaches only one of them).
        let net = tcpudp_net_real::network(Policy::allow_all())?;
        let mut sockets = Vec::new();
        for i in 0..400 {
            let local = if i % 2 == 0 { None } else { Some(LO.to_owned()) };
            let sock = UdpSocket::new(&net, UdpOptions { local_address: local, ..UdpOptions::default() })?;
            within("opened", sock.opened()).await??;
            assert_eq!(sock.diag().options.address_reuse, Some(true));
            sockets.push(sock);
        }
        let mut ports: Vec<u16> = sockets.iter().filter_map(UdpSocket::local_port).collect();
        assert_eq!(ports.len(), sockets.len());
        ports.sort_unstable();
        let before = ports.len();
        ports.dedup();
        assert_eq!(ports.len(), before, "two ephemeral sockets got the same port");
        // Sharing on request still works.
        let shared =
            UdpSocket::new(&net, UdpOptions { local_port: sockets[0].local_port(), ..UdpOptions::default() })?;
        within("opened", shared.opened()).await??;
        Ok(())
    }

    /// rule: UDP-MCAST-01, UDP-MCAST-02, UDP-MCAST-08, UDP-WRITE-11
    #[only(Real, IN_SIM)]
    async fn multicast_membership_is_per_socket_on_loopback() -> TestResult {
        let net = lo_net();
        // Wildcard sockets sharing port P; only A joins the group (IP_MULTICAST_ALL=0).
        let a = UdpSocket::new(&net, ttl0(UdpOptions::default()))?;
        within("opened", a.opened()).await??;
        let p = a.local_port().ok_or("no port")?;
        let b = UdpSocket::new(&net, ttl0(UdpOptions { local_port: Some(p), ..UdpOptions::default() }))?;
        let w = UdpSocket::new(&net, ttl0(UdpOptions { local_port: Some(p), ..UdpOptions::default() }))?;
        within("opened", b.opened()).await??;
        within("opened", w.opened()).await??;
        a.join_multicast("239.255.77.3")?;
        b.join_multicast("239.255.77.4")?; // B's marker group
        w.join_multicast("239.255.77.3")?;
        let sender = UdpSocket::new(&net, ttl0(UdpOptions { loopback: true, ..UdpOptions::default() }))?;
        let sw = sender.writable()?;
        within("write", sw.write(Datagram::to(&b"g3"[..], "239.255.77.3", p))).await??;
        within("write", sw.write(Datagram::to(&b"marker-b"[..], "239.255.77.4", p))).await??;
        let (mut ra, mut rb, mut rw) = (a.readable()?, b.readable()?, w.readable()?);
        let got = next_msg(&mut ra).await?;
        assert_eq!(&got.data[..], b"g3");
        assert_eq!(got.remote_address(), LO);
        assert_eq!(&next_msg(&mut rb).await?.data[..], b"marker-b", "B received a group it never joined");
        assert_eq!(b.diag().options.received, 1);
        assert_eq!(&next_msg(&mut rw).await?.data[..], b"g3");

        // A leaves (UDP-MCAST-02) and joins a marker group; W keeps the group.
        a.leave_multicast("239.255.77.3")?;
        a.join_multicast("239.255.77.5")?;
        within("write", sw.write(Datagram::to(&b"g3 again"[..], "239.255.77.3", p))).await??;
        within("write", sw.write(Datagram::to(&b"g3 third"[..], "239.255.77.3", p))).await??;
        within("write", sw.write(Datagram::to(&b"marker-a"[..], "239.255.77.5", p))).await??;
        assert_eq!(&next_msg(&mut rw).await?.data[..], b"g3 again");
        assert_eq!(&next_msg(&mut rw).await?.data[..], b"g3 third");
        assert_eq!(&next_msg(&mut ra).await?.data[..], b"marker-a", "A received a group it left");
        assert_eq!(a.diag().options.received, 2, "A received only g3 and its marker");
        Ok(())
    }

    /// rule: UDP-CTOR-23, UDP-WRITE-14, UDP-WRITE-07, UDP-CTOR-13, UDP-READ-02
    #[only(Real, IN_SIM)]
    async fn ipv6_on_loopback() -> TestResult {
        let net = lo_net();
        let peer = Peer::bind_real(IpAddr::V6(Ipv6Addr::LOCALHOST)).await?;
        // The IPv6 wildcard: receives on ::1 and writes to ::1.
        let wild =
            UdpSocket::new(&net, UdpOptions { local_address: Some("::".into()), ..UdpOptions::default() })?;
        assert_eq!(wild.local_address().as_deref(), Some("::"));
        within("opened", wild.opened()).await??;
        let port = wild.local_port().ok_or("no port")?;
        peer.send_to(b"to ::", v6_lo(port)).await?;
        let msg = next_msg(&mut wild.readable()?).await?;
        assert_eq!(&msg.data[..], b"to ::");
        assert_eq!(msg.remote_address(), "::1", "canonical IPv6 text (AMB-54)");
        assert_eq!(msg.remote_port(), peer.port());
        let writer = wild.writable()?;
        within("write", writer.write(Datagram::to(&b"from ::"[..], "::1", peer.port()))).await??;
        assert_eq!(peer.recv().await?.0, b"from ::");
        // The same address spelled differently is the same destination.
        within("write", writer.write(Datagram::to(&b"long form"[..], "0:0:0:0:0:0:0:1", peer.port()))).await??;
        assert_eq!(peer.recv().await?.0, b"long form");
        // IPv6 only (AMB-09): a write to IPv4 fails alone, then ::1 still works.
        assert_err(
            within("write v4", writer.write(Datagram::to(&b"v4"[..], LO, 9))).await?,
            ErrorName::NetworkError,
        );
        // Size limit on IPv6: 65,527 bytes pass, 65,528 fail.
        let largest = vec![6u8; 65_527];
        within("write 65527", writer.write(Datagram::to(largest.clone(), "::1", peer.port()))).await??;
        let (data, _) = peer.recv().await?;
        assert_eq!(data.len(), 65_527);
        let r = within("write 65528", writer.write(Datagram::to(vec![6u8; 65_528], "::1", peer.port()))).await?;
        assert_eq!(err_name(&r), Some(ErrorName::NetworkError), "{r:?}");
        within("write", writer.write(Datagram::to(&b"after"[..], "::1", peer.port()))).await??;
        assert_eq!(peer.recv().await?.0, b"after");
        // An IPv6 remote literal binds ::1 by routing.
        let routed = UdpSocket::new(
            &net,
            UdpOptions {
                remote_address: Some("::1".into()),
                remote_port: Some(peer.port()),
                ..UdpOptions::default()
            },
        )?;
        assert_eq!(routed.local_address().as_deref(), Some("::1"));
        within("write", routed.writable()?.write(Datagram::new(&b"routed"[..]))).await??;
        let (data, from) = peer.recv().await?;
        assert_eq!(data, b"routed");
        assert_eq!(from.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
        Ok(())
    }

    // ---------------------------------------------------------------------------------------------
    // Inside a network namespace (DESIGN §6): this test binary re-runs this one test inside a new user
    // and network namespace (`unshare -rn`), where nothing leaves the machine.

    const INSIDE: &str = "TCPUDP_REAL_UDP_IN_NAMESPACE";
    const DONE: &str = "namespace checks passed";

    /// rule: UDP-CTOR-09, UDP-CTOR-11, UDP-CTOR-12, UDP-MCAST-07, DICT-UDPOPT-06
    #[only(Real, IN_SIM)]
    fn namespace_routing_and_multicast_loopback() {
        if std::env::var_os(INSIDE).is_some() {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(inside_namespace()).expect("inside the namespace");
            println!("{DONE}");
            return;
        }
        let probe = Command::new("unshare")
            .args(["-rn", "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
            .output();
        if !probe.as_ref().is_ok_and(|out| out.status.success()) {
            crate::scenarios::skip(format!("cannot make a network namespace with a veth pair (`unshare -rn ip link add … type veth`): {probe:?}"));
            return;
        }
        let out = crate::scenarios::rerun_self(&["unshare", "-rn"], module_path!(), "namespace_routing_and_multicast_loopback")
            .env(INSIDE, "1")
            .output()
            .expect("run the test binary in a namespace");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "inside the namespace:\n{text}");
        assert!(text.contains(DONE), "the inner checks ran:\n{text}");
    }

    fn sh(args: &[&str]) -> Result<(), String> {
        let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{args:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    async fn inside_namespace() -> TestResult {
        sh(&["ip", "link", "set", "lo", "up"])?;
        let net = tcpudp_net_real::network(Policy::allow_all())?;
        let udp = |opts: UdpOptions| UdpSocket::new(&net, opts).map(|_| ());
        // Only `lo`: 192.0.2.1 is not a local address, 10.9.9.9 has no route (nothing can be sent).
        let foreign = || Some("192.0.2.1".to_owned());
        assert_err(
            udp(UdpOptions { local_address: foreign(), ..UdpOptions::default() }),
            ErrorName::InvalidAccessError,
        ); // UDP-CTOR-11
        assert_err(
            udp(UdpOptions {
                local_address: foreign(),
                remote_address: Some(LO.into()),
                remote_port: Some(9),
                ..UdpOptions::default()
            }),
            ErrorName::InvalidAccessError,
        ); // UDP-CTOR-09
        assert_err(
            udp(UdpOptions {
                remote_address: Some("10.9.9.9".into()),
                remote_port: Some(9),
                ..UdpOptions::default()
            }),
            ErrorName::InvalidAccessError,
        ); // UDP-CTOR-12
        assert_eq!(net.faults().created_sockets(), 0);
        udp(UdpOptions { remote_address: Some(LO.into()), remote_port: Some(9), ..UdpOptions::default() })?;

        // A veth pair: v0 (10.200.0.1) is "this host's" multicast interface, v1 (10.200.0.2) plays
        // another host (it accepts datagrams from a local source address).
        sh(&["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"])?;
        sh(&["ip", "addr", "add", "10.200.0.1/24", "dev", "v0"])?;
        sh(&["ip", "addr", "add", "10.200.0.2/24", "dev", "v1"])?;
        sh(&["ip", "link", "set", "v0", "up"])?;
        sh(&["ip", "link", "set", "v1", "up"])?;
        // Packets sent before the pair has carrier are lost: wait until both ends are up.
        for _ in 0..500 {
            let up = |dev: &str| {
                Command::new("ip").args(["-o", "link", "show", dev]).output().is_ok_and(|o| {
                    let text = String::from_utf8_lossy(&o.stdout).into_owned();
                    text.contains("LOWER_UP") && text.contains("state UP")
                })
            };
            if up("v0") && up("v1") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let other_host = sh(&[
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.accept_local=1",
            "net.ipv4.conf.v1.accept_local=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.v1.rp_filter=0",
        ]);
        if let Err(e) = &other_host {
            println!("skipping the other-host part of UDP-MCAST-07: {e}");
        }
        let v0: IpAddr = "10.200.0.1".parse()?;
        let v1: IpAddr = "10.200.0.2".parse()?;
        let here = tcpudp_net_real::network_with_multicast_interface(Policy::allow_all(), Some(v0))?;
        let there = tcpudp_net_real::network_with_multicast_interface(Policy::allow_all(), Some(v1))?;
        // The local member asks for loopback itself: only the sender's option may count.
        let member = UdpSocket::new(&here, UdpOptions { loopback: true, ..UdpOptions::default() })?;
        within("opened", member.opened()).await??;
        let p = member.local_port().ok_or("no port")?;
        member.join_multicast("239.255.88.1")?;
        let remote_member = UdpSocket::new(&there, UdpOptions { local_port: Some(p), ..UdpOptions::default() })?;
        within("opened", remote_member.opened()).await??;
        remote_member.join_multicast("239.255.88.1")?;
        let (mut local_reader, mut remote_reader) = (member.readable()?, remote_member.readable()?);
        // The causal marker: a group only the local member joined, looped back by its sender (TTL 0,
        // so it stays on this host). A unicast marker could not be used: two sockets share port P.
        member.join_multicast("239.255.88.2")?;
        let marker =
            UdpSocket::new(&here, UdpOptions { loopback: true, multicast_ttl: 0, ..UdpOptions::default() })?;
        let marker_writer = marker.writable()?;
        for loopback in [false, true] {
            // TTL 1 crosses the veth pair (inside this namespace only) to the "other host".
            let sender =
                UdpSocket::new(&here, UdpOptions { loopback, multicast_ttl: 1, ..UdpOptions::default() })?;
            within("opened", sender.opened()).await??;
            assert_eq!(sender.diag().options.multicast_loopback, Some(loopback));
            assert_eq!(sender.diag().options.multicast_interface, Some(v0));
            let text = format!("group loopback={loopback}");
            within("write", sender.writable()?.write(Datagram::to(text.clone().into_bytes(), "239.255.88.1", p)))
                .await??;
            within("marker", marker_writer.write(Datagram::to(&b"marker"[..], "239.255.88.2", p))).await??;
            let first = next_msg(&mut local_reader)
                .await
                .map_err(|e| format!("local member, loopback={loopback}: {e}"))?;
            if loopback {
                assert_eq!(&first.data[..], text.as_bytes(), "loopback on: a local member receives");
                assert_eq!(&next_msg(&mut local_reader).await?.data[..], b"marker");
            } else {
                assert_eq!(&first.data[..], b"marker", "loopback off: no local member receives");
            }
            if other_host.is_ok() {
                let msg = next_msg(&mut remote_reader)
                    .await
                    .map_err(|e| format!("other host, loopback={loopback}: {e}"))?;
                assert_eq!(&msg.data[..], text.as_bytes(), "another host receives either way");
                assert_eq!(msg.remote_address(), "10.200.0.1");
            }
        }
        Ok(())
    }
}

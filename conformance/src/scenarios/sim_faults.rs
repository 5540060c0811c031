//! The simulator's fault layer (DESIGN §7), through the public API in `tcpudp_net_sim::Simulation`
//! worlds: every fault with a negative control (fault off: no effect) and an exact simulated-time
//! expectation, the emulated UDP receive buffer, multicast by the sender's loopback flag, address
//! reuse, the harness's typed errors, and determinism across runs and processes.
//!
//! Times are exact in simulation: on a `LinkProfile::fixed` link a segment sent at `t` arrives at
//! `t + LATENCY`; each TCP loss adds one retransmission timeout (200 ms, doubling). Tolerances
//! are one simulation tick.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tcpudp::{
    Datagram, Policy, ReadyState, SocketError, TcpOptions, TcpServerOptions, TcpServerSocket, TcpSocket,
    UdpOptions, UdpSocket,
};
use tcpudp_net_sim::{
    FaultError, LinkProfile, SimBuilder, SimError, SimFaults, Simulation, TcpLoss, UdpImpairment, RTO_INITIAL,
};

/// Why these tests do not run on the other backend.
const ON_REAL: &str =
    "the simulator's fault layer at exact simulated times (partition, TCP loss, crash, emulated receive buffer, multicast by the sender's flag): not expressible on real sockets (the proxy terminates TCP; netem unavailable)";

crate::only_on! {

    /// The TCP port servers listen on.
    const PORT: u16 = 7000;
    /// The UDP port receivers bind.
    const UPORT: u16 = 9000;
    /// Every link's latency (fixed: no natural reordering).
    const LATENCY: Duration = Duration::from_millis(10);
    /// The default simulation step.
    const TICK: Duration = Duration::from_millis(1);

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    // ---------------------------------------------------------------------------------------------
    // Fixtures

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A seeded simulation with fixed-latency links and 1 ms steps.
    fn sim(seed: u64) -> Simulation<'static> {
        SimBuilder::new(seed).link(LinkProfile::fixed(LATENCY)).build()
    }

    /// The same with a coarser step (long runs; timers stay exact, messages move on step edges).
    fn sim_tick(seed: u64, tick: Duration) -> Simulation<'static> {
        SimBuilder::new(seed).link(LinkProfile::fixed(LATENCY)).tick(tick).build()
    }

    /// Simulated time now (inside host software).
    fn now() -> Duration {
        turmoil::sim_elapsed().expect("on a simulated host")
    }

    /// What a host observed, with its simulated time; shared by every host of one world.
    #[derive(Clone, Default)]
    struct Log(Rc<RefCell<Vec<(Duration, String)>>>);

    impl Log {
        fn push(&self, event: impl Into<String>) {
            self.0.borrow_mut().push((now(), event.into()));
        }

        /// When the first event starting with `prefix` happened.
        fn first(&self, prefix: &str) -> Option<Duration> {
            self.0.borrow().iter().find(|(_, e)| e.starts_with(prefix)).map(|(t, _)| *t)
        }

        /// The concatenated payload of every `data …` event.
        fn data(&self) -> String {
            self.0.borrow().iter().filter_map(|(_, e)| e.strip_prefix("data ")).collect()
        }

        fn events(&self) -> Vec<String> {
            self.0.borrow().iter().map(|(_, e)| e.clone()).collect()
        }

        /// Waits (1 ms at a time, simulated) until an event starting with `prefix` is logged.
        async fn wait_for(&self, prefix: &str) -> Duration {
            loop {
                if let Some(at) = self.first(prefix) {
                    return at;
                }
                tokio::time::sleep(ms(1)).await;
            }
        }
    }

    /// `"NetworkError Some(Reset)"`: an error's name and cause, as logged.
    fn describe(e: &SocketError) -> String {
        format!("{} {:?}", e.name(), e.cause())
    }

    #[track_caller]
    fn assert_near(actual: Duration, expected: Duration, tolerance: Duration, what: &str) {
        let diff = actual.abs_diff(expected);
        assert!(diff <= tolerance, "{what}: at {actual:?}, expected {expected:?} ± {tolerance:?}");
    }

    /// Reads `sock` to its end, logging `data …`, `eof` or `err …`.
    async fn log_reads(sock: TcpSocket, log: Log) {
        let Ok(mut reader) = sock.readable() else { return };
        loop {
            match reader.read().await {
                Ok(Some(chunk)) => log.push(format!("data {}", String::from_utf8_lossy(&chunk))),
                Ok(None) => {
                    log.push("eof");
                    break;
                }
                Err(e) => {
                    log.push(format!("err {}", describe(&e)));
                    break;
                }
            }
        }
        // Keep the socket until the world ends (its peer may still be observed).
        std::future::pending::<()>().await;
    }

    /// Host "server": a TCP server on `PORT` whose every connection is read to its end into `log`.
    fn tcp_sink(sim: &mut Simulation<'static>, log: &Log, options: TcpServerOptions) {
        let log = log.clone();
        sim.host("server", move || {
            let (log, options) = (log.clone(), options.clone());
            async move {
                let net = tcpudp_net_sim::network("server", Policy::allow_all())?;
                let srv = TcpServerSocket::new(&net, TcpServerOptions { local_port: Some(PORT), ..options })?;
                srv.opened().await?;
                loop {
                    let sock = srv.listen().await?;
                    tokio::task::spawn_local(log_reads(sock, log.clone()));
                }
            }
        })
        .expect("server host");
    }

    /// A connected client socket to the server.
    async fn connect(host: &str) -> Result<TcpSocket, Box<dyn std::error::Error>> {
        let net = tcpudp_net_sim::network(host, Policy::allow_all())?;
        let sock = TcpSocket::new(&net, "server", PORT, TcpOptions::default())?;
        sock.opened().await?;
        Ok(sock)
    }

    /// The connection's two addresses as the client sees them (its peer is host "server").
    fn addresses(sock: &TcpSocket, faults: &SimFaults) -> (SocketAddr, SocketAddr) {
        let local: IpAddr = sock.local_address().expect("local address").parse().expect("an address");
        let remote = faults.host_ip("server").expect("server");
        (SocketAddr::new(local, sock.local_port().expect("port")), SocketAddr::new(remote, sock.remote_port()))
    }

    // ---------------------------------------------------------------------------------------------
    // TCP loss

    /// rule: TCP-WRITE-01
    /// invariant: INV-07, INV-08
    #[only(Sim, ON_REAL)]
    fn tcp_segment_lost_k_times_arrives_after_rto_times_2k_minus_1() {
        // k = 0 is the negative control: no fault, the segment arrives after one latency.
        for k in [0u32, 1, 2, 5, 8] {
            let log = Log::default();
            let mut sim = sim(100 + u64::from(k));
            tcp_sink(&mut sim, &log, TcpServerOptions::default());
            let (faults, server_log, sent) = (sim.faults(), log.clone(), Rc::new(Cell::new(Duration::ZERO)));
            let sent_at = sent.clone();
            sim.client("client", async move {
                let sock = connect("client").await?;
                tokio::time::sleep(ms(100)).await;
                if k > 0 {
                    faults.tcp_loss("client", "server", TcpLoss::Times(k))?;
                }
                sent_at.set(now());
                let writer = sock.writable()?;
                writer.write(&b"x"[..]).await?;
                writer.write(&b"y"[..]).await?; // waits behind "x" (in-order delivery)
                server_log.wait_for("data").await;
                while server_log.data() != "xy" {
                    tokio::time::sleep(ms(1)).await;
                }
                assert_eq!(sock.ready_state(), ReadyState::Open);
                Ok(())
            })
            .expect("client");
            sim.run().unwrap_or_else(|e| panic!("k = {k}: {e}"));
            let expected = sent.get() + LATENCY + RTO_INITIAL * ((1 << k) - 1);
            assert_near(log.first("data").expect("arrived"), expected, TICK, &format!("k = {k}"));
            assert_eq!(log.data(), "xy", "each byte once, in order (k = {k})");
        }
    }

    /// One run of the retransmission budget: what the client and server saw, and when the write was.
    fn budget_run(variant: &'static str) -> (Log, Log, Duration) {
        let (server_log, client_log) = (Log::default(), Log::default());
        // Coarse steps: the run covers 805 s of simulated time.
        let mut sim = sim_tick(7, ms(10));
        tcp_sink(&mut sim, &server_log, TcpServerOptions::default());
        let (faults, sent) = (sim.faults(), Rc::new(Cell::new(Duration::ZERO)));
        let (cl, sl, sent_at) = (client_log.clone(), server_log.clone(), sent.clone());
        sim.client("client", async move {
            let sock = connect("client").await?;
            tokio::time::sleep(ms(100)).await;
            match variant {
                "lost 15 times" => faults.tcp_loss("client", "server", TcpLoss::Times(15))?,
                "lost 14 times" => faults.tcp_loss("client", "server", TcpLoss::Times(14))?,
                "partition" => faults.partition("client", "server")?,
                "crash" => faults.crash_host("server")?,
                _ => {}
            }
            tokio::time::sleep(ms(100)).await;
            sent_at.set(now());
            sock.writable()?.write(&b"x"[..]).await?;
            if variant == "lost 14 times" {
                sl.wait_for("data").await;
                cl.push(format!("state {:?}", sock.ready_state()));
                return Ok(());
            }
            match sock.closed().await {
                Ok(()) => cl.push("closed ok"),
                Err(e) => cl.push(format!("closed {}", describe(&e))),
            }
            tokio::time::sleep(secs(1)).await; // the server notices on its next step
            Ok(())
        })
        .expect("client");
        sim.run().unwrap_or_else(|e| panic!("{variant}: {e}"));
        (client_log, server_log, sent.get())
    }

    /// rule: TCP-READ-ERR-01, ERR-06
    #[only(Sim, ON_REAL)]
    fn tcp_retransmission_budget_times_out_both_ends_at_the_sum_of_backoffs() {
        let tick = ms(10);
        let budget = ms(804_600); // 0.2 · (2^10 − 1) + 5 · 120 s: the sum of 15 back-offs
        for variant in ["lost 15 times", "partition"] {
            let (client, server, sent) = budget_run(variant);
            assert_eq!(client.events(), ["closed NetworkError Some(TimedOut)"], "{variant}");
            assert_near(client.first("closed").expect("closed"), sent + budget, tick, variant);
            assert_eq!(server.events(), ["err NetworkError Some(TimedOut)"], "{variant}: both ends");
            assert_near(server.first("err").expect("server error"), sent + budget, tick, variant);
        }
        // A silent (crashed) server: the client times out alone.
        let (client, server, sent) = budget_run("crash");
        assert_eq!(client.events(), ["closed NetworkError Some(TimedOut)"]);
        assert_near(client.first("closed").expect("closed"), sent + budget, tick, "crash");
        assert!(server.events().is_empty(), "a crashed host says nothing: {:?}", server.events());
        // Negative control: one loss short of the budget, the segment gets through.
        let (client, server, sent) = budget_run("lost 14 times");
        assert_eq!(server.events(), ["data x"]);
        assert_near(server.first("data").expect("data"), sent + ms(684_600) + LATENCY, tick, "14 losses");
        assert_eq!(client.events(), ["state Open"]);
    }

    // ---------------------------------------------------------------------------------------------
    // Partitions

    /// rule: TCP-WRITE-01
    /// invariant: INV-07, INV-08
    #[only(Sim, ON_REAL)]
    fn tcp_partition_holds_data_until_the_first_retransmission_after_repair() {
        // (variant, when "x" arrives after the write). Repair comes 5 s after the write; the
        // retransmissions are at 0.2, 0.6, 1.4, 3.0 and 6.2 s.
        let cases = [
            ("none", LATENCY),
            ("both ways", ms(6_200) + LATENCY),
            ("client to server", ms(6_200) + LATENCY),
            // Only the acknowledgements are lost: the data arrives at once (and only once).
            ("server to client", LATENCY),
        ];
        for (variant, after) in cases {
            let log = Log::default();
            let mut sim = sim(21);
            tcp_sink(&mut sim, &log, TcpServerOptions::default());
            let (faults, server_log, sent) = (sim.faults(), log.clone(), Rc::new(Cell::new(Duration::ZERO)));
            let sent_at = sent.clone();
            sim.client("client", async move {
                let sock = connect("client").await?;
                match variant {
                    "both ways" => faults.partition("client", "server")?,
                    "client to server" => faults.partition_oneway("client", "server")?,
                    "server to client" => faults.partition_oneway("server", "client")?,
                    _ => {}
                }
                sent_at.set(now());
                let writer = sock.writable()?;
                writer.write(&b"x"[..]).await?;
                tokio::time::sleep(secs(5)).await;
                faults.repair("client", "server")?;
                server_log.wait_for("data").await;
                // The connection is healthy afterwards: a later write arrives after one latency.
                tokio::time::sleep(secs(2)).await;
                writer.write(&b"z"[..]).await?;
                while server_log.data() != "xz" {
                    tokio::time::sleep(ms(1)).await;
                }
                Ok(())
            })
            .expect("client");
            sim.run().unwrap_or_else(|e| panic!("{variant}: {e}"));
            assert_near(log.first("data").expect("arrived"), sent.get() + after, TICK, variant);
            assert_eq!(log.data(), "xz", "{variant}: once each, in order");
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Resets

    /// rule: EXT-04, TCP-READ-ERR-01
    #[only(Sim, ON_REAL)]
    fn reset_connection_resets_both_library_ends() {
        for reset in [true, false] {
            let (server_log, client_log) = (Log::default(), Log::default());
            let mut sim = sim(31);
            tcp_sink(&mut sim, &server_log, TcpServerOptions::default());
            let (faults, cl, reset_at) = (sim.faults(), client_log.clone(), Rc::new(Cell::new(Duration::ZERO)));
            let at = reset_at.clone();
            sim.client("client", async move {
                let sock = connect("client").await?;
                sock.writable()?.write(&b"before"[..]).await?;
                tokio::time::sleep(secs(1)).await;
                at.set(now());
                if reset {
                    let (local, remote) = addresses(&sock, &faults);
                    assert_eq!(faults.reset_connection(remote, local)?, 2, "both ends are library sockets");
                }
                let write = sock.writable()?.write(&b"after"[..]).await;
                cl.push(format!("write {:?}", write.as_ref().map_err(describe)));
                let closed = tokio::time::timeout(secs(1), sock.closed()).await;
                cl.push(format!("closed {:?}", closed.map(|r| r.map_err(|e| describe(&e)))));
                tokio::time::sleep(secs(1)).await; // the server notices on its next step
                Ok(())
            })
            .expect("client");
            sim.run().expect("simulation");
            if reset {
                let events = client_log.events();
                assert_eq!(events[1], "closed Ok(Err(\"NetworkError Some(Reset)\"))", "{events:?}");
                assert_eq!(server_log.events(), ["data before", "err NetworkError Some(Reset)"]);
                assert_near(server_log.first("err").expect("reset"), reset_at.get(), TICK, "server reset");
                assert_near(client_log.first("closed").expect("closed"), reset_at.get(), TICK, "client reset");
            } else {
                assert_eq!(client_log.events(), ["write Ok(())", "closed Err(Elapsed(()))"]);
                assert_eq!(server_log.data(), "beforeafter");
            }
        }
    }

    /// rule: EXT-04, TCP-READ-ERR-01
    #[only(Sim, ON_REAL)]
    fn reset_connection_from_a_raw_turmoil_peer_resets_the_library_end() {
        let client_log = Log::default();
        let mut sim = sim(32);
        let (faults, reset_at) = (sim.faults(), Rc::new(Cell::new(Duration::ZERO)));
        let at = reset_at.clone();
        sim.host("server", move || {
            let (faults, at) = (faults.clone(), at.clone());
            async move {
                use tokio::io::AsyncWriteExt;
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                let (mut stream, peer) = listener.accept().await?;
                stream.write_all(b"hello").await?;
                tokio::time::sleep(secs(1)).await;
                at.set(now());
                assert_eq!(faults.reset_connection(stream.local_addr()?, peer), Ok(1), "one library end");
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .expect("server");
        let cl = client_log.clone();
        sim.client("client", async move {
            let sock = connect("client").await?;
            let mut reader = sock.readable()?;
            assert_eq!(reader.read().await?.as_deref(), Some(&b"hello"[..]));
            let e = reader.read().await.expect_err("reset");
            cl.push(describe(&e));
            Ok(())
        })
        .expect("client");
        sim.run().expect("simulation");
        assert_eq!(client_log.events(), ["NetworkError Some(Reset)"]);
        assert_near(client_log.first("Network").expect("reset"), reset_at.get(), TICK, "reset time");
    }

    // ---------------------------------------------------------------------------------------------
    // Crashes and kills

    /// Host "server": a library server that accepts and never reads (unread data stays unread), and
    /// logs each accepted connection. Restartable.
    fn idle_server(sim: &mut Simulation<'static>, log: &Log) {
        let log = log.clone();
        sim.host("server", move || {
            let log = log.clone();
            async move {
                let net = tcpudp_net_sim::network("server", Policy::allow_all())?;
                let srv = TcpServerSocket::new(
                    &net,
                    TcpServerOptions { local_port: Some(PORT), ..Default::default() },
                )?;
                srv.opened().await?;
                let mut held = Vec::new();
                loop {
                    held.push(srv.listen().await?);
                    log.push("accepted");
                }
            }
        })
        .expect("server host");
    }

    /// rule: EXT-04, TCP-READ-ERR-01, TCP-OPEN-02
    #[only(Sim, ON_REAL)]
    fn crash_host_is_silent_then_rst_after_restart() {
        let (server_log, client_log) = (Log::default(), Log::default());
        let mut sim = sim(41);
        idle_server(&mut sim, &server_log);
        let (faults, cl, sl) = (sim.faults(), client_log.clone(), server_log.clone());
        let write_at = Rc::new(Cell::new(Duration::ZERO));
        let wrote = write_at.clone();
        sim.client("client", async move {
            let sock = connect("client").await?;
            let mut reader = sock.readable()?;
            faults.crash_host("server")?;
            // Silence: no end of stream, no reset, for as long as we wait.
            let quiet = tokio::time::timeout(secs(3), reader.read()).await;
            cl.push(format!("after crash {}", if quiet.is_err() { "silent" } else { "heard something" }));
            // While down, a connect waits (SYNs unanswered); after the restart it gets through.
            let net = tcpudp_net_sim::network("client", Policy::allow_all())?;
            let second = TcpSocket::new(&net, "server", PORT, TcpOptions::default())?;
            faults.restart("server")?;
            tokio::time::sleep(secs(1)).await;
            // The restarted host knows nothing of the old connection: our next segment gets RST.
            wrote.set(now());
            let _ = sock.writable()?.write(&b"anyone?"[..]).await;
            let e = sock.closed().await.expect_err("reset");
            cl.push(format!("old connection {}", describe(&e)));
            second.opened().await?;
            cl.push("second connection opened");
            sl.wait_for("accepted").await;
            Ok(())
        })
        .expect("client");
        sim.run().expect("simulation");
        assert_eq!(
            client_log.events(),
            ["after crash silent", "old connection NetworkError Some(Reset)", "second connection opened"]
        );
        assert_near(client_log.first("old connection").expect("reset"), write_at.get(), TICK, "rst");
        // The second connect's SYNs: 0 s (down), 1 s (back up: the restart was at +0 s of it).
        let opened = client_log.first("second").expect("opened");
        assert_near(opened, write_at.get() - secs(1) + secs(1) + LATENCY, TICK, "second connect");
    }

    /// rule: TCP-READ-CLOSE-02, EXT-04, TCP-READ-ERR-01, TCP-OPEN-02
    #[only(Sim, ON_REAL)]
    fn kill_process_sends_fin_or_rst_with_unread_data_and_restart_serves_again() {
        for unread in [false, true] {
            let (server_log, client_log) = (Log::default(), Log::default());
            let mut sim = sim(42);
            idle_server(&mut sim, &server_log);
            let (faults, cl, sl) = (sim.faults(), client_log.clone(), server_log.clone());
            let killed = Rc::new(Cell::new(Duration::ZERO));
            let killed_at = killed.clone();
            sim.client("client", async move {
                let sock = connect("client").await?;
                if unread {
                    // More than the server library reads ahead (its 64 KiB high-water mark): the rest
                    // stays unread in the (simulated) kernel.
                    let writer = sock.writable()?;
                    for _ in 0..16 {
                        drop(writer.write(Bytes::from(vec![b'u'; 16 * 1024])));
                    }
                    tokio::time::sleep(ms(500)).await;
                }
                sl.wait_for("accepted").await;
                tokio::time::sleep(ms(100)).await;
                killed_at.set(now());
                faults.kill_process("server")?;
                match sock.readable()?.read().await {
                    Ok(None) => cl.push("eof"),
                    Ok(Some(chunk)) => cl.push(format!("data {chunk:?}")),
                    Err(e) => cl.push(format!("err {}", describe(&e))),
                }
                // The process is down but the host is up: a connect is refused at once.
                let net = tcpudp_net_sim::network("client", Policy::allow_all())?;
                let refused = TcpSocket::new(&net, "server", PORT, TcpOptions::default())?;
                cl.push(format!("while down: {:?}", refused.opened().await.map_err(|e| describe(&e))));
                faults.restart("server")?;
                tokio::time::sleep(ms(100)).await;
                connect("client").await?;
                cl.push("served again");
                Ok(())
            })
            .expect("client");
            sim.run().unwrap_or_else(|e| panic!("unread {unread}: {e}"));
            let expected = if unread { "err NetworkError Some(Reset)" } else { "eof" };
            let events = client_log.events();
            assert_eq!(
                events,
                [expected, "while down: Err(\"NetworkError Some(Refused)\")", "served again"],
                "unread {unread}"
            );
            let seen = client_log.first(expected).expect("seen");
            assert!(seen <= killed.get() + LATENCY + TICK, "unread {unread}: at {seen:?}");
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Connect

    /// rule: TCP-OPEN-02, ERR-06
    #[only(Sim, ON_REAL)]
    fn connect_into_a_partition_or_to_a_silent_host_times_out_at_the_connect_timeout() {
        // (variant, outcome, when after the connect call). SYNs go at 0, 1, 3, 7, 15, 31, 63 s.
        let cases = [
            ("none", "opened", LATENCY),
            ("partition", "NetworkError Some(TimedOut)", secs(127)),
            ("partition repaired at 5 s", "opened", secs(7) + LATENCY),
            ("crashed host", "NetworkError Some(TimedOut)", secs(127)),
        ];
        for (variant, outcome, after) in cases {
            let log = Log::default();
            let mut sim = sim_tick(51, ms(10));
            idle_server(&mut sim, &Log::default());
            let (faults, cl, start) = (sim.faults(), log.clone(), Rc::new(Cell::new(Duration::ZERO)));
            let started = start.clone();
            sim.client("client", async move {
                tokio::time::sleep(ms(100)).await;
                match variant {
                    "partition" | "partition repaired at 5 s" => faults.partition("client", "server")?,
                    "crashed host" => faults.crash_host("server")?,
                    _ => {}
                }
                let net = tcpudp_net_sim::network("client", Policy::allow_all())?;
                started.set(now());
                let sock = TcpSocket::new(&net, "server", PORT, TcpOptions::default())?;
                if variant == "partition repaired at 5 s" {
                    tokio::time::sleep(secs(5)).await;
                    faults.repair("client", "server")?;
                }
                match sock.opened().await {
                    Ok(()) => cl.push("opened"),
                    Err(e) => cl.push(describe(&e)),
                }
                Ok(())
            })
            .expect("client");
            sim.run().unwrap_or_else(|e| panic!("{variant}: {e}"));
            assert_eq!(log.events(), [outcome], "{variant}");
            assert_near(log.first(outcome).expect("settled"), start.get() + after, ms(10), variant);
        }
    }

    /// rule: SRV-LISTEN-03, TCP-OPEN-02
    #[only(Sim, ON_REAL)]
    fn backlog_overflow_waits_for_room_never_refuses() {
        // Backlog 2: the accept queue holds 3 connections (as Linux). The server calls listen() only
        // at 2 s (or never): the 4th connect waits for room, retrying its SYN at 1, 3, 7… s.
        for (backlog, listen_at, fourth) in
            [(3u32, Some(secs(2)), Some(LATENCY)), (2, Some(secs(2)), Some(secs(3) + LATENCY)), (2, None, None)]
        {
            let log = Log::default();
            let mut sim = sim_tick(61, ms(10));
            let server_log = log.clone();
            sim.host("server", move || {
                let log = server_log.clone();
                async move {
                    let net = tcpudp_net_sim::network("server", Policy::allow_all())?;
                    let options = TcpServerOptions { local_port: Some(PORT), backlog, ..Default::default() };
                    let srv = TcpServerSocket::new(&net, options)?;
                    srv.opened().await?;
                    let Some(at) = listen_at else { return std::future::pending().await };
                    tokio::time::sleep(at).await;
                    let first = srv.listen().await?;
                    log.push("listened");
                    std::future::pending::<()>().await;
                    drop(first);
                    Ok(())
                }
            })
            .expect("server");
            let cl = log.clone();
            sim.client("client", async move {
                let net = tcpudp_net_sim::network("client", Policy::allow_all())?;
                let socks: Vec<_> = (0..4)
                    .map(|_| TcpSocket::new(&net, "server", PORT, TcpOptions::default()))
                    .collect::<Result<_, _>>()?;
                for (i, sock) in socks.iter().enumerate() {
                    let outcome = sock.opened().await;
                    cl.push(format!("{i} {:?}", outcome.map_err(|e| describe(&e))));
                }
                Ok(())
            })
            .expect("client");
            sim.run().unwrap_or_else(|e| panic!("backlog {backlog}: {e}"));
            for i in 0..3 {
                assert_near(log.first(&format!("{i} Ok")).expect("queued"), LATENCY, ms(10), "first three");
            }
            match fourth {
                Some(at) => assert_near(log.first("3 Ok").expect("4th opened"), at, ms(10), "4th"),
                None => {
                    assert_eq!(log.first("3 Ok"), None);
                    let failed = log.first("3 Err(\"NetworkError Some(TimedOut)\")").expect("4th timed out");
                    assert_near(failed, secs(127), ms(10), "4th timed out");
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------------
    // UDP impairments

    /// Host "server": a UDP socket on `UPORT` logging every datagram as `dgram <text>`.
    fn udp_sink(sim: &mut Simulation<'static>, log: &Log) {
        let log = log.clone();
        sim.host("server", move || {
            let log = log.clone();
            async move {
                let net = tcpudp_net_sim::network("server", Policy::allow_all())?;
                let sock = UdpSocket::new(&net, UdpOptions { local_port: Some(UPORT), ..Default::default() })?;
                sock.opened().await?;
                let mut reader = sock.readable()?;
                while let Some(msg) = reader.read().await? {
                    log.push(format!("dgram {}", String::from_utf8_lossy(&msg.data)));
                }
                Ok(())
            }
        })
        .expect("server host");
    }

    /// A client UDP socket and the server's address text.
    async fn udp_client(faults: &SimFaults) -> Result<(UdpSocket, String), Box<dyn std::error::Error>> {
        let net = tcpudp_net_sim::network("client", Policy::allow_all())?;
        let sock = UdpSocket::new(&net, UdpOptions::default())?;
        sock.opened().await?;
        Ok((sock, faults.host_ip("server").expect("server").to_string()))
    }

    /// Sends `count` datagrams `<prefix><i>`, 1 ms apart, recording each send time in `log` as
    /// `sent <prefix><i>`; then clears the impairments and sends `marker`.
    async fn send_series(
        sock: &UdpSocket,
        to: &str,
        prefix: &str,
        count: usize,
        faults: &SimFaults,
        log: &Log,
    ) -> TestResult {
        let writer = sock.writable()?;
        for i in 0..count {
            log.push(format!("sent {prefix}{i}"));
            writer.write(Datagram::to(format!("{prefix}{i}"), to, UPORT)).await?;
            tokio::time::sleep(ms(1)).await;
        }
        faults.udp_impair("client", "server", UdpImpairment::default())?;
        tokio::time::sleep(ms(200)).await;
        writer.write(Datagram::to("marker", to, UPORT)).await?;
        Ok(())
    }

    /// One UDP run: `count` datagrams from "client" to "server" with `impairment`; returns what the
    /// server received (with times) and when each was sent.
    fn udp_run(seed: u64, impairment: UdpImpairment, count: usize) -> (Log, Log) {
        let (server_log, client_log) = (Log::default(), Log::default());
        let mut sim = sim(seed);
        udp_sink(&mut sim, &server_log);
        let (faults, sl, cl) = (sim.faults(), server_log.clone(), client_log.clone());
        sim.client("client", async move {
            let (sock, to) = udp_client(&faults).await?;
            faults.udp_impair("client", "server", impairment)?;
            send_series(&sock, &to, "d", count, &faults, &cl).await?;
            sl.wait_for("dgram marker").await;
            Ok(())
        })
        .expect("client");
        sim.run().expect("simulation");
        (server_log, client_log)
    }

    /// The payloads received, in order, without the marker.
    fn received(log: &Log) -> Vec<String> {
        log.events()
            .into_iter()
            .filter_map(|e| e.strip_prefix("dgram ").map(str::to_owned))
            .filter(|d| d != "marker")
            .collect()
    }

    /// How long after its send each received datagram arrived.
    fn delays(server: &Log, client: &Log) -> Vec<Duration> {
        server
            .0
            .borrow()
            .iter()
            .filter_map(|(at, e)| {
                let name = e.strip_prefix("dgram ")?;
                let sent = client.first(&format!("sent {name}"))?;
                Some(*at - sent)
            })
            .collect()
    }

    fn series(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("d{i}")).collect()
    }

    /// rule: UDP-WRITE-06, UDP-READ-01
    /// invariant: INV-10
    #[only(Sim, ON_REAL)]
    fn udp_loss_drops_datagrams_and_the_control_delivers_all() {
        let (server, _) = udp_run(71, UdpImpairment { loss: 1.0, ..Default::default() }, 10);
        assert_eq!(server.events(), ["dgram marker"], "every datagram lost, the marker is the next thing seen");
        let (server, _) = udp_run(71, UdpImpairment { loss: 0.5, ..Default::default() }, 40);
        let got = received(&server);
        assert!(!got.is_empty() && got.len() < 40, "about half lost: {} arrived", got.len());
        assert!(got.iter().all(|d| series(40).contains(d)), "only sent datagrams arrive: {got:?}");
        let (server, _) = udp_run(71, UdpImpairment::default(), 10);
        assert_eq!(received(&server), series(10), "control: all, in order");
    }

    /// rule: UDP-READ-01
    /// invariant: INV-10
    #[only(Sim, ON_REAL)]
    fn udp_duplication_delivers_each_datagram_twice_and_the_control_once() {
        let (server, client) = udp_run(72, UdpImpairment { duplicate: 1.0, ..Default::default() }, 5);
        let twice: Vec<String> = series(5).into_iter().flat_map(|d| [d.clone(), d]).collect();
        assert_eq!(received(&server), twice);
        assert!(delays(&server, &client).iter().all(|d| *d == LATENCY), "the copy arrives with the original");
        let (server, _) = udp_run(72, UdpImpairment::default(), 5);
        assert_eq!(received(&server), series(5));
    }

    /// rule: UDP-READ-01
    /// invariant: INV-10
    #[only(Sim, ON_REAL)]
    fn udp_reordering_on_a_fixed_latency_link_and_order_without_it() {
        let held = ms(5);
        let (server, client) =
            udp_run(73, UdpImpairment { reorder: 0.3, reorder_delay: held, ..Default::default() }, 20);
        let got = received(&server);
        let mut sorted = got.clone();
        sorted.sort_by_key(|d| d[1..].parse::<u32>().expect("sequence"));
        assert_eq!(sorted, series(20), "each once");
        assert_ne!(got, series(20), "some overtaken");
        for delay in delays(&server, &client) {
            assert!(delay == LATENCY || delay == LATENCY + held, "arrived {delay:?} after its send");
        }
        // The fixed-latency link alone keeps the order.
        let (server, client) = udp_run(73, UdpImpairment::default(), 20);
        assert_eq!(received(&server), series(20));
        assert!(delays(&server, &client).iter().all(|d| *d == LATENCY));
    }

    /// rule: UDP-READ-01
    /// invariant: INV-10
    #[only(Sim, ON_REAL)]
    fn udp_delay_and_jitter_at_exact_times() {
        let (server, client) = udp_run(74, UdpImpairment { delay: ms(50), ..Default::default() }, 5);
        assert_eq!(received(&server), series(5));
        assert!(
            delays(&server, &client).iter().all(|d| *d == LATENCY + ms(50)),
            "{:?}",
            delays(&server, &client)
        );
        let (server, client) = udp_run(74, UdpImpairment { jitter: ms(20), ..Default::default() }, 20);
        let observed = delays(&server, &client);
        assert!(observed.iter().all(|d| *d >= LATENCY && *d <= LATENCY + ms(20) + TICK), "{observed:?}");
        let distinct: std::collections::BTreeSet<_> = observed.iter().collect();
        assert!(distinct.len() > 2, "jitter varies the delay: {observed:?}");
        let (server, client) = udp_run(74, UdpImpairment::default(), 5);
        assert!(delays(&server, &client).iter().all(|d| *d == LATENCY));
    }

    /// rule: UDP-READ-01
    /// invariant: INV-10
    #[only(Sim, ON_REAL)]
    fn udp_partitions_drop_datagrams_until_repair() {
        for variant in ["none", "both ways", "client to server", "server to client"] {
            let log = Log::default();
            let mut sim = sim(75);
            udp_sink(&mut sim, &log);
            let (faults, sl) = (sim.faults(), log.clone());
            sim.client("client", async move {
                let (sock, to) = udp_client(&faults).await?;
                match variant {
                    "both ways" => faults.partition("client", "server")?,
                    "client to server" => faults.partition_oneway("client", "server")?,
                    "server to client" => faults.partition_oneway("server", "client")?,
                    _ => {}
                }
                let writer = sock.writable()?;
                writer.write(Datagram::to("during", to.as_str(), UPORT)).await?;
                tokio::time::sleep(secs(1)).await;
                faults.repair("client", "server")?;
                writer.write(Datagram::to("after", to.as_str(), UPORT)).await?;
                sl.wait_for("dgram after").await;
                Ok(())
            })
            .expect("client");
            sim.run().unwrap_or_else(|e| panic!("{variant}: {e}"));
            let expected: &[&str] = match variant {
                "both ways" | "client to server" => &["dgram after"],
                _ => &["dgram during", "dgram after"],
            };
            assert_eq!(log.events(), expected, "{variant}");
        }
    }

    // ---------------------------------------------------------------------------------------------
    // The emulated UDP receive buffer

    /// The receiver binds `UPORT` and reads nothing until the sender has sent `n` datagrams; then it
    /// reads everything queued, the sender sends a marker, and the receiver reads it. Returns
    /// (datagrams read, `dropped_datagrams()`, readyState).
    fn flood(n: usize) -> (usize, u64, ReadyState) {
        let outcome = Rc::new(Cell::new((0usize, 0u64, ReadyState::Opening)));
        let (sent, drained) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
        let mut sim = sim(81);
        let (out, sent_flag, drained_flag) = (outcome.clone(), sent.clone(), drained.clone());
        sim.host("server", move || {
            let (out, sent, drained) = (out.clone(), sent_flag.clone(), drained_flag.clone());
            async move {
                let net = tcpudp_net_sim::network("server", Policy::allow_all())?;
                let sock = UdpSocket::new(&net, UdpOptions { local_port: Some(UPORT), ..Default::default() })?;
                sock.opened().await?;
                while !sent.get() {
                    tokio::time::sleep(ms(1)).await;
                }
                tokio::time::sleep(ms(100)).await; // everything has arrived (or was dropped)
                let mut reader = sock.readable()?;
                let mut count = 0;
                let mut marker = false;
                while !marker {
                    match tokio::time::timeout(ms(50), reader.read()).await {
                        Ok(msg) => {
                            let msg = msg?.ok_or("readable ended")?;
                            assert_eq!(msg.data.len(), 100, "whole datagrams");
                            marker = msg.data.starts_with(b"marker");
                            count += 1;
                        }
                        Err(_) => drained.set(true), // nothing more queued: ask for the marker
                    }
                }
                out.set((count, sock.dropped_datagrams(), sock.ready_state()));
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .expect("server");
        let (faults, result) = (sim.faults(), outcome.clone());
        sim.client("client", async move {
            let (sock, to) = udp_client(&faults).await?;
            let writer = sock.writable()?;
            for i in 0..n {
                let mut data = format!("{i:>8}").into_bytes();
                data.resize(100, b'.');
                writer.write(Datagram::to(data, to.as_str(), UPORT)).await?;
            }
            sent.set(true);
            while !drained.get() {
                tokio::time::sleep(ms(1)).await;
            }
            let mut marker = b"marker".to_vec();
            marker.resize(100, b'.');
            writer.write(Datagram::to(marker, to.as_str(), UPORT)).await?;
            while result.get().2 == ReadyState::Opening {
                tokio::time::sleep(ms(1)).await;
            }
            Ok(())
        })
        .expect("client");
        sim.run().expect("simulation");
        outcome.get()
    }

    /// rule: UDP-READ-04, EXT-09
    /// invariant: INV-19
    #[only(Sim, ON_REAL)]
    fn udp_receive_buffer_tail_drops_are_counted_exactly() {
        let n = 5_000;
        let (delivered, dropped, state) = flood(n);
        assert!(delivered < n, "fewer than N arrived: {delivered}");
        assert!(dropped > 0);
        assert_eq!(delivered as u64 + dropped, n as u64 + 1, "delivered + dropped == N + 1");
        assert_eq!(state, ReadyState::Open);
        // Negative control: what fits is never dropped.
        assert_eq!(flood(50), (51, 0, ReadyState::Open));
    }

    // ---------------------------------------------------------------------------------------------
    // Multicast and address reuse

    const GROUP: &str = "239.255.0.7";

    /// Reads the next datagram's text (hang-guarded by the world's duration).
    async fn next_text(reader: &mut tcpudp::UdpReadable) -> Result<String, Box<dyn std::error::Error>> {
        let msg = reader.read().await?.ok_or("readable ended")?;
        Ok(String::from_utf8_lossy(&msg.data).into_owned())
    }

    /// rule: UDP-MCAST-07, UDP-MCAST-01, DICT-UDPOPT-06
    #[only(Sim, ON_REAL)]
    fn multicast_loopback_is_the_senders_flag() {
        for sender_loopback in [false, true] {
            let log = Log::default();
            let mut sim = sim(91);
            let (remote_log, ready) = (log.clone(), Rc::new(Cell::new(false)));
            let remote_ready = ready.clone();
            sim.host("remote", move || {
                let (log, ready) = (remote_log.clone(), remote_ready.clone());
                async move {
                    let net = tcpudp_net_sim::network("remote", Policy::allow_all())?;
                    let member =
                        UdpSocket::new(&net, UdpOptions { local_port: Some(UPORT), ..Default::default() })?;
                    member.opened().await?;
                    member.join_multicast(GROUP)?;
                    ready.set(true);
                    let mut reader = member.readable()?;
                    log.push(format!("remote {}", next_text(&mut reader).await?));
                    Ok(())
                }
            })
            .expect("remote");
            let local_log = log.clone();
            sim.client("sender", async move {
                let net = tcpudp_net_sim::network("sender", Policy::allow_all())?;
                // The local member asks for loopback itself: only the sender's flag may count.
                let local = UdpSocket::new(
                    &net,
                    UdpOptions { local_port: Some(UPORT), loopback: true, ..Default::default() },
                )?;
                local.opened().await?;
                local.join_multicast(GROUP)?;
                while !ready.get() {
                    tokio::time::sleep(ms(1)).await;
                }
                let sender =
                    UdpSocket::new(&net, UdpOptions { loopback: sender_loopback, ..Default::default() })?;
                sender.opened().await?;
                let writer = sender.writable()?;
                writer.write(Datagram::to("group", GROUP, UPORT)).await?;
                writer.write(Datagram::to("marker", "127.0.0.1", UPORT)).await?;
                let mut reader = local.readable()?;
                local_log.push(format!("local {}", next_text(&mut reader).await?));
                if sender_loopback {
                    local_log.push(format!("local {}", next_text(&mut reader).await?));
                }
                local_log.wait_for("remote").await;
                Ok(())
            })
            .expect("sender");
            sim.run().unwrap_or_else(|e| panic!("loopback {sender_loopback}: {e}"));
            let mut events = log.events();
            events.sort();
            let expected: &[&str] = if sender_loopback {
                &["local group", "local marker", "remote group"]
            } else {
                &["local marker", "remote group"]
            };
            assert_eq!(events, expected, "sender loopback {sender_loopback}");
        }
    }

    /// rule: UDP-MCAST-08, UDP-MCAST-01, UDP-CTOR-17, DICT-UDPOPT-05
    #[only(Sim, ON_REAL)]
    fn only_joined_wildcard_sockets_receive_a_group_and_unicast_goes_to_the_latest_bound() {
        let log = Log::default();
        let mut sim = sim(92);
        let (rx_log, ready) = (log.clone(), Rc::new(Cell::new(false)));
        let rx_ready = ready.clone();
        sim.host("rx", move || {
            let (log, ready) = (rx_log.clone(), rx_ready.clone());
            async move {
                let net = tcpudp_net_sim::network("rx", Policy::allow_all())?;
                let me = turmoil::lookup("rx").to_string();
                let on_port = |local: Option<&str>| {
                    UdpSocket::new(
                        &net,
                        UdpOptions {
                            local_port: Some(UPORT),
                            local_address: local.map(str::to_owned),
                            ..Default::default()
                        },
                    )
                };
                let a = on_port(None)?;
                let b = on_port(None)?;
                let c = on_port(Some(&me))?; // bound to the host's unicast address
                for s in [&a, &b, &c] {
                    s.opened().await?;
                }
                a.join_multicast(GROUP)?;
                c.join_multicast(GROUP)?; // joined, but a unicast-bound socket never gets a group
                                          // A datagram to loopback: the latest bound wildcard socket (b) matches best.
                let local = UdpSocket::new(&net, UdpOptions::default())?;
                local.opened().await?;
                ready.set(true);
                let (mut ra, mut rb, mut rc) = (a.readable()?, b.readable()?, c.readable()?);
                log.push(format!("a {}", next_text(&mut ra).await?));
                local.writable()?.write(Datagram::to("marker-lo", "127.0.0.1", UPORT)).await?;
                log.push(format!("b {}", next_text(&mut rb).await?));
                log.push(format!("c {}", next_text(&mut rc).await?));
                assert_eq!(a.diag().options.received, 1);
                Ok(())
            }
        })
        .expect("rx");
        sim.client("tx", async move {
            let net = tcpudp_net_sim::network("tx", Policy::allow_all())?;
            while !ready.get() {
                tokio::time::sleep(ms(1)).await;
            }
            let sock = UdpSocket::new(&net, UdpOptions::default())?;
            sock.opened().await?;
            let writer = sock.writable()?;
            writer.write(Datagram::to("group", GROUP, UPORT)).await?;
            // To the host's address: the socket bound to exactly that address matches best.
            writer.write(Datagram::to("marker-ip", turmoil::lookup("rx").to_string(), UPORT)).await?;
            tokio::time::sleep(secs(1)).await;
            Ok(())
        })
        .expect("tx");
        sim.run().expect("simulation");
        assert_eq!(log.events(), ["a group", "b marker-lo", "c marker-ip"]);
    }

    /// rule: SRV-CTOR-12, SRV-OPEN-02
    #[only(Sim, ON_REAL)]
    fn a_listener_port_is_rebound_after_close_but_never_shared_live() {
        let log = Log::default();
        let mut sim = sim(93);
        let server_log = log.clone();
        sim.host("server", move || {
            let log = server_log.clone();
            async move {
                let net = tcpudp_net_sim::network("server", Policy::allow_all())?;
                let on_port = |address_reuse| {
                    TcpServerSocket::new(
                        &net,
                        TcpServerOptions { local_port: Some(PORT), address_reuse, ..Default::default() },
                    )
                };
                let first = on_port(true)?;
                first.opened().await?;
                let accepted = first.listen().await?; // lingers after its server closes
                first.close().await?;
                // No TIME_WAIT in the simulator: even without reuse the port can be bound again.
                let second = on_port(false)?;
                log.push(format!("second {:?}", second.opened().await.map_err(|e| describe(&e))));
                let third = on_port(true)?;
                log.push(format!("third {:?}", third.opened().await.map_err(|e| describe(&e))));
                log.push(format!("accepted still {:?}", accepted.ready_state()));
                Ok(())
            }
        })
        .expect("server");
        let done = log.clone();
        sim.client("client", async move {
            let _sock = connect("client").await?;
            done.wait_for("accepted still").await;
            Ok(())
        })
        .expect("client");
        sim.run().expect("simulation");
        assert_eq!(
            log.events(),
            ["second Ok(())", "third Err(\"NetworkError Some(AddressInUse)\")", "accepted still Open"]
        );
    }

    // ---------------------------------------------------------------------------------------------
    // Half-close behind a full window

    /// rule: TCP-WRITE-CLOSE-01, TCP-HALFCLOSE-01
    /// invariant: INV-09, INV-18
    #[only(Sim, ON_REAL)]
    fn half_close_after_64_and_128_writes_reaches_a_late_reader() {
        for writes in [64usize, 128] {
            let log = Log::default();
            let mut sim = SimBuilder::new(94).link(LinkProfile::fixed(Duration::ZERO)).build();
            let server_log = log.clone();
            sim.host("server", move || {
                let log = server_log.clone();
                async move {
                    let net = tcpudp_net_sim::network("server", Policy::allow_all())?;
                    let srv = TcpServerSocket::new(
                        &net,
                        TcpServerOptions { local_port: Some(PORT), ..Default::default() },
                    )?;
                    srv.opened().await?;
                    let sock = srv.listen().await?;
                    tokio::time::sleep(secs(1)).await; // the writer fills our window and half-closes
                    log_reads(sock, log).await;
                    Ok(())
                }
            })
            .expect("server");
            sim.client("client", async move {
                let sock = connect("client").await?;
                let writer = sock.writable()?;
                let pending: Vec<_> =
                    (0..writes).map(|i| writer.write(Bytes::from(vec![b'a' + (i % 26) as u8]))).collect();
                sock.half_close();
                for write in pending {
                    write.await?;
                }
                sock.closed().await?;
                Ok(())
            })
            .expect("client");
            sim.run().unwrap_or_else(|e| panic!("{writes} writes: {e}"));
            let expected: String = (0..writes).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            assert_eq!(log.data(), expected, "{writes} writes");
            assert_eq!(log.events().last().map(String::as_str), Some("eof"), "{writes} writes: end of stream");
        }
    }

    // ---------------------------------------------------------------------------------------------
    // The harness

    // rule: none (DESIGN §7: the harness's typed errors)
    #[only(Sim, ON_REAL)]
    fn harness_errors_are_typed_never_panics() {
        let mut sim = sim(95);
        idle_server(&mut sim, &Log::default());
        let faults = sim.faults();
        sim.client("client", async move {
            let local = Err(FaultError::FaultOnLocalPair("client".into()));
            assert_eq!(faults.partition("client", "client"), local);
            assert_eq!(faults.partition_oneway("client", "client"), local);
            assert_eq!(faults.repair("client", "client"), local);
            assert_eq!(faults.tcp_loss("client", "client", TcpLoss::Times(1)), local);
            assert_eq!(faults.udp_impair("client", "client", UdpImpairment::default()), local);
            assert_eq!(faults.partition("client", "nohost"), Err(FaultError::UnknownHost("nohost".into())));
            assert_eq!(faults.crash_host("nohost"), Err(FaultError::UnknownHost("nohost".into())));
            assert_eq!(faults.crash_host("client"), Err(FaultError::NotAHost("client".into())));
            assert_eq!(faults.restart("client"), Err(FaultError::NotAHost("client".into())));
            let bad = UdpImpairment { loss: 1.5, ..Default::default() };
            assert!(matches!(faults.udp_impair("client", "server", bad), Err(FaultError::InvalidProbability(_))));
            assert!(matches!(
                faults.tcp_loss("client", "server", TcpLoss::Rate(-0.1)),
                Err(FaultError::InvalidProbability(_))
            ));
            let (a, b): (SocketAddr, SocketAddr) = ("192.168.0.2:1".parse()?, "192.168.0.1:2".parse()?);
            assert_eq!(faults.reset_connection(a, b), Err(FaultError::NoSuchConnection(a, b)));
            Ok(())
        })
        .expect("client");
        sim.run().expect("simulation");
        // Worlds are single-family.
        let mut v4 = SimBuilder::new(96).build();
        assert!(matches!(v4.host("fe80::9", || async { Ok(()) }), Err(SimError::MixedFamilies { .. })));
        assert!(v4.client("a", async { Ok(()) }).is_ok());
        assert!(matches!(v4.client("a", async { Ok(()) }), Err(SimError::DuplicateHost(_))));
        let mut v6 = SimBuilder::new(96).ipv6().build();
        assert!(matches!(v6.client("10.0.0.1", async { Ok(()) }), Err(SimError::MixedFamilies { .. })));
        // No fault API outside a simulation.
        assert!(SimFaults::current().is_none());
        // A plain turmoil simulation: link faults work, host faults need the harness.
        let mut plain = turmoil::Builder::new().rng_seed(1).build();
        plain.client("client", async {
            let _net = tcpudp_net_sim::network("client", Policy::allow_all())?;
            let faults = SimFaults::current().ok_or("inside a simulation")?;
            assert_eq!(faults.crash_host("client"), Err(FaultError::NeedsHarness));
            assert_eq!(faults.partition("client", "client"), Err(FaultError::FaultOnLocalPair("client".into())));
            Ok(())
        });
        plain.run().expect("plain simulation");
    }

    // rule: none (DESIGN §7: the default simulation duration)
    #[only(Sim, ON_REAL)]
    fn the_duration_limit_fails_a_hung_run() {
        // Default: the latest armed adapter timer (none here: the connect timeout's 127 s) + 60 s.
        let mut sim = sim_tick(97, ms(100));
        sim.client("client", std::future::pending()).expect("client");
        match sim.run() {
            Err(SimError::Timeout { limit, .. }) => assert_eq!(limit, secs(187)),
            other => panic!("expected a timeout, got {other:?}"),
        }
        let mut sim = SimBuilder::new(97).tick(ms(100)).duration(secs(5)).build();
        sim.client("client", std::future::pending()).expect("client");
        assert!(matches!(sim.run(), Err(SimError::Timeout { limit, .. }) if limit == secs(5)));
    }

    /// rule: UDP-READ-01, TCP-WRITE-01
    #[only(Sim, ON_REAL)]
    fn traffic_inside_one_host_never_crosses_a_link() {
        let mut sim = sim(98);
        idle_server(&mut sim, &Log::default());
        let faults = sim.faults();
        sim.client("client", async move {
            faults.partition("client", "server")?;
            faults.udp_impair("client", "server", UdpImpairment { loss: 1.0, ..Default::default() })?;
            faults.tcp_loss("client", "server", TcpLoss::Rate(1.0))?;
            let net = tcpudp_net_sim::network("client", Policy::allow_all())?;
            // UDP between two sockets of this host: delivered at once.
            let (a, b) =
                (UdpSocket::new(&net, UdpOptions::default())?, UdpSocket::new(&net, UdpOptions::default())?);
            a.opened().await?;
            b.opened().await?;
            let sent = now();
            a.writable()?.write(Datagram::to("local", "127.0.0.1", b.local_port().ok_or("port")?)).await?;
            assert_eq!(next_text(&mut b.readable()?).await?, "local");
            assert_eq!(now(), sent, "no link latency inside a host");
            // TCP over loopback.
            let srv =
                TcpServerSocket::new(&net, TcpServerOptions { local_port: Some(PORT), ..Default::default() })?;
            srv.opened().await?;
            let sock = TcpSocket::new(&net, "127.0.0.1", PORT, TcpOptions::default())?;
            let accepted = srv.listen().await?;
            sock.opened().await?;
            sock.writable()?.write(&b"over loopback"[..]).await?;
            let got = accepted.readable()?.read().await?.ok_or("data")?;
            assert_eq!(&got[..], b"over loopback");
            Ok(())
        })
        .expect("client");
        sim.run().expect("simulation");
    }

    // ---------------------------------------------------------------------------------------------
    // Determinism

    /// Set in the child process the determinism test spawns: print the digests, compare nothing.
    #[cfg(test)]
    const DIGEST_CHILD: &str = "TCPUDP_SIM_FAULTS_DIGESTS";
    /// Seeds the determinism test checks.
    #[cfg(test)]
    const DETERMINISM_SEEDS: u64 = 20;

    /// Echoes a TCP connection until the peer's end, then closes.
    #[cfg(test)]
    async fn tcp_echo(sock: TcpSocket) {
        let (Ok(mut reader), Ok(writer)) = (sock.readable(), sock.writable()) else { return };
        while let Ok(Some(chunk)) = reader.read().await {
            drop(writer.write(chunk));
        }
        let _ = sock.close().await;
    }

    /// A world exercising every fault kind with random latencies, all drawn from `seed`; the
    /// client records what it observes. Returns the trace digest and its length.
    #[cfg(test)]
    fn fault_world(seed: u64) -> (u64, usize) {
        let mut sim = SimBuilder::new(seed).build(); // turmoil's 0–100 ms latency, drawn from the seed
        sim.host("server", || async {
            let net = tcpudp_net_sim::network("server", Policy::allow_all())?;
            let udp = UdpSocket::new(&net, UdpOptions { local_port: Some(UPORT), ..Default::default() })?;
            udp.opened().await?;
            tokio::task::spawn_local(async move {
                let (Ok(mut reader), Ok(writer)) = (udp.readable(), udp.writable()) else { return };
                while let Ok(Some(msg)) = reader.read().await {
                    let (to, port) = (msg.remote_address(), msg.remote_port());
                    drop(writer.write(Datagram::to(msg.data, to, port)));
                }
            });
            let srv =
                TcpServerSocket::new(&net, TcpServerOptions { local_port: Some(PORT), ..Default::default() })?;
            srv.opened().await?;
            loop {
                tokio::task::spawn_local(tcp_echo(srv.listen().await?));
            }
        })
        .expect("server");
        sim.at(ms(300), |f| f.partition("client", "server"));
        sim.at(ms(1_300), |f| f.repair("client", "server"));
        let faults = sim.faults();
        sim.client("client", async move {
            let noisy = UdpImpairment {
                loss: 0.2,
                duplicate: 0.1,
                reorder: 0.2,
                reorder_delay: ms(20),
                jitter: ms(5),
                ..Default::default()
            };
            for (from, to) in [("client", "server"), ("server", "client")] {
                faults.udp_impair(from, to, noisy)?;
                faults.tcp_loss(from, to, TcpLoss::Rate(0.1))?;
            }
            let net = tcpudp_net_sim::network("client", Policy::allow_all())?;
            let mut conns = Vec::new();
            for c in 0..3 {
                let (faults, net) = (faults.clone(), net.clone());
                conns.push(tokio::task::spawn_local(async move {
                    let sock = TcpSocket::new(&net, "server", PORT, TcpOptions::default())?;
                    sock.opened().await?;
                    let writer = sock.writable()?;
                    for i in 0..10 {
                        drop(writer.write(Bytes::from(format!("c{c}-{i};"))));
                        tokio::time::sleep(ms(40)).await;
                    }
                    sock.half_close();
                    let mut reader = sock.readable()?;
                    let mut echoed = Vec::new();
                    while let Some(chunk) = reader.read().await? {
                        echoed.extend_from_slice(&chunk);
                    }
                    faults.record(format!("conn {c} echoed {}", String::from_utf8_lossy(&echoed)));
                    Ok::<(), SocketError>(())
                }));
            }
            let udp = UdpSocket::new(&net, UdpOptions::default())?;
            udp.opened().await?;
            let (writer, mut reader) = (udp.writable()?, udp.readable()?);
            for i in 0..30 {
                drop(writer.write(Datagram::to(
                    format!("u{i}"),
                    faults.host_ip("server").expect("server").to_string(),
                    UPORT,
                )));
                tokio::time::sleep(ms(5)).await;
            }
            while let Ok(reply) = tokio::time::timeout(ms(500), reader.read()).await {
                let msg = reply?.ok_or("readable ended")?;
                faults.record(format!("udp reply {}", String::from_utf8_lossy(&msg.data)));
            }
            for conn in conns {
                conn.await??;
            }
            Ok(())
        })
        .expect("client");
        let report = sim.run().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        (report.digest, report.trace.len())
    }

    // rule: none (DESIGN §8: determinism, and DESIGN §2: tokio_unstable). Not a scenario of the
    // command: it re-runs itself through the test binary's filter.
    #[cfg(test)]
    #[test]
    fn same_seed_same_trace_in_process_and_in_another_process() {
        assert!(tcpudp_net_sim::tokio_unstable(), "build with --cfg tokio_unstable (DESIGN §2)");
        if std::env::var_os(DIGEST_CHILD).is_some() {
            for seed in 0..DETERMINISM_SEEDS {
                println!("digest {seed} {:016x}", fault_world(seed).0);
            }
            return;
        }
        let mut digests = Vec::new();
        for seed in 0..DETERMINISM_SEEDS {
            let (first, len) = fault_world(seed);
            assert!(len > 100, "seed {seed}: a trace worth comparing ({len} lines)");
            assert_eq!(fault_world(seed).0, first, "seed {seed}: the same run twice in one process");
            digests.push(format!("digest {seed} {first:016x}"));
        }
        let distinct: std::collections::BTreeSet<_> = digests.iter().map(|d| d.split(' ').nth(2)).collect();
        assert!(distinct.len() as u64 > DETERMINISM_SEEDS * 3 / 4, "seeds change the run: {digests:?}");
        // Once more in a separate process.
        let exe = std::env::current_exe().expect("test binary");
        let output = std::process::Command::new(exe)
            .args([
                "scenarios::sim_faults::same_seed_same_trace_in_process_and_in_another_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIGEST_CHILD, "1")
            .output()
            .expect("spawn the child");
        assert!(output.status.success(), "child failed: {}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8_lossy(&output.stdout);
        // libtest may print its "test … " prefix on the first line.
        let theirs: Vec<&str> = stdout.lines().filter_map(|l| l.find("digest ").map(|at| &l[at..])).collect();
        assert_eq!(theirs, digests, "the same seeds in another process");
    }

    // ---------------------------------------------------------------------------------------------
    // The conformance World exposes the same fault API

    /// A World body uses `ctx.sim_faults()`, and the world schedules a repair with `world.at`.
    fn world_with_faults(world: &mut crate::World) {
        world.link(LinkProfile::fixed(LATENCY));
        world.at(secs(3), |f| f.repair("client", "server"));
        world.host("server", |ctx| async move {
            let srv = TcpServerSocket::new(
                &ctx.net,
                TcpServerOptions { local_port: Some(PORT), ..Default::default() },
            )?;
            srv.opened().await?;
            let sock = srv.listen().await?;
            let got = sock.readable()?.read().await?.ok_or("data")?;
            sock.writable()?.write(got).await?;
            std::future::pending::<()>().await;
            Ok(())
        });
        world.client("client", |ctx| async move {
            let faults = ctx.sim_faults().ok_or("a simulated world")?;
            let sock = TcpSocket::new(&ctx.net, &ctx.address_of("server"), PORT, TcpOptions::default())?;
            sock.opened().await?;
            faults.partition("client", "server")?;
            let sent = now();
            sock.writable()?.write(&b"held"[..]).await?;
            let echoed = sock.readable()?.read().await?.ok_or("echo")?;
            assert_eq!(&echoed[..], b"held");
            // Retransmissions at 0.2, 0.6, 1.4, 3.0 s: the one at 3.0 s meets the repair; then the echo.
            assert_near(now() - sent, ms(3_000) + 2 * LATENCY, TICK, "echo after the repair");
            Ok(())
        });
    }

    /// rule: TCP-WRITE-01
    /// invariant: INV-07
    #[only(Sim, ON_REAL)]
    fn conformance_worlds_schedule_and_inject_faults() {
        crate::harness::run(crate::BackendChoice::Sim, 5, world_with_faults)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

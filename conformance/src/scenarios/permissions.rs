//! Permissions through the public API (RULES.md §2, ENTRY-01, DICT-PERM-01..09, ENUM-PERM, ERR-01/02/
//! 03/10): the three permission objects of a `Network`, the test controls of `Policy`, and the
//! checks constructors and UDP writes make. Mostly the real backend on loopback (permissions do
//! not depend on the backend); the write checks of DICT-PERM-01/09 also run in simulation.

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use super::support_udp::{assert_err, err_name, within, Peer, Rng, LO};
use crate::BackendChoice;
use tcpudp::{
    Datagram, ErrorName, Network, PermissionKind, PermissionRequest, PermissionState, Policy, SocketError,
    TcpOptions, TcpPermissionOptions, TcpServerOptions, TcpServerPermissionOptions, TcpServerSocket,
    TcpSocket, UdpOptions, UdpPermissionOptions, UdpSocket,
};
use tcpudp_core::permission::PermissionStore;

/// Why a test runs on real sockets only.
const LOOPBACK_PEERS: &str =
    "a raw peer on ::1 beside the library's IPv4 sockets: a simulation has one address family";

crate::only_on! {

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A policy with nothing decided (every state "prompt") and no one to ask yet.
    fn undecided() -> Policy {
        Policy::from_store(PermissionStore::new())
    }

    /// A network with `policy`: of the running `#[on_both]` test's backend, else a real one.
    fn net(policy: Policy) -> Network {
        match crate::scenarios::current_ctx() {
            Some(ctx) => super::support::net_with(&ctx, policy),
            None => tcpudp_net_real::network(policy).expect("real network"),
        }
    }

    /// A request of `kind` with the given fields (fields a kind does not have are dropped when it is
    /// turned into that kind's options).
    fn req(
        kind: PermissionKind,
        remote: Option<&str>,
        remote_port: Option<u16>,
        local: Option<&str>,
        local_port: Option<u16>,
    ) -> PermissionRequest {
        PermissionRequest {
            kind,
            remote_address: remote.map(Into::into),
            remote_port,
            local_address: local.map(Into::into),
            local_port,
        }
    }

    fn udp_req(remote: Option<&str>, port: Option<u16>) -> PermissionRequest {
        req(PermissionKind::Udp, remote, port, None, None)
    }

    /// `hasPermission` of `r.kind` with `r`'s fields as that kind's options (`None` = omitted argument).
    async fn has(net: &Network, r: Option<&PermissionRequest>) -> Result<PermissionState, SocketError> {
        match r.map(|r| r.kind).unwrap_or(PermissionKind::Udp) {
            PermissionKind::Udp => net.udp_permission().has_permission(r.map(udp_options)).await,
            PermissionKind::Tcp => net.tcp_permission().has_permission(r.map(tcp_options)).await,
            PermissionKind::TcpServer => net.tcp_server_permission().has_permission(r.map(server_options)).await,
        }
    }

    /// `hasPermission` of `kind` with the argument omitted.
    async fn has_none(net: &Network, kind: PermissionKind) -> Result<PermissionState, SocketError> {
        match kind {
            PermissionKind::Udp => net.udp_permission().has_permission(None).await,
            PermissionKind::Tcp => net.tcp_permission().has_permission(None).await,
            PermissionKind::TcpServer => net.tcp_server_permission().has_permission(None).await,
        }
    }

    /// `requestPermission` of `r.kind` with `r`'s fields.
    async fn request(net: &Network, r: &PermissionRequest) -> Result<(), SocketError> {
        match r.kind {
            PermissionKind::Udp => net.udp_permission().request_permission(Some(udp_options(r))).await,
            PermissionKind::Tcp => net.tcp_permission().request_permission(Some(tcp_options(r))).await,
            PermissionKind::TcpServer => {
                net.tcp_server_permission().request_permission(Some(server_options(r))).await
            }
        }
    }

    /// `requestPermission` of `kind` with the argument omitted.
    async fn request_none(net: &Network, kind: PermissionKind) -> Result<(), SocketError> {
        match kind {
            PermissionKind::Udp => net.udp_permission().request_permission(None).await,
            PermissionKind::Tcp => net.tcp_permission().request_permission(None).await,
            PermissionKind::TcpServer => net.tcp_server_permission().request_permission(None).await,
        }
    }

    fn udp_options(r: &PermissionRequest) -> UdpPermissionOptions {
        UdpPermissionOptions {
            remote_address: r.remote_address.clone(),
            remote_port: r.remote_port,
            local_address: r.local_address.clone(),
            local_port: r.local_port,
        }
    }

    fn tcp_options(r: &PermissionRequest) -> TcpPermissionOptions {
        TcpPermissionOptions { remote_address: r.remote_address.clone(), remote_port: r.remote_port }
    }

    fn server_options(r: &PermissionRequest) -> TcpServerPermissionOptions {
        TcpServerPermissionOptions { local_address: r.local_address.clone(), local_port: r.local_port }
    }

    /// A request of each kind that names what that kind's options can name.
    fn sample(kind: PermissionKind) -> PermissionRequest {
        match kind {
            PermissionKind::Udp => req(kind, Some("127.0.0.2"), Some(9), None, None),
            PermissionKind::Tcp => req(kind, Some("127.0.0.2"), Some(9), None, None),
            PermissionKind::TcpServer => req(kind, None, None, Some(LO), Some(5_000)),
        }
    }

    /// A raw UDP peer on 127.0.0.1 of this host: a tokio socket on real sockets, a turmoil one in
    /// the simulator.
    async fn loopback_peer() -> std::io::Result<Peer> {
        match crate::scenarios::current_ctx() {
            Some(ctx) if ctx.backend() == BackendChoice::Sim => {
                Ok(Peer::Sim(turmoil::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?))
            }
            _ => Peer::bind_real(Ipv4Addr::LOCALHOST.into()).await,
        }
    }

    /// Polls `fut` once with a waker that is never used.
    fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
        std::pin::Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
    }

    /// Lets the runtime run other tasks for a while (no timing is asserted).
    async fn let_others_run() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    /// rule: ENTRY-01, ENUM-PERM-01, ENUM-PERM-03
    #[on_both]
    async fn three_independent_permission_objects() -> TestResult {
        let policy = undecided();
        let net = net(policy.clone());
        for kind in PermissionKind::ALL {
            assert_eq!(has_none(&net, kind).await?, PermissionState::Prompt, "{kind}");
        }
        policy.grant(PermissionRequest::new(PermissionKind::Udp));
        assert_eq!(has_none(&net, PermissionKind::Udp).await?, PermissionState::Granted);
        assert_eq!(
            has_none(&net, PermissionKind::Tcp).await?,
            PermissionState::Prompt,
            "a UDP grant leaks to TCP"
        );
        assert_eq!(has_none(&net, PermissionKind::TcpServer).await?, PermissionState::Prompt);
        policy.grant(PermissionRequest::new(PermissionKind::Tcp));
        assert_eq!(has_none(&net, PermissionKind::Tcp).await?, PermissionState::Granted);
        assert_eq!(
            has_none(&net, PermissionKind::TcpServer).await?,
            PermissionState::Prompt,
            "a TCP grant leaks"
        );
        // Constructors follow their own object only.
        assert!(UdpSocket::new(&net, UdpOptions::default()).is_ok());
        let srv = TcpServerSocket::new(&net, TcpServerOptions::default());
        assert_eq!(err_name(&srv), Some(ErrorName::SecurityError));
        policy.grant(PermissionRequest::new(PermissionKind::TcpServer));
        assert_eq!(has_none(&net, PermissionKind::TcpServer).await?, PermissionState::Granted);
        assert!(TcpServerSocket::new(&net, TcpServerOptions::default()).is_ok());
        // The spec spellings (ENUM-PERM-*).
        let spell: Vec<_> = [PermissionState::Granted, PermissionState::Denied, PermissionState::Prompt]
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(spell, ["granted", "denied", "prompt"]);
        Ok(())
    }

    /// rule: PERM-GEN-01, ERR-01, GEN-01, UDP-CTOR-01, ENUM-PERM-02
    #[on_both]
    async fn constructors_without_permission_throw_security_error_first() -> TestResult {
        for policy in [Policy::deny_all(), undecided()] {
            let net = net(policy);
            let udp = UdpSocket::new(
                &net,
                UdpOptions {
                    remote_address: Some("300.1.1.1".into()),
                    remote_port: Some(0),
                    ..UdpOptions::default()
                },
            );
            assert_eq!(err_name(&udp), Some(ErrorName::SecurityError));
            let tcp = TcpSocket::new(
                &net,
                "1.2.3.4.5",
                0,
                TcpOptions { keep_alive_sparse_interval: Some(0), ..TcpOptions::default() },
            );
            assert_eq!(err_name(&tcp), Some(ErrorName::SecurityError));
            let srv = TcpServerSocket::new(
                &net,
                TcpServerOptions { local_address: Some("not an ip".into()), ..TcpServerOptions::default() },
            );
            assert_eq!(err_name(&srv), Some(ErrorName::SecurityError));
            assert_eq!(net.faults().created_sockets(), 0);
            assert_eq!(net.faults().open_sockets(), 0);
        }
        let net = net(Policy::deny_all());
        for kind in PermissionKind::ALL {
            assert_eq!(has_none(&net, kind).await?, PermissionState::Denied, "{kind}");
        }
        Ok(())
    }

    /// rule: PERM-GEN-02
    #[on_both]
    async fn permission_calls_return_pending_futures() -> TestResult {
        let policy = undecided();
        policy.answer_prompts(true);
        let net = net(policy.clone());
        // hasPermission while queries are blocked.
        policy.block_queries();
        let mut query = pin!(net.udp_permission().has_permission(None));
        assert!(poll_once(&mut query).is_pending(), "hasPermission settled at once");
        let_others_run().await;
        assert!(poll_once(&mut query).is_pending(), "hasPermission settled while blocked");
        policy.release_queries();
        assert_eq!(within("hasPermission", query).await??, PermissionState::Prompt);
        // requestPermission while prompts are blocked.
        policy.block_prompts();
        let mut asking = pin!(net.tcp_permission().request_permission(None));
        assert!(poll_once(&mut asking).is_pending(), "requestPermission settled at once");
        let_others_run().await;
        assert!(poll_once(&mut asking).is_pending(), "requestPermission settled while blocked");
        assert_eq!(policy.prompt_count(), 0);
        policy.release_prompts();
        within("requestPermission", asking).await??;
        assert_eq!(policy.prompt_count(), 1);
        // Even a request that needs no prompt answers asynchronously.
        let mut allowed = pin!(net.tcp_permission().request_permission(None));
        assert!(poll_once(&mut allowed).is_pending(), "requestPermission settled synchronously");
        within("requestPermission", allowed).await??;
        Ok(())
    }

    /// rule: PERM-GEN-03
    #[on_both]
    async fn omitted_options_equal_empty_options() -> TestResult {
        // A few policies, made twice each so requests can be compared on identical fresh ones.
        let make: [fn() -> Policy; 5] = [
            undecided,
            Policy::allow_all,
            Policy::deny_all,
            || {
                let p = undecided();
                p.grant(udp_req(Some(LO), None));
                p.deny(req(PermissionKind::Tcp, Some(LO), Some(9), None, None));
                p.grant(req(PermissionKind::TcpServer, None, None, None, Some(5_000)));
                p.answer_prompts(false);
                p
            },
            || {
                let p = undecided();
                p.answer_prompts(true);
                p
            },
        ];
        for (i, make) in make.iter().enumerate() {
            for kind in PermissionKind::ALL {
                let net = net(make());
                let empty = PermissionRequest::new(kind);
                assert_eq!(has_none(&net, kind).await, has(&net, Some(&empty)).await, "policy {i} {kind}");
                let (p1, p2) = (make(), make());
                let (n1, n2) = (self::net(p1.clone()), self::net(p2.clone()));
                let omitted = request_none(&n1, kind).await;
                let given = request(&n2, &empty).await;
                assert_eq!(err_name(&omitted), err_name(&given), "policy {i} {kind}");
                assert_eq!(p1.prompt_count(), p2.prompt_count(), "policy {i} {kind}");
                assert_eq!(has_none(&n1, kind).await, has_none(&n2, kind).await, "policy {i} {kind}");
            }
        }
        Ok(())
    }

    /// rule: PERM-GEN-04
    #[on_both]
    async fn has_permission_never_prompts_or_changes_state() -> TestResult {
        let policy = undecided();
        policy.answer_prompts(true);
        let net = net(policy.clone());
        for kind in PermissionKind::ALL {
            let r = sample(kind);
            for _ in 0..3 {
                assert_eq!(has(&net, Some(&r)).await?, PermissionState::Prompt);
                assert_eq!(has_none(&net, kind).await?, PermissionState::Prompt);
            }
        }
        assert_eq!(policy.prompt_count(), 0);
        // Nothing was stored: a constructor still throws.
        assert_err(UdpSocket::new(&net, UdpOptions::default()).map(|_| ()), ErrorName::SecurityError);
        policy.grant(udp_req(None, None));
        policy.deny(udp_req(Some("127.0.0.2"), Some(9)));
        for _ in 0..3 {
            assert_eq!(has(&net, Some(&udp_req(Some("127.0.0.2"), Some(9)))).await?, PermissionState::Denied);
            assert_eq!(has(&net, Some(&udp_req(Some("127.0.0.2"), Some(10)))).await?, PermissionState::Granted);
        }
        assert_eq!(policy.prompt_count(), 0);
        Ok(())
    }

    /// rule: PERM-GEN-05, PERM-UDP-REQ-04, PERM-UDP-REQ-05, ENUM-PERM-01, ENUM-PERM-02, ENUM-PERM-03, ERR-02
    #[on_both]
    async fn request_outcomes_are_stored() -> TestResult {
        let policy = undecided();
        let net = net(policy.clone());
        policy.answer_prompts(true);
        let granted = udp_req(Some(LO), Some(7));
        assert_eq!(has(&net, Some(&granted)).await?, PermissionState::Prompt);
        request(&net, &granted).await?;
        assert_eq!(policy.prompt_count(), 1);
        assert_eq!(has(&net, Some(&granted)).await?, PermissionState::Granted);
        // A constructor covered by the grant no longer throws; one asking for more still does.
        let sock = UdpSocket::new(
            &net,
            UdpOptions { remote_address: Some(LO.into()), remote_port: Some(7), ..UdpOptions::default() },
        )?;
        assert!(UdpSocket::new(&net, UdpOptions::default()).is_ok(), "the grant covers udp({{}})");
        assert_err(
            UdpSocket::new(
                &net,
                UdpOptions { remote_address: Some(LO.into()), remote_port: Some(8), ..UdpOptions::default() },
            )
            .map(|_| ()),
            ErrorName::SecurityError,
        );
        drop(sock);
        // A second request for the same options needs no prompt.
        request(&net, &granted).await?;
        assert_eq!(policy.prompt_count(), 1);
        // The user refuses: stored as a denial, which then wins over a later grant {}.
        policy.answer_prompts(false);
        let refused = udp_req(Some("127.0.0.2"), Some(9));
        let e = assert_err(request(&net, &refused).await, ErrorName::SecurityError);
        assert_eq!(e.name(), "SecurityError");
        assert_eq!(policy.prompt_count(), 2);
        assert_eq!(has(&net, Some(&refused)).await?, PermissionState::Denied);
        policy.grant(udp_req(None, None));
        assert_eq!(has(&net, Some(&refused)).await?, PermissionState::Denied);
        assert_err(
            UdpSocket::new(
                &net,
                UdpOptions {
                    remote_address: Some("127.0.0.2".into()),
                    remote_port: Some(9),
                    ..UdpOptions::default()
                },
            )
            .map(|_| ()),
            ErrorName::SecurityError,
        );
        assert!(UdpSocket::new(&net, UdpOptions::default()).is_ok(), "the denial does not reach udp({{}})");
        // Asking again rejects at once, without a prompt.
        assert_err(request(&net, &refused).await, ErrorName::SecurityError);
        assert_eq!(policy.prompt_count(), 2);
        // No one to ask: the user did not grant.
        let nobody = net_without_prompt();
        assert_err(request(&nobody, &granted).await, ErrorName::SecurityError);
        Ok(())
    }

    fn net_without_prompt() -> Network {
        net(undecided())
    }

    /// rule: PERM-UDP-HAS-01, PERM-UDP-HAS-02, PERM-TCP-HAS-01, PERM-TCP-HAS-02, PERM-SRV-HAS-01, PERM-SRV-HAS-02, ERR-10, ENUM-PERM-01, ENUM-PERM-02, ENUM-PERM-03
    #[on_both]
    async fn has_permission_reports_the_state() -> TestResult {
        for kind in PermissionKind::ALL {
            let policy = undecided();
            let net = net(policy.clone());
            let r = sample(kind);
            assert_eq!(has(&net, Some(&r)).await?, PermissionState::Prompt, "{kind}: nothing stored");
            policy.grant(r.clone());
            assert_eq!(has(&net, Some(&r)).await?, PermissionState::Granted, "{kind}: granted");
            policy.deny(r.clone());
            assert_eq!(has(&net, Some(&r)).await?, PermissionState::Denied, "{kind}: denial wins");
            policy.fail_queries(true);
            let e = assert_err(has(&net, Some(&r)).await, ErrorName::UnknownError);
            assert_eq!(e.name(), "UnknownError");
            assert_err(has_none(&net, kind).await, ErrorName::UnknownError);
            policy.fail_queries(false);
            assert_eq!(has(&net, Some(&r)).await?, PermissionState::Denied);
            assert_eq!(policy.prompt_count(), 0);
        }
        Ok(())
    }

    /// rule: PERM-UDP-REQ-01, PERM-UDP-REQ-02, PERM-UDP-REQ-03, PERM-UDP-REQ-04, PERM-UDP-REQ-05, PERM-TCP-REQ-01, PERM-TCP-REQ-02, PERM-TCP-REQ-03, PERM-TCP-REQ-04, PERM-SRV-REQ-01, PERM-SRV-REQ-02, PERM-SRV-REQ-03, PERM-SRV-REQ-04, ERR-02
    #[on_both]
    async fn request_permission_steps() -> TestResult {
        for kind in PermissionKind::ALL {
            let r = sample(kind);
            // Denied up front: rejected without a prompt, even though the user would say yes.
            let policy = undecided();
            policy.answer_prompts(true);
            policy.deny(r.clone());
            let n = net(policy.clone());
            assert_err(request(&n, &r).await, ErrorName::SecurityError);
            assert_eq!(policy.prompt_count(), 0, "{kind}: denied scope prompted");
            // Trusted: allowed without a prompt, even though the user would say no.
            let policy = undecided();
            policy.answer_prompts(false);
            policy.trust(r.clone());
            let n = net(policy.clone());
            request(&n, &r).await?;
            assert_eq!(policy.prompt_count(), 0, "{kind}: trusted scope prompted");
            // Otherwise the user is asked: yes, then no.
            let policy = undecided();
            policy.answer_prompts(true);
            let n = net(policy.clone());
            request(&n, &r).await?;
            assert_eq!(policy.prompt_count(), 1, "{kind}");
            let policy = undecided();
            policy.answer_prompts(false);
            let n = net(policy.clone());
            assert_err(request(&n, &r).await, ErrorName::SecurityError);
            assert_eq!(policy.prompt_count(), 1, "{kind}");
        }
        // UDP: a denied local scope alone also rejects unprompted (PERM-UDP-REQ-02), and the remote
        // scope is checked first.
        let policy = undecided();
        policy.answer_prompts(true);
        policy.deny(req(PermissionKind::Udp, None, None, None, Some(5_000)));
        let n = net(policy.clone());
        let local_only = req(PermissionKind::Udp, None, None, None, Some(5_000));
        let e = assert_err(request(&n, &local_only).await, ErrorName::SecurityError);
        assert!(e.message().is_some_and(|m| m.contains("local")), "{e}");
        policy.deny(udp_req(Some("127.0.0.2"), Some(9)));
        let both = req(PermissionKind::Udp, Some("127.0.0.2"), Some(9), None, Some(5_000));
        let e = assert_err(request(&n, &both).await, ErrorName::SecurityError);
        assert!(e.message().is_some_and(|m| m.contains("remote")), "the remote check runs first: {e}");
        assert_eq!(policy.prompt_count(), 0);
        Ok(())
    }

    /// rule: DICT-PERM-02, DICT-PERM-03, DICT-PERM-04, DICT-PERM-05, DICT-PERM-06, DICT-PERM-07, DICT-PERM-08
    #[on_both]
    async fn omitted_fields_in_grants() -> TestResult {
        let tcp = |net: &Network, addr: &str, port: u16| {
            let r = TcpSocket::new(net, addr, port, TcpOptions::default());
            err_name(&r)
        };
        // TCP: a grant without an address covers every peer on that port (DICT-PERM-05).
        let policy = undecided();
        let n = net(policy.clone());
        n.faults().hold_open(); // no connection is attempted
        policy.grant(req(PermissionKind::Tcp, None, Some(9), None, None));
        assert_eq!(tcp(&n, LO, 9), None);
        assert_eq!(tcp(&n, "127.0.0.2", 9), None);
        assert_eq!(tcp(&n, LO, 10), Some(ErrorName::SecurityError));
        // TCP: a grant without a port covers every port of that peer (DICT-PERM-06).
        policy.grant(req(PermissionKind::Tcp, Some("127.0.0.3"), None, None, None));
        assert_eq!(tcp(&n, "127.0.0.3", 1), None);
        assert_eq!(tcp(&n, "127.0.0.3", 65_535), None);
        assert_eq!(tcp(&n, "127.0.0.4", 1), Some(ErrorName::SecurityError));

        // Server: a grant without an address does not cover a specific address (DICT-PERM-07), and
        // one without a port does not cover a specific port (DICT-PERM-08).
        let server = |net: &Network, local: Option<&str>, port: Option<u16>| {
            let r = TcpServerSocket::new(
                net,
                TcpServerOptions {
                    local_address: local.map(Into::into),
                    local_port: port,
                    ..TcpServerOptions::default()
                },
            );
            err_name(&r)
        };
        let policy = undecided();
        let n = net(policy.clone());
        n.faults().hold_open(); // nothing listens
        policy.grant(req(PermissionKind::TcpServer, None, None, None, Some(5_001)));
        assert_eq!(server(&n, None, Some(5_001)), None);
        assert_eq!(server(&n, Some(LO), Some(5_001)), Some(ErrorName::SecurityError));
        assert_eq!(server(&n, None, None), None, "a port grant also covers an unspecified port");
        let policy = undecided();
        let n = net(policy.clone());
        n.faults().hold_open();
        policy.grant(PermissionRequest::new(PermissionKind::TcpServer));
        assert_eq!(server(&n, None, Some(5_002)), Some(ErrorName::SecurityError));
        assert_eq!(server(&n, None, None), None);
        assert_eq!(server(&n, None, Some(0)), None, "port 0 means ephemeral (AMB-06)");

        // UDP: a grant {} does not cover binding a specific address or port (DICT-PERM-03/04).
        let policy = undecided();
        let n = net(policy.clone());
        policy.grant(PermissionRequest::new(PermissionKind::Udp));
        assert!(UdpSocket::new(&n, UdpOptions::default()).is_ok());
        assert_err(
            UdpSocket::new(&n, UdpOptions { local_address: Some(LO.into()), ..UdpOptions::default() })
                .map(|_| ()),
            ErrorName::SecurityError,
        );
        assert_err(
            UdpSocket::new(&n, UdpOptions { local_port: Some(5_003), ..UdpOptions::default() }).map(|_| ()),
            ErrorName::SecurityError,
        );
        // UDP: a grant with an address and no port covers every port on it (DICT-PERM-02).
        let policy = undecided();
        let n = net(policy.clone());
        policy.grant(udp_req(Some(LO), None));
        let peers = [loopback_peer().await?, loopback_peer().await?];
        let sock = UdpSocket::new(&n, UdpOptions::default())?;
        let w = sock.writable()?;
        for peer in &peers {
            within("write", w.write(Datagram::to(&b"any port"[..], LO, peer.port()))).await??;
            assert_eq!(peer.recv().await?.0, b"any port");
        }
        assert_err(
            within("write", w.write(Datagram::to(&b"x"[..], "127.0.0.2", peers[0].port()))).await?,
            ErrorName::SecurityError,
        );
        Ok(())
    }

    /// DICT-PERM-09 written out independently of the library, to check it against.
    mod oracle {
        use tcpudp::{PermissionRequest, PermissionState};

        fn same(a: &str, b: &str) -> bool {
            match (a.parse::<std::net::IpAddr>(), b.parse::<std::net::IpAddr>()) {
                (Ok(x), Ok(y)) => x.to_canonical() == y.to_canonical(),
                (Err(_), Err(_)) => a.eq_ignore_ascii_case(b),
                _ => false,
            }
        }

        fn covers(g: &PermissionRequest, r: &PermissionRequest) -> bool {
            let remote_addr = match (&r.remote_address, &g.remote_address) {
                (Some(r), Some(g)) => same(g, r),
                _ => true,
            };
            let remote_port = match (r.remote_port, g.remote_port) {
                (Some(r), Some(g)) => r == g,
                _ => true,
            };
            let local_addr = match (&r.local_address, &g.local_address) {
                (Some(r), Some(g)) => same(g, r),
                (Some(_), None) => false,
                (None, _) => true,
            };
            let local_port = match (r.local_port.filter(|&p| p != 0), g.local_port.filter(|&p| p != 0)) {
                (Some(r), g) => g == Some(r),
                (None, _) => true,
            };
            remote_addr && remote_port && local_addr && local_port
        }

        fn matches(d: &PermissionRequest, r: &PermissionRequest) -> bool {
            let addr = |d: &Option<String>, r: &Option<String>| match (d, r) {
                (Some(d), Some(r)) => same(d, r),
                (Some(_), None) => false,
                (None, _) => true,
            };
            let port = |d: Option<u16>, r: Option<u16>| {
                let (d, r) = (d.filter(|&p| p != 0), r.filter(|&p| p != 0));
                d.is_none() || d == r
            };
            addr(&d.remote_address, &r.remote_address)
                && d.remote_port.is_none_or(|p| Some(p) == r.remote_port)
                && addr(&d.local_address, &r.local_address)
                && port(d.local_port, r.local_port)
        }

        pub(super) fn state(decisions: &[(bool, PermissionRequest)], r: &PermissionRequest) -> PermissionState {
            if decisions.iter().any(|(grant, d)| !grant && matches(d, r)) {
                PermissionState::Denied
            } else if decisions.iter().any(|(grant, g)| *grant && covers(g, r)) {
                PermissionState::Granted
            } else {
                PermissionState::Prompt
            }
        }
    }

    /// rule: DICT-PERM-09, DICT-PERM-03, DICT-PERM-04, GEN-13
    #[only(Real, LOOPBACK_PEERS)]
    async fn stored_decisions_match_dict_perm_09() -> TestResult {
        let addresses = [
            None,
            Some("127.0.0.1"),
            Some("127.0.0.2"),
            Some("::1"),
            Some("0:0:0:0:0:0:0:1"),
            Some("Svc.test"),
            Some("svc.TEST"),
        ];
        let ports = [None, Some(9), Some(10)];
        let locals = [None, Some("127.0.0.1"), Some("::1"), Some("0:0::1")];
        let local_ports = [None, Some(0), Some(5_004)];
        let mut rng = Rng::new(0xd1c7_9e09);
        let pick = |rng: &mut Rng| {
            udp_like(
                addresses[rng.range(0, addresses.len() - 1)],
                ports[rng.range(0, ports.len() - 1)],
                locals[rng.range(0, locals.len() - 1)],
                local_ports[rng.range(0, local_ports.len() - 1)],
            )
        };
        let v4 = |a: &Option<String>| a.as_deref().is_none_or(|a| a.parse::<Ipv4Addr>().is_ok());
        for case in 0..150 {
            let policy = undecided();
            let n = net(policy.clone());
            // A socket whose own grant covers only writes to 127.0.0.1:1, made before any random
            // decision (a denial could match its constructor).
            let own = udp_like(Some(LO), Some(1), Some(LO), None);
            policy.grant(own.clone());
            let sock = UdpSocket::new(
                &n,
                UdpOptions {
                    remote_address: Some(LO.into()),
                    remote_port: Some(1),
                    local_address: Some(LO.into()),
                    ..UdpOptions::default()
                },
            )?;
            let w = sock.writable()?;
            let mut decisions = vec![(true, own)];
            for _ in 0..rng.range(0, 4) {
                let scope = pick(&mut rng);
                let grant = match rng.range(0, 2) {
                    0 => {
                        policy.grant(scope.clone());
                        true
                    }
                    1 => {
                        policy.trust(scope.clone());
                        true
                    }
                    _ => {
                        policy.deny(scope.clone());
                        false
                    }
                };
                decisions.push((grant, scope));
            }
            for _ in 0..6 {
                let r = pick(&mut rng);
                let expected = oracle::state(&decisions, &r);
                assert_eq!(has(&n, Some(&r)).await?, expected, "case {case}: {r:?} under {decisions:?}");
                // Constructors: SecurityError exactly when the state is not "granted" (IPv4 literals
                // and no fixed port only, so nothing is resolved and no port is taken).
                if v4(&r.remote_address) && v4(&r.local_address) && r.local_port != Some(5_004) {
                    let made = UdpSocket::new(
                        &n,
                        UdpOptions {
                            remote_address: r.remote_address.clone(),
                            remote_port: r.remote_port,
                            local_address: r.local_address.clone(),
                            local_port: r.local_port,
                            ..UdpOptions::default()
                        },
                    );
                    match expected {
                        PermissionState::Granted => assert!(made.is_ok(), "case {case}: {r:?}: {:?}", made.err()),
                        _ => assert_eq!(err_name(&made), Some(ErrorName::SecurityError), "case {case}: {r:?}"),
                    }
                }
            }
            // UDP writes check their effective destination.
            for (addr, port) in [(LO, 9), (LO, 10), ("127.0.0.2", 9), ("127.0.0.2", 10)] {
                let expected = oracle::state(&decisions, &udp_req(Some(addr), Some(port)));
                let sent = within("write", w.write(Datagram::to(&b"probe"[..], addr, port))).await?;
                match expected {
                    PermissionState::Granted => assert_eq!(sent, Ok(()), "case {case}: write to {addr}:{port}"),
                    _ => assert_eq!(
                        err_name(&sent),
                        Some(ErrorName::SecurityError),
                        "case {case}: write to {addr}:{port}"
                    ),
                }
            }
            assert_eq!(policy.prompt_count(), 0);
        }
        // The fixed cases of the rule: a grant for ::1 covers other spellings of it; names compare
        // case-insensitively; denial wins whatever the order.
        let policy = undecided();
        let n = net(policy.clone());
        policy.deny(udp_req(Some("127.0.0.2"), Some(9)));
        policy.grant(PermissionRequest::new(PermissionKind::Udp));
        assert!(UdpSocket::new(&n, UdpOptions::default()).is_ok());
        assert_eq!(has(&n, Some(&udp_req(Some("127.0.0.2"), Some(9)))).await?, PermissionState::Denied);
        policy.grant(udp_req(Some("127.0.0.2"), Some(9)));
        assert_eq!(
            has(&n, Some(&udp_req(Some("127.0.0.2"), Some(9)))).await?,
            PermissionState::Denied,
            "denial wins"
        );
        let policy = undecided();
        let n = net(policy.clone());
        policy.grant(udp_req(Some("::1"), None));
        assert_eq!(has(&n, Some(&udp_req(Some("0:0:0:0:0:0:0:1"), Some(5)))).await?, PermissionState::Granted);
        policy.grant(udp_req(Some("Svc.test"), Some(5)));
        assert_eq!(has(&n, Some(&udp_req(Some("svc.TEST"), Some(5)))).await?, PermissionState::Granted);
        assert_eq!(
            has(&n, Some(&udp_req(Some("127.0.0.1"), Some(5)))).await?,
            PermissionState::Prompt,
            "no DNS: a name is not its address"
        );
        let peer = Peer::bind_real("::1".parse()?).await?;
        let sock = UdpSocket::new(&n, UdpOptions { local_address: Some("::1".into()), ..UdpOptions::default() });
        assert_err(sock.map(|_| ()), ErrorName::SecurityError);
        let six = UdpSocket::new(
            &n,
            UdpOptions {
                remote_address: Some("::1".into()),
                remote_port: Some(peer.port()),
                ..UdpOptions::default()
            },
        )?;
        within("write", six.writable()?.write(Datagram::to(&b"spelled"[..], "0:0:0:0:0:0:0:1", peer.port())))
            .await??;
        assert_eq!(peer.recv().await?.0, b"spelled");
        Ok(())
    }

    fn udp_like(
        remote: Option<&str>,
        port: Option<u16>,
        local: Option<&str>,
        local_port: Option<u16>,
    ) -> PermissionRequest {
        req(PermissionKind::Udp, remote, port, local, local_port)
    }

    on_both_backends! {
        /// rule: DICT-PERM-01, DICT-PERM-09, UDP-WRITE-04, ERR-03
        fn grant_without_address_covers_every_peer(world: &mut World) {
            world.policy(|| Policy::from_store(PermissionStore::new()));
            world.host("second", |ctx| async move {
                // Real: the same machine (a wildcard socket, reached at 127.0.0.2). Sim: another host,
                // on the first host's port.
                let port = ctx.lookup("port").await;
                let peer = match ctx.backend() {
                    BackendChoice::Real => None,
                    BackendChoice::Sim => Some(turmoil::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).await?),
                };
                if let Some(peer) = peer {
                    let mut buf = [0u8; 64];
                    let (n, _) = peer.recv_from(&mut buf).await?;
                    assert_eq!(&buf[..n], b"to second");
                    ctx.publish("second-got", 1);
                }
                std::future::pending::<()>().await;
                Ok(())
            });
            world.client("client", |ctx| async move {
                let peer = match ctx.backend() {
                    BackendChoice::Real => tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?,
                    BackendChoice::Sim => return sim_client(ctx).await,
                };
                let port = peer.local_addr()?.port();
                ctx.net.policy().grant(udp_req(None, Some(port)));
                let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
                let w = sock.writable()?;
                let mut buf = [0u8; 64];
                for (addr, text) in [(LO, &b"to first"[..]), ("127.0.0.2", &b"to second"[..])] {
                    within("write", w.write(Datagram::to(text, addr, port))).await??;
                    let (n, _) = within("recv", peer.recv_from(&mut buf)).await??;
                    assert_eq!(&buf[..n], text);
                }
                assert_err(within("write", w.write(Datagram::to(&b"x"[..], LO, port + 1))).await?, ErrorName::SecurityError);
                // A denial of one destination wins over the grant, and does not reach others.
                ctx.net.policy().deny(udp_req(Some("127.0.0.2"), Some(port)));
                assert_err(within("write", w.write(Datagram::to(&b"x"[..], "127.0.0.2", port))).await?, ErrorName::SecurityError);
                within("write", w.write(Datagram::to(&b"again"[..], LO, port))).await??;
                let (n, _) = within("recv", peer.recv_from(&mut buf)).await??;
                assert_eq!(&buf[..n], b"again");
                Ok(())
            });
        }
    }

    async fn sim_client(ctx: crate::Ctx) -> Result<(), Box<dyn std::error::Error>> {
        let peer = Peer::bind(&ctx).await?;
        let port = peer.port();
        ctx.net.policy().grant(udp_req(None, Some(port)));
        ctx.publish("port", port);
        let second = ctx.address_of("second");
        let sock = UdpSocket::new(&ctx.net, UdpOptions::default())?;
        let w = sock.writable()?;
        within("write", w.write(Datagram::to(&b"to first"[..], LO, port))).await??;
        assert_eq!(peer.recv().await?.0, b"to first");
        within("write", w.write(Datagram::to(&b"to second"[..], second.as_str(), port))).await??;
        let _ = within("second host", ctx.lookup("second-got")).await?;
        assert_err(
            within("write", w.write(Datagram::to(&b"x"[..], LO, port + 1))).await?,
            ErrorName::SecurityError,
        );
        ctx.net.policy().deny(udp_req(Some(second.as_str()), Some(port)));
        assert_err(
            within("write", w.write(Datagram::to(&b"x"[..], second.as_str(), port))).await?,
            ErrorName::SecurityError,
        );
        within("write", w.write(Datagram::to(&b"again"[..], LO, port))).await??;
        assert_eq!(peer.recv().await?.0, b"again");
        Ok(())
    }
}

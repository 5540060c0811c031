//! Runs the logic of the spec's three examples (`examples/*.rs`) on loopback and in the
//! simulator: the TCP echo server and client talk to each other, and the SSDP search finds a fake
//! device through the multicast group (interface 127.0.0.1, TTL 0 on real sockets).

#[allow(dead_code, unreachable_pub)]
#[path = "../../../examples/echo_client.rs"]
mod echo_client;
#[allow(dead_code, unreachable_pub)]
#[path = "../../../examples/echo_server.rs"]
mod echo_server;
#[allow(dead_code, unreachable_pub)]
#[path = "../../../examples/ssdp_search.rs"]
mod ssdp_search;

use std::time::Duration;

use crate::{harness, BackendChoice};
use tcpudp::Policy;
use tcpudp_core::permission::PermissionStore;

crate::only_on! {

    const GUARD: Duration = Duration::from_secs(30);

    /// The examples' "user": answers every prompt with yes (as in the spec's flows, permission is
    /// requested before each socket is made).
    fn user_says_yes() -> Policy {
        let policy = Policy::from_store(PermissionStore::new());
        policy.answer_prompts(true);
        policy
    }

    on_both_backends! {
        /// rule: TCP-HALFCLOSE-02, TCP-READ-CLOSE-02, PERM-TCP-REQ-03, PERM-SRV-REQ-03, PERM-GEN-05
        fn echo_examples_talk_to_each_other(world: &mut World) {
            world.policy(user_says_yes);
            world.host("server", |ctx| async move {
                let (net, directory) = (ctx.net.clone(), ctx.clone());
                let address = match ctx.backend() {
                    BackendChoice::Real => "127.0.0.1".to_owned(),
                    BackendChoice::Sim => ctx.address_of("server"),
                };
                // Two clients, then the server closes (the example serves for ever when run).
                echo_server::serve(&net, &address, 0, Some(2), move |port| directory.publish("echo", port)).await?;
                assert_eq!(net.policy().prompt_count(), 1, "one permission prompt for the server");
                ctx.publish("server-done", 1);
                Ok(())
            });
            world.client("client", |ctx| async move {
                let port = ctx.lookup("echo").await;
                let server = ctx.address_of("server");
                let echoed = tokio::time::timeout(GUARD, echo_client::run(&ctx.net, &server, port, echo_client::MESSAGE.as_bytes())).await??;
                assert_eq!(echoed, b"Hello World");
                let echoed = tokio::time::timeout(GUARD, echo_client::run(&ctx.net, &server, port, b"second client")).await??;
                assert_eq!(echoed, b"second client");
                // The second run found its permission stored (PERM-GEN-05): one prompt in all.
                assert_eq!(ctx.net.policy().prompt_count(), 1);
                let _ = tokio::time::timeout(GUARD, ctx.lookup("server-done")).await?;
                Ok(())
            });
        }
    }

    /// rule: UDP-MCAST-01, UDP-WRITE-11, DICT-PERM-09, PERM-UDP-REQ-04
    #[only(Real, "the example's loopback network (multicast pinned to 127.0.0.1) is the real backend's; in simulation: ssdp_search_in_simulation")]
    async fn ssdp_search_on_loopback() -> Result<(), Box<dyn std::error::Error>> {
        // The device and the searcher are on this machine; multicast stays on lo with TTL 0.
        let device_net = ssdp_search::loopback_network(Policy::allow_all())?;
        let search_policy = user_says_yes();
        let search_net = ssdp_search::loopback_network(search_policy.clone())?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        // A test-chosen (ephemeral) port instead of 1900: nothing else on the machine is disturbed.
        let device = tokio::spawn(async move {
            ssdp_search::device(&device_net, ssdp_search::SSDP_GROUP, 0, 1, move |port| {
                let _ = ready_tx.send(port);
            })
            .await
        });
        let port = tokio::time::timeout(GUARD, ready_rx).await??;
        let responses = ssdp_search::search(&search_net, ssdp_search::SSDP_GROUP, port, GUARD, 1).await?;
        assert_eq!(responses.len(), 1);
        let answer = &responses[0];
        assert!(answer.data.starts_with(b"HTTP/1.1 200 OK\r\n"), "{:?}", String::from_utf8_lossy(&answer.data));
        assert_eq!(answer.remote_address(), "127.0.0.1");
        assert_eq!(answer.remote_port(), port);
        // One prompt: for the group's address and port; `new UDPSocket()` was covered by it.
        assert_eq!(search_policy.prompt_count(), 1);
        tokio::time::timeout(GUARD, device).await???;
        Ok(())
    }

    fn ssdp_in_simulation(world: &mut crate::World) {
        world.policy(user_says_yes);
        world.host("device", |ctx| async move {
            ctx.net.policy().grant(tcpudp::PermissionRequest::new(tcpudp::PermissionKind::Udp));
            ctx.net.policy().grant(tcpudp::PermissionRequest {
                local_port: Some(ssdp_search::SSDP_PORT),
                ..tcpudp::PermissionRequest::new(tcpudp::PermissionKind::Udp)
            });
            let directory = ctx.clone();
            ssdp_search::device(&ctx.net, ssdp_search::SSDP_GROUP, ssdp_search::SSDP_PORT, 1, move |port| {
                directory.publish("device", port)
            })
            .await?;
            std::future::pending::<()>().await;
            Ok(())
        });
        world.client("searcher", |ctx| async move {
            let port = ctx.lookup("device").await;
            assert_eq!(port, ssdp_search::SSDP_PORT);
            let responses =
                ssdp_search::search(&ctx.net, ssdp_search::SSDP_GROUP, port, Duration::from_secs(10), 1).await?;
            assert_eq!(responses.len(), 1, "the device on another host answered");
            assert_eq!(responses[0].remote_address(), ctx.address_of("device"));
            assert!(responses[0].data.starts_with(b"HTTP/1.1 200 OK\r\n"));
            assert_eq!(ctx.net.policy().prompt_count(), 1);
            Ok(())
        });
    }

    /// rule: UDP-MCAST-01, UDP-WRITE-11, DICT-PERM-09
    #[only(Sim, "the SSDP group and port 1900 are private only in the simulator; on real sockets: ssdp_search_on_loopback")]
    fn ssdp_search_in_simulation() {
        // In the simulator the group and port 1900 are private to the simulation.
        harness::check(BackendChoice::Sim, "ssdp_search_in_simulation", ssdp_in_simulation);
    }
}

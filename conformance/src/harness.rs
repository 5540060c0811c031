//! Runs a [`World`] on real sockets or in the simulator.

use std::time::Duration;

use crate::world::{BackendChoice, Ctx, Directory, World};

/// Builds a world with `build` and runs it on `backend`; panics with the failure (for `#[test]`).
pub fn check(backend: BackendChoice, name: &str, build: fn(&mut World)) {
    if let Err(failure) = run(backend, seed_of(name), build) {
        panic!("{name} on {}: {failure}", backend.as_str());
    }
}

/// Builds and runs a world; `Err` describes the first failure.
pub fn run(backend: BackendChoice, seed: u64, build: fn(&mut World)) -> Result<(), String> {
    run_with(backend, seed, build)
}

/// As [`run`], with any builder (the scenario interpreter captures its scenario).
pub fn run_with(backend: BackendChoice, seed: u64, build: impl FnOnce(&mut World)) -> Result<(), String> {
    let mut world = World::new(backend, seed);
    build(&mut world);
    match backend {
        BackendChoice::Real => run_real(world),
        BackendChoice::Sim => run_sim(world),
    }
}

/// A stable seed from a scenario name (FNV-1a), so every test has its own fixed seed.
pub fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn run_real(world: World) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let World { hosts, clients, policy, duration, backend, .. } = world;
    local.block_on(&rt, async move {
        let directory = Directory::default();
        let ctx = |name: &str| -> Result<Ctx, String> {
            // DESIGN §6: multicast never leaves the machine; the interface is pinned to loopback.
            let loopback = Some(std::net::IpAddr::from([127, 0, 0, 1]));
            let net = tcpudp_net_real::network_with_multicast_interface(policy(), loopback)
                .map_err(|e| e.to_string())?;
            Ok(Ctx { net, name: name.to_owned(), backend, directory: directory.clone(), faults: None })
        };
        let mut host_tasks = Vec::new();
        for (name, body) in &hosts {
            let task = tokio::task::spawn_local(body(ctx(name)?));
            host_tasks.push((name.clone(), task));
        }
        let mut client_tasks = Vec::new();
        for (name, body) in &clients {
            client_tasks.push((name.clone(), tokio::task::spawn_local(body(ctx(name)?))));
        }
        let outcome = tokio::time::timeout(duration, async {
            for (name, task) in client_tasks {
                match task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("client {name} failed: {e}")),
                    Err(e) => return Err(format!("client {name} panicked: {e}")),
                }
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err(format!("did not finish within {duration:?}")));
        for (name, task) in host_tasks {
            if task.is_finished() {
                match task.await {
                    Ok(Err(e)) if outcome.is_ok() => return Err(format!("host {name} failed: {e}")),
                    Err(e) if e.is_panic() => return Err(format!("host {name} panicked: {e}")),
                    _ => {}
                }
            } else {
                task.abort();
            }
        }
        // Let aborted hosts and dropped sockets release their descriptors.
        tokio::time::sleep(Duration::from_millis(1)).await;
        outcome
    })
}

fn run_sim(world: World) -> Result<(), String> {
    let World { backend, seed, hosts, clients, policy, duration, link, tick, scheduled } = world;
    let mut sim = tcpudp_net_sim::SimBuilder::new(seed).link(link).tick(tick).duration(duration).build();
    let faults = sim.faults();
    let directory = Directory::default();
    for (name, body) in hosts {
        let (directory, policy, host, faults) =
            (directory.clone(), policy.clone(), name.clone(), faults.clone());
        sim.host(&name, move || {
            let (body, directory, policy, host, faults) =
                (body.clone(), directory.clone(), policy.clone(), host.clone(), faults.clone());
            async move {
                let net = tcpudp_net_sim::network(&host, policy())?;
                body(Ctx { net, name: host, backend, directory, faults: Some(faults) }).await
            }
        })
        .map_err(|e| e.to_string())?;
    }
    for (name, body) in clients {
        let (directory, policy, host, faults) =
            (directory.clone(), policy.clone(), name.clone(), faults.clone());
        sim.client(&name, async move {
            let net = tcpudp_net_sim::network(&host, policy())?;
            body(Ctx { net, name: host, backend, directory, faults: Some(faults) }).await
        })
        .map_err(|e| e.to_string())?;
    }
    for (at, fault) in scheduled {
        sim.at(at, fault);
    }
    sim.run().map(drop).map_err(|e| e.to_string())
}

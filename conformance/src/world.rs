//! A world to run application code in: named hosts and clients, on either backend.
//!
//! The same test body runs on real sockets (every host shares 127.0.0.1, one tokio runtime) and in
//! a turmoil simulation (one simulated host per name). Hosts publish the ports they listen on
//! through a [`Directory`], so real runs never race for a fixed port.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use tcpudp::{Network, Policy};
use tcpudp_net_sim::{FaultError, LinkProfile, SimFaults};
use tokio::sync::watch;

/// What a host or client body returns.
pub type BodyResult = Result<(), Box<dyn std::error::Error>>;

/// A host or client body.
pub type Body = Rc<dyn Fn(Ctx) -> Pin<Box<dyn Future<Output = BodyResult>>>>;

/// Which backend a world runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendChoice {
    /// Real sockets on loopback.
    Real,
    /// The turmoil simulation.
    Sim,
}

impl BackendChoice {
    /// `"real"` or `"sim"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Real => "real",
            BackendChoice::Sim => "sim",
        }
    }
}

/// The description of a world: hosts (servers that run until the clients finish) and clients.
pub struct World {
    pub(crate) backend: BackendChoice,
    pub(crate) seed: u64,
    pub(crate) hosts: Vec<(String, Body)>,
    pub(crate) clients: Vec<(String, Body)>,
    pub(crate) policy: Rc<dyn Fn() -> Policy>,
    pub(crate) duration: Duration,
    /// Simulator only: the link profile, the step, and faults scheduled at simulated times.
    pub(crate) link: LinkProfile,
    pub(crate) tick: Duration,
    pub(crate) scheduled: Vec<(Duration, ScheduledFault)>,
}

/// A fault a world schedules at a simulated time (simulator only).
pub(crate) type ScheduledFault = Box<dyn FnOnce(&SimFaults) -> Result<(), FaultError>>;

impl World {
    pub(crate) fn new(backend: BackendChoice, seed: u64) -> Self {
        World {
            backend,
            seed,
            hosts: Vec::new(),
            clients: Vec::new(),
            policy: Rc::new(Policy::allow_all),
            duration: Duration::from_secs(600),
            link: LinkProfile::default(),
            tick: Duration::from_millis(1),
            scheduled: Vec::new(),
        }
    }

    /// The backend this world runs on.
    pub fn backend(&self) -> BackendChoice {
        self.backend
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A host: runs `body` until every client has finished.
    pub fn host<F, Fut>(&mut self, name: &str, body: F)
    where
        F: Fn(Ctx) -> Fut + 'static,
        Fut: Future<Output = BodyResult> + 'static,
    {
        self.hosts.push((name.to_owned(), Rc::new(move |ctx| Box::pin(body(ctx)))));
    }

    /// A client: the world ends when every client's body has returned; an error fails the run.
    pub fn client<F, Fut>(&mut self, name: &str, body: F)
    where
        F: Fn(Ctx) -> Fut + 'static,
        Fut: Future<Output = BodyResult> + 'static,
    {
        self.clients.push((name.to_owned(), Rc::new(move |ctx| Box::pin(body(ctx)))));
    }

    /// The permission policy each host's network gets (default: allow everything).
    pub fn policy(&mut self, make: impl Fn() -> Policy + 'static) {
        self.policy = Rc::new(make);
    }

    /// Upper bound on the run: simulated time in the simulator, a hang guard on real sockets.
    pub fn duration(&mut self, limit: Duration) {
        self.duration = limit;
    }

    /// Simulator only: every link's latency profile (default: turmoil's 0–100 ms;
    /// `LinkProfile::fixed` for exact times and no natural reordering). Ignored on real sockets.
    pub fn link(&mut self, profile: LinkProfile) {
        self.link = profile;
    }

    /// Simulator only: turmoil's step (default 1 ms). Timers fire at exact times whatever the
    /// step; a larger step makes long idle simulations faster. Ignored on real sockets.
    pub fn tick(&mut self, tick: Duration) {
        self.tick = tick;
    }

    /// Simulator only: runs `fault` when simulated time reaches `at` (see
    /// `tcpudp_net_sim::Simulation::at`). Ignored on real sockets, where bodies should check
    /// `ctx.sim_faults()` instead when a fault is essential.
    pub fn at(&mut self, at: Duration, fault: impl FnOnce(&SimFaults) -> Result<(), FaultError> + 'static) {
        self.scheduled.push((at, Box::new(fault)));
    }
}

/// What a host or client body gets.
#[derive(Clone)]
pub struct Ctx {
    /// This host's network.
    pub net: Network,
    /// This host's name.
    pub name: String,
    pub(crate) backend: BackendChoice,
    pub(crate) directory: Directory,
    /// The simulator's fault API (`None` on real sockets).
    pub(crate) faults: Option<SimFaults>,
}

impl Ctx {
    /// The backend.
    pub fn backend(&self) -> BackendChoice {
        self.backend
    }

    /// The address text other hosts reach `host` at: 127.0.0.1 on real sockets, the simulated
    /// host's address in simulation.
    pub fn address_of(&self, host: &str) -> String {
        match self.backend {
            BackendChoice::Real => "127.0.0.1".to_owned(),
            BackendChoice::Sim => turmoil::lookup(host).to_string(),
        }
    }

    /// The simulator's fault API (partitions, loss, resets, crashes; DESIGN §7), or `None` on
    /// real sockets.
    pub fn sim_faults(&self) -> Option<&SimFaults> {
        self.faults.as_ref()
    }

    /// Announces a port under `key` (for example a server's listening port).
    pub fn publish(&self, key: &str, port: u16) {
        self.directory.publish(key, port);
    }

    /// Waits until `key` is published and returns its port.
    pub async fn lookup(&self, key: &str) -> u16 {
        self.directory.lookup(key).await
    }
}

/// One published key: its port once known.
type Slot = Rc<watch::Sender<Option<u16>>>;

/// Ports published by hosts, shared by everyone in one world.
#[derive(Clone, Default)]
pub struct Directory {
    entries: Rc<RefCell<BTreeMap<String, Slot>>>,
}

impl Directory {
    fn channel(&self, key: &str) -> Slot {
        self.entries
            .borrow_mut()
            .entry(key.to_owned())
            .or_insert_with(|| Rc::new(watch::channel(None).0))
            .clone()
    }

    fn publish(&self, key: &str, port: u16) {
        self.channel(key).send_replace(Some(port));
    }

    async fn lookup(&self, key: &str) -> u16 {
        let mut rx = self.channel(key).subscribe();
        loop {
            if let Some(port) = *rx.borrow_and_update() {
                return port;
            }
            if rx.changed().await.is_err() {
                // The sender lives in the directory for the whole world: this cannot end.
                std::future::pending::<()>().await;
            }
        }
    }
}

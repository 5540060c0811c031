//! Permissions on a [`Network`](crate::Network): the policy and the three permission objects
//! (RULES.md §2, ENTRY-01, DICT-PERM-09).
//!
//! The pure rules (matching, denial wins, the allow-list grammar) live in
//! [`tcpudp_core::permission`]; this module adds what needs a runtime: prompting, asynchronous
//! answers, and the controls tests use to hold or fail queries (RULES.md §0.4).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tcpudp_core::permission::{
    PermissionKind, PermissionRequest, PermissionState, PermissionStore, RequestStep, Rule,
    TcpPermissionOptions, TcpServerPermissionOptions, UdpPermissionOptions,
};
use tcpudp_core::SocketError;
use tokio::sync::{oneshot, Notify};

use crate::backend::BoxFuture;
use crate::network::Network;
use crate::shared::{lock, Mutex};

/// Asks the user about one request; resolves `true` to grant.
pub type PromptFn = dyn Fn(&PermissionRequest) -> BoxFuture<'static, bool> + Send + Sync;

/// The permission policy of a [`Network`]: stored decisions, allow-list rules and a prompt.
///
/// ```
/// use tcpudp::Policy;
/// let policy = Policy::allow_list(["tcp:localhost:8000-8100", "udp-remote:*:1900"]).unwrap();
/// assert_eq!(policy.prompt_count(), 0);
/// ```
#[derive(Clone)]
pub struct Policy {
    inner: Arc<PolicyInner>,
}

struct PolicyInner {
    store: Mutex<PermissionStore>,
    /// Bumped (under the store's lock) by every change to the store, so a caller may keep a
    /// decision for as long as the generation it was read at is current (UDP writes do).
    generation: AtomicU64,
    prompt: Mutex<Option<Arc<PromptFn>>>,
    prompt_count: AtomicU64,
    fail_queries: AtomicBool,
    queries: Gate,
    prompts: Gate,
}

impl Policy {
    /// Everything allowed (denials recorded later still win).
    pub fn allow_all() -> Self {
        Self::from_store(PermissionStore::allow_all())
    }

    /// Everything denied: constructors throw `SecurityError`, requests reject without a prompt.
    pub fn deny_all() -> Self {
        Self::from_store(PermissionStore::deny_all())
    }

    /// Only what the rules allow (`tcp:HOST:PORTS`, `udp-remote:HOST:PORTS`, `udp-local:ADDR:PORTS`,
    /// `tcp-server:ADDR:PORTS`; `*` for any, PORTS a port or a range). A bad rule is `TypeError`.
    pub fn allow_list<'a>(rules: impl IntoIterator<Item = &'a str>) -> Result<Self, SocketError> {
        let rules = rules.into_iter().map(Rule::parse).collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_store(PermissionStore::allow_list(rules)))
    }

    /// Nothing decided: constructors throw `SecurityError` (state "prompt") until
    /// `requestPermission` asks `prompt` and the user grants.
    pub fn prompt(
        prompt: impl Fn(&PermissionRequest) -> BoxFuture<'static, bool> + Send + Sync + 'static,
    ) -> Self {
        let policy = Self::from_store(PermissionStore::new());
        *lock(&policy.inner.prompt) = Some(Arc::new(prompt));
        policy
    }

    /// A policy over an existing store.
    pub fn from_store(store: PermissionStore) -> Self {
        Policy {
            inner: Arc::new(PolicyInner {
                store: Mutex::new(store),
                generation: AtomicU64::new(0),
                prompt: Mutex::new(None),
                prompt_count: AtomicU64::new(0),
                fail_queries: AtomicBool::new(false),
                queries: Gate::default(),
                prompts: Gate::default(),
            }),
        }
    }

    /// The state of `request` now (what constructors and UDP writes check). Never prompts.
    pub fn state(&self, request: &PermissionRequest) -> PermissionState {
        lock(&self.inner.store).state(request)
    }

    /// [`PermissionStore::tcp_remote_state_for_all`] now.
    pub(crate) fn tcp_remote_state_for_all(&self) -> Option<PermissionState> {
        lock(&self.inner.store).tcp_remote_state_for_all()
    }

    /// The store's generation now: it changes whenever a decision is stored.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// As [`state`](Self::state), with the generation the answer belongs to (read under the same
    /// lock, so the pair is consistent).
    pub(crate) fn state_at(&self, request: &PermissionRequest) -> (PermissionState, u64) {
        let store = lock(&self.inner.store);
        (store.state(request), self.inner.generation.load(Ordering::Acquire))
    }

    /// Changes the store and moves the generation on (while still holding the lock).
    fn change<T>(&self, f: impl FnOnce(&mut PermissionStore) -> T) -> T {
        let mut store = lock(&self.inner.store);
        let out = f(&mut store);
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        out
    }

    /// Stores a grant for exactly `request`.
    pub fn grant(&self, request: PermissionRequest) {
        self.change(|store| store.grant(request));
    }

    /// Stores a denial for exactly `request` (denial wins).
    pub fn deny(&self, request: PermissionRequest) {
        self.change(|store| store.deny(request));
    }

    /// Stores a pre-arranged trust entry: allowed without a prompt.
    pub fn trust(&self, request: PermissionRequest) {
        self.change(|store| store.trust(request));
    }

    /// Answers every later prompt with `grant` (replaces any prompt callback).
    pub fn answer_prompts(&self, grant: bool) {
        let answer: Arc<PromptFn> = Arc::new(move |_| Box::pin(async move { grant }));
        *lock(&self.inner.prompt) = Some(answer);
    }

    /// How many times the user was prompted.
    pub fn prompt_count(&self) -> u64 {
        self.inner.prompt_count.load(Ordering::SeqCst)
    }

    /// Makes `hasPermission` fail (`UnknownError`, AMB-02) until called with `false`.
    pub fn fail_queries(&self, fail: bool) {
        self.inner.fail_queries.store(fail, Ordering::SeqCst);
    }

    /// Holds every `hasPermission` answer until [`release_queries`](Self::release_queries).
    pub fn block_queries(&self) {
        self.inner.queries.close();
    }

    /// Lets held `hasPermission` calls answer.
    pub fn release_queries(&self) {
        self.inner.queries.open();
    }

    /// Holds every prompt until [`release_prompts`](Self::release_prompts).
    pub fn block_prompts(&self) {
        self.inner.prompts.close();
    }

    /// Lets held prompts proceed.
    pub fn release_prompts(&self) {
        self.inner.prompts.open();
    }

    async fn has_permission(self, request: PermissionRequest) -> Result<PermissionState, SocketError> {
        self.inner.queries.pass().await;
        if self.inner.fail_queries.load(Ordering::SeqCst) {
            return Err(SocketError::permission_query_failed());
        }
        Ok(self.state(&request))
    }

    async fn request_permission(self, request: PermissionRequest) -> Result<(), SocketError> {
        let step = self.change(|store| store.request_step(&request));
        match step {
            RequestStep::Reject(e) => Err(e),
            RequestStep::Allow => Ok(()),
            RequestStep::AskUser => {
                self.inner.prompts.pass().await;
                self.inner.prompt_count.fetch_add(1, Ordering::SeqCst);
                let prompt = lock(&self.inner.prompt).clone();
                let granted = match prompt {
                    Some(ask) => ask(&request).await,
                    None => false, // No one to ask: the user did not grant.
                };
                self.change(|store| store.answer(request, granted))
            }
        }
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("store", &*lock(&self.inner.store)).finish_non_exhaustive()
    }
}

/// A gate that futures wait at while it is closed.
#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    notify: Notify,
}

impl Gate {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    async fn pass(&self) {
        loop {
            let notified = self.notify.notified();
            if !self.closed.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// Starts `steps` at once on the network's runtime (GEN-10: the call takes effect when made) and
/// returns a future of its outcome.
fn start<T: Send + 'static>(
    net: &Network,
    steps: impl Future<Output = Result<T, SocketError>> + Send + 'static,
) -> impl Future<Output = Result<T, SocketError>> + Send + 'static {
    let (tx, rx) = oneshot::channel();
    net.spawn(async move {
        let _ = tx.send(steps.await);
    });
    async move { rx.await.unwrap_or_else(|_| Err(SocketError::permission_query_failed())) }
}

macro_rules! permission_object {
    ($(#[$doc:meta])* $name:ident, $opts:ty, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            net: Network,
        }

        impl $name {
            pub(crate) fn new(net: Network) -> Self {
                $name { net }
            }

            /// `hasPermission(options)`: the state for these options, read without prompting. A
            /// policy that cannot be read rejects `UnknownError`.
            pub fn has_permission(
                &self,
                options: Option<$opts>,
            ) -> impl Future<Output = Result<PermissionState, SocketError>> + Send + 'static {
                let request = PermissionRequest::from(options.unwrap_or_default());
                debug_assert_eq!(request.kind, $kind);
                start(&self.net, self.net.policy().clone().has_permission(request))
            }

            /// `requestPermission(options)`: resolves when allowed (asking the user if needed),
            /// rejects `SecurityError` otherwise.
            pub fn request_permission(
                &self,
                options: Option<$opts>,
            ) -> impl Future<Output = Result<(), SocketError>> + Send + 'static {
                let request = PermissionRequest::from(options.unwrap_or_default());
                start(&self.net, self.net.policy().clone().request_permission(request))
            }
        }
    };
}

permission_object!(
    /// `navigator.udpPermission`.
    UdpPermission,
    UdpPermissionOptions,
    PermissionKind::Udp
);
permission_object!(
    /// `navigator.tcpPermission`.
    TcpPermission,
    TcpPermissionOptions,
    PermissionKind::Tcp
);
permission_object!(
    /// `navigator.tcpServerPermission`.
    TcpServerPermission,
    TcpServerPermissionOptions,
    PermissionKind::TcpServer
);

//! Every scenario the `tcpudp-conformance` command runs, registered with the rules it checks.
//!
//! Two kinds, each made by a macro that also emits the `#[test]`s `cargo test` runs (as unit
//! tests of this crate):
//! - worlds ([`on_both_backends!`](crate::on_both_backends)): the same application code on real
//!   sockets and in the simulator;
//! - tests bound to one backend ([`only_on!`](crate::only_on)): the simulator's fault layer
//!   driven directly, foreign peers, the kernel's own state. On the other backend they are `skip`,
//!   with the missing capability as the reason (DESIGN §8).
//!
//! Each names its rules in a doc line `/// rule: ID, ID`, read at run time by [`Registered::rules`].
//! Rules no scenario can reach because Rust's types make the case impossible are listed in
//! [`CORE`]: the core's own tests check them.

use std::cell::RefCell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::harness;
use crate::world::{BackendChoice, Ctx, World};

/// A registered scenario.
pub struct Registered {
    /// Its function's name (also the seed of a world: `harness::seed_of(name)`).
    pub name: &'static str,
    /// Its doc lines; those starting with `rule:` name the rules it checks.
    pub docs: &'static [&'static str],
    /// How it runs.
    pub run: Runner,
}

/// How a registered scenario runs.
pub enum Runner {
    /// A world, built on each backend.
    Both(fn(&mut World)),
    /// A test that runs on one backend only.
    Only {
        /// The backend it runs on.
        backend: BackendChoice,
        /// Why it cannot run on the other one: the missing capability.
        elsewhere: &'static str,
        /// The test.
        test: fn() -> Outcome,
    },
}

/// What a scenario run gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and every check held.
    Pass,
    /// A check failed: the failure.
    Fail(String),
    /// It did not run here: why.
    Skip(String),
}

/// Rules that cannot arise through the Rust API, with the reason; each is checked by a test of
/// `tcpudp-core` (a test of this crate makes sure of it) and shown as `core` in the matrix.
pub const CORE: &[(&str, &str)] = &[
    (
        "DICT-GEN-01",
        "an omitted options argument has no Rust form (`Default::default()` is the only one); defaults are checked at core level",
    ),
    (
        "DICT-MSG-01",
        "a message without data cannot be built (`Datagram.data` is `Bytes`); the conversion is checked at core level",
    ),
];

/// Defines each `fn name(world: &mut World) { … }` (each preceded by doc lines only, such as
/// `/// rule: TCP-OPEN-01`), a `WORLDS` registry of them, and a `#[test]` for each on each
/// backend: `real::name` and `sim::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($( $(#[doc = $doc:literal])* fn $name:ident($world:ident : &mut World) $body:block )*) => {
        $( $(#[doc = $doc])* fn $name($world: &mut $crate::World) $body )*

        /// The worlds of this module, each run on both backends.
        pub(crate) const WORLDS: &[$crate::scenarios::Registered] = &[
            $( $crate::scenarios::Registered {
                name: stringify!($name),
                docs: &[$($doc),*],
                run: $crate::scenarios::Runner::Both($name),
            }, )*
        ];

        #[cfg(test)]
        mod real {
            $( #[test] fn $name() { $crate::harness::check($crate::BackendChoice::Real, stringify!($name), super::$name) } )*
        }

        #[cfg(test)]
        mod sim {
            $( #[test] fn $name() { $crate::harness::check($crate::BackendChoice::Sim, stringify!($name), super::$name) } )*
        }
    };
}

/// Items, among which tests bound to one backend: doc lines (`/// rule: …`), then
/// `#[only(Sim, WHY_NOT_ON_REAL)]` or `#[only(Real, WHY_NOT_IN_SIM)]`, then a `fn name()` or an
/// `async fn name()` (run on a current-thread tokio runtime) returning `()` or a `Result`. Also
/// `#[on_both] async fn name()`: a test made into a world (one client, "app") and run on both
/// backends, reading its backend with [`current_ctx`]. Other items pass through. Emits an `ONLY`
/// registry and a `#[test]` for each: `only::name`, or `only::real::name` and `only::sim::name`.
#[macro_export]
macro_rules! only_on {
    (@acc [$($entries:tt)*] [$($names:ident)*] [$($both:ident)*]) => {
        /// The tests of this module that are not worlds: bound to one backend, or `#[on_both]`.
        pub(crate) const ONLY: &[$crate::scenarios::Registered] = &[$($entries)*];

        #[cfg(test)]
        mod only {
            $( #[test] fn $names() { $crate::scenarios::check_only(super::ONLY, stringify!($names)) } )*

            mod real {
                $( #[test] fn $both() { $crate::scenarios::check_both(super::super::ONLY, stringify!($both), $crate::BackendChoice::Real) } )*
            }

            mod sim {
                $( #[test] fn $both() { $crate::scenarios::check_both(super::super::ONLY, stringify!($both), $crate::BackendChoice::Sim) } )*
            }
        }
    };
    (@acc [$($entries:tt)*] [$($names:ident)*] [$($both:ident)*]
        $(#[doc = $doc:literal])* #[on_both]
        async fn $name:ident() $(-> $ret:ty)? $body:block $($rest:tt)*) => {
        $(#[doc = $doc])* async fn $name() $(-> $ret)? $body
        $crate::only_on!(@acc [$($entries)* $crate::scenarios::Registered {
            name: stringify!($name),
            docs: &[$($doc),*],
            run: $crate::scenarios::Runner::Both(|world: &mut $crate::World| $crate::scenarios::as_world(world, $name)),
        },] [$($names)*] [$($both)* $name] $($rest)*);
    };
    (@acc [$($entries:tt)*] [$($names:ident)*] [$($both:ident)*]
        $(#[doc = $doc:literal])* #[only($backend:ident, $why:expr)]
        async fn $name:ident() $(-> $ret:ty)? $body:block $($rest:tt)*) => {
        $(#[doc = $doc])* async fn $name() $(-> $ret)? $body
        $crate::only_on!(@acc [$($entries)* $crate::scenarios::Registered {
            name: stringify!($name),
            docs: &[$($doc),*],
            run: $crate::scenarios::Runner::Only {
                backend: $crate::BackendChoice::$backend,
                elsewhere: $why,
                test: || $crate::scenarios::finish($crate::scenarios::block_on($name())),
            },
        },] [$($names)* $name] [$($both)*] $($rest)*);
    };
    (@acc [$($entries:tt)*] [$($names:ident)*] [$($both:ident)*]
        $(#[doc = $doc:literal])* #[only($backend:ident, $why:expr)]
        fn $name:ident() $(-> $ret:ty)? $body:block $($rest:tt)*) => {
        $(#[doc = $doc])* fn $name() $(-> $ret)? $body
        $crate::only_on!(@acc [$($entries)* $crate::scenarios::Registered {
            name: stringify!($name),
            docs: &[$($doc),*],
            run: $crate::scenarios::Runner::Only {
                backend: $crate::BackendChoice::$backend,
                elsewhere: $why,
                test: || $crate::scenarios::finish($name()),
            },
        },] [$($names)* $name] [$($both)*] $($rest)*);
    };
    (@acc [$($entries:tt)*] [$($names:ident)*] [$($both:ident)*] $item:item $($rest:tt)*) => {
        $item
        $crate::only_on!(@acc [$($entries)*] [$($names)*] [$($both)*] $($rest)*);
    };
    ($($items:tt)*) => {
        $crate::only_on!(@acc [] [] [] $($items)*);
    };
}

// The macros above are used by these modules: declared after them.
mod examples;
mod permissions;
mod real_tcp_peers;
mod real_udp;
mod server;
mod sim_faults;
mod sim_keepalive;
mod smoke;
#[allow(dead_code, unreachable_pub)]
mod support;
#[allow(dead_code, unreachable_pub)]
mod support_udp;
mod tcp;
mod tls;
mod tls_interop;
#[allow(dead_code, unreachable_pub)]
mod tls_support;
mod udp;

/// Every registered scenario by group (its module), in the order the command runs them.
pub const GROUPS: &[(&str, &[Registered])] = &[
    ("smoke", smoke::WORLDS),
    ("tcp", tcp::WORLDS),
    ("server", server::WORLDS),
    ("udp", udp::WORLDS),
    ("udp", udp::ONLY),
    ("permissions", permissions::WORLDS),
    ("permissions", permissions::ONLY),
    ("tls", tls::WORLDS),
    ("tls", tls::ONLY),
    ("examples", examples::WORLDS),
    ("examples", examples::ONLY),
    ("sim_faults", sim_faults::ONLY),
    ("sim_keepalive", sim_keepalive::ONLY),
    ("real_tcp_peers", real_tcp_peers::ONLY),
    ("real_udp", real_udp::ONLY),
    ("tls_interop", tls_interop::ONLY),
];

/// The first worlds the command runs (TCP echo, accept order, UDP echo): quick, and the ones
/// `tcpudp-conformance mutants` runs with each §9 row disabled.
pub const BUILTIN: &[Registered] = smoke::WORLDS;

/// Every registered scenario with its group.
pub fn all() -> impl Iterator<Item = (&'static str, &'static Registered)> {
    GROUPS.iter().flat_map(|(group, list)| list.iter().map(move |r| (*group, r)))
}

impl Registered {
    /// The rule IDs its `rule:` doc lines name.
    pub fn rules(&self) -> Vec<&'static str> {
        self.docs
            .iter()
            .filter_map(|d| d.trim().strip_prefix("rule:"))
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .collect()
    }

    /// The world it builds, if it is one.
    pub fn world(&self) -> Option<fn(&mut World)> {
        match self.run {
            Runner::Both(build) => Some(build),
            Runner::Only { .. } => None,
        }
    }

    /// Runs it on `backend`: `Skip` with the missing capability when it cannot run there. A
    /// panic (the tests' `assert!`) is a failure with its message.
    pub fn run_on(&self, backend: BackendChoice) -> Outcome {
        match self.run {
            Runner::Both(build) => {
                caught(|| match harness::run(backend, harness::seed_of(self.name), build) {
                    Ok(()) => Outcome::Pass,
                    Err(e) => Outcome::Fail(e),
                })
            }
            Runner::Only { backend: only, test, .. } if only == backend => {
                SKIPPED.with(|s| s.borrow_mut().take());
                caught(test)
            }
            Runner::Only { elsewhere, .. } => Outcome::Skip(elsewhere.to_owned()),
        }
    }
}

/// Runs `f`, turning a panic into a failure.
fn caught(f: impl FnOnce() -> Outcome) -> Outcome {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let text = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".to_owned());
        Outcome::Fail(format!("panicked: {text}"))
    })
}

thread_local! {
    /// Set by [`skip`] while a one-backend test runs.
    static SKIPPED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Called by a test that cannot run on this machine (a program or an OS feature is missing)
/// before it returns: its outcome is `Skip` with `reason`, not `Pass`.
pub fn skip(reason: impl Into<String>) {
    let reason = reason.into();
    eprintln!("skipped: {reason}");
    SKIPPED.with(|s| *s.borrow_mut() = Some(reason));
}

/// Runs `fut` on a current-thread runtime with every driver on (as `#[tokio::test]` does).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"));
    rt.block_on(fut)
}

/// What a one-backend test returns: `()` or a `Result`.
pub trait IntoOutcome {
    /// `Pass` or `Fail`.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Pass
    }
}

impl<E: std::fmt::Debug> IntoOutcome for Result<(), E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(()) => Outcome::Pass,
            Err(e) => Outcome::Fail(format!("{e:?}")),
        }
    }
}

/// The outcome of a one-backend test that returned `result`: `Skip` if it called [`skip`].
pub fn finish(result: impl IntoOutcome) -> Outcome {
    match (SKIPPED.with(|s| s.borrow_mut().take()), result.into_outcome()) {
        (_, Outcome::Fail(e)) => Outcome::Fail(e),
        (Some(reason), _) => Outcome::Skip(reason),
        (None, outcome) => outcome,
    }
}

thread_local! {
    /// The context of the `#[on_both]` test running on this thread.
    static CURRENT: RefCell<Option<Ctx>> = const { RefCell::new(None) };
}

/// The world of an `#[on_both]` test: one client, "app", that runs `test` with its context
/// reachable through [`current_ctx`].
pub fn as_world<F, Fut>(world: &mut World, test: F)
where
    F: Fn() -> Fut + Copy + 'static,
    Fut: Future + 'static,
    Fut::Output: IntoOutcome,
{
    world.client("app", move |ctx| async move {
        CURRENT.with(|c| *c.borrow_mut() = Some(ctx));
        let outcome = test().await.into_outcome();
        CURRENT.with(|c| c.borrow_mut().take());
        match outcome {
            Outcome::Pass => Ok(()),
            Outcome::Fail(e) => Err(e.into()),
            Outcome::Skip(why) => Err(format!("skipped inside a world: {why}").into()),
        }
    });
}

/// The context of the running `#[on_both]` test (its backend, its host's name); `None` outside
/// one.
pub fn current_ctx() -> Option<Ctx> {
    CURRENT.with(|c| c.borrow().clone())
}

/// The `#[test]` of an `#[on_both]` test on `backend`.
pub fn check_both(list: &[Registered], name: &str, backend: BackendChoice) {
    let Some(build) = list.iter().find(|r| r.name == name).and_then(Registered::world) else {
        panic!("{name} is not a registered world");
    };
    harness::check(backend, name, build);
}

/// The `#[test]` of a one-backend test: runs `name` from `list`; panics on failure.
pub fn check_only(list: &[Registered], name: &str) {
    let Some(Registered { run: Runner::Only { test, .. }, .. }) = list.iter().find(|r| r.name == name) else {
        panic!("{name} is not a registered one-backend test");
    };
    SKIPPED.with(|s| s.borrow_mut().take());
    match test() {
        Outcome::Fail(e) => panic!("{name}: {e}"),
        Outcome::Pass | Outcome::Skip(_) => {}
    }
}

/// A command that runs only the one-backend test `name` of module `module` (its
/// `module_path!()`) in a child process, after the program and arguments of `wrapper` (such as
/// `unshare -rn`): through the test binary's filter under `cargo test`, through the environment
/// variable [`ONLY_ENV`] under the command.
pub fn rerun_self(wrapper: &[&str], module: &str, name: &str) -> std::process::Command {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("own executable: {e}"));
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = std::process::Command::new(program);
            command.args(args).arg(exe);
            command
        }
        None => std::process::Command::new(exe),
    };
    if cfg!(test) {
        let module = module.split_once("::").map_or(module, |(_, rest)| rest);
        command.args(["--exact", &format!("{module}::only::{name}"), "--test-threads=1", "--nocapture"]);
    } else {
        command.env(ONLY_ENV, name);
    }
    command
}

/// Set by [`rerun_self`] for the command: run only this scenario.
pub const ONLY_ENV: &str = "TCPUDP_CONFORMANCE_ONLY";

#[cfg(test)]
mod tests {
    use super::*;

    const SIM_ONLY: Registered = Registered {
        name: "sim_only",
        docs: &[" Something.", " rule: TCP-OPEN-01,UDP-OPEN-01 ", " (see AMB-49)"],
        run: Runner::Only { backend: BackendChoice::Sim, elsewhere: "no netem", test: || finish(()) },
    };

    #[test]
    fn rules_come_from_rule_doc_lines_only() {
        assert_eq!(SIM_ONLY.rules(), ["TCP-OPEN-01", "UDP-OPEN-01"]);
    }

    #[test]
    fn a_one_backend_test_is_a_skip_with_its_reason_elsewhere() {
        assert_eq!(SIM_ONLY.run_on(BackendChoice::Sim), Outcome::Pass);
        assert_eq!(SIM_ONLY.run_on(BackendChoice::Real), Outcome::Skip("no netem".into()));
    }

    #[test]
    fn a_called_skip_is_a_skip_a_failure_stays_a_failure_and_a_panic_fails() {
        skip("python3 missing");
        assert_eq!(finish(()), Outcome::Skip("python3 missing".into()));
        assert_eq!(finish(()), Outcome::Pass, "a skip is taken once");
        skip("python3 missing");
        assert_eq!(finish(Err::<(), _>("broken")), Outcome::Fail("\"broken\"".into()));
        assert_eq!(caught(|| panic!("boom")), Outcome::Fail("panicked: boom".into()));
    }
}

//! A counting global allocator for the `core` and `memory` parts of the benchmark.
//!
//! It wraps the system allocator and, only while [`enable`]d, counts allocations and tracks the
//! live heap with relaxed atomics. Disabled (every timed TCP/UDP workload, ours and raw alike), it
//! costs one relaxed load and a predictable branch per call, so it does not distort the ratios.
//! The binary installs it with `#[global_allocator]` (see `main.rs`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

/// The system allocator plus counters.
pub(crate) struct CountingAlloc;

static ENABLED: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counters only observe.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ENABLED.load(Relaxed) {
            ALLOCS.fetch_add(1, Relaxed);
            LIVE.fetch_add(layout.size() as i64, Relaxed);
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if ENABLED.load(Relaxed) {
            ALLOCS.fetch_add(1, Relaxed);
            LIVE.fetch_add(layout.size() as i64, Relaxed);
        }
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ENABLED.load(Relaxed) {
            LIVE.fetch_sub(layout.size() as i64, Relaxed);
        }
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ENABLED.load(Relaxed) {
            ALLOCS.fetch_add(1, Relaxed);
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        }
        // SAFETY: as `dealloc`, and the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Counter values at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Allocations (and reallocations) counted so far.
    pub(crate) allocs: u64,
    /// Bytes allocated minus bytes freed while counting was on.
    pub(crate) live: i64,
}

/// Starts counting. Counting stays process-wide until [`disable`]; nest nothing.
pub(crate) fn enable() {
    ENABLED.store(true, Relaxed);
}

/// Stops counting (the counters keep their values).
pub(crate) fn disable() {
    ENABLED.store(false, Relaxed);
}

/// The counters now.
pub(crate) fn snapshot() -> Snapshot {
    Snapshot { allocs: ALLOCS.load(Relaxed), live: LIVE.load(Relaxed) }
}

/// Whether the counting allocator is the global allocator of this process (a probe allocation
/// while counting is on must be seen).
pub(crate) fn installed() -> bool {
    let was = ENABLED.load(Relaxed);
    enable();
    let before = snapshot().allocs;
    let probe = std::hint::black_box(Box::new(0u64));
    let after = snapshot().allocs;
    drop(probe);
    if !was {
        disable();
    }
    after > before
}

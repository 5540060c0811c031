//! Zero heap allocation on the steady-state data path (DESIGN §4, house rules): once a machine's
//! queues have reached their working size, a write that completes and a chunk or datagram that is
//! read allocate nothing.
//!
//! A separate test binary (DESIGN §9: process-wide quantities get their own binary) because it
//! installs a counting `#[global_allocator]`. Counting is per thread, switched on only around the
//! measured loop, so the test harness and other tests running in parallel are not counted.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;

use bytes::Bytes;
use support::*;
use tcpudp_core::{
    AppCommand, Destination, Event, Input, IoCommand, IoEvent, Output, ReadResult, ReadyState, TcpMachine,
    UdpMachine, WriteId,
};

/// Forwards to the system allocator, counting allocations made by a thread that asked for it.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the allocator may run while thread-locals are being torn down.
    let on = COUNTING.try_with(Cell::get).unwrap_or(false);
    if on {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counting
// only touches const-initialised thread-locals (no allocation, no re-entrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded as is (the caller upholds `GlobalAlloc::alloc`'s contract).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations_in(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    COUNT.with(Cell::get)
}

const N: u64 = 10_000;
const CHUNK: &[u8] = b"0123456789abcdef0123456789abcdef";

/// Drains a machine's outputs without keeping them (dropping a static `Bytes` frees nothing).
fn drain_tcp(m: &mut TcpMachine) -> usize {
    let mut n = 0;
    while let Some(out) = m.poll_output() {
        n += 1;
        drop(out);
    }
    n
}

fn drain_udp(m: &mut UdpMachine) -> usize {
    let mut n = 0;
    while let Some(out) = m.poll_output() {
        n += 1;
        drop(out);
    }
    n
}

/// An open TCP socket whose queues and outbox have reached their working size.
fn tcp_warm() -> TcpMachine {
    let opts = tcpudp_core::options::TcpOptions::default();
    let mut m = TcpMachine::new(T0, tcp_spec_for("127.0.0.1", &opts));
    m.handle(T0, Input::Io(IoEvent::Connected { local: local_addr(), remote: peer_addr() })).unwrap();
    drain_tcp(&mut m);
    assert_eq!(m.ready_state(), ReadyState::Open);
    // A few rounds of both paths, with several writes and chunks queued at once.
    let mut id = 0;
    for _ in 0..4 {
        for _ in 0..8 {
            id += 1;
            m.handle(T0, Input::App(AppCommand::Write { id: WriteId(id), data: Bytes::from_static(CHUNK) }))
                .unwrap();
            m.handle(T0, Input::Io(IoEvent::Received(Bytes::from_static(CHUNK)))).unwrap();
        }
        for w in (id - 7)..=id {
            m.handle(T0, Input::Io(IoEvent::Wrote { id: WriteId(w) })).unwrap();
            m.handle(T0, Input::App(AppCommand::Read)).unwrap();
        }
        drain_tcp(&mut m);
    }
    m
}

/// One steady-state round: a write handed over and completed, a chunk received and read, and a
/// read that waits, is woken and reads. Returns the outputs seen, checked.
fn tcp_round(m: &mut TcpMachine, id: u64) -> usize {
    let mut seen = 0;
    m.handle(T0, Input::App(AppCommand::Write { id: WriteId(id), data: Bytes::from_static(CHUNK) })).unwrap();
    while let Some(out) = m.poll_output() {
        seen +=
            usize::from(matches!(out, Output::Io(IoCommand::Send { id: sent, .. }) if sent == WriteId(id)));
    }
    m.handle(T0, Input::Io(IoEvent::Wrote { id: WriteId(id) })).unwrap();
    while let Some(out) = m.poll_output() {
        seen += usize::from(
            matches!(out, Output::Event(Event::WriteSettled { id: s, result: Ok(()) }) if s == WriteId(id)),
        );
    }
    m.handle(T0, Input::Io(IoEvent::Received(Bytes::from_static(CHUNK)))).unwrap();
    m.handle(T0, Input::App(AppCommand::Read)).unwrap();
    while let Some(out) = m.poll_output() {
        seen += usize::from(
            matches!(out, Output::Event(Event::Read(ReadResult::Chunk(c))) if c.len() == CHUNK.len()),
        );
    }
    m.handle(T0, Input::App(AppCommand::Read)).unwrap();
    m.handle(T0, Input::Io(IoEvent::Received(Bytes::from_static(CHUNK)))).unwrap();
    while let Some(out) = m.poll_output() {
        seen += usize::from(matches!(out, Output::Event(Event::Readable)));
    }
    m.handle(T0, Input::App(AppCommand::Read)).unwrap();
    while let Some(out) = m.poll_output() {
        seen += usize::from(matches!(out, Output::Event(Event::Read(ReadResult::Chunk(_)))));
    }
    seen
}

// rule: GEN-08
#[test]
fn tcp_steady_state_write_and_read_allocate_nothing() {
    let mut m = tcp_warm();
    let mut seen = 0;
    let count = allocations_in(|| {
        for i in 0..N {
            seen += tcp_round(&mut m, 1_000 + i);
        }
    });
    // The loop really ran the data path: each round saw its Send, its settlement, two chunks and
    // one wake-up.
    assert_eq!(seen as u64, 5 * N);
    assert_eq!(m.queued_read_bytes(), 0);
    assert_eq!(m.queued_write_bytes(), 0);
    assert_eq!(count, 0, "{count} allocations in {N} steady-state TCP rounds");
}

/// An open UDP socket (default remote given as a literal) whose queues have reached their
/// working size.
fn udp_warm() -> UdpMachine {
    let mut m = UdpMachine::new(T0, udp_spec());
    m.handle(T0, Input::Io(IoEvent::Bound { local: local_addr() })).unwrap();
    drain_udp(&mut m);
    assert_eq!(m.ready_state(), ReadyState::Open);
    let to = Destination::Addr(other_addr());
    let mut id = 0;
    for _ in 0..4 {
        for _ in 0..8 {
            id += 1;
            let data = Bytes::from_static(CHUNK);
            m.handle(
                T0,
                Input::App(AppCommand::SendDatagram { id: WriteId(id), data, dest: Ok(to.clone()) }),
            )
            .unwrap();
            let data = Bytes::from_static(CHUNK);
            m.handle(T0, Input::Io(IoEvent::Datagram { data, from: other_addr(), dropped_total: 0 }))
                .unwrap();
        }
        for w in (id - 7)..=id {
            m.handle(T0, Input::Io(IoEvent::Sent { id: WriteId(w) })).unwrap();
            m.handle(T0, Input::App(AppCommand::Read)).unwrap();
        }
        drain_udp(&mut m);
    }
    m
}

fn udp_round(m: &mut UdpMachine, id: u64, to: SocketAddr) -> usize {
    let mut seen = 0;
    let (data, dest) = (Bytes::from_static(CHUNK), Ok(Destination::Addr(to)));
    m.handle(T0, Input::App(AppCommand::SendDatagram { id: WriteId(id), data, dest })).unwrap();
    while let Some(out) = m.poll_output() {
        seen +=
            usize::from(matches!(out, Output::Io(IoCommand::SendTo { id: sent, .. }) if sent == WriteId(id)));
    }
    m.handle(T0, Input::Io(IoEvent::Sent { id: WriteId(id) })).unwrap();
    while let Some(out) = m.poll_output() {
        seen += usize::from(
            matches!(out, Output::Event(Event::WriteSettled { id: s, result: Ok(()) }) if s == WriteId(id)),
        );
    }
    let data = Bytes::from_static(CHUNK);
    m.handle(T0, Input::Io(IoEvent::Datagram { data, from: to, dropped_total: 0 })).unwrap();
    m.handle(T0, Input::App(AppCommand::Read)).unwrap();
    while let Some(out) = m.poll_output() {
        seen += usize::from(
            matches!(out, Output::Event(Event::Read(ReadResult::Message(msg))) if msg.from == to),
        );
    }
    seen
}

// rule: GEN-08
#[test]
fn udp_steady_state_send_and_read_allocate_nothing() {
    let mut m = udp_warm();
    let to = other_addr();
    let mut seen = 0;
    let count = allocations_in(|| {
        for i in 0..N {
            seen += udp_round(&mut m, 1_000 + i, to);
        }
    });
    assert_eq!(seen as u64, 3 * N);
    assert_eq!(m.queued_datagrams(), 0);
    assert_eq!(m.queued_write_bytes(), 0);
    assert_eq!(count, 0, "{count} allocations in {N} steady-state UDP rounds");
}

/// The counter works: a machine built inside the measured region allocates.
// rule: (none: checks the instrument the tests above rely on)
#[test]
fn the_counter_sees_allocations() {
    let count = allocations_in(|| {
        let m = TcpMachine::new(T0, tcp_spec());
        drop(std::hint::black_box(m));
    });
    assert!(count > 0);
}

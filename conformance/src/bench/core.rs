//! The bare core: inputs per second through a [`TcpMachine`]'s `handle` + `poll_output` on the
//! data path, and heap allocations per steady-state input (the counting allocator).
//!
//! One cycle is four inputs, the data path of an open socket: `Received` (a chunk from the
//! transport), `Read` (the application takes it), `Write` (the application writes a chunk, the
//! machine hands it to the transport) and `Wrote` (the transport took it, the write settles).
//! Every output is drained after each input, as the driver does.

use std::hint::black_box;
use std::time::Instant as WallClock;

use bytes::Bytes;
use tcpudp_core::checks::{self, AllowAll};
use tcpudp_core::options::TcpOptions;
use tcpudp_core::{AppCommand, Input, Instant, IoEvent, TcpMachine, WriteId};

use super::{alloc, BenchResult, Sizes, Stats};

/// Inputs per data-path cycle.
const INPUTS_PER_CYCLE: u64 = 4;
/// Cycles run before counting (queues grow to their working size).
const WARMUP_CYCLES: u64 = 10_000;

/// The core's figures.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CoreResult {
    pub(crate) inputs_per_sec: Stats,
    pub(crate) allocs_per_input: f64,
}

/// An open machine (connected to 127.0.0.1:7 from 127.0.0.1:40000), its outputs drained.
fn open_machine() -> BenchResult<TcpMachine> {
    let spec = checks::tcp_spec(&mut AllowAll, "127.0.0.1", 7, &TcpOptions::default())?;
    let mut machine = TcpMachine::new(Instant::ZERO, spec);
    drain(&mut machine);
    let connected = IoEvent::Connected { local: "127.0.0.1:40000".parse()?, remote: "127.0.0.1:7".parse()? };
    machine.handle(Instant::ZERO, Input::Io(connected))?;
    drain(&mut machine);
    if machine.ready_state() != tcpudp_core::ReadyState::Open {
        return Err("the machine did not open".into());
    }
    Ok(machine)
}

fn drain(machine: &mut TcpMachine) {
    while let Some(out) = machine.poll_output() {
        let _ = black_box(out);
    }
}

/// One data-path cycle (four inputs) with write id `id` at `now`.
#[inline(always)]
fn cycle(machine: &mut TcpMachine, chunk: &Bytes, id: u64, now: Instant) {
    let _ = machine.handle(now, Input::Io(IoEvent::Received(chunk.clone())));
    drain(machine);
    let _ = machine.handle(now, Input::App(AppCommand::Read));
    drain(machine);
    let _ = machine.handle(now, Input::App(AppCommand::Write { id: WriteId(id), data: chunk.clone() }));
    drain(machine);
    let _ = machine.handle(now, Input::Io(IoEvent::Wrote { id: WriteId(id) }));
    drain(machine);
}

/// `rounds` timed runs of `sizes.core_inputs` inputs each; allocations counted over all of them.
pub(crate) fn run(sizes: Sizes, rounds: usize) -> BenchResult<CoreResult> {
    let cycles = (sizes.core_inputs / INPUTS_PER_CYCLE).max(1);
    let chunk = Bytes::from(vec![0x33; 1460]);
    let mut rates = Vec::new();
    let mut allocs = 0u64;
    let mut inputs = 0u64;
    for _ in 0..rounds {
        let mut machine = open_machine()?;
        let mut id = 0u64;
        for _ in 0..WARMUP_CYCLES {
            id += 1;
            cycle(&mut machine, &chunk, id, Instant::from_micros(id));
        }
        if machine.queued_write_bytes() != 0 || machine.queued_read_bytes() != 0 {
            return Err("the data path left bytes queued".into());
        }
        alloc::enable();
        let before = alloc::snapshot();
        let start = WallClock::now();
        for _ in 0..cycles {
            id += 1;
            cycle(&mut machine, &chunk, id, Instant::from_micros(id));
        }
        let elapsed = start.elapsed();
        let after = alloc::snapshot();
        alloc::disable();
        allocs += after.allocs - before.allocs;
        inputs += cycles * INPUTS_PER_CYCLE;
        rates.push((cycles * INPUTS_PER_CYCLE) as f64 / elapsed.as_secs_f64().max(1e-9));
        black_box(&machine);
    }
    let inputs_per_sec = Stats::of(rates).ok_or("no core samples")?;
    Ok(CoreResult { inputs_per_sec, allocs_per_input: allocs as f64 / inputs.max(1) as f64 })
}

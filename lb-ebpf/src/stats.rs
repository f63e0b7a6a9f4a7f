//! Per-CPU counters: one `GLOBAL_STATS` slot per outcome and per lookup event (lb-common's counter table), traffic per VIP and per backend.

use aya_ebpf::btf_maps::PerCpuArray;
use lb_common::{Counter, Event, Outcome, TrafficCounters};

use crate::maps::GLOBAL_STATS;

/// Counts how a packet ended: called once per packet, by the entry point only.
#[inline(always)]
pub fn count(outcome: Outcome) {
    increment(outcome.counter());
}

/// Counts a lookup on the packet's way (flow-table hit, miss, ...); not an outcome.
#[inline(always)]
pub fn event(event: Event) {
    increment(event.counter());
}

#[inline(always)]
fn increment(counter: Counter) {
    // verifier: GLOBAL_STATS is an array map of `Counter::COUNT` slots and every `Counter` is
    // below that (checked in lb-common); the kernel bounds-checks the index anyway.
    if let Some(slot) = GLOBAL_STATS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it, a plain add is enough.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn traffic<const N: usize>(
    map: &PerCpuArray<TrafficCounters, N>,
    index: u32,
    bytes: u64,
    new_flow: bool,
) {
    if let Some(c) = map.get_ptr_mut(index) {
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes;
        if new_flow {
            c.new_flows += 1;
        }
    }
}

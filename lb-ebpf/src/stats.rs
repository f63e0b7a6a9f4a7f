//! Per-CPU counters: one global slot per outcome (lb-common `Counter`), traffic per VIP and per backend.

use aya_ebpf::btf_maps::PerCpuArray;
use lb_common::{Counter, TrafficCounters};

use crate::maps::GLOBAL_STATS;

#[inline(always)]
pub fn count(counter: Counter) {
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

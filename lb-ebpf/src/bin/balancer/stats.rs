//! The balancer's per-CPU counters: outcomes and lookup events, traffic per VIP and backend, hits.
//!
//! One `GLOBAL_STATS` slot per outcome and per lookup event (lb-common's counter table),
//! traffic per VIP and per backend, and the one hit slot of an established or stateless flow.

use aya_ebpf::btf_maps::PerCpuArray;
use lb_common::{Event, Outcome, TrafficCounters};
use lb_ebpf::counters::increment;

use crate::maps::{GLOBAL_STATS, HIT_STATS};

/// An established flow's forwarded packet: the whole of its counting, in its backend's slot
/// (readers fold it into the outcome, the hit event and the traffic counters).
#[derive(Clone, Copy)]
pub struct Hit {
    pub backend_id: u32,
    pub bytes: u64,
    /// A stateless VIP's packet: no flow-table lookup to fold into `conn_hit`.
    pub stateless: bool,
}

/// Counts a [`Hit`]: called once per such packet, by the entry point only, instead of [`count`].
#[inline(always)]
pub fn hit(h: Hit) {
    if let Some(c) = HIT_STATS.get_ptr_mut(h.backend_id) {
        // Per-CPU slot: no other CPU writes it, plain adds are enough.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += h.bytes;
        if h.stateless {
            c.stateless += 1;
        }
    }
}

/// Counts how a packet ended: called once per packet, by the entry point only.
#[inline(always)]
pub fn count(outcome: Outcome) {
    increment(&GLOBAL_STATS, outcome.counter() as u32);
}

/// Counts a lookup on the packet's way (flow-table hit, miss, ...); not an outcome.
#[inline(always)]
pub fn event(event: Event) {
    increment(&GLOBAL_STATS, event.counter() as u32);
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

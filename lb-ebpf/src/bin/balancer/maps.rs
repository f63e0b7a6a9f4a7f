//! The balancer's maps. Names (the static identifiers), capacities and value types: lb-common.

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    Backend, ConnEntry, FlowKey, HitCounters, Settings, TrafficCounters, VipSlot, VipTableHead,
    BPF_F_INNER_MAP, COUNTER_COUNT, DEFAULT_CONNS, HIT_SLOTS, MAX_BACKENDS, MAX_VIPS,
    RING_TEMPLATE_SIZE, VIP_TABLE_ENTRIES,
};

/// One Maglev table: slot → backend id. Created with `BPF_F_INNER_MAP` so each VIP's ring can
/// have its own (prime) size; userspace builds a new one per change and swaps it into `RINGS`.
pub type Ring = Array<u32, { RING_TEMPLATE_SIZE as usize }, { BPF_F_INNER_MAP as usize }>;

#[btf_map]
pub static VIP_TABLE: Array<VipSlot, { VIP_TABLE_ENTRIES as usize }> = Array::new();

#[btf_map]
pub static VIP_TABLE_HEAD: Array<VipTableHead, 1> = Array::new();

#[btf_map]
pub static RINGS: ArrayOfMaps<Ring, { MAX_VIPS as usize }> = ArrayOfMaps::new();

#[btf_map]
pub static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// Capacity is overridden at load time from the config (`flow_table_size`).
#[btf_map]
pub static CONNS: LruHashMap<FlowKey, ConnEntry, { DEFAULT_CONNS as usize }> = LruHashMap::new();

#[btf_map]
pub static VIP_STATS: PerCpuArray<TrafficCounters, { MAX_VIPS as usize }> = PerCpuArray::new();

#[btf_map]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters, { MAX_BACKENDS as usize }> =
    PerCpuArray::new();

#[btf_map]
pub static GLOBAL_STATS: PerCpuArray<u64, { COUNTER_COUNT as usize }> = PerCpuArray::new();

/// Indexed by backend id here; the slots past `MAX_BACKENDS` are the agent's (lb-common).
#[btf_map]
pub static HIT_STATS: PerCpuArray<HitCounters, { HIT_SLOTS as usize }> = PerCpuArray::new();

#[btf_map]
pub static SETTINGS: Array<Settings, 1> = Array::new();

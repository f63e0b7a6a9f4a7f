//! Baseline XDP programs for `cargo xtask bench`: the floors a balancer is measured against.
//!
//! An empty `XDP_PASS`, a minimal MAC swap with `XDP_TX`, a fixed-backend forwarder, a MAC
//! swap after one flow-table hit with a 40- or 16-byte key, and the least a new flow costs.
//! Not part of the balancer object; names and layouts are in `lb_common::baselines`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, LruHashMap},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{
    baselines::{floor_hash, key16, key40, vip_key, ForwardTarget, KEYED_BYTES, LOOKUP_ENTRIES},
    DEFAULT_RING_SIZE,
};
use lb_ebpf::wire::ptr_at;

/// Where `baseline_fixed_forward` sends frames (`lb_common::baselines::FORWARD_TARGET`).
#[btf_map]
static FORWARD_TARGET: Array<ForwardTarget, 1> = Array::new();

/// `lb_common::baselines::FLOWS40` and `FLOWS16`.
#[btf_map]
static FLOWS40: LruHashMap<[u64; 5], u32, { LOOKUP_ENTRIES as usize }> = LruHashMap::new();
#[btf_map]
static FLOWS16: LruHashMap<[u64; 2], u32, { LOOKUP_ENTRIES as usize }> = LruHashMap::new();

/// `lb_common::baselines::NEW_FLOWS`, `FLOOR_VIPS` and `FLOOR_RING`.
#[btf_map]
static NEW_FLOWS: LruHashMap<[u64; 5], u32, { LOOKUP_ENTRIES as usize }> = LruHashMap::new();
#[btf_map]
static FLOOR_VIPS: HashMap<u64, u32, 1> = HashMap::new();
#[btf_map]
static FLOOR_RING: Array<u32, { DEFAULT_RING_SIZE as usize }> = Array::new();

/// Does nothing: the cost of running any XDP program at all.
#[xdp]
pub fn baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Swaps source and destination MAC and bounces the frame: the least an L2 forwarder does.
#[xdp]
pub fn baseline_macswap(ctx: XdpContext) -> u32 {
    swap_and_tx(&ctx)
}

/// The MAC swap's body, which the lookup floors end with.
#[inline(always)]
fn swap_and_tx(ctx: &XdpContext) -> u32 {
    let Some(macs) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: ptr_at checked the 12 bytes against data_end.
    unsafe {
        let m = *macs;
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&m[6..]);
        swapped[6..].copy_from_slice(&m[..6]);
        *macs = swapped;
    }
    xdp_action::XDP_TX
}

/// The MAC swap, after one hit in `FLOWS40` keyed like xdplb's flow table
/// (`lb_common::baselines::key40`); a miss passes the frame. Only IPv4 TCP/UDP frames
/// without options are keyed right; the bench sends nothing else.
#[xdp]
pub fn baseline_lookup40(ctx: XdpContext) -> u32 {
    hit_then_swap(&ctx, &FLOWS40, key40)
}

/// [`baseline_lookup40`] with the 16-byte key (`lb_common::baselines::key16`).
#[xdp]
pub fn baseline_lookup16(ctx: XdpContext) -> u32 {
    hit_then_swap(&ctx, &FLOWS16, key16)
}

/// The lookup floors' body: key the frame with `key`, look it up in `table`, then the MAC swap.
#[inline(always)]
fn hit_then_swap<K, const N: usize>(
    ctx: &XdpContext,
    table: &LruHashMap<K, u32, N>,
    key: fn(&[u8; KEYED_BYTES]) -> K,
) -> u32 {
    let Some(h) = ptr_at::<[u8; KEYED_BYTES]>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: ptr_at checked the bytes against data_end.
    let k = key(unsafe { &*h });
    // SAFETY: the value is only tested for presence.
    if unsafe { table.get(&k) }.is_none() {
        return xdp_action::XDP_PASS;
    }
    swap_and_tx(ctx)
}

/// The least a new flow costs a balancer that remembers flows: the flow table misses, the VIP
/// is found, the flow hashed, its ring slot read and the choice inserted, then the MAC swap.
/// Only IPv4 TCP/UDP frames without options are keyed right; the bench sends nothing else.
#[xdp]
pub fn baseline_new_flow(ctx: XdpContext) -> u32 {
    let Some(h) = ptr_at::<[u8; KEYED_BYTES]>(&ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: ptr_at checked the bytes against data_end.
    let h = unsafe { &*h };
    let k = key40(h);
    // SAFETY (both): the values are only read, before the insert below.
    if unsafe { NEW_FLOWS.get(&k) }.is_some() {
        return xdp_action::XDP_PASS;
    }
    let Some(&ring_size) = (unsafe { FLOOR_VIPS.get(&vip_key(h)) }) else {
        return xdp_action::XDP_PASS;
    };
    if ring_size == 0 {
        return xdp_action::XDP_PASS;
    }
    let Some(&backend) = FLOOR_RING.get(floor_hash(&k) % ring_size) else {
        return xdp_action::XDP_PASS;
    };
    if NEW_FLOWS.insert(&k, &backend, 0).is_err() {
        return xdp_action::XDP_PASS;
    }
    swap_and_tx(&ctx)
}

/// Sends every frame to the one backend in `FORWARD_TARGET`: destination MAC := the backend's,
/// source MAC := the frame's old destination (the receiving interface's own), `XDP_TX`. What
/// a DSR balancer must do at least, without parsing, choosing or remembering anything: the
/// end-to-end bench puts it where xdplb sits to measure the on-path floor.
#[xdp]
pub fn baseline_fixed_forward(ctx: XdpContext) -> u32 {
    let Some(macs) = ptr_at::<[u8; 12]>(&ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    let Some(target) = FORWARD_TARGET.get(0) else {
        return xdp_action::XDP_PASS;
    };
    // Not configured yet: forwarding to 00:..:00 would blackhole the lab.
    if target.mac == [0; 6] {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: ptr_at checked the 12 bytes against data_end.
    unsafe {
        let m = *macs;
        let mut out = [0u8; 12];
        out[..6].copy_from_slice(&target.mac);
        out[6..].copy_from_slice(&m[..6]);
        *macs = out;
    }
    xdp_action::XDP_TX
}

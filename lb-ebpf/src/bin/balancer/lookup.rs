//! Whether a frame is ours, and which backend gets its flow: flow table, then VIP and Maglev ring.
//!
//! An established flow needs nothing but the flow table; only a miss looks up the VIP and its
//! ring.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    backend_serves, flow_hash, AddrKey, AddrMeta, Backend, ConnEntry, Event, FlowKey, Outcome,
    Settings, VipKey, VipMeta, ALL_PORTS, NO_BACKEND, VIP_HASH_SOURCE_IP, VIP_STATELESS,
};

use lb_ebpf::wire::{eth, ptr_at};

use crate::{
    maps::{BACKENDS, CONNS, RINGS, SETTINGS, VIPS, VIP_ADDRS},
    stats::event,
};

/// Whether the flow's destination address has any VIP, and its per-address flags.
#[inline(always)]
pub fn vip_addr(flow: &FlowKey) -> Option<&'static AddrMeta> {
    let key = AddrKey {
        addr: flow.dst,
        family: flow.family,
        _pad: [0; 3],
    };
    // SAFETY: a hash map value stays valid for the program run (RCU); it is only read.
    unsafe { VIP_ADDRS.get(&key) }
}

/// The balancer-wide settings the agent wrote (all zero before it did), read in place. The
/// one-entry array always has index 0; `None` only satisfies the verifier.
#[inline(always)]
fn settings() -> Option<&'static Settings> {
    SETTINGS.get(0)
}

/// Whether the frame is addressed to this balancer: VIP traffic reaches us addressed to our
/// unicast MAC (or the virtual MAC we answer for). A group frame (broadcast, multicast) is
/// not ours to bounce, and neither is a frame for another host that a switch flooded to us:
/// rewriting it would send it on with that host's MAC as our source.
///
/// Returns the settings it read them from, which the rewrite then uses for our source MAC.
#[inline(always)]
pub fn addressed_to_us(ctx: &XdpContext) -> Result<&'static Settings, Outcome> {
    let s = settings().ok_or(Outcome::PassOtherHost)?;
    let h = ptr_at::<[u8; eth::HLEN]>(ctx, 0).ok_or(Outcome::DropMalformed)?;
    let h = unsafe { &*h };
    let dst = [h[0], h[1], h[2], h[3], h[4], h[5]];
    if dst[0] & 1 == 1 {
        return Err(Outcome::PassNotUnicast);
    }
    // An all-zero MAC is "not set": it never matches, so unset settings balance nothing.
    let ours = |m: [u8; 6]| m != [0; 6] && m == dst;
    if ours(s.mac) || ours(s.virtual_mac) {
        Ok(s)
    } else {
        Err(Outcome::PassOtherHost)
    }
}

/// The VIP this flow is addressed to: exact (address, port, protocol) first, then the
/// all-ports entry of the address. Read in place, not copied.
#[inline(always)]
pub fn vip(flow: &FlowKey) -> Option<&'static VipMeta> {
    let mut key = VipKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    // SAFETY (both): hash map values stay valid for the program run (RCU); they are only read.
    if let Some(meta) = unsafe { VIPS.get(&key) } {
        return Some(meta);
    }
    key.port = ALL_PORTS;
    unsafe { VIPS.get(&key) }
}

/// The backend in slot `id` if it takes packets (active or draining), read in place.
#[inline(always)]
fn serving(id: u32) -> Option<&'static Backend> {
    // verifier: BACKENDS is an array map; the kernel bounds-checks `id` and returns None past
    // MAX_BACKENDS, so a stale or corrupt id cannot reach outside the map.
    let b = BACKENDS.get(id)?;
    // Removed (unused) and health-check-failed backends take no packets at all.
    backend_serves(b.state).then_some(b)
}

/// What the flow table says about a flow.
pub enum Remembered {
    /// Pinned to a backend that still serves it: everything the packet needs is here (the
    /// backend carries its VIP's id and forwarding mode).
    Hit(Choice),
    /// Pinned to a backend that is gone, down, or whose slot has a new owner (the tag
    /// differs); or its VIP became stateless. The VIP decides again.
    Stale,
    Miss,
}

/// The flow table's answer for `flow`, before any VIP lookup: the key is the whole 5-tuple,
/// VIP address and port included, so a hit needs nothing else. A VIP that left the config
/// leaves its backends' slots unused (the agent clears them), so its flows turn `Stale`, and
/// then the VIP lookup finds nothing.
#[inline(always)]
pub fn remembered(flow: &FlowKey) -> Remembered {
    // SAFETY: an LRU value reference is good until the next insert or remove on the map
    // (which may recycle its element); its fields are copied out here, before any insert.
    let Some(entry) = (unsafe { CONNS.get(flow) }) else {
        return Remembered::Miss;
    };
    let (id, tag, hash) = (entry.backend_id, entry.tag, entry.hash);
    match serving(id) {
        // A tag that no longer matches: the slot changed owner (ids follow the config's set),
        // so the backend this flow was pinned to is gone.
        Some(b) if b.tag == tag && b.vip_flags & VIP_STATELESS == 0 => Remembered::Hit(Choice {
            backend_id: id,
            backend: b,
            hash,
        }),
        _ => Remembered::Stale,
    }
}

/// The backend a flow goes to.
pub struct Choice {
    pub backend_id: u32,
    pub backend: &'static Backend,
    /// `flow_hash(flow, false)`, for an `ipip` outer header.
    pub hash: u32,
}

/// The ring's choice for `flow` to `vip`, remembered if the VIP is stateful and `remember`
/// (ICMP errors only look). `stale` says the table held an entry that no longer serves: the
/// lookup counts as a re-steer rather than a miss.
#[inline(always)]
pub fn choose(
    flow: &FlowKey,
    vip: &VipMeta,
    stale: bool,
    remember: bool,
) -> Result<Choice, Outcome> {
    let stateful = vip.flags & VIP_STATELESS == 0;
    if stateful {
        // The backend it was pinned to is gone or down: its connection is dead anyway, so
        // steer the packet where a new connection would go instead of black-holing it.
        event(if stale {
            Event::ConnResteer
        } else {
            Event::ConnMiss
        });
    }
    if vip.ring_size == 0 {
        return Err(Outcome::DropNoBackend);
    }
    // The ring's hash is the tunnel's too, unless the VIP hashes the source only. The entry
    // keeps the tunnel's even for an `l2` VIP: the VIP's mode may change under its flows.
    let hash = flow_hash(flow, false);
    let ring_hash = if vip.flags & VIP_HASH_SOURCE_IP != 0 {
        flow_hash(flow, true)
    } else {
        hash
    };
    let slot = ring_hash % vip.ring_size;
    // verifier: RINGS' inner arrays are bounds-checked by the kernel; a slot past a ring's
    // size returns None.
    let id = *RINGS
        .get_value(vip.vip_id, &slot)
        .ok_or(Outcome::DropNoBackend)?;
    if id == NO_BACKEND {
        return Err(Outcome::DropNoBackend);
    }
    let b = serving(id).ok_or(Outcome::DropNoBackend)?;
    if stateful && remember {
        let entry = ConnEntry {
            backend_id: id,
            tag: b.tag,
            hash,
        };
        if CONNS.insert(flow, &entry, 0).is_err() {
            event(Event::ConnInsertFailed);
        }
    }
    Ok(Choice {
        backend_id: id,
        backend: b,
        hash,
    })
}

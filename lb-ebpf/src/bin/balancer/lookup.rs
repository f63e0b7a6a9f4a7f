//! Whether a frame is ours, and which backend gets its flow: VIP table, flow table, Maglev ring.
//!
//! The VIP table is an array the program probes without a map call (lb-common's `vip_table`);
//! a stateless VIP goes from there straight to its ring, a stateful one asks the flow table
//! first.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    backend_serves, flow_hash,
    history::{slot_owner, slot_previous},
    vip_table::{addr_hash, slots, AddrHash, KeyWords, ADDR_ENTRY_PROTO},
    Backend, ConnEntry, Event, FlowKey, Outcome, Settings, VipMeta, VipSlot, ALL_PORTS, NO_BACKEND,
    VIP_HASH_SOURCE_IP, VIP_STATELESS, VIP_TABLE_SLOTS,
};

use lb_ebpf::wire::{eth, ptr_at};

use crate::{
    maps::{BACKENDS, CONNS, RINGS, SETTINGS, VIP_TABLE, VIP_TABLE_HEAD},
    stats::event,
};

/// A flow's destination as the VIP table is probed for it: the live half, its seed, the
/// address words and their hash (computed once for every probe of the packet).
pub struct Dest {
    base: u32,
    seed: u32,
    addr: [u32; 4],
    hash: AddrHash,
}

impl Dest {
    #[inline(always)]
    pub fn of(flow: &FlowKey) -> Option<Dest> {
        let head = VIP_TABLE_HEAD.get(0)?;
        let half = head.half & 1;
        let seed = head.seeds[half as usize];
        // SAFETY: `FlowKey` is aligned to 8 and `dst` sits at offset 16, so its 16 bytes are
        // four aligned words.
        let addr = unsafe { *(flow.dst.as_ptr() as *const [u32; 4]) };
        Some(Dest {
            base: half * VIP_TABLE_SLOTS,
            seed,
            addr,
            hash: addr_hash(&addr, seed),
        })
    }

    /// The slot holding the key of this address and `rest` (port, protocol, family: see
    /// `KeyWords`), if there is one: at most two inlined array reads.
    #[inline(always)]
    fn probe(&self, rest: u32) -> Option<&'static VipSlot> {
        let (a, b) = slots(self.hash, rest, self.seed);
        for i in [a, b] {
            // verifier: an array lookup is bounds-checked (inlined); a slot past the map is None.
            let slot = VIP_TABLE.get(self.base + i)?;
            // SAFETY: `VipSlot` starts with the 20-byte key and is aligned to 4.
            let w = unsafe { &*(slot as *const VipSlot as *const [u32; 5]) };
            let a = &self.addr;
            if w[4] == rest && w[0] == a[0] && w[1] == a[1] && w[2] == a[2] && w[3] == a[3] {
                return Some(slot);
            }
        }
        None
    }
}

/// The `ADDR_*` flags of the flow's destination address if it has any VIP.
#[inline(always)]
pub fn vip_addr(flow: &FlowKey) -> Option<u32> {
    let dest = Dest::of(flow)?;
    let rest = KeyWords::rest([0, 0], ADDR_ENTRY_PROTO, flow.family);
    dest.probe(rest).map(|s| s.meta.flags)
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
    let dest = Dest::of(flow)?;
    let exact = KeyWords::rest(flow.dport, flow.proto, flow.family);
    if let Some(s) = dest.probe(exact) {
        return Some(&s.meta);
    }
    let all = KeyWords::rest(ALL_PORTS, flow.proto, flow.family);
    dest.probe(all).map(|s| &s.meta)
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
    let (id, tag, hash, previous) = (entry.backend_id, entry.tag, entry.hash, entry.previous);
    match serving(id) {
        // A tag that no longer matches: the slot changed owner (ids follow the config's set),
        // so the backend this flow was pinned to is gone.
        Some(b) if b.tag == tag && b.vip_flags & VIP_STATELESS == 0 => Remembered::Hit(Choice {
            backend_id: id,
            backend: b,
            hash,
            previous,
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
    /// The ring slot's previous owner (second chance), or `NO_BACKEND`; on a flow-table hit,
    /// the one remembered when the flow was pinned.
    pub previous: u32,
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
    let owners = *RINGS
        .get_value(vip.vip_id, &slot)
        .ok_or(Outcome::DropNoBackend)?;
    let id = slot_owner(owners);
    if id == NO_BACKEND {
        return Err(Outcome::DropNoBackend);
    }
    let b = serving(id).ok_or(Outcome::DropNoBackend)?;
    if stateful && remember {
        let entry = ConnEntry {
            backend_id: id,
            tag: b.tag,
            hash,
            previous: slot_previous(owners),
        };
        if CONNS.insert(flow, &entry, 0).is_err() {
            event(Event::ConnInsertFailed);
        }
    }
    Ok(Choice {
        backend_id: id,
        backend: b,
        hash,
        previous: slot_previous(owners),
    })
}

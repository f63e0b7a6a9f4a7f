//! VIP lookup, flow table and Maglev ring: which backend gets this flow.

use lb_common::{
    backend_serves, flow_hash, AddrKey, AddrMeta, Backend, ConnEntry, Event, FlowKey, Outcome,
    Settings, VipKey, VipMeta, ALL_PORTS, NO_BACKEND, VIP_HASH_SOURCE_IP, VIP_STATELESS,
};

use crate::{
    maps::{BACKENDS, CONNS, RINGS, SETTINGS, VIPS, VIP_ADDRS},
    stats::event,
};

/// Whether the flow's destination address has any VIP, and its per-address flags.
#[inline(always)]
pub fn vip_addr(flow: &FlowKey) -> Option<AddrMeta> {
    let key = AddrKey {
        addr: flow.dst,
        family: flow.family,
        _pad: [0; 3],
    };
    VIP_ADDRS.get_ptr(&key).map(|meta| unsafe { *meta })
}

/// The balancer-wide settings the agent wrote (all zero before it did), read in place. The
/// one-entry array always has index 0; `None` only satisfies the verifier.
#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    SETTINGS.get(0)
}

/// The VIP this flow is addressed to: exact (address, port, protocol) first, then the
/// all-ports entry of the address.
#[inline(always)]
pub fn vip(flow: &FlowKey) -> Option<VipMeta> {
    let mut key = VipKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    if let Some(meta) = VIPS.get_ptr(&key) {
        return Some(unsafe { *meta });
    }
    key.port = ALL_PORTS;
    VIPS.get_ptr(&key).map(|meta| unsafe { *meta })
}

/// A backend chosen for a flow.
pub struct Choice {
    pub backend_id: u32,
    pub backend: Backend,
    /// True when the ring decided (flow-table miss): counts as a new flow.
    pub new_flow: bool,
}

#[inline(always)]
fn backend(id: u32) -> Option<Backend> {
    // verifier: BACKENDS is an array map; the kernel bounds-checks `id` and returns None past
    // MAX_BACKENDS, so a stale or corrupt id cannot reach outside the map.
    let b = unsafe { *BACKENDS.get_ptr(id)? };
    // Removed (unused) and health-check-failed backends take no packets at all.
    if !backend_serves(b.state) {
        return None;
    }
    Some(b)
}

/// The flow's backend: the remembered one if it still exists (draining included), else the
/// Maglev ring's choice, which is then remembered if `remember` (ICMP errors only look).
#[inline(always)]
pub fn choose(flow: &FlowKey, vip: &VipMeta, remember: bool) -> Result<Choice, Outcome> {
    let stateful = vip.flags & VIP_STATELESS == 0;
    let mut resteer = false;
    if stateful {
        if let Some(entry) = CONNS.get_ptr(flow) {
            let (id, tag) = unsafe { ((*entry).backend_id, (*entry).tag) };
            // A tag that no longer matches: the slot changed owner (ids follow the config's
            // set), so the backend this flow was pinned to is gone.
            if let Some(b) = backend(id).filter(|b| b.tag == tag) {
                event(Event::ConnHit);
                return Ok(Choice {
                    backend_id: id,
                    backend: b,
                    new_flow: false,
                });
            }
            // The backend it was pinned to is gone or down: its connection is dead anyway, so steer
            // the packet where a new connection would go instead of black-holing it.
            resteer = true;
        }
        event(if resteer {
            Event::ConnResteer
        } else {
            Event::ConnMiss
        });
    }
    if vip.ring_size == 0 {
        return Err(Outcome::DropNoBackend);
    }
    let slot = flow_hash(flow, vip.flags & VIP_HASH_SOURCE_IP != 0) % vip.ring_size;
    // verifier: RINGS' inner arrays are bounds-checked by the kernel; a slot past a ring's
    // size returns None.
    let id = *RINGS
        .get_value(vip.vip_id, &slot)
        .ok_or(Outcome::DropNoBackend)?;
    if id == NO_BACKEND {
        return Err(Outcome::DropNoBackend);
    }
    let b = backend(id).ok_or(Outcome::DropNoBackend)?;
    if stateful && remember {
        let entry = ConnEntry {
            backend_id: id,
            tag: b.tag,
        };
        if CONNS.insert(flow, &entry, 0).is_err() {
            event(Event::ConnInsertFailed);
        }
    }
    Ok(Choice {
        backend_id: id,
        backend: b,
        new_flow: true,
    })
}

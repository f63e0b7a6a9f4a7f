//! The hit slots: where forwarded packets of established and stateless flows are counted.
//!
//! Each such packet is counted in one per-CPU slot of its backend; agent-only slots keep the counts
//! of backends and VIPs that left.

use crate::{MAX_BACKENDS, MAX_VIPS};

/// Value of `HIT_STATS` (per CPU; readers sum the CPUs): the packets an established flow
/// forwarded (a flow-table hit ending in `tx_forwarded`), and every forwarded packet of a
/// stateless VIP, counted in one per-CPU slot of their backend and nowhere else, so the hot
/// path touches one counter instead of four (the outcome, the hit event, the VIP's and the
/// backend's traffic). Readers fold a slot into `tx_forwarded`, into `conn_hit` (less its
/// `stateless` packets), into its backend's `packets`/`bytes` and into its VIP's; every other
/// ending of a packet is counted in `GLOBAL_STATS`, `VIP_STATS` and `BACKEND_STATS`.
///
/// Slots: backend ids first ([`MAX_BACKENDS`], written by the datapath); then one per VIP id
/// ([`hit_slot_retired_vip`]) holding the hits of that VIP's removed backends; then one
/// ([`HIT_SLOT_RETIRED`]) holding those of removed VIPs and reused slots. Only the agent
/// writes the retired slots, moving counts there when a backend or VIP leaves, so the global
/// sum never goes down and no write races the datapath's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HitCounters {
    pub packets: u64,
    /// Frame bytes as received (Ethernet header included), as in [`crate::TrafficCounters`].
    pub bytes: u64,
    /// How many of `packets` were a stateless VIP's: forwarded without a flow-table lookup, so
    /// readers count them in `tx_forwarded` but not in `conn_hit`.
    pub stateless: u64,
}
const _: () = assert!(core::mem::size_of::<HitCounters>() == 24);

impl core::ops::AddAssign for HitCounters {
    fn add_assign(&mut self, other: HitCounters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.stateless += other.stateless;
    }
}

/// Number of `HIT_STATS` slots: every backend id, a retired slot per VIP id, one for the rest.
pub const HIT_SLOTS: u32 = MAX_BACKENDS + MAX_VIPS + 1;
/// The `HIT_STATS` slot that keeps the hits of VIP `vip_id`'s removed backends.
pub const fn hit_slot_retired_vip(vip_id: u32) -> u32 {
    MAX_BACKENDS + vip_id
}
/// The `HIT_STATS` slot that keeps the hits of removed VIPs and of reused backend slots.
pub const HIT_SLOT_RETIRED: u32 = MAX_BACKENDS + MAX_VIPS;

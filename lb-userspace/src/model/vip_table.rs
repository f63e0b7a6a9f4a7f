//! Places VIPs and VIP addresses in one half of the VIP table (two-choice cuckoo hashing).
//!
//! The datapath probes each key's two candidate slots (lb-common's `vip_table`); this finds a
//! slot for every key among its two. The result depends only on the set of keys, not on the
//! order they come in, so balancers with the same config hold the same table.

use anyhow::bail;
use lb_common::{
    vip_table::{addr_entry_key, key_slots},
    AddrKey, AddrMeta, Family, VipKey, VipMeta, VipSlot, VIP_TABLE_SLOTS,
};

/// How many displacements one insertion may make before the seed is given up. Below a quarter
/// full, an insertion that needs more than a handful is already a sign of a cycle.
const MAX_KICKS: usize = 500;
/// Seeds tried before placement is declared impossible. A seed fails with a probability far
/// below one in a thousand at a quarter full, so reaching this means a broken hash.
const SEEDS: u32 = 64;

/// A half of the table and the seed its keys were placed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub seed: u32,
    pub slots: Vec<VipSlot>,
}

/// The table half holding `vips` and the address entries of `addrs`.
pub fn place(
    vips: impl IntoIterator<Item = (VipKey, VipMeta)>,
    addrs: impl IntoIterator<Item = (AddrKey, AddrMeta)>,
) -> anyhow::Result<Placed> {
    let mut entries: Vec<VipSlot> = vips
        .into_iter()
        .map(|(key, meta)| VipSlot {
            key,
            meta,
            _pad: [0; 4],
        })
        .chain(addrs.into_iter().map(|(a, m)| VipSlot {
            key: addr_entry_key(a.addr, a.family),
            meta: VipMeta {
                flags: m.flags,
                ..Default::default()
            },
            _pad: [0; 4],
        }))
        .collect();
    // Placement is deterministic for a given order: sort, so only the set matters.
    entries.sort_by_key(|e| sort_key(&e.key));
    entries.dedup_by_key(|e| e.key);
    for seed in 1..=SEEDS {
        if let Some(slots) = try_seed(&entries, seed) {
            return Ok(Placed { seed, slots });
        }
    }
    bail!(
        "cannot place {} VIP table entries in {VIP_TABLE_SLOTS} slots with any of {SEEDS} seeds",
        entries.len()
    )
}

fn sort_key(k: &VipKey) -> (u8, [u8; 16], [u8; 2], u8) {
    (k.family.0, k.addr, k.port, k.proto)
}

/// Whether a slot holds nothing (a packet's family is always 4 or 6).
pub fn is_empty(slot: &VipSlot) -> bool {
    slot.key.family != Family::V4 && slot.key.family != Family::V6
}

fn try_seed(entries: &[VipSlot], seed: u32) -> Option<Vec<VipSlot>> {
    let mut table = vec![VipSlot::default(); VIP_TABLE_SLOTS as usize];
    'entries: for e in entries {
        let (a, b) = key_slots(&e.key, seed);
        for s in [a, b] {
            if is_empty(&table[s as usize]) {
                table[s as usize] = *e;
                continue 'entries;
            }
        }
        // Both taken: displace the first slot's key to its other slot, and so on.
        let (mut moving, mut at) = (*e, a);
        for _ in 0..MAX_KICKS {
            std::mem::swap(&mut moving, &mut table[at as usize]);
            if is_empty(&moving) {
                continue 'entries;
            }
            let (a, b) = key_slots(&moving.key, seed);
            at = if at == a { b } else { a };
            if is_empty(&table[at as usize]) {
                table[at as usize] = moving;
                continue 'entries;
            }
        }
        return None;
    }
    Some(table)
}

/// The VIP entries of a table half, in slot order.
pub fn vips_of(slots: &[VipSlot]) -> Vec<(VipKey, VipMeta)> {
    slots
        .iter()
        .filter(|s| !is_empty(s) && s.key.proto != lb_common::vip_table::ADDR_ENTRY_PROTO)
        .map(|s| (s.key, s.meta))
        .collect()
}

/// The address entries of a table half, as (address, flags), in slot order.
pub fn addrs_of(slots: &[VipSlot]) -> Vec<(AddrKey, AddrMeta)> {
    slots
        .iter()
        .filter(|s| !is_empty(s) && s.key.proto == lb_common::vip_table::ADDR_ENTRY_PROTO)
        .map(|s| {
            let key = AddrKey {
                addr: s.key.addr,
                family: s.key.family,
                _pad: [0; 3],
            };
            (
                key,
                AddrMeta {
                    flags: s.meta.flags,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{
        addr::{ip_from_map, ip_to_map},
        MAX_VIPS,
    };

    /// Where a key sits in `slots`, if it is there where the datapath would look.
    fn find(slots: &[VipSlot], seed: u32, key: &VipKey) -> Option<usize> {
        let (a, b) = key_slots(key, seed);
        [a, b]
            .into_iter()
            .map(|s| s as usize)
            .find(|&s| slots.get(s).is_some_and(|e| e.key == *key && !is_empty(e)))
    }

    /// A short name of a key for errors: the address, and the port and protocol of a VIP's.
    fn describe(key: &VipKey) -> String {
        let addr = ip_from_map(key.addr, key.family);
        if key.proto == lb_common::vip_table::ADDR_ENTRY_PROTO {
            format!("address {addr}")
        } else {
            format!("{addr}:{}/{}", u16::from_be_bytes(key.port), key.proto)
        }
    }

    fn vip(i: u32, v6: bool) -> (VipKey, VipMeta) {
        let ip: std::net::IpAddr = if v6 {
            format!("fd00::{:x}", i / 7).parse().unwrap()
        } else {
            format!("10.0.{}.{}", i / 7 / 256, i / 7 % 256)
                .parse()
                .unwrap()
        };
        let (addr, family) = ip_to_map(ip);
        let key = VipKey {
            addr,
            port: ((i % 7) as u16 * 1000).to_be_bytes(),
            proto: if i.is_multiple_of(2) { 6 } else { 17 },
            family,
        };
        (
            key,
            VipMeta {
                vip_id: i,
                ..Default::default()
            },
        )
    }

    fn addrs(vips: &[(VipKey, VipMeta)]) -> Vec<(AddrKey, AddrMeta)> {
        let mut out: Vec<(AddrKey, AddrMeta)> = vips
            .iter()
            .map(|(k, _)| {
                let a = AddrKey {
                    addr: k.addr,
                    family: k.family,
                    _pad: [0; 3],
                };
                (a, AddrMeta { flags: 1 })
            })
            .collect();
        out.sort_by_key(|(a, _)| (a.family.0, a.addr));
        out.dedup_by_key(|(a, _)| *a);
        out
    }

    /// Every key of the largest config is where the datapath looks for it, the listings give
    /// back what went in, and nothing else is found.
    #[test]
    fn a_full_config_is_placed_where_the_datapath_probes() {
        for v6 in [false, true] {
            let vips: Vec<_> = (0..MAX_VIPS).map(|i| vip(i, v6)).collect();
            let addrs = addrs(&vips);
            let placed = place(vips.clone(), addrs.clone()).unwrap();
            for (k, m) in &vips {
                let at = find(&placed.slots, placed.seed, k).expect("placed VIP found");
                assert_eq!(placed.slots[at].meta, *m);
            }
            for (a, _) in &addrs {
                let k = addr_entry_key(a.addr, a.family);
                assert!(
                    find(&placed.slots, placed.seed, &k).is_some(),
                    "{}",
                    describe(&k)
                );
            }
            let mut listed = vips_of(&placed.slots);
            listed.sort_by_key(|(k, _)| sort_key(k));
            let mut want = vips.clone();
            want.sort_by_key(|(k, _)| sort_key(k));
            assert_eq!(listed, want);
            assert_eq!(addrs_of(&placed.slots).len(), addrs.len());
            let other = VipKey {
                port: 9u16.to_be_bytes(),
                ..vips[0].0
            };
            assert!(find(&placed.slots, placed.seed, &other).is_none());
        }
    }

    /// Balancers with the same config hold the same table, whatever order it lists VIPs in.
    #[test]
    fn the_table_depends_on_the_set_not_the_order() {
        let vips: Vec<_> = (0..100).map(|i| vip(i, i % 3 == 0)).collect();
        let mut reversed = vips.clone();
        reversed.reverse();
        let a = place(vips.clone(), addrs(&vips)).unwrap();
        let b = place(reversed.clone(), addrs(&reversed)).unwrap();
        assert_eq!(a, b);
    }
}

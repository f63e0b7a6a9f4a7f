//! VIP and backend ids as a pure function of the config's set of VIPs and backends.
//!
//! Every balancer with the same config therefore writes byte-identical rings, whatever the file's
//! order or the changes that led to it.
//!
//! Each identity hashes to a home slot; identities are placed in (home slot, identity) order,
//! each taking the first free slot from its home on (linear probing, wrapping). The result
//! depends on the set only. Adding or removing an identity moves others only inside its probe
//! cluster, which at the sizes used (hundreds of backends in 16,384 slots) is rare. A moved
//! backend id is safe for flows in flight: every backend carries a tag (a hash of its
//! identity) that flow-table entries copy, and an entry whose backend's tag no longer matches
//! is re-steered through the ring instead of being sent to whoever holds the slot now.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use anyhow::bail;
use lb_common::{addr::ip_to_map, hash_words};

/// Identity of a VIP across reloads and balancers: (address, port, protocol number).
pub type VipIdentity = (IpAddr, u16, u8);

/// Ids in use: every flow-table entry names a backend id, rings name backend ids and the
/// the VIP table names VIP ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    pub vips: HashMap<VipIdentity, u32>,
    /// By (VIP id, backend address): a server behind two VIPs has two backend entries.
    pub backends: HashMap<(u32, IpAddr), u32>,
}

const VIP_SEED: u32 = 0x7669_7073; // "vips"
const BACKEND_SEED: u32 = 0x6265_6e64; // "bend"
const TAG_SEED: u32 = 0x7461_6773; // "tags"

/// The words a VIP identity hashes as: address, then port and protocol.
fn vip_words(vip: &VipIdentity) -> [u32; 5] {
    let (addr, _) = ip_to_map(vip.0);
    let w = |i: usize| u32::from_be_bytes(addr[i * 4..i * 4 + 4].try_into().unwrap());
    [
        w(0),
        w(1),
        w(2),
        w(3),
        u32::from(vip.1) << 8 | u32::from(vip.2),
    ]
}

/// The words a backend identity hashes as: its VIP's identity, then its own address. Not the
/// VIP id, which may itself move.
fn backend_words(vip: &VipIdentity, backend: IpAddr) -> [u32; 9] {
    let v = vip_words(vip);
    let (addr, _) = ip_to_map(backend);
    let w = |i: usize| u32::from_be_bytes(addr[i * 4..i * 4 + 4].try_into().unwrap());
    [v[0], v[1], v[2], v[3], v[4], w(0), w(1), w(2), w(3)]
}

/// The tag of a backend entry: what a flow-table entry remembers besides the id, so a slot
/// that changed owner is told apart from the backend the flow was pinned to.
pub fn backend_tag(vip: &VipIdentity, backend: IpAddr) -> u32 {
    hash_words(&backend_words(vip, backend), TAG_SEED)
}

/// Places every `(identity, home hash)` into `0..max`: sorted by (home slot, identity), each
/// takes the first free slot from its home on.
fn place<K: Ord + Clone>(
    items: Vec<(K, u32)>,
    max: u32,
    what: &str,
) -> anyhow::Result<BTreeMap<K, u32>> {
    if items.len() > max as usize {
        bail!("{} {what}s configured, at most {max} fit", items.len());
    }
    let mut order: Vec<(u32, K)> = items.into_iter().map(|(k, h)| (h % max, k)).collect();
    order.sort();
    let mut taken = vec![false; max as usize];
    let mut out = BTreeMap::new();
    for (home, key) in order {
        let mut slot = home;
        while taken[slot as usize] {
            slot = (slot + 1) % max;
        }
        taken[slot as usize] = true;
        out.insert(key, slot);
    }
    Ok(out)
}

/// The ids of `vips`, each with its backends' addresses: a function of the set only (the
/// order of either list does not matter, duplicates count once).
pub fn assign(
    vips: &[(VipIdentity, Vec<IpAddr>)],
    max_vips: u32,
    max_backends: u32,
) -> anyhow::Result<Ids> {
    let vip_ids = place(
        vips.iter()
            .map(|(v, _)| (*v, hash_words(&vip_words(v), VIP_SEED)))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect(),
        max_vips,
        "VIP",
    )?;
    let backend_items: BTreeMap<(VipIdentity, IpAddr), u32> = vips
        .iter()
        .flat_map(|(v, bs)| {
            bs.iter()
                .map(move |b| ((*v, *b), hash_words(&backend_words(v, *b), BACKEND_SEED)))
        })
        .collect();
    let backend_ids = place(backend_items.into_iter().collect(), max_backends, "backend")?;
    Ok(Ids {
        backends: backend_ids
            .into_iter()
            .map(|((v, b), id)| ((vip_ids[&v], b), id))
            .collect(),
        vips: vip_ids.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(last: u8, port: u16) -> VipIdentity {
        (IpAddr::from([10, 0, 0, last]), port, 6)
    }

    fn backends(n: u8) -> Vec<IpAddr> {
        (1..=n).map(|i| IpAddr::from([10, 1, 0, i])).collect()
    }

    #[test]
    fn ids_depend_on_the_set_not_the_order() {
        let a = vec![(vip(10, 80), backends(5)), (vip(11, 443), backends(3))];
        let mut b: Vec<_> = a
            .iter()
            .rev()
            .map(|(v, bs)| (*v, bs.iter().rev().copied().collect()))
            .collect();
        assert_eq!(
            assign(&a, 512, 16384).unwrap(),
            assign(&b, 512, 16384).unwrap()
        );
        let dup = b[0].1[0];
        b[0].1.push(dup);
        assert_eq!(
            assign(&a, 512, 16384).unwrap(),
            assign(&b, 512, 16384).unwrap()
        );
    }

    #[test]
    fn collisions_are_resolved_the_same_way_everywhere() {
        // 8 slots for 8 VIPs and 30 backends in 32 slots: every home slot collides, and the
        // result must still be a permutation that does not depend on the input order.
        let vips: Vec<_> = (0..8).map(|i| (vip(i, 80), backends(4))).collect();
        let ids = assign(&vips, 8, 32).unwrap();
        let mut vip_ids: Vec<u32> = ids.vips.values().copied().collect();
        vip_ids.sort();
        assert_eq!(vip_ids, (0..8).collect::<Vec<_>>());
        let mut reversed = vips.clone();
        reversed.reverse();
        assert_eq!(ids, assign(&reversed, 8, 32).unwrap());
        let e = assign(&vips, 8, 31).unwrap_err();
        assert!(
            e.to_string().contains("32 backends configured, at most 31"),
            "{e}"
        );
    }

    #[test]
    fn an_addition_moves_nothing_outside_its_cluster() {
        let before = assign(&[(vip(10, 80), backends(50))], 512, 16384).unwrap();
        let after = assign(&[(vip(10, 80), backends(51))], 512, 16384).unwrap();
        let moved = before
            .backends
            .iter()
            .filter(|(k, id)| after.backends[k] != **id)
            .count();
        // 51 backends in 16,384 slots: a collision (let alone a displacement) is unlikely,
        // and these addresses have none.
        assert_eq!(moved, 0);
    }

    #[test]
    fn tags_tell_backends_apart() {
        let v = vip(10, 80);
        let tags: std::collections::HashSet<u32> = backends(200)
            .into_iter()
            .map(|b| backend_tag(&v, b))
            .collect();
        assert_eq!(tags.len(), 200);
        assert_ne!(
            backend_tag(&v, backends(1)[0]),
            backend_tag(&vip(11, 80), backends(1)[0])
        );
    }
}

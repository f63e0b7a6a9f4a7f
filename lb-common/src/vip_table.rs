//! The VIP table: every VIP and VIP address in an array the datapath reads without a map call.
//!
//! A hash map lookup is a kernel call that hashes the key with jhash and walks a bucket; the
//! verifier inlines an array lookup into a bounds check and an add. The agent knows every key
//! in advance, so it places them itself (cuckoo hashing: each key has two candidate slots, and
//! the agent finds an arrangement where every key sits in one of its two) and the program
//! probes at most two slots per key.
//!
//! The map holds two halves of [`VIP_TABLE_SLOTS`]; [`VipTableHead`] says which one is live
//! and with which seed its keys were placed. The agent writes the other half whole, then
//! switches the head, so a packet sees the old table or the new one, never a mix (the same
//! guarantee a swapped ring gives).
//!
//! Two kinds of entry share the table: a VIP, keyed by its [`VipKey`], and an address that has
//! VIPs, keyed by [`addr_entry_key`] (protocol [`ADDR_ENTRY_PROTO`], port 0), whose
//! `meta.flags` are the `ADDR_*` flags. Fragments and echo requests carry no ports and are
//! matched by their address entry.

use crate::{Family, VipKey, VipMeta};

/// Slots in one half of the table. A power of two (the probe masks the hash) and four times
/// the most keys it holds (every VIP and every address, at most `2 × MAX_VIPS`): two-choice
/// cuckoo placement succeeds almost always below half full, and the agent tries other seeds
/// when it does not.
pub const VIP_TABLE_SLOTS: u32 = 4096;
/// Entries of the `VIP_TABLE` map: both halves.
pub const VIP_TABLE_ENTRIES: u32 = 2 * VIP_TABLE_SLOTS;
const SLOT_BITS: u32 = VIP_TABLE_SLOTS.trailing_zeros();
const _: () = assert!(VIP_TABLE_SLOTS.is_power_of_two());
const _: () = assert!(VIP_TABLE_SLOTS >= 8 * crate::MAX_VIPS);

/// `VipKey::proto` of an address entry. Protocol 0 (IPv6 hop-by-hop options) is never a VIP's.
pub const ADDR_ENTRY_PROTO: u8 = 0;

/// Value of `VIP_TABLE`: a key and what it leads to. A slot whose `key.family` is neither
/// [`Family::V4`] nor [`Family::V6`] is empty: no packet's key matches it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipSlot {
    pub key: VipKey,
    /// A VIP's meta; for an address entry only `flags` is used, holding `ADDR_*` flags.
    pub meta: VipMeta,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<VipSlot>() == 40);

/// Value of `VIP_TABLE_HEAD`: the live half and the seed each half's keys were placed with.
///
/// A map update copies the value with `memcpy`, which gives no atomicity, so the agent
/// switches halves in two writes that each change bytes no packet can misread: first the
/// seed of the half packets do not read, then `half`, whose 0 ↔ 1 change is one byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipTableHead {
    /// 0 or 1: the half packets read.
    pub half: u32,
    pub seeds: [u32; 2],
}
const _: () = assert!(core::mem::size_of::<VipTableHead>() == 12);

/// The key of the address entry of `addr`.
#[inline(always)]
pub const fn addr_entry_key(addr: [u8; 16], family: Family) -> VipKey {
    VipKey {
        addr,
        port: [0, 0],
        proto: ADDR_ENTRY_PROTO,
        family,
    }
}

/// The address half of a key's hash, shared by a flow's address entry and its VIPs so the
/// program computes it once per packet (see [`slots`]).
#[derive(Clone, Copy)]
pub struct AddrHash(u64);

// Odd 64-bit constants (from the digits of π) mixed with the seed: the multipliers of the
// pair-multiply hash below.
const K: [u64; 6] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7345,
    0xa409_3822_299f_31d1,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
    0xbe54_66cf_34e9_0c6d,
];

#[inline(always)]
fn k(i: usize, seed: u32) -> u64 {
    K[i] ^ (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A key as the program reads it: the address as four words and the port, protocol and family
/// as a fifth, each in the host's byte order (the agent and the program share the host, so
/// both hash the same words; the table is never compared across machines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyWords {
    pub addr: [u32; 4],
    pub rest: u32,
}

impl KeyWords {
    /// `port`, `proto` and `family` as the fifth word, laid out as in [`VipKey`].
    #[inline(always)]
    pub fn rest(port: [u8; 2], proto: u8, family: Family) -> u32 {
        u32::from_ne_bytes([port[0], port[1], proto, family.0])
    }

    pub fn of(key: &VipKey) -> KeyWords {
        let w = |i: usize| {
            let a = &key.addr;
            u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]])
        };
        KeyWords {
            addr: [w(0), w(1), w(2), w(3)],
            rest: Self::rest(key.port, key.proto, key.family),
        }
    }
}

/// Hashes the address words of a key. Pair-multiply (Thorup's multiply-shift on pairs of
/// words): two independent 64-bit multiplies instead of a chain of mixing rounds, which is
/// cheap in the datapath, and universal enough for placement: the agent checks every
/// arrangement and changes the seed when two keys cannot both be placed.
#[inline(always)]
pub fn addr_hash(addr: &[u32; 4], seed: u32) -> AddrHash {
    let w = |i: usize| (addr[i] as u64).wrapping_add(k(i, seed));
    AddrHash(
        w(0).wrapping_mul(w(1))
            .wrapping_add(w(2).wrapping_mul(w(3))),
    )
}

/// The two candidate slots (within a half) of the key whose address hashed to `addr` and
/// whose fifth word is `rest` (see [`KeyWords`]): `rest` is folded in with one more multiply,
/// and the slots are taken from the hash's high bits, the well-mixed ones of a multiply-shift
/// hash.
#[inline(always)]
pub fn slots(addr: AddrHash, rest: u32, seed: u32) -> (u32, u32) {
    let h = addr.0.wrapping_add(
        (rest as u64)
            .wrapping_add(k(4, seed))
            .wrapping_mul(k(5, seed)),
    );
    let first = (h >> (64 - SLOT_BITS)) as u32;
    let second = ((h >> (64 - 2 * SLOT_BITS)) as u32) & (VIP_TABLE_SLOTS - 1);
    (first, second)
}

/// [`slots`] of a whole key (userspace placement and tests; the program splits the two steps).
pub fn key_slots(key: &VipKey, seed: u32) -> (u32, u32) {
    let w = KeyWords::of(key);
    slots(addr_hash(&w.addr, seed), w.rest, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_in_range_and_depend_on_every_field_and_the_seed() {
        let key = VipKey {
            addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 80u16.to_be_bytes(),
            proto: 6,
            family: Family::V4,
        };
        let base = key_slots(&key, 1);
        assert!(base.0 < VIP_TABLE_SLOTS && base.1 < VIP_TABLE_SLOTS);
        let variants = [
            VipKey {
                port: 81u16.to_be_bytes(),
                ..key
            },
            VipKey { proto: 17, ..key },
            VipKey {
                family: Family::V6,
                ..key
            },
            VipKey {
                addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ..key
            },
            VipKey {
                addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
                ..key
            },
        ];
        for v in variants {
            assert_ne!(key_slots(&v, 1), base, "{v:?}");
        }
        assert_ne!(key_slots(&key, 2), base);
    }
}

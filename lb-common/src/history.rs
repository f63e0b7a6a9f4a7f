//! Second chance: a ring slot's previous owner, and the mark that carries it in a packet.
//!
//! Each ring slot holds its owner in the low 16 bits and the most recent other backend that
//! owned it (while that backend still serves) in the high 16 bits, so a ring swap changes both
//! at once. A packet whose slot has a previous owner carries it to the backend, which delivers
//! it if it has the flow's socket and otherwise sends it on to that previous owner (the host
//! program, `xdplb host`). Backend ids fit in 14 bits (`MAX_BACKENDS`), which leaves room
//! for a 2-bit tag that says "this is a mark":
//!
//! - `l2`, IPv4: the IP ID of an atomic datagram (DF set, not a fragment), which RFC 6864 lets
//!   a sender set to any value and receivers ignore; the header checksum is updated.
//! - `l2`, IPv6: the flow label (RFC 6437 lets it be any value the flow keeps).
//! - `ipip`: the same fields of the outer header the balancer writes.
//!
//! A packet whose slot has no previous owner is not touched (beyond its `ipip` outer header,
//! whose flow label then never looks like a mark), so a field that happens to look like a mark
//! can come from a client; the host program then checks the id against the hosts it knows, and
//! at worst looks up a socket it has.

use crate::{MAX_BACKENDS, NO_BACKEND};

/// A ring slot's owner and previous owner (each a backend id, or [`NO_BACKEND`]).
#[inline(always)]
pub const fn ring_slot(owner: u32, previous: u32) -> u32 {
    (owner & 0xffff) | ((previous & 0xffff) << 16)
}
/// The backend that owns a ring slot, or [`NO_BACKEND`].
#[inline(always)]
pub const fn slot_owner(slot: u32) -> u32 {
    match slot & 0xffff {
        0xffff => NO_BACKEND,
        id => id,
    }
}
/// The backend that owned a ring slot before its owner, or [`NO_BACKEND`].
#[inline(always)]
pub const fn slot_previous(slot: u32) -> u32 {
    match slot >> 16 {
        0xffff => NO_BACKEND,
        id => id,
    }
}
const _: () = assert!(MAX_BACKENDS <= ID_MASK as u32 + 1);
const _: () =
    assert!(slot_owner(NO_BACKEND) == NO_BACKEND && slot_previous(NO_BACKEND) == NO_BACKEND);

/// The 14 bits of a mark that hold the backend id.
const ID_MASK: u16 = 0x3fff;

/// The IPv4 ID that carries `previous` (a backend id below `MAX_BACKENDS`): tag `10`, then the id.
#[inline(always)]
pub const fn ipv4_id_mark(previous: u32) -> u16 {
    0x8000 | (previous as u16 & ID_MASK)
}
/// The backend id an IPv4 ID carries, if it looks like a mark.
#[inline(always)]
pub const fn ipv4_id_previous(id: u16) -> Option<u32> {
    if id & 0xc000 == 0x8000 {
        Some((id & ID_MASK) as u32)
    } else {
        None
    }
}
/// The 20-bit IPv6 flow label that carries `previous`: tag `10`, two zero bits, then the id.
#[inline(always)]
pub const fn flow_label_mark(previous: u32) -> u32 {
    0x8_0000 | (previous & ID_MASK as u32)
}
/// The backend id a flow label carries, if it looks like a mark.
#[inline(always)]
pub const fn flow_label_previous(label: u32) -> Option<u32> {
    if label & 0xc_0000 == 0x8_0000 {
        Some(label & ID_MASK as u32)
    } else {
        None
    }
}
/// An outer IPv6 flow label without history: the flow's hash with the tag bits clear, so it
/// never reads as a mark and keeps 18 bits of entropy for routers and NICs that hash it.
#[inline(always)]
pub const fn flow_label_plain(hash: u32) -> u32 {
    hash & 0x3_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_plain_values_never_read_as_marks() {
        for id in [0, 1, 4242, MAX_BACKENDS - 1] {
            assert_eq!(ipv4_id_previous(ipv4_id_mark(id)), Some(id));
            assert_eq!(flow_label_previous(flow_label_mark(id)), Some(id));
            let slot = ring_slot(id, 7);
            assert_eq!((slot_owner(slot), slot_previous(slot)), (id, 7));
        }
        assert_eq!(slot_previous(ring_slot(3, NO_BACKEND)), NO_BACKEND);
        assert_eq!(ipv4_id_previous(0), None);
        assert_eq!(ipv4_id_previous(0xc000), None);
        for h in [0, 0xffff_ffff, 0x8_0000, 0xdead_beef] {
            assert_eq!(flow_label_previous(flow_label_plain(h)), None);
        }
    }
}

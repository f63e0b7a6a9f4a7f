//! The contract of the backends' host program (`xdplb host`): map names, layouts and counters.
//!
//! The balancer may send backends IP-in-IP (4in4, 6in4, 6in6, 4in6). A backend runs
//! `xdplb_decap` on its NIC: it strips the outer header of tunnel packets addressed to one of
//! the backend's own addresses (`DECAP_ADDRS`) and hands the inner packet to the stack. It also
//! gives TCP packets to the host's VIPs a second chance (lb-common's `history`): a packet that
//! carries a previous owner and belongs to no local socket is sent on to that owner
//! (`HOST_PEERS`). Everything else passes untouched.

use crate::{Family, MapKind, MapSpec, MAX_BACKENDS};

/// Name of the `#[xdp]` entry point in the `decap` object.
pub const PROGRAM: &str = "xdplb_decap";

/// `HashMap<DecapAddr, u32>`: the local addresses tunnels may be addressed to. The value holds
/// flags; none are defined yet, userspace writes 0 and the program ignores it.
pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
/// `PerCpuArray<u64>`, indexed by [`DecapCounter`].
pub const DECAP_STATS: &str = "DECAP_STATS";

/// Capacity of `DECAP_ADDRS`: a host with more addresses than this that all receive tunnels
/// is not a backend we plan for. A hash entry is ~20+4 B plus bookkeeping: a few KiB in all.
pub const MAX_DECAP_ADDRS: u32 = 64;

/// `HashMap<DecapAddr, u32>`: this host's VIP addresses (the config's, on `lo`): only TCP
/// packets to them get a second chance. The value holds flags; none are defined yet.
pub const HOST_VIPS: &str = "HOST_VIPS";
/// `Array<Peer>` of `MAX_BACKENDS`, indexed by backend id (the balancers' ids for the same
/// config): where a packet goes on when its flow is not local.
pub const HOST_PEERS: &str = "HOST_PEERS";

/// Every map of the decap object, for pinning and for the pinned-layout check.
pub const MAPS: [MapSpec; 4] = [
    MapSpec::new::<DecapAddr, u32>(DECAP_ADDRS, MapKind::Hash, MAX_DECAP_ADDRS),
    MapSpec::new::<u32, u64>(DECAP_STATS, MapKind::PerCpuArray, DecapCounter::COUNT),
    MapSpec::new::<DecapAddr, u32>(HOST_VIPS, MapKind::Hash, crate::MAX_VIPS),
    MapSpec::new::<u32, Peer>(HOST_PEERS, MapKind::Array, MAX_BACKENDS),
];

/// `Peer::state`: no host has this id (or the program must not send to it).
pub const PEER_NONE: u8 = 0;
/// `Peer::state`: another backend, reached at `mac` on this host's segment.
pub const PEER_L2: u8 = 1;
/// `Peer::state`: this host itself (a chain that names it ends here).
pub const PEER_SELF: u8 = 2;
/// `Peer::state`: another backend of an `ipip` VIP, reached by readdressing the tunnel to
/// `addr` (sent back to the hop the tunnel packet came from).
pub const PEER_IPIP: u8 = 3;

/// Value of `HOST_PEERS`: how to reach the backend with that id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Peer {
    /// `PEER_IPIP`: the backend's address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// `PEER_L2`: the backend's MAC.
    pub mac: [u8; 6],
    /// `PEER_*`.
    pub state: u8,
    /// `PEER_IPIP`: the address family.
    pub family: Family,
}
const _: () = assert!(core::mem::size_of::<Peer>() == 24);

/// Key of `DECAP_ADDRS`: an outer destination address, wire order. IPv4 uses the first 4 bytes,
/// the rest stays zero (the program builds its lookup key the same way).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DecapAddr {
    pub addr: [u8; 16],
    pub family: Family,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<DecapAddr>() == 20);

impl DecapAddr {
    /// The key of an IPv4 address (its octets, wire order).
    pub const fn v4(octets: [u8; 4]) -> DecapAddr {
        let mut addr = [0u8; 16];
        addr[0] = octets[0];
        addr[1] = octets[1];
        addr[2] = octets[2];
        addr[3] = octets[3];
        DecapAddr {
            addr,
            family: Family::V4,
            _pad: [0; 3],
        }
    }

    /// The key of an IPv6 address (its octets, wire order).
    pub const fn v6(octets: [u8; 16]) -> DecapAddr {
        DecapAddr {
            addr: octets,
            family: Family::V6,
            _pad: [0; 3],
        }
    }
}

counter_table! {
    counter DecapCounter, outcome DecapOutcome;
    // `DECAP_STATS`: every packet the program sees increments exactly one outcome, except for
    // the "cannot happen" paths that return `XDP_ABORTED` (a failed `bpf_xdp_adjust_head`
    // after all checks passed), which the `xdp:xdp_exception` tracepoint reports instead. The
    // program looks nothing up on the way that is worth an event of its own.
    outcomes {
        /// Outer header stripped; the inner packet went to the stack.
        Decapsulated = 0, "decapsulated", Pass;
        /// Not IP-in-IP: non-IP frames, IP of any other protocol (IPv6 extension headers
        /// included), and IP whose own header is broken (the stack drops and counts those). Passed
        /// untouched.
        PassNotTunnel = 1, "pass_not_tunnel", Pass;
        /// IP-in-IP addressed to an address not in `DECAP_ADDRS` (someone else's tunnel, or a
        /// router's job): passed untouched.
        PassNotLocal = 2, "pass_not_local", Pass;
        /// IP-in-IP to a local address, but the outer packet is a fragment (IPv4 MF/offset, or an
        /// IPv6 fragment header carrying protocol 4/41): only the stack can reassemble it. Passed
        /// untouched (with no tunnel driver, the stack then drops the reassembled packet).
        PassOuterFragment = 3, "pass_outer_fragment", Pass;
        /// IP-in-IP to a local address whose inner header is broken or contradicts the outer one
        /// (wrong version for the protocol, bad IHL, inner length past the outer payload,
        /// truncated): dropped.
        DropMalformed = 4, "drop_malformed", Drop;
        /// Second chance: a TCP packet to a local VIP that carries a previous owner, and the
        /// flow is this host's (a socket of any state but listening: established, TIME_WAIT,
        /// a half-open request): to the stack.
        PassLocal = 5, "pass_local", Pass;
        /// Second chance: a SYN (a new connection is always this host's): to the stack.
        PassSyn = 6, "pass_syn", Pass;
        /// Second chance: an ACK the listener's SYN cookies validate: to the stack.
        PassCookie = 7, "pass_cookie", Pass;
        /// Second chance: not this host's flow, sent on to the previous owner the packet
        /// carried, its mark cleared so that host delivers it.
        TxChained = 8, "tx_chained", Tx;
        /// Second chance: not this host's flow and the previous owner is unknown here or is
        /// this host: to the stack, which answers as it would without the program (a reset).
        PassEndOfChain = 9, "pass_end_of_chain", Pass;
    }
}

/// Number of `DECAP_STATS` slots ([`DecapCounter::COUNT`]).
pub const DECAP_COUNTER_COUNT: u32 = DecapCounter::COUNT;

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, byte arrays only, explicit padding: every bit pattern is valid and
    // there are no uninitialised bytes.
    unsafe impl aya::Pod for super::DecapAddr {}
    unsafe impl aya::Pod for super::Peer {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_indexed_in_order() {
        for (i, c) in DecapCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{} out of order", c.name());
        }
    }

    /// Decap has outcomes only: every slot is exactly one outcome, names unique and unchanged.
    #[test]
    fn every_counter_is_one_outcome_and_names_are_unique() {
        for c in DecapCounter::ALL {
            assert_eq!(
                DecapOutcome::ALL
                    .iter()
                    .filter(|o| o.counter() == c)
                    .count(),
                1,
                "{}",
                c.name()
            );
        }
        assert_eq!(
            DecapCounter::ALL.map(DecapCounter::name),
            [
                "decapsulated",
                "pass_not_tunnel",
                "pass_not_local",
                "pass_outer_fragment",
                "drop_malformed",
                "pass_local",
                "pass_syn",
                "pass_cookie",
                "tx_chained",
                "pass_end_of_chain",
            ]
        );
        for o in DecapOutcome::ALL {
            let drop = o.verdict() == crate::Verdict::Drop;
            assert_eq!(drop, *o == DecapOutcome::DropMalformed, "{:?}", o);
        }
        assert_ne!(MAPS[0].name, MAPS[1].name);
        assert_eq!((MAPS[0].key_size, MAPS[0].value_size), (20, 4));
        assert_eq!((MAPS[1].value_size, MAPS[1].max_entries), (8, 10));
    }

    /// Userspace refuses (replaces) pinned maps whose sizes differ; if this changes, old pins
    /// are replaced on the next `xdplb decap`, and their counters restart.
    #[test]
    fn layout_fingerprint() {
        use core::mem::{offset_of, size_of};
        assert_eq!(
            (
                size_of::<DecapAddr>(),
                offset_of!(DecapAddr, family),
                DECAP_COUNTER_COUNT,
                MAPS.len()
            ),
            (20, 16, 10, 4)
        );
    }

    #[test]
    fn v4_keys_are_zero_padded() {
        let k = DecapAddr::v4([192, 0, 2, 1]);
        assert_eq!(&k.addr[..4], &[192, 0, 2, 1]);
        assert!(k.addr[4..].iter().all(|b| *b == 0));
        assert_eq!(k.family, Family::V4);
    }
}

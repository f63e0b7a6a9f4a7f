//! Wire formats: bounds-checked frame access, header lengths, field offsets, protocol numbers.
//!
//! Each is named once here.
//!
//! [`ptr_at`] is the only place that compares against `data_end`; everything that reads or
//! writes the frame goes through it (the verifier needs that comparison before any access).

use aya_ebpf::programs::XdpContext;

/// A pointer to a `T` at `off` bytes into the frame, or `None` if the frame is shorter.
/// The explicit `data_end` comparison is what the verifier needs before any packet access.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Length of the whole frame as it is now.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// Ethernet: header length, the offsets of its fields and the EtherTypes the programs know.
pub mod eth {
    pub const HLEN: usize = 14;
    /// An 802.1Q tag after the MAC addresses: TPID (which is where the EtherType was) + TCI.
    pub const VLAN_HLEN: usize = 4;
    /// The Ethernet header with one 802.1Q tag.
    pub const TAGGED_HLEN: usize = HLEN + VLAN_HLEN;
    pub const DST: core::ops::Range<usize> = 0..6;
    pub const SRC: core::ops::Range<usize> = 6..12;
    pub const P_IP: u16 = 0x0800;
    pub const P_IPV6: u16 = 0x86DD;
    pub const P_8021Q: u16 = 0x8100;
}

/// IPv4 (RFC 791): field offsets in the header, and the flags of the host-order `frags` word.
pub mod ipv4 {
    pub const MIN_HLEN: usize = 20;
    pub const TOT_LEN: core::ops::Range<usize> = 2..4;
    pub const FRAGS: core::ops::Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CHECK: core::ops::Range<usize> = 10..12;
    pub const SRC: core::ops::Range<usize> = 12..16;
    pub const DST: core::ops::Range<usize> = 16..20;
    /// "Don't fragment", "more fragments" and the fragment-offset mask.
    pub const DF: u16 = 0x4000;
    pub const MF: u16 = 0x2000;
    pub const OFFSET: u16 = 0x1fff;
}

/// IPv6 (RFC 8200): field offsets in the fixed header, and the extension headers' next-header
/// numbers (IANA "IPv6 Extension Header Types").
pub mod ipv6 {
    pub const HLEN: usize = 40;
    pub const PAYLOAD_LEN: core::ops::Range<usize> = 4..6;
    pub const NEXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: core::ops::Range<usize> = 8..24;
    pub const DST: core::ops::Range<usize> = 24..40;
    pub const EXT_HOP_BY_HOP: u8 = 0;
    pub const EXT_ROUTING: u8 = 43;
    pub const EXT_FRAGMENT: u8 = 44;
    pub const EXT_AH: u8 = 51;
    pub const EXT_DEST_OPTIONS: u8 = 60;
    pub const EXT_MOBILITY: u8 = 135;
    pub const EXT_HIP: u8 = 139;
    pub const EXT_SHIM6: u8 = 140;
}

/// TCP and UDP: what the balancer reads of them (the ports, and the lengths to check).
pub mod transport {
    pub const TCP_MIN_HLEN: usize = 20;
    pub const UDP_HLEN: usize = 8;
    /// TCP's data offset (header length in 32-bit words) is the high nibble of byte 12.
    pub const TCP_DOFF: usize = 12;
    pub const UDP_LEN: core::ops::Range<usize> = 4..6;
}

/// ICMP (RFC 792) and ICMPv6 (RFC 4443): header length, field offsets and the message types
/// the balancer answers or steers.
pub mod icmp {
    pub const HLEN: usize = 8;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECK: core::ops::Range<usize> = 2..4;
    pub const V4_ECHO_REPLY: u8 = 0;
    pub const V4_DEST_UNREACH: u8 = 3;
    /// Code of "destination unreachable": fragmentation needed and DF set (RFC 1191).
    pub const V4_FRAG_NEEDED: u8 = 4;
    pub const V4_ECHO_REQUEST: u8 = 8;
    pub const V4_TIME_EXCEEDED: u8 = 11;
    pub const V4_PARAMETER_PROBLEM: u8 = 12;
    pub const V6_DEST_UNREACH: u8 = 1;
    pub const V6_PACKET_TOO_BIG: u8 = 2;
    pub const V6_TIME_EXCEEDED: u8 = 3;
    pub const V6_PARAMETER_PROBLEM: u8 = 4;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_ECHO_REPLY: u8 = 129;
}

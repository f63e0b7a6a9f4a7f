//! The frames the model sends: L2 rewrite, echo replies, too-big answers, IP-in-IP, checksums.

use super::*;
use lb_common::history::{flow_label_mark, ipv4_id_mark};

/// Traffic class of the balancer's own ICMPv4 messages: precedence "internetwork control",
/// as the kernel sends its ICMP errors.
pub(super) const ICMP_TOS: u8 = 0xc0;
/// How much of the original IPv6 packet an ICMPv6 "packet too big" quotes: its header and
/// the first 8 bytes after it.
pub(super) const ICMPV6_QUOTE: usize = 48;
/// RFC 1624 eqn. 3: the ones'-complement checksum `check` after the 16-bit word `old` it
/// covers became `new`.
pub(super) fn csum_replace(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub(super) fn word(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Replaces the 16-bit word at `at` and updates the checksum at `check` for it.
pub(super) fn set_word(b: &mut [u8], at: usize, new: u16, check: usize) {
    let c = csum_replace(word(b, check), word(b, at), new);
    b[at..at + 2].copy_from_slice(&new.to_be_bytes());
    b[check..check + 2].copy_from_slice(&c.to_be_bytes());
}

/// The Ethernet header of a frame sent back where `frame` came from, from `our_mac` (VLAN
/// tag kept).
pub(super) fn l2_back(frame: &[u8], l3: usize, our_mac: [u8; 6]) -> Vec<u8> {
    let mut out = frame[..l3].to_vec();
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&our_mac);
    out
}

/// An echo request turned into its reply in place: addresses swapped, TTL / hop limit reset,
/// type changed, checksums updated incrementally; the frame keeps its length (padding too).
pub(super) fn echo_reply(frame: &[u8], p: &Packet, our_mac: [u8; 6]) -> Vec<u8> {
    let mut out = l2_back(frame, p.l3, our_mac);
    out.extend_from_slice(&frame[p.l3..]);
    let ip = p.l3;
    let icmp = p.l3 + p.hlen;
    if p.family == Family::V4 {
        out[ip + 12..ip + 16].copy_from_slice(&frame[ip + 16..ip + 20]);
        out[ip + 16..ip + 20].copy_from_slice(&frame[ip + 12..ip + 16]);
        // TTL shares a checksummed word with the protocol; the swap changes no sum.
        let ttl_proto = u16::from_be_bytes([ORIGIN_TTL, frame[ip + 9]]);
        set_word(&mut out, ip + 8, ttl_proto, ip + 10);
        // Echo reply: type 0, code 0.
        set_word(&mut out, icmp, 0, icmp + 2);
    } else {
        out[ip + 8..ip + 24].copy_from_slice(&frame[ip + 24..ip + 40]);
        out[ip + 24..ip + 40].copy_from_slice(&frame[ip + 8..ip + 24]);
        // The hop limit is not in the ICMPv6 pseudo-header; swapped addresses sum the same.
        out[ip + 7] = ORIGIN_TTL;
        set_word(&mut out, icmp, 129 << 8, icmp + 2);
    }
    out
}

/// ICMP "fragmentation needed" (IPv4) or ICMPv6 "packet too big" from the VIP to the client,
/// announcing `mtu`, quoting the start of the packet.
pub(super) fn too_big(frame: &[u8], p: &Packet, mtu: usize, our_mac: [u8; 6]) -> Vec<u8> {
    let mut out = l2_back(frame, p.l3, our_mac);
    let ip = &frame[p.l3..];
    if p.family == Family::V4 {
        // RFC 792: the IP header and the first 8 bytes of its payload.
        let quote = &ip[..p.hlen + 8];
        let icmp = Icmpv4Header::with_checksum(
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: mtu as u16,
            }),
            quote,
        );
        let mut h = Ipv4Header::new(
            (icmp.header_len() + quote.len()) as u16,
            ORIGIN_TTL,
            IpNumber::ICMP,
            p.dst[..4].try_into().unwrap(),
            p.src[..4].try_into().unwrap(),
        )
        .unwrap();
        h.dscp = Ipv4Dscp::try_new(ICMP_TOS >> 2).unwrap();
        h.ecn = Ipv4Ecn::try_new(ICMP_TOS & 3).unwrap();
        h.identification = 0;
        h.dont_fragment = false;
        h.header_checksum = h.calc_header_checksum();
        out.extend_from_slice(&h.to_bytes());
        out.extend_from_slice(&icmp.to_bytes());
        out.extend_from_slice(quote);
    } else {
        let quote = &ip[..ICMPV6_QUOTE];
        let icmp = Icmpv6Header::with_checksum(
            Icmpv6Type::PacketTooBig { mtu: mtu as u32 },
            p.dst,
            p.src,
            quote,
        )
        .unwrap();
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: (icmp.header_len() + quote.len()) as u16,
            next_header: IpNumber::IPV6_ICMP,
            hop_limit: ORIGIN_TTL,
            source: p.dst,
            destination: p.src,
        };
        out.extend_from_slice(&h.to_bytes());
        out.extend_from_slice(&icmp.to_bytes());
        out.extend_from_slice(quote);
    }
    out
}

/// Second chance in `l2`: the client's IPv4 ID (DF set only; checksum updated) or IPv6 flow
/// label carries the mark of `previous`, the ring slot's previous owner.
pub(super) fn mark(out: &mut [u8], p: &Packet, previous: u32) {
    let ip = p.l3;
    if p.family == Family::V4 {
        if p.df {
            set_word(out, ip + 4, ipv4_id_mark(previous), ip + 10);
        }
    } else {
        let label = flow_label_mark(previous);
        out[ip + 1] = (out[ip + 1] & 0xf0) | (label >> 16) as u8;
        out[ip + 2] = (label >> 8) as u8;
        out[ip + 3] = label as u8;
    }
}

/// The frame as `ipip` sends it: L2 header toward the next hop (tag kept, EtherType of the
/// outer family), the outer header, then everything from the IP header to the frame's end.
pub(super) fn encapsulate(
    frame: &[u8],
    p: &Packet,
    hash: u32,
    previous: Option<u32>,
    backend: &Backend,
    s: &Settings,
) -> Vec<u8> {
    // `hash` is always the full 5-tuple's (`flow_hash(key, false)`, remembered with the flow):
    // it only spreads tunnels over the backend's queues.
    let inner = if p.family == Family::V4 {
        IpNumber::IPV4
    } else {
        IpNumber::IPV6
    };
    let mut out = frame[..p.l3].to_vec();
    out[0..6].copy_from_slice(&backend.mac);
    out[6..12].copy_from_slice(&s.mac);
    let ether_type = if backend.family == Family::V4 {
        let host = u32::from_be_bytes(s.tunnel_src4_host);
        let src = (u32::from_be_bytes(s.tunnel_src4) & !host) | (hash & host);
        let mut h = Ipv4Header::new(
            p.ip_len as u16,
            ORIGIN_TTL,
            inner,
            src.to_be_bytes(),
            backend.addr[..4].try_into().unwrap(),
        )
        .unwrap();
        h.dscp = Ipv4Dscp::try_new(p.tos >> 2).unwrap();
        h.ecn = Ipv4Ecn::try_new(p.tos & 3).unwrap();
        // Second chance: the previous owner's mark, or 0.
        h.identification = previous.map_or(0, ipv4_id_mark);
        h.dont_fragment = true;
        h.header_checksum = h.calc_header_checksum();
        out.extend_from_slice(&h.to_bytes());
        EtherType::IPV4
    } else {
        let host = u32::from_be_bytes(s.tunnel_src6_host);
        let mut src = s.tunnel_src6;
        let last = u32::from_be_bytes(src[12..16].try_into().unwrap());
        src[12..16].copy_from_slice(&((last & !host) | (hash & host)).to_be_bytes());
        let h = Ipv6Header {
            traffic_class: p.tos,
            flow_label: Ipv6FlowLabel::try_new(previous.map_or(hash & 0xf_ffff, flow_label_mark))
                .unwrap(),
            payload_length: p.ip_len as u16,
            next_header: inner,
            hop_limit: ORIGIN_TTL,
            source: src,
            destination: backend.addr,
        };
        out.extend_from_slice(&h.to_bytes());
        EtherType::IPV6
    };
    out[p.l3 - 2..p.l3].copy_from_slice(&ether_type.0.to_be_bytes());
    out.extend_from_slice(&frame[p.l3..]);
    out
}

//! Packet parsing: what a frame is (TCP/UDP flow, ICMP error, echo request, fragment) and where.
//!
//! [`link`], [`ipv4`] and [`ipv6`] are the header checks every program makes the same way:
//! the balancer's [`parse`] and decap's outer and inner headers both go through them.

use aya_ebpf::programs::XdpContext;
use lb_common::{Family, FlowKey, Outcome, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::wire::{eth, frame_len, icmp, ipv4, ipv6, ptr_at, transport};

/// A frame's link layer: Ethernet with at most one 802.1Q tag.
#[derive(Clone, Copy)]
pub struct Link {
    /// The EtherType of what follows, in host order: the frame's, or the tag's inner one.
    pub ether_type: u16,
    /// Offset of the network header, which is the L2 header's length: `eth::HLEN`, or
    /// `eth::TAGGED_HLEN` behind a tag.
    pub l3: usize,
}

/// Reads the Ethernet header and one 802.1Q tag if there is one. `None`: the frame is shorter
/// than that.
#[inline(always)]
pub fn link(ctx: &XdpContext) -> Option<Link> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // `ether_type` holds the wire bytes; compare in host order.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3 = EthHdr::LEN;
    if ether_type == eth::P_8021Q {
        let tag = unsafe { *ptr_at::<[u8; eth::VLAN_HLEN]>(ctx, l3)? };
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        l3 += eth::VLAN_HLEN;
    }
    Some(Link { ether_type, l3 })
}

/// An IPv4 header whose lengths hold together (see [`ipv4`]).
pub struct Ipv4<'a> {
    pub hdr: &'a Ipv4Hdr,
    /// Header length, options included (IHL × 4: 20..=60).
    pub hlen: usize,
    /// Total length of the packet, header included.
    pub len: usize,
}

impl Ipv4<'_> {
    /// Whether the packet is a fragment, first or not (MF set or a fragment offset).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        u16::from_be_bytes(self.hdr.frags) & (ipv4::MF | ipv4::OFFSET) != 0
    }
}

/// The IPv4 header at `off` if it holds together: version 4, a header length of at least 20
/// bytes, and a total length that covers the header and ends by `end` (the frame's length, or
/// the end of the packet it is tunnelled in). `None` otherwise. The checksum is not verified:
/// the receiving kernel does that.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, off: usize, end: usize) -> Option<Ipv4<'_>> {
    let hdr = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, off)? };
    let hlen = (hdr.vihl & 0x0f) as usize * 4;
    let len = u16::from_be_bytes(hdr.tot_len) as usize;
    if hdr.vihl >> 4 != 4 || hlen < Ipv4Hdr::LEN || len < hlen || off + len > end {
        return None;
    }
    Some(Ipv4 { hdr, hlen, len })
}

/// An IPv6 fixed header whose length holds together (see [`ipv6`]).
pub struct Ipv6<'a> {
    pub hdr: &'a Ipv6Hdr,
    /// Length of the packet: the 40-byte fixed header plus the payload length.
    pub len: usize,
}

/// The IPv6 header at `off` if it holds together: version 6 and a payload that ends by `end`
/// (as for [`ipv4`]). `None` otherwise.
#[inline(always)]
pub fn ipv6(ctx: &XdpContext, off: usize, end: usize) -> Option<Ipv6<'_>> {
    let hdr = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, off)? };
    let len = Ipv6Hdr::LEN + u16::from_be_bytes(hdr.payload_len) as usize;
    if hdr.vcf[0] >> 4 != 6 || off + len > end {
        return None;
    }
    Some(Ipv6 { hdr, len })
}

/// What kind of packet [`parse`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP or UDP: `key` is its 5-tuple.
    Flow,
    /// An ICMP/ICMPv6 error (destination unreachable, packet too big, time exceeded,
    /// parameter problem) quoting a TCP/UDP packet sent *from* the ICMP's destination: `key`
    /// is the quoted flow reversed, i.e. the client→VIP direction the flow table knows.
    IcmpError,
    /// An ICMP/ICMPv6 echo request: `key` has only the destination and family.
    EchoRequest,
    /// A fragment (IPv4 MF or offset, IPv6 fragment header): `key` has only the destination
    /// and family; only a first fragment has ports, and only by luck.
    Fragment,
}

/// Where a parsed packet's headers are, and what the forwarding code needs from them.
pub struct Parsed {
    pub kind: Kind,
    pub key: FlowKey,
    /// Offset of the IP header (14, or 18 behind an 802.1Q tag): the L2 header's length.
    pub l3: usize,
    /// Offset of the L4 header (ICMP header for echo requests and errors).
    pub l4: usize,
    /// IP packet length, header included (IPv4 total length, IPv6 40 + payload length).
    pub ip_len: usize,
    /// IPv4 TOS / IPv6 traffic class, copied to an outer header.
    pub tos: u8,
    /// IPv4 "don't fragment" (always true for IPv6, which routers never fragment).
    pub df: bool,
}

/// Parses Ethernet (with at most one 802.1Q tag), IPv4 or IPv6, and TCP/UDP ports or the
/// ICMP message that matters to the balancer.
///
/// Errors say why the packet is not one of [`Kind`]: `PassNotIp`, `PassNotVip` (an IP
/// protocol no VIP can have, ICMP messages other than echo requests and errors that quote a
/// TCP/UDP packet), `PassUnsupported` (an IPv6 extension header other than a fragment
/// header) or `DropMalformed` (IP/TCP/UDP headers that contradict themselves, the IP length or
/// the frame length). IP header checksums are not verified: the backend's kernel does that.
/// ICMP messages that cannot be read are `PassNotVip`: the stack judges them.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, Outcome> {
    let Link { ether_type, l3 } = link(ctx).ok_or(Outcome::PassNotIp)?;
    let frame = frame_len(ctx);
    let mut p = Parsed {
        kind: Kind::Flow,
        key: FlowKey::default(),
        l3,
        l4: 0,
        ip_len: 0,
        tos: 0,
        df: true,
    };
    let proto;
    match ether_type {
        eth::P_IP => {
            let ip = ipv4(ctx, l3, frame).ok_or(Outcome::DropMalformed)?;
            p.key.family = Family::V4;
            p.key.dst = v4_addr(ip.hdr.dst_addr);
            p.ip_len = ip.len;
            p.tos = ip.hdr.tos;
            // Fragments first, whatever their protocol: a non-first fragment's "protocol" says
            // nothing about ports.
            p.df = u16::from_be_bytes(ip.hdr.frags) & ipv4::DF != 0;
            if ip.is_fragment() {
                p.kind = Kind::Fragment;
                return Ok(p);
            }
            p.key.src = v4_addr(ip.hdr.src_addr);
            p.l4 = l3 + ip.hlen;
            proto = ip.hdr.proto;
        }
        eth::P_IPV6 => {
            let ip = ipv6(ctx, l3, frame).ok_or(Outcome::DropMalformed)?;
            let hdr = ip.hdr;
            p.key.family = Family::V6;
            p.key.dst = v6_addr(&hdr.dst_addr);
            p.ip_len = ip.len;
            p.tos = (hdr.vcf[0] << 4) | (hdr.vcf[1] >> 4);
            match hdr.next_hdr {
                IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6 => {}
                ipv6::EXT_FRAGMENT => {
                    p.kind = Kind::Fragment;
                    return Ok(p);
                }
                // Hop-by-hop, routing, destination options, AH, mobility, HIP, shim6: the
                // ports are further in; this version does not walk extension headers.
                ipv6::EXT_HOP_BY_HOP
                | ipv6::EXT_ROUTING
                | ipv6::EXT_DEST_OPTIONS
                | ipv6::EXT_AH
                | ipv6::EXT_MOBILITY
                | ipv6::EXT_HIP
                | ipv6::EXT_SHIM6 => return Err(Outcome::PassUnsupported),
                _ => return Err(Outcome::PassNotVip),
            }
            p.key.src = v6_addr(&hdr.src_addr);
            p.l4 = l3 + Ipv6Hdr::LEN;
            proto = hdr.next_hdr;
        }
        _ => return Err(Outcome::PassNotIp),
    }
    let l3_end = l3 + p.ip_len;
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            p.key.proto = proto;
            ports(ctx, p.l4, l3_end, proto, &mut p.key.sport, &mut p.key.dport)
                .ok_or(Outcome::DropMalformed)?;
        }
        IPPROTO_ICMP if p.key.family == Family::V4 => icmp4(ctx, &mut p, l3_end)?,
        IPPROTO_ICMPV6 if p.key.family == Family::V6 => icmp6(ctx, &mut p, l3_end)?,
        _ => return Err(Outcome::PassNotVip),
    }
    Ok(p)
}

/// An IPv4 address as a key's 16-byte address (in the first 4 bytes), built as two words.
/// The packet's bytes are read one by one (nothing says they are aligned), but a key field
/// written whole as words is copied as words when `parse` returns; written bytewise, the
/// compiler kept and copied it byte by byte (~50 BPF instructions per packet).
#[inline(always)]
fn v4_addr(a: [u8; 4]) -> [u8; 16] {
    words_to_addr([u32::from_ne_bytes(a) as u64, 0])
}

/// An IPv6 address as a key's address, built as two words (see [`v4_addr`]).
#[inline(always)]
fn v6_addr(a: &[u8; 16]) -> [u8; 16] {
    let lo = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let hi = u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    words_to_addr([lo, hi])
}

#[inline(always)]
fn words_to_addr(w: [u64; 2]) -> [u8; 16] {
    // SAFETY: both are 16 plain bytes; native byte order on both sides keeps the wire order.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(w) }
}

/// Reads the ports of a TCP/UDP header at `l4` in an IP packet ending at `l3_end`, checking
/// the header against that length. `None` when the header contradicts it.
#[inline(always)]
fn ports(
    ctx: &XdpContext,
    l4: usize,
    l3_end: usize,
    proto: u8,
    sport: &mut [u8; 2],
    dport: &mut [u8; 2],
) -> Option<()> {
    if proto == IPPROTO_TCP {
        if l4 + transport::TCP_MIN_HLEN > l3_end {
            return None;
        }
        let tcp = unsafe { &*ptr_at::<[u8; transport::TCP_MIN_HLEN]>(ctx, l4)? };
        // Data offset below 5 words is not a TCP header; one past the IP packet contradicts
        // the IP length (the kernel drops both).
        let doff = (tcp[transport::TCP_DOFF] >> 4) as usize * 4;
        if doff < transport::TCP_MIN_HLEN || l4 + doff > l3_end {
            return None;
        }
        *sport = [tcp[0], tcp[1]];
        *dport = [tcp[2], tcp[3]];
    } else {
        if l4 + transport::UDP_HLEN > l3_end {
            return None;
        }
        let udp = unsafe { &*ptr_at::<[u8; transport::UDP_HLEN]>(ctx, l4)? };
        // The UDP length must cover its own header and stay inside the IP packet.
        let len = u16::from_be_bytes([
            udp[transport::UDP_LEN.start],
            udp[transport::UDP_LEN.start + 1],
        ]) as usize;
        if len < transport::UDP_HLEN || l4 + len > l3_end {
            return None;
        }
        *sport = [udp[0], udp[1]];
        *dport = [udp[2], udp[3]];
    }
    Some(())
}

/// ICMPv4: echo requests, and errors (3 unreachable incl. "fragmentation needed", 11 time
/// exceeded, 12 parameter problem) quoting a TCP/UDP packet whose source is this packet's
/// destination. Only the quoted ports are needed (RFC 792 quotes 8 bytes of L4), so a
/// quoted TCP header is not checked further.
#[inline(always)]
fn icmp4(ctx: &XdpContext, p: &mut Parsed, l3_end: usize) -> Result<(), Outcome> {
    if p.l4 + icmp::HLEN > l3_end {
        return Err(Outcome::PassNotVip);
    }
    let message = unsafe { &*ptr_at::<[u8; icmp::HLEN]>(ctx, p.l4).ok_or(Outcome::PassNotVip)? };
    match (message[icmp::TYPE], message[icmp::CODE]) {
        (icmp::V4_ECHO_REQUEST, 0) => {
            p.kind = Kind::EchoRequest;
            return Ok(());
        }
        (icmp::V4_DEST_UNREACH | icmp::V4_TIME_EXCEEDED | icmp::V4_PARAMETER_PROBLEM, _) => {}
        _ => return Err(Outcome::PassNotVip),
    }
    let q = p.l4 + icmp::HLEN;
    let qip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, q).ok_or(Outcome::PassNotVip)? };
    let qihl = (qip.vihl & 0x0f) as usize * 4;
    if qip.vihl >> 4 != 4 || qihl < Ipv4Hdr::LEN {
        return Err(Outcome::PassNotVip);
    }
    if qip.src_addr != p.key.dst[..4] {
        return Err(Outcome::PassNotVip);
    }
    if u16::from_be_bytes(qip.frags) & ipv4::OFFSET != 0 {
        // A later fragment has no ports to find the flow by.
        return Err(Outcome::PassUnsupported);
    }
    quoted_flow(ctx, p, q + qihl, l3_end, qip.proto, qip.dst_addr, 4)
}

/// ICMPv6: echo requests and errors (1 unreachable, 2 packet too big, 3 time exceeded,
/// 4 parameter problem) quoting a TCP/UDP packet without extension headers whose source is
/// this packet's destination. Neighbour discovery and MLD are `PassNotVip`.
#[inline(always)]
fn icmp6(ctx: &XdpContext, p: &mut Parsed, l3_end: usize) -> Result<(), Outcome> {
    if p.l4 + icmp::HLEN > l3_end {
        return Err(Outcome::PassNotVip);
    }
    let message = unsafe { &*ptr_at::<[u8; icmp::HLEN]>(ctx, p.l4).ok_or(Outcome::PassNotVip)? };
    match (message[icmp::TYPE], message[icmp::CODE]) {
        (icmp::V6_ECHO_REQUEST, 0) => {
            p.kind = Kind::EchoRequest;
            return Ok(());
        }
        (
            icmp::V6_DEST_UNREACH
            | icmp::V6_PACKET_TOO_BIG
            | icmp::V6_TIME_EXCEEDED
            | icmp::V6_PARAMETER_PROBLEM,
            _,
        ) => {}
        _ => return Err(Outcome::PassNotVip),
    }
    let q = p.l4 + icmp::HLEN;
    let qip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, q).ok_or(Outcome::PassNotVip)? };
    if qip.vcf[0] >> 4 != 6 || qip.src_addr != p.key.dst {
        return Err(Outcome::PassNotVip);
    }
    quoted_flow(
        ctx,
        p,
        q + Ipv6Hdr::LEN,
        l3_end,
        qip.next_hdr,
        qip.dst_addr,
        16,
    )
}

/// Fills `p.key` with the flow an ICMP error quotes, reversed: the quoted packet went VIP →
/// client, the flow table knows client → VIP. `client` is the quoted destination (`len`
/// significant bytes). The quoted L4 header only needs its ports inside the ICMP message.
#[inline(always)]
fn quoted_flow<const N: usize>(
    ctx: &XdpContext,
    p: &mut Parsed,
    ql4: usize,
    l3_end: usize,
    proto: u8,
    client: [u8; N],
    len: usize,
) -> Result<(), Outcome> {
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Outcome::PassNotVip);
    }
    if ql4 + 4 > l3_end {
        return Err(Outcome::PassNotVip);
    }
    let ports = unsafe { &*ptr_at::<[u8; 4]>(ctx, ql4).ok_or(Outcome::PassNotVip)? };
    p.key.src = [0; 16];
    p.key.src[..len].copy_from_slice(&client[..len]);
    p.key.sport = [ports[2], ports[3]];
    p.key.dport = [ports[0], ports[1]];
    p.key.proto = proto;
    p.kind = Kind::IcmpError;
    Ok(())
}

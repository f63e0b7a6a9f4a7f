//! Packet parsing: what a frame is (a TCP/UDP flow, an ICMP error quoting one, an echo request, a fragment) and where its headers are, or why it is none of those.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Family, FlowKey, Outcome, Settings, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const VLAN_HLEN: usize = 4;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// IPv4 "more fragments" flag and fragment-offset mask in the host-order `frags` field.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// IPv4 "don't fragment" flag in the host-order `frags` field.
const IP_DF: u16 = 0x4000;
const ICMP_HLEN: usize = 8;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const IPV6_FRAGMENT: u8 = 44;

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

/// The Ethernet header, for rewriting. `None` only if the frame is shorter than 14 bytes.
#[inline(always)]
pub fn eth_mut(ctx: &XdpContext) -> Option<*mut EthHdr> {
    ptr_at::<EthHdr>(ctx, 0)
}

/// Whether the frame is addressed to this balancer: VIP traffic reaches us addressed to our
/// unicast MAC (or the virtual MAC we answer for). A group frame (broadcast, multicast) is
/// not ours to bounce, and neither is a frame for another host that a switch flooded to us:
/// rewriting it would send it on with that host's MAC as our source.
///
/// Returns the settings it read them from, which the rewrite then uses for our source MAC.
#[inline(always)]
pub fn addressed_to_us(ctx: &XdpContext) -> Result<&'static Settings, Outcome> {
    let s = crate::lookup::settings().ok_or(Outcome::PassOtherHost)?;
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Outcome::DropMalformed)?;
    let dst = unsafe { (*eth).dst_addr };
    if dst[0] & 1 == 1 {
        return Err(Outcome::PassNotUnicast);
    }
    // An all-zero MAC is "not set": it never matches, so unset settings balance nothing.
    let ours = |m: [u8; 6]| m != [0; 6] && m == dst;
    if ours(s.mac) || ours(s.virtual_mac) {
        Ok(s)
    } else {
        Err(Outcome::PassOtherHost)
    }
}

/// Length of the whole frame as received, for byte counters.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
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
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Outcome::PassNotIp)?;
    // `ether_type` holds the wire bytes; compare in host order.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q {
        let inner = ptr_at::<[u8; 4]>(ctx, l3).ok_or(Outcome::PassNotIp)?;
        let tag = unsafe { *inner };
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        l3 += VLAN_HLEN;
    }
    let frame = ctx.data_end() - ctx.data();
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
        ETH_P_IP => {
            let ip = ptr_at::<Ipv4Hdr>(ctx, l3).ok_or(Outcome::DropMalformed)?;
            let ip = unsafe { &*ip };
            let ihl = (ip.vihl & 0x0f) as usize * 4;
            let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
            if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl || l3 + tot_len > frame {
                return Err(Outcome::DropMalformed);
            }
            p.key.family = Family::V4;
            p.key.dst[..4].copy_from_slice(&ip.dst_addr);
            p.ip_len = tot_len;
            p.tos = ip.tos;
            // Fragments first, whatever their protocol: a non-first fragment's "protocol" says
            // nothing about ports.
            let frags = u16::from_be_bytes(ip.frags);
            p.df = frags & IP_DF != 0;
            if frags & (IP_MF | IP_OFFSET) != 0 {
                p.kind = Kind::Fragment;
                return Ok(p);
            }
            p.key.src[..4].copy_from_slice(&ip.src_addr);
            p.l4 = l3 + ihl;
            proto = ip.proto;
        }
        ETH_P_IPV6 => {
            let ip = ptr_at::<Ipv6Hdr>(ctx, l3).ok_or(Outcome::DropMalformed)?;
            let ip = unsafe { &*ip };
            let payload = u16::from_be_bytes(ip.payload_len) as usize;
            if ip.vcf[0] >> 4 != 6 || l3 + Ipv6Hdr::LEN + payload > frame {
                return Err(Outcome::DropMalformed);
            }
            p.key.family = Family::V6;
            p.key.dst = ip.dst_addr;
            p.ip_len = Ipv6Hdr::LEN + payload;
            p.tos = (ip.vcf[0] << 4) | (ip.vcf[1] >> 4);
            match ip.next_hdr {
                IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6 => {}
                IPV6_FRAGMENT => {
                    p.kind = Kind::Fragment;
                    return Ok(p);
                }
                // Hop-by-hop, routing, destination options, AH, mobility, HIP, shim6: the
                // ports are further in; this version does not walk extension headers.
                0 | 43 | 60 | 51 | 135 | 139 | 140 => return Err(Outcome::PassUnsupported),
                _ => return Err(Outcome::PassNotVip),
            }
            p.key.src = ip.src_addr;
            p.l4 = l3 + Ipv6Hdr::LEN;
            proto = ip.next_hdr;
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
        if l4 + TCP_MIN_HLEN > l3_end {
            return None;
        }
        let tcp = unsafe { &*ptr_at::<[u8; TCP_MIN_HLEN]>(ctx, l4)? };
        // Data offset below 5 words is not a TCP header; one past the IP packet contradicts
        // the IP length (the kernel drops both).
        let doff = (tcp[12] >> 4) as usize * 4;
        if doff < TCP_MIN_HLEN || l4 + doff > l3_end {
            return None;
        }
        *sport = [tcp[0], tcp[1]];
        *dport = [tcp[2], tcp[3]];
    } else {
        if l4 + UDP_HLEN > l3_end {
            return None;
        }
        let udp = unsafe { &*ptr_at::<[u8; UDP_HLEN]>(ctx, l4)? };
        // The UDP length must cover its own header and stay inside the IP packet.
        let len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
        if len < UDP_HLEN || l4 + len > l3_end {
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
    if p.l4 + ICMP_HLEN > l3_end {
        return Err(Outcome::PassNotVip);
    }
    let icmp = unsafe { &*ptr_at::<[u8; ICMP_HLEN]>(ctx, p.l4).ok_or(Outcome::PassNotVip)? };
    match (icmp[0], icmp[1]) {
        (ICMP_ECHO_REQUEST, 0) => {
            p.kind = Kind::EchoRequest;
            return Ok(());
        }
        (3 | 11 | 12, _) => {}
        _ => return Err(Outcome::PassNotVip),
    }
    let q = p.l4 + ICMP_HLEN;
    let qip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, q).ok_or(Outcome::PassNotVip)? };
    let qihl = (qip.vihl & 0x0f) as usize * 4;
    if qip.vihl >> 4 != 4 || qihl < Ipv4Hdr::LEN {
        return Err(Outcome::PassNotVip);
    }
    if qip.src_addr != p.key.dst[..4] {
        return Err(Outcome::PassNotVip);
    }
    if u16::from_be_bytes(qip.frags) & IP_OFFSET != 0 {
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
    if p.l4 + ICMP_HLEN > l3_end {
        return Err(Outcome::PassNotVip);
    }
    let icmp = unsafe { &*ptr_at::<[u8; ICMP_HLEN]>(ctx, p.l4).ok_or(Outcome::PassNotVip)? };
    match (icmp[0], icmp[1]) {
        (ICMPV6_ECHO_REQUEST, 0) => {
            p.kind = Kind::EchoRequest;
            return Ok(());
        }
        (1..=4, _) => {}
        _ => return Err(Outcome::PassNotVip),
    }
    let q = p.l4 + ICMP_HLEN;
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

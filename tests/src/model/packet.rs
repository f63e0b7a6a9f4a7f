//! The model's parser, written from the datapath's documented rules rather than its code.

use super::*;

/// IPv6 next-header values the datapath documents as extension headers it does not walk.
pub(super) const IPV6_EXT_HEADERS: [IpNumber; 8] = [
    ip_number::IPV6_HOP_BY_HOP,
    ip_number::IPV6_ROUTE,
    ip_number::IPV6_FRAG,
    ip_number::IPV6_DEST_OPTIONS,
    ip_number::AUTH,
    ip_number::MOBILITY,
    ip_number::HIP,
    ip_number::SHIM6,
];

/// Where the L3 header starts and which EtherType it has: Ethernet with at most one 802.1Q
/// tag. A frame too short for either is not IP.
pub(super) fn l3_of(frame: &[u8]) -> Result<(usize, EtherType), Counter> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Counter::PassNotIp)?;
    let mut l3 = eth.slice().len();
    let mut ether_type = eth.ether_type();
    // Only the 802.1Q TPID; 802.1ad (0x88a8) and a second tag are "not IP" by the rules.
    if ether_type == EtherType::VLAN_TAGGED_FRAME {
        let tag =
            SingleVlanHeaderSlice::from_slice(&frame[l3..]).map_err(|_| Counter::PassNotIp)?;
        ether_type = tag.ether_type();
        l3 += tag.slice().len();
    }
    Ok((l3, ether_type))
}

/// What the IPv4/IPv6 header says, after the checks the datapath documents for it.
pub(super) struct Ip {
    pub(super) family: Family,
    pub(super) proto: IpNumber,
    pub(super) src: [u8; 16],
    pub(super) dst: [u8; 16],
    /// Header length: where the L4 header starts in the IP packet.
    pub(super) hlen: usize,
    /// IP packet length, header included (total length / 40 + payload length).
    pub(super) len: usize,
    /// IPv4 TOS / IPv6 traffic class.
    pub(super) tos: u8,
    /// IPv4 DF; always true for IPv6.
    pub(super) df: bool,
    /// IPv4 MF or fragment offset, or an IPv6 fragment header.
    pub(super) fragment: bool,
}

pub(super) fn ipv4(ip: &[u8]) -> Result<Ip, Counter> {
    // Version 4, IHL ≥ 5, at least 20 bytes (and the options) present.
    let h = Ipv4HeaderSlice::from_slice(ip).map_err(|_| Counter::DropMalformed)?;
    let hlen = h.slice().len();
    let len = usize::from(h.total_len());
    if len < hlen || len > ip.len() {
        return Err(Counter::DropMalformed);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&h.source());
    dst[..4].copy_from_slice(&h.destination());
    Ok(Ip {
        family: Family::V4,
        proto: h.protocol(),
        src,
        dst,
        hlen,
        len,
        tos: (h.dcp().value() << 2) | h.ecn().value(),
        df: h.dont_fragment(),
        fragment: h.is_fragmenting_payload(),
    })
}

pub(super) fn ipv6(ip: &[u8]) -> Result<Ip, Counter> {
    let h = Ipv6HeaderSlice::from_slice(ip).map_err(|_| Counter::DropMalformed)?;
    let hlen = h.slice().len();
    let len = hlen + usize::from(h.payload_length());
    if len > ip.len() {
        return Err(Counter::DropMalformed);
    }
    Ok(Ip {
        family: Family::V6,
        proto: h.next_header(),
        src: h.source(),
        dst: h.destination(),
        hlen,
        len,
        tos: h.traffic_class(),
        df: true,
        fragment: h.next_header() == ip_number::IPV6_FRAG,
    })
}

/// The source and destination ports, if the L4 header fits in the IP packet: the whole TCP
/// header (data offset ≥ 5, all of it inside the IP packet; etherparse's strict TCP slice checks
/// exactly that) or a UDP header whose length field is at least 8 and inside the IP packet.
pub(super) fn ports(proto: IpNumber, l4: &[u8]) -> Result<(u16, u16), Counter> {
    if proto == IpNumber::TCP {
        let t = TcpHeaderSlice::from_slice(l4).map_err(|_| Counter::DropMalformed)?;
        Ok((t.source_port(), t.destination_port()))
    } else {
        // etherparse's `UdpSlice` accepts length 0 (IPv6 jumbograms) and lengths past the
        // slice in some cases; the rule is Linux's `udp_rcv`: 8 ≤ length ≤ what the IP
        // packet carries.
        let u = UdpHeaderSlice::from_slice(l4).map_err(|_| Counter::DropMalformed)?;
        let len = usize::from(u.length());
        if len < 8 || len > l4.len() {
            return Err(Counter::DropMalformed);
        }
        Ok((u.source_port(), u.destination_port()))
    }
}

/// An ICMP/ICMPv6 message (`from_ip` is the frame from the IP header on): an echo request,
/// an error quoting a TCP/UDP packet sent from this packet's destination, or why neither.
pub(super) fn icmp(from_ip: &[u8], ip: &Ip) -> Result<Kind, Counter> {
    let msg = &from_ip[ip.hlen..ip.len];
    let v4 = ip.family == Family::V4;
    let (icmp_type, code) = if v4 {
        let m = Icmpv4Slice::from_slice(msg).map_err(|_| Counter::PassNotVip)?;
        (m.type_u8(), m.code_u8())
    } else {
        let m = Icmpv6Slice::from_slice(msg).map_err(|_| Counter::PassNotVip)?;
        (m.type_u8(), m.code_u8())
    };
    let (echo, error) = if v4 {
        (8, matches!(icmp_type, 3 | 11 | 12))
    } else {
        (128, (1..=4).contains(&icmp_type))
    };
    if icmp_type == echo && code == 0 {
        return Ok(Kind::EchoRequest);
    }
    if !error {
        return Err(Counter::PassNotVip);
    }
    // The quoted IP header follows the 8-byte ICMP header; only its fixed part has to be in
    // the frame (see the module docs).
    let q = ip.hlen + 8;
    let (qsrc, qdst, qproto, qhlen) = if v4 {
        let h = from_ip.get(q..q + 20).ok_or(Counter::PassNotVip)?;
        let qhlen = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || qhlen < 20 {
            return Err(Counter::PassNotVip);
        }
        let mut qsrc = [0u8; 16];
        let mut qdst = [0u8; 16];
        qsrc[..4].copy_from_slice(&h[12..16]);
        qdst[..4].copy_from_slice(&h[16..20]);
        if qsrc != ip.dst {
            return Err(Counter::PassNotVip);
        }
        // A later fragment has no ports (MF alone is a first fragment: it has them).
        if word(h, 6) & 0x1fff != 0 {
            return Err(Counter::PassUnsupported);
        }
        (qsrc, qdst, IpNumber(h[9]), qhlen)
    } else {
        let h = Ipv6HeaderSlice::from_slice(&from_ip[q..]).map_err(|_| Counter::PassNotVip)?;
        if h.source() != ip.dst {
            return Err(Counter::PassNotVip);
        }
        (
            h.source(),
            h.destination(),
            h.next_header(),
            h.slice().len(),
        )
    };
    if qproto != IpNumber::TCP && qproto != IpNumber::UDP {
        return Err(Counter::PassNotVip);
    }
    // Only the quoted ports are needed: they must be inside the outer IP packet.
    let at = q + qhlen;
    if at + 4 > ip.len {
        return Err(Counter::PassNotVip);
    }
    let quoted_ports = &from_ip[at..at + 4];
    // Reversed: the quoted packet went VIP → client, the flow table knows client → VIP.
    Ok(Kind::IcmpError(FlowKey {
        src: qdst,
        dst: qsrc,
        sport: [quoted_ports[2], quoted_ports[3]],
        dport: [quoted_ports[0], quoted_ports[1]],
        proto: qproto.0,
        family: ip.family,
        _pad: [0; 2],
    }))
}

/// What kind of IP packet a frame holds, for the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// TCP or UDP with this 5-tuple.
    Flow(FlowKey),
    /// An ICMP/ICMPv6 error quoting a TCP/UDP packet: the quoted flow reversed (client →
    /// VIP, as the flow table knows it).
    IcmpError(FlowKey),
    /// An ICMP/ICMPv6 echo request.
    EchoRequest,
    /// An IPv4 fragment (MF or offset) or an IPv6 packet with a fragment header.
    Fragment,
}

/// A frame the datapath can act on: its kind and what the rewrites need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub kind: Kind,
    /// [`Family::V4`] or [`Family::V6`].
    pub family: Family,
    /// IP source and destination (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Where the IP header starts (the L2 header's length).
    pub l3: usize,
    /// IP header length (IPv4 with options; 40 for IPv6).
    pub hlen: usize,
    /// IP packet length, header included.
    pub ip_len: usize,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// IPv4 DF (true for IPv6).
    pub df: bool,
}

/// What a frame is to the datapath, or the outcome counter saying why it is nothing it acts on.
pub fn parse(frame: &[u8]) -> Result<Packet, Counter> {
    let (l3, ether_type) = l3_of(frame)?;
    let from_ip = &frame[l3..];
    let ip = match ether_type {
        EtherType::IPV4 => ipv4(from_ip)?,
        EtherType::IPV6 => ipv6(from_ip)?,
        _ => return Err(Counter::PassNotIp),
    };
    // Fragments before the protocol: a later fragment's protocol says nothing about ports.
    let kind = if ip.fragment {
        Kind::Fragment
    } else if ip.proto == IpNumber::TCP || ip.proto == IpNumber::UDP {
        let (sport, dport) = ports(ip.proto, &from_ip[ip.hlen..ip.len])?;
        Kind::Flow(FlowKey {
            src: ip.src,
            dst: ip.dst,
            sport: sport.to_be_bytes(),
            dport: dport.to_be_bytes(),
            proto: ip.proto.0,
            family: ip.family,
            _pad: [0; 2],
        })
    } else if (ip.family, ip.proto) == (Family::V4, IpNumber::ICMP)
        || (ip.family, ip.proto) == (Family::V6, IpNumber::IPV6_ICMP)
    {
        icmp(from_ip, &ip)?
    } else if ip.family == Family::V6 && IPV6_EXT_HEADERS.contains(&ip.proto) {
        return Err(Counter::PassUnsupported);
    } else {
        return Err(Counter::PassNotVip);
    };
    Ok(Packet {
        kind,
        family: ip.family,
        src: ip.src,
        dst: ip.dst,
        l3,
        hlen: ip.hlen,
        ip_len: ip.len,
        tos: ip.tos,
        df: ip.df,
    })
}

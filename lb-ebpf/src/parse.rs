//! Packet parsing: the only code that compares against `data_end`. Produces the flow key of an IPv4/IPv6 TCP/UDP packet or the reason it is not one.

use aya_ebpf::programs::XdpContext;
use lb_common::{Counter, FlowKey, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
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

/// A pointer to a `T` at `off` bytes into the frame, or `None` if the frame is shorter.
/// The explicit `data_end` comparison is what the verifier needs before any packet access.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
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

/// Whether the frame was sent to a group (broadcast or multicast) MAC address: VIP traffic
/// reaches us addressed to our unicast MAC; a group frame is not ours to bounce.
#[inline(always)]
pub fn to_group_mac(ctx: &XdpContext) -> bool {
    match ptr_at::<EthHdr>(ctx, 0) {
        Some(eth) => (unsafe { (*eth).dst_addr[0] } & 1) == 1,
        None => false,
    }
}

/// Length of the whole frame as received, for byte counters.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

/// Parses Ethernet (with at most one 802.1Q tag), IPv4 or IPv6, and the TCP/UDP ports.
///
/// Errors say why the packet is not a balanceable flow: `PassNotIp`, `PassNotVip` (an IP
/// protocol no VIP can have, ESP included), `PassUnsupported` (IPv4 fragment of any protocol,
/// IPv6 extension header) or `DropMalformed` (IP/TCP/UDP headers that contradict themselves,
/// the IP length or the frame length). IP header checksums are not verified: the backend's
/// kernel does that.
#[inline(always)]
pub fn flow_key(ctx: &XdpContext) -> Result<FlowKey, Counter> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Counter::PassNotIp)?;
    // `ether_type` holds the wire bytes; compare in host order.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q {
        let inner = ptr_at::<[u8; 4]>(ctx, l3).ok_or(Counter::PassNotIp)?;
        let tag = unsafe { *inner };
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        l3 += VLAN_HLEN;
    }
    let frame = ctx.data_end() - ctx.data();
    let mut key = FlowKey::default();
    let l4;
    let l3_end;
    match ether_type {
        ETH_P_IP => {
            let ip = ptr_at::<Ipv4Hdr>(ctx, l3).ok_or(Counter::DropMalformed)?;
            let ip = unsafe { &*ip };
            let ihl = (ip.vihl & 0x0f) as usize * 4;
            let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
            if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl || l3 + tot_len > frame {
                return Err(Counter::DropMalformed);
            }
            // Fragments first, whatever their protocol: a non-first fragment's "protocol" says
            // nothing about ports, and the documented rule is "fragments go to the stack".
            let frags = u16::from_be_bytes(ip.frags);
            if frags & (IP_MF | IP_OFFSET) != 0 {
                return Err(Counter::PassUnsupported);
            }
            if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
                return Err(Counter::PassNotVip);
            }
            key.family = AF_INET;
            key.proto = ip.proto;
            key.src[..4].copy_from_slice(&ip.src_addr);
            key.dst[..4].copy_from_slice(&ip.dst_addr);
            l4 = l3 + ihl;
            l3_end = l3 + tot_len;
        }
        ETH_P_IPV6 => {
            let ip = ptr_at::<Ipv6Hdr>(ctx, l3).ok_or(Counter::DropMalformed)?;
            let ip = unsafe { &*ip };
            let payload = u16::from_be_bytes(ip.payload_len) as usize;
            if ip.vcf[0] >> 4 != 6 || l3 + Ipv6Hdr::LEN + payload > frame {
                return Err(Counter::DropMalformed);
            }
            match ip.next_hdr {
                IPPROTO_TCP | IPPROTO_UDP => {}
                // Hop-by-hop, routing, fragment, destination options, AH, mobility, HIP, shim6:
                // the ports are further in; this version does not walk extension headers.
                0 | 43 | 44 | 60 | 51 | 135 | 139 | 140 => return Err(Counter::PassUnsupported),
                _ => return Err(Counter::PassNotVip),
            }
            key.family = AF_INET6;
            key.proto = ip.next_hdr;
            key.src = ip.src_addr;
            key.dst = ip.dst_addr;
            l4 = l3 + Ipv6Hdr::LEN;
            l3_end = l4 + payload;
        }
        _ => return Err(Counter::PassNotIp),
    }
    let l4_min = if key.proto == IPPROTO_TCP {
        TCP_MIN_HLEN
    } else {
        UDP_HLEN
    };
    if l4 + l4_min > l3_end {
        return Err(Counter::DropMalformed);
    }
    if key.proto == IPPROTO_TCP {
        let tcp = ptr_at::<[u8; TCP_MIN_HLEN]>(ctx, l4).ok_or(Counter::DropMalformed)?;
        let tcp = unsafe { &*tcp };
        // Data offset below 5 words is not a TCP header; one past the IP packet contradicts
        // the IP length (the kernel drops both).
        let doff = (tcp[12] >> 4) as usize * 4;
        if doff < TCP_MIN_HLEN || l4 + doff > l3_end {
            return Err(Counter::DropMalformed);
        }
        key.sport = [tcp[0], tcp[1]];
        key.dport = [tcp[2], tcp[3]];
    } else {
        let udp = ptr_at::<[u8; UDP_HLEN]>(ctx, l4).ok_or(Counter::DropMalformed)?;
        let udp = unsafe { &*udp };
        // The UDP length must cover its own header and stay inside the IP packet.
        let len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
        if len < UDP_HLEN || l4 + len > l3_end {
            return Err(Counter::DropMalformed);
        }
        key.sport = [udp[0], udp[1]];
        key.dport = [udp[2], udp[3]];
    }
    Ok(key)
}

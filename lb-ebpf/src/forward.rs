//! What leaves the NIC: a frame rewritten toward its backend (L2 or IP-in-IP), or an ICMP answer (too big, echo reply) sent back to the client.
//!
//! Every public function rewrites the frame for `XDP_TX` (the caller's `Tx*` outcome carries
//! that verdict) or fails with the outcome that ends the packet instead.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    Backend, Family, Outcome, Settings, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_IPV6,
    IPV4_HLEN, IPV6_HLEN, ORIGIN_TTL,
};

use crate::parse::{self, ptr_at, Parsed};

const ETH_P_IP: [u8; 2] = 0x0800u16.to_be_bytes();
const ETH_P_IPV6: [u8; 2] = 0x86DDu16.to_be_bytes();
const ICMP_HLEN: usize = 8;
/// IPv4 "don't fragment", in the wire-order `frags` field.
const IP_DF: [u8; 2] = 0x4000u16.to_be_bytes();
/// Precedence "internetwork control", the TOS Linux gives the ICMP errors it originates.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;
/// How much of the offending IPv6 packet a "packet too big" quotes: its header and the first 8
/// bytes of TCP/UDP, which is what a receiving stack needs to find the socket (RFC 4443 allows
/// more; a fixed size keeps the checksum a fixed loop).
const PTB_QUOTE6: usize = IPV6_HLEN as usize + 8;
/// Largest IPv4 quote: a 60-byte header with options plus 8 bytes of L4 (RFC 792).
const MAX_QUOTE4_WORDS: usize = (60 + 8) / 4;

/// L2 DSR: the frame goes back out of the NIC it came in on, addressed to the backend's MAC,
/// from this NIC's own MAC (`settings.mac`; never a MAC copied from the frame). The IP packet
/// is untouched, so no checksum changes; the backend holds the VIP on `lo` and answers the
/// client.
#[inline(always)]
pub fn l2(ctx: &XdpContext, backend: &Backend, settings: &Settings) -> Result<(), Outcome> {
    set_macs(ctx, backend.mac, settings.mac)
}

/// IP-in-IP: an outer IPv4 (protocol 4 or 41) or IPv6 (next header 4 or 41) header addressed
/// to the backend is put in front of the untouched IP packet, and the frame goes to the next
/// hop toward the backend (`backend.mac`, resolved by the agent) out of this NIC. The outer
/// source comes from the tunnel prefix with host bits from `hash`, and IPv6 outer headers
/// carry `hash` as flow label, so the backend's NIC spreads flows across its queues. The
/// caller has checked the size against the MTU.
#[inline(always)]
pub fn ipip(
    ctx: &XdpContext,
    p: &Parsed,
    backend: &Backend,
    settings: &Settings,
    hash: u32,
) -> Result<(), Outcome> {
    let outer_v6 = backend.family == Family::V6;
    let outer_len = if outer_v6 { IPV6_HLEN } else { IPV4_HLEN } as usize;
    let inner_proto = if p.key.family == Family::V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    grow_head(ctx, outer_len)?;
    move_l2(ctx, outer_len, p.l3)?;
    set_macs(ctx, backend.mac, settings.mac)?;
    set_ether_type(ctx, p.l3, if outer_v6 { ETH_P_IPV6 } else { ETH_P_IP })?;
    if outer_v6 {
        let h = ptr_at::<[u8; IPV6_HLEN as usize]>(ctx, p.l3).ok_or(Outcome::DropMalformed)?;
        let h = unsafe { &mut *h };
        let flow = hash & 0x000f_ffff;
        h[0] = 0x60 | (p.tos >> 4);
        h[1] = (p.tos << 4) | ((flow >> 16) as u8);
        h[2] = (flow >> 8) as u8;
        h[3] = flow as u8;
        h[4..6].copy_from_slice(&(p.ip_len as u16).to_be_bytes());
        h[6] = inner_proto;
        h[7] = ORIGIN_TTL;
        let host = u32::from_be_bytes(settings.tunnel_src6_host);
        let tail = [
            settings.tunnel_src6[12],
            settings.tunnel_src6[13],
            settings.tunnel_src6[14],
            settings.tunnel_src6[15],
        ];
        let tail = (u32::from_be_bytes(tail) & !host) | (hash & host);
        h[8..20].copy_from_slice(&settings.tunnel_src6[..12]);
        h[20..24].copy_from_slice(&tail.to_be_bytes());
        h[24..40].copy_from_slice(&backend.addr);
    } else {
        let host = u32::from_be_bytes(settings.tunnel_src4_host);
        let src = (u32::from_be_bytes(settings.tunnel_src4) & !host) | (hash & host);
        let dst = [
            backend.addr[0],
            backend.addr[1],
            backend.addr[2],
            backend.addr[3],
        ];
        write_ipv4(
            ctx,
            p.l3,
            p.tos,
            p.ip_len + outer_len,
            IP_DF,
            inner_proto,
            src.to_be_bytes(),
            dst,
        )?;
    }
    Ok(())
}

/// Whether `p` fits a tunnel to `backend` within `settings.mtu` (0: no limit). `Ok(None)`: it
/// fits. `Ok(Some(mtu))`: it does not, and the client may be told to send inner packets of at
/// most `mtu` bytes ([`too_big`]). `Err(DropTooBig)`: it does not and the client may not be
/// told: it asked for fragmentation (IPv4 without DF), or this is already an ICMP error.
#[inline(always)]
pub fn too_big_for_tunnel(
    p: &Parsed,
    backend: &Backend,
    settings: &Settings,
    icmp_error: bool,
) -> Result<Option<u32>, Outcome> {
    let outer = if backend.family == Family::V6 {
        IPV6_HLEN
    } else {
        IPV4_HLEN
    } as usize;
    let limit = match settings.mtu {
        0 => 0xffff,
        mtu => mtu as usize,
    };
    if p.ip_len + outer <= limit {
        return Ok(None);
    }
    if icmp_error || !p.df {
        return Err(Outcome::DropTooBig);
    }
    Ok(Some((limit - outer) as u32))
}

/// Turns a packet too big to encapsulate into the ICMP error that makes the client lower its
/// path MTU to `mtu` (the largest inner packet that fits), sent back out of this NIC to the
/// MAC it came from. The error comes from the VIP, quotes the start of the packet (RFC 792:
/// IP header + 8 bytes; IPv6: [`PTB_QUOTE6`]) and the rest of the frame is cut off.
///
/// The room for the new IP + ICMP headers is made in front of the old IP header, so the quote
/// is already where it belongs: only the L2 header moves.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, p: &Parsed, mtu: u32, settings: &Settings) -> Result<(), Outcome> {
    let client_mac = source_mac(ctx)?;
    let v6 = p.key.family == Family::V6;
    let (new_hdrs, quote) = if v6 {
        (IPV6_HLEN as usize + ICMP_HLEN, PTB_QUOTE6)
    } else {
        (IPV4_HLEN as usize + ICMP_HLEN, (p.l4 - p.l3) + 8)
    };
    // Sum the quote before anything moves; the sum does not depend on where it sits.
    let quote_sum = sum_words(ctx, p.l3, quote / 4).ok_or(Outcome::DropMalformed)?;
    grow_head(ctx, new_hdrs)?;
    move_l2(ctx, new_hdrs, p.l3)?;
    set_macs(ctx, client_mac, settings.mac)?;
    let icmp_off = p.l3 + new_hdrs - ICMP_HLEN;
    let icmp = ptr_at::<[u8; ICMP_HLEN]>(ctx, icmp_off).ok_or(Outcome::DropMalformed)?;
    let icmp = unsafe { &mut *icmp };
    if v6 {
        let h = ptr_at::<[u8; IPV6_HLEN as usize]>(ctx, p.l3).ok_or(Outcome::DropMalformed)?;
        let h = unsafe { &mut *h };
        let len = (ICMP_HLEN + quote) as u16;
        h[..4].copy_from_slice(&[0x60, 0, 0, 0]);
        h[4..6].copy_from_slice(&len.to_be_bytes());
        h[6] = IPPROTO_ICMPV6;
        h[7] = ORIGIN_TTL;
        h[8..24].copy_from_slice(&p.key.dst);
        h[24..40].copy_from_slice(&p.key.src);
        // ICMPv6 type 2 "packet too big", code 0, then the 32-bit MTU.
        let sum = quote_sum
            + sum_bytes(&p.key.dst)
            + sum_bytes(&p.key.src)
            + len as u32
            + IPPROTO_ICMPV6 as u32
            + 0x0200
            + (mtu >> 16)
            + (mtu & 0xffff);
        icmp[0] = 2;
        icmp[1] = 0;
        icmp[2..4].copy_from_slice(&fold(sum).to_be_bytes());
        icmp[4..8].copy_from_slice(&mtu.to_be_bytes());
    } else {
        // ICMP type 3 "destination unreachable", code 4 "fragmentation needed and DF set",
        // 16 unused bits, then the next-hop MTU (RFC 1191).
        let sum = quote_sum + 0x0304 + (mtu & 0xffff);
        icmp[0] = 3;
        icmp[1] = 4;
        icmp[2..4].copy_from_slice(&fold(sum).to_be_bytes());
        icmp[4..6].copy_from_slice(&[0, 0]);
        icmp[6..8].copy_from_slice(&(mtu as u16).to_be_bytes());
        let vip = [p.key.dst[0], p.key.dst[1], p.key.dst[2], p.key.dst[3]];
        let client = [p.key.src[0], p.key.src[1], p.key.src[2], p.key.src[3]];
        write_ipv4(
            ctx,
            p.l3,
            TOS_INTERNETWORK_CONTROL,
            new_hdrs + quote,
            [0, 0],
            IPPROTO_ICMP,
            vip,
            client,
        )?;
    }
    let keep = p.l3 + new_hdrs + quote;
    let cut = (ctx.data_end() - ctx.data()) as i32 - keep as i32;
    if cut > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -cut) } != 0 {
        return Err(Outcome::DropMalformed);
    }
    Ok(())
}

/// Answers an ICMP/ICMPv6 echo request in place: addresses and MACs swapped, TTL/hop limit
/// reset, type 8→0 / 128→129 with the checksums updated incrementally (RFC 1624). Swapping
/// the addresses leaves every checksum as it was, pseudo-header included.
#[inline(always)]
pub fn echo_reply(ctx: &XdpContext, p: &Parsed, settings: &Settings) -> Result<(), Outcome> {
    let client_mac = source_mac(ctx)?;
    set_macs(ctx, client_mac, settings.mac)?;
    let icmp = ptr_at::<[u8; ICMP_HLEN]>(ctx, p.l4).ok_or(Outcome::DropMalformed)?;
    let icmp = unsafe { &mut *icmp };
    let old_type = u16::from_be_bytes([icmp[0], icmp[1]]);
    let new_type_byte = if p.key.family == Family::V6 { 129 } else { 0 };
    let new_type = u16::from_be_bytes([new_type_byte, icmp[1]]);
    let check = u16::from_be_bytes([icmp[2], icmp[3]]);
    icmp[0] = new_type_byte;
    icmp[2..4].copy_from_slice(&csum_replace(check, old_type, new_type).to_be_bytes());
    if p.key.family == Family::V6 {
        let h = ptr_at::<[u8; IPV6_HLEN as usize]>(ctx, p.l3).ok_or(Outcome::DropMalformed)?;
        let h = unsafe { &mut *h };
        h[7] = ORIGIN_TTL;
        h[8..24].copy_from_slice(&p.key.dst);
        h[24..40].copy_from_slice(&p.key.src);
    } else {
        let h = ptr_at::<[u8; IPV4_HLEN as usize]>(ctx, p.l3).ok_or(Outcome::DropMalformed)?;
        let h = unsafe { &mut *h };
        let old = u16::from_be_bytes([h[8], h[9]]);
        let new = u16::from_be_bytes([ORIGIN_TTL, h[9]]);
        let check = u16::from_be_bytes([h[10], h[11]]);
        h[8] = ORIGIN_TTL;
        h[10..12].copy_from_slice(&csum_replace(check, old, new).to_be_bytes());
        h[12..16].copy_from_slice(&p.key.dst[..4]);
        h[16..20].copy_from_slice(&p.key.src[..4]);
    }
    Ok(())
}

/// The source MAC of the frame as it is now: where an answer to the client goes.
#[inline(always)]
fn source_mac(ctx: &XdpContext) -> Result<[u8; 6], Outcome> {
    let eth = parse::eth_mut(ctx).ok_or(Outcome::DropMalformed)?;
    Ok(unsafe { (*eth).src_addr })
}

#[inline(always)]
fn set_macs(ctx: &XdpContext, dst: [u8; 6], src: [u8; 6]) -> Result<(), Outcome> {
    let eth = parse::eth_mut(ctx).ok_or(Outcome::DropMalformed)?;
    unsafe {
        (*eth).dst_addr = dst;
        (*eth).src_addr = src;
    }
    Ok(())
}

/// Makes `len` bytes of room in front of the frame. XDP guarantees 256 bytes of headroom
/// (XDP_PACKET_HEADROOM), so this fails only with a driver that breaks that promise.
#[inline(always)]
fn grow_head(ctx: &XdpContext, len: usize) -> Result<(), Outcome> {
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(len as i32)) } != 0 {
        return Err(Outcome::DropTooBig);
    }
    Ok(())
}

/// Moves the L2 header (`l2_len`: 14, or 18 with an 802.1Q tag) from `by` bytes into the
/// frame to its start, after [`grow_head`].
#[inline(always)]
fn move_l2(ctx: &XdpContext, by: usize, l2_len: usize) -> Result<(), Outcome> {
    let from = ptr_at::<[u8; 14]>(ctx, by).ok_or(Outcome::DropMalformed)?;
    let to = ptr_at::<[u8; 14]>(ctx, 0).ok_or(Outcome::DropMalformed)?;
    unsafe { *to = *from };
    if l2_len > 14 {
        let from = ptr_at::<[u8; 4]>(ctx, by + 14).ok_or(Outcome::DropMalformed)?;
        let to = ptr_at::<[u8; 4]>(ctx, 14).ok_or(Outcome::DropMalformed)?;
        unsafe { *to = *from };
    }
    Ok(())
}

/// The EtherType just before the IP header (the frame's, or the 802.1Q tag's inner one).
#[inline(always)]
fn set_ether_type(ctx: &XdpContext, l3: usize, ether_type: [u8; 2]) -> Result<(), Outcome> {
    let t = ptr_at::<[u8; 2]>(ctx, l3 - 2).ok_or(Outcome::DropMalformed)?;
    unsafe { *t = ether_type };
    Ok(())
}

/// Writes an option-less IPv4 header at `off` with its checksum.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn write_ipv4(
    ctx: &XdpContext,
    off: usize,
    tos: u8,
    tot_len: usize,
    frags: [u8; 2],
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
) -> Result<(), Outcome> {
    let h = ptr_at::<[u8; IPV4_HLEN as usize]>(ctx, off).ok_or(Outcome::DropMalformed)?;
    let h = unsafe { &mut *h };
    let len = (tot_len as u16).to_be_bytes();
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&len);
    h[4..6].copy_from_slice(&[0, 0]);
    h[6..8].copy_from_slice(&frags);
    h[8] = ORIGIN_TTL;
    h[9] = proto;
    let sum = 0x4500
        + tos as u32
        + tot_len as u32
        + u16::from_be_bytes(frags) as u32
        + ((ORIGIN_TTL as u32) << 8)
        + proto as u32
        + sum_bytes(&src)
        + sum_bytes(&dst);
    h[10..12].copy_from_slice(&fold(sum).to_be_bytes());
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    Ok(())
}

/// One's-complement sum of big-endian 16-bit words of a value held in registers.
#[inline(always)]
fn sum_bytes<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// One's-complement sum of `words` 4-byte words of the frame from `off` (at most an IPv4
/// quote's worth): `None` if the frame is shorter.
#[inline(always)]
fn sum_words(ctx: &XdpContext, off: usize, words: usize) -> Option<u32> {
    let mut sum = 0u32;
    for i in 0..MAX_QUOTE4_WORDS {
        if i >= words {
            break;
        }
        let w = unsafe { &*ptr_at::<[u8; 4]>(ctx, off + i * 4)? };
        sum += u16::from_be_bytes([w[0], w[1]]) as u32 + u16::from_be_bytes([w[2], w[3]]) as u32;
    }
    Some(sum)
}

/// The checksum field value for a one's-complement sum.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
fn csum_replace(check: u16, old: u16, new: u16) -> u16 {
    fold(!check as u32 + !old as u32 + new as u32)
}

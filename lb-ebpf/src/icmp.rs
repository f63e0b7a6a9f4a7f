//! The ICMP answers the balancer sends a client itself: "packet too big" and echo replies.
//!
//! "Fragmentation needed" / "packet too big" answers a packet too big to tunnel; echo replies
//! answer pings to VIP addresses that take them.

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::{
    Family, Outcome, Settings, IPPROTO_ICMP, IPPROTO_ICMPV6, IPV4_HLEN, IPV6_HLEN, ORIGIN_TTL,
};

use crate::{
    csum::{csum_replace, fold, sum_bytes, sum_words},
    encap::{grow_head, move_l2, set_macs, write_ipv4},
    parse::Parsed,
    wire::{eth, frame_len, icmp, ipv4, ipv6, ptr_at},
};

/// Precedence "internetwork control", the TOS Linux gives the ICMP errors it originates.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;
/// How much of the offending IPv6 packet a "packet too big" quotes: its header and the first 8
/// bytes of TCP/UDP, which is what a receiving stack needs to find the socket (RFC 4443 allows
/// more; a fixed size keeps the checksum a fixed loop).
const PTB_QUOTE6: usize = IPV6_HLEN as usize + 8;
/// Largest IPv4 quote: a 60-byte header with options plus 8 bytes of L4 (RFC 792).
const MAX_QUOTE4_WORDS: usize = (60 + 8) / 4;

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
        (IPV6_HLEN as usize + icmp::HLEN, PTB_QUOTE6)
    } else {
        (IPV4_HLEN as usize + icmp::HLEN, (p.l4 - p.l3) + 8)
    };
    // Sum the quote before anything moves; the sum does not depend on where it sits.
    let quote_sum =
        sum_words::<MAX_QUOTE4_WORDS>(ctx, p.l3, quote / 4).ok_or(Outcome::DropMalformed)?;
    grow_head(ctx, new_hdrs)?;
    move_l2(ctx, new_hdrs, p.l3)?;
    set_macs(ctx, client_mac, settings.mac)?;
    let icmp_off = p.l3 + new_hdrs - icmp::HLEN;
    let msg = ptr_at::<[u8; icmp::HLEN]>(ctx, icmp_off).ok_or(Outcome::DropMalformed)?;
    let msg = unsafe { &mut *msg };
    if v6 {
        let h = ptr_at::<[u8; IPV6_HLEN as usize]>(ctx, p.l3).ok_or(Outcome::DropMalformed)?;
        let h = unsafe { &mut *h };
        let len = (icmp::HLEN + quote) as u16;
        h[..4].copy_from_slice(&[0x60, 0, 0, 0]);
        h[ipv6::PAYLOAD_LEN].copy_from_slice(&len.to_be_bytes());
        h[ipv6::NEXT_HDR] = IPPROTO_ICMPV6;
        h[ipv6::HOP_LIMIT] = ORIGIN_TTL;
        h[ipv6::SRC].copy_from_slice(&p.key.dst);
        h[ipv6::DST].copy_from_slice(&p.key.src);
        // ICMPv6 type 2 "packet too big", code 0, then the 32-bit MTU.
        let sum = quote_sum
            + sum_bytes(&p.key.dst)
            + sum_bytes(&p.key.src)
            + len as u32
            + IPPROTO_ICMPV6 as u32
            + 0x0200
            + (mtu >> 16)
            + (mtu & 0xffff);
        msg[icmp::TYPE] = icmp::V6_PACKET_TOO_BIG;
        msg[icmp::CODE] = 0;
        msg[icmp::CHECK].copy_from_slice(&fold(sum).to_be_bytes());
        msg[4..8].copy_from_slice(&mtu.to_be_bytes());
    } else {
        // ICMP type 3 "destination unreachable", code 4 "fragmentation needed and DF set",
        // 16 unused bits, then the next-hop MTU (RFC 1191).
        let sum = quote_sum + 0x0304 + (mtu & 0xffff);
        msg[icmp::TYPE] = icmp::V4_DEST_UNREACH;
        msg[icmp::CODE] = icmp::V4_FRAG_NEEDED;
        msg[icmp::CHECK].copy_from_slice(&fold(sum).to_be_bytes());
        msg[4..6].copy_from_slice(&[0, 0]);
        msg[6..8].copy_from_slice(&(mtu as u16).to_be_bytes());
        let vip = [p.key.dst[0], p.key.dst[1], p.key.dst[2], p.key.dst[3]];
        let client = [p.key.src[0], p.key.src[1], p.key.src[2], p.key.src[3]];
        write_ipv4(
            ctx,
            p.l3,
            TOS_INTERNETWORK_CONTROL,
            new_hdrs + quote,
            0,
            [0, 0],
            IPPROTO_ICMP,
            vip,
            client,
        )?;
    }
    let keep = p.l3 + new_hdrs + quote;
    let cut = frame_len(ctx) as i32 - keep as i32;
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
    let msg = ptr_at::<[u8; icmp::HLEN]>(ctx, p.l4).ok_or(Outcome::DropMalformed)?;
    let msg = unsafe { &mut *msg };
    // Type and code are one 16-bit word of the checksum.
    let old_type = u16::from_be_bytes([msg[icmp::TYPE], msg[icmp::CODE]]);
    let new_type_byte = if p.key.family == Family::V6 {
        icmp::V6_ECHO_REPLY
    } else {
        icmp::V4_ECHO_REPLY
    };
    let new_type = u16::from_be_bytes([new_type_byte, msg[icmp::CODE]]);
    let check = u16::from_be_bytes([msg[icmp::CHECK.start], msg[icmp::CHECK.start + 1]]);
    msg[icmp::TYPE] = new_type_byte;
    msg[icmp::CHECK].copy_from_slice(&csum_replace(check, old_type, new_type).to_be_bytes());
    if p.key.family == Family::V6 {
        let h = ptr_at::<[u8; IPV6_HLEN as usize]>(ctx, p.l3).ok_or(Outcome::DropMalformed)?;
        let h = unsafe { &mut *h };
        h[ipv6::HOP_LIMIT] = ORIGIN_TTL;
        h[ipv6::SRC].copy_from_slice(&p.key.dst);
        h[ipv6::DST].copy_from_slice(&p.key.src);
    } else {
        let h = ptr_at::<[u8; IPV4_HLEN as usize]>(ctx, p.l3).ok_or(Outcome::DropMalformed)?;
        let h = unsafe { &mut *h };
        // TTL and protocol are one 16-bit word of the header checksum.
        let old = u16::from_be_bytes([h[ipv4::TTL], h[ipv4::PROTO]]);
        let new = u16::from_be_bytes([ORIGIN_TTL, h[ipv4::PROTO]]);
        let check = u16::from_be_bytes([h[ipv4::CHECK.start], h[ipv4::CHECK.start + 1]]);
        h[ipv4::TTL] = ORIGIN_TTL;
        h[ipv4::CHECK].copy_from_slice(&csum_replace(check, old, new).to_be_bytes());
        h[ipv4::SRC].copy_from_slice(&p.key.dst[..4]);
        h[ipv4::DST].copy_from_slice(&p.key.src[..4]);
    }
    Ok(())
}

/// The source MAC of the frame as it is now: where an answer to the client goes.
#[inline(always)]
pub(crate) fn source_mac(ctx: &XdpContext) -> Result<[u8; 6], Outcome> {
    let macs = ptr_at::<[u8; eth::HLEN]>(ctx, 0).ok_or(Outcome::DropMalformed)?;
    let macs = unsafe { &*macs };
    Ok([macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]])
}

//! Sending a frame on toward its backend: the L2 rewrite, IP-in-IP, and the MTU/DF decision.
//!
//! Also the frame surgery (head room, moving the L2 header, writing IPv4) the ICMP answers share.
//!
//! Every public function rewrites the frame for `XDP_TX` (the caller's `Tx*` outcome carries
//! that verdict) or fails with the outcome that ends the packet instead.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    history::{flow_label_mark, ipv4_id_mark},
    Backend, Family, Outcome, Settings, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_HLEN, IPV6_HLEN,
    ORIGIN_TTL,
};

use crate::{
    csum::{csum_replace, fold, sum_bytes},
    parse::Parsed,
    wire::{eth, ipv4, ipv6, ptr_at},
};

/// The EtherTypes of an outer header, in wire order.
const ETH_P_IP: [u8; 2] = eth::P_IP.to_be_bytes();
const ETH_P_IPV6: [u8; 2] = eth::P_IPV6.to_be_bytes();
/// IPv4 "don't fragment", in the wire-order `frags` field.
const IP_DF: [u8; 2] = ipv4::DF.to_be_bytes();

/// L2 DSR: the frame goes back out of the NIC it came in on, addressed to the backend's MAC,
/// from this NIC's own MAC (`settings.mac`; never a MAC copied from the frame). The IP packet
/// is untouched, so no checksum changes; the backend holds the VIP on `lo` and answers the
/// client.
#[inline(always)]
pub fn l2(ctx: &XdpContext, backend: &Backend, settings: &Settings) -> Result<(), Outcome> {
    set_macs(ctx, backend.mac, settings.mac)
}

/// Second chance in `l2`: writes the mark carrying `previous` (the slot's previous owner, a
/// backend id) into the client's IP header (lb-common's `history`): the ID of an IPv4 packet
/// with DF set, its checksum updated; the flow label of an IPv6 packet. An IPv4 packet that may
/// be fragmented has no ID to spare and carries nothing.
#[inline(always)]
pub fn mark(ctx: &XdpContext, p: &Parsed, previous: u32) -> Result<(), Outcome> {
    if p.key.family == Family::V4 {
        if !p.df {
            return Ok(());
        }
        let h = ptr_at::<[u8; 12]>(ctx, p.l3).ok_or(Outcome::DropMalformed)?;
        let h = unsafe { &mut *h };
        let old = u16::from_be_bytes([h[4], h[5]]);
        let new = ipv4_id_mark(previous);
        let check = csum_replace(u16::from_be_bytes([h[10], h[11]]), old, new);
        h[4..6].copy_from_slice(&new.to_be_bytes());
        h[10..12].copy_from_slice(&check.to_be_bytes());
    } else {
        let h = ptr_at::<[u8; 4]>(ctx, p.l3).ok_or(Outcome::DropMalformed)?;
        let h = unsafe { &mut *h };
        let label = flow_label_mark(previous);
        h[1] = (h[1] & 0xf0) | (label >> 16) as u8;
        h[2] = (label >> 8) as u8;
        h[3] = label as u8;
    }
    Ok(())
}

/// IP-in-IP: an outer IPv4 (protocol 4 or 41) or IPv6 (next header 4 or 41) header addressed
/// to the backend is put in front of the untouched IP packet, and the frame goes to the next
/// hop toward the backend (`backend.mac`, resolved by the agent) out of this NIC. The outer
/// source comes from the tunnel prefix with host bits from `hash`, and IPv6 outer headers
/// carry `hash` as flow label, so the backend's NIC spreads flows across its queues. With a
/// `previous` owner (second chance, see [`mark`]), the outer IPv4 ID or IPv6 flow label
/// carries its mark instead. The caller has checked the size against the MTU.
#[inline(always)]
pub fn ipip(
    ctx: &XdpContext,
    p: &Parsed,
    backend: &Backend,
    settings: &Settings,
    hash: u32,
    previous: Option<u32>,
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
        let flow = match previous {
            Some(id) => flow_label_mark(id),
            None => hash & 0x000f_ffff,
        };
        h[0] = 0x60 | (p.tos >> 4);
        h[1] = (p.tos << 4) | ((flow >> 16) as u8);
        h[2] = (flow >> 8) as u8;
        h[3] = flow as u8;
        h[ipv6::PAYLOAD_LEN].copy_from_slice(&(p.ip_len as u16).to_be_bytes());
        h[ipv6::NEXT_HDR] = inner_proto;
        h[ipv6::HOP_LIMIT] = ORIGIN_TTL;
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
        h[ipv6::DST].copy_from_slice(&backend.addr);
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
            previous.map_or(0, ipv4_id_mark),
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

#[inline(always)]
pub(crate) fn set_macs(ctx: &XdpContext, dst: [u8; 6], src: [u8; 6]) -> Result<(), Outcome> {
    let h = ptr_at::<[u8; eth::HLEN]>(ctx, 0).ok_or(Outcome::DropMalformed)?;
    let h = unsafe { &mut *h };
    h[eth::DST].copy_from_slice(&dst);
    h[eth::SRC].copy_from_slice(&src);
    Ok(())
}

/// Makes `len` bytes of room in front of the frame. XDP guarantees 256 bytes of headroom
/// (XDP_PACKET_HEADROOM), so this fails only with a driver that breaks that promise.
#[inline(always)]
pub(crate) fn grow_head(ctx: &XdpContext, len: usize) -> Result<(), Outcome> {
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(len as i32)) } != 0 {
        return Err(Outcome::DropTooBig);
    }
    Ok(())
}

/// Moves the L2 header (`l2_len`: 14, or 18 with an 802.1Q tag) from `by` bytes into the
/// frame to its start, after [`grow_head`].
#[inline(always)]
pub(crate) fn move_l2(ctx: &XdpContext, by: usize, l2_len: usize) -> Result<(), Outcome> {
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
pub(crate) fn set_ether_type(
    ctx: &XdpContext,
    l3: usize,
    ether_type: [u8; 2],
) -> Result<(), Outcome> {
    let t = ptr_at::<[u8; 2]>(ctx, l3 - 2).ok_or(Outcome::DropMalformed)?;
    unsafe { *t = ether_type };
    Ok(())
}

/// Writes an option-less IPv4 header at `off` with its checksum.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn write_ipv4(
    ctx: &XdpContext,
    off: usize,
    tos: u8,
    tot_len: usize,
    id: u16,
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
    h[ipv4::TOT_LEN].copy_from_slice(&len);
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[ipv4::FRAGS].copy_from_slice(&frags);
    h[ipv4::TTL] = ORIGIN_TTL;
    h[ipv4::PROTO] = proto;
    let sum = 0x4500
        + tos as u32
        + tot_len as u32
        + id as u32
        + u16::from_be_bytes(frags) as u32
        + ((ORIGIN_TTL as u32) << 8)
        + proto as u32
        + sum_bytes(&src)
        + sum_bytes(&dst);
    h[ipv4::CHECK].copy_from_slice(&fold(sum).to_be_bytes());
    h[ipv4::SRC].copy_from_slice(&src);
    h[ipv4::DST].copy_from_slice(&dst);
    Ok(())
}

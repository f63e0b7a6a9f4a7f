//! Second chance: a marked TCP packet to a local VIP not ours goes on to its previous owner.
//!
//! The balancer marks a packet whose ring slot changed owner with the previous owner's id
//! (lb-common's `history`). Here, the packet is delivered if the flow is this host's: a SYN, a
//! socket of the flow (established, TIME_WAIT or half-open: `bpf_skc_lookup_tcp` finds them
//! all), or an ACK the listener's SYN cookies validate. Otherwise it goes on to the previous
//! owner with its mark cleared, so that host delivers it whatever it finds. A packet without a
//! mark costs a header read and nothing else: no map, no socket lookup.

use aya_ebpf::{
    bindings::{bpf_sock_tuple, iphdr, ipv6hdr, tcphdr, BPF_F_CURRENT_NETNS},
    btf_maps::{Array, HashMap},
    helpers::{
        bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_raw_check_syncookie_ipv4,
        bpf_tcp_raw_check_syncookie_ipv6,
    },
    macros::btf_map,
    programs::XdpContext,
};
use lb_common::{
    decap::{DecapAddr, DecapOutcome, Peer, PEER_L2},
    history::{flow_label_previous, ipv4_id_previous},
    IPPROTO_TCP, MAX_BACKENDS, MAX_VIPS,
};
use lb_ebpf::{
    csum::csum_replace,
    parse::{self, Link},
    wire::{eth, frame_len, ptr_at},
};

/// This host's VIP addresses (filled by `xdplb host`).
#[btf_map]
pub static HOST_VIPS: HashMap<DecapAddr, u32, { MAX_VIPS as usize }> = HashMap::new();

/// The other backends by id (filled by `xdplb host`).
#[btf_map]
pub static HOST_PEERS: Array<Peer, { MAX_BACKENDS as usize }> = Array::new();

const TCP_FIN_SYN_RST_ACK: u8 = 0x17;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// `TCP_LISTEN` in the kernel's `enum tcp_state`.
const TCP_LISTEN: u32 = 10;

/// Where a marked packet's headers are, and its TCP flags.
struct Marked {
    l3: usize,
    l4: usize,
    v6: bool,
    previous: u32,
    flags: u8,
}

/// The second chance's verdict for a frame, or `None` when it does not apply (not TCP to a
/// local VIP with a mark naming a known host): the caller counts it as it did before.
#[inline(always)]
pub fn decide(ctx: &XdpContext) -> Option<DecapOutcome> {
    let m = marked(ctx)?;
    let peer = *HOST_PEERS.get(m.previous)?;
    if peer.state == lb_common::decap::PEER_NONE {
        return None;
    }
    let flags = m.flags;
    let (saddr, daddr, ports) = addresses(ctx, &m)?;
    let dst = if m.v6 {
        DecapAddr::v6(daddr)
    } else {
        DecapAddr::v4([daddr[0], daddr[1], daddr[2], daddr[3]])
    };
    // SAFETY: only tested for presence.
    unsafe { HOST_VIPS.get(&dst) }?;
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return Some(DecapOutcome::PassSyn);
    }
    match lookup(ctx, &m, saddr, daddr, ports, flags) {
        Some(outcome) => Some(outcome),
        None if peer.state == PEER_L2 => Some(chain(ctx, &m, peer.mac)),
        None => Some(DecapOutcome::PassEndOfChain),
    }
}

/// A TCP packet (IPv4 with DF and not a fragment, or IPv6 without extension headers) whose
/// IPv4 ID or IPv6 flow label reads as a mark.
#[inline(always)]
fn marked(ctx: &XdpContext) -> Option<Marked> {
    let Link { ether_type, l3 } = parse::link(ctx)?;
    let frame = frame_len(ctx);
    if ether_type == eth::P_IP {
        let ip = parse::ipv4(ctx, l3, frame)?;
        let frags = u16::from_be_bytes(ip.hdr.frags);
        if ip.hdr.proto != IPPROTO_TCP || ip.is_fragment() || frags & 0x4000 == 0 {
            return None;
        }
        let previous = ipv4_id_previous(u16::from_be_bytes(ip.hdr.id))?;
        let l4 = l3 + ip.hlen;
        Some(Marked {
            l3,
            l4,
            v6: false,
            previous,
            flags: tcp_flags(ctx, l4)?,
        })
    } else if ether_type == eth::P_IPV6 {
        let ip = parse::ipv6(ctx, l3, frame)?;
        if ip.hdr.next_hdr != IPPROTO_TCP {
            return None;
        }
        let h = unsafe { *ptr_at::<[u8; 4]>(ctx, l3)? };
        let label = u32::from_be_bytes([0, h[1] & 0x0f, h[2], h[3]]);
        Some(Marked {
            l3,
            l4: l3 + 40,
            v6: true,
            previous: flow_label_previous(label)?,
            flags: tcp_flags(ctx, l3 + 40)?,
        })
    } else {
        None
    }
}

/// The flags byte of the TCP header at `l4` (the whole minimal header must be there).
#[inline(always)]
fn tcp_flags(ctx: &XdpContext, l4: usize) -> Option<u8> {
    // SAFETY: ptr_at checked the 20 bytes against the frame's end.
    Some(unsafe { (*ptr_at::<[u8; 20]>(ctx, l4)?)[13] })
}

/// Source and destination address (16 bytes, IPv4 in the first 4) and the two ports as on
/// the wire.
#[inline(always)]
fn addresses(ctx: &XdpContext, m: &Marked) -> Option<([u8; 16], [u8; 16], [u8; 4])> {
    let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
    if m.v6 {
        s = unsafe { *ptr_at::<[u8; 16]>(ctx, m.l3 + 8)? };
        d = unsafe { *ptr_at::<[u8; 16]>(ctx, m.l3 + 24)? };
    } else {
        let a = unsafe { *ptr_at::<[u8; 8]>(ctx, m.l3 + 12)? };
        s[..4].copy_from_slice(&a[..4]);
        d[..4].copy_from_slice(&a[4..]);
    }
    let ports = unsafe { *ptr_at::<[u8; 4]>(ctx, m.l4)? };
    Some((s, d, ports))
}

/// Whether the flow is this host's: `Some(PassLocal)` for a socket of the flow that is not a
/// listener, `Some(PassCookie)` for an ACK whose SYN cookie the listener's host validates,
/// `None` otherwise. Every socket the lookup returns is released.
#[inline(always)]
fn lookup(
    ctx: &XdpContext,
    m: &Marked,
    saddr: [u8; 16],
    daddr: [u8; 16],
    ports: [u8; 4],
    flags: u8,
) -> Option<DecapOutcome> {
    // SAFETY: all-zero is a valid tuple; the fields written below are plain integers.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let sport = u16::from_ne_bytes([ports[0], ports[1]]);
    let dport = u16::from_ne_bytes([ports[2], ports[3]]);
    // The tuple's size says the family: the IPv4 part (12 bytes) or the IPv6 part (36).
    let size = unsafe {
        if m.v6 {
            let t = &mut tuple.__bindgen_anon_1.ipv6;
            t.saddr = core::mem::transmute::<[u8; 16], [u32; 4]>(saddr);
            t.daddr = core::mem::transmute::<[u8; 16], [u32; 4]>(daddr);
            t.sport = sport;
            t.dport = dport;
            core::mem::size_of_val(t)
        } else {
            let t = &mut tuple.__bindgen_anon_1.ipv4;
            t.saddr = u32::from_ne_bytes([saddr[0], saddr[1], saddr[2], saddr[3]]);
            t.daddr = u32::from_ne_bytes([daddr[0], daddr[1], daddr[2], daddr[3]]);
            t.sport = sport;
            t.dport = dport;
            core::mem::size_of_val(t)
        }
    };
    // SAFETY: the helper reads `size` bytes of the tuple on our stack; the netns argument is
    // the current one (the receiving device's).
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx as *mut _,
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null socket from the lookup; released on every path below.
    let state = unsafe { (*sk).state };
    let listener = state == TCP_LISTEN;
    unsafe { bpf_sk_release(sk as *mut _) };
    if !listener {
        return Some(DecapOutcome::PassLocal);
    }
    // A listener only: the flow may be a connection whose SYN this host answered with a
    // cookie and kept nothing of. A pure ACK carrying a valid cookie is ours.
    if flags & TCP_FIN_SYN_RST_ACK != TCP_ACK {
        return None;
    }
    let valid = cookie_valid(ctx, m.l3, m.l4, m.v6);
    valid.then_some(DecapOutcome::PassCookie)
}

/// Whether the TCP header at `l4` (IP header at `l3`) is an ACK whose SYN cookie this host's
/// kernel minted. Not inlined, on purpose: inlined, the compiler drops the bounds checks
/// below as already made by the caller, and the verifier, which tracks ranges per pointer,
/// refuses the helper's arguments.
#[inline(never)]
fn cookie_valid(ctx: &XdpContext, l3: usize, l4: usize, v6: bool) -> bool {
    // Volatile: the loads stay here (not hoisted into the caller as arguments), so the bounds
    // checks below are made on this function's own packet pointers.
    // SAFETY: `ctx.ctx` is the program's context; these are its `data` and `data_end` fields.
    let (start, end) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    };
    let ip_len = if v6 { 40 } else { 20 };
    if start + l3 + ip_len > end || start + l4 + 20 > end {
        return false;
    }
    // SAFETY: both headers lie within the frame (checked just above).
    unsafe {
        if v6 {
            bpf_tcp_raw_check_syncookie_ipv6(
                (start + l3) as *mut ipv6hdr,
                (start + l4) as *mut tcphdr,
            ) == 0
        } else {
            bpf_tcp_raw_check_syncookie_ipv4(
                (start + l3) as *mut iphdr,
                (start + l4) as *mut tcphdr,
            ) == 0
        }
    }
}

/// Sends the packet on to the previous owner at `mac`, from the MAC it was sent to (this
/// host's), with its mark cleared (IPv4 ID 0, checksum updated; IPv6 flow label 0) so that
/// host delivers it.
#[inline(always)]
fn chain(ctx: &XdpContext, m: &Marked, mac: [u8; 6]) -> DecapOutcome {
    let Some(h) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return DecapOutcome::PassEndOfChain;
    };
    let Some(ip) = ptr_at::<[u8; 12]>(ctx, m.l3) else {
        return DecapOutcome::PassEndOfChain;
    };
    // SAFETY: both checked against the frame's end by ptr_at.
    unsafe {
        let ip = &mut *ip;
        if m.v6 {
            ip[1] &= 0xf0;
            ip[2] = 0;
            ip[3] = 0;
        } else {
            let old = u16::from_be_bytes([ip[4], ip[5]]);
            let check = csum_replace(u16::from_be_bytes([ip[10], ip[11]]), old, 0);
            ip[4..6].copy_from_slice(&[0, 0]);
            ip[10..12].copy_from_slice(&check.to_be_bytes());
        }
        let h = &mut *h;
        let ours = [h[0], h[1], h[2], h[3], h[4], h[5]];
        h[..6].copy_from_slice(&mac);
        h[6..].copy_from_slice(&ours);
    }
    DecapOutcome::TxChained
}

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
    decap::{DecapAddr, DecapOutcome, Peer, PEER_IPIP, PEER_L2},
    history::{flow_label_previous, ipv4_id_previous},
    Family, IPPROTO_TCP, MAX_BACKENDS, MAX_VIPS,
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

/// What the second chance makes of a marked packet to a local VIP.
enum Judged {
    /// The flow is this host's (the outcome says why).
    Ours(DecapOutcome),
    /// It is not: the packet's previous owner.
    NotOurs(Peer),
}

/// The second chance's verdict for a frame that is not a tunnel, or `None` when it does not
/// apply (not TCP to a local VIP with a mark naming a known host): the caller counts it as it
/// did before.
#[inline(always)]
pub fn decide(ctx: &XdpContext) -> Option<DecapOutcome> {
    let m = marked(ctx)?;
    Some(match judge(ctx, &m)? {
        Judged::Ours(outcome) => outcome,
        Judged::NotOurs(peer) if peer.state == PEER_L2 => chain(ctx, &m, peer.mac),
        Judged::NotOurs(_) => DecapOutcome::PassEndOfChain,
    })
}

/// Where a tunnel packet's headers are (from the decapsulation's checks).
pub struct Tunnel {
    /// Offset of the outer IP header.
    pub l3: usize,
    pub outer_len: usize,
    pub outer_v6: bool,
    pub inner_v6: bool,
}

/// For a tunnel packet to this host whose outer header carries a mark: `Some(TxChained)` when
/// its inner flow is not this host's and the previous owner is an `ipip` backend of the outer
/// header's family, after readdressing the tunnel to it; `None` otherwise (the caller
/// decapsulates and delivers it).
#[inline(always)]
pub fn tunnelled(ctx: &XdpContext, t: &Tunnel) -> Option<DecapOutcome> {
    let previous = if t.outer_v6 {
        let h = unsafe { *ptr_at::<[u8; 4]>(ctx, t.l3)? };
        flow_label_previous(u32::from_be_bytes([0, h[1] & 0x0f, h[2], h[3]]))?
    } else {
        let h = unsafe { *ptr_at::<[u8; 6]>(ctx, t.l3)? };
        ipv4_id_previous(u16::from_be_bytes([h[4], h[5]]))?
    };
    let m = tcp_at(ctx, t.l3 + t.outer_len, t.inner_v6, previous)?;
    match judge(ctx, &m)? {
        Judged::NotOurs(peer)
            if peer.state == PEER_IPIP && (peer.family == Family::V6) == t.outer_v6 =>
        {
            Some(readdress(ctx, t, &peer))
        }
        _ => None,
    }
}

/// Peer, VIP, SYN and socket checks of a marked packet; `None` when the second chance does
/// not apply.
#[inline(always)]
fn judge(ctx: &XdpContext, m: &Marked) -> Option<Judged> {
    let peer = *HOST_PEERS.get(m.previous)?;
    if peer.state == lb_common::decap::PEER_NONE {
        return None;
    }
    let flags = m.flags;
    let (saddr, daddr, ports) = addresses(ctx, m)?;
    let dst = if m.v6 {
        DecapAddr::v6(daddr)
    } else {
        DecapAddr::v4([daddr[0], daddr[1], daddr[2], daddr[3]])
    };
    // SAFETY: only tested for presence.
    unsafe { HOST_VIPS.get(&dst) }?;
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return Some(Judged::Ours(DecapOutcome::PassSyn));
    }
    Some(match lookup(ctx, m, saddr, daddr, ports, flags) {
        Some(outcome) => Judged::Ours(outcome),
        None => Judged::NotOurs(peer),
    })
}

/// A TCP packet (IPv4 with DF, or IPv6) whose IPv4 ID or IPv6 flow label reads as a mark.
#[inline(always)]
fn marked(ctx: &XdpContext) -> Option<Marked> {
    let Link { ether_type, l3 } = parse::link(ctx)?;
    if ether_type == eth::P_IP {
        let h = unsafe { *ptr_at::<[u8; 8]>(ctx, l3)? };
        // DF: an ID the sender may need for fragmentation is never a mark.
        if h[6] & 0x40 == 0 {
            return None;
        }
        let previous = ipv4_id_previous(u16::from_be_bytes([h[4], h[5]]))?;
        tcp_at(ctx, l3, false, previous)
    } else if ether_type == eth::P_IPV6 {
        let h = unsafe { *ptr_at::<[u8; 4]>(ctx, l3)? };
        let label = u32::from_be_bytes([0, h[1] & 0x0f, h[2], h[3]]);
        tcp_at(ctx, l3, true, flow_label_previous(label)?)
    } else {
        None
    }
}

/// The TCP packet whose IP header is at `l3` (IPv4 not a fragment, IPv6 without extension
/// headers), marked with `previous`.
#[inline(always)]
fn tcp_at(ctx: &XdpContext, l3: usize, v6: bool, previous: u32) -> Option<Marked> {
    let frame = frame_len(ctx);
    let l4 = if v6 {
        let ip = parse::ipv6(ctx, l3, frame)?;
        if ip.hdr.next_hdr != IPPROTO_TCP {
            return None;
        }
        l3 + 40
    } else {
        let ip = parse::ipv4(ctx, l3, frame)?;
        if ip.hdr.proto != IPPROTO_TCP || ip.is_fragment() {
            return None;
        }
        l3 + ip.hlen
    };
    Some(Marked {
        l3,
        l4,
        v6,
        previous,
        flags: tcp_flags(ctx, l4)?,
    })
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

/// Readdresses a tunnel packet to the previous owner `peer` (an `ipip` backend) and sends it
/// back to the hop it came from, which routes it there: outer destination := the peer's
/// address, outer mark cleared (IPv4 ID 0 with the checksum updated; IPv6 flow label 0), MACs
/// swapped.
#[inline(always)]
fn readdress(ctx: &XdpContext, t: &Tunnel, peer: &Peer) -> DecapOutcome {
    let Some(h) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return DecapOutcome::PassEndOfChain;
    };
    // SAFETY (both blocks): ptr_at checked the bytes against the frame's end.
    if t.outer_v6 {
        let Some(ip) = ptr_at::<[u8; 40]>(ctx, t.l3) else {
            return DecapOutcome::PassEndOfChain;
        };
        let ip = unsafe { &mut *ip };
        ip[1] &= 0xf0;
        ip[2] = 0;
        ip[3] = 0;
        ip[24..40].copy_from_slice(&peer.addr);
    } else {
        let Some(ip) = ptr_at::<[u8; 20]>(ctx, t.l3) else {
            return DecapOutcome::PassEndOfChain;
        };
        let ip = unsafe { &mut *ip };
        let word = |b: &[u8; 20], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let mut check = word(ip, 10);
        check = csum_replace(check, word(ip, 4), 0);
        let new = [peer.addr[0], peer.addr[1], peer.addr[2], peer.addr[3]];
        check = csum_replace(check, word(ip, 16), u16::from_be_bytes([new[0], new[1]]));
        check = csum_replace(check, word(ip, 18), u16::from_be_bytes([new[2], new[3]]));
        ip[4..6].copy_from_slice(&[0, 0]);
        ip[16..20].copy_from_slice(&new);
        ip[10..12].copy_from_slice(&check.to_be_bytes());
    }
    let h = unsafe { &mut *h };
    let (to, from) = (
        [h[6], h[7], h[8], h[9], h[10], h[11]],
        [h[0], h[1], h[2], h[3], h[4], h[5]],
    );
    h[..6].copy_from_slice(&to);
    h[6..].copy_from_slice(&from);
    DecapOutcome::TxChained
}

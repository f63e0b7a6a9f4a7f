//! `xdplb_decap`, the backends' XDP program: strips IP-in-IP to this host, and second chance.
//!
//! Handles 4in4, 6in4, 6in6 and 4in6: the outer header goes, the inner packet passes to the
//! stack. A TCP packet to one of the host's VIPs that carries a previous owner and is not this
//! host's goes on to that owner ([`chance`]). Everything else passes untouched. The outer and
//! inner headers are checked by the library's parser ([`lb_ebpf::parse`]), as the balancer
//! checks the packets it receives.
#![no_std]
#![no_main]

mod chance;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{HashMap, PerCpuArray},
    helpers::bpf_xdp_adjust_head,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{
    decap::{DecapAddr, DecapOutcome, DECAP_COUNTER_COUNT, MAX_DECAP_ADDRS},
    IPPROTO_IPIP, IPPROTO_IPV6,
};
use lb_ebpf::{
    counters::increment,
    parse::{self, Link},
    program,
    wire::{eth, frame_len, ipv6, ptr_at},
};

/// The local addresses tunnels may be addressed to (filled by `xdplb decap`).
#[btf_map]
static DECAP_ADDRS: HashMap<DecapAddr, u32, { MAX_DECAP_ADDRS as usize }> = HashMap::new();

/// One slot per `DecapCounter` (each [`DecapOutcome`] has one), per CPU.
#[btf_map]
static DECAP_STATS: PerCpuArray<u64, { DECAP_COUNTER_COUNT as usize }> = PerCpuArray::new();

/// The decapsulation program. Every packet ends in exactly one outcome, counted here, whose
/// verdict is the action; except a failed `bpf_xdp_adjust_head` after all checks passed
/// (cannot happen: the delta is positive and leaves a whole inner IP header), which aborts and
/// shows in `xdp:xdp_exception`.
#[xdp]
pub fn xdplb_decap(ctx: XdpContext) -> u32 {
    let outcome = match plan(&ctx) {
        Ok(strip) => match chance::tunnelled(&ctx, &strip.tunnel) {
            // Not this host's flow: sent on, still tunnelled, to its previous owner.
            Some(chained) => chained,
            None => {
                if !apply(&ctx, &strip) {
                    return xdp_action::XDP_ABORTED;
                }
                DecapOutcome::Decapsulated
            }
        },
        // Not a tunnel: a packet sent here in `l2`, which may need its second chance.
        Err(DecapOutcome::PassNotTunnel) => {
            chance::decide(&ctx).unwrap_or(DecapOutcome::PassNotTunnel)
        }
        Err(outcome) => outcome,
    };
    count(outcome);
    program::action(outcome.verdict())
}

#[inline(always)]
fn count(outcome: DecapOutcome) {
    increment(&DECAP_STATS, outcome.counter() as u32);
}

/// What [`apply`] does to a tunnel packet that passed every check.
struct Strip {
    /// The link-layer header the inner packet gets: the frame's MACs, its 802.1Q tag if it had
    /// one, and the inner packet's EtherType last.
    l2: [u8; eth::TAGGED_HLEN],
    /// `eth::HLEN` or `eth::TAGGED_HLEN`.
    l2_len: usize,
    /// Bytes of outer IP header to cut (IPv4: IHL × 4, 20..=60; IPv6: 40).
    outer_len: usize,
    /// Where the headers are, for the second chance.
    tunnel: chance::Tunnel,
}

/// Whether `addr` is one of this host's tunnel endpoints.
#[inline(always)]
fn is_local(addr: &DecapAddr) -> bool {
    // SAFETY: the reference is only tested for presence, never held past this call.
    unsafe { DECAP_ADDRS.get(addr) }.is_some()
}

/// Reads the frame and decides; writes nothing. `Ok` is a tunnel packet to this host whose
/// inner header is sound; `Err` says why the packet ends here (`DropMalformed` drops, the
/// `Pass*` reasons pass it untouched). IP header checksums are not verified: the stack does
/// that for the inner header, and the outer one is discarded.
#[inline(always)]
fn plan(ctx: &XdpContext) -> Result<Strip, DecapOutcome> {
    let Link { ether_type, l3 } = parse::link(ctx).ok_or(DecapOutcome::PassNotTunnel)?;
    // The MACs and the tag (TPID and TCI) are kept; only the EtherType before the IP header
    // changes, below.
    let mut l2 = [0u8; eth::TAGGED_HLEN];
    if l3 == eth::TAGGED_HLEN {
        let hdr = ptr_at::<[u8; eth::TAGGED_HLEN]>(ctx, 0).ok_or(DecapOutcome::PassNotTunnel)?;
        l2 = unsafe { *hdr };
    } else {
        let hdr = ptr_at::<[u8; eth::HLEN]>(ctx, 0).ok_or(DecapOutcome::PassNotTunnel)?;
        l2[..eth::HLEN].copy_from_slice(unsafe { &*hdr });
    }
    let frame = frame_len(ctx);

    // The outer header: an IP-in-IP packet to one of our addresses, not fragmented. A broken
    // outer header is "not a tunnel" here: the stack drops it with its own counters, and
    // this program never touches what it cannot parse.
    let (outer_len, inner_proto, outer_end) = match ether_type {
        eth::P_IP => {
            let ip = parse::ipv4(ctx, l3, frame).ok_or(DecapOutcome::PassNotTunnel)?;
            let proto = ip.hdr.proto;
            if proto != IPPROTO_IPIP && proto != IPPROTO_IPV6 {
                return Err(DecapOutcome::PassNotTunnel);
            }
            if !is_local(&DecapAddr::v4(ip.hdr.dst_addr)) {
                return Err(DecapOutcome::PassNotLocal);
            }
            // Any fragment, first or not: the inner packet is incomplete until the stack
            // reassembles it.
            if ip.is_fragment() {
                return Err(DecapOutcome::PassOuterFragment);
            }
            (ip.hlen, proto, l3 + ip.len)
        }
        eth::P_IPV6 => {
            let ip = parse::ipv6(ctx, l3, frame).ok_or(DecapOutcome::PassNotTunnel)?;
            let next = ip.hdr.next_hdr;
            let local = is_local(&DecapAddr::v6(ip.hdr.dst_addr));
            match next {
                IPPROTO_IPIP | IPPROTO_IPV6 if local => {}
                IPPROTO_IPIP | IPPROTO_IPV6 => return Err(DecapOutcome::PassNotLocal),
                ipv6::EXT_FRAGMENT => {
                    // The fragment header's first byte is the protocol of the fragmented
                    // payload: count tunnel fragments as such, everything else is not ours.
                    let frag = ptr_at::<[u8; 8]>(ctx, l3 + ipv6::HLEN)
                        .ok_or(DecapOutcome::PassNotTunnel)?;
                    return Err(match unsafe { (*frag)[0] } {
                        IPPROTO_IPIP | IPPROTO_IPV6 if local => DecapOutcome::PassOuterFragment,
                        IPPROTO_IPIP | IPPROTO_IPV6 => DecapOutcome::PassNotLocal,
                        _ => DecapOutcome::PassNotTunnel,
                    });
                }
                // Other extension headers (destination options with a tunnel encapsulation
                // limit included) are not walked: the balancer does not add them.
                _ => return Err(DecapOutcome::PassNotTunnel),
            }
            (ipv6::HLEN, next, l3 + ip.len)
        }
        _ => return Err(DecapOutcome::PassNotTunnel),
    };

    // The inner header: the version the outer protocol announces, and a length that stays
    // inside the outer packet (which the checks above keep inside the frame). Shorter than the
    // outer payload is allowed: the stack trims the excess, as it trims Ethernet padding.
    let inner = l3 + outer_len;
    let inner_type = if inner_proto == IPPROTO_IPIP {
        parse::ipv4(ctx, inner, outer_end).ok_or(DecapOutcome::DropMalformed)?;
        eth::P_IP
    } else {
        parse::ipv6(ctx, inner, outer_end).ok_or(DecapOutcome::DropMalformed)?;
        eth::P_IPV6
    };
    // Constant indices on both paths: nothing here can fail a bounds check.
    if l3 == eth::TAGGED_HLEN {
        l2[16..18].copy_from_slice(&inner_type.to_be_bytes());
    } else {
        l2[12..14].copy_from_slice(&inner_type.to_be_bytes());
    }
    Ok(Strip {
        l2,
        l2_len: l3,
        outer_len,
        tunnel: chance::Tunnel {
            l3,
            outer_len,
            outer_v6: ether_type == eth::P_IPV6,
            inner_v6: inner_type == eth::P_IPV6,
        },
    })
}

/// Cuts the outer header: moves the frame start forward by its length and writes the saved
/// link-layer header there. Returns false only if the kernel refuses the move (it cannot, see
/// [`xdplb_decap`]) or the moved frame is shorter than the header (it cannot be either).
#[inline(always)]
fn apply(ctx: &XdpContext, strip: &Strip) -> bool {
    // `outer_len` is at most 60; the cast cannot truncate.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, strip.outer_len as i32) } != 0 {
        return false;
    }
    // verifier: adjust_head invalidates every packet pointer; ptr_at re-reads data/data_end
    // and re-checks before the writes.
    if strip.l2_len == eth::TAGGED_HLEN {
        let Some(hdr) = ptr_at::<[u8; eth::TAGGED_HLEN]>(ctx, 0) else {
            return false;
        };
        unsafe { *hdr = strip.l2 };
    } else {
        let Some(hdr) = ptr_at::<[u8; eth::HLEN]>(ctx, 0) else {
            return false;
        };
        let mut l2 = [0u8; eth::HLEN];
        l2.copy_from_slice(&strip.l2[..eth::HLEN]);
        unsafe { *hdr = l2 };
    }
    true
}

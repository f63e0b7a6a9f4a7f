//! `xdplb_decap`, the backends' XDP program: strips the outer header of IP-in-IP (4in4, 6in4, 6in6, 4in6) addressed to this host and passes the inner packet to the stack; everything else passes untouched.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{HashMap, PerCpuArray},
    helpers::bpf_xdp_adjust_head,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{
    decap::{DecapAddr, DecapOutcome, DECAP_COUNTER_COUNT, MAX_DECAP_ADDRS},
    Verdict, IPPROTO_IPIP, IPPROTO_IPV6,
};
use lb_ebpf::{
    counters::increment,
    wire::{
        eth::{self, P_8021Q as ETH_P_8021Q, P_IP as ETH_P_IP, P_IPV6 as ETH_P_IPV6},
        ipv4::{MF as IP_MF, OFFSET as IP_OFFSET},
        ipv6::EXT_FRAGMENT as IPPROTO_FRAGMENT,
        ptr_at,
    },
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

/// The local addresses tunnels may be addressed to (filled by `xdplb decap`).
#[btf_map]
static DECAP_ADDRS: HashMap<DecapAddr, u32, { MAX_DECAP_ADDRS as usize }> = HashMap::new();

/// One slot per `DecapCounter` (each [`DecapOutcome`] has one), per CPU.
#[btf_map]
static DECAP_STATS: PerCpuArray<u64, { DECAP_COUNTER_COUNT as usize }> = PerCpuArray::new();

const ETH_HLEN: usize = eth::HLEN;
/// Ethernet header plus one 802.1Q tag.
const VLAN_ETH_HLEN: usize = eth::HLEN + eth::VLAN_HLEN;

/// The decapsulation program. Every packet ends in exactly one outcome, counted here, whose
/// verdict is the action; except a failed `bpf_xdp_adjust_head` after all checks passed
/// (cannot happen: the delta is positive and leaves a whole inner IP header), which aborts and
/// shows in `xdp:xdp_exception`.
#[xdp]
pub fn xdplb_decap(ctx: XdpContext) -> u32 {
    let outcome = match plan(&ctx) {
        Ok(strip) => {
            if !apply(&ctx, &strip) {
                return xdp_action::XDP_ABORTED;
            }
            DecapOutcome::Decapsulated
        }
        Err(outcome) => outcome,
    };
    count(outcome);
    match outcome.verdict() {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        // No decap outcome sends the frame back; kept total rather than guessed.
        Verdict::Tx => xdp_action::XDP_TX,
    }
}

#[inline(always)]
fn count(outcome: DecapOutcome) {
    increment(&DECAP_STATS, outcome.counter() as u32);
}

/// What [`apply`] does to a tunnel packet that passed every check.
struct Strip {
    /// The link-layer header the inner packet gets: the frame's MACs, its 802.1Q tag if it had
    /// one, and the inner packet's ethertype last.
    l2: [u8; VLAN_ETH_HLEN],
    /// `ETH_HLEN` or `VLAN_ETH_HLEN`.
    l2_len: usize,
    /// Bytes of outer IP header to cut (IPv4: IHL × 4, 20..=60; IPv6: 40).
    outer_len: usize,
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
    let eth = ptr_at::<[u8; ETH_HLEN]>(ctx, 0).ok_or(DecapOutcome::PassNotTunnel)?;
    let eth = unsafe { *eth };
    let mut l2 = [0u8; VLAN_ETH_HLEN];
    l2[..12].copy_from_slice(&eth[..12]);
    let mut ether_type = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l3 = ETH_HLEN;
    if ether_type == ETH_P_8021Q {
        let tag = ptr_at::<[u8; 4]>(ctx, ETH_HLEN).ok_or(DecapOutcome::PassNotTunnel)?;
        let tag = unsafe { *tag };
        // Keep the tag (TPID and TCI) in place; only the ethertype after it changes.
        l2[12..14].copy_from_slice(&eth[12..14]);
        l2[14..16].copy_from_slice(&tag[..2]);
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        l3 = VLAN_ETH_HLEN;
    }
    let frame = ctx.data_end() - ctx.data();

    // The outer header: an IP-in-IP packet to one of our addresses, not fragmented. A broken
    // outer header is "not a tunnel" here: the stack drops it with its own counters, and
    // this program never touches what it cannot parse.
    let (outer_len, inner_proto, outer_payload) = match ether_type {
        ETH_P_IP => {
            let ip = ptr_at::<Ipv4Hdr>(ctx, l3).ok_or(DecapOutcome::PassNotTunnel)?;
            let ip = unsafe { &*ip };
            let ihl = (ip.vihl & 0x0f) as usize * 4;
            let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
            if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl || l3 + tot_len > frame {
                return Err(DecapOutcome::PassNotTunnel);
            }
            if ip.proto != IPPROTO_IPIP && ip.proto != IPPROTO_IPV6 {
                return Err(DecapOutcome::PassNotTunnel);
            }
            if !is_local(&DecapAddr::v4(ip.dst_addr)) {
                return Err(DecapOutcome::PassNotLocal);
            }
            // Any fragment, first or not: the inner packet is incomplete until the stack
            // reassembles it.
            if u16::from_be_bytes(ip.frags) & (IP_MF | IP_OFFSET) != 0 {
                return Err(DecapOutcome::PassOuterFragment);
            }
            (ihl, ip.proto, tot_len - ihl)
        }
        ETH_P_IPV6 => {
            let ip = ptr_at::<Ipv6Hdr>(ctx, l3).ok_or(DecapOutcome::PassNotTunnel)?;
            let ip = unsafe { &*ip };
            let payload = u16::from_be_bytes(ip.payload_len) as usize;
            if ip.vcf[0] >> 4 != 6 || l3 + Ipv6Hdr::LEN + payload > frame {
                return Err(DecapOutcome::PassNotTunnel);
            }
            let local = is_local(&DecapAddr::v6(ip.dst_addr));
            match ip.next_hdr {
                IPPROTO_IPIP | IPPROTO_IPV6 if local => {}
                IPPROTO_IPIP | IPPROTO_IPV6 => return Err(DecapOutcome::PassNotLocal),
                IPPROTO_FRAGMENT => {
                    // The fragment header's first byte is the protocol of the fragmented
                    // payload: count tunnel fragments as such, everything else is not ours.
                    let frag = ptr_at::<[u8; 8]>(ctx, l3 + Ipv6Hdr::LEN)
                        .ok_or(DecapOutcome::PassNotTunnel)?;
                    let next = unsafe { (*frag)[0] };
                    return Err(match next {
                        IPPROTO_IPIP | IPPROTO_IPV6 if local => DecapOutcome::PassOuterFragment,
                        IPPROTO_IPIP | IPPROTO_IPV6 => DecapOutcome::PassNotLocal,
                        _ => DecapOutcome::PassNotTunnel,
                    });
                }
                // Other extension headers (destination options with a tunnel encapsulation
                // limit included) are not walked: the balancer does not add them.
                _ => return Err(DecapOutcome::PassNotTunnel),
            }
            (Ipv6Hdr::LEN, ip.next_hdr, payload)
        }
        _ => return Err(DecapOutcome::PassNotTunnel),
    };

    // The inner header: the version the outer protocol announces, and a length that stays
    // inside the outer payload (which the checks above keep inside the frame). Less than the
    // outer payload is allowed: the stack trims the excess, as it trims Ethernet padding.
    let inner = l3 + outer_len;
    let inner_type = if inner_proto == IPPROTO_IPIP {
        let ip = ptr_at::<Ipv4Hdr>(ctx, inner).ok_or(DecapOutcome::DropMalformed)?;
        let ip = unsafe { &*ip };
        let ihl = (ip.vihl & 0x0f) as usize * 4;
        let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
        if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl || tot_len > outer_payload {
            return Err(DecapOutcome::DropMalformed);
        }
        ETH_P_IP
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, inner).ok_or(DecapOutcome::DropMalformed)?;
        let ip = unsafe { &*ip };
        let payload = u16::from_be_bytes(ip.payload_len) as usize;
        if ip.vcf[0] >> 4 != 6 || Ipv6Hdr::LEN + payload > outer_payload {
            return Err(DecapOutcome::DropMalformed);
        }
        ETH_P_IPV6
    };
    // Constant indices on both paths: nothing here can fail a bounds check.
    if l3 == VLAN_ETH_HLEN {
        l2[16..18].copy_from_slice(&inner_type.to_be_bytes());
    } else {
        l2[12..14].copy_from_slice(&inner_type.to_be_bytes());
    }
    Ok(Strip {
        l2,
        l2_len: l3,
        outer_len,
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
    if strip.l2_len == VLAN_ETH_HLEN {
        let Some(hdr) = ptr_at::<[u8; VLAN_ETH_HLEN]>(ctx, 0) else {
            return false;
        };
        unsafe { *hdr = strip.l2 };
    } else {
        let Some(hdr) = ptr_at::<[u8; ETH_HLEN]>(ctx, 0) else {
            return false;
        };
        let mut l2 = [0u8; ETH_HLEN];
        l2.copy_from_slice(&strip.l2[..ETH_HLEN]);
        unsafe { *hdr = l2 };
    }
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a panic path; nothing gets here at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

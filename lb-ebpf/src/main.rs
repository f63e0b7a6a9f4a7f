//! Entry points of xdplb's XDP programs: the balancer and the plain pass program for veth peers.
#![no_std]
#![no_main]

mod forward;
mod lookup;
mod maps;
mod parse;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{flow_hash, Counter, ADDR_ANSWER_ECHO, AF_INET6, FORWARD_IPIP, FORWARD_L2};
use parse::Kind;

/// The balancer. Every packet ends in exactly one outcome counter.
#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    match balance(&ctx) {
        Ok((action, outcome)) => {
            stats::count(outcome);
            action
        }
        Err(reason) => {
            stats::count(reason);
            action_for(reason)
        }
    }
}

/// What the NIC does with a packet that ended for `reason`: not ours goes to the stack,
/// broken or unservable VIP traffic is dropped.
#[inline(always)]
fn action_for(reason: Counter) -> u32 {
    match reason {
        Counter::DropMalformed
        | Counter::DropNoBackend
        | Counter::DropFragment
        | Counter::DropTooBig => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Classifies the packet and sends it on: the verdict and its outcome counter, or the reason
/// it goes no further.
#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<(u32, Counter), Counter> {
    let p = parse::parse(ctx)?;
    match p.kind {
        Kind::Flow | Kind::IcmpError => {}
        Kind::Fragment => {
            return Err(match lookup::vip_addr(&p.key) {
                Some(_) => Counter::DropFragment,
                None => Counter::PassUnsupported,
            });
        }
        Kind::EchoRequest => {
            let answer = lookup::vip_addr(&p.key).is_some_and(|a| a.flags & ADDR_ANSWER_ECHO != 0);
            if !answer {
                return Err(Counter::PassNotVip);
            }
            if parse::to_group_mac(ctx) {
                return Err(Counter::PassNotUnicast);
            }
            return Ok((forward::echo_reply(ctx, &p)?, Counter::TxIcmpEcho));
        }
    }
    let vip = lookup::vip(&p.key).ok_or(Counter::PassNotVip)?;
    if parse::to_group_mac(ctx) {
        return Err(Counter::PassNotUnicast);
    }
    let icmp_error = p.kind == Kind::IcmpError;
    // An ICMP error only follows its flow; it must not create one.
    let choice = lookup::choose(&p.key, &vip, !icmp_error)?;
    let bytes = parse::frame_len(ctx);
    let action = match vip.forwarding {
        FORWARD_L2 => forward::l2(ctx, &choice.backend)?,
        FORWARD_IPIP => {
            let settings = lookup::settings();
            let outer = if choice.backend.family == AF_INET6 {
                lb_common::IPV6_HLEN
            } else {
                lb_common::IPV4_HLEN
            } as usize;
            let limit = match settings.mtu {
                0 => 0xffff,
                mtu => mtu as usize,
            };
            if p.ip_len + outer > limit {
                // The client may be told to send smaller packets, unless it asked for
                // fragmentation (IPv4 without DF) or this is already an ICMP error.
                if icmp_error || !p.df {
                    return Err(Counter::DropTooBig);
                }
                let mtu = (limit - outer) as u32;
                return Ok((forward::too_big(ctx, &p, mtu)?, Counter::TxIcmpTooBig));
            }
            let hash = flow_hash(&p.key, false);
            forward::ipip(ctx, &p, &choice.backend, &settings, hash)?
        }
        // A mode this program does not know: the agent refuses such configs, so this is a
        // mismatch between agent and object; drop rather than send somewhere wrong.
        _ => return Err(Counter::DropNoBackend),
    };
    stats::traffic(&maps::VIP_STATS, vip.vip_id, bytes, choice.new_flow);
    stats::traffic(
        &maps::BACKEND_STATS,
        choice.backend_id,
        bytes,
        choice.new_flow,
    );
    let outcome = if icmp_error {
        Counter::TxIcmpSteered
    } else {
        Counter::TxForwarded
    };
    Ok((action, outcome))
}

/// `XDP_PASS` for everything. Native `XDP_TX` on a veth delivers frames to the peer only when
/// the peer runs an XDP program; labs load this one there.
#[xdp]
pub fn xdplb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
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

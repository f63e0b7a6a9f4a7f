//! Entry points of xdplb's XDP programs: the balancer and the plain pass program for veth peers.
#![no_std]
#![no_main]

mod forward;
mod lookup;
mod maps;
mod parse;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{Counter, FORWARD_L2};

/// The balancer. Every packet ends in exactly one outcome counter.
#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    match balance(&ctx) {
        Ok(action) => {
            stats::count(Counter::TxForwarded);
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
        Counter::DropMalformed | Counter::DropNoBackend => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<u32, Counter> {
    let flow = parse::flow_key(ctx)?;
    let vip = lookup::vip(&flow).ok_or(Counter::PassNotVip)?;
    if parse::to_group_mac(ctx) {
        return Err(Counter::PassNotUnicast);
    }
    let choice = lookup::choose(&flow, &vip)?;
    let bytes = parse::frame_len(ctx);
    let action = match vip.forwarding {
        FORWARD_L2 => forward::l2(ctx, &choice.backend)?,
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
    Ok(action)
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

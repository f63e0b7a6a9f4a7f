//! Baseline XDP programs for `cargo xtask bench`: the floor a balancer is measured against (an empty XDP_PASS and a minimal MAC swap with XDP_TX). Not part of the balancer object.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_ebpf::wire::ptr_at;

/// Does nothing: the cost of running any XDP program at all.
#[xdp]
pub fn baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Swaps source and destination MAC and bounces the frame: the least an L2 forwarder does.
#[xdp]
pub fn baseline_macswap(ctx: XdpContext) -> u32 {
    let Some(macs) = ptr_at::<[u8; 12]>(&ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: ptr_at checked the 12 bytes against data_end.
    unsafe {
        let m = *macs;
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&m[6..]);
        swapped[6..].copy_from_slice(&m[..6]);
        *macs = swapped;
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

//! Forwarding modes: how a packet is rewritten toward its backend.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{Backend, Counter};

use crate::parse;

/// L2 DSR: the frame goes back out of the NIC it came in on, addressed to the backend's MAC.
/// Source MAC := the destination the client's router used, i.e. this NIC. The IP packet is
/// untouched, so no checksum changes; the backend holds the VIP on `lo` and answers the client.
#[inline(always)]
pub fn l2(ctx: &XdpContext, backend: &Backend) -> Result<u32, Counter> {
    let eth = parse::eth_mut(ctx).ok_or(Counter::DropMalformed)?;
    unsafe {
        (*eth).src_addr = (*eth).dst_addr;
        (*eth).dst_addr = backend.mac;
    }
    Ok(xdp_action::XDP_TX)
}

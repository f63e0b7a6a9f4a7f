//! What every program here has, written once: panic handler, licence, verdict → XDP action.

use aya_ebpf::bindings::xdp_action;
use lb_common::Verdict;

/// The XDP action of a verdict: not ours goes to the stack, broken or unservable traffic is
/// dropped, a rewritten frame leaves by the NIC it came in on.
#[inline(always)]
pub fn action(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Tx => xdp_action::XDP_TX,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a panic path; nothing gets here at run time.
    loop {}
}

/// The kernel reads the licence from this section; GPL-compatible unlocks the GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
#[used]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

//! Entry points of xdplb's XDP programs: the balancer and the plain pass program for veth peers. Parsing, encapsulation and ICMP come from the lb-ebpf library; the balancer's own maps, lookups and counters are its modules.
#![no_std]
#![no_main]

mod lookup;
mod maps;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{Event, Outcome, Verdict, ADDR_ANSWER_ECHO, FORWARD_IPIP, FORWARD_L2};
use lb_ebpf::{
    encap, icmp,
    parse::{self, Kind},
    wire,
};
use lookup::{addressed_to_us, Remembered};

/// The balancer. Every packet ends in exactly one outcome, counted here and nowhere else, and
/// the outcome's verdict is the action: the counters and what the NIC did cannot disagree.
#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    let outcome = match balance(&ctx) {
        Ok(outcome) | Err(outcome) => outcome,
    };
    stats::count(outcome);
    action_for(outcome.verdict())
}

/// The XDP action of a verdict: not ours goes to the stack, broken or unservable VIP traffic
/// is dropped, a rewritten frame leaves by the NIC it came in on.
#[inline(always)]
fn action_for(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Tx => xdp_action::XDP_TX,
    }
}

/// Classifies the packet and sends it on. `Ok` is the `Tx*` outcome of a frame rewritten for
/// `XDP_TX`; `Err` the outcome of a packet that goes no further.
///
/// An established flow takes one hash lookup (the flow table, keyed by the whole 5-tuple); only
/// a flow the table cannot answer for looks up its VIP and the VIP's ring.
#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<Outcome, Outcome> {
    let p = parse::parse(ctx)?;
    match p.kind {
        Kind::Flow | Kind::IcmpError => {}
        Kind::Fragment => {
            return Err(match lookup::vip_addr(&p.key) {
                Some(_) => Outcome::DropFragment,
                None => Outcome::PassUnsupported,
            });
        }
        Kind::EchoRequest => {
            let answer = lookup::vip_addr(&p.key).is_some_and(|a| a.flags & ADDR_ANSWER_ECHO != 0);
            if !answer {
                return Err(Outcome::PassNotVip);
            }
            let settings = addressed_to_us(ctx)?;
            icmp::echo_reply(ctx, &p, settings)?;
            return Ok(Outcome::TxIcmpEcho);
        }
    }
    let icmp_error = p.kind == Kind::IcmpError;
    let (choice, new_flow, settings) = match lookup::remembered(&p.key) {
        Remembered::Hit(choice) => {
            // Only VIP flows are in the table, so this is VIP traffic: ours only if addressed
            // to us, as on the miss path below.
            let settings = addressed_to_us(ctx)?;
            stats::event(Event::ConnHit);
            (choice, false, settings)
        }
        remembered => {
            let vip = lookup::vip(&p.key).ok_or(Outcome::PassNotVip)?;
            let settings = addressed_to_us(ctx)?;
            let stale = matches!(remembered, Remembered::Stale);
            // An ICMP error only follows its flow; it must not create one.
            let choice = lookup::choose(&p.key, vip, stale, !icmp_error)?;
            (choice, true, settings)
        }
    };
    let backend = choice.backend;
    let bytes = wire::frame_len(ctx) as u64;
    match backend.vip_forwarding {
        FORWARD_L2 => encap::l2(ctx, backend, settings)?,
        FORWARD_IPIP => {
            if let Some(mtu) = encap::too_big_for_tunnel(&p, backend, settings, icmp_error)? {
                icmp::too_big(ctx, &p, mtu, settings)?;
                return Ok(Outcome::TxIcmpTooBig);
            }
            encap::ipip(ctx, &p, backend, settings, choice.hash)?;
        }
        // A mode this program does not know: the agent refuses such configs, so this is a
        // mismatch between agent and object; drop rather than send somewhere wrong.
        _ => return Err(Outcome::DropNoBackend),
    }
    stats::traffic(&maps::VIP_STATS, backend.vip_id, bytes, new_flow);
    stats::traffic(&maps::BACKEND_STATS, choice.backend_id, bytes, new_flow);
    Ok(if icmp_error {
        Outcome::TxIcmpSteered
    } else {
        Outcome::TxForwarded
    })
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

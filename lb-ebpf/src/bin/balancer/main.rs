//! The balancer's object (`lb-ebpf`): the `xdplb` program, and `xdplb_pass` for veth peers.
//!
//! Parsing, encapsulation and ICMP answers come from the lb-ebpf library; the balancer's own
//! maps, lookups and counters are the modules beside this file.
#![no_std]
#![no_main]

mod lookup;
mod maps;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{Event, Outcome, Settings, ADDR_ANSWER_ECHO, FORWARD_IPIP, FORWARD_L2};
use lb_ebpf::{
    encap, icmp,
    parse::{self, Kind},
    program, wire,
};
use lookup::{addressed_to_us, Remembered};

/// The balancer. Every packet ends in exactly one outcome, counted here and nowhere else, and
/// the outcome's verdict is the action: the counters and what the NIC did cannot disagree. An
/// established flow's forwarded packet is the one outcome counted in its backend's hit slot
/// rather than in `GLOBAL_STATS` (lb-common's `HitCounters` says how readers fold it back).
#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    let verdict = match balance(&ctx) {
        Ok(Exit::Hit(hit)) => {
            stats::hit(hit);
            Outcome::TxForwarded.verdict()
        }
        Ok(Exit::Done(outcome)) | Err(outcome) => {
            stats::count(outcome);
            outcome.verdict()
        }
    };
    program::action(verdict)
}

/// How a packet that went through the balancer ends: an established flow forwarded (counted
/// in one slot), or any other outcome.
enum Exit {
    Hit(stats::Hit),
    Done(Outcome),
}

/// Classifies the packet and sends it on. `Ok` is a frame rewritten for `XDP_TX`; `Err` the
/// outcome of a packet that goes no further.
///
/// An established flow takes one hash lookup (the flow table, keyed by the whole 5-tuple); only
/// a flow the table cannot answer for looks up its VIP and the VIP's ring.
#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<Exit, Outcome> {
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
            return Ok(Exit::Done(Outcome::TxIcmpEcho));
        }
    }
    let icmp_error = p.kind == Kind::IcmpError;
    let (choice, hit, settings) = match lookup::remembered(&p.key) {
        Remembered::Hit(choice) => {
            // Only VIP flows are in the table, so this is VIP traffic: ours only if addressed
            // to us, as on the miss path below.
            let settings = addressed_to_us(ctx)?;
            (choice, true, settings)
        }
        remembered => {
            let vip = lookup::vip(&p.key).ok_or(Outcome::PassNotVip)?;
            let settings = addressed_to_us(ctx)?;
            let stale = matches!(remembered, Remembered::Stale);
            // An ICMP error only follows its flow; it must not create one.
            let choice = lookup::choose(&p.key, vip, stale, !icmp_error)?;
            (choice, false, settings)
        }
    };
    // As received: the rewrite below may grow the frame.
    let bytes = wire::frame_len(ctx) as u64;
    let sent = send(ctx, &p, &choice, settings, icmp_error);
    if hit {
        if sent == Ok(Outcome::TxForwarded) {
            return Ok(Exit::Hit(stats::Hit {
                backend_id: choice.backend_id,
                bytes,
            }));
        }
        // A hit that ends otherwise (a steered ICMP error, a tunnel too small) is counted the
        // long way, like a miss.
        stats::event(Event::ConnHit);
    }
    let outcome = sent?;
    if outcome != Outcome::TxIcmpTooBig {
        stats::traffic(&maps::VIP_STATS, choice.backend.vip_id, bytes, !hit);
        stats::traffic(&maps::BACKEND_STATS, choice.backend_id, bytes, !hit);
    }
    Ok(Exit::Done(outcome))
}

/// Rewrites the frame toward `choice`'s backend the way its VIP forwards, or answers a packet
/// too big for the tunnel. Returns the `Tx*` outcome.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    p: &parse::Parsed,
    choice: &lookup::Choice,
    settings: &Settings,
    icmp_error: bool,
) -> Result<Outcome, Outcome> {
    let backend = choice.backend;
    match backend.vip_forwarding {
        FORWARD_L2 => encap::l2(ctx, backend, settings)?,
        FORWARD_IPIP => {
            if let Some(mtu) = encap::too_big_for_tunnel(p, backend, settings, icmp_error)? {
                icmp::too_big(ctx, p, mtu, settings)?;
                return Ok(Outcome::TxIcmpTooBig);
            }
            encap::ipip(ctx, p, backend, settings, choice.hash)?;
        }
        // A mode this program does not know: the agent refuses such configs, so this is a
        // mismatch between agent and object; drop rather than send somewhere wrong.
        _ => return Err(Outcome::DropNoBackend),
    }
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

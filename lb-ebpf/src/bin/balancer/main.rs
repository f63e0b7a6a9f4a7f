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
use lb_common::{
    Event, Outcome, Settings, ADDR_ANSWER_ECHO, FORWARD_IPIP, FORWARD_L2, IPPROTO_TCP, NO_BACKEND,
    VIP_STATELESS,
};
use lb_ebpf::{
    encap, icmp,
    parse::{self, Kind},
    program, wire,
};
use lookup::{addressed_to_us, Remembered};

/// The balancer. Every packet ends in exactly one outcome, counted here and nowhere else, and
/// the outcome's verdict is the action: the counters and what the NIC did cannot disagree. An
/// established flow's or a stateless VIP's forwarded packet is the one outcome counted in its
/// backend's hit slot rather than in `GLOBAL_STATS` (lb-common's `HitCounters` says how
/// readers fold it back).
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

/// How a packet that went through the balancer ends: an established flow or a stateless
/// VIP's packet forwarded (counted in one slot), or any other outcome.
enum Exit {
    Hit(stats::Hit),
    Done(Outcome),
}

/// Classifies the packet and sends it on. `Ok` is a frame rewritten for `XDP_TX`; `Err` the
/// outcome of a packet that goes no further.
///
/// The VIP comes first, from the VIP table (inlined array reads). A stateless VIP then needs
/// only the flow's hash and its ring; a stateful one asks the flow table (one hash lookup,
/// keyed by the whole 5-tuple), and only a flow the table cannot answer for reads the ring.
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
            let answer = lookup::vip_addr(&p.key).is_some_and(|f| f & ADDR_ANSWER_ECHO != 0);
            if !answer {
                return Err(Outcome::PassNotVip);
            }
            let settings = addressed_to_us(ctx)?;
            icmp::echo_reply(ctx, &p, settings)?;
            return Ok(Exit::Done(Outcome::TxIcmpEcho));
        }
    }
    let icmp_error = p.kind == Kind::IcmpError;
    let vip = lookup::vip(&p.key).ok_or(Outcome::PassNotVip)?;
    let settings = addressed_to_us(ctx)?;
    let stateless = vip.flags & VIP_STATELESS != 0;
    let (choice, hit) = if stateless {
        (lookup::choose(&p.key, vip, false, false)?, false)
    } else {
        match lookup::remembered(&p.key) {
            Remembered::Hit(choice) => (choice, true),
            remembered => {
                let stale = matches!(remembered, Remembered::Stale);
                // An ICMP error only follows its flow; it must not create one.
                (lookup::choose(&p.key, vip, stale, !icmp_error)?, false)
            }
        }
    };
    // As received: the rewrite below may grow the frame.
    let bytes = wire::frame_len(ctx) as u64;
    let sent = send(ctx, &p, &choice, settings, icmp_error);
    if hit || stateless {
        if sent == Ok(Outcome::TxForwarded) {
            return Ok(Exit::Hit(stats::Hit {
                backend_id: choice.backend_id,
                bytes,
                stateless,
            }));
        }
        // A hit that ends otherwise (a steered ICMP error, a tunnel too small) is counted the
        // long way, like a miss.
        if hit {
            stats::event(Event::ConnHit);
        }
    }
    let outcome = sent?;
    if outcome != Outcome::TxIcmpTooBig {
        // A stateless VIP's packet is never a new flow: the balancer does not know flows.
        let new_flow = !hit && !stateless;
        stats::traffic(&maps::VIP_STATS, choice.backend.vip_id, bytes, new_flow);
        stats::traffic(&maps::BACKEND_STATS, choice.backend_id, bytes, new_flow);
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
    // Second chance: a TCP packet whose ring slot changed owner carries the previous owner,
    // which the backend's host program sends it on to if the flow is not its own.
    let previous = (choice.previous != NO_BACKEND && p.key.proto == IPPROTO_TCP && !icmp_error)
        .then_some(choice.previous);
    match backend.vip_forwarding {
        FORWARD_L2 => {
            encap::l2(ctx, backend, settings)?;
            if let Some(id) = previous {
                encap::mark(ctx, p, id)?;
            }
        }
        FORWARD_IPIP => {
            if let Some(mtu) = encap::too_big_for_tunnel(p, backend, settings, icmp_error)? {
                icmp::too_big(ctx, p, mtu, settings)?;
                return Ok(Outcome::TxIcmpTooBig);
            }
            encap::ipip(ctx, p, backend, settings, choice.hash, previous)?;
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

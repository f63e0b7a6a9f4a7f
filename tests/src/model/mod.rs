//! A plain-Rust reference model of the XDP datapath, written from its documented behaviour.
//!
//! It covers parse, VIP lookup, flow table, Maglev ring, L2 rewrite, IP-in-IP, ICMP answers and
//! steering, and counters, for differential testing.
//!
//! Only *data* comes from the running balancer: the Maglev rings, the backend table and the
//! `SETTINGS` value, read back from the maps after the agent applied a config (the ring is
//! computed by userspace Maglev, not by the datapath; the settings are cross-checked against
//! the config's `tunnel:` section). Where no kernel is at hand (the fuzz targets in
//! `tests/fuzz`), the same data comes from the [`Desired`] value the agent would write to the
//! maps: both are [`Tables`], and the model's cross-checks run on either. The VIP table's
//! address entries are derived from the config here and must match
//! the map. Everything the XDP program decides per packet is re-derived here from the
//! documentation in `lb-ebpf/src/parse.rs`, `lb-ebpf/src/bin/balancer/lookup.rs`, the `Counter`
//! and `Settings` docs in lb-common and docs/datapath.md, parsing and building headers with
//! etherparse rather than the program's own code.
//!
//! Where the documented rules and etherparse's notion of a valid packet differ, the rules win
//! (the model mirrors the contract, not the library):
//!
//! - IPv4: etherparse's `Ipv4HeaderSlice` checks version, IHL ≥ 5 and that the header fits the
//!   slice; the total-length checks (≥ IHL, within the frame) are done here by hand because
//!   `Ipv4Slice` would also walk an IPv4 AH header (protocol 51), which the rules treat as
//!   just another non-TCP/UDP protocol (`PassNotVip`). Neither checks the header checksum.
//! - IPv6: `Ipv6HeaderSlice` only (version, 40 bytes); `Ipv6Slice` would walk extension
//!   headers, which the rules never do. The rules' extension-header list is hop-by-hop (0),
//!   routing (43), fragment (44), destination options (60), AH (51), mobility (135), HIP (139)
//!   and shim6 (140). etherparse's `is_ipv6_ext_header_value` also counts ESP (50) and the
//!   experimental 253/254; under the rules those are "another protocol" (`PassNotVip`).
//! - TCP: the rules and etherparse's strict slice agree (the whole header inside the IP packet,
//!   data offset ≥ 5).
//! - UDP: the rule is Linux's (8 ≤ length field ≤ the IP payload); etherparse's `UdpSlice`
//!   is laxer (length 0 for jumbograms), so the model checks the length field itself.
//!
//! The layout-v3 rules (fragments, ICMP, IP-in-IP), in the order the model applies them:
//!
//! - Destination MAC (layout v4): VIP traffic (a flow packet, an ICMP error, an echo request
//!   to an answering address) is balanced only in a frame addressed to `Settings::mac` or
//!   `Settings::virtual_mac` (all zero never matches); a group MAC is `PassNotUnicast`, another
//!   unicast MAC `PassOtherHost`. Every frame the balancer sends has `Settings::mac` as source.
//! - Fragments (IPv4 MF or offset ≠ 0, checked before the protocol; IPv6 next header 44) to an
//!   address with an entry in the VIP table, of the same family, are dropped (`DropFragment`), others passed
//!   (`PassUnsupported`). The destination MAC is not consulted.
//! - ICMP (IPv4 protocol 1) / ICMPv6 (IPv6 next header 58) needs its 8-byte header inside the
//!   IP packet, else `PassNotVip`. An echo request (8/0, 128/0) to an address whose
//!   address entry has `ADDR_ANSWER_ECHO` is answered in place (`TxIcmpEcho`; a group
//!   destination MAC is `PassNotUnicast`); to any other address it is `PassNotVip`. Both
//!   checksums are updated incrementally (RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`), so a
//!   wrong input checksum stays wrong by the same amount.
//! - ICMP errors (IPv4 3, 11, 12; ICMPv6 1..=4, any code) quote the packet the VIP sent. The
//!   quoted IPv4 header only needs its first 20 bytes inside the *frame*: the program reads
//!   the fixed header before it knows the quote's extent, and the quoted ports (which come
//!   after the whole quoted header) are what must lie inside the outer IP packet. So a quoted
//!   header that runs from the IP packet into Ethernet padding is still judged on its
//!   version, IHL, source and fragment offset (a quoted fragment is `PassUnsupported`, not
//!   `PassNotVip`) before the ports check fails. The same holds for a quoted IPv6 header
//!   (40 bytes in the frame), where it is unobservable (no check between). A quoted IPv4
//!   header whose MF alone is set is a first fragment and has ports: it is steered.
//! - Errors are steered by the quoted flow reversed (client → VIP), like a flow packet of
//!   that flow, except that a flow-table miss is never remembered, the outcome is
//!   `TxIcmpSteered`, and an `ipip` error too big for the tunnel is dropped (`DropTooBig`).
//! - `ipip` VIPs encapsulate (outer IPv4 for an IPv4 backend, IPv6 for an IPv6 one) when the
//!   IP packet plus the outer header fits `Settings::mtu` (65535 when it is 0); otherwise an
//!   IPv4 packet without DF is dropped (`DropTooBig`) and the others are answered with ICMP
//!   "fragmentation needed" / ICMPv6 "packet too big" (`TxIcmpTooBig`, not accounted to the
//!   VIP or backend; a miss's flow-table entry is still written first).
//!
//! VIP first (layout v8): the destination's VIP is looked up (none: `PassNotVip`, whatever
//! the flow table holds, so the flows of a removed VIP stop with it), then the frame must be
//! addressed to us. A stateless VIP's ring decides every packet, with no flow-table lookup
//! and no new flow counted. A stateful VIP uses its flow-table entry if the entry's backend
//! serves (active or draining) and has the entry's tag; it is forwarded by the mode the backend
//! entry carries and accounted to the backend's VIP. Otherwise the ring decides, and an entry
//! that was there but unusable makes the lookup a `ConnResteer` rather than a `ConnMiss`.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context as _};
use etherparse::{
    icmpv4::DestUnreachableHeader, ip_number, EtherType, Ethernet2HeaderSlice, Icmpv4Header,
    Icmpv4Slice, Icmpv4Type, Icmpv6Header, Icmpv6Slice, Icmpv6Type, IpNumber, Ipv4Dscp, Ipv4Ecn,
    Ipv4Header, Ipv4HeaderSlice, Ipv6FlowLabel, Ipv6Header, Ipv6HeaderSlice, SingleVlanHeaderSlice,
    TcpHeaderSlice, UdpHeaderSlice,
};
use lb_common::history::{slot_owner, slot_previous};
use lb_common::{
    flow_hash, AddrKey, AddrMeta, Backend, ConnEntry, Counter, Family, FlowKey, Settings,
    TrafficCounters, VipKey, VipMeta, ADDR_ANSWER_ECHO, BACKEND_ACTIVE, BACKEND_DRAINING,
    BACKEND_UNUSED, COUNTER_COUNT, FORWARD_IPIP, FORWARD_L2, NO_BACKEND, ORIGIN_TTL,
    VIP_HASH_SOURCE_IP, VIP_STATELESS,
};
use lb_userspace::{
    config::{Config, Forwarding, HashMode, Prefix, Protocol},
    datapath::maps::BalancerMaps,
    model::desired::Desired,
};

/// XDP verdicts (`enum xdp_action` in the kernel UAPI), the ones the program's runs return.
pub use lb_userspace::datapath::testrun::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX};

mod packet;
mod rewrite;
mod tables;

pub use self::packet::{parse, Kind, Packet};
use self::rewrite::{echo_reply, encapsulate, mark, too_big, word};
pub use self::tables::Tables;
use self::tables::{addr_bytes, addr_key, check_settings, config_vip_key};

/// Largest IP packet when `Settings::mtu` is 0 (no configured limit).
const NO_MTU_LIMIT: usize = 65535;

/// What the datapath must do with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// `XDP_PASS`, `XDP_TX` or `XDP_DROP`.
    pub action: u32,
    /// The frame as the program must leave it.
    pub output: Vec<u8>,
    /// The one outcome counter (`Pass*`, `Drop*`, `Tx*`) the packet increments.
    pub reason: Counter,
    /// The flow-table lookup counter it increments on the way (`ConnHit`, `ConnMiss`,
    /// `ConnResteer`); `None` for packets that never reach a stateful VIP's flow table.
    pub lookup: Option<Counter>,
    /// VIP and backend a forwarded packet (flow or steered ICMP error) is accounted to.
    pub forwarded: Option<Forwarded>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarded {
    pub vip_id: u32,
    pub backend_id: u32,
    /// A stateful VIP's ring decided (flow-table miss or re-steer).
    pub new_flow: bool,
    /// The ring slot's previous owner (second chance): the ring's when it decided, the flow
    /// entry's on a hit; else `NO_BACKEND`.
    pub previous: u32,
}

/// One VIP as the model sees it: identity from the config, ring from the maps.
#[derive(Clone, Debug)]
struct ModelVip {
    vip_id: u32,
    source_only: bool,
    stateless: bool,
    ipip: bool,
    ring: Vec<u32>,
}

/// The reference datapath: VIPs, rings and backends of the applied config, plus its own flow
/// table (never evicts: tests keep their flow count well below the real table's capacity).
/// `Clone` gives a fuzz target a fresh copy per input without rebuilding the rings.
#[derive(Clone)]
pub struct Model {
    vips: HashMap<VipKey, ModelVip>,
    /// The address entries as the config defines them: every VIP address, and whether any VIP on it
    /// has `icmp_echo`.
    addrs: HashMap<AddrKey, bool>,
    settings: Settings,
    backends: HashMap<u32, Backend>,
    flows: HashMap<FlowKey, ConnEntry>,
    counters: [u64; COUNTER_COUNT as usize],
    vip_traffic: HashMap<u32, TrafficCounters>,
    backend_traffic: HashMap<u32, TrafficCounters>,
}

/// What one frame's parse, decision and rewrite produced, when it is not left untouched.
struct Answer {
    reason: Counter,
    output: Vec<u8>,
    forwarded: Option<Forwarded>,
}

/// The verdict an outcome counter implies.
fn verdict(reason: Counter) -> u32 {
    match reason {
        Counter::TxForwarded
        | Counter::TxIcmpSteered
        | Counter::TxIcmpEcho
        | Counter::TxIcmpTooBig => XDP_TX,
        Counter::DropMalformed
        | Counter::DropNoBackend
        | Counter::DropFragment
        | Counter::DropTooBig => XDP_DROP,
        _ => XDP_PASS,
    }
}

impl Model {
    /// A model of the datapath `maps` describe after `cfg` was applied, with an empty flow
    /// table and zero counters.
    pub fn new(cfg: &Config, maps: &impl Tables) -> anyhow::Result<Model> {
        let mut model = Model {
            vips: HashMap::new(),
            addrs: HashMap::new(),
            settings: Settings::default(),
            backends: HashMap::new(),
            flows: HashMap::new(),
            counters: [0; COUNTER_COUNT as usize],
            vip_traffic: HashMap::new(),
            backend_traffic: HashMap::new(),
        };
        model.refresh(cfg, maps)?;
        Ok(model)
    }

    /// Re-reads VIPs, rings, backends, VIP addresses and settings after `cfg` was applied (a
    /// reload). The flow table and the tallies carry over, as the real ones do.
    pub fn refresh(&mut self, cfg: &Config, maps: &impl Tables) -> anyhow::Result<()> {
        let ids: HashMap<VipKey, u32> = maps
            .vips()?
            .into_iter()
            .map(|(k, m)| (k, m.vip_id))
            .collect();
        ensure!(
            ids.len() == cfg.vips.len(),
            "the VIP table holds {} VIPs for {} configured VIPs",
            ids.len(),
            cfg.vips.len()
        );
        self.vips.clear();
        self.addrs.clear();
        for vip in cfg.vips.iter() {
            let key = config_vip_key(vip.address, vip.port, vip.protocol);
            let vip_id = *ids
                .get(&key)
                .with_context(|| format!("VIP {} is not in the VIP table", vip.name))?;
            let ring = maps.ring(vip_id)?;
            ensure!(
                ring.len() == vip.ring_size.0 as usize,
                "VIP {}: ring has {} slots, config says {}",
                vip.name,
                ring.len(),
                vip.ring_size.0
            );
            self.vips.insert(
                key,
                ModelVip {
                    vip_id,
                    source_only: vip.hash == HashMode::SourceIp,
                    stateless: vip.stateless,
                    ipip: vip.forwarding == Forwarding::Ipip,
                    ring,
                },
            );
            let (addr, family) = addr_bytes(vip.address);
            *self.addrs.entry(addr_key(family, addr)).or_default() |= vip.icmp_echo;
        }
        let in_map: HashMap<AddrKey, bool> = maps
            .vip_addrs()?
            .into_iter()
            .map(|(k, m)| (k, m.flags & ADDR_ANSWER_ECHO != 0))
            .collect();
        ensure!(
            in_map == self.addrs,
            "the VIP table holds addresses {in_map:?}, the config's VIP addresses (answering echo) are {:?}",
            self.addrs
        );
        self.settings = maps.settings()?;
        check_settings(cfg, &self.settings)?;
        self.backends = maps.backends()?.into_iter().collect();
        // A flow-table hit forwards by what the backend entry carries of its VIP: it must be
        // what the VIP is.
        for (id, b) in &self.backends {
            let Some(vip) = self.vips.values().find(|v| v.vip_id == b.vip_id) else {
                continue;
            };
            let flags = if vip.source_only {
                VIP_HASH_SOURCE_IP
            } else {
                0
            } | if vip.stateless { VIP_STATELESS } else { 0 };
            let forwarding = if vip.ipip { FORWARD_IPIP } else { FORWARD_L2 };
            ensure!(
                b.state == BACKEND_UNUSED || (b.vip_flags, b.vip_forwarding) == (flags, forwarding),
                "backend {id} carries VIP flags {:#x} and forwarding {} for VIP id {} (flags {flags:#x}, forwarding {forwarding})",
                b.vip_flags,
                b.vip_forwarding,
                b.vip_id
            );
        }
        for vip in self.vips.values() {
            let named = vip
                .ring
                .iter()
                .flat_map(|s| [slot_owner(*s), slot_previous(*s)]);
            for id in named.filter(|id| *id != NO_BACKEND) {
                match self.backends.get(&id) {
                    Some(b) if b.vip_id == vip.vip_id => {}
                    Some(b) => bail!(
                        "ring of VIP id {} names backend {id} of VIP id {}",
                        vip.vip_id,
                        b.vip_id
                    ),
                    None => bail!("ring of VIP id {} names unused backend {id}", vip.vip_id),
                }
            }
        }
        Ok(())
    }

    /// Runs one frame through the model, updating its flow table and tallies.
    pub fn run(&mut self, frame: &[u8]) -> Expected {
        let mut lookup = None;
        let outcome = parse(frame).and_then(|p| self.act(frame, &p, &mut lookup));
        let answer = outcome.unwrap_or_else(|reason| Answer {
            reason,
            output: frame.to_vec(),
            forwarded: None,
        });
        if let Some(forwarded) = answer.forwarded {
            // Traffic counters count the frame as received, whatever was sent.
            let bytes = frame.len() as u64;
            for t in [
                self.vip_traffic.entry(forwarded.vip_id).or_default(),
                self.backend_traffic
                    .entry(forwarded.backend_id)
                    .or_default(),
            ] {
                t.packets += 1;
                t.bytes += bytes;
                t.new_flows += u64::from(forwarded.new_flow);
            }
        }
        self.counters[answer.reason as usize] += 1;
        if let Some(l) = lookup {
            self.counters[l as usize] += 1;
        }
        Expected {
            action: verdict(answer.reason),
            output: answer.output,
            reason: answer.reason,
            lookup,
            forwarded: answer.forwarded,
        }
    }

    /// Whether `frame` is addressed to the balancer: its own MAC or the virtual MAC from
    /// `SETTINGS` (all zero = unset, never matches); else the outcome of a group frame or of
    /// another host's frame that a flooding switch delivered.
    fn addressed_to_us(&self, frame: &[u8]) -> Result<(), Counter> {
        let dst: [u8; 6] = frame[0..6]
            .try_into()
            .expect("parsed frames hold a MAC header");
        if dst[0] & 1 == 1 {
            return Err(Counter::PassNotUnicast);
        }
        let ours = |m: [u8; 6]| m != [0; 6] && m == dst;
        if ours(self.settings.mac) || ours(self.settings.virtual_mac) {
            Ok(())
        } else {
            Err(Counter::PassOtherHost)
        }
    }

    /// What a parsed packet gets: an answer (a rewritten frame to send), or the outcome of a
    /// frame left as it is.
    fn act(
        &mut self,
        frame: &[u8],
        p: &Packet,
        lookup: &mut Option<Counter>,
    ) -> Result<Answer, Counter> {
        let to_us = self.addressed_to_us(frame);
        let addr = self.addrs.get(&addr_key(p.family, p.dst)).copied();
        let (key, steered) = match p.kind {
            Kind::Fragment => {
                return Err(match addr {
                    Some(_) => Counter::DropFragment,
                    None => Counter::PassUnsupported,
                })
            }
            Kind::EchoRequest => {
                if addr != Some(true) {
                    return Err(Counter::PassNotVip);
                }
                to_us?;
                return Ok(Answer {
                    reason: Counter::TxIcmpEcho,
                    output: echo_reply(frame, p, self.settings.mac),
                    forwarded: None,
                });
            }
            Kind::Flow(key) => (key, false),
            Kind::IcmpError(key) => (key, true),
        };
        let (forwarded, backend, ipip, hash) = self.choose(&key, to_us, !steered, lookup)?;
        // Second chance: TCP packets of a slot that changed owner carry the previous one.
        let previous = Some(forwarded.previous)
            .filter(|id| *id != NO_BACKEND && key.proto == lb_common::IPPROTO_TCP && !steered);
        let reason = if steered {
            Counter::TxIcmpSteered
        } else {
            Counter::TxForwarded
        };
        let output = if ipip {
            let outer = if backend.family == Family::V4 { 20 } else { 40 };
            let limit = match self.settings.mtu {
                0 => NO_MTU_LIMIT,
                mtu => mtu as usize,
            };
            if p.ip_len + outer > limit {
                // The balancer cannot fragment; only a sender that may lower its path MTU is
                // told to (never about an ICMP error, which must not draw another).
                if steered || (p.family == Family::V4 && !p.df) {
                    return Err(Counter::DropTooBig);
                }
                return Ok(Answer {
                    reason: Counter::TxIcmpTooBig,
                    output: too_big(frame, p, limit - outer, self.settings.mac),
                    forwarded: None,
                });
            }
            encapsulate(frame, p, hash, previous, &backend, &self.settings)
        } else {
            // L2 DSR: the frame goes to the backend's MAC, from this NIC's own MAC (never one
            // copied from the frame); nothing past the Ethernet addresses changes.
            let mut output = frame.to_vec();
            output[0..6].copy_from_slice(&backend.mac);
            output[6..12].copy_from_slice(&self.settings.mac);
            if let Some(id) = previous {
                mark(&mut output, p, id);
            }
            output
        };
        Ok(Answer {
            reason,
            output,
            forwarded: Some(forwarded),
        })
    }

    /// VIP lookup, then flow table and (when it does not answer) ring: the backend for `flow`,
    /// whether it tunnels and the tunnel's hash (the entry's on a hit: it keeps the one computed
    /// when the flow was pinned), or why there is none. A ring decision is remembered only if
    /// `remember`.
    fn choose(
        &mut self,
        flow: &FlowKey,
        to_us: Result<(), Counter>,
        remember: bool,
        lookup: &mut Option<Counter>,
    ) -> Result<(Forwarded, Backend, bool, u32), Counter> {
        let serving = |id: u32| {
            self.backends
                .get(&id)
                .filter(|b| b.state == BACKEND_ACTIVE || b.state == BACKEND_DRAINING)
                .copied()
        };
        // The VIP first; a stateless one is decided by its ring alone, a stateful one asks the
        // flow table (keyed by the whole 5-tuple) before its ring.
        let exact = VipKey {
            addr: flow.dst,
            port: flow.dport,
            proto: flow.proto,
            family: flow.family,
        };
        let all_ports = VipKey {
            port: [0, 0],
            ..exact
        };
        let vip = self
            .vips
            .get(&exact)
            .or_else(|| self.vips.get(&all_ports))
            .ok_or(Counter::PassNotVip)?;
        // VIP traffic comes to our unicast MAC; a group frame or another host's is not ours.
        to_us?;
        let mut stale = false;
        if let Some(entry) = self.flows.get(flow).filter(|_| !vip.stateless) {
            let usable = serving(entry.backend_id)
                .filter(|b| b.tag == entry.tag && b.vip_flags & VIP_STATELESS == 0);
            match usable {
                Some(b) => {
                    *lookup = Some(Counter::ConnHit);
                    let forwarded = Forwarded {
                        vip_id: b.vip_id,
                        backend_id: entry.backend_id,
                        new_flow: false,
                        previous: entry.previous,
                    };
                    return Ok((forwarded, b, b.vip_forwarding == FORWARD_IPIP, entry.hash));
                }
                // Its backend was removed, is down, or its slot has a new owner (the tag
                // differs): the ring decides again, and the flow is re-steered rather than
                // black-holed.
                None => stale = true,
            }
        }
        if !vip.stateless {
            *lookup = Some(if stale {
                Counter::ConnResteer
            } else {
                Counter::ConnMiss
            });
        }
        let ring = &vip.ring;
        if ring.is_empty() {
            return Err(Counter::DropNoBackend);
        }
        let slot = flow_hash(flow, vip.source_only) % ring.len() as u32;
        let owners = ring[slot as usize];
        let id = slot_owner(owners);
        if id == NO_BACKEND {
            return Err(Counter::DropNoBackend);
        }
        let backend = serving(id).ok_or(Counter::DropNoBackend)?;
        let (vip_id, ipip, stateless) = (vip.vip_id, vip.ipip, vip.stateless);
        if !stateless && remember {
            self.flows.insert(
                *flow,
                ConnEntry {
                    backend_id: id,
                    tag: backend.tag,
                    hash: flow_hash(flow, false),
                    previous: slot_previous(owners),
                },
            );
        }
        // A stateless VIP's packet is never counted as a new flow: it knows no flows.
        let forwarded = Forwarded {
            vip_id,
            backend_id: id,
            new_flow: !stateless,
            previous: slot_previous(owners),
        };
        Ok((forwarded, backend, ipip, flow_hash(flow, false)))
    }

    /// The model's flow table (stateful VIPs' remembered choices).
    pub fn flows(&self) -> &HashMap<FlowKey, ConnEntry> {
        &self.flows
    }

    /// What GLOBAL_STATS must hold, in `Counter` order, for a program that started at zero.
    pub fn counters(&self) -> [u64; COUNTER_COUNT as usize] {
        self.counters
    }

    /// Forwarded traffic per VIP id, as VIP_STATS must count it.
    pub fn vip_traffic(&self) -> &HashMap<u32, TrafficCounters> {
        &self.vip_traffic
    }

    /// Forwarded traffic per backend id, as BACKEND_STATS must count it.
    pub fn backend_traffic(&self) -> &HashMap<u32, TrafficCounters> {
        &self.backend_traffic
    }
}

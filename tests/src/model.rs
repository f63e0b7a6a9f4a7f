//! A plain-Rust reference model of the XDP datapath (parse, VIP lookup, flow table, Maglev ring, L2 rewrite, IP-in-IP, ICMP answers and steering, counters), written from the documented behaviour for differential testing.
//!
//! Only *data* comes from the running balancer: the Maglev rings, the backend table and the
//! `SETTINGS` value, read back from the maps after the agent applied a config (the ring is
//! computed by userspace Maglev, not by the datapath; the settings are cross-checked against
//! the config's `tunnel:` section). Where no kernel is at hand (the fuzz targets in
//! `tests/fuzz`), the same data comes from the [`Desired`] value the agent would write to the
//! maps: both are [`Tables`], and the model's cross-checks run on either. `VIP_ADDRS` is derived from the config here and must match
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
//!   address in `VIP_ADDRS` of the same family are dropped (`DropFragment`), others passed
//!   (`PassUnsupported`). The destination MAC is not consulted.
//! - ICMP (IPv4 protocol 1) / ICMPv6 (IPv6 next header 58) needs its 8-byte header inside the
//!   IP packet, else `PassNotVip`. An echo request (8/0, 128/0) to an address whose
//!   `VIP_ADDRS` entry has `ADDR_ANSWER_ECHO` is answered in place (`TxIcmpEcho`; a group
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
//! Flow table first (layout v6): a flow-table entry is used if its backend serves (active or
//! draining), has the entry's tag and its VIP (the flags the backend entry carries) is not
//! stateless; then the frame must be addressed to us, and it is forwarded by the mode the
//! backend entry carries and accounted to the backend's VIP, with no VIP lookup. Otherwise the
//! VIP is looked up (none: `PassNotVip`, whatever the table held, so the flows of a removed VIP
//! stop with it), and an entry that was there but unusable makes a stateful VIP's lookup a
//! `ConnResteer` rather than a `ConnMiss`.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context as _};
use etherparse::{
    icmpv4::DestUnreachableHeader, ip_number, EtherType, Ethernet2HeaderSlice, Icmpv4Header,
    Icmpv4Slice, Icmpv4Type, Icmpv6Header, Icmpv6Slice, Icmpv6Type, IpNumber, Ipv4Dscp, Ipv4Ecn,
    Ipv4Header, Ipv4HeaderSlice, Ipv6FlowLabel, Ipv6Header, Ipv6HeaderSlice, SingleVlanHeaderSlice,
    TcpHeaderSlice, UdpHeaderSlice,
};
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

/// IPv6 next-header values the datapath documents as extension headers it does not walk.
const IPV6_EXT_HEADERS: [IpNumber; 8] = [
    ip_number::IPV6_HOP_BY_HOP,
    ip_number::IPV6_ROUTE,
    ip_number::IPV6_FRAG,
    ip_number::IPV6_DEST_OPTIONS,
    ip_number::AUTH,
    ip_number::MOBILITY,
    ip_number::HIP,
    ip_number::SHIM6,
];

/// Largest IP packet when `Settings::mtu` is 0 (no configured limit).
const NO_MTU_LIMIT: usize = 65535;
/// Traffic class of the balancer's own ICMPv4 messages: precedence "internetwork control",
/// as the kernel sends its ICMP errors.
const ICMP_TOS: u8 = 0xc0;
/// How much of the original IPv6 packet an ICMPv6 "packet too big" quotes: its header and
/// the first 8 bytes after it.
const ICMPV6_QUOTE: usize = 48;

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
    /// The ring decided (flow-table miss or re-steer, or a stateless VIP).
    pub new_flow: bool,
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

/// The map contents the model takes as data: read back from a loaded program's maps, or
/// taken from the [`Desired`] value that would be written to them.
pub trait Tables {
    fn vips(&self) -> anyhow::Result<Vec<(VipKey, VipMeta)>>;
    fn ring(&self, vip_id: u32) -> anyhow::Result<Vec<u32>>;
    fn vip_addrs(&self) -> anyhow::Result<Vec<(AddrKey, AddrMeta)>>;
    fn settings(&self) -> anyhow::Result<Settings>;
    /// Every used backend slot, with its id.
    fn backends(&self) -> anyhow::Result<Vec<(u32, Backend)>>;
}

impl Tables for BalancerMaps {
    fn vips(&self) -> anyhow::Result<Vec<(VipKey, VipMeta)>> {
        BalancerMaps::vips(self)
    }
    fn ring(&self, vip_id: u32) -> anyhow::Result<Vec<u32>> {
        BalancerMaps::ring(self, vip_id)
    }
    fn vip_addrs(&self) -> anyhow::Result<Vec<(AddrKey, AddrMeta)>> {
        BalancerMaps::vip_addrs(self)
    }
    fn settings(&self) -> anyhow::Result<Settings> {
        BalancerMaps::settings(self)
    }
    fn backends(&self) -> anyhow::Result<Vec<(u32, Backend)>> {
        BalancerMaps::backends(self)
    }
}

impl Tables for Desired {
    fn vips(&self) -> anyhow::Result<Vec<(VipKey, VipMeta)>> {
        Ok(self.vips.iter().map(|v| (v.key, v.meta)).collect())
    }
    fn ring(&self, vip_id: u32) -> anyhow::Result<Vec<u32>> {
        self.vips
            .iter()
            .find(|v| v.meta.vip_id == vip_id)
            .map(|v| v.ring.clone())
            .with_context(|| format!("no desired VIP has id {vip_id}"))
    }
    fn vip_addrs(&self) -> anyhow::Result<Vec<(AddrKey, AddrMeta)>> {
        Ok(self.addrs.iter().map(|(k, m)| (*k, *m)).collect())
    }
    fn settings(&self) -> anyhow::Result<Settings> {
        Ok(self.settings)
    }
    fn backends(&self) -> anyhow::Result<Vec<(u32, Backend)>> {
        Ok(self.backends.iter().map(|(id, b)| (*id, *b)).collect())
    }
}

/// The reference datapath: VIPs, rings and backends of the applied config, plus its own flow
/// table (never evicts: tests keep their flow count well below the real table's capacity).
/// `Clone` gives a fuzz target a fresh copy per input without rebuilding the rings.
#[derive(Clone)]
pub struct Model {
    vips: HashMap<VipKey, ModelVip>,
    /// `VIP_ADDRS` as the config defines it: every VIP address, and whether any VIP on it
    /// has `icmp_echo`.
    addrs: HashMap<AddrKey, bool>,
    settings: Settings,
    backends: HashMap<u32, Backend>,
    flows: HashMap<FlowKey, ConnEntry>,
    counters: [u64; COUNTER_COUNT as usize],
    vip_traffic: HashMap<u32, TrafficCounters>,
    backend_traffic: HashMap<u32, TrafficCounters>,
}

/// An address as the maps hold it: the first 4 or all 16 bytes, and the family.
fn addr_bytes(address: std::net::IpAddr) -> ([u8; 16], Family) {
    let mut addr = [0u8; 16];
    match address {
        std::net::IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            (addr, Family::V4)
        }
        std::net::IpAddr::V6(a) => (a.octets(), Family::V6),
    }
}

/// The VIPS key the documentation defines for a configured VIP: address in the first 4 or
/// 16 bytes, port in network order (0 = all ports), protocol and family.
fn config_vip_key(address: std::net::IpAddr, port: u16, protocol: Protocol) -> VipKey {
    let (addr, family) = addr_bytes(address);
    let proto = match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    };
    VipKey {
        addr,
        port: port.to_be_bytes(),
        proto,
        family,
    }
}

fn addr_key(family: Family, addr: [u8; 16]) -> AddrKey {
    AddrKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

/// The host bits a prefix leaves to the flow hash, within the address's last 32 bits.
fn host_bits(p: &Prefix) -> u32 {
    let bits = if p.addr.is_ipv4() { 32 } else { 128 } - u32::from(p.len);
    u32::MAX.checked_shr(32 - bits.min(32)).unwrap_or(0)
}

/// Checks that `SETTINGS` holds what the config's `tunnel:` section says.
fn check_settings(cfg: &Config, s: &Settings) -> anyhow::Result<()> {
    let t = &cfg.tunnel;
    let (src4, _) = addr_bytes(t.source_v4.addr);
    let (src6, _) = addr_bytes(t.source_v6.addr);
    ensure!(
        s.tunnel_src4 == src4[..4]
            && u32::from_be_bytes(s.tunnel_src4_host) == host_bits(&t.source_v4),
        "SETTINGS IPv4 tunnel source {:?}/{:08x} is not the config's {}/{}",
        s.tunnel_src4,
        u32::from_be_bytes(s.tunnel_src4_host),
        t.source_v4.addr,
        t.source_v4.len
    );
    ensure!(
        s.tunnel_src6 == src6 && u32::from_be_bytes(s.tunnel_src6_host) == host_bits(&t.source_v6),
        "SETTINGS IPv6 tunnel source {:?}/{:08x} is not the config's {}/{}",
        s.tunnel_src6,
        u32::from_be_bytes(s.tunnel_src6_host),
        t.source_v6.addr,
        t.source_v6.len
    );
    let virtual_mac = cfg.virtual_mac.map_or([0; 6], |m| m.0);
    ensure!(
        s.virtual_mac == virtual_mac && s.mac != [0; 6],
        "SETTINGS MACs {:02x?} / virtual {:02x?}: the own MAC must be set and the virtual one be the config's {:02x?}",
        s.mac,
        s.virtual_mac,
        virtual_mac
    );
    if let Some(mtu) = t.mtu {
        ensure!(
            s.mtu == mtu.0,
            "SETTINGS mtu {} is not the config's {}",
            s.mtu,
            mtu.0
        );
    }
    Ok(())
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
            "VIPS holds {} entries for {} configured VIPs",
            ids.len(),
            cfg.vips.len()
        );
        self.vips.clear();
        self.addrs.clear();
        for vip in cfg.vips.iter() {
            let key = config_vip_key(vip.address, vip.port, vip.protocol);
            let vip_id = *ids
                .get(&key)
                .with_context(|| format!("VIP {} is not in the VIPS map", vip.name))?;
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
            "VIP_ADDRS holds {in_map:?}, the config's VIP addresses (answering echo) are {:?}",
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
            for id in vip.ring.iter().filter(|id| **id != NO_BACKEND) {
                match self.backends.get(id) {
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
            encapsulate(frame, p, hash, &backend, &self.settings)
        } else {
            // L2 DSR: the frame goes to the backend's MAC, from this NIC's own MAC (never one
            // copied from the frame); nothing past the Ethernet addresses changes.
            let mut output = frame.to_vec();
            output[0..6].copy_from_slice(&backend.mac);
            output[6..12].copy_from_slice(&self.settings.mac);
            output
        };
        Ok(Answer {
            reason,
            output,
            forwarded: Some(forwarded),
        })
    }

    /// Flow table, then (when it does not answer) VIP lookup and ring: the backend for `flow`,
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
        // The flow table first: its key is the whole 5-tuple, and the backend entry carries
        // its VIP's id, flags and forwarding mode, so a hit needs no VIP lookup.
        let mut stale = false;
        if let Some(entry) = self.flows.get(flow) {
            let usable = serving(entry.backend_id)
                .filter(|b| b.tag == entry.tag && b.vip_flags & VIP_STATELESS == 0);
            match usable {
                Some(b) => {
                    // VIP traffic comes to our unicast MAC; a group frame or another host's is
                    // not ours.
                    to_us?;
                    *lookup = Some(Counter::ConnHit);
                    let forwarded = Forwarded {
                        vip_id: b.vip_id,
                        backend_id: entry.backend_id,
                        new_flow: false,
                    };
                    return Ok((forwarded, b, b.vip_forwarding == FORWARD_IPIP, entry.hash));
                }
                // Its backend was removed (its VIP too, perhaps), is down, or its slot has a
                // new owner (the tag differs), or its VIP became stateless: the VIP decides
                // again; a stateful one re-steers rather than black-holes.
                None => stale = true,
            }
        }
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
        to_us?;
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
        let id = ring[slot as usize];
        if id == NO_BACKEND {
            return Err(Counter::DropNoBackend);
        }
        let backend = serving(id).ok_or(Counter::DropNoBackend)?;
        let (vip_id, ipip) = (vip.vip_id, vip.ipip);
        if !vip.stateless && remember {
            self.flows.insert(
                *flow,
                ConnEntry {
                    backend_id: id,
                    tag: backend.tag,
                    hash: flow_hash(flow, false),
                },
            );
        }
        let forwarded = Forwarded {
            vip_id,
            backend_id: id,
            new_flow: true,
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

/// RFC 1624 eqn. 3: the ones'-complement checksum `check` after the 16-bit word `old` it
/// covers became `new`.
fn csum_replace(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn word(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Replaces the 16-bit word at `at` and updates the checksum at `check` for it.
fn set_word(b: &mut [u8], at: usize, new: u16, check: usize) {
    let c = csum_replace(word(b, check), word(b, at), new);
    b[at..at + 2].copy_from_slice(&new.to_be_bytes());
    b[check..check + 2].copy_from_slice(&c.to_be_bytes());
}

/// The Ethernet header of a frame sent back where `frame` came from, from `our_mac` (VLAN
/// tag kept).
fn l2_back(frame: &[u8], l3: usize, our_mac: [u8; 6]) -> Vec<u8> {
    let mut out = frame[..l3].to_vec();
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&our_mac);
    out
}

/// An echo request turned into its reply in place: addresses swapped, TTL / hop limit reset,
/// type changed, checksums updated incrementally; the frame keeps its length (padding too).
fn echo_reply(frame: &[u8], p: &Packet, our_mac: [u8; 6]) -> Vec<u8> {
    let mut out = l2_back(frame, p.l3, our_mac);
    out.extend_from_slice(&frame[p.l3..]);
    let ip = p.l3;
    let icmp = p.l3 + p.hlen;
    if p.family == Family::V4 {
        out[ip + 12..ip + 16].copy_from_slice(&frame[ip + 16..ip + 20]);
        out[ip + 16..ip + 20].copy_from_slice(&frame[ip + 12..ip + 16]);
        // TTL shares a checksummed word with the protocol; the swap changes no sum.
        let ttl_proto = u16::from_be_bytes([ORIGIN_TTL, frame[ip + 9]]);
        set_word(&mut out, ip + 8, ttl_proto, ip + 10);
        // Echo reply: type 0, code 0.
        set_word(&mut out, icmp, 0, icmp + 2);
    } else {
        out[ip + 8..ip + 24].copy_from_slice(&frame[ip + 24..ip + 40]);
        out[ip + 24..ip + 40].copy_from_slice(&frame[ip + 8..ip + 24]);
        // The hop limit is not in the ICMPv6 pseudo-header; swapped addresses sum the same.
        out[ip + 7] = ORIGIN_TTL;
        set_word(&mut out, icmp, 129 << 8, icmp + 2);
    }
    out
}

/// ICMP "fragmentation needed" (IPv4) or ICMPv6 "packet too big" from the VIP to the client,
/// announcing `mtu`, quoting the start of the packet.
fn too_big(frame: &[u8], p: &Packet, mtu: usize, our_mac: [u8; 6]) -> Vec<u8> {
    let mut out = l2_back(frame, p.l3, our_mac);
    let ip = &frame[p.l3..];
    if p.family == Family::V4 {
        // RFC 792: the IP header and the first 8 bytes of its payload.
        let quote = &ip[..p.hlen + 8];
        let icmp = Icmpv4Header::with_checksum(
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: mtu as u16,
            }),
            quote,
        );
        let mut h = Ipv4Header::new(
            (icmp.header_len() + quote.len()) as u16,
            ORIGIN_TTL,
            IpNumber::ICMP,
            p.dst[..4].try_into().unwrap(),
            p.src[..4].try_into().unwrap(),
        )
        .unwrap();
        h.dscp = Ipv4Dscp::try_new(ICMP_TOS >> 2).unwrap();
        h.ecn = Ipv4Ecn::try_new(ICMP_TOS & 3).unwrap();
        h.identification = 0;
        h.dont_fragment = false;
        h.header_checksum = h.calc_header_checksum();
        out.extend_from_slice(&h.to_bytes());
        out.extend_from_slice(&icmp.to_bytes());
        out.extend_from_slice(quote);
    } else {
        let quote = &ip[..ICMPV6_QUOTE];
        let icmp = Icmpv6Header::with_checksum(
            Icmpv6Type::PacketTooBig { mtu: mtu as u32 },
            p.dst,
            p.src,
            quote,
        )
        .unwrap();
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: (icmp.header_len() + quote.len()) as u16,
            next_header: IpNumber::IPV6_ICMP,
            hop_limit: ORIGIN_TTL,
            source: p.dst,
            destination: p.src,
        };
        out.extend_from_slice(&h.to_bytes());
        out.extend_from_slice(&icmp.to_bytes());
        out.extend_from_slice(quote);
    }
    out
}

/// The frame as `ipip` sends it: L2 header toward the next hop (tag kept, EtherType of the
/// outer family), the outer header, then everything from the IP header to the frame's end.
fn encapsulate(frame: &[u8], p: &Packet, hash: u32, backend: &Backend, s: &Settings) -> Vec<u8> {
    // `hash` is always the full 5-tuple's (`flow_hash(key, false)`, remembered with the flow):
    // it only spreads tunnels over the backend's queues.
    let inner = if p.family == Family::V4 {
        IpNumber::IPV4
    } else {
        IpNumber::IPV6
    };
    let mut out = frame[..p.l3].to_vec();
    out[0..6].copy_from_slice(&backend.mac);
    out[6..12].copy_from_slice(&s.mac);
    let ether_type = if backend.family == Family::V4 {
        let host = u32::from_be_bytes(s.tunnel_src4_host);
        let src = (u32::from_be_bytes(s.tunnel_src4) & !host) | (hash & host);
        let mut h = Ipv4Header::new(
            p.ip_len as u16,
            ORIGIN_TTL,
            inner,
            src.to_be_bytes(),
            backend.addr[..4].try_into().unwrap(),
        )
        .unwrap();
        h.dscp = Ipv4Dscp::try_new(p.tos >> 2).unwrap();
        h.ecn = Ipv4Ecn::try_new(p.tos & 3).unwrap();
        h.identification = 0;
        h.dont_fragment = true;
        h.header_checksum = h.calc_header_checksum();
        out.extend_from_slice(&h.to_bytes());
        EtherType::IPV4
    } else {
        let host = u32::from_be_bytes(s.tunnel_src6_host);
        let mut src = s.tunnel_src6;
        let last = u32::from_be_bytes(src[12..16].try_into().unwrap());
        src[12..16].copy_from_slice(&((last & !host) | (hash & host)).to_be_bytes());
        let h = Ipv6Header {
            traffic_class: p.tos,
            flow_label: Ipv6FlowLabel::try_new(hash & 0xf_ffff).unwrap(),
            payload_length: p.ip_len as u16,
            next_header: inner,
            hop_limit: ORIGIN_TTL,
            source: src,
            destination: backend.addr,
        };
        out.extend_from_slice(&h.to_bytes());
        EtherType::IPV6
    };
    out[p.l3 - 2..p.l3].copy_from_slice(&ether_type.0.to_be_bytes());
    out.extend_from_slice(&frame[p.l3..]);
    out
}

/// Where the L3 header starts and which EtherType it has: Ethernet with at most one 802.1Q
/// tag. A frame too short for either is not IP.
fn l3_of(frame: &[u8]) -> Result<(usize, EtherType), Counter> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Counter::PassNotIp)?;
    let mut l3 = eth.slice().len();
    let mut ether_type = eth.ether_type();
    // Only the 802.1Q TPID; 802.1ad (0x88a8) and a second tag are "not IP" by the rules.
    if ether_type == EtherType::VLAN_TAGGED_FRAME {
        let tag =
            SingleVlanHeaderSlice::from_slice(&frame[l3..]).map_err(|_| Counter::PassNotIp)?;
        ether_type = tag.ether_type();
        l3 += tag.slice().len();
    }
    Ok((l3, ether_type))
}

/// What the IPv4/IPv6 header says, after the checks the datapath documents for it.
struct Ip {
    family: Family,
    proto: IpNumber,
    src: [u8; 16],
    dst: [u8; 16],
    /// Header length: where the L4 header starts in the IP packet.
    hlen: usize,
    /// IP packet length, header included (total length / 40 + payload length).
    len: usize,
    /// IPv4 TOS / IPv6 traffic class.
    tos: u8,
    /// IPv4 DF; always true for IPv6.
    df: bool,
    /// IPv4 MF or fragment offset, or an IPv6 fragment header.
    fragment: bool,
}

fn ipv4(ip: &[u8]) -> Result<Ip, Counter> {
    // Version 4, IHL ≥ 5, at least 20 bytes (and the options) present.
    let h = Ipv4HeaderSlice::from_slice(ip).map_err(|_| Counter::DropMalformed)?;
    let hlen = h.slice().len();
    let len = usize::from(h.total_len());
    if len < hlen || len > ip.len() {
        return Err(Counter::DropMalformed);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&h.source());
    dst[..4].copy_from_slice(&h.destination());
    Ok(Ip {
        family: Family::V4,
        proto: h.protocol(),
        src,
        dst,
        hlen,
        len,
        tos: (h.dcp().value() << 2) | h.ecn().value(),
        df: h.dont_fragment(),
        fragment: h.is_fragmenting_payload(),
    })
}

fn ipv6(ip: &[u8]) -> Result<Ip, Counter> {
    let h = Ipv6HeaderSlice::from_slice(ip).map_err(|_| Counter::DropMalformed)?;
    let hlen = h.slice().len();
    let len = hlen + usize::from(h.payload_length());
    if len > ip.len() {
        return Err(Counter::DropMalformed);
    }
    Ok(Ip {
        family: Family::V6,
        proto: h.next_header(),
        src: h.source(),
        dst: h.destination(),
        hlen,
        len,
        tos: h.traffic_class(),
        df: true,
        fragment: h.next_header() == ip_number::IPV6_FRAG,
    })
}

/// The source and destination ports, if the L4 header fits in the IP packet: the whole TCP
/// header (data offset ≥ 5, all of it inside the IP packet; etherparse's strict TCP slice checks
/// exactly that) or a UDP header whose length field is at least 8 and inside the IP packet.
fn ports(proto: IpNumber, l4: &[u8]) -> Result<(u16, u16), Counter> {
    if proto == IpNumber::TCP {
        let t = TcpHeaderSlice::from_slice(l4).map_err(|_| Counter::DropMalformed)?;
        Ok((t.source_port(), t.destination_port()))
    } else {
        // etherparse's `UdpSlice` accepts length 0 (IPv6 jumbograms) and lengths past the
        // slice in some cases; the rule is Linux's `udp_rcv`: 8 ≤ length ≤ what the IP
        // packet carries.
        let u = UdpHeaderSlice::from_slice(l4).map_err(|_| Counter::DropMalformed)?;
        let len = usize::from(u.length());
        if len < 8 || len > l4.len() {
            return Err(Counter::DropMalformed);
        }
        Ok((u.source_port(), u.destination_port()))
    }
}

/// An ICMP/ICMPv6 message (`from_ip` is the frame from the IP header on): an echo request,
/// an error quoting a TCP/UDP packet sent from this packet's destination, or why neither.
fn icmp(from_ip: &[u8], ip: &Ip) -> Result<Kind, Counter> {
    let msg = &from_ip[ip.hlen..ip.len];
    let v4 = ip.family == Family::V4;
    let (icmp_type, code) = if v4 {
        let m = Icmpv4Slice::from_slice(msg).map_err(|_| Counter::PassNotVip)?;
        (m.type_u8(), m.code_u8())
    } else {
        let m = Icmpv6Slice::from_slice(msg).map_err(|_| Counter::PassNotVip)?;
        (m.type_u8(), m.code_u8())
    };
    let (echo, error) = if v4 {
        (8, matches!(icmp_type, 3 | 11 | 12))
    } else {
        (128, (1..=4).contains(&icmp_type))
    };
    if icmp_type == echo && code == 0 {
        return Ok(Kind::EchoRequest);
    }
    if !error {
        return Err(Counter::PassNotVip);
    }
    // The quoted IP header follows the 8-byte ICMP header; only its fixed part has to be in
    // the frame (see the module docs).
    let q = ip.hlen + 8;
    let (qsrc, qdst, qproto, qhlen) = if v4 {
        let h = from_ip.get(q..q + 20).ok_or(Counter::PassNotVip)?;
        let qhlen = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || qhlen < 20 {
            return Err(Counter::PassNotVip);
        }
        let mut qsrc = [0u8; 16];
        let mut qdst = [0u8; 16];
        qsrc[..4].copy_from_slice(&h[12..16]);
        qdst[..4].copy_from_slice(&h[16..20]);
        if qsrc != ip.dst {
            return Err(Counter::PassNotVip);
        }
        // A later fragment has no ports (MF alone is a first fragment: it has them).
        if word(h, 6) & 0x1fff != 0 {
            return Err(Counter::PassUnsupported);
        }
        (qsrc, qdst, IpNumber(h[9]), qhlen)
    } else {
        let h = Ipv6HeaderSlice::from_slice(&from_ip[q..]).map_err(|_| Counter::PassNotVip)?;
        if h.source() != ip.dst {
            return Err(Counter::PassNotVip);
        }
        (
            h.source(),
            h.destination(),
            h.next_header(),
            h.slice().len(),
        )
    };
    if qproto != IpNumber::TCP && qproto != IpNumber::UDP {
        return Err(Counter::PassNotVip);
    }
    // Only the quoted ports are needed: they must be inside the outer IP packet.
    let at = q + qhlen;
    if at + 4 > ip.len {
        return Err(Counter::PassNotVip);
    }
    let quoted_ports = &from_ip[at..at + 4];
    // Reversed: the quoted packet went VIP → client, the flow table knows client → VIP.
    Ok(Kind::IcmpError(FlowKey {
        src: qdst,
        dst: qsrc,
        sport: [quoted_ports[2], quoted_ports[3]],
        dport: [quoted_ports[0], quoted_ports[1]],
        proto: qproto.0,
        family: ip.family,
        _pad: [0; 2],
    }))
}

/// What kind of IP packet a frame holds, for the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// TCP or UDP with this 5-tuple.
    Flow(FlowKey),
    /// An ICMP/ICMPv6 error quoting a TCP/UDP packet: the quoted flow reversed (client →
    /// VIP, as the flow table knows it).
    IcmpError(FlowKey),
    /// An ICMP/ICMPv6 echo request.
    EchoRequest,
    /// An IPv4 fragment (MF or offset) or an IPv6 packet with a fragment header.
    Fragment,
}

/// A frame the datapath can act on: its kind and what the rewrites need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub kind: Kind,
    /// [`Family::V4`] or [`Family::V6`].
    pub family: Family,
    /// IP source and destination (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Where the IP header starts (the L2 header's length).
    pub l3: usize,
    /// IP header length (IPv4 with options; 40 for IPv6).
    pub hlen: usize,
    /// IP packet length, header included.
    pub ip_len: usize,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// IPv4 DF (true for IPv6).
    pub df: bool,
}

/// What a frame is to the datapath, or the outcome counter saying why it is nothing it acts on.
pub fn parse(frame: &[u8]) -> Result<Packet, Counter> {
    let (l3, ether_type) = l3_of(frame)?;
    let from_ip = &frame[l3..];
    let ip = match ether_type {
        EtherType::IPV4 => ipv4(from_ip)?,
        EtherType::IPV6 => ipv6(from_ip)?,
        _ => return Err(Counter::PassNotIp),
    };
    // Fragments before the protocol: a later fragment's protocol says nothing about ports.
    let kind = if ip.fragment {
        Kind::Fragment
    } else if ip.proto == IpNumber::TCP || ip.proto == IpNumber::UDP {
        let (sport, dport) = ports(ip.proto, &from_ip[ip.hlen..ip.len])?;
        Kind::Flow(FlowKey {
            src: ip.src,
            dst: ip.dst,
            sport: sport.to_be_bytes(),
            dport: dport.to_be_bytes(),
            proto: ip.proto.0,
            family: ip.family,
            _pad: [0; 2],
        })
    } else if (ip.family, ip.proto) == (Family::V4, IpNumber::ICMP)
        || (ip.family, ip.proto) == (Family::V6, IpNumber::IPV6_ICMP)
    {
        icmp(from_ip, &ip)?
    } else if ip.family == Family::V6 && IPV6_EXT_HEADERS.contains(&ip.proto) {
        return Err(Counter::PassUnsupported);
    } else {
        return Err(Counter::PassNotVip);
    };
    Ok(Packet {
        kind,
        family: ip.family,
        src: ip.src,
        dst: ip.dst,
        l3,
        hlen: ip.hlen,
        ip_len: ip.len,
        tos: ip.tos,
        df: ip.df,
    })
}

//! A plain-Rust reference model of the XDP datapath (parse, VIP lookup, flow table, Maglev ring, L2 rewrite, counters), written from the documented behaviour for differential testing.
//!
//! Only *data* comes from the running balancer: the Maglev rings and the backend table, read
//! back from the maps after the agent applied a config (the ring is computed by userspace
//! Maglev, not by the datapath). Everything the XDP program decides per packet is re-derived
//! here from the documentation in `lb-ebpf/src/parse.rs`, `lb-ebpf/src/lookup.rs`, the
//! `Counter` docs in lb-common and the README, parsing with etherparse rather than the
//! program's own parser.
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

use std::collections::HashMap;

use anyhow::{bail, ensure, Context as _};
use etherparse::{
    ip_number, EtherType, Ethernet2HeaderSlice, IpNumber, Ipv4HeaderSlice, Ipv6HeaderSlice,
    SingleVlanHeaderSlice, TcpHeaderSlice, UdpHeaderSlice,
};
use lb_common::{
    flow_hash, Backend, ConnEntry, Counter, FlowKey, TrafficCounters, VipKey, AF_INET, AF_INET6,
    BACKEND_ACTIVE, BACKEND_DRAINING, COUNTER_COUNT, NO_BACKEND,
};
use lb_userspace::{
    config::{Config, HashMode, Protocol},
    maps::BalancerMaps,
};

/// XDP verdicts (`enum xdp_action` in the kernel UAPI).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

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

/// What the datapath must do with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// `XDP_PASS`, `XDP_TX` or `XDP_DROP`.
    pub action: u32,
    /// The frame as the program must leave it.
    pub output: Vec<u8>,
    /// The one outcome counter (`Pass*`, `Drop*`, `TxForwarded`) the packet increments.
    pub reason: Counter,
    /// The flow-table lookup counter it increments on the way (`ConnHit`, `ConnMiss`,
    /// `ConnResteer`); `None` for packets that never reach a stateful VIP's flow table.
    pub lookup: Option<Counter>,
    /// VIP and backend a forwarded packet is accounted to.
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
    ring: Vec<u32>,
}

/// The reference datapath: VIPs, rings and backends of the applied config, plus its own flow
/// table (never evicts: tests keep their flow count well below the real table's capacity).
pub struct Model {
    vips: HashMap<VipKey, ModelVip>,
    backends: HashMap<u32, Backend>,
    flows: HashMap<FlowKey, ConnEntry>,
    counters: [u64; COUNTER_COUNT as usize],
    vip_traffic: HashMap<u32, TrafficCounters>,
    backend_traffic: HashMap<u32, TrafficCounters>,
}

/// The VIPS key the documentation defines for a configured VIP: address in the first 4 or
/// 16 bytes, port in network order (0 = all ports), protocol and family.
fn config_vip_key(address: std::net::IpAddr, port: u16, protocol: Protocol) -> VipKey {
    let mut addr = [0u8; 16];
    let family = match address {
        std::net::IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            AF_INET
        }
        std::net::IpAddr::V6(a) => {
            addr = a.octets();
            AF_INET6
        }
    };
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

impl Model {
    /// A model of the datapath `maps` describe after `cfg` was applied, with an empty flow
    /// table and zero counters.
    pub fn new(cfg: &Config, maps: &BalancerMaps) -> anyhow::Result<Model> {
        let mut model = Model {
            vips: HashMap::new(),
            backends: HashMap::new(),
            flows: HashMap::new(),
            counters: [0; COUNTER_COUNT as usize],
            vip_traffic: HashMap::new(),
            backend_traffic: HashMap::new(),
        };
        model.refresh(cfg, maps)?;
        Ok(model)
    }

    /// Re-reads VIPs, rings and backends after `cfg` was applied (a reload). The flow table
    /// and the tallies carry over, as the real ones do.
    pub fn refresh(&mut self, cfg: &Config, maps: &BalancerMaps) -> anyhow::Result<()> {
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
                    ring,
                },
            );
        }
        self.backends = maps.backends()?.into_iter().collect();
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
        let group = frame[0] & 1 == 1;
        let outcome = parse(frame).and_then(|flow| self.choose(&flow, group, &mut lookup));
        let expected = match outcome {
            Ok((forwarded, mac)) => {
                let mut output = frame.to_vec();
                // L2 DSR: the frame goes to the backend's MAC, from the MAC the client's router
                // addressed (this NIC); nothing past the Ethernet addresses changes.
                output.copy_within(0..6, 6);
                output[0..6].copy_from_slice(&mac);
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
                Expected {
                    action: XDP_TX,
                    output,
                    reason: Counter::TxForwarded,
                    lookup,
                    forwarded: Some(forwarded),
                }
            }
            Err(reason) => Expected {
                action: match reason {
                    Counter::DropMalformed | Counter::DropNoBackend => XDP_DROP,
                    _ => XDP_PASS,
                },
                output: frame.to_vec(),
                reason,
                lookup,
                forwarded: None,
            },
        };
        self.counters[expected.reason as usize] += 1;
        if let Some(l) = expected.lookup {
            self.counters[l as usize] += 1;
        }
        expected
    }

    /// VIP lookup, flow table and ring: the backend for `flow`, or why there is none.
    fn choose(
        &mut self,
        flow: &FlowKey,
        to_group_mac: bool,
        lookup: &mut Option<Counter>,
    ) -> Result<(Forwarded, [u8; 6]), Counter> {
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
        // VIP traffic comes to our unicast MAC; a broadcast/multicast frame is not ours.
        if to_group_mac {
            return Err(Counter::PassNotUnicast);
        }
        let serving = |id: u32| {
            self.backends
                .get(&id)
                .filter(|b| b.state == BACKEND_ACTIVE || b.state == BACKEND_DRAINING)
        };
        if !vip.stateless {
            *lookup = Some(Counter::ConnMiss);
            if let Some(entry) = self.flows.get(flow) {
                if let Some(b) = serving(entry.backend_id) {
                    *lookup = Some(Counter::ConnHit);
                    let forwarded = Forwarded {
                        vip_id: vip.vip_id,
                        backend_id: entry.backend_id,
                        new_flow: false,
                    };
                    return Ok((forwarded, b.mac));
                }
                // Its backend was removed or is down: re-steered, not black-holed.
                *lookup = Some(Counter::ConnResteer);
            }
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
        let mac = serving(id).ok_or(Counter::DropNoBackend)?.mac;
        let vip_id = vip.vip_id;
        if !vip.stateless {
            self.flows.insert(
                *flow,
                ConnEntry {
                    backend_id: id,
                    vip_id,
                },
            );
        }
        let forwarded = Forwarded {
            vip_id,
            backend_id: id,
            new_flow: true,
        };
        Ok((forwarded, mac))
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

/// The IP protocol, addresses and the L4 bytes (up to the IP packet's end, not the frame's)
/// of an IPv4/IPv6 packet, in the order of checks the datapath documents.
struct L3<'a> {
    family: u8,
    proto: IpNumber,
    src: [u8; 16],
    dst: [u8; 16],
    l4: &'a [u8],
}

fn ipv4(ip: &[u8]) -> Result<L3<'_>, Counter> {
    // Version 4, IHL ≥ 5, at least 20 bytes (and the options) present.
    let h = Ipv4HeaderSlice::from_slice(ip).map_err(|_| Counter::DropMalformed)?;
    let header_len = h.slice().len();
    let total = usize::from(h.total_len());
    if total < header_len || total > ip.len() {
        return Err(Counter::DropMalformed);
    }
    // Fragments before the protocol: any fragment goes to the stack as unsupported.
    if h.is_fragmenting_payload() {
        return Err(Counter::PassUnsupported);
    }
    let proto = h.protocol();
    if proto != IpNumber::TCP && proto != IpNumber::UDP {
        return Err(Counter::PassNotVip);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&h.source());
    dst[..4].copy_from_slice(&h.destination());
    Ok(L3 {
        family: AF_INET,
        proto,
        src,
        dst,
        l4: &ip[header_len..total],
    })
}

fn ipv6(ip: &[u8]) -> Result<L3<'_>, Counter> {
    let h = Ipv6HeaderSlice::from_slice(ip).map_err(|_| Counter::DropMalformed)?;
    let end = h.slice().len() + usize::from(h.payload_length());
    if end > ip.len() {
        return Err(Counter::DropMalformed);
    }
    let proto = h.next_header();
    if proto != IpNumber::TCP && proto != IpNumber::UDP {
        return Err(if IPV6_EXT_HEADERS.contains(&proto) {
            Counter::PassUnsupported
        } else {
            Counter::PassNotVip
        });
    }
    Ok(L3 {
        family: AF_INET6,
        proto,
        src: h.source(),
        dst: h.destination(),
        l4: &ip[h.slice().len()..end],
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

/// The flow key of an IPv4/IPv6 TCP/UDP frame, or the outcome counter saying why it has none.
pub fn parse(frame: &[u8]) -> Result<FlowKey, Counter> {
    let (l3, ether_type) = l3_of(frame)?;
    let ip = match ether_type {
        EtherType::IPV4 => ipv4(&frame[l3..])?,
        EtherType::IPV6 => ipv6(&frame[l3..])?,
        _ => return Err(Counter::PassNotIp),
    };
    let (sport, dport) = ports(ip.proto, ip.l4)?;
    Ok(FlowKey {
        src: ip.src,
        dst: ip.dst,
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
        proto: ip.proto.0,
        family: ip.family,
        _pad: [0; 2],
    })
}

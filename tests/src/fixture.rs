//! The packet-fixture tests' harness: the real XDP program under BPF_PROG_TEST_RUN.
//!
//! Its maps are filled from a config; packet builders and the IP-in-IP fixtures' config are here
//! too.

use std::net::IpAddr;

use etherparse::PacketBuilder;
use lb_common::{addr::ip_to_map, flow_hash, history::slot_owner, Counter, FlowKey, COUNTER_COUNT};
use lb_userspace::{
    config::Config,
    datapath::maps::BalancerMaps,
    datapath::reconcile::Written,
    datapath::testrun,
    datapath::{balancer, objects},
    model::desired::{vip_key, DownSet},
};

pub use lb_userspace::datapath::testrun::{Run, XDP_DROP, XDP_PASS, XDP_TX};
use xdplb_lab::configs::{config, lan4, vip, Backend};
pub use xdplb_lab::frames::{CLIENT_MAC, GW_MAC};

/// Backends 10.202.0.x / fd00:202::x sit behind a router whose MAC is ...:fe; one VIP of each
/// tunnel pairing (4in4, 6in6, 4in6, 6in4), plus an L2 VIP for ICMP steering without tunnels.
pub fn ipip_config() -> String {
    let routed = |address: &str| Backend::new(address).mac("02:00:00:00:00:fe");
    let ipip = |name: &str, address: &str, port: u16, protocol: &str| {
        vip(name, address, port, protocol).set("forwarding", "ipip")
    };
    config("lo")
        .top("tunnel:\n  source_v4: 172.16.0.0/16\n  source_v6: 'fd00:ffff::/96'\n  mtu: 1500")
        .vip(
            ipip("web4", "10.201.0.10", 80, "tcp")
                .set("icmp_echo", true)
                .backends([routed("10.202.0.101"), routed("10.202.0.102")]),
        )
        .vip(
            ipip("web6", "fd00:201::10", 80, "tcp")
                .set("icmp_echo", true)
                .backends([routed("fd00:202::101"), routed("fd00:202::102")]),
        )
        .vip(ipip("dns4in6", "10.201.0.11", 7000, "udp").backend(routed("fd00:202::101")))
        .vip(ipip("dns6in4", "fd00:201::11", 7000, "udp").backend(routed("10.202.0.103")))
        .vip(vip("l2web", "10.201.0.12", 80, "tcp").backends([lan4(1), lan4(2)]))
        .yaml()
}

pub struct Harness {
    pub ebpf: aya::Ebpf,
    pub maps: BalancerMaps,
    pub applied: Written,
    pub cfg: Config,
}

/// Runs `packet` once through program `name` of `ebpf` with BPF_PROG_TEST_RUN (see
/// [`testrun::run`]: room for encapsulation and ICMP answers).
pub fn run_program(ebpf: &mut aya::Ebpf, name: &str, packet: &[u8]) -> Run {
    let prog = objects::program(ebpf, name).unwrap();
    testrun::run(prog, packet).expect("BPF_PROG_TEST_RUN")
}

impl Harness {
    pub fn new(config: &str) -> Harness {
        let cfg = Config::from_yaml(config, "fixture").expect("fixture config");
        let mut ebpf = balancer::load_balancer(4096).expect("the verifier accepts the balancer");
        let mut maps = BalancerMaps::from_ebpf(&mut ebpf).expect("maps");
        let mut applied = Written::default();
        let desired = applied
            .apply_config(
                &cfg,
                &mut maps,
                &DownSet::new(),
                lb_userspace::config::MacAddr(GW_MAC),
            )
            .expect("apply");
        assert!(desired.unresolved.is_empty());
        Harness {
            ebpf,
            maps,
            applied,
            cfg,
        }
    }

    pub fn reconfigure(&mut self, config: &str) {
        self.cfg = Config::from_yaml(config, "fixture").expect("fixture config");
        self.applied
            .apply_config(
                &self.cfg,
                &mut self.maps,
                &DownSet::new(),
                lb_userspace::config::MacAddr(GW_MAC),
            )
            .expect("apply");
    }

    pub fn run(&mut self, packet: &[u8]) -> Run {
        run_program(&mut self.ebpf, lb_common::programs::BALANCER, packet)
    }

    pub fn global(&self) -> [u64; COUNTER_COUNT as usize] {
        self.maps.global_counters().unwrap()
    }

    pub fn vip_id(&self, name: &str) -> u32 {
        let vip = self.cfg.vips.iter().find(|v| v.name == name).unwrap();
        let key = vip_key(vip);
        self.maps
            .vips()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == key)
            .unwrap()
            .1
            .vip_id
    }

    /// Backend id for `addr` in VIP `name`.
    pub fn backend_id(&self, name: &str, addr: &str) -> u32 {
        let vip_id = self.vip_id(name);
        let (bytes, _) = ip_to_map(addr.parse().unwrap());
        self.maps
            .backends()
            .unwrap()
            .into_iter()
            .find(|(_, b)| b.vip_id == vip_id && b.addr == bytes)
            .unwrap()
            .0
    }

    /// The backend MAC the ring gives this flow (what the datapath must pick on a miss).
    pub fn expected_mac(&self, vip: &str, flow: &FlowKey, source_only: bool) -> [u8; 6] {
        let vip_id = self.vip_id(vip);
        let ring = self.maps.ring(vip_id).unwrap();
        let id = slot_owner(ring[(flow_hash(flow, source_only) % ring.len() as u32) as usize]);
        self.maps.backend(id).unwrap().mac
    }
}

pub fn delta(
    after: &[u64; COUNTER_COUNT as usize],
    before: &[u64; COUNTER_COUNT as usize],
    c: Counter,
) -> u64 {
    after[c as usize] - before[c as usize]
}

pub fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535)
        .syn();
    let payload = b"";
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).unwrap();
    v
}

pub fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, b"query").unwrap();
    v
}

pub fn udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ipv6(src, dst, 64)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, b"query6").unwrap();
    v
}

/// The flow key of a packet; addresses as `IpAddr`s or as octet arrays.
pub fn flow(
    src: impl Into<IpAddr>,
    sport: u16,
    dst: impl Into<IpAddr>,
    dport: u16,
    proto: u8,
) -> FlowKey {
    let (s, family) = ip_to_map(src.into());
    let (d, _) = ip_to_map(dst.into());
    FlowKey {
        src: s,
        dst: d,
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
        proto,
        family,
        _pad: [0; 2],
    }
}

/// The output a correct L2 forward produces: same bytes, destination MAC := backend, source := us.
pub fn l2_rewritten(input: &[u8], backend_mac: [u8; 6]) -> Vec<u8> {
    let mut v = input.to_vec();
    v[0..6].copy_from_slice(&backend_mac);
    v[6..12].copy_from_slice(&GW_MAC);
    v
}

//! The differential test's packet generator, for anything that wants realistic and hostile traffic through the datapath: seeded streams of valid IPv4/IPv6 TCP/UDP frames to the VIPs of [`CONFIG_A`] and next to them, echo requests, ICMP errors quoting VIP flows, fragments, non-IP frames and garbage, most of them mutated (`mutate.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Dscp, Ipv4Ecn, Ipv4Header, Ipv4Options, Ipv6FlowLabel,
    Ipv6Header, PacketBuilder, PacketBuilderStep, TcpHeader, VlanId,
};
use xdplb_lab::frames::{CLIENT_MAC, GW_MAC};

mod mutate;
mod rng;

pub use mutate::{get16, put, put16};
use mutate::{insert_ext, mutate};
use rng::Rng;

/// The config the generated flows aim at (the differential test's phase 1): every kind of VIP
/// the datapath distinguishes: L2 and `ipip` (4in4, 6in6, 4in6, 6in4 and a VIP with backends
/// of both families), addresses that answer echo requests and ones that do not, and a tunnel
/// MTU small enough that generated packets exceed it. The generator's targets (below) name
/// these VIPs' addresses and ports, so a config for its traffic starts from this one.
pub const CONFIG_A: &str = "\
interface: lo
tunnel:
  source_v4: 172.31.64.0/18
  source_v6: 'fd00:ffff::a000:0/100'
  mtu: 1400
vips:
  - name: web
    address: 10.201.0.10
    port: 80
    protocol: tcp
    icmp_echo: true
    backends:
      - { address: 10.200.0.101, mac: '02:00:00:00:01:01' }
      - { address: 10.200.0.102, mac: '02:00:00:00:01:02', weight: 50 }
      - { address: 10.200.0.103, mac: '02:00:00:00:01:03' }
  - name: web-any
    address: 10.201.0.10
    port: 0
    protocol: tcp
    ring_size: 211
    backends:
      - { address: 10.200.0.104, mac: '02:00:00:00:01:04' }
      - { address: 10.200.0.105, mac: '02:00:00:00:01:05' }
  - name: dns-any
    address: 10.201.0.11
    port: 0
    protocol: udp
    ring_size: 1009
    backends:
      - { address: 10.200.0.101, mac: '02:00:00:00:01:01' }
      - { address: 10.200.0.102, mac: '02:00:00:00:01:02' }
  - name: sticky
    address: 10.201.0.12
    port: 443
    protocol: tcp
    hash: source-ip
    ring_size: 1009
    backends:
      - { address: 10.200.0.101, mac: '02:00:00:00:01:01' }
      - { address: 10.200.0.102, mac: '02:00:00:00:01:02' }
      - { address: 10.200.0.103, mac: '02:00:00:00:01:03' }
  - name: stateless-dns
    address: 10.201.0.14
    port: 53
    protocol: udp
    stateless: true
    ring_size: 1009
    backends:
      - { address: 10.200.0.101, mac: '02:00:00:00:01:01' }
      - { address: 10.200.0.102, mac: '02:00:00:00:01:02' }
      - { address: 10.200.0.103, mac: '02:00:00:00:01:03' }
  - name: web6
    address: 'fd00:201::10'
    port: 443
    protocol: tcp
    ring_size: 1009
    backends:
      - { address: 'fd00:200::101', mac: '02:00:00:00:02:01' }
      - { address: 'fd00:200::102', mac: '02:00:00:00:02:02' }
  - name: dns6
    address: 'fd00:201::11'
    port: 0
    protocol: udp
    icmp_echo: true
    hash: source-ip
    stateless: true
    ring_size: 1009
    backends:
      - { address: 'fd00:200::101', mac: '02:00:00:00:02:01' }
      - { address: 'fd00:200::102', mac: '02:00:00:00:02:02' }
      - { address: 'fd00:200::103', mac: '02:00:00:00:02:03' }
  - name: empty
    address: 10.201.0.13
    port: 80
    protocol: tcp
    backends: []
  - name: drained
    address: 10.201.0.15
    port: 80
    protocol: udp
    ring_size: 211
    backends:
      - { address: 10.200.0.106, mac: '02:00:00:00:01:06', state: draining }
  - name: tun4
    address: 10.201.0.20
    port: 80
    protocol: tcp
    forwarding: ipip
    icmp_echo: true
    ring_size: 1009
    backends:
      - { address: 10.202.0.1, mac: '02:00:00:00:00:fe' }
      - { address: 10.202.0.2, mac: '02:00:00:00:00:fe' }
      - { address: 'fd00:202::3', mac: '02:00:00:00:00:fd' }
  - name: tun4in6
    address: 10.201.0.21
    port: 0
    protocol: udp
    forwarding: ipip
    stateless: true
    ring_size: 1009
    backends:
      - { address: 'fd00:202::1', mac: '02:00:00:00:00:fd' }
      - { address: 'fd00:202::2', mac: '02:00:00:00:00:fd' }
  - name: tun6
    address: 'fd00:201::20'
    port: 443
    protocol: tcp
    forwarding: ipip
    ring_size: 1009
    backends:
      - { address: 'fd00:202::1', mac: '02:00:00:00:00:fd' }
      - { address: 'fd00:202::2', mac: '02:00:00:00:00:fd' }
  - name: tun6in4
    address: 'fd00:201::21'
    port: 0
    protocol: udp
    forwarding: ipip
    hash: source-ip
    icmp_echo: true
    ring_size: 1009
    backends:
      - { address: 10.202.0.1, mac: '02:00:00:00:00:fe' }
      - { address: 10.202.0.2, mac: '02:00:00:00:00:fe' }
";

#[derive(Clone, Copy, Debug)]
struct Flow {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    tcp: bool,
}

/// Where generated flows go: the VIPs of the configs and addresses/ports/protocols next to them
/// that are not VIPs. `port: None` means any port.
struct Target {
    dst: IpAddr,
    port: Option<u16>,
    tcp: bool,
    weight: usize,
}

fn targets() -> Vec<Target> {
    let v4 = |s: &str| IpAddr::V4(s.parse::<Ipv4Addr>().unwrap());
    let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
    let t = |dst, port, tcp, weight| Target {
        dst,
        port,
        tcp,
        weight,
    };
    vec![
        // VIPs.
        t(v4("10.201.0.10"), Some(80), true, 12),
        t(v4("10.201.0.10"), None, true, 6),
        t(v4("10.201.0.11"), None, false, 6),
        t(v4("10.201.0.12"), Some(443), true, 8),
        t(v4("10.201.0.14"), Some(53), false, 6),
        t(v6("fd00:201::10"), Some(443), true, 8),
        t(v6("fd00:201::11"), None, false, 5),
        t(v4("10.201.0.13"), Some(80), true, 2),
        t(v4("10.201.0.15"), Some(80), false, 3),
        t(v4("10.201.0.20"), Some(80), true, 7),
        t(v4("10.201.0.21"), None, false, 5),
        t(v6("fd00:201::20"), Some(443), true, 6),
        t(v6("fd00:201::21"), None, false, 5),
        // Not VIPs: wrong protocol, wrong port, the gateway itself, anywhere else.
        t(v4("10.201.0.10"), None, false, 2),
        t(v4("10.201.0.11"), None, true, 2),
        t(v4("10.201.0.12"), Some(80), true, 2),
        t(v4("10.201.0.14"), Some(53), true, 1),
        t(v4("10.200.0.1"), Some(22), true, 2),
        t(v6("fd00:201::10"), Some(80), true, 1),
        t(v6("fd00:201::10"), Some(53), false, 1),
        t(v6("fd00:201::12"), None, false, 1),
        t(v4("10.201.0.20"), Some(443), true, 1),
        t(v6("fd00:201::21"), None, true, 1),
    ]
}

/// A well-formed frame and where its layers start, for targeted mutations.
struct Built {
    frame: Vec<u8>,
    l3: usize,
    /// The L4 header (the ICMP header of ICMP messages).
    l4: usize,
    v6: bool,
    tcp: bool,
    /// Offset of the EtherType that announces the IP layer (12, or 16 behind a tag).
    ether_type_at: usize,
    /// Offset of the IP header an ICMP error quotes.
    quote: Option<usize>,
}

/// A reproducible stream of test frames: the same seed gives the same frames.
pub struct Generator {
    rng: Rng,
    targets: Vec<Target>,
    total_weight: usize,
    clients4: Vec<Ipv4Addr>,
    clients6: Vec<Ipv6Addr>,
    /// Flows seen before: most packets reuse one, so flow-table hits and re-steers happen.
    pool: Vec<Flow>,
}

const POOL: usize = 6000;

/// Where echo requests go: VIP addresses that answer them (web, dns6, tun4, tun6in4), VIP
/// addresses that do not, and addresses without VIPs.
const ECHO_TARGETS: [&str; 12] = [
    "10.201.0.10",
    "10.201.0.20",
    "fd00:201::11",
    "fd00:201::21",
    "10.201.0.11",
    "10.201.0.12",
    "10.201.0.21",
    "fd00:201::10",
    "fd00:201::20",
    "10.200.0.1",
    "10.201.0.99",
    "fd00:201::12",
];

/// Routers that send ICMP errors about the VIPs' replies.
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);

/// The MTU field of "fragmentation needed" / "packet too big": typical ones and nonsense.
const MTUS: [u32; 7] = [0, 68, 576, 1280, 1400, 1500, 9000];

impl Generator {
    /// The stream named by `seed`.
    pub fn new(seed: u64) -> Generator {
        let targets = targets();
        let total_weight = targets.iter().map(|t| t.weight).sum();
        Generator {
            rng: Rng(seed),
            targets,
            total_weight,
            clients4: (0..96u32)
                .map(|i| Ipv4Addr::from(0x0a64_0000 + i * 37 + 1))
                .collect(),
            clients6: (0..48u16)
                .map(|i| Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, i >> 4, i * 7 + 1))
                .collect(),
            pool: Vec::new(),
        }
    }

    fn flow(&mut self) -> Flow {
        if !self.pool.is_empty() && self.rng.percent(65) {
            return self.pool[self.rng.below(self.pool.len())];
        }
        let mut w = self.rng.below(self.total_weight);
        let t = self
            .targets
            .iter()
            .find(|t| {
                let hit = w < t.weight;
                w = w.saturating_sub(t.weight);
                hit
            })
            .unwrap();
        let (dst, port, tcp) = (t.dst, t.port, t.tcp);
        let src = self.client(dst.is_ipv6());
        let f = Flow {
            src,
            dst,
            sport: if self.rng.percent(95) {
                self.rng.range(1024, 65535) as u16
            } else {
                self.rng.next() as u16
            },
            dport: port.unwrap_or_else(|| self.rng.next() as u16),
            tcp,
        };
        if self.pool.len() < POOL {
            self.pool.push(f);
        } else {
            let i = self.rng.below(POOL);
            self.pool[i] = f;
        }
        f
    }

    fn client(&mut self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.rng.pick(&self.clients6))
        } else {
            IpAddr::V4(self.rng.pick(&self.clients4))
        }
    }

    /// Ethernet (sometimes odd MACs, sometimes an 802.1Q tag) and an IP header from `src` to
    /// `dst` with random TTL, DF, identification and options, or traffic class and flow label:
    /// the builder step for the L4 part, the IP header's offset and its length.
    fn l2_ip(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        proto: IpNumber,
    ) -> (PacketBuilderStep<IpHeaders>, usize, usize) {
        let rng = &mut self.rng;
        let src_mac = if rng.percent(90) {
            CLIENT_MAC
        } else {
            rng.mac()
        };
        let dst_mac = if rng.percent(90) { GW_MAC } else { rng.mac() };
        let vlan = rng
            .percent(15)
            .then(|| VlanId::try_new(rng.below(4096) as u16).unwrap());
        let mut ip_hlen = 40;
        let ip = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h =
                    Ipv4Header::new(0, rng.range(1, 255) as u8, proto, s.octets(), d.octets())
                        .unwrap();
                h.identification = rng.next() as u16;
                h.dont_fragment = rng.percent(50);
                if rng.percent(20) {
                    let tos = rng.next() as u8;
                    h.dscp = Ipv4Dscp::try_new(tos >> 2).unwrap();
                    h.ecn = Ipv4Ecn::try_new(tos & 3).unwrap();
                }
                if rng.percent(12) {
                    // The options' content is never interpreted; only their length matters.
                    let n = 4 * rng.range(1, 10);
                    let opts = rng.bytes(n);
                    h.options = Ipv4Options::try_from(&opts[..]).unwrap();
                }
                ip_hlen = h.header_len();
                IpHeaders::Ipv4(h, Default::default())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
                Ipv6Header {
                    traffic_class: rng.next() as u8,
                    flow_label: Ipv6FlowLabel::try_new(rng.next() as u32 & 0xf_ffff).unwrap(),
                    payload_length: 0,
                    next_header: proto,
                    hop_limit: rng.range(1, 255) as u8,
                    source: s.octets(),
                    destination: d.octets(),
                },
                Default::default(),
            ),
            _ => unreachable!("packets never mix families"),
        };
        let step = match vlan {
            Some(id) => PacketBuilder::ethernet2(src_mac, dst_mac)
                .single_vlan(id)
                .ip(ip),
            None => PacketBuilder::ethernet2(src_mac, dst_mac).ip(ip),
        };
        let l3 = if vlan.is_some() { 18 } else { 14 };
        (step, l3, ip_hlen)
    }

    fn build(&mut self, f: &Flow) -> Built {
        let proto = if f.tcp { IpNumber::TCP } else { IpNumber::UDP };
        let (step, l3, ip_hlen) = self.l2_ip(f.src, f.dst, proto);
        let rng = &mut self.rng;
        // One in ten is near the tunnel MTU (1400): some fit a 20- or 40-byte outer header,
        // some do not.
        let payload_len = match rng.below(10) {
            0 | 1 => 0,
            2 | 3 => rng.below(16),
            4..=8 => rng.below(400),
            _ => rng.range(1250, 1480),
        };
        let payload = rng.bytes(payload_len);
        let mut frame = Vec::new();
        if f.tcp {
            let mut t = TcpHeader::new(f.sport, f.dport, rng.next() as u32, rng.next() as u16);
            let flags = rng.next();
            t.fin = flags & 1 != 0;
            t.syn = flags & 2 != 0;
            t.rst = flags & 4 != 0;
            t.psh = flags & 8 != 0;
            t.ack = flags & 16 != 0;
            t.urg = flags & 32 != 0;
            t.ece = flags & 64 != 0;
            t.cwr = flags & 128 != 0;
            t.ns = flags & 256 != 0;
            if rng.percent(30) {
                let n = 4 * rng.range(1, 10);
                let opts = rng.bytes(n);
                t.set_options_raw(&opts).unwrap();
            }
            step.tcp_header(t).write(&mut frame, &payload).unwrap();
        } else {
            step.udp(f.sport, f.dport)
                .write(&mut frame, &payload)
                .unwrap();
        }
        Built {
            frame,
            l3,
            l4: l3 + ip_hlen,
            v6: f.dst.is_ipv6(),
            tcp: f.tcp,
            ether_type_at: l3 - 2,
            quote: None,
        }
    }

    /// An ICMP (IPv4) or ICMPv6 (IPv6) message with a correct checksum: type, code, the 4
    /// bytes after the checksum, then `body`.
    fn build_icmp(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        (icmp_type, code, rest): (u8, u8, [u8; 4]),
        body: &[u8],
    ) -> Built {
        let v6 = dst.is_ipv6();
        let proto = if v6 {
            IpNumber::IPV6_ICMP
        } else {
            IpNumber::ICMP
        };
        let (step, l3, ip_hlen) = self.l2_ip(src, dst, proto);
        let mut frame = Vec::new();
        if v6 {
            step.icmpv6_raw(icmp_type, code, rest)
                .write(&mut frame, body)
                .unwrap();
        } else {
            step.icmpv4_raw(icmp_type, code, rest)
                .write(&mut frame, body)
                .unwrap();
        }
        Built {
            frame,
            l3,
            l4: l3 + ip_hlen,
            v6,
            tcp: false,
            ether_type_at: l3 - 2,
            quote: None,
        }
    }

    /// An ICMP error about a packet a VIP (or a non-VIP address) sent to a client: usually
    /// quoting a flow of the pool correctly, sometimes with a quote the datapath must refuse.
    fn icmp_error(&mut self) -> (Built, &'static str) {
        let f = self.flow();
        let v6 = f.dst.is_ipv6();
        let rng = &mut self.rng;
        let mut kind = "icmp-error";
        // The packet that drew the error went VIP → client.
        let mut qsrc = f.dst;
        if rng.percent(5) {
            kind = "icmp-error-src";
            qsrc = if v6 {
                IpAddr::V6(rng.pick(&[ROUTER6, Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 0x11)]))
            } else {
                IpAddr::V4(rng.pick(&[ROUTER4, Ipv4Addr::new(10, 201, 0, 11)]))
            };
        }
        let mut qproto = if f.tcp { IpNumber::TCP } else { IpNumber::UDP };
        if rng.percent(4) {
            kind = "icmp-error-qproto";
            qproto = IpNumber(rng.pick(&[0u8, 1, 6, 17, 41, 44, 47, 50, 58]));
        }
        let mut l4 = Vec::new();
        l4.extend_from_slice(&f.dport.to_be_bytes());
        l4.extend_from_slice(&f.sport.to_be_bytes());
        if f.tcp {
            l4.extend(rng.bytes(8));
            l4.push(0x50);
            l4.extend(rng.bytes(7));
        } else {
            l4.extend(rng.bytes(4));
        }
        let payload = match rng.below(6) {
            0 | 1 => 0,
            2 => rng.below(32),
            3 | 4 => rng.below(600),
            // Long quotes (ICMPv6 quotes up to 1280 bytes): too big for some tunnels.
            _ => rng.range(1200, 1460),
        };
        l4.extend(rng.bytes(payload));
        let quoted_l4 = match rng.below(10) {
            // RFC 792: 8 bytes of the datagram.
            0..=4 => 8.min(l4.len()),
            5..=7 => l4.len(),
            8 => {
                kind = "icmp-error-trunc";
                rng.below(8)
            }
            _ => rng.below(l4.len() + 1),
        };
        let mut quote = if v6 {
            let (IpAddr::V6(s), IpAddr::V6(d)) = (qsrc, f.src) else {
                unreachable!()
            };
            Ipv6Header {
                traffic_class: rng.next() as u8,
                flow_label: Ipv6FlowLabel::try_new(rng.next() as u32 & 0xf_ffff).unwrap(),
                payload_length: l4.len() as u16,
                next_header: qproto,
                hop_limit: rng.range(1, 255) as u8,
                source: s.octets(),
                destination: d.octets(),
            }
            .to_bytes()
            .to_vec()
        } else {
            let (IpAddr::V4(s), IpAddr::V4(d)) = (qsrc, f.src) else {
                unreachable!()
            };
            let mut h = Ipv4Header::new(
                l4.len() as u16,
                rng.range(1, 255) as u8,
                qproto,
                s.octets(),
                d.octets(),
            )
            .unwrap();
            h.identification = rng.next() as u16;
            h.dont_fragment = rng.percent(70);
            if rng.percent(10) {
                let n = 4 * rng.range(1, 10);
                let opts = rng.bytes(n);
                h.options = Ipv4Options::try_from(&opts[..]).unwrap();
            }
            match rng.below(100) {
                0..=4 => {
                    kind = "icmp-error-qfrag";
                    h.fragment_offset = IpFragOffset::try_new(rng.range(1, 0x1fff) as u16).unwrap();
                    h.more_fragments = rng.percent(50);
                }
                5..=7 => {
                    // A first fragment: it has ports.
                    kind = "icmp-error-qmf";
                    h.more_fragments = true;
                }
                _ => {}
            }
            h.header_checksum = h.calc_header_checksum();
            let mut v = h.to_bytes().to_vec();
            if rng.percent(3) {
                kind = "icmp-error-qvihl";
                v[0] = rng.pick(&[0x44u8, 0x40, 0x46, 0x65, 0x55, 0x4f]);
            }
            v
        };
        quote.extend_from_slice(&l4[..quoted_l4]);
        let (icmp_type, code, rest) = if v6 {
            match rng.below(10) {
                0..=3 => (2, 0, rng.pick(&MTUS).to_be_bytes()),
                4 | 5 => (1, rng.below(8) as u8, [0; 4]),
                6 | 7 => (3, rng.below(2) as u8, [0; 4]),
                8 => (4, rng.below(4) as u8, (rng.below(80) as u32).to_be_bytes()),
                _ => {
                    kind = "icmp-other";
                    let t = rng.pick(&[0u8, 5, 100, 127, 128, 129, 133, 135, 136, 143, 200]);
                    (t, rng.range(1, 3) as u8, [0; 4])
                }
            }
        } else {
            match rng.below(10) {
                0..=3 => (3, 4, [0, 0, 0, 0]),
                4 | 5 => (3, rng.below(16) as u8, [0; 4]),
                6 | 7 => (11, rng.below(2) as u8, [0; 4]),
                8 => (12, rng.below(3) as u8, [rng.below(40) as u8, 0, 0, 0]),
                _ => {
                    kind = "icmp-other";
                    let t = rng.pick(&[0u8, 4, 5, 8, 9, 10, 13, 14, 17, 30, 40, 255]);
                    (t, rng.range(1, 3) as u8, [0; 4])
                }
            }
        };
        let rest = if (icmp_type, code) == (3, 4) {
            let [_, _, hi, lo] = rng.pick(&MTUS).to_be_bytes();
            [0, 0, hi, lo]
        } else {
            rest
        };
        let from = if rng.percent(70) {
            if v6 {
                IpAddr::V6(ROUTER6)
            } else {
                IpAddr::V4(ROUTER4)
            }
        } else {
            f.src
        };
        let mut b = self.build_icmp(from, f.dst, (icmp_type, code, rest), &quote);
        b.quote = Some(b.l4 + 8);
        (b, kind)
    }

    /// An echo request (now and then another ICMP message) to a VIP address or elsewhere.
    fn echo(&mut self) -> (Built, &'static str) {
        let dst: IpAddr = self.rng.pick(&ECHO_TARGETS).parse().unwrap();
        let v6 = dst.is_ipv6();
        let src = self.client(v6);
        let rng = &mut self.rng;
        let request = if v6 { 128 } else { 8 };
        let mut kind = "echo";
        let (icmp_type, code) = match rng.below(20) {
            0 => {
                kind = "echo-code";
                (request, rng.range(1, 255) as u8)
            }
            1 => {
                kind = "echo-reply";
                (if v6 { 129 } else { 0 }, 0)
            }
            2 => {
                kind = "icmp-other";
                let t = if v6 {
                    rng.pick(&[130u8, 133, 134, 135, 136, 143, 200])
                } else {
                    rng.pick(&[5u8, 9, 13, 15, 17, 40])
                };
                (t, 0)
            }
            _ => (request, 0),
        };
        let rest: [u8; 4] = rng.bytes(4).try_into().unwrap();
        let n = if rng.percent(5) {
            rng.range(1300, 1472)
        } else {
            rng.below(64)
        };
        let body = rng.bytes(n);
        let mut b = self.build_icmp(src, dst, (icmp_type, code, rest), &body);
        let rng = &mut self.rng;
        if rng.percent(8) {
            // Wrong checksums stay wrong by the same amount (incremental updates).
            kind = "echo-badsum";
            let at = if !v6 && rng.percent(50) {
                b.l3 + 10
            } else {
                b.l4 + 2
            };
            b.frame[at] ^= rng.range(1, 255) as u8;
        }
        (b, kind)
    }

    /// A fragment of a flow (to a VIP address or not), sometimes of another protocol.
    fn fragment(&mut self) -> (Built, &'static str) {
        let f = self.flow();
        let mut b = self.build(&f);
        let rng = &mut self.rng;
        if b.v6 {
            insert_ext(rng, &mut b, 44);
            return (b, "fragment6");
        }
        let df = get16(&b.frame, b.l3 + 6) & 0x4000;
        let v = match rng.below(3) {
            0 => df | 0x2000,
            1 => df | rng.range(1, 0x1fff) as u16,
            _ => 0x2000 | rng.range(1, 0x1fff) as u16,
        };
        put16(&mut b.frame, b.l3 + 6, v);
        if rng.percent(30) {
            put(&mut b.frame, b.l3 + 9, rng.pick(&[1u8, 4, 41, 47, 50, 132]));
        }
        (b, "fragment4")
    }

    /// A frame to mutate: mostly a flow, sometimes one of the ICMP or fragment classes.
    fn base(&mut self) -> (Built, Option<&'static str>) {
        match self.rng.below(100) {
            0..=71 => {
                let f = self.flow();
                (self.build(&f), None)
            }
            72..=87 => {
                let (b, k) = self.icmp_error();
                (b, Some(k))
            }
            88..=95 => {
                let (b, k) = self.echo();
                (b, Some(k))
            }
            _ => {
                let (b, k) = self.fragment();
                (b, Some(k))
            }
        }
    }

    /// The next test frame, what kind of frame it is (for the summary and failures) and
    /// whether it is an unmutated ICMP or fragment frame.
    pub fn packet(&mut self) -> (Vec<u8>, String, bool) {
        match self.rng.below(100) {
            0..=29 => {
                let f = self.flow();
                (self.build(&f).frame, "valid".into(), false)
            }
            30..=71 => {
                let (mut b, base) = self.base();
                let n = self.rng.range(1, 3);
                let kinds: Vec<&str> = base
                    .into_iter()
                    .chain((0..n).map(|_| mutate(&mut self.rng, &mut b)))
                    .collect();
                (b.frame, kinds.join("+"), false)
            }
            72..=80 => {
                let (b, k) = self.icmp_error();
                (b.frame, k.into(), true)
            }
            81..=85 => {
                let (b, k) = self.echo();
                (b.frame, k.into(), true)
            }
            86..=89 => {
                let (b, k) = self.fragment();
                (b.frame, k.into(), true)
            }
            90..=94 => {
                // Not IP: ARP, LLDP, 802.1ad, anything; sometimes just a bare header.
                let rng = &mut self.rng;
                let mut v = rng.mac().to_vec();
                v.extend_from_slice(&rng.mac());
                let et: u16 = rng.pick(&[0x0806, 0x88cc, 0x88a8, 0x9100, 0x8847, 0x0842, 0x05dc]);
                let et = if rng.percent(30) {
                    rng.next() as u16
                } else {
                    et
                };
                v.extend_from_slice(&et.to_be_bytes());
                let n = rng.below(80);
                v.extend(rng.bytes(n));
                (v, "not-ip".into(), false)
            }
            _ => {
                // Garbage of at least an Ethernet header (BPF_PROG_TEST_RUN refuses less),
                // often with an IP or VLAN EtherType so it reaches the deeper checks.
                let rng = &mut self.rng;
                let n = rng.range(14, 120);
                let mut v = rng.bytes(n);
                match rng.below(4) {
                    0 => v[12..14].copy_from_slice(&[0x08, 0x00]),
                    1 => v[12..14].copy_from_slice(&[0x86, 0xdd]),
                    2 => v[12..14].copy_from_slice(&[0x81, 0x00]),
                    _ => {}
                }
                (v, "garbage".into(), false)
            }
        }
    }
}

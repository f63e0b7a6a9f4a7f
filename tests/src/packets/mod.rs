//! The differential test's packet generator: realistic and hostile traffic through the datapath.
//!
//! Seeded streams of valid IPv4/IPv6 TCP/UDP frames to the VIPs of [`config_a`] and next to
//! them, echo requests, ICMP errors quoting VIP flows, fragments, non-IP frames and garbage,
//! most of them mutated (`mutate.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Dscp, Ipv4Ecn, Ipv4Header, Ipv4Options, Ipv6FlowLabel,
    Ipv6Header, PacketBuilder, PacketBuilderStep, TcpHeader, VlanId,
};
use xdplb_lab::frames::{CLIENT_MAC, GW_MAC};

mod config_a;
mod messages;
mod mutate;
mod rng;

pub use mutate::{get16, put, put16};
use mutate::{insert_ext, mutate};
use rng::Rng;

pub use self::config_a::config_a;

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

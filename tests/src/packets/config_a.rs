//! The config the generated traffic aims at: every kind of VIP the datapath tells apart.

use xdplb_lab::configs::{config, lan4, vip, Backend};

/// Tunnel sources of both families, and an MTU that generated packets exceed.
const TUNNEL: &str = "\
tunnel:
  source_v4: 172.31.64.0/18
  source_v6: 'fd00:ffff::a000:0/100'
  mtu: 1400";

/// The config the generated flows aim at (the differential test's phase 1): every kind of VIP
/// the datapath distinguishes: L2 and `ipip` (4in4, 6in6, 4in6, 6in4 and a VIP with backends
/// of both families), addresses that answer echo requests and ones that do not, and a tunnel
/// MTU small enough that generated packets exceed it. The generator's targets (`targets` in
/// `mod.rs`) name these VIPs' addresses and ports, so a config for its traffic starts from
/// this one.
pub fn config_a() -> String {
    config("lo")
        .top(TUNNEL)
        .vip(
            vip("web", "10.201.0.10", 80, "tcp")
                .set("icmp_echo", true)
                .backends([lan4(1), lan4(2).weight(50), lan4(3)]),
        )
        .vip(
            vip("web-any", "10.201.0.10", 0, "tcp")
                .set("ring_size", 211)
                .backends([lan4(4), lan4(5)]),
        )
        .vip(
            vip("dns-any", "10.201.0.11", 0, "udp")
                .set("ring_size", 1009)
                .backends([lan4(1), lan4(2)]),
        )
        .vip(
            vip("sticky", "10.201.0.12", 443, "tcp")
                .set("hash", "source-ip")
                .set("ring_size", 1009)
                .backends([lan4(1), lan4(2), lan4(3)]),
        )
        .vip(
            vip("stateless-dns", "10.201.0.14", 53, "udp")
                .set("stateless", true)
                .set("ring_size", 1009)
                .backends([lan4(1), lan4(2), lan4(3)]),
        )
        .vip(
            vip("web6", "fd00:201::10", 443, "tcp")
                .set("ring_size", 1009)
                .backends([lan6(1), lan6(2)]),
        )
        .vip(
            vip("dns6", "fd00:201::11", 0, "udp")
                .set("icmp_echo", true)
                .set("hash", "source-ip")
                .set("stateless", true)
                .set("ring_size", 1009)
                .backends([lan6(1), lan6(2), lan6(3)]),
        )
        .vip(vip("empty", "10.201.0.13", 80, "tcp"))
        .vip(
            vip("drained", "10.201.0.15", 80, "udp")
                .set("ring_size", 211)
                .backend(lan4(6).state("draining")),
        )
        .vip(
            vip("tun4", "10.201.0.20", 80, "tcp")
                .set("forwarding", "ipip")
                .set("icmp_echo", true)
                .set("ring_size", 1009)
                .backends(far(&["10.202.0.1", "10.202.0.2", "fd00:202::3"])),
        )
        .vip(
            vip("tun4in6", "10.201.0.21", 0, "udp")
                .set("forwarding", "ipip")
                .set("stateless", true)
                .set("ring_size", 1009)
                .backends(far(&["fd00:202::1", "fd00:202::2"])),
        )
        .vip(
            vip("tun6", "fd00:201::20", 443, "tcp")
                .set("forwarding", "ipip")
                .set("ring_size", 1009)
                .backends(far(&["fd00:202::1", "fd00:202::2"])),
        )
        .vip(
            vip("tun6in4", "fd00:201::21", 0, "udp")
                .set("forwarding", "ipip")
                .set("hash", "source-ip")
                .set("icmp_echo", true)
                .set("ring_size", 1009)
                .backends(far(&["10.202.0.1", "10.202.0.2"])),
        )
        .yaml()
}

/// Backend `i` of the IPv6 VIPs: fd00:200::10`i`, MAC 02:00:00:00:02:0`i` (not the IPv4
/// backend's MAC: in this config the families are different hosts).
fn lan6(i: u8) -> Backend {
    Backend::new(format!("fd00:200::{:x}", 0x100 + u16::from(i)))
        .mac(format!("02:00:00:00:02:{i:02x}"))
}

/// Tunnelled backends on the far side of the router: every one's next hop is the router, whose
/// MAC ends in fe for IPv4 and fd for IPv6.
fn far(addresses: &[&str]) -> Vec<Backend> {
    addresses
        .iter()
        .map(|a| {
            let mac = if a.contains(':') { "fd" } else { "fe" };
            Backend::new(*a).mac(format!("02:00:00:00:00:{mac}"))
        })
        .collect()
}

//! Packet fixtures through the real XDP program with BPF_PROG_TEST_RUN.
//!
//! Each has an input packet (built with etherparse), the expected verdict, output bytes and
//! counters.

use etherparse::{IpHeaders, Ipv4Header, Ipv4Options, PacketBuilder, VlanId};
use lb_common::{Counter, Family, FlowKey};
use lb_userspace::datapath::objects;
use xdplb_lab::configs::{self, lan4, lan6, vip};
use xdplb_tests::fixture::*;

/// L2 VIPs of every lookup kind: one port, all ports, source-IP hash, IPv6, no backends.
fn config() -> String {
    let three = || [lan4(1), lan4(2), lan4(3)];
    configs::config("lo")
        .vip(vip("web", "10.201.0.10", 80, "tcp").backends(three()))
        .vip(vip("any-port", "10.201.0.11", 0, "udp").backends([lan4(1), lan4(2)]))
        .vip(
            vip("sticky", "10.201.0.12", 80, "tcp")
                .set("hash", "source-ip")
                .backends(three()),
        )
        .vip(vip("web6", "fd00:201::10", 53, "udp").backends([lan6(1), lan6(2)]))
        .vip(vip("empty", "10.201.0.13", 80, "tcp"))
        .yaml()
}

/// Runs `pkt` and checks it leaves rewritten for the backend `vip`'s ring picks for `f`.
fn assert_forwarded(h: &mut Harness, vip: &str, pkt: &[u8], f: &FlowKey, what: &str) {
    let mac = h.expected_mac(vip, f, false);
    let r = h.run(pkt);
    assert_eq!(r.action, XDP_TX, "{what}");
    assert_eq!(r.out, l2_rewritten(pkt, mac), "{what}");
}

/// A UDP datagram from fd00:200::11 to the IPv6 VIP with one 8-byte extension header
/// (`next_header` names it; its own first byte says UDP follows) between IPv6 and UDP.
fn udp6_with_extension_header(next_header: u8, header: [u8; 8]) -> Vec<u8> {
    let src: std::net::Ipv6Addr = "fd00:200::11".parse().unwrap();
    let dst: std::net::Ipv6Addr = "fd00:201::10".parse().unwrap();
    let plain = udp6(src.octets(), 5353, dst.octets(), 53);
    let mut pkt = plain[..14 + 40].to_vec();
    pkt[14 + 6] = next_header;
    let plen = u16::from_be_bytes([pkt[18], pkt[19]]) + 8;
    pkt[18..20].copy_from_slice(&plen.to_be_bytes());
    pkt.extend_from_slice(&header);
    pkt.extend_from_slice(&plain[14 + 40..]);
    pkt
}

#[test]
fn ipv4_tcp_to_vip_is_forwarded_to_the_ring_choice_and_remembered() {
    let mut h = Harness::new(&config());
    let pkt = tcp4([10, 200, 0, 11], 40000, [10, 201, 0, 10], 80);
    let f = flow([10, 200, 0, 11], 40000, [10, 201, 0, 10], 80, 6);
    let mac = h.expected_mac("web", &f, false);
    let before = h.global();
    let r = h.run(&pkt);
    assert_eq!(r.action, XDP_TX);
    assert_eq!(r.out, l2_rewritten(&pkt, mac));
    let after = h.global();
    assert_eq!(delta(&after, &before, Counter::TxForwarded), 1);
    assert_eq!(delta(&after, &before, Counter::ConnMiss), 1);
    assert_eq!(delta(&after, &before, Counter::ConnHit), 0);
    let vip = h.maps.one_vip_counters(h.vip_id("web")).unwrap();
    assert_eq!(
        (vip.packets, vip.bytes, vip.new_flows),
        (1, pkt.len() as u64, 1)
    );
    let entry = h.maps.conn(&f).expect("flow remembered");
    assert_eq!(h.maps.backend(entry.backend_id).unwrap().mac, mac);
    let b = h.maps.backend_counters(entry.backend_id).unwrap();
    assert_eq!((b.packets, b.new_flows), (1, 1));

    // Second packet of the flow: a flow-table hit, not a new flow.
    let r = h.run(&pkt);
    assert_eq!(r.action, XDP_TX);
    assert_eq!(r.out, l2_rewritten(&pkt, mac));
    let again = h.global();
    assert_eq!(delta(&again, &after, Counter::ConnHit), 1);
    let vip = h.maps.one_vip_counters(h.vip_id("web")).unwrap();
    assert_eq!((vip.packets, vip.new_flows), (2, 1));
}

#[test]
fn object_has_every_map_and_program_lb_common_names() {
    let ebpf = aya::Ebpf::load(objects::EBPF_OBJECT).expect("object loads");
    let maps: std::collections::BTreeSet<&str> = ebpf.maps().map(|(n, _)| n).collect();
    for spec in &lb_common::BALANCER_MAPS {
        assert!(
            maps.contains(spec.name),
            "map {} missing from the object: {maps:?}",
            spec.name
        );
    }
    assert_eq!(
        maps.len(),
        lb_common::BALANCER_MAPS.len(),
        "the object has maps lb-common does not name: {maps:?}"
    );
    for name in [lb_common::programs::BALANCER, lb_common::programs::PASS] {
        assert!(ebpf.program(name).is_some(), "program {name} missing");
    }
}

#[test]
fn ipv6_udp_to_vip_is_forwarded() {
    let mut h = Harness::new(&config());
    let src: std::net::Ipv6Addr = "fd00:200::11".parse().unwrap();
    let dst: std::net::Ipv6Addr = "fd00:201::10".parse().unwrap();
    let pkt = udp6(src.octets(), 5353, dst.octets(), 53);
    let f = flow(src, 5353, dst, 53, 17);
    assert_eq!(f.family, Family::V6);
    assert_forwarded(&mut h, "web6", &pkt, &f, "forwarded");
}

#[test]
fn traffic_that_is_not_for_a_vip_passes_untouched() {
    let mut h = Harness::new(&config());
    let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
        (
            "tcp to the gateway itself (ssh)",
            tcp4([10, 200, 0, 11], 40000, [10, 200, 0, 1], 22),
            Counter::PassNotVip,
        ),
        (
            "tcp to the VIP address, other port",
            tcp4([10, 200, 0, 11], 40000, [10, 201, 0, 10], 443),
            Counter::PassNotVip,
        ),
        (
            "udp to a tcp-only VIP",
            udp4([10, 200, 0, 11], 40000, [10, 201, 0, 10], 80),
            Counter::PassNotVip,
        ),
        (
            "arp",
            {
                let mut v = vec![0xff; 6];
                v.extend_from_slice(&CLIENT_MAC);
                v.extend_from_slice(&[0x08, 0x06]);
                v.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
                v.extend_from_slice(&[0; 20]);
                v
            },
            Counter::PassNotIp,
        ),
        (
            // A switch flooding unknown unicast delivers another host's frames: rewriting one
            // would send it on with that host's MAC as our source and poison the switch.
            "VIP traffic addressed to another host's MAC",
            {
                let mut v = tcp4([10, 200, 0, 11], 40000, [10, 201, 0, 10], 80);
                v[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0x99, 0x99]);
                v
            },
            Counter::PassOtherHost,
        ),
        (
            "VIP traffic to the broadcast MAC",
            {
                let mut v = tcp4([10, 200, 0, 11], 40000, [10, 201, 0, 10], 80);
                v[0..6].copy_from_slice(&[0xff; 6]);
                v
            },
            Counter::PassNotUnicast,
        ),
        // (BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header, so the
        // shortest frame testable here is a bare header.)
        (
            "bare lldp header",
            {
                let mut v = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
                v.extend_from_slice(&CLIENT_MAC);
                v.extend_from_slice(&[0x88, 0xcc]);
                v
            },
            Counter::PassNotIp,
        ),
    ];
    for (what, pkt, counter) in cases {
        let before = h.global();
        let r = h.run(&pkt);
        assert_eq!(r.action, XDP_PASS, "{what}");
        assert_eq!(r.out, pkt, "{what}: must be untouched");
        assert_eq!(
            delta(&h.global(), &before, counter),
            1,
            "{what}: counted as {}",
            counter.name()
        );
    }
}

#[test]
fn all_ports_vip_takes_any_port() {
    let mut h = Harness::new(&config());
    for port in [1u16, 53, 12345, 65535] {
        let pkt = udp4([10, 200, 0, 11], 999, [10, 201, 0, 11], port);
        let f = flow([10, 200, 0, 11], 999, [10, 201, 0, 11], port, 17);
        assert_forwarded(&mut h, "any-port", &pkt, &f, "port {port}");
    }
}

#[test]
fn source_ip_hashing_keeps_a_client_on_one_backend() {
    let mut h = Harness::new(&config());
    let mut per_client = std::collections::HashMap::new();
    for client in 1..=20u8 {
        for sport in [1000u16, 2000, 3000, 4000] {
            let pkt = tcp4([10, 200, 1, client], sport, [10, 201, 0, 12], 80);
            let r = h.run(&pkt);
            assert_eq!(r.action, XDP_TX);
            let mac: [u8; 6] = r.out[0..6].try_into().unwrap();
            let first = *per_client.entry(client).or_insert(mac);
            assert_eq!(mac, first, "client {client} moved between backends");
        }
    }
    let distinct: std::collections::HashSet<_> = per_client.values().collect();
    assert!(distinct.len() > 1, "20 clients all hashed to one backend");
}

#[test]
fn malformed_ip_is_dropped_and_counted() {
    let mut h = Harness::new(&config());
    let good = tcp4([10, 200, 0, 11], 40000, [10, 201, 0, 10], 80);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("truncated tcp header", good[..14 + 20 + 10].to_vec()));
    let mut v = good.clone();
    v[14] = 0x44; // IHL 4 (< 5)
    cases.push(("ipv4 ihl below 5", v));
    let mut v = good.clone();
    v[16..18].copy_from_slice(&200u16.to_be_bytes()); // total length past the frame
    cases.push(("ipv4 total length past the frame", v));
    let mut v = good.clone();
    v[14 + 20 + 12] = 0x40; // TCP data offset 4
    cases.push(("tcp data offset below 5", v));
    cases.push(("truncated ipv4 header", good[..14 + 12].to_vec()));
    let mut v = good.clone();
    v[14] = 0x65; // version 6 in an IPv4 ethertype
    cases.push(("wrong ip version", v));
    for (what, pkt) in cases {
        let before = h.global();
        let r = h.run(&pkt);
        assert_eq!(r.action, XDP_DROP, "{what}");
        assert_eq!(
            delta(&h.global(), &before, Counter::DropMalformed),
            1,
            "{what}"
        );
    }
}

#[test]
fn ipv4_options_vlan_fragments_and_extension_headers() {
    let mut h = Harness::new(&config());
    // IPv4 with 4 bytes of options: the ports are after the options, not at offset 20.
    let mut ip = Ipv4Header::new(
        0,
        64,
        etherparse::IpNumber::TCP,
        [10, 200, 0, 11],
        [10, 201, 0, 10],
    )
    .unwrap();
    ip.options = Ipv4Options::try_from(&[1u8, 1, 1, 0][..]).unwrap(); // NOP NOP NOP EOL
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .tcp(41000, 80, 1, 1000);
    let mut pkt = Vec::new();
    b.write(&mut pkt, b"").unwrap();
    let f = flow([10, 200, 0, 11], 41000, [10, 201, 0, 10], 80, 6);
    assert_forwarded(&mut h, "web", &pkt, &f, "ipv4 with options");
    assert!(h.maps.conn(&f).is_some(), "ports read after the options");

    // One 802.1Q tag: forwarded with the tag kept.
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .single_vlan(VlanId::try_new(100).unwrap())
        .ipv4([10, 200, 0, 11], [10, 201, 0, 10], 64)
        .tcp(42000, 80, 1, 1000);
    let mut pkt = Vec::new();
    b.write(&mut pkt, b"").unwrap();
    let f = flow([10, 200, 0, 11], 42000, [10, 201, 0, 10], 80, 6);
    assert_forwarded(&mut h, "web", &pkt, &f, "vlan");

    // IPv4 fragments to a VIP address are dropped, first (MF) or later (offset) alike;
    // fragments to any other address are the stack's.
    for (byte, bits) in [(6, 0x20), (7, 0x10)] {
        let mut frag = tcp4([10, 200, 0, 11], 40000, [10, 201, 0, 10], 80);
        frag[14 + byte] |= bits;
        let before = h.global();
        let r = h.run(&frag);
        assert_eq!(r.action, XDP_DROP, "fragment to a VIP address");
        assert_eq!(delta(&h.global(), &before, Counter::DropFragment), 1);
        let mut other = tcp4([10, 200, 0, 11], 40000, [10, 200, 0, 1], 80);
        other[14 + byte] |= bits;
        let before = h.global();
        let r = h.run(&other);
        assert_eq!(r.action, XDP_PASS, "fragment to another address");
        assert_eq!(r.out, other);
        assert_eq!(delta(&h.global(), &before, Counter::PassUnsupported), 1);
    }

    // IPv6 fragment header to a VIP address: dropped too.
    let frag6 = udp6_with_extension_header(44, [17, 0, 0, 1, 0, 0, 0, 7]);
    let before = h.global();
    assert_eq!(h.run(&frag6).action, XDP_DROP);
    assert_eq!(delta(&h.global(), &before, Counter::DropFragment), 1);

    // IPv6 with a hop-by-hop header before UDP.
    let ext = udp6_with_extension_header(0, [17, 0, 1, 4, 0, 0, 0, 0]);
    let before = h.global();
    let r = h.run(&ext);
    assert_eq!(r.action, XDP_PASS);
    assert_eq!(r.out, ext);
    assert_eq!(delta(&h.global(), &before, Counter::PassUnsupported), 1);
}

#[test]
fn vip_without_backends_drops() {
    let mut h = Harness::new(&config());
    let before = h.global();
    let r = h.run(&tcp4([10, 200, 0, 11], 40000, [10, 201, 0, 13], 80));
    assert_eq!(r.action, XDP_DROP);
    assert_eq!(delta(&h.global(), &before, Counter::DropNoBackend), 1);
}

#[test]
fn draining_keeps_flows_removal_resteers() {
    let mut h = Harness::new(&config());
    // Open 60 flows and note their backends.
    let flows: Vec<(Vec<u8>, [u8; 6])> = (0..60u16)
        .map(|i| {
            let pkt = tcp4([10, 200, 0, 11], 30000 + i, [10, 201, 0, 10], 80);
            let r = h.run(&pkt);
            assert_eq!(r.action, XDP_TX);
            (pkt, r.out[0..6].try_into().unwrap())
        })
        .collect();
    let b101 = [0x02, 0, 0, 0, 0x01, 0x01];
    let b103 = [0x02, 0, 0, 0, 0x01, 0x03];
    assert!(flows.iter().any(|(_, m)| *m == b101) && flows.iter().any(|(_, m)| *m == b103));
    let id101 = h.backend_id("web", "10.200.0.101");

    // .101 drains and .103 is removed.
    let drained = config()
        .replacen(
            "{ address: 10.200.0.101, mac: '02:00:00:00:01:01' }",
            "{ address: 10.200.0.101, mac: '02:00:00:00:01:01', state: draining }",
            1,
        )
        .replacen(
            "      - { address: 10.200.0.103, mac: '02:00:00:00:01:03' }\n",
            "",
            1,
        );
    h.reconfigure(&drained);
    assert_eq!(
        h.backend_id("web", "10.200.0.101"),
        id101,
        "ids are stable across reloads"
    );
    let before = h.global();
    for (pkt, mac) in &flows {
        let r = h.run(pkt);
        assert_eq!(r.action, XDP_TX);
        let now: [u8; 6] = r.out[0..6].try_into().unwrap();
        if *mac == b103 {
            assert_ne!(now, b103, "flow of a removed backend must be re-steered");
        } else {
            assert_eq!(now, *mac, "flow moved although its backend is alive");
        }
    }
    let moved = flows.iter().filter(|(_, m)| *m == b103).count() as u64;
    assert_eq!(delta(&h.global(), &before, Counter::ConnResteer), moved);
    // New flows never go to the draining backend.
    for i in 0..200u16 {
        let r = h.run(&tcp4([10, 200, 0, 12], 20000 + i, [10, 201, 0, 10], 80));
        assert_eq!(r.action, XDP_TX);
        assert_ne!(r.out[0..6], b101, "new flow sent to a draining backend");
    }
}

/// A configured `virtual_mac` (a VRRP pair's) is balanced too, and what leaves carries the
/// interface's own MAC as source, never the virtual one copied from the frame.
#[test]
fn a_virtual_mac_is_balanced_and_the_source_is_always_our_own() {
    const VIRTUAL: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x07];
    let mut h = Harness::new(&config().replace(
        "interface: lo\n",
        "interface: lo\nvirtual_mac: '00:00:5e:00:01:07'\n",
    ));
    let mut pkt = tcp4([10, 200, 0, 11], 40000, [10, 201, 0, 10], 80);
    pkt[0..6].copy_from_slice(&VIRTUAL);
    let f = flow([10, 200, 0, 11], 40000, [10, 201, 0, 10], 80, 6);
    let mac = h.expected_mac("web", &f, false);
    let r = h.run(&pkt);
    assert_eq!(r.action, XDP_TX);
    assert_eq!(&r.out[0..6], &mac, "to the ring's backend");
    assert_eq!(&r.out[6..12], &GW_MAC, "from the interface's own MAC");
    assert_eq!(&r.out[12..], &pkt[12..], "nothing past the MACs changes");
    // Without it configured, the same frame is another host's.
    let mut h = Harness::new(&config());
    let before = h.global();
    let r = h.run(&pkt);
    assert_eq!((r.action, &r.out), (XDP_PASS, &pkt));
    assert_eq!(delta(&h.global(), &before, Counter::PassOtherHost), 1);
}

/// The flow table is looked up before the VIP, so a VIP that leaves the config must not keep
/// forwarding its established flows through the entries they left: the agent clears the
/// removed VIP's backend slots, the entries stop serving, and the VIP lookup then finds
/// nothing.
#[test]
fn a_removed_vip_stops_forwarding_its_established_flows() {
    let mut h = Harness::new(&config());
    let flows: Vec<Vec<u8>> = (0..20u16)
        .map(|i| tcp4([10, 200, 0, 11], 31000 + i, [10, 201, 0, 10], 80))
        .collect();
    for pkt in &flows {
        assert_eq!(h.run(pkt).action, XDP_TX);
    }
    let before = h.global();
    for pkt in &flows {
        assert_eq!(h.run(pkt).action, XDP_TX);
    }
    assert_eq!(delta(&h.global(), &before, Counter::ConnHit), 20, "pinned");

    let web = config()
        .split_once("  - name: web\n")
        .and_then(|(head, rest)| Some((head, rest.split_once("  - name: any-port\n")?.1)))
        .map(|(head, tail)| format!("{head}  - name: any-port\n{tail}"))
        .unwrap();
    assert!(
        !web.contains("10.201.0.10\n"),
        "the VIP is gone from the config"
    );
    h.reconfigure(&web);
    let before = h.global();
    for pkt in &flows {
        let r = h.run(pkt);
        assert_eq!(r.action, XDP_PASS, "a removed VIP's flow was forwarded");
        assert_eq!(&r.out, pkt, "passed untouched");
    }
    let after = h.global();
    assert_eq!(delta(&after, &before, Counter::PassNotVip), 20);
    for c in [Counter::ConnHit, Counter::ConnResteer, Counter::TxForwarded] {
        assert_eq!(delta(&after, &before, c), 0, "{}", c.name());
    }
}

/// A VIP made stateless stops using the flow table at once, although its flows' entries are
/// still there and their backends still serve: the backend entries carry the VIP's flags.
#[test]
fn a_vip_made_stateless_ignores_its_old_flow_entries() {
    let mut h = Harness::new(&config());
    let pkt = tcp4([10, 200, 0, 11], 32000, [10, 201, 0, 10], 80);
    assert_eq!(h.run(&pkt).action, XDP_TX);
    let stateless = config().replacen(
        "    port: 80\n    protocol: tcp\n    backends:\n",
        "    port: 80\n    protocol: tcp\n    stateless: true\n    backends:\n",
        1,
    );
    h.reconfigure(&stateless);
    let before = h.global();
    assert_eq!(h.run(&pkt).action, XDP_TX);
    let after = h.global();
    assert_eq!(delta(&after, &before, Counter::TxForwarded), 1);
    for c in [Counter::ConnHit, Counter::ConnMiss, Counter::ConnResteer] {
        assert_eq!(delta(&after, &before, c), 0, "{}", c.name());
    }
}

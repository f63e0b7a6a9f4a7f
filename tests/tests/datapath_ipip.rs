//! Fixtures for the complete datapath through BPF_PROG_TEST_RUN.
//!
//! IP-in-IP encapsulation (4in4, 6in6, 4in6), path-MTU answers, ICMP error steering, echo replies
//! and the fragment policy.

use std::net::{IpAddr, Ipv6Addr};

use etherparse::{
    IcmpEchoHeader, Icmpv4Type, Icmpv6Type, Ipv4Header, Ipv6Header, PacketBuilder, SlicedPacket,
};
use lb_common::{flow_hash, Counter, IPPROTO_TCP};
use xdplb_tests::fixture::*;

const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
const CLIENT4: [u8; 4] = [10, 200, 0, 11];
const VIP4: [u8; 4] = [10, 201, 0, 10];

fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

/// Ones'-complement sum of `data` folded to 16 bits (a correct checksum region sums to 0xffff).
fn ones_sum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn icmpv6_checksum_ok(src: [u8; 16], dst: [u8; 16], icmp: &[u8]) -> bool {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    let s = ones_sum(&pseudo, 0);
    ones_sum(icmp, u32::from(s)) == 0xffff
}

fn tcp4_data(sport: u16, dst: [u8; 4], len: usize, df: bool) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, CLIENT4, dst).unwrap();
    ip.dont_fragment = df;
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(sport, 80, 7, 65535)
        .ack(1);
    let payload = vec![0x5a; len];
    let mut v = Vec::new();
    b.write(&mut v, &payload).unwrap();
    v
}

fn tcp6_data(sport: u16, len: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ipv6(v6("fd00:200::11"), v6("fd00:201::10"), 64)
        .tcp(sport, 80, 7, 65535)
        .ack(1);
    let payload = vec![0x6b; len];
    let mut v = Vec::new();
    b.write(&mut v, &payload).unwrap();
    v
}

/// The backend address the ring gives `flow` in VIP `vip`.
fn ring_backend(h: &Harness, vip: &str, f: &lb_common::FlowKey) -> [u8; 16] {
    let ring = h.maps.ring(h.vip_id(vip)).unwrap();
    let id =
        lb_common::history::slot_owner(ring[(flow_hash(f, false) % ring.len() as u32) as usize]);
    h.maps.backend(id).unwrap().addr
}

#[test]
fn ipv4_in_ipv4_has_hashed_source_router_mac_and_the_untouched_inner_packet() {
    let mut h = Harness::new(&ipip_config());
    let pkt = tcp4_data(40000, VIP4, 100, true);
    let f = flow(
        IpAddr::from(CLIENT4),
        40000,
        IpAddr::from(VIP4),
        80,
        IPPROTO_TCP,
    );
    let before = h.global();
    let r = h.run(&pkt);
    assert_eq!(r.action, XDP_TX);
    assert_eq!(delta(&h.global(), &before, Counter::TxForwarded), 1);
    assert_eq!(&r.out[0..6], &ROUTER_MAC, "to the next hop");
    assert_eq!(&r.out[6..12], &GW_MAC, "from this NIC");
    assert_eq!(&r.out[12..14], &[0x08, 0x00]);
    let (outer, rest) = Ipv4Header::from_slice(&r.out[14..]).expect("outer IPv4 header");
    assert_eq!(outer.protocol, etherparse::IpNumber::IPV4);
    assert_eq!(outer.header_checksum, outer.calc_header_checksum());
    assert!(outer.dont_fragment);
    assert_eq!(outer.time_to_live, 64);
    assert_eq!(usize::from(outer.total_len), 20 + pkt.len() - 14);
    let hash = flow_hash(&f, false);
    let want_src = 0xac10_0000 | (hash & 0xffff);
    assert_eq!(
        u32::from_be_bytes(outer.source),
        want_src,
        "172.16/16 + hash"
    );
    let backend = ring_backend(&h, "web4", &f);
    assert_eq!(outer.destination, backend[..4]);
    assert_eq!(rest, &pkt[14..], "inner packet untouched");
    // The same flow again: same backend, same outer source (remembered, not re-hashed).
    let r2 = h.run(&pkt);
    assert_eq!(r2.out, r.out);
}

#[test]
fn ipv6_in_ipv6_and_ipv4_in_ipv6() {
    let mut h = Harness::new(&ipip_config());
    let pkt = tcp6_data(40001, 200);
    let f = flow(
        "fd00:200::11".parse::<IpAddr>().unwrap(),
        40001,
        "fd00:201::10".parse::<IpAddr>().unwrap(),
        80,
        IPPROTO_TCP,
    );
    let r = h.run(&pkt);
    assert_eq!(r.action, XDP_TX);
    assert_eq!(&r.out[0..6], &ROUTER_MAC);
    assert_eq!(&r.out[12..14], &[0x86, 0xdd]);
    let (outer, rest) = Ipv6Header::from_slice(&r.out[14..]).expect("outer IPv6 header");
    let hash = flow_hash(&f, false);
    assert_eq!(outer.next_header, etherparse::IpNumber::IPV6);
    assert_eq!(outer.hop_limit, 64);
    assert_eq!(outer.flow_label.value(), hash & 0xfffff);
    assert_eq!(usize::from(outer.payload_length), pkt.len() - 14);
    assert_eq!(&outer.source[..12], &v6("fd00:ffff::")[..12]);
    assert_eq!(outer.source[12..], hash.to_be_bytes(), "/96: 32 hash bits");
    assert_eq!(outer.destination, ring_backend(&h, "web6", &f));
    assert_eq!(rest, &pkt[14..]);

    // 4in6: an IPv4 UDP VIP with an IPv6 backend.
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ipv4(CLIENT4, [10, 201, 0, 11], 64)
        .udp(5353, 7000);
    let mut q = Vec::new();
    b.write(&mut q, b"query").unwrap();
    let r = h.run(&q);
    assert_eq!(r.action, XDP_TX);
    let (outer, rest) = Ipv6Header::from_slice(&r.out[14..]).unwrap();
    assert_eq!(outer.next_header, etherparse::IpNumber::IPV4, "4in6");
    assert_eq!(outer.destination, v6("fd00:202::101"));
    assert_eq!(rest, &q[14..]);
}

#[test]
fn too_big_to_encapsulate_gets_fragmentation_needed_with_a_valid_quote() {
    let mut h = Harness::new(&ipip_config());
    // 1500-byte IP packet + 20 outer > MTU 1500.
    let pkt = tcp4_data(40002, VIP4, 1500 - 40, true);
    let before = h.global();
    let r = h.run(&pkt);
    assert_eq!(r.action, XDP_TX);
    assert_eq!(delta(&h.global(), &before, Counter::TxIcmpTooBig), 1);
    assert_eq!(delta(&h.global(), &before, Counter::TxForwarded), 0);
    assert_eq!(&r.out[0..6], &CLIENT_MAC, "back to the client's MAC");
    assert_eq!(&r.out[6..12], &GW_MAC);
    let s = SlicedPacket::from_ethernet(&r.out).expect("parses");
    let (ip, icmp_bytes) = Ipv4Header::from_slice(&r.out[14..]).unwrap();
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert_eq!(ip.source, VIP4, "from the VIP");
    assert_eq!(ip.destination, CLIENT4);
    assert_eq!(usize::from(ip.total_len), 20 + 8 + 28);
    assert_eq!(r.out.len(), 14 + 20 + 8 + 28, "cut after the quote");
    match s.transport {
        Some(etherparse::TransportSlice::Icmpv4(icmp)) => match icmp.icmp_type() {
            Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu },
            ) => assert_eq!(next_hop_mtu, 1480),
            t => panic!("wrong ICMP type {t:?}"),
        },
        t => panic!("not ICMP: {t:?}"),
    }
    assert_eq!(ones_sum(icmp_bytes, 0), 0xffff, "ICMP checksum");
    assert_eq!(
        &icmp_bytes[8..],
        &pkt[14..14 + 28],
        "quotes IP header + 8 bytes"
    );

    // Without DF the client has asked for fragmentation, which the balancer cannot do.
    let before = h.global();
    let r = h.run(&tcp4_data(40003, VIP4, 1500 - 40, false));
    assert_eq!(r.action, XDP_DROP);
    assert_eq!(delta(&h.global(), &before, Counter::DropTooBig), 1);

    // Exactly fitting: forwarded.
    let r = h.run(&tcp4_data(40004, VIP4, 1480 - 40, true));
    assert_eq!(r.action, XDP_TX);
    assert_eq!(r.out.len(), 14 + 1500);
}

#[test]
fn too_big_ipv6_gets_packet_too_big() {
    let mut h = Harness::new(&ipip_config());
    let pkt = tcp6_data(40005, 1500 - 60);
    let before = h.global();
    let r = h.run(&pkt);
    assert_eq!(r.action, XDP_TX);
    assert_eq!(delta(&h.global(), &before, Counter::TxIcmpTooBig), 1);
    assert_eq!(&r.out[0..6], &CLIENT_MAC);
    let (ip, icmp_bytes) = Ipv6Header::from_slice(&r.out[14..]).unwrap();
    assert_eq!(ip.source, v6("fd00:201::10"));
    assert_eq!(ip.destination, v6("fd00:200::11"));
    assert_eq!(usize::from(ip.payload_length), icmp_bytes.len());
    assert_eq!(icmp_bytes.len(), 8 + 48);
    assert!(icmpv6_checksum_ok(ip.source, ip.destination, icmp_bytes));
    let s = SlicedPacket::from_ethernet(&r.out).unwrap();
    match s.transport {
        Some(etherparse::TransportSlice::Icmpv6(icmp)) => {
            assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1460 })
        }
        t => panic!("not ICMPv6: {t:?}"),
    }
    assert_eq!(&icmp_bytes[8..], &pkt[14..14 + 48]);
}

/// An ICMP error a router sends to the VIP about a reply the backend sent to the client.
fn frag_needed_about(vip: [u8; 4], client_port: u16) -> Vec<u8> {
    let reply = {
        let b = PacketBuilder::ipv4(vip, CLIENT4, 63)
            .tcp(80, client_port, 9, 1000)
            .ack(8);
        let mut v = Vec::new();
        b.write(&mut v, &[0u8; 1400]).unwrap();
        v
    };
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xaa], GW_MAC)
        .ipv4([10, 200, 0, 254], vip, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ));
    let mut v = Vec::new();
    b.write(&mut v, &reply[..28]).unwrap();
    v
}

#[test]
fn icmp_errors_about_a_flow_go_to_the_flows_backend_and_create_no_flow() {
    let mut h = Harness::new(&ipip_config());
    for (vip, name) in [(VIP4, "web4"), ([10, 201, 0, 12], "l2web")] {
        for port in 41000..41016u16 {
            let f = flow(
                IpAddr::from(CLIENT4),
                port,
                IpAddr::from(vip),
                80,
                IPPROTO_TCP,
            );
            let entries = h.maps.conn_count();
            let before = h.global();
            let r = h.run(&frag_needed_about(vip, port));
            assert_eq!(r.action, XDP_TX, "{name} port {port}");
            assert_eq!(delta(&h.global(), &before, Counter::TxIcmpSteered), 1);
            assert_eq!(
                h.maps.conn_count(),
                entries,
                "an ICMP error creates no flow"
            );
            let backend = ring_backend(&h, name, &f);
            if name == "web4" {
                let (outer, rest) = Ipv4Header::from_slice(&r.out[14..]).unwrap();
                assert_eq!(outer.destination, backend[..4], "the flow's backend");
                // Same outer source as the flow's own packets.
                let want_src = 0xac10_0000 | (flow_hash(&f, false) & 0xffff);
                assert_eq!(u32::from_be_bytes(outer.source), want_src);
                assert_eq!(rest.len(), r.out.len() - 34);
            } else {
                let mac = h.expected_mac(name, &f, false);
                assert_eq!(&r.out[0..6], &mac);
            }
        }
    }
    // The flow already in the table wins over the ring: pin one to the other backend.
    let f = flow(
        IpAddr::from(CLIENT4),
        42000,
        IpAddr::from(VIP4),
        80,
        IPPROTO_TCP,
    );
    let other = h
        .maps
        .backends()
        .unwrap()
        .into_iter()
        .find(|(_, b)| b.vip_id == h.vip_id("web4") && b.addr != ring_backend(&h, "web4", &f))
        .unwrap();
    h.maps
        .insert_conn(
            &f,
            &lb_common::ConnEntry {
                backend_id: other.0,
                tag: other.1.tag,
                hash: flow_hash(&f, false),
                previous: lb_common::NO_BACKEND,
            },
        )
        .unwrap();
    let r = h.run(&frag_needed_about(VIP4, 42000));
    let (outer, _) = Ipv4Header::from_slice(&r.out[14..]).unwrap();
    assert_eq!(outer.destination, other.1.addr[..4]);

    // An error quoting a packet that did not come from the VIP, or a non-VIP port: the stack's.
    let r = h.run(&frag_needed_about([10, 201, 0, 99], 41000));
    assert_eq!(r.action, XDP_PASS);
}

#[test]
fn echo_requests_are_answered_only_where_configured() {
    let mut h = Harness::new(&ipip_config());
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ipv4(CLIENT4, VIP4, 7)
        .icmpv4_echo_request(0x1234, 1);
    let mut ping = Vec::new();
    b.write(&mut ping, b"ping payload").unwrap();
    let before = h.global();
    let r = h.run(&ping);
    assert_eq!(r.action, XDP_TX);
    assert_eq!(delta(&h.global(), &before, Counter::TxIcmpEcho), 1);
    assert_eq!(&r.out[0..6], &CLIENT_MAC);
    let (ip, icmp) = Ipv4Header::from_slice(&r.out[14..]).unwrap();
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert_eq!((ip.source, ip.destination), (VIP4, CLIENT4));
    assert_eq!(ip.time_to_live, 64);
    assert_eq!(ones_sum(icmp, 0), 0xffff, "ICMP checksum");
    let s = SlicedPacket::from_ethernet(&r.out).unwrap();
    match s.transport {
        Some(etherparse::TransportSlice::Icmpv4(i)) => assert_eq!(
            i.icmp_type(),
            Icmpv4Type::EchoReply(IcmpEchoHeader { id: 0x1234, seq: 1 })
        ),
        t => panic!("{t:?}"),
    }

    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ipv6(v6("fd00:200::11"), v6("fd00:201::10"), 9)
        .icmpv6_echo_request(7, 2);
    let mut ping6 = Vec::new();
    b.write(&mut ping6, b"ping6").unwrap();
    let r = h.run(&ping6);
    assert_eq!(r.action, XDP_TX);
    let (ip, icmp) = Ipv6Header::from_slice(&r.out[14..]).unwrap();
    assert_eq!(ip.source, v6("fd00:201::10"));
    assert_eq!(icmp[0], 129, "echo reply");
    assert!(icmpv6_checksum_ok(ip.source, ip.destination, icmp));

    // l2web has no `icmp_echo`: its pings are the stack's.
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ipv4(CLIENT4, [10, 201, 0, 12], 7)
        .icmpv4_echo_request(1, 1);
    let mut ping = Vec::new();
    b.write(&mut ping, b"x").unwrap();
    let r = h.run(&ping);
    assert_eq!(r.action, XDP_PASS);
    assert_eq!(r.out, ping);
}

#[test]
fn udp_and_vlan_frames_keep_their_tag_through_the_tunnel() {
    let mut h = Harness::new(&ipip_config());
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .single_vlan(etherparse::VlanId::try_new(42).unwrap())
        .ipv4(CLIENT4, [10, 201, 0, 11], 64)
        .udp(5000, 7000);
    let mut pkt = Vec::new();
    b.write(&mut pkt, b"tagged").unwrap();
    let r = h.run(&pkt);
    assert_eq!(r.action, XDP_TX);
    assert_eq!(&r.out[12..16], &pkt[12..16], "802.1Q tag kept");
    assert_eq!(
        &r.out[16..18],
        &[0x86, 0xdd],
        "inner EtherType: the outer IPv6"
    );
    let (outer, rest) = Ipv6Header::from_slice(&r.out[18..]).unwrap();
    assert_eq!(outer.next_header, etherparse::IpNumber::IPV4);
    assert_eq!(rest, &pkt[18..]);
}

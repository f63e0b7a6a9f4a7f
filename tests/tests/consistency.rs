//! Two balancers with the same config agree byte for byte (VIPs, backends, rings) and send every packet to the same backend, whatever the file's order and the history of changes behind it: what ECMP across balancers relies on.

use lb_common::{Counter, BACKEND_UNUSED};
use lb_userspace::datapath::testrun::XDP_TX;
use xdplb_tests::fixture::*;

const ONE: &str = "\
interface: lo
vips:
  - name: web
    address: 10.201.0.10
    port: 80
    protocol: tcp
    ring_size: 1009
    backends:
      - { address: 10.200.0.101, mac: '02:00:00:00:01:01' }
      - { address: 10.200.0.102, mac: '02:00:00:00:01:02' }
      - { address: 10.200.0.103, mac: '02:00:00:00:01:03', weight: 50 }
  - name: dns6
    address: fd00:201::10
    port: 53
    protocol: udp
    backends:
      - { address: 'fd00:200::101', mac: '02:00:00:00:01:01' }
      - { address: 'fd00:200::102', mac: '02:00:00:00:01:02' }
";

/// The same VIPs and backends, listed in the other order.
const REORDERED: &str = "\
interface: lo
vips:
  - name: dns6
    address: fd00:201::10
    port: 53
    protocol: udp
    backends:
      - { address: 'fd00:200::102', mac: '02:00:00:00:01:02' }
      - { address: 'fd00:200::101', mac: '02:00:00:00:01:01' }
  - name: web
    address: 10.201.0.10
    port: 80
    protocol: tcp
    ring_size: 1009
    backends:
      - { address: 10.200.0.103, mac: '02:00:00:00:01:03', weight: 50 }
      - { address: 10.200.0.102, mac: '02:00:00:00:01:02' }
      - { address: 10.200.0.101, mac: '02:00:00:00:01:01' }
";

/// Where an operator might have come from: a VIP since removed, a backend since removed and
/// one not added yet.
const EARLIER: &str = "\
interface: lo
vips:
  - name: old
    address: 10.201.0.99
    port: 80
    protocol: tcp
    backends:
      - { address: 10.200.0.109, mac: '02:00:00:00:01:09' }
  - name: web
    address: 10.201.0.10
    port: 80
    protocol: tcp
    ring_size: 1009
    backends:
      - { address: 10.200.0.104, mac: '02:00:00:00:01:04' }
      - { address: 10.200.0.101, mac: '02:00:00:00:01:01' }
      - { address: 10.200.0.102, mac: '02:00:00:00:01:02' }
";

/// `VIPS` entries, `BACKENDS` entries, and (VIP id, ring) pairs, each as the maps hold them.
type MapState = (Vec<String>, Vec<String>, Vec<(u32, Vec<u32>)>);

/// Everything a balancer's maps say about where packets go, in a comparable form: the
/// `VIPS` entries, every `BACKENDS` entry in use, and every VIP's ring.
fn state(h: &Harness) -> MapState {
    let mut vips: Vec<String> = h
        .maps
        .vips()
        .unwrap()
        .iter()
        .map(|v| format!("{v:?}"))
        .collect();
    vips.sort();
    let backends = h
        .maps
        .backends()
        .unwrap()
        .iter()
        .map(|b| format!("{b:?}"))
        .collect();
    let mut rings: Vec<(u32, Vec<u32>)> = h
        .maps
        .vips()
        .unwrap()
        .iter()
        .map(|(_, m)| (m.vip_id, h.maps.ring(m.vip_id).unwrap()))
        .collect();
    rings.sort();
    (vips, backends, rings)
}

#[test]
fn same_config_same_maps_whatever_the_order_or_history() {
    let a = Harness::new(ONE);
    let b = Harness::new(REORDERED);
    let mut c = Harness::new(EARLIER);
    c.reconfigure(REORDERED);
    let sa = state(&a);
    assert_eq!(sa.0.len(), 2);
    assert_eq!(sa.1.len(), 5);
    assert!(sa.2.iter().all(|(_, r)| !r.is_empty()));
    assert_eq!(sa, state(&b), "file order changed the maps");
    assert_eq!(sa, state(&c), "the history of changes changed the maps");
    // The removed VIP's and backends' slots are cleared, not left behind.
    assert!(c
        .maps
        .backends()
        .unwrap()
        .iter()
        .all(|(_, b)| b.state != BACKEND_UNUSED));
}

#[test]
fn same_packets_same_backends_on_every_balancer() {
    let mut a = Harness::new(ONE);
    let mut c = Harness::new(EARLIER);
    c.reconfigure(REORDERED);
    let mut macs = std::collections::BTreeSet::new();
    for i in 0..2000u16 {
        let src = [192, 168, (i >> 8) as u8, i as u8];
        let v4 = tcp4(src, 10000 + i, [10, 201, 0, 10], 80);
        let mut src6 = [0u8; 16];
        src6[0] = 0xfd;
        src6[14..].copy_from_slice(&i.to_be_bytes());
        let v6 = udp6(
            src6,
            20000 + i,
            "fd00:201::10"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            53,
        );
        for frame in [v4, v6] {
            let (ra, rc) = (a.run(&frame), c.run(&frame));
            assert_eq!(ra.action, XDP_TX);
            assert_eq!((ra.action, &ra.out), (rc.action, &rc.out), "flow {i}");
            macs.insert(ra.out[..6].to_vec());
        }
    }
    // Every backend got some of the flows: the agreement is not "everything to one".
    assert_eq!(macs.len(), 3, "{macs:?}");
}

#[test]
fn a_flow_entry_whose_slot_changed_owner_is_re_steered() {
    let mut h = Harness::new(ONE);
    let frame = tcp4([192, 168, 7, 7], 40000, [10, 201, 0, 10], 80);
    let flow = flow(
        "192.168.7.7".parse().unwrap(),
        40000,
        "10.201.0.10".parse().unwrap(),
        80,
        lb_common::IPPROTO_TCP,
    );
    let ring_mac = h.expected_mac("web", &flow, false);
    // Pin the flow to another live backend's id, with a tag that is not that backend's: what a
    // flow pinned before its backend's slot was given to someone else looks like.
    let (other_id, other) = h
        .maps
        .backends()
        .unwrap()
        .into_iter()
        .find(|(_, b)| b.mac != ring_mac && b.vip_id == h.vip_id("web"))
        .unwrap();
    h.maps
        .insert_conn(
            &flow,
            &lb_common::ConnEntry {
                backend_id: other_id,
                tag: other.tag ^ 1,
                hash: lb_common::flow_hash(&flow, false),
            },
        )
        .unwrap();
    let before = h.global();
    let r = h.run(&frame);
    assert_eq!((r.action, &r.out[..6]), (XDP_TX, &ring_mac[..]));
    assert_eq!(delta(&h.global(), &before, Counter::ConnResteer), 1);
    // With the right tag the pin holds.
    h.maps
        .insert_conn(
            &flow,
            &lb_common::ConnEntry {
                backend_id: other_id,
                tag: other.tag,
                hash: lb_common::flow_hash(&flow, false),
            },
        )
        .unwrap();
    let before = h.global();
    let r = h.run(&frame);
    assert_eq!(&r.out[..6], &other.mac[..]);
    assert_eq!(delta(&h.global(), &before, Counter::ConnHit), 1);
}

//! Two balancers with the same config agree byte for byte and on every packet's backend.
//!
//! VIPs, backends and rings agree whatever the file's order and the history of changes behind
//! it: what ECMP across balancers relies on.

use lb_common::{
    history::{slot_owner, slot_previous},
    Counter, BACKEND_UNUSED,
};
use lb_userspace::datapath::testrun::XDP_TX;
use xdplb_lab::configs::{config, lan4, lan6, vip, Vip};
use xdplb_tests::fixture::*;

fn web() -> Vip {
    vip("web", "10.201.0.10", 80, "tcp").set("ring_size", 1009)
}

fn dns6() -> Vip {
    vip("dns6", "fd00:201::10", 53, "udp")
}

fn one() -> String {
    config("lo")
        .vip(web().backends([lan4(1), lan4(2), lan4(3).weight(50)]))
        .vip(dns6().backends([lan6(1), lan6(2)]))
        .yaml()
}

/// The same VIPs and backends, listed in the other order.
fn reordered() -> String {
    config("lo")
        .vip(dns6().backends([lan6(2), lan6(1)]))
        .vip(web().backends([lan4(3).weight(50), lan4(2), lan4(1)]))
        .yaml()
}

/// Where an operator might have come from: a VIP since removed, a backend since removed and
/// one not added yet.
fn earlier() -> String {
    config("lo")
        .vip(vip("old", "10.201.0.99", 80, "tcp").backend(lan4(9)))
        .vip(web().backends([lan4(4), lan4(1), lan4(2)]))
        .yaml()
}

/// VIP table entries, `BACKENDS` entries, and (VIP id, ring) pairs, each as the maps hold them.
type MapState = (Vec<String>, Vec<String>, Vec<(u32, Vec<u32>)>);

/// Everything a balancer's maps say about where packets go, in a comparable form: the VIPs,
/// every `BACKENDS` entry in use, and every VIP's ring, as owners only (the second-chance
/// history of each slot depends on the changes a balancer saw: [`with_history`]).
fn state(h: &Harness) -> MapState {
    let (vips, backends, rings) = with_history(h);
    let owners = rings
        .into_iter()
        .map(|(id, r)| (id, r.into_iter().map(slot_owner).collect()))
        .collect();
    (vips, backends, owners)
}

/// [`state`] with each ring slot's previous owner too.
fn with_history(h: &Harness) -> MapState {
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
    let a = Harness::new(&one());
    let b = Harness::new(&reordered());
    let mut c = Harness::new(&earlier());
    c.reconfigure(&reordered());
    let sa = state(&a);
    assert_eq!(sa.0.len(), 2);
    assert_eq!(sa.1.len(), 5);
    assert!(sa.2.iter().all(|(_, r)| !r.is_empty()));
    assert_eq!(sa, state(&b), "file order changed the maps");
    assert_eq!(sa, state(&c), "the history of changes changed the maps");
    // Balancers that saw the same changes hold the same history too; the path through the
    // earlier config left previous owners in some slots, all of them backends still serving.
    let mut d = Harness::new(&earlier());
    d.reconfigure(&reordered());
    assert_eq!(
        with_history(&c),
        with_history(&d),
        "the same changes, another history"
    );
    let (_, _, rings) = with_history(&c);
    let marked: Vec<u32> = rings
        .iter()
        .flat_map(|(_, r)| r.iter().map(|s| slot_previous(*s)))
        .filter(|p| *p != lb_common::NO_BACKEND)
        .collect();
    assert!(!marked.is_empty(), "the change left no history");
    let serving: Vec<u32> = c
        .maps
        .backends()
        .unwrap()
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert!(
        marked.iter().all(|p| serving.contains(p)),
        "{marked:?} vs {serving:?}"
    );
    assert!(with_history(&a)
        .2
        .iter()
        .all(|(_, r)| r.iter().all(|s| slot_previous(*s) == lb_common::NO_BACKEND)));
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
    let mut a = Harness::new(&one());
    let mut c = Harness::new(&earlier());
    c.reconfigure(&reordered());
    let mut macs = std::collections::BTreeSet::new();
    let mut marked = 0;
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
            let (ra, mut rc) = (a.run(&frame), c.run(&frame));
            assert_eq!(ra.action, XDP_TX);
            // c's history may mark the packet (the IPv4 ID of a TCP packet whose slot changed
            // owner on the way there); everything else is the same frame.
            if rc.out[18..20] != ra.out[18..20] {
                marked += 1;
                rc.out[18..20].copy_from_slice(&ra.out[18..20]);
                rc.out[24..26].copy_from_slice(&ra.out[24..26]);
            }
            assert_eq!((ra.action, &ra.out), (rc.action, &rc.out), "flow {i}");
            macs.insert(ra.out[..6].to_vec());
        }
    }
    // Every backend got some of the flows: the agreement is not "everything to one".
    assert_eq!(macs.len(), 3, "{macs:?}");
    assert!(
        marked > 0 && marked < 1000,
        "{marked} of 2000 TCP packets marked"
    );
}

#[test]
fn a_flow_entry_whose_slot_changed_owner_is_re_steered() {
    let mut h = Harness::new(&one());
    let frame = tcp4([192, 168, 7, 7], 40000, [10, 201, 0, 10], 80);
    let flow = flow(
        [192, 168, 7, 7],
        40000,
        [10, 201, 0, 10],
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
                previous: lb_common::NO_BACKEND,
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
                previous: lb_common::NO_BACKEND,
            },
        )
        .unwrap();
    let before = h.global();
    let r = h.run(&frame);
    assert_eq!(&r.out[..6], &other.mac[..]);
    assert_eq!(delta(&h.global(), &before, Counter::ConnHit), 1);
}

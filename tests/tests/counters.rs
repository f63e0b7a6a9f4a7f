//! How the counters read after the datapath counts an established flow's packet in one hit slot.
//!
//! The same totals as the long path would give, kept when backends and VIPs leave and their slots
//! are reused.

use lb_common::Counter;
use xdplb_tests::fixture::*;

const BACKEND: &str = "      - { address: 10.200.0.10X, mac: '02:00:00:00:01:0X' }\n";

/// VIP `web` with backends `.101..` (one per digit of `ids`), and VIP `other` with one.
fn config(web: Option<&str>, ids: &str, other_name: &str) -> String {
    let mut s = String::from("interface: lo\nvips:\n");
    if let Some(name) = web {
        s += &format!("  - name: {name}\n    address: 10.201.0.10\n    port: 80\n    protocol: tcp\n    backends:\n");
        for d in ids.chars() {
            s += &BACKEND.replace('X', &d.to_string());
        }
    }
    s += &format!("  - name: {other_name}\n    address: 10.201.0.20\n    port: 80\n    protocol: tcp\n    backends:\n");
    s += &BACKEND.replace('X', "9");
    s
}

fn web_flow(i: u16) -> Vec<u8> {
    tcp4([10, 200, 0, 11], 30000 + i, [10, 201, 0, 10], 80)
}

#[test]
fn hits_read_as_before_and_stay_counted_when_backends_and_vips_leave() {
    let mut h = Harness::new(&config(Some("web"), "123", "other"));
    let len = web_flow(0).len() as u64;
    let start = h.global();
    // 30 flows of three packets: one miss, then two hits (the hit slot's path).
    for round in 0..3 {
        for i in 0..30 {
            assert_eq!(h.run(&web_flow(i)).action, XDP_TX, "round {round}");
        }
    }
    let g = h.global();
    assert_eq!(delta(&g, &start, Counter::TxForwarded), 90);
    assert_eq!(delta(&g, &start, Counter::ConnMiss), 30);
    assert_eq!(delta(&g, &start, Counter::ConnHit), 60);
    let web = h.vip_id("web");
    let vip = h.maps.one_vip_counters(web).unwrap();
    assert_eq!((vip.packets, vip.bytes, vip.new_flows), (90, 90 * len, 30));
    let per_backend: Vec<(u64, u64, u64)> = ["10.200.0.101", "10.200.0.102", "10.200.0.103"]
        .iter()
        .map(|a| {
            let c = h.maps.backend_counters(h.backend_id("web", a)).unwrap();
            (c.packets, c.bytes, c.new_flows)
        })
        .collect();
    for (packets, bytes, new_flows) in &per_backend {
        assert_eq!(*packets, 3 * new_flows, "every flow sent three packets");
        assert_eq!(*bytes, packets * len);
    }
    assert_eq!(per_backend.iter().map(|c| c.0).sum::<u64>(), 90);
    let b103 = per_backend[2].0;
    assert!(b103 > 0, "the ring gave .103 some of the 30 flows");

    // .103 leaves: its hits stay in the VIP's and the global totals.
    h.reconfigure(&config(Some("web"), "12", "other"));
    let vip = h.maps.one_vip_counters(web).unwrap();
    assert_eq!((vip.packets, vip.bytes), (90, 90 * len));
    assert_eq!(
        h.global(),
        g,
        "removing a backend changed the global counters"
    );

    // .104 and .105 arrive (a freed slot may be reused): they start from zero.
    h.reconfigure(&config(Some("web"), "1245", "other"));
    for a in ["10.200.0.104", "10.200.0.105"] {
        let c = h.maps.backend_counters(h.backend_id("web", a)).unwrap();
        assert_eq!((c.packets, c.bytes, c.new_flows), (0, 0, 0), "{a}");
    }
    assert_eq!(h.maps.one_vip_counters(web).unwrap().packets, 90);
    assert_eq!(h.global(), g);

    // More hits after the changes add up with the earlier ones.
    let before = h.global();
    let mut forwarded = 0;
    for i in 0..30 {
        if h.run(&web_flow(i)).action == XDP_TX {
            forwarded += 1;
        }
    }
    assert_eq!(forwarded, 30);
    let after = h.global();
    let resteered = delta(&after, &before, Counter::ConnResteer);
    assert_eq!(resteered, b103 / 3, "the flows of .103 are re-steered");
    assert_eq!(delta(&after, &before, Counter::ConnHit), 30 - resteered);
    assert_eq!(delta(&after, &before, Counter::TxForwarded), 30);
    assert_eq!(h.maps.one_vip_counters(web).unwrap().packets, 120);

    // The VIP leaves and another takes its place (and maybe its id): the global counters keep
    // what the old one forwarded, and the newcomer starts from zero.
    h.reconfigure(&config(None, "", "other"));
    assert_eq!(
        h.global(),
        after,
        "removing a VIP changed the global counters"
    );
    h.reconfigure(&config(Some("newcomer"), "67", "other"));
    assert_eq!(h.global(), after);
    let newcomer = h.maps.one_vip_counters(h.vip_id("newcomer")).unwrap();
    assert_eq!(
        (newcomer.packets, newcomer.bytes, newcomer.new_flows),
        (0, 0, 0)
    );
}

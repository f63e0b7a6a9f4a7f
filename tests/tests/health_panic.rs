//! A failure that is the balancer's own empties no ring: with its link cut, every check fails.
//!
//! Three backends with a fast health check, connections held through the gateway: its link
//! goes down for a second, every probe fails, and the VIP is in panic (below its
//! `panic_threshold`) instead of losing every backend. Status and metrics say so while it
//! lasts; when the link is back, no held connection broke or changed backend and no flow was
//! re-steered.

use std::time::{Duration, Instant};

use serde_json::Value;
use xdplb_lab::{
    lab::Lab,
    netns,
    scenario::{hold_finish, hold_start, lab_config, small_lab, Balancer, Member},
};

const MODE: &str = "generic";
const VIP: &str = "web-tcp";

/// The VIP's entry in `xdplb status`.
fn vip_status(lab: &Lab) -> Value {
    let s = Balancer::status(lab).expect("xdplb status answers");
    s["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == VIP)
        .cloned()
        .unwrap()
}

/// Every backend's health as status reports it, and whether the VIP is in panic.
fn health(lab: &Lab) -> (Vec<String>, bool) {
    let v = vip_status(lab);
    let states = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["health"].as_str().unwrap_or_default().to_owned())
        .collect();
    (states, v["health_panic"].as_bool().unwrap_or(false))
}

fn wait_for(lab: &Lab, what: &str, want: impl Fn(&[String], bool) -> bool) -> (Vec<String>, bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (states, panic) = health(lab);
        if want(&states, panic) {
            return (states, panic);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: status says {states:?}, panic {panic}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `conn_resteer` from `xdplb stats --json`: flow-table entries whose backend was taken away.
fn resteered(balancer: &Balancer) -> u64 {
    balancer.stats_json().expect("stats")["global"]["conn_resteer"]
        .as_u64()
        .unwrap_or(0)
}

fn gateway_link(lab: &Lab, state: &str) {
    let dev = lab.gateway_if().to_owned();
    netns::run_root(&["ip", "-n", lab.gateway_ns(), "link", "set", &dev, state]).unwrap();
}

#[test]
fn the_balancers_own_link_cut_keeps_the_ring_and_every_pinned_flow() {
    let mut lab = small_lab(3).expect("lab");
    let members = [
        (0, Member::Active),
        (1, Member::Active),
        (2, Member::Active),
    ];
    let yaml = lab_config(&mut lab, MODE, &members).unwrap().replacen(
        "    protocol: tcp\n    backends:",
        "    protocol: tcp\n    health_check: { kind: tcp, port: 8080, interval: 200ms, timeout: 150ms, rise: 2, fall: 2 }\n    backends:",
        1,
    );
    let balancer = Balancer::start(&mut lab, MODE, &yaml).expect("xdplb starts");
    wait_for(&lab, "all three up", |s, _| s.iter().all(|h| h == "up"));
    let held = hold_start(&mut lab, 0, 60).expect("hold");
    std::thread::sleep(Duration::from_secs(1));
    let before = resteered(&balancer);

    gateway_link(&lab, "down");
    let (states, _) = wait_for(&lab, "panic while every check fails", |s, panic| {
        panic && s.iter().all(|h| h == "down")
    });
    let metrics = Balancer::metrics_text(&lab).expect("metrics");
    let panic_line = format!("xdplb_vip_health_panic{{vip=\"{VIP}\"}} 1");
    assert!(
        metrics.contains(&panic_line),
        "{panic_line} not in:\n{metrics}"
    );
    gateway_link(&lab, "up");
    wait_for(&lab, "all back, panic over", |s, panic| {
        !panic && s.iter().all(|h| h == "up")
    });
    std::thread::sleep(Duration::from_secs(1));

    let report = hold_finish(&mut lab, held).expect("hold report");
    assert!(report.opened >= 60, "{report:?}");
    assert_eq!(
        (report.broken, report.backend_changed),
        (0, 0),
        "held connections broke or moved while the balancer's own link was cut ({states:?} during it): {report:?}"
    );
    assert_eq!(resteered(&balancer), before, "flows were re-steered");
    let log = balancer.stop(&mut lab).unwrap();
    assert!(
        log.contains("below its panic threshold") && log.contains("panic over"),
        "{log}"
    );
    assert!(!log.contains("taken out of the ring"), "{log}");
}

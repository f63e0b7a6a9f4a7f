//! The balancer's interface goes away under the agent and comes back.
//!
//! A NIC removed, or a veth whose namespace went: the agent says the datapath is down (log,
//! status, metrics) and re-attaches when an interface of that name returns, with the maps' state
//! kept.

use std::time::{Duration, Instant};

use xdplb_lab::{
    lab::Lab,
    reports::BurstReport,
    scenario::{burst4, lab_config, small_lab, Balancer, Member},
};

fn burst(lab: &Lab, n: u32) -> BurstReport {
    burst4(lab, n).expect("lab-client burst")
}

/// `xdplb_datapath_up` from the agent's metrics endpoint (loopback of the gateway namespace).
fn datapath_up_metric(lab: &Lab) -> f64 {
    let text = Balancer::metrics_text(lab).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("xdplb_datapath_up ") || l.starts_with("xdplb_datapath_up{"))
        .unwrap_or_else(|| panic!("no xdplb_datapath_up in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Waits until the agent's log contains `needle`.
fn wait_log(lab: &Lab, pid: u32, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = lab.log_of(pid);
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn interface_loss_is_reported_and_its_return_reattaches() {
    let mut lab = small_lab(2).expect("lab");
    let members: Vec<_> = (0..2).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(&mut lab, "generic", &members).unwrap();
    let balancer = Balancer::start(&mut lab, "generic", &yaml).expect("xdplb starts");
    let r = burst(&lab, 100);
    assert_eq!((r.ok, r.failed), (100, 0), "{:?}", r.errors);
    let status = Balancer::status(&lab).unwrap();
    assert_eq!(status["datapath_up"], true, "{status}");
    assert_eq!(datapath_up_metric(&lab), 1.0);
    let new_flows_before = new_flows(&balancer);

    let mac = lab.unplug_gateway().unwrap();
    wait_log(&lab, balancer.pid, "interface gw0 went away");
    let status = Balancer::status(&lab).unwrap();
    assert_eq!(status["datapath_up"], false, "{status}");
    assert!(
        status["datapath"]
            .as_str()
            .is_some_and(|d| d.starts_with("down: interface gw0 is gone")),
        "{status}"
    );
    assert_eq!(datapath_up_metric(&lab), 0.0);

    lab.replug_gateway(&mac).unwrap();
    wait_log(&lab, balancer.pid, "re-attached to gw0");
    let status = Balancer::status(&lab).unwrap();
    assert_eq!(status["datapath_up"], true, "{status}");
    assert_eq!(datapath_up_metric(&lab), 1.0);
    // Traffic goes through the program again, counted in the maps it kept.
    let r = burst(&lab, 100);
    assert_eq!((r.ok, r.failed), (100, 0), "{:?}", r.errors);
    assert_eq!(r.per_backend.len(), 2, "{:?}", r.per_backend);
    let new_flows_after = new_flows(&balancer);
    assert!(
        new_flows_after >= new_flows_before + 100,
        "new flows {new_flows_before} -> {new_flows_after}: the second burst did not go through the balancer"
    );
    balancer.stop(&mut lab).unwrap();
}

/// New flows the datapath counted for the IPv4 TCP VIP, from `xdplb stats --json`.
fn new_flows(balancer: &Balancer) -> u64 {
    let stats = balancer.stats_json().unwrap();
    stats["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["name"] == "web-tcp")
        .map(|v| v["new_flows"].as_u64().unwrap_or(0))
        .sum()
}

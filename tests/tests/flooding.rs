//! A switch that floods unknown unicast delivers other hosts' frames to the balancer.
//!
//! VIP traffic addressed to another MAC is left to the kernel (which drops it), never rewritten and
//! sent on with that host's MAC as source, so the switch never learns a foreign MAC on the
//! balancer's port.

use std::time::Duration;

use xdplb_lab::{
    lab::Lab,
    netns,
    reports::BurstReport,
    scenario::{burst4, lab_config, small_lab, Balancer, Member},
};

/// A MAC no port of the bridge has: frames to it are flooded to every port.
const NOBODY: &str = "02:00:00:00:99:99";

fn burst(lab: &Lab, n: u32) -> BurstReport {
    burst4(lab, n).expect("lab-client burst")
}

fn global(balancer: &Balancer, counter: &str) -> u64 {
    balancer.stats_json().unwrap()["global"][counter]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn frames_for_another_host_are_not_forwarded_and_do_not_poison_the_switch() {
    let mut lab = small_lab(2).expect("lab");
    let members: Vec<_> = (0..2).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(&mut lab, "generic", &members).unwrap();
    let balancer = Balancer::start(&mut lab, "generic", &yaml).expect("xdplb starts");
    let r = burst(&lab, 50);
    assert_eq!((r.ok, r.failed), (50, 0), "{:?}", r.errors);

    // The client's next hop toward the VIP resolves to a MAC nobody has: the bridge floods
    // those frames, the gateway among others receives them.
    let client = lab.client_ns(0).to_owned();
    let gw = lab.gateway_addr4().to_string();
    let dev = lab.client_if(0);
    netns::run_root(&[
        "ip",
        "-n",
        &client,
        "neigh",
        "replace",
        &gw,
        "lladdr",
        NOBODY,
        "dev",
        &dev,
        "nud",
        "permanent",
    ])
    .unwrap();
    let forwarded = global(&balancer, "tx_forwarded");
    let other = global(&balancer, "pass_other_host");
    let target = format!("/dev/tcp/{}/{}", lab.vip4(), lab.spec().port);
    // Three SYNs (and their retransmissions), none of which may be answered.
    for _ in 0..3 {
        let connected = netns::run(
            &client,
            &["timeout", "2", "bash", "-c", &format!("exec 3<>{target}")],
        );
        assert!(
            connected.is_err(),
            "a frame to another host's MAC was served"
        );
    }
    assert!(
        global(&balancer, "pass_other_host") >= other + 3,
        "the balancer did not see the flooded frames as another host's"
    );
    assert_eq!(
        global(&balancer, "tx_forwarded"),
        forwarded,
        "flooded frames were forwarded"
    );
    let fdb = netns::run_root(&["bridge", "-n", lab.switch_ns(), "fdb", "show"]).unwrap();
    assert!(
        !fdb.contains(NOBODY),
        "the switch learnt {NOBODY} from the balancer:\n{fdb}"
    );

    // With the right neighbour again, the balancer serves as before.
    netns::run_root(&["ip", "-n", &client, "neigh", "del", &gw, "dev", &dev]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let r = burst(&lab, 50);
    assert_eq!((r.ok, r.failed), (50, 0), "{:?}", r.errors);
    balancer.stop(&mut lab).unwrap();
}

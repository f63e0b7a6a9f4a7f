//! Second chance end to end: a stateless VIP's ring moves flows, and the backends keep them.
//!
//! A balancer with stateless VIPs and two backends holds persistent connections (in `l2`, and
//! in `ipip` to backends behind a router); a third backend is added, so the ring gives it about
//! a third of the flows. Without the host
//! program its kernel resets them. With `xdplb host` on every backend (from the new config,
//! as a rollout does hosts first), the new backend sends each packet that is not its own on
//! to the backend the balancer marked as the slot's previous owner: nothing breaks, no
//! connection changes backend, and the new backend's counters show the chained packets.

use std::time::Duration;

use serde_json::Value;
use xdplb_lab::{
    hosts,
    lab::{Lab, LabSpec},
    reports::HoldReport,
    scenario::{hold_finish, hold_start, lab_config, small_lab, Balancer, Member},
};

const HELD: u32 = 60;

/// The lab config with every VIP stateless: the ring alone decides, as on a balancer that
/// took over the flows from another.
fn stateless(yaml: String) -> String {
    yaml.replace("    backends:\n", "    stateless: true\n    backends:\n")
}

/// Holds connections, switches the balancer to `next`, and reports what happened to them.
fn change_under_load(lab: &mut Lab, balancer: &mut Balancer, next: &str) -> HoldReport {
    let held = hold_start(lab, 0, HELD).expect("hold");
    std::thread::sleep(Duration::from_secs(1));
    balancer.reload(lab, next).expect("reload");
    std::thread::sleep(Duration::from_secs(3));
    hold_finish(lab, held).expect("hold report")
}

/// `xdplb host` on backend `i`, from the config file at `config`.
fn host(lab: &Lab, i: usize, config: &str, extra: &[&str]) -> String {
    let mut args = vec!["--config", config];
    args.extend_from_slice(extra);
    hosts::host(lab, i, &args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Two backends, then a third under held connections, without and then with the host
/// program on every backend.
fn a_backend_added_breaks_nothing_with_the_host_program(mut lab: Lab, mode: &str) {
    let active = |n: usize| (0..n).map(|i| (i, Member::Active)).collect::<Vec<_>>();
    let two = stateless(lab_config(&mut lab, mode, &active(2)).unwrap());
    let three = stateless(lab_config(&mut lab, mode, &active(3)).unwrap());
    let mut balancer = Balancer::start(&mut lab, mode, &two).expect("xdplb starts");

    // Without the host program: the moved flows reach a backend that never saw them.
    let without = change_under_load(&mut lab, &mut balancer, &three);
    assert!(
        without.broken > 0,
        "adding a backend to a stateless VIP broke nothing even without the host program: the test cannot tell: {without:?}"
    );
    balancer
        .reload(&mut lab, &two)
        .expect("back to two backends");
    std::thread::sleep(Duration::from_secs(1));

    let config = lab.dir().join("hosts.yaml");
    std::fs::write(&config, &three).unwrap();
    let config = config.to_str().unwrap().to_owned();
    for i in 0..3 {
        // Generic XDP on the backends: a veth sends a native XDP_TX frame only to a peer that
        // runs a program, and the router's end runs none. The routed lab's own `xdplb decap`
        // (native) goes first, so the host program attaches afresh.
        host(&lab, i, &config, &["--detach"]);
        let out = host(&lab, i, &config, &["--xdp-mode", "generic"]);
        // Four VIPs (TCP and UDP, IPv4 and IPv6), each with its ids for the two other hosts.
        assert!(out.contains("8 backend id(s) reachable"), "b{i}: {out}");
    }
    let with = change_under_load(&mut lab, &mut balancer, &three);
    assert!(with.opened >= u64::from(HELD), "{with:?}");
    assert_eq!(
        (with.broken, with.backend_changed),
        (0, 0),
        "connections broke or moved with the host program on every backend (without it {} of {} broke): {with:?}",
        without.broken,
        without.opened
    );
    let stats: Value =
        serde_json::from_str(&host(&lab, 2, &config, &["--stats", "--json"])).expect("stats JSON");
    assert!(
        stats["tx_chained"].as_u64().unwrap_or(0) > 0,
        "the new backend chained nothing: {stats}"
    );
    println!(
        "backend added to a stateless VIP ({mode} XDP on the balancer) under {HELD} held connections: without the host program {} broke; with it {} broke, {} changed backend; the new backend chained {} packets",
        without.broken, with.broken, with.backend_changed, stats["tx_chained"]
    );
    for i in 0..3 {
        let out = host(&lab, i, &config, &["--detach"]);
        assert!(out.contains("removed"), "b{i}: {out}");
    }
    balancer.stop(&mut lab).unwrap();
}

/// One lab at a time: the held connections' timeouts are not for two labs on two cores.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn l2_a_backend_added_to_a_stateless_vip_breaks_nothing_with_the_host_program() {
    let _one = ONE_LAB.lock().unwrap_or_else(|p| p.into_inner());
    a_backend_added_breaks_nothing_with_the_host_program(small_lab(3).expect("lab"), "generic");
}

/// The same with backends behind a router (`ipip`): the new backend readdresses the tunnel
/// of a flow that is not its own to the previous owner, back through the router.
#[test]
fn ipip_a_backend_added_to_a_stateless_vip_breaks_nothing_with_the_host_program() {
    let _one = ONE_LAB.lock().unwrap_or_else(|p| p.into_inner());
    let lab = Lab::new(LabSpec {
        clients: 1,
        backends: 3,
        routed: true,
        ..Default::default()
    })
    .expect("routed lab");
    a_backend_added_breaks_nothing_with_the_host_program(lab, "native");
}

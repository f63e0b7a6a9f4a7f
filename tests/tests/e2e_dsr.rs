//! End to end in network namespaces.
//!
//! Real TCP/UDP through xdplb in native and generic XDP mode, replies bypassing the balancer,
//! persistent connections across backend add/drain and a rejected reload.

use std::time::Duration;

use xdplb_lab::{
    lab::{tool_path, Lab, LabSpec},
    reports::{parse_last_json, BurstReport, HoldReport},
    scenario::{lab_config, Balancer, Member},
};

fn burst(lab: &Lab, client: usize, target: &str, n: u32, bind: Option<String>) -> BurstReport {
    let n = n.to_string();
    let mut args = vec![
        "burst",
        "--target",
        target,
        "--connections",
        &n,
        "--parallel",
        "40",
    ];
    let bind = bind.unwrap_or_default();
    if !bind.is_empty() {
        args.extend(["--bind", &bind]);
    }
    lab.run_client(client, &args).expect("lab-client burst")
}

fn balances_with_dsr(mode: &str) {
    let mut lab = Lab::new(LabSpec::default()).expect("lab");
    let members: Vec<_> = (0..3).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(&mut lab, mode, &members).unwrap();
    let balancer = Balancer::start(&mut lab, mode, &yaml).expect("xdplb starts");
    assert!(
        lab.log_of(balancer.pid).contains(&format!("({mode} XDP)")),
        "agent runs in {mode} mode"
    );
    lab.start_counting_dsr().unwrap();
    let port = lab.spec().port;

    let v4 = burst(
        &lab,
        0,
        &format!("{}:{port}", lab.vip4()),
        300,
        Some(lab.client_bind4(0)),
    );
    assert_eq!((v4.ok, v4.failed), (300, 0), "IPv4 TCP: {:?}", v4.errors);
    assert_eq!(
        v4.per_backend.len(),
        3,
        "every backend answered IPv4: {:?}",
        v4.per_backend
    );
    let v6 = burst(&lab, 1, &format!("[{}]:{port}", lab.vip6()), 150, None);
    assert_eq!((v6.ok, v6.failed), (150, 0), "IPv6 TCP: {:?}", v6.errors);
    assert_eq!(
        v6.per_backend.len(),
        3,
        "every backend answered IPv6: {:?}",
        v6.per_backend
    );
    let udp: BurstReport = lab
        .run_client(
            1,
            &[
                "udp",
                "--target",
                &format!("{}:{port}", lab.vip4()),
                "--count",
                "150",
                "--bind",
                &lab.client_bind4(1),
            ],
        )
        .unwrap();
    assert_eq!((udp.ok, udp.failed), (150, 0), "UDP: {:?}", udp.errors);
    assert!(
        udp.per_backend.len() >= 2,
        "UDP spread: {:?}",
        udp.per_backend
    );

    // Replies bypass the balancer; every request frame it received went on to a backend.
    let dsr = lab.dsr_counts().unwrap();
    assert_eq!(dsr.replies_via_gateway, 0, "{dsr:?}");
    assert!(dsr.to_vip_via_gateway > 0, "{dsr:?}");
    assert_eq!(dsr.from_gateway_to_vip, dsr.to_vip_via_gateway, "{dsr:?}");

    // `xdplb stats --json` agrees with what the clients saw.
    let stats = balancer.stats_json().unwrap();
    let vip = stats["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web-tcp")
        .unwrap()
        .clone();
    let backend_sum: u64 = vip["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(
        backend_sum,
        vip["packets"].as_u64().unwrap(),
        "backend packets add up to the VIP's"
    );
    assert_eq!(
        vip["new_flows"].as_u64().unwrap(),
        300,
        "one new flow per IPv4 connection"
    );
    for i in 0..3 {
        assert!(
            Balancer::backend_packets(&stats, "web-tcp", &lab.backend_addr4(i).to_string()) > 0
        );
    }
    assert_eq!(stats["global"]["drop_malformed"], 0);
    // The flow table holds one entry per IPv4 connection (a live-flow estimate).
    let flows: u64 = vip["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["flows"].as_u64().unwrap())
        .sum();
    assert_eq!(flows, 300, "flow-table entries of web-tcp");

    // `xdplb stats --watch` redraws rates, flows and idle times until interrupted.
    let watch = std::process::Command::new("timeout")
        .args(["-s", "INT", "3"])
        .arg(tool_path("xdplb"))
        .args(["stats", "--watch", "--interval", "0.5", "--config"])
        .arg(&balancer.config)
        .output()
        .unwrap();
    let frames = String::from_utf8_lossy(&watch.stdout);
    assert!(
        frames.matches("xdplb stats — refreshed").count() >= 2,
        "{frames}"
    );
    for needle in [
        "pkt/s",
        "bit/s",
        "new/s",
        "flows",
        "idle",
        "VIP web-tcp",
        &lab.backend_addr4(2).to_string(),
    ] {
        assert!(
            frames.contains(needle),
            "watch output lacks {needle:?}:\n{frames}"
        );
    }
    let log = balancer.stop(&mut lab).unwrap();
    assert!(log.contains("detached from gw0"), "clean detach:\n{log}");
}

#[test]
fn native_mode_balances_real_connections_and_replies_bypass_it() {
    balances_with_dsr("native");
}

#[test]
fn generic_mode_balances_real_connections_and_replies_bypass_it() {
    balances_with_dsr("generic");
}

#[test]
fn native_persistent_connections_stay_put_while_backends_are_added_and_drained() {
    persistent_connections_stay_put("native");
}

#[test]
fn generic_persistent_connections_stay_put_while_backends_are_added_and_drained() {
    persistent_connections_stay_put("generic");
}

fn persistent_connections_stay_put(mode: &str) {
    let mut lab = Lab::new(LabSpec {
        clients: 1,
        backends: 3,
        port: 8080,
        ..Default::default()
    })
    .expect("lab");
    let members: Vec<_> = (0..3).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(&mut lab, mode, &members).unwrap();
    let mut balancer = Balancer::start(&mut lab, mode, &yaml).expect("xdplb starts");
    let port = lab.spec().port;
    let target = format!("{}:{port}", lab.vip4());

    let client = lab.client_ns(0).to_owned();
    let bind = lab.client_bind4(0);
    let hold = lab
        .spawn(
            &client,
            &tool_path("lab-client"),
            &[
                "hold",
                "--target",
                &target,
                "--connections",
                "90",
                "--bind",
                &bind,
                "--interval-ms",
                "100",
                "--duration-s",
                "90",
            ],
        )
        .unwrap();
    lab.wait_for_log(hold, "READY", Duration::from_secs(30))
        .unwrap();

    // A bad config is refused and the running one keeps serving.
    let bad = yaml.replacen("state: active", "state: retired", 1);
    let why = balancer.reload_rejected(&mut lab, &bad).unwrap();
    assert!(
        why.contains("unknown variant `retired`") && why.contains("line"),
        "{why}"
    );
    let r = burst(&lab, 0, &target, 30, None);
    assert_eq!(r.failed, 0, "after a rejected reload: {:?}", r.errors);

    // Add a fourth backend and drain the first, in one reload.
    let added = lab.add_backend().unwrap();
    let members = vec![
        (0, Member::Draining),
        (1, Member::Active),
        (2, Member::Active),
        (added, Member::Active),
    ];
    let yaml = lab_config(&mut lab, mode, &members).unwrap();
    balancer.reload(&mut lab, &yaml).expect("reload applies");
    let b0 = lab.backend_addr4(0).to_string();
    let b0_before = Balancer::backend_packets(&balancer.stats_json().unwrap(), "web-tcp", &b0);

    // New connections avoid the draining backend and reach the new one.
    let r = burst(&lab, 0, &target, 300, Some(bind.clone()));
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert!(
        !r.per_backend.contains_key("b0"),
        "new flows went to draining b0: {:?}",
        r.per_backend
    );
    assert!(
        r.per_backend
            .get(&format!("b{added}"))
            .copied()
            .unwrap_or(0)
            > 0,
        "new backend unused: {:?}",
        r.per_backend
    );

    // Let the held connections ping through the new state for a while.
    std::thread::sleep(Duration::from_secs(3));
    lab.stop(hold).unwrap();
    let report: HoldReport = parse_last_json(&lab.log_of(hold)).unwrap();
    assert_eq!(report.opened, 90);
    assert_eq!(report.broken, 0, "{report:?}");
    assert_eq!(report.backend_changed, 0, "{report:?}");
    assert!(
        report.rounds >= 20,
        "connections were exercised: {report:?}"
    );
    let held_on_b0 = report.per_backend.get("b0").copied().unwrap_or(0);
    assert!(
        held_on_b0 > 0,
        "some held connections were on b0: {report:?}"
    );
    // The draining backend kept carrying its established flows.
    let b0_after = Balancer::backend_packets(&balancer.stats_json().unwrap(), "web-tcp", &b0);
    assert!(
        b0_after > b0_before,
        "draining b0 stopped receiving its flows ({b0_before} → {b0_after})"
    );
    balancer.stop(&mut lab).unwrap();
}

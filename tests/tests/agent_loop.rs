//! The agent's loop never waits on the kernel.
//!
//! While ten backends' MACs cannot be resolved, `xdplb status` answers, health checks keep
//! reacting, and the CLI still says which backends are out of service and why.

use std::time::{Duration, Instant};

use serde_json::Value;
use xdplb_lab::{
    lab::Lab,
    netns,
    scenario::{lab_config, small_lab, Balancer, Member},
};

const MODE: &str = "generic";

/// Health of `addr` in VIP `vip` as `xdplb status` reports it, with the whole status.
fn health_of(lab: &Lab, vip: &str, addr: &str) -> (String, Value) {
    let s = Balancer::status(lab).expect("xdplb status answers");
    let h = s["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vip)
        .unwrap()["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .map(|b| b["health"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (h, s)
}

fn in_service(status: &Value, vip: &str, addr: &str) -> Option<bool> {
    status["vips"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == vip)?["backends"]
        .as_array()?
        .iter()
        .find(|b| b["address"] == addr)?["in_service"]
        .as_bool()
}

#[test]
fn status_and_health_checks_stay_live_while_ten_backends_cannot_be_resolved() {
    let mut lab = small_lab(2).expect("lab");
    let members = [(0, Member::Active), (1, Member::Active)];
    let yaml = lab_config(&mut lab, MODE, &members).unwrap().replacen(
        "    protocol: tcp\n    backends:",
        "    protocol: tcp\n    health_check: { kind: tcp, port: 8080, interval: 200ms, timeout: 150ms, rise: 2, fall: 2 }\n    backends:",
        1,
    );
    let balancer = Balancer::start(&mut lab, MODE, &yaml).expect("xdplb starts");
    let b1 = lab.backend_addr4(1).to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while health_of(&lab, "web-tcp", &b1).0 != "up" {
        assert!(Instant::now() < deadline, "b1 never came up");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Ten more backends on the segment, at backend addresses this two-backend lab gives
    // nobody: their ARP requests go unanswered.
    let ghosts: Vec<String> = (30..40).map(|i| lab.backend_addr4(i).to_string()).collect();
    let b1_line = format!("      - {{ address: '{b1}', state: active }}\n");
    let extra: String = ghosts
        .iter()
        .map(|g| format!("      - {{ address: '{g}', state: active }}\n"))
        .collect();
    let with_ghosts = yaml.replacen(&b1_line, &format!("{b1_line}{extra}"), 1);
    assert_ne!(with_ghosts, yaml);
    std::fs::write(&balancer.config, &with_ghosts).unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(balancer.pid as i32, libc::SIGHUP) };

    // While those are being resolved, b1 dies: the health check must notice, and the API must
    // answer, before the resolver has given up on the ten.
    let (ns, ifname) = (lab.backend_ns(1).to_owned(), lab.backend_if(1));
    netns::run(&ns, &["ip", "link", "set", &ifname, "down"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let (h, s) = health_of(&lab, "web-tcp", &b1);
        if h == "down" {
            break s;
        }
        assert!(Instant::now() < deadline, "b1 never went down: {s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = lab.log_of(balancer.pid);
    assert!(
        !log.contains("is not in service"),
        "the health check only reacted after the resolver gave up: the loop waited on it:\n{log}"
    );
    for g in &ghosts {
        assert_eq!(
            in_service(&status, "web-tcp", g),
            Some(false),
            "{g} listed and not in service while unresolved: {status}"
        );
    }
    assert!(log.contains("taken out of the ring"), "{log}");

    // The resolver's verdict arrives in time and names the reason.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = lab.log_of(balancer.pid);
        let reported = ghosts
            .iter()
            .filter(|g| log.contains(&format!("backend {g} is not in service")))
            .count();
        if reported == ghosts.len() && log.contains("reloaded") {
            assert!(log.contains("no neighbour entry"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "verdicts missing:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // One more through the CLI: the answer says it is left out, and why, and the exit code
    // (3: applied, not in service) tells a script so.
    let ghost = lab.backend_addr4(40).to_string();
    let (code, out) = Balancer::cli_code(&lab, &["backend", "add", "web-tcp", &ghost]);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains(&format!("backend {ghost} left out")) && out.contains("no neighbour entry"),
        "{out}"
    );
    assert!(
        out.contains(&format!("backend {ghost} is not in service")),
        "{out}"
    );
    let (_, s) = health_of(&lab, "web-tcp", &b1);
    assert_eq!(in_service(&s, "web-tcp", &ghost), Some(false), "{s}");
    balancer.stop(&mut lab).unwrap();
}

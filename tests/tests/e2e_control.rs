//! Control plane end to end, under continuous traffic.
//!
//! Persistent connections ping and new connections open throughout: agent restarts, 50 reloads,
//! backend changes through the CLI, health-check failover, Prometheus metrics.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use xdplb_lab::{
    lab::{tool_path, Lab, LabSpec},
    netns,
    reports::{BurstReport, HoldReport},
    scenario::{burst4, churn, hold_finish, hold_start, lab_config, Balancer, Member},
};

const MODE: &str = "native";

/// One client, three backends: what every test here starts from.
fn small_lab() -> Lab {
    Lab::new(LabSpec {
        clients: 1,
        backends: 3,
        port: 8080,
        ..Default::default()
    })
    .expect("lab")
}

fn hold(lab: &mut Lab, client: usize, n: u32) -> u32 {
    hold_start(lab, client, n).unwrap()
}

fn finish_hold(lab: &mut Lab, pid: u32) -> HoldReport {
    hold_finish(lab, pid).unwrap()
}

fn burst(lab: &Lab, n: u32) -> BurstReport {
    burst4(lab, n).unwrap()
}

fn vip_packets(b: &Balancer) -> u64 {
    let s = b.stats_json().unwrap();
    s["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web-tcp")
        .unwrap()["packets"]
        .as_u64()
        .unwrap()
}

fn start(lab: &mut Lab, extra: &str) -> Balancer {
    let members: Vec<_> = (0..3).map(|i| (i, Member::Active)).collect();
    let yaml =
        lab_config(lab, MODE, &members)
            .unwrap()
            .replacen("vips:\n", &format!("{extra}vips:\n"), 1);
    Balancer::start(lab, MODE, &yaml).expect("xdplb starts")
}

fn restart_keeps_forwarding(graceful: bool) {
    let mut lab = small_lab();
    let extra = if graceful {
        "keep_attached_on_exit: true\n"
    } else {
        ""
    };
    let mut balancer = start(&mut lab, extra);
    let held = hold(&mut lab, 0, 60);
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(&lab, 0, stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let before = vip_packets(&balancer);

    if graceful {
        lab.stop(balancer.pid).unwrap();
        assert!(
            lab.log_of(balancer.pid)
                .contains("leaving the datapath attached"),
            "{}",
            lab.log_of(balancer.pid)
        );
    } else {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(balancer.pid as i32, libc::SIGKILL) };
        lab.wait_exit(balancer.pid, Duration::from_secs(10))
            .unwrap();
    }
    // No agent at all for a second: the pinned datapath keeps forwarding on its own.
    std::thread::sleep(Duration::from_secs(1));
    let without_agent = vip_packets(&balancer);
    assert!(
        without_agent > before,
        "forwarding continued without an agent ({before} → {without_agent})"
    );
    balancer.respawn(&mut lab).unwrap();
    let log = lab.log_of(balancer.pid);
    assert!(
        log.contains("adopting the datapath state")
            && log.contains("took over the running datapath"),
        "{log}"
    );
    std::thread::sleep(Duration::from_secs(1));

    stop.store(true, Ordering::Relaxed);
    let churned = churner.join().unwrap();
    let report = finish_hold(&mut lab, held);
    assert!(
        churned.ok > 100,
        "new connections kept opening: {churned:?}"
    );
    assert_eq!(
        churned.failed, 0,
        "new connections failed across the restart: {:?}",
        churned.errors
    );
    assert_eq!(
        (report.opened, report.broken, report.backend_changed),
        (60, 0, 0),
        "{report:?}"
    );
    // Counters continue from where they were: the new agent adopted the same maps.
    let after = vip_packets(&balancer);
    assert!(
        after > without_agent,
        "counters continuous ({without_agent} → {after})"
    );
    balancer.stop(&mut lab).unwrap();
}

#[test]
fn agent_kill_9_and_restart_do_not_interrupt_forwarding() {
    restart_keeps_forwarding(false);
}

#[test]
fn graceful_restart_with_keep_attached_does_not_interrupt_forwarding() {
    restart_keeps_forwarding(true);
}

#[test]
fn fifty_reloads_in_a_row_under_traffic() {
    let mut lab = small_lab();
    let mut balancer = start(&mut lab, "");
    let base = std::fs::read_to_string(&balancer.config).unwrap();
    let b2 = lab.backend_addr4(2);
    let variant = |i: usize| {
        // Alternate the weight of the third backend: every reload builds and swaps new rings.
        let w = if i.is_multiple_of(2) { 50 } else { 100 };
        base.replace(
            &format!("{{ address: '{b2}', state: active }}"),
            &format!("{{ address: '{b2}', state: active, weight: {w} }}"),
        )
    };
    let held = hold(&mut lab, 0, 60);
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(&lab, 0, stop.clone());
    for i in 0..50 {
        let yaml = variant(i);
        match i % 3 {
            // SIGHUP
            0 => balancer.reload(&mut lab, &yaml).unwrap(),
            // `xdplb reload` through the API
            1 => {
                std::fs::write(&balancer.config, &yaml).unwrap();
                let (ok, out) = Balancer::cli(&lab, &["reload"]);
                assert!(ok, "{out}");
            }
            // editing the file: the agent notices within a second or two
            _ => {
                let before = Balancer::status(&lab).unwrap()["reloads_ok"]
                    .as_u64()
                    .unwrap();
                std::fs::write(&balancer.config, &yaml).unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Balancer::status(&lab).unwrap()["reloads_ok"]
                    .as_u64()
                    .unwrap()
                    == before
                {
                    assert!(Instant::now() < deadline, "file change not picked up");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let churned = churner.join().unwrap();
    let report = finish_hold(&mut lab, held);
    let status = Balancer::status(&lab).unwrap();
    // A SIGHUP or API reload may find the watcher already applied the new file: at least 50.
    assert!(status["reloads_ok"].as_u64().unwrap() >= 50, "{status}");
    assert_eq!(status["reloads_failed"], 0, "{status}");
    assert_eq!(churned.failed, 0, "{:?}", churned.errors);
    assert!(churned.ok > 0);
    assert_eq!(
        (report.opened, report.broken, report.backend_changed),
        (60, 0, 0),
        "{report:?}"
    );
    balancer.stop(&mut lab).unwrap();
}

/// Refused CLI changes, then drain, add and remove under held connections: the changes steer
/// new flows, persist to the config file, show in `xdplb check`, and survive a `kill -9`; only
/// connections on the removed backend break.
#[test]
fn backend_changes_through_the_cli_apply_persist_and_survive_a_restart() {
    let mut lab = small_lab();
    let mut balancer = start(&mut lab, "");
    let held = hold(&mut lab, 0, 90);
    let (b0, b2) = (
        lab.backend_addr4(0).to_string(),
        lab.backend_addr4(2).to_string(),
    );
    mistakes_are_refused_and_change_nothing(&lab, &b0);
    let b3 = drain_add_and_remove_steer_new_flows(&mut lab, &b0, &b2);
    the_config_file_holds_the_change(&balancer, &b0, &b2, &b3);
    check_shows_what_a_proposed_config_would_change(&lab, &balancer, &b3);
    a_kill_9_restart_comes_back_with_the_changed_state(&mut lab, &mut balancer, &b2, &b3);

    std::thread::sleep(Duration::from_secs(1));
    let report = finish_hold(&mut lab, held);
    // Only connections on the removed backend may break; drained b0 keeps its connections.
    let on_b2 = report.per_backend.get("b2").copied().unwrap_or(0);
    assert!(
        report.per_backend.get("b0").copied().unwrap_or(0) > 0,
        "{report:?}"
    );
    assert_eq!(
        report.broken, on_b2,
        "connections to healthy backends broke: {report:?}"
    );
    balancer.stop(&mut lab).unwrap();
}

/// Mistakes are refused with a reason and change nothing.
fn mistakes_are_refused_and_change_nothing(lab: &Lab, b0: &str) {
    let status_before = Balancer::status(lab).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "backend",
                "add",
                "web-tcp",
                &lab.backend_addr4(1).to_string(),
            ],
            "exists already",
        ),
        (
            &["backend", "drain", "no-such-vip", b0],
            "no VIP named \"no-such-vip\"",
        ),
        (
            &["backend", "remove", "web-tcp", "10.200.0.250"],
            "has no backend 10.200.0.250",
        ),
        (&["backend", "weight", "web-tcp", b0, "0"], "out of range"),
        (
            &["backend", "add", "web-tcp", "10.0.0.300"],
            "invalid value '10.0.0.300'",
        ),
        (
            &[
                "backend",
                "add",
                "web-tcp",
                "10.200.0.99",
                "--mac",
                "zz:00:00:00:00:01",
            ],
            "invalid MAC",
        ),
        (&["vip", "remove", "nope"], "no VIP named \"nope\""),
        (&["backnd", "list"], "unrecognized subcommand 'backnd'"),
        // This agent announces nothing itself: draining it would withdraw nothing.
        (&["drain-balancer"], "no announce: section"),
    ];
    for (args, needle) in cases {
        let (ok, out) = Balancer::cli(lab, args);
        assert!(!ok, "{args:?} should fail");
        assert!(
            out.contains(needle),
            "{args:?}: expected {needle:?} in: {out}"
        );
    }
    assert_eq!(
        Balancer::status(lab).unwrap()["vips"],
        status_before["vips"],
        "a refused change altered the state"
    );
    let dead = std::process::Command::new(tool_path("xdplb"))
        .args(["status", "--socket", "/nonexistent/xdplb.sock"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&dead.stderr);
    assert!(
        !dead.status.success() && out.contains("cannot reach the xdplb agent"),
        "{out}"
    );
}

/// Drain b0, add b3, remove b2: new flows avoid the drained and the removed backend, and reach
/// the added one. Returns b3's address.
fn drain_add_and_remove_steer_new_flows(lab: &mut Lab, b0: &str, b2: &str) -> String {
    let (ok, out) = Balancer::cli(lab, &["backend", "drain", "web-tcp", b0]);
    assert!(ok, "{out}");
    let added = lab.add_backend().unwrap();
    let b3 = lab.backend_addr4(added).to_string();
    let (ok, out) = Balancer::cli(lab, &["backend", "add", "web-tcp", &b3]);
    assert!(ok && out.contains("saved to"), "{out}");
    let r = burst_avoiding(lab, "b0", "draining");
    assert!(
        r.per_backend.contains_key(&format!("b{added}")),
        "added backend unused: {:?}",
        r.per_backend
    );
    let (ok, out) = Balancer::cli(lab, &["backend", "remove", "web-tcp", b2]);
    assert!(ok, "{out}");
    burst_avoiding(lab, "b2", "removed");
    b3
}

/// A burst of new connections: none fails, and none reaches `avoided` (`why`: draining or
/// removed).
fn burst_avoiding(lab: &Lab, avoided: &str, why: &str) -> BurstReport {
    let r = burst(lab, 300);
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert!(
        !r.per_backend.contains_key(avoided),
        "{why} {avoided} got new flows: {:?}",
        r.per_backend
    );
    r
}

/// The config file holds the change.
fn the_config_file_holds_the_change(balancer: &Balancer, b0: &str, b2: &str, b3: &str) {
    let saved = lb_userspace::config::Config::load(&balancer.config).unwrap();
    let web = saved.vips.iter().find(|v| v.name == "web-tcp").unwrap();
    let addrs: Vec<String> = web.backends.iter().map(|b| b.address.to_string()).collect();
    assert!(
        addrs.iter().any(|a| a == b3) && !addrs.iter().any(|a| a == b2),
        "{addrs:?}"
    );
    assert_eq!(
        web.backends
            .iter()
            .find(|b| b.address.to_string() == b0)
            .unwrap()
            .state,
        lb_userspace::config::BackendState::Draining
    );
}

/// `xdplb check` of a proposed config shows what it would change against the running agent.
fn check_shows_what_a_proposed_config_would_change(lab: &Lab, balancer: &Balancer, b3: &str) {
    let proposed = std::fs::read_to_string(&balancer.config)
        .unwrap()
        .replace(&format!("address: {b3}\n"), "address: 10.200.0.240\n");
    assert_ne!(
        proposed,
        std::fs::read_to_string(&balancer.config).unwrap(),
        "fixture must change the config"
    );
    let proposed_path = lab.dir().join("proposed.yaml");
    std::fs::write(&proposed_path, proposed).unwrap();
    let check = std::process::Command::new(tool_path("xdplb"))
        .args(["check", "--config"])
        .arg(&proposed_path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        out.contains(&format!("backend {b3} removed"))
            && out.contains("backend 10.200.0.240 added"),
        "{out}"
    );
    assert!(
        out.contains("of new flows would go to another backend"),
        "{out}"
    );
}

/// kill -9 and restart: the agent comes back with the changed state.
fn a_kill_9_restart_comes_back_with_the_changed_state(
    lab: &mut Lab,
    balancer: &mut Balancer,
    b2: &str,
    b3: &str,
) {
    unsafe { libc::kill(balancer.pid as i32, libc::SIGKILL) };
    lab.wait_exit(balancer.pid, Duration::from_secs(10))
        .unwrap();
    // What the crash left: a socket nobody answers on. The unit's ExecStartPre (`xdplb check`)
    // must still pass, or systemd could never restart the agent; the CLI says what it found.
    assert!(Balancer::socket(lab).exists(), "kill -9 leaves the socket");
    let check = std::process::Command::new(tool_path("xdplb"))
        .args(["check", "--config"])
        .arg(&balancer.config)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.success() && out.contains("left behind by an agent that stopped"),
        "{out}"
    );
    let (ok, out) = Balancer::cli(lab, &["status"]);
    assert!(
        !ok && out.contains("the agent that made it has stopped"),
        "{out}"
    );
    balancer.respawn(lab).unwrap();
    let (ok, out) = Balancer::cli(lab, &["backend", "list", "web-tcp"]);
    assert!(
        ok && out.contains(b3) && !out.contains(&format!("\"{b2}\"")) && out.contains("draining"),
        "{out}"
    );
    let r = burst(lab, 200);
    assert!(
        r.failed == 0 && !r.per_backend.contains_key("b0") && !r.per_backend.contains_key("b2"),
        "{r:?}"
    );
}

fn metrics_text(lab: &Lab) -> String {
    Balancer::metrics_text(lab).unwrap()
}

fn backend_up(scrape: &prometheus_parse::Scrape, addr: &str) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "xdplb_backend_up"
                && s.labels.get("vip") == Some("web-tcp")
                && s.labels.get("backend") == Some(addr)
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v)
            | prometheus_parse::Value::Counter(v) => v,
            _ => f64::NAN,
        })
}

fn parse_metrics(lab: &Lab) -> prometheus_parse::Scrape {
    let text = metrics_text(lab);
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text parses")
}

fn wait_health(lab: &Lab, addr: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = Balancer::status(lab).unwrap();
        let h = s["vips"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "web-tcp")
            .unwrap()["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["address"] == addr)
            .unwrap()["health"]
            .clone();
        if h == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend {addr} never became {want}: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_dead_backend_leaves_the_ring_and_comes_back_with_metrics_showing_it() {
    let mut lab = small_lab();
    let members: Vec<_> = (0..3).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(&mut lab, MODE, &members).unwrap().replace(
        "    protocol: tcp\n    backends:",
        "    protocol: tcp\n    health_check: { kind: tcp, port: 8080, interval: 200ms, timeout: 150ms, rise: 2, fall: 2 }\n    backends:",
    );
    let balancer = Balancer::start(&mut lab, MODE, &yaml).unwrap();
    let held = hold(&mut lab, 0, 60);
    let b1 = lab.backend_addr4(1).to_string();
    wait_health(&lab, &b1, "up");
    let scrape = parse_metrics(&lab);
    assert_eq!(backend_up(&scrape, &b1), Some(1.0));

    // Kill b1's network: its health check fails, it leaves the ring.
    let (ns, ifname) = (lab.backend_ns(1).to_owned(), lab.backend_if(1));
    netns::run(&ns, &["ip", "link", "set", &ifname, "down"]).unwrap();
    wait_health(&lab, &b1, "down");
    assert!(lab.log_of(balancer.pid).contains("taken out of the ring"));
    let r = burst(&lab, 300);
    assert_eq!(
        r.failed, 0,
        "new connections failed with b1 dead: {:?}",
        r.errors
    );
    assert!(!r.per_backend.contains_key("b1"), "{:?}", r.per_backend);
    let scrape = parse_metrics(&lab);
    assert_eq!(backend_up(&scrape, &b1), Some(0.0));
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric.starts_with("xdplb_health_transitions")
            && s.labels.get("to") == Some("down")));

    // Bring it back: it rejoins and takes new flows again.
    netns::run(&ns, &["ip", "link", "set", &ifname, "up"]).unwrap();
    wait_health(&lab, &b1, "up");
    let r = burst(&lab, 300);
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert!(
        r.per_backend.contains_key("b1"),
        "b1 did not come back: {:?}",
        r.per_backend
    );

    let report = finish_hold(&mut lab, held);
    let on_b1 = report.per_backend.get("b1").copied().unwrap_or(0);
    assert!(
        report.broken <= on_b1,
        "connections to healthy backends broke: {report:?}"
    );
    let scrape = parse_metrics(&lab);
    let packets = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "xdplb_backend_packets_total" && s.labels.get("vip") == Some("web-tcp")
        })
        .count();
    assert_eq!(packets, 3, "one packets series per backend");
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "xdplb_map_capacity" && s.labels.get("map") == Some("CONNS")));
    balancer.stop(&mut lab).unwrap();
}

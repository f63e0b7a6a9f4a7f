//! Faults injected under load, one at a time, each measured.
//!
//! Persistent connections pinging (hold) and a steady stream of new connections (churn) run through
//! the balancer while the agent is killed and restarted the way systemd does it, upgraded, flooded
//! with reloads and SIGHUPs, while a backend's server dies or its link is cut, while the gateway's
//! link goes down or changes MTU, and while the flow table overflows. Prints the table
//! docs/reliability.md shows and asserts the goals.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use xdplb_lab::{
    lab::{tool_path, Lab},
    netns,
    reports::{BurstReport, HoldReport},
    scenario::{burst4, churn, hold_finish, hold_start, lab_config, small_lab, Balancer, Member},
};

const MODE: &str = "generic";
/// Held connections per run: spread over three backends.
const HELD: u32 = 60;

/// One measured fault.
struct Row {
    fault: &'static str,
    /// Established connections broken on backends that stayed healthy (goal 0).
    broken_healthy: u64,
    /// Established connections broken on the backend the fault killed (they were on it).
    broken_dead: u64,
    /// New connections during the run: failed and attempted.
    new_failed: u64,
    new_total: u64,
    /// Slowest ping of any held connection: a packet lost shows as TCP's retransmission wait.
    slowest_ping_ms: u64,
    /// Time until the fault was over for the service (agent back, backend out of the ring,
    /// forwarding again), as measured by the fault itself.
    recovery: Option<Duration>,
}

/// What a fault did: the backends it killed (their connections may break) and the time the
/// service took to recover.
struct Outcome {
    dead: Vec<&'static str>,
    recovery: Option<Duration>,
}

impl Outcome {
    /// Nothing killed; the service was back after `recovery`.
    fn recovered(recovery: Duration) -> Outcome {
        Outcome {
            dead: vec![],
            recovery: Some(recovery),
        }
    }

    /// Nothing killed, and no outage to time.
    fn unmeasured() -> Outcome {
        Outcome {
            dead: vec![],
            recovery: None,
        }
    }
}

/// Runs `fault` while HELD connections ping and new ones keep arriving, and measures it.
fn under_load(
    lab: &mut Lab,
    balancer: &mut Balancer,
    fault: &'static str,
    inject: impl FnOnce(&mut Lab, &mut Balancer) -> Outcome,
) -> Row {
    let held = hold_start(lab, 0, HELD).expect("hold");
    let stop = Arc::new(AtomicBool::new(false));
    let new = churn(lab, 0, stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let outcome = inject(lab, balancer);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let new: BurstReport = new.join().expect("churn thread");
    let report: HoldReport = hold_finish(lab, held).expect("hold report");
    let broken_dead: u64 = outcome
        .dead
        .iter()
        .map(|b| report.broken_per_backend.get(*b).copied().unwrap_or(0))
        .sum();
    Row {
        fault,
        broken_healthy: report.broken - broken_dead,
        broken_dead,
        new_failed: new.failed,
        new_total: new.ok + new.failed,
        slowest_ping_ms: report.slowest_ping_ms,
        recovery: outcome.recovery,
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "{what} did not happen within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// The health of `addr` in VIP web-tcp, as `xdplb status` shows it.
fn health(lab: &Lab, addr: &str) -> String {
    let s = Balancer::status(lab).unwrap();
    s["vips"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .map(|b| b["health"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn gw_ip(lab: &Lab, args: &[&str]) {
    let mut cmd = vec!["ip", "-n", lab.gateway_ns()];
    cmd.extend_from_slice(args);
    netns::run_root(&cmd).unwrap();
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| fault | broken (healthy backends) | broken (dead backend) | new connections failed | slowest ping | recovery |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} of {} | {} ms | {} |",
            r.fault,
            r.broken_healthy,
            r.broken_dead,
            r.new_failed,
            r.new_total,
            r.slowest_ping_ms,
            r.recovery
                .map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
        );
    }
    t
}

#[test]
fn faults_under_load_break_no_connection_to_a_healthy_backend() {
    let mut lab = small_lab(3).expect("lab");
    let yaml = faults_config(&mut lab);
    let mut balancer = Balancer::start(&mut lab, MODE, &yaml).expect("xdplb starts");
    let b1 = lab.backend_addr4(1).to_string();
    wait_until("b1 up", Duration::from_secs(10), || {
        health(&lab, &b1) == "up"
    });
    let mut rows = agent_faults(&mut lab, &mut balancer);
    rows.extend(backend_faults(&mut lab, &mut balancer, &b1));
    rows.extend(gateway_faults(&mut lab, &mut balancer));
    balancer.stop(&mut lab).unwrap();
    let detach = std::process::Command::new(tool_path("xdplb"))
        .args(["detach", "--config"])
        .arg(lab.dir().join("lb.yaml"))
        .output()
        .unwrap();
    assert!(detach.status.success());
    rows.push(flow_table_overflow(&mut lab, &yaml));
    check_rows(&rows);
}

/// The lab's config with the datapath kept on exit (for the upgrade) and a fast health check.
fn faults_config(lab: &mut Lab) -> String {
    let members: Vec<_> = (0..3).map(|i| (i, Member::Active)).collect();
    lab_config(lab, MODE, &members)
        .unwrap()
        .replace(
            "flow_table_size: 65536\n",
            "flow_table_size: 65536\nkeep_attached_on_exit: true\n",
        )
        .replacen(
            "    protocol: tcp\n    backends:",
            "    protocol: tcp\n    health_check: { kind: tcp, port: 8080, interval: 200ms, timeout: 150ms, rise: 2, fall: 2 }\n    backends:",
            1,
        )
}

/// The agent killed, upgraded, reloaded 100 times and flooded with SIGHUP.
fn agent_faults(lab: &mut Lab, balancer: &mut Balancer) -> Vec<Row> {
    let mut rows = Vec::new();
    rows.push(under_load(
        lab,
        balancer,
        "agent `kill -9`, restarted as systemd does (`check`, then `run`)",
        |lab, b| {
            let t = Instant::now();
            // SAFETY: plain kill(2) on the lab's own child.
            unsafe { libc::kill(b.pid as i32, libc::SIGKILL) };
            lab.wait_exit(b.pid, Duration::from_secs(10)).unwrap();
            let check = std::process::Command::new(tool_path("xdplb"))
                .args(["check", "--config"])
                .arg(&b.config)
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "ExecStartPre failed: {}",
                String::from_utf8_lossy(&check.stderr)
            );
            b.respawn(lab).unwrap();
            Outcome::recovered(t.elapsed())
        },
    ));

    rows.push(under_load(
        lab,
        balancer,
        "agent upgrade (stopped with the datapath kept, new agent takes over the pinned link)",
        |lab, b| {
            let t = Instant::now();
            lab.stop(b.pid).unwrap();
            b.respawn(lab).unwrap();
            assert!(
                lab.log_of(b.pid).contains("took over the running datapath"),
                "{}",
                lab.log_of(b.pid)
            );
            Outcome::recovered(t.elapsed())
        },
    ));

    rows.push(under_load(
        lab,
        balancer,
        "100 reloads, every 4th config invalid",
        |lab, b| {
            let valid = std::fs::read_to_string(&b.config).unwrap();
            for i in 0..100 {
                let text = if i % 4 == 3 {
                    valid.replace("protocol: tcp", "protocol: sctp")
                } else {
                    // Weights 100 and 101 in turn: a real change each time.
                    valid.replacen(
                        "state: active }",
                        &format!("state: active, weight: {} }}", 100 + i % 2),
                        1,
                    )
                };
                std::fs::write(&b.config, text).unwrap();
                let (code, out) = Balancer::cli_code(lab, &["reload"]);
                assert_eq!(
                    code,
                    Some(if i % 4 == 3 { 1 } else { 0 }),
                    "reload {i}: {out}"
                );
            }
            std::fs::write(&b.config, valid).unwrap();
            let (ok, out) = Balancer::cli(lab, &["reload"]);
            assert!(ok, "{out}");
            Outcome::unmeasured()
        },
    ));

    rows.push(under_load(
        lab,
        balancer,
        "SIGHUP storm (200 signals in a row)",
        |lab, b| {
            let t = Instant::now();
            for _ in 0..200 {
                // SAFETY: plain kill(2) on the lab's own child.
                unsafe { libc::kill(b.pid as i32, libc::SIGHUP) };
            }
            let answered = wait_until(
                "the agent answers after the storm",
                Duration::from_secs(30),
                || Balancer::cli(lab, &["status"]).0,
            );
            let _ = answered;
            Outcome::recovered(t.elapsed())
        },
    ));
    rows
}

/// Backend b1 (at `b1`) dies or loses its link, then comes back.
fn backend_faults(lab: &mut Lab, balancer: &mut Balancer, b1: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    rows.push(under_load(
        lab,
        balancer,
        "backend b1's server killed, then restarted",
        |lab, _| {
            let t = Instant::now();
            lab.kill_server(1).unwrap();
            let out = wait_until("b1 out of the ring", Duration::from_secs(10), || {
                health(lab, b1) == "down"
            });
            lab.start_server(1).unwrap();
            wait_until("b1 back", Duration::from_secs(10), || {
                health(lab, b1) == "up"
            });
            let _ = t;
            Outcome {
                dead: vec!["b1"],
                recovery: Some(out),
            }
        },
    ));

    rows.push(under_load(
        lab,
        balancer,
        "backend b1's link cut, then restored",
        |lab, _| {
            let (ns, dev) = (lab.backend_ns(1).to_owned(), lab.backend_if(1));
            netns::run_root(&["ip", "-n", &ns, "link", "set", &dev, "down"]).unwrap();
            let out = wait_until("b1 out of the ring", Duration::from_secs(10), || {
                health(lab, b1) == "down"
            });
            netns::run_root(&["ip", "-n", &ns, "link", "set", &dev, "up"]).unwrap();
            wait_until("b1 back", Duration::from_secs(10), || {
                health(lab, b1) == "up"
            });
            Outcome {
                dead: vec!["b1"],
                recovery: Some(out),
            }
        },
    ));
    rows
}

/// The gateway's link goes down and its MTU changes, under the program.
fn gateway_faults(lab: &mut Lab, balancer: &mut Balancer) -> Vec<Row> {
    let mut rows = Vec::new();
    rows.push(under_load(
        lab,
        balancer,
        "gateway link down for 1 s, then up",
        |lab, _| {
            let dev = lab.gateway_if().to_owned();
            gw_ip(lab, &["link", "set", &dev, "down"]);
            std::thread::sleep(Duration::from_secs(1));
            let t = Instant::now();
            gw_ip(lab, &["link", "set", &dev, "up"]);
            let back = wait_until("forwarding again", Duration::from_secs(20), || {
                burst4(lab, 5).is_ok_and(|r| r.failed == 0)
            });
            let _ = t;
            Outcome::recovered(back)
        },
    ));

    rows.push(under_load(
        lab,
        balancer,
        "gateway MTU 1500 → 1400 → 1500 under the program",
        |lab, _| {
            let dev = lab.gateway_if().to_owned();
            gw_ip(lab, &["link", "set", &dev, "mtu", "1400"]);
            std::thread::sleep(Duration::from_secs(1));
            gw_ip(lab, &["link", "set", &dev, "mtu", "1500"]);
            Outcome::unmeasured()
        },
    ));
    rows
}

/// The flow table at its minimum (1024 entries) and 4000 new connections through it while
/// the held ones ping: the LRU evicts live flows, which keep their backend because the
/// ring has not changed (Maglev gives an evicted flow the same slot again).
fn flow_table_overflow(lab: &mut Lab, yaml: &str) -> Row {
    let small = yaml.replace("flow_table_size: 65536", "flow_table_size: 1024");
    let mut balancer = Balancer::start(lab, MODE, &small).expect("xdplb starts");
    let row = under_load(
        lab,
        &mut balancer,
        "flow table (1024 entries) overflowed by 4000 new connections",
        |lab, _| {
            for _ in 0..8 {
                let r = burst4(lab, 500).expect("burst");
                assert_eq!(r.failed, 0, "{:?}", r.errors);
            }
            Outcome::unmeasured()
        },
    );
    balancer.stop(lab).unwrap();
    row
}

/// What every fault must keep: healthy backends' connections, and new connections except a
/// dead backend's share.
fn check_rows(rows: &[Row]) {
    let t = table(rows);
    println!("{t}");
    for r in rows {
        assert_eq!(
            r.broken_healthy, 0,
            "{}: connections to healthy backends broke\n{t}",
            r.fault
        );
        // A dead backend costs at most its share of new connections (one of three), and only
        // until the health check takes it out.
        assert!(
            r.new_failed * 3 <= r.new_total,
            "{}: more than the dead backend's share failed\n{t}",
            r.fault
        );
        if r.fault.starts_with("agent")
            || r.fault.contains("reloads")
            || r.fault.contains("SIGHUP")
            || r.fault.contains("MTU")
            || r.fault.contains("flow table")
        {
            assert_eq!(r.new_failed, 0, "{}: new connections failed\n{t}", r.fault);
        }
    }
}

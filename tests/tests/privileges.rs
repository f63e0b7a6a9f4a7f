//! Least privilege and access.
//!
//! The agent balances with exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, and with the same three
//! a restarted agent adopts the pinned datapath; it names the one it lacks otherwise; its control
//! socket refuses a real unprivileged user; it listens on nothing but the loopback metrics port,
//! which is read-only.

use std::{path::Path, process::Command, time::Duration};

use xdplb_lab::{
    lab::tool_path,
    netns,
    scenario::{burst4, hold_finish, hold_start, lab_config, small_lab, Balancer, Member},
    Lab,
};

/// `setpriv` arguments that leave a root process exactly `caps` (e.g. "+bpf,+net_admin"):
/// the bounding set limits what execve grants, the cleared inheritable set passes nothing on.
fn only(caps: &str) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{caps}"),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
}

/// A system user made for this test and removed when it ends, even on failure.
struct TestUser(String);

impl TestUser {
    fn new() -> TestUser {
        let name = format!("xdplbt{}", std::process::id());
        let ok = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .status()
            .expect("useradd")
            .success();
        assert!(ok, "useradd {name}");
        TestUser(name)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

/// `xdplb run` under each set of two of the three capabilities: it stops at once, exit 78 (a
/// restart cannot fix it, so systemd does not retry: RestartPreventExitStatus), naming the one
/// it lacks.
fn refused_with_each_capability_missing(lab: &Lab, config: &Path, when: &str) {
    let gw = format!("--net=/run/netns/{}", lab.gateway_ns());
    for (caps, lacking) in [
        ("+net_admin,+perfmon", "CAP_BPF"),
        ("+bpf,+perfmon", "CAP_NET_ADMIN"),
        ("+bpf,+net_admin", "CAP_PERFMON"),
    ] {
        let out = Command::new("nsenter")
            .arg(&gw)
            .args(only(caps))
            .arg(tool_path("xdplb"))
            .args(["run", "--config"])
            .arg(config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{when}, {caps}: {err}");
        assert!(
            err.contains(&format!("missing capability: {lacking}")),
            "{when}, {caps}: {err}"
        );
    }
}

#[test]
fn the_agent_runs_on_three_capabilities_and_refuses_strangers() {
    let mut lab = small_lab(2).expect("lab");
    let members: Vec<_> = (0..2).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(&mut lab, "generic", &members).unwrap();

    // Without one of the three, the agent stops at once and names it.
    let config = lab.dir().join("lb.yaml");
    std::fs::write(&config, &yaml).unwrap();
    refused_with_each_capability_missing(&lab, &config, "fresh start");

    // With exactly the three, it balances.
    let launcher = only("+bpf,+net_admin,+perfmon");
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    let balancer = Balancer::start_via(&mut lab, "generic", &yaml, &launcher)
        .expect("xdplb starts with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON");
    let status = std::fs::read_to_string(format!("/proc/{}/status", balancer.pid)).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_owned();
    // Bits 12 (NET_ADMIN), 38 (PERFMON), 39 (BPF).
    assert_eq!(
        u64::from_str_radix(&eff, 16).unwrap(),
        (1 << 12) | (1 << 38) | (1 << 39)
    );
    let r = burst4(&lab, 100).expect("burst");
    assert_eq!((r.ok, r.failed), (100, 0), "{:?}", r.errors);
    assert_eq!(r.per_backend.len(), 2, "{:?}", r.per_backend);

    // Killed with connections open, the agent is restarted on the same three capabilities
    // (what systemd's Restart= does): it adopts the pinned maps and link, and the open
    // connections stay with their backends. With one capability fewer, the restart is refused
    // naming it, and the datapath forwards on its pins meanwhile.
    let mut balancer = balancer;
    let held = hold_start(&mut lab, 0, 20).expect("hold");
    let before = balancer.stats_json().unwrap();
    // SAFETY: kill(2) on the lab's own child.
    unsafe { libc::kill(balancer.pid as i32, libc::SIGKILL) };
    lab.wait_exit(balancer.pid, Duration::from_secs(10))
        .unwrap();
    refused_with_each_capability_missing(&lab, &config, "restart over pinned state");
    let r = burst4(&lab, 50).expect("burst");
    assert_eq!(
        (r.ok, r.failed),
        (50, 0),
        "the pinned datapath forwards with no agent: {:?}",
        r.errors
    );
    balancer
        .respawn_via(&mut lab, &launcher)
        .expect("a restarted xdplb adopts its pinned datapath with the three capabilities");
    let log = lab.log_of(balancer.pid);
    assert!(
        log.contains("adopting the datapath state")
            && log.contains("took over the running datapath"),
        "{log}"
    );
    let status = Balancer::status(&lab).unwrap();
    assert_eq!(status["adopted_previous_state"], true, "{status}");
    let r = burst4(&lab, 100).expect("burst");
    assert_eq!((r.ok, r.failed), (100, 0), "{:?}", r.errors);
    assert_eq!(r.per_backend.len(), 2, "{:?}", r.per_backend);
    let held = hold_finish(&mut lab, held).expect("hold report");
    assert_eq!(
        (held.broken, held.backend_changed),
        (0, 0),
        "connections held through the restart: {held:?}"
    );
    // Counters carried over: the VIP's packets only grew.
    let after = balancer.stats_json().unwrap();
    let packets = |s: &serde_json::Value| {
        s["vips"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "web-tcp")
            .map(|v| v["packets"].as_u64().unwrap())
            .unwrap()
    };
    assert!(
        packets(&after) >= packets(&before),
        "counters kept: {before} → {after}"
    );

    // A real unprivileged user cannot use the control socket.
    let user = TestUser::new();
    let socket = Balancer::socket(&lab);
    let out = Command::new("runuser")
        .args(["-u", &user.0, "--"])
        .arg(tool_path("xdplb"))
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    let (ok, out) = Balancer::cli(&lab, &["status"]);
    assert!(ok, "root still can: {out}");

    // Nothing listens on the network: the only listener is the metrics port on loopback.
    let listeners = netns::run(lab.gateway_ns(), &["ss", "-Hltnu"]).unwrap();
    let local: Vec<&str> = listeners
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    assert_eq!(local, ["127.0.0.1:9842"], "{listeners}");
    // ... and it only reads.
    let answer = netns::in_netns(lab.gateway_ns(), || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect("127.0.0.1:9842")?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(
            b"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    balancer.stop(&mut lab).unwrap();
}

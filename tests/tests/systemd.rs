//! The Debian package's unit under a real systemd: PID 1 of a container in the gateway namespace.
//!
//! It starts with exactly three capabilities, a `kill -9` is one restart that adopts the pinned
//! datapath, stop and start adopt, a refused config fails `systemctl reload`, a missing
//! capability ends in `failed` naming it, and a stop with the datapath kept leaves it to
//! `xdplb detach`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;
use xdplb_lab::{
    container::{ContainerSpec, SystemdContainer},
    netns,
    scenario::{burst4, hold_finish, hold_start, lab_config, small_lab, Member},
    Lab,
};

const UNIT: &str = "xdplb";
const CONFIG: &str = "/etc/xdplb/lb.yaml";

/// The package `cargo xtask test` built (`XDPLB_DEB`), else the one it left in
/// `target/deb-test/`.
fn package() -> PathBuf {
    if let Some(deb) = std::env::var_os("XDPLB_DEB") {
        return PathBuf::from(deb);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/deb-test");
    std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| {
            panic!(
                "no .deb in {}: run this test through `cargo xtask test`, or set XDPLB_DEB",
                dir.display()
            )
        })
}

/// The lab's config as an operator would write it for the unit: the default pin path and API
/// socket, and the datapath kept attached when the agent exits.
fn unit_config(lab: &mut Lab) -> String {
    let members: Vec<_> = (0..2).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(lab, "generic", &members).unwrap();
    let mut out: String = yaml
        .lines()
        .filter(|l| !l.starts_with("pin_path:") && !l.starts_with("api_socket:"))
        .map(|l| format!("{l}\n"))
        .collect();
    out = out.replacen("vips:\n", "keep_attached_on_exit: true\nvips:\n", 1);
    out
}

/// `xdplb status` inside the container, as the operator runs it there.
fn status(c: &SystemdContainer) -> Option<Value> {
    let out = c.exec(&["xdplb", "status"]).ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Waits until the agent answers `xdplb status` with its datapath attached (and, with
/// `adopted`, saying it adopted the pinned state); returns the status and how long it took.
fn wait_balancing(c: &SystemdContainer, adopted: bool, since: Instant) -> (Value, Duration) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = status(c) {
            if s["datapath_up"] == true && s["adopted_previous_state"] == adopted {
                return (s, since.elapsed());
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not come up (adopted: {adopted}); journal:\n{}",
            c.journal(UNIT, "debug").unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main_pid(c: &SystemdContainer) -> u32 {
    c.show(UNIT, &["MainPID"]).unwrap()["MainPID"]
        .parse()
        .unwrap()
}

/// The `CapEff`, `NoNewPrivs` and `Seccomp` lines of the agent's /proc status.
fn sandbox(c: &SystemdContainer, pid: u32) -> (u64, String, String) {
    let status = c.run(&["cat", &format!("/proc/{pid}/status")]).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    (
        u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
        field("NoNewPrivs:"),
        field("Seccomp:"),
    )
}

/// `systemctl status` of the unit, as an operator reads it.
fn unit_status(c: &SystemdContainer) -> String {
    let out = c
        .exec(&["systemctl", "status", "--no-pager", UNIT])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_balances(lab: &Lab, what: &str) {
    let r = burst4(lab, 100).expect("burst");
    assert_eq!((r.ok, r.failed), (100, 0), "{what}: {:?}", r.errors);
    assert_eq!(r.per_backend.len(), 2, "{what}: {:?}", r.per_backend);
}

/// The unit's journal at priority err says `what`.
fn assert_journal_errors_say(c: &SystemdContainer, what: &str) {
    let errors = c.journal(UNIT, "err").unwrap();
    assert!(errors.contains(what), "journalctl -p err: {errors}");
}

#[test]
fn the_packaged_unit_restarts_adopts_reloads_and_detaches_under_systemd() {
    let deb = package();
    let mut lab = small_lab(2).expect("lab");
    let yaml = unit_config(&mut lab);
    let pins = lab.pin_dir().unwrap();
    let share = lab.dir().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::copy(&deb, share.join("xdplb.deb")).unwrap();
    let booting = Instant::now();
    // Declared after the lab, so it is powered off before the lab's namespaces go.
    let c = SystemdContainer::boot(&ContainerSpec {
        netns: lab.gateway_ns(),
        bpffs: &pins,
        share: &share,
        log_dir: lab.dir(),
    })
    .expect("systemd boots in the container");
    println!("container booted in {:?} (root cached)", booting.elapsed());

    c.run(&["dpkg", "-i", "/mnt/share/xdplb.deb"])
        .expect("the package installs");
    c.write(CONFIG, &yaml).unwrap();

    let (pid, eff) = start_balances_with_the_units_three_capabilities(&c, &lab);
    kill_9_is_one_restart_that_adopts_and_keeps_connections(&c, &mut lab, pid, eff);
    stop_then_start_adopts_the_kept_datapath(&c, &lab);
    a_broken_config_fails_reload_and_the_agent_keeps_running(&c, &lab, &yaml);
    a_missing_capability_fails_the_unit_at_once_naming_it(&c, &lab);
    a_missing_interface_is_retried_five_times_then_failed(&c, &lab, &yaml);
    detach_removes_the_datapath_a_stop_kept(&c, &lab, &pins);
}

/// Start: attached, with exactly the unit's three capabilities, no new privileges, seccomp.
fn start_balances_with_the_units_three_capabilities(c: &SystemdContainer, lab: &Lab) -> (u32, u64) {
    let t = Instant::now();
    c.run(&["systemctl", "start", UNIT]).unwrap();
    let (_, took) = wait_balancing(c, false, t);
    println!("start → balancing: {took:?}");
    let pid = main_pid(c);
    let (eff, nnp, seccomp) = sandbox(c, pid);
    // Bits 12 (NET_ADMIN), 38 (PERFMON), 39 (BPF).
    assert_eq!(eff, (1 << 12) | (1 << 38) | (1 << 39), "CapEff {eff:x}");
    assert_eq!((nnp.as_str(), seccomp.as_str()), ("1", "2"));
    assert_balances(lab, "after start");
    // The pre-start check says nothing when there was simply no agent yet.
    let journal = c.journal(UNIT, "info").unwrap();
    assert!(!journal.contains("No agent answers"), "{journal}");
    (pid, eff)
}

/// kill -9 with connections open: systemd restarts it once, the new agent adopts the
/// pinned datapath, and the open connections stay with their backends.
fn kill_9_is_one_restart_that_adopts_and_keeps_connections(
    c: &SystemdContainer,
    lab: &mut Lab,
    pid: u32,
    eff: u64,
) {
    let held = hold_start(lab, 0, 20).expect("hold");
    let t = Instant::now();
    c.run(&["kill", "-9", &pid.to_string()]).unwrap();
    let shown = c
        .wait_unit(
            UNIT,
            &["NRestarts", "ActiveState", "MainPID"],
            Duration::from_secs(30),
            |p| {
                p["NRestarts"] == "1"
                    && p["ActiveState"] == "active"
                    && p["MainPID"] != pid.to_string()
            },
        )
        .unwrap();
    let (_, took) = wait_balancing(c, true, t);
    println!("kill -9 → restarted and adopted: {took:?} (RestartSec=2)");
    let journal = c.journal(UNIT, "info").unwrap();
    assert!(
        journal.contains("adopting the datapath state")
            && journal.contains("took over the running datapath"),
        "{journal}"
    );
    let new_pid: u32 = shown["MainPID"].parse().unwrap();
    assert_eq!(
        sandbox(c, new_pid).0,
        eff,
        "the restarted agent's capabilities"
    );
    assert_balances(lab, "after kill -9");
    let report = hold_finish(lab, held).expect("hold report");
    assert_eq!(
        (report.broken, report.backend_changed),
        (0, 0),
        "connections held through kill -9 and restart: {report:?}"
    );
}

/// stop then start (an upgrade's path): the datapath stays while no agent runs, and the
/// new agent adopts it.
fn stop_then_start_adopts_the_kept_datapath(c: &SystemdContainer, lab: &Lab) {
    c.run(&["systemctl", "stop", UNIT]).unwrap();
    assert_balances(lab, "stopped, datapath kept");
    let t = Instant::now();
    c.run(&["systemctl", "start", UNIT]).unwrap();
    let (_, took) = wait_balancing(c, true, t);
    println!("stop, start → adopted: {took:?}");
    assert_balances(lab, "after stop and start");
}

/// A broken config: `systemctl reload` fails, the running config stays, and `xdplb status`
/// still reaches the agent, saying what is wrong with the file.
fn a_broken_config_fails_reload_and_the_agent_keeps_running(
    c: &SystemdContainer,
    lab: &Lab,
    yaml: &str,
) {
    let broken = yaml.replacen("flow_table_size: 65536", "flow_table_size: lots", 1);
    assert_ne!(broken, yaml);
    c.write(CONFIG, &broken).unwrap();
    let t = Instant::now();
    let reload = c.exec(&["systemctl", "reload", UNIT]).unwrap();
    println!("systemctl reload (refused): {:?}", t.elapsed());
    assert!(
        !reload.status.success(),
        "systemctl reload of a broken config must fail"
    );
    let out = c.exec(&["xdplb", "status"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status with a broken config: {err}");
    assert!(
        err.contains("does not validate") && err.contains("flow_table_size"),
        "{err}"
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s["reloads_failed"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["vips"].as_array().unwrap().len(), 4, "{s}");
    assert_eq!(
        c.show(UNIT, &["ActiveState"]).unwrap()["ActiveState"],
        "active"
    );
    assert_journal_errors_say(c, "reload rejected");
    assert_balances(lab, "after a refused reload");
    c.write(CONFIG, yaml).unwrap();
    let t = Instant::now();
    c.run(&["systemctl", "reload", UNIT])
        .expect("systemctl reload of a good config succeeds");
    println!("systemctl reload (applied): {:?}", t.elapsed());
}

/// One capability fewer (a drop-in): the agent refuses to start naming it, with the exit
/// code that tells systemd a restart will not help, so the unit is `failed` at once with the
/// reason in `systemctl status`. The pinned datapath forwards meanwhile.
fn a_missing_capability_fails_the_unit_at_once_naming_it(c: &SystemdContainer, lab: &Lab) {
    c.run(&["systemctl", "stop", UNIT]).unwrap();
    c.write(
        "/etc/systemd/system/xdplb.service.d/no-perfmon.conf",
        "[Service]\nCapabilityBoundingSet=~CAP_PERFMON\nAmbientCapabilities=\nAmbientCapabilities=CAP_BPF CAP_NET_ADMIN\n",
    )
    .unwrap();
    c.run(&["systemctl", "daemon-reload"]).unwrap();
    let t = Instant::now();
    let _ = c.exec(&["systemctl", "start", UNIT]);
    let shown = c
        .wait_unit(
            UNIT,
            &["ActiveState", "Result", "NRestarts", "ExecMainStatus"],
            Duration::from_secs(30),
            |p| p["ActiveState"] == "failed",
        )
        .unwrap();
    println!(
        "without CAP_PERFMON: failed after {:?} ({shown:?})",
        t.elapsed()
    );
    assert_eq!(
        (
            shown["NRestarts"].as_str(),
            shown["ExecMainStatus"].as_str()
        ),
        ("0", "78"),
        "{shown:?}"
    );
    let status_text = unit_status(c);
    assert!(
        status_text.contains("missing capability: CAP_PERFMON"),
        "systemctl status: {status_text}"
    );
    assert_journal_errors_say(c, "missing capability: CAP_PERFMON");
    assert_balances(lab, "no agent, datapath pinned");
    c.run(&["rm", "/etc/systemd/system/xdplb.service.d/no-perfmon.conf"])
        .unwrap();
    c.run(&["systemctl", "daemon-reload"]).unwrap();
    c.run(&["systemctl", "reset-failed", UNIT]).unwrap();
}

/// A failure a restart might cure (the interface is not there yet) is retried, but not for
/// ever: after five starts within a minute the unit is `failed`, not `activating`.
fn a_missing_interface_is_retried_five_times_then_failed(
    c: &SystemdContainer,
    lab: &Lab,
    yaml: &str,
) {
    let missing_nic = yaml.replacen(
        &format!("interface: {}", lab.gateway_if()),
        "interface: xdplbnone0",
        1,
    );
    assert_ne!(missing_nic, yaml);
    c.write(CONFIG, &missing_nic).unwrap();
    let t = Instant::now();
    let _ = c.exec(&["systemctl", "start", UNIT]);
    let shown = c
        .wait_unit(
            UNIT,
            &["ActiveState", "NRestarts"],
            Duration::from_secs(60),
            |p| p["ActiveState"] == "failed",
        )
        .unwrap();
    println!(
        "interface missing: failed after {:?} ({shown:?})",
        t.elapsed()
    );
    assert_eq!(shown["NRestarts"], "5", "{shown:?}");
    assert!(unit_status(c).contains("Start request repeated too quickly"));
    assert_journal_errors_say(c, "interface xdplbnone0 does not exist");
    c.write(CONFIG, yaml).unwrap();
    c.run(&["systemctl", "reset-failed", UNIT]).unwrap();
    let t = Instant::now();
    c.run(&["systemctl", "start", UNIT]).unwrap();
    wait_balancing(c, true, t);
    assert_balances(lab, "after the failed starts");
}

/// A stop with keep_attached_on_exit leaves the datapath; `xdplb detach` removes it.
fn detach_removes_the_datapath_a_stop_kept(c: &SystemdContainer, lab: &Lab, pins: &Path) {
    c.run(&["systemctl", "stop", UNIT]).unwrap();
    assert_balances(lab, "stopped, datapath kept");
    let detached = c.run(&["xdplb", "detach"]).unwrap();
    assert!(detached.contains("removed"), "{detached}");
    let link = netns::run(lab.gateway_ns(), &["ip", "link", "show", lab.gateway_if()]).unwrap();
    assert!(!link.contains("xdp"), "still attached after detach: {link}");
    // (A fresh bpffs also holds the kernel's own maps.debug and progs.debug.)
    assert!(
        !pins.join("xdplb").exists(),
        "pins left after detach under {}",
        pins.display()
    );
}

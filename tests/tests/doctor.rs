//! `xdplb doctor` in the lab's namespaces.
//!
//! A healthy gateway and backend pass, and each fault provoked there (strict rp_filter, a missing
//! interface, a NIC without native XDP, stale pinned state, a pin path off bpffs, a VIP missing
//! from lo, ARP settings, no decapsulation) is reported with the fix a user would run.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use xdplb_lab::{
    lab::{tool_path, Lab, LabSpec},
    netns,
    scenario::{lab_config, Balancer, Member},
};

/// One `xdplb doctor` run: its exit code, its findings (`--json`) and its stderr.
struct Report {
    code: Option<i32>,
    findings: Vec<Value>,
    stdout: String,
    stderr: String,
}

impl Report {
    /// The findings of `check`, or a panic that shows the whole report.
    fn all(&self, check: &str) -> Vec<&Value> {
        let found: Vec<&Value> = self
            .findings
            .iter()
            .filter(|f| f["check"] == check)
            .collect();
        assert!(
            !found.is_empty(),
            "no {check:?} finding in:\n{}",
            self.stdout
        );
        found
    }

    /// The only finding of `check`.
    fn one(&self, check: &str) -> &Value {
        let all = self.all(check);
        assert_eq!(
            all.len(),
            1,
            "several {check:?} findings in:\n{}",
            self.stdout
        );
        all[0]
    }

    /// Asserts `check`'s status and that its `found` and `fix` say what is expected.
    fn expect(&self, check: &str, status: &str, found: &str, fix: Option<&str>) {
        let f = self.one(check);
        assert_eq!(f["status"], status, "{check}: {f}");
        let text = f["found"].as_str().unwrap_or_default();
        assert!(text.contains(found), "{check}: {found:?} not in {text:?}");
        match fix {
            Some(want) => {
                let got = f["fix"].as_str().unwrap_or_default();
                assert!(got.contains(want), "{check}: fix {want:?} not in {got:?}");
            }
            None => assert!(f["fix"].is_null(), "{check}: an ok finding has no fix: {f}"),
        }
    }

    fn failed(&self) -> Vec<&Value> {
        self.findings
            .iter()
            .filter(|f| f["status"] == "fail")
            .collect()
    }
}

/// Runs `xdplb doctor ARGS --json` in the network namespace `ns` only (`nsenter --net`: the
/// mounts stay the host's, so the lab's bpffs is visible), and checks the exit-code contract:
/// 1 exactly when a finding fails, else 0.
fn doctor(ns: &str, args: &[&str]) -> Report {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(tool_path("xdplb"))
        .arg("doctor")
        .args(args)
        .arg("--json")
        .output()
        .expect("nsenter runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let findings: Vec<Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json is not a JSON array ({e}):\n{stdout}\n{stderr}"));
    for f in &findings {
        assert!(
            ["ok", "warn", "fail"].contains(&f["status"].as_str().unwrap_or_default()),
            "{f}"
        );
        assert!(f["check"].is_string() && f["found"].is_string(), "{f}");
        // Every finding that is not fine says what to do about it.
        if f["status"] != "ok" {
            assert!(f["fix"].as_str().is_some_and(|s| !s.is_empty()), "{f}");
        }
    }
    let report = Report {
        code: out.status.code(),
        findings,
        stdout,
        stderr,
    };
    let expected = if report.failed().is_empty() { 0 } else { 1 };
    assert_eq!(
        report.code,
        Some(expected),
        "exit code vs findings:\n{}\n{}",
        report.stdout,
        report.stderr
    );
    report
}

fn sysctl(ns: &str, key: &str, value: &str) {
    netns::run(ns, &["sysctl", "-q", "-w", &format!("{key}={value}")]).unwrap();
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn routed_lab() -> Lab {
    Lab::new(LabSpec {
        clients: 1,
        backends: 1,
        routed: true,
        ..Default::default()
    })
    .expect("routed lab")
}

#[test]
fn gateway_findings_name_their_fixes() {
    let mut lab = routed_lab();
    let gw = lab.gateway_ns().to_owned();
    let members = [(0, Member::Active)];
    let yaml = lab_config(&mut lab, "native", &members).unwrap();
    let pin = lab.pin_dir().unwrap().join("xdplb");
    let config = write(&lab.dir().join("doctor.yaml"), &yaml);

    a_healthy_gateway_has_no_failure(&gw, &config, &pin);
    the_text_report_puts_each_fix_under_its_finding(&gw, &config);
    no_attach_probe_leaves_the_interface_alone(&gw, &config);
    strict_rp_filter_is_a_warning_naming_the_sysctl(&gw, &config);
    a_missing_interface_fails_naming_the_ones_there(&lab, &gw, &yaml);
    a_bridge_fails_native_and_warns_auto(&lab, &gw, &yaml);
    pinned_state_of_another_layout_fails(&lab, &gw, &yaml, &pin);
    a_pin_path_off_bpffs_fails(&lab, &gw, &yaml, &pin);
    a_running_then_killed_agent_is_reported(&mut lab, &gw, &yaml, &pin);
}

/// Healthy: the lab's gateway, nothing running yet. Its VIPs tunnel (routed lab) to IPv4
/// and IPv6 backends over a 1500-byte gw0, which is a warning, not a failure.
fn a_healthy_gateway_has_no_failure(gw: &str, config: &str, pin: &Path) {
    let r = doctor(gw, &["--config", config]);
    assert!(r.failed().is_empty(), "{}", r.stdout);
    r.expect("config", "ok", "xdp_mode native, 4 VIPs", None);
    r.expect("program", "ok", "verifier accepts the balancer", None);
    r.expect("interface", "ok", "gw0 is up, MAC ", None);
    r.expect("xdp", "ok", "driver veth supports native XDP", None);
    r.expect(
        "mtu",
        "warn",
        "1500-byte client packet plus the 40-byte outer header is 1540 bytes, above the tunnel MTU 1500",
        Some("ip link set dev gw0 mtu 1540"),
    );
    // Or clamp the MSS, per family: 1500 less the outer (20 for the IPv4 backend, 40 for the
    // IPv6 one), inner IP and TCP headers.
    let fix = r.one("mtu")["fix"].as_str().unwrap();
    assert!(
        fix.contains("iptables -t mangle -A FORWARD -p tcp -d 10.201.0.10 --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1440"),
        "{fix}"
    );
    assert!(
        fix.contains("ip6tables -t mangle -A FORWARD -p tcp -d fd00:201::10 --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1400"),
        "{fix}"
    );
    r.expect(
        "rp_filter",
        "ok",
        "reverse-path filtering on gw0 is off",
        None,
    );
    r.expect("bpffs", "ok", &format!("pin_path {}", pin.display()), None);
    r.expect("pinned-state", "ok", "nothing pinned under", None);
    r.expect("btf", "ok", "/sys/kernel/btf/vmlinux", None);
    r.expect("jit", "ok", "JIT-compiled", None);
    r.expect("privileges", "ok", "CAP_BPF, CAP_NET_ADMIN", None);
    r.expect("memlock", "ok", "RLIMIT_MEMLOCK", None);
    r.expect("agent-socket", "ok", "no agent running", None);
    // The probe left gw0 as it was.
    let link = netns::run(gw, &["ip", "-j", "link", "show", "dev", "gw0"]).unwrap();
    assert!(!link.contains("\"xdp\""), "{link}");
}

/// What a user reads without --json: one line per finding, its fix under it.
fn the_text_report_puts_each_fix_under_its_finding(gw: &str, config: &str) {
    let human = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{gw}"))
        .arg("--")
        .arg(tool_path("xdplb"))
        .args(["doctor", "--config", config])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert_eq!(human.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("warn  mtu "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        lines[at + 1]
            .trim_start()
            .starts_with("fix: raise the MTU to 1540 on gw0"),
        "{text}"
    );
    assert!(lines.last().unwrap().ends_with(" warn, 0 fail"), "{text}");
}

/// `--no-attach-probe` leaves the interface alone and says so.
fn no_attach_probe_leaves_the_interface_alone(gw: &str, config: &str) {
    let r = doctor(gw, &["--config", config, "--no-attach-probe"]);
    r.expect(
        "xdp",
        "ok",
        "native XDP not tried (--no-attach-probe)",
        None,
    );
}

/// Strict reverse-path filtering on the interface: a warning naming the sysctl.
fn strict_rp_filter_is_a_warning_naming_the_sysctl(gw: &str, config: &str) {
    sysctl(gw, "net.ipv4.conf.gw0.rp_filter", "1");
    let r = doctor(gw, &["--config", config]);
    r.expect(
        "rp_filter",
        "warn",
        "reverse-path filtering on gw0 is strict (all=0, gw0=1)",
        Some("sysctl -w net.ipv4.conf.gw0.rp_filter=2"),
    );
    sysctl(gw, "net.ipv4.conf.gw0.rp_filter", "0");
}

/// A config naming an interface this namespace does not have.
fn a_missing_interface_fails_naming_the_ones_there(lab: &Lab, gw: &str, yaml: &str) {
    let missing = write(
        &lab.dir().join("missing-if.yaml"),
        &yaml.replace("interface: gw0", "interface: nosuch0"),
    );
    let r = doctor(gw, &["--config", &missing]);
    r.expect(
        "interface",
        "fail",
        "interface nosuch0 does not exist in this network namespace",
        Some(&format!(
            "set `interface:` in {missing} to one of this namespace's interfaces: "
        )),
    );
    assert!(
        r.one("interface")["fix"].as_str().unwrap().contains("gw0"),
        "{}",
        r.stdout
    );
}

/// A NIC whose driver has no native XDP (a bridge): `native` fails, `auto` warns that it
/// falls back to generic.
fn a_bridge_fails_native_and_warns_auto(lab: &Lab, gw: &str, yaml: &str) {
    netns::run(gw, &["ip", "link", "add", "xbr0", "type", "bridge"]).unwrap();
    netns::run(gw, &["ip", "link", "set", "xbr0", "up"]).unwrap();
    let bridge = yaml.replace("interface: gw0", "interface: xbr0");
    let native = write(&lab.dir().join("bridge-native.yaml"), &bridge);
    let r = doctor(gw, &["--config", &native]);
    r.expect(
        "xdp",
        "fail",
        "driver bridge of xbr0 has no native XDP",
        Some(&format!("set `xdp_mode: auto` (or generic) in {native}")),
    );
    let auto = write(
        &lab.dir().join("bridge-auto.yaml"),
        &bridge.replace("xdp_mode: native", "xdp_mode: auto"),
    );
    let r = doctor(gw, &["--config", &auto]);
    r.expect(
        "xdp",
        "warn",
        "xdp_mode auto falls back to generic",
        Some("use a NIC whose driver has native XDP"),
    );
}

/// State of another layout pinned at the pin path (on the lab's bpffs).
fn pinned_state_of_another_layout_fails(lab: &Lab, gw: &str, yaml: &str, pin: &Path) {
    let stale = lab.pin_dir().unwrap().join("stale");
    std::fs::create_dir_all(stale.join("v1")).unwrap();
    let old = write(
        &lab.dir().join("stale.yaml"),
        &yaml.replace(
            &format!("pin_path: {}", pin.display()),
            &format!("pin_path: {}", stale.display()),
        ),
    );
    let r = doctor(gw, &["--config", &old]);
    r.expect(
        "pinned-state",
        "fail",
        "holds datapath state of layout v1",
        Some(&format!("xdplb detach --pin-path {}", stale.display())),
    );
    r.expect("bpffs", "ok", "is on a bpffs", None);
}

/// A pin path outside any bpffs (the lab directory is on the host's /tmp).
fn a_pin_path_off_bpffs_fails(lab: &Lab, gw: &str, yaml: &str, pin: &Path) {
    let plain = lab.dir().join("plain").join("xdplb");
    let off = write(
        &lab.dir().join("off-bpffs.yaml"),
        &yaml.replace(
            &format!("pin_path: {}", pin.display()),
            &format!("pin_path: {}", plain.display()),
        ),
    );
    let r = doctor(gw, &["--config", &off]);
    r.expect(
        "bpffs",
        "fail",
        "is not on a bpffs",
        Some(&format!(
            "mkdir -p {0} && mount -t bpf bpf {0}",
            plain.display()
        )),
    );
}

/// A running agent (generic mode, as the config says): what is attached is reported
/// instead of probed, and the agent answers on its socket; then the agent killed, and its
/// datapath detached.
fn a_running_then_killed_agent_is_reported(lab: &mut Lab, gw: &str, yaml: &str, pin: &Path) {
    let running = yaml.replace("xdp_mode: native", "xdp_mode: generic");
    let balancer = Balancer::start(lab, "generic", &running).expect("xdplb starts");
    let config = balancer.config.to_str().unwrap().to_owned();
    let r = doctor(gw, &["--config", &config]);
    assert!(r.failed().is_empty(), "{}", r.stdout);
    r.expect(
        "xdp",
        "ok",
        "xdplb is attached to gw0: xdplb (program id ",
        None,
    );
    r.expect("xdp", "ok", "in generic mode", None);
    r.expect("pinned-state", "ok", "state of layout v", None);
    r.expect("agent-socket", "ok", "an agent answers on", None);

    // The agent killed: its socket is left behind and its program stays attached through the
    // pinned link, with nobody managing it.
    // SAFETY: signals a process this test started.
    unsafe { libc::kill(balancer.pid as i32, libc::SIGKILL) };
    lab.wait_exit(balancer.pid, Duration::from_secs(10))
        .expect("the killed agent exits");
    let r = doctor(gw, &["--config", &config]);
    r.expect(
        "agent-socket",
        "warn",
        "the socket was left behind by an agent that stopped",
        Some("systemctl start xdplb"),
    );
    r.expect("xdp", "ok", "xdplb is attached to gw0", None);
    netns::run_shared_mounts(
        gw,
        &[
            &tool_path("xdplb").to_string_lossy(),
            "detach",
            "--pin-path",
            &pin.to_string_lossy(),
        ],
    )
    .unwrap();
    let r = doctor(gw, &["--config", &config]);
    r.expect("pinned-state", "ok", "nothing pinned under", None);
    r.expect("xdp", "ok", "driver veth supports native XDP", None);
}

#[test]
fn backend_findings_name_their_fixes() {
    let mut lab = routed_lab();
    let ns = lab.backend_ns(0).to_owned();
    let dev = lab.backend_if(0);
    let (vip4, vip6) = (lab.vip4().to_string(), lab.vip6().to_string());
    let flags = [
        "--backend",
        "--interface",
        &dev,
        "--vip",
        &vip4,
        "--vip",
        &vip6,
        "--ipip",
    ];

    // The lab sets its backends up as deploy/backend-setup.sh does: all fine.
    let r = doctor(&ns, &flags);
    assert!(r.failed().is_empty(), "{}", r.stdout);
    r.expect("interface", "ok", &format!("{dev} is up"), None);
    let on_lo = r.all("vip-on-lo");
    assert_eq!(on_lo.len(), 2, "{}", r.stdout);
    assert!(on_lo.iter().all(|f| f["status"] == "ok"), "{}", r.stdout);
    r.expect(
        "arp_ignore",
        "ok",
        &format!("arp_ignore is 1 on {dev}"),
        None,
    );
    r.expect(
        "arp_announce",
        "ok",
        &format!("arp_announce is 2 on {dev}"),
        None,
    );
    r.expect(
        "rp_filter",
        "ok",
        &format!("filtering on {dev} is off"),
        None,
    );
    r.expect("decap", "ok", "xdplb_decap (program id ", None);

    // The VIPs (and that they tunnel) can come from the balancer's config instead.
    let yaml = lab_config(&mut lab, "generic", &[(0, Member::Active)]).unwrap();
    let config = write(&lab.dir().join("doctor.yaml"), &yaml);
    let r = doctor(
        &ns,
        &["--backend", "--interface", &dev, "--config", &config],
    );
    assert!(r.failed().is_empty(), "{}", r.stdout);
    r.expect(
        "config",
        "ok",
        &format!("VIPs from {config}: {vip4}, {vip6}"),
        None,
    );
    r.expect("decap", "ok", "xdplb_decap", None);

    // The VIP missing from lo.
    netns::run(
        &ns,
        &["ip", "addr", "del", &format!("{vip4}/32"), "dev", "lo"],
    )
    .unwrap();
    let r = doctor(&ns, &flags);
    let missing: Vec<_> = r
        .all("vip-on-lo")
        .into_iter()
        .filter(|f| f["status"] == "fail")
        .collect();
    assert_eq!(missing.len(), 1, "{}", r.stdout);
    assert!(
        missing[0]["found"]
            .as_str()
            .unwrap()
            .contains(&format!("VIP {vip4} is not on lo")),
        "{}",
        missing[0]
    );
    assert_eq!(missing[0]["fix"], format!("ip addr add {vip4}/32 dev lo"));
    netns::run(
        &ns,
        &["ip", "addr", "add", &format!("{vip4}/32"), "dev", "lo"],
    )
    .unwrap();

    // A backend that answers ARP for the VIP, or announces it.
    sysctl(&ns, "net.ipv4.conf.all.arp_ignore", "0");
    let r = doctor(&ns, &flags);
    r.expect(
        "arp_ignore",
        "fail",
        &format!("arp_ignore is 0 on {dev} (all=0, {dev}=0), not 1"),
        Some("sysctl -w net.ipv4.conf.all.arp_ignore=1"),
    );
    sysctl(&ns, "net.ipv4.conf.all.arp_ignore", "1");
    sysctl(&ns, "net.ipv4.conf.all.arp_announce", "0");
    let r = doctor(&ns, &flags);
    r.expect(
        "arp_announce",
        "fail",
        "not 2",
        Some("sysctl -w net.ipv4.conf.all.arp_announce=2"),
    );
    sysctl(&ns, "net.ipv4.conf.all.arp_announce", "2");

    // Strict reverse-path filtering through `all`.
    sysctl(&ns, "net.ipv4.conf.all.rp_filter", "1");
    let r = doctor(&ns, &flags);
    r.expect(
        "rp_filter",
        "warn",
        "is strict",
        Some("sysctl -w net.ipv4.conf.all.rp_filter=2"),
    );
    sysctl(&ns, "net.ipv4.conf.all.rp_filter", "0");

    // Nothing unwraps the tunnel once `xdplb decap` is detached.
    let pins = lab.pin_dir().unwrap().join("decap");
    netns::run_shared_mounts(
        &ns,
        &[
            &tool_path("xdplb").to_string_lossy(),
            "decap",
            "--interface",
            &dev,
            "--pin-path",
            &pins.to_string_lossy(),
            "--detach",
        ],
    )
    .unwrap();
    let r = doctor(&ns, &flags);
    r.expect(
        "decap",
        "fail",
        &format!("nothing unwraps IP-in-IP on {dev}"),
        Some(&format!("xdplb decap --interface {dev}")),
    );
    // Without --ipip (l2 VIPs) decapsulation is not a backend's business.
    let r = doctor(&ns, &flags[..flags.len() - 1]);
    assert!(r.failed().is_empty(), "{}", r.stdout);
    assert!(
        r.findings.iter().all(|f| f["check"] != "decap"),
        "{}",
        r.stdout
    );
}

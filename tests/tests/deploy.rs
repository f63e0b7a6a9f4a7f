//! The shipped systemd unit passes `systemd-analyze verify` and matches the agent.
//!
//! Its capability set is the one the agent checks for (`lb_userspace::datapath::caps::AGENT`), and
//! it does not retry the agent's cannot-start exit code. (tests/tests/systemd.rs runs it under
//! systemd.)

use std::process::Command;

use xdplb_lab::lab::tool_path;

fn unit() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/xdplb.service");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn the_unit_verifies_cleanly() {
    // verify checks that ExecStart's binary exists: point it at the one built here.
    let dir = std::env::temp_dir().join(format!("xdplb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("xdplb.service");
    let xdplb = tool_path("xdplb");
    std::fs::write(
        &path,
        unit().replace("/usr/sbin/xdplb", xdplb.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_unit_grants_exactly_what_the_agent_checks_for() {
    let unit = unit();
    let set = |key: &str| -> Vec<String> {
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"));
        let mut caps: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        caps.sort();
        caps
    };
    let mut needed: Vec<String> = lb_userspace::datapath::caps::AGENT
        .iter()
        .map(|c| c.name.to_owned())
        .collect();
    needed.sort();
    assert_eq!(set("CapabilityBoundingSet="), needed);
    assert_eq!(set("AmbientCapabilities="), needed);
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening} missing");
    }
    assert!(unit.contains("ExecStartPre=/usr/sbin/xdplb check"));
    // systemd gives up at once on the exit code the agent uses for what no restart fixes.
    assert_eq!(
        set("RestartPreventExitStatus="),
        [lb_userspace::exit::CANNOT_START.to_string()]
    );
}

/// The BIRD configurations in `deploy/bird/` are what BIRD 2 accepts (`bird -p` parses a
/// config and exits), with the balancer's include pointed at a directory that exists.
#[test]
fn the_bird_examples_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bird");
    let scratch = std::env::temp_dir().join(format!("xdplb-bird-parse-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    for name in ["balancer.conf", "router.conf"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let text = text.replace("/var/lib/xdplb/bird", &scratch.display().to_string());
        let file = scratch.join(format!("{name}.main"));
        std::fs::write(&file, text).unwrap();
        let out = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&file)
            .output()
            .expect("bird2 installed (cargo xtask setup)");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&scratch).unwrap();
}

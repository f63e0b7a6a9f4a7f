//! The `xdplb` command's errors for bad input: each names the problem and exits non-zero.

use std::process::Command;

use xdplb_lab::configs::{config, lan4, vip};
use xdplb_lab::lab::tool_path;

fn xdplb(args: &[&str]) -> (bool, String) {
    let (code, out) = xdplb_code(args);
    (code == Some(0), out)
}

/// Runs `xdplb ARGS`; returns its exit code and its output (stderr, then stdout).
fn xdplb_code(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(tool_path("xdplb"))
        .args(args)
        .output()
        .expect("run xdplb");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xdplb-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A config the agent accepts, on an interface that does not exist.
fn valid() -> String {
    config("xdplbnone0")
        .vip(vip("web", "10.201.0.10", 80, "tcp").backend(lan4(1)))
        .yaml()
}

#[test]
fn missing_config_file_is_named() {
    let (ok, out) = xdplb(&["check", "--config", "/nonexistent/lb.yaml"]);
    assert!(!ok);
    assert!(
        out.contains("cannot read config /nonexistent/lb.yaml"),
        "{out}"
    );
}

#[test]
fn invalid_config_names_field_and_line() {
    let path = temp_config("bad.yaml", &valid().replace("port: 80", "port: http"));
    let (ok, out) = xdplb(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("vips[0].port") && out.contains("line 5"),
        "{out}"
    );
}

#[test]
fn check_accepts_a_valid_config() {
    let path = temp_config("good.yaml", &valid());
    let (ok, out) = xdplb(&["check", "--config", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("valid") && out.contains("VIP web"), "{out}");
    // In the config's own words, not Rust's Debug.
    assert!(out.contains("XDP") && out.contains("hash 5-tuple"), "{out}");
    for debug in [
        "FiveTuple",
        "Auto",
        "Native",
        "Generic",
        "L2",
        "Ipip",
        "{\"",
    ] {
        assert!(!out.contains(debug), "{debug} in {out}");
    }
}

#[test]
fn run_on_a_missing_interface_says_so() {
    let path = temp_config("noif.yaml", &valid());
    let (ok, out) = xdplb(&["run", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("interface xdplbnone0 does not exist"), "{out}");
}

#[test]
fn stats_without_a_running_agent_says_so() {
    let (ok, out) = xdplb(&["stats", "--pin-path", "/sys/fs/bpf/xdplb-no-such-agent"]);
    assert!(!ok);
    assert!(out.contains("is `xdplb run` running"), "{out}");
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let (code, out) = xdplb_code(&["stast"]);
    assert_eq!(code, Some(2), "usage errors exit 2: {out}");
    assert!(out.contains("unrecognized subcommand 'stast'"), "{out}");
}

/// A value the command does not take is a usage error before anything is sent to an agent:
/// an enum typo lists the accepted values, and a weight, MAC or backend address gets the
/// config's own message.
#[test]
fn a_value_the_command_does_not_take_is_a_usage_error_naming_what_it_takes() {
    for (command, expected) in [
        (
            "vip add api 203.0.113.20 443 tpc",
            "[possible values: tcp, udp]",
        ),
        (
            "vip add api 203.0.113.20 443 tcp --hash 5tuple",
            "[possible values: 5-tuple, source-ip]",
        ),
        (
            "vip add api 203.0.113.20 443 tcp --forwarding gre",
            "[possible values: l2, ipip]",
        ),
        (
            "vip add api 203.0.113.20 443 tcp --ring-size 65536",
            "is not prime",
        ),
        (
            "decap --interface eth0 --xdp-mode fast",
            "[possible values: auto, native, generic]",
        ),
        ("backend weight web 10.0.0.2 0", "out of range 1..=65535"),
        ("backend add web 127.0.0.1", "is not a host's address"),
        (
            "backend add web 10.0.0.9 --mac 01:00:5e:00:00:01",
            "zero or multicast",
        ),
    ] {
        let args: Vec<&str> = command.split_whitespace().collect();
        let (code, out) = xdplb_code(&args);
        assert_eq!(code, Some(2), "{args:?}: {out}");
        assert!(out.contains(expected), "{args:?}: {out}");
    }
}

#[test]
fn a_backend_on_the_vips_own_address_is_refused() {
    let path = temp_config(
        "selfvip.yaml",
        &valid().replace("address: 10.200.0.101", "address: 10.201.0.10"),
    );
    let (code, out) = xdplb_code(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("backends[0].address 10.201.0.10 is the VIP's own address")
            && out.contains("line 3"),
        "{out}"
    );
}

/// The API commands find the agent through the config's `api_socket`. A config that does not
/// validate is named with what is wrong, and the agent is still asked at the file's own
/// `api_socket` (the running agent keeps its last good config): read on its own from the
/// file, or the default when the file has none, never a socket the file does not mean.
#[test]
fn api_commands_with_a_broken_config_name_it_and_still_ask_its_agent() {
    let socket = std::env::temp_dir().join(format!("xdplb-cli-{}-none.sock", std::process::id()));
    let broken = valid().replace("port: 80", "port: http");
    let path = temp_config(
        "broken.yaml",
        &format!("api_socket: {}\n{broken}", socket.display()),
    );
    for cmd in [&["reload"][..], &["status"], &["backend", "list"]] {
        let mut args = cmd.to_vec();
        args.extend(["--config", path.to_str().unwrap()]);
        let (code, out) = xdplb_code(&args);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(
            out.contains("broken.yaml")
                && out.contains("does not validate")
                && out.contains("vips[0].port"),
            "{args:?}: {out}"
        );
        // Asked where the file says, and told no agent answers there.
        assert!(
            out.contains(&format!(
                "cannot reach the xdplb agent at {}",
                socket.display()
            )),
            "{args:?}: {out}"
        );
        assert!(!out.contains("/run/xdplb/xdplb.sock"), "{args:?}: {out}");
    }
    // A file that cannot be read names no socket at all.
    let missing = path.with_file_name("missing.yaml");
    let (code, out) = xdplb_code(&["status", "--config", missing.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("missing.yaml") && out.contains("--socket"),
        "{out}"
    );
}

/// A socket file nobody listens on (what `kill -9` of the agent leaves) is no agent: `check`,
/// which the systemd unit runs before every start, passes and says what it found.
#[test]
fn check_passes_beside_a_socket_left_by_a_dead_agent() {
    let dir = std::env::temp_dir().join(format!("xdplb-cli-stale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("xdplb.sock");
    let _ = std::fs::remove_file(&socket);
    // Binding and dropping a listener leaves its file behind, as a killed process does.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let path = temp_config(
        "stale.yaml",
        &format!("api_socket: {}\n{}", socket.display(), valid()),
    );
    let (code, out) = xdplb_code(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("No agent answers") && out.contains("left behind by an agent that stopped"),
        "{out}"
    );
    let (code, out) = xdplb_code(&["status", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("the agent that made it has stopped"), "{out}");
}

/// An agent that fails during start-up after binding its API socket removes it again.
#[test]
fn an_agent_that_fails_to_start_leaves_no_socket() {
    let dir = std::env::temp_dir().join(format!("xdplb-cli-nostart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("xdplb.sock");
    let _ = std::fs::remove_file(&socket);
    // `lo` exists in every namespace and has no MAC, which the agent refuses after the bind
    // (and /proc would refuse the pin directory next).
    let yaml = valid().replace("interface: xdplbnone0", "interface: lo");
    let path = temp_config(
        "nostart.yaml",
        &format!(
            "api_socket: {}\npin_path: /proc/xdplb-test\n{yaml}",
            socket.display()
        ),
    );
    let (code, out) = xdplb_code(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("interface lo has no MAC address"), "{out}");
    assert!(
        !socket.exists(),
        "the failed agent left {}",
        socket.display()
    );
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/lb.example.yaml");
    let (ok, out) = xdplb(&["check", "--config", example.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("VIP web") && out.contains("VIP dns"), "{out}");
}

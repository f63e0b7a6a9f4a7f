//! The `xdplb` command's errors for bad input: each names the problem and exits non-zero.

use std::process::Command;

use xdplb_lab::lab::tool_path;

fn xdplb(args: &[&str]) -> (bool, String) {
    let out = Command::new(tool_path("xdplb"))
        .args(args)
        .output()
        .expect("run xdplb");
    (
        out.status.success(),
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

const VALID: &str = "interface: xdplbnone0\nvips:\n  - name: web\n    address: 10.201.0.10\n    port: 80\n    protocol: tcp\n    backends:\n      - { address: 10.200.0.101, mac: '02:00:00:00:01:01' }\n";

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
    let path = temp_config("bad.yaml", &VALID.replace("port: 80", "port: http"));
    let (ok, out) = xdplb(&["check", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("vips[0].port") && out.contains("line 5"),
        "{out}"
    );
}

#[test]
fn check_accepts_a_valid_config() {
    let path = temp_config("good.yaml", VALID);
    let (ok, out) = xdplb(&["check", "--config", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("valid") && out.contains("VIP web"), "{out}");
}

#[test]
fn run_on_a_missing_interface_says_so() {
    let path = temp_config("noif.yaml", VALID);
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
    let (ok, out) = xdplb(&["stast"]);
    assert!(!ok);
    assert!(out.contains("unrecognized subcommand 'stast'"), "{out}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/lb.example.yaml");
    let (ok, out) = xdplb(&["check", "--config", example.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("VIP web") && out.contains("VIP dns"), "{out}");
}

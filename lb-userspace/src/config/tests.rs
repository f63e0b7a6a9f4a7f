//! Config parsing tests: defaults, and errors that name the field and the line.

use std::{path::PathBuf, time::Duration};

use lb_common::{DEFAULT_CONNS, MAX_RING_SIZE};

use super::*;

const GOOD: &str = "\
interface: eth0
xdp_mode: native
vips:
  - name: web
    address: 203.0.113.10
    port: 443
    protocol: tcp
    health_check: { kind: http, port: 8443, path: /healthz, interval: 500ms, timeout: 200ms, fall: 2 }
    backends:
      - address: 10.0.0.11
        mac: 02:00:00:00:00:11
        weight: 100
      - { address: 10.0.0.12, weight: 50, state: draining }
  - name: dns6
    address: 2001:db8::53
    port: 0
    protocol: udp
    hash: source-ip
    stateless: true
    ring_size: 131071
    backends:
      - address: 2001:db8:1::1
";

#[test]
fn good_config_parses_with_defaults() {
    let c = Config::from_yaml(GOOD, "good.yaml").expect("valid");
    assert_eq!(c.interface.as_str(), "eth0");
    assert_eq!(c.xdp_mode, XdpMode::Native);
    assert_eq!(c.flow_table_size.0, DEFAULT_CONNS);
    assert_eq!(c.pin_path, PathBuf::from("/sys/fs/bpf/xdplb"));
    let web = c.vips.iter().next().unwrap();
    assert_eq!(web.ring_size.0, 65537);
    let hc = web.health_check.as_ref().expect("health check");
    assert_eq!(
        (hc.kind, hc.port, hc.path.as_str()),
        (HealthCheckKind::Http, 8443, "/healthz")
    );
    assert_eq!(
        (hc.interval, hc.timeout, hc.rise, hc.fall),
        (Duration::from_millis(500), Duration::from_millis(200), 2, 2)
    );
    assert_eq!(hc.expect_status, 200);
    assert_eq!(c.metrics, Some("127.0.0.1:9842".parse().unwrap()));
    assert_eq!(c.api_socket, PathBuf::from("/run/xdplb/xdplb.sock"));
    assert!(!c.keep_attached_on_exit);
    // What the agent writes back parses to the same config.
    let again = Config::from_yaml(&serde_yaml::to_string(&c).unwrap(), "round trip").unwrap();
    assert_eq!(again, c);
    assert_eq!(web.hash, HashMode::FiveTuple);
    let b: Vec<_> = web.backends.iter().collect();
    assert_eq!(b[0].mac, Some(MacAddr([2, 0, 0, 0, 0, 0x11])));
    assert_eq!(b[1].state, BackendState::Draining);
    assert_eq!(b[1].weight.0, 50);
    let dns = c.vips.iter().nth(1).unwrap();
    assert!(dns.stateless);
    assert_eq!(dns.hash, HashMode::SourceIp);
    assert_eq!(dns.protocol, Protocol::Udp);
}

/// Replaces `from` (which must occur once) in the good config and returns the error text.
fn error_of(from: &str, to: &str) -> String {
    assert_eq!(
        GOOD.matches(from).count(),
        1,
        "fixture {from:?} must be unique"
    );
    let text = GOOD.replacen(from, to, 1);
    format!(
        "{:#}",
        Config::from_yaml(&text, "bad.yaml").expect_err("must be rejected")
    )
}

#[test]
fn bad_configs_name_the_field_and_line() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "xdp_mode: native",
            "xdp_mode: turbo",
            &["xdp_mode", "unknown variant `turbo`", "line 2"],
        ),
        (
            "address: 10.0.0.12,",
            "address: 10.0.0.300,",
            &[
                "vips[0].backends[1].address",
                "invalid IP address",
                "line 13",
            ],
        ),
        (
            "mac: 02:00:00:00:00:11",
            "mac: 02:00:00:00:11",
            &["vips[0].backends[0].mac", "invalid MAC", "line 11"],
        ),
        (
            "weight: 100",
            "weight: 0",
            &["vips[0].backends[0].weight", "out of range", "line 12"],
        ),
        (
            "ring_size: 131071",
            "ring_size: 131072",
            &["vips[1].ring_size", "131072 is not prime", "line 20"],
        ),
        (
            "protocol: udp",
            "protocol: icmp",
            &["vips[1].protocol", "unknown variant `icmp`", "line 17"],
        ),
        (
            "    hash: source-ip",
            "    hash: source-ip\n    colour: blue",
            &["vips[1]", "unknown field `colour`", "line 19"],
        ),
        (
            "port: 443",
            "port: 70000",
            &["vips[0].port", "expected u16", "line 6"],
        ),
        (
            "address: 10.0.0.12,",
            "address: 10.0.0.11,",
            &[
                "vips[0]",
                "backends[1].address 10.0.0.11 is listed twice (also backends[0])",
                "line 4",
            ],
        ),
        ("name: dns6", "name: web", &["duplicate VIP name \"web\""]),
        (
            "address: 10.0.0.12,",
            "address: 203.0.113.10,",
            &[
                "VIP \"web\": backends[1].address 203.0.113.10 is the VIP's own address",
                "line 4",
            ],
        ),
        (
            "address: 10.0.0.11",
            "address: 127.0.0.1",
            &[
                "vips[0].backends[0].address",
                "backend address 127.0.0.1 is not a host's address",
                "line 10",
            ],
        ),
        (
            "address: 2001:db8:1::1",
            "address: ff02::1",
            &[
                "vips[1].backends[0].address",
                "backend address ff02::1",
                "line 22",
            ],
        ),
        (
            "interface: eth0",
            "interface: a-very-long-interface-name",
            &["interface", "invalid interface name", "line 1"],
        ),
    ];
    for (from, to, needles) in cases {
        let err = error_of(from, to);
        for n in *needles {
            assert!(
                err.contains(n),
                "error for {to:?} should mention {n:?}, got: {err}"
            );
        }
    }
}

#[test]
fn tunnel_settings_parse_and_are_checked() {
    let with = |tunnel: &str| {
        let text = GOOD.replacen("vips:\n", &format!("tunnel:\n{tunnel}vips:\n"), 1);
        Config::from_yaml(&text, "t.yaml")
    };
    let cfg =
        with("  source_v4: 10.99.0.0/20\n  source_v6: 'fd00:1::/112'\n  mtu: 9000\n").unwrap();
    assert_eq!(cfg.tunnel.source_v4.host_mask(), 0x0fff);
    assert_eq!(cfg.tunnel.source_v6.host_mask(), 0xffff);
    assert_eq!(cfg.tunnel.mtu, Some(TunnelMtu(9000)));
    let defaults = Config::from_yaml(GOOD, "good.yaml").unwrap().tunnel;
    assert_eq!(String::from(defaults.source_v4), "172.16.0.0/16");
    assert_eq!(String::from(defaults.source_v6), "100::/96");
    assert_eq!(defaults.mtu, None);
    for (bad, words) in [
        (
            "  source_v6: 'fd00::/64'\n",
            &["tunnel.source_v6", "96..=128", "line"][..],
        ),
        (
            "  source_v4: 10.0.0.0\n",
            &["tunnel.source_v4", "ADDRESS/LENGTH"][..],
        ),
        (
            "  source_v4: 10.0.0.0/33\n",
            &["tunnel.source_v4", "0..=32"][..],
        ),
        ("  mtu: 1000\n", &["tunnel.mtu", "1320..=65535"][..]),
        ("  mtu: 1500\n  mss: 1460\n", &["unknown field `mss`"][..]),
    ] {
        let e = format!("{:#}", with(bad).expect_err(bad));
        for w in words {
            assert!(e.contains(w), "{bad:?}: {e}");
        }
    }
}

#[test]
fn ipip_and_icmp_echo_are_per_vip() {
    let text = GOOD.replacen(
        "    protocol: udp\n",
        "    protocol: udp\n    forwarding: ipip\n    icmp_echo: true\n",
        1,
    );
    let cfg = Config::from_yaml(&text, "t.yaml").unwrap();
    let dns = cfg
        .vips
        .iter()
        .find(|v| v.protocol == Protocol::Udp)
        .unwrap();
    assert_eq!((dns.forwarding, dns.icmp_echo), (Forwarding::Ipip, true));
    let e = format!(
        "{:#}",
        Config::from_yaml(
            &GOOD.replacen(
                "    protocol: udp\n",
                "    protocol: udp\n    forwarding: gre\n",
                1
            ),
            "t.yaml"
        )
        .expect_err("gre")
    );
    assert!(
        e.contains("unknown variant `gre`") && e.contains("forwarding"),
        "{e}"
    );
}

#[test]
fn missing_required_field_is_named() {
    let err = error_of("    port: 443\n", "");
    assert!(err.contains("missing field `port`"), "{err}");
}

#[test]
fn ring_must_be_large_for_backends() {
    let err = error_of("ring_size: 131071", "ring_size: 97");
    assert!(err.contains("too small"), "{err}");
}

#[test]
fn primes() {
    assert!(is_prime(65537) && is_prime(3) && is_prime(MAX_RING_SIZE));
    assert!(!is_prime(65535) && !is_prime(1) && !is_prime(0));
}

#[test]
fn a_broken_config_still_names_its_agents_socket() {
    let dir = std::env::temp_dir().join(format!("xdplb-broken-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lb.yaml");
    let socket_of = |text: &str| {
        std::fs::write(&file, text).unwrap();
        assert!(Config::load(&file).is_err(), "must not validate: {text}");
        api_socket_of_broken(&file)
    };
    // Valid YAML, invalid config: the key is read on its own.
    assert_eq!(
        socket_of("interface: eth0\napi_socket: /run/a/b.sock\nvips: [{ name: 1 }]\n"),
        Some(PathBuf::from("/run/a/b.sock"))
    );
    // Broken YAML: the top-level line, comment and quotes stripped.
    assert_eq!(
        socket_of("api_socket: \"/run/c.sock\" # ours\nvips: [\n"),
        Some(PathBuf::from("/run/c.sock"))
    );
    // No api_socket anywhere: the agent's default.
    assert_eq!(
        socket_of("interface: eth0\nvips: [\n"),
        Some(PathBuf::from("/run/xdplb/xdplb.sock"))
    );
    // A file that is not there names nothing.
    assert_eq!(api_socket_of_broken(&dir.join("missing.yaml")), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

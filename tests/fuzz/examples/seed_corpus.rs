//! Rewrites the seed corpus `tests/fuzz/corpus/<target>/`.
//!
//! Run with `cargo run -p xdplb-fuzz --example seed_corpus`. The corpus holds the example and test
//! configs, one request per API operation, and generated frames that reach different outcomes of
//! the reference model.

use std::{collections::HashMap, path::Path};

use lb_userspace::{agent::api::Request, config::Config};
use xdplb_tests::packets::{config_a, Generator};

/// Small configs that reach what the big ones do not: the empty VIP list, IPv6 tunnel
/// sources and the MTU, a virtual MAC, health checks of both kinds, all-ports VIPs.
const SMALL_CONFIGS: [(&str, &str); 3] = [
    ("empty.yaml", "interface: lo\nvips: []\n"),
    (
        "ipip6.yaml",
        "\
interface: eth1
xdp_mode: native
metrics: null
virtual_mac: '02:00:5e:00:01:07'
tunnel: { source_v4: 192.0.2.0/24, source_v6: '2001:db8:ffff::/112', mtu: 1500 }
vips:
  - name: any6
    address: 2001:db8::80
    port: 0
    protocol: udp
    forwarding: ipip
    hash: source-ip
    ring_size: 1009
    health_check: { kind: tcp, port: 53, interval: 500ms, timeout: 250ms, rise: 1, fall: 1 }
    backends:
      - { address: 2001:db8:1::1, mac: '02:00:00:00:00:21' }
      - { address: 10.1.0.2, weight: 65535, state: draining }
",
    ),
    (
        "http-check.yaml",
        "\
interface: veth0
flow_table_size: 1024
keep_attached_on_exit: false
vips:
  - name: web.v4
    address: 198.51.100.1
    port: 8080
    protocol: tcp
    stateless: true
    icmp_echo: true
    ring_size: 211
    health_check: { kind: http, port: 8080, path: /ready?x=1, expect_status: 204, interval: 1m, timeout: 3s }
    backends:
      - { address: 10.0.0.1, mac: '02-00-00-00-00-01', weight: 1 }
",
    ),
];

/// At most this many frames per path through the model: variety, and a small checked-in corpus.
const FRAMES_PER_PATH: usize = 2;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("writing {name}: {e}"));
}

fn fresh(dir: &Path) {
    // Only what this program writes: a hand-added seed would be lost on the next rewrite.
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("creating the corpus folder");
}

fn configs(dir: &Path) {
    fresh(dir);
    let example = xdplb_fuzz::fuzz_dir().join("../../deploy/lb.example.yaml");
    write(
        dir,
        "lb.example.yaml",
        &std::fs::read(&example).expect("deploy/lb.example.yaml"),
    );
    write(dir, "differential-config-a.yaml", config_a().as_bytes());
    for (name, text) in SMALL_CONFIGS {
        Config::from_yaml(text, name).expect("a seed config parses");
        write(dir, name, text.as_bytes());
    }
}

fn requests(dir: &Path) {
    fresh(dir);
    let cfg = Config::from_yaml(&config_a(), "config A").expect("config A parses");
    let vip = cfg.vips.iter().next().expect("config A has VIPs").clone();
    let backend = vip.backends.iter().next().expect("with backends").clone();
    let address = backend.address;
    let name = || vip.name.clone();
    let all = [
        ("status", Request::Status),
        ("vip_list", Request::VipList),
        ("vip_add", Request::VipAdd { vip: vip.clone() }),
        ("vip_remove", Request::VipRemove { name: name() }),
        ("backend_list", Request::BackendList { vip: None }),
        (
            "backend_list_vip",
            Request::BackendList { vip: Some(name()) },
        ),
        (
            "backend_add",
            Request::BackendAdd {
                vip: name(),
                backend,
            },
        ),
        (
            "backend_remove",
            Request::BackendRemove {
                vip: name(),
                address,
            },
        ),
        (
            "backend_drain",
            Request::BackendDrain {
                vip: name(),
                address,
            },
        ),
        (
            "backend_activate",
            Request::BackendActivate {
                vip: name(),
                address,
            },
        ),
        (
            "backend_weight",
            Request::BackendWeight {
                vip: name(),
                address,
                weight: 7,
            },
        ),
        ("reload", Request::Reload),
        (
            "plan",
            Request::Plan {
                config: SMALL_CONFIGS[1].1.to_owned(),
            },
        ),
    ];
    for (file, request) in all {
        let line = serde_json::to_string(&request).expect("a request encodes");
        write(dir, &format!("{file}.json"), line.as_bytes());
    }
}

fn frames(dir: &Path) {
    fresh(dir);
    let template = xdplb_fuzz::model_of_config_a();
    let mut generator = Generator::new(0x5eed_f022);
    // Outcome, EtherType (IPv4, IPv6, a VLAN tag, ...) and how much the frame grew (IP-in-IP
    // 4in4, 6in4, ...): frames that differ in these take different paths through the model.
    let mut kept: HashMap<(&'static str, u16, isize), usize> = HashMap::new();
    for _ in 0..20_000 {
        let (frame, _, _) = generator.packet();
        let expected = template.clone().run(&frame);
        let reason = expected.reason.name();
        let ether_type = match frame.get(12..14) {
            Some(&[a, b]) if matches!([a, b], [0x08, 0x00] | [0x86, 0xdd] | [0x81, 0x00]) => {
                u16::from_be_bytes([a, b])
            }
            // Any other EtherType is "not IP" alike.
            _ => 0,
        };
        // An ICMP "too big" answer is shorter by however much the frame was: one path.
        let grew = (expected.output.len() as isize - frame.len() as isize).max(-1);
        let n = kept.entry((reason, ether_type, grew)).or_default();
        if *n < FRAMES_PER_PATH {
            write(
                dir,
                &format!("{reason}-{ether_type:04x}-{grew}-{n}.bin"),
                &frame,
            );
            *n += 1;
        }
    }
    println!("model_packet: {} seed frames", kept.values().sum::<usize>());
}

fn main() {
    let corpus = xdplb_fuzz::fuzz_dir().join("corpus");
    configs(&corpus.join("config"));
    requests(&corpus.join("api_request"));
    frames(&corpus.join("model_packet"));
    println!("wrote {}", corpus.display());
}

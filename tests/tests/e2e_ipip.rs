//! End to end in `ipip` mode.
//!
//! Backends on another subnet behind a router, running `xdplb decap`; real TCP and UDP over IPv4
//! and IPv6 (the captured tunnels judged by tshark), pings answered by the balancer, and path-MTU
//! discovery in both directions (client → balancer tunnel, backend → narrow far link).

use serde_json::Value;
use xdplb_lab::{
    lab::{Lab, LabSpec, FAR_LINK_MTU},
    netns,
    reports::BurstReport,
    scenario::{lab_config, Balancer, Member},
};

const MODE: &str = "native";

fn routed_lab(backends: usize) -> Lab {
    Lab::new(LabSpec {
        clients: 2,
        backends,
        routed: true,
        ..Default::default()
    })
    .expect("routed lab")
}

fn global(b: &Balancer, name: &str) -> u64 {
    b.stats_json().unwrap()["global"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

fn burst(lab: &Lab, client: usize, cmd: &str, target: &str, n: u64) -> BurstReport {
    let n = n.to_string();
    let flag = if cmd == "udp" {
        "--count"
    } else {
        "--connections"
    };
    lab.run_client(
        client,
        &[cmd, "--target", target, flag, &n, "--parallel", "20"],
    )
    .unwrap_or_else(|e| panic!("lab-client {cmd} {target}: {e:#}"))
}

/// `lab-client bulk`: `upload` bytes to `target`, then `download` bytes back.
fn bulk<'a>(target: &'a str, upload: &'a str, download: &'a str) -> [&'a str; 7] {
    [
        "bulk",
        "--target",
        target,
        "--upload",
        upload,
        "--download",
        download,
    ]
}

#[test]
fn tcp_and_udp_over_both_families_reach_backends_behind_a_router() {
    let mut lab = routed_lab(3);
    let members: Vec<_> = (0..3).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(&mut lab, MODE, &members).unwrap();
    assert!(yaml.contains("forwarding: ipip"));
    let balancer = Balancer::start(&mut lab, MODE, &yaml).expect("xdplb starts");
    let port = lab.spec().port;
    let v4 = format!("{}:{port}", lab.vip4());
    let v6 = format!("[{}]:{port}", lab.vip6());
    // Capture the tunnels where they enter the backend segment, for tshark to judge.
    let pcap = lab.dir().join("tunnels.pcap");
    let router = lab.router_ns().unwrap().to_owned();
    let dump = lab
        .spawn(
            &router,
            std::path::Path::new("/usr/bin/tcpdump"),
            &[
                "-i",
                "r1",
                // Every packet to the file as it comes: no block buffering to lose on stop.
                "--immediate-mode",
                "-U",
                "-s",
                "0",
                "-w",
                &pcap.to_string_lossy(),
                "ip proto 4 or ip proto 41 or ip6 proto 4 or ip6 proto 41",
            ],
        )
        .unwrap();
    lab.wait_for_log(dump, "listening on", std::time::Duration::from_secs(10))
        .unwrap();

    for (cmd, target, n) in [
        ("burst", &v4, 300u64),
        ("burst", &v6, 150),
        ("udp", &v4, 150),
        ("udp", &v6, 100),
    ] {
        let r = burst(&lab, 0, cmd, target, n);
        assert_eq!((r.ok, r.failed), (n, 0), "{cmd} {target}: {:?}", r.errors);
        assert!(
            r.per_backend.len() >= 2,
            "{cmd} {target} spread over backends: {:?}",
            r.per_backend
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    lab.stop(dump).unwrap();
    let stacks = xdplb_lab::tshark::clean_stacks(&pcap, None).unwrap_or_else(|e| {
        // The lab's directory goes with the lab: keep the capture for whoever reads the log.
        let kept = xdplb_lab::tshark::keep_capture(&pcap, "e2e_ipip-tunnels.pcap").map_or_else(
            |k| format!("(not kept: {k:#})"),
            |p| p.display().to_string(),
        );
        panic!("tshark on the captured tunnels (capture kept at {kept}): {e:#}")
    });
    for stack in [
        "eth:ethertype:ip:ip:tcp",
        "eth:ethertype:ipv6:ipv6:tcp",
        "eth:ethertype:ip:ip:udp",
        "eth:ethertype:ipv6:ipv6:udp",
    ] {
        let n: usize = stacks
            .iter()
            .filter(|(k, _)| k.starts_with(stack))
            .map(|(_, n)| n)
            .sum();
        // tcpdump may miss some frames under load (its drops are not the balancer's); what
        // it caught must be well formed, and every tunnel kind must be there in numbers.
        assert!(
            n >= 50,
            "{n} captured frames dissected as {stack}: {stacks:?}"
        );
    }

    // The far client (behind the router) is served too.
    let far = lab
        .run_far_client_json(&["burst", "--target", &v4, "--connections", "50"])
        .unwrap();
    assert_eq!(far["failed"], 0, "far client: {far}");

    // Requests reached the backends tunnelled, and were unwrapped there.
    let forwarded = global(&balancer, "tx_forwarded");
    assert!(forwarded > 0);
    let mut decapsulated = 0;
    for i in 0..lab.backends() {
        let out = netns::run_shared_mounts(
            lab.backend_ns(i),
            &[
                &xdplb_lab::tool_path("xdplb").to_string_lossy(),
                "decap",
                "--interface",
                &lab.backend_if(i),
                "--pin-path",
                &lab.pin_dir().unwrap().join("decap").to_string_lossy(),
                "--stats",
                "--json",
            ],
        )
        .expect("xdplb decap --stats");
        let v: Value = serde_json::from_str(out.trim()).expect("decap stats JSON");
        decapsulated += v["decapsulated"].as_u64().unwrap_or(0);
    }
    assert!(
        decapsulated >= forwarded,
        "backends unwrapped {decapsulated} of {forwarded} tunnelled packets"
    );

    // Pings to the VIPs are answered by the balancer itself (`icmp_echo: true`).
    let client = lab.client_ns(0).to_owned();
    for vip in [lab.vip4().to_string(), lab.vip6().to_string()] {
        netns::run(&client, &["ping", "-c", "2", "-i", "0.2", "-W", "2", &vip])
            .unwrap_or_else(|e| panic!("ping {vip}: {e:#}"));
    }
    assert!(global(&balancer, "tx_icmp_echo") >= 4);
    balancer.stop(&mut lab).unwrap();
}

#[test]
fn path_mtu_discovery_works_through_the_balancer_in_both_directions() {
    let mut lab = routed_lab(2);
    let members: Vec<_> = (0..2).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(&mut lab, MODE, &members).unwrap();
    let balancer = Balancer::start(&mut lab, MODE, &yaml).expect("xdplb starts");
    let port = lab.spec().port;
    let client = lab.client_ns(0).to_owned();

    for (vip, tunnel_mtu) in [
        (lab.vip4().to_string(), 1500 - 20),
        (lab.vip6().to_string(), 1500 - 40),
    ] {
        let target = if vip.contains(':') {
            format!("[{vip}]:{port}")
        } else {
            format!("{vip}:{port}")
        };
        // Client → VIP with full-size segments: they do not fit the tunnel, the balancer
        // answers "too big", the client lowers its path MTU and the upload completes.
        let too_big = global(&balancer, "tx_icmp_too_big");
        let up = lab
            .run_client_json(0, &bulk(&target, "1000000", "1000"))
            .unwrap();
        assert_eq!(up["ok"], true, "upload to {vip}: {up}");
        assert!(global(&balancer, "tx_icmp_too_big") > too_big, "{vip}");
        let route = netns::run(&client, &["ip", "route", "get", &vip]).unwrap();
        assert!(
            route.contains(&format!("mtu {tunnel_mtu}")),
            "client learnt the tunnel's path MTU toward {vip}: {route}"
        );

        // Backend → far client with full-size replies: the router's narrow leg answers "too
        // big" to the VIP (the replies' source); the balancer steers that error to the
        // backend owning the connection, which lowers its path MTU; the download completes.
        let steered = global(&balancer, "tx_icmp_steered");
        let down = lab
            .run_far_client_json(&bulk(&target, "1000", "1000000"))
            .unwrap();
        assert_eq!(
            down["ok"], true,
            "download from {vip} to the far client: {down}"
        );
        assert!(
            global(&balancer, "tx_icmp_steered") > steered,
            "the router's ICMP error about {vip} went through the balancer"
        );
        let backend = down["backend"].as_str().unwrap().trim_start_matches('b');
        let i: usize = backend.parse().unwrap();
        let far = if vip.contains(':') {
            lab.far_client_addr6().to_string()
        } else {
            lab.far_client_addr4().to_string()
        };
        let route = netns::run(lab.backend_ns(i), &["ip", "route", "get", &far]).unwrap();
        assert!(
            route.contains(&format!("mtu {FAR_LINK_MTU}")),
            "backend b{i} learnt the far link's MTU toward {far}: {route}"
        );
    }
    balancer.stop(&mut lab).unwrap();
}

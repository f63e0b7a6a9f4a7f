//! Smoke test of the namespace lab itself (no balancer).
//!
//! Reachability on the segment, the traffic tools, the DSR counters and clean teardown.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use xdplb_lab::netns;
use xdplb_lab::{tool_path, BurstReport, HoldReport, Lab, LabSpec};

fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

fn small_lab() -> Lab {
    Lab::new(LabSpec {
        clients: 1,
        backends: 2,
        port: 8080,
        ..Default::default()
    })
    .expect("lab")
}

#[test]
fn lab_reaches_backends_counts_and_cleans_up() {
    let mut lab = small_lab();
    let namespaces: Vec<String> = lab.namespaces().iter().map(|s| s.to_string()).collect();
    assert_eq!(namespaces.len(), 5, "{namespaces:?}");
    assert!(namespaces.iter().all(|ns| ns_exists(ns)));
    let dir = lab.dir().to_path_buf();
    let servers: Vec<u32> = netns::pids_in(lab.backend_ns(0)).unwrap();
    assert_eq!(servers.len(), 1, "one lab-server in b0's namespace");

    let features = netns::run(lab.client_ns(0), &["ethtool", "-k", "c0"]).unwrap();
    assert!(features.contains("tx-checksumming: off"), "{features}");

    a_std_socket_in_the_client_namespace_reaches_b0(&lab);
    lab.start_counting_dsr().unwrap();
    assert_eq!(lab.dsr_counts().unwrap(), Default::default());
    tcp_and_udp_reach_the_backends_over_both_families(&lab);
    persistent_connections_stay_on_their_backend(&mut lab);
    a_backend_added_later_serves_under_its_own_name(&mut lab);
    traffic_to_the_vip_counts_as_via_the_gateway(&lab);
    a_gateway_that_proxies_counts_as_not_dsr(&lab);
    let pins = the_labs_bpffs_is_visible_from_its_namespaces(&lab);

    drop(lab);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(pins.to_str().unwrap()), "{mounts}");
    for ns in &namespaces {
        assert!(!ns_exists(ns), "{ns} left behind");
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
    for pid in servers {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "server {pid} still running"
        );
    }
}

/// `lab-client` in client 0's namespace with `args` (a command line), and its report.
fn client0(lab: &Lab, args: &str) -> BurstReport {
    let args: Vec<&str> = args.split_whitespace().collect();
    lab.run_client(0, &args).unwrap()
}

/// `address` port 8080, as a `--target`.
fn target(address: impl Into<IpAddr>) -> String {
    SocketAddr::new(address.into(), 8080).to_string()
}

/// A plain std socket from a thread inside the client's namespace.
fn a_std_socket_in_the_client_namespace_reaches_b0(lab: &Lab) {
    let b0 = SocketAddr::new(lab.backend_addr4(0).into(), 8080);
    let reply = netns::in_netns(lab.client_ns(0), move || {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect_timeout(&b0, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"hello\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line)
    })
    .unwrap();
    assert_eq!(reply, "b0\n");
}

/// TCP and UDP bursts straight to the backends' segment addresses, IPv6 from the extra
/// source addresses.
fn tcp_and_udp_reach_the_backends_over_both_families(lab: &Lab) {
    let t = target(lab.backend_addr4(0));
    let r = client0(
        lab,
        &format!("burst --target {t} --connections 50 --parallel 8"),
    );
    assert_eq!((r.ok, r.failed), (50, 0), "{r:?}");
    assert_eq!(r.per_backend.get("b0"), Some(&50), "{r:?}");

    let t6 = target(lab.backend_addr6(1));
    let bind6 = lab.client_bind6(0);
    let r = client0(
        lab,
        &format!("burst --target {t6} --connections 40 --bind {bind6}"),
    );
    assert_eq!((r.ok, r.failed), (40, 0), "{r:?}");
    assert_eq!(r.per_backend.get("b1"), Some(&40), "{r:?}");

    let bind4 = lab.client_bind4(0);
    let r = client0(lab, &format!("udp --target {t} --count 20 --bind {bind4}"));
    assert_eq!((r.ok, r.failed), (20, 0), "{r:?}");
    let r = client0(lab, &format!("udp --target {t6} --count 20"));
    assert_eq!(r.per_backend.get("b1"), Some(&20), "{r:?}");
}

/// Persistent connections, stopped with SIGINT: all opened, none broken or moved.
fn persistent_connections_stay_on_their_backend(lab: &mut Lab) {
    let c0 = lab.client_ns(0).to_string();
    let args = format!(
        "hold --target {} --connections 20 --interval-ms 50 --duration-s 30 --bind {}",
        target(lab.backend_addr4(1)),
        lab.client_bind4(0)
    );
    let args: Vec<&str> = args.split_whitespace().collect();
    let pid = lab.spawn(&c0, &tool_path("lab-client"), &args).unwrap();
    lab.wait_for_log(pid, "READY", Duration::from_secs(10))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    lab.stop(pid).unwrap();
    let h: HoldReport = xdplb_lab::reports::parse_last_json(&lab.log_of(pid)).unwrap();
    assert_eq!((h.opened, h.open_failed, h.broken), (20, 0, 0), "{h:?}");
    assert_eq!(h.backend_changed, 0, "{h:?}");
    assert!(h.rounds >= 3, "{h:?}");
    assert_eq!(h.per_backend.get("b1"), Some(&20), "{h:?}");
}

/// A backend added later is reachable and serves under its own name.
fn a_backend_added_later_serves_under_its_own_name(lab: &mut Lab) {
    let i = lab.add_backend().unwrap();
    assert_eq!(i, 2);
    let t2 = target(lab.backend_addr4(2));
    let r = client0(lab, &format!("burst --target {t2} --connections 5"));
    assert_eq!(r.per_backend.get("b2"), Some(&5), "{r:?}");
}

/// Nothing so far touched the VIP, so the counters are still zero; then client → VIP goes to
/// the gateway (which, with no balancer and no forwarding, drops it).
fn traffic_to_the_vip_counts_as_via_the_gateway(lab: &Lab) {
    assert_eq!(lab.dsr_counts().unwrap(), Default::default());
    let r = client0(
        lab,
        &format!("udp --target {} --count 3", target(lab.vip4())),
    );
    assert_eq!(r.failed, 3, "{r:?}");
    let r = client0(
        lab,
        &format!("udp --target {} --count 2", target(lab.vip6())),
    );
    assert_eq!(r.failed, 2, "{r:?}");
    let c = lab.dsr_counts().unwrap();
    assert_eq!(c.to_vip_via_gateway, 5, "{c:?}");
    assert_eq!(
        (c.from_gateway_to_vip, c.replies_via_gateway),
        (0, 0),
        "{c:?}"
    );
}

/// Imitate a balancer that proxies instead of doing DSR: the gateway itself sends to the VIP
/// via b0, and b0's replies come back to the gateway.
fn a_gateway_that_proxies_counts_as_not_dsr(lab: &Lab) {
    let gw = lab.gateway_ns().to_string();
    let vip = format!("{}/32", lab.vip4());
    let b0 = lab.backend_addr4(0).to_string();
    netns::run(&gw, &["ip", "route", "add", &vip, "via", &b0]).unwrap();
    let client = tool_path("lab-client");
    let vip = target(lab.vip4());
    let out = netns::run(
        &gw,
        &[
            client.to_str().unwrap(),
            "udp",
            "--target",
            &vip,
            "--count",
            "4",
        ],
    )
    .unwrap();
    let r: BurstReport = xdplb_lab::reports::parse_last_json(&out).unwrap();
    assert_eq!(r.per_backend.get("b0"), Some(&4), "{r:?}");
    let c = lab.dsr_counts().unwrap();
    assert_eq!(c.to_vip_via_gateway, 5, "{c:?}");
    assert_eq!(c.from_gateway_to_vip, 4, "{c:?}");
    assert_eq!(c.replies_via_gateway, 4, "{c:?}");
}

/// The lab's bpffs is visible from its namespaces (nsenter keeps our mounts); returns its path.
fn the_labs_bpffs_is_visible_from_its_namespaces(lab: &Lab) -> PathBuf {
    let pins = lab.pin_dir().unwrap();
    assert_eq!(lab.pin_dir().unwrap(), pins, "mounted once");
    let fs = netns::run_shared_mounts(
        lab.gateway_ns(),
        &["stat", "-f", "-c", "%T", pins.to_str().unwrap()],
    )
    .unwrap();
    assert_eq!(fs.trim(), "bpf_fs");
    pins
}

#[test]
fn lab_is_removed_when_a_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let lab = small_lab();
        let names: Vec<String> = lab.namespaces().iter().map(|s| s.to_string()).collect();
        tx.send((names, lab.dir().to_path_buf())).unwrap();
        panic!("deliberate panic with a lab alive");
    }));
    assert!(result.is_err());
    let (names, dir) = rx.recv().unwrap();
    for ns in &names {
        assert!(!ns_exists(ns), "{ns} left behind");
    }
    assert!(!dir.exists());
}

//! `xdplb run` mounts a bpffs where its pin path needs one, and balances.
//!
//! Started from a shell of `ip netns exec` (whose fresh `/sys` has no bpffs mounted), it must not
//! stop at "creating pin directory".

use xdplb_lab::scenario::{burst4, lab_config, small_lab, Balancer, Member};

#[test]
fn run_from_ip_netns_exec_mounts_bpffs_and_balances() {
    let mut lab = small_lab(2).expect("lab");
    let members: Vec<_> = (0..2).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(&mut lab, "generic", &members).unwrap();
    // The lab pins on its own bpffs; here the pins go where a real config puts them, under
    // /sys/fs/bpf, which `ip netns exec` replaced with a sysfs that has nothing mounted on it.
    // The mount the agent makes lives in that private mount namespace and goes with it.
    let lab_pins = lab.pin_dir().unwrap().join("xdplb");
    let unique = lab
        .dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let yaml = yaml.replace(
        &format!("pin_path: {}", lab_pins.display()),
        &format!("pin_path: /sys/fs/bpf/{unique}"),
    );
    assert!(yaml.contains("pin_path: /sys/fs/bpf/"), "fixture: {yaml}");
    let gw = lab.gateway_ns().to_owned();
    let balancer = Balancer::start_via(&mut lab, "generic", &yaml, &["ip", "netns", "exec", &gw])
        .expect("xdplb starts from ip netns exec");
    let log = lab.log_of(balancer.pid);
    assert!(
        log.contains("bpffs was not mounted at /sys/fs/bpf; mounted it there"),
        "{log}"
    );

    let r = burst4(&lab, 100).expect("lab-client burst");
    assert_eq!((r.ok, r.failed), (100, 0), "{:?}", r.errors);
    assert_eq!(r.per_backend.len(), 2, "{:?}", r.per_backend);
    let log = balancer.stop(&mut lab).unwrap();
    assert!(log.contains("detached from"), "{log}");
}

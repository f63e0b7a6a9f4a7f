//! Second chance behind ECMP: rolled backend changes, then a balancer failover, break nothing.
//!
//! The sequence `ecmp.rs` measures without it (a backend added on both balancers, then one
//! balancer's link cut; a backend drained on both, then the same), and a backend's health
//! flap followed by a failover: the balancer that takes
//! over has no flow-table entry for the moved flows, and its ring sends those whose slot
//! changed owner to the slot's new owner. With `xdplb host` on every backend, that backend
//! hands each such packet to the previous owner the balancer marked, so no connection breaks
//! or changes backend.

use serde_json::Value;
use std::time::Duration;

use xdplb_lab::{
    fleet::{fail_over, rolled_then_failed_over, Fleet},
    hosts,
    lab::{Lab, LabSpec},
    scenario::{hold_finish, hold_start_patient},
};

const MODE: &str = "generic";
const HELD: u32 = 80;
const PING_TIMEOUT_S: u64 = 10;

fn host(lab: &Lab, i: usize, args: &[&str]) -> String {
    hosts::host(lab, i, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The fleet's config with `addr` added to VIP web-tcp: what the balancers hold after the
/// roll, which the hosts get first (their peers must know the new backend's id).
fn with_backend(yaml: &str, addr: &str) -> String {
    let vip = yaml
        .find("  - name: web-tcp\n")
        .expect("web-tcp in the config");
    let list = vip + yaml[vip..].find("    backends:\n").unwrap() + "    backends:\n".len();
    let mut out = yaml.to_owned();
    out.insert_str(
        list,
        &format!("      - {{ address: '{addr}', state: active }}\n"),
    );
    out
}

/// Broken or moved connections: (through the roll, through the roll and a failover).
fn rolled(lab: &mut Lab, args: &[&str]) -> (u64, u64) {
    let (a, b) = rolled_then_failed_over(lab, args, HELD, PING_TIMEOUT_S);
    (a.broken + a.backend_changed, b.broken + b.backend_changed)
}

/// Backend `dead`'s server killed for 5 s and started again (its health check takes it out
/// of both balancers' rings and back), then a balancer failover, under held connections.
/// Returns (broken or moved on the other backends, broken on `dead`).
fn flapped_then_failed_over(lab: &mut Lab, dead: usize) -> (u64, u64) {
    let held = hold_start_patient(lab, 0, HELD, 120, PING_TIMEOUT_S).expect("hold");
    std::thread::sleep(Duration::from_secs(1));
    lab.kill_server(dead).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    lab.start_server(dead).unwrap();
    // Two good probes a second apart bring it back, then the rings are rebuilt.
    std::thread::sleep(Duration::from_secs(4));
    fail_over(lab);
    std::thread::sleep(Duration::from_secs(3));
    let r = hold_finish(lab, held).expect("hold report");
    let on_dead = r
        .broken_per_backend
        .get(&lab.backend_if(dead))
        .copied()
        .unwrap_or(0);
    (r.broken + r.backend_changed - on_dead, on_dead)
}

#[test]
fn rolled_changes_and_a_failover_break_nothing_with_the_host_program() {
    let mut lab = Lab::new(LabSpec {
        clients: 2,
        backends: 3,
        port: 8080,
        ecmp_balancers: 2,
        ..Default::default()
    })
    .expect("ECMP lab");
    let _fleet = Fleet::start(&mut lab, MODE).expect("fleet");
    // The balancers' config as they run it, before the lab has a fourth backend to list.
    let running = Fleet::config(&mut lab, 0, MODE).unwrap();
    let new = lab.add_backend().unwrap();
    let new_addr = lab.backend_addr4(new).to_string();
    let old_addr = lab.backend_addr4(0).to_string();
    let hosts = with_backend(&running, &new_addr);
    let file = lab.dir().join("hosts.yaml");
    std::fs::write(&file, &hosts).unwrap();
    let file = file.to_str().unwrap().to_owned();
    for i in 0..=new {
        let out = host(&lab, i, &["--config", &file, "--xdp-mode", "generic"]);
        assert!(out.contains("second chance:"), "b{i}: {out}");
    }

    let add = rolled(&mut lab, &["backend", "add", "web-tcp", &new_addr]);
    let drain = rolled(&mut lab, &["backend", "drain", "web-tcp", &old_addr]);
    // A health flap: its rings change on both balancers and back; flows opened meanwhile
    // may sit on a slot's interim owner.
    let (flap, flap_dead) = flapped_then_failed_over(&mut lab, 1);
    let chained: u64 = (0..=new)
        .map(|i| {
            let s: Value = serde_json::from_str(&host(&lab, i, &["--stats", "--json"])).unwrap();
            s["tx_chained"].as_u64().unwrap_or(0)
        })
        .sum();
    println!(
        "second chance behind ECMP, {HELD} held connections each: add {new_addr} rolled: {} broken or moved, then a failover: {}; drain {old_addr} rolled: {}, then a failover: {}; b1's server down 5 s, then a failover: {flap} broken or moved on the other backends ({flap_dead} on b1, whose server died); {chained} packets chained",
        add.0, add.1, drain.0, drain.1
    );
    assert_eq!(
        (add, drain, flap),
        ((0, 0), (0, 0), 0),
        "broken or moved connections"
    );
    assert!(
        chained > 0,
        "no packet was chained: the failovers moved no flow to a new owner"
    );
}

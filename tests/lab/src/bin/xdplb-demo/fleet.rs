//! `cargo xtask demo --balancers N`.
//!
//! N balancers behind a BIRD router with L4-hash ECMP; flows spread over the balancers, each flow
//! keeps its backend whichever balancer carries it, and a balancer drained with `xdplb
//! drain-balancer` leaves without breaking a connection.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use xdplb_lab::{
    fleet::{Fleet, ROUTER_TIMEOUT},
    lab::{Lab, LabSpec},
    netns,
    reports::{BurstReport, HoldReport},
    scenario::{hold_finish, hold_start_patient, Balancer},
};

use crate::{report, Args};

fn step(n: u32, text: &str) {
    println!("\n[{n}/5] {text}");
}

/// The router's route to the VIP, as `ip route` prints it.
fn router_route(lab: &Lab) -> Result<String> {
    let rt = lab.router_ns().context("not an ECMP lab")?;
    netns::run_root(&[
        "ip",
        "-n",
        rt,
        "route",
        "show",
        &format!("{}/32", lab.vip4()),
    ])
}

fn print_indented(text: &str) {
    for l in text.lines() {
        println!("        {l}");
    }
}

/// Packets each balancer forwarded since `before`.
fn carried(fleet: &Fleet, before: &[u64]) -> Result<Vec<u64>> {
    (0..before.len())
        .map(|k| Ok(fleet.forwarded(k)? - before[k]))
        .collect()
}

pub fn demo(args: &Args) -> Result<()> {
    let n = usize::from(args.balancers);
    println!("xdplb demo: {n} DSR balancers behind an ECMP router, in network namespaces");
    step(1, &format!("Building the lab: 2 clients on a front segment, a router running BIRD, {n} balancers (each with BIRD and xdplb) and 3 backends on the segment behind it."));
    let mut lab = Lab::new(LabSpec {
        ecmp_balancers: n,
        ..Default::default()
    })?;
    let port = lab.spec().port;
    let addrs: Vec<String> = (0..n).map(|k| lab.balancer_addr4(k).to_string()).collect();
    println!(
        "      VIP {}:{port}; balancers {}; the router hashes the 4-tuple (fib_multipath_hash_policy=1).",
        lab.vip4(),
        addrs.join(", ")
    );

    step(2, &format!("Starting BIRD on the router and on every balancer, and `xdplb run` ({} XDP) with the same config on each.", args.mode));
    let mut fleet = Fleet::start(&mut lab, &args.mode)?;
    for k in 0..n {
        let s = Balancer::status_on(&lab, k)?;
        println!("      balancer {k}: announces {}", s["announced"]);
    }
    println!(
        "      The router learned the VIP from each over BGP and installed one multipath route:"
    );
    print_indented(&router_route(&lab)?);

    step(
        3,
        &format!(
            "Holding {} persistent connections and opening {} short ones from each client, plus {} over IPv6.",
            args.persistent, args.connections, args.connections / 4
        ),
    );
    let before: Vec<u64> = (0..n).map(|k| fleet.forwarded(k)).collect::<Result<_>>()?;
    let per_client = (args.persistent / 2).max(1);
    let holders = [
        hold_start_patient(&mut lab, 0, per_client, 120, 10)?,
        hold_start_patient(&mut lab, 1, per_client, 120, 10)?,
    ];
    let mut total = BurstReport::default();
    for c in 0..2 {
        let r = xdplb_lab::scenario::burst4_from(&lab, c, args.connections)?;
        report(&format!("client {c} IPv4"), &r)?;
        let target6 = format!("[{}]:{port}", lab.vip6());
        let n6 = (args.connections / 4).to_string();
        let r6: BurstReport = lab.run_client(
            c,
            &[
                "burst",
                "--target",
                &target6,
                "--connections",
                &n6,
                "--parallel",
                "25",
            ],
        )?;
        report(&format!("client {c} IPv6"), &r6)?;
        for (b, k) in r.per_backend.into_iter().chain(r6.per_backend) {
            *total.per_backend.entry(b).or_default() += k;
        }
    }
    let spread = carried(&fleet, &before)?;
    println!(
        "      packets forwarded by each balancer: {spread:?}; connections by backend: {:?}",
        total.per_backend
    );
    if spread.contains(&0) {
        bail!("a balancer carried no traffic: {spread:?}");
    }

    let last = n - 1;
    step(4, &format!("Draining balancer {last} (`xdplb drain-balancer`): it withdraws the VIP, the router moves its flows to the others, and each flow keeps its backend there."));
    let out = fleet.drain(&lab, last)?;
    print_indented(out.trim_end());
    let rest: Vec<usize> = (0..last).collect();
    lab.wait_next_hops(&rest, ROUTER_TIMEOUT)?;
    println!("      the router's route now:");
    print_indented(&router_route(&lab)?);
    std::thread::sleep(Duration::from_secs(3));
    let before: Vec<u64> = (0..n).map(|k| fleet.forwarded(k)).collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_secs(2));
    let moved = carried(&fleet, &before)?;
    println!("      packets forwarded in the next 2 s, per balancer: {moved:?}");
    if moved[last] != 0 {
        bail!("the drained balancer still carries traffic: {moved:?}");
    }
    let out = fleet.resume(&lab, last)?;
    print_indented(out.trim_end());
    let all: Vec<usize> = (0..n).collect();
    lab.wait_next_hops(&all, ROUTER_TIMEOUT)?;
    println!("      resumed: the router sends to all {n} balancers again.");

    step(5, "Stopping the persistent connections.");
    let mut hold = HoldReport::default();
    for pid in holders {
        hold.absorb(hold_finish(&mut lab, pid)?);
    }
    println!(
        "      persistent: {} held ({} ping rounds), {} broken, {} moved to another backend while their balancer changed",
        hold.opened, hold.rounds, hold.broken, hold.backend_changed
    );
    if hold.broken > 0 || hold.backend_changed > 0 {
        bail!("persistent connections disturbed: {hold:?}");
    }
    for k in 0..n {
        fleet.stop_agent(&mut lab, k)?;
    }
    drop(lab);
    println!("      Lab removed: namespaces, veths, bridges, BIRD and agents.");
    Ok(())
}

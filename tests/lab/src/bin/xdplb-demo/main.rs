//! `cargo xtask demo [--forwarding ipip] [--balancers N]`.
//!
//! A namespace lab with clients, an xdplb gateway and three backends (on the segment, or tunnelled
//! to behind a router); real TCP/UDP through the VIP, per-backend counters, and proof that replies
//! bypass the balancer. With several balancers, `fleet.rs`.

mod fleet;

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use xdplb_lab::{
    lab::{Lab, LabSpec},
    reports::{BurstReport, HoldReport},
    scenario::{lab_config, Balancer, Member},
};

#[derive(Parser)]
pub(crate) struct Args {
    /// XDP mode of the balancer: native or generic.
    #[arg(long, default_value = "native")]
    pub mode: String,
    /// Short TCP connections per client (IPv4); a quarter as many again over IPv6.
    #[arg(long, default_value_t = 400)]
    pub connections: u32,
    /// Persistent connections held open (split over the clients).
    #[arg(long, default_value_t = 120)]
    pub persistent: u32,
    /// l2 (backends on the clients' segment) or ipip (backends behind a router, tunnelled to
    /// and unwrapped by `xdplb decap`).
    #[arg(long, default_value = "l2", value_parser = ["l2", "ipip"])]
    pub forwarding: String,
    /// Balancers: 1, or 2 to 8 behind an ECMP router running BIRD (l2 only).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub balancers: u8,
}

fn main() {
    let args = Args::parse();
    let result = if args.balancers > 1 {
        if args.forwarding != "l2" {
            eprintln!("xdplb-demo: --balancers works with --forwarding l2");
            std::process::exit(2);
        }
        fleet::demo(&args)
    } else {
        demo(&args)
    };
    match result {
        Ok(()) if args.balancers > 1 => println!(
            "\nRESULT: PASS — flows spread over {} balancers, and none changed backend when its balancer left or returned.",
            args.balancers
        ),
        Ok(()) => println!(
            "\nRESULT: PASS — every backend served traffic and no reply went through the balancer."
        ),
        Err(e) => {
            eprintln!("\nRESULT: FAIL — {e:#}");
            std::process::exit(1);
        }
    }
}

/// Prints one traffic result and fails the demo if anything went unanswered.
pub(crate) fn report(what: &str, r: &BurstReport) -> Result<()> {
    println!(
        "      {what}: {} ok, {} failed, by backend {:?}",
        r.ok, r.failed, r.per_backend
    );
    if r.failed > 0 {
        bail!("{what}: {} failed: {:?}", r.failed, r.errors);
    }
    Ok(())
}

/// ipip only: full-size segments both ways, which only get through if path-MTU discovery works
/// across the tunnel (client → VIP) and across the router's narrow far link (backend → far
/// client, the router's ICMP error steered by the balancer).
fn path_mtu(lab: &Lab, balancer: &Balancer) -> Result<()> {
    let target = format!("{}:{}", lab.vip4(), lab.spec().port);
    let bulk = [
        "bulk",
        "--target",
        &target,
        "--upload",
        "1000000",
        "--download",
        "1000000",
    ];
    let near = lab.run_client_json(0, &bulk)?;
    let far = lab.run_far_client_json(&bulk)?;
    let stats = balancer.stats_json()?;
    println!(
        "      1 MB each way, client 0: {} in {:.2} s; far client: {} in {:.2} s",
        if near["ok"] == true { "ok" } else { "FAILED" },
        near["seconds"].as_f64().unwrap_or(0.0),
        if far["ok"] == true { "ok" } else { "FAILED" },
        far["seconds"].as_f64().unwrap_or(0.0),
    );
    println!(
        "      path MTU: {} \"too big\" answers sent to clients, {} router ICMP errors steered to backends",
        stats["global"]["tx_icmp_too_big"], stats["global"]["tx_icmp_steered"]
    );
    if near["ok"] != true || far["ok"] != true {
        bail!("bulk transfer failed: {near} / {far}");
    }
    Ok(())
}

fn step(n: u32, text: &str) {
    println!("\n[{n}/6] {text}");
}

fn demo(args: &Args) -> Result<()> {
    println!(
        "xdplb demo: direct server return (DSR) load balancing with XDP, in network namespaces"
    );
    let ipip = args.forwarding == "ipip";
    let mut lab = build_the_lab(ipip)?;
    let balancer = start_the_balancer(&mut lab, args)?;
    let (holders, held_since) = hold_persistent_connections(&mut lab, args)?;
    open_short_connections(&lab, args)?;
    if ipip {
        path_mtu(&lab, &balancer)?;
    }
    // Let the persistent connections ping through the balancer for a while before checking them.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(held_since.elapsed()));

    show_the_counters(&lab, &balancer)?;
    check_where_the_packets_went(&mut lab, &balancer, holders, held_since)?;
    let log = balancer.stop(&mut lab)?;
    if let Some(line) = log.lines().rev().find(|l| l.contains("detached")) {
        println!("      {}", line.split_once("] ").map_or(line, |(_, r)| r));
    }
    drop(lab);
    println!("      Lab removed: namespaces, veths, bridge, processes.");
    Ok(())
}

/// Step 1: the lab, L2 or routed (`ipip`).
fn build_the_lab(ipip: bool) -> Result<Lab> {
    if ipip {
        step(1, "Building the lab: 2 clients and 1 gateway running xdplb on one segment, a router, 3 backends on a second segment running `xdplb decap`, and a far client behind a 1400-byte link.");
    } else {
        step(1, "Building the lab: 2 clients, 1 gateway running xdplb, 3 backends, all on one L2 segment (a bridge).");
    }
    let lab = Lab::new(LabSpec {
        routed: ipip,
        ..Default::default()
    })?;
    let port = lab.spec().port;
    println!(
        "      VIP {}:{port} and [{}]:{port} — routed by the clients to the gateway {}.",
        lab.vip4(),
        lab.vip6(),
        lab.gateway_addr4()
    );
    println!("      Backends {}, {}, {} hold the VIP on `lo` (ARP for it suppressed) and run a TCP/UDP server.",
        lab.backend_addr4(0), lab.backend_addr4(1), lab.backend_addr4(2));
    if ipip {
        println!(
            "      The gateway reaches them through the router {}; requests travel IP-in-IP.",
            lab.router_addr4()
        );
    }
    Ok(lab)
}

/// Step 2: `xdplb run` on the gateway, with the lines of its log that say what it balances.
fn start_the_balancer(lab: &mut Lab, args: &Args) -> Result<Balancer> {
    step(
        2,
        &format!(
            "Starting `xdplb run` on the gateway's NIC ({} XDP).",
            args.mode
        ),
    );
    let members: Vec<_> = (0..3).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(lab, &args.mode, &members)?;
    let balancer = Balancer::start(lab, &args.mode, &yaml)?;
    for line in lab
        .log_of(balancer.pid)
        .lines()
        .filter(|l| l.contains("VIP web-tcp") || l.contains("balancing on"))
    {
        println!("      {}", line.split_once("] ").map_or(line, |(_, r)| r));
    }
    lab.start_counting_dsr()?;
    Ok(balancer)
}

/// Step 3: persistent connections from both clients; returns their pids and when they opened.
fn hold_persistent_connections(lab: &mut Lab, args: &Args) -> Result<(Vec<u32>, Instant)> {
    let port = lab.spec().port;
    step(
        3,
        &format!(
            "Holding {} persistent TCP connections open through the VIP (each pings every 200 ms).",
            args.persistent
        ),
    );
    let hold_per_client = (args.persistent / 2).max(1).to_string();
    let client_bin = xdplb_lab::lab::tool_path("lab-client");
    let mut holders = Vec::new();
    for c in 0..2 {
        let target = format!("{}:{port}", lab.vip4());
        let bind = lab.client_bind4(c);
        let ns = lab.client_ns(c).to_owned();
        let pid = lab.spawn(
            &ns,
            &client_bin,
            &[
                "hold",
                "--target",
                &target,
                "--connections",
                &hold_per_client,
                "--bind",
                &bind,
                "--interval-ms",
                "200",
                "--duration-s",
                "120",
            ],
        )?;
        holders.push(pid);
    }
    for pid in &holders {
        lab.wait_for_log(*pid, "READY", Duration::from_secs(30))
            .context("persistent connections did not open")?;
    }
    let held_since = Instant::now();
    println!(
        "      {} connections established.",
        hold_per_client.parse::<u32>()? * 2
    );
    Ok((holders, held_since))
}

/// Step 4: short TCP connections over both families, and UDP.
fn open_short_connections(lab: &Lab, args: &Args) -> Result<()> {
    let port = lab.spec().port;
    step(4, &format!(
        "Opening {} short TCP connections from each client (9 source addresses, kernel-chosen ports), plus {} over IPv6.",
        args.connections,
        args.connections / 4
    ));
    let mut total = 0;
    for c in 0..2 {
        let bind = lab.client_bind4(c);
        let r: BurstReport = lab.run_client(
            c,
            &[
                "burst",
                "--target",
                &format!("{}:{port}", lab.vip4()),
                "--connections",
                &args.connections.to_string(),
                "--parallel",
                "50",
                "--bind",
                &bind,
            ],
        )?;
        report(&format!("client {c} IPv4"), &r)?;
        total += r.ok;
        let r6: BurstReport = lab.run_client(
            c,
            &[
                "burst",
                "--target",
                &format!("[{}]:{port}", lab.vip6()),
                "--connections",
                &(args.connections / 4).to_string(),
                "--parallel",
                "25",
            ],
        )?;
        report(&format!("client {c} IPv6"), &r6)?;
        total += r6.ok;
    }
    println!("      {total} short connections completed through the balancer.");
    for c in 0..2 {
        let bind = lab.client_bind4(c);
        let u: BurstReport = lab.run_client(
            c,
            &[
                "udp",
                "--target",
                &format!("{}:{port}", lab.vip4()),
                "--count",
                "200",
                "--bind",
                &bind,
            ],
        )?;
        report(&format!("client {c} UDP"), &u)?;
    }
    Ok(())
}

/// Step 5: the per-backend counters; every backend got packets.
fn show_the_counters(lab: &Lab, balancer: &Balancer) -> Result<()> {
    step(
        5,
        "Per-backend counters, as `xdplb stats --config lb.yaml` prints them from the pinned maps:",
    );
    let table = balancer.stats_cli(&[])?;
    for line in table.lines() {
        println!("      {line}");
    }
    let stats = balancer.stats_json()?;
    for i in 0..3 {
        let addr = lab.backend_addr4(i).to_string();
        if Balancer::backend_packets(&stats, "web-tcp", &addr) == 0 {
            bail!("backend {addr} received no packets");
        }
    }
    Ok(())
}

/// Step 6: the persistent connections' report and the switch port's counters: replies went
/// straight from the backends to the clients.
fn check_where_the_packets_went(
    lab: &mut Lab,
    balancer: &Balancer,
    holders: Vec<u32>,
    held_since: Instant,
) -> Result<()> {
    step(
        6,
        "Stopping the persistent connections and checking where the packets went.",
    );
    let mut hold = HoldReport::default();
    for pid in holders {
        hold.absorb(xdplb_lab::scenario::hold_finish(lab, pid)?);
    }
    println!(
        "      persistent: {} held for {:.0} s ({} ping rounds), {} broken, {} moved to another backend",
        hold.opened,
        held_since.elapsed().as_secs_f64(),
        hold.rounds,
        hold.broken,
        hold.backend_changed
    );
    let dsr = lab.dsr_counts()?;
    println!("      On the gateway's switch port (nftables counters in the bridge):");
    println!(
        "        client→VIP frames delivered to the balancer : {}",
        dsr.to_vip_via_gateway
    );
    println!(
        "        frames the balancer sent toward backends    : {}",
        dsr.from_gateway_to_vip
    );
    println!(
        "        VIP→client replies through the balancer     : {}",
        dsr.replies_via_gateway
    );
    if dsr.replies_via_gateway != 0 {
        bail!(
            "{} replies went through the balancer: not DSR",
            dsr.replies_via_gateway
        );
    }
    // Requests answered with "too big" (ipip) are not forwarded, by design.
    let answered = balancer.stats_json()?["global"]["tx_icmp_too_big"]
        .as_u64()
        .unwrap_or(0);
    if dsr.to_vip_via_gateway == 0 || dsr.from_gateway_to_vip + answered < dsr.to_vip_via_gateway {
        bail!("the balancer did not forward every request frame: {dsr:?}");
    }
    if hold.broken > 0 || hold.backend_changed > 0 {
        bail!("persistent connections disturbed: {hold:?}");
    }
    println!("      ✔ replies went straight from the backends to the clients.");
    Ok(())
}

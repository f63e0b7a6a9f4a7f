//! `cargo xtask soak [--minutes N]`.
//!
//! The agent under load, reloads and backend churn for N minutes, sampling its memory, file
//! descriptors, flow-table fill and counters; fails if anything grows without bound.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use xdplb_lab::{
    lab::Lab,
    reports::BurstReport,
    scenario::{churn, hold_finish, hold_start_for, lab_config, small_lab, Balancer, Member},
};

#[derive(Parser)]
struct Args {
    /// How long the load runs.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 30)]
    every: u64,
}

/// One look at the agent.
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    threads: u64,
    flows: u64,
    reloads_ok: u64,
    reloads_failed: u64,
}

/// A `Name:  value kB` line of /proc/PID/status.
fn status_field(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// `xdplb_map_entries{map="CONNS"}` from the agent's metrics.
fn flows(lab: &Lab) -> Result<u64> {
    let page = Balancer::metrics_text(lab)?;
    page.lines()
        .find(|l| l.starts_with("xdplb_map_entries{map=\"CONNS\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .context("no xdplb_map_entries for CONNS in the metrics")
}

fn sample(lab: &Lab, pid: u32, start: Instant) -> Result<Sample> {
    let status = Balancer::status(lab)?;
    Ok(Sample {
        at: start.elapsed(),
        rss_kib: status_field(pid, "VmRSS:")?,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count(),
        threads: status_field(pid, "Threads:")?,
        flows: flows(lab)?,
        reloads_ok: status["reloads_ok"].as_u64().unwrap_or(0),
        reloads_failed: status["reloads_failed"].as_u64().unwrap_or(0),
    })
}

fn main() {
    let args = Args::parse();
    match soak(&args) {
        Ok(table) => println!("{table}\nRESULT: PASS — nothing grew without bound."),
        Err(e) => {
            eprintln!("\nRESULT: FAIL — {e:#}");
            std::process::exit(1);
        }
    }
}

fn soak(args: &Args) -> Result<String> {
    let mut lab = small_lab(3)?;
    let members: Vec<_> = (0..3).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(&mut lab, "generic", &members)?.replacen(
        "    protocol: tcp\n    backends:",
        "    protocol: tcp\n    health_check: { kind: tcp, port: 8080, interval: 500ms, timeout: 300ms }\n    backends:",
        1,
    );
    let balancer = Balancer::start(&mut lab, "generic", &yaml)?;
    let pid = balancer.pid;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.minutes * 60.0);
    let held = hold_start_for(&mut lab, 0, 100, (args.minutes * 60.0) as u64 + 120)?;
    let stop = Arc::new(AtomicBool::new(false));
    let new = churn(&lab, 0, stop.clone());
    let changes = AtomicU64::new(0);
    let b2 = lab.backend_addr4(2).to_string();

    let mut samples = Vec::new();
    let mut next_sample = Instant::now();
    let mut round = 0u64;
    while Instant::now() < end {
        if Instant::now() >= next_sample {
            samples.push(sample(&lab, pid, start)?);
            next_sample += Duration::from_secs(args.every);
        }
        // Every round: a reload with a real change, a refused one, and a backend drained,
        // weighted and activated again.
        round += 1;
        let weighted = yaml.replacen(
            "state: active }",
            &format!("state: active, weight: {} }}", 100 + round % 2),
            1,
        );
        std::fs::write(&balancer.config, &weighted)?;
        let (ok, out) = Balancer::cli(&lab, &["reload"]);
        if !ok {
            bail!("reload {round} failed: {out}");
        }
        std::fs::write(
            &balancer.config,
            yaml.replace("protocol: tcp", "protocol: sctp"),
        )?;
        let (ok, _) = Balancer::cli(&lab, &["reload"]);
        if ok {
            bail!("an invalid config was accepted");
        }
        std::fs::write(&balancer.config, &weighted)?;
        for cmd in [
            vec!["backend", "drain", "web-tcp", &b2],
            vec!["backend", "weight", "web-tcp", &b2, "50"],
            vec!["backend", "activate", "web-tcp", &b2],
        ] {
            let (ok, out) = Balancer::cli(&lab, &cmd);
            if !ok {
                bail!("{cmd:?}: {out}");
            }
            changes.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    samples.push(sample(&lab, pid, start)?);
    stop.store(true, Ordering::Relaxed);
    let new: BurstReport = new.join().expect("churn thread");
    let held = hold_finish(&mut lab, held)?;
    balancer.stop(&mut lab)?;

    let mut t = String::from(
        "| minute | RSS (KiB) | fds | threads | flows in table | reloads ok / refused |\n|---|---|---|---|---|---|\n",
    );
    for s in &samples {
        let _ = writeln!(
            t,
            "| {:.1} | {} | {} | {} | {} | {} / {} |",
            s.at.as_secs_f64() / 60.0,
            s.rss_kib,
            s.fds,
            s.threads,
            s.flows,
            s.reloads_ok,
            s.reloads_failed
        );
    }
    let _ = writeln!(
        t,
        "\n{} CLI changes; new connections: {} ok, {} failed; held: {} opened, {} broken",
        changes.load(Ordering::Relaxed),
        new.ok,
        new.failed,
        held.opened,
        held.broken
    );
    // Growth is judged from the second sample (after start-up allocations) to the last.
    let (first, last) = (
        &samples[1.min(samples.len() - 1)],
        &samples[samples.len() - 1],
    );
    if last.rss_kib > first.rss_kib + first.rss_kib / 2 + 4096 {
        bail!(
            "memory grew from {} to {} KiB\n{t}",
            first.rss_kib,
            last.rss_kib
        );
    }
    if last.fds > first.fds + 8 || last.threads > first.threads + 4 {
        bail!("file descriptors or threads grew\n{t}");
    }
    if held.broken > 0 || new.failed > 0 {
        bail!("connections failed under churn\n{t}");
    }
    Ok(t)
}

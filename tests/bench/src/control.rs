//! Control-plane timings.
//!
//! Applying a 10,000-backend config, a CLI change until its first steered packet, and what the
//! datapath drops while the config is reloaded under load.

use std::{
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_common::Counter;
use lb_userspace::{config::Config, datapath::balancer, datapath::maps::BalancerMaps};
use serde::Serialize;

use xdplb_lab::{
    lab::{Lab, LabSpec},
    scenario::{churn, lab_config, Balancer, Member},
};

#[derive(Debug, Clone, Serialize)]
pub struct ControlResult {
    /// Seconds to apply a fresh config of `backends` backends (`vips` VIPs): ids, Maglev
    /// tables built and swapped in, map writes.
    pub apply_seconds: f64,
    pub vips: u32,
    pub backends: u32,
    /// Seconds to re-apply the same config with one backend's weight changed.
    pub reapply_seconds: f64,
    /// From starting `xdplb backend add` to the new backend's first packet (stats polled
    /// every 20 ms), and how much of that the CLI call itself took.
    pub cli_to_first_packet_seconds: f64,
    pub cli_call_seconds: f64,
    /// Reloads done under load, and what the datapath dropped meanwhile
    /// (`drop_no_backend` + `drop_malformed`), with client-side failures.
    pub reloads_under_load: u32,
    pub packets_dropped_during_reloads: u64,
    pub connections_failed_during_reloads: u64,
    pub connections_opened_during_reloads: u64,
}

fn big_config(vips: u32, per_vip: u32) -> String {
    let mut y = String::from("interface: lo\nvips:\n");
    for v in 0..vips {
        y += &format!("  - name: v{v}\n    address: 10.201.0.{}\n    port: 80\n    protocol: tcp\n    ring_size: 100003\n    backends:\n", v + 1);
        for b in 0..per_vip {
            let n = v * per_vip + b;
            y += &format!(
                "      - {{ address: 10.{}.{}.{}, mac: '02:00:00:{:02x}:{:02x}:{:02x}', weight: WEIGHT{n} }}\n",
                100 + n / 65536,
                (n / 256) % 256,
                n % 256,
                n >> 16 & 0xff,
                n >> 8 & 0xff,
                n & 0xff
            );
        }
    }
    y
}

fn apply_timing() -> Result<(f64, f64)> {
    let template = big_config(10, 1000);
    let weights = |changed: Option<u32>| {
        let mut y = template.clone();
        for n in (0..10_000u32).rev() {
            let w = if Some(n) == changed { 50 } else { 100 };
            y = y.replace(&format!("WEIGHT{n} "), &format!("{w} "));
        }
        y
    };
    let cfg = Config::from_yaml(&weights(None), "10k backends")?;
    let changed = Config::from_yaml(&weights(Some(1234)), "10k backends, one weight changed")?;
    let mut ebpf = balancer::load_balancer(1 << 16)?;
    let mut maps = BalancerMaps::from_ebpf(&mut ebpf)?;
    let mut applied = lb_userspace::datapath::reconcile::Written::default();
    let healthy = lb_userspace::model::desired::DownSet::new();
    let t = Instant::now();
    applied.apply_config(
        &cfg,
        &mut maps,
        &healthy,
        lb_userspace::config::MacAddr(xdplb_lab::frames::GW_MAC),
    )?;
    let first = t.elapsed().as_secs_f64();
    let t = Instant::now();
    applied.apply_config(
        &changed,
        &mut maps,
        &healthy,
        lb_userspace::config::MacAddr(xdplb_lab::frames::GW_MAC),
    )?;
    Ok((first, t.elapsed().as_secs_f64()))
}

fn backend_packets(b: &Balancer, addr: &str) -> u64 {
    b.stats_json()
        .map(|s| Balancer::backend_packets(&s, "web-tcp", addr))
        .unwrap_or(0)
}

fn drops(b: &Balancer) -> Result<u64> {
    let s = b.stats_json()?;
    Ok([Counter::DropNoBackend, Counter::DropMalformed]
        .iter()
        .map(|c| s["global"][c.name()].as_u64().unwrap_or(0))
        .sum())
}

/// Runs the control-plane measurements (`quick`: 10 reloads instead of 50).
pub fn run(quick: bool) -> Result<ControlResult> {
    let (apply_seconds, reapply_seconds) = apply_timing().context("apply timing")?;
    eprintln!("bench control: 10,000 backends applied in {apply_seconds:.2} s, re-applied in {reapply_seconds:.2} s");

    let mut lab = Lab::new(LabSpec {
        clients: 1,
        backends: 3,
        port: 8080,
        ..Default::default()
    })?;
    let members: Vec<_> = (0..3).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(&mut lab, "native", &members)?;
    let mut balancer = Balancer::start(&mut lab, "native", &yaml)?;
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(&lab, 0, stop.clone());
    std::thread::sleep(Duration::from_millis(500));

    // A CLI change until its first steered packet.
    let added = lab.add_backend()?;
    let addr = lab.backend_addr4(added).to_string();
    let t = Instant::now();
    let (ok, out) = Balancer::cli(&lab, &["backend", "add", "web-tcp", &addr]);
    let cli_call_seconds = t.elapsed().as_secs_f64();
    anyhow::ensure!(ok, "xdplb backend add failed: {out}");
    while backend_packets(&balancer, &addr) == 0 {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(20),
            "the added backend saw no packet in 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let cli_to_first_packet_seconds = t.elapsed().as_secs_f64();
    eprintln!("bench control: CLI add to first packet {cli_to_first_packet_seconds:.3} s (CLI call {cli_call_seconds:.3} s)");

    // Reloads under load.
    let reloads = if quick { 10 } else { 50 };
    let base = std::fs::read_to_string(&balancer.config)?;
    let b0 = lab.backend_addr4(0);
    // The agent rewrote the file after `backend add` (block style): alternate b0's weight.
    let pattern = format!("address: {b0}\n    weight: 100\n");
    anyhow::ensure!(base.contains(&pattern), "unexpected config layout:\n{base}");
    let drops_before = drops(&balancer)?;
    for i in 0..reloads {
        let w = if i % 2 == 0 { 50 } else { 100 };
        let yaml = base.replace(&pattern, &format!("address: {b0}\n    weight: {w}\n"));
        balancer.reload(&mut lab, &yaml)?;
    }
    let packets_dropped_during_reloads = drops(&balancer)? - drops_before;
    stop.store(true, Ordering::Relaxed);
    let churned = churner
        .join()
        .map_err(|_| anyhow::anyhow!("churn thread panicked"))?;
    eprintln!(
        "bench control: {reloads} reloads under load: {packets_dropped_during_reloads} packets dropped, {} of {} connections failed",
        churned.failed,
        churned.ok + churned.failed
    );
    balancer.stop(&mut lab)?;
    Ok(ControlResult {
        apply_seconds,
        vips: 10,
        backends: 10_000,
        reapply_seconds,
        cli_to_first_packet_seconds,
        cli_call_seconds,
        reloads_under_load: reloads,
        packets_dropped_during_reloads,
        connections_failed_during_reloads: churned.failed,
        connections_opened_during_reloads: churned.ok + churned.failed,
    })
}

//! `xdplb stats`: per-VIP and per-backend counters from a running agent's pinned maps.
//!
//! They are printed as a table or as JSON.

use std::{net::IpAddr, path::Path};

use anyhow::Context as _;

use crate::{
    agent::api::{HealthState, Status},
    config::Config,
    datapath::counters::{collect, StatsReport},
    model::addr::fmt_addr,
};

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The table `xdplb stats` prints.
pub fn render_table(r: &StatsReport) -> String {
    let mut out = String::new();
    for v in &r.vips {
        out += &format!(
            "VIP {} ({}:{}/{})  packets {}  bytes {}  new flows {}\n",
            v.name,
            fmt_addr(v.address),
            v.port,
            v.protocol,
            v.packets,
            human_bytes(v.bytes),
            v.new_flows
        );
        out += &format!(
            "  {:<28} {:<9} {:>12} {:>12} {:>10} {:>7} {:>9}\n",
            "backend", "state", "packets", "bytes", "new flows", "share", "flows"
        );
        for b in &v.backends {
            let share = if v.new_flows > 0 {
                100.0 * b.new_flows as f64 / v.new_flows as f64
            } else {
                0.0
            };
            out += &format!(
                "  {:<28} {:<9} {:>12} {:>12} {:>10} {:>6.1}% {:>9}\n",
                b.address.to_string(),
                b.state,
                b.packets,
                human_bytes(b.bytes),
                b.new_flows,
                share,
                b.flows
            );
        }
    }
    out += "global:";
    for (name, n) in &r.global {
        out += &format!(" {name}={n}");
    }
    out.push('\n');
    out
}

/// `xdplb stats`'s arguments.
#[derive(clap::Args)]
pub struct StatsArgs {
    /// Config of the running agent (for its pin path and VIP names).
    #[arg(long, short, default_value = super::output::DEFAULT_CONFIG, conflicts_with = "pin_path")]
    pub config: std::path::PathBuf,
    /// Read the state pinned under this pin_path instead of the config's.
    #[arg(long)]
    pub pin_path: Option<std::path::PathBuf>,
    /// One JSON object, for scripts.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Refresh like `top`, with rates, health and idle time (Ctrl-C ends).
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,
}

/// Prints the counters once, as JSON, or refreshing.
pub fn run(args: &StatsArgs) -> anyhow::Result<()> {
    let (pin, cfg) = match &args.pin_path {
        Some(dir) => (dir.clone(), None),
        None => {
            let cfg = Config::load(&args.config)?;
            (cfg.pin_path.clone(), Some(cfg))
        }
    };
    if args.watch {
        let socket = cfg.as_ref().map(|c| c.api_socket.clone());
        watch(
            &pin,
            cfg.as_ref(),
            socket.as_deref(),
            std::time::Duration::from_secs_f64(args.interval.max(0.2)),
        )
    } else {
        print(&pin, cfg.as_ref(), args.json)
    }
}

/// `xdplb stats`.
pub fn print(pin_path: &Path, cfg: Option<&Config>, json: bool) -> anyhow::Result<()> {
    let report = collect(pin_path, cfg)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding JSON")?
        );
    } else {
        print!("{}", render_table(&report));
    }
    Ok(())
}

/// `xdplb stats --watch`: redraws a table of rates (packets/s, bits/s, new flows/s) and totals
/// every `interval`, with each backend's health and idle time from the agent when it answers.
pub fn watch(
    pin_path: &Path,
    cfg: Option<&Config>,
    socket: Option<&Path>,
    interval: std::time::Duration,
) -> anyhow::Result<()> {
    let mut prev = collect(pin_path, cfg)?;
    let mut prev_at = std::time::Instant::now();
    loop {
        std::thread::sleep(interval);
        let cur = collect(pin_path, cfg)?;
        let dt = prev_at.elapsed().as_secs_f64().max(1e-3);
        prev_at = std::time::Instant::now();
        let status: Option<Status> = socket
            .and_then(|s| crate::agent::api::call(s, &crate::agent::api::Request::Status).ok());
        print!(
            "\x1b[2J\x1b[H{}",
            render_watch(&prev, &cur, dt, status.as_ref())
        );
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        prev = cur;
    }
}

fn rate(now: u64, before: u64, dt: f64) -> f64 {
    now.saturating_sub(before) as f64 / dt
}

/// One `--watch` frame: rates between two reports `dt` seconds apart.
pub fn render_watch(
    prev: &StatsReport,
    cur: &StatsReport,
    dt: f64,
    status: Option<&Status>,
) -> String {
    let mut out = format!("xdplb stats — refreshed every {dt:.1} s (Ctrl-C ends)\n\n");
    let backend_status = |vip: &str, addr: IpAddr| -> (String, String) {
        let Some(s) = status else {
            return ("?".into(), "?".into());
        };
        let v = s.vips.iter().find(|v| v.name == vip);
        let panic = v.is_some_and(|v| v.health_panic);
        let b = v
            .into_iter()
            .flat_map(|v| &v.backends)
            .find(|b| b.address == addr);
        match b {
            None => ("-".into(), "-".into()),
            Some(b) => (
                match b.health {
                    HealthState::Up => "up",
                    // Failing, but the VIP is below its panic threshold: still in the ring.
                    HealthState::Down if panic => "down (panic: in ring)",
                    HealthState::Down => "down",
                    HealthState::Unchecked => "unchecked",
                }
                .to_owned(),
                b.idle_seconds.map_or("-".into(), |s| format!("{s}s")),
            ),
        }
    };
    for v in &cur.vips {
        let p = prev
            .vips
            .iter()
            .find(|x| x.address == v.address && x.port == v.port && x.protocol == v.protocol);
        let (pp, pb, pn) = p.map_or((0, 0, 0), |p| (p.packets, p.bytes, p.new_flows));
        out += &format!(
            "VIP {} ({}:{}/{})  {:.0} pkt/s  {}  {:.0} new/s   total {} pkts, {} new flows, ~{} live flows\n",
            v.name,
            fmt_addr(v.address),
            v.port,
            v.protocol,
            rate(v.packets, pp, dt),
            human_bits(rate(v.bytes, pb, dt) * 8.0),
            rate(v.new_flows, pn, dt),
            v.packets,
            v.new_flows,
            v.flows
        );
        out += &format!(
            "  {:<28} {:<9} {:<9} {:>10} {:>12} {:>8} {:>12} {:>8} {:>8}\n",
            "backend", "state", "health", "pkt/s", "bit/s", "new/s", "packets", "flows", "idle"
        );
        for b in &v.backends {
            let pb = p.and_then(|p| p.backends.iter().find(|x| x.address == b.address));
            let (bp, bb, bn) = pb.map_or((0, 0, 0), |x| (x.packets, x.bytes, x.new_flows));
            let (health, idle) = backend_status(&v.name, b.address);
            out += &format!(
                "  {:<28} {:<9} {:<9} {:>10.0} {:>12} {:>8.0} {:>12} {:>8} {:>8}\n",
                b.address.to_string(),
                b.state,
                health,
                rate(b.packets, bp, dt),
                human_bits(rate(b.bytes, bb, dt) * 8.0),
                rate(b.new_flows, bn, dt),
                b.packets,
                b.flows,
                idle
            );
        }
        out.push('\n');
    }
    out += "datapath:";
    for (name, n) in &cur.global {
        out += &format!(" {name}={n}");
    }
    out.push('\n');
    out
}

fn human_bits(bps: f64) -> String {
    const UNITS: [&str; 5] = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
    let mut v = bps;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

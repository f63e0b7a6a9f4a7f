//! `xdplb stats`: reads the pinned maps of a running agent and prints per-VIP and per-backend counters (table or JSON).

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use anyhow::Context as _;
use lb_common::{Counter, BACKEND_ACTIVE, BACKEND_DRAINING};
use serde::Serialize;

use crate::{
    agent::{addr_from_bytes, fmt_addr, vip_key},
    config::Config,
    maps::BalancerMaps,
};

#[derive(Debug, Serialize)]
pub struct StatsReport {
    pub vips: Vec<VipStats>,
    /// Outcome counters by name (`pass_not_vip`, `tx_forwarded`, ...).
    pub global: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
pub struct VipStats {
    /// From the config when one was given, else `address:port/protocol`.
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Serialize)]
pub struct BackendStats {
    pub address: IpAddr,
    pub state: &'static str,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Collects the report from the maps pinned under `pin_path`; `cfg` only supplies names.
pub fn collect(pin_path: &Path, cfg: Option<&Config>) -> anyhow::Result<StatsReport> {
    let maps = BalancerMaps::from_pins(pin_path)?;
    let names: std::collections::HashMap<_, _> = cfg
        .map(|c| {
            c.vips
                .iter()
                .map(|v| (vip_key(v), v.name.clone()))
                .collect()
        })
        .unwrap_or_default();
    let backends = maps.backends()?;
    let mut vips = Vec::new();
    let mut entries = maps.vips()?;
    entries.sort_by_key(|(_, m)| m.vip_id);
    for (key, meta) in entries {
        let address = addr_from_bytes(key.addr, key.family);
        let port = u16::from_be_bytes(key.port);
        let protocol = if key.proto == lb_common::IPPROTO_TCP {
            "tcp"
        } else {
            "udp"
        };
        let t = maps.vip_counters(meta.vip_id)?;
        let mut list = Vec::new();
        for (id, b) in backends.iter().filter(|(_, b)| b.vip_id == meta.vip_id) {
            let c = maps.backend_counters(*id)?;
            list.push(BackendStats {
                address: addr_from_bytes(b.addr, b.family),
                state: match b.state {
                    BACKEND_ACTIVE => "active",
                    BACKEND_DRAINING => "draining",
                    _ => "unused",
                },
                packets: c.packets,
                bytes: c.bytes,
                new_flows: c.new_flows,
            });
        }
        list.sort_by_key(|b| b.address);
        vips.push(VipStats {
            name: names
                .get(&key)
                .cloned()
                .unwrap_or_else(|| format!("{}:{port}/{protocol}", fmt_addr(address))),
            address,
            port,
            protocol,
            packets: t.packets,
            bytes: t.bytes,
            new_flows: t.new_flows,
            backends: list,
        });
    }
    let counters = maps.global_counters()?;
    let global = Counter::ALL
        .iter()
        .map(|c| (c.name(), counters[*c as usize]))
        .collect();
    Ok(StatsReport { vips, global })
}

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
            "  {:<28} {:<9} {:>12} {:>12} {:>10} {:>7}\n",
            "backend", "state", "packets", "bytes", "new flows", "share"
        );
        for b in &v.backends {
            let share = if v.new_flows > 0 {
                100.0 * b.new_flows as f64 / v.new_flows as f64
            } else {
                0.0
            };
            out += &format!(
                "  {:<28} {:<9} {:>12} {:>12} {:>10} {:>6.1}%\n",
                b.address.to_string(),
                b.state,
                b.packets,
                human_bytes(b.bytes),
                b.new_flows,
                share
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

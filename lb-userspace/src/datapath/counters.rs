//! The counters of a running datapath as one report, read from its pinned maps.
//!
//! Per VIP and per backend with names and states from the config when given: what `xdplb
//! stats` prints and the metrics exporter serves.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use lb_common::{addr::ip_from_map, Counter, BACKEND_ACTIVE, BACKEND_DRAINING};
use serde::Serialize;

use crate::{
    config::Config,
    datapath::maps::BalancerMaps,
    model::{addr::fmt_addr, desired::vip_key},
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
    /// Flow-table entries of this VIP (a live-flow estimate: idle flows stay until evicted).
    pub flows: u64,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Serialize)]
pub struct BackendStats {
    pub address: IpAddr,
    pub state: &'static str,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Flow-table entries pointing at this backend (live-flow estimate).
    pub flows: u64,
}

/// Collects the report from the maps pinned under `pin_path` (the config's `pin_path`); `cfg`
/// only supplies names.
pub fn collect(pin_path: &Path, cfg: Option<&Config>) -> anyhow::Result<StatsReport> {
    let maps = BalancerMaps::from_pins(&crate::datapath::balancer::state_dir(pin_path))?;
    let names: std::collections::HashMap<_, _> = cfg
        .map(|c| {
            c.vips
                .iter()
                .map(|v| (vip_key(v), v.name.clone()))
                .collect()
        })
        .unwrap_or_default();
    let backends = maps.backends()?;
    let flows = maps.flows_by_backend();
    let mut vips = Vec::new();
    let mut entries = maps.vips()?;
    entries.sort_by_key(|(_, m)| m.vip_id);
    for (key, meta) in entries {
        let address = ip_from_map(key.addr, key.family);
        let port = u16::from_be_bytes(key.port);
        let protocol = if key.proto == lb_common::IPPROTO_TCP {
            "tcp"
        } else {
            "udp"
        };
        let own: Vec<&(u32, lb_common::Backend)> = backends
            .iter()
            .filter(|(_, b)| b.vip_id == meta.vip_id)
            .collect();
        let t = maps.vip_counters(meta.vip_id, own.iter().map(|(id, _)| *id))?;
        let mut list = Vec::new();
        for (id, b) in own {
            let c = maps.backend_counters(*id)?;
            list.push(BackendStats {
                address: ip_from_map(b.addr, b.family),
                state: match b.state {
                    BACKEND_ACTIVE => "active",
                    BACKEND_DRAINING => "draining",
                    lb_common::BACKEND_DOWN => "down",
                    _ => "unused",
                },
                packets: c.packets,
                bytes: c.bytes,
                new_flows: c.new_flows,
                flows: flows.get(id).copied().unwrap_or(0),
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
            flows: list.iter().map(|b| b.flows).sum(),
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

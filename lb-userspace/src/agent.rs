//! `xdplb run`: loads and attaches the balancer, turns the config into map contents, re-applies it on SIGHUP, and detaches cleanly on SIGINT/SIGTERM.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use lb_common::{
    Backend as MapBackend, VipKey, VipMeta, AF_INET, AF_INET6, BACKEND_ACTIVE, BACKEND_DRAINING,
    BACKEND_UNUSED, FORWARD_L2, MAX_BACKENDS, MAX_VIPS, NO_BACKEND, VIP_HASH_SOURCE_IP,
    VIP_STATELESS,
};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    config::{BackendState, Config, Forwarding, HashMode, MacAddr, Vip},
    loader, maglev,
    maps::{self, BalancerMaps},
    neigh,
};

/// 16-byte map form of an address (IPv4 in the first four bytes).
pub fn addr_bytes(addr: IpAddr) -> ([u8; 16], u8) {
    match addr {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, AF_INET)
        }
        IpAddr::V6(a) => (a.octets(), AF_INET6),
    }
}

/// The inverse of [`addr_bytes`].
pub fn addr_from_bytes(bytes: [u8; 16], family: u8) -> IpAddr {
    if family == AF_INET {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(bytes)
    }
}

pub fn vip_key(vip: &Vip) -> VipKey {
    let (addr, family) = addr_bytes(vip.address);
    VipKey {
        addr,
        port: vip.port.to_be_bytes(),
        proto: vip.protocol.number(),
        family,
    }
}

/// Identity of a VIP across reloads.
type VipIdentity = (IpAddr, u16, u8);

/// What the agent has written into the maps: stable ids for VIPs and backends, so a reload
/// keeps each flow-table entry pointing at the same backend.
#[derive(Default)]
pub struct Applied {
    vip_ids: HashMap<VipIdentity, u32>,
    backend_ids: HashMap<(u32, IpAddr), u32>,
    macs: HashMap<IpAddr, MacAddr>,
}

/// What one apply did, for the log and for tests.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub lines: Vec<String>,
    /// Backends left out of the ring because their MAC could not be resolved.
    pub unresolved: Vec<(String, IpAddr, String)>,
}

fn first_free(used: impl Iterator<Item = u32>, max: u32) -> Option<u32> {
    let used: std::collections::HashSet<u32> = used.collect();
    (0..max).find(|i| !used.contains(i))
}

impl Applied {
    /// Makes the maps match `cfg`. Order matters for packets in flight: backends are written
    /// before the rings that point at them, rings before the VIP entries that lead to them,
    /// and removed backends are cleared only after no ring points at them any more.
    pub fn apply(
        &mut self,
        cfg: &Config,
        maps: &mut BalancerMaps,
        resolve_wait: Duration,
    ) -> anyhow::Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let interface = cfg.interface.as_str();
        let mut keep_vips = HashMap::new();
        let mut keep_backends = HashMap::new();
        for vip in cfg.vips.iter() {
            let identity = (vip.address, vip.port, vip.protocol.number());
            let vip_id = match self.vip_ids.get(&identity) {
                Some(id) => *id,
                None => {
                    let id = first_free(
                        self.vip_ids
                            .values()
                            .copied()
                            .chain(keep_vips.values().copied()),
                        MAX_VIPS,
                    )
                    .context("no free VIP slot")?;
                    maps.reset_vip_counters(id)?;
                    id
                }
            };
            keep_vips.insert(identity, vip_id);
            let mut ring_members = Vec::new();
            let (mut active, mut draining) = (0, 0);
            for b in vip.backends.iter() {
                let mac = match b.mac.or_else(|| self.macs.get(&b.address).copied()) {
                    Some(mac) => mac,
                    None => match neigh::resolve(interface, b.address, resolve_wait) {
                        Ok(mac) => mac,
                        Err(e) => {
                            log::error!("VIP {}: backend {} left out: {e:#}", vip.name, b.address);
                            report
                                .unresolved
                                .push((vip.name.clone(), b.address, format!("{e:#}")));
                            continue;
                        }
                    },
                };
                self.macs.insert(b.address, mac);
                let key = (vip_id, b.address);
                let id = match self.backend_ids.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = first_free(
                            self.backend_ids
                                .values()
                                .copied()
                                .chain(keep_backends.values().copied()),
                            MAX_BACKENDS,
                        )
                        .context("no free backend slot")?;
                        maps.reset_backend_counters(id)?;
                        id
                    }
                };
                keep_backends.insert(key, id);
                let (addr, family) = addr_bytes(b.address);
                let state = match b.state {
                    BackendState::Active => BACKEND_ACTIVE,
                    BackendState::Draining => BACKEND_DRAINING,
                };
                maps.set_backend(
                    id,
                    &MapBackend {
                        addr,
                        mac: mac.0,
                        family,
                        state,
                        vip_id,
                        _pad: 0,
                    },
                )?;
                if b.state == BackendState::Active {
                    active += 1;
                    ring_members.push(maglev::Entry {
                        id,
                        identity: addr,
                        weight: b.weight.0,
                    });
                } else {
                    draining += 1;
                }
            }
            let table = maglev::build(&ring_members, vip.ring_size.0);
            maps.install_ring(vip_id, &table)?;
            let mut flags = 0;
            if vip.hash == HashMode::SourceIp {
                flags |= VIP_HASH_SOURCE_IP;
            }
            if vip.stateless {
                flags |= VIP_STATELESS;
            }
            let forwarding = match vip.forwarding {
                Forwarding::L2 => FORWARD_L2,
            };
            maps.set_vip(
                &vip_key(vip),
                &VipMeta {
                    vip_id,
                    ring_size: vip.ring_size.0,
                    flags,
                    forwarding,
                },
            )?;
            let empty = if table.iter().all(|s| *s == NO_BACKEND) {
                " — NO ACTIVE BACKEND, its packets are dropped"
            } else {
                ""
            };
            report.lines.push(format!(
                "VIP {} {}:{}/{}: {active} active, {draining} draining backend(s), ring {}{empty}",
                vip.name,
                fmt_addr(vip.address),
                vip.port,
                vip.protocol,
                vip.ring_size.0
            ));
        }
        // VIPs that left the config: unreachable first, then their backends are freed below.
        for (identity, _) in self
            .vip_ids
            .iter()
            .filter(|(k, _)| !keep_vips.contains_key(k))
        {
            let (addr, family) = addr_bytes(identity.0);
            let key = VipKey {
                addr,
                port: identity.1.to_be_bytes(),
                proto: identity.2,
                family,
            };
            maps.remove_vip(&key)?;
            report.lines.push(format!(
                "VIP {}:{} removed",
                fmt_addr(identity.0),
                identity.1
            ));
        }
        for (key, id) in self
            .backend_ids
            .iter()
            .filter(|(k, _)| !keep_backends.contains_key(k))
        {
            // Flow-table entries still naming this id are re-steered by the datapath.
            maps.set_backend(
                *id,
                &MapBackend {
                    state: BACKEND_UNUSED,
                    ..Default::default()
                },
            )?;
            report.lines.push(format!("backend {} removed", key.1));
        }
        self.vip_ids = keep_vips;
        self.backend_ids = keep_backends;
        Ok(report)
    }
}

pub fn fmt_addr(a: IpAddr) -> String {
    match a {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// Settings that are fixed while the agent runs (a reload may not change them).
fn fixed_part(cfg: &Config) -> (String, crate::config::XdpMode, PathBuf, u32) {
    (
        cfg.interface.as_str().to_owned(),
        cfg.xdp_mode,
        cfg.pin_path.clone(),
        cfg.flow_table_size.0,
    )
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(config_path)?;
    let interface = cfg.interface.as_str().to_owned();
    let ifindex =
        unsafe { libc::if_nametoindex(std::ffi::CString::new(interface.clone())?.as_ptr()) };
    if ifindex == 0 {
        bail!(
            "interface {interface} does not exist (config {})",
            config_path.display()
        );
    }
    let mut ebpf = loader::load_balancer(cfg.flow_table_size.0)?;
    // Logs only exist in debug builds of the object; keep the logger alive with the program.
    let _logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
    maps::pin_all(&ebpf, &cfg.pin_path)?;
    let pin_path = cfg.pin_path.clone();
    let result = serve(&mut ebpf, cfg, config_path).await;
    maps::unpin_all(&pin_path);
    log::info!(
        "detached from {interface}; pins under {} removed",
        pin_path.display()
    );
    result
}

async fn serve(ebpf: &mut aya::Ebpf, cfg: Config, config_path: &Path) -> anyhow::Result<()> {
    let mut maps = BalancerMaps::from_ebpf(ebpf)?;
    let mut applied = Applied::default();
    let report = applied.apply(&cfg, &mut maps, Duration::from_secs(3))?;
    for line in &report.lines {
        log::info!("{line}");
    }
    let mode = loader::attach(
        ebpf,
        lb_common::programs::BALANCER,
        cfg.interface.as_str(),
        cfg.xdp_mode,
    )?;
    log::info!(
        "balancing on {} ({mode} XDP), {} VIP(s), flow table {} entries; maps pinned under {}",
        cfg.interface.as_str(),
        cfg.vips.len(),
        cfg.flow_table_size.0,
        cfg.pin_path.display()
    );
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut current = cfg;
    loop {
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { log::info!("SIGINT: stopping"); break; }
            _ = hup.recv() => {
                match reload(&current, config_path, &mut applied, &mut maps) {
                    Ok(new) => current = new,
                    Err(e) => log::error!("reload rejected, the running config stays live: {e:#}"),
                }
            }
        }
    }
    Ok(())
}

fn reload(
    current: &Config,
    path: &Path,
    applied: &mut Applied,
    maps: &mut BalancerMaps,
) -> anyhow::Result<Config> {
    let new = Config::load(path)?;
    if fixed_part(&new) != fixed_part(current) {
        bail!("interface, xdp_mode, pin_path and flow_table_size cannot change while running; restart the agent for that");
    }
    let report = applied.apply(&new, maps, Duration::from_secs(3))?;
    log::info!("reloaded {}", path.display());
    for line in &report.lines {
        log::info!("  {line}");
    }
    Ok(new)
}

/// `xdplb check`: validates a config and prints what it describes.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    println!("{}: valid", path.display());
    println!(
        "  interface {} ({:?} XDP), flow table {} entries, pins under {}",
        cfg.interface.as_str(),
        cfg.xdp_mode,
        cfg.flow_table_size.0,
        cfg.pin_path.display()
    );
    for vip in cfg.vips.iter() {
        let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
        for b in vip.backends.iter() {
            *by_state
                .entry(if b.state == BackendState::Active {
                    "active"
                } else {
                    "draining"
                })
                .or_default() += 1;
        }
        println!(
            "  VIP {} {}:{}/{} {:?} hash={:?}{} ring {}: {:?}",
            vip.name,
            fmt_addr(vip.address),
            vip.port,
            vip.protocol,
            vip.forwarding,
            vip.hash,
            if vip.stateless { " stateless" } else { "" },
            vip.ring_size.0,
            by_state
        );
    }
    Ok(())
}

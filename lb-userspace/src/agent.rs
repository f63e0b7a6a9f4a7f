//! `xdplb run`: loads and attaches the balancer, turns the config into map contents, re-applies it on SIGHUP, and detaches cleanly on SIGINT/SIGTERM.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use lb_common::{
    AddrKey, AddrMeta, Backend as MapBackend, Settings, VipKey, VipMeta, ADDR_ANSWER_ECHO,
    BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UNUSED, FORWARD_IPIP, FORWARD_L2,
    MAX_BACKENDS, MAX_VIPS, NO_BACKEND, VIP_HASH_SOURCE_IP, VIP_STATELESS,
};
use serde_json::json;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    api::{self, Request, Response},
    config::{BackendConfig, BackendState, Config, Forwarding, HashMode, MacAddr, Vip, Weight},
    health, loader, maglev,
    maps::BalancerMaps,
    metrics, neigh, stats,
};

// The address codec lives in lb-common now; the old names stay for this file's callers.
pub use lb_common::addr::{ip_from_map as addr_from_bytes, ip_to_map as addr_bytes};

pub fn vip_key(vip: &Vip) -> VipKey {
    let (addr, family) = addr_bytes(vip.address);
    VipKey {
        addr,
        port: vip.port.to_be_bytes(),
        proto: vip.protocol.number(),
        family,
    }
}

/// Whose MAC a backend's frames are addressed to: the backend itself (`l2`, same segment)
/// or the next hop toward it (`ipip`, by the routing table).
fn frame_target(interface: &str, forwarding: Forwarding, addr: IpAddr) -> anyhow::Result<IpAddr> {
    match forwarding {
        Forwarding::L2 => Ok(addr),
        Forwarding::Ipip => neigh::next_hop(interface, addr),
    }
}

/// The `SETTINGS` value for `cfg`: tunnel source prefixes and the MTU (the interface's
/// unless the config names one).
fn settings(cfg: &Config) -> anyhow::Result<Settings> {
    let mut s = Settings::default();
    if let IpAddr::V4(a) = cfg.tunnel.source_v4.addr {
        s.tunnel_src4 = a.octets();
        s.tunnel_src4_host = cfg.tunnel.source_v4.host_mask().to_be_bytes();
    }
    if let IpAddr::V6(a) = cfg.tunnel.source_v6.addr {
        s.tunnel_src6 = a.octets();
        s.tunnel_src6_host = cfg.tunnel.source_v6.host_mask().to_be_bytes();
    }
    let tunnels = cfg.vips.iter().any(|v| v.forwarding == Forwarding::Ipip);
    s.mtu = match (cfg.tunnel.mtu, neigh::interface_mtu(cfg.interface.as_str())) {
        (Some(m), _) => m.0,
        (None, Ok(mtu)) => mtu,
        // Only ipip VIPs use it: an L2-only config may be applied without the interface
        // (`xdplb replay`, tests).
        (None, Err(_)) if !tunnels => 0,
        (None, Err(e)) => {
            return Err(
                e.context("reading the interface MTU for tunnel.mtu (or set it in the config)")
            )
        }
    };
    Ok(s)
}

/// Identity of a VIP across reloads.
type VipIdentity = (IpAddr, u16, u8);

/// Backends held out of service by failed health checks: (VIP name, backend address).
pub type DownSet = HashSet<(String, IpAddr)>;

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

/// The id `key` had before this apply (`old`), or else the lowest id below `max` that is
/// neither held before (ids of removed entries are freed only after the apply) nor already
/// given out in it (`new`). The flag is true for a fresh id, whose counters need resetting.
fn stable_id<K: std::hash::Hash + Eq>(
    old: &HashMap<K, u32>,
    new: &HashMap<K, u32>,
    key: &K,
    max: u32,
    what: &str,
) -> anyhow::Result<(u32, bool)> {
    if let Some(id) = old.get(key) {
        return Ok((*id, false));
    }
    let used: HashSet<u32> = old.values().chain(new.values()).copied().collect();
    let id = (0..max)
        .find(|i| !used.contains(i))
        .with_context(|| format!("no free {what} slot (at most {max})"))?;
    Ok((id, true))
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
        self.apply_with_health(cfg, maps, resolve_wait, &DownSet::new())
    }

    /// Rebuilds the id tables from maps a previous agent left pinned, so this agent keeps
    /// every VIP and backend at the id its flows and counters already use.
    pub fn adopt(maps: &BalancerMaps) -> anyhow::Result<Applied> {
        let mut a = Applied::default();
        for (key, meta) in maps.vips()? {
            let addr = addr_from_bytes(key.addr, key.family);
            a.vip_ids
                .insert((addr, u16::from_be_bytes(key.port), key.proto), meta.vip_id);
        }
        for (id, b) in maps.backends()? {
            let addr = addr_from_bytes(b.addr, b.family);
            a.backend_ids.insert((b.vip_id, addr), id);
            a.macs.insert(addr, MacAddr(b.mac));
        }
        Ok(a)
    }

    /// Backend address of a backend id this agent manages.
    fn address_of(&self, id: u32) -> Option<IpAddr> {
        self.backend_ids
            .iter()
            .find(|(_, v)| **v == id)
            .map(|((_, addr), _)| *addr)
    }

    /// `apply`, with the backends in `down` out of the rings and marked down in the datapath.
    pub fn apply_with_health(
        &mut self,
        cfg: &Config,
        maps: &mut BalancerMaps,
        resolve_wait: Duration,
        down: &DownSet,
    ) -> anyhow::Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let interface = cfg.interface.as_str();
        let mut keep_vips = HashMap::new();
        let mut keep_backends = HashMap::new();
        for vip in cfg.vips.iter() {
            let identity = (vip.address, vip.port, vip.protocol.number());
            let (vip_id, fresh) = stable_id(&self.vip_ids, &keep_vips, &identity, MAX_VIPS, "VIP")?;
            if fresh {
                maps.reset_vip_counters(vip_id)?;
            }
            keep_vips.insert(identity, vip_id);
            let mut ring_members = Vec::new();
            let (mut active, mut draining, mut failed) = (0, 0, 0);
            for b in vip.backends.iter() {
                let mac = match b.mac.or_else(|| self.macs.get(&b.address).copied()) {
                    Some(mac) => mac,
                    None => match frame_target(interface, vip.forwarding, b.address)
                        .and_then(|hop| neigh::resolve(interface, hop, resolve_wait))
                    {
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
                let (id, fresh) = stable_id(
                    &self.backend_ids,
                    &keep_backends,
                    &key,
                    MAX_BACKENDS,
                    "backend",
                )?;
                if fresh {
                    maps.reset_backend_counters(id)?;
                }
                keep_backends.insert(key, id);
                let (addr, family) = addr_bytes(b.address);
                let is_down = down.contains(&(vip.name.clone(), b.address));
                let state = match (is_down, b.state) {
                    (true, _) => BACKEND_DOWN,
                    (false, BackendState::Active) => BACKEND_ACTIVE,
                    (false, BackendState::Draining) => BACKEND_DRAINING,
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
                match state {
                    BACKEND_ACTIVE => {
                        active += 1;
                        ring_members.push(maglev::Entry {
                            id,
                            identity: addr,
                            weight: b.weight.0,
                        });
                    }
                    BACKEND_DRAINING => draining += 1,
                    _ => failed += 1,
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
                Forwarding::Ipip => FORWARD_IPIP,
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
            let failed = if failed > 0 {
                format!(", {failed} down (health check)")
            } else {
                String::new()
            };
            report.lines.push(format!(
                "VIP {} {}:{}/{}: {active} active, {draining} draining backend(s){failed}, ring {}{empty}",
                vip.name,
                fmt_addr(vip.address),
                vip.port,
                vip.protocol,
                vip.ring_size.0
            ));
        }
        self.apply_addresses(cfg, maps)?;
        maps.set_settings(&settings(cfg)?)?;
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

    /// Makes `VIP_ADDRS` hold exactly the addresses that have VIPs, each with the union of
    /// their per-address flags.
    fn apply_addresses(&self, cfg: &Config, maps: &mut BalancerMaps) -> anyhow::Result<()> {
        let mut want: HashMap<AddrKey, AddrMeta> = HashMap::new();
        for vip in cfg.vips.iter() {
            let (addr, family) = addr_bytes(vip.address);
            let key = AddrKey {
                addr,
                family,
                _pad: [0; 3],
            };
            let meta = want.entry(key).or_default();
            if vip.icmp_echo {
                meta.flags |= ADDR_ANSWER_ECHO;
            }
        }
        for (key, meta) in &want {
            maps.set_vip_addr(key, meta)?;
        }
        for (key, _) in maps.vip_addrs()? {
            if !want.contains_key(&key) {
                maps.remove_vip_addr(&key)?;
            }
        }
        Ok(())
    }

    /// Re-reads the route and neighbour entry of every backend whose MAC the agent resolved
    /// (not the ones with `mac:` in the config) and rewrites the backends whose frames must now
    /// go to another MAC: a next hop that failed over, a backend that moved. Stale or missing
    /// entries are probed, so the kernel re-confirms them by the next call; until then the last
    /// known MAC stays in use.
    pub fn refresh_macs(
        &mut self,
        cfg: &Config,
        maps: &mut BalancerMaps,
    ) -> anyhow::Result<Vec<String>> {
        let interface = cfg.interface.as_str();
        let mut lines = Vec::new();
        let mut checked: HashMap<IpAddr, Option<MacAddr>> = HashMap::new();
        for vip in cfg.vips.iter() {
            let identity = (vip.address, vip.port, vip.protocol.number());
            let Some(vip_id) = self.vip_ids.get(&identity).copied() else {
                continue;
            };
            for b in vip.backends.iter().filter(|b| b.mac.is_none()) {
                let Some(id) = self.backend_ids.get(&(vip_id, b.address)).copied() else {
                    continue;
                };
                let fresh = match checked.get(&b.address) {
                    Some(m) => *m,
                    None => {
                        let m = match frame_target(interface, vip.forwarding, b.address) {
                            Ok(hop) => match neigh::lookup_state(interface, hop) {
                                Ok(Some((mac, confirmed))) => {
                                    if !confirmed {
                                        neigh::probe(hop);
                                    }
                                    Some(mac)
                                }
                                Ok(None) => {
                                    neigh::probe(hop);
                                    None
                                }
                                Err(_) => None,
                            },
                            Err(e) => {
                                log::warn!("backend {}: {e:#}", b.address);
                                None
                            }
                        };
                        checked.insert(b.address, m);
                        m
                    }
                };
                let Some(mac) = fresh else { continue };
                let mut entry = maps.backend(id)?;
                if entry.mac != mac.0 {
                    lines.push(format!(
                        "backend {} of VIP {}: frames now go to {mac} (was {})",
                        b.address,
                        vip.name,
                        MacAddr(entry.mac)
                    ));
                    entry.mac = mac.0;
                    maps.set_backend(id, &entry)?;
                }
                self.macs.insert(b.address, mac);
            }
        }
        Ok(lines)
    }

    /// What applying `new` would change against the running state (`current` and the maps):
    /// VIPs and backends added, removed or changed, and per VIP the share of new flows whose
    /// backend would differ. Established flows keep theirs through the flow table.
    pub fn plan(
        &self,
        current: &Config,
        new: &Config,
        maps: &BalancerMaps,
        down: &DownSet,
    ) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        let old_vips: HashMap<_, _> = current.vips.iter().map(|v| (v.name.clone(), v)).collect();
        let new_names: HashSet<_> = new.vips.iter().map(|v| v.name.clone()).collect();
        for v in current.vips.iter().filter(|v| !new_names.contains(&v.name)) {
            lines.push(format!("VIP {} removed: all its flows stop", v.name));
        }
        for vip in new.vips.iter() {
            let Some(old) = old_vips.get(&vip.name) else {
                lines.push(format!(
                    "VIP {} added ({} backends)",
                    vip.name,
                    vip.backends.len()
                ));
                continue;
            };
            let old_b: HashMap<_, _> = old.backends.iter().map(|b| (b.address, b)).collect();
            let new_b: HashMap<_, _> = vip.backends.iter().map(|b| (b.address, b)).collect();
            for b in vip.backends.iter() {
                match old_b.get(&b.address) {
                    None => lines.push(format!("VIP {}: backend {} added", vip.name, b.address)),
                    Some(o) if o.state != b.state => lines.push(format!(
                        "VIP {}: backend {} {:?} -> {:?}",
                        vip.name, b.address, o.state, b.state
                    )),
                    Some(o) if o.weight != b.weight => lines.push(format!(
                        "VIP {}: backend {} weight {} -> {}",
                        vip.name, b.address, o.weight.0, b.weight.0
                    )),
                    _ => {}
                }
            }
            for b in old
                .backends
                .iter()
                .filter(|b| !new_b.contains_key(&b.address))
            {
                lines.push(format!(
                    "VIP {}: backend {} removed (its flows re-steer)",
                    vip.name, b.address
                ));
            }
            // Old ring as the datapath has it, by backend address.
            let identity = (old.address, old.port, old.protocol.number());
            let Some(vip_id) = self.vip_ids.get(&identity) else {
                continue;
            };
            let old_ring: Vec<Option<IpAddr>> = maps
                .ring(*vip_id)?
                .into_iter()
                .map(|id| self.address_of(id))
                .collect();
            // New ring, computed the way apply would.
            let members: Vec<maglev::Entry> = vip
                .backends
                .iter()
                .filter(|b| {
                    b.state == BackendState::Active
                        && !down.contains(&(vip.name.clone(), b.address))
                })
                .enumerate()
                .map(|(i, b)| maglev::Entry {
                    id: i as u32,
                    identity: addr_bytes(b.address).0,
                    weight: b.weight.0,
                })
                .collect();
            let addrs: Vec<IpAddr> = vip
                .backends
                .iter()
                .filter(|b| {
                    b.state == BackendState::Active
                        && !down.contains(&(vip.name.clone(), b.address))
                })
                .map(|b| b.address)
                .collect();
            let new_ring: Vec<Option<IpAddr>> = maglev::build(&members, vip.ring_size.0)
                .into_iter()
                .map(|i| addrs.get(i as usize).copied())
                .collect();
            let moved = moved_share(&old_ring, &new_ring);
            lines.push(format!(
                "VIP {}: {:.1}% of new flows would go to another backend",
                vip.name,
                moved * 100.0
            ));
        }
        Ok(lines)
    }
}

/// Share of flow hashes whose slot names another backend in `new` than in `old`; rings may
/// differ in size, so hashes are sampled rather than slots compared.
fn moved_share(old: &[Option<IpAddr>], new: &[Option<IpAddr>]) -> f64 {
    if old.is_empty() || new.is_empty() {
        return 1.0;
    }
    const SAMPLES: u32 = 200_000;
    let moved = (0..SAMPLES)
        .filter(|i| {
            let h = lb_common::hash_words(&[*i], 0x9e37_79b9);
            old[(h % old.len() as u32) as usize] != new[(h % new.len() as u32) as usize]
        })
        .count();
    moved as f64 / f64::from(SAMPLES)
}

pub fn fmt_addr(a: IpAddr) -> String {
    match a {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// Settings that are fixed while the agent runs (a reload may not change them).
fn fixed_part(cfg: &Config) -> impl PartialEq + std::fmt::Debug {
    (
        cfg.interface.as_str().to_owned(),
        cfg.xdp_mode,
        cfg.pin_path.clone(),
        cfg.flow_table_size.0,
        cfg.api_socket.clone(),
        cfg.metrics,
    )
}

/// State shared with the metrics exporter.
#[derive(Default)]
struct Shared {
    cfg: Mutex<Option<Config>>,
    health: Mutex<HashMap<(String, IpAddr), bool>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    transitions_down: AtomicU64,
    transitions_up: AtomicU64,
}

/// The running agent: owns the maps and the applied state; everything that changes them
/// (signals, API calls, health transitions, the config file) goes through its one loop.
struct Agent {
    cfg: Config,
    config_path: PathBuf,
    /// The config file text last applied or written by us (to tell our writes from an edit).
    file_text: String,
    /// File text we already refused, so a broken file is reported once, not every second.
    rejected_text: Option<String>,
    /// A changed file text seen once, applied when the next read agrees.
    pending_text: Option<String>,
    maps: BalancerMaps,
    applied: Applied,
    down: DownSet,
    monitor: health::Monitor,
    shared: Arc<Shared>,
    /// Per backend id: packet count last seen and when it last changed.
    activity: HashMap<u32, (u64, Instant)>,
    attach_note: String,
    adopted: bool,
    ticks: u64,
}

const RESOLVE_WAIT: Duration = Duration::from_secs(3);
/// Seconds (ticks) between re-reads of backends' next hops and neighbour entries.
const NEIGHBOUR_REFRESH_TICKS: u64 = 5;

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let file_text = std::fs::read_to_string(config_path)
        .with_context(|| format!("cannot read config {}", config_path.display()))?;
    let cfg = Config::from_yaml(&file_text, &config_path.display().to_string())?;
    let interface = cfg.interface.as_str().to_owned();
    let ifindex =
        unsafe { libc::if_nametoindex(std::ffi::CString::new(interface.clone())?.as_ptr()) };
    if ifindex == 0 {
        bail!(
            "interface {interface} does not exist (config {})",
            config_path.display()
        );
    }
    let listener = api::bind(&cfg.api_socket)?;
    let loader::Loaded { mut ebpf, adopted } =
        loader::load_pinned(&cfg.pin_path, cfg.flow_table_size.0)?;
    // Logs only exist in debug builds of the object; keep the logger alive with the program.
    let _logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
    let maps = BalancerMaps::from_ebpf(&mut ebpf)?;
    let applied = if adopted {
        log::info!(
            "adopting the datapath state pinned under {}",
            loader::state_dir(&cfg.pin_path).display()
        );
        Applied::adopt(&maps)?
    } else {
        Applied::default()
    };
    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    let mut agent = Agent {
        cfg: cfg.clone(),
        config_path: config_path.to_path_buf(),
        file_text,
        rejected_text: None,
        pending_text: None,
        maps,
        applied,
        down: DownSet::new(),
        monitor: health::Monitor::new(health_tx),
        shared: shared.clone(),
        activity: HashMap::new(),
        attach_note: String::new(),
        adopted,
        ticks: 0,
    };
    let report =
        agent
            .applied
            .apply_with_health(&cfg, &mut agent.maps, RESOLVE_WAIT, &agent.down)?;
    for line in &report.lines {
        log::info!("{line}");
    }
    agent.sync_health_targets();
    *shared.cfg.lock().unwrap() = Some(cfg.clone());
    agent.attach_note = loader::attach_pinned(&mut ebpf, &cfg.pin_path, &interface, cfg.xdp_mode)?;
    log::info!(
        "balancing on {interface}: {}; {} VIP(s), flow table {} entries; state pinned under {}; API on {}",
        agent.attach_note,
        cfg.vips.len(),
        cfg.flow_table_size.0,
        loader::state_dir(&cfg.pin_path).display(),
        cfg.api_socket.display()
    );
    let (call_tx, mut call_rx) = mpsc::channel::<api::Call>(64);
    let api_task = tokio::spawn(api::serve(listener, call_tx));
    let metrics_task = cfg.metrics.map(|addr| {
        let shared = shared.clone();
        let pin_path = cfg.pin_path.clone();
        let snapshot: Arc<dyn Fn() -> anyhow::Result<metrics::Snapshot> + Send + Sync> =
            Arc::new(move || metrics_snapshot(&shared, &pin_path));
        log::info!("Prometheus metrics on http://{addr}/metrics");
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, snapshot).await {
                log::error!("metrics exporter stopped: {e:#}");
            }
        })
    });
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { log::info!("SIGINT: stopping"); break; }
            _ = hup.recv() => { let _ = agent.reload("SIGHUP"); }
            Some((req, reply)) = call_rx.recv() => {
                let response = Response::from_result(agent.handle(req));
                let _ = reply.send(response);
            }
            Some(t) = health_rx.recv() => agent.on_health(t),
            _ = tick.tick() => {
                agent.watch_file();
                agent.track_activity();
                agent.ticks += 1;
                if agent.ticks.is_multiple_of(NEIGHBOUR_REFRESH_TICKS) {
                    agent.refresh_neighbours();
                }
            }
        }
    }
    api_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&cfg.api_socket);
    if agent.cfg.keep_attached_on_exit {
        log::info!(
            "leaving the datapath attached to {interface} with its last state (keep_attached_on_exit); `xdplb detach` removes it"
        );
    } else {
        loader::detach(&cfg.pin_path)?;
        drop(ebpf);
        log::info!(
            "detached from {interface}; pinned state under {} removed",
            cfg.pin_path.display()
        );
    }
    Ok(())
}

fn metrics_snapshot(shared: &Shared, pin_path: &Path) -> anyhow::Result<metrics::Snapshot> {
    let cfg = shared.cfg.lock().unwrap().clone();
    let stats = stats::collect(pin_path, cfg.as_ref())?;
    let maps = BalancerMaps::from_pins(&loader::state_dir(pin_path))?;
    let vips = maps.vips()?.len() as u64;
    let backends = maps.backends()?.len() as u64;
    let (conns, conns_cap) = (maps.conn_count() as u64, maps.conn_capacity());
    Ok(metrics::Snapshot {
        stats,
        health: shared.health.lock().unwrap().clone(),
        reloads_ok: shared.reloads_ok.load(Ordering::Relaxed),
        reloads_failed: shared.reloads_failed.load(Ordering::Relaxed),
        health_transitions_down: shared.transitions_down.load(Ordering::Relaxed),
        health_transitions_up: shared.transitions_up.load(Ordering::Relaxed),
        map_fill: vec![
            (lb_common::maps::VIPS, vips, u64::from(MAX_VIPS)),
            (lb_common::maps::BACKENDS, backends, u64::from(MAX_BACKENDS)),
            (lb_common::maps::CONNS, conns, u64::from(conns_cap)),
        ],
    })
}

impl Agent {
    /// Applies `new` as one generation and, when `persist`, writes it to the config file
    /// atomically (temp file + rename), so a restart comes back to the same state.
    fn apply_config(&mut self, new: Config, persist: bool) -> anyhow::Result<Vec<String>> {
        if fixed_part(&new) != fixed_part(&self.cfg) {
            bail!("interface, xdp_mode, pin_path, flow_table_size, api_socket and metrics cannot change while running; restart the agent for that");
        }
        let report =
            self.applied
                .apply_with_health(&new, &mut self.maps, RESOLVE_WAIT, &self.down)?;
        if persist {
            let text = format!(
                "# Written by xdplb after a change through its API; comments are not kept.\n{}",
                serde_yaml::to_string(&new).context("encoding the config")?
            );
            write_atomically(&self.config_path, &text)?;
            self.file_text = text;
        }
        self.cfg = new;
        *self.shared.cfg.lock().unwrap() = Some(self.cfg.clone());
        self.sync_health_targets();
        for line in &report.lines {
            log::info!("  {line}");
        }
        for (vip, addr, why) in &report.unresolved {
            log::warn!("  VIP {vip}: backend {addr} is not in service: {why}");
        }
        let mut lines = report.lines;
        lines.extend(
            report
                .unresolved
                .into_iter()
                .map(|(v, a, why)| format!("VIP {v}: backend {a} left out: {why}")),
        );
        Ok(lines)
    }

    /// Re-reads the config file; a bad file is refused and the running config stays live.
    fn reload(&mut self, why: &str) -> anyhow::Result<Vec<String>> {
        match std::fs::read_to_string(&self.config_path) {
            Ok(text) => self.reload_text(text, why),
            Err(e) => {
                self.shared.reloads_failed.fetch_add(1, Ordering::Relaxed);
                let e = anyhow!(e)
                    .context(format!("cannot read config {}", self.config_path.display()));
                log::error!("reload rejected, the running config stays live: {e:#}");
                Err(e)
            }
        }
    }

    /// Applies `text` (the config file's content) as the new config, or refuses it.
    fn reload_text(&mut self, text: String, why: &str) -> anyhow::Result<Vec<String>> {
        let result = Config::from_yaml(&text, &self.config_path.display().to_string())
            .and_then(|new| self.apply_config(new, false));
        match &result {
            Ok(_) => {
                self.file_text = text;
                self.shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
                log::info!("reloaded {} ({why})", self.config_path.display());
            }
            Err(e) => {
                self.shared.reloads_failed.fetch_add(1, Ordering::Relaxed);
                log::error!("reload rejected ({why}), the running config stays live: {e:#}");
            }
        }
        result
    }

    /// Reloads when someone edited the config file (our own writes are recognised). Editors
    /// and `echo >` truncate before they write, so a read can catch a half-written file: a
    /// changed text is applied only once two reads a tick apart agree.
    fn watch_file(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.config_path) else {
            return;
        };
        if text == self.file_text || self.rejected_text.as_deref() == Some(text.as_str()) {
            self.pending_text = None;
            return;
        }
        if self.pending_text.as_deref() != Some(text.as_str()) {
            self.pending_text = Some(text);
            return;
        }
        self.pending_text = None;
        if self
            .reload_text(text.clone(), "config file changed")
            .is_err()
        {
            self.rejected_text = Some(text);
        } else {
            self.rejected_text = None;
        }
    }

    fn refresh_neighbours(&mut self) {
        match self.applied.refresh_macs(&self.cfg, &mut self.maps) {
            Ok(lines) => lines.iter().for_each(|l| log::info!("{l}")),
            Err(e) => log::warn!("refreshing backend MACs failed: {e:#}"),
        }
    }

    fn track_activity(&mut self) {
        let now = Instant::now();
        let Ok(backends) = self.maps.backends() else {
            return;
        };
        for (id, _) in backends {
            if let Ok(c) = self.maps.backend_counters(id) {
                let e = self.activity.entry(id).or_insert((c.packets, now));
                if e.0 != c.packets {
                    *e = (c.packets, now);
                }
            }
        }
    }

    fn sync_health_targets(&mut self) {
        let mut targets = Vec::new();
        for vip in self.cfg.vips.iter() {
            if let Some(check) = &vip.health_check {
                for b in vip.backends.iter() {
                    targets.push((
                        health::Target {
                            vip: vip.name.clone(),
                            backend: b.address,
                        },
                        check.clone(),
                    ));
                }
            }
        }
        let probed: HashSet<(String, IpAddr)> = targets
            .iter()
            .map(|(t, _)| (t.vip.clone(), t.backend))
            .collect();
        self.monitor.set_targets(targets);
        // Backends no longer probed cannot stay marked down.
        let before = self.down.len();
        self.down.retain(|k| probed.contains(k));
        let mut h = self.shared.health.lock().unwrap();
        h.retain(|k, _| probed.contains(k));
        for k in &probed {
            h.entry(k.clone()).or_insert(true);
        }
        drop(h);
        if self.down.len() != before {
            let cfg = self.cfg.clone();
            if let Err(e) =
                self.applied
                    .apply_with_health(&cfg, &mut self.maps, RESOLVE_WAIT, &self.down)
            {
                log::error!("re-applying after health targets changed: {e:#}");
            }
        }
    }

    fn on_health(&mut self, t: health::Transition) {
        let key = (t.target.vip.clone(), t.target.backend);
        let configured = self
            .cfg
            .vips
            .iter()
            .any(|v| v.name == key.0 && v.backends.iter().any(|b| b.address == key.1));
        if !configured {
            return;
        }
        let changed = match t.health {
            health::Health::Down => {
                self.shared.transitions_down.fetch_add(1, Ordering::Relaxed);
                self.down.insert(key.clone())
            }
            health::Health::Up => {
                self.shared.transitions_up.fetch_add(1, Ordering::Relaxed);
                self.down.remove(&key)
            }
        };
        self.shared
            .health
            .lock()
            .unwrap()
            .insert(key.clone(), t.health == health::Health::Up);
        if changed {
            let cfg = self.cfg.clone();
            match self
                .applied
                .apply_with_health(&cfg, &mut self.maps, RESOLVE_WAIT, &self.down)
            {
                Ok(_) => log::info!(
                    "VIP {}: backend {} {} ({})",
                    key.0,
                    key.1,
                    if t.health == health::Health::Up {
                        "back in the ring"
                    } else {
                        "taken out of the ring, its flows re-steered"
                    },
                    t.reason
                ),
                Err(e) => log::error!("applying health change for {} {}: {e:#}", key.0, key.1),
            }
        }
    }

    /// Applies a change to the VIP list built by `change`, validated as a whole new config.
    fn change(
        &mut self,
        change: impl FnOnce(&mut Vec<Vip>) -> anyhow::Result<()>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut vips = self.cfg.vips.to_vec();
        change(&mut vips)?;
        let mut doc = serde_yaml::to_value(&self.cfg).context("encoding the config")?;
        doc["vips"] = serde_yaml::to_value(&vips).context("encoding the VIPs")?;
        let text = serde_yaml::to_string(&doc).context("encoding the config")?;
        let new = Config::from_yaml(&text, "the changed config")?;
        let lines = self.apply_config(new, true)?;
        Ok(json!({ "applied": lines, "written_to": self.config_path }))
    }

    fn handle(&mut self, req: Request) -> anyhow::Result<serde_json::Value> {
        match req {
            Request::Status => Ok(self.status()),
            Request::VipList => Ok(json!(self.cfg.vips.iter().collect::<Vec<_>>())),
            Request::VipAdd { vip } => self.change(|vips| {
                if vips.iter().any(|v| v.name == vip.name) {
                    bail!("VIP {:?} exists already", vip.name);
                }
                vips.push(vip);
                Ok(())
            }),
            Request::VipRemove { name } => self.change(|vips| {
                let before = vips.len();
                vips.retain(|v| v.name != name);
                if vips.len() == before {
                    bail!("no VIP named {name:?} (`xdplb vip list` shows them)");
                }
                Ok(())
            }),
            Request::BackendList { vip } => {
                if let Some(name) = &vip {
                    find_vip(&self.cfg.vips.to_vec(), name)?;
                }
                let status = self.status();
                let list: Vec<_> = status["vips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|v| vip.as_ref().is_none_or(|n| v["name"] == *n))
                    .cloned()
                    .collect();
                Ok(json!(list))
            }
            Request::BackendAdd { vip, backend } => self.change_backends(&vip, |list| {
                if list.iter().any(|b| b.address == backend.address) {
                    bail!("VIP {vip}: backend {} exists already", backend.address);
                }
                list.push(backend);
                Ok(())
            }),
            Request::BackendRemove { vip, address } => self.change_backends(&vip, |list| {
                let before = list.len();
                list.retain(|b| b.address != address);
                if list.len() == before {
                    bail!("VIP {vip} has no backend {address}");
                }
                Ok(())
            }),
            Request::BackendDrain { vip, address } => self.change_backends(&vip, |list| {
                set_backend(list, &vip, address, |b| b.state = BackendState::Draining)
            }),
            Request::BackendActivate { vip, address } => self.change_backends(&vip, |list| {
                set_backend(list, &vip, address, |b| b.state = BackendState::Active)
            }),
            Request::BackendWeight {
                vip,
                address,
                weight,
            } => {
                let w = Weight::try_from(weight).map_err(|e| anyhow!(e))?;
                self.change_backends(&vip, |list| {
                    set_backend(list, &vip, address, |b| b.weight = w)
                })
            }
            Request::Reload => self
                .reload("API request")
                .map(|lines| json!({ "applied": lines })),
            Request::Plan { config } => {
                let new = Config::from_yaml(&config, "the proposed config")?;
                if fixed_part(&new) != fixed_part(&self.cfg) {
                    bail!("the proposed config changes interface, xdp_mode, pin_path, flow_table_size, api_socket or metrics: that needs a restart");
                }
                Ok(
                    json!({ "changes": self.applied.plan(&self.cfg, &new, &self.maps, &self.down)? }),
                )
            }
        }
    }

    fn change_backends(
        &mut self,
        vip: &str,
        change: impl FnOnce(&mut Vec<BackendConfig>) -> anyhow::Result<()>,
    ) -> anyhow::Result<serde_json::Value> {
        let vip = vip.to_owned();
        self.change(|vips| {
            let v = vips
                .iter_mut()
                .find(|v| v.name == vip)
                .ok_or_else(|| anyhow!("no VIP named {vip:?} (`xdplb vip list` shows them)"))?;
            let mut list = v.backends.to_vec();
            change(&mut list)?;
            v.backends = list.try_into().map_err(|e: String| anyhow!(e))?;
            Ok(())
        })
    }

    fn status(&self) -> serde_json::Value {
        let health = self.shared.health.lock().unwrap().clone();
        let now = Instant::now();
        let vips: Vec<_> = self
            .cfg
            .vips
            .iter()
            .map(|v| {
                let vip_id = self.applied.vip_ids.get(&(v.address, v.port, v.protocol.number())).copied();
                let backends: Vec<_> = v
                    .backends
                    .iter()
                    .map(|b| {
                        let id = vip_id.and_then(|vid| self.applied.backend_ids.get(&(vid, b.address)).copied());
                        let idle = id.and_then(|i| self.activity.get(&i)).map(|(_, t)| now.duration_since(*t).as_secs());
                        let health = match health.get(&(v.name.clone(), b.address)) {
                            None => "unchecked",
                            Some(true) => "up",
                            Some(false) => "down",
                        };
                        json!({
                            "address": b.address, "state": b.state, "weight": b.weight.0, "health": health,
                            "in_service": id.is_some(), "idle_seconds": idle,
                        })
                    })
                    .collect();
                json!({ "name": v.name, "address": v.address, "port": v.port, "protocol": v.protocol, "backends": backends })
            })
            .collect();
        json!({
            "interface": self.cfg.interface.as_str(),
            "datapath": self.attach_note,
            "adopted_previous_state": self.adopted,
            "config": self.config_path,
            "reloads_ok": self.shared.reloads_ok.load(Ordering::Relaxed),
            "reloads_failed": self.shared.reloads_failed.load(Ordering::Relaxed),
            "vips": vips,
        })
    }
}

fn find_vip<'a>(vips: &'a [Vip], name: &str) -> anyhow::Result<&'a Vip> {
    vips.iter()
        .find(|v| v.name == name)
        .ok_or_else(|| anyhow!("no VIP named {name:?} (`xdplb vip list` shows them)"))
}

fn set_backend(
    list: &mut [BackendConfig],
    vip: &str,
    address: IpAddr,
    f: impl FnOnce(&mut BackendConfig),
) -> anyhow::Result<()> {
    let b = list
        .iter_mut()
        .find(|b| b.address == address)
        .ok_or_else(|| anyhow!("VIP {vip} has no backend {address}"))?;
    f(b);
    Ok(())
}

/// Writes `text` to `path` so that readers see the old or the new file, never a torn one.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("yaml.xdplb-tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// `xdplb check`: validates a config and prints what it describes; with a running agent on
/// its `api_socket`, also what applying it would change.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let cfg = Config::from_yaml(&text, &path.display().to_string())?;
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
    if cfg.api_socket.exists() {
        let plan = api::call(&cfg.api_socket, &Request::Plan { config: text })?;
        println!("Against the running agent ({}):", cfg.api_socket.display());
        let changes = plan["changes"].as_array().cloned().unwrap_or_default();
        if changes.is_empty() {
            println!("  no changes");
        }
        for c in changes {
            println!("  {}", c.as_str().unwrap_or_default());
        }
    } else {
        println!(
            "No agent answers on {}: nothing to compare with.",
            cfg.api_socket.display()
        );
    }
    Ok(())
}

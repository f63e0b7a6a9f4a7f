//! `xdplb run`: start-up, the agent's event loop and reconciling.
//!
//! Events (signals, file edits, API calls, health transitions, neighbour updates) change what the
//! agent knows; every change ends in one reconcile of the desired state against the maps. Nothing
//! here waits on the kernel: slow work runs as tasks that report back as events.

// Northbound: how operators and tools reach the agent.
pub mod api;
mod control;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod persist;
// Southbound: what the agent watches and drives besides the maps.
pub mod announce;
pub(crate) mod health;
pub(crate) mod link;
pub(crate) mod neigh;
// The agent's one state and what changes it.
mod state;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use lb_common::{MAX_BACKENDS, MAX_VIPS};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use self::{
    link::{LinkEvent, LinkWatch},
    neigh::MacEvent,
    persist::ConfigFile,
    state::{Agent, Shared, Waiting},
};
use crate::{
    datapath::counters,
    datapath::{balancer, maps::BalancerMaps, reconcile::Written},
    exit::CannotStart,
};

/// Waits (before the loop starts, so nothing else is held up) for the resolver's first word
/// on every backend it was given, at most the resolver's grace period and a little more.
async fn first_macs(agent: &mut Agent, rx: &mut mpsc::UnboundedReceiver<MacEvent>) {
    let wanted: Vec<IpAddr> = agent
        .cfg
        .vips
        .iter()
        .flat_map(|v| v.backends.iter())
        .filter(|b| b.mac.is_none())
        .map(|b| b.address)
        .collect();
    let deadline = tokio::time::Instant::now() + neigh::RESOLVE_GRACE + Duration::from_secs(1);
    let answered = |a: &Agent| {
        wanted
            .iter()
            .all(|b| a.macs.contains_key(b) || a.mac_errors.contains_key(b))
    };
    while !answered(agent) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(MacEvent::Resolved { backend, mac })) => {
                agent.mac_errors.remove(&backend);
                agent.macs.insert(backend, mac);
            }
            Ok(Some(MacEvent::Failed { backend, why })) => {
                agent.mac_errors.insert(backend, why);
            }
            Ok(None) | Err(_) => break,
        }
    }
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    crate::datapath::caps::require(&crate::datapath::caps::AGENT).context(CannotStart)?;
    let (file, cfg) = ConfigFile::open(config_path).context(CannotStart)?;
    let interface = cfg.interface.as_str().to_owned();
    if crate::datapath::nic::interface_index(&interface).is_none() {
        bail!(
            "interface {interface} does not exist (config {})",
            config_path.display()
        );
    }
    let (listener, _socket_file) = api::bind(&cfg.api_socket)?;
    // The datapath balances only frames addressed to this MAC; without one, nothing.
    crate::datapath::nic::interface_mac(&interface)?;
    let balancer::Loaded { mut ebpf, adopted } =
        balancer::load_pinned(&cfg.pin_path, cfg.flow_table_size.0)?;
    // Logs only exist in debug builds of the object; keep the logger alive with the program.
    let _logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
    let maps = BalancerMaps::from_ebpf(&mut ebpf)?;
    let (written, macs) = if adopted {
        log::info!(
            "adopting the datapath state pinned under {}",
            balancer::state_dir(&cfg.pin_path).display()
        );
        Written::adopt(&maps)?
    } else {
        (Written::default(), HashMap::new())
    };
    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let (mac_tx, mut mac_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    let mut agent = Agent::new(
        cfg.clone(),
        file,
        (maps, written, macs),
        adopted,
        health_tx,
        neigh::Resolver::spawn(&interface, mac_tx)?,
        shared.clone(),
    );
    agent.sync_targets();
    first_macs(&mut agent, &mut mac_rx).await;
    let report = agent.reconcile()?;
    for line in report.lines() {
        log::info!("{line}");
    }
    for u in &agent.current.unresolved {
        let why = agent
            .mac_errors
            .get(&u.backend)
            .map_or("its MAC is not known yet", String::as_str);
        log::error!("VIP {}: backend {} left out: {why}", u.vip, u.backend);
    }
    agent.set_datapath(Ok(balancer::attach_pinned(
        &mut ebpf,
        &cfg.pin_path,
        &interface,
        cfg.xdp_mode,
    )?));
    let (link_tx, mut link_rx) = mpsc::unbounded_channel();
    let index = crate::datapath::nic::interface_index(&interface)
        .with_context(|| format!("interface {interface} went away during start-up"))?;
    let _link_watch = LinkWatch::spawn(&interface, index, link_tx)?;
    let mut datapath = Datapath {
        ebpf,
        last_attempt: None,
    };
    log::info!(
        "balancing on {interface}: {}; {} VIP(s), flow table {} entries; state pinned under {}; API on {}",
        agent.attach_note,
        cfg.vips.len(),
        cfg.flow_table_size.0,
        balancer::state_dir(&cfg.pin_path).display(),
        cfg.api_socket.display()
    );
    let (call_tx, mut call_rx) = mpsc::channel::<api::Call>(64);
    let api_task = tokio::spawn(api::serve(listener, call_tx));
    let metrics_task = cfg.metrics.map(|addr| {
        let source = MetricsSource {
            shared: shared.clone(),
            health: agent.monitor.view(),
            pin_path: cfg.pin_path.clone(),
        };
        let snapshot: Arc<dyn Fn() -> anyhow::Result<metrics::Snapshot> + Send + Sync> =
            Arc::new(move || source.snapshot());
        tokio::spawn(async move {
            if let Err(e) = crate::agent::http::serve(addr, snapshot).await {
                log::error!("metrics exporter stopped: {e:#}");
            }
        })
    });
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Health transitions arriving within HEALTH_SETTLE of the first are applied together.
    let mut health_batch = Vec::new();
    let mut health_due: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { log::info!("SIGINT: stopping"); break; }
            _ = hup.recv() => {
                let _ = agent.reload("SIGHUP");
                agent.answer_waiting(false);
            }
            Some((req, reply)) = call_rx.recv() => agent.handle(req, reply),
            Some(t) = health_rx.recv() => {
                health_batch.push(t);
                health_due.get_or_insert(tokio::time::Instant::now() + HEALTH_SETTLE);
            }
            _ = sleep_until_due(health_due), if health_due.is_some() => {
                health_due = None;
                agent.on_health(std::mem::take(&mut health_batch));
            }
            Some(m) = mac_rx.recv() => {
                agent.on_mac(m);
                agent.answer_waiting(false);
            }
            Some(ev) = link_rx.recv() => datapath.on_link(&mut agent, ev),
            _ = tick.tick() => {
                datapath.retry(&mut agent);
                agent.on_file_tick();
                agent.announce();
                agent.track_activity();
                agent.answer_waiting(false);
            }
        }
    }
    agent.answer_waiting(true);
    agent.waiting.drain(..).for_each(Waiting::abandon);
    api_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    if agent.cfg.keep_attached_on_exit {
        log::info!(
            "leaving the datapath attached to {interface} with its last state (keep_attached_on_exit); `xdplb detach` removes it"
        );
    } else {
        if let Some(a) = agent.cfg.announce.clone() {
            // A stop that takes the datapath away: withdraw first, and keep forwarding while
            // the routers move the flows elsewhere.
            agent.announce_exactly(&Default::default());
            log::info!(
                "VIPs withdrawn; forwarding for {:?} more before detaching (announce.withdraw_delay)",
                a.withdraw_delay
            );
            tokio::time::sleep(a.withdraw_delay).await;
        }
        balancer::detach(&cfg.pin_path)?;
        drop(datapath);
        log::info!(
            "detached from {interface}; pinned state under {} removed",
            cfg.pin_path.display()
        );
    }
    Ok(())
}

/// The loaded program and what it takes to put it back on its interface. Whether it is
/// attached is the agent's (`Agent::set_datapath`); this only paces the retries.
struct Datapath {
    ebpf: aya::Ebpf,
    /// When re-attaching was last tried (a failed try is retried every few seconds).
    last_attempt: Option<Instant>,
}

/// How long after a failed re-attach the next try comes.
const REATTACH_EVERY: Duration = Duration::from_secs(5);

/// How long the agent gathers health transitions after the first before applying them. Probes
/// of one cause (the balancer's own link coming back, a switch port flapping) finish within a
/// few hundred milliseconds of each other; applied one by one, each would rebuild the rings
/// and re-steer flows again. Checks take seconds (interval × rise/fall), so this adds little.
const HEALTH_SETTLE: Duration = Duration::from_millis(500);

/// Sleeps until `due` (the `select!` arm is only polled while it is `Some`).
async fn sleep_until_due(due: Option<tokio::time::Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

impl Datapath {
    /// Marks the datapath down when the interface goes, and re-attaches when it is back.
    fn on_link(&mut self, agent: &mut Agent, ev: LinkEvent) {
        let interface = agent.cfg.interface.as_str().to_owned();
        match ev {
            LinkEvent::Gone => {
                log::error!(
                    "interface {interface} went away: the kernel detached the balancer, nothing is forwarded until it is back (the maps keep their state)"
                );
                agent.set_datapath(Err(format!("interface {interface} is gone")));
                self.last_attempt = None;
            }
            LinkEvent::Back { index } => {
                log::info!("interface {interface} is back (index {index})");
                self.last_attempt = None;
                self.retry(agent);
            }
        }
    }

    /// Re-attaches while the datapath is down and its interface exists (at most every
    /// [`REATTACH_EVERY`] after a failure).
    fn retry(&mut self, agent: &mut Agent) {
        if agent.datapath_down.is_none() {
            return;
        }
        let interface = agent.cfg.interface.as_str().to_owned();
        if crate::datapath::nic::interface_index(&interface).is_none()
            || self
                .last_attempt
                .is_some_and(|t| t.elapsed() < REATTACH_EVERY)
        {
            return;
        }
        self.last_attempt = Some(Instant::now());
        match balancer::reattach(
            &mut self.ebpf,
            &agent.cfg.pin_path,
            &interface,
            agent.cfg.xdp_mode,
        ) {
            Ok(note) => {
                log::info!("{note}: balancing again");
                agent.set_datapath(Ok(note));
                // The new interface may differ (MTU); its neighbours are learnt afresh.
                if let Err(e) = agent.reconcile() {
                    log::error!("after re-attaching: {e:#}");
                }
                agent.sync_targets();
            }
            Err(e) => {
                log::error!("interface {interface} is back, but attaching failed: {e:#}");
                agent.set_datapath(Err(format!(
                    "interface {interface} is back, attaching failed: {e:#}"
                )));
            }
        }
    }
}

/// What a scrape reads: the pinned maps (from the exporter's own thread), the health view and
/// the agent's counters.
struct MetricsSource {
    shared: Arc<Shared>,
    health: health::HealthView,
    pin_path: std::path::PathBuf,
}

impl MetricsSource {
    /// Per VIP address of the config: whether BIRD was last told to announce it (None
    /// without `announce:`).
    fn announced_by_address(
        &self,
        cfg: Option<&crate::config::Config>,
    ) -> Option<Vec<(IpAddr, bool)>> {
        let cfg = cfg?;
        cfg.announce.as_ref()?;
        let told = self
            .shared
            .announced
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_default();
        let addrs: std::collections::BTreeSet<IpAddr> =
            cfg.vips.iter().map(|v| v.address).collect();
        Some(addrs.into_iter().map(|a| (a, told.contains(&a))).collect())
    }

    fn snapshot(&self) -> anyhow::Result<metrics::Snapshot> {
        let cfg = self.shared.cfg.lock().unwrap().clone();
        let stats = counters::collect(&self.pin_path, cfg.as_ref())?;
        let maps = BalancerMaps::from_pins(&balancer::state_dir(&self.pin_path))?;
        let vips = maps.vips()?.len() as u64;
        let backends = maps.backends()?.len() as u64;
        let (conns, conns_cap) = (maps.conn_count() as u64, maps.conn_capacity());
        let (down, up) = self.health.transitions();
        Ok(metrics::Snapshot {
            stats,
            health_panic: self.shared.health_panic.lock().unwrap().clone(),
            health: self
                .health
                .snapshot()
                .into_iter()
                .map(|(t, h)| ((t.vip, t.backend), h == health::Health::Up))
                .collect(),
            datapath_up: self.shared.datapath_up.load(Ordering::Relaxed),
            announced: self.announced_by_address(cfg.as_ref()),
            balancer_drained: self.shared.drained.load(Ordering::Relaxed),
            reloads_ok: self.shared.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.shared.reloads_failed.load(Ordering::Relaxed),
            health_transitions_down: down,
            health_transitions_up: up,
            map_fill: vec![
                // The VIPs themselves, under the label dashboards know (they live in VIP_TABLE).
                ("VIPS", vips, u64::from(MAX_VIPS)),
                (lb_common::maps::BACKENDS, backends, u64::from(MAX_BACKENDS)),
                (lb_common::maps::CONNS, conns, u64::from(conns_cap)),
            ],
        })
    }
}

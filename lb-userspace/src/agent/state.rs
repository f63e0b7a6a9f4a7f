//! The running agent's state, and the one path every change of it takes.
//!
//! The state is the config, what the maps hold, and what is known of the world (MACs, health).
//! Every change builds the desired state, reconciles, and reports the change done once it serves.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use anyhow::{anyhow, bail};
use tokio::sync::oneshot;

use crate::{
    agent::announce::{self, Announcer},
    agent::api::{Answer, Applied, LeftOut, Response},
    agent::health,
    agent::neigh::{self, MacEvent},
    agent::persist::ConfigFile,
    config::{Config, MacAddr},
    datapath::maps::BalancerMaps,
    datapath::reconcile::{Report, Written},
    model::desired::{Desired, Facts},
};

/// Counters the metrics exporter reads from another thread.
#[derive(Default)]
pub(crate) struct Shared {
    pub cfg: Mutex<Option<Config>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// The program is attached to the interface (false while the interface is gone).
    pub datapath_up: AtomicBool,
    /// Each VIP, and whether it is in health panic (as last written).
    pub health_panic: Mutex<Vec<(String, bool)>>,
    /// What BIRD was last told to announce (None without `announce:`, or before BIRD took a
    /// first list).
    pub announced: Mutex<Option<Vec<IpAddr>>>,
    /// `xdplb drain-balancer` holds every VIP withdrawn.
    pub drained: AtomicBool,
}

/// The running agent: owns the maps and what was written to them; everything that changes
/// them goes through its one loop.
pub(crate) struct Agent {
    pub cfg: Config,
    pub file: ConfigFile,
    pub maps: BalancerMaps,
    pub written: Written,
    /// The desired state last written.
    pub current: Desired,
    /// Where frames to each backend go, as the resolver last reported (or as adopted).
    pub macs: HashMap<IpAddr, MacAddr>,
    /// Why a backend has no MAC, as the resolver last reported.
    pub mac_errors: HashMap<IpAddr, String>,
    pub monitor: health::Monitor,
    pub resolver: neigh::Resolver,
    pub shared: Arc<Shared>,
    /// Per backend id: packet count last seen and when it last changed.
    pub activity: HashMap<u32, (u64, Instant)>,
    /// How the program was attached (empty until it is).
    pub attach_note: String,
    /// Why the datapath is down (its interface went away), or None while it is attached. Only
    /// [`Agent::set_datapath`] changes it, and the mirror in [`Shared`] with it.
    pub datapath_down: Option<String>,
    pub adopted: bool,
    /// With `announce:` in the config: what BIRD is told to announce.
    pub announcer: Option<Announcer>,
    /// Why telling BIRD last failed (retried every second), while it fails.
    pub announce_error: Option<String>,
    /// `xdplb drain-balancer`: announce nothing, keep forwarding.
    pub drained: bool,
    /// API answers held until new backends' MACs are known (or the grace period ends).
    pub waiting: Vec<Waiting>,
}

impl Agent {
    /// The agent at start-up, before its first reconcile: the config and its file, the maps
    /// with what is written in them (and the MACs adopted with them), the health monitor and
    /// the resolver it drives, and the counters it shares with the metrics thread.
    pub fn new(
        cfg: Config,
        file: ConfigFile,
        (maps, written, macs): (BalancerMaps, Written, HashMap<IpAddr, MacAddr>),
        adopted: bool,
        health_tx: tokio::sync::mpsc::UnboundedSender<health::Transition>,
        resolver: neigh::Resolver,
        shared: Arc<Shared>,
    ) -> Agent {
        *shared.cfg.lock().unwrap() = Some(cfg.clone());
        Agent {
            announcer: cfg.announce.as_ref().map(Announcer::from_config),
            cfg,
            file,
            maps,
            written,
            current: Desired::default(),
            macs,
            mac_errors: HashMap::new(),
            monitor: health::Monitor::new(health_tx),
            resolver,
            shared,
            activity: HashMap::new(),
            attach_note: String::new(),
            datapath_down: None,
            adopted,
            announce_error: None,
            drained: false,
            waiting: Vec::new(),
        }
    }

    /// The one place that says whether the program is attached: `Ok(how)` once it is (again),
    /// `Err(why not)` while it is not. The metrics thread reads the mirror in [`Shared`].
    pub fn set_datapath(&mut self, state: Result<String, String>) {
        match state {
            Ok(note) => {
                self.attach_note = note;
                self.datapath_down = None;
            }
            Err(why) => self.datapath_down = Some(why),
        }
        let up = self.datapath_down.is_none() && !self.attach_note.is_empty();
        self.shared.datapath_up.store(up, Ordering::Relaxed);
    }

    /// The desired state of `cfg` with what the agent knows now.
    pub fn build(&self, cfg: &Config) -> anyhow::Result<Desired> {
        let down = self.monitor.view().down();
        let interface = cfg.interface.as_str();
        let facts = Facts {
            down: &down,
            macs: &self.macs,
            mtu: crate::datapath::nic::interface_mtu(interface).ok(),
            // Read each time: an interface that went away and came back may have another.
            own_mac: crate::datapath::nic::interface_mac(interface)?,
        };
        Desired::build(cfg, &facts)
    }

    /// Tells BIRD what to announce now: every address with a servable VIP while the datapath
    /// is attached, nothing while it is down. Cheap when nothing changed (called every second
    /// and after each change); a failure is logged once and retried.
    pub fn announce(&mut self) {
        let want = if self.datapath_down.is_some() || self.drained {
            Default::default()
        } else {
            announce::servable(&self.current)
        };
        self.announce_exactly(&want);
    }

    /// Tells BIRD to announce `want` (see [`Agent::announce`]).
    pub fn announce_exactly(&mut self, want: &std::collections::BTreeSet<IpAddr>) {
        let Some(a) = self.announcer.as_mut() else {
            return;
        };
        match a.update(want) {
            Ok(true) => {
                let list: Vec<String> = want.iter().map(|a| a.to_string()).collect();
                log::info!("BIRD now announces: [{}]", list.join(", "));
                self.announce_error = None;
            }
            Ok(false) => {
                self.announce_error = None;
                return;
            }
            Err(e) => {
                let why = format!("{e:#}");
                if self.announce_error.as_deref() != Some(why.as_str()) {
                    log::error!("announcing through BIRD: {why} (retried every second)");
                }
                self.announce_error = Some(why);
                return;
            }
        }
        *self.shared.announced.lock().unwrap() =
            a.announced().map(|set| set.iter().copied().collect());
    }

    /// Records `desired` as written, logging a VIP that enters or leaves health panic, and
    /// mirrors the panic flags for the metrics thread.
    fn set_current(&mut self, desired: Desired) {
        for v in &desired.vips {
            let was = self.current.vip(&v.name).is_some_and(|c| c.panic);
            if v.panic && !was {
                log::warn!(
                    "VIP {}: {} of its backends fail their health check, below its panic threshold: ignoring the failures, every backend stays in the ring",
                    v.name, v.down
                );
            } else if was && !v.panic {
                log::info!(
                    "VIP {}: enough backends pass their health check again, panic over",
                    v.name
                );
            }
        }
        *self.shared.health_panic.lock().unwrap() = desired
            .vips
            .iter()
            .map(|v| (v.name.clone(), v.panic))
            .collect();
        self.current = desired;
    }

    /// Writes the desired state of the running config.
    pub fn reconcile(&mut self) -> anyhow::Result<Report> {
        let desired = self.build(&self.cfg)?;
        let report = self.written.apply(&desired, &mut self.maps)?;
        self.set_current(desired);
        Ok(report)
    }

    /// Makes `new` the running config, written as one generation, or refuses it with the
    /// running one still live.
    pub fn switch_to(&mut self, new: Config) -> anyhow::Result<Report> {
        if fixed_part(&new) != fixed_part(&self.cfg) {
            bail!("interface, xdp_mode, pin_path, flow_table_size, api_socket and metrics cannot change while running; restart the agent for that");
        }
        let desired = self.build(&new)?;
        let report = self.written.apply(&desired, &mut self.maps)?;
        self.set_current(desired);
        if new.announce != self.cfg.announce {
            self.announcer = new.announce.as_ref().map(Announcer::from_config);
        }
        self.cfg = new;
        *self.shared.cfg.lock().unwrap() = Some(self.cfg.clone());
        self.sync_targets();
        Ok(report)
    }

    /// Gives the health monitor and the resolver exactly the running config's backends.
    pub fn sync_targets(&mut self) {
        let mut probes = Vec::new();
        let mut resolve = Vec::new();
        for vip in self.cfg.vips.iter() {
            for b in vip.backends.iter() {
                if let Some(check) = &vip.health_check {
                    let target = health::Target {
                        vip: vip.name.clone(),
                        backend: b.address,
                    };
                    probes.push((target, check.clone()));
                }
                if b.mac.is_none() {
                    resolve.push(neigh::Target {
                        backend: b.address,
                        forwarding: vip.forwarding,
                    });
                }
            }
        }
        self.monitor.set_targets(probes);
        self.resolver.set_targets(resolve);
    }

    /// Re-reads the config file; a bad file is refused and the running config stays live.
    pub fn reload(&mut self, why: &str) -> anyhow::Result<Report> {
        let result = match self.file.read() {
            Ok(text) => self.reload_text(text, why),
            Err(e) => {
                self.shared.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        };
        if let Err(e) = &result {
            log::error!("reload rejected ({why}), the running config stays live: {e:#}");
        }
        result
    }

    pub fn reload_text(&mut self, text: String, why: &str) -> anyhow::Result<Report> {
        let result = self.file.parse(&text).and_then(|new| self.switch_to(new));
        match &result {
            // Counted and logged once the backends it added are in service (or known not to be).
            Ok(report) => {
                let done = Done::Reloaded {
                    why: why.to_owned(),
                };
                let removed = Report {
                    summary: Vec::new(),
                    removed: report.removed.clone(),
                };
                self.waiting.push(Waiting::new(done, removed));
            }
            Err(_) => {
                self.shared.reloads_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.file.outcome(text, result.is_ok());
        result
    }

    pub fn on_file_tick(&mut self) {
        let result = match self.file.poll() {
            None => return,
            Some(Ok(text)) => self.reload_text(text, "config file changed").map(|_| ()),
            Some(Err(e)) => {
                self.shared.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        };
        if let Err(e) = result {
            log::error!(
                "reload rejected (config file changed), the running config stays live: {e:#}"
            );
        }
    }

    /// Applies health transitions that arrived together with one rebuild of the rings.
    pub fn on_health(&mut self, batch: Vec<health::Transition>) {
        if let Err(e) = self.reconcile() {
            for t in &batch {
                log::error!(
                    "applying health change for {} {}: {e:#}",
                    t.target.vip,
                    t.target.backend
                );
            }
            return;
        }
        for t in &batch {
            let panic = self.current.vip(&t.target.vip).is_some_and(|v| v.panic);
            let what = match (t.health, panic) {
                (health::Health::Up, _) => "back in the ring",
                (health::Health::Down, false) => "taken out of the ring, its flows re-steered",
                (health::Health::Down, true) => "failing, kept in the ring (VIP in panic)",
            };
            log::info!(
                "VIP {}: backend {} {what} ({})",
                t.target.vip,
                t.target.backend,
                t.reason
            );
        }
    }

    pub fn on_mac(&mut self, event: MacEvent) {
        match event {
            MacEvent::Resolved { backend, mac } => {
                self.mac_errors.remove(&backend);
                match self.macs.insert(backend, mac) {
                    Some(old) if old == mac => return,
                    Some(old) => {
                        log::info!("backend {backend}: frames now go to {mac} (was {old})")
                    }
                    None => log::info!("backend {backend}: frames go to {mac}"),
                }
            }
            MacEvent::Failed { backend, why } => {
                // A MAC already in use stays in use: the entry may come back (a flapping
                // neighbour), and sending to the last known MAC beats dropping the flows.
                // Either way the desired state is unchanged, so there is nothing to write.
                if !self.macs.contains_key(&backend) {
                    log::warn!("backend {backend} is not in service: {why}");
                }
                self.mac_errors.insert(backend, why);
                return;
            }
        }
        if let Err(e) = self.reconcile() {
            log::error!("applying a neighbour change: {e:#}");
        }
    }

    pub fn track_activity(&mut self) {
        let now = Instant::now();
        for id in self.current.backends.keys() {
            if let Ok(c) = self.maps.backend_counters(*id) {
                let e = self.activity.entry(*id).or_insert((c.packets, now));
                if e.0 != c.packets {
                    *e = (c.packets, now);
                }
            }
        }
    }
}

/// Settings that are fixed while the agent runs (a reload may not change them).
pub(crate) fn fixed_part(cfg: &Config) -> impl PartialEq + std::fmt::Debug {
    (
        cfg.interface.as_str().to_owned(),
        cfg.xdp_mode,
        cfg.pin_path.clone(),
        cfg.flow_table_size.0,
        cfg.api_socket.clone(),
        cfg.metrics,
    )
}

/// The end of a change, held until every backend it left out of service has a verdict from
/// the resolver (its MAC, or why there is none): a change is reported done once what it
/// added serves, or the CLI can say which backend does not and why.
pub(crate) struct Waiting {
    done: Done,
    deadline: Instant,
    removed: Vec<String>,
}

pub(crate) enum Done {
    /// Answer an API request.
    Reply {
        reply: oneshot::Sender<Response>,
        written_to: Option<PathBuf>,
    },
    /// Count and log a reload (SIGHUP, file edit, API) as done.
    Reloaded { why: String },
}

impl Waiting {
    pub(crate) fn new(done: Done, report: Report) -> Waiting {
        Waiting {
            done,
            deadline: Instant::now() + neigh::RESOLVE_GRACE,
            removed: report.removed,
        }
    }

    /// Tells a waiting client the agent is going away.
    pub(crate) fn abandon(self) {
        if let Done::Reply { reply, .. } = self.done {
            answer(reply, Err(anyhow!("the agent is shutting down")));
        }
    }
}

impl Agent {
    /// Sends the held answers whose backends all have a verdict, or whose time is up (all of
    /// them when `now`).
    pub(crate) fn answer_waiting(&mut self, now: bool) {
        let pending = self
            .current
            .unresolved
            .iter()
            .any(|u| !self.mac_errors.contains_key(&u.backend));
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| now || !pending || Instant::now() >= w.deadline);
        self.waiting = keep;
        for w in due {
            let mut applied = self.current.summary();
            applied.extend(w.removed);
            let left_out: Vec<LeftOut> = self
                .current
                .unresolved
                .iter()
                .map(|u| LeftOut {
                    vip: u.vip.clone(),
                    backend: u.backend,
                    why: self
                        .mac_errors
                        .get(&u.backend)
                        .map_or("its MAC is not known yet", String::as_str)
                        .to_owned(),
                })
                .collect();
            for l in &left_out {
                applied.push(format!(
                    "VIP {}: backend {} left out: {}",
                    l.vip, l.backend, l.why
                ));
            }
            match w.done {
                Done::Reply { reply, written_to } => {
                    let a = Applied {
                        applied,
                        written_to,
                        left_out,
                    };
                    answer(reply, Ok(Answer::Applied(a)));
                }
                Done::Reloaded { why } => {
                    self.shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
                    for line in &applied {
                        log::info!("  {line}");
                    }
                    log::info!("reloaded {} ({why})", self.file.path.display());
                }
            }
        }
    }
}

pub(crate) fn answer(reply: oneshot::Sender<Response>, result: anyhow::Result<Answer>) {
    // A client that went away needs no answer.
    let _ = reply.send(Response::from_result(result));
}

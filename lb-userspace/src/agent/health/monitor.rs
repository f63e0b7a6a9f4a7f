//! The probe tasks and the one copy of the health state they update.
//!
//! The agent reads that state through the `Monitor` or a `HealthView`.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{sync::mpsc::UnboundedSender, task::JoinHandle, time::MissedTickBehavior};

use super::{probe, Health, Target, Tracker, Transition};
use crate::config::HealthCheck;

/// What the tasks and the Monitor share. Transitions are sent while the lock is held, so once
/// `set_targets` or `drop` has removed a slot, that target can emit no further event even if its
/// aborted task was mid-probe on another worker thread.
#[derive(Default)]
struct Shared {
    slots: HashMap<Target, Slot>,
    to_down: u64,
    to_up: u64,
}

struct Slot {
    /// Which task owns the slot: a task whose generation no longer matches (its target was
    /// removed or re-added with another check) must not touch the fresh state.
    generation: u64,
    tracker: Tracker,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // The state stays consistent even if a holder panicked (every update is a few plain
    // assignments), so a poisoned lock is still usable.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Probing {
    check: HealthCheck,
    task: JoinHandle<()>,
}

/// Runs probes for a set of targets and reports transitions.
pub struct Monitor {
    events: UnboundedSender<Transition>,
    shared: Arc<Mutex<Shared>>,
    tasks: HashMap<Target, Probing>,
    next_generation: u64,
}

impl Monitor {
    pub fn new(events: UnboundedSender<Transition>) -> Self {
        Monitor {
            events,
            shared: Arc::default(),
            tasks: HashMap::new(),
            next_generation: 0,
        }
    }

    /// Makes the probed set exactly `targets` (with their check; a target listed twice takes
    /// its last check). Targets that stay keep their state and their task; removed ones stop
    /// probing; new ones start Up. Changing a target's check restarts its task with fresh state.
    ///
    /// Spawns on the current tokio runtime, so it panics outside one.
    pub fn set_targets(&mut self, targets: Vec<(Target, HealthCheck)>) {
        let wanted: HashMap<Target, HealthCheck> = targets.into_iter().collect();
        let mut shared = lock(&self.shared);
        self.tasks.retain(|target, probing| {
            let keep = wanted.get(target) == Some(&probing.check);
            if !keep {
                probing.task.abort();
                shared.slots.remove(target);
            }
            keep
        });
        for (target, check) in wanted {
            if self.tasks.contains_key(&target) {
                continue;
            }
            self.next_generation += 1;
            let generation = self.next_generation;
            shared.slots.insert(
                target.clone(),
                Slot {
                    generation,
                    tracker: Tracker::new(check.rise, check.fall),
                },
            );
            let task = tokio::spawn(run(
                target.clone(),
                check.clone(),
                generation,
                Arc::clone(&self.shared),
                self.events.clone(),
            ));
            self.tasks.insert(target, Probing { check, task });
        }
    }

    /// A read-only handle on the health state, for other threads (the metrics exporter).
    pub fn view(&self) -> HealthView {
        HealthView(Arc::clone(&self.shared))
    }

    /// Current health of every probed target, sorted by VIP name then backend (for tests; the
    /// exporter reads a view).
    #[cfg(test)]
    pub fn snapshot(&self) -> Vec<(Target, Health)> {
        self.view().snapshot()
    }

    /// Total transitions since start: (to_down, to_up) (for tests; the exporter reads a view).
    #[cfg(test)]
    pub fn transitions(&self) -> (u64, u64) {
        self.view().transitions()
    }
}

/// The one copy of the health state (held by the probe tasks), read through the [`Monitor`]
/// or a view of it: nobody keeps a second copy that could disagree.
#[derive(Clone)]
pub struct HealthView(Arc<Mutex<Shared>>);

impl HealthView {
    /// Health of `target`; None when it is not probed (its VIP has no health check).
    pub fn health(&self, target: &Target) -> Option<Health> {
        lock(&self.0).slots.get(target).map(|s| s.tracker.health())
    }

    /// Every probed target that is down: (VIP name, backend address).
    pub fn down(&self) -> std::collections::HashSet<(String, IpAddr)> {
        lock(&self.0)
            .slots
            .iter()
            .filter(|(_, s)| s.tracker.health() == Health::Down)
            .map(|(t, _)| (t.vip.clone(), t.backend))
            .collect()
    }

    /// Current health of every probed target, sorted by VIP name then backend.
    pub fn snapshot(&self) -> Vec<(Target, Health)> {
        let shared = lock(&self.0);
        let mut out: Vec<(Target, Health)> = shared
            .slots
            .iter()
            .map(|(t, s)| (t.clone(), s.tracker.health()))
            .collect();
        out.sort_by(|(a, _), (b, _)| (&a.vip, a.backend).cmp(&(&b.vip, b.backend)));
        out
    }

    /// Total transitions since start: (to_down, to_up).
    pub fn transitions(&self) -> (u64, u64) {
        let shared = lock(&self.0);
        (shared.to_down, shared.to_up)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for probing in self.tasks.values() {
            probing.task.abort();
        }
        // Emptying the slots also silences a task that is between its probe and its update.
        lock(&self.shared).slots.clear();
    }
}

/// One target's probe loop: probe every interval (the first one at once) and record the result.
async fn run(
    target: Target,
    check: HealthCheck,
    generation: u64,
    shared: Arc<Mutex<Shared>>,
    events: UnboundedSender<Transition>,
) {
    let addr = SocketAddr::new(target.backend, check.port);
    // tokio's interval panics on a zero period; the config already refuses anything under 100ms.
    let mut ticker = tokio::time::interval(check.interval.max(Duration::from_millis(1)));
    // Delay rather than Burst: after a stall, a burst of back-to-back probes would count as
    // several consecutive results taken within a moment.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = probe(addr, &check).await;
        let mut guard = lock(&shared);
        let state = &mut *guard;
        let Some(slot) = state.slots.get_mut(&target) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        if let Err(e) = &result {
            log::debug!(
                "VIP {}: backend {}: probe failed: {e}",
                target.vip,
                target.backend
            );
        }
        let Some(health) = slot.tracker.record(result.is_ok()) else {
            continue;
        };
        // A transition to Down comes from a failure and one to Up from a success.
        let reason = match &result {
            Err(e) => format!("{}: {e}", plural(check.fall.max(1), "failure")),
            Ok(()) => plural(check.rise.max(1), "success"),
        };
        match health {
            Health::Down => {
                state.to_down += 1;
                log::warn!(
                    "VIP {}: backend {} is down: {reason}",
                    target.vip,
                    target.backend
                );
            }
            Health::Up => {
                state.to_up += 1;
                log::info!(
                    "VIP {}: backend {} is up: {reason}",
                    target.vip,
                    target.backend
                );
            }
        }
        // A closed receiver means the agent is shutting down; the state above still counts.
        let _ = events.send(Transition {
            target: target.clone(),
            health,
            reason,
        });
    }
}

/// "1 consecutive failure", "3 consecutive successes".
pub(super) fn plural(n: u32, noun: &str) -> String {
    match (n, noun.ends_with('s')) {
        (1, _) => format!("1 consecutive {noun}"),
        (_, true) => format!("{n} consecutive {noun}es"),
        (_, false) => format!("{n} consecutive {noun}s"),
    }
}

//! `lab-load hold`, the parent.
//!
//! Forks the workers (`worker.rs`) that open and keep up to millions of idle TCP connections,
//! watches them, the signals, MemAvailable and the failures, tells them when to stop, and prints
//! JSON progress lines and the final [`LoadReport`].

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::os::mem_available_mib;
use super::shared::{fork_workers, reap, Shared, FLAG_NO_PROBES, FLAG_STOP_ALL, FLAG_STOP_RAMP};
use super::signals::{SIG_STOP_ALL, SIG_STOP_RAMP};
use super::worker::Worker;
use super::{TICK, WORKER_EXIT_TIMEOUT};
use crate::reports::{note_error, LoadReport};

/// What `lab-load hold` was asked to do.
pub struct HoldPlan {
    /// Where every connection goes.
    pub target: SocketAddr,
    /// Source addresses, used round-robin (empty: the kernel's choice).
    pub binds: Vec<IpAddr>,
    /// Connections over all workers.
    pub n: u64,
    /// Worker processes.
    pub procs: usize,
    /// New connections per second over all workers; 0 = as fast as `parallel` allows.
    pub rate: u64,
    /// Connects in flight at once, per worker.
    pub parallel: usize,
    /// How long to keep the connections once every worker's ramp is over.
    pub hold: Duration,
    /// Report (and probe round) interval.
    pub every: Duration,
    /// Connections probed per interval during the hold, all workers together; 0 = none.
    pub probe_sample: usize,
    /// Stop ramping once this many connects failed or connections broke; 0 = never.
    pub max_failures: u64,
    /// Stop ramping when the host's MemAvailable drops below this.
    pub min_mem_mib: u64,
    /// Upper bound on the ramp, so a stuck run still ends.
    pub max_ramp: Duration,
    /// A connect (or confirming echo) not completed within this counts as failed.
    pub connect_timeout: Duration,
    /// Count a connection as established only once a probe sent after the handshake came back.
    pub confirm: bool,
}

impl HoldPlan {
    /// Worker `w`'s share of the connections.
    pub(super) fn share(&self, w: usize) -> u64 {
        let p = self.procs as u64;
        self.n / p + u64::from((w as u64) < self.n % p)
    }
}

// Hold worker counters.
pub(super) const H_ATTEMPTED: usize = 0;
pub(super) const H_OPENED: usize = 1;
pub(super) const H_OPEN: usize = 2;
pub(super) const H_FAILED: usize = 3;
pub(super) const H_BROKEN: usize = 4;
pub(super) const H_IN_FLIGHT: usize = 5;
pub(super) const H_PROBES_SENT: usize = 6;
pub(super) const H_PROBES_OK: usize = 7;
pub(super) const H_PROBES_FAILED: usize = 8;
/// 0 ramping, 1 holding, 2 done (report written).
pub(super) const H_PHASE: usize = 9;
pub(super) const H_PEAK_RSS: usize = 10;

/// What a worker hands back besides its counters.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct WorkerText {
    pub(super) stop_reason: Option<String>,
    pub(super) errors: Vec<String>,
}

/// `lab-load hold`, the parent: forks the workers, watches them, the signals, MemAvailable and the
/// failure count, tells them when to stop ramping, stop probing and finish, and reports.
pub fn run(plan: &HoldPlan) -> Result<()> {
    let shared = Shared::new(plan.procs)?;
    let pids = fork_workers(plan.procs, |w| {
        let mut worker = Worker::new(plan, w, &shared);
        worker.run();
    })?;
    let mut alive = vec![true; plan.procs];
    let start = Instant::now();
    let mut stop_reason: Option<String> = None;
    let mut errors: Vec<String> = Vec::new();
    let mut ramp_end: Option<Instant> = None;
    let mut next_report = start + plan.every;
    let stop_ramp = |reason: String, stop_reason: &mut Option<String>| {
        if stop_reason.is_none() {
            *stop_reason = Some(reason);
        }
        shared.flag(FLAG_STOP_RAMP).store(1, Ordering::Release);
    };
    let report = |phase: &str, alive: &[bool]| {
        let line = json!({
            "t": (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "phase": phase,
            "attempted": shared.sum(H_ATTEMPTED, alive),
            "established": shared.sum(H_OPEN, alive),
            "opened": shared.sum(H_OPENED, alive),
            "failed": shared.sum(H_FAILED, alive),
            "broken": shared.sum(H_BROKEN, alive),
            "in_flight": shared.sum(H_IN_FLIGHT, alive),
            "probes_ok": shared.sum(H_PROBES_OK, alive),
            "probes_failed": shared.sum(H_PROBES_FAILED, alive),
        });
        println!("{line}");
    };
    loop {
        std::thread::sleep(TICK);
        let now = Instant::now();
        let before = alive.clone();
        reap(&pids, &mut alive);
        for w in 0..plan.procs {
            // A worker gone before reporting took its connections with it.
            if before[w] && !alive[w] && shared.get(w, H_PHASE) < 2 {
                note_error(&mut errors, format!("worker {w} exited early"));
            }
        }
        if SIG_STOP_ALL.load(Ordering::Relaxed) {
            // During the hold a signal is how a coordinator ends it (as `--hold-s` would):
            // not a reason the ramp stopped.
            if ramp_end.is_none() {
                stop_ramp("ended by signal".into(), &mut stop_reason);
            }
            break;
        }
        if ramp_end.is_none() {
            if let Some(reason) = why_stop_the_ramp(plan, &shared, &alive, now - start) {
                stop_ramp(reason, &mut stop_reason);
            }
            let ramping = (0..plan.procs).any(|w| alive[w] && shared.get(w, H_PHASE) == 0);
            if !ramping {
                ramp_end = Some(now);
                report("hold", &alive);
                next_report = now + plan.every;
            }
        }
        if let Some(end) = ramp_end {
            let held = now.duration_since(end);
            if held + plan.every >= plan.hold {
                shared.flag(FLAG_NO_PROBES).store(1, Ordering::Release);
            }
            if held >= plan.hold {
                break;
            }
        }
        if alive.iter().all(|a| !a) {
            note_error(&mut errors, "every worker exited".into());
            break;
        }
        if now >= next_report {
            next_report += plan.every;
            report(if ramp_end.is_some() { "hold" } else { "ramp" }, &alive);
        }
    }
    let end = Instant::now();
    shared.flag(FLAG_NO_PROBES).store(1, Ordering::Release);
    shared.flag(FLAG_STOP_ALL).store(1, Ordering::Release);

    let (counted, worker_reasons) =
        collect_worker_reports(plan, &shared, &pids, &mut alive, &mut errors);
    if stop_reason.is_none() && !worker_reasons.is_empty() {
        stop_reason = Some(worker_reasons.join("; "));
    }
    let ramp = Ramp {
        start,
        end: ramp_end,
        run_end: end,
    };
    let report = load_report(plan, &shared, &counted, ramp, stop_reason, errors);
    println!("{}", serde_json::to_string(&report)?);
    // Reap the rest; PR_SET_PDEATHSIG kills any straggler when we exit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reap(&pids, &mut alive) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Why the ramp must stop now, if it must: a signal, the memory floor, too many failures or
/// the time limit, the first that applies.
fn why_stop_the_ramp(
    plan: &HoldPlan,
    shared: &Shared,
    alive: &[bool],
    ramping_for: Duration,
) -> Option<String> {
    if SIG_STOP_RAMP.load(Ordering::Relaxed) {
        return Some("ramp stopped by signal".into());
    }
    if let Some(m) = mem_available_mib() {
        if m < plan.min_mem_mib {
            return Some(format!(
                "MemAvailable {m} MiB below the {} MiB floor",
                plan.min_mem_mib
            ));
        }
    }
    let bad = shared.sum(H_FAILED, alive) + shared.sum(H_BROKEN, alive);
    if plan.max_failures > 0 && bad >= plan.max_failures {
        return Some(format!(
            "{bad} connects failed or connections broke (limit {})",
            plan.max_failures
        ));
    }
    if ramping_for >= plan.max_ramp {
        return Some(format!(
            "ramp time limit ({} s) reached",
            plan.max_ramp.as_secs()
        ));
    }
    None
}

/// Collects the workers' reports: a worker sets its phase to done once its text is written,
/// then exits (closing its sockets, which takes a moment with thousands of them). Returns
/// which workers reported (their counters count) and the distinct reasons they stopped
/// early; their errors go into `errors`.
fn collect_worker_reports(
    plan: &HoldPlan,
    shared: &Shared,
    pids: &[libc::pid_t],
    alive: &mut [bool],
    errors: &mut Vec<String>,
) -> (Vec<bool>, Vec<String>) {
    let deadline = Instant::now() + WORKER_EXIT_TIMEOUT;
    let mut done = vec![false; plan.procs];
    while Instant::now() < deadline {
        for (w, d) in done.iter_mut().enumerate() {
            *d = *d || shared.get(w, H_PHASE) >= 2;
        }
        let running = reap(pids, alive);
        if (0..plan.procs).all(|w| done[w] || !alive[w]) || running == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut worker_reasons = Vec::new();
    for (w, &d) in done.iter().enumerate() {
        if !d {
            note_error(errors, format!("worker {w} did not report"));
            continue;
        }
        let t: WorkerText = serde_json::from_str(&shared.text(w)).unwrap_or_default();
        for e in t.errors {
            note_error(errors, e);
        }
        if let Some(r) = t.stop_reason {
            if !worker_reasons.contains(&r) {
                worker_reasons.push(r);
            }
        }
    }
    (done, worker_reasons)
}

/// When the run started, when its ramp ended (if it did), and when it ended.
struct Ramp {
    start: Instant,
    end: Option<Instant>,
    run_end: Instant,
}

/// The final report from the counters of the workers that reported (`counted`).
fn load_report(
    plan: &HoldPlan,
    shared: &Shared,
    counted: &[bool],
    ramp: Ramp,
    stop_reason: Option<String>,
    errors: Vec<String>,
) -> LoadReport {
    let Ramp {
        start,
        end: ramp_end,
        run_end: end,
    } = ramp;
    let opened = shared.sum(H_OPENED, counted);
    let ramp_seconds = ramp_end.unwrap_or(end).duration_since(start).as_secs_f64();
    LoadReport {
        attempted: shared.sum(H_ATTEMPTED, counted),
        established: shared.sum(H_OPEN, counted),
        opened,
        failed: shared.sum(H_FAILED, counted),
        broken: shared.sum(H_BROKEN, counted),
        ramp_seconds,
        ramp_per_s: if ramp_seconds > 0.0 {
            opened as f64 / ramp_seconds
        } else {
            0.0
        },
        hold_seconds: ramp_end.map_or(0.0, |e| end.duration_since(e).as_secs_f64()),
        probes_sent: shared.sum(H_PROBES_SENT, counted),
        probes_ok: shared.sum(H_PROBES_OK, counted),
        probes_failed: shared.sum(H_PROBES_FAILED, counted),
        stop_reason,
        errors,
        workers: plan.procs,
        worker_peak_rss_kib: (0..plan.procs)
            .map(|w| shared.get(w, H_PEAK_RSS))
            .max()
            .unwrap_or(0),
    }
}

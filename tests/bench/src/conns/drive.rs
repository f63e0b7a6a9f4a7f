//! What both runs share: the lab tuned for many connections, the loaders, the ramp and the hold.

use super::host::CpuStat;
use super::*;

/// Hooks a target gets called at: before the loaders start, when every loader has finished
/// its ramp, once during the hold, and on every monitoring tick.
pub(super) trait Hooks {
    fn ramp_start(&mut self, lab: &Lab);
    fn ramp_end(&mut self, lab: &Lab);
    fn hold(&mut self, lab: &Lab);
    fn poll(&mut self, _lab: &mut Lab) {}
}

/// A lab of 4 clients and 3 backends tuned for many connections, with a `lab-load sink` on
/// port 9000 of every backend (their pids are returned, by backend).
pub(super) fn build_lab(connections: u64) -> Result<(Lab, Vec<u32>)> {
    let mut lab = Lab::new(LabSpec {
        clients: CLIENTS,
        backends: BACKENDS,
        port: 8080,
        ..Default::default()
    })?;
    let range = format!("net.ipv4.ip_local_port_range={PORT_LO} {PORT_HI}");
    // All per-namespace: connect() ports (one range per source address and destination),
    // and accept queues deep enough for the ramp.
    for i in 0..lab.clients() {
        sysctl(lab.client_ns(i), &range)?;
    }
    let mut servers: Vec<String> = (0..lab.backends())
        .map(|i| lab.backend_ns(i).to_string())
        .collect();
    servers.push(lab.gateway_ns().to_string());
    for ns in &servers {
        sysctl(ns, "net.core.somaxconn=65535")?;
        sysctl(ns, "net.ipv4.tcp_max_syn_backlog=65535")?;
    }
    sysctl(lab.gateway_ns(), &range)?;
    // One sink per backend with enough workers for its share (Maglev or round robin spread
    // the connections about evenly; a quarter more covers the unevenness).
    let cap = fd_hard_limit().saturating_sub(64).max(1);
    let per_backend = connections.div_ceil(BACKENDS as u64);
    let workers = (per_backend + per_backend / 4).div_ceil(cap) + 1;
    let load = tool_path("lab-load");
    let mut sinks = Vec::new();
    for i in 0..lab.backends() {
        let ns = lab.backend_ns(i).to_string();
        let pid = lab.spawn(
            &ns,
            &load,
            &[
                "sink",
                "--port",
                &PORT.to_string(),
                "--procs",
                &workers.to_string(),
            ],
        )?;
        lab.wait_for_log(pid, "READY", Duration::from_secs(20))?;
        sinks.push(pid);
    }
    Ok((lab, sinks))
}

pub(super) fn sysctl(ns: &str, kv: &str) -> Result<()> {
    netns::run(ns, &["sysctl", "-q", "-w", kv])?;
    Ok(())
}

/// What [`drive`] observed.
pub(super) struct Drive {
    pub(super) reports: Vec<LoadReport>,
    pub(super) sink_open: Vec<u64>,
    pub(super) ramp_wall: Duration,
    pub(super) softirq_percent: f64,
    pub(super) min_mem: u64,
    pub(super) host_used: u64,
    pub(super) mem_stop: Option<String>,
    pub(super) loader_reason: Option<String>,
    pub(super) errors: Vec<String>,
    pub(super) notes: Vec<String>,
    pub(super) timeline: Vec<(f64, u64)>,
}

impl Drive {
    pub(super) fn result(&self, target: &str, goal: u64) -> ConnsResult {
        let sum = |f: fn(&LoadReport) -> u64| self.reports.iter().map(f).sum::<u64>();
        let client_established = sum(|r| r.established);
        let backend_open: u64 = self.sink_open.iter().sum();
        let ramp_seconds = self
            .reports
            .iter()
            .map(|r| r.ramp_seconds)
            .fold(0.0, f64::max);
        let opened = sum(|r| r.opened);
        let mut r = failed_result(target, goal, String::new());
        r.attempted = sum(|r| r.attempted);
        r.stopped_reason = self.mem_stop.clone().or(self.loader_reason.clone());
        r.held = client_established.min(backend_open);
        r.client_established = client_established;
        r.backend_open = backend_open;
        r.backend_open_each = self.sink_open.clone();
        r.failed = sum(|r| r.failed);
        r.broken = sum(|r| r.broken);
        r.ramp_seconds = ramp_seconds;
        r.ramp_per_s = if ramp_seconds > 0.0 {
            opened as f64 / ramp_seconds
        } else {
            0.0
        };
        r.probes_sent = sum(|r| r.probes_sent);
        r.probes_ok = sum(|r| r.probes_ok);
        r.softirq_cpu_percent = self.softirq_percent;
        r.host_memory_used_bytes = self.host_used;
        r.min_mem_available_bytes = self.min_mem;
        r.timeline = self.timeline.clone();
        r
    }
}

/// Starts one `lab-load hold` per client (its share of the connections, over its extra source
/// addresses), follows their progress and the host's memory, stops the ramp at the memory
/// floor, measures the ramp and the hold (calling `hooks`), and collects the final reports.
pub(super) fn drive(
    lab: &mut Lab,
    sinks: &[u32],
    plan: &Plan,
    hooks: &mut dyn Hooks,
    mem_before: u64,
) -> Result<Drive> {
    hooks.ramp_start(lab);
    let cpu_start = cpu_stat()?;
    let started = Instant::now();
    let (loaders, cap) = start_loaders(lab, plan)?;
    let mut watch = Watch::new(lab.backends(), started, plan);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if !watch.tick(lab, sinks, &loaders, plan, hooks, mem_before)? {
            break;
        }
    }
    let (reports, errors, reasons) = collect_reports(lab, &loaders)?;
    let Watch {
        min_mem,
        mem_stop,
        ramp_end,
        cpu_end,
        sink_open,
        host_used,
        timeline,
        mut notes,
        ..
    } = watch;
    let ramp_wall = ramp_end
        .unwrap_or_else(Instant::now)
        .duration_since(started);
    let softirq_percent = match cpu_end {
        Some(end) => end.softirq_percent_since(&cpu_start),
        None => 0.0,
    };
    let workers_total: usize = reports.iter().map(|r| r.workers).sum();
    let peak = reports
        .iter()
        .map(|r| r.worker_peak_rss_kib)
        .max()
        .unwrap_or(0);
    notes.push(format!(
        "clients: {CLIENTS} namespaces × {} source addresses, {workers_total} lab-load worker processes (at most {cap} sockets each: hard RLIMIT_NOFILE), largest worker RSS {peak} KiB; backends: lab-load sink on port {PORT}",
        lab.client_extra_addrs4(0).len()
    ));
    notes.push(format!(
        "host MemAvailable dropped by {} from before the lab to the hold (kernel sockets of clients and backends and every process; whole host, so other work on the box moves it too), lowest {}",
        human_bytes(host_used),
        human_bytes(if min_mem == u64::MAX { 0 } else { min_mem })
    ));
    Ok(Drive {
        reports,
        sink_open,
        ramp_wall,
        softirq_percent,
        min_mem: if min_mem == u64::MAX { 0 } else { min_mem },
        host_used,
        mem_stop,
        loader_reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        errors,
        notes,
        timeline,
    })
}

/// Starts one `lab-load hold` per client with its share of `plan.connections`; returns their
/// pids and the sockets one worker process may hold.
fn start_loaders(lab: &mut Lab, plan: &Plan) -> Result<(Vec<u32>, u64)> {
    let cap = fd_hard_limit().saturating_sub(64).max(1);
    let share = |i: usize| {
        plan.connections / CLIENTS as u64
            + u64::from((i as u64) < plan.connections % CLIENTS as u64)
    };
    let workers: Vec<u64> = (0..CLIENTS)
        .map(|i| share(i).div_ceil(cap).max(1))
        .collect();
    let parallel = (IN_FLIGHT_TOTAL / workers.iter().sum::<u64>() as usize).max(8);
    let load = tool_path("lab-load");
    let target = format!("{}:{PORT}", lab.vip4());
    // Loaders ramp at different speeds; each would start its own hold clock when its own ramp
    // ends, and a fast one could finish before a slow one has ramped. So they are told to
    // hold for as long as the whole run may take, and this coordinator ends them all together
    // (SIGINT) once every one has held for `plan.hold` past the last ramp.
    let hold_s = (plan.hold + plan.max_ramp).as_secs().to_string();
    let max_ramp_s = plan.max_ramp.as_secs().to_string();
    let floor_mib = (MEM_FLOOR >> 20).to_string();
    let mut loaders = Vec::new();
    for (i, procs) in workers.iter().enumerate() {
        let ns = lab.client_ns(i).to_string();
        let bind = lab.client_bind4(i);
        let n = share(i);
        // Each loader gives up after 1% of its share failed: past that point the target has
        // stopped taking connections, and waiting out every connect timeout shows nothing new.
        let max_failures = (n / 100).max(100).to_string();
        // `--confirm`: a connection counts only once data went end to end and back, so a
        // proxy's kernel completing handshakes it has not forwarded yet does not count.
        let args = format!(
            "hold --target {target} --connections {n} --bind {bind} --procs {procs} \
             --parallel {parallel} --hold-s {hold_s} --report-every-s 1 \
             --max-failures {max_failures} --min-mem-available-mib {floor_mib} \
             --max-ramp-s {max_ramp_s} --confirm"
        );
        let args: Vec<&str> = args.split_whitespace().collect();
        let pid = lab.spawn(&ns, &load, &args)?;
        loaders.push(pid);
    }
    Ok((loaders, cap))
}

fn signal_all(pids: &[u32], signal: libc::c_int) {
    for &pid in pids {
        xdplb_lab::sys::signal(pid, signal);
    }
}

/// What the coordinator follows while the loaders run: memory, progress, the ramp's end, the
/// hold's measurements and the sinks' counts.
struct Watch {
    started: Instant,
    deadline: Instant,
    min_mem: u64,
    mem_stop: Option<String>,
    emergency: bool,
    ramp_end: Option<Instant>,
    cpu_end: Option<CpuStat>,
    measured: bool,
    released: bool,
    sink_open: Vec<u64>,
    host_used: u64,
    timeline: Vec<(f64, u64)>,
    next_sample: Instant,
    notes: Vec<String>,
}

impl Watch {
    fn new(backends: usize, started: Instant, plan: &Plan) -> Watch {
        Watch {
            started,
            deadline: started + plan.max_ramp + plan.hold + Duration::from_secs(180),
            min_mem: u64::MAX,
            mem_stop: None,
            emergency: false,
            ramp_end: None,
            cpu_end: None,
            measured: false,
            released: false,
            sink_open: vec![0; backends],
            host_used: 0,
            timeline: Vec::new(),
            next_sample: started,
            notes: Vec::new(),
        }
    }

    /// One look at the run; false once it is over (every loader finished, or time ran out).
    fn tick(
        &mut self,
        lab: &mut Lab,
        sinks: &[u32],
        loaders: &[u32],
        plan: &Plan,
        hooks: &mut dyn Hooks,
        mem_before: u64,
    ) -> Result<bool> {
        let now = Instant::now();
        hooks.poll(lab);
        self.guard_memory(loaders)?;
        let progress: Vec<Option<Value>> = loaders
            .iter()
            .map(|&pid| last_json(&lab.log_of(pid), "phase"))
            .collect();
        let running: Vec<bool> = loaders.iter().map(|&pid| lab.is_running(pid)).collect();
        if now >= self.next_sample {
            self.next_sample = (self.next_sample + Duration::from_secs(1)).max(now);
            let open: u64 = progress
                .iter()
                .flatten()
                .map(|v| v["established"].as_u64().unwrap_or(0))
                .sum();
            self.timeline
                .push((self.started.elapsed().as_secs_f64().round(), open));
        }
        let all_ramped = progress
            .iter()
            .zip(&running)
            .all(|(p, &run)| !run || p.as_ref().is_some_and(|v| v["phase"] == "hold"));
        if self.ramp_end.is_none() && all_ramped {
            self.ramp_end = Some(now);
            self.cpu_end = Some(cpu_stat()?);
            hooks.ramp_end(lab);
        }
        if let Some(end) = self.ramp_end {
            self.follow_the_hold(lab, sinks, hooks, mem_before, now >= end + SETTLE, &running)?;
            if !self.released && now >= end + SETTLE + plan.hold {
                self.released = true;
                signal_all(loaders, libc::SIGINT);
            }
        }
        if running.iter().all(|r| !r) {
            return Ok(false);
        }
        if now > self.deadline {
            self.notes
                .push("run exceeded its time limit; loaders interrupted".into());
            signal_all(loaders, libc::SIGINT);
            return Ok(false);
        }
        Ok(true)
    }

    /// Stops the ramp at the memory floor, and every loader at the emergency floor.
    fn guard_memory(&mut self, loaders: &[u32]) -> Result<()> {
        let mem = mem_available()?;
        self.min_mem = self.min_mem.min(mem);
        if mem < MEM_FLOOR && self.mem_stop.is_none() && self.ramp_end.is_none() {
            self.mem_stop = Some(format!(
                "memory: MemAvailable fell to {} (floor {}), ramp stopped",
                human_bytes(mem),
                human_bytes(MEM_FLOOR)
            ));
            signal_all(loaders, libc::SIGUSR1);
        }
        if mem < MEM_EMERGENCY && !self.emergency {
            self.emergency = true;
            self.notes.push(format!(
                "MemAvailable fell to {} during the run: loaders told to finish at once",
                human_bytes(mem)
            ));
            signal_all(loaders, libc::SIGINT);
        }
        Ok(())
    }

    /// After the ramp, once everything `settled`: measures the hold once while every loader
    /// still holds, and follows the sinks' counts.
    fn follow_the_hold(
        &mut self,
        lab: &mut Lab,
        sinks: &[u32],
        hooks: &mut dyn Hooks,
        mem_before: u64,
        settled: bool,
        running: &[bool],
    ) -> Result<()> {
        let holding = running.iter().all(|r| *r);
        if !self.measured && settled {
            self.measured = true;
            if holding {
                self.host_used = mem_before.saturating_sub(mem_available()?);
                hooks.hold(lab);
            } else {
                self.notes
                    .push("a loader finished before the hold could be measured".into());
            }
        }
        // The backends' counts (each sink prints one a second) are followed through the
        // hold and the highest kept: connections do not legitimately close during it,
        // and the loaders' own end-of-hold count is the conservative side of `held`.
        if settled && holding {
            let sample: Vec<u64> = sinks
                .iter()
                .map(|&pid| {
                    last_json(&lab.log_of(pid), "open")
                        .and_then(|v| v["open"].as_u64())
                        .unwrap_or(0)
                })
                .collect();
            if sample.iter().sum::<u64>() > self.sink_open.iter().sum::<u64>() {
                self.sink_open = sample;
            }
        }
        Ok(())
    }
}

/// Waits for every loader and reads its final report; returns the reports, the distinct
/// errors and the distinct reasons loaders stopped early.
fn collect_reports(
    lab: &mut Lab,
    loaders: &[u32],
) -> Result<(Vec<LoadReport>, Vec<String>, Vec<String>)> {
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    for &pid in loaders {
        let _ = lab.wait_exit(pid, Duration::from_secs(120));
        let log = lab.log_of(pid);
        let r: LoadReport =
            parse_last_json(&log).with_context(|| format!("lab-load hold report (pid {pid})"))?;
        for e in &r.errors {
            xdplb_lab::reports::note_error(&mut errors, e.clone());
        }
        if let Some(s) = &r.stop_reason {
            if !reasons.contains(s) {
                reasons.push(s.clone());
            }
        }
        reports.push(r);
    }
    Ok((reports, errors, reasons))
}

/// The last JSON line of `log` that has `key`.
pub(super) fn last_json(log: &str, key: &str) -> Option<Value> {
    log.lines()
        .rev()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get(key).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_json_with_key() {
        let log = "READY\n{\"phase\":\"ramp\",\"established\":1}\n{\"other\":1}\n";
        assert_eq!(last_json(log, "phase").unwrap()["established"], 1);
        assert!(last_json(log, "missing").is_none());
    }
}

//! The HAProxy run: its config, its processes (scaled out where descriptors run short), its stats.

use super::*;

pub(super) fn run_haproxy(plan: &Plan) -> Result<ConnsResult> {
    if netns::run_root(&["haproxy", "-v"]).is_err() {
        bail!("haproxy is not installed (apt-get install -y haproxy)");
    }
    let mem_before = mem_available()?;
    let (mut lab, sinks) = build_lab(plan.connections)?;
    let gw = lab.gateway_ns().to_string();
    // HAProxy terminates the VIP itself: the clients' route already sends it to the gateway.
    netns::run_root(&[
        "ip",
        "-n",
        &gw,
        "addr",
        "add",
        &format!("{}/32", lab.vip4()),
        "dev",
        "lo",
    ])?;
    let mut notes = Vec::new();
    let hard = fd_hard_limit();
    let want_fds = 2 * HAPROXY_MAXCONN + 1000;

    // First HAProxy exactly as the brief asks (one process, maxconn 2M). It needs about
    // 2 × maxconn descriptors; where the hard RLIMIT_NOFILE cannot be raised that far it
    // refuses to start, and we scale out instead.
    let mut nr_open_guard = None;
    if hard < want_fds && can_raise_rlimit() {
        nr_open_guard = Some(SysctlGuard::set("fs.nr_open", &want_fds.to_string())?);
    }
    let single = HaproxyCfg {
        maxconn: HAPROXY_MAXCONN,
        ulimit_n: Some(want_fds),
        nbthread: 2,
    };
    let mut procs = Vec::new();
    match start_haproxy(&mut lab, &single, 0, (PORT_LO, PORT_HI)) {
        Ok(p) => procs.push(p),
        Err(e) => {
            notes.push(format!(
                "HAProxy with maxconn {HAPROXY_MAXCONN} (ulimit-n {want_fds}) would not start: {}; this environment's hard RLIMIT_NOFILE is {hard} and cannot be raised (no CAP_SYS_RESOURCE)",
                one_line(&format!("{e:#}"))
            ));
            // Scale out: each process gets the connections its descriptors allow (two per
            // connection), all sharing VIP:9000 through SO_REUSEPORT (HAProxy's default).
            // Enough processes that ports, not descriptors, are the first limit: the gateway
            // reaches each backend from one address, so at most one port range per backend.
            let per = (hard.saturating_sub(200) / 2).max(100);
            let port_cap = BACKENDS as u64 * u64::from(PORT_HI - PORT_LO + 1);
            let n = plan.connections.min(port_cap + port_cap / 4).div_ceil(per) as usize + 1;
            let cfg = HaproxyCfg {
                maxconn: per,
                ulimit_n: None,
                // Many processes on two cores: one thread each.
                nbthread: 1,
            };
            for k in 0..n {
                procs.push(start_haproxy(&mut lab, &cfg, k, port_slice(k, n))?);
            }
            notes.push(format!(
                "ran {n} HAProxy processes instead (maxconn {per} each, nbthread 1, sharing {}:{PORT} via SO_REUSEPORT, each with 1/{n} of the source port range): the most one process can proxy here is about hard RLIMIT_NOFILE / 2",
                lab.vip4()
            ));
        }
    }

    let mut hooks = HaproxyHooks {
        procs: procs.clone(),
        ..HaproxyHooks::default()
    };
    let drive = drive(&mut lab, &sinks, plan, &mut hooks, mem_before)?;
    drop(nr_open_guard);

    let mut r = drive.result("haproxy", plan.connections);
    r.balancer_processes = procs.len();
    let wall = drive.ramp_wall.as_secs_f64().max(1e-3);
    if let (Some(a), Some(b)) = (hooks.ticks_start, hooks.ticks_end) {
        r.balancer_cpu_percent = 100.0 * (b - a) as f64 / clk_tck() / wall;
        r.notes.push(format!(
            "HAProxy user+system CPU during the ramp: {:.1}% of one core (its sockets' softirq work is not included: see softirq_cpu_percent)",
            r.balancer_cpu_percent
        ));
    }
    r.balancer_memory_bytes = hooks.rss_hold.unwrap_or(0);
    if let (Some(base), Some(h)) = (hooks.rss_start, hooks.rss_hold) {
        if r.held > 0 {
            r.balancer_memory_per_connection = Some(h.saturating_sub(base) as f64 / r.held as f64);
        }
        r.notes.push(format!(
            "HAProxy RSS {} before the ramp, {} during the hold ({} per held connection)",
            human_bytes(base),
            human_bytes(h),
            r.balancer_memory_per_connection
                .map_or("-".into(), |b| format!("{b:.0} B"))
        ));
    }
    r.balancer_tcp_sockets = hooks.sockstat.map_or(0, |s| s.0);
    if let Some((inuse, mem_pages)) = hooks.sockstat {
        r.notes.push(format!(
            "TCP sockets in the gateway namespace during the hold: {inuse} (two per proxied connection), socket buffers {} (kernel memory outside HAProxy's RSS)",
            human_bytes(mem_pages * 4096)
        ));
    }
    if let Some(info) = &hooks.info {
        r.notes.push(info.clone());
    }
    r.notes.extend(notes);
    r.notes.extend(drive.notes.iter().cloned());

    // Why it stopped: the evidence in order of precedence.
    let range = u64::from(PORT_HI - PORT_LO + 1);
    let dead = hooks.dead.clone();
    let mut reason = None;
    // Ports: the backends hold (nearly) a whole port range each and HAProxy reports failed
    // server connects. Per-process slices of the range fill a little unevenly, hence 90%.
    let econ = hooks.econ.unwrap_or(0);
    let near_full = r.backend_open_each.iter().any(|&o| o * 100 >= range * 90);
    if econ > 0 && near_full {
        let each: Vec<String> = r
            .backend_open_each
            .iter()
            .enumerate()
            .map(|(i, o)| format!("b{i} {o} ({:.1}%)", 100.0 * *o as f64 / range as f64))
            .collect();
        reason = Some(format!(
            "source ports: HAProxy connects to every backend from the gateway's one address ({}), and one (source address, backend:{PORT}) pair has {range} ports ({PORT_LO}-{PORT_HI}), so at most {} connections to {BACKENDS} backends; held per backend: {}; HAProxy counted {econ} failed server connects",
            lab.gateway_addr4(),
            range * BACKENDS as u64,
            each.join(", "),
        ));
    } else if let Some(m) = &drive.mem_stop {
        reason = Some(m.clone());
    } else if !dead.is_empty() {
        reason = Some(format!("HAProxy process(es) exited: {}", dead.join("; ")));
    } else if r.held < r.goal {
        reason = Some(format!(
            "{} of {} not held (server connect errors {}); loader: {}; errors {:?}",
            r.goal - r.held,
            r.goal,
            hooks.econ.map_or("?".into(), |e| e.to_string()),
            drive.loader_reason.as_deref().unwrap_or("-"),
            drive.errors
        ));
    }
    r.stopped_reason = reason;
    Ok(r)
}

pub(super) struct HaproxyCfg {
    pub(super) maxconn: u64,
    pub(super) ulimit_n: Option<u64>,
    pub(super) nbthread: u32,
}

#[derive(Clone)]
pub(super) struct HaproxyProc {
    pub(super) pid: u32,
    pub(super) socket: std::path::PathBuf,
}

/// Process `k` of `n`'s share of the ephemeral port range: processes sharing one source
/// address must not pick the same port toward the same backend.
pub(super) fn port_slice(k: usize, n: usize) -> (u32, u32) {
    let width = (PORT_HI - PORT_LO + 1) / n as u32;
    let lo = PORT_LO + k as u32 * width;
    let hi = if k + 1 == n { PORT_HI } else { lo + width - 1 };
    (lo, hi)
}

/// Writes config `k` and starts `haproxy -db` in the gateway namespace; returns once its stats
/// socket answers, or fails with its log if it exits first. `ports` is the source port range
/// it connects to the backends from.
pub(super) fn start_haproxy(
    lab: &mut Lab,
    cfg: &HaproxyCfg,
    k: usize,
    ports: (u32, u32),
) -> Result<HaproxyProc> {
    let dir = lab.dir().to_path_buf();
    let socket = dir.join(format!("haproxy-{k}.sock"));
    let mut servers = String::new();
    // `source ADDR:LO-HI` makes HAProxy pick the source port itself from a free list, as its
    // manual suggests for many server connections. Left to the kernel, connect() has to search
    // the port range for a free 4-tuple, and on this box (strace) that cost about 8 ms per
    // connect with 30,000 ports in use per backend: the proxy fell far behind its clients.
    // The limit is the same either way: one port range per (source address, backend).
    for i in 0..lab.backends() {
        servers += &format!(
            "    server b{i} {}:{PORT} source {}:{}-{}\n",
            lab.backend_addr4(i),
            lab.gateway_addr4(),
            ports.0,
            ports.1
        );
    }
    let ulimit = cfg
        .ulimit_n
        .map_or(String::new(), |u| format!("    ulimit-n {u}\n"));
    // Tuned per the HAProxy configuration manual for many idle connections: maxconn set
    // explicitly (global and frontend), long client/server timeouts, a deep listen backlog,
    // no logging. Buffers are allocated only while data moves, so idle streams cost no
    // buffer memory.
    let text = format!(
        "global\n    maxconn {maxconn}\n{ulimit}    nbthread {nbthread}\n    stats socket {sock} mode 600 level admin\n\ndefaults\n    mode tcp\n    maxconn {maxconn}\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\nfrontend vip\n    bind {vip}:{PORT} backlog 65535\n    default_backend sinks\n\nbackend sinks\n    balance roundrobin\n{servers}",
        maxconn = cfg.maxconn,
        nbthread = cfg.nbthread,
        sock = socket.display(),
        vip = lab.vip4(),
    );
    let path = dir.join(format!("haproxy-{k}.cfg"));
    std::fs::write(&path, text)?;
    let gw = lab.gateway_ns().to_string();
    let pid = lab.spawn(
        &gw,
        std::path::Path::new("haproxy"),
        &["-db", "-f", &path.to_string_lossy()],
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if !lab.is_running(pid) {
            bail!("haproxy exited: {}", lab.log_of(pid).trim());
        }
        if haproxy_cmd(&socket, "show info").is_ok() {
            return Ok(HaproxyProc { pid, socket });
        }
        if Instant::now() > deadline {
            bail!("haproxy did not answer on {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn haproxy_cmd(socket: &std::path::Path, cmd: &str) -> Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[derive(Default)]
pub(super) struct HaproxyHooks {
    pub(super) procs: Vec<HaproxyProc>,
    pub(super) ticks_start: Option<u64>,
    pub(super) ticks_end: Option<u64>,
    pub(super) rss_start: Option<u64>,
    pub(super) rss_hold: Option<u64>,
    pub(super) sockstat: Option<(u64, u64)>,
    pub(super) info: Option<String>,
    pub(super) econ: Option<u64>,
    pub(super) dead: Vec<String>,
}

impl HaproxyHooks {
    pub(super) fn ticks(&self) -> Option<u64> {
        self.procs.iter().map(|p| proc_cpu_ticks(p.pid)).sum()
    }

    pub(super) fn rss(&self) -> Option<u64> {
        self.procs.iter().map(|p| proc_rss_bytes(p.pid)).sum()
    }
}

impl Hooks for HaproxyHooks {
    fn ramp_start(&mut self, _lab: &Lab) {
        self.ticks_start = self.ticks();
        self.rss_start = self.rss();
    }

    fn ramp_end(&mut self, _lab: &Lab) {
        self.ticks_end = self.ticks();
    }

    fn hold(&mut self, lab: &Lab) {
        self.rss_hold = self.rss();
        self.sockstat = sockstat_tcp_mem(lab.gateway_ns()).ok();
        let (mut cur, mut econ, mut answered) = (0u64, 0u64, 0usize);
        let mut each = Vec::new();
        for p in &self.procs {
            if let Ok(info) = haproxy_cmd(&p.socket, "show info") {
                answered += 1;
                let c = info
                    .lines()
                    .find_map(|l| l.strip_prefix("CurrConns: "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                cur += c;
                each.push(c);
            }
            if let Ok(csv) = haproxy_cmd(&p.socket, "show stat") {
                econ += stat_column_sum(&csv, "econ", "BACKEND");
            }
        }
        self.econ = Some(econ);
        // Connections the kernel completed but HAProxy has not accepted yet wait here.
        let queued = listen_queues(lab.gateway_ns()).unwrap_or_default();
        self.info = Some(format!(
            "HAProxy show info: CurrConns {cur} over {answered} of {} processes ({each:?}); backend connect errors (econ) {econ}; accept queues of the VIP listeners {queued:?}",
            self.procs.len()
        ));
    }

    fn poll(&mut self, lab: &mut Lab) {
        for p in &self.procs {
            if !lab.is_running(p.pid) {
                let line = format!("pid {}: {}", p.pid, one_line(&lab.log_of(p.pid)));
                if !self.dead.contains(&line) {
                    self.dead.push(line);
                }
            }
        }
    }
}

/// Sums column `col` over the rows of `show stat` CSV whose svname is `row`.
pub(super) fn stat_column_sum(csv: &str, col: &str, row: &str) -> u64 {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else { return 0 };
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let (Some(ci), Some(si)) = (
        cols.iter().position(|c| *c == col),
        cols.iter().position(|c| *c == "svname"),
    ) else {
        return 0;
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(si) == Some(&row))
        .filter_map(|f| f.get(ci).and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_columns_sum() {
        let csv =
            "# pxname,svname,qcur,econ,x\nsinks,b0,0,5,\nsinks,b1,0,7,\nsinks,BACKEND,0,12,\n";
        assert_eq!(stat_column_sum(csv, "econ", "BACKEND"), 12);
        assert_eq!(stat_column_sum(csv, "nope", "BACKEND"), 0);
    }
}

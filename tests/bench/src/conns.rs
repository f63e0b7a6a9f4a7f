//! Concurrent persistent TCP connections held through one xdplb (DSR: the balancer keeps no socket) and through HAProxy in mode tcp (two sockets per connection), in the namespace lab, with memory, CPU and where each one stops.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use xdplb_lab::lab::{tool_path, Lab, LabSpec};
use xdplb_lab::netns;
use xdplb_lab::reports::{parse_last_json, LoadReport};
use xdplb_lab::scenario::Balancer;

/// How far one target got.
#[derive(Debug, Clone, Serialize)]
pub struct ConnsResult {
    /// "xdplb" or "haproxy".
    pub target: String,
    /// Connections the run aimed for.
    pub goal: u64,
    /// Connections the clients tried to open (less than `goal` when the ramp was stopped).
    pub attempted: u64,
    /// Connections alive end to end: the smaller of what the clients still had open at the
    /// end of the hold and what the backends had open during it.
    pub held: u64,
    pub ramp_per_s: f64,
    /// Memory the balancer needs for them: xdplb's map memory (it has no sockets), HAProxy's RSS.
    pub balancer_memory_bytes: u64,
    /// Balancer CPU use during the ramp, percent of one core: xdplb's XDP program run time
    /// (kernel BPF statistics), HAProxy's user+system time.
    pub balancer_cpu_percent: f64,
    /// Why it stopped short of `goal`, if it did.
    pub stopped_reason: Option<String>,
    pub notes: Vec<String>,
    /// Connections the clients still had open at the end of the hold.
    pub client_established: u64,
    /// Connections open on the backends during the hold (sum over backends).
    pub backend_open: u64,
    /// The same, per backend.
    pub backend_open_each: Vec<u64>,
    /// Connects that failed or timed out.
    pub failed: u64,
    /// Connections established, then closed or reset before the end.
    pub broken: u64,
    pub ramp_seconds: f64,
    /// Probe lines sent on a sample of held connections during the hold, and echoes received
    /// (each proves the path still works both ways).
    pub probes_sent: u64,
    pub probes_ok: u64,
    /// Softirq time of the whole box during the ramp, percent of one core: every namespace's
    /// packet processing (clients, backends, bridge, and the balancer's XDP), so an upper bound
    /// for the balancer's share.
    pub softirq_cpu_percent: f64,
    /// TCP sockets in the balancer's namespace during the hold (`/proc/net/sockstat` inuse).
    pub balancer_tcp_sockets: u64,
    /// `balancer_memory_bytes` over `held`, where it grows with the connections (HAProxy);
    /// none for xdplb, whose maps are allocated whole up front.
    pub balancer_memory_per_connection: Option<f64>,
    /// Drop of the host's MemAvailable from before the lab to the hold: the kernel sockets of
    /// clients, backends (and proxy) plus every process.
    pub host_memory_used_bytes: u64,
    pub min_mem_available_bytes: u64,
    /// Balancer processes (HAProxy may need several, see the notes).
    pub balancer_processes: usize,
    /// (seconds since the loaders started, connections the clients had open), once a second.
    pub timeline: Vec<(f64, u64)>,
}

const PORT: u16 = 9000;
const CLIENTS: usize = 4;
const BACKENDS: usize = 3;
const GIB: u64 = 1 << 30;
/// The ramp stops when MemAvailable falls below this.
const MEM_FLOOR: u64 = 2 * GIB;
/// Below this during the hold the loaders are told to finish at once.
const MEM_EMERGENCY: u64 = GIB;
/// Ephemeral ports given to connect() in the client and gateway namespaces.
const PORT_LO: u32 = 1024;
const PORT_HI: u32 = 65535;
/// Flow-table entries for the run: twice the full run's connections, so the LRU never has
/// to evict a live flow (consistent hashing would send it to the same backend anyway).
const FLOW_TABLE: u64 = 2_097_152;
/// SYNs in flight over all loader workers together: enough to keep both cores busy, few
/// enough that no accept queue overflows.
const IN_FLIGHT_TOTAL: usize = 2048;
/// Wait this long after the ramp before measuring, so late handshakes and accepts settle.
const SETTLE: Duration = Duration::from_secs(2);
/// HAProxy as the brief configures it: room for two million connections.
const HAPROXY_MAXCONN: u64 = 2_000_000;

/// Runs both targets: 50,000 connections in quick mode, 1,000,000 otherwise (HAProxy ramps
/// until it stops or reaches the same number).
pub fn run(quick: bool) -> Result<Vec<ConnsResult>> {
    let target = if quick { 50_000 } else { 1_000_000 };
    let plan = Plan {
        connections: target,
        hold: Duration::from_secs(if quick { 10 } else { 30 }),
        max_ramp: Duration::from_secs(if quick { 240 } else { 900 }),
    };
    let mut out = vec![run_xdplb(&plan)?];
    out.push(match run_haproxy(&plan) {
        Ok(r) => r,
        // A benchmark reports: a HAProxy that cannot be run is a finding, not a crash.
        Err(e) => failed_result("haproxy", target, format!("{e:#}")),
    });
    Ok(out)
}

struct Plan {
    connections: u64,
    hold: Duration,
    max_ramp: Duration,
}

/// A result with nothing measured: the base every result is filled into, and what a target
/// that could not run reports.
fn failed_result(target: &str, goal: u64, reason: String) -> ConnsResult {
    ConnsResult {
        target: target.into(),
        goal,
        attempted: 0,
        held: 0,
        ramp_per_s: 0.0,
        balancer_memory_bytes: 0,
        balancer_cpu_percent: 0.0,
        stopped_reason: Some(reason),
        notes: Vec::new(),
        client_established: 0,
        backend_open: 0,
        backend_open_each: Vec::new(),
        failed: 0,
        broken: 0,
        ramp_seconds: 0.0,
        probes_sent: 0,
        probes_ok: 0,
        softirq_cpu_percent: 0.0,
        balancer_tcp_sockets: 0,
        balancer_memory_per_connection: None,
        host_memory_used_bytes: 0,
        min_mem_available_bytes: 0,
        balancer_processes: 0,
        timeline: Vec::new(),
    }
}

// ---- the xdplb run ----

fn run_xdplb(plan: &Plan) -> Result<ConnsResult> {
    let mem_before = mem_available()?;
    let (mut lab, sinks) = build_lab(plan.connections)?;
    let yaml = xdplb_config(&mut lab)?;
    let balancer = Balancer::start(&mut lab, "native", &yaml)?;
    // Kernel BPF run-time statistics, on while this fd lives (it is a reference count, so
    // this neither clobbers nor outlives anyone else's use, even if we crash).
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime);
    let stats_fd_error = stats_fd.as_ref().err().map(|e| e.to_string());
    let prog_id = xdp_prog_id(lab.gateway_ns(), lab.gateway_if())?;

    let mut hooks = XdplbHooks {
        prog_id,
        agent_pid: balancer.pid,
        ..XdplbHooks::default()
    };
    let drive = drive(&mut lab, &sinks, plan, &mut hooks, mem_before)?;
    drop(stats_fd);

    let mut r = drive.result("xdplb", plan.connections);
    r.balancer_processes = 1;
    if let (Some(a), Some(b)) = (hooks.at_start, hooks.at_ramp_end) {
        let wall = drive.ramp_wall.as_secs_f64().max(1e-3);
        if b.run_cnt > a.run_cnt && stats_fd_ok(&hooks) {
            r.balancer_cpu_percent = 100.0 * (b.run_ns - a.run_ns) as f64 / 1e9 / wall;
            r.notes.push(format!(
                "XDP program ran {} times during the ramp, {:.0} ns per run (including the statistics' own clock reads), {:.2}% of one core (kernel BPF run-time statistics)",
                b.run_cnt - a.run_cnt,
                (b.run_ns - a.run_ns) as f64 / (b.run_cnt - a.run_cnt) as f64,
                r.balancer_cpu_percent
            ));
        }
    }
    if !stats_fd_ok(&hooks) {
        r.notes.push(format!(
            "BPF run-time statistics unavailable ({}): balancer CPU not measured (see softirq)",
            stats_fd_error
                .as_deref()
                .unwrap_or("bpftool shows no run_time_ns")
        ));
    }
    if let (Some(a), Some(b)) = (hooks.agent_ticks_start, hooks.agent_ticks_end) {
        r.notes.push(format!(
            "xdplb agent process (control plane) CPU during the ramp: {:.2}% of one core",
            100.0 * (b - a) as f64 / clk_tck() / drive.ramp_wall.as_secs_f64().max(1e-3)
        ));
    }
    match &hooks.maps {
        Some(m) => {
            r.balancer_memory_bytes = m.total;
            r.notes.push(format!(
                "balancer memory = BPF map memory (bytes_memlock), allocated whole at start, independent of the connection count: {}",
                m.describe()
            ));
        }
        None => r.notes.push(format!(
            "map memory not read: {}",
            hooks.map_error.as_deref().unwrap_or("?")
        )),
    }
    if let Some(s) = &hooks.flows {
        r.notes.push(s.clone());
    }
    r.balancer_tcp_sockets = hooks.gateway_tcp.unwrap_or(0);
    r.notes.push(format!(
        "TCP sockets in the gateway namespace during the hold: {} (DSR: the balancer terminates nothing)",
        r.balancer_tcp_sockets
    ));
    if let Some(e) = &hooks.stats_error {
        r.notes.push(format!("xdplb stats failed: {e}"));
    }
    r.notes.extend(drive.notes.iter().cloned());
    if r.stopped_reason.is_none() && r.held < r.goal {
        r.stopped_reason = Some(format!(
            "{} of {} not held; loader errors: {:?}",
            r.goal - r.held,
            r.goal,
            drive.errors
        ));
    }
    let _ = balancer.stop(&mut lab);
    Ok(r)
}

/// Whether the kernel kept run-time statistics: bpftool omits them while they are zero, so
/// only the sample after the ramp tells.
fn stats_fd_ok(h: &XdplbHooks) -> bool {
    h.at_ramp_end.is_some_and(|s| s.stats_on)
}

fn xdplb_config(lab: &mut Lab) -> Result<String> {
    let pin = lab.pin_dir()?.join("xdplb");
    let socket = Balancer::socket(lab);
    let mut y = format!(
        "# Generated by the concurrent-connections benchmark.\ninterface: {}\nxdp_mode: native\npin_path: {}\napi_socket: {}\nflow_table_size: {FLOW_TABLE}\nmetrics: null\nvips:\n  - name: conns\n    address: '{}'\n    port: {PORT}\n    protocol: tcp\n    backends:\n",
        lab.gateway_if(),
        pin.display(),
        socket.display(),
        lab.vip4(),
    );
    for i in 0..lab.backends() {
        y += &format!("      - {{ address: '{}' }}\n", lab.backend_addr4(i));
    }
    Ok(y)
}

#[derive(Clone, Copy)]
struct ProgSample {
    run_ns: u64,
    run_cnt: u64,
    /// Whether the kernel reported run-time statistics at all.
    stats_on: bool,
}

struct MapMemory {
    total: u64,
    maps: Vec<(String, u64, u64)>,
}

impl MapMemory {
    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .maps
            .iter()
            .map(|(name, bytes, entries)| {
                format!("{name} {} ({entries} entries)", human_bytes(*bytes))
            })
            .collect();
        format!("{} in all: {}", human_bytes(self.total), parts.join(", "))
    }
}

#[derive(Default)]
struct XdplbHooks {
    prog_id: u32,
    agent_pid: u32,
    at_start: Option<ProgSample>,
    at_ramp_end: Option<ProgSample>,
    agent_ticks_start: Option<u64>,
    agent_ticks_end: Option<u64>,
    maps: Option<MapMemory>,
    map_error: Option<String>,
    flows: Option<String>,
    stats_error: Option<String>,
    gateway_tcp: Option<u64>,
}

impl Hooks for XdplbHooks {
    fn ramp_start(&mut self, _lab: &Lab) {
        self.at_start = prog_sample(self.prog_id).ok();
        self.agent_ticks_start = proc_cpu_ticks(self.agent_pid);
    }

    fn ramp_end(&mut self, _lab: &Lab) {
        self.at_ramp_end = prog_sample(self.prog_id).ok();
        self.agent_ticks_end = proc_cpu_ticks(self.agent_pid);
    }

    fn hold(&mut self, lab: &Lab) {
        self.gateway_tcp = sockstat_tcp(lab.gateway_ns()).ok();
        match prog_maps(self.prog_id).and_then(|ids| maps_memory(&ids)) {
            Ok(m) => self.maps = Some(m),
            Err(e) => self.map_error = Some(format!("{e:#}")),
        }
        // `xdplb stats` walks the flow table (about a second per million entries).
        let cfg = lab.dir().join("lb.yaml");
        let xdplb = tool_path("xdplb");
        let out = netns::run_root(&[
            &xdplb.to_string_lossy(),
            "stats",
            "--config",
            &cfg.to_string_lossy(),
            "--json",
        ]);
        match out.and_then(|o| serde_json::from_str::<Value>(&o).map_err(Into::into)) {
            Ok(v) => {
                let vip = v["vips"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["name"] == "conns"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let per_backend: Vec<String> = vip["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| format!("{} {}", b["address"], b["flows"]))
                    .collect();
                self.flows = Some(format!(
                    "xdplb stats: {} new flows, {} flow-table entries (capacity {FLOW_TABLE}), per backend {}",
                    vip["new_flows"],
                    vip["flows"],
                    per_backend.join(", ")
                ));
            }
            Err(e) => self.stats_error = Some(format!("{e:#}")),
        }
    }
}

fn prog_sample(id: u32) -> Result<ProgSample> {
    let v = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
    let run_ns = v["run_time_ns"].as_u64();
    Ok(ProgSample {
        run_ns: run_ns.unwrap_or(0),
        run_cnt: v["run_cnt"].as_u64().unwrap_or(0),
        stats_on: run_ns.is_some(),
    })
}

fn prog_maps(id: u32) -> Result<Vec<u32>> {
    let v = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
    let ids = v["map_ids"]
        .as_array()
        .context("no map_ids in bpftool prog show")?
        .iter()
        .filter_map(|x| x.as_u64().map(|x| x as u32))
        .collect();
    Ok(ids)
}

/// Memory of the program's maps plus the inner maps of any map-in-map (the Maglev rings).
fn maps_memory(ids: &[u32]) -> Result<MapMemory> {
    let mut total = 0;
    let mut maps = Vec::new();
    let mut inner_total = (0u64, 0u64);
    for &id in ids {
        let v = bpftool_json(&["map", "show", "id", &id.to_string()])?;
        let bytes = v["bytes_memlock"].as_u64().unwrap_or(0);
        total += bytes;
        let name = v["name"].as_str().unwrap_or("?").to_string();
        maps.push((name, bytes, v["max_entries"].as_u64().unwrap_or(0)));
        if v["type"].as_str().is_some_and(|t| t.contains("of_maps")) {
            for inner in inner_map_ids(id) {
                if let Ok(iv) = bpftool_json(&["map", "show", "id", &inner.to_string()]) {
                    let b = iv["bytes_memlock"].as_u64().unwrap_or(0);
                    total += b;
                    inner_total.0 += b;
                    inner_total.1 += iv["max_entries"].as_u64().unwrap_or(0);
                }
            }
        }
    }
    if inner_total.0 > 0 {
        maps.push(("rings (inner)".into(), inner_total.0, inner_total.1));
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.1));
    Ok(MapMemory { total, maps })
}

/// Inner map ids held by a map-in-map, from `bpftool map dump` (values are inner map ids).
fn inner_map_ids(id: u32) -> Vec<u32> {
    let Ok(v) = bpftool_json(&["map", "dump", "id", &id.to_string()]) else {
        return Vec::new();
    };
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let val = &e["value"];
            val.as_u64()
                .or_else(|| val["inner_map_id"].as_u64())
                .or_else(|| {
                    // Raw little-endian bytes ("0x2a", ...) in older formats.
                    let bytes: Vec<u8> = val
                        .as_array()?
                        .iter()
                        .filter_map(|b| {
                            u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok()
                        })
                        .collect();
                    (bytes.len() == 4).then(|| {
                        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as u64
                    })
                })
        })
        .map(|x| x as u32)
        .collect()
}

fn bpftool_json(args: &[&str]) -> Result<Value> {
    let mut cmd = vec!["bpftool", "-j"];
    cmd.extend_from_slice(args);
    let out = netns::run_root(&cmd)?;
    serde_json::from_str(&out).with_context(|| format!("bpftool printed {out}"))
}

/// The id of the XDP program attached to `dev` in `ns`, from `ip -j link`.
fn xdp_prog_id(ns: &str, dev: &str) -> Result<u32> {
    let out = netns::run_root(&["ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev])?;
    let v: Value = serde_json::from_str(&out)?;
    let xdp = &v[0]["xdp"];
    let id = xdp["prog"]["id"].as_u64().or_else(|| {
        xdp["attached"]
            .as_array()?
            .iter()
            .find_map(|a| a["prog"]["id"].as_u64())
    });
    id.map(|i| i as u32)
        .with_context(|| format!("no XDP program on {dev} in {ns}: {out}"))
}

// ---- the HAProxy run ----

fn run_haproxy(plan: &Plan) -> Result<ConnsResult> {
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

struct HaproxyCfg {
    maxconn: u64,
    ulimit_n: Option<u64>,
    nbthread: u32,
}

#[derive(Clone)]
struct HaproxyProc {
    pid: u32,
    socket: std::path::PathBuf,
}

/// Process `k` of `n`'s share of the ephemeral port range: processes sharing one source
/// address must not pick the same port toward the same backend.
fn port_slice(k: usize, n: usize) -> (u32, u32) {
    let width = (PORT_HI - PORT_LO + 1) / n as u32;
    let lo = PORT_LO + k as u32 * width;
    let hi = if k + 1 == n { PORT_HI } else { lo + width - 1 };
    (lo, hi)
}

/// Writes config `k` and starts `haproxy -db` in the gateway namespace; returns once its stats
/// socket answers, or fails with its log if it exits first. `ports` is the source port range
/// it connects to the backends from.
fn start_haproxy(
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

fn haproxy_cmd(socket: &std::path::Path, cmd: &str) -> Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[derive(Default)]
struct HaproxyHooks {
    procs: Vec<HaproxyProc>,
    ticks_start: Option<u64>,
    ticks_end: Option<u64>,
    rss_start: Option<u64>,
    rss_hold: Option<u64>,
    sockstat: Option<(u64, u64)>,
    info: Option<String>,
    econ: Option<u64>,
    dead: Vec<String>,
}

impl HaproxyHooks {
    fn ticks(&self) -> Option<u64> {
        self.procs.iter().map(|p| proc_cpu_ticks(p.pid)).sum()
    }

    fn rss(&self) -> Option<u64> {
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
fn stat_column_sum(csv: &str, col: &str, row: &str) -> u64 {
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

/// Raises a global sysctl for the duration of a run and puts the old value back on drop.
struct SysctlGuard {
    key: String,
    old: String,
}

impl SysctlGuard {
    fn set(key: &str, value: &str) -> Result<SysctlGuard> {
        let old = netns::run_root(&["sysctl", "-n", key])?.trim().to_string();
        netns::run_root(&["sysctl", "-q", "-w", &format!("{key}={value}")])?;
        Ok(SysctlGuard {
            key: key.into(),
            old,
        })
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let kv = format!("{}={}", self.key, self.old);
        if let Err(e) = netns::run_root(&["sysctl", "-q", "-w", &kv]) {
            eprintln!("warning: could not restore {kv}: {e:#}");
        }
    }
}

// ---- shared: the lab, the loaders and the run ----

/// Hooks a target gets called at: before the loaders start, when every loader has finished
/// its ramp, once during the hold, and on every monitoring tick.
trait Hooks {
    fn ramp_start(&mut self, lab: &Lab);
    fn ramp_end(&mut self, lab: &Lab);
    fn hold(&mut self, lab: &Lab);
    fn poll(&mut self, _lab: &mut Lab) {}
}

/// A lab of 4 clients and 3 backends tuned for many connections, with a `lab-load sink` on
/// port 9000 of every backend (their pids are returned, by backend).
fn build_lab(connections: u64) -> Result<(Lab, Vec<u32>)> {
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

fn sysctl(ns: &str, kv: &str) -> Result<()> {
    netns::run(ns, &["sysctl", "-q", "-w", kv])?;
    Ok(())
}

/// What [`drive`] observed.
struct Drive {
    reports: Vec<LoadReport>,
    sink_open: Vec<u64>,
    ramp_wall: Duration,
    softirq_percent: f64,
    min_mem: u64,
    host_used: u64,
    mem_stop: Option<String>,
    loader_reason: Option<String>,
    errors: Vec<String>,
    notes: Vec<String>,
    timeline: Vec<(f64, u64)>,
}

impl Drive {
    fn result(&self, target: &str, goal: u64) -> ConnsResult {
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
fn drive(
    lab: &mut Lab,
    sinks: &[u32],
    plan: &Plan,
    hooks: &mut dyn Hooks,
    mem_before: u64,
) -> Result<Drive> {
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

    hooks.ramp_start(lab);
    let cpu_start = cpu_stat()?;
    let started = Instant::now();
    let mut loaders = Vec::new();
    for (i, procs) in workers.iter().enumerate() {
        let ns = lab.client_ns(i).to_string();
        let bind = lab.client_bind4(i);
        let n = share(i);
        // Each loader gives up after 1% of its share failed: past that point the target has
        // stopped taking connections, and waiting out every connect timeout shows nothing new.
        let max_failures = (n / 100).max(100).to_string();
        let pid = lab.spawn(
            &ns,
            &load,
            &[
                "hold",
                "--target",
                &target,
                "--connections",
                &n.to_string(),
                "--bind",
                &bind,
                "--procs",
                &procs.to_string(),
                "--parallel",
                &parallel.to_string(),
                "--hold-s",
                &hold_s,
                "--report-every-s",
                "1",
                "--max-failures",
                &max_failures,
                "--min-mem-available-mib",
                &floor_mib,
                "--max-ramp-s",
                &max_ramp_s,
                // Counted only once data went end to end and back, so a proxy's kernel
                // completing handshakes it has not forwarded yet does not count.
                "--confirm",
            ],
        )?;
        loaders.push(pid);
    }

    let deadline = started + plan.max_ramp + plan.hold + Duration::from_secs(180);
    let mut min_mem = u64::MAX;
    let mut mem_stop = None;
    let mut emergency = false;
    let mut ramp_end: Option<Instant> = None;
    let mut cpu_end = None;
    let mut measured = false;
    let mut released = false;
    let mut sink_open = vec![0; lab.backends()];
    let mut host_used = 0;
    let mut timeline = Vec::new();
    let mut next_sample = started;
    let mut notes = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = Instant::now();
        hooks.poll(lab);
        let mem = mem_available()?;
        min_mem = min_mem.min(mem);
        if mem < MEM_FLOOR && mem_stop.is_none() && ramp_end.is_none() {
            mem_stop = Some(format!(
                "memory: MemAvailable fell to {} (floor {}), ramp stopped",
                human_bytes(mem),
                human_bytes(MEM_FLOOR)
            ));
            for &pid in &loaders {
                xdplb_lab::sys::signal(pid, libc::SIGUSR1);
            }
        }
        if mem < MEM_EMERGENCY && !emergency {
            emergency = true;
            notes.push(format!(
                "MemAvailable fell to {} during the run: loaders told to finish at once",
                human_bytes(mem)
            ));
            for &pid in &loaders {
                xdplb_lab::sys::signal(pid, libc::SIGINT);
            }
        }
        let progress: Vec<Option<Value>> = loaders
            .iter()
            .map(|&pid| last_json(&lab.log_of(pid), "phase"))
            .collect();
        let running: Vec<bool> = loaders.iter().map(|&pid| lab.is_running(pid)).collect();
        if now >= next_sample {
            next_sample = (next_sample + Duration::from_secs(1)).max(now);
            let open: u64 = progress
                .iter()
                .flatten()
                .map(|v| v["established"].as_u64().unwrap_or(0))
                .sum();
            timeline.push((started.elapsed().as_secs_f64().round(), open));
        }
        let all_ramped = progress
            .iter()
            .zip(&running)
            .all(|(p, &run)| !run || p.as_ref().is_some_and(|v| v["phase"] == "hold"));
        if ramp_end.is_none() && all_ramped {
            ramp_end = Some(now);
            cpu_end = Some(cpu_stat()?);
            hooks.ramp_end(lab);
        }
        if let Some(end) = ramp_end {
            let holding = running.iter().all(|r| *r);
            // Measure once everything settled, while every loader still holds.
            if !measured && now >= end + SETTLE {
                measured = true;
                if holding {
                    host_used = mem_before.saturating_sub(mem_available()?);
                    hooks.hold(lab);
                } else {
                    notes.push("a loader finished before the hold could be measured".into());
                }
            }
            // The backends' counts (each sink prints one a second) are followed through the
            // hold and the highest kept: connections do not legitimately close during it,
            // and the loaders' own end-of-hold count is the conservative side of `held`.
            if now >= end + SETTLE && holding {
                let sample: Vec<u64> = sinks
                    .iter()
                    .map(|&pid| {
                        last_json(&lab.log_of(pid), "open")
                            .and_then(|v| v["open"].as_u64())
                            .unwrap_or(0)
                    })
                    .collect();
                if sample.iter().sum::<u64>() > sink_open.iter().sum::<u64>() {
                    sink_open = sample;
                }
            }
        }
        if let Some(end) = ramp_end {
            if !released && now >= end + SETTLE + plan.hold {
                released = true;
                for &pid in &loaders {
                    xdplb_lab::sys::signal(pid, libc::SIGINT);
                }
            }
        }
        if running.iter().all(|r| !r) {
            break;
        }
        if now > deadline {
            notes.push("run exceeded its time limit; loaders interrupted".into());
            for &pid in &loaders {
                xdplb_lab::sys::signal(pid, libc::SIGINT);
            }
            break;
        }
    }
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    for &pid in &loaders {
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

/// The last JSON line of `log` that has `key`.
fn last_json(log: &str, key: &str) -> Option<Value> {
    log.lines()
        .rev()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get(key).is_some())
}

// ---- host measurements ----

fn mem_available() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .context("no MemAvailable in /proc/meminfo")
}

/// The `cpu` line of /proc/stat (all CPUs, in clock ticks).
#[derive(Clone, Copy)]
struct CpuStat {
    total: u64,
    softirq: u64,
    cpus: u64,
}

impl CpuStat {
    fn softirq_percent_since(&self, start: &CpuStat) -> f64 {
        let total = self.total.saturating_sub(start.total) as f64;
        if total == 0.0 {
            return 0.0;
        }
        100.0 * self.softirq.saturating_sub(start.softirq) as f64 * self.cpus as f64 / total
    }
}

fn cpu_stat() -> Result<CpuStat> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let cpus = text
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count()
        .max(1) as u64;
    Ok(CpuStat {
        total: f.iter().take(8).sum(),
        softirq: f.get(6).copied().unwrap_or(0),
        cpus,
    })
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of `pid` in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn proc_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// TCP sockets in use in `ns`.
fn sockstat_tcp(ns: &str) -> Result<u64> {
    Ok(sockstat_tcp_mem(ns)?.0)
}

/// (TCP sockets in use, TCP buffer memory in pages) in `ns`, from /proc/net/sockstat.
fn sockstat_tcp_mem(ns: &str) -> Result<(u64, u64)> {
    let out = netns::run(ns, &["cat", "/proc/net/sockstat"])?;
    let line = out
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .context("no TCP line in sockstat")?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let get = |k: &str| {
        f.iter()
            .position(|x| *x == k)
            .and_then(|i| f.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((get("inuse"), get("mem")))
}

/// Accept-queue depth (Recv-Q) of every listening TCP socket in `ns`.
fn listen_queues(ns: &str) -> Result<Vec<u64>> {
    let out = netns::run(ns, &["ss", "-Hltn"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect())
}

fn fd_hard_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit on a local struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_max
}

/// Whether this process may raise hard resource limits (CAP_SYS_RESOURCE, bit 24).
fn can_raise_rlimit() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= GIB as f64 {
        format!("{:.2} GiB", b / GIB as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

/// The last non-empty lines of a log joined on one line, bounded.
fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    tail.chars().take(400).collect()
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

    #[test]
    fn last_json_with_key() {
        let log = "READY\n{\"phase\":\"ramp\",\"established\":1}\n{\"other\":1}\n";
        assert_eq!(last_json(log, "phase").unwrap()["established"], 1);
        assert!(last_json(log, "missing").is_none());
    }

    /// The quick benchmark (100,000 connections through xdplb, then HAProxy); needs root.
    #[test]
    #[ignore]
    fn conns_quick() {
        let results = run(true).expect("concurrent-connections benchmark");
        println!("{}", serde_json::to_string_pretty(&results).unwrap());
    }

    /// The full benchmark (1,000,000 connections; several minutes, about 12 GiB of RAM).
    #[test]
    #[ignore]
    fn conns_full() {
        let results = run(false).expect("concurrent-connections benchmark");
        println!("{}", serde_json::to_string_pretty(&results).unwrap());
    }
}

//! Concurrent persistent TCP connections held through one xdplb and through HAProxy (mode tcp).
//!
//! In the namespace lab, with memory, CPU and where each one stops. xdplb forwards by DSR and
//! keeps no socket; HAProxy holds two per connection.

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

mod bpftool;
mod drive;
mod haproxy;
mod host;
mod xdplb;

use self::bpftool::{maps_memory, prog_maps, prog_sample, xdp_prog_id};
use self::drive::{build_lab, drive, Hooks};
use self::haproxy::run_haproxy;
use self::host::{
    can_raise_rlimit, clk_tck, cpu_stat, fd_hard_limit, human_bytes, listen_queues, mem_available,
    one_line, proc_cpu_ticks, proc_rss_bytes, sockstat_tcp, sockstat_tcp_mem, SysctlGuard,
};
use self::xdplb::{run_xdplb, MapMemory, ProgSample};

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

#[cfg(test)]
mod tests {
    use super::*;

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

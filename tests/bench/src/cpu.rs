//! CPU spent per connection by each end-to-end setup.
//!
//! Host softirq time (/proc/stat), a process's own CPU (/proc/PID/stat) and an XDP program's run
//! time from the kernel's BPF statistics (`BPF_ENABLE_STATS`), sampled around one measured run.
//!
//! Why these three: an XDP balancer does all its work in the softirq that receives the
//! packet, a proxy in a process plus the softirqs of its two TCP stacks, nftables in the
//! softirq of the forwarding path. The XDP run time is the only figure here that belongs to
//! one program alone; softirq time is host-wide (clients, backends and any other job on the
//! machine are in it), so a setup's share is its softirq per connection minus that of the
//! `direct` setup, which crosses no balancer at all, measured in the same rounds.

use std::os::fd::OwnedFd;

use anyhow::{Context as _, Result};
use serde::Serialize;
use xdplb_lab::netns;

/// Turns on run-time statistics for every BPF program while the returned fd is open
/// (`BPF_ENABLE_STATS`, kernel ≥ 5.8, the same switch as `kernel.bpf_stats_enabled`, but
/// reverted by the kernel when the fd closes, so a crashed bench leaves nothing on).
pub fn enable_bpf_stats() -> Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("BPF_ENABLE_STATS (BPF_STATS_RUN_TIME)")
}

/// Nanoseconds per clock tick of /proc/stat and /proc/PID/stat.
fn ns_per_tick() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e9 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// Softirq time of all CPUs since boot, ns (the 7th value of /proc/stat's `cpu` line).
pub fn softirq_ns() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let ticks: f64 = line
        .split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .context("no softirq field in /proc/stat")?;
    Ok(ticks * ns_per_tick())
}

/// User plus system CPU of process `pid` (all its threads), ns.
pub fn process_ns(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page, utime 14 and stime 15.
    let field = |n: usize| -> Result<f64> {
        f.get(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {n} of /proc/{pid}/stat"))
    };
    Ok((field(14)? + field(15)?) * ns_per_tick())
}

/// The id of the XDP program attached to `dev` in namespace `ns`.
pub fn xdp_prog_id(ns: &str, dev: &str) -> Result<u32> {
    let out = netns::run_root(&["ip", "-n", ns, "-d", "-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -j link`")?;
    v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .map(|id| id as u32)
        .with_context(|| format!("no XDP program on {dev} in {ns}: {out}"))
}

/// Run time (ns) and run count of program `id`, as the kernel's BPF statistics hold them.
pub fn prog_stats(id: u32) -> Result<(f64, u64)> {
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        if info.id() == id {
            return Ok((info.run_time().as_nanos() as f64, info.run_count()));
        }
    }
    anyhow::bail!("BPF program {id} is not loaded")
}

/// What one setup spent during one measured run, as counter deltas.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    pub softirq_ns: f64,
    /// The setup's own process (HAProxy, the xdplb agent), 0 when it has none.
    pub process_ns: f64,
    /// The XDP program on the gateway's interface, when the setup has one.
    pub xdp: Option<(f64, u64)>,
}

/// Counter readings at the start of a run; [`CpuProbe::finish`] turns them into a sample.
pub struct CpuProbe {
    softirq: f64,
    process: Option<(u32, f64)>,
    xdp: Option<(u32, (f64, u64))>,
}

impl CpuProbe {
    pub fn start(pid: Option<u32>, xdp_id: Option<u32>) -> Result<CpuProbe> {
        Ok(CpuProbe {
            softirq: softirq_ns()?,
            process: pid.map(|p| process_ns(p).map(|v| (p, v))).transpose()?,
            xdp: xdp_id.map(|i| prog_stats(i).map(|v| (i, v))).transpose()?,
        })
    }

    pub fn finish(self) -> Result<CpuSample> {
        let process_ns = match self.process {
            Some((pid, before)) => process_ns(pid)? - before,
            None => 0.0,
        };
        let xdp = match self.xdp {
            Some((id, (t0, n0))) => {
                let (t1, n1) = prog_stats(id)?;
                Some((t1 - t0, n1 - n0))
            }
            None => None,
        };
        Ok(CpuSample {
            softirq_ns: softirq_ns()? - self.softirq,
            process_ns,
            xdp,
        })
    }
}

/// One setup's CPU per connection, summed over its measured runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuPerConn {
    /// Host-wide softirq time per connection (every namespace's, and other jobs').
    pub softirq_ns: f64,
    /// `softirq_ns` minus the `direct` setup's: the softirq the path through this setup adds.
    /// Noisy (host-wide, 10 ms ticks); may come out below zero.
    pub softirq_over_direct_ns: f64,
    /// The setup's own process (HAProxy's threads, the idle xdplb agent).
    pub process_ns: f64,
    /// XDP program run time per connection (kernel BPF statistics), when it has one.
    pub xdp_run_ns: Option<f64>,
    /// XDP program runs per connection (packets the program saw).
    pub xdp_runs: Option<f64>,
    /// What the setup costs per connection: its process plus its softirq share, and never
    /// less than its XDP run time (which is a part of its softirq time, not added to it).
    pub total_ns: f64,
}

/// Sums `samples` (one per measured run) over `connections`.
pub fn per_conn(samples: &[CpuSample], connections: u64) -> CpuPerConn {
    let n = connections.max(1) as f64;
    let softirq: f64 = samples.iter().map(|s| s.softirq_ns).sum();
    let process: f64 = samples.iter().map(|s| s.process_ns).sum();
    let xdp: Option<(f64, u64)> = samples
        .iter()
        .map(|s| s.xdp)
        .try_fold((0.0, 0u64), |acc, x| x.map(|(t, c)| (acc.0 + t, acc.1 + c)));
    CpuPerConn {
        softirq_ns: softirq / n,
        softirq_over_direct_ns: 0.0,
        process_ns: process / n,
        xdp_run_ns: xdp.map(|(t, _)| t / n),
        xdp_runs: xdp.map(|(_, c)| c as f64 / n),
        total_ns: 0.0,
    }
}

/// Fills the figures that need the `direct` setup's softirq per connection.
pub fn against_direct(c: &mut CpuPerConn, direct_softirq_ns: f64) {
    c.softirq_over_direct_ns = c.softirq_ns - direct_softirq_ns;
    c.total_ns =
        (c.process_ns + c.softirq_over_direct_ns.max(0.0)).max(c.xdp_run_ns.unwrap_or(0.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_figures() {
        let s = |softirq, process, xdp| CpuSample {
            softirq_ns: softirq,
            process_ns: process,
            xdp,
        };
        let mut c = per_conn(
            &[
                s(3000.0, 100.0, Some((200.0, 4))),
                s(1000.0, 100.0, Some((200.0, 4))),
            ],
            4,
        );
        assert_eq!((c.softirq_ns, c.process_ns), (1000.0, 50.0));
        assert_eq!((c.xdp_run_ns, c.xdp_runs), (Some(100.0), Some(2.0)));
        against_direct(&mut c, 900.0);
        assert_eq!((c.softirq_over_direct_ns, c.total_ns), (100.0, 150.0));
        // A softirq share lost in the noise still leaves the program's own run time.
        against_direct(&mut c, 2000.0);
        assert_eq!(c.total_ns, 100.0);
        let none = per_conn(&[s(1.0, 0.0, None), s(1.0, 0.0, Some((1.0, 1)))], 1);
        assert_eq!(none.xdp_run_ns, None);
    }

    #[test]
    fn own_process_cpu_is_readable() {
        assert!(process_ns(std::process::id()).expect("own /proc stat") >= 0.0);
        assert!(softirq_ns().expect("/proc/stat") >= 0.0);
    }
}

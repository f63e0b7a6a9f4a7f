//! Host readers (/proc, sockstat, rlimits) and a sysctl guard, for the runs' measurements.

use super::*;

/// Raises a global sysctl for the duration of a run and puts the old value back on drop.
pub(super) struct SysctlGuard {
    pub(super) key: String,
    pub(super) old: String,
}

impl SysctlGuard {
    pub(super) fn set(key: &str, value: &str) -> Result<SysctlGuard> {
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

pub(super) fn mem_available() -> Result<u64> {
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
pub(super) struct CpuStat {
    pub(super) total: u64,
    pub(super) softirq: u64,
    pub(super) cpus: u64,
}

impl CpuStat {
    pub(super) fn softirq_percent_since(&self, start: &CpuStat) -> f64 {
        let total = self.total.saturating_sub(start.total) as f64;
        if total == 0.0 {
            return 0.0;
        }
        100.0 * self.softirq.saturating_sub(start.softirq) as f64 * self.cpus as f64 / total
    }
}

pub(super) fn cpu_stat() -> Result<CpuStat> {
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

pub(super) fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of `pid` in clock ticks.
pub(super) fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub(super) fn proc_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// TCP sockets in use in `ns`.
pub(super) fn sockstat_tcp(ns: &str) -> Result<u64> {
    Ok(sockstat_tcp_mem(ns)?.0)
}

/// (TCP sockets in use, TCP buffer memory in pages) in `ns`, from /proc/net/sockstat.
pub(super) fn sockstat_tcp_mem(ns: &str) -> Result<(u64, u64)> {
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
pub(super) fn listen_queues(ns: &str) -> Result<Vec<u64>> {
    let out = netns::run(ns, &["ss", "-Hltn"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect())
}

pub(super) fn fd_hard_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit on a local struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_max
}

/// Whether this process may raise hard resource limits (CAP_SYS_RESOURCE, bit 24).
pub(super) fn can_raise_rlimit() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

pub(super) fn human_bytes(b: u64) -> String {
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
pub(super) fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    tail.chars().take(400).collect()
}

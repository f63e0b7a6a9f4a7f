//! Lab connection holder for the concurrent-connections benchmark: `hold` opens and keeps up to millions of idle TCP connections, `sink` accepts and keeps them on a backend; each is a parent forking epoll workers (a process may hold only RLIMIT_NOFILE sockets) and printing JSON progress lines.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;

use xdplb_tests::reports::note_error;
use xdplb_tests::sys;

/// The probe line sent on sampled connections; the sink echoes it.
const PROBE: &[u8] = b"p\n";
/// Events fetched per epoll_wait.
const EVENTS: usize = 1024;
/// How often the parent looks at its workers, the signals and MemAvailable: often enough to
/// stop the ramp well before the memory floor, cheap enough not to matter.
const TICK: Duration = Duration::from_millis(100);
/// At most this many connects are started between two epoll_waits, so completions are
/// collected while the ramp runs at full speed.
const OPEN_BATCH: usize = 256;
/// Descriptors a worker keeps free for itself (stdio, epoll, listener) below RLIMIT_NOFILE.
const FD_RESERVE: u64 = 64;
/// How long the parent waits for workers to hand in their reports after being told to stop.
const WORKER_EXIT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(about = "Holds many idle TCP connections (hold) or accepts and keeps them (sink)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Opens N connections, holds them, reports; SIGUSR1 stops the ramp, SIGINT/SIGTERM end
    /// the hold early. The last stdout line is the final JSON report.
    Hold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        connections: u64,
        /// Source addresses, used round-robin (comma-separated).
        #[arg(long, value_delimiter = ',')]
        bind: Vec<IpAddr>,
        /// New connections per second (all workers together); 0 = as fast as `--parallel`
        /// allows.
        #[arg(long, default_value_t = 0)]
        ramp_rate: u64,
        /// Connects in flight at once, per worker.
        #[arg(long, default_value_t = 128)]
        parallel: usize,
        /// How long to keep the connections once every worker's ramp is over.
        #[arg(long, default_value_t = 10)]
        hold_s: u64,
        #[arg(long, default_value_t = 1)]
        report_every_s: u64,
        /// Connections probed (probe line sent, echo expected) per report interval during the
        /// hold, all workers together; 0 = none.
        #[arg(long, default_value_t = 1000)]
        probe_sample: usize,
        /// Stop ramping once this many connects failed or connections broke; 0 = never.
        #[arg(long, default_value_t = 0)]
        max_failures: u64,
        /// Stop ramping when the host's MemAvailable drops below this.
        #[arg(long, default_value_t = 2048)]
        min_mem_available_mib: u64,
        /// Upper bound on the ramp, so a stuck run still ends.
        #[arg(long, default_value_t = 600)]
        max_ramp_s: u64,
        /// A connect not completed within this is abandoned and counted as failed.
        #[arg(long, default_value_t = 10)]
        connect_timeout_s: u64,
        /// Worker processes; default: as few as RLIMIT_NOFILE allows.
        #[arg(long)]
        procs: Option<usize>,
        /// Count a connection as established only once a probe line sent right after the
        /// handshake came back: through a proxy the handshake completes with the proxy's
        /// kernel before anything is forwarded.
        #[arg(long)]
        confirm: bool,
    },
    /// Accepts every connection on PORT (both families) and keeps it, echoing whatever it
    /// reads; prints `{"t","accepted","open","closed"}` lines. SIGINT/SIGTERM end it.
    Sink {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 1)]
        report_every_s: u64,
        /// Worker processes sharing the listener; each stops accepting at its descriptor limit.
        #[arg(long, default_value_t = 1)]
        procs: usize,
    },
}

// Set by signal handlers, in whichever process gets the signal. Workers also obey the parent's
// flags in shared memory; these only matter to them when signalled directly (namespace teardown).
static SIG_STOP_RAMP: AtomicBool = AtomicBool::new(false);
static SIG_STOP_ALL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    SIG_STOP_RAMP.store(true, Ordering::Relaxed);
    if sig != libc::SIGUSR1 {
        SIG_STOP_ALL.store(true, Ordering::Relaxed);
    }
}

/// Installs `on_signal` without SA_RESTART, so a signal interrupts epoll_wait and is seen at once.
fn install_signals() -> Result<()> {
    for sig in [libc::SIGUSR1, libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a plain handler that only stores atomics.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error()).context("sigaction");
            }
        }
    }
    Ok(())
}

/// Raises RLIMIT_NOFILE as far as allowed and returns the soft limit: to `fs.nr_open` when we
/// may raise the hard limit (CAP_SYS_RESOURCE), else soft = hard. Without that capability
/// the hard limit is what one process can hold, hence the worker processes.
fn raise_fd_limit() -> u64 {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let lim = libc::rlimit {
        rlim_cur: nr_open,
        rlim_max: nr_open,
    };
    // SAFETY: setrlimit/getrlimit on local structs.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            sys::raise_nofile_limit();
        }
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut now);
        now.rlim_cur
    }
}

fn mem_available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Peak resident memory of this process (VmHWM), to show the tool itself stays small.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) {
    // SAFETY: the option value is a live c_int of the size passed. Failures only lose a tuning.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A sockaddr for `addr`, as storage plus length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, large enough for both families.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in fits in sockaddr_storage and has no invalid bit patterns.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// An epoll instance, closed on drop.
struct Epoll(RawFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }).map(Epoll)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: `ev` is a live epoll_event.
        cvt(unsafe { libc::epoll_ctl(self.0, op, fd, &mut ev) }).map(|_| ())
    }

    /// Waits up to `timeout`; an interrupting signal counts as no events.
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> usize {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `events` is a writable buffer of the length passed.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, ms) };
        n.max(0) as usize
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

// Shared memory between the parent and its workers: a page of flags (parent → workers), then
// one page per worker holding its counters (worker → parent) and, once it is done, its report.
const PAGE: usize = 4096;
const FLAG_STOP_RAMP: usize = 0;
/// Set one interval before the end of the hold, so every probe sent gets a full interval.
const FLAG_NO_PROBES: usize = 1;
const FLAG_STOP_ALL: usize = 2;
/// Counter slots per worker page; the report text follows them.
const COUNTERS: usize = 32;
const TEXT_LEN_SLOT: usize = COUNTERS - 1;
const TEXT_OFFSET: usize = COUNTERS * 8;
const TEXT_MAX: usize = PAGE - TEXT_OFFSET;

struct Shared {
    base: *mut u8,
    len: usize,
    workers: usize,
}

impl Shared {
    fn new(workers: usize) -> Result<Shared> {
        let len = PAGE * (workers + 1);
        // SAFETY: a fresh anonymous shared mapping, zero-filled by the kernel; it survives
        // fork() as the same memory in every process.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("mmap");
        }
        Ok(Shared {
            base: base.cast(),
            len,
            workers,
        })
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset + 8 <= self.len && offset.is_multiple_of(8));
        // SAFETY: in bounds and 8-aligned (page-aligned base); the memory lives as long as
        // `self` and is only accessed atomically.
        unsafe { &*(self.base.add(offset) as *const AtomicU64) }
    }

    fn flag(&self, i: usize) -> &AtomicU64 {
        self.word(i * 8)
    }

    fn flag_set(&self, i: usize) -> bool {
        self.flag(i).load(Ordering::Acquire) != 0
    }

    fn ctr(&self, worker: usize, i: usize) -> &AtomicU64 {
        assert!(i < COUNTERS);
        self.word(PAGE * (worker + 1) + i * 8)
    }

    fn set(&self, worker: usize, i: usize, v: u64) {
        self.ctr(worker, i).store(v, Ordering::Release);
    }

    fn get(&self, worker: usize, i: usize) -> u64 {
        self.ctr(worker, i).load(Ordering::Acquire)
    }

    /// Writes the worker's report text (truncated to the page) before it sets its phase to done.
    fn put_text(&self, worker: usize, text: &str) {
        let bytes = &text.as_bytes()[..text.len().min(TEXT_MAX)];
        // SAFETY: the text area of this worker's page, written only by this worker, read by
        // the parent only after the Release store of the length (and then of the phase).
        unsafe {
            let dst = self.base.add(PAGE * (worker + 1) + TEXT_OFFSET);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
        }
        self.set(worker, TEXT_LEN_SLOT, bytes.len() as u64);
    }

    fn text(&self, worker: usize) -> String {
        let len = (self.get(worker, TEXT_LEN_SLOT) as usize).min(TEXT_MAX);
        // SAFETY: `len` bytes of the text area, complete once the length was published.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.base.add(PAGE * (worker + 1) + TEXT_OFFSET), len)
        };
        String::from_utf8_lossy(bytes).into_owned()
    }

    fn sum(&self, i: usize, alive: &[bool]) -> u64 {
        (0..self.workers)
            .filter(|&w| alive[w])
            .map(|w| self.get(w, i))
            .sum()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Forks `n` workers running `f(index)`; each exits when `f` returns and dies with the parent.
fn fork_workers(n: usize, f: impl Fn(usize)) -> Result<Vec<libc::pid_t>> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let mut pids = Vec::with_capacity(n);
    for w in 0..n {
        // SAFETY: the process is single-threaded here, so the child may run arbitrary code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            for &p in &pids {
                // SAFETY: plain kill(2) on our own children.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            return Err(io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            // SAFETY: prctl/getppid/_exit have no preconditions. A worker must not outlive its
            // parent: nobody would stop it and it would hold its sockets forever.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
            }
            f(w);
            // SAFETY: leave without running the parent's exit-time code a second time.
            unsafe { libc::_exit(0) };
        }
        pids.push(pid);
    }
    Ok(pids)
}

/// Reaps whichever workers have exited; returns how many are still running.
fn reap(pids: &[libc::pid_t], alive: &mut [bool]) -> usize {
    for (w, &pid) in pids.iter().enumerate() {
        if alive[w] {
            let mut status = 0;
            // SAFETY: waitpid on our own child.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                alive[w] = false;
            }
        }
    }
    alive.iter().filter(|a| **a).count()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    install_signals()?;
    let fd_limit = raise_fd_limit();
    match cli.cmd {
        Cmd::Hold {
            target,
            connections,
            bind,
            ramp_rate,
            parallel,
            hold_s,
            report_every_s,
            probe_sample,
            max_failures,
            min_mem_available_mib,
            max_ramp_s,
            connect_timeout_s,
            procs,
            confirm,
        } => {
            for b in &bind {
                if b.is_ipv4() != target.is_ipv4() {
                    bail!("--bind {b} is not of the same address family as --target {target}");
                }
            }
            let cap = fd_limit.saturating_sub(FD_RESERVE).max(1);
            let procs = procs
                .unwrap_or_else(|| connections.div_ceil(cap) as usize)
                .max(1);
            if connections.div_ceil(procs as u64) > cap {
                bail!(
                    "{connections} connections over {procs} workers exceed the {cap} descriptors each may hold"
                );
            }
            let plan = HoldPlan {
                target,
                binds: bind,
                n: connections,
                procs,
                rate: ramp_rate,
                parallel: parallel.max(1),
                hold: Duration::from_secs(hold_s),
                every: Duration::from_secs(report_every_s.max(1)),
                probe_sample,
                max_failures,
                min_mem_mib: min_mem_available_mib,
                max_ramp: Duration::from_secs(max_ramp_s),
                connect_timeout: Duration::from_secs(connect_timeout_s.max(1)),
                confirm,
            };
            hold(&plan)
        }
        Cmd::Sink {
            port,
            report_every_s,
            procs,
        } => sink(
            port,
            Duration::from_secs(report_every_s.max(1)),
            procs.max(1),
            fd_limit.saturating_sub(FD_RESERVE).max(1),
        ),
    }
}

struct HoldPlan {
    target: SocketAddr,
    binds: Vec<IpAddr>,
    n: u64,
    procs: usize,
    rate: u64,
    parallel: usize,
    hold: Duration,
    every: Duration,
    probe_sample: usize,
    max_failures: u64,
    min_mem_mib: u64,
    max_ramp: Duration,
    connect_timeout: Duration,
    confirm: bool,
}

impl HoldPlan {
    /// Worker `w`'s share of the connections.
    fn share(&self, w: usize) -> u64 {
        let p = self.procs as u64;
        self.n / p + u64::from((w as u64) < self.n % p)
    }
}

// Hold worker counters.
const H_ATTEMPTED: usize = 0;
const H_OPENED: usize = 1;
const H_OPEN: usize = 2;
const H_FAILED: usize = 3;
const H_BROKEN: usize = 4;
const H_IN_FLIGHT: usize = 5;
const H_PROBES_SENT: usize = 6;
const H_PROBES_OK: usize = 7;
const H_PROBES_FAILED: usize = 8;
/// 0 ramping, 1 holding, 2 done (report written).
const H_PHASE: usize = 9;
const H_PEAK_RSS: usize = 10;

/// What a worker hands back besides its counters.
#[derive(Serialize, Deserialize, Default)]
struct WorkerText {
    stop_reason: Option<String>,
    errors: Vec<String>,
}

#[derive(Serialize)]
struct FinalReport {
    attempted: u64,
    /// Connections still open at the end of the hold.
    established: u64,
    /// Connections that completed the handshake at some point.
    opened: u64,
    /// Connects that failed or timed out.
    failed: u64,
    /// Connections that completed the handshake and were later closed or reset.
    broken: u64,
    /// From the first connect to the end of the last worker's ramp.
    ramp_seconds: f64,
    ramp_per_s: f64,
    hold_seconds: f64,
    probes_sent: u64,
    probes_ok: u64,
    probes_failed: u64,
    stop_reason: Option<String>,
    errors: Vec<String>,
    workers: usize,
    /// The largest worker's peak RSS: the tool's own memory per connection stays small.
    worker_peak_rss_kib: u64,
}

/// The parent of `hold`: forks the workers, watches them, the signals, MemAvailable and the
/// failure count, tells them when to stop ramping, stop probing and finish, and reports.
fn hold(plan: &HoldPlan) -> Result<()> {
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
            if SIG_STOP_RAMP.load(Ordering::Relaxed) {
                stop_ramp("ramp stopped by signal".into(), &mut stop_reason);
            }
            if let Some(m) = mem_available_mib() {
                if m < plan.min_mem_mib {
                    stop_ramp(
                        format!(
                            "MemAvailable {m} MiB below the {} MiB floor",
                            plan.min_mem_mib
                        ),
                        &mut stop_reason,
                    );
                }
            }
            let bad = shared.sum(H_FAILED, &alive) + shared.sum(H_BROKEN, &alive);
            if plan.max_failures > 0 && bad >= plan.max_failures {
                stop_ramp(
                    format!(
                        "{bad} connects failed or connections broke (limit {})",
                        plan.max_failures
                    ),
                    &mut stop_reason,
                );
            }
            if now.duration_since(start) >= plan.max_ramp {
                stop_ramp(
                    format!("ramp time limit ({} s) reached", plan.max_ramp.as_secs()),
                    &mut stop_reason,
                );
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

    // Collect the reports: a worker sets its phase to done once its text is written, then
    // exits (closing its sockets, which takes a moment with thousands of them).
    let deadline = Instant::now() + WORKER_EXIT_TIMEOUT;
    let mut done = vec![false; plan.procs];
    while Instant::now() < deadline {
        for (w, d) in done.iter_mut().enumerate() {
            *d = *d || shared.get(w, H_PHASE) >= 2;
        }
        let running = reap(&pids, &mut alive);
        if (0..plan.procs).all(|w| done[w] || !alive[w]) || running == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let counted = done.clone();
    let mut worker_reasons = Vec::new();
    for (w, &d) in done.iter().enumerate() {
        if !d {
            note_error(&mut errors, format!("worker {w} did not report"));
            continue;
        }
        let t: WorkerText = serde_json::from_str(&shared.text(w)).unwrap_or_default();
        for e in t.errors {
            note_error(&mut errors, e);
        }
        if let Some(r) = t.stop_reason {
            if !worker_reasons.contains(&r) {
                worker_reasons.push(r);
            }
        }
    }
    if stop_reason.is_none() && !worker_reasons.is_empty() {
        stop_reason = Some(worker_reasons.join("; "));
    }
    let opened = shared.sum(H_OPENED, &counted);
    let ramp_seconds = ramp_end.unwrap_or(end).duration_since(start).as_secs_f64();
    let report = FinalReport {
        attempted: shared.sum(H_ATTEMPTED, &counted),
        established: shared.sum(H_OPEN, &counted),
        opened,
        failed: shared.sum(H_FAILED, &counted),
        broken: shared.sum(H_BROKEN, &counted),
        ramp_seconds,
        ramp_per_s: if ramp_seconds > 0.0 {
            opened as f64 / ramp_seconds
        } else {
            0.0
        },
        hold_seconds: ramp_end.map_or(0.0, |e| end.duration_since(e).as_secs_f64()),
        probes_sent: shared.sum(H_PROBES_SENT, &counted),
        probes_ok: shared.sum(H_PROBES_OK, &counted),
        probes_failed: shared.sum(H_PROBES_FAILED, &counted),
        stop_reason,
        errors,
        workers: plan.procs,
        worker_peak_rss_kib: (0..plan.procs)
            .map(|w| shared.get(w, H_PEAK_RSS))
            .max()
            .unwrap_or(0),
    };
    println!("{}", serde_json::to_string(&report)?);
    // Reap the rest; PR_SET_PDEATHSIG kills any straggler when we exit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reap(&pids, &mut alive) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

// Per-connection states: one byte each, next to the fd, is all the tool keeps per connection.
const CONNECTING: u8 = 0;
const OPEN: u8 = 1;
/// Open, probe sent, echo not yet seen.
const PROBING: u8 = 2;
const CLOSED: u8 = 3;
/// Handshake done, confirming probe sent (`--confirm`); still counted in flight.
const CONFIRMING: u8 = 4;

#[derive(Clone, Copy)]
struct Conn {
    fd: RawFd,
    state: u8,
}

/// One hold worker: an epoll loop over its share of the connections.
struct Worker<'a> {
    plan: &'a HoldPlan,
    index: usize,
    shared: &'a Shared,
    n: u64,
    rate: f64,
    probe_sample: usize,
    conns: Vec<Conn>,
    /// Connects in flight, oldest first (all share one timeout, so FIFO order is deadline order).
    pending: VecDeque<(u32, Instant)>,
    in_flight: usize,
    opened: u64,
    open_now: u64,
    failed: u64,
    broken: u64,
    probes_sent: u64,
    probes_ok: u64,
    probes_failed: u64,
    probe_round: usize,
    errors: Vec<String>,
    stop_reason: Option<String>,
}

impl<'a> Worker<'a> {
    fn new(plan: &'a HoldPlan, index: usize, shared: &'a Shared) -> Worker<'a> {
        let n = plan.share(index);
        Worker {
            plan,
            index,
            shared,
            n,
            rate: plan.rate as f64 / plan.procs as f64,
            probe_sample: plan.probe_sample.div_ceil(plan.procs),
            conns: Vec::with_capacity(n as usize),
            pending: VecDeque::new(),
            in_flight: 0,
            opened: 0,
            open_now: 0,
            failed: 0,
            broken: 0,
            probes_sent: 0,
            probes_ok: 0,
            probes_failed: 0,
            probe_round: 0,
            errors: Vec::new(),
            stop_reason: None,
        }
    }

    fn stop_all(&self) -> bool {
        self.shared.flag_set(FLAG_STOP_ALL) || SIG_STOP_ALL.load(Ordering::Relaxed)
    }

    fn publish(&self, phase: u64) {
        let (s, w) = (self.shared, self.index);
        s.set(w, H_ATTEMPTED, self.conns.len() as u64);
        s.set(w, H_OPENED, self.opened);
        s.set(w, H_OPEN, self.open_now);
        s.set(w, H_FAILED, self.failed);
        s.set(w, H_BROKEN, self.broken);
        s.set(w, H_IN_FLIGHT, self.in_flight as u64);
        s.set(w, H_PROBES_SENT, self.probes_sent);
        s.set(w, H_PROBES_OK, self.probes_ok);
        s.set(w, H_PROBES_FAILED, self.probes_failed);
        s.set(w, H_PHASE, phase);
    }

    fn run(&mut self) {
        let ep = match Epoll::new() {
            Ok(ep) => ep,
            Err(e) => {
                self.stop_reason = Some(format!("epoll: {e}"));
                self.finish();
                return;
            }
        };
        let start = Instant::now();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut ramping = true;
        let mut next_probe = start;
        loop {
            let now = Instant::now();
            if ramping {
                let stop = self.shared.flag_set(FLAG_STOP_RAMP)
                    || SIG_STOP_RAMP.load(Ordering::Relaxed)
                    || self.stop_reason.is_some();
                if self.stop_all() {
                    self.abandon_pending();
                }
                if !stop && !self.stop_all() {
                    self.open_some(&ep, start, now);
                }
                let finished = self.conns.len() as u64 >= self.n || stop || self.stop_all();
                if finished && self.in_flight == 0 {
                    ramping = false;
                    next_probe = now;
                }
            } else {
                if self.stop_all() {
                    break;
                }
                if now >= next_probe
                    && self.probe_sample > 0
                    && !self.shared.flag_set(FLAG_NO_PROBES)
                {
                    self.probe_round_start();
                    next_probe = now + self.plan.every;
                }
            }
            self.publish(if ramping { 0 } else { 1 });
            // While ramping, come back soon to start more connects; otherwise wake for the
            // next probe round or to notice the parent's flags.
            let timeout = if ramping {
                Duration::from_millis(1)
            } else {
                next_probe
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50))
            };
            let n = ep.wait(&mut events, timeout);
            for ev in &events[..n] {
                let (flags, idx) = (ev.events, ev.u64 as usize);
                self.on_event(&ep, idx, flags);
            }
            self.expire_pending(Instant::now());
        }
        // Outstanding probes at the end had a full interval and got no echo.
        for c in &mut self.conns {
            if c.state == PROBING {
                c.state = OPEN;
                self.probes_failed += 1;
            }
        }
        self.finish();
        // Exiting closes every socket; SO_LINGER 0 (set on each) makes that an RST, so the lab
        // is not left with a million FIN_WAIT/TIME_WAIT sockets to expire.
    }

    fn finish(&mut self) {
        self.publish(1);
        self.shared.set(self.index, H_PEAK_RSS, peak_rss_kib());
        let mut text = WorkerText {
            stop_reason: self.stop_reason.clone(),
            errors: self.errors.clone(),
        };
        // Keep the report within the shared page, dropping errors if it would not fit.
        let mut s = serde_json::to_string(&text).unwrap_or_default();
        while s.len() > TEXT_MAX && !text.errors.is_empty() {
            text.errors.pop();
            s = serde_json::to_string(&text).unwrap_or_default();
        }
        if s.len() > TEXT_MAX {
            s = "{}".into();
        }
        self.shared.put_text(self.index, &s);
        self.shared.set(self.index, H_PHASE, 2);
    }

    /// Starts as many connects as the rate, the in-flight cap and the batch size allow.
    fn open_some(&mut self, ep: &Epoll, start: Instant, now: Instant) {
        let attempted = self.conns.len() as u64;
        let mut budget = (self.n - attempted) as usize;
        budget = budget.min(self.plan.parallel.saturating_sub(self.in_flight));
        budget = budget.min(OPEN_BATCH);
        if self.rate > 0.0 {
            let allowed = (now.duration_since(start).as_secs_f64() * self.rate) as u64 + 1;
            budget = budget.min(allowed.saturating_sub(attempted) as usize);
        }
        let binds = &self.plan.binds;
        for _ in 0..budget {
            let idx = self.conns.len();
            // Spread over the addresses across workers too, so each address carries an equal
            // share of all the connections (each address has one port range per destination).
            let bind = (!binds.is_empty())
                .then(|| binds[(idx * self.plan.procs + self.index) % binds.len()]);
            match open_one(self.plan.target, bind) {
                Ok(fd) => {
                    // A connect that completed at once is writable at once too, so it goes
                    // through the same completion path as the others.
                    let events = (libc::EPOLLOUT | libc::EPOLLRDHUP) as u32;
                    if let Err(e) = ep.ctl(libc::EPOLL_CTL_ADD, fd, events, idx as u64) {
                        // SAFETY: we own the fd.
                        unsafe { libc::close(fd) };
                        self.conns.push(Conn {
                            fd: -1,
                            state: CLOSED,
                        });
                        self.failed += 1;
                        note_error(&mut self.errors, format!("epoll_ctl: {e}"));
                        continue;
                    }
                    self.conns.push(Conn {
                        fd,
                        state: CONNECTING,
                    });
                    self.in_flight += 1;
                    self.pending.push_back((idx as u32, now));
                }
                Err(e) => {
                    self.conns.push(Conn {
                        fd: -1,
                        state: CLOSED,
                    });
                    self.failed += 1;
                    let fatal = e.starts_with("socket");
                    note_error(&mut self.errors, e.clone());
                    if fatal {
                        // Out of descriptors or kernel memory: more attempts would fail alike.
                        self.stop_reason = Some(format!("cannot create sockets: {e}"));
                        return;
                    }
                }
            }
        }
    }

    fn on_event(&mut self, ep: &Epoll, idx: usize, flags: u32) {
        let Some(c) = self.conns.get(idx).copied() else {
            return;
        };
        match c.state {
            CONNECTING => {
                let err = so_error(c.fd);
                self.in_flight -= 1;
                if err == 0 && flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
                    let events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
                    if let Err(e) = ep.ctl(libc::EPOLL_CTL_MOD, c.fd, events, idx as u64) {
                        note_error(&mut self.errors, format!("epoll_ctl: {e}"));
                    }
                    if self.plan.confirm {
                        if send_probe(c.fd) {
                            // Stays in flight (and under the connect timeout) until the echo.
                            self.conns[idx].state = CONFIRMING;
                            self.in_flight += 1;
                        } else {
                            note_error(&mut self.errors, os_err("confirm send"));
                            self.close(idx);
                            self.failed += 1;
                        }
                        return;
                    }
                    self.conns[idx].state = OPEN;
                    self.opened += 1;
                    self.open_now += 1;
                } else {
                    let e = io::Error::from_raw_os_error(if err == 0 { libc::EIO } else { err });
                    note_error(&mut self.errors, format!("connect: {e}"));
                    self.close(idx);
                    self.failed += 1;
                }
            }
            CONFIRMING => {
                let mut buf = [0u8; 64];
                // SAFETY: reading into a local buffer of the length passed.
                let n = unsafe {
                    libc::recv(c.fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                let e = io::Error::last_os_error();
                if n < 0 && e.kind() == io::ErrorKind::WouldBlock {
                    return;
                }
                self.in_flight -= 1;
                if n > 0 {
                    self.conns[idx].state = OPEN;
                    self.opened += 1;
                    self.open_now += 1;
                    return;
                }
                let why = if n == 0 {
                    "closed by peer before the confirming echo".to_string()
                } else {
                    format!("read before the confirming echo: {e}")
                };
                note_error(&mut self.errors, why);
                self.close(idx);
                self.failed += 1;
            }
            OPEN | PROBING => {
                let mut buf = [0u8; 64];
                // SAFETY: reading into a local buffer of the length passed.
                let n = unsafe {
                    libc::recv(c.fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                if n > 0 {
                    if c.state == PROBING {
                        self.conns[idx].state = OPEN;
                        self.probes_ok += 1;
                    }
                    return;
                }
                let e = io::Error::last_os_error();
                if n < 0 && e.kind() == io::ErrorKind::WouldBlock {
                    return;
                }
                let why = if n == 0 {
                    "closed by peer".to_string()
                } else {
                    format!("read: {e}")
                };
                note_error(&mut self.errors, why);
                if c.state == PROBING {
                    self.probes_failed += 1;
                }
                self.close(idx);
                self.open_now -= 1;
                self.broken += 1;
            }
            _ => {}
        }
    }

    fn close(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        if c.fd >= 0 {
            // SAFETY: we own the fd; closing also removes it from the epoll set.
            unsafe { libc::close(c.fd) };
        }
        c.fd = -1;
        c.state = CLOSED;
    }

    /// Connects still in flight after the timeout are abandoned as failures.
    fn expire_pending(&mut self, now: Instant) {
        while let Some(&(idx, since)) = self.pending.front() {
            let idx = idx as usize;
            let state = self.conns[idx].state;
            if state != CONNECTING && state != CONFIRMING {
                self.pending.pop_front();
                continue;
            }
            if now.duration_since(since) < self.plan.connect_timeout {
                break;
            }
            self.pending.pop_front();
            self.close(idx);
            self.in_flight -= 1;
            self.failed += 1;
            let what = if state == CONNECTING {
                "connect"
            } else {
                "confirming echo"
            };
            note_error(
                &mut self.errors,
                format!("{what}: no answer within {:?}", self.plan.connect_timeout),
            );
        }
    }

    fn abandon_pending(&mut self) {
        while let Some((idx, _)) = self.pending.pop_front() {
            let idx = idx as usize;
            if matches!(self.conns[idx].state, CONNECTING | CONFIRMING) {
                self.close(idx);
                self.in_flight -= 1;
                self.failed += 1;
            }
        }
    }

    /// Closes the previous round (probes without an echo failed) and sends the probe line on
    /// about `probe_sample` open connections, spread over the whole table and shifted each round.
    fn probe_round_start(&mut self) {
        for c in &mut self.conns {
            if c.state == PROBING {
                c.state = OPEN;
                self.probes_failed += 1;
            }
        }
        let len = self.conns.len();
        if len == 0 {
            return;
        }
        let stride = (len / self.probe_sample).max(1);
        let mut idx = self.probe_round % stride;
        self.probe_round += 1;
        while idx < len {
            let c = self.conns[idx];
            if c.state == OPEN {
                self.probes_sent += 1;
                if send_probe(c.fd) {
                    self.conns[idx].state = PROBING;
                } else {
                    self.probes_failed += 1;
                    note_error(&mut self.errors, os_err("probe send"));
                }
            }
            idx += stride;
        }
    }
}

/// Creates a non-blocking socket, binds it to `bind` (port chosen at connect time) and starts
/// connecting.
fn open_one(target: SocketAddr, bind: Option<IpAddr>) -> std::result::Result<RawFd, String> {
    let family = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(os_err("socket"));
    }
    let fail = |what: &str| {
        let e = os_err(what);
        // SAFETY: we own the fd.
        unsafe { libc::close(fd) };
        Err(e)
    };
    // RST instead of FIN on close: see the end of `Worker::run`.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a live linger struct of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    // Three SYN retries (about 15 s) instead of six (about two minutes): the connect timeout
    // gives up earlier anyway, and the kernel stops resending soon after.
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, 3);
    if let Some(b) = bind {
        if b.is_ipv4() {
            // Without it bind() picks a port unique to the address alone, capping each source
            // address at one port range in total instead of one per destination.
            let _ = sys::set_bind_address_no_port(fd);
        }
        let (ss, len) = sockaddr(SocketAddr::new(b, 0));
        // SAFETY: `ss` holds a sockaddr of length `len`.
        if unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return fail("bind");
        }
    }
    let (ss, len) = sockaddr(target);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) };
    if rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS) {
        return Ok(fd);
    }
    fail("connect")
}

/// Sends the probe line; whether all of it went out.
fn send_probe(fd: RawFd) -> bool {
    // SAFETY: sending from a static buffer on our fd.
    let n = unsafe {
        libc::send(
            fd,
            PROBE.as_ptr().cast(),
            PROBE.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    n == PROBE.len() as isize
}

fn so_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a live c_int and its length.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        );
    }
    err
}

// Sink worker counters.
const S_ACCEPTED: usize = 0;
const S_OPEN: usize = 1;
const S_CLOSED: usize = 2;
const S_ACCEPT_ERRORS: usize = 3;
/// 1 while the worker is at its descriptor cap and not accepting.
const S_FULL: usize = 4;
const S_DONE: usize = 5;

/// Listens on `[::]:port` (dual stack) and forks `procs` workers sharing the listener. Each
/// keeps its connections in one epoll set, echoing what arrives (only probe lines do) and
/// counting closes: no per-connection state beyond the kernel's, the epoll entry carries the
/// fd. A worker at `cap` connections stops accepting and leaves the rest to the others.
fn sink(port: u16, every: Duration, procs: usize, cap: u64) -> Result<()> {
    // SAFETY: plain syscall.
    let lfd = cvt(unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })
    .context("socket")?;
    sys::set_v6only(lfd, false).context("IPV6_V6ONLY")?;
    set_int_opt(lfd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    let addr = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port);
    let (ss, len) = sockaddr(addr);
    // SAFETY: `ss` holds a sockaddr of length `len`.
    cvt(unsafe { libc::bind(lfd, (&ss as *const libc::sockaddr_storage).cast(), len) })
        .with_context(|| format!("bind {addr}"))?;
    // The kernel caps the backlog at net.core.somaxconn, which the benchmark raises.
    // SAFETY: plain syscall.
    cvt(unsafe { libc::listen(lfd, 65535) }).context("listen")?;

    let shared = Shared::new(procs)?;
    let pids = fork_workers(procs, |w| sink_worker(lfd, w, &shared, cap))?;
    let mut alive = vec![true; procs];
    let all = vec![true; procs];
    let start = Instant::now();
    let report = |shared: &Shared| {
        let line = json!({
            "t": (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "accepted": shared.sum(S_ACCEPTED, &all),
            "open": shared.sum(S_OPEN, &all),
            "closed": shared.sum(S_CLOSED, &all),
            "accept_errors": shared.sum(S_ACCEPT_ERRORS, &all),
            "full_workers": shared.sum(S_FULL, &all),
            "workers": procs,
        });
        println!("{line}");
    };
    eprintln!("READY sink port {port} workers {procs}");
    let mut next_report = start + every;
    while !SIG_STOP_ALL.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        if reap(&pids, &mut alive) == 0 {
            eprintln!("every sink worker exited");
            break;
        }
        if Instant::now() >= next_report {
            next_report += every;
            report(&shared);
        }
    }
    shared.flag(FLAG_STOP_ALL).store(1, Ordering::Release);
    let deadline = Instant::now() + WORKER_EXIT_TIMEOUT;
    while Instant::now() < deadline && (0..procs).any(|w| alive[w] && shared.get(w, S_DONE) == 0) {
        reap(&pids, &mut alive);
        std::thread::sleep(Duration::from_millis(20));
    }
    report(&shared);
    let deadline = Instant::now() + Duration::from_secs(10);
    while reap(&pids, &mut alive) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn sink_worker(lfd: RawFd, w: usize, shared: &Shared, cap: u64) {
    let Ok(ep) = Epoll::new() else { return };
    // The listener is told apart from connections by a data value no fd can have.
    const LISTENER: u64 = u64::MAX;
    // EPOLLEXCLUSIVE: a new connection wakes one worker, not all of them.
    let listen_events = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32;
    let mut listening = ep
        .ctl(libc::EPOLL_CTL_ADD, lfd, listen_events, LISTENER)
        .is_ok();
    let (mut accepted, mut open, mut closed, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    // After EMFILE/ENFILE/ENOMEM the listener stays readable; pausing avoids a busy loop.
    let mut paused_until: Option<Instant> = None;
    while !shared.flag_set(FLAG_STOP_ALL) && !SIG_STOP_ALL.load(Ordering::Relaxed) {
        let now = Instant::now();
        let want = open < cap && paused_until.is_none_or(|t| now >= t);
        if want && !listening {
            listening = ep
                .ctl(libc::EPOLL_CTL_ADD, lfd, listen_events, LISTENER)
                .is_ok();
            paused_until = None;
        } else if !want && listening {
            let _ = ep.ctl(libc::EPOLL_CTL_DEL, lfd, 0, 0);
            listening = false;
        }
        let n = ep.wait(&mut events, Duration::from_millis(100));
        for ev in &events[..n] {
            if ev.u64 == LISTENER {
                // A bounded batch, so other woken workers get their share.
                for _ in 0..64 {
                    if open >= cap {
                        break;
                    }
                    // SAFETY: plain accept4 without peer address.
                    let fd = unsafe {
                        libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if fd < 0 {
                        match io::Error::last_os_error().raw_os_error() {
                            Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                            Some(libc::ECONNABORTED) => continue,
                            _ => {
                                errors += 1;
                                paused_until = Some(Instant::now() + Duration::from_millis(50));
                            }
                        }
                        break;
                    }
                    let events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
                    if ep.ctl(libc::EPOLL_CTL_ADD, fd, events, fd as u64).is_err() {
                        errors += 1;
                        // SAFETY: we own the fd.
                        unsafe { libc::close(fd) };
                        continue;
                    }
                    accepted += 1;
                    open += 1;
                }
                continue;
            }
            let fd = ev.u64 as RawFd;
            let mut buf = [0u8; 256];
            // SAFETY: reading into a local buffer of the length passed.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                // SAFETY: sending the bytes just read. A short write only loses part of a
                // probe echo, which the client then counts as a failed probe.
                unsafe {
                    libc::send(
                        fd,
                        buf.as_ptr().cast(),
                        n as usize,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                continue;
            }
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                continue;
            }
            // SAFETY: we own the fd; closing removes it from the epoll set.
            unsafe { libc::close(fd) };
            open -= 1;
            closed += 1;
        }
        shared.set(w, S_ACCEPTED, accepted);
        shared.set(w, S_OPEN, open);
        shared.set(w, S_CLOSED, closed);
        shared.set(w, S_ACCEPT_ERRORS, errors);
        shared.set(w, S_FULL, u64::from(open >= cap));
    }
    shared.set(w, S_DONE, 1);
}

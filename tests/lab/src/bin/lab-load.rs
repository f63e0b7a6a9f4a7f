//! Lab connection holder for the concurrent-connections benchmark.
//!
//! `hold` opens and keeps up to millions of idle TCP connections, `sink` accepts and keeps them on
//! a backend; each is a parent forking epoll workers (a process may hold only RLIMIT_NOFILE
//! sockets) and printing JSON progress lines. The engine is `xdplb_lab::load`; this is its command
//! line.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use xdplb_lab::load::{self, hold, sink, FD_RESERVE};

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

fn main() -> Result<()> {
    let cli = Cli::parse();
    load::install_signals()?;
    let fd_limit = load::raise_fd_limit();
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
            let plan = hold::HoldPlan {
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
            hold::run(&plan)
        }
        Cmd::Sink {
            port,
            report_every_s,
            procs,
        } => sink::run(
            port,
            Duration::from_secs(report_every_s.max(1)),
            procs.max(1),
            fd_limit.saturating_sub(FD_RESERVE).max(1),
        ),
    }
}

//! Lab traffic generator against `lab-server`s, reported as one JSON line.
//!
//! Short TCP bursts, long-held TCP connections, UDP exchanges and timed connection-rate runs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use xdplb_lab::histogram::LatencyHistogram;
use xdplb_lab::reports::{note_error, BurstReport, HoldReport, RateReport};
use xdplb_lab::sys;

mod exchange;
mod load;

use self::exchange::{bulk, burst, exchange, exchange_within, tcp_connect, tcp_once};
use self::load::{hold, rate};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(3);
const UDP_TIMEOUT: Duration = Duration::from_secs(2);
/// After the last round, how long past the ping timeout connections get to finish an exchange.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(about = "Lab traffic generator; prints one JSON object (the last line of stdout)")]
struct Cli {
    /// Pretty-print the result instead of one JSON line.
    #[arg(long, global = true)]
    human: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N short TCP connections: send `hello`, read the backend's name, close.
    Burst {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        /// Source addresses, used round-robin (comma-separated, or the flag repeated).
        #[arg(long, value_delimiter = ',')]
        bind: Vec<IpAddr>,
    },
    /// N persistent TCP connections pinged every interval; reports any that break or move.
    Hold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 10)]
        connections: usize,
        #[arg(long, value_delimiter = ',')]
        bind: Vec<IpAddr>,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        /// Stop after this long (SIGINT/SIGTERM stop earlier).
        #[arg(long, default_value_t = 60)]
        duration_s: u64,
        /// Connection attempts in flight at once while opening.
        #[arg(long, default_value_t = 64)]
        parallel: usize,
        /// A ping unanswered this long breaks the connection. Failover tests raise it: a
        /// connection an application would keep through a few seconds of retransmission
        /// while a router withdraws a dead balancer is not broken.
        #[arg(long, default_value_t = 3)]
        ping_timeout_s: u64,
    },
    /// N UDP exchanges, each from a fresh socket (so a fresh source port).
    Udp {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, value_delimiter = ',')]
        bind: Vec<IpAddr>,
        #[arg(long, default_value_t = 16)]
        parallel: usize,
    },
    /// One TCP connection moving bulk data: uploads a line of `upload` bytes, then asks for
    /// `download` bytes back; reports the backend and whether both completed in time (a path-MTU
    /// black hole shows up as a timeout).
    Bulk {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 1 << 20)]
        upload: usize,
        #[arg(long, default_value_t = 1 << 20)]
        download: usize,
        #[arg(long, default_value_t = 20)]
        timeout_s: u64,
    },
    /// Connection rate: C workers loop for S seconds (connect, send `hello`, read one line,
    /// close); reports the rate and the latency percentiles from connect start to reply.
    Rate {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 10.0)]
        duration_s: f64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Source addresses, used round-robin across all workers' connections.
        #[arg(long, value_delimiter = ',')]
        bind: Vec<IpAddr>,
    },
}

/// Bind addresses must match the target's family: a mismatch would fail every connection with
/// an unhelpful EINVAL/EAFNOSUPPORT.
fn check_binds(target: SocketAddr, binds: &[IpAddr]) -> Result<()> {
    for b in binds {
        if b.is_ipv4() != target.is_ipv4() {
            bail!("--bind {b} is not of the same address family as --target {target}");
        }
    }
    Ok(())
}

/// The source address for the `j`th exchange: round-robin over `binds`, none if empty.
fn pick_bind(binds: &[IpAddr], j: usize) -> Option<IpAddr> {
    (!binds.is_empty()).then(|| binds[j % binds.len()])
}

fn unspecified(target: SocketAddr) -> IpAddr {
    if target.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    sys::raise_nofile_limit();
    match cli.cmd {
        Cmd::Burst {
            target,
            connections,
            parallel,
            bind,
        } => {
            check_binds(target, &bind)?;
            let r = burst(target, connections, parallel, bind, Proto::Tcp).await;
            print(&r, cli.human)
        }
        Cmd::Udp {
            target,
            count,
            bind,
            parallel,
        } => {
            check_binds(target, &bind)?;
            let r = burst(target, count, parallel, bind, Proto::Udp).await;
            print(&r, cli.human)
        }
        Cmd::Hold {
            target,
            connections,
            bind,
            interval_ms,
            duration_s,
            parallel,
            ping_timeout_s,
        } => {
            check_binds(target, &bind)?;
            let r = hold(
                target,
                connections,
                parallel,
                bind,
                Duration::from_millis(interval_ms.max(1)),
                Duration::from_secs(duration_s),
                Duration::from_secs(ping_timeout_s.max(1)),
            )
            .await?;
            print(&r, cli.human)
        }
        Cmd::Bulk {
            target,
            upload,
            download,
            timeout_s,
        } => {
            let started = Instant::now();
            let result = tokio::time::timeout(
                Duration::from_secs(timeout_s),
                bulk(target, upload, download),
            )
            .await;
            let (backend, error) = match result {
                Ok(Ok(name)) => (Some(name), None),
                Ok(Err(e)) => (None, Some(format!("{e:#}"))),
                Err(_) => (None, Some(format!("timed out after {timeout_s} s"))),
            };
            let r = BulkReport {
                ok: error.is_none(),
                backend,
                uploaded: upload,
                downloaded: download,
                seconds: started.elapsed().as_secs_f64(),
                error,
            };
            print(&r, cli.human)
        }
        Cmd::Rate {
            target,
            duration_s,
            concurrency,
            bind,
        } => {
            check_binds(target, &bind)?;
            if !(duration_s.is_finite() && duration_s > 0.0) {
                bail!("--duration-s must be a positive number of seconds");
            }
            let r = rate(
                target,
                Duration::from_secs_f64(duration_s),
                concurrency,
                bind,
            )
            .await;
            print(&r, cli.human)
        }
    }
}

#[derive(Serialize)]
struct BulkReport {
    ok: bool,
    backend: Option<String>,
    uploaded: usize,
    downloaded: usize,
    seconds: f64,
    error: Option<String>,
}

fn print<T: Serialize>(r: &T, human: bool) -> Result<()> {
    let text = if human {
        serde_json::to_string_pretty(r)?
    } else {
        serde_json::to_string(r)?
    };
    println!("{text}");
    Ok(())
}

#[derive(Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("lab-client").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn bind_list_splits_on_commas_and_repeats() {
        let cli = parse(&[
            "burst",
            "--target",
            "10.201.0.10:8080",
            "--bind",
            "10.200.0.150,10.200.0.151",
            "--bind",
            "10.200.0.152",
        ]);
        let Cmd::Burst { bind, target, .. } = cli.cmd else {
            panic!("not burst")
        };
        assert_eq!(target, "10.201.0.10:8080".parse().unwrap());
        assert_eq!(
            bind,
            ["10.200.0.150", "10.200.0.151", "10.200.0.152"].map(|a| a.parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn ipv6_target_and_binds() {
        let cli = parse(&[
            "udp",
            "--target",
            "[fd00:201::10]:8080",
            "--bind",
            "fd00:200::150,fd00:200::151",
            "--count",
            "5",
            "--human",
        ]);
        assert!(cli.human);
        let Cmd::Udp {
            target,
            bind,
            count,
            ..
        } = cli.cmd
        else {
            panic!("not udp")
        };
        assert_eq!(count, 5);
        assert!(check_binds(target, &bind).is_ok());
        let v4: IpAddr = "10.200.0.150".parse().unwrap();
        assert!(check_binds(target, &[v4]).is_err());
    }

    #[test]
    fn bad_bind_is_rejected() {
        assert!(Cli::try_parse_from([
            "lab-client",
            "burst",
            "--target",
            "10.201.0.10:8080",
            "--bind",
            "10.200.0.300"
        ])
        .is_err());
    }

    #[test]
    fn hold_defaults() {
        let Cmd::Hold {
            interval_ms,
            duration_s,
            bind,
            ..
        } = parse(&["hold", "--target", "10.201.0.10:8080"]).cmd
        else {
            panic!("not hold")
        };
        assert_eq!((interval_ms, duration_s), (200, 60));
        assert!(bind.is_empty());
    }

    #[test]
    fn rate_arguments() {
        let Cmd::Rate {
            target,
            duration_s,
            concurrency,
            bind,
        } = parse(&[
            "rate",
            "--target",
            "10.201.0.10:8080",
            "--duration-s",
            "2.5",
            "--concurrency",
            "8",
            "--bind",
            "10.200.0.150,10.200.0.151",
        ])
        .cmd
        else {
            panic!("not rate")
        };
        assert_eq!(target, "10.201.0.10:8080".parse().unwrap());
        assert_eq!((duration_s, concurrency, bind.len()), (2.5, 8, 2));
    }

    #[test]
    fn round_robin_binds() {
        let binds: Vec<IpAddr> = ["10.0.0.1", "10.0.0.2"].map(|a| a.parse().unwrap()).into();
        let picked: Vec<_> = (0..4).map(|j| pick_bind(&binds, j)).collect();
        assert_eq!(
            picked,
            vec![
                Some(binds[0]),
                Some(binds[1]),
                Some(binds[0]),
                Some(binds[1])
            ]
        );
        assert_eq!(pick_bind(&[], 3), None);
    }
}

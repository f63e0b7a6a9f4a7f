//! Lab traffic generator: short TCP bursts, long-held TCP connections, UDP exchanges and timed connection-rate runs against `lab-server`s, reported as one JSON line.

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

/// Uploads `up` bytes as one line, reads the name; asks for `down` bytes, reads them and the
/// name again (which must be the same backend: the connection never moved).
async fn bulk(target: SocketAddr, up: usize, down: usize) -> Result<String> {
    use tokio::io::AsyncReadExt;
    let stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("connect {target}"))?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = vec![b'u'; up];
    line.push(b'\n');
    w.write_all(&line).await.context("upload")?;
    let mut name = String::new();
    r.read_line(&mut name).await.context("reply to upload")?;
    w.write_all(format!("bulk {down}\n").as_bytes())
        .await
        .context("download request")?;
    let mut data = vec![0u8; down + 1];
    r.read_exact(&mut data).await.context("download")?;
    if data[..down].iter().any(|b| *b != b'x') || data[down] != b'\n' {
        bail!("downloaded data is corrupt");
    }
    let mut again = String::new();
    r.read_line(&mut again)
        .await
        .context("name after download")?;
    if again != name {
        bail!("connection moved from {name:?} to {again:?}");
    }
    Ok(name.trim().to_owned())
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

/// `n` independent exchanges, `parallel` at a time.
async fn burst(
    target: SocketAddr,
    n: usize,
    parallel: usize,
    binds: Vec<IpAddr>,
    proto: Proto,
) -> BurstReport {
    let next = Arc::new(AtomicUsize::new(0));
    let report = Arc::new(Mutex::new(BurstReport::default()));
    let binds = Arc::new(binds);
    let mut workers = JoinSet::new();
    for _ in 0..parallel.clamp(1, n.max(1)) {
        let (next, report, binds) = (next.clone(), report.clone(), binds.clone());
        workers.spawn(async move {
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                if j >= n {
                    break;
                }
                let bind = pick_bind(&binds, j);
                let result = match proto {
                    Proto::Tcp => tcp_once(target, bind).await,
                    Proto::Udp => udp_once(target, bind).await,
                };
                report.lock().unwrap().record(result);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let r = report.lock().unwrap().clone();
    r
}

async fn tcp_connect(target: SocketAddr, bind: Option<IpAddr>) -> Result<TcpStream, String> {
    let sock = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = bind {
        let _ = sys::set_bind_address_no_port(sock.as_raw_fd());
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = timeout(CONNECT_TIMEOUT, sock.connect(target))
        .await
        .map_err(|_| "connect: timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Sends `msg` and reads one line: the name of the backend that answered.
async fn exchange(stream: &mut BufReader<TcpStream>, msg: &[u8]) -> Result<String, String> {
    exchange_within(stream, msg, READ_TIMEOUT).await
}

/// [`exchange`] waiting up to `wait` for the reply.
async fn exchange_within(
    stream: &mut BufReader<TcpStream>,
    msg: &[u8],
    wait: Duration,
) -> Result<String, String> {
    stream
        .get_mut()
        .write_all(msg)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    let n = timeout(wait, stream.read_line(&mut line))
        .await
        .map_err(|_| "read: timed out".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("read: connection closed".into());
    }
    let name = line.trim();
    if name.is_empty() {
        return Err("read: empty reply".into());
    }
    Ok(name.to_string())
}

async fn tcp_once(target: SocketAddr, bind: Option<IpAddr>) -> Result<String, String> {
    let stream = tcp_connect(target, bind).await?;
    exchange(&mut BufReader::new(stream), b"hello\n").await
}

async fn udp_once(target: SocketAddr, bind: Option<IpAddr>) -> Result<String, String> {
    let local = SocketAddr::new(bind.unwrap_or_else(|| unspecified(target)), 0);
    let sock = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("bind {local}: {e}"))?;
    sock.send_to(b"hello\n", target)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 512];
    // Unconnected on purpose: a reply from the wrong source (a backend answering from its own
    // address instead of the VIP) is reported as such rather than silently filtered.
    let (n, from) = timeout(UDP_TIMEOUT, sock.recv_from(&mut buf))
        .await
        .map_err(|_| "recv: timed out".to_string())?
        .map_err(|e| format!("recv: {e}"))?;
    if from != target {
        return Err(format!("reply from {from}, not {target}"));
    }
    let name = String::from_utf8_lossy(&buf[..n]).trim().to_string();
    if name.is_empty() {
        return Err("recv: empty reply".into());
    }
    Ok(name)
}

/// After a failed attempt a worker pauses this long, so an immediate error (refused, no route)
/// cannot spin and flood the failure count.
const RATE_FAIL_PAUSE: Duration = Duration::from_millis(10);

/// `concurrency` workers in a closed loop until `duration` has passed; an exchange in flight at
/// the deadline finishes and counts, and the rate is over the time until the last one ended.
async fn rate(
    target: SocketAddr,
    duration: Duration,
    concurrency: usize,
    binds: Vec<IpAddr>,
) -> RateReport {
    let start = Instant::now();
    let deadline = start + duration;
    let next = Arc::new(AtomicUsize::new(0));
    let binds = Arc::new(binds);
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (next, binds) = (next.clone(), binds.clone());
        workers.spawn(async move {
            // Per worker, merged at the end: no lock on the hot path.
            let mut hist = LatencyHistogram::new();
            let mut report = RateReport::default();
            while Instant::now() < deadline {
                let bind = pick_bind(&binds, next.fetch_add(1, Ordering::Relaxed));
                let t0 = Instant::now();
                let result = tcp_once(target, bind).await;
                let failed = result.is_err();
                if !failed {
                    hist.record(t0.elapsed().as_micros() as u64);
                }
                report.record(result);
                if failed {
                    tokio::time::sleep(RATE_FAIL_PAUSE).await;
                }
            }
            (hist, report)
        });
    }
    let mut hist = LatencyHistogram::new();
    let mut report = RateReport::default();
    while let Some(res) = workers.join_next().await {
        let (h, r) = res.expect("rate worker panicked");
        hist.merge(&h);
        report.absorb(r);
    }
    report.duration_s = start.elapsed().as_secs_f64();
    report.conn_per_s = report.connections as f64 / report.duration_s;
    report.p50_us = hist.quantile(0.50);
    report.p99_us = hist.quantile(0.99);
    report
}

/// What a held connection's task reports when it ends.
#[derive(Default)]
struct HeldOutcome {
    /// The backend the connection landed on.
    name: String,
    broken: bool,
    changed: bool,
    /// The slowest ping's round trip: a lost packet shows as a retransmission's wait.
    slowest: Duration,
    error: Option<String>,
}

async fn hold(
    target: SocketAddr,
    n: usize,
    parallel: usize,
    binds: Vec<IpAddr>,
    interval: Duration,
    duration: Duration,
    ping_timeout: Duration,
) -> Result<HoldReport> {
    let deadline = Instant::now() + duration;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(true);
    });

    let mut report = HoldReport::default();
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let mut opening = JoinSet::new();
    for j in 0..n {
        let sem = sem.clone();
        let bind = pick_bind(&binds, j);
        opening.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore not closed");
            let mut stream = BufReader::new(tcp_connect(target, bind).await?);
            let name = exchange(&mut stream, b"hello\n").await?;
            Ok::<_, String>((stream, name))
        });
    }
    let mut held = Vec::new();
    while let Some(res) = opening.join_next().await {
        match res.expect("open task panicked") {
            Ok((stream, name)) => {
                report.opened += 1;
                *report.per_backend.entry(name.clone()).or_default() += 1;
                held.push((stream, name));
            }
            Err(e) => {
                report.open_failed += 1;
                note_error(&mut report.errors, format!("open: {e}"));
            }
        }
    }
    eprintln!("READY");
    if held.is_empty() {
        return Ok(report);
    }

    // Each tick bumps the round; every connection pings once per round it sees (a slow one
    // skips rounds rather than queueing them). Dropping the sender ends the connections.
    let (round_tx, round_rx) = watch::channel(0u64);
    let mut conns = JoinSet::new();
    for (mut stream, name) in held {
        let mut rounds = round_rx.clone();
        conns.spawn(async move {
            let mut out = HeldOutcome {
                name: name.clone(),
                ..HeldOutcome::default()
            };
            while rounds.changed().await.is_ok() {
                let sent = Instant::now();
                let answer = exchange_within(&mut stream, b"ping\n", ping_timeout).await;
                out.slowest = out.slowest.max(sent.elapsed());
                match answer {
                    Ok(now) if now == name => {}
                    Ok(now) => {
                        if !out.changed {
                            out.changed = true;
                            out.error = Some(format!("backend changed: {name} -> {now}"));
                        }
                    }
                    Err(e) => {
                        out.broken = true;
                        out.error = Some(e);
                        break;
                    }
                }
            }
            out
        });
    }
    drop(round_rx);

    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    while !*stop_rx.borrow() && Instant::now() < deadline {
        tokio::select! {
            _ = ticks.tick() => {
                report.rounds += 1;
                let _ = round_tx.send(report.rounds);
            }
            _ = stop_rx.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    drop(round_tx);

    let drain_deadline = Instant::now() + ping_timeout + DRAIN_GRACE;
    loop {
        match tokio::time::timeout_at(drain_deadline, conns.join_next()).await {
            Ok(Some(res)) => {
                let out = res.expect("connection task panicked");
                report.broken += out.broken as u64;
                if out.broken {
                    *report
                        .broken_per_backend
                        .entry(out.name.clone())
                        .or_default() += 1;
                }
                report.backend_changed += out.changed as u64;
                report.slowest_ping_ms = report.slowest_ping_ms.max(out.slowest.as_millis() as u64);
                if let Some(e) = out.error {
                    note_error(&mut report.errors, e);
                }
            }
            Ok(None) => break,
            // Cannot happen with the per-read timeouts, but the run time stays bounded anyway.
            Err(_) => {
                report.broken += conns.len() as u64;
                note_error(&mut report.errors, "stuck at shutdown".into());
                conns.abort_all();
                break;
            }
        }
    }
    Ok(report)
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

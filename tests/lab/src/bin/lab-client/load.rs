//! Sustained load: a closed-loop rate of exchanges, and connections held open and probed.

use super::*;

/// After a failed attempt a worker pauses this long, so an immediate error (refused, no route)
/// cannot spin and flood the failure count.
pub(super) const RATE_FAIL_PAUSE: Duration = Duration::from_millis(10);

/// `concurrency` workers in a closed loop until `duration` has passed; an exchange in flight at
/// the deadline finishes and counts, and the rate is over the time until the last one ended.
pub(super) async fn rate(
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
pub(super) struct HeldOutcome {
    /// The backend the connection landed on.
    pub(super) name: String,
    pub(super) broken: bool,
    pub(super) changed: bool,
    /// The slowest ping's round trip: a lost packet shows as a retransmission's wait.
    pub(super) slowest: Duration,
    pub(super) error: Option<String>,
}

pub(super) async fn hold(
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

//! Backend health checks: TCP/HTTP probes on one tokio task per backend, with rise/fall hysteresis, reporting up/down transitions to the agent.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc::UnboundedSender,
    task::JoinHandle,
    time::MissedTickBehavior,
};

use crate::config::{HealthCheck, HealthCheckKind};

/// One probed backend: identified by VIP name and backend address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub vip: String,
    pub backend: IpAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
}

/// A state change, sent to the agent.
#[derive(Clone, Debug)]
pub struct Transition {
    pub target: Target,
    pub health: Health,
    /// Why, e.g. "3 consecutive failures: connect to 10.0.0.1:80: Connection refused (os error 111)".
    pub reason: String,
}

/// Rise/fall state machine. New targets start Up, so a config change never drops traffic to
/// healthy backends while their first probes are still out; `fall` consecutive failures take a
/// target Down and `rise` consecutive successes bring it back.
#[derive(Clone, Debug)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    health: Health,
    /// Consecutive results that disagree with `health`; any agreeing result resets it, which is
    /// what keeps a flapping backend from flipping state.
    streak: u32,
}

impl Tracker {
    /// A `rise` or `fall` of 0 acts as 1: a transition always needs at least one result.
    pub fn new(rise: u32, fall: u32) -> Self {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            health: Health::Up,
            streak: 0,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Records one probe result; returns the new health on a transition.
    pub fn record(&mut self, ok: bool) -> Option<Health> {
        let (agrees, needed, other) = match self.health {
            Health::Up => (ok, self.fall, Health::Down),
            Health::Down => (!ok, self.rise, Health::Up),
        };
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.health = other;
        Some(other)
    }
}

/// Probes once: TCP = connect within the timeout; HTTP = connect, send a GET for `check.path`
/// and read the status line, all within the timeout, then compare the status with
/// `check.expect_status`. Returns a description of the failure.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    // The probe records how far it got, so a timeout can say what it was waiting for.
    let mut phase = format!("connect to {addr}");
    let result = tokio::time::timeout(check.timeout, probe_inner(addr, check, &mut phase)).await;
    match result {
        Ok(r) => r,
        Err(_) => Err(format!("{phase}: timeout after {:?}", check.timeout)),
    }
}

async fn probe_inner(
    addr: SocketAddr,
    check: &HealthCheck,
    phase: &mut String,
) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    if check.kind == HealthCheckKind::Tcp {
        return Ok(());
    }
    let what = format!("HTTP GET {} on {addr}", check.path);
    *phase = format!("{what}: sending the request");
    // SocketAddr's Display brackets IPv6 addresses, which is the form a Host header needs.
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: xdplb-health\r\n\r\n",
        check.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{what}: sending the request: {e}"))?;
    *phase = format!("{what}: waiting for the status line");
    let line = read_status_line(&mut stream)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let status = parse_status(&line)
        .ok_or_else(|| format!("{what}: malformed status line {:?}", line.trim_end()))?;
    if status != check.expect_status {
        return Err(format!(
            "{what}: status {status}, expected {}",
            check.expect_status
        ));
    }
    Ok(())
}

/// Longest status line accepted; a real one is a few dozen bytes, and the cap keeps a
/// misbehaving backend from feeding the prober an endless line.
const MAX_STATUS_LINE: usize = 1024;

/// Reads up to the first `\n`. Bytes after it (headers, body) are left unread: the probe only
/// needs the status, and the connection is dropped right after.
async fn read_status_line(stream: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err(format!(
                "no status line in the first {MAX_STATUS_LINE} bytes"
            ));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the status line: {e}"))?;
        if n == 0 {
            return Err("connection closed before a status line".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/") || code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// What the tasks and the Monitor share. Transitions are sent while the lock is held, so once
/// `set_targets` or `drop` has removed a slot, that target can emit no further event even if its
/// aborted task was mid-probe on another worker thread.
#[derive(Default)]
struct Shared {
    slots: HashMap<Target, Slot>,
    to_down: u64,
    to_up: u64,
}

struct Slot {
    /// Which task owns the slot: a task whose generation no longer matches (its target was
    /// removed or re-added with another check) must not touch the fresh state.
    generation: u64,
    tracker: Tracker,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // The state stays consistent even if a holder panicked (every update is a few plain
    // assignments), so a poisoned lock is still usable.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Probing {
    check: HealthCheck,
    task: JoinHandle<()>,
}

/// Runs probes for a set of targets and reports transitions.
pub struct Monitor {
    events: UnboundedSender<Transition>,
    shared: Arc<Mutex<Shared>>,
    tasks: HashMap<Target, Probing>,
    next_generation: u64,
}

impl Monitor {
    pub fn new(events: UnboundedSender<Transition>) -> Self {
        Monitor {
            events,
            shared: Arc::default(),
            tasks: HashMap::new(),
            next_generation: 0,
        }
    }

    /// Makes the probed set exactly `targets` (with their check; a target listed twice takes
    /// its last check). Targets that stay keep their state and their task; removed ones stop
    /// probing; new ones start Up. Changing a target's check restarts its task with fresh state.
    ///
    /// Spawns on the current tokio runtime, so it panics outside one.
    pub fn set_targets(&mut self, targets: Vec<(Target, HealthCheck)>) {
        let wanted: HashMap<Target, HealthCheck> = targets.into_iter().collect();
        let mut shared = lock(&self.shared);
        self.tasks.retain(|target, probing| {
            let keep = wanted.get(target) == Some(&probing.check);
            if !keep {
                probing.task.abort();
                shared.slots.remove(target);
            }
            keep
        });
        for (target, check) in wanted {
            if self.tasks.contains_key(&target) {
                continue;
            }
            self.next_generation += 1;
            let generation = self.next_generation;
            shared.slots.insert(
                target.clone(),
                Slot {
                    generation,
                    tracker: Tracker::new(check.rise, check.fall),
                },
            );
            let task = tokio::spawn(run(
                target.clone(),
                check.clone(),
                generation,
                Arc::clone(&self.shared),
                self.events.clone(),
            ));
            self.tasks.insert(target, Probing { check, task });
        }
    }

    /// A read-only handle on the health state, for other threads (the metrics exporter).
    pub fn view(&self) -> HealthView {
        HealthView(Arc::clone(&self.shared))
    }

    /// Current health of every probed target, sorted by VIP name then backend.
    pub fn snapshot(&self) -> Vec<(Target, Health)> {
        self.view().snapshot()
    }

    /// Total transitions since start (for metrics): (to_down, to_up).
    pub fn transitions(&self) -> (u64, u64) {
        self.view().transitions()
    }
}

/// The one copy of the health state (held by the probe tasks), read through the [`Monitor`]
/// or a view of it: nobody keeps a second copy that could disagree.
#[derive(Clone)]
pub struct HealthView(Arc<Mutex<Shared>>);

impl HealthView {
    /// Health of `target`; None when it is not probed (its VIP has no health check).
    pub fn health(&self, target: &Target) -> Option<Health> {
        lock(&self.0).slots.get(target).map(|s| s.tracker.health())
    }

    /// Every probed target that is down: (VIP name, backend address).
    pub fn down(&self) -> std::collections::HashSet<(String, IpAddr)> {
        lock(&self.0)
            .slots
            .iter()
            .filter(|(_, s)| s.tracker.health() == Health::Down)
            .map(|(t, _)| (t.vip.clone(), t.backend))
            .collect()
    }

    /// Current health of every probed target, sorted by VIP name then backend.
    pub fn snapshot(&self) -> Vec<(Target, Health)> {
        let shared = lock(&self.0);
        let mut out: Vec<(Target, Health)> = shared
            .slots
            .iter()
            .map(|(t, s)| (t.clone(), s.tracker.health()))
            .collect();
        out.sort_by(|(a, _), (b, _)| (&a.vip, a.backend).cmp(&(&b.vip, b.backend)));
        out
    }

    /// Total transitions since start: (to_down, to_up).
    pub fn transitions(&self) -> (u64, u64) {
        let shared = lock(&self.0);
        (shared.to_down, shared.to_up)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for probing in self.tasks.values() {
            probing.task.abort();
        }
        // Emptying the slots also silences a task that is between its probe and its update.
        lock(&self.shared).slots.clear();
    }
}

/// One target's probe loop: probe every interval (the first one at once) and record the result.
async fn run(
    target: Target,
    check: HealthCheck,
    generation: u64,
    shared: Arc<Mutex<Shared>>,
    events: UnboundedSender<Transition>,
) {
    let addr = SocketAddr::new(target.backend, check.port);
    // tokio's interval panics on a zero period; the config already refuses anything under 100ms.
    let mut ticker = tokio::time::interval(check.interval.max(Duration::from_millis(1)));
    // Delay rather than Burst: after a stall, a burst of back-to-back probes would count as
    // several consecutive results taken within a moment.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = probe(addr, &check).await;
        let mut guard = lock(&shared);
        let state = &mut *guard;
        let Some(slot) = state.slots.get_mut(&target) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        if let Err(e) = &result {
            log::debug!(
                "VIP {}: backend {}: probe failed: {e}",
                target.vip,
                target.backend
            );
        }
        let Some(health) = slot.tracker.record(result.is_ok()) else {
            continue;
        };
        // A transition to Down comes from a failure and one to Up from a success.
        let reason = match &result {
            Err(e) => format!("{}: {e}", plural(check.fall.max(1), "failure")),
            Ok(()) => plural(check.rise.max(1), "success"),
        };
        match health {
            Health::Down => {
                state.to_down += 1;
                log::warn!(
                    "VIP {}: backend {} is down: {reason}",
                    target.vip,
                    target.backend
                );
            }
            Health::Up => {
                state.to_up += 1;
                log::info!(
                    "VIP {}: backend {} is up: {reason}",
                    target.vip,
                    target.backend
                );
            }
        }
        // A closed receiver means the agent is shutting down; the state above still counts.
        let _ = events.send(Transition {
            target: target.clone(),
            health,
            reason,
        });
    }
}

/// "1 consecutive failure", "3 consecutive successes".
fn plural(n: u32, noun: &str) -> String {
    match (n, noun.ends_with('s')) {
        (1, _) => format!("1 consecutive {noun}"),
        (_, true) => format!("{n} consecutive {noun}es"),
        (_, false) => format!("{n} consecutive {noun}s"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::{
        net::{TcpListener, TcpSocket},
        sync::mpsc::{self, UnboundedReceiver},
        time::{sleep, timeout},
    };

    use super::*;

    fn check(kind: HealthCheckKind, port: u16) -> HealthCheck {
        HealthCheck {
            kind,
            port,
            path: "/healthz".into(),
            expect_status: 200,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 2,
        }
    }

    fn fast_check(port: u16) -> HealthCheck {
        HealthCheck {
            timeout: Duration::from_millis(50),
            ..check(HealthCheckKind::Tcp, port)
        }
    }

    fn target(vip: &str) -> Target {
        Target {
            vip: vip.into(),
            backend: IpAddr::from([127, 0, 0, 1]),
        }
    }

    /// A port on 127.0.0.1 that nothing listens on (just released, so very likely still free).
    async fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    /// Binds with SO_REUSEADDR so a listener can come back on a port whose old connections are
    /// still in TIME_WAIT.
    fn listen(port: u16) -> TcpListener {
        let s = TcpSocket::new_v4().unwrap();
        s.set_reuseaddr(true).unwrap();
        s.bind(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        s.listen(64).unwrap()
    }

    /// Accepts and drops connections on `listener`, counting them. Abort the task and await it
    /// to close the port for sure.
    fn serve_tcp(listener: TcpListener, accepted: Arc<AtomicUsize>) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if listener.accept().await.is_ok() {
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    }

    async fn stop(task: JoinHandle<()>) {
        task.abort();
        let _ = task.await;
    }

    /// A one-response HTTP server: reads each request head, then writes `response` (or, with
    /// `None`, holds the connection without a word). The first request is sent back on `seen`.
    async fn http_server(
        response: Option<&'static str>,
    ) -> (SocketAddr, UnboundedReceiver<String>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 512];
                    while !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = seen_tx.send(String::from_utf8_lossy(&head).into_owned());
                    match response {
                        Some(r) => {
                            let _ = conn.write_all(r.as_bytes()).await;
                        }
                        None => sleep(Duration::from_secs(10)).await,
                    }
                });
            }
        });
        (addr, seen, task)
    }

    #[test]
    fn tracker_starts_up_and_falls_after_fall_failures() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.health(), Health::Up);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.health(), Health::Up);
        assert_eq!(t.record(false), Some(Health::Down));
        assert_eq!(t.health(), Health::Down);
        // Staying down is not another transition.
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.health(), Health::Down);
    }

    #[test]
    fn tracker_rises_after_rise_successes() {
        let mut t = Tracker::new(3, 1);
        assert_eq!(t.record(false), Some(Health::Down));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.health(), Health::Down);
        assert_eq!(t.record(true), Some(Health::Up));
        assert_eq!(t.health(), Health::Up);
        assert_eq!(t.record(true), None);
    }

    #[test]
    fn tracker_streaks_must_be_consecutive() {
        for (rise, fall) in [(2, 2), (2, 5), (3, 2)] {
            let mut t = Tracker::new(rise, fall);
            for i in 0..50 {
                assert_eq!(
                    t.record(i % 2 == 0),
                    None,
                    "rise {rise} fall {fall} step {i}"
                );
                assert_eq!(t.health(), Health::Up);
            }
            for _ in 0..fall {
                t.record(false);
            }
            assert_eq!(t.health(), Health::Down);
            for i in 0..50 {
                assert_eq!(
                    t.record(i % 2 == 0),
                    None,
                    "rise {rise} fall {fall} step {i}"
                );
                assert_eq!(t.health(), Health::Down);
            }
        }
    }

    #[test]
    fn tracker_treats_zero_as_one() {
        let mut t = Tracker::new(0, 0);
        assert_eq!(t.record(false), Some(Health::Down));
        assert_eq!(t.record(true), Some(Health::Up));
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status("HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(parse_status("HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status("HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status("SSH-2.0-OpenSSH_9.2"), None);
        assert_eq!(parse_status(""), None);
        assert_eq!(plural(1, "failure"), "1 consecutive failure");
        assert_eq!(plural(3, "failure"), "3 consecutive failures");
        assert_eq!(plural(2, "success"), "2 consecutive successes");
    }

    #[tokio::test]
    async fn probe_tcp_open_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = check(HealthCheckKind::Tcp, addr.port());
        assert_eq!(probe(addr, &c).await, Ok(()));
    }

    #[tokio::test]
    async fn probe_tcp_ipv6_loopback() {
        // Hosts without IPv6 on lo cannot run this; everything else is covered over IPv4.
        let Ok(listener) = TcpListener::bind("[::1]:0").await else {
            return;
        };
        let addr = listener.local_addr().unwrap();
        assert_eq!(
            probe(addr, &check(HealthCheckKind::Tcp, addr.port())).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn probe_tcp_closed_port() {
        let port = closed_port().await;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let err = probe(addr, &check(HealthCheckKind::Tcp, port))
            .await
            .unwrap_err();
        assert!(err.contains(&addr.to_string()), "{err}");
        assert!(err.starts_with("connect to"), "{err}");
    }

    #[tokio::test]
    async fn probe_http_ok() {
        let (addr, mut seen, server) =
            http_server(Some("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")).await;
        let c = check(HealthCheckKind::Http, addr.port());
        assert_eq!(probe(addr, &c).await, Ok(()));
        let request = seen.recv().await.unwrap();
        assert_eq!(
            request,
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: xdplb-health\r\n\r\n"
            )
        );
        stop(server).await;
    }

    #[tokio::test]
    async fn probe_http_wrong_status() {
        let (addr, _seen, server) =
            http_server(Some("HTTP/1.1 503 Service Unavailable\r\n\r\n")).await;
        let c = check(HealthCheckKind::Http, addr.port());
        let err = probe(addr, &c).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
        assert!(err.contains("expected 200"), "{err}");
        assert!(err.contains(&addr.to_string()), "{err}");
        stop(server).await;
    }

    #[tokio::test]
    async fn probe_http_not_http() {
        let (addr, _seen, server) = http_server(Some("SSH-2.0-OpenSSH_9.2\r\n")).await;
        let err = probe(addr, &check(HealthCheckKind::Http, addr.port()))
            .await
            .unwrap_err();
        assert!(err.contains("malformed status line"), "{err}");
        stop(server).await;
    }

    #[tokio::test]
    async fn probe_http_silent_server_times_out() {
        let (addr, _seen, server) = http_server(None).await;
        let c = check(HealthCheckKind::Http, addr.port());
        let started = std::time::Instant::now();
        let err = probe(addr, &c).await.unwrap_err();
        assert!(err.contains("timeout"), "{err}");
        assert!(err.contains("status line"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1), "{err}");
        stop(server).await;
    }

    /// No event arrives within `wait`.
    async fn assert_quiet(events: &mut UnboundedReceiver<Transition>, wait: Duration) {
        if let Ok(ev) = timeout(wait, events.recv()).await {
            panic!("unexpected event {ev:?}");
        }
    }

    async fn next_event(events: &mut UnboundedReceiver<Transition>) -> Transition {
        timeout(Duration::from_secs(1), events.recv())
            .await
            .expect("no transition within 1 s")
            .expect("channel closed")
    }

    #[tokio::test]
    async fn monitor_follows_a_backend_down_and_up_and_stops_when_removed() {
        let listener = listen(0);
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let server = serve_tcp(listener, Arc::clone(&accepted));

        let (tx, mut events) = mpsc::unbounded_channel();
        let mut monitor = Monitor::new(tx);
        let t = target("web");
        monitor.set_targets(vec![(t.clone(), fast_check(port))]);
        assert_eq!(monitor.snapshot(), vec![(t.clone(), Health::Up)]);

        assert_quiet(&mut events, Duration::from_millis(350)).await;
        assert_eq!(monitor.snapshot(), vec![(t.clone(), Health::Up)]);
        assert!(accepted.load(Ordering::SeqCst) >= 2, "probes are running");

        stop(server).await;
        let ev = next_event(&mut events).await;
        assert_eq!((ev.target.clone(), ev.health), (t.clone(), Health::Down));
        assert!(ev.reason.starts_with("2 consecutive failures: "), "{ev:?}");
        assert!(ev.reason.contains(&format!("127.0.0.1:{port}")), "{ev:?}");
        assert_eq!(monitor.snapshot(), vec![(t.clone(), Health::Down)]);
        // Staying down is not news.
        assert_quiet(&mut events, Duration::from_millis(300)).await;
        assert_eq!(monitor.transitions(), (1, 0));

        let server = serve_tcp(listen(port), Arc::clone(&accepted));
        let ev = next_event(&mut events).await;
        assert_eq!((ev.target.clone(), ev.health), (t.clone(), Health::Up));
        assert_eq!(ev.reason, "2 consecutive successes");
        assert_eq!(monitor.transitions(), (1, 1));

        monitor.set_targets(vec![]);
        assert_eq!(monitor.snapshot(), vec![]);
        // Let a probe that was already connecting land, then expect silence on the port.
        sleep(Duration::from_millis(60)).await;
        let before = accepted.load(Ordering::SeqCst);
        stop(server).await;
        assert_quiet(&mut events, Duration::from_millis(400)).await;
        let _server = serve_tcp(listen(port), Arc::clone(&accepted));
        sleep(Duration::from_millis(250)).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            before,
            "removed target still probed"
        );
        assert_eq!(monitor.transitions(), (1, 1));
    }

    #[tokio::test]
    async fn set_targets_keeps_state_unless_the_check_changes() {
        let port = closed_port().await;
        let (tx, mut events) = mpsc::unbounded_channel();
        let mut monitor = Monitor::new(tx);
        let t = target("db");
        let c = fast_check(port);
        monitor.set_targets(vec![(t.clone(), c.clone())]);
        assert_eq!(next_event(&mut events).await.health, Health::Down);

        // Same target, same check, plus a new one: the first keeps its Down state and task.
        let other = Target {
            vip: "api".into(),
            ..t.clone()
        };
        monitor.set_targets(vec![(t.clone(), c.clone()), (other.clone(), c.clone())]);
        assert_eq!(
            monitor.snapshot(),
            vec![(other.clone(), Health::Up), (t.clone(), Health::Down)]
        );
        let ev = next_event(&mut events).await;
        assert_eq!((ev.target, ev.health), (other.clone(), Health::Down));
        assert_quiet(&mut events, Duration::from_millis(300)).await;

        // A changed check starts over from Up, then falls again.
        let changed = HealthCheck { rise: 3, ..c };
        monitor.set_targets(vec![(t.clone(), changed)]);
        assert_eq!(monitor.snapshot(), vec![(t.clone(), Health::Up)]);
        let ev = next_event(&mut events).await;
        assert_eq!((ev.target, ev.health), (t.clone(), Health::Down));
        assert_eq!(monitor.transitions(), (3, 0));

        // Dropping the Monitor aborts every task, and with them the last senders.
        drop(monitor);
        let closed = timeout(Duration::from_secs(1), events.recv()).await;
        assert!(matches!(closed, Ok(None)), "{closed:?}");
    }
}

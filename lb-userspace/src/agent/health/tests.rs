//! Tests of the health checks: hysteresis, probes and the monitor.
//!
//! Probes run against real local listeners; the monitor's tests cover its tasks and its state
//! handling.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket},
    sync::mpsc::{self, UnboundedReceiver},
    task::JoinHandle,
    time::{sleep, timeout},
};

use super::{monitor::plural, probe::parse_status, *};
use crate::config::{HealthCheck, HealthCheckKind};

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
        panic_threshold: 50,
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
    let (addr, _seen, server) = http_server(Some("HTTP/1.1 503 Service Unavailable\r\n\r\n")).await;
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

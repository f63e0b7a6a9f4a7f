//! Balancers behind a BIRD router with L4-hash ECMP (the ECMP lab).
//!
//! Flows spread over the balancers and keep their backend whichever balancer carries them, while
//! one balancer is drained and stopped, has its agent killed, its program detached, its link cut,
//! or its host deleted, and each time comes back; backend changes rolled across them break
//! nothing, and a failover after one loses only the share a pure consistent hash must.
//!
//! CI runs two balancers with the hash-threshold route BIRD installs. `cargo xtask failover`
//! (`XDPLB_FAILOVER_FULL=1`) runs the full table docs/balancers.md shows: three balancers,
//! hash-threshold and a resilient next-hop group.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use xdplb_lab::{
    fleet::{rolled_then_failed_over, Fleet, ROUTER_TIMEOUT},
    lab::{Lab, LabSpec},
    netns,
    reports::{BurstReport, HoldReport},
    scenario::{churn, hold_finish, hold_start_patient, Balancer},
};

const MODE: &str = "generic";
/// Held connections per event, spread over the balancers by the router's hash.
const HELD: u32 = 80;
/// A held connection is broken when a ping goes unanswered this long: long enough for TCP
/// to retransmit through the seconds before a dead balancer's route is withdrawn.
const PING_TIMEOUT_S: u64 = 10;
/// The balancer each event takes out (the last one).
fn victim(lab: &Lab) -> usize {
    lab.balancers() - 1
}

/// One measured event.
struct Row {
    event: &'static str,
    routes: &'static str,
    broken: u64,
    changed_backend: u64,
    new_failed: u64,
    new_total: u64,
    slowest_ping_ms: u64,
    /// From the event until the router stopped sending to the balancer (None: it never
    /// should, as when the agent dies with the program attached).
    withdrawn_after: Option<Duration>,
    /// From the start of the return until the router sends to it again.
    back_after: Duration,
}

/// How the router spreads the VIP: the multipath route BIRD installs (hash-threshold), or a
/// resilient next-hop group the test keeps in line with BIRD's route.
#[derive(Clone, Copy, PartialEq)]
enum Routes {
    HashThreshold,
    Resilient,
}

impl Routes {
    fn name(self) -> &'static str {
        match self {
            Routes::HashThreshold => "hash-threshold (BIRD)",
            Routes::Resilient => "resilient group",
        }
    }
}

/// Keeps a resilient next-hop group in line with the balancers BIRD's route names: a thread
/// that polls the BIRD route and rewrites the group (only the buckets of a departed next hop
/// move), with a static route through the group that wins over BIRD's by metric.
struct ResilientMirror {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ResilientMirror {
    fn start(lab: &Lab) -> ResilientMirror {
        let rt = lab.router_ns().unwrap().to_owned();
        let hops: Vec<String> = (0..lab.balancers())
            .map(|k| lab.balancer_addr4(k).to_string())
            .collect();
        let ip = |args: &[&str]| {
            let mut cmd = vec!["ip", "-n", &rt];
            cmd.extend_from_slice(args);
            netns::run_root(&cmd)
        };
        for (k, h) in hops.iter().enumerate() {
            ip(&[
                "nexthop",
                "add",
                "id",
                &(k + 1).to_string(),
                "via",
                h,
                "dev",
                "rb",
            ])
            .unwrap();
        }
        let group = |live: &[usize]| {
            live.iter()
                .map(|k| (k + 1).to_string())
                .collect::<Vec<_>>()
                .join("/")
        };
        let all: Vec<usize> = (0..hops.len()).collect();
        ip(&[
            "nexthop",
            "add",
            "id",
            "100",
            "group",
            &group(&all),
            "type",
            "resilient",
            "buckets",
            "512",
            "idle_timer",
            "0",
        ])
        .unwrap();
        let vip = format!("{}/32", lab.vip4());
        ip(&["route", "add", &vip, "nhid", "100", "metric", "1"]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let rt2 = rt.clone();
        let thread = std::thread::spawn(move || {
            let mut live = all.clone();
            while !stop2.load(Ordering::Relaxed) {
                // BIRD's own route (proto bird) says which balancers announce.
                let out = netns::run_root(&[
                    "ip", "-n", &rt2, "-j", "route", "show", "exact", &vip, "proto", "bird",
                ])
                .unwrap_or_default();
                let now: Vec<usize> = (0..hops.len())
                    .filter(|k| out.contains(&format!("\"{}\"", hops[*k])))
                    .collect();
                if now != live && !now.is_empty() {
                    let g = group(&now);
                    let _ = netns::run_root(&[
                        "ip",
                        "-n",
                        &rt2,
                        "nexthop",
                        "replace",
                        "id",
                        "100",
                        "group",
                        &g,
                        "type",
                        "resilient",
                    ]);
                    live = now;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        ResilientMirror {
            stop,
            thread: Some(thread),
        }
    }

    /// The balancers the group in router namespace `ns` sends to now.
    fn live(ns: &str) -> Vec<usize> {
        let out = netns::run_root(&["ip", "-n", ns, "-j", "nexthop", "show", "id", "100"])
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let mut ks: Vec<usize> = v[0]["group"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_u64())
            .map(|id| id as usize - 1)
            .collect();
        ks.sort_unstable();
        ks
    }
}

impl Drop for ResilientMirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the router does with the VIP, readable from another thread: which balancers it
/// sends to now, from the kind of route in use.
#[derive(Clone)]
struct RouterView {
    ns: String,
    vip: String,
    hops: Vec<String>,
    routes: Routes,
}

impl RouterView {
    fn of(lab: &Lab, routes: Routes) -> RouterView {
        RouterView {
            ns: lab.router_ns().unwrap().to_owned(),
            vip: format!("{}/32", lab.vip4()),
            hops: (0..lab.balancers())
                .map(|k| lab.balancer_addr4(k).to_string())
                .collect(),
            routes,
        }
    }

    /// The balancers the router sends the VIP to now, sorted.
    fn live(&self) -> Vec<usize> {
        match self.routes {
            Routes::HashThreshold => {
                let out = netns::run_root(&[
                    "ip", "-n", &self.ns, "-j", "route", "show", "exact", &self.vip, "proto",
                    "bird",
                ])
                .unwrap_or_default();
                (0..self.hops.len())
                    .filter(|k| out.contains(&format!("\"{}\"", self.hops[*k])))
                    .collect()
            }
            Routes::Resilient => ResilientMirror::live(&self.ns),
        }
    }

    /// Waits until the router sends to exactly `want`; returns how long that took.
    fn wait(&self, want: &[usize]) -> Duration {
        let start = Instant::now();
        loop {
            let have = self.live();
            if have == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < ROUTER_TIMEOUT,
                "the router sends to {have:?}, not {want:?}, {ROUTER_TIMEOUT:?} after the event"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`RouterView::wait`] on a thread of its own, started now: times a change that the
    /// caller is about to cause and that may take effect before the causing call returns.
    fn watch(&self, want: Vec<usize>) -> std::thread::JoinHandle<Duration> {
        let view = self.clone();
        std::thread::spawn(move || view.wait(&want))
    }
}

/// Runs one event under load: HELD connections pinging from client 0, new connections from
/// client 1; `out` takes the victim out (after which the router should stop sending to it if
/// `leaves`), `back` returns it. Both are timed against the router's view.
fn event(
    lab: &mut Lab,
    fleet: &mut Fleet,
    routes: Routes,
    name: &'static str,
    leaves: bool,
    out: impl FnOnce(&mut Lab, &mut Fleet),
    back: impl FnOnce(&mut Lab, &mut Fleet),
) -> Row {
    let v = victim(lab);
    let all: Vec<usize> = (0..lab.balancers()).collect();
    let rest: Vec<usize> = all.iter().copied().filter(|&k| k != v).collect();
    let router = RouterView::of(lab, routes);
    router.wait(&all);
    let held = hold_start_patient(lab, 0, HELD, 120, PING_TIMEOUT_S).expect("hold");
    let stop = Arc::new(AtomicBool::new(false));
    let new = churn(lab, 1, stop.clone());
    std::thread::sleep(Duration::from_secs(1));

    let withdrawn_after = if leaves {
        let gone = router.watch(rest);
        out(lab, fleet);
        Some(gone.join().expect("router watch"))
    } else {
        out(lab, fleet);
        // The program still forwards: the router must keep sending to it, past the BGP
        // hold time.
        std::thread::sleep(Duration::from_secs(4));
        assert_eq!(router.live(), all, "{name}: the balancer was withdrawn");
        None
    };
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    back(lab, fleet);
    router.wait(&all);
    let back_after = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));

    stop.store(true, Ordering::Relaxed);
    let new: BurstReport = new.join().expect("churn thread");
    let report: HoldReport = hold_finish(lab, held).expect("hold report");
    assert_eq!(report.open_failed, 0, "{name}: {report:?}");
    Row {
        event: name,
        routes: routes.name(),
        broken: report.broken,
        changed_backend: report.backend_changed,
        new_failed: new.failed,
        new_total: new.ok + new.failed,
        slowest_ping_ms: report.slowest_ping_ms,
        withdrawn_after,
        back_after,
    }
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| event | routes | established broken | changed backend | new connections failed | slowest ping | router stopped sending after | back in after |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} of {HELD} | {} | {} of {} | {} ms | {} | {:.1} s |",
            r.event,
            r.routes,
            r.broken,
            r.changed_backend,
            r.new_failed,
            r.new_total,
            r.slowest_ping_ms,
            r.withdrawn_after
                .map_or("kept (still forwarding)".to_owned(), |d| format!(
                    "{:.2} s",
                    d.as_secs_f64()
                )),
            r.back_after.as_secs_f64()
        );
    }
    t
}

/// The events, in order (only the abrupt deaths with `abrupt_only`); each leaves the fleet
/// whole again.
fn run_events(lab: &mut Lab, fleet: &mut Fleet, routes: Routes, abrupt_only: bool) -> Vec<Row> {
    let v = victim(lab);
    let mac = std::cell::RefCell::new(String::new());
    let mut rows = Vec::new();
    if !abrupt_only {
        graceful_events(lab, fleet, routes, &mut rows);
    }
    rows.push(event(
        lab,
        fleet,
        routes,
        "link cut; restored",
        true,
        |lab, _| *mac.borrow_mut() = lab.unplug_balancer(v).unwrap(),
        |lab, _| lab.replug_balancer(v, &mac.borrow()).unwrap(),
    ));
    if v > 0 {
        rows.push(event(
            lab,
            fleet,
            routes,
            "host deleted; replaced",
            true,
            |lab, f| f.delete_host(lab, v).unwrap(),
            |lab, f| f.replace_host(lab, v).unwrap(),
        ));
    }
    rows
}

/// The events that take the balancer out on purpose, or kill only its agent.
fn graceful_events(lab: &mut Lab, fleet: &mut Fleet, routes: Routes, rows: &mut Vec<Row>) {
    let v = victim(lab);
    rows.push(event(
        lab,
        fleet,
        routes,
        "drain-balancer, stop; start",
        true,
        |lab, f| {
            f.drain(lab, v).unwrap();
            f.stop_agent(lab, v).unwrap();
        },
        |lab, f| f.start_agent(lab, v).unwrap(),
    ));
    rows.push(event(
        lab,
        fleet,
        routes,
        "agent kill -9 (program attached); restart",
        false,
        |lab, f| f.kill_agent(lab, v).unwrap(),
        |lab, f| f.start_agent(lab, v).unwrap(),
    ));
    rows.push(event(
        lab,
        fleet,
        routes,
        "agent kill -9, xdplb detach; start",
        true,
        |lab, f| {
            f.kill_agent(lab, v).unwrap();
            f.detach(lab, v).unwrap();
        },
        |lab, f| f.start_agent(lab, v).unwrap(),
    ));
}

/// Every query of the shipped Grafana dashboard names metrics, and labels, that a running
/// agent with `announce:` exports (`instance` is Prometheus's own).
fn dashboard_reads_what_the_agent_exports(metrics: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/xdplb-fleet.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("dashboard JSON");
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("every target has an expr")
                .to_owned()
        })
        .collect();
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["definition"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for e in &exprs {
        let names: Vec<&str> = e
            .split(|c: char| !word(c))
            .filter(|w| w.starts_with("xdplb_"))
            .collect();
        assert!(!names.is_empty(), "query names no xdplb metric: {e}");
        for n in &names {
            assert!(
                metrics
                    .lines()
                    .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} "))),
                "dashboard query {e:?} reads {n}, which the agent does not export:\n{metrics}"
            );
        }
        // Labels grouped by or matched on.
        let mut labels = Vec::new();
        for part in e.split("by (").skip(1) {
            labels.extend(part.split(')').next().unwrap().split(',').map(str::trim));
        }
        for part in e.split('{').skip(1) {
            let sel = part.split('}').next().unwrap();
            labels.extend(
                sel.split(',')
                    .filter_map(|m| m.split(['=', '!']).next())
                    .map(str::trim),
            );
        }
        for l in labels
            .into_iter()
            .filter(|l| !l.is_empty() && *l != "instance")
        {
            assert!(
                metrics.contains(&format!("{l}=\"")),
                "dashboard query {e:?} uses label {l}, which no exported series has"
            );
        }
    }
}

/// One ECMP lab at a time: the tests of this file measure loss and timing, which two labs
/// sharing two cores would blur.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_lab() -> std::sync::MutexGuard<'static, ()> {
    ONE_LAB.lock().unwrap_or_else(|p| p.into_inner())
}

fn spec(balancers: usize) -> LabSpec {
    LabSpec {
        clients: 2,
        backends: 3,
        port: 8080,
        ecmp_balancers: balancers,
        ..Default::default()
    }
}

fn ecmp_lab(balancers: usize) -> Lab {
    Lab::new(spec(balancers)).expect("ECMP lab")
}

#[test]
fn flows_keep_their_backend_across_balancers_through_failover() {
    let _one = one_lab();
    let full = std::env::var_os("XDPLB_FAILOVER_FULL").is_some();
    let balancers = if full { 3 } else { 2 };
    let mut lab = ecmp_lab(balancers);
    let mut fleet = Fleet::start(&mut lab, MODE).expect("fleet");

    // Every balancer announces the VIP and the router spreads flows over all of them.
    for k in 0..balancers {
        let s = Balancer::status_on(&lab, k).unwrap();
        assert_eq!(
            s["announced"][0].as_str(),
            Some(lab.vip4().to_string().as_str()),
            "balancer {k}: {s}"
        );
        let metrics = Balancer::metrics_text_on(&lab, k).unwrap();
        assert!(
            metrics.contains(&format!(
                "xdplb_vip_announced{{address=\"{}\"}} 1",
                lab.vip4()
            )),
            "{metrics}"
        );
    }
    dashboard_reads_what_the_agent_exports(&Balancer::metrics_text_on(&lab, 0).unwrap());
    let before: Vec<u64> = (0..balancers)
        .map(|k| fleet.forwarded(k).unwrap())
        .collect();
    let spread = xdplb_lab::scenario::burst4_from(&lab, 1, 400).unwrap();
    assert_eq!(spread.failed, 0, "{spread:?}");
    // IPv6 VIPs are announced over the same sessions and spread the same way.
    let target6 = format!("[{}]:{}", lab.vip6(), lab.spec().port);
    let spread6: BurstReport = lab
        .run_client(
            1,
            &[
                "burst",
                "--target",
                &target6,
                "--connections",
                "200",
                "--parallel",
                "20",
            ],
        )
        .unwrap();
    assert_eq!((spread6.ok, spread6.failed), (200, 0), "{spread6:?}");
    let carried: Vec<u64> = (0..balancers)
        .map(|k| fleet.forwarded(k).unwrap() - before[k])
        .collect();
    eprintln!("400 IPv4 + 200 IPv6 connections: packets forwarded per balancer {carried:?}");
    for (k, n) in carried.iter().enumerate() {
        assert!(*n > 0, "balancer {k} carried nothing: {carried:?}");
    }

    let mut rows = run_events(&mut lab, &mut fleet, Routes::HashThreshold, false);
    if full {
        let _mirror = ResilientMirror::start(&lab);
        rows.extend(run_events(&mut lab, &mut fleet, Routes::Resilient, false));
    }
    if full {
        // Detection by BFD instead of the hold timer, for the abrupt deaths.
        drop(fleet);
        drop(lab);
        let mut lab = Lab::new(LabSpec {
            bfd: true,
            ..spec(balancers)
        })
        .expect("ECMP lab with BFD");
        let mut fleet = Fleet::start(&mut lab, MODE).expect("fleet");
        rows.extend(
            run_events(&mut lab, &mut fleet, Routes::HashThreshold, true)
                .into_iter()
                .map(|r| Row {
                    routes: "hash-threshold, BFD",
                    ..r
                }),
        );
    }
    let t = table(&rows);
    println!("{t}");
    for r in &rows {
        assert_eq!(
            r.changed_backend, 0,
            "{}: a flow changed backend\n{t}",
            r.event
        );
        let graceful = r.event.starts_with("drain") || r.event.contains("detach");
        if graceful || r.withdrawn_after.is_none() {
            assert_eq!(r.broken, 0, "{}: broke connections\n{t}", r.event);
            assert_eq!(r.new_failed, 0, "{}: failed new connections\n{t}", r.event);
        } else {
            // Abrupt death: at most 1% of the established connections.
            assert!(
                r.broken * 100 <= u64::from(HELD),
                "{}: broke {} of {HELD}\n{t}",
                r.event,
                r.broken
            );
        }
    }
}

/// What a rolled backend change did to connections opened before it.
struct Step {
    what: String,
    /// Connections held through the roll alone.
    roll_broken: u64,
    /// Connections held through the roll and then a failover of the last balancer.
    failover_broken: u64,
}

/// [`rolled_then_failed_over`] as a [`Step`].
fn step(lab: &mut Lab, what: String, args: &[&str]) -> Step {
    let (a, b) = rolled_then_failed_over(lab, args, HELD, PING_TIMEOUT_S);
    Step {
        what,
        roll_broken: a.broken + a.backend_changed,
        failover_broken: b.broken + b.backend_changed,
    }
}

#[test]
fn rolled_backend_changes_break_nothing_until_a_failover_moves_flows_whose_slot_moved() {
    let _one = one_lab();
    let mut lab = ecmp_lab(2);
    let _fleet = Fleet::start(&mut lab, MODE).expect("fleet");
    let new = lab.add_backend().unwrap();
    let new_addr = lab.backend_addr4(new).to_string();
    let old_addr = lab.backend_addr4(0).to_string();
    // Adding a backend: each balancer pins its own established flows, so the roll breaks
    // nothing. A failover then moves the victim's flows to a balancer that has no entry for
    // them, and its ring sends those whose slot moved to the new backend, which resets them.
    let add = step(
        &mut lab,
        format!("add {new_addr}"),
        &["backend", "add", "web-tcp", &new_addr],
    );
    // Draining a backend: its flows stay pinned on each balancer; after a failover those the
    // victim carried reach a balancer whose ring no longer has it.
    let drain = step(
        &mut lab,
        format!("drain {old_addr}"),
        &["backend", "drain", "web-tcp", &old_addr],
    );
    let mut t = String::from(
        "| change, rolled over both balancers | broken or moved by the roll | by the roll, then a failover |\n|---|---|---|\n",
    );
    for s in [&add, &drain] {
        let _ = writeln!(
            t,
            "| {} | {} of {HELD} | {} of {HELD} |",
            s.what, s.roll_broken, s.failover_broken
        );
    }
    println!("{t}");
    // A failover loses at most what a pure consistent hash must: the flows the victim
    // carried (about half) whose ring slot changed owner (a quarter when a fourth backend
    // joins three, and the drained backend's quarter of four when it leaves): about an
    // eighth each time. Allow twice that for the spread of 80 flows.
    for s in [&add, &drain] {
        let share = 1.0 / 8.0;
        assert_eq!(s.roll_broken, 0, "{}: the roll itself\n{t}", s.what);
        let bound = (2.0 * share * f64::from(HELD)).ceil() as u64;
        assert!(s.failover_broken <= bound, "{}: over {bound}\n{t}", s.what);
    }
}

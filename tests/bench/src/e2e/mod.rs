//! End-to-end connection rate, latency and CPU per connection of short TCP exchanges in the lab.
//!
//! Through xdplb, through a fixed-backend XDP forwarder in xdplb's place (the on-path floor),
//! directly to a backend, through HAProxy and through nftables DNAT, interleaved in rounds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::baselines;
use crate::cpu::{self, CpuPerConn, CpuProbe, CpuSample};
use xdplb_lab::lab::{tool_path, Lab, LabSpec};
use xdplb_lab::netns;
use xdplb_lab::reports::RateReport;
use xdplb_lab::scenario::{lab_config, Balancer, Member};

mod setups;

use self::setups::{cpu_probe, sysctl_get, tune_lab, Setup, SETUPS};

/// Workers in the load generator: enough to keep every setup busy on a small machine without
/// turning the client into the only bottleneck.
const CONCURRENCY: usize = 32;
/// The lab's backend count; every setup spreads over all of them except `direct`.
const BACKENDS: usize = 3;
/// nftables table (ip family, gateway namespace) of the `nftables` setup.
const NFT_TABLE: &str = "xlbench_e2e";
/// How long HAProxy gets to open its listener.
const HAPROXY_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Unmeasured load right after a setup starts, so first-use costs (neighbour resolution, a
/// freshly started process settling) do not land in the figures.
const WARMUP_SECS: f64 = 0.5;

/// One setup's figures.
#[derive(Debug, Clone, Serialize)]
pub struct E2eResult {
    /// "xdplb", "onpath-floor", "direct", "haproxy" or "nftables".
    pub setup: String,
    /// Successful exchanges (connect, request, reply), summed over the rounds.
    pub connections: u64,
    /// Failed attempts (refused, reset, timed out), summed over the rounds.
    pub failed: u64,
    /// `connections` divided by the total measured time of all rounds.
    pub conn_per_s: f64,
    /// Median over the rounds of each round's median latency (connect start to reply), µs.
    pub p50_us: f64,
    /// Median over the rounds of each round's 99th-percentile latency, µs.
    pub p99_us: f64,
    /// Like `p50_us`/`p99_us`, from a single worker right after each loaded run: the latency
    /// the path itself adds, without the queueing a saturated closed loop builds up.
    pub unloaded_p50_us: f64,
    pub unloaded_p99_us: f64,
    /// Rounds measured.
    pub rounds: usize,
    /// Total measured time over the rounds, seconds.
    pub duration_s: f64,
    /// Each round's rate, in round order, to show the spread behind `conn_per_s`.
    pub round_conn_per_s: Vec<f64>,
    /// Successful exchanges per answering backend (the `lab-server` name), summed over rounds.
    pub per_backend: BTreeMap<String, u64>,
    /// The first few distinct errors, if any.
    pub errors: Vec<String>,
    /// Observations that help read the figures (for `nftables`: its conntrack occupancy).
    pub notes: Vec<String>,
    /// CPU per connection over the loaded runs (see `cpu.rs` for what each part holds).
    pub cpu: CpuPerConn,
}

/// What every round needs.
struct Ctx {
    yaml: String,
    /// The same with backend 0 alone.
    yaml_one_backend: String,
    /// Length of the loaded measurement.
    secs: f64,
    /// Length of the single-worker measurement.
    unloaded_secs: f64,
    bind: String,
}
fn target(lab: &Lab, setup: Setup) -> String {
    let port = lab.spec().port;
    match setup {
        Setup::Direct => format!("{}:{port}", lab.backend_addr4(0)),
        _ => format!("{}:{port}", lab.vip4()),
    }
}

fn measure(
    lab: &Lab,
    setup: Setup,
    ctx: &Ctx,
    secs: f64,
    concurrency: usize,
) -> Result<RateReport> {
    let target = target(lab, setup);
    let secs = secs.to_string();
    let conc = concurrency.to_string();
    lab.run_client(
        0,
        &[
            "rate",
            "--target",
            &target,
            "--duration-s",
            &secs,
            "--concurrency",
            &conc,
            "--bind",
            &ctx.bind,
        ],
    )
    .with_context(|| format!("lab-client rate against {target} ({})", setup.name()))
}

/// One setup's turn: a short unmeasured warm-up, the loaded run, then a single worker. In a
/// saturated closed loop the latency is mostly queueing (Little's law: about concurrency /
/// rate), so it largely restates the rate; one worker on an otherwise idle lab shows what the
/// path itself adds.
fn round(lab: &mut Lab, setup: Setup, ctx: &Ctx) -> Result<Turn> {
    let active = setup
        .start(lab, ctx)
        .with_context(|| format!("starting the {} setup", setup.name()))?;
    let measured = measure(lab, setup, ctx, WARMUP_SECS, CONCURRENCY).and_then(|_warmup| {
        let probe = cpu_probe(lab, &active)?;
        let loaded = measure(lab, setup, ctx, ctx.secs, CONCURRENCY)?;
        let cpu = probe.finish()?;
        let unloaded = measure(lab, setup, ctx, ctx.unloaded_secs, 1)?;
        // Read while the table exists; entries outlive it, but this is the moment they peak.
        let conntrack = match setup {
            Setup::Nftables => Some(conntrack_count(lab)?),
            _ => None,
        };
        Ok(Turn {
            loaded,
            unloaded,
            conntrack,
            cpu,
        })
    });
    let stopped = active
        .stop(lab)
        .with_context(|| format!("stopping the {} setup", setup.name()));
    let turn = measured?;
    stopped?;
    Ok(turn)
}

/// One setup's measurements in one round.
struct Turn {
    loaded: RateReport,
    unloaded: RateReport,
    /// Conntrack entries in the gateway namespace at the end (`nftables` only).
    conntrack: Option<u64>,
    /// CPU spent during the loaded run.
    cpu: CpuSample,
}

/// Conntrack entries in the gateway namespace (the count is per namespace).
fn conntrack_count(lab: &Lab) -> Result<u64> {
    let n = sysctl_get(lab.gateway_ns(), "net.netfilter.nf_conntrack_count")?;
    n.parse()
        .with_context(|| format!("nf_conntrack_count {n:?}"))
}

/// What the `nftables` setup left in conntrack: TIME_WAIT entries stay 120 s by default and
/// the limit is shared by the whole host, so at high rates the table, not the rules, is what
/// runs out first; worth knowing when reading its figures.
fn conntrack_note(counts: &[u64]) -> Option<String> {
    if counts.is_empty() {
        return None;
    }
    let list: Vec<String> = counts.iter().map(u64::to_string).collect();
    let max = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    Some(format!(
        "gateway conntrack entries after each round: {} (nf_conntrack_max {max} is host-wide; TIME_WAIT entries live 120 s by default)",
        list.join(", ")
    ))
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One setup's result from its rounds: counts summed, the rate over the total time, the
/// percentiles as the median of the rounds' (with an even count, the mean of the middle two).
fn summarize(
    setup: &str,
    rounds: &[RateReport],
    unloaded: &[RateReport],
    cpu: &[CpuSample],
) -> E2eResult {
    let mut all = RateReport::default();
    for r in rounds {
        all.absorb(r.clone());
    }
    let duration_s: f64 = rounds.iter().map(|r| r.duration_s).sum();
    let pick = |f: fn(&RateReport) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let pick_unloaded =
        |f: fn(&RateReport) -> f64| median(&unloaded.iter().map(f).collect::<Vec<_>>());
    E2eResult {
        setup: setup.to_string(),
        connections: all.connections,
        failed: all.failed,
        conn_per_s: if duration_s > 0.0 {
            all.connections as f64 / duration_s
        } else {
            0.0
        },
        p50_us: pick(|r| r.p50_us),
        p99_us: pick(|r| r.p99_us),
        unloaded_p50_us: pick_unloaded(|r| r.p50_us),
        unloaded_p99_us: pick_unloaded(|r| r.p99_us),
        rounds: rounds.len(),
        duration_s,
        round_conn_per_s: rounds.iter().map(|r| r.conn_per_s).collect(),
        per_backend: all.per_backend,
        cpu: cpu::per_conn(cpu, all.connections),
        errors: all.errors,
        notes: Vec::new(),
    }
}

/// Measures new short TCP connections per second (connect, `hello`, one reply line, close;
/// 32 workers in a closed loop from one client), their latency and the CPU each setup spends
/// per connection, for six setups in one lab: `xdplb` (native XDP, DSR, three backends),
/// `xdplb-1-backend` (the same, backend 0 only), `onpath-floor` (the fixed-backend XDP
/// forwarder where xdplb sits, to backend 0), `direct` (straight to one backend, fewer hops),
/// `haproxy` (TCP proxy on the gateway, round robin over three) and `nftables` (jhash DNAT
/// plus masquerade on the gateway). The setups take turns within each round, each round
/// starting one setup further along, so drift and after-effects hit all of them alike; only
/// one is in place at a time. Each turn is a 0.5 s warm-up (not counted), a loaded run and a
/// single-worker run.
/// `quick`: 2 rounds of 3 s (+1 s single-worker) each, else 5 rounds of 10 s (+3 s).
///
/// Per setup: connections and failures (of the loaded runs) are summed over the rounds,
/// `conn_per_s` is the total connections over the total measured time, and `p50_us`/`p99_us`
/// (and the `unloaded_` pair) are the median over the rounds of each round's percentile, with
/// an even number of rounds the mean of the middle two (a slow round does not swamp the rest).
pub fn run(quick: bool) -> Result<Vec<E2eResult>> {
    let (rounds, secs, unloaded_secs) = if quick { (2, 3.0, 1.0) } else { (5, 10.0, 3.0) };
    for tool in ["lab-client", "xdplb"] {
        let path = tool_path(tool);
        if !path.is_file() {
            bail!(
                "{} not found (build with `cargo build -p lb-userspace -p xdplb-lab --bins`)",
                path.display()
            );
        }
    }
    if !std::path::Path::new("/usr/sbin/haproxy").is_file() {
        bail!("/usr/sbin/haproxy not found (apt-get install haproxy)");
    }
    let mut lab = Lab::new(LabSpec {
        clients: 1,
        backends: BACKENDS,
        port: 8080,
        ..Default::default()
    })?;
    tune_lab(&lab)?;
    let members: Vec<_> = (0..BACKENDS).map(|i| (i, Member::Active)).collect();
    let ctx = Ctx {
        yaml: lab_config(&mut lab, "native", &members)?,
        yaml_one_backend: lab_config(&mut lab, "native", &[(0, Member::Active)])?,
        secs,
        unloaded_secs,
        bind: lab.client_bind4(0),
    };
    let mut loaded: Vec<Vec<RateReport>> = vec![Vec::new(); SETUPS.len()];
    let mut unloaded: Vec<Vec<RateReport>> = vec![Vec::new(); SETUPS.len()];
    let mut conntrack: Vec<Vec<u64>> = vec![Vec::new(); SETUPS.len()];
    let mut cpus: Vec<Vec<CpuSample>> = vec![Vec::new(); SETUPS.len()];
    // Held for the whole section: run-time statistics of every BPF program on the host.
    let _bpf_stats = cpu::enable_bpf_stats()?;
    for r in 0..rounds {
        for k in 0..SETUPS.len() {
            let idx = (r + k) % SETUPS.len();
            let setup = SETUPS[idx];
            let turn = round(&mut lab, setup, &ctx)?;
            let (rep, one) = (turn.loaded, turn.unloaded);
            let mut line = format!(
                "bench e2e: round {}/{rounds} {}: {:.0} conn/s p50 {:.0}us p99 {:.0}us (1 worker: p50 {:.0}us p99 {:.0}us)",
                r + 1,
                setup.name(),
                rep.conn_per_s,
                rep.p50_us,
                rep.p99_us,
                one.p50_us,
                one.p99_us,
            );
            for x in [&rep, &one] {
                if x.failed > 0 {
                    let _ = write!(line, ", {} failed (first: {:?})", x.failed, x.errors);
                }
            }
            if let Some(n) = turn.conntrack {
                let _ = write!(line, ", {n} conntrack entries");
                conntrack[idx].push(n);
            }
            let c = turn.cpu;
            let _ = write!(
                line,
                "; cpu/conn: softirq {:.0}ns, process {:.0}ns",
                c.softirq_ns / rep.connections.max(1) as f64,
                c.process_ns / rep.connections.max(1) as f64
            );
            if let Some((t, n)) = c.xdp {
                let _ = write!(
                    line,
                    ", xdp {:.0}ns in {:.1} runs",
                    t / rep.connections.max(1) as f64,
                    n as f64 / rep.connections.max(1) as f64
                );
            }
            eprintln!("{line}");
            cpus[idx].push(c);
            loaded[idx].push(rep);
            unloaded[idx].push(one);
        }
    }
    let mut results: Vec<E2eResult> = SETUPS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut r = summarize(s.name(), &loaded[i], &unloaded[i], &cpus[i]);
            r.notes.extend(conntrack_note(&conntrack[i]));
            r
        })
        .collect();
    let direct = results
        .iter()
        .find(|r| r.setup == Setup::Direct.name())
        .map_or(0.0, |r| r.cpu.softirq_ns);
    for r in &mut results {
        cpu::against_direct(&mut r.cpu, direct);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_sums_counts_and_takes_median_percentiles() {
        let round = |c: u64, d: f64, p50: f64, p99: f64| RateReport {
            connections: c,
            failed: 1,
            duration_s: d,
            conn_per_s: c as f64 / d,
            p50_us: p50,
            p99_us: p99,
            per_backend: BTreeMap::from([("b0".to_string(), c)]),
            errors: vec!["connect: timed out".into()],
        };
        let s = summarize(
            "xdplb",
            &[
                round(1000, 1.0, 100.0, 900.0),
                round(3000, 2.0, 300.0, 100.0),
                round(2000, 1.0, 200.0, 500.0),
            ],
            &[round(10, 1.0, 30.0, 60.0), round(10, 1.0, 50.0, 80.0)],
            &[],
        );
        assert_eq!((s.connections, s.failed, s.rounds), (6000, 3, 3));
        assert_eq!(s.conn_per_s, 1500.0);
        assert_eq!((s.p50_us, s.p99_us), (200.0, 500.0));
        assert_eq!((s.unloaded_p50_us, s.unloaded_p99_us), (40.0, 70.0));
        assert_eq!(s.per_backend["b0"], 6000);
        assert_eq!(s.errors.len(), 1);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
    }

    /// Runs the quick benchmark in a real lab (root, haproxy, built binaries):
    /// `cargo test -p xdplb-bench --lib e2e -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn quick_run() {
        let results = run(true).expect("e2e benchmark");
        for r in &results {
            println!("{}", serde_json::to_string(r).unwrap());
        }
        assert_eq!(results.len(), SETUPS.len());
    }
}

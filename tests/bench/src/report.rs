//! The benchmark report: one JSON file and a Markdown page with SVG plots.
//!
//! The JSON holds the machine's facts, every figure, a `summary` that regression checks read, and
//! the goals met or not.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    conns::ConnsResult,
    control::ControlResult,
    e2e::E2eResult,
    packet::{PacketCost, Sweep},
    plots::{bar_chart, bar_chart_digits, line_chart},
    throughput::ThroughputResult,
};

/// Facts about the machine the figures came from.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    /// `/proc/sys/net/core/bpf_jit_enable` (1 = JIT on).
    pub bpf_jit_enable: String,
}

impl Machine {
    pub fn read() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu_model,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            bpf_jit_enable: read("/proc/sys/net/core/bpf_jit_enable").trim().to_owned(),
        }
    }
}

/// Everything one run measured; a section that failed holds its error instead.
#[derive(Debug, Default)]
pub struct Results {
    pub per_packet: Option<Result<Vec<PacketCost>>>,
    pub profile: Option<Result<Vec<crate::profile::Profile>>>,
    pub sweeps: Option<Result<Vec<Sweep>>>,
    pub throughput: Option<Result<ThroughputResult>>,
    pub e2e: Option<Result<Vec<E2eResult>>>,
    pub conns: Option<Result<Vec<ConnsResult>>>,
    pub control: Option<Result<ControlResult>>,
}

fn section<T: Serialize>(r: &Option<Result<T>>) -> Value {
    match r {
        None => json!({ "skipped": true }),
        Some(Ok(v)) => serde_json::to_value(v).unwrap_or(Value::Null),
        Some(Err(e)) => json!({ "error": format!("{e:#}") }),
    }
}

fn ok<T>(r: &Option<Result<T>>) -> Option<&T> {
    r.as_ref().and_then(|r| r.as_ref().ok())
}

/// Numbers NaN-safe for JSON (NaN becomes null).
fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

pub fn summary(r: &Results) -> Value {
    let class = |prefix: &str| {
        ok(&r.per_packet).and_then(|v| v.iter().find(|c| c.class.starts_with(prefix)))
    };
    let established = class("VIP established");
    let ratio_of = |prefix: &str| class(prefix).map(|c| num(c.ratio_to_macswap));
    let ns_ratio = |a: &str, b: &str| match (class(a), class(b)) {
        (Some(a), Some(b)) if b.ns_per_packet > 0.0 => num(a.ns_per_packet / b.ns_per_packet),
        _ => Value::Null,
    };
    let e2e = ok(&r.e2e);
    let rate = |name: &str| {
        e2e.and_then(|v| v.iter().find(|x| x.setup == name))
            .map(|x| x.conn_per_s)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => num(a / b),
        _ => Value::Null,
    };
    let setup = |name: &str| e2e.and_then(|v| v.iter().find(|x| x.setup == name));
    let p99 = |name: &str| setup(name).map(|x| x.p99_us);
    let unloaded_p99 = |name: &str| setup(name).map(|x| x.unloaded_p99_us);
    let cpu = |name: &str| setup(name).map(|x| x.cpu.total_ns);
    let tp = ok(&r.throughput);
    let many = tp.and_then(|t| t.cases.iter().find(|c| c.case == "many flows, 1 CPU"));
    let held = ok(&r.conns)
        .and_then(|v| v.iter().find(|c| c.target == "xdplb"))
        .map(|c| c.held);
    let flat = ok(&r.sweeps).map(|v| v.iter().map(|s| s.max_over_min).fold(0.0, f64::max));
    json!({
        "established_ns": established.map(|c| num(c.ns_per_packet)),
        "established_ns_ratio_to_macswap": established.map(|c| num(c.ratio_to_macswap)),
        "ipv6_established_ns_ratio_to_macswap": ratio_of("IPv6 VIP established"),
        "new_flow_ns_ratio_to_macswap": ratio_of("VIP new flow"),
        "ipip_established_ns_ratio_to_macswap": ratio_of("IPIP encapsulation"),
        "new_flow_floor_ns_ratio_to_macswap": ratio_of("baseline: new-flow floor"),
        "lookup40_floor_ns_ratio_to_macswap": ratio_of("baseline: MAC swap after one LRU hash hit, 40"),
        "stateless_established_ns_ratio_to_macswap": ratio_of("stateless VIP (flow hash"),
        "stateless_new_flow_ns_ratio_to_macswap": ratio_of("stateless VIP, new flows"),
        // The VIP table comes first on every path: a non-VIP packet costs the same whatever
        // the VIPs' mode.
        "stateless_non_vip_ns_ratio_to_macswap": ratio_of("non-VIP TCP"),
        "host_no_history_ns_ratio_to_pass": ns_ratio("host program: VIP TCP without history", "baseline: empty XDP_PASS"),
        "host_local_ns_ratio_to_pass": ns_ratio("host program: marked, local", "baseline: empty XDP_PASS"),
        "host_chained_ns_ratio_to_pass": ns_ratio("host program: marked, chained", "baseline: empty XDP_PASS (one packet per run)"),
        "concurrent_connections_held": held,
        "e2e_conn_rate_ratio_to_direct": ratio(rate("xdplb"), rate("direct")),
        "e2e_conn_rate_ratio_to_haproxy": ratio(rate("xdplb"), rate("haproxy")),
        "e2e_conn_rate_ratio_to_nftables": ratio(rate("xdplb"), rate("nftables")),
        "cost_growth_max_over_min": flat.map(num),
        "throughput_ratio_to_macswap": tp.map(|t| num(t.ratio_to_macswap)),
        "throughput_many_flows_ratio_to_macswap": many.map(|c| num(c.ratio_to_macswap)),
        "throughput_two_cpu_scaling": tp.map(|t| num(t.balancer_two_cpu_scaling)),
        "throughput_two_cpu_cpus_used": tp.and_then(|t| t.two_cpu_scaling.first()).map(|x| num(x.two_cpu_cpus_used)),
        "throughput_two_cpu_per_cpu_efficiency": tp.and_then(|t| t.two_cpu_scaling.first()).map(|x| num(x.per_cpu_efficiency)),
        "throughput_macswap_two_cpu_scaling": tp.and_then(|t| t.two_cpu_scaling.get(1)).map(|x| num(x.scaling)),
        // The floor sends every connection to one backend, so xdplb is held against it with
        // that backend alone: the two then differ only in what the XDP program does. With
        // three backends, three server processes share the lab's two cores with everything
        // else; those figures are kept beside.
        "e2e_conn_rate_ratio_to_onpath_floor": ratio(rate("xdplb-1-backend"), rate("onpath-floor")),
        "e2e_p99_ratio_to_onpath_floor": ratio(p99("xdplb-1-backend"), p99("onpath-floor")),
        "e2e_unloaded_p99_ratio_to_onpath_floor": ratio(unloaded_p99("xdplb-1-backend"), unloaded_p99("onpath-floor")),
        "e2e_three_backends_conn_rate_ratio_to_onpath_floor": ratio(rate("xdplb"), rate("onpath-floor")),
        "e2e_three_backends_p99_ratio_to_onpath_floor": ratio(p99("xdplb"), p99("onpath-floor")),
        "balancer_cpu_per_conn_ns": cpu("xdplb").map(num),
        "balancer_cpu_per_conn_ratio_haproxy_to_xdplb": ratio(cpu("haproxy"), cpu("xdplb")),
        "balancer_cpu_per_conn_ratio_nftables_to_xdplb": ratio(cpu("nftables"), cpu("xdplb")),
        "balancer_cpu_per_conn_ratio_haproxy_to_xdplb_run_time": ratio(cpu("haproxy"), setup("xdplb").and_then(|x| x.cpu.xdp_run_ns)),
        "packets_dropped_during_reloads": ok(&r.control).map(|c| c.packets_dropped_during_reloads),
    })
}

fn goals(s: &Value) -> Value {
    let g = |goal: &str, value: &Value, met: Option<bool>| json!({ "goal": goal, "value": value, "met": met });
    let f = |k: &str| s[k].as_f64();
    json!([
        g(
            "established-flow cost ≤ 2× MAC swap",
            &s["established_ns_ratio_to_macswap"],
            f("established_ns_ratio_to_macswap").map(|x| x <= 2.0)
        ),
        g(
            "IPv6 established-flow cost ≤ 2.3× MAC swap",
            &s["ipv6_established_ns_ratio_to_macswap"],
            f("ipv6_established_ns_ratio_to_macswap").map(|x| x <= 2.3)
        ),
        g(
            "new-flow cost ≤ 4× MAC swap (one packet per run)",
            &s["new_flow_ns_ratio_to_macswap"],
            f("new_flow_ns_ratio_to_macswap").map(|x| x <= 4.0)
        ),
        g(
            "IPIP established-flow cost ≤ 2.5× MAC swap (one packet per run)",
            &s["ipip_established_ns_ratio_to_macswap"],
            f("ipip_established_ns_ratio_to_macswap").map(|x| x <= 2.5)
        ),
        g(
            "stateless VIP, established flow ≤ 1.6× MAC swap",
            &s["stateless_established_ns_ratio_to_macswap"],
            f("stateless_established_ns_ratio_to_macswap").map(|x| x <= 1.6)
        ),
        g(
            "stateless VIP, new flow ≤ 1.6× MAC swap (one packet per run)",
            &s["stateless_new_flow_ns_ratio_to_macswap"],
            f("stateless_new_flow_ns_ratio_to_macswap").map(|x| x <= 1.6)
        ),
        g(
            "non-VIP packet ≤ 1.3× MAC swap",
            &s["stateless_non_vip_ns_ratio_to_macswap"],
            f("stateless_non_vip_ns_ratio_to_macswap").map(|x| x <= 1.3)
        ),
        g(
            "host program, packet without history ≤ 1.1× empty XDP_PASS",
            &s["host_no_history_ns_ratio_to_pass"],
            f("host_no_history_ns_ratio_to_pass").map(|x| x <= 1.1)
        ),
        g(
            "cost flat within 10% across backends, VIPs, flow-table fill",
            &s["cost_growth_max_over_min"],
            f("cost_growth_max_over_min").map(|x| x <= 1.10)
        ),
        g(
            "≥ 1,000,000 concurrent connections held",
            &s["concurrent_connections_held"],
            f("concurrent_connections_held").map(|x| x >= 1e6)
        ),
        g(
            "new connections/s ≥ 0.9× direct",
            &s["e2e_conn_rate_ratio_to_direct"],
            f("e2e_conn_rate_ratio_to_direct").map(|x| x >= 0.9)
        ),
        g(
            "new connections/s ≥ 2× HAProxy",
            &s["e2e_conn_rate_ratio_to_haproxy"],
            f("e2e_conn_rate_ratio_to_haproxy").map(|x| x >= 2.0)
        ),
        g(
            "throughput through a veth ≥ 0.85× MAC swap (one CPU, few flows)",
            &s["throughput_ratio_to_macswap"],
            f("throughput_ratio_to_macswap").map(|x| x >= 0.85)
        ),
        g(
            "throughput on two CPUs ≥ 1.8× the balancer's own one-CPU rate (judged only when the generator got ≥ 1.8 CPUs)",
            &s["throughput_two_cpu_scaling"],
            f("throughput_two_cpu_scaling")
                .zip(f("throughput_two_cpu_cpus_used"))
                .filter(|(_, cpus)| *cpus >= 1.8)
                .map(|(x, _)| x >= 1.8)
        ),
        g(
            "new connections/s ≥ 0.95× the on-path floor (fixed-backend XDP forwarder; xdplb with that backend alone)",
            &s["e2e_conn_rate_ratio_to_onpath_floor"],
            f("e2e_conn_rate_ratio_to_onpath_floor").map(|x| x >= 0.95)
        ),
        g(
            "p99 latency within 10% of the on-path floor (loaded; xdplb with that backend alone)",
            &s["e2e_p99_ratio_to_onpath_floor"],
            f("e2e_p99_ratio_to_onpath_floor").map(|x| x <= 1.10)
        ),
        g(
            "balancer CPU per connection ≥ 20× less than HAProxy's",
            &s["balancer_cpu_per_conn_ratio_haproxy_to_xdplb"],
            f("balancer_cpu_per_conn_ratio_haproxy_to_xdplb").map(|x| x >= 20.0)
        ),
        g(
            "zero packets lost while reloading under load",
            &s["packets_dropped_during_reloads"],
            s["packets_dropped_during_reloads"].as_u64().map(|x| x == 0)
        ),
    ])
}

/// Writes `<dir>/<stem>.json`, `<dir>/<stem>.md` and the SVG plots; returns the JSON path.
pub fn write(
    dir: &Path,
    stem: &str,
    quick: bool,
    machine: &Machine,
    r: &Results,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let summary = summary(r);
    let goals = goals(&summary);
    let doc = json!({
        "date": stem,
        "quick": quick,
        "machine": machine,
        "summary": summary,
        "goals": goals,
        "per_packet": section(&r.per_packet),
        "profile": section(&r.profile),
        "cost_growth": section(&r.sweeps),
        "throughput": section(&r.throughput),
        "e2e": section(&r.e2e),
        "concurrent_connections": section(&r.conns),
        "control_plane": section(&r.control),
    });
    let json_path = dir.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)?;
    let mut plots = Vec::new();
    if let Some(v) = ok(&r.per_packet) {
        let bars: Vec<(String, f64)> = v
            .iter()
            .filter(|c| c.ns_per_packet.is_finite())
            .map(|c| (c.class.clone(), c.ns_per_packet))
            .collect();
        let name = format!("{stem}-per-packet.svg");
        bar_chart(
            &dir.join(&name),
            "Per-packet cost (ns, lower is better)",
            &bars,
        )?;
        plots.push(name);
    }
    if let Some(v) = ok(&r.sweeps) {
        for (i, s) in v.iter().enumerate() {
            let name = format!("{stem}-growth-{i}.svg");
            line_chart(
                &dir.join(&name),
                &format!("Established-flow cost vs {}", s.name),
                &s.x_label,
                s,
            )?;
            plots.push(name);
        }
    }
    if let Some(v) = ok(&r.e2e) {
        let bars: Vec<(String, f64)> = v.iter().map(|x| (x.setup.clone(), x.conn_per_s)).collect();
        let name = format!("{stem}-e2e.svg");
        bar_chart(
            &dir.join(&name),
            "New TCP connections per second (higher is better)",
            &bars,
        )?;
        plots.push(name);
        let bars: Vec<(String, f64)> = v
            .iter()
            .flat_map(|x| {
                let mut b = vec![(
                    format!("{} (process + softirq share)", x.setup),
                    x.cpu.total_ns,
                )];
                b.extend(
                    x.cpu
                        .xdp_run_ns
                        .map(|t| (format!("{} (XDP run time alone)", x.setup), t)),
                );
                b
            })
            .filter(|(_, v)| v.is_finite())
            .collect();
        let name = format!("{stem}-cpu-per-conn.svg");
        bar_chart(
            &dir.join(&name),
            "CPU per connection, ns (lower is better)",
            &bars,
        )?;
        plots.push(name);
    }
    if let Some(t) = ok(&r.throughput) {
        let bars: Vec<(String, f64)> = t
            .cases
            .iter()
            .flat_map(|c| {
                c.programs.iter().map(move |p| {
                    let short = if p.program.starts_with("xdplb") {
                        "xdplb"
                    } else {
                        "MAC swap"
                    };
                    (format!("{short}, {}", c.case), p.mpps)
                })
            })
            .collect();
        let name = format!("{stem}-throughput-scaling.svg");
        bar_chart_digits(
            &dir.join(&name),
            "Forwarding rate through a veth, Mpps, by flows and CPUs (higher is better)",
            &bars,
            2,
        )?;
        plots.push(name);
    }
    std::fs::write(
        dir.join(format!("{stem}.md")),
        markdown(stem, quick, machine, &doc, r, &plots),
    )?;
    Ok(json_path)
}

fn fmt(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "–".into()
    }
}

fn markdown(
    stem: &str,
    quick: bool,
    m: &Machine,
    doc: &Value,
    r: &Results,
    plots: &[String],
) -> String {
    let mut o = format!(
        "# xdplb benchmark report {stem}{}\n\nMachine: {} cores, {} ({:.0} GiB), kernel {}, BPF JIT {}.\nReproduce with `cargo xtask bench{}`.\n\n## Goals\n\n| goal | value | met |\n|---|---|---|\n",
        if quick { " (quick)" } else { "" },
        m.cores,
        m.cpu_model,
        m.memory_gib,
        m.kernel,
        if m.bpf_jit_enable == "1" { "on" } else { "off" },
        if quick { " --quick" } else { "" },
    );
    for g in doc["goals"].as_array().into_iter().flatten() {
        let met = match g["met"].as_bool() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        o += &format!(
            "| {} | {} | {met} |\n",
            g["goal"].as_str().unwrap_or_default(),
            g["value"]
        );
    }
    o += &per_packet_md(r);
    o += &profile_md(r);
    o += &growth_md(r);
    o += &throughput_md(r);
    o += &e2e_md(r);
    o += &conns_md(r);
    o += &control_md(r);
    if !plots.is_empty() {
        o += "\n## Plots\n\n";
        for p in plots {
            o += &format!("![{p}]({p})\n\n");
        }
    }
    o
}

/// Per-packet cost of each packet class.
fn per_packet_md(r: &Results) -> String {
    let mut o = String::from("\n## Per-packet cost (BPF_PROG_TEST_RUN, one CPU, median of runs)\n\n| packet class | ns/packet | Mpps per core | × MAC swap | verdict | counted per run | note |\n|---|---|---|---|---|---|---|\n");
    match &r.per_packet {
        Some(Ok(v)) => {
            for c in v {
                let counted = c
                    .counters_per_run
                    .iter()
                    .map(|(name, n)| format!("{name} {}", fmt(*n, 2)))
                    .collect::<Vec<_>>()
                    .join(", ");
                o += &format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    c.class,
                    fmt(c.ns_per_packet, 0),
                    fmt(c.mpps_per_core, 1),
                    fmt(c.ratio_to_macswap, 2),
                    c.verdict,
                    if counted.is_empty() { "–" } else { &counted },
                    c.note
                );
            }
        }
        other => o += &format!("\n{}\n", section(other)),
    }
    o
}

/// Where the time goes: the perf profile.
fn profile_md(r: &Results) -> String {
    let mut o = String::from(
        "\n## Where the time goes (perf cpu-clock samples during BPF_PROG_TEST_RUN)\n\n",
    );
    match &r.profile {
        Some(Ok(v)) => o += &crate::profile::markdown(v),
        other => o += &format!("{}\n", section(other)),
    }
    o
}

/// Cost growth with the tables' size.
fn growth_md(r: &Results) -> String {
    let mut o = String::from("\n## Cost growth (established flow)\n\n");
    match &r.sweeps {
        Some(Ok(v)) => {
            for s in v {
                o += &format!("- {}: ", s.name);
                o += &s
                    .points
                    .iter()
                    .map(|p| format!("{} → {:.0} ns", p.x, p.ns_per_packet))
                    .collect::<Vec<_>>()
                    .join(", ");
                o += &format!(" (max/min {:.2})\n", s.max_over_min);
            }
        }
        other => o += &format!("{}\n", section(other)),
    }
    o
}

/// Throughput through a veth, on one and two CPUs.
fn throughput_md(r: &Results) -> String {
    let mut o = String::from(
        "\n## Throughput through a veth (live frames, one CPU, median of interleaved rounds)\n\n",
    );
    match &r.throughput {
        Some(Ok(t)) => {
            o += &format!(
                "{} flows, {} frames per call, batch {}, {} generator threads, {}-byte frames, {} rounds; the balancer forwards at {} × the MAC swap's rate ({} × by kernel time per frame).\n\n| program | Mpps | per round | kernel ns/frame | frames sent | received | loss |\n|---|---|---|---|---|---|---|\n",
                t.flows,
                t.frames_per_call,
                t.batch_size,
                t.generator_threads,
                t.frame_bytes,
                t.rounds,
                fmt(t.ratio_to_macswap, 2),
                fmt(t.kernel_ratio_to_macswap, 2)
            );
            for p in &t.programs {
                o += &format!(
                    "| {} | {} | {} | {} | {} | {} | {}% |\n",
                    p.program,
                    fmt(p.mpps, 2),
                    p.round_mpps
                        .iter()
                        .map(|x| fmt(*x, 2))
                        .collect::<Vec<_>>()
                        .join(", "),
                    fmt(p.kernel_ns_per_frame, 0),
                    p.frames_sent,
                    p.frames_received,
                    fmt(p.loss * 100.0, 2)
                );
            }
            o += "\n| case | flows in table | flows timed | threads | CPUs | xdplb Mpps | MAC swap Mpps | ratio | kernel-time ratio | CPUs the generator got (xdplb / MAC swap) | balancer counters per frame |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
            for c in &t.cases {
                let counted = c
                    .balancer_counters_per_frame
                    .iter()
                    .map(|(name, n)| format!("{name} {}", fmt(*n, 3)))
                    .collect::<Vec<_>>()
                    .join(", ");
                o += &format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |\n",
                    c.case,
                    c.flows_in_table,
                    c.flows_timed,
                    c.generator_threads,
                    c.cpus,
                    fmt(c.programs[0].mpps, 2),
                    fmt(c.programs[1].mpps, 2),
                    fmt(c.ratio_to_macswap, 2),
                    fmt(c.kernel_ratio_to_macswap, 2),
                    fmt(c.programs[0].cpus_used, 2),
                    fmt(c.programs[1].cpus_used, 2),
                    counted
                );
            }
            o += "\nTwo CPUs against one (few flows). Per-CPU efficiency = (Mpps / CPUs got) on two CPUs over the same on one: 1.0 means a frame costs the same CPU time with two CPUs sending, so two free CPUs would give 2×; it is not a measured rate.\n\n| program | 1 CPU Mpps | 2 CPUs Mpps | scaling | CPUs got (1 / 2) | per-CPU efficiency |\n|---|---|---|---|---|---|\n";
            for x in &t.two_cpu_scaling {
                o += &format!(
                    "| {} | {} | {} | {} | {} / {} | {} |\n",
                    x.program,
                    fmt(x.one_cpu_mpps, 2),
                    fmt(x.two_cpu_mpps, 2),
                    fmt(x.scaling, 2),
                    fmt(x.one_cpu_cpus_used, 2),
                    fmt(x.two_cpu_cpus_used, 2),
                    fmt(x.per_cpu_efficiency, 2)
                );
            }
            for n in &t.notes {
                o += &format!("\n- {n}");
            }
            o += "\n";
        }
        other => o += &format!("{}\n", section(other)),
    }
    o
}

/// End to end: new connections, and their CPU cost.
fn e2e_md(r: &Results) -> String {
    let mut o = String::from("\n## End to end: new connections of a short request (same lab, interleaved rounds)\n\n`onpath-floor` is a fixed-backend XDP forwarder (every connection to backend 0, MAC rewrite and `XDP_TX`) where xdplb sits: the same hops, no choice, no state. `xdplb-1-backend` is xdplb with backend 0 alone, the floor's traffic pattern, so the two differ only in the XDP program; `xdplb` spreads over three backends.\n\n| setup | conn/s | p50 µs | p99 µs | 1-worker p50 / p99 µs | connections | failed |\n|---|---|---|---|---|---|---|\n");
    match &r.e2e {
        Some(Ok(v)) => {
            for x in v {
                o += &format!(
                    "| {} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} | {} | {} |\n",
                    x.setup,
                    x.conn_per_s,
                    x.p50_us,
                    x.p99_us,
                    x.unloaded_p50_us,
                    x.unloaded_p99_us,
                    x.connections,
                    x.failed
                );
            }
            o += "\nCPU per connection over the loaded runs, ns. Softirq time is host-wide (clients, backends and other jobs on the machine are in it); a setup's share is its softirq per connection minus `direct`'s. The XDP run time (kernel BPF statistics) is the program's alone and is a part of its softirq time. Total = process + softirq share, at least the XDP run time.\n\n| setup | total | process | softirq | softirq over direct | XDP run time | XDP runs per conn |\n|---|---|---|---|---|---|---|\n";
            for x in v {
                let c = &x.cpu;
                o += &format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    x.setup,
                    fmt(c.total_ns, 0),
                    fmt(c.process_ns, 0),
                    fmt(c.softirq_ns, 0),
                    fmt(c.softirq_over_direct_ns, 0),
                    c.xdp_run_ns.map_or("–".into(), |t| fmt(t, 0)),
                    c.xdp_runs.map_or("–".into(), |t| fmt(t, 1)),
                );
            }
        }
        other => o += &format!("\n{}\n", section(other)),
    }
    o
}

/// Concurrent persistent connections.
fn conns_md(r: &Results) -> String {
    let mut o = String::from("\n## Concurrent persistent connections\n\n| target | attempted | held | ramp conn/s | balancer memory | balancer CPU % | stopped because |\n|---|---|---|---|---|---|---|\n");
    match &r.conns {
        Some(Ok(v)) => {
            for c in v {
                o += &format!(
                    "| {} | {} | {} | {:.0} | {:.1} MiB | {:.0} | {} |\n",
                    c.target,
                    c.attempted,
                    c.held,
                    c.ramp_per_s,
                    c.balancer_memory_bytes as f64 / 1048576.0,
                    c.balancer_cpu_percent,
                    c.stopped_reason.as_deref().unwrap_or("-")
                );
                for n in &c.notes {
                    o += &format!("|  | {n} | | | | | |\n");
                }
            }
        }
        other => o += &format!("\n{}\n", section(other)),
    }
    o
}

/// Control-plane timings.
fn control_md(r: &Results) -> String {
    let mut o = String::from("\n## Control plane\n\n");
    match &r.control {
        Some(Ok(c)) => {
            o += &format!(
                "- apply a config of {} backends ({} VIPs): {:.2} s; re-apply with one weight changed: {:.2} s\n- `xdplb backend add` to the new backend's first packet: {:.3} s (the CLI call: {:.3} s)\n- {} reloads under load: {} packets dropped by the datapath, {} of {} new connections failed\n",
                c.backends, c.vips, c.apply_seconds, c.reapply_seconds, c.cli_to_first_packet_seconds, c.cli_call_seconds,
                c.reloads_under_load, c.packets_dropped_during_reloads, c.connections_failed_during_reloads, c.connections_opened_during_reloads
            );
        }
        other => o += &format!("{}\n", section(other)),
    }
    o
}

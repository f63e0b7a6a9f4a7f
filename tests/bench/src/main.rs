//! `cargo xtask bench [--quick]`.
//!
//! Runs every benchmark section, prints a summary and writes tests/bench/results/<date>.{json,md}
//! with SVG plots (paths relative to the workspace, where `cargo xtask bench` runs it). Benchmarks
//! report; they never fail a build.

use std::path::PathBuf;

use clap::Parser;
use xdplb_bench::{conns, control, e2e, packet, report, throughput};

#[derive(Parser)]
struct Args {
    /// About two minutes instead of the full run.
    #[arg(long)]
    quick: bool,
    /// Where the report goes.
    #[arg(long, default_value = "tests/bench/results")]
    out: PathBuf,
    /// Run only these sections (see `SECTIONS`); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// The sections `--only` may name, in the order they run.
const SECTIONS: [&str; 7] = [
    "per-packet",
    "profile",
    "growth",
    "throughput",
    "e2e",
    "conns",
    "control",
];

fn main() {
    let args = Args::parse();
    // A misspelt section would silently run nothing and write an empty report.
    if let Some(bad) = args.only.iter().find(|o| !SECTIONS.contains(&o.as_str())) {
        eprintln!(
            "xdplb bench: no section {bad:?}; the sections are {}",
            SECTIONS.join(", ")
        );
        std::process::exit(2);
    }
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let machine = report::Machine::read();
    eprintln!(
        "xdplb bench{}: {} cores, {}, kernel {}",
        if args.quick { " --quick" } else { "" },
        machine.cores,
        machine.cpu_model,
        machine.kernel
    );
    let mut r = report::Results::default();
    let timed = |name: &str| {
        eprintln!("== {name}");
        std::time::Instant::now()
    };
    if want("per-packet") {
        let t = timed("per-packet cost");
        r.per_packet = Some(packet::per_packet(args.quick));
        eprintln!("   ({:.0} s)", t.elapsed().as_secs_f64());
    }
    if want("profile") {
        let t = timed("where the per-packet time goes (perf)");
        r.profile = Some(xdplb_bench::profile::run(args.quick));
        eprintln!("   ({:.0} s)", t.elapsed().as_secs_f64());
    }
    if want("growth") {
        let t = timed("cost growth");
        r.sweeps = Some(packet::sweeps(args.quick));
        eprintln!("   ({:.0} s)", t.elapsed().as_secs_f64());
    }
    if want("throughput") {
        let t = timed("throughput through veth (live frames)");
        r.throughput = Some(throughput::run(args.quick));
        if let Some(Ok(tp)) = &r.throughput {
            for p in &tp.programs {
                eprintln!(
                    "   {}: {:.2} Mpps, {:.0} ns/frame in the kernel, {} of {} frames received",
                    p.program, p.mpps, p.kernel_ns_per_frame, p.frames_received, p.frames_sent
                );
            }
            eprintln!("   ratio to MAC swap: {:.2}", tp.ratio_to_macswap);
        }
        eprintln!("   ({:.0} s)", t.elapsed().as_secs_f64());
    }
    if want("e2e") {
        let t = timed("end to end vs direct, HAProxy, nftables");
        r.e2e = Some(e2e::run(args.quick));
        eprintln!("   ({:.0} s)", t.elapsed().as_secs_f64());
    }
    if want("conns") {
        let t = timed("concurrent connections");
        r.conns = Some(conns::run(args.quick));
        eprintln!("   ({:.0} s)", t.elapsed().as_secs_f64());
    }
    if want("control") {
        let t = timed("control plane");
        r.control = Some(control::run(args.quick));
        eprintln!("   ({:.0} s)", t.elapsed().as_secs_f64());
    }
    let stem = chrono_like_now();
    match report::write(&args.out, &stem, args.quick, &machine, &r) {
        Ok(path) => {
            let md = path.with_extension("md");
            println!("{}", std::fs::read_to_string(&md).unwrap_or_default());
            println!("report: {} and {}", path.display(), md.display());
        }
        Err(e) => {
            eprintln!("xdplb bench: writing the report failed: {e:#}");
            std::process::exit(1);
        }
    }
}

/// UTC date and time for file names.
fn chrono_like_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H-%M-%SZ").to_string()
}

//! `cargo xtask`: setup, demo, test, bench, soak, deb, fuzz, diff-long and failover.
//!
//! It installs what a fresh machine lacks (idempotently) and runs the namespace demo, every test,
//! the benchmarks, the soak, the package build, the long fuzz and differential runs, and the full
//! failover table.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

mod deb;
mod docs;
mod fuzz;

#[derive(Parser)]
#[command(about = "xdplb orchestration")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what every command needs, skipping what is there (each command installs its own
    /// part first: the toolchain, the lab's tools, cargo-deb, the tests' tools).
    Setup,
    /// Build a namespace lab, balance real TCP connections across backends, show DSR, clean up.
    Demo {
        /// XDP mode of the balancer in the lab.
        #[arg(long, default_value = "native")]
        mode: String,
        /// Short connections per client.
        #[arg(long, default_value_t = 400)]
        connections: u32,
        /// Persistent connections held open during the demo.
        #[arg(long, default_value_t = 120)]
        persistent: u32,
        /// l2, or ipip (backends behind a router, tunnelled; path-MTU discovery shown).
        #[arg(long, default_value = "l2")]
        forwarding: String,
        /// Balancers: 2 to 8 puts them behind an ECMP router running BIRD.
        #[arg(long, default_value_t = 1)]
        balancers: usize,
    },
    /// Soak the agent: load, reloads and backend churn for N minutes while its memory, file
    /// descriptors and flow-table fill are sampled; fails if anything grows without bound.
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// Build the Debian package (release build) into target/debian/.
    Deb,
    /// Run the benchmark suite and write tests/bench/results/<date>.{json,md} with SVG plots.
    Bench {
        /// About two minutes instead of the full run.
        #[arg(long)]
        quick: bool,
        /// Only these sections, comma-separated: per-packet, profile, growth, throughput, e2e,
        /// conns, control.
        #[arg(long)]
        only: Option<String>,
        /// Where the report goes (relative paths from the workspace).
        #[arg(long, default_value = "tests/bench/results")]
        out: PathBuf,
    },
    /// Run formatting and lint checks, the whole test suite (unit, fixtures, end-to-end) and a
    /// bounded fuzz run of every target.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the bounded fuzz run (its first build takes several minutes).
        #[arg(long)]
        no_fuzz: bool,
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        rest: Vec<String>,
    },
    /// Coverage-guided fuzzing (cargo-fuzz, no sanitizer) of the targets in tests/fuzz, one
    /// after the other; a crash stops the run and is kept in tests/fuzz/regressions/<target>/.
    Fuzz {
        /// Only this target (config, api_request, model_packet); default all.
        #[arg(long)]
        target: Option<String>,
        /// How long each target runs.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// The differential test (real XDP program against the reference model) over a long
    /// packet stream; a failure prints the seed that reproduces it.
    DiffLong {
        #[arg(long, default_value_t = 10_000_000)]
        packets: u64,
        /// The stream's seed (decimal or 0x-hex); default the test's own.
        #[arg(long)]
        seed: Option<String>,
    },
    /// The full failover table: three balancers behind the BIRD router, every way of losing
    /// one under load, with hash-threshold routes and with a resilient next-hop group (about
    /// 4 minutes; CI runs two balancers with hash-threshold routes).
    Failover,
}

/// Seconds per target of the fuzz run inside `cargo xtask test`: three targets stay under
/// two minutes, and a run this short still finds what a new parser bug usually is (a panic
/// a few mutations away from a seed).
const BOUNDED_FUZZ_SECONDS: u64 = 25;

/// rustup toolchain name for Debian's rustc-web; lb-userspace/build.rs uses the same name.
const BPF_TOOLCHAIN: &str = "xdplb-bpf";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// What the demo's lab runs: namespaces and links (iproute2), frames and counters (ethtool,
/// nftables, ping), debugging (bpftool, tcpdump), and BIRD 2 (bird2) for the ECMP lab.
const LAB_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "nftables",
    "bpftool",
    "tcpdump",
    "procps",
    "iputils-ping",
    "bird2",
];

/// What only the tests add: tshark, the third-party dissector the balancer's output packets
/// are checked with; for the privilege tests setpriv/runuser (util-linux), useradd (passwd),
/// systemd-analyze (systemd); for the test that runs the packaged unit under systemd as PID 1
/// in a container, systemd-nspawn (systemd-container) and mmdebstrap, which builds that
/// container's root once; g++ for libFuzzer's runtime. Installed without recommends:
/// systemd-container's would add libnss-mymachines to the host's /etc/nsswitch.conf.
const TEST_PACKAGES: &[&str] = &[
    "tshark",
    "util-linux",
    "passwd",
    "systemd",
    "systemd-container",
    "mmdebstrap",
    "g++",
];

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup(EVERYTHING),
        Cmd::Demo {
            mode,
            connections,
            persistent,
            forwarding,
            balancers,
        } => {
            setup(&[Part::Build, Part::Lab])?;
            build_release_tools(false)?;
            let bin = workspace().join("target/release/xdplb-demo");
            run(Command::new(bin).args([
                "--mode",
                &mode,
                "--connections",
                &connections.to_string(),
                "--persistent",
                &persistent.to_string(),
                "--forwarding",
                &forwarding,
                "--balancers",
                &balancers.to_string(),
            ]))
        }
        Cmd::Deb => {
            setup(&[Part::Build, Part::Package])?;
            cargo(&["build", "--release", "-p", "lb-userspace", "--bins"])?;
            let deb = deb::package("release", &workspace().join("target/debian"))?;
            deb::check(&deb)?;
            println!("{}", deb.display());
            Ok(())
        }
        Cmd::Soak { minutes } => {
            setup(&[Part::Build, Part::Lab])?;
            build_release_tools(false)?;
            let bin = workspace().join("target/release/xdplb-soak");
            run(Command::new(bin).args(["--minutes", &minutes.to_string()]))
        }
        Cmd::Bench { quick, only, out } => {
            setup(&[Part::Build, Part::Lab])?;
            // The end-to-end comparison runs HAProxy from Debian's package; the profile runs
            // perf, bpftool and objdump.
            apt_install(&["haproxy", "linux-perf", "bpftool", "binutils"].map(String::from))?;
            build_release_tools(true)?;
            let mut cmd = Command::new(workspace().join("target/release/xdplb-bench"));
            cmd.current_dir(workspace()).arg("--out").arg(&out);
            if quick {
                cmd.arg("--quick");
            }
            if let Some(only) = only {
                cmd.args(["--only", &only]);
            }
            run(&mut cmd)
        }
        Cmd::Fuzz { target, seconds } => {
            setup(&[Part::Build, Part::Test])?;
            let all = fuzz::targets(&workspace())?;
            let targets = match target {
                None => all,
                Some(t) if all.contains(&t) => vec![t],
                Some(t) => bail!("no fuzz target {t:?}; the targets are {}", all.join(", ")),
            };
            fuzz::run(&workspace(), &targets, seconds)
        }
        Cmd::DiffLong { packets, seed } => {
            setup(&[Part::Build])?;
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            // The debug build `cargo xtask test` already made (no `-p`: the default members'
            // feature set, so nothing is rebuilt): 10 million packets take 283 s with it
            // (28 µs a packet), less than a release build of the tests takes to compile.
            cmd.current_dir(workspace())
                .args([
                    "test",
                    "--test",
                    "differential",
                    "--",
                    "--nocapture",
                    "--exact",
                    "real_program_matches_the_model_on_generated_and_mutated_frames",
                ])
                .env("XDPLB_DIFF_PACKETS", packets.to_string());
            if let Some(seed) = seed {
                cmd.env("XDPLB_DIFF_SEED", seed);
            }
            run(&mut cmd)
        }
        Cmd::Failover => {
            setup(&[Part::Build, Part::Lab])?;
            cargo(&["build", "--bins"])?;
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.current_dir(workspace())
                .args([
                    "test",
                    "--test",
                    "ecmp",
                    "--",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("XDPLB_FAILOVER_FULL", "1");
            run(&mut cmd)
        }
        Cmd::Test {
            no_lint,
            no_fuzz,
            rest,
        } => {
            setup(EVERYTHING)?;
            if !no_lint {
                cargo(&["fmt", "--all", "--", "--check"])
                    .context("formatting differs: run `cargo fmt --all`")?;
                // The whole workspace but the eBPF crate (built for its own target by
                // lb-userspace's build.rs), so the benchmarks, not a default member, are linted
                // too.
                cargo(&[
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "lb-ebpf",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])?;
            }
            // The end-to-end tests start the real binaries (xdplb, lab-server, lab-client):
            // they belong to other packages than the tests, so cargo test does not build them.
            cargo(&["build", "--bins"])?;
            // The package, from the debug binary just built: the systemd test installs it in
            // its container (XDPLB_DEB), and deb::check below installs it into a clean root.
            let deb = deb::package("dev", &workspace().join("target/deb-test"))?;
            let mut filter = Vec::new();
            if !rest.is_empty() {
                filter.push("--".to_owned());
                filter.extend(rest);
            }
            let test = |packages: &[&str]| {
                let mut args = vec!["test", "--no-fail-fast"];
                args.extend(packages);
                args.extend(filter.iter().map(String::as_str));
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                run(Command::new(cargo)
                    .args(&args)
                    .current_dir(workspace())
                    .env("XDPLB_DEB", &deb))
            };
            // Both runs go ahead, so one's failures do not hide the other's.
            let default_members = test(&[]);
            // The benchmarks' unit tests (parsers, statistics, generated configs; their
            // measuring runs are #[ignore]d) and the fuzz crate's, which replay its seed
            // corpus and every kept crash without the fuzzer.
            let bench_fuzz = test(&["-p", "xdplb-bench", "-p", "xdplb-fuzz", "--lib"]);
            let fuzzed = if no_fuzz {
                Ok(())
            } else {
                let started = std::time::Instant::now();
                let r = fuzz::run(
                    &workspace(),
                    &fuzz::targets(&workspace())?,
                    BOUNDED_FUZZ_SECONDS,
                );
                println!(
                    "bounded fuzz run: {:.0} s including the build",
                    started.elapsed().as_secs_f64()
                );
                r
            };
            // The package installs and holds its files.
            let deb = deb::check(&deb);
            default_members.and(bench_fuzz).and(fuzzed).and(deb)
        }
    }
}

/// Builds the release binaries the demo and the benchmarks run: `xdplb` and the lab tools, and
/// with `bench` also `xdplb-bench`.
fn build_release_tools(bench: bool) -> anyhow::Result<()> {
    let mut args = vec![
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "-p",
        "xdplb-lab",
    ];
    if bench {
        args.extend(["-p", "xdplb-bench"]);
    }
    args.push("--bins");
    cargo(&args)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(args).current_dir(workspace()))
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn apt_install(pkgs: &[String]) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .map(String::as_str)
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// LLVM major version of Debian's rustc-web: bpf-linker must read that compiler's bitcode.
fn rustc_llvm_major() -> anyhow::Result<String> {
    let v =
        output(Command::new("/usr/bin/rustc").arg("-vV")).context("running /usr/bin/rustc -vV")?;
    let line = v
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("/usr/bin/rustc -vV prints no LLVM version")?;
    Ok(line.split('.').next().unwrap_or_default().to_owned())
}

/// What a command needs installed; `setup` installs exactly those parts, skipping what is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The eBPF toolchain (Debian's rustc-web and library source, LLVM to match, bpf-linker,
    /// the rustup link) and a mounted bpffs: every command that builds or loads the program.
    Build,
    /// The namespace lab's tools: the demo, the soak, the benchmarks, the tests.
    Lab,
    /// cargo-deb: the package.
    Package,
    /// tshark, the privilege and systemd tests' tools, cargo-fuzz and libFuzzer's C++ runtime.
    Test,
}

const EVERYTHING: &[Part] = &[Part::Build, Part::Lab, Part::Package, Part::Test];

fn setup(parts: &[Part]) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("xdplb's setup, demo and tests need root (XDP, network namespaces, bpffs)");
    }
    let mut pkgs: Vec<String> = Vec::new();
    if parts.contains(&Part::Build) {
        pkgs.extend(["rustc-web", "rust-web-src"].map(String::from));
    }
    if parts.contains(&Part::Lab) {
        pkgs.extend(LAB_PACKAGES.iter().map(|s| s.to_string()));
    }
    if parts.contains(&Part::Test) {
        pkgs.extend(TEST_PACKAGES.iter().map(|s| s.to_string()));
    }
    apt_install(&pkgs)?;
    if parts.contains(&Part::Build) {
        setup_build()?;
    }
    if parts.contains(&Part::Package) {
        cargo_install_once(
            "cargo-deb",
            deb::CARGO_DEB_VERSION,
            output(Command::new("cargo-deb").arg("--version"))
                .or_else(|| output(Command::new(home_cargo_bin("cargo-deb")).arg("--version")))
                .is_some_and(|v| v.contains(deb::CARGO_DEB_VERSION)),
        )?;
    }
    if parts.contains(&Part::Test) {
        cargo_install_once(
            "cargo-fuzz",
            fuzz::CARGO_FUZZ_VERSION,
            fuzz::cargo_fuzz_installed(),
        )?;
    }
    Ok(())
}

/// `cargo install --locked NAME --version VERSION` unless `have`.
fn cargo_install_once(name: &str, version: &str, have: bool) -> anyhow::Result<()> {
    if have {
        return Ok(());
    }
    println!("setup: installing {name} {version}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(["install", name, "--locked", "--version", version]))
}

/// The eBPF toolchain and bpffs (see docs/toolchain.md).
fn setup_build() -> anyhow::Result<()> {
    let llvm = rustc_llvm_major()?;
    apt_install(&[format!("llvm-{llvm}-dev"), format!("libpolly-{llvm}-dev")])?;

    let have_linker = output(Command::new("bpf-linker").arg("--version"))
        .or_else(|| output(Command::new(home_cargo_bin("bpf-linker")).arg("--version")))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if !have_linker {
        println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm}");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm}"),
            ])
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}")))?;
    }

    let linked = output(Command::new("rustup").args(["toolchain", "list"])).is_some_and(|l| {
        l.lines()
            .any(|t| t.split_whitespace().next() == Some(BPF_TOOLCHAIN))
    });
    if !linked {
        println!("setup: linking Debian's rustc as rustup toolchain {BPF_TOOLCHAIN}");
        run(Command::new("rustup").args(["toolchain", "link", BPF_TOOLCHAIN, "/usr"]))?;
    }

    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
    {
        println!("setup: mounting bpffs at /sys/fs/bpf");
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}

fn home_cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin").join(name)
}

fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0")
}

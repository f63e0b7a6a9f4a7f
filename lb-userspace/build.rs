//! Builds lb-ebpf for bpfel-unknown-none, quietly unless the build fails.
//!
//! The compiler is the Debian rustc that `cargo xtask setup` links as a rustup toolchain.
//!
//! This does what aya-build 0.2.0's `build_ebpf` does, but holds back the inner cargo's output:
//! aya-build passes every line the inner cargo prints (its progress lines, rustup's "cargo is
//! unavailable for the active toolchain") to the outer cargo as `cargo:warning=`, dozens of
//! `warning: lb-userspace@0.1.0: ...` lines per eBPF rebuild that read like something broken. Here:
//! - compiler warnings about lb-ebpf/lb-common are shown as build warnings (a clean build has none,
//!   so it prints no `warning:` line);
//! - when the eBPF build fails, the compiler's errors and the inner cargo's output are printed
//!   once, verbatim, under cargo's `--- stderr` heading;
//! - otherwise the inner cargo's progress lines are shown only with `XDPLB_VERBOSE_BUILD=1`.

use std::{
    env,
    ffi::OsString,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{anyhow, bail, Context as _};

/// Name of the rustup toolchain that points at Debian's rustc-web (see `xtask setup`).
const TOOLCHAIN: &str = "xdplb-bpf";
/// The eBPF crate; its binaries (`lb-ebpf`, `baselines`, `decap`) land in `OUT_DIR/<bin>`.
const PACKAGE: &str = "lb-ebpf";
/// Set to 1 to see the inner cargo's whole output as build warnings.
const VERBOSE: &str = "XDPLB_VERBOSE_BUILD";

fn main() {
    if let Err(e) = run() {
        // `{:#}` and a plain exit: returning the error from main would add a backtrace of this
        // script (RUST_BACKTRACE is often set) that says nothing about the eBPF code.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("lb-userspace has no parent directory"))?
        .join(PACKAGE);
    // The build-dependency on lb-ebpf's library reruns this script when lb-common changes;
    // the binaries' sources need this.
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-env-changed={VERBOSE}");
    let verbose = env::var(VERBOSE).is_ok_and(|v| v == "1");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);

    let built = build(&out_dir, verbose).with_context(|| {
        format!(
            "building lb-ebpf failed; run `cargo xtask setup` (toolchain `{TOOLCHAIN}`, bpf-linker) if the toolchain is missing"
        )
    })?;
    for (name, binary) in built {
        let dst = out_dir.join(&name);
        std::fs::copy(&binary, &dst)
            .with_context(|| format!("copying {} to {}", binary.display(), dst.display()))?;
    }
    Ok(())
}

/// Runs the inner cargo; returns (bin name, path) of every binary it built.
fn build(out_dir: &Path, verbose: bool) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN not set")?;
    let target = match endian.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endian {other}"),
    };
    // aya-ebpf reads `bpf_target_arch` to pick the host's register layout for probes.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let arch = if arch.starts_with("riscv64") {
        "riscv64".to_owned()
    } else {
        arch
    };

    // `rustup run TOOLCHAIN cargo` as aya-build does; without rustup, the cargo on PATH.
    let rustup = find_in_path("rustup");
    let mut cmd = match &rustup {
        Some(rustup) => {
            let mut c = Command::new(rustup);
            c.args(["run", TOOLCHAIN, "cargo"]);
            c
        }
        None => {
            println!(
                "cargo:warning=rustup not found on PATH; building lb-ebpf with the cargo on PATH"
            );
            Command::new("cargo")
        }
    };
    // aya-build's target dir for this package, so switching between it and this script keeps
    // the eBPF build warm.
    let target_dir = out_dir.join("aya-build").join("target").join(PACKAGE);
    cmd.args([
        "build",
        "--package",
        PACKAGE,
        "--bins",
        "--message-format=json",
        "--release",
        "--target",
        target,
        // No prebuilt `core` exists for the BPF targets. `-Z` needs a nightly compiler or
        // RUSTC_BOOTSTRAP; Debian's rustc is stable, and .cargo/config.toml sets
        // RUSTC_BOOTSTRAP=1 for every cargo. Set it here too so the eBPF build does not
        // depend on that file (aya-build only adds the flag when it sees nightly or the
        // variable).
        "-Z",
        "build-std=core",
        "--features",
        "",
    ])
    .arg("--target-dir")
    .arg(&target_dir)
    .env("RUSTC_BOOTSTRAP", "1");
    let mut rustflags = OsString::new();
    for (i, flag) in [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            // CARGO_ENCODED_RUSTFLAGS separates flags with 0x1f.
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer cargo's RUSTC (rustup's stable) must not leak into the inner, Debian build.
    cmd.env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");

    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let stderr = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });

    let mut built = Vec::new();
    // Rendered compiler diagnostics (warnings and errors about our crates).
    let mut diagnostics = Vec::new();
    // Everything else: shown on failure or when verbose.
    let mut chatter = Vec::new();
    let stdout = child.stdout.take().context("no stdout pipe")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the eBPF build's output")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            chatter.push(line);
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-artifact") => {
                if let (Some(name), Some(exe)) =
                    (msg["target"]["name"].as_str(), msg["executable"].as_str())
                {
                    built.push((name.to_owned(), PathBuf::from(exe)));
                }
            }
            Some("compiler-message") => {
                // Cargo reports these for workspace crates only, not for `core`.
                let rendered = msg["message"]["rendered"].as_str().unwrap_or_default();
                diagnostics.extend(rendered.lines().map(str::to_owned));
            }
            _ => {}
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    let stderr = stderr
        .join()
        .map_err(|_| anyhow!("the thread reading the eBPF build's stderr panicked"))?;
    chatter.extend(stderr);
    if !status.success() {
        // Under cargo's `--- stderr` heading, verbatim (as warnings every line would get the
        // `warning: lb-userspace@0.1.0:` prefix, and an error is no warning).
        for l in diagnostics.iter().chain(&chatter) {
            eprintln!("{l}");
        }
        bail!("{cmd:?} failed: {status}");
    }
    for l in &diagnostics {
        println!("cargo:warning={l}");
    }
    if verbose {
        for l in &chatter {
            println!("cargo:warning={l}");
        }
    }
    Ok(built)
}

/// The first executable `name` on PATH.
fn find_in_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

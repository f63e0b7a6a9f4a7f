//! `cargo xtask fuzz` and the bounded fuzz run of `cargo xtask test`.
//!
//! Each target of `tests/fuzz` runs under cargo-fuzz (libFuzzer, no sanitizer, so a stable compiler
//! will do) for a fixed time; a crash fails the run and is kept as a regression fixture.

use std::{
    collections::{HashSet, VecDeque},
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _};

/// The version `cargo xtask setup` installs; a different one is replaced.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Seconds a single input may take before libFuzzer calls it a hang (its default is 20
/// minutes, longer than the whole bounded run).
const INPUT_TIMEOUT: u32 = 10;
/// libFuzzer's output lines kept to show when a target fails (the panic, its backtrace and
/// the input).
const TAIL: usize = 400;

/// What one target's run did.
struct Outcome {
    target: String,
    executions: u64,
    seconds: f64,
    /// Inputs in the working corpus after the run.
    corpus: usize,
}

/// The fuzz targets: the files of `tests/fuzz/fuzz_targets/`, sorted (the fuzz crate's tests
/// check that its `TARGETS` names the same).
pub fn targets(workspace: &Path) -> anyhow::Result<Vec<String>> {
    let dir = workspace.join("tests/fuzz/fuzz_targets");
    let mut names: Vec<String> = files(&dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no fuzz targets in {}", dir.display());
    }
    Ok(names)
}

/// Fuzzes each of `targets` for `seconds`, one after the other; stops at the first that
/// crashes, after copying what libFuzzer saved into `tests/fuzz/regressions/<target>/`.
pub fn run(workspace: &Path, targets: &[String], seconds: u64) -> anyhow::Result<()> {
    let fuzz_dir = workspace.join("tests/fuzz");
    // One build for all targets first, so that each target's time is spent fuzzing.
    cargo_fuzz(workspace, &["build", "-s", "none"], &fuzz_dir)?;
    let mut outcomes = Vec::new();
    for target in targets {
        outcomes.push(run_target(workspace, &fuzz_dir, target, seconds)?);
    }
    for o in &outcomes {
        println!(
            "fuzz {}: {} executions in {:.0} s ({:.0}/s), {} inputs in its corpus, no crash",
            o.target,
            o.executions,
            o.seconds,
            o.executions as f64 / o.seconds.max(1.0),
            o.corpus
        );
    }
    Ok(())
}

/// The folders libFuzzer reads inputs from: the working corpus first (it adds what it finds
/// there; it lives under `target/`, so long runs build on each other), then the checked-in
/// seeds and kept crashes, which it only reads.
fn corpus_dirs(workspace: &Path, fuzz_dir: &Path, target: &str) -> anyhow::Result<Vec<PathBuf>> {
    let work = workspace.join("target/fuzz/corpus").join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut dirs = vec![work];
    // libFuzzer refuses a folder that does not exist; a target may have no kept crash yet.
    dirs.extend(
        ["corpus", "regressions"]
            .iter()
            .map(|d| fuzz_dir.join(d).join(target))
            .filter(|d| d.is_dir()),
    );
    Ok(dirs)
}

fn run_target(
    workspace: &Path,
    fuzz_dir: &Path,
    target: &str,
    seconds: u64,
) -> anyhow::Result<Outcome> {
    let artifacts = workspace.join("target/fuzz/artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    let before = files(&artifacts);
    let dirs = corpus_dirs(workspace, fuzz_dir, target)?;
    println!("fuzz {target}: {seconds} s");

    let mut args: Vec<String> = ["run", "-s", "none", "--fuzz-dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(fuzz_dir.display().to_string());
    args.push(target.to_owned());
    args.extend(dirs.iter().map(|d| d.display().to_string()));
    args.push("--".into());
    args.extend([
        format!("-max_total_time={seconds}"),
        format!("-timeout={INPUT_TIMEOUT}"),
        // The trailing slash: libFuzzer prepends this to the file name as it is.
        format!("-artifact_prefix={}/", artifacts.display()),
        "-print_final_stats=1".into(),
    ]);
    let started = Instant::now();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("fuzz")
        .args(&args)
        .current_dir(workspace)
        // A panic's backtrace helps; the one anyhow adds to cargo-fuzz's "target exited with
        // status 77" does not.
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "0")
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting cargo fuzz for {target}"))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;

    let mut tail = VecDeque::with_capacity(TAIL);
    let mut executions = None;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        // libFuzzer prints a line for each new input; the pulses (every power of two of
        // executions) and the end are enough to see it is alive.
        if line.contains("pulse") || line.contains("INITED") || line.contains("DONE") {
            println!("  {line}");
        }
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            executions = n.trim().parse().ok();
        }
        if tail.len() == TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        // From the panic (or libFuzzer's own error) on; the lines before are progress.
        let from = tail
            .iter()
            .position(|l| l.contains("panicked at") || l.contains("ERROR: libFuzzer"))
            .unwrap_or(0);
        for line in tail.iter().skip(from) {
            eprintln!("  {line}");
        }
        let kept = keep_findings(fuzz_dir, target, &artifacts, &before)?;
        if kept.is_empty() {
            bail!(
                "fuzz target {target} failed ({status}) and saved no input; see its output above"
            );
        }
        let shown: Vec<String> = kept.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "fuzz target {target} found a failing input, kept as {}: fix the bug and commit the file with the fix \
             (`cargo test -p xdplb-fuzz --lib` replays it; `cargo fuzz run --fuzz-dir tests/fuzz -s none {target} FILE` reruns it alone)",
            shown.join(", ")
        );
    }
    Ok(Outcome {
        target: target.to_owned(),
        executions: executions
            .with_context(|| format!("libFuzzer printed no statistics for {target}"))?,
        seconds,
        corpus: files(&dirs[0]).len(),
    })
}

/// The files in `dir` (none if it is missing).
fn files(dir: &Path) -> HashSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// Copies the inputs libFuzzer saved in this run (crash-, timeout-, oom-, leak-) into the
/// target's regression folder, which `cargo test` replays; returns where they went.
fn keep_findings(
    fuzz_dir: &Path,
    target: &str,
    artifacts: &Path,
    before: &HashSet<PathBuf>,
) -> anyhow::Result<Vec<PathBuf>> {
    let regressions = fuzz_dir.join("regressions").join(target);
    let mut kept = Vec::new();
    for found in files(artifacts).difference(before) {
        let Some(name) = found.file_name() else {
            continue;
        };
        std::fs::create_dir_all(&regressions)
            .with_context(|| format!("creating {}", regressions.display()))?;
        let dst = regressions.join(name);
        std::fs::copy(found, &dst)
            .with_context(|| format!("copying {} to {}", found.display(), dst.display()))?;
        kept.push(dst);
    }
    kept.sort();
    Ok(kept)
}

/// `cargo fuzz <args> --fuzz-dir tests/fuzz`, its output shown as it comes.
fn cargo_fuzz(workspace: &Path, args: &[&str], fuzz_dir: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .arg("fuzz")
        .args(args)
        .arg("--fuzz-dir")
        .arg(fuzz_dir)
        .current_dir(workspace)
        .status()
        .context("starting cargo fuzz (run `cargo xtask setup` to install it)")?;
    if !status.success() {
        bail!("cargo fuzz {} failed with {status}", args.join(" "));
    }
    Ok(())
}

/// Whether `cargo fuzz --version` names `CARGO_FUZZ_VERSION`.
pub fn cargo_fuzz_installed() -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .any(|w| w == CARGO_FUZZ_VERSION)
        })
}

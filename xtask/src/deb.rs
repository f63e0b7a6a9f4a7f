//! The Debian package: its build, and the install check the test run makes.
//!
//! `cargo xtask deb` builds it from a release build. The test run builds one from the debug binary
//! it already has, installs it into a clean root with `dpkg -i` and checks what lands where.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _};

use crate::{cargo, output, run, workspace};

/// cargo-deb, installed by `cargo xtask setup`: a maintained packager that reads the package's
/// metadata from lb-userspace/Cargo.toml (assets, the systemd unit), so nothing is kept twice.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Builds the package into `out` from the binary of `profile` ("release", or "dev" for the
/// test run, which has no release build); returns the .deb's path.
pub fn package(profile: &str, out: &Path) -> anyhow::Result<PathBuf> {
    // Only this build's package in `out`, so the one found below is it.
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut args = vec!["deb", "-p", "lb-userspace", "--no-build", "-o"];
    let out_str = out.to_str().context("output path is not UTF-8")?;
    args.push(out_str);
    if profile != "release" {
        args.extend(["--profile", profile]);
    }
    cargo(&args)?;
    let deb = std::fs::read_dir(out)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("cargo deb wrote no .deb into {}", out.display()))?;
    Ok(deb)
}

/// Installs `deb` with `dpkg -i` into an empty root (its own dpkg database, no maintainer
/// scripts chrooted, dependencies not checked: the root has no libc) and checks the files a
/// gateway needs: the binary runs, the unit points at it, the examples are there.
pub fn check(deb: &Path) -> anyhow::Result<()> {
    let root = workspace().join("target/deb-root");
    let _ = std::fs::remove_dir_all(&root);
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "")?;
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "--force-script-chrootless", "-i"])
        .arg(deb))?;
    let status = output(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f=${Status} ${Version}", "xdplb"]),
    )
    .context("dpkg-query found no xdplb in the clean root")?;
    ensure!(
        status.starts_with("install ok installed"),
        "xdplb is {status}"
    );
    let bin = root.join("usr/sbin/xdplb");
    let version = output(Command::new(&bin).arg("--version"))
        .with_context(|| format!("{} does not run", bin.display()))?;
    ensure!(
        version.starts_with("xdplb "),
        "{} --version: {version}",
        bin.display()
    );
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/xdplb.service"))
        .context("the package has no systemd unit")?;
    ensure!(
        unit.contains("ExecStart=/usr/sbin/xdplb run"),
        "the unit does not start the packaged binary"
    );
    for f in [
        "usr/share/doc/xdplb/examples/lb.example.yaml",
        "usr/share/doc/xdplb/examples/backend-setup.sh",
        "usr/share/doc/xdplb/README.md",
        "usr/share/doc/xdplb/docs/config.md",
    ] {
        if !root.join(f).is_file() {
            bail!("the package lacks /{f}");
        }
    }
    println!(
        "deb: {} installs into a clean root: {status}, /usr/sbin/xdplb ({}), the unit and the examples",
        deb.display(),
        version.trim()
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

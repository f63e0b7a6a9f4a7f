//! A throw-away container with systemd as PID 1, joined to a lab namespace.
//!
//! systemd-nspawn on a Debian root built once with mmdebstrap, booted read-only with a tmpfs
//! overlay: where the packaged unit is tested under a real systemd.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::sys::signal;

/// What the root holds beyond `minbase`: systemd as init, D-Bus for systemctl, and what the
/// tests run inside (`ip`, `ps`, `setpriv`).
const ROOT_PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,procps,util-linux";
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// The cached root: `$XDPLB_SYSTEMD_ROOT`, else `target/systemd-root/bookworm` of the workspace.
pub fn root_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDPLB_SYSTEMD_ROOT") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/systemd-root")
        .join(SUITE)
}

/// Builds the root once (about 40 s and 220 MB) and returns its path; later calls find it.
/// Built beside its final place and renamed, so a build cut short is never booted.
pub fn ensure_root() -> Result<PathBuf> {
    let root = root_dir();
    if root.join("usr/lib/systemd/systemd").is_file() {
        return Ok(root);
    }
    let tmp = root.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let out = Command::new("mmdebstrap")
        .args(["--variant=minbase", "--include", ROOT_PACKAGES])
        // No login prompt on the console nspawn gives it; no hostname, so the machine name is.
        .arg("--customize-hook=chroot \"$1\" systemctl mask console-getty.service")
        .arg("--customize-hook=rm -f \"$1/etc/hostname\"")
        .arg(SUITE)
        .arg(&tmp)
        .arg(MIRROR)
        .output()
        .context("running mmdebstrap (`cargo xtask setup` installs it)")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!(
            "mmdebstrap failed building the systemd test root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::rename(&tmp, &root).context("moving the built root in place")?;
    Ok(root)
}

/// The cgroup hierarchies nspawn puts itself in: the unified one alone on a cgroup v2 host; on a
/// hybrid host (systemd's v1 layout with v2 under `unified`) it also mirrors itself into
/// `name=systemd`, and both are left behind with `--keep-unit`.
fn cgroup_roots() -> Vec<PathBuf> {
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if unified {
        vec![PathBuf::from("/sys/fs/cgroup")]
    } else {
        vec![
            PathBuf::from("/sys/fs/cgroup/unified"),
            PathBuf::from("/sys/fs/cgroup/systemd"),
        ]
    }
}

/// How the container is set up.
pub struct ContainerSpec<'a> {
    /// The network namespace (`/run/netns/<name>`) the container runs in.
    pub netns: &'a str,
    /// A bpffs mounted on the host, seen as the container's `/sys/fs/bpf` (nspawn's `/sys` has
    /// none).
    pub bpffs: &'a Path,
    /// A host directory seen read-only at `/mnt/share` (the package to install).
    pub share: &'a Path,
    /// Where the console log goes.
    pub log_dir: &'a Path,
}

/// A booted container. Dropping it powers it off, and removes its cgroups and nspawn's
/// leftovers, also when the test failed.
pub struct SystemdContainer {
    machine: String,
    nspawn: Child,
    pid1: u32,
    console: PathBuf,
}

impl SystemdContainer {
    /// Boots systemd in a container on the cached root and waits until it reports `running` (or
    /// `degraded`). The container keeps the capabilities XDP needs (CAP_BPF, CAP_PERFMON and,
    /// in a namespace of its own, CAP_NET_ADMIN) and the `bpf` and `perf_event_open` calls.
    pub fn boot(spec: &ContainerSpec) -> Result<SystemdContainer> {
        let root = ensure_root()?;
        let machine = format!("xdplbt{}", std::process::id());
        let cgroups: Vec<PathBuf> = cgroup_roots().iter().map(|r| r.join(&machine)).collect();
        std::fs::create_dir_all(&cgroups[0])
            .with_context(|| format!("creating cgroup {}", cgroups[0].display()))?;
        let console = spec.log_dir.join(format!("{machine}-console.log"));
        let log = std::fs::File::create(&console)?;
        // nspawn starts in a cgroup of its own (the shell moves itself there, then execs it),
        // so that what `--keep-unit` leaves there is this container's alone.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo $$ > \"$0\" && exec systemd-nspawn \"$@\""])
            .arg(cgroups[0].join("cgroup.procs"))
            .args(["-q", "--read-only", "--volatile=overlay", "-b"])
            .arg("-D")
            .arg(&root)
            .args(["-M", &machine])
            // No D-Bus and no systemd on the host: nothing to register with.
            .args(["--register=no", "--keep-unit", "--console=read-only"])
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                spec.netns
            ))
            // A namespace of the test's own: nspawn keeps CAP_NET_ADMIN only when asked.
            .arg("--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN")
            .arg("--system-call-filter=bpf perf_event_open")
            .arg(format!("--bind={}:/sys/fs/bpf", spec.bpffs.display()))
            .arg(format!("--bind-ro={}:/mnt/share", spec.share.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let nspawn = cmd.spawn().context("starting systemd-nspawn")?;
        let mut container = SystemdContainer {
            machine,
            pid1: 0,
            nspawn,
            console,
        };
        container.pid1 = container.wait_pid1()?;
        let state = container.wait_booted()?;
        if !matches!(state.as_str(), "running" | "degraded") {
            bail!(
                "the container's systemd did not finish booting ({state}); console:\n{}",
                container.console_tail()
            );
        }
        Ok(container)
    }

    fn wait_pid1(&mut self) -> Result<u32> {
        let parent = self.nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.nspawn.try_wait()? {
                bail!(
                    "systemd-nspawn exited ({status}); console:\n{}",
                    self.console_tail()
                );
            }
            let children =
                std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
                    .unwrap_or_default();
            for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    return Ok(pid);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "no systemd in the container after 30 s; console:\n{}",
            self.console_tail()
        )
    }

    fn wait_booted(&self) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut state = String::new();
        while Instant::now() < deadline {
            state = self
                .exec(&["systemctl", "is-system-running"])
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default();
            // Before the container's systemd has set up /run/systemd/system, systemctl says
            // "offline" (or nothing): keep asking until it has booted or given up.
            if matches!(
                state.as_str(),
                "running" | "degraded" | "maintenance" | "stopping"
            ) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(state)
    }

    /// The last lines of the container's console, for failure messages.
    pub fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The container's PID 1 as the host sees it.
    pub fn pid1(&self) -> u32 {
        self.pid1
    }

    /// Runs `args` in every namespace of the container. Such a process is outside the
    /// container's capability and system-call limits: test the sandbox through units only.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a", "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("nsenter into the container for `{}`", args.join(" ")))
    }

    /// [`Self::exec`], failing unless the command succeeds; returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.exec(args)?;
        if !out.status.success() {
            bail!(
                "`{}` in the container failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes a file inside the container (into its overlay: the cached root is untouched).
    pub fn write(&self, path: &str, contents: &str) -> Result<()> {
        use std::io::Write as _;
        let dir = Path::new(path).parent().context("a file path")?;
        self.run(&["mkdir", "-p", &dir.to_string_lossy()])?;
        let mut child = Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a", "--"])
            .args(["sh", "-c", "cat > \"$1\"", "sh", path])
            .stdin(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(contents.as_bytes())?;
        let status = child.wait()?;
        if !status.success() {
            bail!("writing {path} in the container failed ({status})");
        }
        Ok(())
    }

    /// `systemctl show` properties of `unit`, by name.
    pub fn show(
        &self,
        unit: &str,
        props: &[&str],
    ) -> Result<std::collections::HashMap<String, String>> {
        let out = self.run(&["systemctl", "show", unit, "-p", &props.join(",")])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// Polls `systemctl show` until `done` holds for the properties, or fails after `timeout`
    /// with the last values seen.
    pub fn wait_unit(
        &self,
        unit: &str,
        props: &[&str],
        timeout: Duration,
        done: impl Fn(&std::collections::HashMap<String, String>) -> bool,
    ) -> Result<std::collections::HashMap<String, String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.show(unit, props)?;
            if done(&seen) {
                return Ok(seen);
            }
            if Instant::now() > deadline {
                bail!("{unit}: waited {timeout:?}, last seen {seen:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The unit's journal at `priority` or more urgent (`err`, `info`), messages only.
    pub fn journal(&self, unit: &str, priority: &str) -> Result<String> {
        let _ = self.exec(&["journalctl", "--sync"]);
        self.run(&[
            "journalctl",
            "-q",
            "--no-pager",
            "-o",
            "cat",
            "-u",
            unit,
            "-p",
            priority,
        ])
    }
}

impl Drop for SystemdContainer {
    fn drop(&mut self) {
        // SIGRTMIN+4 asks systemd to power off (what `systemctl poweroff` sends); nspawn exits
        // once the container's PID 1 has.
        let rtmin = libc::SIGRTMIN();
        if self.pid1 != 0 {
            signal(self.pid1, rtmin + 4);
        } else {
            signal(self.nspawn.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.nspawn.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let roots = cgroup_roots();
        let own = roots[0].join(&self.machine);
        if !matches!(self.nspawn.try_wait(), Ok(Some(_))) {
            // Whatever is left: kill the whole subtree (cgroup v2's cgroup.kill).
            let _ = std::fs::write(own.join("cgroup.kill"), b"1");
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        // The container's last processes can outlive nspawn by a moment (a boot cut short):
        // a cgroup goes with rmdir only once it is empty, so wait for that, killing stragglers.
        let events = own.join("cgroup.events");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let populated = std::fs::read_to_string(&events)
                .map(|e| e.contains("populated 1"))
                .unwrap_or(false);
            if !populated {
                break;
            }
            let _ = std::fs::write(own.join("cgroup.kill"), b"1");
            std::thread::sleep(Duration::from_millis(50));
        }
        for root in &roots {
            remove_cgroup_tree(&root.join(&self.machine));
        }
        let _ = std::fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{}", self.machine));
    }
}

/// Removes a cgroup and its children, deepest first (cgroup directories go with rmdir only).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

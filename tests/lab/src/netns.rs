//! Network-namespace helpers.
//!
//! Running commands inside a namespace, entering one from a thread, and owning one for its
//! lifetime.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::sys::{alive, signal};

fn describe_failure(cmd: &[&str], out: &Output) -> anyhow::Error {
    anyhow!(
        "`{}` failed ({}): {}",
        cmd.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn run_command(cmd: &[&str]) -> Result<String> {
    let (program, args) = cmd.split_first().context("empty command")?;
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot start `{}`", cmd.join(" ")))?;
    if !out.status.success() {
        return Err(describe_failure(cmd, &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip netns exec <ns> <args...>` and returns its stdout; an error names the command, its
/// exit status and its stderr.
pub fn run(ns: &str, args: &[&str]) -> Result<String> {
    let mut cmd = vec!["ip", "netns", "exec", ns];
    cmd.extend_from_slice(args);
    run_command(&cmd)
}

/// Like [`run`], but via `nsenter --net`, which changes only the network namespace. `ip netns
/// exec` also gives the command a private mount namespace with a fresh `/sys`, which hides any
/// bpffs mounted under it (so pinned maps are out of reach); use this for programs that pin or
/// read pins. `/sys/class/net` then still describes the caller's namespace, not `ns`.
pub fn run_shared_mounts(ns: &str, args: &[&str]) -> Result<String> {
    let net = format!("--net=/run/netns/{ns}");
    let mut cmd = vec!["nsenter", net.as_str(), "--"];
    cmd.extend_from_slice(args);
    run_command(&cmd)
}

/// Like [`run`], in the caller's own namespace (for `ip netns add`, `ip -n <ns> ...`).
pub fn run_root(args: &[&str]) -> Result<String> {
    run_command(args)
}

/// Runs `f` on a fresh thread that has joined the network namespace `/run/netns/<ns>`, and waits
/// for it. Sockets `f` creates belong to that namespace; so do threads it starts (a tokio runtime
/// built inside `f` included), because new threads inherit their creator's namespace.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let handle = std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || -> Result<T> {
            let file = File::open(&path).with_context(|| format!("open {path}"))?;
            // SAFETY: a valid namespace fd and a constant flag; this thread alone changes namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context(format!("setns({path})"));
            }
            f()
        })
        .context("spawn netns thread")?;
    handle
        .join()
        .map_err(|_| anyhow!("thread running in netns {ns} panicked"))?
}

/// Pids of every process whose network namespace is `ns`.
pub fn pids_in(ns: &str) -> Result<Vec<u32>> {
    let out = run_root(&["ip", "netns", "pids", ns])?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Sends SIGTERM to every process in `ns`, gives them `grace` to go, then SIGKILLs the rest.
/// The namespace's name can be deleted while processes still live in it, but the namespace (and
/// its interfaces) would then linger until they exit, so they must go first.
pub fn kill_all_in(ns: &str, grace: Duration) {
    let Ok(pids) = pids_in(ns) else { return };
    if pids.is_empty() {
        return;
    }
    for &pid in &pids {
        signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in &pids {
        if alive(pid) {
            signal(pid, libc::SIGKILL);
        }
    }
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A name prefix unique to this process and call: `xl<pid>n<k>`. Namespaces and files named with
/// it can be told apart from other processes' (and cleaned up once their owner is gone, see
/// [`cleanup_stale`]).
pub fn unique_prefix() -> String {
    format!(
        "xl{}n{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// The owner pid encoded in a name made from [`unique_prefix`], if it is one.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("xl")?;
    let (pid, rest) = rest.split_once('n')?;
    let (k, _) = rest.split_once('-').unwrap_or((rest, ""));
    if pid.is_empty() || k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Deletes namespaces left behind by lab processes that died without unwinding (SIGKILL, abort),
/// identified by [`owner_pid`] naming a process that no longer exists.
pub fn cleanup_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        match owner_pid(&name) {
            Some(pid) if !alive(pid) => {
                kill_all_in(&name, Duration::from_millis(500));
                let _ = run_root(&["ip", "netns", "del", &name]);
            }
            _ => {}
        }
    }
}

/// A network namespace created on [`NetNs::new`] and deleted (after killing whatever still runs
/// in it) on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new(name: &str) -> Result<NetNs> {
        if name.is_empty() || name.contains('/') {
            bail!("bad namespace name {name:?}");
        }
        run_root(&["ip", "netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// [`run`] in this namespace.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        run(&self.name, args)
    }

    /// `ip -n <ns> <args...>`: cheaper than `ip netns exec`, which also sets up a mount namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut cmd = vec!["ip", "-n", self.name.as_str()];
        cmd.extend_from_slice(args);
        run_root(&cmd)
    }

    /// `sysctl -w` inside this namespace (the `net.*` tree is per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        kill_all_in(&self.name, Duration::from_secs(2));
        if let Err(e) = run_root(&["ip", "netns", "del", &self.name]) {
            eprintln!("warning: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_lab_names() {
        assert_eq!(owner_pid("xl1234n0-gw"), Some(1234));
        assert_eq!(owner_pid("xl1234n17-b12"), Some(1234));
        assert_eq!(owner_pid("xl99n3"), Some(99));
        assert_eq!(owner_pid("xlfoo-gw"), None);
        assert_eq!(owner_pid("xl12nx-gw"), None);
        assert_eq!(owner_pid("xl12n-gw"), None);
        assert_eq!(owner_pid("other"), None);
    }

    #[test]
    fn unique_prefixes_differ() {
        let a = unique_prefix();
        let b = unique_prefix();
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a), Some(std::process::id()));
    }
}

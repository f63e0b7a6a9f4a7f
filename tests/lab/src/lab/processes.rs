//! Processes the lab runs in its namespaces: spawn, stop, wait, logs, one-shot clients.

use super::*;

impl Lab {
    /// Starts backend `i`'s `lab-server` (named `b<i>`) and waits until it listens.
    pub fn start_server(&mut self, i: usize) -> Result<()> {
        let name = self.backend_ns(i).to_owned();
        let dev = self.backend_if(i);
        let server = self.server.clone();
        let port = self.spec.port.to_string();
        let pid = self.spawn(&name, &server, &["--name", &dev, "--port", &port])?;
        self.wait_for_log(pid, "READY", SERVER_READY_TIMEOUT)
            .with_context(|| format!("lab-server {dev} did not start"))?;
        self.servers[i] = pid;
        Ok(())
    }

    /// Kills backend `i`'s `lab-server` with SIGKILL, as a crash would: its connections are
    /// reset by the kernel, its port refuses new ones.
    pub fn kill_server(&mut self, i: usize) -> Result<()> {
        let pid = self.servers[i];
        signal(pid, libc::SIGKILL);
        self.wait_exit(pid, Duration::from_secs(10))?;
        Ok(())
    }

    /// Starts `program args...` in the lab namespace `ns`, stdout and stderr appended to a log
    /// file in [`Lab::dir`]; returns its pid. It is SIGTERMed (then SIGKILLed) on drop.
    ///
    /// It runs under `nsenter --net` rather than `ip netns exec`, so it shares our mounts: the
    /// agent's bpffs pins (see [`Lab::pin_dir`]) stay visible to everyone. See
    /// [`netns::run_shared_mounts`].
    pub fn spawn(&mut self, ns: &str, program: &Path, args: &[&str]) -> Result<u32> {
        if !self.owns(ns) {
            bail!("{ns} is not a namespace of this lab");
        }
        self.spawned += 1;
        let stem = program
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let short_ns = ns.rsplit('-').next().unwrap_or(ns);
        let log = self
            .dir()
            .join(format!("{:03}-{short_ns}-{stem}.log", self.spawned));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        // nsenter execs the program in place (it forks only to enter a pid namespace), so the
        // child's pid is the program's and signals reach it directly.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {} in {ns}", program.display()))?;
        let pid = child.id();
        self.procs.insert(pid, child);
        self.logs.insert(pid, log);
        Ok(pid)
    }

    /// Asks process `pid` to finish (SIGINT), waits up to 10 s, then SIGKILLs it.
    pub fn stop(&mut self, pid: u32) -> Result<()> {
        let mut child = self
            .procs
            .remove(&pid)
            .with_context(|| format!("no running process {pid} in this lab"))?;
        signal(pid, libc::SIGINT);
        if wait_child(&mut child, Duration::from_secs(10))?.is_none() {
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for process `pid` to exit by itself and returns its status; on
    /// timeout it keeps running and this is an error.
    pub fn wait_exit(&mut self, pid: u32, timeout: Duration) -> Result<ExitStatus> {
        let child = self
            .procs
            .get_mut(&pid)
            .with_context(|| format!("no running process {pid} in this lab"))?;
        match wait_child(child, timeout)? {
            Some(status) => {
                self.procs.remove(&pid);
                Ok(status)
            }
            None => bail!(
                "process {pid} still running after {timeout:?}; log:\n{}",
                self.log_of(pid)
            ),
        }
    }

    /// Whether process `pid` (spawned by this lab) is still running.
    pub fn is_running(&mut self, pid: u32) -> bool {
        match self.procs.get_mut(&pid) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything process `pid` has written so far ("" for an unknown pid).
    pub fn log_of(&self, pid: u32) -> String {
        self.logs
            .get(&pid)
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the log of `pid` contains `needle`. Fails early if the process exits first.
    pub fn wait_for_log(&mut self, pid: u32, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_of(pid).contains(needle) {
                return Ok(());
            }
            let exited = match self.procs.get_mut(&pid) {
                Some(child) => child.try_wait()?,
                None => bail!("no running process {pid} in this lab"),
            };
            if let Some(status) = exited {
                // It may have written the needle just before exiting.
                if self.log_of(pid).contains(needle) {
                    return Ok(());
                }
                bail!(
                    "process {pid} exited ({status}) before printing {needle:?}; log:\n{}",
                    self.log_of(pid)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "no {needle:?} from process {pid} within {timeout:?}; log:\n{}",
                    self.log_of(pid)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `lab-client args...` in client `i`'s namespace to completion and returns its JSON
    /// result (the last JSON line it printed).
    pub fn run_client<T: serde::de::DeserializeOwned>(&self, i: usize, args: &[&str]) -> Result<T> {
        let client = tool_path("lab-client");
        let client = client.to_str().context("lab-client path is not UTF-8")?;
        let mut cmd = vec![client];
        cmd.extend_from_slice(args);
        let out = netns::run(self.client_ns(i), &cmd)?;
        crate::reports::parse_last_json(&out)
    }

    /// Like [`Lab::run_client`], untyped.
    pub fn run_client_json(&self, i: usize, args: &[&str]) -> Result<Value> {
        self.run_client(i, args)
    }

    /// Prints the tail of every log, so a failing test shows what its processes said.
    pub(super) fn dump_logs(&self) {
        let mut logs: Vec<_> = self.logs.iter().collect();
        logs.sort_by_key(|(_, path)| path.to_path_buf());
        for (pid, path) in logs {
            let text = self.log_of(*pid);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("--- {} (pid {pid}) ---", path.display());
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

/// Polls `child` for up to `timeout`.
pub(super) fn wait_child(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

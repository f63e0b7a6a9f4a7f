//! Several balancers in an ECMP lab, run as an operator runs a fleet.
//!
//! BIRD on the router and on every balancer, the same config on every agent, and the operations the
//! failover runs and the demo take (drain, kill, detach, restart), each waiting until the router's
//! ECMP group shows it.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{
    lab::{tool_path, Lab},
    netns,
    reports::HoldReport,
    scenario::{hold_finish, hold_start_patient, lab_config_for, Balancer, Member},
};

/// How long the router may take to see a balancer leave or join: BGP's 3 s hold timer for a
/// death, 5 s connect retry plus session set-up for a return, with margin for a busy machine.
pub const ROUTER_TIMEOUT: Duration = Duration::from_secs(25);

/// The agents of an ECMP lab, one per balancer (None while it is not running).
pub struct Fleet {
    pub mode: String,
    pub agents: Vec<Option<Balancer>>,
    /// Each balancer's BIRD (pid), None while it is not running.
    birds: Vec<Option<u32>>,
}

impl Fleet {
    /// Starts the router's BIRD, then on every balancer BIRD and an agent with the lab's
    /// config (every backend active), and waits until the router sends the VIP to all.
    pub fn start(lab: &mut Lab, mode: &str) -> Result<Fleet> {
        if lab.spec().ecmp_balancers == 0 {
            bail!("a fleet needs an ECMP lab (LabSpec::ecmp_balancers)");
        }
        lab.start_router_bird()?;
        let n = lab.balancers();
        let mut fleet = Fleet {
            mode: mode.to_owned(),
            agents: (0..n).map(|_| None).collect(),
            birds: vec![None; n],
        };
        for k in 0..n {
            fleet.start_bird(lab, k)?;
            fleet.start_agent(lab, k)?;
        }
        let all: Vec<usize> = (0..n).collect();
        lab.wait_next_hops(&all, ROUTER_TIMEOUT)
            .context("the router never learned the VIP from every balancer")?;
        Ok(fleet)
    }

    /// The config every balancer runs (they differ only in their own paths): the lab's VIPs,
    /// each with a TCP health check of the backends' server, as a production fleet runs.
    pub fn config(lab: &mut Lab, k: usize, mode: &str) -> Result<String> {
        let members: Vec<_> = (0..lab.backends()).map(|i| (i, Member::Active)).collect();
        let yaml = lab_config_for(lab, k, mode, &members)?;
        let check = format!(
            "    health_check: {{ kind: tcp, port: {}, interval: 1s, timeout: 500ms }}\n    backends:\n",
            lab.spec().port
        );
        Ok(yaml.replace("    backends:\n", &check))
    }

    pub fn start_bird(&mut self, lab: &mut Lab, k: usize) -> Result<()> {
        self.birds[k] = Some(lab.start_balancer_bird(k)?);
        Ok(())
    }

    /// Starts balancer `k`'s agent (taking over pinned state if a previous one left it).
    pub fn start_agent(&mut self, lab: &mut Lab, k: usize) -> Result<()> {
        let yaml = Self::config(lab, k, &self.mode.clone())?;
        self.agents[k] = Some(Balancer::start_on(lab, k, &self.mode.clone(), &yaml, &[])?);
        Ok(())
    }

    pub fn agent(&self, k: usize) -> Result<&Balancer> {
        self.agents[k]
            .as_ref()
            .with_context(|| format!("balancer {k}'s agent is not running"))
    }

    /// `xdplb drain-balancer` on balancer `k`, as an operator runs it (it returns after the
    /// withdraw delay).
    pub fn drain(&self, lab: &Lab, k: usize) -> Result<String> {
        let (ok, out) = Balancer::cli_on(lab, k, &["drain-balancer"]);
        if !ok {
            bail!("xdplb drain-balancer failed: {out}");
        }
        Ok(out)
    }

    pub fn resume(&self, lab: &Lab, k: usize) -> Result<String> {
        let (ok, out) = Balancer::cli_on(lab, k, &["resume-balancer"]);
        if !ok {
            bail!("xdplb resume-balancer failed: {out}");
        }
        Ok(out)
    }

    /// Stops balancer `k`'s agent with SIGINT: it withdraws, forwards for the withdraw delay,
    /// then detaches. Returns its log.
    pub fn stop_agent(&mut self, lab: &mut Lab, k: usize) -> Result<String> {
        let agent = self.agents[k].take().context("agent not running")?;
        agent.stop(lab)
    }

    /// `kill -9` of balancer `k`'s agent: the pinned program keeps forwarding and BIRD keeps
    /// announcing.
    pub fn kill_agent(&mut self, lab: &mut Lab, k: usize) -> Result<()> {
        let agent = self.agents[k].take().context("agent not running")?;
        crate::sys::signal(agent.pid, libc::SIGKILL);
        lab.wait_exit(agent.pid, Duration::from_secs(10))?;
        Ok(())
    }

    /// `xdplb detach --config` of balancer `k` (its agent not running): withdraws through
    /// BIRD, forwards for the withdraw delay, then removes the program.
    pub fn detach(&self, lab: &Lab, k: usize) -> Result<String> {
        let config = lab.dir().join(if k == 0 {
            "lb.yaml".to_owned()
        } else {
            format!("lb-gw{k}.yaml")
        });
        let xdplb = tool_path("xdplb");
        netns::run(
            lab.balancer_ns(k),
            &[
                &xdplb.to_string_lossy(),
                "detach",
                "--config",
                &config.to_string_lossy(),
            ],
        )
    }

    /// The host dies: balancer `k`'s link goes first (a dead host says goodbye to nobody, so
    /// the router finds out by its hold timer), then its namespace with everything in it.
    pub fn delete_host(&mut self, lab: &mut Lab, k: usize) -> Result<()> {
        lab.unplug_balancer(k)?;
        self.agents[k] = None;
        self.birds[k] = None;
        lab.delete_balancer(k)?;
        // What a dead host had pinned dies with it; the lab's bpffs outlives the namespace.
        let pins = lab.pin_dir()?.join(format!("xdplb-gw{k}"));
        lb_userspace::datapath::balancer::detach(&pins)?;
        Ok(())
    }

    /// A replacement host for balancer `k`: a new namespace, BIRD and agent.
    pub fn replace_host(&mut self, lab: &mut Lab, k: usize) -> Result<()> {
        lab.restore_balancer(k)?;
        self.start_bird(lab, k)?;
        self.start_agent(lab, k)
    }

    /// Packets balancer `k` has forwarded to backends (its datapath's tx counters).
    pub fn forwarded(&self, k: usize) -> Result<u64> {
        let stats = self.agent(k)?.stats_json()?;
        Ok(tx_total(&stats))
    }
}

/// The `tx_*` outcome counters of an `xdplb stats --json`.
fn tx_total(stats: &Value) -> u64 {
    stats["global"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("tx_"))
        .filter_map(|(_, v)| v.as_u64())
        .sum()
}

/// Applies `args` (an `xdplb backend ...` change) to every balancer in turn, as an operator
/// or a config-management tool rolls a change, a second apart.
pub fn roll(lab: &Lab, args: &[&str]) {
    for k in 0..lab.balancers() {
        let (ok, out) = Balancer::cli_on(lab, k, args);
        assert!(ok, "balancer {k}: xdplb {args:?}: {out}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Cuts the last balancer's link, waits for the router to withdraw it, lets the moved
/// flows run on the others, and restores it.
pub fn fail_over(lab: &mut Lab) {
    let v = lab.balancers() - 1;
    let rest: Vec<usize> = (0..v).collect();
    let mac = lab.unplug_balancer(v).unwrap();
    lab.wait_next_hops(&rest, ROUTER_TIMEOUT).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    lab.replug_balancer(v, &mac).unwrap();
    let all: Vec<usize> = (0..=v).collect();
    lab.wait_next_hops(&all, ROUTER_TIMEOUT).unwrap();
}

/// Rolls `args` across the balancers while two sets of `held` connections ping (from client 0
/// and 1): the first ends after the roll, the second also lives through a [`fail_over`].
/// Returns both reports.
pub fn rolled_then_failed_over(
    lab: &mut Lab,
    args: &[&str],
    held: u32,
    ping_timeout_s: u64,
) -> (HoldReport, HoldReport) {
    let through_roll = hold_start_patient(lab, 0, held, 120, ping_timeout_s).expect("hold");
    let through_failover = hold_start_patient(lab, 1, held, 120, ping_timeout_s).expect("hold");
    std::thread::sleep(Duration::from_secs(1));
    roll(lab, args);
    std::thread::sleep(Duration::from_secs(2));
    let a = hold_finish(lab, through_roll).expect("hold report");
    fail_over(lab);
    std::thread::sleep(Duration::from_secs(3));
    let b = hold_finish(lab, through_failover).expect("hold report");
    (a, b)
}

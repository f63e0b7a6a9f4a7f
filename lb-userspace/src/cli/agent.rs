//! The agent's commands: `run`, `status`, `reload`, `drain-balancer`, `resume-balancer`, `detach`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::output::{addr_list, print_applied, print_json, warn_not_in_service, Outcome, Target};
use crate::{
    agent::{
        announce,
        api::{BalancerState, Request, Status},
    },
    config::Config,
    datapath::balancer,
};

/// `xdplb run`: the agent, on a single-threaded runtime (it never blocks; slow work is tasks).
pub fn run(config: &Path) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(crate::agent::run(config))
}

pub fn status(target: &Target) -> anyhow::Result<()> {
    print_json(&target.call::<Status>(&Request::Status)?)
}

/// `xdplb reload`; with `refused_only`, an applied file exits 0 even with backends not in
/// service (they are named on stderr all the same).
pub fn reload(target: &Target, refused_only: bool) -> anyhow::Result<Outcome> {
    Ok(match print_applied(target.call(&Request::Reload)?) {
        Outcome::NotInService(left_out) if refused_only => {
            warn_not_in_service(&left_out);
            Outcome::Done
        }
        outcome => outcome,
    })
}

pub fn drain_balancer(target: &Target, no_wait: bool) -> anyhow::Result<()> {
    let s: BalancerState = target.call(&Request::BalancerDrain)?;
    println!(
        "balancer drained: every VIP withdrawn through BIRD (announced now: {}); still forwarding",
        addr_list(&s.announced)
    );
    if !no_wait {
        let delay = Duration::from_millis(s.withdraw_delay_ms);
        println!("waiting {delay:?} (announce.withdraw_delay) for the routers to move the flows");
        std::thread::sleep(delay);
    }
    println!("no router should send new flows here now: stop or detach the agent, or `xdplb resume-balancer`");
    Ok(())
}

pub fn resume_balancer(target: &Target) -> anyhow::Result<()> {
    let s: BalancerState = target.call(&Request::BalancerResume)?;
    println!("balancer resumed: announcing {}", addr_list(&s.announced));
    Ok(())
}

/// `xdplb detach`: with a config, its VIPs are withdrawn through BIRD first.
pub fn detach(config: &Path, pin_path: Option<PathBuf>) -> anyhow::Result<()> {
    let pin = match pin_path {
        Some(p) => p,
        None => {
            let cfg = Config::load(config)?;
            announce::withdraw_before_detach(&cfg);
            cfg.pin_path
        }
    };
    let removed = balancer::detach(&pin)?;
    if removed.is_empty() {
        println!("nothing pinned under {}", pin.display());
    }
    for r in removed {
        println!("removed {r}");
    }
    Ok(())
}

//! `xdplb backend`: list, add, remove, drain, activate and re-weight the running agent's backends.

use std::net::IpAddr;

use anyhow::{anyhow, Context as _};
use clap::Subcommand;

use super::output::{print_applied, print_json, Outcome, Target};
use crate::{
    agent::api::{Request, VipStatus},
    config::{check_host_address, BackendConfig, BackendState, MacAddr, Weight},
};

#[derive(Subcommand)]
pub enum BackendCommand {
    /// List backends (of one VIP, or all) with state, health and idle time (JSON).
    List {
        /// Only this VIP's backends.
        vip: Option<String>,
    },
    /// Add a backend to a VIP: it takes its share of new flows.
    Add {
        /// The VIP's name.
        vip: String,
        /// The backend's address.
        #[arg(value_parser = host_address)]
        address: IpAddr,
        /// MAC frames go to (l2: the backend's; ipip: the next hop's); default from the kernel.
        #[arg(long, value_parser = mac)]
        mac: Option<MacAddr>,
        /// Relative share of new flows, 1 to 65535.
        #[arg(long, default_value_t = Weight::default().0, value_parser = weight)]
        weight: u32,
        /// Add it draining (no new flows).
        #[arg(long)]
        draining: bool,
    },
    /// Remove a backend: its flows are re-steered, so its connections end.
    Remove {
        /// The VIP's name.
        vip: String,
        /// The backend's address.
        address: IpAddr,
    },
    /// Keep the backend's flows, give it no new ones.
    Drain {
        /// The VIP's name.
        vip: String,
        /// The backend's address.
        address: IpAddr,
    },
    /// Undo a drain: the backend takes new flows again.
    Activate {
        /// The VIP's name.
        vip: String,
        /// The backend's address.
        address: IpAddr,
    },
    /// Change a backend's share of new flows.
    Weight {
        /// The VIP's name.
        vip: String,
        /// The backend's address.
        address: IpAddr,
        /// Relative share of new flows, 1 to 65535.
        #[arg(value_parser = weight)]
        weight: u32,
    },
}

fn host_address(s: &str) -> Result<IpAddr, String> {
    check_host_address(s.parse().map_err(|e| format!("{e}"))?)
}

fn mac(s: &str) -> Result<MacAddr, String> {
    s.parse()
}

fn weight(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    Weight::try_from(n).map(|w| w.0)
}

pub fn run(command: BackendCommand, target: &Target) -> anyhow::Result<Outcome> {
    let req = match command {
        BackendCommand::List { vip } => {
            return print_json(&target.call::<Vec<VipStatus>>(&Request::BackendList { vip })?)
                .map(Outcome::from)
        }
        BackendCommand::Add {
            vip,
            address,
            mac,
            weight,
            draining,
        } => Request::BackendAdd {
            vip,
            backend: BackendConfig {
                address,
                mac,
                weight: Weight::try_from(weight).map_err(|e| anyhow!(e))?,
                state: if draining {
                    BackendState::Draining
                } else {
                    BackendState::Active
                },
            },
        },
        BackendCommand::Remove { vip, address } => Request::BackendRemove { vip, address },
        BackendCommand::Drain { vip, address } => Request::BackendDrain { vip, address },
        BackendCommand::Activate { vip, address } => Request::BackendActivate { vip, address },
        BackendCommand::Weight {
            vip,
            address,
            weight,
        } => Request::BackendWeight {
            vip,
            address,
            weight,
        },
    };
    Ok(print_applied(
        target.call(&req).context("the agent refused")?,
    ))
}

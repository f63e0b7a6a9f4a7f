//! `xdplb vip`: list, add and remove the running agent's VIPs.

use std::net::IpAddr;

use anyhow::anyhow;
use clap::Subcommand;

use super::output::{print_applied, print_json, Outcome, Target};
use crate::{
    agent::api::Request,
    config::{Forwarding, HashMode, Protocol, RingSize, Vip, VipFields},
};

#[derive(Subcommand)]
pub enum VipCommand {
    /// List the VIPs with their backends (JSON).
    List,
    /// Add a VIP without backends (add them with `xdplb backend add`).
    Add {
        /// Name for the CLI, logs and metrics (1 to 64 of A-Z a-z 0-9 - _ .).
        name: String,
        /// The virtual address clients connect to.
        address: IpAddr,
        /// Port, or 0 for every port of the address and protocol.
        port: u16,
        /// Transport protocol.
        #[arg(value_enum)]
        protocol: Protocol,
        /// What flows are hashed on.
        #[arg(long, value_enum, default_value_t)]
        hash: HashMode,
        /// Skip the flow table: every packet goes where the ring says.
        #[arg(long)]
        stateless: bool,
        /// Maglev table size: a prime, at least 100 per backend.
        #[arg(long, default_value_t = RingSize::default().0, value_parser = ring_size)]
        ring_size: u32,
        /// How packets reach the backends.
        #[arg(long, value_enum, default_value_t)]
        forwarding: Forwarding,
        /// Answer pings to the VIP's address from the balancer.
        #[arg(long)]
        icmp_echo: bool,
    },
    /// Remove a VIP and its backends (their connections end).
    Remove {
        /// The VIP's name.
        name: String,
    },
}

/// A ring size as the config accepts it.
fn ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    RingSize::try_from(n).map(|r| r.0)
}

pub fn run(command: VipCommand, target: &Target) -> anyhow::Result<Outcome> {
    let req = match command {
        VipCommand::List => {
            return print_json(&target.call::<Vec<Vip>>(&Request::VipList)?).map(Outcome::from)
        }
        VipCommand::Remove { name } => Request::VipRemove { name },
        VipCommand::Add {
            name,
            address,
            port,
            protocol,
            hash,
            stateless,
            ring_size,
            forwarding,
            icmp_echo,
        } => {
            // The config's own checks, as for a VIP in the file.
            let vip = Vip::try_from(VipFields {
                name,
                address,
                port,
                protocol,
                forwarding,
                hash,
                stateless,
                icmp_echo,
                ring_size: RingSize::try_from(ring_size).map_err(|e| anyhow!(e))?,
                health_check: None,
                backends: Vec::new().try_into().map_err(|e: String| anyhow!(e))?,
            })
            .map_err(|e| anyhow!("invalid VIP: {e}"))?;
            Request::VipAdd { vip }
        }
    };
    Ok(print_applied(target.call(&req)?))
}

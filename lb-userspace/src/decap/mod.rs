//! `xdplb decap` and `xdplb host`: the backends' program (decapsulation, second chance).
//!
//! It loads the program, keeps it attached through a pinned link, fills its address set, detaches
//! it and prints its counters.
//!
//! This file holds the command (arguments, `run`) and what every part shares; `addrs` chooses
//! the addresses, `maps` owns the map handles, `install` attaches and detaches, `stats` reads
//! the counters.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::bail;

use crate::config::{InterfaceName, XdpMode};

mod addrs;
pub mod host;
mod install;
mod maps;
mod stats;

pub use addrs::{global_addrs, parse_ip_addr_json, InterfaceAddr};
pub use install::{detach, install, load};
pub use maps::{decap_key, DecapMaps};
pub use stats::{stats, DecapStats};

/// Where `xdplb decap` pins its maps and link when `--pin-path` names no other place.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xdplb-decap";
/// Name of the pinned XDP link inside `<pin-path>/<interface>/`.
const LINK_PIN: &str = "link";

/// What `xdplb decap` and `xdplb host` share: the interface, where the pins go, and the
/// read and removal modes.
#[derive(clap::Args, Debug, Clone)]
pub struct ProgramArgs {
    /// The interface the packets arrive on.
    #[arg(long, short)]
    pub interface: String,
    /// bpffs directory; maps and link go to `<pin-path>/<interface>/`.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Remove the program (its pinned link) and maps from the interface.
    #[arg(long, conflicts_with = "stats")]
    pub detach: bool,
    /// Print the counters of the program attached to the interface.
    #[arg(long)]
    pub stats: bool,
    /// With --stats: one JSON object, for scripts.
    #[arg(long, requires = "stats")]
    pub json: bool,
}

impl ProgramArgs {
    /// `--stats` (printed here) or `--detach` (what was removed); `None` for neither.
    pub fn read_or_remove(&self) -> Option<anyhow::Result<Vec<String>>> {
        if let Err(e) = check_interface_name(&self.interface) {
            return Some(Err(e));
        }
        if self.stats {
            return Some(require_privileges(false).and_then(|()| {
                let report = stats(&self.pin_path, &self.interface)?;
                if self.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.table());
                }
                Ok(Vec::new())
            }));
        }
        if self.detach {
            return Some(require_privileges(true).and_then(|()| {
                let removed = detach(&self.pin_path, &self.interface)?;
                if removed.is_empty() {
                    return Ok(vec![format!(
                        "nothing pinned under {}",
                        pin_dir(&self.pin_path, &self.interface).display()
                    )]);
                }
                Ok(removed
                    .into_iter()
                    .map(|r| format!("removed {r}"))
                    .collect())
            }));
        }
        None
    }
}

/// `xdplb decap`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct DecapArgs {
    #[command(flatten)]
    pub program: ProgramArgs,
    /// A tunnel endpoint address to decapsulate for (repeatable). Default: every global-scope
    /// address of the interface.
    #[arg(long = "address", value_name = "ADDR", conflicts_with_all = ["detach", "stats"])]
    pub addresses: Vec<IpAddr>,
    /// How to attach (default: auto).
    #[arg(long, value_enum, conflicts_with_all = ["detach", "stats"])]
    pub xdp_mode: Option<XdpMode>,
}

/// Runs the `xdplb decap` command.
pub fn run(args: &DecapArgs) -> anyhow::Result<()> {
    let p = &args.program;
    if let Some(lines) = p.read_or_remove() {
        lines?.iter().for_each(|l| println!("{l}"));
        return Ok(());
    }
    require_privileges(true)?;
    let explicit = (!args.addresses.is_empty()).then_some(args.addresses.as_slice());
    for line in install(&p.pin_path, &p.interface, explicit, args.xdp_mode)? {
        println!("{line}");
    }
    Ok(())
}

/// `<pin-path>/<interface>`: one directory per interface, so one host can decapsulate on
/// several NICs with the same `--pin-path`.
pub fn pin_dir(pin_path: &Path, interface: &str) -> PathBuf {
    pin_path.join(interface)
}

/// Interface names become a path component: refuse anything that is not one.
pub(super) fn check_interface_name(name: &str) -> anyhow::Result<()> {
    // The config's rule, so `xdplb run` and `xdplb decap` accept the same names.
    InterfaceName::try_from(name.to_owned()).map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

/// Loading an XDP program needs CAP_BPF (or CAP_SYS_ADMIN), attaching it CAP_NET_ADMIN; a
/// clear message up front beats the kernel's EPERM from the middle of the load.
fn require_privileges(attach: bool) -> anyhow::Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(caps) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        // No procfs: let the kernel say what is missing.
        return Ok(());
    };
    let has = |cap: u32| caps & (1 << cap) != 0;
    let load = has(CAP_BPF) || has(CAP_SYS_ADMIN);
    if !load || (attach && !has(CAP_NET_ADMIN)) {
        bail!(
            "xdplb decap needs root (CAP_BPF or CAP_SYS_ADMIN{}): run it with sudo",
            if attach { ", and CAP_NET_ADMIN" } else { "" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_path_safe() {
        for bad in ["", ".", "..", "a/b", "eth 0", "sixteen-bytes-xx"] {
            assert!(check_interface_name(bad).is_err(), "{bad:?}");
        }
        check_interface_name("eth0.100").unwrap();
    }
}

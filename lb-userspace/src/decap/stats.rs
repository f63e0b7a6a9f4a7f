//! `xdplb decap --stats`: the pinned counters and address set of one interface.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use lb_common::decap::DecapCounter;
use serde::Serialize;

use super::{check_interface_name, pin_dir, DecapMaps};

/// What `xdplb decap --stats` prints.
#[derive(Debug, Serialize)]
pub struct DecapStats {
    pub interface: String,
    pub pin_dir: PathBuf,
    pub addresses: Vec<IpAddr>,
    /// Counter name (`decapsulated`, `pass_not_tunnel`, ...) → packets, over all CPUs. Flat
    /// in the JSON form (`.decapsulated`), next to `interface` and `addresses`.
    #[serde(flatten)]
    pub counters: BTreeMap<&'static str, u64>,
}

impl DecapStats {
    /// The human-readable form: addresses, then one counter per line in index order.
    pub fn table(&self) -> String {
        let mut s = format!(
            "xdplb decap on {} (pinned under {})\naddresses: {}\n",
            self.interface,
            self.pin_dir.display(),
            self.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        for c in DecapCounter::ALL {
            let n = self.counters.get(c.name()).copied().unwrap_or_default();
            s.push_str(&format!("{:<20} {n:>12}\n", c.name()));
        }
        s
    }
}

/// Reads the counters and address set pinned for `interface`.
pub fn stats(pin_path: &Path, interface: &str) -> anyhow::Result<DecapStats> {
    check_interface_name(interface)?;
    let dir = pin_dir(pin_path, interface);
    let maps = DecapMaps::from_pins(&dir)?;
    let values = maps.counters()?;
    Ok(DecapStats {
        interface: interface.to_owned(),
        addresses: maps.addrs()?,
        counters: DecapCounter::ALL
            .iter()
            .map(|c| (c.name(), values[*c as usize]))
            .collect(),
        pin_dir: dir,
    })
}

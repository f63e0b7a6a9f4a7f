//! `DecapMaps`: the aya handles of the host program's maps (addresses, VIPs, peers, counters).
//!
//! It also builds the map key of an address.

use std::{net::IpAddr, path::Path};

use anyhow::Context as _;
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    Ebpf,
};
use lb_common::{
    addr::{ip_from_map, ip_to_map},
    decap::{
        DecapAddr, DecapCounter, Peer, DECAP_ADDRS, DECAP_COUNTER_COUNT, DECAP_STATS, HOST_PEERS,
        HOST_VIPS,
    },
    MAX_BACKENDS,
};

use crate::datapath::maps;

/// The key of `addr` in `DECAP_ADDRS`.
pub fn decap_key(addr: IpAddr) -> DecapAddr {
    let (bytes, family) = ip_to_map(addr);
    DecapAddr {
        addr: bytes,
        family,
        _pad: [0; 3],
    }
}

/// The aya handles of the decap program's maps; nothing else touches them.
pub struct DecapMaps {
    addrs: HashMap<MapData, DecapAddr, u32>,
    stats: PerCpuArray<MapData, u64>,
    vips: HashMap<MapData, DecapAddr, u32>,
    peers: Array<MapData, Peer>,
}

impl DecapMaps {
    /// Takes the maps out of a loaded decap object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Self::from_source(&mut |name| maps::take(ebpf, name))
    }

    /// Opens the maps pinned under `dir` (`<pin-path>/<interface>`).
    pub fn from_pins(dir: &Path) -> anyhow::Result<Self> {
        Self::from_source(&mut |name| {
            maps::open_pinned(
                dir,
                name,
                "is `xdplb decap` attached with this --interface and --pin-path?",
            )
        })
    }

    fn from_source(get: &mut dyn FnMut(&str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        Ok(Self {
            addrs: maps::typed(DECAP_ADDRS, get(DECAP_ADDRS)?)?,
            stats: maps::typed(DECAP_STATS, get(DECAP_STATS)?)?,
            vips: maps::typed(HOST_VIPS, get(HOST_VIPS)?)?,
            peers: maps::typed(HOST_PEERS, get(HOST_PEERS)?)?,
        })
    }

    /// The addresses in `DECAP_ADDRS`, sorted.
    pub fn addrs(&self) -> anyhow::Result<Vec<IpAddr>> {
        let mut out: Vec<IpAddr> = self
            .addrs
            .keys()
            .map(|k| k.map(|k| ip_from_map(k.addr, k.family)))
            .collect::<Result<_, _>>()
            .context("reading map DECAP_ADDRS")?;
        out.sort();
        Ok(out)
    }

    /// Makes `DECAP_ADDRS` exactly `wanted`: new addresses are inserted before stale ones are
    /// removed, so an address in both the old and the new set is never missing. Returns the
    /// (added, removed) addresses.
    pub fn set_addrs(&mut self, wanted: &[IpAddr]) -> anyhow::Result<(Vec<IpAddr>, Vec<IpAddr>)> {
        let current = self.addrs()?;
        let mut added = Vec::new();
        for a in wanted {
            if !current.contains(a) {
                self.addrs
                    .insert(decap_key(*a), 0, 0)
                    .with_context(|| format!("adding {a} to map DECAP_ADDRS"))?;
                added.push(*a);
            }
        }
        let mut removed = Vec::new();
        for a in current {
            if !wanted.contains(&a) {
                self.addrs
                    .remove(&decap_key(a))
                    .with_context(|| format!("removing {a} from map DECAP_ADDRS"))?;
                removed.push(a);
            }
        }
        Ok((added, removed))
    }

    /// Makes `HOST_VIPS` hold exactly `vips`.
    pub fn set_host_vips(&mut self, vips: &[IpAddr]) -> anyhow::Result<()> {
        let current: Vec<DecapAddr> = self.vips.keys().collect::<Result<_, _>>()?;
        let wanted: Vec<DecapAddr> = vips.iter().map(|a| decap_key(*a)).collect();
        for k in &wanted {
            self.vips.insert(k, 0, 0).context("writing map HOST_VIPS")?;
        }
        for k in current.iter().filter(|k| !wanted.contains(k)) {
            self.vips.remove(k).context("deleting from map HOST_VIPS")?;
        }
        Ok(())
    }

    /// Makes `HOST_PEERS` hold exactly `peers` (by backend id; every other id: no peer).
    pub fn set_peers(
        &mut self,
        peers: &std::collections::BTreeMap<u32, Peer>,
    ) -> anyhow::Result<()> {
        for id in 0..MAX_BACKENDS {
            let want = peers.get(&id).copied().unwrap_or_default();
            if self.peers.get(&id, 0).ok() != Some(want) {
                self.peers
                    .set(id, want, 0)
                    .with_context(|| format!("writing HOST_PEERS[{id}]"))?;
            }
        }
        Ok(())
    }

    /// Every counter, summed over the CPUs, in [`DecapCounter`] order.
    pub fn counters(&self) -> anyhow::Result<[u64; DECAP_COUNTER_COUNT as usize]> {
        let mut out = [0u64; DECAP_COUNTER_COUNT as usize];
        for c in DecapCounter::ALL {
            let per_cpu = self
                .stats
                .get(&(c as u32), 0)
                .with_context(|| format!("reading {DECAP_STATS}[{}]", c.name()))?;
            out[c as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys_match_the_program_layout() {
        assert_eq!(decap_key(ip("192.0.2.1")), DecapAddr::v4([192, 0, 2, 1]));
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(decap_key(IpAddr::V6(v6)), DecapAddr::v6(v6.octets()));
    }
}

//! The reconciler: writes what differs between a `Desired` state and what the maps hold.
//!
//! It writes in an order that is safe for packets in flight, and remembers what it wrote.

use std::collections::{BTreeMap, HashMap, HashSet};

use lb_common::{
    addr::ip_from_map,
    history::{ring_slot, slot_owner, slot_previous},
    AddrKey, AddrMeta, Backend as MapBackend, Settings, VipKey, VipMeta, BACKEND_UNUSED,
    NO_BACKEND,
};

use crate::{
    config::{Config, MacAddr},
    datapath::maps::BalancerMaps,
    model::addr::fmt_addr,
    model::desired::{Desired, DownSet, Facts},
    model::ids::Ids,
    model::vip_table,
};

/// What the maps hold, as far as this agent wrote (or adopted) it.
#[derive(Default)]
pub struct Written {
    pub ids: Ids,
    backends: HashMap<u32, MapBackend>,
    /// As written: each slot's owner and previous owner (lb-common's `history::ring_slot`).
    rings: HashMap<u32, Vec<u32>>,
    vips: HashMap<VipKey, VipMeta>,
    addrs: HashMap<AddrKey, AddrMeta>,
    settings: Option<Settings>,
}

/// What one reconcile wrote, in words, for the log and the API's answer.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per VIP of the desired state ([`Desired::summary`]).
    pub summary: Vec<String>,
    /// VIPs and backends that were removed.
    pub removed: Vec<String>,
}

impl Report {
    pub fn lines(&self) -> impl Iterator<Item = &String> {
        self.summary.iter().chain(&self.removed)
    }
}

impl Written {
    /// Reads the state a previous agent left pinned, so this agent keeps every VIP and backend
    /// at the id its flows and counters already use. Also returns the backends' MACs, which
    /// stay in use until the neighbour table says otherwise.
    ///
    /// The rings are not read back: an inner map of `RINGS` can only be opened by its id
    /// (`BPF_MAP_GET_FD_BY_ID`), which needs CAP_SYS_ADMIN, and the agent runs without it. The
    /// first [`Self::apply`] builds each VIP's ring from the config and swaps it in whole, as
    /// on any change: with the same config and the adopted backend ids it is the ring already
    /// there, so no flow moves; the flow table and counters are pinned maps and stay as they are.
    pub fn adopt(
        maps: &BalancerMaps,
    ) -> anyhow::Result<(Written, HashMap<std::net::IpAddr, MacAddr>)> {
        let mut w = Written::default();
        let mut macs = HashMap::new();
        for (key, meta) in maps.vips()? {
            let addr = ip_from_map(key.addr, key.family);
            w.ids
                .vips
                .insert((addr, u16::from_be_bytes(key.port), key.proto), meta.vip_id);
            w.vips.insert(key, meta);
        }
        for (id, b) in maps.backends()? {
            let addr = ip_from_map(b.addr, b.family);
            w.ids.backends.insert((b.vip_id, addr), id);
            macs.insert(addr, MacAddr(b.mac));
            w.backends.insert(id, b);
        }
        w.addrs = maps.vip_addrs()?.into_iter().collect();
        w.settings = Some(maps.settings()?);
        Ok((w, macs))
    }

    /// Makes the maps hold `desired`. Order matters for packets in flight: backends are
    /// written before the rings that point at them, rings before the VIP table that leads to
    /// them, and removed backends are cleared only after no ring points at them any more.
    /// Slots given to a new owner start with zeroed counters.
    pub fn apply(&mut self, desired: &Desired, maps: &mut BalancerMaps) -> anyhow::Result<Report> {
        let mut report = Report {
            summary: desired.summary(),
            removed: Vec::new(),
        };
        let held_backends: HashSet<u32> = self.ids.backends.values().copied().collect();
        for (id, b) in &desired.backends {
            let previous = self.backends.get(id).copied();
            if previous == Some(*b) {
                continue;
            }
            match previous {
                // Another (VIP, address) takes a written slot: the old owner's hits stay with
                // its VIP, and the new owner starts from zero. Hits of the old owner's flows
                // in flight while this runs may go uncounted (never a packet lost).
                Some(old) if old.tag != b.tag => {
                    maps.retire_backend_hits(*id, old.vip_id)?;
                    maps.reset_backend_counters(*id)?;
                }
                Some(_) => {}
                None if !held_backends.contains(id) => maps.reset_backend_counters(*id)?,
                None => {}
            }
            maps.set_backend(*id, b)?;
            self.backends.insert(*id, *b);
        }
        let held_vips: HashSet<u32> = self.ids.vips.values().copied().collect();
        for v in &desired.vips {
            let id = v.meta.vip_id;
            if !held_vips.contains(&id) {
                maps.reset_vip_counters(id)?;
            }
            let ring = with_history(&v.ring, self.rings.get(&id), &desired.backends);
            if self.rings.get(&id) != Some(&ring) {
                maps.install_ring(id, &ring)?;
                self.rings.insert(id, ring);
            }
        }
        // The VIP table changes whole: added VIPs (whose rings are in place) and removed ones
        // (whose backends are freed only below) switch in one step.
        let vips: HashMap<VipKey, VipMeta> = desired.vips.iter().map(|v| (v.key, v.meta)).collect();
        if vips != self.vips || desired.addrs != self.addrs {
            let placed = vip_table::place(vips.clone(), desired.addrs.clone())?;
            maps.publish_vip_table(&placed)?;
            self.vips = vips;
            self.addrs = desired.addrs.clone();
        }
        if self.settings != Some(desired.settings) {
            maps.set_settings(&desired.settings)?;
            self.settings = Some(desired.settings);
        }
        // VIPs that left the config: unreachable first, then their backends are freed below.
        for (identity, id) in &self.ids.vips {
            if desired.ids.vips.contains_key(identity) {
                continue;
            }
            self.rings.remove(id);
            report.removed.push(format!(
                "VIP {}:{} removed",
                fmt_addr(identity.0),
                identity.1
            ));
        }
        // By what is written, not by id: an id may now belong to another backend (it was
        // written above) or to one waiting for its MAC (not written yet).
        let still: HashSet<u32> = desired.backends.keys().copied().collect();
        for ((_, addr), id) in &self.ids.backends {
            if still.contains(id) {
                continue;
            }
            // Flow-table entries still naming this id are re-steered by the datapath.
            let unused = MapBackend {
                state: BACKEND_UNUSED,
                ..Default::default()
            };
            maps.set_backend(*id, &unused)?;
            // The datapath counts no more hits in the slot: keep them in its VIP's totals.
            if let Some(old) = self.backends.remove(id) {
                maps.retire_backend_hits(*id, old.vip_id)?;
            }
            report.removed.push(format!("backend {addr} removed"));
        }
        self.ids = desired.ids.clone();
        Ok(report)
    }
}

/// The ring to write for `owners` (a Maglev table of backend ids), each slot with its previous
/// owner: the most recent other backend that owned the slot in `written` (the ring as last
/// written), as long as it still serves (active or draining: a removed or failed backend's
/// flows are gone). Health changes count like config changes; a ring never written before (a
/// new VIP, or the first write after an agent restart) has no history.
pub fn with_history(
    owners: &[u32],
    written: Option<&Vec<u32>>,
    backends: &BTreeMap<u32, MapBackend>,
) -> Vec<u32> {
    let serves = |id: u32| {
        backends
            .get(&id)
            .is_some_and(|b| lb_common::backend_serves(b.state))
    };
    owners
        .iter()
        .enumerate()
        .map(|(i, &owner)| {
            // A ring of another size is another table: its slots say nothing about these.
            let old = written.filter(|w| w.len() == owners.len()).map(|w| w[i]);
            let previous = match old {
                None => NO_BACKEND,
                Some(old) => {
                    let (was, before) = (slot_owner(old), slot_previous(old));
                    if was != owner && was != NO_BACKEND {
                        was
                    } else {
                        before
                    }
                }
            };
            let previous = if previous != owner && serves(previous) {
                previous
            } else {
                NO_BACKEND
            };
            ring_slot(owner, previous)
        })
        .collect()
}

impl Written {
    /// Makes the maps hold `cfg` with MACs from the config only (backends without one stay
    /// out of service), `own_mac` as the balancer's MAC and the interface's MTU if it exists
    /// here: for `xdplb replay`, benchmarks and tests, which run no agent.
    pub fn apply_config(
        &mut self,
        cfg: &Config,
        maps: &mut BalancerMaps,
        down: &DownSet,
        own_mac: MacAddr,
    ) -> anyhow::Result<Desired> {
        let macs = HashMap::new();
        let facts = Facts {
            down,
            macs: &macs,
            mtu: crate::datapath::nic::interface_mtu(cfg.interface.as_str()).ok(),
            own_mac,
        };
        let desired = Desired::build(cfg, &facts)?;
        self.apply(&desired, maps)?;
        Ok(desired)
    }
}

/// Fills fresh maps from `cfg` in one go (see [`Written::apply_config`]).
pub fn fill(cfg: &Config, maps: &mut BalancerMaps, own_mac: MacAddr) -> anyhow::Result<Desired> {
    Written::default().apply_config(cfg, maps, &DownSet::new(), own_mac)
}

//! `BalancerMaps` owns the aya handles of every balancer map; nothing else touches them. Opens them from a freshly loaded object or from their bpffs pins.

use std::path::Path;

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{Array, ArrayOfMaps, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
    Ebpf,
};
use lb_common::{
    maps as names, AddrKey, AddrMeta, Backend, ConnEntry, Counter, FlowKey, Settings,
    TrafficCounters, VipKey, VipMeta, BPF_F_INNER_MAP, COUNTER_COUNT,
};

pub struct BalancerMaps {
    vips: HashMap<MapData, VipKey, VipMeta>,
    rings: ArrayOfMaps<MapData, Array<MapData, u32>>,
    backends: Array<MapData, Backend>,
    conns: HashMap<MapData, FlowKey, ConnEntry>,
    vip_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    global_stats: PerCpuArray<MapData, u64>,
    vip_addrs: HashMap<MapData, AddrKey, AddrMeta>,
    settings: Array<MapData, Settings>,
    conns_capacity: u32,
}

/// A map of the type (and key/value sizes) `T` says, or an error naming it.
pub fn typed<T>(name: &str, map: Map) -> anyhow::Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map)
        .with_context(|| format!("map {name} does not have the layout lb-common defines"))
}

/// Takes map `name` out of a loaded object.
pub fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("the eBPF object has no map named {name}"))
}

/// Opens map `name` pinned under `dir`; `hint` says what should have pinned it.
pub fn open_pinned(dir: &Path, name: &str, hint: &str) -> anyhow::Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("cannot open pinned map {} ({hint})", path.display()))?;
    Map::from_map_data(data)
        .with_context(|| format!("pinned map {} has an unknown type", path.display()))
}

impl BalancerMaps {
    /// Takes the maps out of a loaded object (after [`pin_all`] if they should be shared).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Self::from_source(&mut |name| take(ebpf, name))
    }

    /// Opens the maps a running agent pinned under `dir`.
    pub fn from_pins(dir: &Path) -> anyhow::Result<Self> {
        Self::from_source(&mut |name| {
            open_pinned(dir, name, "is `xdplb run` running with this pin_path?")
        })
    }

    fn from_source(get: &mut dyn FnMut(&str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        let conns = get(names::CONNS)?;
        let conns_capacity = match &conns {
            Map::LruHashMap(data) => data.info().map(|i| i.max_entries()).unwrap_or(0),
            _ => 0,
        };
        Ok(Self {
            conns_capacity,
            vips: typed(names::VIPS, get(names::VIPS)?)?,
            rings: typed(names::RINGS, get(names::RINGS)?)?,
            backends: typed(names::BACKENDS, get(names::BACKENDS)?)?,
            conns: typed(names::CONNS, conns)?,
            vip_stats: typed(names::VIP_STATS, get(names::VIP_STATS)?)?,
            backend_stats: typed(names::BACKEND_STATS, get(names::BACKEND_STATS)?)?,
            global_stats: typed(names::GLOBAL_STATS, get(names::GLOBAL_STATS)?)?,
            vip_addrs: typed(names::VIP_ADDRS, get(names::VIP_ADDRS)?)?,
            settings: typed(names::SETTINGS, get(names::SETTINGS)?)?,
        })
    }

    pub fn set_vip_addr(&mut self, key: &AddrKey, meta: &AddrMeta) -> anyhow::Result<()> {
        self.vip_addrs
            .insert(key, meta, 0)
            .context("writing map VIP_ADDRS")
    }

    pub fn remove_vip_addr(&mut self, key: &AddrKey) -> anyhow::Result<()> {
        self.vip_addrs
            .remove(key)
            .context("deleting from map VIP_ADDRS")
    }

    pub fn vip_addrs(&self) -> anyhow::Result<Vec<(AddrKey, AddrMeta)>> {
        self.vip_addrs
            .iter()
            .collect::<Result<_, _>>()
            .context("reading map VIP_ADDRS")
    }

    pub fn set_settings(&mut self, settings: &Settings) -> anyhow::Result<()> {
        self.settings
            .set(0, settings, 0)
            .context("writing map SETTINGS")
    }

    pub fn settings(&self) -> anyhow::Result<Settings> {
        self.settings.get(&0, 0).context("reading map SETTINGS")
    }

    pub fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> anyhow::Result<()> {
        self.vips.insert(key, meta, 0).context("writing map VIPS")
    }

    pub fn remove_vip(&mut self, key: &VipKey) -> anyhow::Result<()> {
        self.vips.remove(key).context("deleting from map VIPS")
    }

    pub fn vips(&self) -> anyhow::Result<Vec<(VipKey, VipMeta)>> {
        self.vips
            .iter()
            .collect::<Result<_, _>>()
            .context("reading map VIPS")
    }

    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> anyhow::Result<()> {
        self.backends
            .set(id, backend, 0)
            .with_context(|| format!("writing BACKENDS[{id}]"))
    }

    pub fn backend(&self, id: u32) -> anyhow::Result<Backend> {
        self.backends
            .get(&id, 0)
            .with_context(|| format!("reading BACKENDS[{id}]"))
    }

    /// Every used backend slot, with its id.
    pub fn backends(&self) -> anyhow::Result<Vec<(u32, Backend)>> {
        let mut out = Vec::new();
        for (id, b) in self.backends.iter().enumerate() {
            let b = b.context("reading map BACKENDS")?;
            if b.state != lb_common::BACKEND_UNUSED {
                out.push((id as u32, b));
            }
        }
        Ok(out)
    }

    /// Installs a complete Maglev table for `vip_id` in one step: the table is built in a new
    /// inner map and then swapped into `RINGS`, so packets see either the old or the new table.
    pub fn install_ring(&mut self, vip_id: u32, table: &[u32]) -> anyhow::Result<()> {
        let size = u32::try_from(table.len()).context("ring too large")?;
        let mut ring = Array::<MapData, u32>::create(size, BPF_F_INNER_MAP)
            .with_context(|| format!("creating a {size}-slot ring for VIP id {vip_id}"))?;
        for (slot, id) in table.iter().enumerate() {
            ring.set(slot as u32, id, 0)
                .with_context(|| format!("filling ring slot {slot} for VIP id {vip_id}"))?;
        }
        self.rings
            .set(vip_id, &ring, 0)
            .with_context(|| format!("swapping the ring of VIP id {vip_id} into RINGS"))
    }

    /// Reads back the ring of `vip_id` (tests, `check`).
    pub fn ring(&self, vip_id: u32) -> anyhow::Result<Vec<u32>> {
        let ring: Array<MapData, u32> = self
            .rings
            .get(&vip_id, 0)
            .with_context(|| format!("reading RINGS[{vip_id}]"))?;
        ring.iter()
            .collect::<Result<_, _>>()
            .context("reading a ring")
    }

    /// Inserts a flow-table entry (benchmarks fill the table with it).
    pub fn insert_conn(&mut self, key: &FlowKey, entry: &ConnEntry) -> anyhow::Result<()> {
        self.conns
            .insert(key, entry, 0)
            .context("writing map CONNS")
    }

    pub fn conn(&self, key: &FlowKey) -> Option<ConnEntry> {
        self.conns.get(key, 0).ok()
    }

    /// Capacity of the flow table.
    pub fn conn_capacity(&self) -> u32 {
        self.conns_capacity
    }

    /// Flow-table entries per backend id: flows alive or idle but not yet evicted. Walks the
    /// table (one syscall per entry: about a second per million).
    pub fn flows_by_backend(&self) -> std::collections::HashMap<u32, u64> {
        let mut counts = std::collections::HashMap::new();
        for (_, entry) in self.conns.iter().flatten() {
            *counts.entry(entry.backend_id).or_default() += 1;
        }
        counts
    }

    /// Number of flows in the flow table (walks it: O(entries)).
    pub fn conn_count(&self) -> usize {
        self.conns.keys().filter(Result::is_ok).count()
    }

    pub fn vip_counters(&self, vip_id: u32) -> anyhow::Result<TrafficCounters> {
        sum_traffic(&self.vip_stats, vip_id, names::VIP_STATS)
    }

    pub fn backend_counters(&self, id: u32) -> anyhow::Result<TrafficCounters> {
        sum_traffic(&self.backend_stats, id, names::BACKEND_STATS)
    }

    /// Global outcome counters, summed over CPUs, in `Counter` order.
    pub fn global_counters(&self) -> anyhow::Result<[u64; COUNTER_COUNT as usize]> {
        let mut out = [0u64; COUNTER_COUNT as usize];
        for c in Counter::ALL {
            let per_cpu = self
                .global_stats
                .get(&(c as u32), 0)
                .with_context(|| format!("reading GLOBAL_STATS[{}]", c.name()))?;
            out[c as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Zeroes the counters of a VIP or backend slot before it is given to a new owner.
    pub fn reset_vip_counters(&mut self, vip_id: u32) -> anyhow::Result<()> {
        self.vip_stats
            .set(vip_id, zeroes()?, 0)
            .with_context(|| format!("resetting VIP_STATS[{vip_id}]"))
    }

    pub fn reset_backend_counters(&mut self, id: u32) -> anyhow::Result<()> {
        self.backend_stats
            .set(id, zeroes()?, 0)
            .with_context(|| format!("resetting BACKEND_STATS[{id}]"))
    }
}

fn zeroes() -> anyhow::Result<PerCpuValues<TrafficCounters>> {
    let cpus = nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
    Ok(PerCpuValues::try_from(vec![
        TrafficCounters::default();
        cpus
    ])?)
}

fn sum_traffic(
    map: &PerCpuArray<MapData, TrafficCounters>,
    index: u32,
    name: &str,
) -> anyhow::Result<TrafficCounters> {
    let per_cpu = map
        .get(&index, 0)
        .with_context(|| format!("reading {name}[{index}]"))?;
    Ok(per_cpu.iter().fold(TrafficCounters::default(), |mut t, c| {
        t.packets += c.packets;
        t.bytes += c.bytes;
        t.new_flows += c.new_flows;
        t
    }))
}

/// Pins every balancer map of a loaded object under `dir` (created if missing). Pins left by
/// an earlier run are replaced: this agent's maps are the live ones.
pub fn pin_all(ebpf: &Ebpf, dir: &Path) -> anyhow::Result<()> {
    crate::loader::mount_note(crate::bpffs::ensure(dir)?);
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating pin directory {}", dir.display()))?;
    for name in names::ALL {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing stale pin {}", path.display()))?;
        }
        ebpf.map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map named {name}"))?
            .pin(&path)
            .with_context(|| format!("pinning map {name} at {}", path.display()))?;
    }
    Ok(())
}

/// Removes the pins `pin_all` made (and the directory if it is then empty).
pub fn unpin_all(dir: &Path) {
    for name in names::ALL {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
}

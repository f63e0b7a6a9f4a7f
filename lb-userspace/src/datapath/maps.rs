//! `BalancerMaps` owns the aya handles of every balancer map; nothing else touches them.
//!
//! It opens them from a freshly loaded object or from their bpffs pins.

use std::{collections::BTreeSet, path::Path};

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{Array, ArrayOfMaps, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
    Ebpf,
};
use lb_common::{
    hit_slot_retired_vip, maps as names, AddrKey, AddrMeta, Backend, ConnEntry, Counter, FlowKey,
    HitCounters, Settings, TrafficCounters, VipKey, VipMeta, VipSlot, VipTableHead,
    BPF_F_INNER_MAP, COUNTER_COUNT, HIT_SLOT_RETIRED, MAX_VIPS, VIP_TABLE_SLOTS,
};

use crate::model::vip_table::{self, Placed};

pub struct BalancerMaps {
    vip_table: Array<MapData, VipSlot>,
    vip_table_head: Array<MapData, VipTableHead>,
    rings: ArrayOfMaps<MapData, Array<MapData, u32>>,
    backends: Array<MapData, Backend>,
    conns: HashMap<MapData, FlowKey, ConnEntry>,
    vip_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    global_stats: PerCpuArray<MapData, u64>,
    hit_stats: PerCpuArray<MapData, HitCounters>,
    /// The `HIT_STATS` slots that can hold counts: every backend slot in use when the maps
    /// were opened or written since, and the retired slots holding any. Reading only these
    /// keeps a global read at a few lookups instead of 17k.
    hit_slots: BTreeSet<u32>,
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
        let mut maps = Self {
            conns_capacity,
            vip_table: typed(names::VIP_TABLE, get(names::VIP_TABLE)?)?,
            vip_table_head: typed(names::VIP_TABLE_HEAD, get(names::VIP_TABLE_HEAD)?)?,
            rings: typed(names::RINGS, get(names::RINGS)?)?,
            backends: typed(names::BACKENDS, get(names::BACKENDS)?)?,
            conns: typed(names::CONNS, conns)?,
            vip_stats: typed(names::VIP_STATS, get(names::VIP_STATS)?)?,
            backend_stats: typed(names::BACKEND_STATS, get(names::BACKEND_STATS)?)?,
            global_stats: typed(names::GLOBAL_STATS, get(names::GLOBAL_STATS)?)?,
            hit_stats: typed(names::HIT_STATS, get(names::HIT_STATS)?)?,
            settings: typed(names::SETTINGS, get(names::SETTINGS)?)?,
            hit_slots: BTreeSet::new(),
        };
        maps.hit_slots = maps.backends()?.into_iter().map(|(id, _)| id).collect();
        for slot in (0..MAX_VIPS)
            .map(hit_slot_retired_vip)
            .chain([HIT_SLOT_RETIRED])
        {
            if maps.hits(slot)? != HitCounters::default() {
                maps.hit_slots.insert(slot);
            }
        }
        Ok(maps)
    }

    pub fn set_settings(&mut self, settings: &Settings) -> anyhow::Result<()> {
        self.settings
            .set(0, settings, 0)
            .context("writing map SETTINGS")
    }

    pub fn settings(&self) -> anyhow::Result<Settings> {
        self.settings.get(&0, 0).context("reading map SETTINGS")
    }

    /// The live half of the VIP table and the seed it was placed with.
    pub fn vip_table(&self) -> anyhow::Result<Placed> {
        let head = self
            .vip_table_head
            .get(&0, 0)
            .context("reading map VIP_TABLE_HEAD")?;
        let half = head.half & 1;
        let base = half * VIP_TABLE_SLOTS;
        let slots = (base..base + VIP_TABLE_SLOTS)
            .map(|i| self.vip_table.get(&i, 0))
            .collect::<Result<_, _>>()
            .context("reading map VIP_TABLE")?;
        Ok(Placed {
            seed: head.seeds[half as usize],
            slots,
        })
    }

    /// Makes `placed` the live VIP table: written whole into the half packets do not read,
    /// then switched to in two head writes that each change only bytes no packet misreads
    /// (lb-common's `VipTableHead`).
    pub fn publish_vip_table(&mut self, placed: &Placed) -> anyhow::Result<()> {
        anyhow::ensure!(
            placed.slots.len() == VIP_TABLE_SLOTS as usize,
            "a VIP table half has {VIP_TABLE_SLOTS} slots, not {}",
            placed.slots.len()
        );
        let mut head = self
            .vip_table_head
            .get(&0, 0)
            .context("reading map VIP_TABLE_HEAD")?;
        let next = (head.half & 1) ^ 1;
        let base = next * VIP_TABLE_SLOTS;
        for (i, slot) in placed.slots.iter().enumerate() {
            self.vip_table
                .set(base + i as u32, slot, 0)
                .with_context(|| format!("writing VIP_TABLE[{}]", base + i as u32))?;
        }
        head.seeds[next as usize] = placed.seed;
        self.vip_table_head
            .set(0, head, 0)
            .context("writing the seed into VIP_TABLE_HEAD")?;
        head.half = next;
        self.vip_table_head
            .set(0, head, 0)
            .context("switching VIP_TABLE_HEAD to the new half")
    }

    /// The VIPs of the live table.
    pub fn vips(&self) -> anyhow::Result<Vec<(VipKey, VipMeta)>> {
        Ok(vip_table::vips_of(&self.vip_table()?.slots))
    }

    /// The addresses of the live table, with their `ADDR_*` flags.
    pub fn vip_addrs(&self) -> anyhow::Result<Vec<(AddrKey, AddrMeta)>> {
        Ok(vip_table::addrs_of(&self.vip_table()?.slots))
    }

    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> anyhow::Result<()> {
        if backend.state != lb_common::BACKEND_UNUSED {
            self.hit_slots.insert(id);
        }
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

    /// Reads back the ring of `vip_id` (tests). Opening an inner map by id needs
    /// CAP_SYS_ADMIN, so the agent itself never calls this (see `Written::adopt`).
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

    // Counters as users read them. An established flow's forwarded packets are counted in
    // its backend's `HIT_STATS` slot only (lb-common's `HitCounters`); every reader below adds
    // them back where the long path counts them, so a counter means the same whichever path
    // counted the packet.

    /// A VIP's traffic: its own counters, the hits of its `backends` (the ids whose
    /// `Backend::vip_id` is `vip_id`) and those of its removed backends.
    pub fn vip_counters(
        &self,
        vip_id: u32,
        backends: impl IntoIterator<Item = u32>,
    ) -> anyhow::Result<TrafficCounters> {
        let mut t = sum_traffic(&self.vip_stats, vip_id, names::VIP_STATS)?;
        let mut hits = self.hits(hit_slot_retired_vip(vip_id))?;
        for id in backends {
            let h = self.hits(id)?;
            hits.packets += h.packets;
            hits.bytes += h.bytes;
        }
        t.packets += hits.packets;
        t.bytes += hits.bytes;
        Ok(t)
    }

    /// [`Self::vip_counters`] for one VIP, finding its backends itself (walks `BACKENDS`: for
    /// tests and one-off reads; `xdplb stats` has the backends at hand).
    pub fn one_vip_counters(&self, vip_id: u32) -> anyhow::Result<TrafficCounters> {
        let backends = self.backends()?;
        let own = backends.iter().filter(|(_, b)| b.vip_id == vip_id);
        self.vip_counters(vip_id, own.map(|(id, _)| *id))
    }

    pub fn backend_counters(&self, id: u32) -> anyhow::Result<TrafficCounters> {
        let mut t = sum_traffic(&self.backend_stats, id, names::BACKEND_STATS)?;
        let h = self.hits(id)?;
        t.packets += h.packets;
        t.bytes += h.bytes;
        Ok(t)
    }

    /// Global outcome counters, summed over CPUs, in `Counter` order. A hit that lands in a
    /// backend's slot after the slot was freed (a packet in flight during the removal) is
    /// counted once the slot is reused.
    pub fn global_counters(&self) -> anyhow::Result<[u64; COUNTER_COUNT as usize]> {
        let mut out = [0u64; COUNTER_COUNT as usize];
        for c in Counter::ALL {
            let per_cpu = self
                .global_stats
                .get(&(c as u32), 0)
                .with_context(|| format!("reading GLOBAL_STATS[{}]", c.name()))?;
            out[c as usize] = per_cpu.iter().sum();
        }
        let mut hits = HitCounters::default();
        for slot in &self.hit_slots {
            hits += self.hits(*slot)?;
        }
        out[Counter::ConnHit as usize] += hits.packets - hits.stateless;
        out[Counter::TxForwarded as usize] += hits.packets;
        Ok(out)
    }

    /// One `HIT_STATS` slot, summed over CPUs.
    fn hits(&self, slot: u32) -> anyhow::Result<HitCounters> {
        let per_cpu = self
            .hit_stats
            .get(&slot, 0)
            .with_context(|| format!("reading HIT_STATS[{slot}]"))?;
        Ok(per_cpu.iter().fold(HitCounters::default(), |mut t, c| {
            t += *c;
            t
        }))
    }

    /// Moves the hits counted in slot `from` into slot `to`, per CPU, and zeroes `from`. Only
    /// for a slot the datapath no longer writes (a removed backend's) into one it never writes
    /// (a retired slot): no count can be lost between the read and the writes.
    fn move_hits(&mut self, from: u32, to: u32) -> anyhow::Result<()> {
        let src = self
            .hit_stats
            .get(&from, 0)
            .with_context(|| format!("reading HIT_STATS[{from}]"))?;
        if src.iter().all(|c| *c == HitCounters::default()) {
            return Ok(());
        }
        let dst = self
            .hit_stats
            .get(&to, 0)
            .with_context(|| format!("reading HIT_STATS[{to}]"))?;
        let sum: Vec<HitCounters> = src
            .iter()
            .zip(dst.iter())
            .map(|(a, b)| {
                let mut t = *a;
                t += *b;
                t
            })
            .collect();
        self.hit_stats
            .set(to, PerCpuValues::try_from(sum)?, 0)
            .with_context(|| format!("writing HIT_STATS[{to}]"))?;
        self.hit_slots.insert(to);
        self.hit_stats
            .set(from, zeroes()?, 0)
            .with_context(|| format!("zeroing HIT_STATS[{from}]"))
    }

    /// A backend of VIP `vip_id` left (its slot was just marked unused, so the datapath stops
    /// counting hits there): its hits stay in the VIP's totals.
    pub fn retire_backend_hits(&mut self, id: u32, vip_id: u32) -> anyhow::Result<()> {
        self.move_hits(id, hit_slot_retired_vip(vip_id))
    }

    /// Zeroes the counters of a VIP or backend slot before it is given to a new owner. Hits
    /// left in the slot move to the retired slot, so the global counters never go down.
    pub fn reset_vip_counters(&mut self, vip_id: u32) -> anyhow::Result<()> {
        self.move_hits(hit_slot_retired_vip(vip_id), HIT_SLOT_RETIRED)?;
        self.vip_stats
            .set(vip_id, zeroes()?, 0)
            .with_context(|| format!("resetting VIP_STATS[{vip_id}]"))
    }

    pub fn reset_backend_counters(&mut self, id: u32) -> anyhow::Result<()> {
        self.move_hits(id, HIT_SLOT_RETIRED)?;
        self.backend_stats
            .set(id, zeroes()?, 0)
            .with_context(|| format!("resetting BACKEND_STATS[{id}]"))
    }
}

/// All-zero per-CPU values of a counter type.
fn zeroes<T: aya::Pod + Default + Clone>() -> anyhow::Result<PerCpuValues<T>> {
    let cpus = nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
    Ok(PerCpuValues::try_from(vec![T::default(); cpus])?)
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
    crate::datapath::bpffs::mount_note(crate::datapath::bpffs::ensure(dir)?);
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

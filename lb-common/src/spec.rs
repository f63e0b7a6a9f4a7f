//! `MapSpec`: one map of an eBPF object as lb-common declares it (name, kind, sizes, capacity).

/// The kind of a BPF map, as lb-common names it (userspace maps it to aya's `MapType`; the
/// eBPF side declares the matching `btf_maps` type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_HASH`.
    Hash,
    /// `BPF_MAP_TYPE_ARRAY`.
    Array,
    /// `BPF_MAP_TYPE_LRU_HASH`.
    LruHash,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PerCpuArray,
    /// `BPF_MAP_TYPE_ARRAY_OF_MAPS` (the value is an inner map's fd, 4 bytes).
    ArrayOfMaps,
}

/// One map of an eBPF object: what the object declares and what a pinned copy must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// The map's name in the object (the identifier of its `#[btf_map]` static).
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    /// Capacity in the object; 0 when it is set at load time (then a pinned copy may have any).
    pub max_entries: u32,
}

impl MapSpec {
    pub(crate) const fn new<K, V>(name: &'static str, kind: MapKind, max_entries: u32) -> MapSpec {
        MapSpec {
            name,
            kind,
            key_size: core::mem::size_of::<K>() as u32,
            value_size: core::mem::size_of::<V>() as u32,
            max_entries,
        }
    }
}

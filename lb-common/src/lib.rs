//! The contract between xdplb's XDP program and its userspace: map names, capacities, key/value layouts, counter indices and the flow hash. Nothing here is duplicated elsewhere.
#![no_std]

pub mod hash;

pub use hash::{flow_hash, hash_words};

/// Map names, exactly as they appear in the eBPF object (the `#[btf_map]` statics in
/// `lb-ebpf/src/maps.rs` carry these identifiers; `tests` checks every name is in the object).
pub mod maps {
    /// `HashMap<VipKey, VipMeta>`: which (address, port, protocol) we balance.
    pub const VIPS: &str = "VIPS";
    /// `ArrayOfMaps<Array<u32>>`, indexed by `VipMeta::vip_id`: one Maglev table per VIP, replaced
    /// whole on every change so the datapath never sees a half-written table.
    pub const RINGS: &str = "RINGS";
    /// `Array<Backend>`, indexed by backend id.
    pub const BACKENDS: &str = "BACKENDS";
    /// `LruHashMap<FlowKey, ConnEntry>`: remembered flow → backend choices.
    pub const CONNS: &str = "CONNS";
    /// `PerCpuArray<TrafficCounters>`, indexed by `vip_id`.
    pub const VIP_STATS: &str = "VIP_STATS";
    /// `PerCpuArray<TrafficCounters>`, indexed by backend id.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// `PerCpuArray<u64>`, indexed by [`crate::Counter`].
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    /// Every map the balancer program owns, for pinning and for the object check.
    pub const ALL: [&str; 7] = [
        VIPS,
        RINGS,
        BACKENDS,
        CONNS,
        VIP_STATS,
        BACKEND_STATS,
        GLOBAL_STATS,
    ];
}

/// Program names (function names of the `#[xdp]` entry points).
pub mod programs {
    /// The balancer.
    pub const BALANCER: &str = "xdplb";
    /// A plain `XDP_PASS` program: native `XDP_TX` on a veth needs a program on the peer.
    pub const PASS: &str = "xdplb_pass";
}

/// Version of the pinned-state layout (map set, key/value layouts and their meaning). A
/// running datapath pinned under another version is refused, not reused: bump this whenever
/// anything in this file changes shape or meaning. `tests::layout_fingerprint` fails until
/// the fingerprint below is updated too, as a reminder.
pub const LAYOUT_VERSION: u32 = 2;

/// How many VIPs one balancer serves. `VIPS` costs ~(20+16+overhead≈96) B each: ~48 KiB.
pub const MAX_VIPS: u32 = 512;
/// How many backends in all (a backend of two VIPs counts twice). `BACKENDS` is 32 B each: 512 KiB;
/// `BACKEND_STATS` is 24 B per CPU each: 384 KiB per CPU.
pub const MAX_BACKENDS: u32 = 16384;
/// Default flow-table capacity (`flow_table_size` in the config overrides it at load time).
/// An LRU hash entry costs its key and value (48 B) plus ~56 B of kernel bookkeeping: ~100 MiB
/// for 1Mi flows. Stateless VIPs do not use it.
pub const DEFAULT_CONNS: u32 = 1 << 20;
/// Maglev table size the config uses when it names none; must be prime.
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// Largest Maglev table a VIP may ask for (4 MiB of `u32` entries).
pub const MAX_RING_SIZE: u32 = 1_048_573;
/// The template size of the inner ring map in the object. Inner maps are created with
/// `BPF_F_INNER_MAP`, which lets each VIP's ring have its own size (kernel ≥ 5.10, 4a8f87e60f6d).
pub const RING_TEMPLATE_SIZE: u32 = DEFAULT_RING_SIZE;
/// `BPF_F_INNER_MAP`: inner array maps of one outer map may differ in `max_entries`.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;

/// Ring slot value meaning "no backend": a VIP whose backends are all gone drops instead of
/// guessing.
pub const NO_BACKEND: u32 = u32::MAX;

pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `VipKey::port` value of a VIP that takes every port of its address and protocol.
pub const ALL_PORTS: [u8; 2] = [0, 0];

/// Key of `VIPS`. Addresses are 16 bytes for both families (IPv4 in the first 4, rest zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey {
    pub addr: [u8; 16],
    /// Destination port in network byte order, or [`ALL_PORTS`].
    pub port: [u8; 2],
    pub proto: u8,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// `VipMeta::flags`: hash the source address only (all of a client's flows go to one backend).
pub const VIP_HASH_SOURCE_IP: u32 = 1 << 0;
/// `VipMeta::flags`: never consult or fill the flow table for this VIP.
pub const VIP_STATELESS: u32 = 1 << 1;

/// `VipMeta::forwarding`: rewrite MACs and bounce the frame out of the same NIC.
pub const FORWARD_L2: u32 = 0;

/// Value of `VIPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipMeta {
    /// Index into `RINGS` and `VIP_STATS`.
    pub vip_id: u32,
    /// Entries in this VIP's ring (prime); the slot is `flow_hash % ring_size`.
    pub ring_size: u32,
    /// `VIP_*` flags.
    pub flags: u32,
    /// `FORWARD_*` mode.
    pub forwarding: u32,
}
const _: () = assert!(core::mem::size_of::<VipMeta>() == 16);

/// `Backend::state`: slot unused (or backend removed): flows pinned to it are re-steered.
pub const BACKEND_UNUSED: u8 = 0;
/// `Backend::state`: in the Maglev ring, takes new flows.
pub const BACKEND_ACTIVE: u8 = 1;
/// `Backend::state`: out of the ring, keeps the flows it already has.
pub const BACKEND_DRAINING: u8 = 2;
/// `Backend::state`: failed its health check: out of the ring, and flows pinned to it are
/// re-steered (its connections are gone; sending their packets there would black-hole them).
pub const BACKEND_DOWN: u8 = 3;

/// Whether flows may (still) be sent to a backend in `state`.
#[inline(always)]
pub const fn backend_serves(state: u8) -> bool {
    state == BACKEND_ACTIVE || state == BACKEND_DRAINING
}

/// Value of `BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr: [u8; 16],
    /// Where L2 forwarding sends the frame.
    pub mac: [u8; 6],
    pub family: u8,
    /// `BACKEND_*`.
    pub state: u8,
    /// The VIP this backend entry serves (a server behind two VIPs has two entries).
    pub vip_id: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 32);

/// Key of `CONNS`: the packet's 5-tuple as it arrived (destination = the VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Value of `CONNS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnEntry {
    pub backend_id: u32,
    pub vip_id: u32,
}
const _: () = assert!(core::mem::size_of::<ConnEntry>() == 8);

/// Value of `VIP_STATS` and `BACKEND_STATS` (per CPU; readers sum the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficCounters {
    pub packets: u64,
    /// Frame bytes as received (Ethernet header included).
    pub bytes: u64,
    /// Flow-table misses that picked this VIP/backend from the ring.
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<TrafficCounters>() == 24);

/// Index into `GLOBAL_STATS`: why a packet ended as it did. Every packet the balancer sees
/// increments exactly one of the `Pass*`/`Drop*`/`Tx*` outcomes; `Conn*` count lookups on the way.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Not IPv4/IPv6 (ARP, LLDP, ...), or a frame too short for Ethernet: handed to the stack.
    PassNotIp = 0,
    /// IP, but no VIP matches (protocols other than TCP/UDP included): the gateway's own traffic.
    PassNotVip = 1,
    /// IP whose ports this version cannot read: IPv4 fragments (of any protocol) and IPv6
    /// packets with extension headers, whatever their destination (MLD reports land here).
    /// Handed to the stack, never guessed.
    PassUnsupported = 2,
    /// Broken IP/TCP/UDP header (bad version/IHL/length, truncated L4, TCP data offset or UDP
    /// length past the IP packet): dropped, as the kernel would.
    DropMalformed = 3,
    /// VIP with no usable backend.
    DropNoBackend = 4,
    /// Forwarded to a backend.
    TxForwarded = 5,
    /// Flow table hit with a live backend.
    ConnHit = 6,
    /// Flow table miss (new flow, or evicted): Maglev decided.
    ConnMiss = 7,
    /// Flow table hit whose backend was removed: re-steered by Maglev.
    ConnResteer = 8,
    /// Flow table insert failed (the packet is still forwarded).
    ConnInsertFailed = 9,
    /// VIP traffic in a broadcast or multicast frame: routers send VIP traffic to our unicast
    /// MAC, so a group frame is not ours to bounce (it would leave with a group source MAC).
    PassNotUnicast = 10,
}

/// Number of `GLOBAL_STATS` slots.
pub const COUNTER_COUNT: u32 = 11;

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::PassNotIp,
        Counter::PassNotVip,
        Counter::PassUnsupported,
        Counter::DropMalformed,
        Counter::DropNoBackend,
        Counter::TxForwarded,
        Counter::ConnHit,
        Counter::ConnMiss,
        Counter::ConnResteer,
        Counter::ConnInsertFailed,
        Counter::PassNotUnicast,
    ];

    /// The name `xdplb stats` prints and scripts read.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassNotVip => "pass_not_vip",
            Counter::PassUnsupported => "pass_unsupported",
            Counter::DropMalformed => "drop_malformed",
            Counter::DropNoBackend => "drop_no_backend",
            Counter::TxForwarded => "tx_forwarded",
            Counter::ConnHit => "conn_hit",
            Counter::ConnMiss => "conn_miss",
            Counter::ConnResteer => "conn_resteer",
            Counter::ConnInsertFailed => "conn_insert_failed",
            Counter::PassNotUnicast => "pass_not_unicast",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all impls): `#[repr(C)]`, integers and byte arrays only, explicit padding, so every
    // bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipMeta {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::ConnEntry {}
    unsafe impl aya::Pod for super::TrafficCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_indexed_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{} out of order", c.name());
        }
    }

    /// Sizes of every map key/value and the counter count: if this changes, bump
    /// `LAYOUT_VERSION` and update the expected value.
    #[test]
    fn layout_fingerprint() {
        use core::mem::size_of;
        let fingerprint = [
            size_of::<VipKey>(),
            size_of::<VipMeta>(),
            size_of::<Backend>(),
            size_of::<FlowKey>(),
            size_of::<ConnEntry>(),
            size_of::<TrafficCounters>(),
            COUNTER_COUNT as usize,
            maps::ALL.len(),
        ];
        assert_eq!(
            (LAYOUT_VERSION, fingerprint),
            (2, [20, 16, 32, 40, 8, 24, 11, 7])
        );
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        use core::mem::{align_of, offset_of};
        assert_eq!(offset_of!(VipKey, proto), 18);
        assert_eq!(offset_of!(Backend, vip_id), 24);
        assert_eq!(offset_of!(FlowKey, proto), 36);
        assert_eq!(align_of::<TrafficCounters>(), 8);
    }
}

//! The contract between xdplb's XDP program and its userspace: map names, capacities, key/value layouts, counter indices and the flow hash. Nothing here is duplicated elsewhere.
#![no_std]

pub mod decap;
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
    /// `HashMap<AddrKey, AddrMeta>`: every address that has at least one VIP, whatever its
    /// ports. Fragments and ICMP echo requests carry no ports, so they are matched here.
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    /// `Array<Settings>` of one entry: balancer-wide values (tunnel source prefixes, MTU).
    pub const SETTINGS: &str = "SETTINGS";
    /// Every map the balancer program owns, for pinning and for the object check.
    pub const ALL: [&str; 9] = [
        VIPS,
        RINGS,
        BACKENDS,
        CONNS,
        VIP_STATS,
        BACKEND_STATS,
        GLOBAL_STATS,
        VIP_ADDRS,
        SETTINGS,
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
pub const LAYOUT_VERSION: u32 = 3;

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
pub const IPPROTO_ICMP: u8 = 1;
/// IPv4-in-IP (RFC 2003): the next header of a 4in4 or 4in6 tunnel packet.
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv6-in-IP (RFC 2473 / RFC 4213): the next header of a 6in6 or 6in4 tunnel packet.
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ICMPV6: u8 = 58;

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
/// `VipMeta::forwarding`: wrap the IP packet in an outer IPv4/IPv6 header addressed to the
/// backend (4in4, 6in6, 4in6, 6in4) and send it to the next hop toward it, out of the same NIC.
pub const FORWARD_IPIP: u32 = 1;

/// Outer IPv4 header of an encapsulated packet (no options).
pub const IPV4_HLEN: u32 = 20;
/// Outer IPv6 header of an encapsulated packet (no extension headers).
pub const IPV6_HLEN: u32 = 40;
/// Smallest `Settings::mtu` the agent accepts: an IPv6 inner packet of the IPv6 minimum MTU
/// (1280) must fit in a 6in6 packet, or "packet too big" could never be satisfied.
pub const MIN_TUNNEL_MTU: u32 = 1280 + IPV6_HLEN;
/// Time to live / hop limit of packets the balancer originates (outer headers, ICMP).
pub const ORIGIN_TTL: u8 = 64;

/// Key of `VIP_ADDRS`: an address that has VIPs (IPv4 in the first 4 bytes, rest zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AddrKey {
    pub addr: [u8; 16],
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

/// `AddrMeta::flags`: answer ICMP/ICMPv6 echo requests to this address from the balancer.
pub const ADDR_ANSWER_ECHO: u32 = 1 << 0;

/// Value of `VIP_ADDRS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddrMeta {
    /// `ADDR_*` flags.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<AddrMeta>() == 4);

/// The one value of `SETTINGS`. The outer source address of an encapsulated packet is the
/// prefix with its host bits taken from the flow hash: `src = prefix | (hash & host_mask)`,
/// applied to all 4 bytes of IPv4 and the last 4 bytes of IPv6 (so at most 32 host bits),
/// which lets a backend's NIC spread tunnelled flows over its receive queues (RSS hashes the
/// outer header).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    pub tunnel_src4: [u8; 4],
    /// Host bits of `tunnel_src4`, network order.
    pub tunnel_src4_host: [u8; 4],
    pub tunnel_src6: [u8; 16],
    /// Host bits of the last 4 bytes of `tunnel_src6`, network order.
    pub tunnel_src6_host: [u8; 4],
    /// Largest IP packet (outer header included) the balancer sends toward a backend in `ipip`
    /// mode. Bigger ones get "fragmentation needed"/"packet too big" back; 0 turns the check off.
    pub mtu: u32,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 32);

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
    /// Where the frame goes: the backend's MAC (`l2`) or the next hop's toward it (`ipip`).
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
    /// IP whose ports this version cannot read and that is not addressed to a VIP address:
    /// fragments, and IPv6 packets with extension headers (MLD reports land here). Also IPv6
    /// packets with extension headers other than a fragment header to a VIP address, and ICMP
    /// errors quoting a fragment. Handed to the stack, never guessed.
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
    /// A fragment (IPv4 MF or offset, IPv6 fragment header) addressed to a VIP address:
    /// dropped. Only the first fragment has ports, so the others could not be steered to the
    /// first one's backend without reassembly state; TCP never fragments (path-MTU discovery
    /// works through the balancer), and a wrong backend would be worse than a loss.
    DropFragment = 11,
    /// A packet too big to encapsulate within `Settings::mtu`: answered with ICMP
    /// "fragmentation needed" (IPv4 with DF) or ICMPv6 "packet too big", sent back to the client.
    TxIcmpTooBig = 12,
    /// Too big to encapsulate and not allowed to trigger path-MTU discovery (IPv4 without DF,
    /// or an ICMP error being steered): dropped. The balancer cannot fragment.
    DropTooBig = 13,
    /// An ICMP/ICMPv6 error quoting a VIP flow (path-MTU "too big" included) forwarded to the
    /// backend that owns that flow.
    TxIcmpSteered = 14,
    /// An ICMP/ICMPv6 echo request to a VIP address answered by the balancer (`icmp_echo`).
    TxIcmpEcho = 15,
}

/// Number of `GLOBAL_STATS` slots.
pub const COUNTER_COUNT: u32 = 16;

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
        Counter::DropFragment,
        Counter::TxIcmpTooBig,
        Counter::DropTooBig,
        Counter::TxIcmpSteered,
        Counter::TxIcmpEcho,
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
            Counter::DropFragment => "drop_fragment",
            Counter::TxIcmpTooBig => "tx_icmp_too_big",
            Counter::DropTooBig => "drop_too_big",
            Counter::TxIcmpSteered => "tx_icmp_steered",
            Counter::TxIcmpEcho => "tx_icmp_echo",
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
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::AddrMeta {}
    unsafe impl aya::Pod for super::Settings {}
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
            size_of::<AddrKey>(),
            size_of::<AddrMeta>(),
            size_of::<Settings>(),
            COUNTER_COUNT as usize,
            maps::ALL.len(),
        ];
        assert_eq!(
            (LAYOUT_VERSION, fingerprint),
            (3, [20, 16, 32, 40, 8, 24, 20, 4, 32, 16, 9])
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

//! The contract between xdplb's XDP program and its userspace.
//!
//! It defines, once for both sides, the map names, capacities, key/value layouts, counter indices
//! and the flow hash.
#![no_std]

#[macro_use]
mod table;

pub mod addr;
pub mod baselines;
pub mod decap;
pub mod hash;
pub mod history;
pub mod hits;
mod spec;
pub mod vip_table;

pub use hash::{flow_hash, hash_words};
pub use hits::{hit_slot_retired_vip, HitCounters, HIT_SLOTS, HIT_SLOT_RETIRED};
pub use spec::{MapKind, MapSpec};
pub use vip_table::{VipSlot, VipTableHead, VIP_TABLE_ENTRIES, VIP_TABLE_SLOTS};

/// Map names, exactly as they appear in the eBPF object (the `#[btf_map]` statics in
/// `lb-ebpf/src/bin/balancer/maps.rs` carry these identifiers; `tests` checks every name is in
/// the object).
pub mod maps {
    /// `Array<VipSlot>` of [`crate::VIP_TABLE_ENTRIES`]: which (address, port, protocol) we
    /// balance, and every address that has VIPs, placed by the agent (see [`crate::vip_table`]).
    pub const VIP_TABLE: &str = "VIP_TABLE";
    /// `Array<VipTableHead>` of one entry: which half of `VIP_TABLE` is live, and its seed.
    pub const VIP_TABLE_HEAD: &str = "VIP_TABLE_HEAD";
    /// `ArrayOfMaps<Array<u32>>`, indexed by `VipMeta::vip_id`: one Maglev table per VIP, replaced
    /// whole on every change so the datapath never sees a half-written table. Each slot holds
    /// its owner and previous owner ([`crate::history::ring_slot`]).
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
    /// `PerCpuArray<HitCounters>` of [`crate::HIT_SLOTS`] slots: the one counter an established
    /// flow's forwarded packet touches (see [`crate::HitCounters`]).
    pub const HIT_STATS: &str = "HIT_STATS";
    /// `Array<Settings>` of one entry: balancer-wide values (tunnel source prefixes, MTU).
    pub const SETTINGS: &str = "SETTINGS";
    /// Every map the balancer program owns, for pinning and for the object check
    /// (the names of [`crate::BALANCER_MAPS`]).
    pub const ALL: [&str; 10] = {
        let mut names = [""; 10];
        let mut i = 0;
        while i < names.len() {
            names[i] = crate::BALANCER_MAPS[i].name;
            i += 1;
        }
        names
    };
}

/// Every map of the balancer object: names, kinds, key/value sizes, capacities. Userspace checks
/// pinned maps against it; `lb-ebpf/src/bin/balancer/maps.rs` declares the same (the tests check
/// the names against the object).
pub const BALANCER_MAPS: [MapSpec; 10] = {
    use MapKind::*;
    [
        MapSpec::new::<u32, VipSlot>(maps::VIP_TABLE, Array, VIP_TABLE_ENTRIES),
        MapSpec::new::<u32, VipTableHead>(maps::VIP_TABLE_HEAD, Array, 1),
        // Outer map: the value is an inner ring's fd. Each inner ring is created by the agent
        // with the VIP's own size (`BPF_F_INNER_MAP`); the object's template has
        // `RING_TEMPLATE_SIZE`.
        MapSpec::new::<u32, u32>(maps::RINGS, ArrayOfMaps, MAX_VIPS),
        MapSpec::new::<u32, Backend>(maps::BACKENDS, Array, MAX_BACKENDS),
        // Set at load time from the config's `flow_table_size` (object default `DEFAULT_CONNS`).
        MapSpec::new::<FlowKey, ConnEntry>(maps::CONNS, LruHash, 0),
        MapSpec::new::<u32, TrafficCounters>(maps::VIP_STATS, PerCpuArray, MAX_VIPS),
        MapSpec::new::<u32, TrafficCounters>(maps::BACKEND_STATS, PerCpuArray, MAX_BACKENDS),
        MapSpec::new::<u32, u64>(maps::GLOBAL_STATS, PerCpuArray, Counter::COUNT),
        MapSpec::new::<u32, HitCounters>(maps::HIT_STATS, PerCpuArray, HIT_SLOTS),
        MapSpec::new::<u32, Settings>(maps::SETTINGS, Array, 1),
    ]
};

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
pub const LAYOUT_VERSION: u32 = 8;

/// How many VIPs one balancer serves. `VIP_TABLE` is a fixed 320 KiB whatever their number.
pub const MAX_VIPS: u32 = 512;
/// How many backends in all (a backend of two VIPs counts twice). `BACKENDS` is 40 B each: 640 KiB;
/// `BACKEND_STATS` is 24 B per CPU each: 384 KiB per CPU; `HIT_STATS` 16 B per CPU each: 264 KiB
/// per CPU.
pub const MAX_BACKENDS: u32 = 16384;
/// Default flow-table capacity (`flow_table_size` in the config overrides it at load time).
/// An LRU hash entry costs its key and value (40 + 16 B) plus ~56 B
/// of kernel bookkeeping: ~110 MiB for 1Mi flows. Stateless VIPs do not use it.
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

/// The address family of a map key or value. Wire values are the IP version numbers (4, 6),
/// not libc's `AF_INET`/`AF_INET6` (2, 10): the type keeps the two from being mixed up. A
/// transparent `u8`, so every bit pattern is a valid value (it stays `Pod`); values other
/// than [`Family::V4`] and [`Family::V6`] match nothing.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Family(pub u8);

impl Family {
    /// IPv4 (the address is in the first 4 bytes of a 16-byte field, the rest zero).
    pub const V4: Family = Family(4);
    /// IPv6.
    pub const V6: Family = Family(6);
}
const _: () = assert!(core::mem::size_of::<Family>() == 1);

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
    pub family: Family,
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

/// An address that has VIPs (IPv4 in the first 4 bytes, rest zero): the key of its address
/// entry in `VIP_TABLE` is [`vip_table::addr_entry_key`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AddrKey {
    pub addr: [u8; 16],
    pub family: Family,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

/// `AddrMeta::flags`: answer ICMP/ICMPv6 echo requests to this address from the balancer.
pub const ADDR_ANSWER_ECHO: u32 = 1 << 0;

/// What an address entry of `VIP_TABLE` says (its `meta.flags`).
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
    /// The interface's own MAC: only frames addressed to it (or to `virtual_mac`) are balanced,
    /// and it is the source MAC of every frame the balancer sends. A switch that floods
    /// unknown unicast delivers other hosts' frames too; bouncing those with their destination
    /// as our source would teach the switch that host's MAC on our port. All zero (never set)
    /// balances nothing.
    pub mac: [u8; 6],
    /// A second MAC the balancer answers for (a VRRP/keepalived virtual MAC); all zero = none.
    pub virtual_mac: [u8; 6],
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<Settings>() == 48);

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
    pub family: Family,
    /// `BACKEND_*`.
    pub state: u8,
    /// The VIP this backend entry serves (a server behind two VIPs has two entries).
    pub vip_id: u32,
    /// A hash of (VIP, backend address), copied into the flow-table entries pinned to it: ids
    /// are a function of the config's set, so a slot can change owner under a live flow, and
    /// an entry whose tag no longer matches is re-steered instead of sent to the new owner.
    pub tag: u32,
    /// Its VIP's `VipMeta::flags`, and below its `VipMeta::forwarding`: a flow-table hit reads
    /// this entry anyway (state and tag), so it learns here how to forward, without the VIP
    /// lookup. A hit on a backend whose VIP became stateless is not used.
    pub vip_flags: u32,
    pub vip_forwarding: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 40);

/// Key of `CONNS`: the packet's 5-tuple as it arrived (destination = the VIP). Aligned to 8
/// so the datapath can store and copy it in words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub family: Family,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Value of `CONNS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnEntry {
    pub backend_id: u32,
    /// `Backend::tag` of the backend when the flow was pinned to it.
    pub tag: u32,
    /// `flow_hash(key, false)`, computed when the flow was pinned: the tunnel source's host
    /// bits and the IPv6 flow label of its `ipip` packets, so a hit does not hash again.
    pub hash: u32,
    /// The ring slot's previous owner when the flow was pinned (second chance), or
    /// [`NO_BACKEND`]: every packet of the flow carries it, not only the first, so the
    /// backend can keep handing them to the host that has the connection. Free in memory:
    /// the kernel rounds a 12-byte value up to 16.
    pub previous: u32,
}
const _: () = assert!(core::mem::size_of::<ConnEntry>() == 16);

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

/// What the NIC does with a packet, whatever the program: hand it to the stack, drop it, or
/// send it back out of the NIC it came in on. Each program maps it to its hook's action code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    Tx,
}

counter_table! {
    counter Counter, outcome Outcome, event Event;
    // `GLOBAL_STATS`: every packet the balancer sees increments exactly one outcome; events
    // count the flow-table lookups on the way. Indices are the pinned map's slots (append
    // only, or bump `LAYOUT_VERSION`); names are what `xdplb stats` and the metrics print.
    outcomes {
        /// Not IPv4/IPv6 (ARP, LLDP, ...), or a frame too short for Ethernet: handed to the stack.
        PassNotIp = 0, "pass_not_ip", Pass;
        /// IP, but no VIP matches (protocols other than TCP/UDP included): the gateway's own
        /// traffic.
        PassNotVip = 1, "pass_not_vip", Pass;
        /// IP whose ports the program cannot read and that is not addressed to a VIP address:
        /// fragments, and IPv6 packets with extension headers (MLD reports land here). Also IPv6
        /// packets with extension headers other than a fragment header to a VIP address, and ICMP
        /// errors quoting a fragment. Handed to the stack, never guessed.
        PassUnsupported = 2, "pass_unsupported", Pass;
        /// Broken IP/TCP/UDP header (bad version/IHL/length, truncated L4, TCP data offset or UDP
        /// length past the IP packet): dropped, as the kernel would.
        DropMalformed = 3, "drop_malformed", Drop;
        /// VIP with no usable backend.
        DropNoBackend = 4, "drop_no_backend", Drop;
        /// Forwarded to a backend. An established flow's packet is counted in `HIT_STATS`
        /// instead (readers add it here; see [`HitCounters`]).
        TxForwarded = 5, "tx_forwarded", Tx;
        /// VIP traffic in a broadcast or multicast frame: routers send VIP traffic to our unicast
        /// MAC, so a group frame is not ours to bounce (it would leave with a group source MAC).
        PassNotUnicast = 10, "pass_not_unicast", Pass;
        /// A fragment (IPv4 MF or offset, IPv6 fragment header) addressed to a VIP address:
        /// dropped. Only the first fragment has ports, so the others could not be steered to the
        /// first one's backend without reassembly state; TCP never fragments (path-MTU discovery
        /// works through the balancer), and a wrong backend would be worse than a loss.
        DropFragment = 11, "drop_fragment", Drop;
        /// A packet too big to encapsulate within `Settings::mtu`: answered with ICMP
        /// "fragmentation needed" (IPv4 with DF) or ICMPv6 "packet too big", sent back to the
        /// client.
        TxIcmpTooBig = 12, "tx_icmp_too_big", Tx;
        /// Too big to encapsulate and not allowed to trigger path-MTU discovery (IPv4 without DF,
        /// or an ICMP error being steered): dropped. The balancer cannot fragment.
        DropTooBig = 13, "drop_too_big", Drop;
        /// An ICMP/ICMPv6 error quoting a VIP flow (path-MTU "too big" included) forwarded to the
        /// backend that owns that flow.
        TxIcmpSteered = 14, "tx_icmp_steered", Tx;
        /// An ICMP/ICMPv6 echo request to a VIP address answered by the balancer (`icmp_echo`).
        TxIcmpEcho = 15, "tx_icmp_echo", Tx;
        /// VIP traffic in a unicast frame addressed to another host's MAC (a switch flooding
        /// unknown unicast): not ours, handed to the stack, which drops it as PACKET_OTHERHOST.
        PassOtherHost = 16, "pass_other_host", Pass;
    }
    events {
        /// Flow table hit with a live backend. A hit that is forwarded is counted in `HIT_STATS`
        /// instead (readers add it here; see [`HitCounters`]).
        ConnHit = 6, "conn_hit";
        /// Flow table miss (new flow, or evicted): Maglev decided.
        ConnMiss = 7, "conn_miss";
        /// Flow table hit whose backend was removed: re-steered by Maglev.
        ConnResteer = 8, "conn_resteer";
        /// Flow table insert failed (the packet is still forwarded).
        ConnInsertFailed = 9, "conn_insert_failed";
    }
}

/// Number of `GLOBAL_STATS` slots: [`Counter::COUNT`], under the name its readers use.
pub const COUNTER_COUNT: u32 = Counter::COUNT;

#[cfg(feature = "user")]
mod user {
    // SAFETY (all impls): `#[repr(C)]`, integers and byte arrays only, explicit padding, so every
    // bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipSlot {}
    unsafe impl aya::Pod for super::VipTableHead {}
    unsafe impl aya::Pod for super::VipMeta {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::ConnEntry {}
    unsafe impl aya::Pod for super::TrafficCounters {}
    unsafe impl aya::Pod for super::HitCounters {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Family {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_indexed_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{} out of order", c.name());
        }
        assert_eq!(Counter::ALL.len(), COUNTER_COUNT as usize);
    }

    /// Each slot is either an outcome (with a verdict) or an event, never both or neither;
    /// names are unique, so a reader keyed by name sees every slot.
    #[test]
    fn every_counter_is_one_outcome_or_one_event_and_names_are_unique() {
        for c in Counter::ALL {
            let outcomes = Outcome::ALL.iter().filter(|o| o.counter() == c).count();
            let events = Event::ALL.iter().filter(|e| e.counter() == c).count();
            assert_eq!(outcomes + events, 1, "{}", c.name());
        }
        assert_eq!(Outcome::ALL.len() + Event::ALL.len(), Counter::ALL.len());
        for o in Outcome::ALL {
            assert_eq!(*o as u32, o.counter() as u32, "{:?}", o);
        }
        for e in Event::ALL {
            assert_eq!(*e as u32, e.counter() as u32, "{:?}", e);
        }
        for (i, a) in Counter::ALL.iter().enumerate() {
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }

    /// The names and verdicts readers depend on (`xdplb stats`, metrics, tests): a change here
    /// is a change of the pinned layout's meaning.
    #[test]
    fn counter_names_and_verdicts() {
        let names: [&str; 17] = Counter::ALL.map(Counter::name);
        assert_eq!(
            names,
            [
                "pass_not_ip",
                "pass_not_vip",
                "pass_unsupported",
                "drop_malformed",
                "drop_no_backend",
                "tx_forwarded",
                "conn_hit",
                "conn_miss",
                "conn_resteer",
                "conn_insert_failed",
                "pass_not_unicast",
                "drop_fragment",
                "tx_icmp_too_big",
                "drop_too_big",
                "tx_icmp_steered",
                "tx_icmp_echo",
                "pass_other_host",
            ]
        );
        for o in Outcome::ALL {
            let prefix = match o.verdict() {
                Verdict::Pass => "pass_",
                Verdict::Drop => "drop_",
                Verdict::Tx => "tx_",
            };
            assert!(o.counter().name().starts_with(prefix), "{:?}", o);
        }
        for e in Event::ALL {
            assert!(e.counter().name().starts_with("conn_"), "{:?}", e);
        }
    }

    #[test]
    fn map_specs_name_every_map_once() {
        assert!(maps::ALL.iter().all(|n| !n.is_empty()));
        for (i, a) in BALANCER_MAPS.iter().enumerate() {
            assert_eq!(maps::ALL[i], a.name);
            for b in &BALANCER_MAPS[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
        let conns = BALANCER_MAPS
            .iter()
            .find(|m| m.name == maps::CONNS)
            .unwrap();
        assert_eq!(
            (conns.key_size, conns.value_size, conns.max_entries),
            (40, 16, 0)
        );
        let global = BALANCER_MAPS
            .iter()
            .find(|m| m.name == maps::GLOBAL_STATS)
            .unwrap();
        assert_eq!(
            (global.kind, global.value_size, global.max_entries),
            (MapKind::PerCpuArray, 8, 17)
        );
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
            size_of::<HitCounters>(),
            size_of::<VipSlot>(),
            size_of::<VipTableHead>(),
            size_of::<Settings>(),
            COUNTER_COUNT as usize,
            maps::ALL.len(),
        ];
        assert_eq!(
            (LAYOUT_VERSION, fingerprint),
            (8, [20, 16, 40, 40, 16, 24, 24, 40, 12, 48, 17, 10])
        );
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        use core::mem::{align_of, offset_of};
        assert_eq!(offset_of!(VipKey, proto), 18);
        assert_eq!(offset_of!(Backend, vip_id), 24);
        assert_eq!(offset_of!(Backend, vip_forwarding), 36);
        assert_eq!(offset_of!(FlowKey, proto), 36);
        assert_eq!(offset_of!(FlowKey, family), 37);
        assert_eq!(offset_of!(Backend, family), 22);
        assert_eq!(align_of::<TrafficCounters>(), 8);
    }
}

//! The contract of the benchmark's baseline programs (`lb-ebpf/src/bin/baselines/`).
//!
//! It holds their program names, the map and value of the fixed-backend forwarder, and the tables
//! of the lookup and new-flow floors.

use crate::{MapKind, MapSpec, DEFAULT_RING_SIZE};

/// Does nothing (`XDP_PASS`): the cost of running any XDP program at all.
pub const PASS: &str = "baseline_pass";
/// Swaps the MACs and bounces the frame: the least an L2 forwarder does.
pub const MACSWAP: &str = "baseline_macswap";
/// Sends every frame to one fixed backend (destination MAC rewritten to it, source MAC to the
/// receiving interface's own, `XDP_TX`): the on-path floor of the end-to-end bench, a
/// direct-server-return hop that makes no choice and keeps no state.
pub const FIXED_FORWARD: &str = "baseline_fixed_forward";

/// MAC swap after one hit in an LRU hash keyed like xdplb's flow table (40 bytes: both
/// addresses at IPv6 width, ports, protocol, family): what any flow-table design pays at least
/// on a hit, on this kernel.
pub const LOOKUP40: &str = "baseline_lookup40";
/// The same with a 16-byte key (IPv4 addresses, ports, protocol, family): what a separate
/// IPv4 flow table would pay.
pub const LOOKUP16: &str = "baseline_lookup16";

/// What a new flow costs any balancer that remembers flows, at least: a flow-table miss
/// (40-byte key), one VIP lookup, one hash of the flow, one ring read, one insert, then the MAC
/// swap. Frames of a flow it already holds, or not for its one VIP, are passed.
pub const NEW_FLOW: &str = "baseline_new_flow";

/// `LruHash<[u64; 5], u32>` (40-byte keys) of [`LOOKUP_ENTRIES`]: [`LOOKUP40`]'s table.
pub const FLOWS40: &str = "FLOWS40";
/// `LruHash<[u64; 2], u32>` (16-byte keys) of [`LOOKUP_ENTRIES`]: [`LOOKUP16`]'s table.
pub const FLOWS16: &str = "FLOWS16";
/// `LruHash<[u64; 5], u32>` of [`LOOKUP_ENTRIES`] by default: [`NEW_FLOW`]'s flow table. The
/// bench loads it with the balancer's flow-table size, so both insert into tables alike.
pub const NEW_FLOWS: &str = "NEW_FLOWS";
/// `Hash<u64, u32>` of one entry: [`NEW_FLOW`]'s VIP ([`vip_key`]) and its ring's size.
pub const FLOOR_VIPS: &str = "FLOOR_VIPS";
/// `Array<u32>` of [`DEFAULT_RING_SIZE`]: [`NEW_FLOW`]'s ring, as large as a default VIP's,
/// so a random slot is as cold as in the balancer.
pub const FLOOR_RING: &str = "FLOOR_RING";

/// Ethernet, an IPv4 header without options and the ports: what the lookup floors key on.
pub const KEYED_BYTES: usize = 38;
/// Capacity of the lookup floors' tables.
pub const LOOKUP_ENTRIES: u32 = 1 << 16;

/// The key [`LOOKUP40`] looks up for an IPv4 TCP/UDP frame without options: source and
/// destination address (in the first 4 of 16 bytes each), the ports, protocol 6/17 and family
/// 4, laid out as xdplb's `FlowKey` is, from the frame's first [`KEYED_BYTES`]. The program
/// and the bench (which inserts the key) both call this. Built from whole words: a zeroed
/// 40-byte array compiles to a call of a `memset` subprogram, which would be timed too.
#[inline(always)]
pub fn key40(frame: &[u8; KEYED_BYTES]) -> [u64; 5] {
    let (src, dst, tail) = words(frame);
    [src, 0, dst, 0, tail]
}

/// [`key40`]'s 16-byte form: the addresses at IPv4 width.
#[inline(always)]
pub fn key16(frame: &[u8; KEYED_BYTES]) -> [u64; 2] {
    let (src, dst, tail) = words(frame);
    [src | dst << 32, tail]
}

/// [`NEW_FLOW`]'s VIP key for an IPv4 frame: destination address, destination port, protocol.
#[inline(always)]
pub fn vip_key(f: &[u8; KEYED_BYTES]) -> u64 {
    let dst = u32::from_le_bytes([f[30], f[31], f[32], f[33]]) as u64;
    let dport = u16::from_le_bytes([f[36], f[37]]) as u64;
    dst | dport << 32 | (f[23] as u64) << 48
}

/// [`NEW_FLOW`]'s flow hash: the cheapest that spreads a key over a ring (one multiply of the
/// folded words), so the floor holds no more hashing than any consistent-hash choice needs.
#[inline(always)]
pub fn floor_hash(k: &[u64; 5]) -> u32 {
    let folded = k[0] ^ k[1].rotate_left(21) ^ k[2].rotate_left(42) ^ k[3] ^ k[4];
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
}

/// Source address, destination address, and ports + protocol + family, as little-endian words.
#[inline(always)]
fn words(f: &[u8; KEYED_BYTES]) -> (u64, u64, u64) {
    let src = u32::from_le_bytes([f[26], f[27], f[28], f[29]]) as u64;
    let dst = u32::from_le_bytes([f[30], f[31], f[32], f[33]]) as u64;
    let ports = u32::from_le_bytes([f[34], f[35], f[36], f[37]]) as u64;
    (src, dst, ports | (f[23] as u64) << 32 | 4 << 40)
}

/// `Array<ForwardTarget>` of one entry: where [`FIXED_FORWARD`] sends frames. An all-zero
/// entry (never written) makes the program pass frames instead.
pub const FORWARD_TARGET: &str = "FORWARD_TARGET";

/// Every map of the baselines object.
pub const MAPS: [MapSpec; 6] = [
    MapSpec::new::<u32, ForwardTarget>(FORWARD_TARGET, MapKind::Array, 1),
    MapSpec::new::<[u64; 5], u32>(FLOWS40, MapKind::LruHash, LOOKUP_ENTRIES),
    MapSpec::new::<[u64; 2], u32>(FLOWS16, MapKind::LruHash, LOOKUP_ENTRIES),
    MapSpec::new::<[u64; 5], u32>(NEW_FLOWS, MapKind::LruHash, LOOKUP_ENTRIES),
    MapSpec::new::<u64, u32>(FLOOR_VIPS, MapKind::Hash, 1),
    MapSpec::new::<u32, u32>(FLOOR_RING, MapKind::Array, DEFAULT_RING_SIZE),
];

/// Value of [`FORWARD_TARGET`]: the backend's MAC address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ForwardTarget {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<ForwardTarget>() == 8);

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, byte arrays only, explicit padding: every bit pattern is valid.
unsafe impl aya::Pod for ForwardTarget {}

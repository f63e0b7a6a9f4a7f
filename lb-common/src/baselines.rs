//! The contract of the benchmark's baseline programs (`lb-ebpf/src/baselines.rs`): program names, and the map and value of the fixed-backend forwarder.

use crate::{MapKind, MapSpec};

/// Does nothing (`XDP_PASS`): the cost of running any XDP program at all.
pub const PASS: &str = "baseline_pass";
/// Swaps the MACs and bounces the frame: the least an L2 forwarder does.
pub const MACSWAP: &str = "baseline_macswap";
/// Sends every frame to one fixed backend (destination MAC rewritten to it, source MAC to the
/// receiving interface's own, `XDP_TX`): the on-path floor of the end-to-end bench, a
/// direct-server-return hop that makes no choice and keeps no state.
pub const FIXED_FORWARD: &str = "baseline_fixed_forward";

/// `Array<ForwardTarget>` of one entry: where [`FIXED_FORWARD`] sends frames. An all-zero
/// entry (never written) makes the program pass frames instead.
pub const FORWARD_TARGET: &str = "FORWARD_TARGET";

/// Every map of the baselines object.
pub const MAPS: [MapSpec; 1] = [MapSpec::new::<u32, ForwardTarget>(
    FORWARD_TARGET,
    MapKind::Array,
    1,
)];

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

//! Per-CPU counter slots as every program keeps them: one `u64` per outcome, sized by lb-common.

use aya_ebpf::btf_maps::PerCpuArray;

/// Adds one to slot `index` of `map` on this CPU.
#[inline(always)]
pub fn increment<const N: usize>(map: &PerCpuArray<u64, N>, index: u32) {
    // verifier: the index comes from a counter enum of lb-common whose every value is below
    // the map's size (checked there); the kernel bounds-checks it anyway.
    if let Some(slot) = map.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it, a plain add is enough.
        unsafe { *slot += 1 };
    }
}

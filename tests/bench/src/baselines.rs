//! The comparison programs every per-packet and throughput figure is a ratio against.
//!
//! An empty XDP_PASS and a minimal MAC swap, from lb-ebpf's baselines object; and pinning the
//! measuring thread to one CPU, so both sides of a ratio run alike.

use anyhow::{Context as _, Result};
use aya::Ebpf;
use lb_userspace::datapath::objects;

/// The floor of running any XDP program at all.
pub const PASS: &str = lb_common::baselines::PASS;
/// The least an L2 forwarder does: swap the MACs and XDP_TX.
pub const MACSWAP: &str = lb_common::baselines::MACSWAP;

/// Loads the baselines object and the programs `names` of it into the kernel.
pub fn load(names: &[&str]) -> Result<Ebpf> {
    load_sized(names, &[])
}

/// [`load`], with the maps named in `sizes` given that many entries.
pub fn load_sized(names: &[&str], sizes: &[(&str, u32)]) -> Result<Ebpf> {
    let mut loader = aya::EbpfLoader::new();
    for (map, entries) in sizes {
        loader.map_max_entries(map, *entries);
    }
    let mut baselines = loader
        .load(objects::BASELINES_OBJECT)
        .context("loading the baseline programs")?;
    for name in names {
        objects::program(&mut baselines, name)?
            .load()
            .with_context(|| format!("loading {name}"))?;
    }
    Ok(baselines)
}

/// Keeps this thread on CPU 0. BPF_PROG_TEST_RUN runs the program on the calling CPU, so
/// per-CPU maps and caches stay the same across runs; in live-frames mode the transmit and the
/// sink's NAPI (raised on the sending CPU) share that CPU too, so the rate is that of one core.
pub fn pin_to_cpu0() {
    pin_to_cpu(0);
}

/// Pins this thread to CPU 0 until dropped, then gives it back the CPUs it had. The
/// per-packet sections run on the bench's main thread: pinned for good, every later section
/// would inherit CPU 0 alone (the lab processes it spawns, HAProxy's thread count, the
/// throughput bench's CPU count).
pub struct PinnedToCpu0(Option<libc::cpu_set_t>);

impl PinnedToCpu0 {
    pub fn new() -> PinnedToCpu0 {
        // SAFETY: sched_getaffinity(2) on the calling thread into a zeroed local mask.
        let saved = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
                .then_some(set)
        };
        pin_to_cpu0();
        PinnedToCpu0(saved)
    }
}

impl Default for PinnedToCpu0 {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinnedToCpu0 {
    fn drop(&mut self) {
        if let Some(set) = &self.0 {
            // SAFETY: restores the mask read in `new` on the same thread.
            unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
            }
        }
    }
}

/// CPUs online (not this thread's affinity, which a pinned caller would have narrowed).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Keeps this thread on `cpu` (the throughput bench spreads its generator threads this way).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: plain sched_setaffinity(2) on the calling thread with a zeroed, then set, mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

//! What xdplb's XDP programs (balancer, decap, baselines) share: wire formats, checksums, parsing, encapsulation, ICMP answers, counters. Also the build-dependency that lets cargo re-run lb-userspace's eBPF build when lb-common changes.
#![no_std]

// The modules are eBPF code (aya-ebpf's XdpContext and maps): on the host, where this crate
// is only lb-userspace's build-dependency, the library is empty.
#[cfg(target_arch = "bpf")]
pub mod counters;
#[cfg(target_arch = "bpf")]
pub mod csum;
#[cfg(target_arch = "bpf")]
pub mod encap;
#[cfg(target_arch = "bpf")]
pub mod icmp;
#[cfg(target_arch = "bpf")]
pub mod parse;
#[cfg(target_arch = "bpf")]
pub mod wire;

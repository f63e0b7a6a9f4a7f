//! What xdplb's XDP programs (balancer, decap, baselines) share; the programs are in `src/bin/`.
//!
//! The packet's path through the library: [`wire`] (bounds-checked frame access, header
//! layouts), [`parse`] (what a frame is, with the header checks every program makes the same
//! way), [`encap`] and [`icmp`] (the frames the balancer writes), [`csum`], [`counters`]; and
//! [`program`], what every program has once (panic handler, licence, verdict → XDP action).
//!
//! On the host this crate is only lb-userspace's build-dependency (so cargo re-runs the eBPF
//! build when lb-common changes), and the library is empty: the modules are eBPF code.
#![no_std]

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
pub mod program;
#[cfg(target_arch = "bpf")]
pub mod wire;

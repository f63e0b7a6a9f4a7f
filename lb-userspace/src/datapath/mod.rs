//! The kernel side: loading, pinning and attaching the eBPF objects, and writing their maps.
//!
//! It holds the embedded eBPF objects, their pins and links, the balancer's maps, the reconciler
//! that writes them, and test runs.
pub mod balancer;
pub(crate) mod bpffs;
pub mod caps;
pub mod counters;
pub mod maps;
pub mod nic;
pub mod objects;
pub mod reconcile;
pub mod testrun;

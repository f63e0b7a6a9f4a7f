//! Empty library target: lets lb-userspace take a build-dependency on this crate, so cargo re-runs its eBPF build when lb-common changes.
#![no_std]

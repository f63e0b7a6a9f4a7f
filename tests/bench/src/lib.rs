//! `cargo xtask bench`: figures measured against baselines in the same run.
//!
//! Per-packet cost against the XDP floor, cost growth, forwarding throughput through a veth on
//! one and two CPUs, end to end against the on-path floor, direct, HAProxy and nftables with CPU
//! per connection, concurrent connections, control plane; written to a JSON and Markdown report
//! with SVG plots.

pub mod baselines;
pub mod conns;
pub mod control;
pub mod cpu;
pub mod e2e;
pub mod jit;
pub mod packet;
pub mod plots;
pub mod profile;
pub mod report;
pub mod throughput;

//! `cargo xtask bench`: figures measured against baselines in the same run (per-packet cost against the XDP floor, cost growth, end to end against direct/HAProxy/nftables, concurrent connections, control plane, forwarding throughput through a veth), written to a JSON and Markdown report with SVG plots.

pub mod baselines;
pub mod conns;
pub mod control;
pub mod e2e;
pub mod packet;
pub mod plots;
pub mod report;
pub mod throughput;

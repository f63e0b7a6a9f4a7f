//! xdplb's userspace as a library: the `xdplb` binary is a thin CLI over these modules, and the tests drive them directly.
pub mod agent;
pub mod api;
pub mod config;
pub mod decap;
pub mod health;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod neigh;
pub mod replay;
pub mod stats;

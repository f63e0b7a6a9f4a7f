//! xdplb's userspace as a library: the `xdplb` binary is `cli`, and the tests drive the rest.
//!
//! `agent` runs the balancer (its loop and state, the API, metrics, health checks, neighbours,
//! links, BIRD); `model` holds the pure parts (the desired map contents, ids, Maglev, plans);
//! `datapath` talks to the kernel (objects, pins, maps, the reconciler, test runs); `config`
//! is the YAML config and its validation; `cli` is the command line; `decap` the backends'
//! decapsulation program.
pub mod agent;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod decap;
pub mod exit;
pub mod logging;
pub mod model;

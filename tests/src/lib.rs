//! xdplb's test oracle and fixtures.
//!
//! The reference model of the datapath, the BPF_PROG_TEST_RUN fixture harness and the differential
//! test's packet generator; the namespace lab lives in `xdplb-lab`, the benchmarks in
//! `xdplb-bench`.

pub mod fixture;
pub mod model;
pub mod packets;

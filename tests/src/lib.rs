//! xdplb's test oracle and fixtures: the reference model of the datapath, the BPF_PROG_TEST_RUN fixture harness, and (for now) the benchmarks; the namespace lab lives in `xdplb-lab`.

pub mod bench;
pub mod fixture;
pub mod model;

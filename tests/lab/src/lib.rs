//! xdplb's namespace lab: builds a throw-away L2 segment of network namespaces (clients, a gateway for the balancer, DSR backends) for the demo, the end-to-end tests and the benchmarks, plus what its traffic tools share with their readers (reports, frames, the load engine).

pub mod container;
pub mod fleet;
pub mod frames;
pub mod histogram;
pub mod lab;
pub mod load;
pub mod netns;
pub mod reports;
pub mod scenario;
pub mod sys;
pub mod tshark;

pub use lab::{tool_path, DsrCounts, Lab, LabSpec};
pub use reports::{BurstReport, HoldReport};

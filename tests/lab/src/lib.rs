//! xdplb's namespace lab: throw-away network namespaces for the demo, the tests and the benchmarks.
//!
//! It builds an L2 segment of clients, a gateway for the balancer and DSR backends, and holds
//! what its traffic tools share with their readers (reports, frames, the load engine) and the
//! test configs (`configs`).

pub mod configs;
pub mod container;
pub mod fleet;
pub mod frames;
pub mod histogram;
pub mod hosts;
pub mod lab;
pub mod load;
pub mod netns;
pub mod reports;
pub mod scenario;
pub mod sys;
pub mod tshark;

pub use lab::{tool_path, DsrCounts, Lab, LabSpec};
pub use reports::{BurstReport, HoldReport};

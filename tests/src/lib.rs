//! xdplb's namespace lab: builds a throw-away L2 segment of network namespaces (clients, a gateway for the balancer, DSR backends) for the demo and the end-to-end tests.

pub mod bench;
pub mod fixture;
pub mod lab;
pub mod model;
pub mod netns;
pub mod reports;
pub mod scenario;
pub mod sys;
pub mod tshark;

pub use lab::{tool_path, DsrCounts, Lab, LabSpec};
pub use reports::{BurstReport, HoldReport};

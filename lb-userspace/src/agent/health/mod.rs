//! Backend health checks: TCP/HTTP probes with rise/fall hysteresis, reported to the agent.
//!
//! One tokio task probes each backend; up/down transitions go to the agent.
//!
//! The types shared by the parts live here; the hysteresis is `tracker`, one probe is `probe`, the
//! tasks and the one copy of the state are `monitor`.

use std::net::IpAddr;

mod monitor;
mod probe;
#[cfg(test)]
mod tests;
mod tracker;

pub use monitor::{HealthView, Monitor};
pub use probe::probe;
pub use tracker::Tracker;

/// One probed backend: identified by VIP name and backend address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub vip: String,
    pub backend: IpAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
}

/// A state change, sent to the agent.
#[derive(Clone, Debug)]
pub struct Transition {
    pub target: Target,
    pub health: Health,
    /// Why, e.g. "3 consecutive failures: connect to 10.0.0.1:80: Connection refused (os error
    /// 111)".
    pub reason: String,
}

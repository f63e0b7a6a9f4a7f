//! A VIP's health check: probe kind, path, status, timing, rise/fall and panic threshold.
//!
//! Each field's default and limits are here too.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A backend health probe, run from the balancer host against each backend's own address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "HealthCheckFields")]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    /// Port probed on the backend's address (often the VIP's port).
    pub port: u16,
    /// `http` only: the path requested with GET.
    pub path: String,
    /// `http` only: the status that counts as healthy.
    pub expect_status: u16,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take an up backend out.
    pub fall: u32,
    /// Below this share of healthy backends (percent of those not draining), the VIP is in
    /// panic: failed checks are ignored and it balances over all of them, as Envoy does. When
    /// most checks fail at once the fault is more likely the balancer's own (its link, its
    /// route) than the backends', and emptying the ring would break every connection. 0 turns
    /// it off.
    pub panic_threshold: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthCheckFields {
    kind: HealthCheckKind,
    port: u16,
    #[serde(default = "default_hc_path")]
    path: String,
    #[serde(default = "default_hc_status")]
    expect_status: u16,
    #[serde(default = "default_hc_interval", with = "humantime_serde")]
    interval: Duration,
    #[serde(default = "default_hc_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_hc_rise")]
    rise: u32,
    #[serde(default = "default_hc_fall")]
    fall: u32,
    #[serde(default = "default_hc_panic")]
    panic_threshold: u8,
}

fn default_hc_path() -> String {
    "/".into()
}
fn default_hc_status() -> u16 {
    200
}
fn default_hc_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_hc_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_hc_rise() -> u32 {
    2
}
fn default_hc_fall() -> u32 {
    3
}
fn default_hc_panic() -> u8 {
    50
}

impl TryFrom<HealthCheckFields> for HealthCheck {
    type Error = String;
    fn try_from(f: HealthCheckFields) -> Result<Self, String> {
        if f.port == 0 {
            return Err("health_check.port must be 1..=65535".into());
        }
        if f.interval < Duration::from_millis(100) || f.interval > Duration::from_secs(3600) {
            return Err(format!(
                "health_check.interval {:?} out of range 100ms..=1h",
                f.interval
            ));
        }
        if f.timeout.is_zero() || f.timeout > f.interval {
            return Err(format!(
                "health_check.timeout {:?} must be above zero and at most the interval {:?}",
                f.timeout, f.interval
            ));
        }
        if !(1..=100).contains(&f.rise) || !(1..=100).contains(&f.fall) {
            return Err("health_check.rise and fall must be 1..=100".into());
        }
        if !f.path.starts_with('/') || f.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "health_check.path {:?} must start with '/' and have no spaces",
                f.path
            ));
        }
        if f.panic_threshold > 100 {
            return Err(format!(
                "health_check.panic_threshold {} is a percentage: 0..=100 (0 turns panic off)",
                f.panic_threshold
            ));
        }
        if !(100..=599).contains(&f.expect_status) {
            return Err(format!(
                "health_check.expect_status {} is not an HTTP status",
                f.expect_status
            ));
        }
        Ok(HealthCheck {
            kind: f.kind,
            port: f.port,
            path: f.path,
            expect_status: f.expect_status,
            interval: f.interval,
            timeout: f.timeout,
            rise: f.rise,
            fall: f.fall,
            panic_threshold: f.panic_threshold,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// A TCP connect that completes within the timeout.
    Tcp,
    /// `GET path` over HTTP/1.1 answering `expect_status` within the timeout.
    Http,
}

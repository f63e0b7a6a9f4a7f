//! The `announce:` section: BIRD's control socket, the route file, and the withdraw delay.
//!
//! BIRD's config includes the route file. The delay is how long a graceful stop waits between
//! withdrawing the VIPs and detaching.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// Announcing the VIPs through BIRD (absent: this balancer announces nothing itself).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    /// BIRD's control socket (`bird -s`).
    #[serde(default = "default_bird_socket")]
    pub bird_socket: PathBuf,
    /// The file xdplb writes the announced routes to; BIRD's config includes it.
    #[serde(default = "default_routes_file")]
    pub routes_file: PathBuf,
    /// On a stop that detaches the program: how long to keep forwarding after withdrawing, so
    /// the routers move the flows to the other balancers first.
    #[serde(default = "default_withdraw_delay", with = "humantime_serde")]
    pub withdraw_delay: Duration,
}

fn default_bird_socket() -> PathBuf {
    PathBuf::from("/run/bird/bird.ctl")
}

fn default_routes_file() -> PathBuf {
    PathBuf::from("/var/lib/xdplb/bird/vips.conf")
}

fn default_withdraw_delay() -> Duration {
    Duration::from_secs(5)
}

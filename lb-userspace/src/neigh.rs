//! Backend MAC resolution from the kernel's neighbour table (ARP/ND), prompting the kernel to resolve when the entry is missing.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Deserialize;

use crate::config::MacAddr;

#[derive(Deserialize)]
struct NeighEntry {
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

/// Reads the neighbour entry of `addr` on `interface` with iproute2's JSON output (iproute2 is
/// a hard dependency of every XDP host anyway; its JSON is a stable interface).
fn lookup(interface: &str, addr: IpAddr) -> anyhow::Result<Option<MacAddr>> {
    let out = Command::new("ip")
        .args([
            "-j",
            "neigh",
            "show",
            "to",
            &addr.to_string(),
            "dev",
            interface,
        ])
        .output()
        .context("running `ip neigh` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "`ip neigh show dev {interface}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let entries: Vec<NeighEntry> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for e in entries {
        let usable = !e.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE");
        if let (true, Some(mac)) = (usable, e.lladdr) {
            if let Ok(mac) = mac.parse() {
                return Ok(Some(mac));
            }
        }
    }
    Ok(None)
}

/// The MAC of `addr` as seen from `interface`. When the kernel has no entry, a UDP datagram
/// to the discard port makes it resolve one (ARP or neighbour solicitation), and the table is
/// polled for up to `wait`.
pub fn resolve(interface: &str, addr: IpAddr, wait: Duration) -> anyhow::Result<MacAddr> {
    if let Some(mac) = lookup(interface, addr)? {
        return Ok(mac);
    }
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let deadline = Instant::now() + wait;
    let mut last_probe = None::<Instant>;
    while Instant::now() < deadline {
        if last_probe.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) {
            if let Ok(sock) = UdpSocket::bind(bind) {
                let _ = sock.send_to(b"", SocketAddr::new(addr, 9));
            }
            last_probe = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
        if let Some(mac) = lookup(interface, addr)? {
            return Ok(mac);
        }
    }
    bail!(
        "backend {addr} has no neighbour entry on {interface} after {:.1}s: is it up and on {interface}'s L2 segment? (or give its `mac:` in the config)",
        wait.as_secs_f64()
    )
}

//! Where frames toward a backend go: the next hop (kernel routing table) and its MAC (neighbour table, ARP/ND), prompting the kernel to resolve when an entry is missing.

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

/// Runs `ip -j ARGS` and returns its stdout (iproute2 is a hard dependency of every XDP host
/// anyway; its JSON output is a stable interface).
pub(crate) fn ip_json(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

#[derive(Deserialize)]
struct RouteEntry {
    dev: Option<String>,
    gateway: Option<IpAddr>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// The next hop toward `addr` by the kernel's routing table: its gateway, or `addr` itself
/// when it is on a connected subnet. The route must leave through `interface`, because the
/// balancer sends encapsulated packets back out of the NIC they arrived on.
pub fn next_hop(interface: &str, addr: IpAddr) -> anyhow::Result<IpAddr> {
    let out = ip_json(&["route", "get", &addr.to_string()])
        .with_context(|| format!("no route to backend {addr}"))?;
    let routes: Vec<RouteEntry> =
        serde_json::from_slice(&out).context("reading `ip -j route get` output")?;
    let r = routes
        .into_iter()
        .next()
        .with_context(|| format!("no route to backend {addr}"))?;
    if let Some(kind) = r.kind.as_deref().filter(|k| *k != "unicast") {
        bail!(
            "backend {addr} is routed as {kind}, not to a next hop: is it an address of this host?"
        );
    }
    match r.dev.as_deref() {
        Some(dev) if dev == interface => Ok(r.gateway.unwrap_or(addr)),
        Some(dev) => bail!(
            "backend {addr} is routed through {dev}, not {interface}: ipip packets leave through the interface the balancer runs on, so add a route to it via {interface}"
        ),
        None => bail!("backend {addr}: the route has no device"),
    }
}

/// The interface's MTU (`ip -j link show`).
pub fn interface_mtu(interface: &str) -> anyhow::Result<u32> {
    #[derive(Deserialize)]
    struct Link {
        mtu: u32,
    }
    let out = ip_json(&["link", "show", "dev", interface])?;
    let links: Vec<Link> = serde_json::from_slice(&out).context("reading `ip -j link` output")?;
    links
        .first()
        .map(|l| l.mtu)
        .with_context(|| format!("interface {interface} not found"))
}

/// Asks the kernel to (re)resolve `addr`'s MAC: a datagram to the discard port makes it send
/// ARP or a neighbour solicitation when the entry is missing or stale.
pub fn probe(addr: IpAddr) {
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    if let Ok(sock) = UdpSocket::bind(bind) {
        let _ = sock.send_to(b"", SocketAddr::new(addr, 9));
    }
}

/// Reads the neighbour entry of `addr` on `interface`: its MAC when usable, and whether the
/// kernel considers it confirmed (REACHABLE/PERMANENT/NOARP) rather than stale.
pub fn lookup_state(interface: &str, addr: IpAddr) -> anyhow::Result<Option<(MacAddr, bool)>> {
    let out = ip_json(&["neigh", "show", "to", &addr.to_string(), "dev", interface])?;
    let entries: Vec<NeighEntry> = serde_json::from_slice(&out).unwrap_or_default();
    for e in entries {
        let usable = !e.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE");
        if let (true, Some(mac)) = (usable, e.lladdr) {
            if let Ok(mac) = mac.parse() {
                let fresh = e
                    .state
                    .iter()
                    .any(|s| s == "REACHABLE" || s == "PERMANENT" || s == "NOARP");
                return Ok(Some((mac, fresh)));
            }
        }
    }
    Ok(None)
}

fn lookup(interface: &str, addr: IpAddr) -> anyhow::Result<Option<MacAddr>> {
    Ok(lookup_state(interface, addr)?.map(|(mac, _)| mac))
}

/// The MAC of `addr` as seen from `interface`. When the kernel has no entry, a UDP datagram
/// to the discard port makes it resolve one (ARP or neighbour solicitation), and the table is
/// polled for up to `wait`.
pub fn resolve(interface: &str, addr: IpAddr, wait: Duration) -> anyhow::Result<MacAddr> {
    if let Some(mac) = lookup(interface, addr)? {
        return Ok(mac);
    }
    let deadline = Instant::now() + wait;
    let mut last_probe = None::<Instant>;
    while Instant::now() < deadline {
        if last_probe.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) {
            probe(addr);
            last_probe = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
        if let Some(mac) = lookup(interface, addr)? {
            return Ok(mac);
        }
    }
    bail!(
        "{addr} has no neighbour entry on {interface} after {:.1}s: is it up and on {interface}'s L2 segment? (or give the backend's `mac:` in the config)",
        wait.as_secs_f64()
    )
}

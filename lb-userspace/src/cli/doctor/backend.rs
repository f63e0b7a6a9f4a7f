//! `xdplb doctor --backend`: the checks of a DSR backend.
//!
//! They cover its interface, every VIP on `lo`, the ARP settings that keep it from answering for a
//! VIP, rp_filter and, for `ipip`, that something unwraps the tunnel.

use std::{collections::BTreeSet, net::IpAddr, path::Path};

use super::{
    interface::{self, NamedBy},
    system::{self, Link},
    Finding,
};
use crate::config::{Config, Forwarding};

/// What strict reverse-path filtering costs on a backend.
const BACKEND_STRICT_DROPS: &str = "requests from clients that are not routed back through this interface are dropped (and, for tunnels the kernel's tunl0/ip6tnl0 unwrap, every request)";

/// The kernel's fallback tunnel devices that `deploy/backend-setup.sh --kernel-tunnel` brings up.
const KERNEL_TUNNELS: [&str; 3] = ["tunl0", "sit0", "ip6tnl0"];

/// Every backend check for `interface`. The VIPs are `vips`, or when none are given the
/// config's (whose `forwarding` also says whether to check decapsulation; `ipip` does for
/// `vips`).
pub fn checks(interface: &str, vips: &[IpAddr], ipip: bool, config_path: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    let (vips, ipip) = if vips.is_empty() {
        match Config::load(config_path) {
            Ok(cfg) => {
                let addrs: BTreeSet<IpAddr> = cfg.vips.iter().map(|v| v.address).collect();
                let list = addrs.iter().map(ToString::to_string).collect::<Vec<_>>();
                out.push(Finding::ok(
                    "config",
                    format!("VIPs from {}: {}", config_path.display(), list.join(", ")),
                ));
                let cfg_ipip = cfg.vips.iter().any(|v| v.forwarding == Forwarding::Ipip);
                (addrs.into_iter().collect(), ipip || cfg_ipip)
            }
            Err(e) => {
                out.push(Finding::fail(
                    "config",
                    format!("no --vip given, and the VIPs cannot be read from the config: {e:#}"),
                    "name the VIPs with --vip ADDR (repeatable), or point --config at the balancer's config",
                ));
                (Vec::new(), ipip)
            }
        }
    } else {
        (vips.to_vec(), ipip)
    };

    let (finding, link) = interface::present(interface, &NamedBy::Flag, false);
    out.push(finding);
    out.extend(vips_on_lo(&vips));
    if vips.iter().any(IpAddr::is_ipv4) {
        out.push(arp(interface, "arp_ignore", 1, "the backend answers ARP for a VIP on lo, so the router may send VIP traffic straight to it, past the balancer"));
        out.push(arp(interface, "arp_announce", 2, "the backend may use a VIP as the source of its own ARP requests, teaching its neighbours that the VIP is here"));
    }
    out.push(interface::rp_filter(interface, BACKEND_STRICT_DROPS));
    if ipip {
        out.push(decap(interface, link.as_ref()));
    }
    out
}

/// One finding per VIP: the kernel accepts packets addressed to the VIP only if it is local.
fn vips_on_lo(vips: &[IpAddr]) -> Vec<Finding> {
    const CHECK: &str = "vip-on-lo";
    let on_lo = match system::addresses("lo") {
        Ok(a) => a,
        Err(e) => {
            return vec![Finding::fail(
                CHECK,
                format!("cannot read the addresses of lo: {e:#}"),
                "install iproute2 (`ip` reads the addresses)",
            )]
        }
    };
    vips.iter()
        .map(|vip| {
            if on_lo.contains(vip) {
                Finding::ok(CHECK, format!("VIP {vip} is on lo"))
            } else {
                let len = if vip.is_ipv4() { 32 } else { 128 };
                Finding::fail(
                    CHECK,
                    format!("VIP {vip} is not on lo: the kernel drops the requests the balancer sends here"),
                    format!("ip addr add {vip}/{len} dev lo"),
                )
            }
        })
        .collect()
}

/// `arp_ignore` / `arp_announce`: the kernel applies the larger of `all` and the interface's
/// value (IN_DEV_MAXCONF), so `all` at `wanted` covers every interface.
fn arp(interface: &str, key: &'static str, wanted: i64, otherwise: &str) -> Finding {
    let all = system::ipv4_conf("all", key).unwrap_or(0);
    let dev = system::ipv4_conf(interface, key).unwrap_or(0);
    let effective = all.max(dev);
    let values = format!("all={all}, {interface}={dev}");
    if effective >= wanted {
        Finding::ok(
            key,
            format!("{key} is {effective} on {interface} ({values})"),
        )
    } else {
        Finding::fail(
            key,
            format!("{key} is {effective} on {interface} ({values}), not {wanted}: {otherwise}"),
            format!(
                "sysctl -w {}={wanted} (put it in /etc/sysctl.d/ to keep it; deploy/backend-setup.sh sets it)",
                system::ipv4_conf_name("all", key)
            ),
        )
    }
}

/// `ipip`: `xdplb decap` attached to the interface, or the kernel's tunnel devices up.
fn decap(interface: &str, link: Option<&Link>) -> Finding {
    const CHECK: &str = "decap";
    let decap = lb_common::decap::PROGRAM;
    let attached = link.map(Link::xdp_programs).unwrap_or_default();
    if let Some((prog, mode)) = attached
        .iter()
        .find(|(p, _)| p.name.as_deref() == Some(decap))
    {
        return Finding::ok(
            CHECK,
            format!(
                "{decap} (program id {}) is attached to {interface} in {} mode",
                prog.id,
                system::xdp_mode_name(*mode)
            ),
        );
    }
    let kernel: Vec<&str> = KERNEL_TUNNELS
        .into_iter()
        .filter(|d| matches!(system::link(d), Ok(Some(l)) if l.is_up()))
        .collect();
    if !kernel.is_empty() {
        return Finding::ok(
            CHECK,
            format!(
                "the kernel's tunnel devices unwrap IP-in-IP: {} up",
                kernel.join(", ")
            ),
        );
    }
    if let Some((other, _)) = attached.first() {
        return Finding::fail(
            CHECK,
            format!(
                "{interface} runs another XDP program ({}, id {}), not {decap}: tunnelled requests reach the stack still wrapped and are dropped",
                other.name.as_deref().unwrap_or("without a name"),
                other.id
            ),
            format!("remove it (`ip link set dev {interface} xdp off`, or its owner's detach), then `xdplb decap --interface {interface}`"),
        );
    }
    Finding::fail(
        CHECK,
        format!("nothing unwraps IP-in-IP on {interface}: no {decap} attached and none of the kernel's {} up, so tunnelled requests are dropped", KERNEL_TUNNELS.join(", ")),
        format!("xdplb decap --interface {interface} (or deploy/backend-setup.sh --kernel-tunnel VIP...)"),
    )
}

//! Announcing VIPs to the routers through BIRD.
//!
//! It decides which addresses this balancer should announce now, writes the BIRD include file that
//! lists them as static routes, and has BIRD reconfigure (`birdc configure`, over BIRD's socket)
//! when the list changes.
//!
//! BIRD owns the BGP sessions; xdplb only decides what is in the list. Routes live in BIRD's
//! configuration, so they survive an agent crash (the pinned program still forwards, so the
//! balancer should keep announcing) and are withdrawn only by a decision of the agent, or by
//! the routers when BIRD or the host dies (the BGP hold timer, or BFD).

pub mod bird;

use std::{collections::BTreeSet, net::IpAddr, path::PathBuf};

use anyhow::Context;

use crate::model::desired::Desired;

/// Names of the static protocols in the include file; the operator's BIRD config exports
/// them (`deploy/bird/balancer.conf`).
pub const PROTOCOL_V4: &str = "xdplb_vips4";
pub const PROTOCOL_V6: &str = "xdplb_vips6";

/// The addresses to announce: those with at least one VIP that has an active backend in its
/// ring. An address is withdrawn only when none of its VIPs can be served, because the
/// route carries every port of it.
pub fn servable(desired: &Desired) -> BTreeSet<IpAddr> {
    desired
        .vips
        .iter()
        .filter(|v| v.active > 0)
        .map(|v| lb_common::addr::ip_from_map(v.key.addr, v.key.family))
        .collect()
}

/// The include file BIRD reads: one static protocol per family with a host route per
/// announced address. `blackhole` because the route is only there to be exported; the
/// balancer's own kernel never uses it (the operator's config exports it to BGP only).
pub fn routes_text(addrs: &BTreeSet<IpAddr>) -> String {
    let mut v4 = String::new();
    let mut v6 = String::new();
    for a in addrs {
        match a {
            IpAddr::V4(a) => v4.push_str(&format!("  route {a}/32 blackhole;\n")),
            IpAddr::V6(a) => v6.push_str(&format!("  route {a}/128 blackhole;\n")),
        }
    }
    format!(
        "# Written by xdplb: the VIP addresses this balancer announces now. Do not edit.\n\
         protocol static {PROTOCOL_V4} {{\n  ipv4;\n{v4}}}\n\
         protocol static {PROTOCOL_V6} {{\n  ipv6;\n{v6}}}\n"
    )
}

/// The agent's side of the announcement: what BIRD was last told.
pub struct Announcer {
    routes_file: PathBuf,
    socket: PathBuf,
    /// What BIRD has applied, once it has been told anything by this agent.
    announced: Option<BTreeSet<IpAddr>>,
}

impl Announcer {
    pub fn from_config(cfg: &crate::config::Announce) -> Announcer {
        Announcer::new(cfg.routes_file.clone(), cfg.bird_socket.clone())
    }

    pub fn new(routes_file: PathBuf, socket: PathBuf) -> Announcer {
        Announcer {
            routes_file,
            socket,
            announced: None,
        }
    }

    /// What BIRD was last told to announce (None before the first successful update).
    pub fn announced(&self) -> Option<&BTreeSet<IpAddr>> {
        self.announced.as_ref()
    }

    /// Makes BIRD announce exactly `want`: writes the include file (atomically: BIRD never
    /// reads half of it) and asks BIRD to reconfigure. Does nothing when `want` is what BIRD
    /// already has. On an error the previous announcement stays in place in BIRD.
    pub fn update(&mut self, want: &BTreeSet<IpAddr>) -> anyhow::Result<bool> {
        if self.announced.as_ref() == Some(want) {
            return Ok(false);
        }
        // Reach BIRD before touching the file: a file BIRD was not told about would be
        // announced by whoever reconfigures BIRD next.
        let mut bird = bird::Bird::connect(&self.socket)?;
        let previous = std::fs::read_to_string(&self.routes_file).ok();
        self.write(&routes_text(want))?;
        if let Err(e) = bird.configure() {
            if let Some(previous) = previous {
                // Best effort: BIRD still runs the previous file's routes.
                let _ = self.write(&previous);
            }
            return Err(e);
        }
        self.announced = Some(want.clone());
        Ok(true)
    }

    /// Replaces the route file in one rename, so BIRD never reads half of it.
    fn write(&self, text: &str) -> anyhow::Result<()> {
        if let Some(dir) = self.routes_file.parent() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("creating the directory of {}", self.routes_file.display())
            })?;
        }
        let tmp = self.routes_file.with_extension("tmp");
        std::fs::write(&tmp, text)
            .with_context(|| format!("writing BIRD's route file {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.routes_file)
            .with_context(|| format!("replacing BIRD's route file {}", self.routes_file.display()))
    }
}

/// Before `xdplb detach` takes the datapath away: have BIRD withdraw the VIPs and keep
/// forwarding for `withdraw_delay`, as a graceful stop does. When BIRD cannot be reached it
/// is most likely not running, and then the routers have dropped its routes already: say so
/// and detach anyway.
pub fn withdraw_before_detach(cfg: &crate::config::Config) {
    let Some(a) = &cfg.announce else {
        return;
    };
    let mut announcer = Announcer::from_config(a);
    match announcer.update(&Default::default()) {
        Ok(_) => {
            println!(
                "VIPs withdrawn through BIRD; forwarding for {:?} more (announce.withdraw_delay)",
                a.withdraw_delay
            );
            std::thread::sleep(a.withdraw_delay);
        }
        Err(e) => eprintln!(
            "xdplb: warning: could not withdraw the VIPs through BIRD ({e:#}); if BIRD runs, routers still send traffic here"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_file_lists_each_family_in_its_protocol() {
        let addrs: BTreeSet<IpAddr> = ["10.201.0.10", "fd00:201::10", "10.201.0.11"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let text = routes_text(&addrs);
        assert!(text.contains("protocol static xdplb_vips4 {\n  ipv4;\n  route 10.201.0.10/32 blackhole;\n  route 10.201.0.11/32 blackhole;\n}"), "{text}");
        assert!(
            text.contains(
                "protocol static xdplb_vips6 {\n  ipv6;\n  route fd00:201::10/128 blackhole;\n}"
            ),
            "{text}"
        );
        // Nothing to announce still declares both protocols, so the operator's exports resolve.
        let empty = routes_text(&BTreeSet::new());
        assert!(
            empty.contains("protocol static xdplb_vips4 {\n  ipv4;\n}"),
            "{empty}"
        );
    }
}

//! `xdplb check`: validates a config and prints what it describes.
//!
//! With a running agent on the config's `api_socket`, it also prints what applying the config would
//! change.

use std::path::Path;

use crate::{
    agent::api::{self, Plan, Request},
    config::{BackendState, Config},
    model::addr::fmt_addr,
};

pub fn check(path: &Path) -> anyhow::Result<()> {
    let text = crate::config::read_text(path)?;
    let cfg = Config::from_yaml(&text, &path.display().to_string())?;
    println!("{}: valid", path.display());
    println!(
        "  interface {} ({} XDP), flow table {} entries, pins under {}",
        cfg.interface.as_str(),
        cfg.xdp_mode,
        cfg.flow_table_size.0,
        cfg.pin_path.display()
    );
    for vip in cfg.vips.iter() {
        let active = vip
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Active)
            .count();
        let draining = vip.backends.len() - active;
        println!(
            "  VIP {} {}:{}/{} {}, hash {}{}, ring {}: {active} active, {draining} draining backends",
            vip.name,
            fmt_addr(vip.address),
            vip.port,
            vip.protocol,
            vip.forwarding,
            vip.hash,
            if vip.stateless { ", stateless" } else { "" },
            vip.ring_size.0,
        );
    }
    // A socket nobody answers on is no agent: a crashed agent's socket must not fail the
    // check, which systemd runs before every (re)start.
    match api::nobody_answers(&cfg.api_socket)? {
        None => {
            let plan: Plan = api::call(&cfg.api_socket, &Request::Plan { config: text })?;
            println!("Against the running agent ({}):", cfg.api_socket.display());
            if plan.changes.is_empty() {
                println!("  no changes");
            }
            for c in plan.changes {
                println!("  {c}");
            }
        }
        // No socket at all is the normal first start (systemd runs this before it): quiet.
        Some(why) if why != api::NO_SOCKET => println!(
            "No agent answers on {} ({why}): nothing to compare with.",
            cfg.api_socket.display()
        ),
        Some(_) => {}
    }
    Ok(())
}

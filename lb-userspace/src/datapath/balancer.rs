//! The balancer's datapath on a gateway: load or adopt, attach, detach.
//!
//! It is loaded with its maps pinned, or adopted from a previous agent; it is attached through a
//! pinned link, so it can outlive the agent.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use aya::{maps::MapInfo, Ebpf, EbpfLoader};
use lb_common::{maps, programs, BALANCER_MAPS, LAYOUT_VERSION};

use super::{
    bpffs::mount_note,
    objects::{
        attach_link_pinned, check_pinned_layouts, program, Attached, StaleLink, EBPF_OBJECT,
    },
};
use crate::{config, exit::CannotStart};

/// Loads the object with a flow table of `flow_table_size` entries and verifies the balancer
/// program. Nothing is attached yet.
pub fn load_balancer(flow_table_size: u32) -> anyhow::Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(maps::CONNS, flow_table_size)
        .load(EBPF_OBJECT)
        .context("loading the xdplb eBPF object (maps and BTF) into the kernel")?;
    program(&mut ebpf, programs::BALANCER)?
        .load()
        .context("the kernel verifier rejected the xdplb program")?;
    Ok(ebpf)
}

/// Where the state of layout `LAYOUT_VERSION` is pinned under the configured `pin_path`.
/// Versioned so that an agent never reuses maps whose layout it does not know.
pub fn state_dir(pin_path: &Path) -> PathBuf {
    pin_path.join(format!("v{LAYOUT_VERSION}"))
}

/// What [`load_pinned`] found.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// True when the maps of a previous agent were reused (its flows, counters and rings).
    pub adopted: bool,
}

/// Loads the balancer with its maps pinned under [`state_dir`]. Maps already pinned there by a
/// previous agent (still forwarding, or killed) are checked against lb-common's layouts and
/// reused, so flow table and counters carry over; a layout mismatch or state of another layout
/// version is refused with the way out named.
pub fn load_pinned(pin_path: &Path, flow_table_size: u32) -> anyhow::Result<Loaded> {
    mount_note(crate::datapath::bpffs::ensure(pin_path)?);
    let dir = state_dir(pin_path);
    if let Ok(entries) = std::fs::read_dir(pin_path) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('v') && e.path() != dir {
                return Err(anyhow!(
                    "{} holds datapath state of layout {name}, this xdplb uses v{LAYOUT_VERSION}; \
                     run the matching xdplb, or `xdplb detach --pin-path {}` (stops forwarding until the new agent attaches)",
                    pin_path.display(),
                    pin_path.display()
                ))
                .context(CannotStart);
            }
        }
    }
    let adopted = dir.join(maps::VIP_TABLE).exists();
    let mut conns = flow_table_size;
    if adopted {
        if let Some(m) = check_pinned_layouts(&dir, &BALANCER_MAPS).first() {
            return Err(anyhow!(
                "{m}: refusing to reuse it; `xdplb detach --pin-path {}` removes the old state",
                pin_path.display()
            ))
            .context(CannotStart);
        }
        let path = dir.join(maps::CONNS);
        if path.exists() {
            let info = MapInfo::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            if info.max_entries() != flow_table_size {
                log::warn!(
                    "the running flow table has {} entries, the config asks for {flow_table_size}; keeping {} (the change takes effect after `xdplb detach`)",
                    info.max_entries(),
                    info.max_entries()
                );
                conns = info.max_entries();
            }
        }
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating pin directory {}", dir.display()))?;
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(maps::CONNS, conns);
    for spec in &BALANCER_MAPS {
        loader.map_pin_path(spec.name, dir.join(spec.name));
    }
    let mut ebpf = loader.load(EBPF_OBJECT).with_context(|| {
        format!(
            "loading the xdplb eBPF object with maps pinned under {}",
            dir.display()
        )
    })?;
    program(&mut ebpf, programs::BALANCER)?
        .load()
        .context("the kernel verifier rejected the xdplb program")?;
    Ok(Loaded { ebpf, adopted })
}

fn link_pin(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("link-{interface}"))
}

/// Attaches the balancer to `interface` through a pinned link. If a previous agent left a link
/// pinned there, the new program replaces the old one in that link atomically
/// (`bpf_link_update`): no packet sees the NIC without a program. Returns what happened.
pub fn attach_pinned(
    ebpf: &mut Ebpf,
    pin_path: &Path,
    interface: &str,
    mode: config::XdpMode,
) -> anyhow::Result<String> {
    let dir = state_dir(pin_path);
    let path = link_pin(&dir, interface);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(other) = name.strip_prefix("link-") {
                if other != interface {
                    bail!(
                        "the datapath pinned under {} is attached to {other}, the config names {interface}; \
                         `xdplb detach --pin-path {}` first",
                        dir.display(),
                        pin_path.display()
                    );
                }
            }
        }
    }
    match attach_link_pinned(
        ebpf,
        programs::BALANCER,
        interface,
        &path,
        mode,
        StaleLink::Fail,
    )? {
        Attached::Replaced => Ok(format!(
            "took over the running datapath on {interface} (program replaced atomically)"
        )),
        Attached::New(label) => Ok(format!("attached to {interface} ({label} XDP)")),
    }
}

/// Attaches the balancer again after its interface went away and came back: the pinned link
/// still names the old interface (the kernel detached it, `ENOLINK` on update), so it is
/// replaced by a new one on the interface of that name. The maps, pinned, keep their state.
pub fn reattach(
    ebpf: &mut Ebpf,
    pin_path: &Path,
    interface: &str,
    mode: config::XdpMode,
) -> anyhow::Result<String> {
    let path = link_pin(&state_dir(pin_path), interface);
    let attached = attach_link_pinned(
        ebpf,
        programs::BALANCER,
        interface,
        &path,
        mode,
        StaleLink::Replace,
    )?;
    Ok(match attached {
        Attached::Replaced => format!("attached to {interface} (the pinned link)"),
        Attached::New(label) => format!("re-attached to {interface} ({label} XDP)"),
    })
}

/// Removes the pinned state under `pin_path`: the link (which detaches the program once no
/// agent holds it) and the maps. Returns what was removed.
pub fn detach(pin_path: &Path) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let Ok(versions) = std::fs::read_dir(pin_path) else {
        return Ok(removed);
    };
    for v in versions.flatten() {
        let vdir = v.path();
        if let Ok(entries) = std::fs::read_dir(&vdir) {
            for e in entries.flatten() {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
                removed.push(e.path().display().to_string());
            }
        }
        let _ = std::fs::remove_dir(&vdir);
    }
    let _ = std::fs::remove_dir(pin_path);
    Ok(removed)
}

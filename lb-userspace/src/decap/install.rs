//! Installing `xdplb_decap` on an interface, and removing it again.
//!
//! Installing pins its maps, fills its address set and attaches the program through a pinned link.

use std::{net::IpAddr, path::Path};

use anyhow::{bail, Context as _};
use aya::{Ebpf, EbpfLoader};
use lb_common::decap::{MAPS, PROGRAM};

use super::{
    addrs::{choose_addrs, interface_addrs},
    check_interface_name, pin_dir, DecapMaps, LINK_PIN,
};
use crate::{
    config::XdpMode,
    datapath::objects::{self, Attached, StaleLink},
};

/// The kernel's index of `interface` in the current network namespace, or an error naming it.
fn ifindex(interface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(interface)
        .with_context(|| format!("interface name {interface:?} contains a NUL byte"))?;
    // SAFETY: a valid NUL-terminated string; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("interface {interface} does not exist (in this network namespace)");
    }
    Ok(index)
}

/// Loads the decap object (maps not pinned) and verifies its program: for fixtures and tests.
pub fn load() -> anyhow::Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .load(objects::DECAP_OBJECT)
        .context("loading the decap eBPF object (maps and BTF) into the kernel")?;
    objects::program(&mut ebpf, PROGRAM)?
        .load()
        .context("the kernel verifier rejected the xdplb_decap program")?;
    Ok(ebpf)
}

/// Removes pinned maps whose layout differs from this build's (left by an older xdplb). The
/// loader would otherwise reuse them as they are; their only state is the address set, which
/// is rewritten anyway, and counters, which restart. Returns what was replaced.
fn drop_stale_map_pins(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut replaced = Vec::new();
    for m in objects::check_pinned_layouts(dir, &MAPS) {
        std::fs::remove_file(&m.path)
            .with_context(|| format!("removing stale pin {}", m.path.display()))?;
        replaced.push(format!("replaced: {m}; its contents restart"));
    }
    Ok(replaced)
}

/// Loads `xdplb_decap` with its maps pinned under `<pin_path>/<interface>`, fills
/// `DECAP_ADDRS` (with `explicit`, or the interface's global addresses) and attaches the
/// program through a pinned link, so it stays attached after this process exits. When a link
/// is already pinned there, the new program replaces the old one in it atomically
/// (`bpf_link_update`): no packet meets the NIC without a program. Returns what was done.
pub fn install(
    pin_path: &Path,
    interface: &str,
    explicit: Option<&[IpAddr]>,
    mode: Option<XdpMode>,
) -> anyhow::Result<Vec<String>> {
    check_interface_name(interface)?;
    ifindex(interface)?;
    let wanted = choose_addrs(interface, &interface_addrs(interface)?, explicit)?;
    crate::datapath::bpffs::mount_note(crate::datapath::bpffs::ensure(pin_path)?);
    let dir = pin_dir(pin_path, interface);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating pin directory {}", dir.display()))?;
    let mut report = drop_stale_map_pins(&dir)?;

    let mut loader = EbpfLoader::new();
    for spec in &MAPS {
        loader.map_pin_path(spec.name, dir.join(spec.name));
    }
    let mut ebpf = loader.load(objects::DECAP_OBJECT).with_context(|| {
        format!(
            "loading the decap eBPF object with maps pinned under {}",
            dir.display()
        )
    })?;
    objects::program(&mut ebpf, PROGRAM)?
        .load()
        .context("the kernel verifier rejected the xdplb_decap program")?;
    // The address set is complete before the program is attached (or replaced): the new
    // program never sees a tunnel to an address that is still missing.
    let mut maps = DecapMaps::from_ebpf(&mut ebpf)?;
    let (added, removed) = maps.set_addrs(&wanted)?;

    let link_path = dir.join(LINK_PIN);
    let attached = objects::attach_link_pinned(
        &mut ebpf,
        PROGRAM,
        interface,
        &link_path,
        mode.unwrap_or_default(),
        StaleLink::Replace,
    )?;
    match attached {
        Attached::Replaced => {
            report.push(format!(
                "replaced the decap program on {interface} atomically (pinned link {})",
                link_path.display()
            ));
            if mode.is_some() {
                report.push(
                    "note: --xdp-mode does not change an existing attachment; its mode is kept (`--detach` first to change it)".to_owned(),
                );
            }
        }
        Attached::New(label) => report.push(format!(
            "attached {PROGRAM} to {interface} ({label} XDP), pinned link {}",
            link_path.display()
        )),
    }
    let list = |v: &[IpAddr]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    report.push(format!(
        "decapsulating IP-in-IP to {} ({} added, {} removed)",
        list(&wanted),
        added.len(),
        removed.len()
    ));
    if !removed.is_empty() {
        report.push(format!("no longer decapsulating for {}", list(&removed)));
    }
    report.push(format!(
        "maps pinned under {}; `xdplb decap --interface {interface} --stats` shows the counters",
        dir.display()
    ));
    Ok(report)
}

/// Removes the pinned link (which detaches the program once no process holds it) and the maps
/// of `interface`. Works when the interface is gone too. Returns what was removed.
pub fn detach(pin_path: &Path, interface: &str) -> anyhow::Result<Vec<String>> {
    check_interface_name(interface)?;
    let dir = pin_dir(pin_path, interface);
    let mut removed = Vec::new();
    // The link first: the program stops before its maps disappear from bpffs.
    for name in std::iter::once(LINK_PIN).chain(MAPS.iter().map(|m| m.name)) {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(path.display().to_string());
        }
    }
    // Only if empty: anything else in there is not ours to delete.
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_dir(pin_path);
    Ok(removed)
}

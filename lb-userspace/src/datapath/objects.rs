//! The eBPF objects embedded in the binary, and what any of their XDP programs needs.
//!
//! That is: load, attach, pin a link, and check pinned map layouts.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{MapInfo, MapType},
    programs::{
        links::{FdLink, PinnedLink},
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{maps, programs, MapKind, MapSpec};

use crate::config;

/// The eBPF object built by build.rs from lb-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Baseline programs for benchmarks (`baseline_pass`, `baseline_macswap`).
pub static BASELINES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baselines"));

/// The backends' decapsulation program (`xdplb decap`, lb-ebpf/src/bin/decap/main.rs).
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap"));

/// The XDP program `name` of a loaded object.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))
}

/// aya's name for a map kind of lb-common's specs.
pub fn map_type(kind: MapKind) -> MapType {
    match kind {
        MapKind::Hash => MapType::Hash,
        MapKind::Array => MapType::Array,
        MapKind::LruHash => MapType::LruHash,
        MapKind::PerCpuArray => MapType::PerCpuArray,
        MapKind::ArrayOfMaps => MapType::ArrayOfMaps,
    }
}

/// A map's type, key/value sizes and capacity as the kernel reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PinnedLayout {
    pub map_type: Option<MapType>,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl PinnedLayout {
    fn of(info: &MapInfo) -> PinnedLayout {
        PinnedLayout {
            map_type: info.map_type().ok(),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        }
    }

    /// Whether a map of this layout is one `spec` describes. A spec capacity of 0 is set at
    /// load time (`CONNS`), so any capacity matches it.
    pub fn matches(&self, spec: &MapSpec) -> bool {
        self.map_type == Some(map_type(spec.kind))
            && self.key_size == spec.key_size
            && self.value_size == spec.value_size
            && (spec.max_entries == 0 || self.max_entries == spec.max_entries)
    }
}

/// A pinned map that is not what its spec describes.
#[derive(Debug)]
pub struct LayoutMismatch {
    pub path: PathBuf,
    pub spec: MapSpec,
    /// What is pinned there, or why it could not be read as a map.
    pub found: Result<PinnedLayout, String>,
}

impl std::fmt::Display for LayoutMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.spec;
        let expected = format!(
            "{:?} key {} value {} entries {}",
            map_type(s.kind),
            s.key_size,
            s.value_size,
            match s.max_entries {
                0 => "any".to_owned(),
                n => n.to_string(),
            }
        );
        match &self.found {
            Ok(l) => write!(
                f,
                "pinned map {} is {:?} key {} value {} entries {}, expected {expected}",
                self.path.display(),
                l.map_type,
                l.key_size,
                l.value_size,
                l.max_entries
            ),
            Err(e) => write!(
                f,
                "pinned map {} cannot be read ({e}), expected {expected}",
                self.path.display()
            ),
        }
    }
}

/// Checks every map of `specs` pinned under `dir` against its spec (maps not pinned there are
/// fine: the loader creates them). Returns the ones that differ; what to do about them is the
/// caller's policy (the balancer refuses, decap replaces).
pub fn check_pinned_layouts(dir: &Path, specs: &[MapSpec]) -> Vec<LayoutMismatch> {
    specs
        .iter()
        .filter_map(|spec| {
            let path = dir.join(spec.name);
            if !path.exists() {
                return None;
            }
            let found = MapInfo::from_pin(&path)
                .map(|info| PinnedLayout::of(&info))
                .map_err(|e| e.to_string());
            match &found {
                Ok(layout) if layout.matches(spec) => None,
                _ => Some(LayoutMismatch {
                    path,
                    spec: *spec,
                    found,
                }),
            }
        })
        .collect()
}

/// What [`attach_link_pinned`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// The program replaced the previous one in the pinned link.
    Replaced,
    /// A new attachment in the mode named (`native`, `generic`), its link pinned.
    New(&'static str),
}

/// What [`attach_link_pinned`] does when a link is pinned but cannot take the new program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleLink {
    /// Fail: the link is a running datapath that must not be dropped behind the user's back.
    Fail,
    /// Remove the pin and attach anew (a link whose interface went away, ENOLINK, or a pin
    /// that is not a link): for programs whose only state is rewritten anyway.
    Replace,
}

/// Attaches the loaded XDP program `name` to `interface` through the link pinned at
/// `link_path`. If a link is pinned there, the program replaces the old one in it atomically
/// (`bpf_link_update`): no packet sees the NIC without a program, and `mode` is ignored (the
/// link keeps its mode). Otherwise the program is attached in `mode` and its link pinned, so it
/// stays attached after this process exits.
pub fn attach_link_pinned(
    ebpf: &mut Ebpf,
    name: &str,
    interface: &str,
    link_path: &Path,
    mode: config::XdpMode,
    stale: StaleLink,
) -> anyhow::Result<Attached> {
    let prog = program(ebpf, name)?;
    if link_path.exists() {
        let update = PinnedLink::from_pin(link_path)
            .with_context(|| format!("opening pinned link {}", link_path.display()))
            .and_then(|pinned| {
                aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned))
                    .with_context(|| format!("{} is not an XDP link", link_path.display()))
            })
            .and_then(|link| {
                prog.attach_to_link(link).with_context(|| {
                    format!("replacing the program in the pinned link on {interface}")
                })
            });
        match (update, stale) {
            (Ok(_), _) => return Ok(Attached::Replaced),
            (Err(e), StaleLink::Fail) => return Err(e),
            (Err(e), StaleLink::Replace) => {
                log::warn!("{e:#}; attaching anew");
                std::fs::remove_file(link_path)
                    .with_context(|| format!("removing stale pin {}", link_path.display()))?;
            }
        }
    }
    let (id, label) = attach_with_id(prog, name, interface, mode)?;
    let link = prog.take_link(id).context("taking the new XDP link")?;
    let fd = FdLink::try_from(link)
        .context("the kernel gave no bpf_link for XDP (kernel older than 5.9?)")?;
    fd.pin(link_path)
        .with_context(|| format!("pinning the XDP link at {}", link_path.display()))?;
    Ok(Attached::New(label))
}

/// Attaches the (loaded) program `name` to `interface`; returns the mode that took.
/// `auto` tries native first: generic XDP works everywhere but runs after the kernel has
/// allocated an skb, which costs most of XDP's advantage.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &str,
    interface: &str,
    mode: config::XdpMode,
) -> anyhow::Result<&'static str> {
    let prog = program(ebpf, name)?;
    attach_with_id(prog, name, interface, mode).map(|(_, label)| label)
}

/// [`attach`] for a program already borrowed, returning the link id too (to take and pin it).
pub fn attach_with_id(
    prog: &mut Xdp,
    name: &str,
    interface: &str,
    mode: config::XdpMode,
) -> anyhow::Result<(aya::programs::xdp::XdpLinkId, &'static str)> {
    let try_mode = |prog: &mut Xdp, m: XdpMode, label: &'static str| {
        prog.attach(interface, m)
            .map(|id| (id, label))
            .with_context(|| format!("attaching {name} to {interface} in {label} mode"))
    };
    match mode {
        config::XdpMode::Native => try_mode(prog, XdpMode::Driver, "native"),
        config::XdpMode::Generic => try_mode(prog, XdpMode::Skb, "generic"),
        config::XdpMode::Auto => match try_mode(prog, XdpMode::Driver, "native") {
            Ok(m) => Ok(m),
            Err(native) => {
                log::warn!("{native:#}; falling back to generic XDP (slower; try a driver with native XDP support)");
                try_mode(prog, XdpMode::Skb, "generic")
                    .map_err(|generic| anyhow!("{generic:#} (native failed first: {native:#})"))
            }
        },
    }
}

/// Loads the object with a minimal flow table and attaches the `XDP_PASS` program to
/// `interface` in native mode. Keep the returned `Ebpf` alive as long as it should stay attached.
/// Needed on the peer of a veth whose other end sends frames with native `XDP_TX`.
pub fn attach_pass(interface: &str) -> anyhow::Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(maps::CONNS, 1024)
        .load(EBPF_OBJECT)
        .context("loading the xdplb eBPF object")?;
    program(&mut ebpf, programs::PASS)?
        .load()
        .context("loading xdplb_pass")?;
    let mode = attach(
        &mut ebpf,
        programs::PASS,
        interface,
        config::XdpMode::Native,
    )?;
    if mode != "native" {
        bail!("xdplb_pass attached in {mode} mode");
    }
    Ok(ebpf)
}

//! Loading the embedded eBPF object, attaching its XDP programs, and the pinned state (maps and link) that lets a new agent take over a running datapath without dropping a packet.

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
use lb_common::{maps, programs, MapKind, MapSpec, BALANCER_MAPS, LAYOUT_VERSION};

use crate::{config, exit::CannotStart};

/// The eBPF object built by build.rs from lb-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Baseline programs for benchmarks (`baseline_pass`, `baseline_macswap`).
pub static BASELINES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baselines"));

/// The backends' decapsulation program (`xdplb decap`, lb-ebpf/src/decap.rs).
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap"));

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

/// The XDP program `name` of a loaded object.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))
}

/// Where the state of layout `LAYOUT_VERSION` is pinned under the configured `pin_path`.
/// Versioned so that an agent never reuses maps whose layout it does not know.
pub fn state_dir(pin_path: &Path) -> PathBuf {
    pin_path.join(format!("v{LAYOUT_VERSION}"))
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

/// What [`load_pinned`] found.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// True when the maps of a previous agent were reused (its flows, counters and rings).
    pub adopted: bool,
}

/// Logs a bpffs mount made for the pins: it belongs to this mount namespace, so state pinned
/// from a shell with its own (`ip netns exec`) is not seen from the host's `/sys/fs/bpf`.
pub fn mount_note(found: crate::bpffs::Bpffs) {
    if found == crate::bpffs::Bpffs::MountedNow {
        log::warn!(
            "bpffs was not mounted at {0}; mounted it there. Pinned state lives in this mount namespace (a shell from `ip netns exec` has its own {0})",
            crate::bpffs::DEFAULT_MOUNT
        );
    }
}

/// Loads the balancer with its maps pinned under [`state_dir`]. Maps already pinned there by a
/// previous agent (still forwarding, or killed) are checked against lb-common's layouts and
/// reused, so flow table and counters carry over; a layout mismatch or state of another layout
/// version is refused with the way out named.
pub fn load_pinned(pin_path: &Path, flow_table_size: u32) -> anyhow::Result<Loaded> {
    mount_note(crate::bpffs::ensure(pin_path)?);
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
    let adopted = dir.join(maps::VIPS).exists();
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

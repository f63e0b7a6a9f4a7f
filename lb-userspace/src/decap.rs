//! `xdplb decap`: loads the backends' IP-in-IP decapsulation program onto an interface, keeps it attached through a pinned link, fills its address set, detaches it and prints its counters.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{HashMap, Map, MapData, MapInfo, MapType, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
    Ebpf, EbpfLoader,
};
use lb_common::decap::{
    DecapAddr, DecapCounter, DECAP_ADDRS, DECAP_COUNTER_COUNT, DECAP_STATS, MAPS, MAX_DECAP_ADDRS,
    PROGRAM,
};
use serde::{Deserialize, Serialize};

use crate::{
    addr::{from_map as addr_from_bytes, to_map as addr_bytes},
    config::{InterfaceName, XdpMode},
    loader, maps,
};

/// Where `xdplb decap` pins its maps and link when `--pin-path` names no other place.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xdplb-decap";
/// Name of the pinned XDP link inside `<pin-path>/<interface>/`.
const LINK_PIN: &str = "link";
/// `statfs(2)` magic of bpffs (`BPF_FS_MAGIC`, include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `xdplb decap`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct DecapArgs {
    /// The interface tunnel packets arrive on.
    #[arg(long, short)]
    pub interface: String,
    /// A tunnel endpoint address to decapsulate for (repeatable). Default: every global-scope
    /// address of the interface.
    #[arg(long = "address", value_name = "ADDR", conflicts_with_all = ["detach", "stats"])]
    pub addresses: Vec<IpAddr>,
    /// auto (native, falling back to generic), native (driver) or generic (skb). Default: auto.
    #[arg(long, value_name = "MODE", value_parser = parse_xdp_mode, conflicts_with_all = ["detach", "stats"])]
    pub xdp_mode: Option<XdpMode>,
    /// bpffs directory; maps and link go to `<pin-path>/<interface>/`.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Remove the program (its pinned link) and maps from the interface.
    #[arg(long, conflicts_with = "stats")]
    pub detach: bool,
    /// Print the counters of the program attached to the interface.
    #[arg(long)]
    pub stats: bool,
    /// With --stats: one JSON object, for scripts.
    #[arg(long, requires = "stats")]
    pub json: bool,
}

fn parse_xdp_mode(s: &str) -> Result<XdpMode, String> {
    match s {
        "auto" => Ok(XdpMode::Auto),
        "native" => Ok(XdpMode::Native),
        "generic" => Ok(XdpMode::Generic),
        _ => Err(format!("{s:?} is not auto, native or generic")),
    }
}

/// Runs the `xdplb decap` command.
pub fn run(args: &DecapArgs) -> anyhow::Result<()> {
    check_interface_name(&args.interface)?;
    if args.stats {
        require_privileges(false)?;
        let report = stats(&args.pin_path, &args.interface)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.table());
        }
        return Ok(());
    }
    if args.detach {
        require_privileges(true)?;
        let removed = detach(&args.pin_path, &args.interface)?;
        if removed.is_empty() {
            println!(
                "nothing pinned under {}",
                pin_dir(&args.pin_path, &args.interface).display()
            );
        }
        for r in removed {
            println!("removed {r}");
        }
        return Ok(());
    }
    require_privileges(true)?;
    let explicit = (!args.addresses.is_empty()).then_some(args.addresses.as_slice());
    for line in install(&args.pin_path, &args.interface, explicit, args.xdp_mode)? {
        println!("{line}");
    }
    Ok(())
}

/// `<pin-path>/<interface>`: one directory per interface, so one host can decapsulate on
/// several NICs with the same `--pin-path`.
pub fn pin_dir(pin_path: &Path, interface: &str) -> PathBuf {
    pin_path.join(interface)
}

/// Interface names become a path component: refuse anything that is not one.
fn check_interface_name(name: &str) -> anyhow::Result<()> {
    // The config's rule, so `xdplb run` and `xdplb decap` accept the same names.
    InterfaceName::try_from(name.to_owned()).map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

/// Loading an XDP program needs CAP_BPF (or CAP_SYS_ADMIN), attaching it CAP_NET_ADMIN; a
/// clear message up front beats the kernel's EPERM from the middle of the load.
fn require_privileges(attach: bool) -> anyhow::Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(caps) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        // No procfs: let the kernel say what is missing.
        return Ok(());
    };
    let has = |cap: u32| caps & (1 << cap) != 0;
    let load = has(CAP_BPF) || has(CAP_SYS_ADMIN);
    if !load || (attach && !has(CAP_NET_ADMIN)) {
        bail!(
            "xdplb decap needs root (CAP_BPF or CAP_SYS_ADMIN{}): run it with sudo",
            if attach { ", and CAP_NET_ADMIN" } else { "" }
        );
    }
    Ok(())
}

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

/// Fails unless `pin_path` is (or would be created) on a bpffs: pins elsewhere fail with a
/// bare EPERM, and a plain directory where bpffs should be mounted is a common set-up slip.
fn require_bpffs(pin_path: &Path) -> anyhow::Result<()> {
    let mut existing = pin_path;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{} contains a NUL byte", existing.display()))?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut fs) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", existing.display()));
    }
    // `f_type` is i64 on x86_64, a narrower integer on some other targets.
    if fs.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a bpffs, so the program cannot stay attached after this command exits; \
             mount one (`mount -t bpf bpf /sys/fs/bpf`) or give --pin-path a directory on one",
            pin_path.display()
        );
    }
    Ok(())
}

/// One address of `ip -j addr show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub addr: IpAddr,
    /// `global`, `link`, `host`, `site` (iproute2's words).
    pub scope: String,
}

#[derive(Deserialize)]
struct IpLinkJson {
    #[serde(default)]
    addr_info: Vec<AddrInfoJson>,
}

#[derive(Deserialize)]
struct AddrInfoJson {
    local: Option<String>,
    scope: Option<String>,
}

/// Parses the output of `ip -j addr show dev IF`. Entries without an address (older iproute2
/// prints lifetimes as objects of their own) are skipped; an address that does not parse is an
/// error, not silently lost.
pub fn parse_ip_addr_json(json: &[u8]) -> anyhow::Result<Vec<InterfaceAddr>> {
    let links: Vec<IpLinkJson> =
        serde_json::from_slice(json).context("`ip -j addr` printed something that is not JSON")?;
    let mut out = Vec::new();
    for info in links.into_iter().flat_map(|l| l.addr_info) {
        let Some(local) = info.local else { continue };
        let addr = local
            .parse()
            .with_context(|| format!("`ip -j addr` listed {local:?}, not an IP address"))?;
        out.push(InterfaceAddr {
            addr,
            scope: info.scope.unwrap_or_default(),
        });
    }
    Ok(out)
}

/// The addresses a tunnel may be sent to by default: the global-scope ones (link-local and
/// host-scope addresses are not what a balancer targets).
pub fn global_addrs(addrs: &[InterfaceAddr]) -> Vec<IpAddr> {
    addrs
        .iter()
        .filter(|a| a.scope == "global")
        .map(|a| a.addr)
        .collect()
}

/// Every address of `interface`, read with iproute2's JSON output (iproute2 is on every XDP
/// host anyway, see neigh.rs).
fn interface_addrs(interface: &str) -> anyhow::Result<Vec<InterfaceAddr>> {
    parse_ip_addr_json(&crate::neigh::ip_json(&["addr", "show", "dev", interface])?)
}

/// The address set to install: `explicit` (warning about any the interface does not hold,
/// since tunnels to it only reach this program if they arrive on `interface`), else the
/// interface's global addresses. Deduplicated, sorted, at most `MAX_DECAP_ADDRS`.
fn choose_addrs(
    interface: &str,
    on_interface: &[InterfaceAddr],
    explicit: Option<&[IpAddr]>,
) -> anyhow::Result<Vec<IpAddr>> {
    let chosen: BTreeSet<IpAddr> = match explicit {
        Some(list) => {
            for a in list {
                if !on_interface.iter().any(|i| i.addr == *a) {
                    log::warn!(
                        "{a} is not an address of {interface}: tunnels to it are decapsulated only if they arrive on {interface}"
                    );
                }
            }
            list.iter().copied().collect()
        }
        None => global_addrs(on_interface).into_iter().collect(),
    };
    if chosen.is_empty() {
        bail!(
            "{interface} has no global-scope address to decapsulate tunnels for; add one, or name the tunnel endpoints with --address"
        );
    }
    if chosen.len() > MAX_DECAP_ADDRS as usize {
        bail!(
            "{} addresses, but the decap program holds at most {MAX_DECAP_ADDRS}; name the tunnel endpoints with --address",
            chosen.len()
        );
    }
    Ok(chosen.into_iter().collect())
}

/// The key of `addr` in `DECAP_ADDRS`.
pub fn decap_key(addr: IpAddr) -> DecapAddr {
    let (bytes, family) = addr_bytes(addr);
    DecapAddr {
        addr: bytes,
        family,
        _pad: [0; 3],
    }
}

/// The aya handles of the decap program's maps; nothing else touches them.
pub struct DecapMaps {
    addrs: HashMap<MapData, DecapAddr, u32>,
    stats: PerCpuArray<MapData, u64>,
}

impl DecapMaps {
    /// Takes the maps out of a loaded decap object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Self::from_source(&mut |name| maps::take(ebpf, name))
    }

    /// Opens the maps pinned under `dir` (`<pin-path>/<interface>`).
    pub fn from_pins(dir: &Path) -> anyhow::Result<Self> {
        Self::from_source(&mut |name| {
            maps::open_pinned(
                dir,
                name,
                "is `xdplb decap` attached with this --interface and --pin-path?",
            )
        })
    }

    fn from_source(get: &mut dyn FnMut(&str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        Ok(Self {
            addrs: maps::typed(DECAP_ADDRS, get(DECAP_ADDRS)?)?,
            stats: maps::typed(DECAP_STATS, get(DECAP_STATS)?)?,
        })
    }

    /// The addresses in `DECAP_ADDRS`, sorted.
    pub fn addrs(&self) -> anyhow::Result<Vec<IpAddr>> {
        let mut out: Vec<IpAddr> = self
            .addrs
            .keys()
            .map(|k| k.map(|k| addr_from_bytes(k.addr, k.family)))
            .collect::<Result<_, _>>()
            .context("reading map DECAP_ADDRS")?;
        out.sort();
        Ok(out)
    }

    /// Makes `DECAP_ADDRS` exactly `wanted`: new addresses are inserted before stale ones are
    /// removed, so an address in both the old and the new set is never missing. Returns the
    /// (added, removed) addresses.
    pub fn set_addrs(&mut self, wanted: &[IpAddr]) -> anyhow::Result<(Vec<IpAddr>, Vec<IpAddr>)> {
        let current = self.addrs()?;
        let mut added = Vec::new();
        for a in wanted {
            if !current.contains(a) {
                self.addrs
                    .insert(decap_key(*a), 0, 0)
                    .with_context(|| format!("adding {a} to map DECAP_ADDRS"))?;
                added.push(*a);
            }
        }
        let mut removed = Vec::new();
        for a in current {
            if !wanted.contains(&a) {
                self.addrs
                    .remove(&decap_key(a))
                    .with_context(|| format!("removing {a} from map DECAP_ADDRS"))?;
                removed.push(a);
            }
        }
        Ok((added, removed))
    }

    /// Every counter, summed over the CPUs, in [`DecapCounter`] order.
    pub fn counters(&self) -> anyhow::Result<[u64; DECAP_COUNTER_COUNT as usize]> {
        let mut out = [0u64; DECAP_COUNTER_COUNT as usize];
        for c in DecapCounter::ALL {
            let per_cpu = self
                .stats
                .get(&(c as u32), 0)
                .with_context(|| format!("reading {DECAP_STATS}[{}]", c.name()))?;
            out[c as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }
}

/// Loads the decap object (maps not pinned) and verifies its program: for fixtures and tests.
pub fn load() -> anyhow::Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .load(loader::DECAP_OBJECT)
        .context("loading the decap eBPF object (maps and BTF) into the kernel")?;
    loader::program(&mut ebpf, PROGRAM)?
        .load()
        .context("the kernel verifier rejected the xdplb_decap program")?;
    Ok(ebpf)
}

/// The map type, key, value size and capacity lb-common defines for each decap map.
fn expected_layout(name: &str) -> (MapType, u32, u32, u32) {
    use core::mem::size_of;
    if name == DECAP_ADDRS {
        (
            MapType::Hash,
            size_of::<DecapAddr>() as u32,
            4,
            MAX_DECAP_ADDRS,
        )
    } else {
        (MapType::PerCpuArray, 4, 8, DECAP_COUNTER_COUNT)
    }
}

/// Removes pinned maps whose layout differs from this build's (left by an older xdplb). The
/// loader would otherwise reuse them as they are; their only state is the address set, which
/// is rewritten anyway, and counters, which restart. Returns what was replaced.
fn drop_stale_map_pins(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut replaced = Vec::new();
    for name in MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let found = MapInfo::from_pin(&path).ok().map(|i| {
            (
                i.map_type().ok(),
                i.key_size(),
                i.value_size(),
                i.max_entries(),
            )
        });
        let (kind, key, value, max) = expected_layout(name);
        if found != Some((Some(kind), key, value, max)) {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing stale pin {}", path.display()))?;
            replaced.push(format!(
                "replaced pinned map {} of another layout ({found:?}); its contents restart",
                path.display()
            ));
        }
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
    require_bpffs(pin_path)?;
    let dir = pin_dir(pin_path, interface);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating pin directory {}", dir.display()))?;
    let mut report = drop_stale_map_pins(&dir)?;

    let mut loader = EbpfLoader::new();
    for name in MAPS {
        loader.map_pin_path(name, dir.join(name));
    }
    let mut ebpf = loader.load(loader::DECAP_OBJECT).with_context(|| {
        format!(
            "loading the decap eBPF object with maps pinned under {}",
            dir.display()
        )
    })?;
    loader::program(&mut ebpf, PROGRAM)?
        .load()
        .context("the kernel verifier rejected the xdplb_decap program")?;
    // The address set is complete before the program is attached (or replaced): the new
    // program never sees a tunnel to an address that is still missing.
    let mut maps = DecapMaps::from_ebpf(&mut ebpf)?;
    let (added, removed) = maps.set_addrs(&wanted)?;

    let prog = loader::program(&mut ebpf, PROGRAM)?;
    let link_path = dir.join(LINK_PIN);
    let mut replaced = false;
    if link_path.exists() {
        let update = PinnedLink::from_pin(&link_path)
            .with_context(|| format!("opening pinned link {}", link_path.display()))
            .and_then(|pinned| {
                XdpLink::try_from(FdLink::from(pinned))
                    .with_context(|| format!("{} is not an XDP link", link_path.display()))
            })
            .and_then(|link| {
                prog.attach_to_link(link).with_context(|| {
                    format!("replacing the program in the pinned link on {interface}")
                })
            });
        match update {
            Ok(_) => replaced = true,
            // A link whose interface went away (ENOLINK) or a pin that is not a link: start
            // over with a fresh attachment.
            Err(e) => {
                log::warn!("{e:#}; attaching anew");
                std::fs::remove_file(&link_path)
                    .with_context(|| format!("removing stale pin {}", link_path.display()))?;
            }
        }
    }
    if replaced {
        report.push(format!(
            "replaced the decap program on {interface} atomically (pinned link {})",
            link_path.display()
        ));
        if mode.is_some() {
            report.push(
                "note: --xdp-mode does not change an existing attachment; its mode is kept (`--detach` first to change it)".to_owned(),
            );
        }
    } else {
        let (id, label) =
            loader::attach_with_id(prog, PROGRAM, interface, mode.unwrap_or_default())?;
        let link = prog.take_link(id).context("taking the new XDP link")?;
        let fd = FdLink::try_from(link)
            .context("the kernel gave no bpf_link for XDP (kernel older than 5.9?)")?;
        fd.pin(&link_path)
            .with_context(|| format!("pinning the XDP link at {}", link_path.display()))?;
        report.push(format!(
            "attached {PROGRAM} to {interface} ({label} XDP), pinned link {}",
            link_path.display()
        ));
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
    for name in std::iter::once(LINK_PIN).chain(MAPS) {
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

/// What `xdplb decap --stats` prints.
#[derive(Debug, Serialize)]
pub struct DecapStats {
    pub interface: String,
    pub pin_dir: PathBuf,
    pub addresses: Vec<IpAddr>,
    /// Counter name (`decapsulated`, `pass_not_tunnel`, ...) → packets, over all CPUs. Flat
    /// in the JSON form (`.decapsulated`), next to `interface` and `addresses`.
    #[serde(flatten)]
    pub counters: BTreeMap<&'static str, u64>,
}

impl DecapStats {
    /// The human-readable form: addresses, then one counter per line in index order.
    pub fn table(&self) -> String {
        let mut s = format!(
            "xdplb decap on {} (pinned under {})\naddresses: {}\n",
            self.interface,
            self.pin_dir.display(),
            self.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        for c in DecapCounter::ALL {
            let n = self.counters.get(c.name()).copied().unwrap_or_default();
            s.push_str(&format!("{:<20} {n:>12}\n", c.name()));
        }
        s
    }
}

/// Reads the counters and address set pinned for `interface`.
pub fn stats(pin_path: &Path, interface: &str) -> anyhow::Result<DecapStats> {
    check_interface_name(interface)?;
    let dir = pin_dir(pin_path, interface);
    let maps = DecapMaps::from_pins(&dir)?;
    let values = maps.counters()?;
    Ok(DecapStats {
        interface: interface.to_owned(),
        addresses: maps.addrs()?,
        counters: DecapCounter::ALL
            .iter()
            .map(|c| (c.name(), values[*c as usize]))
            .collect(),
        pin_dir: dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real output of iproute2 6.1 for a veth with IPv4, a global and a link-local IPv6 address.
    const VETH: &str = r#"[{"ifindex":7,"link_index":6,"ifname":"b0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"02:00:00:00:00:02","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,"addr_info":[{"family":"inet","local":"10.200.0.2","prefixlen":24,"scope":"global","label":"b0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fd00:200::2","prefixlen":64,"scope":"global","nodad":true,"valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fe80::2","prefixlen":64,"scope":"link","valid_life_time":4294967295,"preferred_life_time":4294967295}]}]"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_address_with_its_scope() {
        let addrs = parse_ip_addr_json(VETH.as_bytes()).unwrap();
        assert_eq!(
            addrs,
            vec![
                InterfaceAddr {
                    addr: ip("10.200.0.2"),
                    scope: "global".into()
                },
                InterfaceAddr {
                    addr: ip("fd00:200::2"),
                    scope: "global".into()
                },
                InterfaceAddr {
                    addr: ip("fe80::2"),
                    scope: "link".into()
                },
            ]
        );
        assert_eq!(
            global_addrs(&addrs),
            vec![ip("10.200.0.2"), ip("fd00:200::2")]
        );
    }

    #[test]
    fn loopback_has_no_global_address() {
        let lo = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host"}]}]"#;
        let addrs = parse_ip_addr_json(lo.as_bytes()).unwrap();
        assert_eq!(addrs.len(), 2);
        assert!(global_addrs(&addrs).is_empty());
        let err = choose_addrs("lo", &addrs, None).unwrap_err().to_string();
        assert!(err.contains("lo has no global-scope address"), "{err}");
    }

    #[test]
    fn interface_without_addresses_and_lifetime_only_entries() {
        // An interface with no address has no addr_info at all; older iproute2 printed the
        // lifetimes of an address as an entry of their own, without `local`.
        let none = r#"[{"ifindex":9,"ifname":"x0","flags":[]}]"#;
        assert!(parse_ip_addr_json(none.as_bytes()).unwrap().is_empty());
        let split = r#"[{"ifname":"x0","addr_info":[{"family":"inet","local":"192.0.2.1","scope":"global"},{"valid_life_time":4294967295,"preferred_life_time":4294967295}]}]"#;
        assert_eq!(
            global_addrs(&parse_ip_addr_json(split.as_bytes()).unwrap()),
            vec![ip("192.0.2.1")]
        );
        // `ip` prints nothing but `[]` for... nothing.
        assert!(parse_ip_addr_json(b"[]").unwrap().is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_an_empty_list() {
        assert!(parse_ip_addr_json(b"Device \"x\" does not exist.").is_err());
        let bad = r#"[{"addr_info":[{"local":"not-an-ip","scope":"global"}]}]"#;
        let err = format!("{:#}", parse_ip_addr_json(bad.as_bytes()).unwrap_err());
        assert!(err.contains("not-an-ip"), "{err}");
    }

    #[test]
    fn explicit_addresses_win_and_are_deduplicated() {
        let addrs = parse_ip_addr_json(VETH.as_bytes()).unwrap();
        let chosen = choose_addrs(
            "b0",
            &addrs,
            Some(&[ip("198.51.100.7"), ip("10.200.0.2"), ip("198.51.100.7")]),
        )
        .unwrap();
        assert_eq!(chosen, vec![ip("10.200.0.2"), ip("198.51.100.7")]);
    }

    #[test]
    fn too_many_addresses_are_refused() {
        let many: Vec<IpAddr> = (0..=MAX_DECAP_ADDRS)
            .map(|i| IpAddr::from([10, 9, (i >> 8) as u8, i as u8]))
            .collect();
        let err = choose_addrs("b0", &[], Some(&many))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 64"), "{err}");
    }

    #[test]
    fn keys_match_the_program_layout() {
        assert_eq!(decap_key(ip("192.0.2.1")), DecapAddr::v4([192, 0, 2, 1]));
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(decap_key(IpAddr::V6(v6)), DecapAddr::v6(v6.octets()));
    }

    #[test]
    fn interface_names_are_path_safe() {
        for bad in ["", ".", "..", "a/b", "eth 0", "sixteen-bytes-xx"] {
            assert!(check_interface_name(bad).is_err(), "{bad:?}");
        }
        check_interface_name("eth0.100").unwrap();
    }
}

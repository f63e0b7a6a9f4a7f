//! `xdplb host`: a backend set up from the balancers' config: VIPs on `lo`, ARP, host program.
//!
//! The host program decapsulates tunnels (as `xdplb decap`) and gives TCP packets to the VIPs a
//! second chance: it needs the VIP addresses (`HOST_VIPS`) and, for each backend id the
//! balancers may name in a packet, how to reach that backend (`HOST_PEERS`). Ids are a
//! function of the config's set of VIPs and backends, so a host reading the same file knows
//! the balancers' ids.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_common::decap::{Peer, PEER_IPIP, PEER_L2, PEER_SELF};

use super::{addrs::interface_addrs, install, pin_dir, DecapMaps, ProgramArgs};
use crate::{
    agent::neigh,
    config::{Config, Forwarding, XdpMode},
    model::desired::{ids_of, vip_identity},
};

/// `xdplb host`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct HostArgs {
    #[command(flatten)]
    pub program: ProgramArgs,
    /// The balancers' config file: its VIPs and backends (with --detach: removed from lo).
    #[arg(long, short, value_name = "FILE", required_unless_present_any = ["detach", "stats"])]
    pub config: Option<PathBuf>,
    /// How to attach (default: auto).
    #[arg(long, value_enum, conflicts_with_all = ["detach", "stats"])]
    pub xdp_mode: Option<XdpMode>,
}

/// Runs `xdplb host`.
pub fn run(args: &HostArgs) -> anyhow::Result<()> {
    let p = &args.program;
    let cfg = args.config.as_ref().map(|f| Config::load(f)).transpose()?;
    if let Some(lines) = p.read_or_remove() {
        lines?.iter().for_each(|l| println!("{l}"));
        if let (true, Some(cfg)) = (p.detach, &cfg) {
            for vip in vip_addresses(cfg) {
                if lo_addr(&["del"], vip).is_ok() {
                    println!("removed {vip} from lo");
                }
            }
        }
        return Ok(());
    }
    let cfg = cfg.expect("clap requires --config here");
    for line in setup(&cfg, &p.interface, &p.pin_path, args.xdp_mode)? {
        println!("{line}");
    }
    Ok(())
}

/// Every address that has a VIP, once each.
fn vip_addresses(cfg: &Config) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = cfg.vips.iter().map(|v| v.address).collect();
    out.sort();
    out.dedup();
    out
}

fn lo_addr(op: &[&str], vip: IpAddr) -> anyhow::Result<Vec<u8>> {
    let prefix = if vip.is_ipv4() { 32 } else { 128 };
    let addr = format!("{vip}/{prefix}");
    let mut args = vec!["addr"];
    args.extend_from_slice(op);
    args.extend_from_slice(&[addr.as_str(), "dev", "lo"]);
    crate::datapath::nic::ip_json(&args)
}

/// VIPs on `lo`, ARP settings, the program with its address set, VIPs and peers. Returns what
/// was done, one line each.
pub fn setup(
    cfg: &Config,
    interface: &str,
    pin_path: &Path,
    mode: Option<XdpMode>,
) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    let vips = vip_addresses(cfg);
    for vip in &vips {
        lo_addr(&["replace"], *vip).with_context(|| format!("adding {vip} to lo"))?;
    }
    report.push(format!(
        "VIPs on lo: {}",
        vips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    // arp_ignore=1: answer ARP only for addresses of the interface asked; arp_announce=2:
    // never use a VIP as the source of our own ARP requests. Only the balancers may attract
    // VIP traffic.
    for (key, value) in [
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
    ] {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).with_context(|| format!("setting {key}={value}"))?;
    }
    report.push("set net.ipv4.conf.all.arp_ignore=1 arp_announce=2".into());
    report.extend(install(pin_path, interface, None, mode)?);
    let mut maps = DecapMaps::from_pins(&pin_dir(pin_path, interface))?;
    maps.set_host_vips(&vips)?;
    let (peers, notes) = peers(cfg, interface)?;
    maps.set_peers(&peers)?;
    report.push(format!(
        "second chance: {} VIP address(es), {} backend id(s) reachable on {interface}",
        vips.len(),
        peers
            .values()
            .filter(|p| p.state == PEER_L2 || p.state == PEER_IPIP)
            .count()
    ));
    report.extend(notes);
    Ok(report)
}

/// How long to wait for the neighbour table to learn the peers' MACs.
const RESOLVE_FOR: Duration = Duration::from_secs(3);

/// Each backend id: this host itself (its address is on `interface`); for an `ipip` VIP,
/// another backend by its address (the tunnel is readdressed to it); for an `l2` VIP, another
/// backend by its MAC (the config's `mac:`, else the neighbour table, asked to resolve it
/// first). Backends whose MAC stays unknown are left out, with a note: a chain that names them
/// ends here.
fn peers(cfg: &Config, interface: &str) -> anyhow::Result<(BTreeMap<u32, Peer>, Vec<String>)> {
    let ids = ids_of(cfg)?;
    let own: Vec<IpAddr> = interface_addrs(interface)?.iter().map(|a| a.addr).collect();
    let mut peers = BTreeMap::new();
    let mut wanted = Vec::new();
    for vip in cfg.vips.iter() {
        let vip_id = ids.vips[&vip_identity(vip)];
        for b in vip.backends.iter() {
            let id = ids.backends[&(vip_id, b.address)];
            if own.contains(&b.address) {
                peers.insert(id, peer(b.address, [0; 6], PEER_SELF));
            } else if vip.forwarding == Forwarding::Ipip {
                peers.insert(id, peer(b.address, [0; 6], PEER_IPIP));
            } else {
                wanted.push((id, b.address, b.mac));
            }
        }
    }
    for (_, addr, mac) in &wanted {
        if mac.is_none() {
            neigh::probe(*addr);
        }
    }
    let mut notes = Vec::new();
    let deadline = Instant::now() + RESOLVE_FOR;
    for (id, addr, mac) in wanted {
        let mac = mac.map(|m| m.0).or_else(|| loop {
            if let Some(m) = neigh::lookup_now(interface, addr) {
                break Some(m.0);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        });
        match mac {
            Some(mac) => {
                peers.insert(id, peer(addr, mac, PEER_L2));
            }
            None => notes.push(format!(
                "backend {addr}: no MAC on {interface} (set mac: in the config); flows chained to it are delivered here"
            )),
        }
    }
    Ok((peers, notes))
}

fn peer(addr: IpAddr, mac: [u8; 6], state: u8) -> Peer {
    let (addr, family) = lb_common::addr::ip_to_map(addr);
    Peer {
        addr,
        mac,
        state,
        family,
    }
}

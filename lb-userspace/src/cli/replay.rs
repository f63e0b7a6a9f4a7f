//! `xdplb replay`: runs a capture through the real XDP program (BPF_PROG_TEST_RUN).
//!
//! The maps are filled from a config and flow-table state is carried from packet to packet. It
//! reports one verdict per packet; the rewritten packets go to an output capture.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufReader, BufWriter},
    net::IpAddr,
    path::Path,
};

use anyhow::{anyhow, bail, Context as _};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter},
    DataLink,
};
use serde::Serialize;

use crate::{
    agent::neigh,
    config::{Config, MacAddr, TunnelMtu},
    datapath::maps::BalancerMaps,
    datapath::testrun::{self, action_name},
    datapath::{balancer, objects},
};

/// One packet's fate.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub index: usize,
    /// `tx`, `pass`, `drop` or `aborted`; `skipped` for a frame the program cannot be given.
    pub verdict: &'static str,
    /// The VIP the packet was addressed to, if any.
    pub vip: Option<String>,
    /// The backend a forwarded packet was sent to.
    pub backend: Option<IpAddr>,
    /// Why a packet was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// A backend MAC for replaying without the real network: the neighbour table of the config's
/// interface if it has one, else a locally administered MAC derived from the address.
fn placeholder_mac(addr: IpAddr) -> MacAddr {
    let b = match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            [0x02, 0x58, o[0], o[1], o[2], o[3]]
        }
        IpAddr::V6(a) => {
            let o = a.octets();
            [0x02, 0x58, o[12], o[13], o[14], o[15]]
        }
    };
    MacAddr(b)
}

/// The flow an ICMP error quotes, as (VIP address, protocol, VIP port): the quoted packet is
/// one the VIP sent (VIP → client), so the VIP is its source. `quote` starts at the quoted IP
/// header, of which only the header and 8 bytes of L4 need be there.
fn quoted_vip(quote: &[u8]) -> Option<(IpAddr, u8, u16)> {
    let port = |at: usize| Some(u16::from_be_bytes(quote.get(at..at + 2)?.try_into().ok()?));
    match quote.first()? >> 4 {
        4 => {
            let ihl = usize::from(quote[0] & 0x0f) * 4;
            let src: [u8; 4] = quote.get(12..16)?.try_into().ok()?;
            Some((IpAddr::from(src), *quote.get(9)?, port(ihl)?))
        }
        6 => {
            let src: [u8; 16] = quote.get(8..24)?.try_into().ok()?;
            Some((IpAddr::from(src), *quote.get(6)?, port(40)?))
        }
        _ => None,
    }
}

/// The VIP a frame is addressed to, by the config (exact port first, then port 0); for an ICMP
/// error, the VIP of the flow it quotes (the balancer steers it to that flow's backend).
fn vip_of(cfg: &Config, frame: &[u8]) -> Option<String> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let dst: IpAddr = match p.net? {
        NetSlice::Ipv4(ip) => ip.header().destination_addr().into(),
        NetSlice::Ipv6(ip) => ip.header().destination_addr().into(),
    };
    let (dst, proto, port) = match p.transport? {
        TransportSlice::Tcp(t) => (dst, lb_common::IPPROTO_TCP, t.destination_port()),
        TransportSlice::Udp(u) => (dst, lb_common::IPPROTO_UDP, u.destination_port()),
        // Destination unreachable, time exceeded, parameter problem.
        TransportSlice::Icmpv4(i) if matches!(i.type_u8(), 3 | 11 | 12) => quoted_vip(i.payload())?,
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        TransportSlice::Icmpv6(i) if matches!(i.type_u8(), 1..=4) => quoted_vip(i.payload())?,
        _ => return None,
    };
    let matches = |p: u16| {
        cfg.vips
            .iter()
            .find(|v| v.address == dst && v.port == p && v.protocol.number() == proto)
    };
    matches(port).or_else(|| matches(0)).map(|v| v.name.clone())
}

/// The outer destination of an IP-in-IP frame the balancer built (its backend), if it is one.
fn tunnel_destination(frame: &[u8]) -> Option<IpAddr> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    match p.net? {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            let proto = h.protocol().0;
            (proto == lb_common::IPPROTO_IPIP || proto == lb_common::IPPROTO_IPV6)
                .then(|| h.destination_addr().into())
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            let next = h.next_header().0;
            (next == lb_common::IPPROTO_IPIP || next == lb_common::IPPROTO_IPV6)
                .then(|| h.destination_addr().into())
        }
    }
}

/// `xdplb replay`'s arguments.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The config the maps are filled from.
    #[arg(long, short, default_value = super::output::DEFAULT_CONFIG)]
    pub config: std::path::PathBuf,
    /// Input capture (pcap, Ethernet).
    #[arg(long)]
    pub pcap: std::path::PathBuf,
    /// Write the packets as the program left them here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// The balancer's MAC in the capture: only frames addressed to it are balanced.
    ///
    /// Default: the config's interface's MAC if it exists here, else the destination of the
    /// capture's first unicast frame.
    #[arg(long, value_parser = |s: &str| s.parse::<MacAddr>())]
    pub mac: Option<MacAddr>,
}

/// Replays the capture and prints one verdict per packet.
pub fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    for v in replay(&args.config, &args.pcap, args.out.as_deref(), args.mac)? {
        if args.json {
            println!("{}", serde_json::to_string(&v)?);
        } else if let Some(why) = &v.why {
            println!("{:>6}  {:<7} {why}", v.index, v.verdict);
        } else {
            println!(
                "{:>6}  {:<7} vip={:<12} backend={}",
                v.index,
                v.verdict,
                v.vip.as_deref().unwrap_or("-"),
                v.backend.map_or("-".to_owned(), |b| b.to_string())
            );
        }
    }
    Ok(())
}

/// Replays `pcap` through the balancer configured by `config`; writes rewritten packets to
/// `out` (when given, every packet as the program left it) and returns one verdict per packet.
/// `mac` is the balancer's MAC in the capture (frames to any other MAC are not balanced);
/// without it, the config's interface's MAC when it exists here, else the destination of the
/// capture's first unicast frame.
pub fn replay(
    config: &Path,
    pcap: &Path,
    out: Option<&Path>,
    mac: Option<MacAddr>,
) -> anyhow::Result<Vec<Verdict>> {
    let mut cfg = Config::load(config)?;
    // Fill in MACs the config leaves to the neighbour table, so replay works off the gateway.
    let mut vips = cfg.vips.to_vec();
    for vip in &mut vips {
        let mut list = vip.backends.to_vec();
        for b in &mut list {
            if b.mac.is_none() {
                let mac = neigh::lookup_now(cfg.interface.as_str(), b.address)
                    .unwrap_or_else(|| placeholder_mac(b.address));
                b.mac = Some(mac);
            }
        }
        vip.backends = list.try_into().map_err(|e: String| anyhow!(e))?;
    }
    cfg.vips = vips.try_into().map_err(|e: String| anyhow!(e))?;
    // Off the gateway the interface may not exist: assume Ethernet's MTU for tunnels.
    if cfg.tunnel.mtu.is_none()
        && crate::datapath::nic::interface_mtu(cfg.interface.as_str()).is_err()
    {
        cfg.tunnel.mtu = Some(TunnelMtu(1500));
    }
    let by_mac: HashMap<(String, [u8; 6]), IpAddr> = cfg
        .vips
        .iter()
        .flat_map(|v| {
            v.backends.iter().map(move |b| {
                (
                    (v.name.clone(), b.mac.map(|m| m.0).unwrap_or_default()),
                    b.address,
                )
            })
        })
        .collect();

    let file =
        File::open(pcap).with_context(|| format!("cannot open capture {}", pcap.display()))?;
    let mut reader = PcapReader::new(BufReader::new(file))
        .map_err(|e| anyhow!("{} is not a pcap capture: {e}", pcap.display()))?;
    let header = reader.header();
    if header.datalink != DataLink::ETHERNET {
        bail!(
            "{} has link type {:?}; replay needs Ethernet frames",
            pcap.display(),
            header.datalink
        );
    }
    let mut writer = match out {
        Some(path) => {
            let f =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let h = PcapHeader {
                datalink: DataLink::ETHERNET,
                ..Default::default()
            };
            Some(
                PcapWriter::with_header(BufWriter::new(f), h)
                    .map_err(|e| anyhow!("writing {}: {e}", path.display()))?,
            )
        }
        None => None,
    };

    // Read whole: without --mac, the first frame can name the balancer's MAC.
    let mut packets = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.map_err(|e| {
            anyhow!(
                "{}: packet {} is unreadable (truncated capture?): {e}",
                pcap.display(),
                packets.len()
            )
        })?;
        packets.push((packet.timestamp, packet.data.into_owned()));
    }
    let own_mac = match mac {
        Some(m) => m,
        None => match crate::datapath::nic::interface_mac(cfg.interface.as_str()) {
            Ok(m) => m,
            Err(_) => {
                // The first unicast destination: broadcasts (ARP) name nobody.
                let first = packets
                    .iter()
                    .find(|(_, f)| f.len() >= 6 && f[0] & 1 == 0)
                    .map(|(_, f)| MacAddr(f[..6].try_into().expect("6 bytes")))
                    .unwrap_or(MacAddr([2, 0, 0, 0, 0, 1]));
                log::info!(
                    "balancer MAC taken from the capture's first unicast frame: {first} (give --mac to choose)"
                );
                first
            }
        },
    };

    let mut ebpf = balancer::load_balancer(cfg.flow_table_size.0)?;
    let mut maps = BalancerMaps::from_ebpf(&mut ebpf)?;
    crate::datapath::reconcile::fill(&cfg, &mut maps, own_mac)?;
    let prog = objects::program(&mut ebpf, lb_common::programs::BALANCER)?;
    let mut verdicts = Vec::new();
    for (index, (timestamp, frame)) in packets.iter().enumerate() {
        let frame = frame.as_slice();
        if frame.len() < 14 {
            // The kernel refuses such input to the program; the rest of the capture still
            // counts, and the output capture keeps every packet at its index.
            if let Some(w) = writer.as_mut() {
                let out = PcapPacket::new(*timestamp, frame.len() as u32, frame);
                w.write_packet(&out)
                    .map_err(|e| anyhow!("writing packet {index}: {e}"))?;
            }
            verdicts.push(Verdict {
                index,
                verdict: "skipped",
                vip: None,
                backend: None,
                why: Some(format!(
                    "{} bytes, shorter than an Ethernet header",
                    frame.len()
                )),
            });
            continue;
        }
        let testrun::Run { action, out: buf } = testrun::run(prog, frame)
            .with_context(|| format!("running packet {index} through the program"))?;
        let verdict = action_name(action);
        let vip = vip_of(&cfg, frame);
        let backend = match (&vip, verdict) {
            (Some(v), "tx") if buf.len() >= 6 => tunnel_destination(&buf).or_else(|| {
                by_mac
                    .get(&(v.clone(), buf[..6].try_into().unwrap_or_default()))
                    .copied()
            }),
            _ => None,
        };
        if let Some(w) = writer.as_mut() {
            let out = PcapPacket::new(*timestamp, buf.len() as u32, &buf);
            w.write_packet(&out)
                .map_err(|e| anyhow!("writing packet {index}: {e}"))?;
        }
        verdicts.push(Verdict {
            index,
            verdict,
            vip,
            backend,
            why: None,
        });
    }
    Ok(verdicts)
}

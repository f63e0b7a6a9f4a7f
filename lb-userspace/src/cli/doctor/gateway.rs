//! The gateway's checks, from its config.
//!
//! This file checks the interface and its XDP support, the MTU against the tunnel overhead, and
//! rp_filter; `host` checks bpffs, the pinned state, the kernel's BPF support, privileges and the
//! agent's socket.

use std::{collections::BTreeSet, path::Path};

use anyhow::Context as _;
use aya::{programs::XdpMode as AyaXdpMode, Ebpf, EbpfLoader};
use lb_common::{maps, programs};

use super::{
    host::{agent_socket, bpffs, btf, jit, memlock, pinned_state, privileges},
    interface::{self, NamedBy},
    system::{self, Link},
    Finding,
};
use crate::{
    config::{Config, Forwarding, Vip, XdpMode},
    datapath::objects,
};

/// The size of the client packets the MTU check assumes: a full Ethernet payload.
const CLIENT_PACKET: u32 = 1500;

/// What strict reverse-path filtering costs on the gateway.
const GATEWAY_STRICT_DROPS: &str = "XDP balances before the filter, but what is passed to the kernel (health-check replies, ICMP, the host's own traffic) is dropped when its source is not routed back through this interface, as in routed set-ups with asymmetric paths";

/// Every gateway check, in the order they are printed. `interface` overrides the config's;
/// `attach_probe` allows a native XDP attachment (detached at once) to test the driver.
pub fn checks(config_path: &Path, interface: Option<&str>, attach_probe: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let cfg = match Config::load(config_path) {
        Ok(cfg) => {
            out.push(Finding::ok(
                "config",
                format!(
                    "{} is valid: interface {}, xdp_mode {}, {} VIPs",
                    config_path.display(),
                    cfg.interface.as_str(),
                    mode_word(cfg.xdp_mode),
                    cfg.vips.len()
                ),
            ));
            Some(cfg)
        }
        Err(e) => {
            out.push(Finding::fail(
                "config",
                format!("{e:#}"),
                format!(
                    "write a valid config at {} (deploy/lb.example.yaml; `xdplb check --config {0}` validates it), or name it with --config",
                    config_path.display()
                ),
            ));
            None
        }
    };
    // The kernel's verdict on the real program, loaded once (not attached) and shared by the
    // native-XDP probe and the JIT check.
    let mut ebpf = load_programs();
    out.push(match &ebpf {
        Ok(_) => Finding::ok(
            "program",
            "the kernel loads the xdplb object and its verifier accepts the balancer",
        ),
        Err(e) => Finding::fail(
            "program",
            format!("{e:#}"),
            "run as root (see `privileges`); as root, the kernel's message says what it refuses",
        ),
    });

    let named = interface.map_or_else(
        || {
            cfg.as_ref()
                .map(|c| (c.interface.as_str(), NamedBy::Config(config_path)))
        },
        |i| Some((i, NamedBy::Flag)),
    );
    if let Some((name, named_by)) = &named {
        let (finding, link) = interface::present(name, named_by, true);
        out.push(finding);
        if let Some(link) = link {
            let mode = cfg.as_ref().map_or(XdpMode::Auto, |c| c.xdp_mode);
            let pin_path = cfg.as_ref().map(|c| c.pin_path.as_path());
            out.push(xdp(
                &link,
                mode,
                config_path,
                pin_path,
                ebpf.as_mut().ok(),
                attach_probe,
            ));
            if let Some(cfg) = &cfg {
                out.push(mtu(cfg, &link, config_path));
            }
        }
        out.push(interface::rp_filter(name, GATEWAY_STRICT_DROPS));
    }
    if let Some(cfg) = &cfg {
        out.push(bpffs(&cfg.pin_path, config_path));
        out.push(pinned_state(&cfg.pin_path, named.as_ref().map(|(n, _)| *n)));
    }
    out.push(btf());
    out.push(jit(ebpf.as_mut().ok()));
    out.push(privileges());
    out.push(memlock(
        cfg.as_ref()
            .map_or(lb_common::DEFAULT_CONNS, |c| c.flow_table_size.0),
    ));
    if let Some(cfg) = &cfg {
        out.push(agent_socket(&cfg.api_socket));
    }
    out
}

fn mode_word(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Auto => "auto",
        XdpMode::Native => "native",
        XdpMode::Generic => "generic",
    }
}

/// Loads the xdplb object with a small flow table and verifies the balancer and the pass
/// program, without attaching anything: proof that this kernel takes the real datapath.
fn load_programs() -> anyhow::Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(maps::CONNS, 1024)
        .load(objects::EBPF_OBJECT)
        .context("loading the xdplb eBPF object (maps and BTF) into the kernel")?;
    objects::program(&mut ebpf, programs::BALANCER)?
        .load()
        .context("the kernel verifier rejected the xdplb program")?;
    objects::program(&mut ebpf, programs::PASS)?
        .load()
        .context("loading xdplb_pass")?;
    Ok(ebpf)
}

/// Native XDP: what is attached to the interface already, or else whether a native
/// attachment takes (the only reliable answer: drivers do not advertise it).
fn xdp(
    link: &Link,
    mode: XdpMode,
    config_path: &Path,
    pin_path: Option<&Path>,
    ebpf: Option<&mut Ebpf>,
    attach_probe: bool,
) -> Finding {
    const CHECK: &str = "xdp";
    let ifname = link.ifname.as_str();
    let driver = match system::driver(ifname) {
        Ok(d) if !d.is_empty() => d,
        _ => "unknown".to_owned(),
    };
    let attached = link.xdp_programs();
    if !attached.is_empty() {
        return already_attached(link, &attached, &driver, mode, pin_path);
    }
    if !attach_probe {
        return Finding::ok(
            CHECK,
            format!("nothing attached to {ifname} (driver {driver}); native XDP not tried (--no-attach-probe)"),
        );
    }
    let Some(ebpf) = ebpf else {
        return Finding::warn(
            CHECK,
            format!("driver {driver}; native XDP not tried: the xdplb object did not load (see `program`)"),
            "run `xdplb doctor` as root",
        );
    };
    let native = objects::program(ebpf, programs::PASS).and_then(|prog| {
        let id = prog
            .attach(ifname, AyaXdpMode::Driver)
            .with_context(|| format!("attaching in native mode to {ifname}"))?;
        // Detached at once: the probe must leave the interface as it found it.
        prog.detach(id)
            .with_context(|| format!("detaching the probe from {ifname}"))
    });
    let config = config_path.display();
    match (native, mode) {
        (Ok(()), XdpMode::Generic) => Finding::ok(
            CHECK,
            format!("driver {driver} supports native XDP (a test program attached and detached), but xdp_mode is generic: slower than it could be"),
        ),
        (Ok(()), _) => Finding::ok(
            CHECK,
            format!("driver {driver} supports native XDP (a test program attached in native mode and detached)"),
        ),
        (Err(e), XdpMode::Auto) => Finding::warn(
            CHECK,
            format!("driver {driver} of {ifname} has no native XDP ({e:#}): xdp_mode auto falls back to generic, which runs after the kernel has built an skb (most of XDP's speed lost)"),
            format!("use a NIC whose driver has native XDP (mlx5, ice, i40e, ixgbe, bnxt, virtio_net, veth, ...), or set `xdp_mode: generic` in {config} to make the choice explicit"),
        ),
        (Err(e), XdpMode::Native) => Finding::fail(
            CHECK,
            format!("driver {driver} of {ifname} has no native XDP ({e:#}): xdp_mode native cannot attach"),
            format!("set `xdp_mode: auto` (or generic) in {config}, or use a NIC whose driver has native XDP"),
        ),
        (Err(e), XdpMode::Generic) => Finding::ok(
            CHECK,
            format!("driver {driver} of {ifname} has no native XDP ({e:#}); xdp_mode is generic, which works everywhere"),
        ),
    }
}

/// The XDP finding when programs are attached already: the running (or kept) xdplb is fine in
/// the mode the config asks for; anything else keeps the agent from attaching.
fn already_attached(
    link: &Link,
    attached: &[(system::XdpProg, u8)],
    driver: &str,
    mode: XdpMode,
    pin_path: Option<&Path>,
) -> Finding {
    const CHECK: &str = "xdp";
    let ifname = link.ifname.as_str();
    let describe = |p: &system::XdpProg, m: u8| {
        format!(
            "{} (program id {}) in {} mode",
            p.name.as_deref().unwrap_or("a program without a name"),
            p.id,
            system::xdp_mode_name(m)
        )
    };
    let list = attached
        .iter()
        .map(|(p, m)| describe(p, *m))
        .collect::<Vec<_>>()
        .join(", ");
    let [(prog, m)] = attached else {
        return Finding::fail(
            CHECK,
            format!("{ifname} has several XDP programs attached: {list}"),
            format!(
                "`bpftool net show dev {ifname}` names them; remove the ones that are not xdplb's"
            ),
        );
    };
    if prog.name.as_deref() != Some(programs::BALANCER) {
        return Finding::fail(
            CHECK,
            format!("{ifname} already has another XDP program attached: {list}; xdplb cannot attach next to it"),
            format!("find its owner (`bpftool net show dev {ifname}`) and remove it (`ip link set dev {ifname} xdp off` for a netlink attachment, or delete its pinned link), or use another interface"),
        );
    }
    let detach = pin_path.map_or_else(
        || "xdplb detach".to_owned(),
        |p| format!("xdplb detach --pin-path {}", p.display()),
    );
    let running = format!(
        "xdplb is attached to {ifname}: {list}, driver {driver} (a running or kept datapath)"
    );
    match (mode, *m) {
        (XdpMode::Auto, 2) => Finding::warn(
            CHECK,
            format!("{running}; xdp_mode auto fell back to generic, which runs after the kernel has built an skb"),
            "use a NIC whose driver has native XDP, or set `xdp_mode: generic` to make the choice explicit",
        ),
        (XdpMode::Native, 2) | (XdpMode::Generic, 1) => Finding::warn(
            CHECK,
            format!("{running}, but the config asks for xdp_mode {}: a pinned link keeps the mode it was made in", mode_word(mode)),
            format!("`{detach}` (stops forwarding), then start the agent again: it attaches in the configured mode"),
        ),
        _ => Finding::ok(CHECK, running),
    }
}

/// `ipip` VIPs: a full-size client packet plus the outer header against the tunnel MTU.
fn mtu(cfg: &Config, link: &Link, config_path: &Path) -> Finding {
    const CHECK: &str = "mtu";
    let ifname = link.ifname.as_str();
    let ipip: Vec<_> = cfg
        .vips
        .iter()
        .filter(|v| v.forwarding == Forwarding::Ipip)
        .collect();
    if ipip.is_empty() {
        return Finding::ok(
            CHECK,
            format!(
                "no ipip VIPs: packets leave {ifname} (MTU {}) the size they came in",
                link.mtu
            ),
        );
    }
    let overhead = outer_header(&ipip);
    let config = config_path.display();
    if let Some(t) = cfg.tunnel.mtu.map(|m| m.0) {
        if t > link.mtu {
            return Finding::warn(
                CHECK,
                format!("tunnel.mtu {t} is above {ifname}'s MTU {}: tunnelled packets between the two sizes are dropped by the NIC instead of answered with ICMP \"too big\"", link.mtu),
                format!("set `tunnel.mtu: {}` in {config}, or raise the interface's MTU: ip link set dev {ifname} mtu {t}", link.mtu),
            );
        }
    }
    let (tunnel_mtu, source) = match cfg.tunnel.mtu {
        Some(t) => (t.0, "tunnel.mtu".to_owned()),
        None => (link.mtu, format!("{ifname}'s MTU; tunnel.mtu unset")),
    };
    let needed = CLIENT_PACKET + overhead;
    if tunnel_mtu >= needed {
        return Finding::ok(
            CHECK,
            format!("ipip: a {CLIENT_PACKET}-byte client packet plus the {overhead}-byte outer header ({needed}) fits the tunnel MTU {tunnel_mtu} ({source})"),
        );
    }
    // Per VIP family, the TCP MSS that fits: the tunnel MTU less the outer header of that
    // family's backends, the inner IP header (20 or 40) and the TCP header (20).
    let clamps = [true, false]
        .into_iter()
        .filter_map(|v4| {
            let vips: Vec<&Vip> = ipip
                .iter()
                .copied()
                .filter(|v| v.address.is_ipv4() == v4)
                .collect();
            let overhead = outer_header(&vips);
            if vips.is_empty() || CLIENT_PACKET + overhead <= tunnel_mtu {
                return None;
            }
            let list: BTreeSet<String> = vips.iter().map(|v| v.address.to_string()).collect();
            let list = list.into_iter().collect::<Vec<_>>().join(",");
            let (tool, inner) = if v4 { ("iptables", 20) } else { ("ip6tables", 40) };
            let mss = tunnel_mtu - overhead - inner - 20;
            Some(format!("{tool} -t mangle -A FORWARD -p tcp -d {list} --tcp-flags SYN,RST SYN -j TCPMSS --set-mss {mss}"))
        })
        .collect::<Vec<_>>()
        .join("; ");
    Finding::warn(
        CHECK,
        format!("ipip: a {CLIENT_PACKET}-byte client packet plus the {overhead}-byte outer header is {needed} bytes, above the tunnel MTU {tunnel_mtu} ({source}): full-size packets are answered with ICMP \"too big\", so clients must lower their path MTU (connections stall where that ICMP is filtered)"),
        format!("raise the MTU to {needed} on {ifname} and on the path to the backends (`ip link set dev {ifname} mtu {needed}`; set `tunnel.mtu:` in {config} to the path's smallest MTU if it is below the interface's), or clamp the TCP MSS of the VIPs on the router in front: {clamps}"),
    )
}

/// The largest outer header the balancer puts on packets of `vips`: it is the backend's
/// family, 20 bytes for IPv4 and 40 for IPv6.
fn outer_header(vips: &[&Vip]) -> u32 {
    vips.iter()
        .flat_map(|v| v.backends.iter())
        .map(|b| if b.address.is_ipv4() { 20 } else { 40 })
        .max()
        .unwrap_or(20)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::doctor::Status;

    fn link(mtu: u32) -> Link {
        system::parse_links(format!(r#"[{{"ifname":"eth0","flags":["UP","LOWER_UP"],"mtu":{mtu},"link_type":"ether","address":"02:00:00:00:00:01"}}]"#).as_bytes())
            .unwrap()
            .remove(0)
    }

    fn config(forwarding: &str, backend: &str, tunnel_mtu: Option<u32>) -> Config {
        let tunnel = tunnel_mtu.map_or(String::new(), |m| format!("tunnel:\n  mtu: {m}\n"));
        Config::from_yaml(
            &format!(
                "interface: eth0\n{tunnel}vips:\n  - name: web\n    address: 203.0.113.1\n    port: 80\n    protocol: tcp\n    forwarding: {forwarding}\n    backends:\n      - address: '{backend}'\n        mac: '02:00:00:00:00:02'\n"
            ),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn ipip_over_a_1500_byte_link_warns_with_mtu_and_mss_fixes() {
        let path = Path::new("/etc/xdplb/lb.yaml");
        let f = mtu(&config("ipip", "10.0.0.2", None), &link(1500), path);
        assert_eq!(f.status, Status::Warn, "{f:?}");
        assert!(
            f.found
                .contains("20-byte outer header is 1520 bytes, above the tunnel MTU 1500"),
            "{f:?}"
        );
        let fix = f.fix.unwrap();
        assert!(fix.contains("ip link set dev eth0 mtu 1520"), "{fix}");
        // 1500 - 20 outer - 20 inner IPv4 - 20 TCP.
        assert!(fix.contains("iptables -t mangle -A FORWARD -p tcp -d 203.0.113.1 --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1440"), "{fix}");
        // An IPv6 backend means a 40-byte outer header.
        let f = mtu(&config("ipip", "fd00::2", None), &link(1500), path);
        assert!(
            f.found.contains("40-byte outer header is 1540 bytes"),
            "{f:?}"
        );
        assert!(f.fix.unwrap().contains("--set-mss 1420"));
    }

    #[test]
    fn mtu_is_fine_with_room_for_the_header_or_without_ipip() {
        let path = Path::new("lb.yaml");
        assert_eq!(
            mtu(&config("ipip", "10.0.0.2", None), &link(1520), path).status,
            Status::Ok
        );
        assert_eq!(
            mtu(&config("l2", "10.0.0.2", None), &link(1500), path).status,
            Status::Ok
        );
        // tunnel.mtu above the NIC's: the NIC drops what the balancer thinks fits.
        let f = mtu(&config("ipip", "10.0.0.2", Some(9000)), &link(1500), path);
        assert_eq!(f.status, Status::Warn);
        assert!(f
            .fix
            .unwrap()
            .starts_with("set `tunnel.mtu: 1500` in lb.yaml"));
    }

    #[test]
    fn pinned_state_of_another_layout_fails_with_detach() {
        let dir = std::env::temp_dir().join(format!("xdplb-doctor-unit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("v1")).unwrap();
        let f = pinned_state(&dir, Some("eth0"));
        assert_eq!(f.status, Status::Fail, "{f:?}");
        assert!(f.found.contains("layout v1"), "{f:?}");
        assert_eq!(
            f.fix.as_deref(),
            Some(format!("xdplb detach --pin-path {} (stops forwarding until the new agent attaches), or run the xdplb that matches", dir.display()).as_str())
        );
        // Our own layout, linked to another interface than the config's.
        std::fs::remove_dir(dir.join("v1")).unwrap();
        let ours = crate::datapath::balancer::state_dir(&dir);
        std::fs::create_dir_all(&ours).unwrap();
        std::fs::write(ours.join("link-eth1"), b"").unwrap();
        let f = pinned_state(&dir, Some("eth0"));
        assert_eq!(f.status, Status::Fail, "{f:?}");
        assert!(
            f.found.contains("attached to eth1, the config names eth0"),
            "{f:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(pinned_state(&dir, Some("eth0")).status, Status::Ok);
    }
}

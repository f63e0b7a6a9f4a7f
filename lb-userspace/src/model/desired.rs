//! The desired datapath state: the exact map contents for a config and what the agent knows.
//!
//! It is a pure function of the config and of what the agent knows of the world (health, neighbour
//! MACs, interface MTU), with stable ids. With `ids` and `maglev` as its helpers, it is the only
//! place outside the tests where config values become lb-common map keys and values (`VipKey`,
//! `VipMeta`, `Backend`, `AddrKey`, `AddrMeta`, `Settings`, the rings); the tests' reference model
//! derives them on its own, on purpose. The config module only parses and validates.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use lb_common::{
    addr::{ip_from_map, ip_to_map},
    AddrKey, AddrMeta, Backend as MapBackend, Settings, VipKey, VipMeta, ADDR_ANSWER_ECHO,
    BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, FORWARD_IPIP, FORWARD_L2, MAX_BACKENDS,
    MAX_VIPS, NO_BACKEND, VIP_HASH_SOURCE_IP, VIP_STATELESS,
};

use crate::{
    config::{BackendState, Config, Forwarding, HashMode, MacAddr, Vip},
    model::addr::fmt_addr,
    model::ids::{self, Ids, VipIdentity},
    model::maglev,
};

/// Backends held out of service by failed health checks: (VIP name, backend address).
pub type DownSet = HashSet<(String, IpAddr)>;

/// What the agent knows besides the config, as of now.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    /// Backends failing their health check.
    pub down: &'a DownSet,
    /// Where each backend's frames go (its own MAC for `l2`, the next hop's for `ipip`), by
    /// backend address; a backend with `mac:` in the config needs no entry.
    pub macs: &'a HashMap<IpAddr, MacAddr>,
    /// The interface's MTU, when it could be read (only `ipip` VIPs need it).
    pub mtu: Option<u32>,
    /// The interface's own MAC: what the datapath balances frames to and sends them from.
    pub own_mac: MacAddr,
}

/// One VIP as the maps should hold it.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredVip {
    pub name: String,
    pub key: VipKey,
    pub meta: VipMeta,
    /// The Maglev table: backend ids, [`NO_BACKEND`] where none is active.
    pub ring: Vec<u32>,
    pub active: usize,
    pub draining: usize,
    /// Backends failing their health check (in the ring all the same while `panic`).
    pub down: usize,
    /// Too few backends pass their health check (below the VIP's `panic_threshold`): the
    /// failures are ignored and the VIP balances over every backend that is not draining.
    pub panic: bool,
}

/// A backend that cannot be in service because nothing says where its frames go yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub vip: String,
    pub backend: IpAddr,
}

/// The complete map contents for one config and one set of facts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// In config order.
    pub vips: Vec<DesiredVip>,
    pub backends: BTreeMap<u32, MapBackend>,
    pub addrs: HashMap<AddrKey, AddrMeta>,
    pub settings: Settings,
    pub ids: Ids,
    /// Backends left out of the ring until their MAC is known.
    pub unresolved: Vec<Unresolved>,
    /// The health-check failures this state was built with: what the datapath has applied
    /// once it is written (status reports a transition from here, not before).
    pub failing: DownSet,
}

/// The VIP table key of `vip`.
pub fn vip_key(vip: &Vip) -> VipKey {
    let (addr, family) = ip_to_map(vip.address);
    VipKey {
        addr,
        port: vip.port.to_be_bytes(),
        proto: vip.protocol.number(),
        family,
    }
}

/// The identity of `vip` in [`Ids`].
pub fn vip_identity(vip: &Vip) -> VipIdentity {
    (vip.address, vip.port, vip.protocol.number())
}

/// The `SETTINGS` value: the MACs frames must be addressed to, tunnel source prefixes and the
/// MTU (the interface's unless the config names one).
fn settings(cfg: &Config, mtu: Option<u32>, own_mac: MacAddr) -> anyhow::Result<Settings> {
    let mut s = Settings {
        mac: own_mac.0,
        virtual_mac: cfg.virtual_mac.map_or([0; 6], |m| m.0),
        ..Settings::default()
    };
    if let IpAddr::V4(a) = cfg.tunnel.source_v4.addr {
        s.tunnel_src4 = a.octets();
        s.tunnel_src4_host = cfg.tunnel.source_v4.host_mask().to_be_bytes();
    }
    if let IpAddr::V6(a) = cfg.tunnel.source_v6.addr {
        s.tunnel_src6 = a.octets();
        s.tunnel_src6_host = cfg.tunnel.source_v6.host_mask().to_be_bytes();
    }
    let tunnels = cfg.vips.iter().any(|v| v.forwarding == Forwarding::Ipip);
    s.mtu = match (cfg.tunnel.mtu, mtu) {
        (Some(m), _) => m.0,
        (None, Some(mtu)) => mtu,
        // Only ipip VIPs use it: an L2-only config may be applied without the interface
        // (`xdplb replay`, tests).
        (None, None) if !tunnels => 0,
        (None, None) => anyhow::bail!(
            "cannot read the MTU of interface {} for tunnel.mtu (or set it in the config)",
            cfg.interface.as_str()
        ),
    };
    Ok(s)
}

/// The ids of `cfg`'s VIPs and backends: a function of its set of VIPs and backends alone, so
/// every balancer, and every backend's host program, reading the file computes the same.
pub fn ids_of(cfg: &Config) -> anyhow::Result<Ids> {
    ids::assign(
        &cfg.vips
            .iter()
            .map(|v| {
                (
                    vip_identity(v),
                    v.backends.iter().map(|b| b.address).collect(),
                )
            })
            .collect::<Vec<_>>(),
        MAX_VIPS,
        MAX_BACKENDS,
    )
}

impl Desired {
    /// What the maps must hold for `cfg` given `facts`. Ids come from the config's set of
    /// VIPs and backends alone ([`ids::assign`]), so two balancers agree byte for byte.
    pub fn build(cfg: &Config, facts: &Facts) -> anyhow::Result<Desired> {
        let ids = ids_of(cfg)?;
        let mut backends = BTreeMap::new();
        let mut vips = Vec::new();
        let mut unresolved = Vec::new();
        for vip in cfg.vips.iter() {
            let identity = vip_identity(vip);
            let vip_id = ids.vips[&identity];
            let mut flags = 0;
            if vip.hash == HashMode::SourceIp {
                flags |= VIP_HASH_SOURCE_IP;
            }
            if vip.stateless {
                flags |= VIP_STATELESS;
            }
            let forwarding = match vip.forwarding {
                Forwarding::L2 => FORWARD_L2,
                Forwarding::Ipip => FORWARD_IPIP,
            };
            let mut members = Vec::new();
            let (mut active, mut draining, mut down) = (0, 0, 0);
            let panic = in_panic(vip, facts.down, facts.macs);
            for b in vip.backends.iter() {
                let Some(mac) = b.mac.or_else(|| facts.macs.get(&b.address).copied()) else {
                    unresolved.push(Unresolved {
                        vip: vip.name.clone(),
                        backend: b.address,
                    });
                    continue;
                };
                let id = ids.backends[&(vip_id, b.address)];
                let (addr, family) = ip_to_map(b.address);
                let failed = facts.down.contains(&(vip.name.clone(), b.address));
                if failed {
                    down += 1;
                }
                let state = if failed && !panic {
                    BACKEND_DOWN
                } else if b.state == BackendState::Draining {
                    draining += 1;
                    BACKEND_DRAINING
                } else {
                    active += 1;
                    members.push(maglev::Entry {
                        id,
                        identity: addr,
                        weight: b.weight.0,
                    });
                    BACKEND_ACTIVE
                };
                backends.insert(
                    id,
                    MapBackend {
                        addr,
                        mac: mac.0,
                        family,
                        state,
                        vip_id,
                        tag: ids::backend_tag(&identity, b.address),
                        // A flow-table hit forwards by these, without the VIP lookup; a change
                        // of the VIP's mode rewrites its backends (they differ from what is
                        // written).
                        vip_flags: flags,
                        vip_forwarding: forwarding,
                    },
                );
            }
            vips.push(DesiredVip {
                name: vip.name.clone(),
                key: vip_key(vip),
                meta: VipMeta {
                    vip_id,
                    ring_size: vip.ring_size.0,
                    flags,
                    forwarding,
                },
                ring: maglev::build(&members, vip.ring_size.0),
                active,
                draining,
                down,
                panic,
            });
        }
        Ok(Desired {
            vips,
            backends,
            addrs: addresses(cfg),
            settings: settings(cfg, facts.mtu, facts.own_mac)?,
            ids,
            unresolved,
            failing: facts.down.clone(),
        })
    }

    /// The address of backend `id`.
    pub fn address_of(&self, id: u32) -> Option<IpAddr> {
        self.backends
            .get(&id)
            .map(|b| ip_from_map(b.addr, b.family))
    }

    /// The VIP named `name`.
    pub fn vip(&self, name: &str) -> Option<&DesiredVip> {
        self.vips.iter().find(|v| v.name == name)
    }

    /// One line per VIP: how many backends serve it, and a warning when none does.
    pub fn summary(&self) -> Vec<String> {
        self.vips
            .iter()
            .map(|v| {
                let empty = if v.ring.iter().all(|s| *s == NO_BACKEND) {
                    " — NO ACTIVE BACKEND, its packets are dropped"
                } else {
                    ""
                };
                let down = match (v.down, v.panic) {
                    (0, _) => String::new(),
                    (n, false) => format!(", {n} down (health check)"),
                    (n, true) => format!(
                        ", {n} failing their health check — PANIC: too few pass, all kept in the ring"
                    ),
                };
                let key = v.key;
                let proto = if key.proto == lb_common::IPPROTO_TCP {
                    "tcp"
                } else {
                    "udp"
                };
                format!(
                    "VIP {} {}:{}/{proto}: {} active, {} draining backend(s){down}, ring {}{empty}",
                    v.name,
                    fmt_addr(ip_from_map(key.addr, key.family)),
                    u16::from_be_bytes(key.port),
                    v.active,
                    v.draining,
                    v.meta.ring_size
                )
            })
            .collect()
    }
}

/// Whether `vip` is in panic: of its backends that would take new flows if healthy (not
/// draining, MAC known), fewer than its health check's `panic_threshold` percent pass it.
fn in_panic(vip: &Vip, down: &DownSet, macs: &HashMap<IpAddr, MacAddr>) -> bool {
    let Some(threshold) = vip.health_check.as_ref().map(|h| h.panic_threshold) else {
        return false;
    };
    let candidates: Vec<IpAddr> = vip
        .backends
        .iter()
        .filter(|b| b.state != BackendState::Draining)
        .filter(|b| b.mac.is_some() || macs.contains_key(&b.address))
        .map(|b| b.address)
        .collect();
    let failing = candidates
        .iter()
        .filter(|a| down.contains(&(vip.name.clone(), **a)))
        .count();
    let healthy = candidates.len() - failing;
    failing > 0 && healthy * 100 < usize::from(threshold) * candidates.len()
}

/// The address entries of the VIP table: every address that has VIPs, each with the union of their per-address flags.
fn addresses(cfg: &Config) -> HashMap<AddrKey, AddrMeta> {
    let mut want: HashMap<AddrKey, AddrMeta> = HashMap::new();
    for vip in cfg.vips.iter() {
        let (addr, family) = ip_to_map(vip.address);
        let meta = want
            .entry(AddrKey {
                addr,
                family,
                _pad: [0; 3],
            })
            .or_default();
        if vip.icmp_echo {
            meta.flags |= ADDR_ANSWER_ECHO;
        }
    }
    want
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Facts with no interface MTU (the tests' configs are L2-only unless they say).
    pub(crate) fn no_mtu<'a>(down: &'a DownSet, macs: &'a HashMap<IpAddr, MacAddr>) -> Facts<'a> {
        Facts {
            down,
            macs,
            mtu: None,
            own_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        }
    }

    const CONFIG: &str = "
interface: lo
vips:
  - name: web
    address: 10.0.0.10
    port: 80
    protocol: tcp
    ring_size: 307
    backends:
      - { address: 10.0.0.1, mac: '02:00:00:00:00:01' }
      - { address: 10.0.0.2 }
      - { address: 10.0.0.3, mac: '02:00:00:00:00:03', state: draining }
";

    fn cfg(text: &str) -> Config {
        Config::from_yaml(text, "test").unwrap()
    }

    #[test]
    fn backends_without_a_mac_wait_outside_the_ring() {
        let down = DownSet::new();
        let mut macs = HashMap::new();
        let facts = no_mtu(&down, &macs);
        let d = Desired::build(&cfg(CONFIG), &facts).unwrap();
        assert_eq!(
            d.unresolved,
            vec![Unresolved {
                vip: "web".into(),
                backend: "10.0.0.2".parse().unwrap()
            }]
        );
        let web = d.vip("web").unwrap();
        assert_eq!((web.active, web.draining), (1, 1));
        let only = d.ids.backends[&(web.meta.vip_id, "10.0.0.1".parse().unwrap())];
        assert!(web.ring.iter().all(|s| *s == only), "{:?}", web.ring);

        macs.insert(
            "10.0.0.2".parse().unwrap(),
            "02:00:00:00:00:02".parse().unwrap(),
        );
        let facts = no_mtu(&down, &macs);
        let d2 = Desired::build(&cfg(CONFIG), &facts).unwrap();
        assert!(d2.unresolved.is_empty());
        // Ids that existed stay; the new backend takes a free one.
        for (k, id) in &d.ids.backends {
            assert_eq!(d2.ids.backends[k], *id);
        }
        assert_eq!(d2.vip("web").unwrap().active, 2);
    }

    #[test]
    fn down_backends_leave_the_ring_and_are_marked() {
        let mut down = DownSet::new();
        down.insert(("web".into(), "10.0.0.1".parse().unwrap()));
        let macs = HashMap::new();
        let facts = no_mtu(&down, &macs);
        let d = Desired::build(&cfg(CONFIG), &facts).unwrap();
        let web = d.vip("web").unwrap();
        assert_eq!(web.down, 1);
        assert!(web.ring.iter().all(|s| *s == NO_BACKEND));
        assert!(
            d.summary()[0].contains("NO ACTIVE BACKEND"),
            "{:?}",
            d.summary()
        );
        assert!(d.backends.values().any(|b| b.state == BACKEND_DOWN));
    }

    /// Four backends (one more draining) with a health check: below the panic threshold
    /// (half, by default) the failures are ignored and every backend not draining stays in the
    /// ring; at or above it the failing ones leave; a threshold of 0 never panics.
    #[test]
    fn a_vip_below_its_panic_threshold_keeps_every_backend() {
        let text = |threshold: &str| {
            let mut t = String::from(
                "interface: lo\nvips:\n  - name: web\n    address: 10.0.0.10\n    port: 80\n    protocol: tcp\n    ring_size: 701\n    health_check: { kind: tcp, port: 80",
            );
            t.push_str(threshold);
            t.push_str(" }\n    backends:\n");
            for i in 1..=5 {
                let drain = if i == 5 { ", state: draining" } else { "" };
                t.push_str(&format!(
                    "      - {{ address: 10.0.0.{i}, mac: '02:00:00:00:00:0{i}'{drain} }}\n"
                ));
            }
            t
        };
        let build = |threshold: &str, failing: &[u8]| {
            // The draining backend fails too: it does not count toward the share either way.
            let down: DownSet = failing
                .iter()
                .chain([&5])
                .map(|i| ("web".to_owned(), IpAddr::from([10, 0, 0, *i])))
                .collect();
            let macs = HashMap::new();
            let d = Desired::build(&cfg(&text(threshold)), &no_mtu(&down, &macs)).unwrap();
            let web = d.vip("web").unwrap().clone();
            let in_ring: HashSet<u32> = web.ring.iter().copied().collect();
            let marked_down = d
                .backends
                .values()
                .filter(|b| b.state == BACKEND_DOWN)
                .count();
            (web, in_ring.len(), marked_down, d.summary())
        };
        let (web, in_ring, marked, _) = build("", &[1]);
        assert_eq!((web.panic, in_ring, marked, web.down), (false, 3, 2, 2));
        // Exactly half healthy is not below half.
        let (web, in_ring, _, _) = build("", &[1, 2]);
        assert_eq!((web.panic, in_ring), (false, 2));
        let (web, in_ring, marked, summary) = build("", &[1, 2, 3]);
        assert_eq!((web.panic, in_ring, web.active), (true, 4, 4));
        assert_eq!(
            marked, 0,
            "in panic nothing is marked down, the draining one drains"
        );
        assert!(summary[0].contains("PANIC"), "{summary:?}");
        let (web, in_ring, _, _) = build("", &[1, 2, 3, 4]);
        assert_eq!((web.panic, in_ring), (true, 4));
        let (web, in_ring, _, _) = build(", panic_threshold: 0", &[1, 2, 3, 4]);
        assert_eq!(
            (web.panic, web.ring.iter().all(|s| *s == NO_BACKEND)),
            (false, true)
        );
        assert_eq!(in_ring, 1);
        let (web, in_ring, _, _) = build(", panic_threshold: 80", &[1]);
        assert_eq!((web.panic, in_ring), (true, 4));
    }

    #[test]
    fn the_same_set_in_another_order_builds_the_same_maps() {
        let down = DownSet::new();
        let macs = HashMap::new();
        let facts = no_mtu(&down, &macs);
        let api = "
  - name: api
    address: 10.0.0.11
    port: 443
    protocol: tcp
    ring_size: 307
    backends:
      - { address: 10.0.0.1, mac: '02:00:00:00:00:01' }
      - { address: 10.0.0.4, mac: '02:00:00:00:00:04' }
";
        let a = Desired::build(&cfg(&format!("{CONFIG}{api}")), &facts).unwrap();
        // The VIPs swapped and each VIP's backends reversed.
        let b = format!(
            "interface: lo\nvips:{}{}",
            api.replace("10.0.0.1, mac: '02:00:00:00:00:01' }\n      - { address: 10.0.0.4, mac: '02:00:00:00:00:04'",
                        "10.0.0.4, mac: '02:00:00:00:00:04' }\n      - { address: 10.0.0.1, mac: '02:00:00:00:00:01'"),
            CONFIG
                .replace("interface: lo\nvips:", "")
                .replace("      - { address: 10.0.0.1, mac: '02:00:00:00:00:01' }\n", "")
                + "      - { address: 10.0.0.1, mac: '02:00:00:00:00:01' }\n"
        );
        assert_ne!(b, format!("{CONFIG}{api}"));
        let b = Desired::build(&cfg(&b), &facts).unwrap();
        assert_eq!(a.ids, b.ids);
        assert_eq!(a.backends, b.backends);
        for v in &a.vips {
            assert_eq!(Some(v), b.vip(&v.name));
        }
    }

    #[test]
    fn tunnels_need_an_mtu() {
        let text = CONFIG.replace("protocol: tcp", "protocol: tcp\n    forwarding: ipip");
        let down = DownSet::new();
        let macs = HashMap::new();
        let facts = no_mtu(&down, &macs);
        let e = Desired::build(&cfg(&text), &facts).unwrap_err();
        assert!(format!("{e:#}").contains("tunnel.mtu"), "{e:#}");
        let facts = Facts {
            mtu: Some(1500),
            ..facts
        };
        let d = Desired::build(&cfg(&text), &facts).unwrap();
        assert_eq!(d.settings.mtu, 1500);
    }
}

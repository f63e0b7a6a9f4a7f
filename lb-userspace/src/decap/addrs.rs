//! The addresses `xdplb decap` decapsulates for.
//!
//! They are the interface's own (read with iproute2) or the ones named on the command line.

use std::{collections::BTreeSet, net::IpAddr};

use anyhow::{bail, Context as _};
use lb_common::decap::MAX_DECAP_ADDRS;
use serde::Deserialize;

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
/// host anyway, see agent/neigh.rs).
pub(super) fn interface_addrs(interface: &str) -> anyhow::Result<Vec<InterfaceAddr>> {
    parse_ip_addr_json(&crate::datapath::nic::ip_json(&[
        "addr", "show", "dev", interface,
    ])?)
}

/// The address set to install: `explicit` (warning about any the interface does not hold,
/// since tunnels to it only reach this program if they arrive on `interface`), else the
/// interface's global addresses. Deduplicated, sorted, at most `MAX_DECAP_ADDRS`.
pub(super) fn choose_addrs(
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
}

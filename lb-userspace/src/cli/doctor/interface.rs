//! The checks a gateway and a backend both run on their interface.
//!
//! They check that it exists in this network namespace and is up, and how strict its reverse-path
//! filter is.

use super::{
    system::{self, Link},
    Finding,
};

/// Where the interface's name came from, so the fix says what to change.
pub enum NamedBy<'a> {
    /// The `interface:` of this config file.
    Config(&'a std::path::Path),
    /// `--interface` on the command line.
    Flag,
}

/// Whether `interface` exists, is up, has carrier and (when the balancer needs one) a MAC.
/// Returns the link too when it exists, for the checks that read more of it.
pub fn present(interface: &str, named_by: &NamedBy<'_>, need_mac: bool) -> (Finding, Option<Link>) {
    const CHECK: &str = "interface";
    let link = match system::link(interface) {
        Ok(Some(link)) => link,
        Ok(None) => {
            let here = system::link_names().join(", ");
            let fix = match named_by {
                NamedBy::Config(path) => format!(
                    "set `interface:` in {} to one of this namespace's interfaces: {here}",
                    path.display()
                ),
                NamedBy::Flag => {
                    format!("name one of this namespace's interfaces with --interface: {here}")
                }
            };
            return (
                Finding::fail(
                    CHECK,
                    format!("interface {interface} does not exist in this network namespace"),
                    fix,
                ),
                None,
            );
        }
        Err(e) => {
            return (
                Finding::fail(
                    CHECK,
                    format!("cannot read interface {interface}: {e:#}"),
                    "install iproute2 (`ip` reads the interface)",
                ),
                None,
            )
        }
    };
    let finding = if !link.is_up() {
        Finding::fail(
            CHECK,
            format!("{interface} is down"),
            format!("ip link set dev {interface} up"),
        )
    } else if need_mac && link.mac().is_none() {
        Finding::fail(
            CHECK,
            format!(
                "{interface} has no MAC address (link type {}): the balancer rewrites Ethernet frames",
                link.link_type
            ),
            "name the Ethernet interface clients' packets arrive on",
        )
    } else if !link.has_carrier() {
        Finding::warn(
            CHECK,
            format!("{interface} is up but has no carrier: no packets pass"),
            format!("connect it (cable, switch port, veth peer); `ip link show dev {interface}` says LOWER_UP once it is"),
        )
    } else {
        Finding::ok(
            CHECK,
            format!(
                "{interface} is up, MAC {}, MTU {}",
                link.mac().unwrap_or("none"),
                link.mtu
            ),
        )
    };
    (finding, Some(link))
}

/// `rp_filter` of `interface`. The kernel applies the larger of `all` and the interface's value
/// (IN_DEV_RPFILTER is IN_DEV_MAXCONF), so strict mode on either is strict mode. `strict_drops`
/// says what strict mode costs in this role.
pub fn rp_filter(interface: &str, strict_drops: &str) -> Finding {
    const CHECK: &str = "rp_filter";
    let all = system::ipv4_conf("all", "rp_filter");
    let dev = system::ipv4_conf(interface, "rp_filter");
    let (Some(all), Some(dev)) = (all, dev) else {
        return Finding::ok(
            CHECK,
            format!("no IPv4 settings for {interface} in /proc/sys/net/ipv4/conf (IPv4 off, or no such interface)"),
        );
    };
    let values = format!("all={all}, {interface}={dev}");
    if all.max(dev) != 1 {
        let mode = if all.max(dev) == 0 { "off" } else { "loose" };
        return Finding::ok(
            CHECK,
            format!("reverse-path filtering on {interface} is {mode} ({values})"),
        );
    }
    let names: Vec<String> = [("all", all), (interface, dev)]
        .into_iter()
        .filter(|(_, v)| *v == 1)
        .map(|(d, _)| format!("{}=2", system::ipv4_conf_name(d, "rp_filter")))
        .collect();
    Finding::warn(
        CHECK,
        format!("reverse-path filtering on {interface} is strict ({values}): {strict_drops}"),
        format!(
            "sysctl -w {} (loose; put it in /etc/sysctl.d/ to keep it)",
            names.join(" ")
        ),
    )
}

//! What `xdplb doctor` reads from the kernel, as seen from the caller's network namespace.
//!
//! It reads links (`ip -j link`), addresses, per-interface sysctls, the NIC's driver (SIOCETHTOOL),
//! capabilities, RLIMIT_MEMLOCK and the kernel release.

use std::{net::IpAddr, os::fd::AsRawFd as _};

use anyhow::{bail, Context as _};
use serde::Deserialize;

/// One interface as `ip -j link show dev IF` prints it (iproute2's JSON is a stable interface;
/// `/sys/class/net` would describe the namespace of whoever mounted `/sys`, which after
/// `nsenter --net` is not ours).
#[derive(Debug, Clone, Deserialize)]
pub struct Link {
    pub ifname: String,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub mtu: u32,
    /// The MAC, for Ethernet-like links.
    pub address: Option<String>,
    #[serde(default)]
    pub link_type: String,
    /// Present when an XDP program is attached.
    pub xdp: Option<XdpInfo>,
}

/// `ip -j link`'s `xdp` object (iproute2 ip/iplink_xdp.c, `xdp_dump_json`; not printed with
/// `-d`, so links are read without it).
#[derive(Debug, Clone, Deserialize)]
pub struct XdpInfo {
    /// `IFLA_XDP_ATTACHED`: 1 driver (native), 2 skb (generic), 3 hardware offload, 4 several.
    pub mode: u8,
    pub prog: Option<XdpProg>,
    #[serde(default)]
    pub attached: Vec<XdpAttachment>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct XdpAttachment {
    pub mode: u8,
    pub prog: Option<XdpProg>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct XdpProg {
    pub id: u32,
    /// The kernel's name of the program (at most 15 bytes; `xdplb`, `xdplb_decap`).
    pub name: Option<String>,
}

/// The word for an `IFLA_XDP_ATTACHED` mode, as the config spells it where it can.
pub fn xdp_mode_name(mode: u8) -> &'static str {
    match mode {
        1 => "native",
        2 => "generic",
        3 => "offload",
        4 => "several modes",
        _ => "unknown mode",
    }
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }

    /// Carrier: a link that is up but has none (cable, peer down) passes no packets.
    pub fn has_carrier(&self) -> bool {
        self.flags.iter().any(|f| f == "LOWER_UP")
    }

    /// The MAC, unless the link has none (`lo`, tunnels, all zeroes).
    pub fn mac(&self) -> Option<&str> {
        self.address
            .as_deref()
            .filter(|a| self.link_type == "ether" && *a != "00:00:00:00:00:00")
    }

    /// Every (program, mode) attached: one per mode, as the kernel allows one per mode.
    pub fn xdp_programs(&self) -> Vec<(XdpProg, u8)> {
        let Some(xdp) = &self.xdp else {
            return Vec::new();
        };
        let mut out: Vec<(XdpProg, u8)> = xdp
            .attached
            .iter()
            .filter_map(|a| a.prog.clone().map(|p| (p, a.mode)))
            .collect();
        if out.is_empty() {
            if let Some(p) = &xdp.prog {
                out.push((p.clone(), xdp.mode));
            }
        }
        out
    }
}

/// Parses `ip -j link show` output.
pub fn parse_links(json: &[u8]) -> anyhow::Result<Vec<Link>> {
    serde_json::from_slice(json).context("`ip -j link` printed something that is not JSON")
}

/// The interface `name` in this network namespace, `None` when there is none.
pub fn link(name: &str) -> anyhow::Result<Option<Link>> {
    if crate::datapath::nic::interface_index(name).is_none() {
        return Ok(None);
    }
    Ok(parse_links(&crate::datapath::nic::ip_json(&[
        "link", "show", "dev", name,
    ])?)?
    .into_iter()
    .next())
}

/// The names of every interface in this network namespace (for a fix that must name one).
pub fn link_names() -> Vec<String> {
    crate::datapath::nic::ip_json(&["link", "show"])
        .and_then(|j| parse_links(&j))
        .map(|links| links.into_iter().map(|l| l.ifname).collect())
        .unwrap_or_default()
}

/// The addresses on `interface`.
pub fn addresses(interface: &str) -> anyhow::Result<Vec<IpAddr>> {
    let json = crate::datapath::nic::ip_json(&["addr", "show", "dev", interface])?;
    Ok(crate::decap::parse_ip_addr_json(&json)?
        .into_iter()
        .map(|a| a.addr)
        .collect())
}

/// `/proc/sys/net/ipv4/conf/<dev>/<key>` as a number. `/proc/sys/net` shows the reader's
/// network namespace, so this is the value that applies to packets here.
pub fn ipv4_conf(dev: &str, key: &str) -> Option<i64> {
    read_number(&format!("/proc/sys/net/ipv4/conf/{dev}/{key}"))
}

/// The `sysctl` name of an ipv4 conf key. sysctl(8) separates with dots, so a dot inside an
/// interface name (a VLAN `eth0.100`) is written as a slash.
pub fn ipv4_conf_name(dev: &str, key: &str) -> String {
    format!("net.ipv4.conf.{}.{key}", dev.replace('.', "/"))
}

pub fn read_number(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `struct ethtool_drvinfo` (include/uapi/linux/ethtool.h); only `driver` is read.
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

const _: () = assert!(std::mem::size_of::<EthtoolDrvinfo>() == 196);

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// The driver of `interface` (what `ethtool -i` prints as `driver:`), through the SIOCETHTOOL
/// ioctl, which answers for the caller's network namespace.
pub fn driver(interface: &str) -> anyhow::Result<String> {
    // SAFETY: a plain datagram socket; OwnedFd closes it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a socket for SIOCETHTOOL");
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if interface.len() >= req.ifr_name.len() {
        bail!("interface name {interface} is too long");
    }
    for (d, s) in req.ifr_name.iter_mut().zip(interface.as_bytes()) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = std::ptr::from_mut(&mut info).cast();
    // SAFETY: SIOCETHTOOL reads ifr_name and the command at ifru_data and writes at most
    // size_of::<ethtool_drvinfo>() bytes there; `info` outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the driver of {interface} (SIOCETHTOOL)"));
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// RLIMIT_MEMLOCK's soft limit in bytes, `None` for unlimited.
pub fn memlock_limit() -> Option<u64> {
    // SAFETY: getrlimit writes into the struct we own.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(lim.rlim_cur)
}

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: uname fills the struct we own with NUL-terminated strings.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: on success `release` is NUL-terminated.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// `(major, minor)` of a release string such as `6.1.0-18-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// iproute2 6.1's `ip -j link show dev gw0` with the balancer attached through a link in
    /// native mode, and a loopback without XDP.
    const LINKS: &str = r#"[{"ifindex":2,"ifname":"gw0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"xdp":{"mode":1,"prog":{"id":41,"name":"xdplb","tag":"0c5ca4b0e0f6c6a5","jited":1},"attached":[{"mode":1,"prog":{"id":41,"name":"xdplb","tag":"0c5ca4b0e0f6c6a5","jited":1}}]},"qdisc":"noqueue","operstate":"UP","link_type":"ether","address":"02:00:00:00:00:01","broadcast":"ff:ff:ff:ff:ff:ff"},{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"link_type":"loopback","address":"00:00:00:00:00:00"}]"#;

    #[test]
    fn reads_state_mac_and_attached_program() {
        let links = parse_links(LINKS.as_bytes()).unwrap();
        let gw = &links[0];
        assert!(gw.is_up() && gw.has_carrier());
        assert_eq!(gw.mac(), Some("02:00:00:00:00:01"));
        let progs = gw.xdp_programs();
        assert_eq!(progs.len(), 1);
        assert_eq!(progs[0].0.name.as_deref(), Some("xdplb"));
        assert_eq!(xdp_mode_name(progs[0].1), "native");
        let lo = &links[1];
        assert_eq!(lo.mac(), None);
        assert!(lo.xdp_programs().is_empty());
    }

    #[test]
    fn sysctl_names_of_vlan_interfaces_use_slashes() {
        assert_eq!(
            ipv4_conf_name("eth0.100", "rp_filter"),
            "net.ipv4.conf.eth0/100.rp_filter"
        );
        assert_eq!(
            ipv4_conf_name("all", "arp_ignore"),
            "net.ipv4.conf.all.arp_ignore"
        );
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.10.209"), Some((5, 10)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn an_interface_that_does_not_exist_has_no_driver() {
        assert!(driver("no-such-if0").is_err());
    }
}

//! The network interface's own facts: its index and name, MTU and MAC, and its addresses.
//!
//! Read by ioctl and `ip -j`, right in the caller's network namespace (which `/sys/class/net`,
//! the namespace of whoever mounted /sys, may not be).

use std::process::Command;

use anyhow::{bail, Context as _};

use crate::config::MacAddr;

/// The index of `name`, if such an interface exists.
pub fn interface_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The name of the interface with index `index`, if it exists.
pub fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Runs the interface ioctl `request` (SIOCGIFMTU, SIOCGIFHWADDR, ...) for `interface` and
/// returns the filled request. A socket ioctl answers for the caller's network namespace,
/// which `/sys/class/net` (the namespace of whoever mounted /sys) may not.
fn interface_ioctl(
    interface: &str,
    request: libc::Ioctl,
    what: &str,
) -> anyhow::Result<libc::ifreq> {
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("opening a socket to read the {what} of {interface}"));
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = interface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        bail!("interface name {interface} is too long");
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: interface ioctls read ifr_name and write ifr_ifru of `req`.
    let r = unsafe { libc::ioctl(fd, request, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if r < 0 {
        return Err(err).with_context(|| format!("reading the {what} of interface {interface}"));
    }
    Ok(req)
}

/// The interface's MTU (one `SIOCGIFMTU` ioctl: no process, no waiting).
pub fn interface_mtu(interface: &str) -> anyhow::Result<u32> {
    let req = interface_ioctl(interface, libc::SIOCGIFMTU, "MTU")?;
    // SAFETY: the ioctl succeeded, so the union holds the MTU.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// The interface's own MAC address: the only destination the balancer balances, and the
/// source of every frame it sends.
pub fn interface_mac(interface: &str) -> anyhow::Result<MacAddr> {
    let req = interface_ioctl(interface, libc::SIOCGIFHWADDR, "MAC address")?;
    // SAFETY: the ioctl succeeded, so the union holds the hardware address.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    if mac == [0; 6] {
        bail!("interface {interface} has no MAC address (not an Ethernet interface?)");
    }
    Ok(MacAddr(mac))
}

/// Runs `ip -j ARGS` and returns its stdout (for interface addresses, which `xdplb decap`
/// reads once; iproute2's JSON output is a stable interface).
pub fn ip_json(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_index_and_an_mtu() {
        assert!(interface_index("lo").is_some());
        assert!(interface_mtu("lo").unwrap() >= 1500);
        assert!(interface_mtu("no-such-if0").is_err());
        assert!(interface_index("no-such-if0").is_none());
    }
}

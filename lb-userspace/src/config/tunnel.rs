//! IP-in-IP settings of the config: the outer source prefixes and the tunnel MTU.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

use lb_common::MIN_TUNNEL_MTU;

/// How `ipip` VIPs encapsulate. The outer source address is taken from `source_v4` /
/// `source_v6` with the host bits from the flow hash, so a backend's NIC spreads tunnelled
/// flows over its receive queues; backends never answer to it (replies go straight to the
/// client), so it only has to pass their firewalls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    /// Outer IPv4 source prefix (/0 to /32).
    #[serde(default = "default_source_v4")]
    pub source_v4: Prefix,
    /// Outer IPv6 source prefix (/96 to /128: the hash fills at most the last 32 bits).
    /// The default is the discard-only prefix of RFC 6666, which no real host uses.
    #[serde(default = "default_source_v6")]
    pub source_v6: Prefix,
    /// Largest packet, outer header included, sent toward a backend; bigger ones make the
    /// client lower its path MTU (ICMP). Default: the interface's MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<TunnelMtu>,
}

impl Default for Tunnel {
    fn default() -> Self {
        Self {
            source_v4: default_source_v4(),
            source_v6: default_source_v6(),
            mtu: None,
        }
    }
}

fn default_source_v4() -> Prefix {
    Prefix {
        addr: IpAddr::V4(Ipv4Addr::new(172, 16, 0, 0)),
        len: 16,
    }
}

fn default_source_v6() -> Prefix {
    Prefix {
        addr: IpAddr::V6(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0)),
        len: 96,
    }
}

/// An address prefix `ADDR/LEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The host bits of the last 32 bits of the address, as a mask (network order value).
    pub fn host_mask(&self) -> u32 {
        let total = if self.addr.is_ipv4() { 32 } else { 128 };
        let host = total - u32::from(self.len);
        if host >= 32 {
            u32::MAX
        } else {
            (1u32 << host) - 1
        }
    }
}

impl TryFrom<String> for Prefix {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("prefix {s:?} must be ADDRESS/LENGTH"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("prefix {s:?}: {addr:?} is not an IP address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("prefix {s:?}: {len:?} is not a prefix length"))?;
        let ok = match addr {
            IpAddr::V4(_) => len <= 32,
            // The datapath puts hash bits into the last 32 bits only.
            IpAddr::V6(_) => (96..=128).contains(&len),
        };
        if !ok {
            return Err(format!(
                "prefix {s:?}: length must be 0..=32 for IPv4 and 96..=128 for IPv6"
            ));
        }
        Ok(Self { addr, len })
    }
}

impl From<Prefix> for String {
    fn from(p: Prefix) -> String {
        format!("{}/{}", p.addr, p.len)
    }
}

/// `tunnel.mtu`: `MIN_TUNNEL_MTU` (an IPv6 minimum-MTU packet plus its outer header) to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u32")]
pub struct TunnelMtu(pub u32);

impl TryFrom<u32> for TunnelMtu {
    type Error = String;
    fn try_from(n: u32) -> Result<Self, String> {
        if !(MIN_TUNNEL_MTU..=65535).contains(&n) {
            return Err(format!(
                "tunnel.mtu {n} out of range {MIN_TUNNEL_MTU}..=65535"
            ));
        }
        Ok(Self(n))
    }
}

impl From<TunnelMtu> for u32 {
    fn from(n: TunnelMtu) -> u32 {
        n.0
    }
}

checked_scalar!(TunnelMtu, u32);
checked_scalar!(Prefix, str);

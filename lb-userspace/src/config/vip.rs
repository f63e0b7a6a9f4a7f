//! A VIP's config: its fields, the checks across them, and the VIP list's uniqueness rules.
//!
//! It also defines the types of the protocol, forwarding, hash mode and ring size fields.

use std::{collections::HashSet, fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

use lb_common::{
    DEFAULT_RING_SIZE, IPPROTO_TCP, IPPROTO_UDP, MAX_BACKENDS, MAX_RING_SIZE, MAX_VIPS,
};

use super::{Backends, HealthCheck};

/// The VIP list: unique names, unique (address, port, protocol), at most `MAX_VIPS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Vip>", into = "Vec<Vip>")]
pub struct Vips(Vec<Vip>);

impl Vips {
    pub fn iter(&self) -> std::slice::Iter<'_, Vip> {
        self.0.iter()
    }
    pub fn to_vec(&self) -> Vec<Vip> {
        self.0.clone()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Vec<Vip>> for Vips {
    type Error = String;
    fn try_from(vips: Vec<Vip>) -> Result<Self, String> {
        if vips.len() > MAX_VIPS as usize {
            return Err(format!(
                "{} VIPs, at most {MAX_VIPS} are supported",
                vips.len()
            ));
        }
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        let mut backends = 0;
        for v in &vips {
            if !names.insert(v.name.as_str()) {
                return Err(format!("duplicate VIP name {:?}", v.name));
            }
            if !keys.insert((v.address, v.port, v.protocol)) {
                return Err(format!(
                    "VIP {:?} repeats {} port {} {}: each (address, port, protocol) once",
                    v.name, v.address, v.port, v.protocol
                ));
            }
            backends += v.backends.len();
        }
        if backends > MAX_BACKENDS as usize {
            return Err(format!(
                "{backends} backends across all VIPs, at most {MAX_BACKENDS} are supported"
            ));
        }
        Ok(Self(vips))
    }
}

impl From<Vips> for Vec<Vip> {
    fn from(v: Vips) -> Self {
        v.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "VipFields")]
pub struct Vip {
    pub name: String,
    pub address: IpAddr,
    /// 0 = every port of this address and protocol.
    pub port: u16,
    pub protocol: Protocol,
    pub forwarding: Forwarding,
    pub hash: HashMode,
    /// Skip the flow table: every packet goes where the ring says (backend changes move flows).
    pub stateless: bool,
    /// The balancer answers ICMP/ICMPv6 echo requests to this VIP's address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub icmp_echo: bool,
    pub ring_size: RingSize,
    /// Probes that take a backend out of the ring while it fails them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    pub backends: Backends,
}

/// What the YAML (or `xdplb vip add`) gives for a VIP, before the checks that span fields:
/// `Vip::try_from` makes one of it, for the file and the CLI alike.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipFields {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub forwarding: Forwarding,
    #[serde(default)]
    pub hash: HashMode,
    #[serde(default)]
    pub stateless: bool,
    #[serde(default)]
    pub icmp_echo: bool,
    #[serde(default)]
    pub ring_size: RingSize,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    pub backends: Backends,
}

impl From<Vip> for VipFields {
    fn from(v: Vip) -> VipFields {
        VipFields {
            name: v.name,
            address: v.address,
            port: v.port,
            protocol: v.protocol,
            forwarding: v.forwarding,
            hash: v.hash,
            stateless: v.stateless,
            icmp_echo: v.icmp_echo,
            ring_size: v.ring_size,
            health_check: v.health_check,
            backends: v.backends,
        }
    }
}

impl TryFrom<VipFields> for Vip {
    type Error = String;
    fn try_from(f: VipFields) -> Result<Self, String> {
        let name_ok = !f.name.is_empty()
            && f.name.len() <= 64
            && f.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(format!(
                "invalid VIP name {:?}: 1 to 64 of A-Z a-z 0-9 - _ .",
                f.name
            ));
        }
        if f.address.is_unspecified() || f.address.is_multicast() {
            return Err(format!(
                "VIP {:?}: address {} cannot be a VIP",
                f.name, f.address
            ));
        }
        // A backend on the VIP's own address would be this balancer (or a host answering for
        // the VIP): frames rewritten toward it never reach a server.
        if let Some(i) = f.backends.iter().position(|b| b.address == f.address) {
            return Err(format!(
                "VIP {:?}: backends[{i}].address {} is the VIP's own address; a backend must be another host",
                f.name, f.address
            ));
        }
        // In l2 the backend gets the client's packet as it is: it answers as the VIP in the
        // VIP's family, found on the segment by its address in that family. (ipip can mix:
        // the outer header is the backend's family.)
        if f.forwarding == Forwarding::L2 {
            if let Some((i, b)) = f
                .backends
                .iter()
                .enumerate()
                .find(|(_, b)| b.address.is_ipv4() != f.address.is_ipv4())
            {
                let fam = |a: &IpAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(format!(
                    "VIP {:?}: backends[{i}].address {} is {}, the VIP is {}: an l2 backend must be of the VIP's family (forwarding: ipip can mix them)",
                    f.name,
                    b.address,
                    fam(&b.address),
                    fam(&f.address)
                ));
            }
        }
        // Maglev spreads well only when the table is much larger than the backend count.
        let min_ring = f.backends.len() as u64 * 100;
        if u64::from(f.ring_size.0) < min_ring {
            return Err(format!(
                "VIP {:?}: ring_size {} is too small for {} backends (at least 100 per backend)",
                f.name,
                f.ring_size.0,
                f.backends.len()
            ));
        }
        Ok(Vip {
            name: f.name,
            address: f.address,
            port: f.port,
            protocol: f.protocol,
            forwarding: f.forwarding,
            hash: f.hash,
            stateless: f.stateless,
            icmp_echo: f.icmp_echo,
            ring_size: f.ring_size,
            health_check: f.health_check,
            backends: f.backends,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// How packets reach a backend. (The CLI's help shows the first line of each variant's doc.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Backends on this segment, reached by their MAC.
    ///
    /// They hold the VIP on `lo`.
    #[default]
    L2,
    /// IP-in-IP to backends anywhere routed through this interface.
    ///
    /// 4in4, 6in6, 4in6 or 6in4 by the VIP's and the backend's families. Backends decapsulate
    /// (`xdplb decap`, or the kernel's ipip/ip6tnl) and hold the VIP on `lo`.
    Ipip,
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forwarding::L2 => "l2",
            Forwarding::Ipip => "ipip",
        })
    }
}

/// What a VIP's flows are hashed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum HashMode {
    /// Addresses, ports and protocol: each connection on its own.
    #[default]
    #[serde(rename = "5-tuple")]
    #[value(name = "5-tuple")]
    FiveTuple,
    /// The client's address only: all of a client's connections to one backend.
    #[serde(rename = "source-ip")]
    #[value(name = "source-ip")]
    SourceIp,
}

impl fmt::Display for HashMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HashMode::FiveTuple => "5-tuple",
            HashMode::SourceIp => "source-ip",
        })
    }
}

/// Maglev table size: a prime in 3..=`MAX_RING_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u32")]
pub struct RingSize(pub u32);

impl Default for RingSize {
    fn default() -> Self {
        Self(DEFAULT_RING_SIZE)
    }
}

impl TryFrom<u32> for RingSize {
    type Error = String;
    fn try_from(n: u32) -> Result<Self, String> {
        if !(3..=MAX_RING_SIZE).contains(&n) {
            return Err(format!("ring_size {n} out of range 3..={MAX_RING_SIZE}"));
        }
        if !is_prime(n) {
            return Err(format!(
                "ring_size {n} is not prime (Maglev needs a prime; e.g. 65537, 131071, 262139)"
            ));
        }
        Ok(Self(n))
    }
}

impl From<RingSize> for u32 {
    fn from(n: RingSize) -> u32 {
        n.0
    }
}

/// Whether `n` is prime (Maglev ring sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

checked_scalar!(RingSize, u32);

//! The YAML config: serde types whose deserialization *is* the validation, so every error carries the field path and line from serde_yaml. The only place YAML becomes lb-common values.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use lb_common::{
    DEFAULT_CONNS, DEFAULT_RING_SIZE, IPPROTO_TCP, IPPROTO_UDP, MAX_BACKENDS, MAX_RING_SIZE,
    MAX_VIPS, MIN_TUNNEL_MTU,
};

/// A whole balancer configuration (one NIC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The NIC the balancer attaches to.
    pub interface: InterfaceName,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// bpffs directory holding the pinned maps, read by `xdplb stats`.
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    /// Flow-table capacity (LRU); fixed while the agent runs.
    #[serde(default)]
    pub flow_table_size: FlowTableSize,
    /// Unix socket of the agent's local API (root-only); the CLI talks to it.
    #[serde(default = "default_api_socket")]
    pub api_socket: PathBuf,
    /// Prometheus metrics listener; `null` turns it off. Loopback by default: metrics name
    /// every backend.
    #[serde(default = "default_metrics")]
    pub metrics: Option<SocketAddr>,
    /// Leave the XDP program attached (and its state pinned) when the agent exits, so a restart
    /// or upgrade does not interrupt forwarding. `xdplb detach` removes it.
    #[serde(default)]
    pub keep_attached_on_exit: bool,
    /// IP-in-IP settings for VIPs with `forwarding: ipip`.
    #[serde(default)]
    pub tunnel: Tunnel,
    pub vips: Vips,
}

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

fn default_pin_path() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/xdplb")
}

fn default_api_socket() -> PathBuf {
    PathBuf::from("/run/xdplb/xdplb.sock")
}

fn default_metrics() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9842)))
}

impl Config {
    /// Parses and validates a config; the error names the file, the field and the line.
    pub fn from_yaml(text: &str, origin: &str) -> anyhow::Result<Config> {
        serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))
    }

    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_yaml(&text, &path.display().to_string())
    }
}

/// `auto` tries native (driver) XDP and falls back to generic (skb) XDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Generic,
}

/// A Linux interface name: 1 to 15 bytes, no '/', no whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct InterfaceName(String);

impl InterfaceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InterfaceName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty()
            || s.len() > 15
            || s == "."
            || s == ".."
            || s.contains('/')
            || s.chars().any(char::is_whitespace)
        {
            return Err(format!(
                "invalid interface name {s:?}: 1 to 15 characters, no '/' or spaces"
            ));
        }
        Ok(Self(s))
    }
}

impl From<InterfaceName> for String {
    fn from(n: InterfaceName) -> String {
        n.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u32")]
pub struct FlowTableSize(pub u32);

impl Default for FlowTableSize {
    fn default() -> Self {
        Self(DEFAULT_CONNS)
    }
}

impl TryFrom<u32> for FlowTableSize {
    type Error = String;
    fn try_from(n: u32) -> Result<Self, String> {
        const MAX: u32 = 64 << 20;
        if !(1024..=MAX).contains(&n) {
            return Err(format!("flow_table_size {n} out of range 1024..={MAX}"));
        }
        Ok(Self(n))
    }
}

impl From<FlowTableSize> for u32 {
    fn from(n: FlowTableSize) -> u32 {
        n.0
    }
}

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

/// What the YAML holds for a VIP, before the checks that span fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VipFields {
    name: String,
    address: IpAddr,
    port: u16,
    protocol: Protocol,
    #[serde(default)]
    forwarding: Forwarding,
    #[serde(default)]
    hash: HashMode,
    #[serde(default)]
    stateless: bool,
    #[serde(default)]
    icmp_echo: bool,
    #[serde(default)]
    ring_size: RingSize,
    #[serde(default)]
    health_check: Option<HealthCheck>,
    backends: Backends,
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

/// A backend health probe, run from the balancer host against each backend's own address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "HealthCheckFields")]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    /// Port probed on the backend's address (often the VIP's port).
    pub port: u16,
    /// `http` only: the path requested with GET.
    pub path: String,
    /// `http` only: the status that counts as healthy.
    pub expect_status: u16,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take an up backend out.
    pub fall: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthCheckFields {
    kind: HealthCheckKind,
    port: u16,
    #[serde(default = "default_hc_path")]
    path: String,
    #[serde(default = "default_hc_status")]
    expect_status: u16,
    #[serde(default = "default_hc_interval", with = "humantime_serde")]
    interval: Duration,
    #[serde(default = "default_hc_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_hc_rise")]
    rise: u32,
    #[serde(default = "default_hc_fall")]
    fall: u32,
}

fn default_hc_path() -> String {
    "/".into()
}
fn default_hc_status() -> u16 {
    200
}
fn default_hc_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_hc_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_hc_rise() -> u32 {
    2
}
fn default_hc_fall() -> u32 {
    3
}

impl TryFrom<HealthCheckFields> for HealthCheck {
    type Error = String;
    fn try_from(f: HealthCheckFields) -> Result<Self, String> {
        if f.port == 0 {
            return Err("health_check.port must be 1..=65535".into());
        }
        if f.interval < Duration::from_millis(100) || f.interval > Duration::from_secs(3600) {
            return Err(format!(
                "health_check.interval {:?} out of range 100ms..=1h",
                f.interval
            ));
        }
        if f.timeout.is_zero() || f.timeout > f.interval {
            return Err(format!(
                "health_check.timeout {:?} must be above zero and at most the interval {:?}",
                f.timeout, f.interval
            ));
        }
        if !(1..=100).contains(&f.rise) || !(1..=100).contains(&f.fall) {
            return Err("health_check.rise and fall must be 1..=100".into());
        }
        if !f.path.starts_with('/') || f.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "health_check.path {:?} must start with '/' and have no spaces",
                f.path
            ));
        }
        if !(100..=599).contains(&f.expect_status) {
            return Err(format!(
                "health_check.expect_status {} is not an HTTP status",
                f.expect_status
            ));
        }
        Ok(HealthCheck {
            kind: f.kind,
            port: f.port,
            path: f.path,
            expect_status: f.expect_status,
            interval: f.interval,
            timeout: f.timeout,
            rise: f.rise,
            fall: f.fall,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// A TCP connect that completes within the timeout.
    Tcp,
    /// `GET path` over HTTP/1.1 answering `expect_status` within the timeout.
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// How packets reach a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Backends share the balancer's L2 segment and hold the VIP on `lo`.
    #[default]
    L2,
    /// IP-in-IP to the backend's address, wherever it is routed (through this interface):
    /// 4in4, 6in6, 4in6 or 6in4 by the VIP's and the backend's families. Backends decapsulate
    /// (`xdplb decap`, or the kernel's ipip/ip6tnl) and hold the VIP on `lo`.
    Ipip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HashMode {
    #[default]
    #[serde(rename = "5-tuple")]
    FiveTuple,
    #[serde(rename = "source-ip")]
    SourceIp,
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

/// A VIP's backends: unique addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<BackendConfig>", into = "Vec<BackendConfig>")]
pub struct Backends(Vec<BackendConfig>);

impl Backends {
    pub fn iter(&self) -> std::slice::Iter<'_, BackendConfig> {
        self.0.iter()
    }
    pub fn to_vec(&self) -> Vec<BackendConfig> {
        self.0.clone()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Vec<BackendConfig>> for Backends {
    type Error = String;
    fn try_from(list: Vec<BackendConfig>) -> Result<Self, String> {
        let mut seen = HashSet::new();
        for b in &list {
            if !seen.insert(b.address) {
                return Err(format!("backend {} is listed twice", b.address));
            }
        }
        Ok(Self(list))
    }
}

impl From<Backends> for Vec<BackendConfig> {
    fn from(b: Backends) -> Self {
        b.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// Resolved from the kernel's neighbour table when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    #[serde(default)]
    pub weight: Weight,
    #[serde(default)]
    pub state: BackendState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// In the Maglev ring.
    #[default]
    Active,
    /// Out of the ring; keeps the flows it already has.
    Draining,
}

/// Relative share of new flows: 1..=65535 (default 100). Use `state: draining` for zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u32")]
pub struct Weight(pub u32);

impl Default for Weight {
    fn default() -> Self {
        Self(100)
    }
}

impl TryFrom<u32> for Weight {
    type Error = String;
    fn try_from(n: u32) -> Result<Self, String> {
        if !(1..=65535).contains(&n) {
            return Err(format!(
                "weight {n} out of range 1..=65535 (to stop new flows use state: draining)"
            ));
        }
        Ok(Self(n))
    }
}

impl From<Weight> for u32 {
    fn from(w: Weight) -> u32 {
        w.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid MAC address {s:?}: expected six hex pairs like 02:00:00:00:00:11");
        let mut mac = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut mac {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if mac == [0; 6] || mac[0] & 1 == 1 {
            return Err(format!(
                "MAC address {s:?} is zero or multicast; a backend needs its unicast MAC"
            ));
        }
        Ok(MacAddr(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Deserializes a validated scalar inside the visitor, while serde_yaml still points at the
/// value: that is what puts the field's path and line into the error (a `try_from` check runs
/// later and is reported at the enclosing mapping).
macro_rules! checked_scalar {
    ($ty:ident, str) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a ", stringify!($ty), " string"))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        $ty::try_from(v.to_owned()).map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
    ($ty:ident, u32) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a non-negative integer")
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        let v =
                            u32::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))?;
                        $ty::try_from(v).map_err(E::custom)
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        let v =
                            u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))?;
                        self.visit_u64(v)
                    }
                }
                d.deserialize_u32(V)
            }
        }
    };
}

checked_scalar!(InterfaceName, str);
checked_scalar!(MacAddr, str);
checked_scalar!(FlowTableSize, u32);
checked_scalar!(RingSize, u32);
checked_scalar!(Weight, u32);
checked_scalar!(TunnelMtu, u32);
checked_scalar!(Prefix, str);

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
interface: eth0
xdp_mode: native
vips:
  - name: web
    address: 203.0.113.10
    port: 443
    protocol: tcp
    health_check: { kind: http, port: 8443, path: /healthz, interval: 500ms, timeout: 200ms, fall: 2 }
    backends:
      - address: 10.0.0.11
        mac: 02:00:00:00:00:11
        weight: 100
      - { address: 10.0.0.12, weight: 50, state: draining }
  - name: dns6
    address: 2001:db8::53
    port: 0
    protocol: udp
    hash: source-ip
    stateless: true
    ring_size: 131071
    backends:
      - address: 2001:db8:1::1
";

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::from_yaml(GOOD, "good.yaml").expect("valid");
        assert_eq!(c.interface.as_str(), "eth0");
        assert_eq!(c.xdp_mode, XdpMode::Native);
        assert_eq!(c.flow_table_size.0, DEFAULT_CONNS);
        assert_eq!(c.pin_path, PathBuf::from("/sys/fs/bpf/xdplb"));
        let web = c.vips.iter().next().unwrap();
        assert_eq!(web.ring_size.0, 65537);
        let hc = web.health_check.as_ref().expect("health check");
        assert_eq!(
            (hc.kind, hc.port, hc.path.as_str()),
            (HealthCheckKind::Http, 8443, "/healthz")
        );
        assert_eq!(
            (hc.interval, hc.timeout, hc.rise, hc.fall),
            (Duration::from_millis(500), Duration::from_millis(200), 2, 2)
        );
        assert_eq!(hc.expect_status, 200);
        assert_eq!(c.metrics, Some("127.0.0.1:9842".parse().unwrap()));
        assert_eq!(c.api_socket, PathBuf::from("/run/xdplb/xdplb.sock"));
        assert!(!c.keep_attached_on_exit);
        // What the agent writes back parses to the same config.
        let again = Config::from_yaml(&serde_yaml::to_string(&c).unwrap(), "round trip").unwrap();
        assert_eq!(again, c);
        assert_eq!(web.hash, HashMode::FiveTuple);
        let b: Vec<_> = web.backends.iter().collect();
        assert_eq!(b[0].mac, Some(MacAddr([2, 0, 0, 0, 0, 0x11])));
        assert_eq!(b[1].state, BackendState::Draining);
        assert_eq!(b[1].weight.0, 50);
        let dns = c.vips.iter().nth(1).unwrap();
        assert!(dns.stateless);
        assert_eq!(dns.hash, HashMode::SourceIp);
        assert_eq!(dns.protocol, Protocol::Udp);
    }

    /// Replaces `from` (which must occur once) in the good config and returns the error text.
    fn error_of(from: &str, to: &str) -> String {
        assert_eq!(
            GOOD.matches(from).count(),
            1,
            "fixture {from:?} must be unique"
        );
        let text = GOOD.replacen(from, to, 1);
        format!(
            "{:#}",
            Config::from_yaml(&text, "bad.yaml").expect_err("must be rejected")
        )
    }

    #[test]
    fn bad_configs_name_the_field_and_line() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "xdp_mode: native",
                "xdp_mode: turbo",
                &["xdp_mode", "unknown variant `turbo`", "line 2"],
            ),
            (
                "address: 10.0.0.12,",
                "address: 10.0.0.300,",
                &[
                    "vips[0].backends[1].address",
                    "invalid IP address",
                    "line 13",
                ],
            ),
            (
                "mac: 02:00:00:00:00:11",
                "mac: 02:00:00:00:11",
                &["vips[0].backends[0].mac", "invalid MAC", "line 11"],
            ),
            (
                "weight: 100",
                "weight: 0",
                &["vips[0].backends[0].weight", "out of range", "line 12"],
            ),
            (
                "ring_size: 131071",
                "ring_size: 131072",
                &["vips[1].ring_size", "131072 is not prime", "line 20"],
            ),
            (
                "protocol: udp",
                "protocol: icmp",
                &["vips[1].protocol", "unknown variant `icmp`", "line 17"],
            ),
            (
                "    hash: source-ip",
                "    hash: source-ip\n    colour: blue",
                &["vips[1]", "unknown field `colour`", "line 19"],
            ),
            (
                "port: 443",
                "port: 70000",
                &["vips[0].port", "expected u16", "line 6"],
            ),
            (
                "address: 10.0.0.12,",
                "address: 10.0.0.11,",
                &["vips[0]", "backend 10.0.0.11 is listed twice", "line 4"],
            ),
            ("name: dns6", "name: web", &["duplicate VIP name \"web\""]),
            (
                "interface: eth0",
                "interface: a-very-long-interface-name",
                &["interface", "invalid interface name", "line 1"],
            ),
        ];
        for (from, to, needles) in cases {
            let err = error_of(from, to);
            for n in *needles {
                assert!(
                    err.contains(n),
                    "error for {to:?} should mention {n:?}, got: {err}"
                );
            }
        }
    }

    #[test]
    fn tunnel_settings_parse_and_are_checked() {
        let with = |tunnel: &str| {
            let text = GOOD.replacen("vips:\n", &format!("tunnel:\n{tunnel}vips:\n"), 1);
            Config::from_yaml(&text, "t.yaml")
        };
        let cfg =
            with("  source_v4: 10.99.0.0/20\n  source_v6: 'fd00:1::/112'\n  mtu: 9000\n").unwrap();
        assert_eq!(cfg.tunnel.source_v4.host_mask(), 0x0fff);
        assert_eq!(cfg.tunnel.source_v6.host_mask(), 0xffff);
        assert_eq!(cfg.tunnel.mtu, Some(TunnelMtu(9000)));
        let defaults = Config::from_yaml(GOOD, "good.yaml").unwrap().tunnel;
        assert_eq!(String::from(defaults.source_v4), "172.16.0.0/16");
        assert_eq!(String::from(defaults.source_v6), "100::/96");
        assert_eq!(defaults.mtu, None);
        for (bad, words) in [
            (
                "  source_v6: 'fd00::/64'\n",
                &["tunnel.source_v6", "96..=128", "line"][..],
            ),
            (
                "  source_v4: 10.0.0.0\n",
                &["tunnel.source_v4", "ADDRESS/LENGTH"][..],
            ),
            (
                "  source_v4: 10.0.0.0/33\n",
                &["tunnel.source_v4", "0..=32"][..],
            ),
            ("  mtu: 1000\n", &["tunnel.mtu", "1320..=65535"][..]),
            ("  mtu: 1500\n  mss: 1460\n", &["unknown field `mss`"][..]),
        ] {
            let e = format!("{:#}", with(bad).expect_err(bad));
            for w in words {
                assert!(e.contains(w), "{bad:?}: {e}");
            }
        }
    }

    #[test]
    fn ipip_and_icmp_echo_are_per_vip() {
        let text = GOOD.replacen(
            "    protocol: udp\n",
            "    protocol: udp\n    forwarding: ipip\n    icmp_echo: true\n",
            1,
        );
        let cfg = Config::from_yaml(&text, "t.yaml").unwrap();
        let dns = cfg
            .vips
            .iter()
            .find(|v| v.protocol == Protocol::Udp)
            .unwrap();
        assert_eq!((dns.forwarding, dns.icmp_echo), (Forwarding::Ipip, true));
        let e = format!(
            "{:#}",
            Config::from_yaml(
                &GOOD.replacen(
                    "    protocol: udp\n",
                    "    protocol: udp\n    forwarding: gre\n",
                    1
                ),
                "t.yaml"
            )
            .expect_err("gre")
        );
        assert!(
            e.contains("unknown variant `gre`") && e.contains("forwarding"),
            "{e}"
        );
    }

    #[test]
    fn missing_required_field_is_named() {
        let err = error_of("    port: 443\n", "");
        assert!(err.contains("missing field `port`"), "{err}");
    }

    #[test]
    fn ring_must_be_large_for_backends() {
        let err = error_of("ring_size: 131071", "ring_size: 97");
        assert!(err.contains("too small"), "{err}");
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(3) && is_prime(MAX_RING_SIZE));
        assert!(!is_prime(65535) && !is_prime(1) && !is_prime(0));
    }
}

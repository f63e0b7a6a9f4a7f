//! The YAML config: serde types whose deserialization *is* the validation.
//!
//! Every error therefore carries the field path and line from serde_yaml. This module is the only
//! place a config is parsed and validated: the CLI and the control API build their changes through
//! its functions too. It produces no map values: `model::desired` alone turns a valid config into
//! lb-common keys and values.
//!
//! The top-level settings live here; a VIP's fields, its health check, its backends, the tunnel
//! settings and the `announce:` section each have a file.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use lb_common::DEFAULT_CONNS;

/// Deserializes a validated scalar inside the visitor, while serde_yaml still points at the
/// value: that is what puts the field's path and line into the error (a `try_from` check runs
/// later and is reported at the enclosing mapping).
macro_rules! checked_scalar {
    (@visitor $ty:ident, $deserialize:ident, $expecting:expr, $($visit:tt)*) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    $($visit)*
                }
                d.$deserialize(V)
            }
        }
    };
    ($ty:ident, str) => {
        checked_scalar!(@visitor $ty, deserialize_str, concat!("a ", stringify!($ty), " string"),
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                $ty::try_from(v.to_owned()).map_err(E::custom)
            }
        );
    };
    ($ty:ident, u32) => {
        checked_scalar!(@visitor $ty, deserialize_u32, "a non-negative integer",
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                let v = u32::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))?;
                $ty::try_from(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                let v = u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))?;
                self.visit_u64(v)
            }
        );
    };
}

mod announce;
mod backend;
mod health_check;
#[cfg(test)]
mod tests;
mod tunnel;
mod vip;

pub use announce::Announce;
pub use backend::{check_host_address, BackendConfig, BackendState, Backends, MacAddr, Weight};
pub use health_check::{HealthCheck, HealthCheckKind};
pub use tunnel::{Prefix, Tunnel, TunnelMtu};
pub use vip::{is_prime, Forwarding, HashMode, Protocol, RingSize, Vip, VipFields, Vips};

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
    /// A second MAC the balancer answers for besides the interface's own, e.g. the virtual MAC
    /// of a VRRP/keepalived pair. Frames addressed to any other MAC are never balanced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_mac: Option<MacAddr>,
    /// Announce the VIPs to the routers through BIRD (`announce:`); absent, nothing is announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<Announce>,
    pub vips: Vips,
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
        let text = read_text(path)?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// This config with another VIP list, checked as the file's would be: each VIP's checks
    /// across its fields, then the list's rules. For changes made through the API.
    pub fn with_vips(&self, vips: Vec<Vip>) -> Result<Config, String> {
        let vips = vips
            .into_iter()
            .map(|v| Vip::try_from(VipFields::from(v)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            vips: Vips::try_from(vips)?,
            ..self.clone()
        })
    }
}

/// The `api_socket` of a config file that does not validate, so the CLI can still reach the
/// agent that runs on the last good version of it: the key read on its own from the YAML, or
/// from its top-level line when the YAML itself is broken; absent, the default (as the agent
/// would have it). `None` when the file cannot be read at all.
pub fn api_socket_of_broken(path: &Path) -> Option<PathBuf> {
    let text = read_text(path).ok()?;
    if let Ok(serde_yaml::Value::Mapping(m)) = serde_yaml::from_str::<serde_yaml::Value>(&text) {
        return Some(
            match m.get("api_socket").and_then(serde_yaml::Value::as_str) {
                Some(s) => PathBuf::from(s),
                None => default_api_socket(),
            },
        );
    }
    let line = text.lines().find_map(|l| l.strip_prefix("api_socket:"));
    let value = line.map(|v| v.split(" #").next().unwrap_or(v).trim());
    let value = value.map(|v| v.trim_matches(|c| c == '"' || c == '\''));
    Some(match value {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => default_api_socket(),
    })
}

/// Largest config file read. The largest config the datapath can hold (512 VIPs, 16384
/// backends) is about 1 MiB of YAML; a bigger file is a mistake, not a config.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The text of a config file, refused (naming the file) when it is larger than
/// [`MAX_CONFIG_BYTES`] or not UTF-8. Never reads more than that limit.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        anyhow::bail!(
            "config {} is larger than {} MiB, which no config needs (512 VIPs with 16384 backends take about 1 MiB)",
            path.display(),
            MAX_CONFIG_BYTES >> 20
        );
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "config {} is not text: invalid UTF-8 at byte {}",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native if the driver supports it, else generic (with a warning).
    #[default]
    Auto,
    /// In the driver, before the kernel allocates an skb: the fast mode.
    Native,
    /// After the kernel allocated an skb: works on every interface, slower.
    Generic,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        })
    }
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

checked_scalar!(InterfaceName, str);
checked_scalar!(FlowTableSize, u32);

//! A VIP's backends: the list's uniqueness rule, one backend's address, weight, state and MAC.

use std::{collections::HashMap, fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

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
        let mut seen = HashMap::new();
        for (i, b) in list.iter().enumerate() {
            if let Some(first) = seen.insert(b.address, i) {
                return Err(format!(
                    "backends[{i}].address {} is listed twice (also backends[{first}])",
                    b.address
                ));
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
    #[serde(deserialize_with = "host_address")]
    pub address: IpAddr,
    /// Resolved from the kernel's neighbour table when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    #[serde(default)]
    pub weight: Weight,
    #[serde(default)]
    pub state: BackendState,
}

/// A backend's address, checked inside the visitor (so the error carries the field's path and
/// line, as `checked_scalar!` does): it must be some host's unicast address.
fn host_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = IpAddr;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an IP address")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IpAddr, E> {
            let a: IpAddr = v
                .parse()
                .map_err(|_| E::custom(format!("invalid IP address {v:?}")))?;
            check_host_address(a).map_err(E::custom)
        }
    }
    d.deserialize_str(V)
}

/// A backend's address must be some host's unicast address (the config file's check, and the
/// CLI's for `backend add`).
pub fn check_host_address(a: IpAddr) -> Result<IpAddr, String> {
    let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
    if a.is_unspecified() || a.is_multicast() || a.is_loopback() || broadcast {
        return Err(format!(
            "backend address {a} is not a host's address (unspecified, loopback, multicast or broadcast)"
        ));
    }
    Ok(a)
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

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
        })
    }
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

checked_scalar!(MacAddr, str);
checked_scalar!(Weight, u32);

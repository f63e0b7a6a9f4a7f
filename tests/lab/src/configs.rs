//! Test configs in one place: a small builder that writes the agent's YAML, and named backends.
//!
//! Tests hand the agent YAML text, as an operator does, so the config parser stays under test;
//! this module writes that text so a VIP or a backend list is spelled once rather than per file.

use std::fmt;

/// One backend line of a VIP.
#[derive(Debug, Clone)]
pub struct Backend {
    address: String,
    mac: Option<String>,
    weight: Option<u32>,
    state: Option<String>,
}

impl Backend {
    /// A backend with only an address (the agent resolves its MAC).
    pub fn new(address: impl Into<String>) -> Backend {
        Backend {
            address: address.into(),
            mac: None,
            weight: None,
            state: None,
        }
    }

    pub fn mac(mut self, mac: impl Into<String>) -> Backend {
        self.mac = Some(mac.into());
        self
    }

    pub fn weight(mut self, weight: u32) -> Backend {
        self.weight = Some(weight);
        self
    }

    /// `draining` or `active`, written after the weight.
    pub fn state(mut self, state: &str) -> Backend {
        self.state = Some(state.into());
        self
    }
}

/// Backend `i` (1 to 9) of the packet fixtures' segment: 10.200.0.10`i`, MAC
/// 02:00:00:00:01:0`i`.
pub fn lan4(i: u8) -> Backend {
    Backend::new(format!("10.200.0.{}", 100 + u16::from(i))).mac(format!("02:00:00:00:01:{i:02x}"))
}

/// The IPv6 twin of [`lan4`]: fd00:200::10`i`, with the same MAC.
pub fn lan6(i: u8) -> Backend {
    Backend::new(format!("fd00:200::{:x}", 0x100 + u16::from(i)))
        .mac(format!("02:00:00:00:01:{i:02x}"))
}

/// One entry of `vips:`.
#[derive(Debug, Clone)]
pub struct Vip {
    name: String,
    address: String,
    port: u16,
    protocol: String,
    options: Vec<(String, String)>,
    backends: Vec<Backend>,
}

/// A VIP with no options and no backends yet.
pub fn vip(name: &str, address: &str, port: u16, protocol: &str) -> Vip {
    Vip {
        name: name.into(),
        address: address.into(),
        port,
        protocol: protocol.into(),
        options: Vec::new(),
        backends: Vec::new(),
    }
}

impl Vip {
    /// Sets a further key (`ring_size`, `hash`, `forwarding`, ...), written after `protocol`.
    pub fn set(mut self, key: &str, value: impl fmt::Display) -> Vip {
        self.options.push((key.into(), value.to_string()));
        self
    }

    pub fn backend(mut self, backend: Backend) -> Vip {
        self.backends.push(backend);
        self
    }

    pub fn backends(mut self, backends: impl IntoIterator<Item = Backend>) -> Vip {
        self.backends.extend(backends);
        self
    }
}

/// A whole config file: the interface, any further top-level text, then the VIPs in order.
#[derive(Debug, Clone)]
pub struct ConfigYaml {
    interface: String,
    top: String,
    vips: Vec<Vip>,
}

/// A config for `interface` with no VIPs yet.
pub fn config(interface: &str) -> ConfigYaml {
    ConfigYaml {
        interface: interface.into(),
        top: String::new(),
        vips: Vec::new(),
    }
}

impl ConfigYaml {
    /// Top-level YAML written after `interface:` as given (a `tunnel:` section, `xdp_mode:`,
    /// ...); each line ends with a newline.
    pub fn top(mut self, yaml: &str) -> ConfigYaml {
        self.top.push_str(yaml);
        if !self.top.ends_with('\n') {
            self.top.push('\n');
        }
        self
    }

    pub fn vip(mut self, vip: Vip) -> ConfigYaml {
        self.vips.push(vip);
        self
    }

    /// The YAML text.
    pub fn yaml(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ConfigYaml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "interface: {}", self.interface)?;
        f.write_str(&self.top)?;
        if self.vips.is_empty() {
            return writeln!(f, "vips: []");
        }
        writeln!(f, "vips:")?;
        for v in &self.vips {
            writeln!(f, "  - name: {}", v.name)?;
            writeln!(f, "    address: {}", scalar(&v.address))?;
            writeln!(f, "    port: {}", v.port)?;
            writeln!(f, "    protocol: {}", v.protocol)?;
            for (k, val) in &v.options {
                writeln!(f, "    {k}: {val}")?;
            }
            if v.backends.is_empty() {
                writeln!(f, "    backends: []")?;
                continue;
            }
            writeln!(f, "    backends:")?;
            for b in &v.backends {
                write!(f, "      - {{ address: {}", scalar(&b.address))?;
                if let Some(mac) = &b.mac {
                    write!(f, ", mac: '{mac}'")?;
                }
                if let Some(w) = b.weight {
                    write!(f, ", weight: {w}")?;
                }
                if let Some(state) = &b.state {
                    write!(f, ", state: {state}")?;
                }
                writeln!(f, " }}")?;
            }
        }
        Ok(())
    }
}

/// An address as the configs write it: IPv6 quoted (YAML would read `::` oddly in a flow
/// mapping), IPv4 bare.
fn scalar(address: &str) -> String {
    if address.contains(':') {
        format!("'{address}'")
    } else {
        address.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_yaml_an_operator_would() {
        let y = config("lo")
            .top("tunnel:\n  mtu: 1500")
            .vip(
                vip("web", "10.201.0.10", 80, "tcp")
                    .set("ring_size", 1009)
                    .backend(lan4(1))
                    .backend(lan4(3).weight(50))
                    .backend(Backend::new("10.200.0.104").state("draining")),
            )
            .vip(vip("v6", "fd00:201::10", 53, "udp").backend(lan6(2)))
            .vip(vip("empty", "10.201.0.13", 80, "tcp"))
            .yaml();
        assert_eq!(
            y,
            "interface: lo\ntunnel:\n  mtu: 1500\nvips:\n  - name: web\n    address: 10.201.0.10\n    port: 80\n    protocol: tcp\n    ring_size: 1009\n    backends:\n      - { address: 10.200.0.101, mac: '02:00:00:00:01:01' }\n      - { address: 10.200.0.103, mac: '02:00:00:00:01:03', weight: 50 }\n      - { address: 10.200.0.104, state: draining }\n  - name: v6\n    address: 'fd00:201::10'\n    port: 53\n    protocol: udp\n    backends:\n      - { address: 'fd00:200::102', mac: '02:00:00:00:01:02' }\n  - name: empty\n    address: 10.201.0.13\n    port: 80\n    protocol: tcp\n    backends: []\n"
        );
        assert_eq!(config("lo").yaml(), "interface: lo\nvips: []\n");
    }
}

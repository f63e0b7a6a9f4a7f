//! The map contents the model takes as data, and the keys and settings it derives from the config.

use super::*;

/// The map contents the model takes as data: read back from a loaded program's maps, or
/// taken from the [`Desired`] value that would be written to them.
pub trait Tables {
    fn vips(&self) -> anyhow::Result<Vec<(VipKey, VipMeta)>>;
    fn ring(&self, vip_id: u32) -> anyhow::Result<Vec<u32>>;
    fn vip_addrs(&self) -> anyhow::Result<Vec<(AddrKey, AddrMeta)>>;
    fn settings(&self) -> anyhow::Result<Settings>;
    /// Every used backend slot, with its id.
    fn backends(&self) -> anyhow::Result<Vec<(u32, Backend)>>;
}

impl Tables for BalancerMaps {
    fn vips(&self) -> anyhow::Result<Vec<(VipKey, VipMeta)>> {
        BalancerMaps::vips(self)
    }
    fn ring(&self, vip_id: u32) -> anyhow::Result<Vec<u32>> {
        BalancerMaps::ring(self, vip_id)
    }
    fn vip_addrs(&self) -> anyhow::Result<Vec<(AddrKey, AddrMeta)>> {
        BalancerMaps::vip_addrs(self)
    }
    fn settings(&self) -> anyhow::Result<Settings> {
        BalancerMaps::settings(self)
    }
    fn backends(&self) -> anyhow::Result<Vec<(u32, Backend)>> {
        BalancerMaps::backends(self)
    }
}

impl Tables for Desired {
    fn vips(&self) -> anyhow::Result<Vec<(VipKey, VipMeta)>> {
        Ok(self.vips.iter().map(|v| (v.key, v.meta)).collect())
    }
    fn ring(&self, vip_id: u32) -> anyhow::Result<Vec<u32>> {
        self.vips
            .iter()
            .find(|v| v.meta.vip_id == vip_id)
            // As the agent writes it the first time: owners without history.
            .map(|v| {
                v.ring
                    .iter()
                    .map(|id| lb_common::history::ring_slot(*id, NO_BACKEND))
                    .collect()
            })
            .with_context(|| format!("no desired VIP has id {vip_id}"))
    }
    fn vip_addrs(&self) -> anyhow::Result<Vec<(AddrKey, AddrMeta)>> {
        Ok(self.addrs.iter().map(|(k, m)| (*k, *m)).collect())
    }
    fn settings(&self) -> anyhow::Result<Settings> {
        Ok(self.settings)
    }
    fn backends(&self) -> anyhow::Result<Vec<(u32, Backend)>> {
        Ok(self.backends.iter().map(|(id, b)| (*id, *b)).collect())
    }
}
/// An address as the maps hold it: the first 4 or all 16 bytes, and the family.
pub(super) fn addr_bytes(address: std::net::IpAddr) -> ([u8; 16], Family) {
    let mut addr = [0u8; 16];
    match address {
        std::net::IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            (addr, Family::V4)
        }
        std::net::IpAddr::V6(a) => (a.octets(), Family::V6),
    }
}

/// The VIPS key the documentation defines for a configured VIP: address in the first 4 or
/// 16 bytes, port in network order (0 = all ports), protocol and family.
pub(super) fn config_vip_key(address: std::net::IpAddr, port: u16, protocol: Protocol) -> VipKey {
    let (addr, family) = addr_bytes(address);
    let proto = match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    };
    VipKey {
        addr,
        port: port.to_be_bytes(),
        proto,
        family,
    }
}

pub(super) fn addr_key(family: Family, addr: [u8; 16]) -> AddrKey {
    AddrKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

/// The host bits a prefix leaves to the flow hash, within the address's last 32 bits.
pub(super) fn host_bits(p: &Prefix) -> u32 {
    let bits = if p.addr.is_ipv4() { 32 } else { 128 } - u32::from(p.len);
    u32::MAX.checked_shr(32 - bits.min(32)).unwrap_or(0)
}

/// Checks that `SETTINGS` holds what the config's `tunnel:` section says.
pub(super) fn check_settings(cfg: &Config, s: &Settings) -> anyhow::Result<()> {
    let t = &cfg.tunnel;
    let (src4, _) = addr_bytes(t.source_v4.addr);
    let (src6, _) = addr_bytes(t.source_v6.addr);
    ensure!(
        s.tunnel_src4 == src4[..4]
            && u32::from_be_bytes(s.tunnel_src4_host) == host_bits(&t.source_v4),
        "SETTINGS IPv4 tunnel source {:?}/{:08x} is not the config's {}/{}",
        s.tunnel_src4,
        u32::from_be_bytes(s.tunnel_src4_host),
        t.source_v4.addr,
        t.source_v4.len
    );
    ensure!(
        s.tunnel_src6 == src6 && u32::from_be_bytes(s.tunnel_src6_host) == host_bits(&t.source_v6),
        "SETTINGS IPv6 tunnel source {:?}/{:08x} is not the config's {}/{}",
        s.tunnel_src6,
        u32::from_be_bytes(s.tunnel_src6_host),
        t.source_v6.addr,
        t.source_v6.len
    );
    let virtual_mac = cfg.virtual_mac.map_or([0; 6], |m| m.0);
    ensure!(
        s.virtual_mac == virtual_mac && s.mac != [0; 6],
        "SETTINGS MACs {:02x?} / virtual {:02x?}: the own MAC must be set and the virtual one be the config's {:02x?}",
        s.mac,
        s.virtual_mac,
        virtual_mac
    );
    if let Some(mtu) = t.mtu {
        ensure!(
            s.mtu == mtu.0,
            "SETTINGS mtu {} is not the config's {}",
            s.mtu,
            mtu.0
        );
    }
    Ok(())
}

//! The map form of an IP address: 16 bytes (IPv4 in the first 4, the rest zero) and its [`Family`].

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::Family;

/// The 16-byte map form of `addr` and its family, as every key and value here holds it.
pub const fn ip_to_map(addr: IpAddr) -> ([u8; 16], Family) {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            let mut bytes = [0u8; 16];
            bytes[0] = o[0];
            bytes[1] = o[1];
            bytes[2] = o[2];
            bytes[3] = o[3];
            (bytes, Family::V4)
        }
        IpAddr::V6(a) => (a.octets(), Family::V6),
    }
}

/// The inverse of [`ip_to_map`]: [`Family::V4`] reads the first 4 bytes, anything else the
/// whole 16 (as the datapath does: it only ever writes V4 or V6).
pub fn ip_from_map(bytes: [u8; 16], family: Family) -> IpAddr {
    if family == Family::V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_zero_padded() {
        let (bytes, family) = ip_to_map(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(family, Family::V4);
        assert_eq!(bytes, [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn ipv6_is_all_16_bytes() {
        let a = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        let (bytes, family) = ip_to_map(IpAddr::V6(a));
        assert_eq!(family, Family::V6);
        assert_eq!(bytes, a.octets());
    }

    #[test]
    fn round_trips_both_families() {
        for addr in [
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::BROADCAST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2)),
            // An IPv4-mapped IPv6 address stays IPv6: the family decides, not the bytes.
            IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
        ] {
            let (bytes, family) = ip_to_map(addr);
            assert_eq!(ip_from_map(bytes, family), addr);
        }
    }

    #[test]
    fn family_values_are_ip_versions_not_libc() {
        assert_eq!((Family::V4.0, Family::V6.0), (4, 6));
        assert_eq!(Family::default(), Family(0));
    }
}

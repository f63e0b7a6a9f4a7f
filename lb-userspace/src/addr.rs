//! Addresses between their three forms: `IpAddr`, the 16-byte map form lb-common defines, and the text tables and logs print.

use std::net::IpAddr;

use lb_common::{AF_INET, AF_INET6};

/// 16-byte map form of an address (IPv4 in the first four bytes) and its family.
pub fn to_map(addr: IpAddr) -> ([u8; 16], u8) {
    match addr {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, AF_INET)
        }
        IpAddr::V6(a) => (a.octets(), AF_INET6),
    }
}

/// The inverse of [`to_map`].
pub fn from_map(bytes: [u8; 16], family: u8) -> IpAddr {
    if family == AF_INET {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(bytes)
    }
}

/// An address as it stands before `:port`: IPv6 in brackets.
pub fn fmt_addr(a: IpAddr) -> String {
    match a {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_form_round_trips_both_families() {
        for a in ["10.1.2.3", "2001:db8::7"] {
            let a: IpAddr = a.parse().unwrap();
            let (bytes, family) = to_map(a);
            assert_eq!(from_map(bytes, family), a);
        }
        assert_eq!(to_map("10.1.2.3".parse().unwrap()).0[4..], [0; 12]);
    }
}

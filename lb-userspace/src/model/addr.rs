//! Addresses as tables and logs print them (the map form and its codec live in lb-common's `addr`).

use std::net::IpAddr;

/// An address as it stands before `:port`: IPv6 in brackets.
pub fn fmt_addr(a: IpAddr) -> String {
    match a {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

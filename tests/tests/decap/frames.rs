//! Hand-built tunnel frames: outer IPv4/IPv6 headers, Ethernet (tagged or not), inner packets.

use super::*;

/// Internet checksum (RFC 1071).
pub(super) fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An outer IPv4 header (with `options`, and `frags` as the host-order flags/offset field)
/// followed by `payload`.
pub(super) fn ipv4(proto: u8, dst: [u8; 4], options: &[u8], frags: u16, payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let hlen = 20 + options.len();
    let tot = u16::try_from(hlen + payload.len()).unwrap();
    let mut h = vec![0x40 | (hlen / 4) as u8, 0];
    h.extend_from_slice(&tot.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&frags.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&TUNNEL_SRC4);
    h.extend_from_slice(&dst);
    h.extend_from_slice(options);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An outer IPv6 header followed by `payload` (whose first header is `next`).
pub(super) fn ipv6(next: u8, dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&TUNNEL_SRC6);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// An Ethernet frame router → backend.
pub(super) fn eth(ether_type: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = BACKEND_MAC.to_vec();
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// An Ethernet frame with one 802.1Q tag (PCP 5, VLAN 100).
pub(super) fn eth_vlan(ether_type: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = BACKEND_MAC.to_vec();
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&[0x81, 0x00, 0xa0, 100]);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// The client's UDP datagram to the VIP, IPv4, with valid checksums.
pub(super) fn inner_udp4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, dst, 63).udp(40000, 7777);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// The client's UDP datagram to the VIP, IPv6, with a valid checksum.
pub(super) fn inner_udp6(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv6(src, dst, 63).udp(40000, 7777);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// The client's TCP SYN to the VIP, IPv4.
pub(super) fn inner_tcp4() -> Vec<u8> {
    let b = PacketBuilder::ipv4(CLIENT4, VIP4, 63)
        .tcp(40001, 80, 1000, 65535)
        .syn();
    let mut v = Vec::new();
    b.write(&mut v, b"").unwrap();
    v
}

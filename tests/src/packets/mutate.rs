//! Mutations of well-formed frames.
//!
//! Truncations, padding, byte flips, contradicting length fields, odd header lengths, extension
//! headers, VLAN tags, and damage to the packet an ICMP error quotes; plus the byte-level helpers
//! they and the tests use.

use super::{rng::Rng, Built};

/// Writes `byte` at `off` if the frame reaches that far (mutations may have cut it).
pub fn put(frame: &mut [u8], off: usize, byte: u8) {
    if let Some(b) = frame.get_mut(off) {
        *b = byte;
    }
}

/// Writes `v` big-endian at `off`, as far as the frame reaches.
pub fn put16(frame: &mut [u8], off: usize, v: u16) {
    let [hi, lo] = v.to_be_bytes();
    put(frame, off, hi);
    put(frame, off + 1, lo);
}

/// Reads a big-endian u16 at `off`; 0 past the end of the frame.
pub fn get16(frame: &[u8], off: usize) -> u16 {
    match frame.get(off..off + 2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    }
}

/// Rewrites the IP length field to match the frame's current length (what a sender that
/// really sent the shorter packet would have written).
fn fix_ip_len(b: &mut Built) {
    let len = b.frame.len();
    if b.v6 {
        if len >= b.l3 + 40 {
            put16(&mut b.frame, b.l3 + 4, (len - b.l3 - 40) as u16);
        }
    } else if len > b.l3 {
        put16(&mut b.frame, b.l3 + 2, (len - b.l3) as u16);
    }
}

/// Cuts the frame at one of `cuts` (never into the Ethernet header), and half the time fixes
/// the IP length to match; returns `names[0]`, or `names[1]` when the length was fixed.
fn truncate(
    rng: &mut Rng,
    b: &mut Built,
    cuts: &[usize],
    names: [&'static str; 2],
) -> &'static str {
    let cut = rng.pick(cuts).clamp(14, b.frame.len());
    b.frame.truncate(cut);
    if rng.percent(50) {
        fix_ip_len(b);
        names[1]
    } else {
        names[0]
    }
}

/// Applies one random mutation to `b` and names it.
pub(super) fn mutate(rng: &mut Rng, b: &mut Built) -> &'static str {
    let len = b.frame.len();
    let (l3, l4) = (b.l3, b.l4);
    // ICMP errors also get mutations of the packet they quote.
    match rng.below(if b.quote.is_some() { 20 } else { 17 }) {
        17.. => mutate_quote(rng, b),
        0 | 1 => truncate_at_a_boundary(rng, b),
        2 => {
            // Ethernet padding after the IP packet: legal, the IP length rules.
            let n = rng.range(1, 64);
            b.frame.extend(rng.bytes(n));
            "pad"
        }
        3 => {
            let n = rng.range(1, 4);
            let hot = (l4 + 20).min(len);
            for _ in 0..n {
                let at = if rng.percent(80) {
                    rng.below(hot)
                } else {
                    rng.below(len)
                };
                b.frame[at] ^= rng.range(1, 255) as u8;
            }
            "flip"
        }
        4 => lie_about_the_ip_length(rng, b),
        5 => {
            if b.v6 {
                put(&mut b.frame, l3, 0x60 | rng.below(16) as u8);
                "ip6-traffic-class"
            } else {
                put(&mut b.frame, l3, 0x40 | rng.below(16) as u8);
                "ihl"
            }
        }
        6 => {
            let old = b.frame.get(l3).copied().unwrap_or(0);
            put(&mut b.frame, l3, (rng.below(16) as u8) << 4 | (old & 0x0f));
            "version"
        }
        7 | 8 if b.tcp => {
            // Every data offset, 0 to 15 words, whatever the segment's real header length.
            let old = b.frame.get(l4 + 12).copied().unwrap_or(0);
            put(
                &mut b.frame,
                l4 + 12,
                (rng.below(16) as u8) << 4 | (old & 0x0f),
            );
            "tcp-doff"
        }
        9 if b.tcp => {
            put(&mut b.frame, l4 + 13, rng.next() as u8);
            put(&mut b.frame, l4 + 12, rng.next() as u8 & 0x0f | 0x50);
            "tcp-flags"
        }
        7..=9 => {
            // The UDP length field, which the rules never consult.
            let cur = usize::from(get16(&b.frame, l4 + 4));
            let v = rng.pick(&[0, 1, 7, 8, cur.saturating_sub(1), cur + 1, 0xffff]);
            put16(&mut b.frame, l4 + 4, v as u16);
            "udp-len"
        }
        10 => fragment(rng, b),
        11 => {
            let p = rng.pick(&[
                0u8, 1, 2, 4, 6, 17, 41, 43, 44, 47, 50, 51, 58, 59, 60, 132, 135, 136, 139, 140,
                253, 254, 255,
            ]);
            let p = if rng.percent(20) { rng.next() as u8 } else { p };
            put(&mut b.frame, if b.v6 { l3 + 6 } else { l3 + 9 }, p);
            "proto"
        }
        12 => {
            if !b.v6 {
                // A fragment of another protocol: which check comes first is observable.
                put16(&mut b.frame, l3 + 6, 0x2000);
                put(&mut b.frame, l3 + 9, rng.pick(&[1u8, 47, 50, 132]));
                return "fragment+proto";
            }
            let t = rng.pick(&[0u8, 43, 44, 60, 51, 135, 139, 140, 50, 59, 253, 254, 58]);
            insert_ext(rng, b, t);
            "ip6-ext"
        }
        13 => replace_the_ethertype(rng, b),
        14 => stack_a_vlan_tag(rng, b),
        15 => {
            // Destination port 0: the exact lookup then hits the all-ports entry of the address.
            put16(&mut b.frame, l4 + 2, 0);
            "dport-0"
        }
        _ => {
            let at = if rng.percent(50) { l4 } else { l4 + 2 };
            put16(&mut b.frame, at, rng.next() as u16);
            "port"
        }
    }
}

/// Truncation where a layer starts or ends, or anywhere.
fn truncate_at_a_boundary(rng: &mut Rng, b: &mut Built) -> &'static str {
    let (len, l3, l4) = (b.frame.len(), b.l3, b.l4);
    let cuts = [
        15,
        16,
        17,
        18,
        l3 - 1,
        l3,
        l3 + 1,
        l3 + 9,
        l3 + 19,
        l3 + 20,
        l3 + 39,
        l3 + 40,
        l4 - 1,
        l4,
        l4 + 1,
        l4 + 4,
        l4 + 7,
        l4 + 8,
        l4 + 12,
        l4 + 13,
        l4 + 19,
        l4 + 20,
        len - 1,
        rng.range(14, len),
    ];
    truncate(rng, b, &cuts, ["truncate", "truncate-fixlen"])
}

/// An IP length field that contradicts the header or the frame.
fn lie_about_the_ip_length(rng: &mut Rng, b: &mut Built) -> &'static str {
    let (l3, l4) = (b.l3, b.l4);
    let at = if b.v6 { l3 + 4 } else { l3 + 2 };
    let cur = usize::from(get16(&b.frame, at));
    let hlen = l4 - l3;
    let any = rng.below(0x10000);
    let v = rng.pick(&[
        0,
        1,
        hlen.saturating_sub(1),
        hlen,
        hlen + 7,
        hlen + 8,
        hlen + 19,
        hlen + 20,
        7,
        8,
        19,
        20,
        cur.saturating_sub(1),
        cur + 1,
        0xffff,
        any,
    ]);
    put16(&mut b.frame, at, v as u16);
    "ip-len"
}

/// A fragment: IPv6 with a fragment header, IPv4 by its flags and offset.
fn fragment(rng: &mut Rng, b: &mut Built) -> &'static str {
    let l3 = b.l3;
    if b.v6 {
        insert_ext(rng, b, 44);
        return "ip6-frag";
    }
    // MF, an offset, both, or only DF (which is no fragment).
    let flags = get16(&b.frame, l3 + 6) & 0x4000;
    let v = match rng.below(4) {
        0 => flags | 0x2000,
        1 => flags | rng.range(1, 0x1fff) as u16,
        2 => 0x2000 | rng.range(1, 0x1fff) as u16,
        _ => 0x4000,
    };
    put16(&mut b.frame, l3 + 6, v);
    "fragment"
}

/// Another EtherType, mostly at the innermost one.
fn replace_the_ethertype(rng: &mut Rng, b: &mut Built) -> &'static str {
    let at = if rng.percent(70) { b.ether_type_at } else { 12 };
    let et: u16 = rng.pick(&[
        0x0806, 0x88a8, 0x9100, 0x8100, 0x88cc, 0x0000, 0x05dc, 0x86dd, 0x0800,
    ]);
    let et = if rng.percent(20) {
        rng.next() as u16
    } else {
        et
    };
    put16(&mut b.frame, at, et);
    "ethertype"
}

/// A second (or first) tag in front: 802.1Q, 802.1ad or the old 0x9100.
fn stack_a_vlan_tag(rng: &mut Rng, b: &mut Built) -> &'static str {
    let tpid: u16 = rng.pick(&[0x8100, 0x88a8, 0x9100]);
    let mut tag = tpid.to_be_bytes().to_vec();
    tag.extend(rng.bytes(2));
    b.frame.splice(12..12, tag);
    b.l3 += 4;
    b.l4 += 4;
    b.ether_type_at += 4;
    if let Some(q) = &mut b.quote {
        *q += 4;
    }
    "vlan-stack"
}

/// Inserts an IPv6 extension header of type `t` in front of the L4 header and fixes the
/// next-header chain and payload length.
pub(super) fn insert_ext(rng: &mut Rng, b: &mut Built, t: u8) {
    if !b.v6 || b.frame.len() < b.l4 {
        return;
    }
    let next = b.frame[b.l3 + 6];
    let mut ext = vec![next, 0];
    ext.extend(rng.bytes(6));
    if t == 51 {
        // AH's length is in 4-byte units minus 2: 12 bytes.
        ext[1] = 1;
        ext.extend(rng.bytes(4));
    }
    let n = ext.len();
    b.frame.splice(b.l4..b.l4, ext);
    b.frame[b.l3 + 6] = t;
    let plen = get16(&b.frame, b.l3 + 4).wrapping_add(n as u16);
    put16(&mut b.frame, b.l3 + 4, plen);
    b.l4 += n;
    if let Some(q) = &mut b.quote {
        *q += n;
    }
}

/// Mutates the packet an ICMP error quotes: the fields the datapath checks (version, IHL,
/// source, fragment offset, protocol), the ports, or where the quote ends.
fn mutate_quote(rng: &mut Rng, b: &mut Built) -> &'static str {
    let q = b.quote.expect("an ICMP error");
    let qhlen = if b.v6 {
        40
    } else {
        usize::from(b.frame.get(q).copied().unwrap_or(0x45) & 0x0f) * 4
    };
    match rng.below(6) {
        0 => {
            let at = if b.v6 { q + 8 } else { q + 12 } + rng.below(if b.v6 { 16 } else { 4 });
            if let Some(x) = b.frame.get_mut(at) {
                *x ^= rng.range(1, 255) as u8;
            }
            "quote-src"
        }
        1 if !b.v6 => {
            let v: u16 = rng.pick(&[0x2000, 0x0001, 0x1fff, 0x4000, 0x6000, 0x0000]);
            put16(&mut b.frame, q + 6, v);
            "quote-frag"
        }
        1 | 2 => {
            let p = rng.pick(&[6u8, 17, 1, 58, 44, 0, 43, 132]);
            put(&mut b.frame, if b.v6 { q + 6 } else { q + 9 }, p);
            "quote-proto"
        }
        3 => {
            let old = b.frame.get(q).copied().unwrap_or(0);
            let v = if rng.percent(50) {
                (old & 0xf0) | rng.below(16) as u8
            } else {
                rng.next() as u8
            };
            put(&mut b.frame, q, v);
            "quote-vihl"
        }
        4 => {
            let cuts = [
                q,
                q + 1,
                q + 19,
                q + 20,
                q + 39,
                q + 40,
                q + qhlen + 2,
                q + qhlen + 3,
                q + qhlen + 4,
                q + qhlen + 8,
            ];
            truncate(rng, b, &cuts, ["quote-truncate", "quote-truncate-fixlen"])
        }
        _ => {
            let at = q + qhlen + rng.below(4);
            if let Some(x) = b.frame.get_mut(at) {
                *x ^= rng.range(1, 255) as u8;
            }
            "quote-port"
        }
    }
}

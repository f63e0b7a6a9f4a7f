//! The generator's ICMP messages (errors quoting flows, echo requests) and fragments.

use super::*;

impl Generator {
    /// An ICMP (IPv4) or ICMPv6 (IPv6) message with a correct checksum: type, code, the 4
    /// bytes after the checksum, then `body`.
    pub(super) fn build_icmp(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        (icmp_type, code, rest): (u8, u8, [u8; 4]),
        body: &[u8],
    ) -> Built {
        let v6 = dst.is_ipv6();
        let proto = if v6 {
            IpNumber::IPV6_ICMP
        } else {
            IpNumber::ICMP
        };
        let (step, l3, ip_hlen) = self.l2_ip(src, dst, proto);
        let mut frame = Vec::new();
        if v6 {
            step.icmpv6_raw(icmp_type, code, rest)
                .write(&mut frame, body)
                .unwrap();
        } else {
            step.icmpv4_raw(icmp_type, code, rest)
                .write(&mut frame, body)
                .unwrap();
        }
        Built {
            frame,
            l3,
            l4: l3 + ip_hlen,
            v6,
            tcp: false,
            ether_type_at: l3 - 2,
            quote: None,
        }
    }

    /// An ICMP error about a packet a VIP (or a non-VIP address) sent to a client: usually
    /// quoting a flow of the pool correctly, sometimes with a quote the datapath must refuse.
    pub(super) fn icmp_error(&mut self) -> (Built, &'static str) {
        let f = self.flow();
        let v6 = f.dst.is_ipv6();
        let rng = &mut self.rng;
        let mut kind = "icmp-error";
        // The packet that drew the error went VIP → client.
        let mut qsrc = f.dst;
        if rng.percent(5) {
            kind = "icmp-error-src";
            qsrc = if v6 {
                IpAddr::V6(rng.pick(&[ROUTER6, Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 0x11)]))
            } else {
                IpAddr::V4(rng.pick(&[ROUTER4, Ipv4Addr::new(10, 201, 0, 11)]))
            };
        }
        let mut qproto = if f.tcp { IpNumber::TCP } else { IpNumber::UDP };
        if rng.percent(4) {
            kind = "icmp-error-qproto";
            qproto = IpNumber(rng.pick(&[0u8, 1, 6, 17, 41, 44, 47, 50, 58]));
        }
        let mut l4 = Vec::new();
        l4.extend_from_slice(&f.dport.to_be_bytes());
        l4.extend_from_slice(&f.sport.to_be_bytes());
        if f.tcp {
            l4.extend(rng.bytes(8));
            l4.push(0x50);
            l4.extend(rng.bytes(7));
        } else {
            l4.extend(rng.bytes(4));
        }
        let payload = match rng.below(6) {
            0 | 1 => 0,
            2 => rng.below(32),
            3 | 4 => rng.below(600),
            // Long quotes (ICMPv6 quotes up to 1280 bytes): too big for some tunnels.
            _ => rng.range(1200, 1460),
        };
        l4.extend(rng.bytes(payload));
        let quoted_l4 = match rng.below(10) {
            // RFC 792: 8 bytes of the datagram.
            0..=4 => 8.min(l4.len()),
            5..=7 => l4.len(),
            8 => {
                kind = "icmp-error-trunc";
                rng.below(8)
            }
            _ => rng.below(l4.len() + 1),
        };
        let mut quote = if v6 {
            let (IpAddr::V6(s), IpAddr::V6(d)) = (qsrc, f.src) else {
                unreachable!()
            };
            Ipv6Header {
                traffic_class: rng.next() as u8,
                flow_label: Ipv6FlowLabel::try_new(rng.next() as u32 & 0xf_ffff).unwrap(),
                payload_length: l4.len() as u16,
                next_header: qproto,
                hop_limit: rng.range(1, 255) as u8,
                source: s.octets(),
                destination: d.octets(),
            }
            .to_bytes()
            .to_vec()
        } else {
            let (IpAddr::V4(s), IpAddr::V4(d)) = (qsrc, f.src) else {
                unreachable!()
            };
            let mut h = Ipv4Header::new(
                l4.len() as u16,
                rng.range(1, 255) as u8,
                qproto,
                s.octets(),
                d.octets(),
            )
            .unwrap();
            h.identification = rng.next() as u16;
            h.dont_fragment = rng.percent(70);
            if rng.percent(10) {
                let n = 4 * rng.range(1, 10);
                let opts = rng.bytes(n);
                h.options = Ipv4Options::try_from(&opts[..]).unwrap();
            }
            match rng.below(100) {
                0..=4 => {
                    kind = "icmp-error-qfrag";
                    h.fragment_offset = IpFragOffset::try_new(rng.range(1, 0x1fff) as u16).unwrap();
                    h.more_fragments = rng.percent(50);
                }
                5..=7 => {
                    // A first fragment: it has ports.
                    kind = "icmp-error-qmf";
                    h.more_fragments = true;
                }
                _ => {}
            }
            h.header_checksum = h.calc_header_checksum();
            let mut v = h.to_bytes().to_vec();
            if rng.percent(3) {
                kind = "icmp-error-qvihl";
                v[0] = rng.pick(&[0x44u8, 0x40, 0x46, 0x65, 0x55, 0x4f]);
            }
            v
        };
        quote.extend_from_slice(&l4[..quoted_l4]);
        let (icmp_type, code, rest) = if v6 {
            match rng.below(10) {
                0..=3 => (2, 0, rng.pick(&MTUS).to_be_bytes()),
                4 | 5 => (1, rng.below(8) as u8, [0; 4]),
                6 | 7 => (3, rng.below(2) as u8, [0; 4]),
                8 => (4, rng.below(4) as u8, (rng.below(80) as u32).to_be_bytes()),
                _ => {
                    kind = "icmp-other";
                    let t = rng.pick(&[0u8, 5, 100, 127, 128, 129, 133, 135, 136, 143, 200]);
                    (t, rng.range(1, 3) as u8, [0; 4])
                }
            }
        } else {
            match rng.below(10) {
                0..=3 => (3, 4, [0, 0, 0, 0]),
                4 | 5 => (3, rng.below(16) as u8, [0; 4]),
                6 | 7 => (11, rng.below(2) as u8, [0; 4]),
                8 => (12, rng.below(3) as u8, [rng.below(40) as u8, 0, 0, 0]),
                _ => {
                    kind = "icmp-other";
                    let t = rng.pick(&[0u8, 4, 5, 8, 9, 10, 13, 14, 17, 30, 40, 255]);
                    (t, rng.range(1, 3) as u8, [0; 4])
                }
            }
        };
        let rest = if (icmp_type, code) == (3, 4) {
            let [_, _, hi, lo] = rng.pick(&MTUS).to_be_bytes();
            [0, 0, hi, lo]
        } else {
            rest
        };
        let from = if rng.percent(70) {
            if v6 {
                IpAddr::V6(ROUTER6)
            } else {
                IpAddr::V4(ROUTER4)
            }
        } else {
            f.src
        };
        let mut b = self.build_icmp(from, f.dst, (icmp_type, code, rest), &quote);
        b.quote = Some(b.l4 + 8);
        (b, kind)
    }

    /// An echo request (now and then another ICMP message) to a VIP address or elsewhere.
    pub(super) fn echo(&mut self) -> (Built, &'static str) {
        let dst: IpAddr = self.rng.pick(&ECHO_TARGETS).parse().unwrap();
        let v6 = dst.is_ipv6();
        let src = self.client(v6);
        let rng = &mut self.rng;
        let request = if v6 { 128 } else { 8 };
        let mut kind = "echo";
        let (icmp_type, code) = match rng.below(20) {
            0 => {
                kind = "echo-code";
                (request, rng.range(1, 255) as u8)
            }
            1 => {
                kind = "echo-reply";
                (if v6 { 129 } else { 0 }, 0)
            }
            2 => {
                kind = "icmp-other";
                let t = if v6 {
                    rng.pick(&[130u8, 133, 134, 135, 136, 143, 200])
                } else {
                    rng.pick(&[5u8, 9, 13, 15, 17, 40])
                };
                (t, 0)
            }
            _ => (request, 0),
        };
        let rest: [u8; 4] = rng.bytes(4).try_into().unwrap();
        let n = if rng.percent(5) {
            rng.range(1300, 1472)
        } else {
            rng.below(64)
        };
        let body = rng.bytes(n);
        let mut b = self.build_icmp(src, dst, (icmp_type, code, rest), &body);
        let rng = &mut self.rng;
        if rng.percent(8) {
            // Wrong checksums stay wrong by the same amount (incremental updates).
            kind = "echo-badsum";
            let at = if !v6 && rng.percent(50) {
                b.l3 + 10
            } else {
                b.l4 + 2
            };
            b.frame[at] ^= rng.range(1, 255) as u8;
        }
        (b, kind)
    }

    /// A fragment of a flow (to a VIP address or not), sometimes of another protocol.
    pub(super) fn fragment(&mut self) -> (Built, &'static str) {
        let f = self.flow();
        let mut b = self.build(&f);
        let rng = &mut self.rng;
        if b.v6 {
            insert_ext(rng, &mut b, 44);
            return (b, "fragment6");
        }
        let df = get16(&b.frame, b.l3 + 6) & 0x4000;
        let v = match rng.below(3) {
            0 => df | 0x2000,
            1 => df | rng.range(1, 0x1fff) as u16,
            _ => 0x2000 | rng.range(1, 0x1fff) as u16,
        };
        put16(&mut b.frame, b.l3 + 6, v);
        if rng.percent(30) {
            put(&mut b.frame, b.l3 + 9, rng.pick(&[1u8, 4, 41, 47, 50, 132]));
        }
        (b, "fragment4")
    }
}

//! `xdplb_decap` through BPF_PROG_TEST_RUN: input, verdict, exact output frame and counters.

use super::*;

pub(super) struct Harness {
    pub(super) ebpf: aya::Ebpf,
    pub(super) maps: DecapMaps,
}

impl Harness {
    /// The decap program with `DECAP_ADDRS` = {LOCAL4, LOCAL6}.
    pub(super) fn new() -> Harness {
        let mut ebpf = decap::load().expect("the verifier accepts xdplb_decap");
        let mut maps = DecapMaps::from_ebpf(&mut ebpf).expect("decap maps");
        maps.set_addrs(&[IpAddr::from(LOCAL4), IpAddr::from(LOCAL6)])
            .expect("fill DECAP_ADDRS");
        Harness { ebpf, maps }
    }

    pub(super) fn run(&mut self, packet: &[u8]) -> Run {
        xdplb_tests::fixture::run_program(&mut self.ebpf, PROGRAM, packet)
    }

    pub(super) fn counters(&self) -> [u64; DECAP_COUNTER_COUNT as usize] {
        self.maps.counters().unwrap()
    }

    /// Runs `packet` and checks the verdict, the output (`Some(bytes)`; `None` = untouched)
    /// and that exactly `counter` went up by one.
    pub(super) fn check(
        &mut self,
        what: &str,
        packet: &[u8],
        counter: DecapCounter,
        out: Option<&[u8]>,
    ) {
        let before = self.counters();
        let r = self.run(packet);
        let after = self.counters();
        let expected_action = if counter == DecapCounter::DropMalformed {
            XDP_DROP
        } else {
            XDP_PASS
        };
        assert_eq!(r.action, expected_action, "{what}: verdict");
        if expected_action == XDP_PASS {
            let want = out.unwrap_or(packet);
            assert_eq!(hex(&r.out), hex(want), "{what}: output frame");
        }
        for c in DecapCounter::ALL {
            let d = after[c as usize] - before[c as usize];
            assert_eq!(d, u64::from(c == counter), "{what}: counter {}", c.name());
        }
    }
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn every_tunnel_family_is_decapsulated_to_exactly_the_inner_frame() {
    let mut h = Harness::new();
    let in4 = inner_udp4(CLIENT4, VIP4, b"query");
    let in6 = inner_udp6(CLIENT6, VIP6, b"query6");
    let cases: [(&str, Vec<u8>, Vec<u8>); 4] = [
        (
            "4in4",
            eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &in4)),
            eth(ETH_P_IP, &in4),
        ),
        (
            "6in6",
            eth(ETH_P_IPV6, &ipv6(IPPROTO_IPV6, LOCAL6, &in6)),
            eth(ETH_P_IPV6, &in6),
        ),
        (
            "4in6: the ethertype becomes IPv4",
            eth(ETH_P_IPV6, &ipv6(IPPROTO_IPIP, LOCAL6, &in4)),
            eth(ETH_P_IP, &in4),
        ),
        (
            "6in4: the ethertype becomes IPv6",
            eth(ETH_P_IP, &ipv4(IPPROTO_IPV6, LOCAL4, &[], 0, &in6)),
            eth(ETH_P_IPV6, &in6),
        ),
    ];
    for (what, packet, want) in cases {
        h.check(what, &packet, DecapCounter::Decapsulated, Some(&want));
    }
    // A TCP SYN inside: the inner protocol does not matter.
    let syn = inner_tcp4();
    h.check(
        "4in4 tcp",
        &eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &syn)),
        DecapCounter::Decapsulated,
        Some(&eth(ETH_P_IP, &syn)),
    );
}

#[test]
fn outer_ipv4_options_are_cut_with_the_header() {
    let mut h = Harness::new();
    let in4 = inner_udp4(CLIENT4, VIP4, b"opts");
    for options in [&[1u8, 1, 1, 0][..], &[1u8; 40][..]] {
        h.check(
            &format!("4in4 with {} bytes of outer options", options.len()),
            &eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, options, 0, &in4)),
            DecapCounter::Decapsulated,
            Some(&eth(ETH_P_IP, &in4)),
        );
    }
}

#[test]
fn a_vlan_tag_is_kept_and_its_ethertype_fixed() {
    let mut h = Harness::new();
    let in4 = inner_udp4(CLIENT4, VIP4, b"vlan");
    let in6 = inner_udp6(CLIENT6, VIP6, b"vlan6");
    h.check(
        "4in6 in VLAN 100",
        &eth_vlan(ETH_P_IPV6, &ipv6(IPPROTO_IPIP, LOCAL6, &in4)),
        DecapCounter::Decapsulated,
        Some(&eth_vlan(ETH_P_IP, &in4)),
    );
    h.check(
        "6in4 in VLAN 100",
        &eth_vlan(ETH_P_IP, &ipv4(IPPROTO_IPV6, LOCAL4, &[], 0, &in6)),
        DecapCounter::Decapsulated,
        Some(&eth_vlan(ETH_P_IPV6, &in6)),
    );
    let not_local = eth_vlan(ETH_P_IP, &ipv4(IPPROTO_IPIP, OTHER4, &[], 0, &in4));
    h.check(
        "4in4 in VLAN 100 to another host",
        &not_local,
        DecapCounter::PassNotLocal,
        None,
    );
}

#[test]
fn padding_and_trailing_bytes_stay_for_the_stack_to_trim() {
    let mut h = Harness::new();
    // 14 + 20 + 20 + 8 + 1 = 63 bytes is above the Ethernet minimum; a 1-byte payload
    // without the inner header's room shows padding: pad a short tunnel frame to 80 bytes.
    let in4 = inner_udp4(CLIENT4, VIP4, b"x");
    let mut padded = eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &in4));
    padded.resize(80, 0);
    let mut want = eth(ETH_P_IP, &in4);
    want.resize(80 - 20, 0);
    h.check(
        "4in4 with Ethernet padding",
        &padded,
        DecapCounter::Decapsulated,
        Some(&want),
    );
    // Inner packet shorter than the outer payload (junk inside the tunnel after it): passed,
    // the stack trims to the inner length.
    let mut junk = in4.clone();
    junk.extend_from_slice(&[0xee; 6]);
    h.check(
        "4in4 with bytes after the inner packet",
        &eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &junk)),
        DecapCounter::Decapsulated,
        Some(&eth(ETH_P_IP, &junk)),
    );
}

#[test]
fn tunnels_to_other_hosts_pass_untouched() {
    let mut h = Harness::new();
    let in4 = inner_udp4(CLIENT4, VIP4, b"q");
    let in6 = inner_udp6(CLIENT6, VIP6, b"q");
    let cases = [
        (
            "4in4",
            eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, OTHER4, &[], 0, &in4)),
        ),
        ("6in6", eth(ETH_P_IPV6, &ipv6(IPPROTO_IPV6, OTHER6, &in6))),
        ("4in6", eth(ETH_P_IPV6, &ipv6(IPPROTO_IPIP, OTHER6, &in4))),
        (
            "tunnel to the VIP itself (not a tunnel endpoint)",
            eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, VIP4, &[], 0, &in4)),
        ),
    ];
    for (what, packet) in cases {
        h.check(what, &packet, DecapCounter::PassNotLocal, None);
    }
    // Removing an address from the set stops decapsulation for it.
    h.maps.set_addrs(&[IpAddr::from(LOCAL6)]).unwrap();
    h.check(
        "4in4 after LOCAL4 left DECAP_ADDRS",
        &eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &in4)),
        DecapCounter::PassNotLocal,
        None,
    );
}

#[test]
fn everything_that_is_not_ip_in_ip_passes_untouched() {
    let mut h = Harness::new();
    let plain_tcp = eth(ETH_P_IP, &inner_tcp4());
    let plain_udp6 = eth(ETH_P_IPV6, &inner_udp6(CLIENT6, LOCAL6, b"dns"));
    let arp = eth(ETH_P_ARP, &[0u8; 28]);
    let in4 = inner_udp4(CLIENT4, VIP4, b"q");
    // GRE (47) to a local address: not ours.
    let gre = eth(ETH_P_IP, &ipv4(47, LOCAL4, &[], 0, &in4));
    // IPv6 destination options before the tunnel header: not walked.
    let mut dstopts = vec![IPPROTO_IPIP, 0, 4, 1, 1, 0, 0, 0];
    dstopts.extend_from_slice(&in4);
    let dstopts = eth(ETH_P_IPV6, &ipv6(60, LOCAL6, &dstopts));
    // A broken outer header: the stack's to drop, not ours to touch.
    let mut long = ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &in4);
    long[2..4].copy_from_slice(&500u16.to_be_bytes());
    let outer_past_frame = eth(ETH_P_IP, &long);
    let mut ihl4 = ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &in4);
    ihl4[0] = 0x44;
    let outer_ihl_4 = eth(ETH_P_IP, &ihl4);
    let runt = eth(ETH_P_IP, &[0x45, 0, 0]);
    let cases = [
        ("tcp to the backend", plain_tcp),
        ("udp6 to the backend", plain_udp6),
        ("arp", arp),
        ("gre", gre),
        ("ipv6 destination options", dstopts),
        ("outer total length past the frame", outer_past_frame),
        ("outer ihl 4", outer_ihl_4),
        ("truncated outer header", runt),
    ];
    for (what, packet) in cases {
        h.check(what, &packet, DecapCounter::PassNotTunnel, None);
    }
}

#[test]
fn outer_fragments_pass_untouched() {
    let mut h = Harness::new();
    let in4 = inner_udp4(CLIENT4, VIP4, b"fragment me");
    // First fragment (MF), a later one (offset 8 bytes), the last one (offset, no MF).
    for (what, frags) in [("mf", 0x2000), ("offset+mf", 0x2001), ("last", 0x0002)] {
        h.check(
            &format!("4in4 fragment {what}"),
            &eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], frags, &in4)),
            DecapCounter::PassOuterFragment,
            None,
        );
    }
    // DF alone is not a fragment.
    h.check(
        "4in4 with DF",
        &eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0x4000, &in4)),
        DecapCounter::Decapsulated,
        Some(&eth(ETH_P_IP, &in4)),
    );
    // IPv6 fragment header carrying a tunnel: to us, and to someone else.
    let mut frag = vec![IPPROTO_IPV6, 0, 0, 1, 0, 0, 0, 42];
    frag.extend_from_slice(&inner_udp6(CLIENT6, VIP6, b"frag6"));
    h.check(
        "6in6 fragment",
        &eth(ETH_P_IPV6, &ipv6(44, LOCAL6, &frag)),
        DecapCounter::PassOuterFragment,
        None,
    );
    h.check(
        "6in6 fragment to another host",
        &eth(ETH_P_IPV6, &ipv6(44, OTHER6, &frag)),
        DecapCounter::PassNotLocal,
        None,
    );
    // A fragment of plain UDP is not a tunnel.
    let mut udp_frag = vec![17, 0, 0, 1, 0, 0, 0, 43];
    udp_frag.extend_from_slice(&[0u8; 16]);
    h.check(
        "udp6 fragment",
        &eth(ETH_P_IPV6, &ipv6(44, LOCAL6, &udp_frag)),
        DecapCounter::PassNotTunnel,
        None,
    );
}

#[test]
fn inner_headers_that_contradict_the_outer_are_dropped() {
    let mut h = Harness::new();
    let in4 = inner_udp4(CLIENT4, VIP4, b"inner");
    let in6 = inner_udp6(CLIENT6, VIP6, b"inner6");
    let mut short_tot = in4.clone();
    short_tot[2..4].copy_from_slice(&200u16.to_be_bytes()); // inner length past the outer
    let mut inner_ihl = in4.clone();
    inner_ihl[0] = 0x44;
    let mut inner_tot_below_ihl = in4.clone();
    inner_tot_below_ihl[2..4].copy_from_slice(&12u16.to_be_bytes());
    let mut long6 = in6.clone();
    long6[4..6].copy_from_slice(&1000u16.to_be_bytes());
    let cases = [
        (
            "proto 4 carrying IPv6",
            eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &in6)),
        ),
        (
            "next header 41 carrying IPv4",
            eth(ETH_P_IPV6, &ipv6(IPPROTO_IPV6, LOCAL6, &in4)),
        ),
        (
            "inner IPv4 length past the outer payload",
            eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &short_tot)),
        ),
        (
            "inner IHL 4",
            eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &inner_ihl)),
        ),
        (
            "inner total length below its IHL",
            eth(
                ETH_P_IP,
                &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &inner_tot_below_ihl),
            ),
        ),
        (
            "inner IPv6 payload past the outer payload",
            eth(ETH_P_IPV6, &ipv6(IPPROTO_IPV6, LOCAL6, &long6)),
        ),
        (
            "outer payload shorter than an IPv4 header",
            eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &in4[..12])),
        ),
        (
            "outer payload shorter than an IPv6 header",
            eth(ETH_P_IPV6, &ipv6(IPPROTO_IPV6, LOCAL6, &in6[..30])),
        ),
        (
            "empty tunnel",
            eth(ETH_P_IPV6, &ipv6(IPPROTO_IPIP, LOCAL6, &[])),
        ),
    ];
    for (what, packet) in cases {
        h.check(what, &packet, DecapCounter::DropMalformed, None);
    }
    // Truncated in flight: the outer header claims the whole inner packet, the frame ends
    // early. The outer header is then broken itself: not a tunnel we parse.
    let whole = eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &in4));
    h.check(
        "frame cut inside the inner packet",
        &whole[..whole.len() - 4],
        DecapCounter::PassNotTunnel,
        None,
    );
}

#[test]
fn counters_add_up_over_a_mixed_batch() {
    let mut h = Harness::new();
    let in4 = inner_udp4(CLIENT4, VIP4, b"mix");
    let batch = [
        eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &in4)),
        eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0, &in4)),
        eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, OTHER4, &[], 0, &in4)),
        eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0x2000, &in4)),
        eth(ETH_P_IPV6, &ipv6(IPPROTO_IPV6, LOCAL6, &in4)),
        eth(ETH_P_IP, &inner_tcp4()),
    ];
    for p in &batch {
        h.run(p);
    }
    let c = h.counters();
    assert_eq!(
        c,
        [2, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        "decapsulated, pass_not_tunnel, pass_not_local, pass_outer_fragment, drop_malformed, \
         and no second chance (no VIP, no mark)"
    );
    assert_eq!(c.iter().sum::<u64>(), batch.len() as u64);
}

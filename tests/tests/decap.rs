//! `xdplb_decap` and `xdplb decap`: packet fixtures through BPF_PROG_TEST_RUN (input, verdict, exact output, counters), and real IP-in-IP into a backend namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use etherparse::PacketBuilder;
use lb_common::decap::{DecapCounter, DECAP_COUNTER_COUNT, PROGRAM};
use lb_userspace::{
    datapath::testrun::{XDP_DROP, XDP_PASS},
    decap::{self, DecapMaps},
};
use xdplb_lab::{
    lab::tool_path,
    netns::{self, NetNs},
};
use xdplb_tests::fixture::Run;

const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb1];

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;

/// The backend's own addresses (in `DECAP_ADDRS`), another host's, and the balancer's tunnel
/// source.
const LOCAL4: [u8; 4] = [10, 200, 0, 2];
const OTHER4: [u8; 4] = [10, 200, 0, 3];
const TUNNEL_SRC4: [u8; 4] = [10, 202, 0, 1];
const LOCAL6: [u8; 16] = [0xfd, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const OTHER6: [u8; 16] = [0xfd, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
const TUNNEL_SRC6: [u8; 16] = [0xfd, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// The client's packet inside: client → VIP.
const CLIENT4: [u8; 4] = [198, 51, 100, 7];
const VIP4: [u8; 4] = [10, 201, 0, 10];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const VIP6: [u8; 16] = [0xfd, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];

// ---------------------------------------------------------------------------------------------
// Packet building

/// Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
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
fn ipv4(proto: u8, dst: [u8; 4], options: &[u8], frags: u16, payload: &[u8]) -> Vec<u8> {
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
fn ipv6(next: u8, dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&TUNNEL_SRC6);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// An Ethernet frame router → backend.
fn eth(ether_type: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = BACKEND_MAC.to_vec();
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// An Ethernet frame with one 802.1Q tag (PCP 5, VLAN 100).
fn eth_vlan(ether_type: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = BACKEND_MAC.to_vec();
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&[0x81, 0x00, 0xa0, 100]);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// The client's UDP datagram to the VIP, IPv4, with valid checksums.
fn inner_udp4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, dst, 63).udp(40000, 7777);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// The client's UDP datagram to the VIP, IPv6, with a valid checksum.
fn inner_udp6(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv6(src, dst, 63).udp(40000, 7777);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// The client's TCP SYN to the VIP, IPv4.
fn inner_tcp4() -> Vec<u8> {
    let b = PacketBuilder::ipv4(CLIENT4, VIP4, 63)
        .tcp(40001, 80, 1000, 65535)
        .syn();
    let mut v = Vec::new();
    b.write(&mut v, b"").unwrap();
    v
}

// ---------------------------------------------------------------------------------------------
// BPF_PROG_TEST_RUN harness

struct Harness {
    ebpf: aya::Ebpf,
    maps: DecapMaps,
}

impl Harness {
    /// The decap program with `DECAP_ADDRS` = {LOCAL4, LOCAL6}.
    fn new() -> Harness {
        let mut ebpf = decap::load().expect("the verifier accepts xdplb_decap");
        let mut maps = DecapMaps::from_ebpf(&mut ebpf).expect("decap maps");
        maps.set_addrs(&[IpAddr::from(LOCAL4), IpAddr::from(LOCAL6)])
            .expect("fill DECAP_ADDRS");
        Harness { ebpf, maps }
    }

    fn run(&mut self, packet: &[u8]) -> Run {
        xdplb_tests::fixture::run_program(&mut self.ebpf, PROGRAM, packet)
    }

    fn counters(&self) -> [u64; DECAP_COUNTER_COUNT as usize] {
        self.maps.counters().unwrap()
    }

    /// Runs `packet` and checks the verdict, the output (`Some(bytes)`; `None` = untouched)
    /// and that exactly `counter` went up by one.
    fn check(&mut self, what: &str, packet: &[u8], counter: DecapCounter, out: Option<&[u8]>) {
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Fixtures

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
        [2, 1, 1, 1, 1],
        "decapsulated, pass_not_tunnel, pass_not_local, pass_outer_fragment, drop_malformed"
    );
    assert_eq!(c.iter().sum::<u64>(), batch.len() as u64);
}

// ---------------------------------------------------------------------------------------------
// End to end: real IP-in-IP from namespace A into namespace B, decapsulated by `xdplb decap`.

/// A bpffs mounted in a fresh temp directory, unmounted (releasing every pin in it, and with
/// the pinned link the program) and removed on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn new(name: &str) -> Bpffs {
        let dir = std::env::temp_dir().join(format!("xdplb-decap-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        netns::run_root(&["mount", "-t", "bpf", "bpf", dir.to_str().unwrap()])
            .expect("mount a private bpffs");
        Bpffs(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = netns::run_root(&["umount", "-l", &self.0.to_string_lossy()]);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `xdplb decap ARGS` inside `ns`, sharing our mounts (the private bpffs) — see
/// [`netns::run_shared_mounts`]. Returns stdout.
fn xdplb_decap(ns: &str, args: &[&str]) -> String {
    let xdplb = tool_path("xdplb");
    assert!(
        xdplb.is_file(),
        "{} not found: build it with `cargo build -p lb-userspace`",
        xdplb.display()
    );
    let mut cmd = vec![xdplb.to_str().unwrap(), "decap"];
    cmd.extend_from_slice(args);
    netns::run_shared_mounts(ns, &cmd).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Sends `payload` from a raw IP socket of protocol `proto` to `dst`: the kernel adds the
/// outer header (IPv4 or IPv6 by `dst`), the payload is the hand-built inner packet.
fn send_raw(proto: u8, dst: IpAddr, payload: &[u8]) -> anyhow::Result<()> {
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW, libc::c_int::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY (both arms): the sockaddr is a fully initialised local of the length passed.
    let rc = match dst {
        IpAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of_val(&sa) as libc::socklen_t,
                )
            }
        }
        IpAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of_val(&sa) as libc::socklen_t,
                )
            }
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// The next datagram on `sock`, or `None` after `wait`.
fn receive(sock: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(_) => None,
    }
}

/// `xdplb decap --stats --json`: interface, addresses and every counter by name, flat.
fn counters_json(ns: &str, pin: &Path) -> serde_json::Value {
    let out = xdplb_decap(
        ns,
        &[
            "--interface",
            "vb",
            "--pin-path",
            pin.to_str().unwrap(),
            "--stats",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("--stats --json is JSON");
    assert_eq!(v["interface"], "vb", "{v}");
    assert!(v["addresses"].is_array(), "{v}");
    v
}

#[test]
fn a_backend_namespace_receives_real_ip_in_ip_through_xdplb_decap() {
    netns::cleanup_stale();
    let prefix = netns::unique_prefix();
    // Locals drop in reverse order of declaration: the bpffs (and with it the program)
    // goes last, after the namespaces.
    let bpffs = Bpffs::new(&prefix);
    let a = NetNs::new(&format!("{prefix}-a")).unwrap();
    let b = NetNs::new(&format!("{prefix}-b")).unwrap();
    let (a_ns, b_ns) = (a.name().to_owned(), b.name().to_owned());
    let pin = bpffs.0.join("decap");
    let pin_s = pin.to_str().unwrap().to_owned();

    let a4: Ipv4Addr = "10.77.0.1".parse().unwrap();
    let b4: Ipv4Addr = "10.77.0.2".parse().unwrap();
    let a6: Ipv6Addr = "fd00:77::1".parse().unwrap();
    let b6: Ipv6Addr = "fd00:77::2".parse().unwrap();
    let vip4 = Ipv4Addr::from(VIP4);
    let vip6 = Ipv6Addr::from(VIP6);
    netns::run_root(&[
        "ip", "link", "add", "va", "netns", &a_ns, "type", "veth", "peer", "name", "vb", "netns",
        &b_ns,
    ])
    .unwrap();
    a.ip(&["addr", "add", "10.77.0.1/24", "dev", "va"]).unwrap();
    a.ip(&["addr", "add", "fd00:77::1/64", "dev", "va", "nodad"])
        .unwrap();
    b.ip(&["addr", "add", "10.77.0.2/24", "dev", "vb"]).unwrap();
    b.ip(&["addr", "add", "fd00:77::2/64", "dev", "vb", "nodad"])
        .unwrap();
    b.ip(&["addr", "add", &format!("{vip4}/32"), "dev", "lo"])
        .unwrap();
    b.ip(&["addr", "add", &format!("{vip6}/128"), "dev", "lo"])
        .unwrap();
    a.ip(&["link", "set", "va", "up"]).unwrap();
    b.ip(&["link", "set", "vb", "up"]).unwrap();

    // The service: UDP listeners on the VIPs, created in B (a socket stays in the namespace
    // it was made in, whichever thread reads it).
    let (sock4, sock6) = netns::in_netns(&b_ns, move || {
        Ok((
            UdpSocket::bind((vip4, 7777))?,
            UdpSocket::bind((vip6, 7777))?,
        ))
    })
    .unwrap();

    let in4 = inner_udp4(a4.octets(), VIP4, b"hello 4in4");
    // Without the program the kernel cannot take the tunnel apart (no ipip driver): nothing
    // arrives. This is what the program is for.
    {
        let in4 = in4.clone();
        netns::in_netns(&a_ns, move || send_raw(IPPROTO_IPIP, IpAddr::V4(b4), &in4)).unwrap();
    }
    assert_eq!(
        receive(&sock4, Duration::from_millis(500)),
        None,
        "the kernel decapsulated by itself: this test proves nothing here"
    );

    let out = xdplb_decap(
        &b_ns,
        &[
            "--interface",
            "vb",
            "--xdp-mode",
            "native",
            "--pin-path",
            &pin_s,
        ],
    );
    assert!(
        out.contains("attached xdplb_decap to vb (native XDP)"),
        "{out}"
    );
    assert!(
        out.contains("10.77.0.2, fd00:77::2"),
        "default addresses: {out}"
    );
    let link = b.ip(&["link", "show", "vb"]).unwrap();
    assert!(
        link.contains("prog/xdp") && link.contains("xdplb_decap"),
        "{link}"
    );

    // 4in4, 6in6, 4in6 and 6in4 (outer destination, inner family): each inner datagram
    // reaches the VIP listener, from the inner source.
    for (what, outer_dst, inner_v6) in [
        ("4in4", IpAddr::V4(b4), false),
        ("6in6", IpAddr::V6(b6), true),
        ("4in6", IpAddr::V6(b6), false),
        ("6in4", IpAddr::V4(b4), true),
    ] {
        let payload = format!("hello {what}").into_bytes();
        let (proto, inner, sock, src) = if inner_v6 {
            let inner = inner_udp6(a6.octets(), VIP6, &payload);
            (IPPROTO_IPV6, inner, &sock6, IpAddr::V6(a6))
        } else {
            let inner = inner_udp4(a4.octets(), VIP4, &payload);
            (IPPROTO_IPIP, inner, &sock4, IpAddr::V4(a4))
        };
        netns::in_netns(&a_ns, move || send_raw(proto, outer_dst, &inner)).unwrap();
        let (got, from) = receive(sock, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{what}: nothing reached the VIP listener"));
        assert_eq!(got, payload, "{what}");
        assert_eq!((from.ip(), from.port()), (src, 40000), "{what}");
    }
    let c = counters_json(&b_ns, &pin);
    assert_eq!(c["decapsulated"], 4, "{c}");
    assert_eq!(c["drop_malformed"], 0, "{c}");
    assert_eq!(c["pass_not_local"], 0, "{c}");

    // Re-running replaces the program in the pinned link (no detach) and keeps the maps.
    let out = xdplb_decap(
        &b_ns,
        &[
            "--interface",
            "vb",
            "--pin-path",
            &pin_s,
            "--address",
            "10.77.0.2",
        ],
    );
    assert!(
        out.contains("replaced the decap program on vb atomically"),
        "{out}"
    );
    assert!(
        out.contains("no longer decapsulating for fd00:77::2"),
        "{out}"
    );
    {
        let in4 = in4.clone();
        netns::in_netns(&a_ns, move || send_raw(IPPROTO_IPIP, IpAddr::V4(b4), &in4)).unwrap();
    }
    let (got, _) = receive(&sock4, Duration::from_secs(5)).expect("4in4 after the replacement");
    assert_eq!(got, b"hello 4in4");
    // fd00:77::2 left the set: its tunnels pass untouched, and the kernel drops them.
    let in6 = inner_udp6(a6.octets(), VIP6, b"not any more");
    netns::in_netns(&a_ns, move || send_raw(IPPROTO_IPV6, IpAddr::V6(b6), &in6)).unwrap();
    assert_eq!(receive(&sock6, Duration::from_millis(500)), None);
    let c = counters_json(&b_ns, &pin);
    assert_eq!(
        c["decapsulated"], 5,
        "counters survive the replacement: {c}"
    );
    assert_eq!(c["pass_not_local"], 1, "{c}");

    // --detach removes the link: the program is gone from the interface.
    let out = xdplb_decap(
        &b_ns,
        &["--interface", "vb", "--pin-path", &pin_s, "--detach"],
    );
    assert!(out.contains("removed") && out.contains("link"), "{out}");
    let link = b.ip(&["link", "show", "vb"]).unwrap();
    assert!(
        !link.contains("prog/xdp"),
        "still attached after --detach: {link}"
    );
    let out = xdplb_decap(
        &b_ns,
        &["--interface", "vb", "--pin-path", &pin_s, "--detach"],
    );
    assert!(out.contains("nothing pinned"), "{out}");
}

#[test]
fn cli_errors_name_the_problem() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(tool_path("xdplb"))
            .arg("decap")
            .args(args)
            .output()
            .expect("run xdplb");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let (ok, out) = run(&["--interface", "xdplbnone0"]);
    assert!(!ok);
    assert!(out.contains("interface xdplbnone0 does not exist"), "{out}");
    let (ok, out) = run(&["--interface", "lo"]);
    assert!(!ok);
    assert!(out.contains("lo has no global-scope address"), "{out}");
    let (ok, out) = run(&[
        "--interface",
        "lo",
        "--address",
        "127.0.0.1",
        "--pin-path",
        "/tmp",
    ]);
    assert!(!ok);
    assert!(out.contains("/tmp is not on a bpffs"), "{out}");
    let (ok, out) = run(&[
        "--interface",
        "xdplbnone0",
        "--stats",
        "--pin-path",
        "/sys/fs/bpf/xdplb-decap-no-such",
    ]);
    assert!(!ok);
    assert!(out.contains("is `xdplb decap` attached"), "{out}");
    let (ok, out) = run(&["--interface", "a/b", "--detach"]);
    assert!(!ok);
    assert!(out.contains("invalid interface name \"a/b\""), "{out}");
    let (ok, out) = run(&["--interface", "lo", "--xdp-mode", "fast"]);
    assert!(!ok);
    assert!(
        out.contains("[possible values: auto, native, generic]"),
        "{out}"
    );
}

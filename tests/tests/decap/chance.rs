//! Second chance through BPF_PROG_TEST_RUN, against real sockets on loopback.
//!
//! The socket lookup runs in the test's own network namespace, so a listener and connections on
//! 127.0.0.1 / ::1 are what the program finds: established and TIME_WAIT sockets of a flow,
//! a listener alone, nothing. Each case checks the verdict, the output frame and the counter.

use std::net::{Shutdown, TcpListener, TcpStream};

use lb_common::{
    decap::{Peer, PEER_L2, PEER_SELF},
    history::{flow_label_mark, ipv4_id_mark},
};

use super::{
    fixtures::{hex, Harness},
    *,
};

/// Backend ids the marks name: a peer on the segment, this host, and an id nobody has.
const PEER: u32 = 17;
const SELF: u32 = 18;
const NOBODY: u32 = 19;
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x17];

fn harness() -> Harness {
    let mut h = Harness::new();
    h.maps
        .set_host_vips(&[
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(Ipv6Addr::LOCALHOST),
        ])
        .unwrap();
    let peers = [
        (
            PEER,
            Peer {
                mac: PEER_MAC,
                state: PEER_L2,
                ..Default::default()
            },
        ),
        (
            SELF,
            Peer {
                mac: [0; 6],
                state: PEER_SELF,
                ..Default::default()
            },
        ),
    ]
    .into_iter()
    .collect();
    h.maps.set_peers(&peers).unwrap();
    h
}

/// TCP flags of the frames below.
const ACK: u8 = 0x10;
const SYN: u8 = 0x02;
const PSH_ACK: u8 = 0x18;

/// A TCP frame from `client` to `server` (both on loopback) with `flags`, the IPv4 ID or IPv6
/// flow label set to `mark` (DF set on IPv4 unless `df` is false).
fn frame(
    client: SocketAddr,
    server: SocketAddr,
    flags: u8,
    mark: Option<u32>,
    df: bool,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(ROUTER_MAC, BACKEND_MAC);
    let mut v = Vec::new();
    let tcp = |b: etherparse::PacketBuilderStep<etherparse::IpHeaders>| {
        let mut t = b.tcp(client.port(), server.port(), 1000, 65535);
        if flags & SYN != 0 {
            t = t.syn();
        }
        if flags & ACK != 0 {
            t = t.ack(1);
        }
        if flags & 0x08 != 0 {
            t = t.psh();
        }
        t
    };
    match (client.ip(), server.ip()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            let mut ip = etherparse::Ipv4Header::new(
                0,
                64,
                etherparse::IpNumber::TCP,
                c.octets(),
                s.octets(),
            )
            .unwrap();
            ip.dont_fragment = df;
            ip.identification = mark.map_or(0x1234, ipv4_id_mark);
            tcp(b.ip(etherparse::IpHeaders::Ipv4(ip, Default::default())))
                .write(&mut v, b"x")
                .unwrap();
        }
        (IpAddr::V6(c), IpAddr::V6(s)) => {
            let label = mark.map_or(0x1_2345, flow_label_mark);
            let ip = etherparse::Ipv6Header {
                flow_label: etherparse::Ipv6FlowLabel::try_new(label).unwrap(),
                hop_limit: 64,
                source: c.octets(),
                destination: s.octets(),
                ..Default::default()
            };
            tcp(b.ip(etherparse::IpHeaders::Ipv6(ip, Default::default())))
                .write(&mut v, b"x")
                .unwrap();
        }
        _ => unreachable!(),
    }
    v
}

/// A listener on `ip` and one connection to it: (listener, client side, server side).
fn connection(ip: IpAddr) -> (TcpListener, TcpStream, TcpStream) {
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (l, c, s)
}

/// The frame a chained packet leaves as: to the peer's MAC, from ours, mark cleared.
fn chained(input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    out[..6].copy_from_slice(&PEER_MAC);
    out[6..12].copy_from_slice(&BACKEND_MAC);
    if out[12..14] == [0x08, 0x00] {
        out[18..20].copy_from_slice(&[0, 0]);
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&out[14..])
            .unwrap()
            .to_header();
        out[24..26].copy_from_slice(&ip.calc_header_checksum().to_be_bytes());
    } else {
        out[15] &= 0xf0;
        out[16] = 0;
        out[17] = 0;
    }
    out
}

fn check_tx(h: &mut Harness, what: &str, packet: &[u8]) {
    let before = h.counters();
    let r = h.run(packet);
    assert_eq!(
        r.action,
        lb_userspace::datapath::testrun::XDP_TX,
        "{what}: verdict"
    );
    assert_eq!(hex(&r.out), hex(&chained(packet)), "{what}: output frame");
    let after = h.counters();
    for c in DecapCounter::ALL {
        let d = after[c as usize] - before[c as usize];
        assert_eq!(
            d,
            u64::from(c == DecapCounter::TxChained),
            "{what}: counter {}",
            c.name()
        );
    }
}

#[test]
fn a_marked_packet_is_delivered_when_the_flow_is_local_and_chained_when_not() {
    let mut h = harness();
    for ip in [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(Ipv6Addr::LOCALHOST),
    ] {
        let (listener, client, server) = connection(ip);
        let (c, s) = (client.local_addr().unwrap(), server.local_addr().unwrap());
        let pkt = |flags, mark| frame(c, s, flags, mark, true);
        h.check(
            &format!("{ip}: no mark"),
            &pkt(PSH_ACK, None),
            DecapCounter::PassNotTunnel,
            None,
        );
        h.check(
            &format!("{ip}: a mark naming no host"),
            &pkt(PSH_ACK, Some(NOBODY)),
            DecapCounter::PassNotTunnel,
            None,
        );
        h.check(
            &format!("{ip}: established here"),
            &pkt(PSH_ACK, Some(PEER)),
            DecapCounter::PassLocal,
            None,
        );
        // Another client port: no socket of that flow, only the listener.
        let other = SocketAddr::new(ip, c.port().wrapping_add(1000).max(1024));
        let foreign = frame(other, s, PSH_ACK, Some(PEER), true);
        check_tx(&mut h, &format!("{ip}: not ours, listener only"), &foreign);
        h.check(
            &format!("{ip}: a SYN is always ours"),
            &frame(other, s, SYN, Some(PEER), true),
            DecapCounter::PassSyn,
            None,
        );
        h.check(
            &format!("{ip}: not ours, the chain names this host"),
            &frame(other, s, ACK, Some(SELF), true),
            DecapCounter::PassEndOfChain,
            None,
        );
        // The server closes first: its side of the flow is then in TIME_WAIT.
        server.shutdown(Shutdown::Write).unwrap();
        drop(server);
        let mut buf = [0u8; 1];
        let _ = std::io::Read::read(&mut &client, &mut buf);
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(100));
        h.check(
            &format!("{ip}: TIME_WAIT here"),
            &pkt(ACK, Some(PEER)),
            DecapCounter::PassLocal,
            None,
        );
        drop(listener);
        // No listener, no socket: not ours.
        check_tx(
            &mut h,
            &format!("{ip}: nothing listens"),
            &frame(other, s, PSH_ACK, Some(PEER), true),
        );
    }
    // IPv4 without DF: the ID is the sender's for fragmentation, never a mark.
    let (_l, client, server) = connection(IpAddr::from([127, 0, 0, 1]));
    let (c, s) = (client.local_addr().unwrap(), server.local_addr().unwrap());
    let other = SocketAddr::new(c.ip(), c.port().wrapping_add(1000).max(1024));
    h.check(
        "IPv4 without DF",
        &frame(other, s, PSH_ACK, Some(PEER), false),
        DecapCounter::PassNotTunnel,
        None,
    );
    // Not a VIP of this host: never chained.
    h.maps
        .set_host_vips(&[IpAddr::from([10, 9, 9, 9])])
        .unwrap();
    h.check(
        "not to a VIP",
        &frame(other, s, PSH_ACK, Some(PEER), true),
        DecapCounter::PassNotTunnel,
        None,
    );
}

/// The `ipip` peer the tunnel cases name: another backend, reached at OTHER4.
const TUNNEL_PEER: u32 = 21;

/// `inner` (an IP packet) in a 4in4 tunnel to LOCAL4 whose outer ID carries `mark` (DF set,
/// as the balancer sends it).
fn tunnel4(inner: &[u8], mark: Option<u32>) -> Vec<u8> {
    let mut f = eth(ETH_P_IP, &ipv4(IPPROTO_IPIP, LOCAL4, &[], 0x4000, inner));
    f[18..20].copy_from_slice(&mark.map_or(0, ipv4_id_mark).to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = frames::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn a_marked_tunnel_is_readdressed_to_the_previous_owner_when_its_flow_is_not_local() {
    let mut h = harness();
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&OTHER4);
    let peer = Peer {
        addr,
        state: lb_common::decap::PEER_IPIP,
        family: lb_common::Family::V4,
        ..Default::default()
    };
    let mut peers: std::collections::BTreeMap<u32, Peer> = [
        (
            PEER,
            Peer {
                mac: PEER_MAC,
                state: PEER_L2,
                ..Default::default()
            },
        ),
        (TUNNEL_PEER, peer),
    ]
    .into_iter()
    .collect();
    h.maps.set_peers(&peers).unwrap();
    let (_listener, client, server) = connection(IpAddr::from([127, 0, 0, 1]));
    let (c, s) = (client.local_addr().unwrap(), server.local_addr().unwrap());
    let other = SocketAddr::new(c.ip(), c.port().wrapping_add(1000).max(1024));
    let inner = |from| frame(from, s, PSH_ACK, None, true)[14..].to_vec();
    let decapsulated = |from| eth(ETH_P_IP, &inner(from));
    h.check(
        "marked, the inner flow is local",
        &tunnel4(&inner(c), Some(TUNNEL_PEER)),
        DecapCounter::Decapsulated,
        Some(&decapsulated(c)),
    );
    h.check(
        "not ours, but no mark",
        &tunnel4(&inner(other), None),
        DecapCounter::Decapsulated,
        Some(&decapsulated(other)),
    );
    h.check(
        "not ours, the mark names an l2 backend",
        &tunnel4(&inner(other), Some(PEER)),
        DecapCounter::Decapsulated,
        Some(&decapsulated(other)),
    );
    // Not ours: back to the router (MACs swapped), to the peer, mark cleared.
    let input = tunnel4(&inner(other), Some(TUNNEL_PEER));
    let before = h.counters();
    let r = h.run(&input);
    assert_eq!(
        r.action,
        lb_userspace::datapath::testrun::XDP_TX,
        "chained tunnel: verdict"
    );
    let mut want = input.clone();
    want[..6].copy_from_slice(&ROUTER_MAC);
    want[6..12].copy_from_slice(&BACKEND_MAC);
    want[18..20].copy_from_slice(&[0, 0]);
    want[30..34].copy_from_slice(&OTHER4);
    want[24..26].copy_from_slice(&[0, 0]);
    let c = frames::checksum(&want[14..34]);
    want[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(hex(&r.out), hex(&want), "chained tunnel: output frame");
    let after = h.counters();
    assert_eq!(
        after[DecapCounter::TxChained as usize] - before[DecapCounter::TxChained as usize],
        1
    );
    // A peer of the other family cannot take this tunnel: it is decapsulated here.
    peers.get_mut(&TUNNEL_PEER).unwrap().family = lb_common::Family::V6;
    h.maps.set_peers(&peers).unwrap();
    h.check(
        "not ours, the peer is IPv6",
        &input,
        DecapCounter::Decapsulated,
        Some(&decapsulated(other)),
    );
}

//! Per-packet cost of the backends' host program (`xdplb host`), against an empty XDP_PASS.
//!
//! Three classes: a VIP TCP packet without history (what almost every packet a backend gets
//! is), a marked packet of a local connection (a socket lookup, then the stack), and a marked
//! packet of a flow that is not local (a socket lookup, then sent on). The last rewrites the
//! frame (its mark is cleared), so it is timed one packet per run against the pass program
//! timed the same way.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
};

use anyhow::{ensure, Result};
use aya::Ebpf;
use lb_common::{
    decap::{Peer, PEER_L2, PROGRAM},
    history::ipv4_id_mark,
};
use lb_userspace::{
    datapath::objects,
    decap::{self, DecapMaps},
};
use xdplb_lab::frames::{CLIENT_MAC, GW_MAC};

use super::{median, median_ns, time_once, PacketCost, Settings};
use crate::baselines;

/// The backend id the marks name (a peer on the segment).
const PEER: u32 = 7;

/// An IPv4 TCP ACK from `client` to `server` with DF set and IPv4 ID `id`.
fn tcp4(client: SocketAddr, server: SocketAddr, id: u16) -> Vec<u8> {
    let (IpAddr::V4(c), IpAddr::V4(s)) = (client.ip(), server.ip()) else {
        unreachable!("IPv4 only");
    };
    let mut ip =
        etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, c.octets(), s.octets())
            .expect("header");
    ip.dont_fragment = true;
    ip.identification = id;
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(client.port(), server.port(), 1, 65535)
        .ack(1)
        .write(&mut v, &[0u8; 20])
        .expect("packet");
    v
}

/// The host program's classes; `pass_ns` and `swap_ns` are the baselines of the same run.
pub(super) fn host_classes(s: &Settings, base: &mut Ebpf, swap_ns: f64) -> Result<Vec<PacketCost>> {
    let mut ebpf = decap::load()?;
    let mut maps = DecapMaps::from_ebpf(&mut ebpf)?;
    let loopback = IpAddr::from([127, 0, 0, 1]);
    maps.set_host_vips(&[loopback])?;
    let peer = Peer {
        mac: [2, 0, 0, 0, 0, 7],
        state: PEER_L2,
        ..Default::default()
    };
    maps.set_peers(&[(PEER, peer)].into_iter().collect())?;
    // A real connection on loopback: the socket lookup of the local class finds it.
    let listener = TcpListener::bind((loopback, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    let (c, srv) = (client.local_addr()?, server.local_addr()?);
    let other = SocketAddr::new(loopback, c.port().wrapping_add(1000).max(1024));

    let mut out = Vec::new();
    let counted = BTreeMap::new;
    let plain = tcp4(c, srv, 0x1234);
    let (ns, v) = median_ns(objects::program(&mut ebpf, PROGRAM)?, &plain, s)?;
    ensure!(
        v == 2,
        "the host program did not pass a packet without history (verdict {v})"
    );
    out.push(PacketCost::new(
        "host program: VIP TCP without history",
        ns,
        swap_ns,
        v,
        "header read, no map, no socket lookup".into(),
        counted(),
    ));
    let local = tcp4(c, srv, ipv4_id_mark(PEER));
    let (ns, v) = median_ns(objects::program(&mut ebpf, PROGRAM)?, &local, s)?;
    ensure!(
        v == 2,
        "the host program did not deliver a local flow (verdict {v})"
    );
    out.push(PacketCost::new(
        "host program: marked, local connection",
        ns,
        swap_ns,
        v,
        "peer and VIP checks, socket lookup, delivered".into(),
        counted(),
    ));
    // One packet per run: the chained frame leaves with its mark cleared.
    let foreign = tcp4(other, srv, ipv4_id_mark(PEER));
    let calls: u32 = if s.runs < 15 { 2_000 } else { 20_000 };
    let (mut chained, mut pass) = (Vec::new(), Vec::new());
    let mut verdict = 0;
    for _ in 0..calls {
        let (ns, v) = time_once(objects::program(&mut ebpf, PROGRAM)?, &foreign, 1)?;
        chained.push(ns);
        verdict = v;
        pass.push(time_once(objects::program(base, baselines::PASS)?, &foreign, 1)?.0);
    }
    ensure!(
        verdict == 3,
        "the host program did not chain a foreign flow (verdict {verdict})"
    );
    let pass1 = median(pass);
    out.push(PacketCost::new(
        "host program: marked, chained (one packet per run)",
        median(chained),
        swap_ns,
        verdict,
        format!("socket lookup (listener only), mark cleared, sent on; empty XDP_PASS the same way: {pass1:.0} ns"),
        counted(),
    ));
    out.push(PacketCost::new(
        "baseline: empty XDP_PASS (one packet per run)",
        pass1,
        swap_ns,
        2,
        "the chained class's floor".into(),
        counted(),
    ));
    drop((client, server, listener));
    Ok(out)
}

//! `xdplb_decap` and `xdplb decap`: packet fixtures and real IP-in-IP into a backend namespace.
//!
//! The fixtures run the program with BPF_PROG_TEST_RUN (input, verdict, exact output, counters).

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

mod chance;
mod fixtures;
mod frames;
mod namespace;

use self::frames::{eth, eth_vlan, inner_tcp4, inner_udp4, inner_udp6, ipv4, ipv6};

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

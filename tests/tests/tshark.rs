//! Third-party validation: tshark dissects every kind of frame the balancer emits.
//!
//! IP-in-IP of each family pair, L2 rewrites, path-MTU answers, echo replies and steered ICMP
//! errors, produced by the real program via `xdplb replay` and dissected with checksum validation
//! on: nothing malformed, every outer and inner checksum good.

use std::{path::Path, process::Command};

use etherparse::{
    icmpv4::DestUnreachableHeader, Icmpv4Type, IpHeaders, IpNumber, Ipv4Header, PacketBuilder,
};
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};
use xdplb_lab::{
    frames::{CLIENT_MAC, GW_MAC},
    lab::tool_path,
};

use xdplb_tests::fixture::ipip_config;

const C4: [u8; 4] = [10, 200, 0, 11];

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

fn write(b: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::new();
    b(&mut v);
    v
}

/// One frame of each kind, several flows each.
fn frames() -> Vec<Vec<u8>> {
    let mut f = Vec::new();
    for port in 40000..40008u16 {
        f.push(write(|v| {
            PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
                .ipv4(C4, [10, 201, 0, 10], 64)
                .tcp(port, 80, 1, 65535)
                .syn()
                .write(v, &[])
                .unwrap()
        }));
        f.push(write(|v| {
            PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
                .ipv6(v6("fd00:200::11"), v6("fd00:201::10"), 64)
                .tcp(port, 80, 1, 65535)
                .ack(5)
                .write(v, b"GET / HTTP/1.1\r\n\r\n")
                .unwrap()
        }));
        f.push(write(|v| {
            PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
                .ipv4(C4, [10, 201, 0, 11], 64)
                .udp(port, 7000)
                .write(v, b"4in6 query")
                .unwrap()
        }));
        f.push(write(|v| {
            PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
                .ipv6(v6("fd00:200::11"), v6("fd00:201::11"), 64)
                .udp(port, 7000)
                .write(v, b"6in4 query")
                .unwrap()
        }));
        f.push(write(|v| {
            PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
                .ipv4(C4, [10, 201, 0, 12], 64)
                .tcp(port, 80, 1, 65535)
                .syn()
                .write(v, &[])
                .unwrap()
        }));
    }
    // Too big for the tunnel: IPv4 with DF and IPv6 get ICMP answers.
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, C4, [10, 201, 0, 10]).unwrap();
    ip.dont_fragment = true;
    f.push(write(|v| {
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .tcp(40000, 80, 2, 65535)
            .ack(1)
            .write(v, &[7u8; 1460])
            .unwrap()
    }));
    f.push(write(|v| {
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .ipv6(v6("fd00:200::11"), v6("fd00:201::10"), 64)
            .tcp(40000, 80, 2, 65535)
            .ack(1)
            .write(v, &[7u8; 1440])
            .unwrap()
    }));
    // Pings.
    f.push(write(|v| {
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .ipv4(C4, [10, 201, 0, 10], 64)
            .icmpv4_echo_request(1, 1)
            .write(v, b"abcdefgh")
            .unwrap()
    }));
    f.push(write(|v| {
        PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
            .ipv6(v6("fd00:200::11"), v6("fd00:201::10"), 64)
            .icmpv6_echo_request(1, 1)
            .write(v, b"abcdefgh")
            .unwrap()
    }));
    // A router's "fragmentation needed" about a reply of flow 40001: steered through the tunnel.
    let quoted = write(|v| {
        PacketBuilder::ipv4([10, 201, 0, 10], C4, 63)
            .tcp(80, 40001, 9, 1000)
            .ack(3)
            .write(v, &[0u8; 1400])
            .unwrap()
    });
    f.push(write(|v| {
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xaa], GW_MAC)
            .ipv4([10, 200, 0, 254], [10, 201, 0, 10], 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
            ))
            .write(v, &quoted[..28])
            .unwrap()
    }));
    f
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let file = std::fs::File::create(path).unwrap();
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ..Default::default()
    };
    let mut w = PcapWriter::with_header(file, header).unwrap();
    for (i, f) in frames.iter().enumerate() {
        let ts = std::time::Duration::from_millis(i as u64);
        w.write_packet(&PcapPacket::new(ts, f.len() as u32, f))
            .unwrap();
    }
}

#[test]
fn tshark_finds_every_emitted_frame_well_formed_with_good_checksums() {
    let dir = std::env::temp_dir().join(format!("xdplb-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cfg, input, output) = (
        dir.join("lb.yaml"),
        dir.join("in.pcap"),
        dir.join("out.pcap"),
    );
    std::fs::write(&cfg, ipip_config()).unwrap();
    let frames = frames();
    write_pcap(&input, &frames);
    let run = Command::new(tool_path("xdplb"))
        .args(["replay", "--config"])
        .arg(&cfg)
        .arg("--pcap")
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .arg("--json")
        .output()
        .expect("xdplb replay");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let verdicts: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), frames.len());
    assert!(
        verdicts.iter().all(|v| v["verdict"] == "tx"),
        "every frame is answered or forwarded: {stdout}"
    );

    let stacks = xdplb_lab::tshark::clean_stacks(&output, Some(frames.len()))
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Every tunnel pairing was dissected down to the inner transport.
    for stack in [
        "eth:ethertype:ip:ip:tcp",
        "eth:ethertype:ipv6:ipv6:tcp",
        "eth:ethertype:ipv6:ip:udp",
        "eth:ethertype:ip:ipv6:udp",
        "eth:ethertype:ip:icmp:ip:tcp",
        "eth:ethertype:ipv6:icmpv6:ipv6:tcp",
        "eth:ethertype:ip:icmp:data",
        "eth:ethertype:ipv6:icmpv6:data",
        "eth:ethertype:ip:ip:icmp:ip:tcp",
    ] {
        assert!(
            stacks.keys().any(|k| k.starts_with(stack)),
            "no frame dissected as {stack}: {stacks:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

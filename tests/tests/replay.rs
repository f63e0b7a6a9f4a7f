//! `xdplb replay`: captures in, one verdict per packet out, rewritten packets written back.
//!
//! Flow state is carried across packets; bad captures get clear errors.

use std::process::Command;

use etherparse::PacketBuilder;
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter},
    DataLink,
};
use xdplb_lab::configs::{self, lan4, vip, Backend};
use xdplb_lab::lab::tool_path;

/// One VIP; the third backend has no MAC, so replay shows its placeholder.
fn config() -> String {
    configs::config("xdplbnone0")
        .vip(vip("web", "10.201.0.10", 80, "tcp").backends([
            lan4(1),
            lan4(2),
            Backend::new("10.200.0.103"),
        ]))
        .yaml()
}

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("xdplb-replay-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc1], [2, 0, 0, 0, 0, 1])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1, 1000);
    let mut v = Vec::new();
    b.write(&mut v, b"hi").unwrap();
    v
}

fn write_pcap(path: &std::path::Path, link: DataLink, frames: &[Vec<u8>]) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = PcapWriter::with_header(
        f,
        PcapHeader {
            datalink: link,
            ..Default::default()
        },
    )
    .unwrap();
    for (i, fr) in frames.iter().enumerate() {
        w.write_packet(&PcapPacket::new(
            std::time::Duration::from_millis(i as u64),
            fr.len() as u32,
            fr,
        ))
        .unwrap();
    }
}

fn xdplb(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(tool_path("xdplb"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `xdplb replay --json` of `input` with `cfg`, writing `output`: the verdict lines, parsed,
/// and the raw output for messages.
fn replay_json(
    cfg: &std::path::Path,
    input: &std::path::Path,
    output: &std::path::Path,
) -> (Vec<serde_json::Value>, String) {
    let (ok, out, err) = xdplb(&[
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        "--pcap",
        input.to_str().unwrap(),
        "--out",
        output.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let lines = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, out)
}

#[test]
fn replay_prints_a_verdict_per_packet_and_writes_the_rewritten_capture() {
    let d = dir();
    let cfg = d.join("lb.yaml");
    std::fs::write(&cfg, config()).unwrap();
    let mut frames = Vec::new();
    for sport in 40000..40020u16 {
        frames.push(tcp([10, 200, 0, 11], sport, [10, 201, 0, 10], 80));
    }
    frames.push(tcp([10, 200, 0, 11], 40000, [10, 201, 0, 10], 80)); // the first flow again
    frames.push(tcp([10, 200, 0, 11], 40000, [10, 200, 0, 1], 22)); // not a VIP
    let mut runt = tcp([10, 200, 0, 11], 1, [10, 201, 0, 10], 80);
    runt.truncate(14 + 20 + 8); // truncated TCP header
    frames.push(runt);
    let input = d.join("in.pcap");
    let output = d.join("out.pcap");
    write_pcap(&input, DataLink::ETHERNET, &frames);
    let (lines, _) = replay_json(&cfg, &input, &output);
    assert_eq!(lines.len(), frames.len());
    for (i, l) in lines.iter().enumerate().take(21) {
        assert_eq!(l["index"], i);
        assert_eq!(l["verdict"], "tx", "{l}");
        assert_eq!(l["vip"], "web");
        assert!(
            l["backend"].as_str().unwrap().starts_with("10.200.0.10"),
            "{l}"
        );
    }
    // The repeated flow went to the same backend: flow state carries across packets.
    assert_eq!(lines[20]["backend"], lines[0]["backend"]);
    let used: std::collections::HashSet<_> =
        lines[..20].iter().map(|l| l["backend"].clone()).collect();
    assert!(used.len() >= 2, "20 flows spread over backends: {used:?}");
    assert_eq!(
        (lines[21]["verdict"].as_str(), lines[21]["vip"].is_null()),
        (Some("pass"), true)
    );
    assert_eq!(lines[22]["verdict"], "drop");

    // The output capture holds the packets as the program left them.
    let mut r = PcapReader::new(std::fs::File::open(&output).unwrap()).unwrap();
    let first = r.next_packet().unwrap().unwrap();
    let backend_mac = match lines[0]["backend"].as_str().unwrap() {
        "10.200.0.101" => [2, 0, 0, 0, 1, 1],
        "10.200.0.102" => [2, 0, 0, 0, 1, 2],
        _ => [0x02, 0x58, 10, 200, 0, 103], // no mac in the config and no such interface: placeholder
    };
    assert_eq!(&first.data[..6], &backend_mac);
    assert_eq!(
        &first.data[6..12],
        &[2, 0, 0, 0, 0, 1],
        "source MAC = the balancer's"
    );
    assert_eq!(
        &first.data[12..],
        &frames[0][12..],
        "the IP packet is untouched"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn bad_captures_get_clear_errors() {
    let d = dir().join("bad");
    std::fs::create_dir_all(&d).unwrap();
    let cfg = d.join("lb.yaml");
    std::fs::write(&cfg, config()).unwrap();
    let c = cfg.to_str().unwrap();

    let (ok, _, err) = xdplb(&["replay", "--config", c, "--pcap", "/nonexistent.pcap"]);
    assert!(
        !ok && err.contains("cannot open capture /nonexistent.pcap"),
        "{err}"
    );

    let garbage = d.join("garbage.pcap");
    std::fs::write(&garbage, b"this is not a capture at all").unwrap();
    let (ok, _, err) = xdplb(&["replay", "--config", c, "--pcap", garbage.to_str().unwrap()]);
    assert!(!ok && err.contains("is not a pcap capture"), "{err}");

    let raw = d.join("raw.pcap");
    write_pcap(&raw, DataLink::RAW, &[vec![0x45; 40]]);
    let (ok, _, err) = xdplb(&["replay", "--config", c, "--pcap", raw.to_str().unwrap()]);
    assert!(!ok && err.contains("replay needs Ethernet frames"), "{err}");

    let good = d.join("good.pcap");
    write_pcap(
        &good,
        DataLink::ETHERNET,
        &[
            tcp([10, 200, 0, 11], 1000, [10, 201, 0, 10], 80),
            tcp([10, 200, 0, 11], 1001, [10, 201, 0, 10], 80),
        ],
    );
    let bytes = std::fs::read(&good).unwrap();
    let truncated = d.join("truncated.pcap");
    std::fs::write(&truncated, &bytes[..bytes.len() - 20]).unwrap();
    let (ok, out, err) = xdplb(&[
        "replay",
        "--config",
        c,
        "--pcap",
        truncated.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("packet 1 is unreadable"), "{out}{err}");
    let _ = std::fs::remove_dir_all(d);
}

/// Odd captures go on: a frame shorter than an Ethernet header is its own `skipped` line (with
/// why) and the rest are replayed; a steered ICMP error names the VIP and backend of the flow
/// it quotes.
#[test]
fn short_frames_are_skipped_and_steered_icmp_errors_name_their_flow() {
    // Not under dir(): another test removes that when it ends.
    let d = std::env::temp_dir().join(format!("xdplb-replay-odd-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let cfg = d.join("lb.yaml");
    std::fs::write(&cfg, config()).unwrap();
    // "Fragmentation needed" from a router on the client's path, quoting what the VIP sent
    // to the client of the first flow: its IPv4 header and the first 8 bytes of TCP.
    let mut quote = Vec::new();
    PacketBuilder::ipv4([10, 201, 0, 10], [10, 200, 0, 11], 64)
        .tcp(80, 40000, 1, 1000)
        .write(&mut quote, &[])
        .unwrap();
    quote.truncate(20 + 8);
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xc1], [2, 0, 0, 0, 0, 1])
        .ipv4([10, 200, 0, 254], [10, 201, 0, 10], 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut icmp, &quote)
        .unwrap();
    let frames = [
        tcp([10, 200, 0, 11], 40000, [10, 201, 0, 10], 80),
        vec![0xff; 10],
        icmp,
        tcp([10, 200, 0, 11], 40001, [10, 201, 0, 10], 80),
    ];
    let input = d.join("odd.pcap");
    let output = d.join("odd-out.pcap");
    write_pcap(&input, DataLink::ETHERNET, &frames);
    let (lines, out) = replay_json(&cfg, &input, &output);
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[1]["verdict"], "skipped", "{out}");
    assert_eq!(
        lines[1]["why"], "10 bytes, shorter than an Ethernet header",
        "{out}"
    );
    assert_eq!(lines[2]["verdict"], "tx", "{out}");
    assert_eq!(lines[2]["vip"], "web", "{out}");
    assert_eq!(
        lines[2]["backend"], lines[0]["backend"],
        "the error follows its flow: {out}"
    );
    assert!(lines[2]["backend"].is_string(), "{out}");
    assert_eq!(lines[3]["verdict"], "tx", "replay went on: {out}");
    // The output capture keeps every packet at its index.
    let f = std::fs::File::open(&output).unwrap();
    let mut r = PcapReader::new(f).unwrap();
    let mut n = 0;
    while let Some(p) = r.next_packet() {
        let p = p.unwrap();
        if n == 1 {
            assert_eq!(p.data.as_ref(), &frames[1][..]);
        }
        n += 1;
    }
    assert_eq!(n, 4);
    let _ = std::fs::remove_dir_all(d);
}

//! tshark as an independent judge of captured frames: dissects a pcap with IP/TCP/UDP checksum validation on and reports, per frame, its protocol stack and anything malformed or with a bad checksum.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

/// Wireshark's expert severity PI_ERROR (0x00800000): malformed fields and bad checksums.
const PI_ERROR: &str = "8388608";

/// Dissects `pcap` and returns the count of frames per protocol stack (`frame.protocols`, e.g.
/// `eth:ethertype:ip:ip:tcp`), or an error naming the first frame that is malformed, has an
/// expert error, or has any IP, TCP, UDP, ICMP or ICMPv6 checksum that is not good (outer and
/// inner headers alike). `expected_frames`, when given, must match the frame count.
pub fn clean_stacks(
    pcap: &Path,
    expected_frames: Option<usize>,
) -> Result<BTreeMap<String, usize>> {
    let out = Command::new("tshark")
        .arg("-n")
        .arg("-r")
        .arg(pcap)
        // Checksum validation is off by default in Wireshark; turn every one on.
        .args(["-o", "ip.check_checksum:TRUE"])
        .args(["-o", "tcp.check_checksum:TRUE"])
        .args(["-o", "udp.check_checksum:TRUE"])
        .args(["-T", "fields", "-E", "separator=|"])
        .args(["-e", "frame.protocols"])
        .args(["-e", "ip.checksum.status", "-e", "tcp.checksum.status"])
        .args(["-e", "udp.checksum.status", "-e", "icmp.checksum.status"])
        .args(["-e", "icmpv6.checksum.status"])
        .args(["-e", "_ws.expert.severity", "-e", "_ws.malformed"])
        // tshark writes its profile under $HOME; keep it out of root's home.
        .env("HOME", std::env::temp_dir())
        .output()
        .context("running tshark (installed by `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!("tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let mut stacks = BTreeMap::new();
    let mut frames = 0;
    for (i, line) in text.lines().enumerate() {
        frames += 1;
        let cols: Vec<&str> = line.split('|').collect();
        if cols.len() < 8 {
            bail!("frame {}: unexpected tshark line {line:?}", i + 1);
        }
        let protocols = cols[0];
        *stacks.entry(protocols.to_owned()).or_insert(0) += 1;
        // Checksum status: 1 good, 0 bad, 2 unverified (none here: validation is on).
        for (c, name) in cols[1..6]
            .iter()
            .zip(["ip", "tcp", "udp", "icmp", "icmpv6"])
        {
            if c.split(',').any(|s| !s.is_empty() && s != "1") {
                bail!("frame {}: {name} checksum not good ({line})", i + 1);
            }
        }
        if !cols[7].is_empty() || protocols.contains("malformed") {
            bail!("frame {} malformed: {line}", i + 1);
        }
        if cols[6].split(',').any(|s| s == PI_ERROR) {
            bail!("frame {} has an expert error: {line}", i + 1);
        }
    }
    if let Some(n) = expected_frames {
        if n != frames {
            bail!("tshark saw {frames} frames, expected {n}");
        }
    }
    Ok(stacks)
}

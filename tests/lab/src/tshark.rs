//! tshark as an independent judge of captured frames.
//!
//! Dissects a pcap with IP/TCP/UDP checksum validation on and reports, per frame, its protocol
//! stack and anything malformed or with a bad checksum.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// Wireshark's expert severity PI_ERROR (0x00800000): malformed fields and bad checksums.
const PI_ERROR: &str = "8388608";

/// Dissects `pcap` and returns the count of frames per protocol stack (`frame.protocols`, e.g.
/// `eth:ethertype:ip:ip:tcp`), or an error naming the first frame that is malformed, has an
/// expert error, or has any IP, TCP, UDP, ICMP or ICMPv6 checksum that is not good (outer and
/// inner headers alike). `expected_frames`, when given, must match the frame count. A frame's
/// error carries its full `tshark -V` decode, so a rare failure can be diagnosed from the log.
pub fn clean_stacks(
    pcap: &Path,
    expected_frames: Option<usize>,
) -> Result<BTreeMap<String, usize>> {
    judge(pcap, expected_frames).map_err(|e| match e.frame {
        Some(n) => {
            let decode = decode_frame(pcap, n)
                .unwrap_or_else(|d| format!("(no decode of frame {n}: {d:#})"));
            anyhow::anyhow!("{}\n--- tshark -V of frame {n} ---\n{decode}", e.error)
        }
        None => e.error,
    })
}

/// Copies `pcap` to `name` under the system temp directory (with this process's id, so parallel
/// runs do not overwrite each other) and returns the new path: a lab's directory is removed when
/// the lab drops, and a failing capture is the evidence.
pub fn keep_capture(pcap: &Path, name: &str) -> Result<PathBuf> {
    let kept = std::env::temp_dir().join(format!("xdplb-{}-{name}", std::process::id()));
    std::fs::copy(pcap, &kept)
        .with_context(|| format!("copying {} to {}", pcap.display(), kept.display()))?;
    Ok(kept)
}

/// tshark's full dissection (`-V`, every layer, with the same checksum validation as
/// [`clean_stacks`]) and hex dump of frame `n` (1-based) of `pcap`.
pub fn decode_frame(pcap: &Path, n: usize) -> Result<String> {
    let out = tshark(pcap)
        .args(["-V", "-x", "-Y", &format!("frame.number == {n}")])
        .output()
        .context("running tshark")?;
    if !out.status.success() {
        bail!("tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `tshark -n -r pcap` with every checksum validation on.
fn tshark(pcap: &Path) -> Command {
    let mut c = Command::new("tshark");
    c.arg("-n")
        .arg("-r")
        .arg(pcap)
        // Checksum validation is off by default in Wireshark; turn every one on.
        .args(["-o", "ip.check_checksum:TRUE"])
        .args(["-o", "tcp.check_checksum:TRUE"])
        .args(["-o", "udp.check_checksum:TRUE"])
        // Judge what the balancer writes (Ethernet, IP, tunnel, ICMP and transport headers),
        // not the payloads it carries untouched: without this, tshark picks a dissector by
        // port number, and a test payload ("hello") on an ephemeral port that happens to be
        // some protocol's (41170/udp, Manolito) was flagged "Malformed Packet".
        .args([
            "-d",
            "tcp.port==1-65535,data",
            "-d",
            "udp.port==1-65535,data",
        ])
        // tshark writes its profile under $HOME; keep it out of root's home.
        .env("HOME", std::env::temp_dir());
    c
}

/// Why [`judge`] rejected a capture, and the frame (1-based) at fault if it was one frame.
struct Rejection {
    frame: Option<usize>,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Rejection {
    fn from(error: anyhow::Error) -> Self {
        Rejection { frame: None, error }
    }
}

fn judge(
    pcap: &Path,
    expected_frames: Option<usize>,
) -> Result<BTreeMap<String, usize>, Rejection> {
    let out = tshark(pcap)
        .args(["-T", "fields", "-E", "separator=|"])
        .args(["-e", "frame.protocols"])
        .args(["-e", "ip.checksum.status", "-e", "tcp.checksum.status"])
        .args(["-e", "udp.checksum.status", "-e", "icmp.checksum.status"])
        .args(["-e", "icmpv6.checksum.status"])
        .args(["-e", "_ws.expert.severity", "-e", "_ws.malformed"])
        .args(["-e", "tcp.checksum.ffff"])
        .output()
        .context("running tshark (installed by `cargo xtask setup`)")?;
    if !out.status.success() {
        return Err(
            anyhow::anyhow!("tshark failed: {}", String::from_utf8_lossy(&out.stderr)).into(),
        );
    }
    let text = String::from_utf8(out.stdout).map_err(anyhow::Error::from)?;
    let mut stacks = BTreeMap::new();
    let mut frames = 0;
    for (i, line) in text.lines().enumerate() {
        frames += 1;
        let frame = |error: anyhow::Error| Rejection {
            frame: Some(i + 1),
            error,
        };
        let cols: Vec<&str> = line.split('|').collect();
        if cols.len() < 9 {
            return Err(frame(anyhow::anyhow!(
                "frame {}: unexpected tshark line {line:?}",
                i + 1
            )));
        }
        let protocols = cols[0];
        *stacks.entry(protocols.to_owned()).or_insert(0) += 1;
        // Checksum status: 1 good, 0 bad, 2 unverified (none here: validation is on).
        for (c, name) in cols[1..6]
            .iter()
            .zip(["ip", "tcp", "udp", "icmp", "icmpv6"])
        {
            if name == "tcp" && tcp_bad_only_as_negative_zero(c, cols[8]) {
                continue;
            }
            if c.split(',').any(|s| !s.is_empty() && s != "1") {
                return Err(frame(anyhow::anyhow!(
                    "frame {}: {name} checksum not good ({line})",
                    i + 1
                )));
            }
        }
        if !cols[7].is_empty() || protocols.contains("malformed") {
            return Err(frame(anyhow::anyhow!("frame {} malformed: {line}", i + 1)));
        }
        if cols[6].split(',').any(|s| s == PI_ERROR) {
            return Err(frame(anyhow::anyhow!(
                "frame {} has an expert error: {line}",
                i + 1
            )));
        }
    }
    if let Some(n) = expected_frames {
        if n != frames {
            return Err(anyhow::anyhow!("tshark saw {frames} frames, expected {n}").into());
        }
    }
    Ok(stacks)
}

/// Whether every TCP checksum tshark calls bad (`statuses`, its `tcp.checksum.status` values)
/// is one it also flags `tcp.checksum.ffff` (`ffff`): a field of 0xffff where 0x0000 was
/// computed. Both are zero in one's complement and receivers accept either, but Wireshark
/// marks 0xffff "Bad" (RFC 1624). Linux writes exactly that: a sender whose NIC does not
/// checksum (the lab's clients, `ethtool -K tx off`) has its TCP checksums filled in by
/// `skb_checksum_help`, which stores `csum_fold(csum) ?: CSUM_MANGLED_0`, i.e. 0xffff for
/// about one segment in 65536 (an `e2e_ipip` run tunnels ~2,200 TCP segments: a ~3% flake).
fn tcp_bad_only_as_negative_zero(statuses: &str, ffff: &str) -> bool {
    let count = |list: &str, f: fn(&str) -> bool| list.split(',').filter(|s| f(s)).count();
    let bad = count(statuses, |s| s == "0");
    let other = count(statuses, |s| !s.is_empty() && s != "0" && s != "1");
    bad > 0 && other == 0 && count(ffff, |s| !s.is_empty()) == bad
}

#[cfg(test)]
mod tests {
    use super::tcp_bad_only_as_negative_zero as ok;

    #[test]
    fn only_bad_checksums_that_are_negative_zero_pass() {
        assert!(ok("0", "1"));
        assert!(ok("1,0", "1"));
        assert!(!ok("1", ""), "nothing bad: the normal check decides");
        assert!(!ok("0", ""), "a really bad checksum");
        assert!(!ok("0,0", "1"), "one negative zero, one really bad");
        assert!(!ok("0,2", "1"), "an unverified one");
    }
}

//! The capabilities the agent needs, checked before it starts.
//!
//! A missing one is then named, instead of surfacing as the verifier's "Permission denied".

use anyhow::{bail, Context as _};

/// A Linux capability the agent uses, with its number (include/uapi/linux/capability.h) and
/// what it is needed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub name: &'static str,
    pub bit: u32,
    pub why: &'static str,
}

/// What `xdplb run` needs, measured on this kernel (6.18) by running the agent under exactly
/// these and under each set with one removed (tests/tests/privileges.rs).
pub const AGENT: [Cap; 3] = [
    Cap {
        name: "CAP_BPF",
        bit: 39,
        why: "creating maps and loading the XDP program",
    },
    Cap {
        name: "CAP_NET_ADMIN",
        bit: 12,
        why: "attaching XDP to the interface and reading neighbour and link state over netlink",
    },
    Cap {
        name: "CAP_PERFMON",
        bit: 38,
        why: "the verifier accepts the program's packet-pointer arithmetic only from a perfmon-capable loader",
    },
];

/// Only needed to mount bpffs at /sys/fs/bpf when it is not mounted.
pub const MOUNT: Cap = Cap {
    name: "CAP_SYS_ADMIN",
    bit: 21,
    why: "mounting bpffs when it is not mounted",
};

/// The effective capability set of this process (`CapEff` of /proc/self/status).
pub fn effective() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("/proc/self/status has no CapEff line")?;
    u64::from_str_radix(hex.trim(), 16).context("parsing CapEff")
}

/// The capabilities of `needed` that `effective` lacks.
pub fn missing(effective: u64, needed: &[Cap]) -> Vec<Cap> {
    needed
        .iter()
        .filter(|c| effective & (1 << c.bit) == 0)
        .copied()
        .collect()
}

/// Fails, naming each missing capability and why it is needed, unless this process has all
/// of `needed`.
pub fn require(needed: &[Cap]) -> anyhow::Result<()> {
    let lacking = missing(effective()?, needed);
    if lacking.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = lacking
        .iter()
        .map(|c| format!("{} ({})", c.name, c.why))
        .collect();
    bail!(
        "missing capabilit{}: {}; run as root or grant {} (the shipped systemd unit does)",
        if lacking.len() == 1 { "y" } else { "ies" },
        list.join(", "),
        needed.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_the_absent_bits() {
        let all = AGENT.iter().fold(0u64, |m, c| m | (1 << c.bit));
        assert!(missing(all, &AGENT).is_empty());
        let no_perfmon = all & !(1 << 38);
        assert_eq!(missing(no_perfmon, &AGENT), vec![AGENT[2]]);
    }
}

//! `xdplb doctor`: preflight checks of a gateway (from its config) or of a DSR backend.
//!
//! Each check is a finding that says what was found and the command or config change that fixes it.
//!
//! This file holds the command (arguments, the finding type, printing, the exit status);
//! `gateway` and `backend` run the checks of each role, `interface` the ones both run on
//! their interface, `system` reads the kernel's state.

use std::{net::IpAddr, path::PathBuf};

use anyhow::bail;
use serde::Serialize;

mod backend;
mod gateway;
mod host;
mod interface;
mod system;

/// The config `xdplb doctor` reads when `--config` names no other (the agent's default).
const DEFAULT_CONFIG: &str = "/etc/xdplb/lb.yaml";

/// `xdplb doctor`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    /// The balancer's config (gateway mode; default /etc/xdplb/lb.yaml). With --backend and
    /// no --vip, the VIPs to check come from it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Check this host as a DSR backend instead of a gateway.
    #[arg(long)]
    pub backend: bool,
    /// The interface to check: the backend's (required with --backend); on a gateway it
    /// overrides the config's `interface`.
    #[arg(long, short, required_if_eq("backend", "true"))]
    pub interface: Option<String>,
    /// With --backend: a VIP this backend serves (repeatable). Default: the config's VIPs.
    #[arg(long = "vip", value_name = "ADDR", requires = "backend")]
    pub vips: Vec<IpAddr>,
    /// With --backend and --vip: the VIPs forward with `ipip`, so check the decapsulation too
    /// (VIPs read from --config say so themselves).
    #[arg(long, requires = "backend")]
    pub ipip: bool,
    /// Do not try a native XDP attachment on the gateway's interface (some drivers reset the
    /// NIC's rings when the first XDP program attaches: a short interruption).
    #[arg(long, conflicts_with = "backend")]
    pub no_attach_probe: bool,
    /// One JSON array of findings, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// How a check came out. Only `Fail` makes `xdplb doctor` exit non-zero: a warning is
/// something that works but costs (speed, robustness) and deserves a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's outcome: what was looked at, what was found and, unless it is fine, what to
/// run or change. The same words in the human and the JSON output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check's name (`interface`, `xdp`, `rp_filter`, `vip-on-lo`, ...).
    pub check: &'static str,
    pub status: Status,
    /// What was found, in a sentence that names the interface, path or value.
    pub found: String,
    /// The exact command or config change that fixes it; `None` when nothing needs fixing.
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &'static str, found: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Ok,
            found: found.into(),
            fix: None,
        }
    }

    pub fn warn(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Warn,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Fail,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The human form: one line per finding, its fix indented under it, then a count.
pub fn render(findings: &[Finding]) -> String {
    let width = findings.iter().map(|f| f.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for f in findings {
        out += &format!(
            "{:<4}  {:<width$}  {}\n",
            f.status.label(),
            f.check,
            f.found
        );
        if let Some(fix) = &f.fix {
            out += &format!("      {:<width$}  fix: {fix}\n", "");
        }
    }
    let count = |s| findings.iter().filter(|f| f.status == s).count();
    out += &format!(
        "{} ok, {} warn, {} fail\n",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    );
    out
}

/// The findings of the role `args` asks for, in the order they are printed.
pub fn findings(args: &DoctorArgs) -> Vec<Finding> {
    let config = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    if args.backend {
        // `required_if_eq` makes clap refuse --backend without --interface.
        let interface = args.interface.as_deref().unwrap_or_default();
        backend::checks(interface, &args.vips, args.ipip, &config)
    } else {
        gateway::checks(&config, args.interface.as_deref(), !args.no_attach_probe)
    }
}

/// Runs `xdplb doctor`: prints the findings; an error (exit code 1) when any check failed.
pub fn run(args: &DoctorArgs) -> anyhow::Result<()> {
    let findings = findings(args);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        print!("{}", render(&findings));
    }
    let failed = findings.iter().filter(|f| f.status == Status::Fail).count();
    if failed > 0 {
        bail!("{failed} of {} checks failed", findings.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_form_puts_each_fix_under_its_finding() {
        let out = render(&[
            Finding::ok("btf", "/sys/kernel/btf/vmlinux exists"),
            Finding::warn(
                "rp_filter",
                "net.ipv4.conf.eth0.rp_filter is 1 (strict)",
                "sysctl -w net.ipv4.conf.eth0.rp_filter=2",
            ),
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "ok    btf        /sys/kernel/btf/vmlinux exists");
        assert_eq!(
            lines[1],
            "warn  rp_filter  net.ipv4.conf.eth0.rp_filter is 1 (strict)"
        );
        assert_eq!(
            lines[2],
            "                 fix: sysctl -w net.ipv4.conf.eth0.rp_filter=2"
        );
        assert_eq!(lines[3], "1 ok, 1 warn, 0 fail");
    }

    #[test]
    fn json_form_names_status_and_fix() {
        let json = serde_json::to_value([Finding::fail(
            "vip-on-lo",
            "10.0.0.1 is not on lo",
            "ip addr add 10.0.0.1/32 dev lo",
        )])
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "check": "vip-on-lo",
                "status": "fail",
                "found": "10.0.0.1 is not on lo",
                "fix": "ip addr add 10.0.0.1/32 dev lo"
            }])
        );
    }
}

//! The host's side of a gateway's checks.
//!
//! They cover bpffs and the pinned state at `pin_path`, the kernel's BPF support (BTF, JIT),
//! privileges and memlock, and the agent's socket.

use std::path::Path;

use aya::Ebpf;
use lb_common::{programs, BALANCER_MAPS, LAYOUT_VERSION};

use super::{system, Finding};
use crate::datapath::{balancer, objects};

/// bpffs at the pin path. Nothing is mounted here: only the command that would be run.
pub(super) fn bpffs(pin_path: &Path, config_path: &Path) -> Finding {
    const CHECK: &str = "bpffs";
    let at = crate::datapath::bpffs::existing_ancestor(pin_path);
    let where_ = if at == pin_path {
        pin_path.display().to_string()
    } else {
        format!("{} (created in {})", pin_path.display(), at.display())
    };
    match crate::datapath::bpffs::on_bpffs(&at) {
        Ok(true) => Finding::ok(CHECK, format!("pin_path {where_} is on a bpffs")),
        Ok(false) if pin_path.starts_with(crate::datapath::bpffs::DEFAULT_MOUNT) => Finding::ok(
            CHECK,
            format!(
                "bpffs is not mounted at {0}: the agent mounts it there when it starts (in its own mount namespace)",
                crate::datapath::bpffs::DEFAULT_MOUNT
            ),
        ),
        Ok(false) => {
            let mount = format!("mount -t bpf bpf {}", pin_path.display());
            let fix = if pin_path.exists() {
                mount
            } else {
                format!("mkdir -p {} && {mount}", pin_path.display())
            };
            Finding::fail(
                CHECK,
                format!("pin_path {where_} is not on a bpffs: nothing can be pinned there, so the agent refuses to start"),
                format!(
                    "{fix}, or set `pin_path:` in {} under {}",
                    config_path.display(),
                    crate::datapath::bpffs::DEFAULT_MOUNT
                ),
            )
        }
        Err(e) => Finding::warn(
            CHECK,
            format!("cannot tell whether {where_} is on a bpffs: {e:#}"),
            "run `xdplb doctor` as root",
        ),
    }
}

/// The state pinned under `pin_path`: layout versions, the interface its link is on, map
/// layouts: what `xdplb run` would refuse (`datapath::balancer`), said before it does.
pub(super) fn pinned_state(pin_path: &Path, interface: Option<&str>) -> Finding {
    const CHECK: &str = "pinned-state";
    let detach = format!("xdplb detach --pin-path {}", pin_path.display());
    let versions: Vec<String> = match std::fs::read_dir(pin_path) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.strip_prefix('v')
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Finding::warn(
                CHECK,
                format!("cannot read {}: {e}", pin_path.display()),
                "run `xdplb doctor` as root",
            )
        }
    };
    let ours = format!("v{LAYOUT_VERSION}");
    let others: Vec<&String> = versions.iter().filter(|v| **v != ours).collect();
    if !others.is_empty() {
        let list = others
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Finding::fail(
            CHECK,
            format!(
                "{} holds datapath state of layout {list}; this xdplb uses {ours} and refuses to start over it",
                pin_path.display()
            ),
            format!("{detach} (stops forwarding until the new agent attaches), or run the xdplb that matches"),
        );
    }
    let dir = balancer::state_dir(pin_path);
    if !versions.contains(&ours) {
        return Finding::ok(
            CHECK,
            format!("nothing pinned under {} yet", pin_path.display()),
        );
    }
    let links: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("link-")
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(other) = links.iter().find(|l| Some(l.as_str()) != interface) {
        return Finding::fail(
            CHECK,
            format!(
                "the datapath pinned under {} is attached to {other}, the config names {}",
                dir.display(),
                interface.unwrap_or("no interface")
            ),
            format!("{detach} first (stops forwarding on {other})"),
        );
    }
    if let Some(m) = objects::check_pinned_layouts(&dir, &BALANCER_MAPS).first() {
        return Finding::fail(CHECK, format!("{m}: the agent refuses to reuse it"), detach);
    }
    Finding::ok(
        CHECK,
        format!(
            "state of layout {ours} pinned under {}{} (a running or kept datapath): an agent starting on it adopts it, flows and counters kept",
            dir.display(),
            if links.is_empty() { String::new() } else { format!(", link on {}", links.join(", ")) }
        ),
    )
}

pub(super) fn btf() -> Finding {
    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
    if Path::new(VMLINUX).exists() {
        Finding::ok("btf", format!("kernel BTF at {VMLINUX}"))
    } else {
        Finding::warn(
            "btf",
            format!("no kernel BTF at {VMLINUX}: programs that need CO-RE relocations cannot load, and bpftool cannot show kernel types"),
            "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's, Ubuntu's and Fedora's are)",
        )
    }
}

/// JIT: the loaded balancer's own info is the answer (`net.core.bpf_jit_enable` is only
/// visible from the initial network namespace); the sysctl is the fallback and the fix.
pub(super) fn jit(ebpf: Option<&mut Ebpf>) -> Finding {
    const CHECK: &str = "jit";
    const ENABLE: &str = "sysctl -w net.core.bpf_jit_enable=1 (from the initial network namespace)";
    let sysctl = system::read_number("/proc/sys/net/core/bpf_jit_enable");
    let jitted = ebpf
        .and_then(|e| objects::program(e, programs::BALANCER).ok())
        .and_then(|p| p.info().ok())
        .map(|info| info.size_jitted());
    match (jitted, sysctl) {
        (_, Some(2)) => Finding::warn(
            CHECK,
            "net.core.bpf_jit_enable is 2: JIT on, with every compiled image dumped to the kernel log",
            ENABLE,
        ),
        (Some(0), _) | (None, Some(0)) => Finding::warn(
            CHECK,
            "the BPF JIT is off: the balancer runs interpreted, several times slower",
            ENABLE,
        ),
        (Some(n), _) => Finding::ok(
            CHECK,
            format!("the balancer is JIT-compiled ({n} bytes of machine code)"),
        ),
        (None, Some(_)) => Finding::ok(CHECK, "net.core.bpf_jit_enable is 1"),
        (None, None) => Finding::warn(
            CHECK,
            "cannot tell whether the BPF JIT is on: the program did not load, and net.core.bpf_jit_enable is only visible from the initial network namespace",
            "run `xdplb doctor` as root",
        ),
    }
}

/// The capabilities `xdplb run` checks for at start (`crate::datapath::caps::AGENT`), and whether
/// it could mount bpffs itself (`crate::datapath::caps::MOUNT`).
pub(super) fn privileges() -> Finding {
    use crate::datapath::caps;
    const CHECK: &str = "privileges";
    let Ok(eff) = caps::effective() else {
        return Finding::warn(
            CHECK,
            "cannot read this process's capabilities (no /proc/self/status)",
            "mount procfs at /proc",
        );
    };
    let names = |list: &[caps::Cap]| list.iter().map(|c| c.name).collect::<Vec<_>>().join(", ");
    let lacking = caps::missing(eff, &caps::AGENT);
    if !lacking.is_empty() {
        let why: Vec<String> = lacking
            .iter()
            .map(|c| format!("{} ({})", c.name, c.why))
            .collect();
        return Finding::fail(
            CHECK,
            format!("missing: {}", why.join(", ")),
            format!(
                "run it as root, or grant {} (AmbientCapabilities= in deploy/xdplb.service)",
                names(&caps::AGENT)
            ),
        );
    }
    let note = if caps::missing(eff, &[caps::MOUNT]).is_empty() {
        ""
    } else {
        " (without CAP_SYS_ADMIN bpffs must be mounted already)"
    };
    Finding::ok(CHECK, format!("has {}{note}", names(&caps::AGENT)))
}

/// RLIMIT_MEMLOCK: since Linux 5.11 BPF memory is charged to the memory cgroup and the limit
/// no longer applies (Roman Gushchin's series "bpf: switch to memcg-based memory accounting",
/// merged for 5.11); before, every map counts against it.
pub(super) fn memlock(flow_table_size: u32) -> Finding {
    const CHECK: &str = "memlock";
    let release = system::kernel_release();
    let limit = system::memlock_limit();
    let shown = limit.map_or("unlimited".to_owned(), |l| format!("{} KiB", l / 1024));
    if system::kernel_version(&release).is_some_and(|v| v >= (5, 11)) {
        return Finding::ok(
            CHECK,
            format!("kernel {release} charges BPF maps to the memory cgroup (5.11 and later): RLIMIT_MEMLOCK ({shown}) does not limit them"),
        );
    }
    match limit {
        None => Finding::ok(
            CHECK,
            format!("kernel {release} counts BPF maps against RLIMIT_MEMLOCK, which is unlimited"),
        ),
        Some(_) => Finding::warn(
            CHECK,
            format!(
                "kernel {release} (before 5.11) counts BPF maps against RLIMIT_MEMLOCK, which is {shown}: the flow table alone takes about {} MiB",
                (u64::from(flow_table_size) * 100) >> 20
            ),
            "`ulimit -l unlimited` in the shell that starts the agent, or LimitMEMLOCK=infinity in its unit (deploy/xdplb.service has it)",
        ),
    }
}

/// The agent's API socket: answered, left behind by an agent that stopped, or absent.
pub(super) fn agent_socket(socket: &Path) -> Finding {
    const CHECK: &str = "agent-socket";
    let shown = socket.display();
    match crate::agent::api::nobody_answers(socket) {
        Ok(None) => Finding::ok(CHECK, format!("an agent answers on {shown}")),
        Ok(Some(_)) if !socket.exists() => {
            Finding::ok(CHECK, format!("no agent running (no socket at {shown})"))
        }
        Ok(Some(why)) => Finding::warn(
            CHECK,
            format!("{shown}: {why}; nobody manages the datapath it may have left attached"),
            "start the agent (`systemctl start xdplb`): it replaces the socket and adopts the pinned state",
        ),
        Err(e) => Finding::warn(CHECK, format!("{e:#}"), "run `xdplb doctor` as root"),
    }
}

//! Where a packet class's nanoseconds go: runs the class under `perf record` (software cpu-clock sampling, the only event a machine without a PMU has) and splits its measured cost by kernel symbol and, inside the JITed program, by instruction.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::programs::Xdp;
use serde::Serialize;

use crate::{baselines, packet};
use lb_common::baselines as floors;

/// One profiled class.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub class: String,
    /// BPF_PROG_TEST_RUN's own figure while sampling (median of the timed calls).
    pub ns_per_packet: f64,
    pub samples: u64,
    /// Kernel symbols by share of the samples, with that share of `ns_per_packet`.
    pub symbols: Vec<SymbolCost>,
    /// The JITed program: its size, and its hottest instructions.
    pub program: Option<ProgramCost>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SymbolCost {
    pub symbol: String,
    pub percent: f64,
    pub ns: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramCost {
    pub symbol: String,
    pub xlated_insns: usize,
    pub jited_bytes: usize,
    pub jited_insns: usize,
    /// Instructions with the most samples, in address order: offset, share of all the
    /// class's samples, ns, and the disassembly.
    pub hottest: Vec<HotInsn>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HotInsn {
    pub offset: u64,
    pub percent: f64,
    pub ns: f64,
    pub asm: String,
}

/// How long each class is sampled.
fn seconds(quick: bool) -> u64 {
    if quick {
        3
    } else {
        12
    }
}

/// Profiles the MAC-swap baseline, the 40-byte-key lookup floor, the balancer's established
/// IPv4 and IPv6 flows, and a stateless VIP (a new flow's choice without the flow table).
pub fn run(quick: bool) -> Result<Vec<Profile>> {
    for tool in ["perf", "bpftool", "objdump"] {
        ensure!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is not installed (cargo xtask bench installs linux-perf, bpftool and binutils)"
        );
    }
    let _cpu0 = baselines::PinnedToCpu0::new();
    let dir = std::env::temp_dir().join(format!("xdplb-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut out = Vec::new();
    let mut base = baselines::load(&[baselines::MACSWAP, floors::LOOKUP40])?;
    let vip = packet::vip_packet(1);
    out.push(profile(
        "baseline: MAC swap + XDP_TX",
        lb_userspace::loader::program(&mut base, baselines::MACSWAP)?,
        &vip,
        &dir,
        quick,
    )?);
    let keyed: &[u8; floors::KEYED_BYTES] = vip[..floors::KEYED_BYTES].try_into()?;
    aya::maps::HashMap::<_, [u64; 5], u32>::try_from(
        base.map_mut(floors::FLOWS40).context("no FLOWS40 map")?,
    )?
    .insert(floors::key40(keyed), 0, 0)?;
    out.push(profile(
        "baseline: MAC swap after one LRU hash hit, 40-byte key",
        lb_userspace::loader::program(&mut base, floors::LOOKUP40)?,
        &vip,
        &dir,
        quick,
    )?);
    for (class, pkt) in [
        ("VIP established flow (flow-table hit)", vip.clone()),
        ("IPv6 VIP established flow", packet::ipv6_packet()?),
    ] {
        let mut bal = packet::Balancer::bench(1 << 20)?;
        out.push(profile(class, bal.prog()?, &pkt, &dir, quick)?);
    }
    let mut stateless = packet::Balancer::stateless(1 << 16)?;
    out.push(profile(
        "stateless VIP (flow hash + ring, no flow table)",
        stateless.prog()?,
        &vip,
        &dir,
        quick,
    )?);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

fn profile(class: &str, prog: &mut Xdp, pkt: &[u8], dir: &Path, quick: bool) -> Result<Profile> {
    let id = prog.info()?.id();
    let jited = jited_image(prog)?;
    let stem = dir.join(format!("prog{id}"));
    // The first run pins the flow; then the caches settle.
    packet::time_once(prog, pkt, 1)?;
    packet::time_once(prog, pkt, 200_000)?;
    let data = stem.with_extension("data");
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "20000", "-p"])
        .arg(std::process::id().to_string())
        .arg("-o")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perf record")?;
    std::thread::sleep(Duration::from_millis(500));
    let until = Instant::now() + Duration::from_secs(seconds(quick));
    let mut ns = Vec::new();
    while Instant::now() < until {
        ns.push(packet::time_once(prog, pkt, 200_000)?.0);
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
    let status = perf.wait()?;
    ensure!(status.success() || data.exists(), "perf record failed");
    ns.sort_by(f64::total_cmp);
    let ns_per_packet = ns[ns.len() / 2];

    let (samples, symbols) = symbols(&data, ns_per_packet)?;
    let program = symbols
        .iter()
        .find(|s| s.symbol.starts_with("bpf_prog_"))
        .map(|s| s.symbol.clone())
        .map(|sym| program_cost(&data, &stem, id, &jited, &sym, samples, ns_per_packet))
        .transpose()?;
    Ok(Profile {
        class: class.into(),
        ns_per_packet,
        samples,
        symbols,
        program,
    })
}

/// Samples by symbol (`perf report`), each with its share of `ns`.
fn symbols(data: &Path, ns: f64) -> Result<(u64, Vec<SymbolCost>)> {
    let by_symbol = sample_ips(data)?;
    let total: u64 = by_symbol.values().map(|m| m.values().sum::<u64>()).sum();
    ensure!(total > 0, "perf recorded no samples");
    let mut out: Vec<SymbolCost> = by_symbol
        .iter()
        .map(|(sym, ips)| {
            let n: u64 = ips.values().sum();
            let percent = 100.0 * n as f64 / total as f64;
            SymbolCost {
                symbol: sym.clone(),
                percent,
                ns: ns * percent / 100.0,
            }
        })
        .filter(|s| s.percent >= 0.5)
        .collect();
    out.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    Ok((total, out))
}

/// Samples by symbol and offset in it, from `perf script`.
fn sample_ips(data: &Path) -> Result<BTreeMap<String, BTreeMap<u64, u64>>> {
    let out = Command::new("perf")
        .args(["script", "-F", "ip,sym,symoff", "-i"])
        .arg(data)
        .output()
        .context("running perf script")?;
    ensure!(out.status.success(), "perf script failed");
    let mut by: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "ffffffffc0a1b2c3 bpf_prog_0123456789abcdef_xdplb+0x3c"
        let Some((_, rest)) = line.trim().split_once(' ') else {
            continue;
        };
        let (sym, off) = match rest.trim().rsplit_once("+0x") {
            Some((s, o)) => (s, u64::from_str_radix(o, 16).unwrap_or(0)),
            None => (rest.trim(), 0),
        };
        *by.entry(sym.to_string())
            .or_default()
            .entry(off)
            .or_default() += 1;
    }
    Ok(by)
}

/// The JITed program's size and its hottest instructions, from its image (disassembled by
/// objdump) and the samples' offsets.
fn program_cost(
    data: &Path,
    stem: &Path,
    id: u32,
    jited: &[u8],
    symbol: &str,
    total: u64,
    ns: f64,
) -> Result<ProgramCost> {
    let image: PathBuf = stem.with_extension("jited");
    std::fs::write(&image, jited)?;
    let xlated = Command::new("bpftool")
        .args(["prog", "dump", "xlated", "id", &id.to_string()])
        .output()?;
    let xlated_insns = String::from_utf8_lossy(&xlated.stdout)
        .lines()
        .filter(|l| {
            l.trim_start()
                .split(':')
                .next()
                .is_some_and(|n| n.trim().parse::<u32>().is_ok())
        })
        .count();
    let jited_bytes = std::fs::metadata(&image)?.len() as usize;
    let asm = Command::new("objdump")
        .args(["-D", "-b", "binary", "-m", "i386:x86-64"])
        .arg(&image)
        .output()
        .context("running objdump")?;
    let mut insns: BTreeMap<u64, String> = BTreeMap::new();
    for line in String::from_utf8_lossy(&asm.stdout).lines() {
        // "  3c:\t48 8b 47 08          \tmov    0x8(%rdi),%rax"
        let mut parts = line.splitn(3, '\t');
        let (Some(addr), Some(_bytes), Some(text)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(addr) = addr.trim().strip_suffix(':') else {
            continue;
        };
        if let Ok(a) = u64::from_str_radix(addr, 16) {
            insns.insert(a, text.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    if insns.is_empty() {
        bail!("objdump found no instructions in the JITed image");
    }
    let by = sample_ips(data)?;
    let offsets = by.get(symbol).cloned().unwrap_or_default();
    // A sample's ip is where the timer interrupt found the CPU: the instruction after the one
    // that was executing, or that one itself; both are shown by the offset perf gave.
    let mut hot: Vec<HotInsn> = offsets
        .iter()
        .map(|(off, n)| {
            let percent = 100.0 * *n as f64 / total as f64;
            HotInsn {
                offset: *off,
                percent,
                ns: ns * percent / 100.0,
                asm: insns.get(off).cloned().unwrap_or_else(|| "?".into()),
            }
        })
        .collect();
    hot.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    hot.truncate(16);
    hot.sort_by_key(|h| h.offset);
    Ok(ProgramCost {
        symbol: symbol.into(),
        xlated_insns,
        jited_bytes,
        jited_insns: insns.len(),
        hottest: hot,
    })
}

/// The report's section: per class, the symbols' shares of its cost, then the program's
/// hottest instructions.
pub fn markdown(profiles: &[Profile]) -> String {
    let mut o = String::from(
        "Each class runs under `perf record -e cpu-clock` (this machine has no PMU, so no cycle or \
         instruction counters and no `bpftool prog profile`); a symbol's ns is its share of the \
         samples times the class's measured ns per packet. `bpf_prog_*` is the JITed program \
         itself; helpers and inlined map code the JIT calls appear under their kernel names.\n",
    );
    for p in profiles {
        o += &format!(
            "\n### {}: {:.0} ns per packet, {} samples\n\n| symbol | share | ns |\n|---|---|---|\n",
            p.class, p.ns_per_packet, p.samples
        );
        for s in &p.symbols {
            o += &format!("| `{}` | {:.1}% | {:.1} |\n", s.symbol, s.percent, s.ns);
        }
        if let Some(prog) = &p.program {
            o += &format!(
                "\n`{}`: {} BPF instructions after the verifier, {} x86 instructions ({} bytes) JITed. \
                 Its hottest instructions (the sampled address is where the timer found the CPU: \
                 the instruction shown, or the one just before it, was running):\n\n\
                 | offset | share | ns | instruction |\n|---|---|---|---|\n",
                prog.symbol, prog.xlated_insns, prog.jited_insns, prog.jited_bytes
            );
            for h in &prog.hottest {
                o += &format!(
                    "| 0x{:x} | {:.1}% | {:.1} | `{}` |\n",
                    h.offset, h.percent, h.ns, h.asm
                );
            }
        }
    }
    o
}

/// `prog`'s JITed machine code: `BPF_OBJ_GET_INFO_BY_FD`, once for the size and once with a
/// buffer (aya 0.14 reports only the size; Debian's bpftool dumps it only when built with
/// libbfd, which it is not).
fn jited_image(prog: &Xdp) -> Result<Vec<u8>> {
    use aya_obj::generated::{bpf_attr, bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, bpf_prog_info};
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = prog.fd()?.as_fd().as_raw_fd();
    let call = |info: &mut bpf_prog_info| -> Result<()> {
        // SAFETY: all-zero is a valid bpf_attr (plain integers); the kernel fills `info`, a
        // live bpf_prog_info of the size given, and the buffer it points to.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.info.bpf_fd = fd as u32;
        attr.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
        attr.info.info = info as *mut bpf_prog_info as u64;
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
                &mut attr as *mut bpf_attr,
                std::mem::size_of::<bpf_attr>() as libc::c_uint,
            )
        };
        ensure!(
            rc == 0,
            "BPF_OBJ_GET_INFO_BY_FD: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    };
    // SAFETY (both): all-zero is a valid bpf_prog_info.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    call(&mut info)?;
    let mut image = vec![0u8; info.jited_prog_len as usize];
    ensure!(
        !image.is_empty(),
        "the kernel reports no JITed image (JIT off?)"
    );
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    info.jited_prog_len = image.len() as u32;
    info.jited_prog_insns = image.as_mut_ptr() as u64;
    call(&mut info)?;
    Ok(image)
}

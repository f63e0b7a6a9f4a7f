//! Where a packet class's nanoseconds go.
//!
//! Runs the class under `perf record` (software cpu-clock sampling, the only event a machine
//! without a PMU has) and splits its measured cost by kernel symbol and, inside the JITed program,
//! by instruction.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::programs::Xdp;
use serde::Serialize;

use crate::{baselines, jit, packet};
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
    /// For a class recorded with call graphs: symbols by share of the samples in them or in
    /// what they called (perf's "children"), so a map operation shows whole.
    pub inclusive: Vec<SymbolCost>,
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
    /// The program's samples by the source file its code came from (after inlining: a
    /// helper of lb-common inlined into the parser counts as lb-common's), most first.
    pub by_file: Vec<SourceCost>,
    /// The source lines with the most samples, most first.
    pub by_line: Vec<SourceCost>,
}

/// Samples of the program's code that came from one source file or line.
#[derive(Debug, Clone, Serialize)]
pub struct SourceCost {
    pub source: String,
    pub percent: f64,
    pub ns: f64,
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
/// IPv4 and IPv6 flows, a stateless VIP (a new flow's choice without the flow table), and new
/// flows (one packet per run, with call graphs).
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
        lb_userspace::datapath::objects::program(&mut base, baselines::MACSWAP)?,
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
        lb_userspace::datapath::objects::program(&mut base, floors::LOOKUP40)?,
        &vip,
        &dir,
        quick,
    )?);
    for (class, pkt) in [
        ("VIP established flow (flow-table hit)", vip.clone()),
        ("IPv6 VIP established flow", packet::ipv6_packet()?),
    ] {
        let mut bal = packet::Balancer::bench(packet::FLOW_TABLE)?;
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
    let mut bal = packet::Balancer::bench(packet::FLOW_TABLE)?;
    out.push(profile_new_flows(
        "VIP new flow (miss + Maglev + insert), one packet per run",
        bal.prog()?,
        &dir,
        quick,
    )?);
    drop(bal);
    let mut floor = packet::new_flow_floor(&[])?;
    out.push(profile_new_flows(
        "baseline: new-flow floor, one packet per run",
        lb_userspace::datapath::objects::program(&mut floor, floors::NEW_FLOW)?,
        &dir,
        quick,
    )?);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

/// Profiles `prog` on `pkt` repeated (a hot path: the same packet, back to back).
fn profile(class: &str, prog: &mut Xdp, pkt: &[u8], dir: &Path, quick: bool) -> Result<Profile> {
    // The first run pins the flow; then the caches settle.
    packet::time_once(prog, pkt, 1)?;
    packet::time_once(prog, pkt, 200_000)?;
    sampled(class, prog, dir, quick, false, |prog| {
        Ok(Some(packet::time_once(prog, pkt, 200_000)?.0))
    })
}

/// Profiles the new-flow class as the per-packet bench times it: each call one packet of a
/// flow the table has not seen, with call graphs, so the flow table's miss and insert show
/// with everything they call. Stops early rather than fill the table (which would evict).
fn profile_new_flows(class: &str, prog: &mut Xdp, dir: &Path, quick: bool) -> Result<Profile> {
    let limit = packet::FLOW_TABLE / 2;
    let mut i = 0u32;
    let mut verdicts_ok = true;
    let profile = sampled(class, prog, dir, quick, true, |prog| {
        if i == limit {
            return Ok(None);
        }
        let (ns, v) = packet::time_once(prog, &packet::fresh_flow(i), 1)?;
        verdicts_ok &= v == 3;
        i += 1;
        Ok(Some(ns))
    })?;
    ensure!(
        verdicts_ok,
        "{class}: a fresh flow was not forwarded while profiling"
    );
    Ok(profile)
}

/// Runs `timed` (one call of BPF_PROG_TEST_RUN, returning its ns per packet, or `None` when
/// it has nothing more to send) for the class's sampling time under `perf record`, then
/// splits the median ns by symbol and instruction.
fn sampled(
    class: &str,
    prog: &mut Xdp,
    dir: &Path,
    quick: bool,
    call_graph: bool,
    mut timed: impl FnMut(&mut Xdp) -> Result<Option<f64>>,
) -> Result<Profile> {
    let id = prog.info()?.id();
    let jited = jit::read(prog)?;
    let stem = dir.join(format!("prog{id}"));
    let data = stem.with_extension("data");
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "20000"])
        .args(call_graph.then_some("-g"))
        .arg("-p")
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
        match timed(prog) {
            Ok(Some(n)) => ns.push(n),
            Ok(None) => break,
            Err(e) => {
                // SAFETY: signalling our own child, which must not outlive the profile.
                unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
                let _ = perf.wait();
                return Err(e);
            }
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
    let status = perf.wait()?;
    ensure!(status.success() || data.exists(), "perf record failed");
    ns.sort_by(f64::total_cmp);
    let ns_per_packet = ns[ns.len() / 2];

    let chains = read_chains(&data, call_graph)?;
    let jited_symbol = chains
        .iter()
        .filter_map(|c| c.first())
        .map(|(sym, _)| sym)
        .find(|sym| is_jited_program(sym))
        .cloned();
    // A one-packet run spends most of its time in the syscall around the program, which its
    // measured ns leave out: split only the samples in the program and what it called.
    let chains = match (&jited_symbol, call_graph) {
        (Some(sym), true) => under(&chains, sym),
        _ => chains,
    };
    let (samples, symbols) = symbols(&chains, ns_per_packet)?;
    let program = jited_symbol
        .map(|sym| program_cost(&chains, &stem, &jited, &sym, samples, ns_per_packet))
        .transpose()?;
    let inclusive = if call_graph {
        inclusive(&chains, ns_per_packet)
    } else {
        Vec::new()
    };
    Ok(Profile {
        class: class.into(),
        ns_per_packet,
        samples,
        symbols,
        inclusive,
        program,
    })
}

/// One sample's frames, innermost first (one frame for a recording without call graphs).
type Chain = Vec<(String, u64)>;

/// Whether `sym` is a JITed BPF program (`bpf_prog_<16 hex digits>_<name>`), not one of the
/// kernel's `bpf_prog_*` functions.
fn is_jited_program(sym: &str) -> bool {
    sym.strip_prefix("bpf_prog_")
        .and_then(|rest| rest.get(..17))
        .is_some_and(|tag| tag.ends_with('_') && tag[..16].bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Every sample of `data` (`perf script`): with call graphs a sample is a block of frame
/// lines ended by a blank line, without them one line.
fn read_chains(data: &Path, call_graph: bool) -> Result<Vec<Chain>> {
    let out = Command::new("perf")
        .args(["script", "-F", "ip,sym,symoff", "-i"])
        .arg(data)
        .output()
        .context("running perf script")?;
    ensure!(out.status.success(), "perf script failed");
    Ok(parse_chains(
        &String::from_utf8_lossy(&out.stdout),
        call_graph,
    ))
}

/// [`read_chains`]' parser, on `perf script -F ip,sym,symoff` output.
fn parse_chains(text: &str, call_graph: bool) -> Vec<Chain> {
    let mut chains = Vec::new();
    let mut chain = Chain::new();
    for line in text.lines() {
        // "ffffffffc0a1b2c3 bpf_prog_0123456789abcdef_xdplb+0x3c"
        let Some((_, rest)) = line.trim().split_once(' ') else {
            if call_graph && !chain.is_empty() {
                chains.push(std::mem::take(&mut chain));
            }
            continue;
        };
        let (sym, off) = match rest.trim().rsplit_once("+0x") {
            Some((s, o)) => (s, u64::from_str_radix(o, 16).unwrap_or(0)),
            None => (rest.trim(), 0),
        };
        chain.push((sym.to_string(), off));
        if !call_graph {
            chains.push(std::mem::take(&mut chain));
        }
    }
    if !chain.is_empty() {
        chains.push(chain);
    }
    chains
}

/// The samples taken in `program` or in what it called, each cut at the program's frame.
fn under(chains: &[Chain], program: &str) -> Vec<Chain> {
    chains
        .iter()
        .filter_map(|c| {
            let at = c.iter().position(|(sym, _)| sym == program)?;
            Some(c[..=at].to_vec())
        })
        .collect()
}

/// Symbols by their samples counting those in their callees, each with its share of `ns`;
/// the top ones.
fn inclusive(chains: &[Chain], ns: f64) -> Vec<SymbolCost> {
    let mut by: BTreeMap<&str, u64> = BTreeMap::new();
    for c in chains {
        let mut seen: Vec<&str> = c.iter().map(|(sym, _)| sym.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        for sym in seen {
            *by.entry(sym).or_default() += 1;
        }
    }
    let total = chains.len().max(1) as f64;
    let mut v: Vec<SymbolCost> = by
        .into_iter()
        .map(|(sym, n)| {
            let percent = 100.0 * n as f64 / total;
            SymbolCost {
                symbol: sym.into(),
                percent,
                ns: ns * percent / 100.0,
            }
        })
        .filter(|s| s.percent >= 0.5)
        .collect();
    v.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    v.truncate(24);
    v
}

/// Samples by symbol (the innermost frame), each with its share of `ns`.
fn symbols(chains: &[Chain], ns: f64) -> Result<(u64, Vec<SymbolCost>)> {
    let by_symbol = sample_ips(chains);
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

/// Samples by the symbol and offset they were taken in (the innermost frame).
fn sample_ips(chains: &[Chain]) -> BTreeMap<String, BTreeMap<u64, u64>> {
    let mut by: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new();
    for (sym, off) in chains.iter().filter_map(|c| c.first()) {
        *by.entry(sym.clone()).or_default().entry(*off).or_default() += 1;
    }
    by
}

/// The JITed program's size and its hottest instructions, from its image (disassembled by
/// objdump) and the samples' offsets.
fn program_cost(
    chains: &[Chain],
    stem: &Path,
    jited: &jit::Jited,
    symbol: &str,
    total: u64,
    ns: f64,
) -> Result<ProgramCost> {
    let image: PathBuf = stem.with_extension("jited");
    std::fs::write(&image, &jited.image)?;
    let xlated_insns = jited.xlated_insns;
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
    let by = sample_ips(chains);
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
    // By source: each sample goes to the line whose code holds its address.
    let mut lines: BTreeMap<&str, u64> = BTreeMap::new();
    for (off, n) in &offsets {
        *lines
            .entry(jited.line_at(*off).unwrap_or("(no line info)"))
            .or_default() += n;
    }
    let mut files: BTreeMap<&str, u64> = BTreeMap::new();
    for (line, n) in &lines {
        let file = line.split_once(':').map_or(*line, |(f, _)| f);
        *files.entry(file).or_default() += n;
    }
    let ranked = |m: BTreeMap<&str, u64>, keep: usize| {
        let mut v: Vec<SourceCost> = m
            .into_iter()
            .map(|(source, n)| {
                let percent = 100.0 * n as f64 / total as f64;
                SourceCost {
                    source: source.into(),
                    percent,
                    ns: ns * percent / 100.0,
                }
            })
            .collect();
        v.sort_by(|a, b| b.percent.total_cmp(&a.percent));
        v.truncate(keep);
        v
    };
    let by_file = if jited.lines.is_empty() {
        Vec::new()
    } else {
        ranked(files, usize::MAX)
    };
    let by_line = if jited.lines.is_empty() {
        Vec::new()
    } else {
        ranked(lines, 24)
    };
    hot.sort_by(|a, b| b.percent.total_cmp(&a.percent));
    hot.truncate(16);
    hot.sort_by_key(|h| h.offset);
    Ok(ProgramCost {
        symbol: symbol.into(),
        xlated_insns,
        jited_bytes,
        jited_insns: insns.len(),
        hottest: hot,
        by_file,
        by_line,
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
        if !p.inclusive.is_empty() {
            o += "\nCounting what each symbol called (call graphs), as a share of the program's \
                  samples:\n\n| symbol with its callees | share | ns |\n|---|---|---|\n";
            for s in &p.inclusive {
                o += &format!("| `{}` | {:.1}% | {:.1} |\n", s.symbol, s.percent, s.ns);
            }
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
            if !prog.by_file.is_empty() {
                o += "\nThe program's samples by the source their code came from (the kernel's line \
                      info; inlined code counts where it was written), share of all the class's \
                      samples:\n\n| source file | share | ns |\n|---|---|---|\n";
                for f in &prog.by_file {
                    o += &format!("| `{}` | {:.1}% | {:.1} |\n", f.source, f.percent, f.ns);
                }
                o += "\n| source line | share | ns |\n|---|---|---|\n";
                for l in &prog.by_line {
                    let line = l.source.replace('|', "\\|").replace('`', "'");
                    o += &format!("| `{line}` | {:.1}% | {:.1} |\n", l.percent, l.ns);
                }
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALL_GRAPH: &str = "\
\tffffffff81234567 lookup_nulls_elem_raw+0x37
\tffffffffc0001234 bpf_prog_0123456789abcdef_xdplb+0x30a
\tffffffff81000001 bpf_test_run+0x120

\tffffffff81234999 htab_map_hash+0x10
\tffffffffc0001200 bpf_prog_0123456789abcdef_xdplb+0x2f0
\tffffffff81000001 bpf_test_run+0x120

\tffffffffc0001100 bpf_prog_0123456789abcdef_xdplb+0x40
\tffffffff81000001 bpf_test_run+0x120

\tffffffff81000002 syscall+0x5
";

    #[test]
    fn samples_are_blocks_with_call_graphs_and_lines_without() {
        let chains = parse_chains(CALL_GRAPH, true);
        assert_eq!(chains.len(), 4);
        assert_eq!(chains[0][0], ("lookup_nulls_elem_raw".to_string(), 0x37));
        assert_eq!(chains[0].len(), 3);
        let flat = parse_chains(
            "ffffffffc0001100 bpf_prog_0123456789abcdef_xdplb+0x40\nffffffff81000001 bpf_test_run+0x120\n",
            false,
        );
        assert_eq!(flat.len(), 2);
        assert_eq!(flat[1][0].0, "bpf_test_run");
    }

    #[test]
    fn only_jited_programs_count_as_the_program() {
        assert!(is_jited_program("bpf_prog_0123456789abcdef_xdplb"));
        assert!(!is_jited_program("bpf_prog_test_run_xdp"));
        assert!(!is_jited_program("bpf_test_run"));
    }

    #[test]
    fn the_program_and_its_callees_split_what_it_took() {
        let chains = parse_chains(CALL_GRAPH, true);
        let prog = "bpf_prog_0123456789abcdef_xdplb";
        let under = under(&chains, prog);
        assert_eq!(under.len(), 3, "the syscall sample is not the program's");
        assert!(under.iter().all(|c| c.last().unwrap().0 == prog));
        let incl = inclusive(&under, 300.0);
        assert_eq!(incl[0].symbol, prog);
        assert_eq!(incl[0].percent, 100.0);
        let hash = incl.iter().find(|s| s.symbol == "htab_map_hash").unwrap();
        assert!(
            (hash.ns - 100.0).abs() < 1e-9,
            "one sample of three: {}",
            hash.ns
        );
        let (total, selfs) = symbols(&under, 300.0).unwrap();
        assert_eq!(total, 3);
        assert!(selfs.iter().all(|s| (s.ns - 100.0).abs() < 1e-9));
    }
}

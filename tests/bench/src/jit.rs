//! A loaded program as the JIT left it.
//!
//! Its machine code, and the source line each stretch of that code came from (the kernel's line
//! info, read with `BPF_OBJ_GET_INFO_BY_FD`; the lines' text from `bpftool prog dump xlated
//! linum`).

use std::{collections::BTreeMap, process::Command};

use anyhow::{ensure, Context as _, Result};
use aya::programs::Xdp;
use aya_obj::generated::{bpf_attr, bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, bpf_line_info, bpf_prog_info};

/// The JITed program.
pub struct Jited {
    /// The machine code (aya 0.14 reports only its size; Debian's bpftool dumps it only when
    /// built with libbfd, which it is not).
    pub image: Vec<u8>,
    /// Where each source line's code starts in `image`, in offset order: a stretch of code
    /// belongs to the line before the next entry. Empty when the object carried no line info.
    pub lines: Vec<(u64, String)>,
    /// BPF instructions after the verifier (bpftool's xlated dump).
    pub xlated_insns: usize,
}

impl Jited {
    /// The source line the code at `offset` came from.
    pub fn line_at(&self, offset: u64) -> Option<&str> {
        let i = self.lines.partition_point(|(start, _)| *start <= offset);
        i.checked_sub(1).map(|i| self.lines[i].1.as_str())
    }
}

/// Reads `prog`'s image and line table: one call for the sizes, one with buffers.
pub fn read(prog: &Xdp) -> Result<Jited> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = prog.fd()?.as_fd().as_raw_fd();
    // SAFETY (all three): all-zero is a valid bpf_prog_info and bpf_line_info (integers).
    let mut sizes: bpf_prog_info = unsafe { std::mem::zeroed() };
    get_info(fd, &mut sizes)?;
    ensure!(
        sizes.jited_prog_len > 0,
        "the kernel reports no JITed image (JIT off?)"
    );
    let mut image = vec![0u8; sizes.jited_prog_len as usize];
    let mut ksyms = vec![0u64; sizes.nr_jited_ksyms as usize];
    let mut jited_lines = vec![0u64; sizes.nr_jited_line_info as usize];
    let mut lines =
        vec![unsafe { std::mem::zeroed::<bpf_line_info>() }; sizes.nr_line_info as usize];
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    info.jited_prog_len = image.len() as u32;
    info.jited_prog_insns = image.as_mut_ptr() as u64;
    info.nr_jited_ksyms = ksyms.len() as u32;
    info.jited_ksyms = ksyms.as_mut_ptr() as u64;
    // The line tables only when the kernel has both (it reports them together).
    if sizes.nr_line_info > 0 && sizes.nr_jited_line_info == sizes.nr_line_info {
        info.nr_jited_line_info = jited_lines.len() as u32;
        info.jited_line_info_rec_size = std::mem::size_of::<u64>() as u32;
        info.jited_line_info = jited_lines.as_mut_ptr() as u64;
        info.nr_line_info = lines.len() as u32;
        info.line_info_rec_size = std::mem::size_of::<bpf_line_info>() as u32;
        info.line_info = lines.as_mut_ptr() as u64;
    } else {
        jited_lines.clear();
        lines.clear();
    }
    get_info(fd, &mut info)?;
    let id = info.id;
    // Addresses are the kernel's; the image (and perf's symbol offsets) start at the first
    // function's. A program with subprograms has more images; lines outside the first are left
    // out, as perf names those under other symbols.
    let base = ksyms.first().copied().unwrap_or(0);
    let end = base + image.len() as u64;
    let Xlated {
        insns: xlated_insns,
        sources,
    } = xlated(id)?;
    let mut table: Vec<(u64, String)> = jited_lines
        .iter()
        .zip(&lines)
        .filter(|(addr, _)| (base..end).contains(*addr))
        .map(|(addr, l)| {
            let text = sources
                .get(&l.insn_off)
                .cloned()
                .unwrap_or_else(|| format!("insn {}", l.insn_off));
            (addr - base, text)
        })
        .collect();
    table.sort_by_key(|(off, _)| *off);
    Ok(Jited {
        image,
        lines: table,
        xlated_insns,
    })
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a program, into `info` (and the buffers it points to).
fn get_info(fd: i32, info: &mut bpf_prog_info) -> Result<()> {
    // SAFETY: all-zero is a valid bpf_attr (plain integers); the kernel fills `info`, a live
    // bpf_prog_info of the size given, and the buffers it points to, of the sizes it names.
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
}

/// What bpftool's xlated dump says of a program.
struct Xlated {
    /// Its instructions after the verifier.
    insns: usize,
    /// The source line bpftool prints before each instruction that starts one, by
    /// instruction index: "lookup.rs:112 let Some(entry) = (unsafe { CONNS.get(flow) }) else {".
    sources: BTreeMap<u32, String>,
}

fn xlated(id: u32) -> Result<Xlated> {
    let out = Command::new("bpftool")
        .args(["prog", "dump", "xlated", "id", &id.to_string(), "linum"])
        .output()
        .context("running bpftool prog dump xlated linum")?;
    ensure!(out.status.success(), "bpftool prog dump xlated failed");
    let mut by_insn = BTreeMap::new();
    let mut insns = 0;
    let mut pending: Option<String> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "; let p = parse::parse(ctx)?; [file:/work/main/lb-ebpf/src/main.rs line_num:62 line_col:13]"
        if let Some(rest) = line.strip_prefix("; ") {
            pending = Some(source_label(rest));
            continue;
        }
        // "  12: (bf) r6 = r1"
        let Some((index, _)) = line.trim_start().split_once(':') else {
            continue;
        };
        let Ok(i) = index.parse::<u32>() else {
            continue;
        };
        insns += 1;
        if let Some(label) = pending.take() {
            by_insn.insert(i, label);
        }
    }
    Ok(Xlated {
        insns,
        sources: by_insn,
    })
}

/// "file:line text" from bpftool's "text [file:F line_num:L line_col:C]", the path cut to
/// the part that names it (`lb-ebpf/src/parse.rs`, `core/src/...`).
fn source_label(annotation: &str) -> String {
    let Some((text, meta)) = annotation.rsplit_once(" [file:") else {
        return annotation.trim().to_string();
    };
    let mut words = meta.trim_end_matches(']').split_whitespace();
    let file = words.next().unwrap_or("?");
    let line = words
        .next()
        .and_then(|w| w.strip_prefix("line_num:"))
        .unwrap_or("?");
    let short = ["lb-ebpf/", "lb-common/", "aya-ebpf", "core/src/"]
        .iter()
        .find_map(|anchor| file.find(anchor).map(|i| &file[i..]))
        .unwrap_or(file);
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = if text.chars().count() > 70 {
        format!("{}…", text.chars().take(70).collect::<String>())
    } else {
        text
    };
    format!("{short}:{line} {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_file_from_the_crate_and_the_line() {
        let a = "let p = parse::parse(ctx)?; [file:/work/main/lb-ebpf/src/main.rs line_num:62 line_col:13]";
        assert_eq!(
            source_label(a),
            "lb-ebpf/src/main.rs:62 let p = parse::parse(ctx)?;"
        );
        let core = "unsafe { copy(src, dst, n) } [file:/usr/lib/rustlib/src/rust/library/core/src/ptr/mod.rs line_num:552 line_col:14]";
        assert_eq!(
            source_label(core),
            "core/src/ptr/mod.rs:552 unsafe { copy(src, dst, n) }"
        );
        assert_eq!(source_label("no location"), "no location");
    }

    #[test]
    fn code_belongs_to_the_line_that_starts_before_it() {
        let j = Jited {
            image: vec![0; 64],
            lines: vec![(0, "a:1".into()), (16, "a:2".into()), (40, "b:7".into())],
            xlated_insns: 0,
        };
        assert_eq!(j.line_at(0), Some("a:1"));
        assert_eq!(j.line_at(15), Some("a:1"));
        assert_eq!(j.line_at(16), Some("a:2"));
        assert_eq!(j.line_at(63), Some("b:7"));
        let none = Jited {
            image: vec![0; 8],
            lines: vec![(4, "a:1".into())],
            xlated_insns: 0,
        };
        assert_eq!(none.line_at(2), None);
    }
}

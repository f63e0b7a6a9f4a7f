//! Loading the embedded eBPF object and attaching its XDP programs to an interface.

use anyhow::{anyhow, bail, Context as _};
use aya::{
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{maps, programs};

use crate::config;

/// The eBPF object built by build.rs (aya-build) from lb-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// Loads the object with a flow table of `flow_table_size` entries and verifies the balancer
/// program. Nothing is attached yet.
pub fn load_balancer(flow_table_size: u32) -> anyhow::Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(maps::CONNS, flow_table_size)
        .load(EBPF_OBJECT)
        .context("loading the xdplb eBPF object (maps and BTF) into the kernel")?;
    program(&mut ebpf, programs::BALANCER)?
        .load()
        .context("the kernel verifier rejected the xdplb program")?;
    Ok(ebpf)
}

/// The XDP program `name` of a loaded object.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))
}

/// Attaches the (loaded) program `name` to `interface`; returns the mode that took.
/// `auto` tries native first: generic XDP works everywhere but runs after the kernel has
/// allocated an skb, which costs most of XDP's advantage.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &str,
    interface: &str,
    mode: config::XdpMode,
) -> anyhow::Result<&'static str> {
    let prog = program(ebpf, name)?;
    let try_mode = |prog: &mut Xdp, m: XdpMode, label: &'static str| {
        prog.attach(interface, m)
            .map(|_| label)
            .with_context(|| format!("attaching {name} to {interface} in {label} mode"))
    };
    match mode {
        config::XdpMode::Native => try_mode(prog, XdpMode::Driver, "native"),
        config::XdpMode::Generic => try_mode(prog, XdpMode::Skb, "generic"),
        config::XdpMode::Auto => match try_mode(prog, XdpMode::Driver, "native") {
            Ok(m) => Ok(m),
            Err(native) => {
                log::warn!("{native:#}; falling back to generic XDP (slower; try a driver with native XDP support)");
                try_mode(prog, XdpMode::Skb, "generic")
                    .map_err(|generic| anyhow!("{generic:#} (native failed first: {native:#})"))
            }
        },
    }
}

/// Loads the object with a minimal flow table and attaches the `XDP_PASS` program to
/// `interface` in native mode. Keep the returned `Ebpf` alive as long as it should stay attached.
/// Needed on the peer of a veth whose other end sends frames with native `XDP_TX`.
pub fn attach_pass(interface: &str) -> anyhow::Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(maps::CONNS, 1024)
        .load(EBPF_OBJECT)
        .context("loading the xdplb eBPF object")?;
    program(&mut ebpf, programs::PASS)?
        .load()
        .context("loading xdplb_pass")?;
    let mode = attach(
        &mut ebpf,
        programs::PASS,
        interface,
        config::XdpMode::Native,
    )?;
    if mode != "native" {
        bail!("xdplb_pass attached in {mode} mode");
    }
    Ok(ebpf)
}

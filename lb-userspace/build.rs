//! Builds lb-ebpf for bpfel-unknown-none with aya-build, using the Debian rustc that `cargo xtask setup` links as a rustup toolchain.

use anyhow::{anyhow, Context as _};

/// Name of the rustup toolchain that points at Debian's rustc-web (see `xtask setup`).
const TOOLCHAIN: &str = "xdplb-bpf";

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("lb-userspace has no parent directory"))?
        .join("lb-ebpf");
    let root = root.to_str().context("workspace path is not UTF-8")?;
    println!("cargo:rerun-if-changed={root}");
    aya_build::build_ebpf(
        [aya_build::Package { name: "lb-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Custom(TOOLCHAIN),
    )
    .with_context(|| {
        format!("building lb-ebpf failed; run `cargo xtask setup` (toolchain `{TOOLCHAIN}`, bpf-linker)")
    })
}

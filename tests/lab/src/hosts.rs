//! `xdplb host` on the lab's backends: the host program with second chance, from a config file.

use anyhow::{Context as _, Result};

use crate::{
    lab::{tool_path, Lab},
    netns,
};

/// Runs `xdplb host --interface b<i> --pin-path <lab pins>/decap ARGS...` in backend `i`'s
/// namespace (sharing the caller's mounts, so the pins stay reachable) and returns its output.
/// The pin path is the one the routed lab's `xdplb decap` uses, so on its backends the host
/// program replaces that one in its link.
pub fn host(lab: &Lab, i: usize, args: &[&str]) -> Result<String> {
    let xdplb = tool_path("xdplb");
    let pins = lab.pin_dir()?.join("decap");
    let (ns, dev) = (lab.backend_ns(i).to_owned(), lab.backend_if(i));
    let mut all = vec![
        xdplb.to_str().context("tool path is not UTF-8")?,
        "host",
        "--interface",
        dev.as_str(),
        "--pin-path",
        pins.to_str().context("pin path is not UTF-8")?,
    ];
    all.extend_from_slice(args);
    netns::run_shared_mounts(&ns, &all).with_context(|| format!("xdplb host on b{i}"))
}

//! The fuzz targets' checks, one function per target, stating what must hold for any input.
//!
//! The libFuzzer binaries in `fuzz_targets/` call them, and this crate's tests replay the seed
//! corpus and every kept crash through them without the fuzzer.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::LazyLock,
};

use lb_userspace::{
    agent::api::Request,
    config::{Config, MacAddr},
    model::desired::{Desired, DownSet, Facts},
};
use xdplb_lab::frames::GW_MAC;
use xdplb_tests::{model::Model, packets::config_a};

/// The targets: the names of the fuzz binaries and of their `corpus/` and `regressions/` folders.
pub const TARGETS: [&str; 3] = ["config", "api_request", "model_packet"];

/// Runs `data` through the check of `target`.
///
/// # Panics
/// When `target` is not in [`TARGETS`], or when the check fails (that is the finding).
pub fn check(target: &str, data: &[u8]) {
    match target {
        "config" => config(data),
        "api_request" => api_request(data),
        "model_packet" => model_packet(data),
        other => panic!("no fuzz target {other:?}; the targets are {TARGETS:?}"),
    }
}

/// Any text as a config file: parsing never panics (errors are fine), and a config that parses
/// survives the two ways the agent writes one back (the file after an API change, and the
/// `serde_yaml::Value` document an API change is edited in) unchanged.
pub fn config(data: &[u8]) {
    // The agent reads config files as UTF-8; lossy decoding lets every input reach the parser
    // instead of discarding the many mutations that break UTF-8.
    let text = String::from_utf8_lossy(data);
    let Ok(cfg) = Config::from_yaml(&text, "fuzz") else {
        return;
    };
    let yaml = serde_yaml::to_string(&cfg).expect("a parsed config serializes");
    let again = Config::from_yaml(&yaml, "round trip")
        .unwrap_or_else(|e| panic!("the config as written back does not parse: {e:#}\n{yaml}"));
    assert_eq!(
        again, cfg,
        "the config changed in a round trip through\n{yaml}"
    );
    let doc = serde_yaml::to_value(&cfg).expect("a parsed config becomes a YAML value");
    let text = serde_yaml::to_string(&doc).expect("a YAML value serializes");
    let again = Config::from_yaml(&text, "round trip through a YAML value")
        .unwrap_or_else(|e| panic!("the config as a YAML value does not parse: {e:#}\n{text}"));
    assert_eq!(
        again, cfg,
        "the config changed in a round trip through\n{text}"
    );
}

/// Any bytes as one line on the API socket: decoding never panics, and a decoded request
/// re-encodes to one line (the socket's framing) that decodes to the same request. `Request`
/// has no `PartialEq`, so "the same" is compared as JSON values.
pub fn api_request(data: &[u8]) {
    let Ok(request) = serde_json::from_slice::<Request>(data) else {
        return;
    };
    let line = serde_json::to_string(&request).expect("a decoded request encodes");
    assert!(
        !line.contains('\n'),
        "an encoded request spans lines: {line}"
    );
    let again: Request = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the request as encoded does not decode: {e}\n{line}"));
    let value = |r: &Request| serde_json::to_value(r).expect("a request is a JSON value");
    assert_eq!(
        value(&again),
        value(&request),
        "the request changed in a round trip through {line}"
    );
}

/// The model of the differential test's config A as the agent would fill the maps (own MAC
/// [`GW_MAC`], no interface MTU: config A sets `tunnel.mtu`), with an empty flow table.
///
/// # Panics
/// If config A no longer parses or builds: then every model test fails the same way.
pub fn model_of_config_a() -> Model {
    let cfg = Config::from_yaml(&config_a(), "config A").expect("config A parses");
    let facts = Facts {
        down: &DownSet::new(),
        macs: &HashMap::new(),
        mtu: None,
        own_mac: MacAddr(GW_MAC),
    };
    let desired = Desired::build(&cfg, &facts).expect("config A builds");
    assert!(desired.unresolved.is_empty(), "config A names every MAC");
    Model::new(&cfg, &desired).expect("model of config A")
}

static MODEL_A: LazyLock<Model> = LazyLock::new(model_of_config_a);

/// Any bytes as an Ethernet frame through the reference model (parse, VIP lookup, flow table,
/// ring, rewrites): it never panics, and the same frame again gets the same verdict and
/// output (a remembered flow goes to the backend the ring chose; everything else is decided
/// from the frame alone). What the model sent is parsed too: it must not panic either.
pub fn model_packet(data: &[u8]) {
    // A fresh copy per input: each input is judged alone, so a crash reproduces from its file.
    let mut model = MODEL_A.clone();
    let first = model.run(data);
    let second = model.run(data);
    assert_eq!(
        (first.action, first.reason, &first.output),
        (second.action, second.reason, &second.output),
        "the same frame twice got different answers"
    );
    let _ = xdplb_tests::model::parse(&first.output);
}

/// This crate's folder (`tests/fuzz`).
pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files directly in `dir`, sorted, skipping dotfiles and `README.md`; none if it is missing.
pub fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !name.starts_with('.') && name != "README.md"
        })
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of `regressions/<target>/` and `corpus/<target>/` through its check; names
    /// the file that fails.
    fn replay(folder: &str) -> usize {
        let mut count = 0;
        for target in TARGETS {
            for file in inputs(&fuzz_dir().join(folder).join(target)) {
                let data = std::fs::read(&file).expect("readable input");
                let outcome = std::panic::catch_unwind(|| check(target, &data));
                assert!(
                    outcome.is_ok(),
                    "fuzz target {target} fails on {} (its panic is above)",
                    file.display()
                );
                count += 1;
            }
        }
        count
    }

    /// `cargo xtask fuzz` runs the binaries it finds in `fuzz_targets/`; each needs its check.
    #[test]
    fn every_fuzz_binary_is_a_target() {
        let mut binaries: Vec<String> = inputs(&fuzz_dir().join("fuzz_targets"))
            .iter()
            .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
            .collect();
        binaries.sort();
        let mut targets = TARGETS.map(str::to_owned).to_vec();
        targets.sort();
        assert_eq!(binaries, targets);
    }

    #[test]
    fn kept_crashes_pass() {
        replay("regressions");
    }

    #[test]
    fn seed_corpus_passes() {
        assert!(replay("corpus") > 0, "the seed corpus is empty");
    }

    /// The seeds must mostly be inputs the checks get past their first gate, or they do not
    /// steer the fuzzer anywhere.
    #[test]
    fn seeds_are_valid_inputs() {
        for file in inputs(&fuzz_dir().join("corpus/config")) {
            let text = std::fs::read_to_string(&file).unwrap();
            Config::from_yaml(&text, &file.display().to_string()).unwrap();
        }
        for file in inputs(&fuzz_dir().join("corpus/api_request")) {
            let data = std::fs::read(&file).unwrap();
            serde_json::from_slice::<Request>(&data)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
        let frames = inputs(&fuzz_dir().join("corpus/model_packet"));
        let parsed = frames
            .iter()
            .filter(|f| xdplb_tests::model::parse(&std::fs::read(f).unwrap()).is_ok())
            .count();
        assert!(
            parsed * 2 >= frames.len(),
            "only {parsed} of {} seed frames parse",
            frames.len()
        );
    }
}

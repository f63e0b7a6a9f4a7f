//! Fuzz target `config`: arbitrary text as a config file.
//!
//! Parsing never panics and a parsed config round-trips through YAML (the check is
//! `xdplb_fuzz::config`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xdplb_fuzz::config(data));

//! Fuzz target `api_request`.
//!
//! Arbitrary bytes as an API request line: decoding never panics and a decoded request round-trips
//! through JSON (the check is `xdplb_fuzz::api_request`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xdplb_fuzz::api_request(data));

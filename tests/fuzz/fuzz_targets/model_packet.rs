//! Fuzz target `model_packet`.
//!
//! Arbitrary bytes as an Ethernet frame through the reference model of the datapath: it never
//! panics and answers the same frame the same way twice (the check is `xdplb_fuzz::model_packet`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xdplb_fuzz::model_packet(data));

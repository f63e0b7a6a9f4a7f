//! Addresses of the hand-built frames fed to BPF_PROG_TEST_RUN, defined once.
//!
//! The fixtures, the differential test and the benchmarks all use them, so every packet generator
//! agrees on who is talking.

/// The client's MAC: the source of every request frame.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
/// The balancer's (gateway's) MAC: the destination of requests, the source of what it forwards.
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

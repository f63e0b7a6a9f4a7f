//! The flow hash, shared by the XDP program and userspace.
//!
//! Sharing it means both sides, and every balancer behind ECMP, pick the same slot for a flow.

use crate::FlowKey;

/// MurmurHash3 (x86, 32-bit) over a fixed number of words. Chosen because it mixes well, needs
/// only 32-bit multiplies and rotates (cheap and verifier-friendly in BPF) and has no data-
/// dependent loop bound.
#[inline(always)]
pub fn hash_words<const N: usize>(words: &[u32; N], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut i = 0;
    while i < N {
        let mut k = words[i];
        k = k.wrapping_mul(C1);
        k = k.rotate_left(15);
        k = k.wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13);
        h = h.wrapping_mul(5).wrapping_add(0xe654_6b64);
        i += 1;
    }
    h ^= (N as u32) * 4;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_be_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]])
}

/// Seed of the flow hash. Fixed: balancers behind one ECMP group must agree.
pub const FLOW_HASH_SEED: u32 = 0x5eed_10ad;

/// Hash of a flow: the whole 5-tuple, or only the source address when `source_only`
/// (`hash: source-ip` VIPs send all of a client's connections to one backend).
#[inline(always)]
pub fn flow_hash(key: &FlowKey, source_only: bool) -> u32 {
    let s = &key.src;
    if source_only {
        return hash_words(
            &[word(s, 0), word(s, 1), word(s, 2), word(s, 3)],
            FLOW_HASH_SEED,
        );
    }
    let d = &key.dst;
    let ports = u32::from_be_bytes([key.sport[0], key.sport[1], key.dport[0], key.dport[1]]);
    hash_words(
        &[
            word(s, 0),
            word(s, 1),
            word(s, 2),
            word(s, 3),
            word(d, 0),
            word(d, 1),
            word(d, 2),
            word(d, 3),
            ports,
            key.proto as u32,
        ],
        FLOW_HASH_SEED,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_reference_vectors() {
        // MurmurHash3_x86_32 of the little-endian bytes of the words, from the reference
        // implementation: "" with seed 0 is 0, and [0x00000000] with seed 0 is 0x2362f9de.
        assert_eq!(hash_words::<0>(&[], 0), 0);
        assert_eq!(hash_words(&[0u32], 0), 0x2362_f9de);
    }

    #[test]
    fn source_only_ignores_ports_and_destination() {
        let mut a = FlowKey {
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        };
        a.sport = [1, 2];
        let mut b = a;
        b.sport = [3, 4];
        b.dst[0] = 9;
        assert_eq!(flow_hash(&a, true), flow_hash(&b, true));
        assert_ne!(flow_hash(&a, false), flow_hash(&b, false));
    }
}

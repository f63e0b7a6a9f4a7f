//! Internet checksums (RFC 1071) and their incremental update (RFC 1624) for the headers written.

use aya_ebpf::programs::XdpContext;

use crate::wire::ptr_at;

/// One's-complement sum of big-endian 16-bit words of a value held in registers.
#[inline(always)]
pub fn sum_bytes<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// One's-complement sum of `words` 4-byte words of the frame from `off`, at most `MAX` of
/// them (a constant loop bound for the verifier): `None` if the frame is shorter.
#[inline(always)]
pub fn sum_words<const MAX: usize>(ctx: &XdpContext, off: usize, words: usize) -> Option<u32> {
    let mut sum = 0u32;
    for i in 0..MAX {
        if i >= words {
            break;
        }
        let w = unsafe { &*ptr_at::<[u8; 4]>(ctx, off + i * 4)? };
        sum += u16::from_be_bytes([w[0], w[1]]) as u32 + u16::from_be_bytes([w[2], w[3]]) as u32;
    }
    Some(sum)
}

/// The checksum field value for a one's-complement sum.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn csum_replace(check: u16, old: u16, new: u16) -> u16 {
    fold(!check as u32 + !old as u32 + new as u32)
}

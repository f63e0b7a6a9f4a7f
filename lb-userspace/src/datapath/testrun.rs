//! BPF_PROG_TEST_RUN on the XDP programs, in one place.
//!
//! It offers one run with room for the packet to grow, timed repeats, live frames that really leave
//! a device, and the names of XDP actions. `xdplb replay`, the packet fixtures, the differential
//! test and the benchmarks all run programs through it.

use std::time::Duration;

use aya::programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp};

/// `enum xdp_action` (include/uapi/linux/bpf.h): what a program run returns.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Room the output buffer leaves after the input: encapsulation puts an outer header (20 or
/// 40 bytes) in front, and ICMP answers quote the packet behind new headers. The kernel fails
/// a run whose output does not fit (ENOSPC) rather than cutting it.
pub const GROWTH: usize = 256;

/// One run's outcome: the XDP action and the packet as the program left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub action: u32,
    pub out: Vec<u8>,
}

/// Runs `packet` once through `prog`; the output has room for [`GROWTH`] bytes more.
pub fn run(prog: &Xdp, packet: &[u8]) -> Result<Run, ProgramError> {
    let mut out = vec![0u8; packet.len() + GROWTH];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ..TestRunOptions::new()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok(Run {
        action: r.return_value,
        out,
    })
}

/// A timed run's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timed {
    pub action: u32,
    /// The kernel's own measurement: mean time per repetition, in whole nanoseconds.
    pub per_run: Duration,
}

/// Runs `packet` through `prog` `repeat` times in the kernel and returns the mean time per
/// run. The repetitions reuse one buffer without restoring it: after `bpf_xdp_adjust_head`
/// (encapsulation) the head keeps growing, so time such paths with `repeat` 1.
pub fn timed(prog: &Xdp, packet: &[u8], repeat: u32) -> Result<Timed, ProgramError> {
    let mut out = vec![0u8; packet.len() + GROWTH];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        repeat,
        ..TestRunOptions::new()
    })?;
    Ok(Timed {
        action: r.return_value,
        per_run: r.duration,
    })
}

/// Runs `prog` on `frames` copies of `frame` in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES,
/// kernel ≥ 5.18), as if they had arrived on `ifindex` of the calling thread's namespace,
/// `batch` (≤ 256) frames at a time; frames it XDP_TXes really go out of that device. Returns
/// the kernel-measured mean time per frame. Pages are initialised from `frame` once and then
/// recycled without being rewritten, so the program sees either the frame or what it made of
/// it last time. aya 0.14 exposes the mode and `ctx_in`, so no raw syscall is needed.
pub fn live_frames(
    prog: &Xdp,
    frame: &[u8],
    ifindex: u32,
    frames: u32,
    batch: u32,
) -> Result<Duration, ProgramError> {
    let ctx = xdp_md(frame.len(), ifindex);
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(&ctx),
        // data_out and ctx_out must stay unset: the kernel rejects them in this mode.
        repeat: frames,
        attrs: TestRunAttrs::new().xdp_live_frames(batch),
        ..TestRunOptions::new()
    })?;
    Ok(r.duration)
}

/// `struct xdp_md` (include/uapi/linux/bpf.h) as `ctx_in` of a test run, in native byte order.
/// The kernel insists on `data` = 0 and `data_meta` = 0 (no metadata), `data_end` = the frame
/// length, `egress_ifindex` = 0, and a `rx_queue_index` the device has.
fn xdp_md(frame_len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let fields = [0, frame_len as u32, 0, ingress_ifindex, 0, 0];
    let mut out = [0u8; 24];
    for (chunk, f) in out.chunks_exact_mut(4).zip(fields) {
        chunk.copy_from_slice(&f.to_ne_bytes());
    }
    out
}

/// The name of an XDP action, as `xdplb replay` and the benchmark report print it.
pub fn action_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "aborted",
        XDP_DROP => "drop",
        XDP_PASS => "pass",
        XDP_TX => "tx",
        XDP_REDIRECT => "redirect",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names() {
        let names: Vec<_> = (0..6).map(action_name).collect();
        assert_eq!(
            names,
            ["aborted", "drop", "pass", "tx", "redirect", "unknown"]
        );
    }

    #[test]
    fn xdp_md_layout() {
        let md = xdp_md(60, 7);
        assert_eq!(&md[4..8], &60u32.to_ne_bytes());
        assert_eq!(&md[12..16], &7u32.to_ne_bytes());
        assert!(md[..4]
            .iter()
            .chain(&md[8..12])
            .chain(&md[16..])
            .all(|b| *b == 0));
    }
}

//! What a `lab-load` parent and its forked workers share.
//!
//! Flags (parent → workers), per-worker counters and report text (worker → parent) in one anonymous
//! shared mapping, plus forking and reaping the workers.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

// Shared memory between the parent and its workers: a page of flags (parent → workers), then
// one page per worker holding its counters (worker → parent) and, once it is done, its report.
const PAGE: usize = 4096;
pub(crate) const FLAG_STOP_RAMP: usize = 0;
/// Set one interval before the end of the hold, so every probe sent gets a full interval.
pub(crate) const FLAG_NO_PROBES: usize = 1;
pub(crate) const FLAG_STOP_ALL: usize = 2;
/// Counter slots per worker page; the report text follows them.
pub(crate) const COUNTERS: usize = 32;
const TEXT_LEN_SLOT: usize = COUNTERS - 1;
const TEXT_OFFSET: usize = COUNTERS * 8;
pub(crate) const TEXT_MAX: usize = PAGE - TEXT_OFFSET;

pub(crate) struct Shared {
    base: *mut u8,
    len: usize,
    workers: usize,
}

impl Shared {
    pub(crate) fn new(workers: usize) -> Result<Shared> {
        let len = PAGE * (workers + 1);
        // SAFETY: a fresh anonymous shared mapping, zero-filled by the kernel; it survives
        // fork() as the same memory in every process.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("mmap");
        }
        Ok(Shared {
            base: base.cast(),
            len,
            workers,
        })
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset + 8 <= self.len && offset.is_multiple_of(8));
        // SAFETY: in bounds and 8-aligned (page-aligned base); the memory lives as long as
        // `self` and is only accessed atomically.
        unsafe { &*(self.base.add(offset) as *const AtomicU64) }
    }

    pub(crate) fn flag(&self, i: usize) -> &AtomicU64 {
        self.word(i * 8)
    }

    pub(crate) fn flag_set(&self, i: usize) -> bool {
        self.flag(i).load(Ordering::Acquire) != 0
    }

    fn ctr(&self, worker: usize, i: usize) -> &AtomicU64 {
        assert!(i < COUNTERS);
        self.word(PAGE * (worker + 1) + i * 8)
    }

    pub(crate) fn set(&self, worker: usize, i: usize, v: u64) {
        self.ctr(worker, i).store(v, Ordering::Release);
    }

    pub(crate) fn get(&self, worker: usize, i: usize) -> u64 {
        self.ctr(worker, i).load(Ordering::Acquire)
    }

    /// Writes the worker's report text (truncated to the page) before it sets its phase to done.
    pub(crate) fn put_text(&self, worker: usize, text: &str) {
        let bytes = &text.as_bytes()[..text.len().min(TEXT_MAX)];
        // SAFETY: the text area of this worker's page, written only by this worker, read by
        // the parent only after the Release store of the length (and then of the phase).
        unsafe {
            let dst = self.base.add(PAGE * (worker + 1) + TEXT_OFFSET);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
        }
        self.set(worker, TEXT_LEN_SLOT, bytes.len() as u64);
    }

    pub(crate) fn text(&self, worker: usize) -> String {
        let len = (self.get(worker, TEXT_LEN_SLOT) as usize).min(TEXT_MAX);
        // SAFETY: `len` bytes of the text area, complete once the length was published.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.base.add(PAGE * (worker + 1) + TEXT_OFFSET), len)
        };
        String::from_utf8_lossy(bytes).into_owned()
    }

    pub(crate) fn sum(&self, i: usize, alive: &[bool]) -> u64 {
        (0..self.workers)
            .filter(|&w| alive[w])
            .map(|w| self.get(w, i))
            .sum()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Forks `n` workers running `f(index)`; each exits when `f` returns and dies with the parent.
pub(crate) fn fork_workers(n: usize, f: impl Fn(usize)) -> Result<Vec<libc::pid_t>> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let mut pids = Vec::with_capacity(n);
    for w in 0..n {
        // SAFETY: the process is single-threaded here, so the child may run arbitrary code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            for &p in &pids {
                // SAFETY: plain kill(2) on our own children.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            return Err(io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            // SAFETY: prctl/getppid/_exit have no preconditions. A worker must not outlive its
            // parent: nobody would stop it and it would hold its sockets forever.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
            }
            f(w);
            // SAFETY: leave without running the parent's exit-time code a second time.
            unsafe { libc::_exit(0) };
        }
        pids.push(pid);
    }
    Ok(pids)
}

/// Reaps whichever workers have exited; returns how many are still running.
pub(crate) fn reap(pids: &[libc::pid_t], alive: &mut [bool]) -> usize {
    for (w, &pid) in pids.iter().enumerate() {
        if alive[w] {
            let mut status = 0;
            // SAFETY: waitpid on our own child.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                alive[w] = false;
            }
        }
    }
    alive.iter().filter(|a| **a).count()
}

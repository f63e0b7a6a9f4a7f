//! The signals `lab-load` obeys, in whichever process gets them.
//!
//! SIGUSR1 ends the ramp, SIGINT/SIGTERM end everything.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

// Set by signal handlers, in whichever process gets the signal. Workers also obey the parent's
// flags in shared memory; these only matter to them when signalled directly (namespace teardown).
pub(crate) static SIG_STOP_RAMP: AtomicBool = AtomicBool::new(false);
pub(crate) static SIG_STOP_ALL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    SIG_STOP_RAMP.store(true, Ordering::Relaxed);
    if sig != libc::SIGUSR1 {
        SIG_STOP_ALL.store(true, Ordering::Relaxed);
    }
}

/// Installs `on_signal` without SA_RESTART, so a signal interrupts epoll_wait and is seen at once.
pub fn install_signals() -> Result<()> {
    for sig in [libc::SIGUSR1, libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a plain handler that only stores atomics.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error()).context("sigaction");
            }
        }
    }
    Ok(())
}

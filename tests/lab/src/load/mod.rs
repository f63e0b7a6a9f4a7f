//! The engine of `lab-load`: the connection holder (`hold`) and backend (`sink`).
//!
//! Used by the concurrent-connections benchmark. A parent forks epoll workers, because one process
//! may hold only RLIMIT_NOFILE sockets; their counters and reports live in memory shared across
//! the fork.

use std::time::Duration;

pub mod hold;
mod os;
mod shared;
mod signals;
pub mod sink;
mod worker;

pub use os::raise_fd_limit;
pub use signals::install_signals;

/// Events fetched per epoll_wait.
pub(crate) const EVENTS: usize = 1024;
/// How often the parent looks at its workers, the signals and MemAvailable: often enough to
/// stop the ramp well before the memory floor, cheap enough not to matter.
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// Descriptors a worker keeps free for itself (stdio, epoll, listener) below RLIMIT_NOFILE.
pub const FD_RESERVE: u64 = 64;
/// How long the parent waits for workers to hand in their reports after being told to stop.
pub(crate) const WORKER_EXIT_TIMEOUT: Duration = Duration::from_secs(60);

//! `lab-load sink`: the backend side of the concurrent-connections benchmark.
//!
//! Accepts connections from forked epoll workers sharing one listener, keeps them and echoes probe
//! lines, and prints JSON progress lines.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use super::os::{cvt, set_int_opt, sockaddr, Epoll};
use super::shared::{fork_workers, reap, Shared, FLAG_STOP_ALL};
use super::signals::SIG_STOP_ALL;
use super::{EVENTS, TICK, WORKER_EXIT_TIMEOUT};
use crate::sys;

// Sink worker counters.
const S_ACCEPTED: usize = 0;
const S_OPEN: usize = 1;
const S_CLOSED: usize = 2;
const S_ACCEPT_ERRORS: usize = 3;
/// 1 while the worker is at its descriptor cap and not accepting.
const S_FULL: usize = 4;
const S_DONE: usize = 5;

/// `lab-load sink`: listens on `[::]:port` (dual stack) and forks `procs` workers sharing the listener. Each
/// keeps its connections in one epoll set, echoing what arrives (only probe lines do) and
/// counting closes: no per-connection state beyond the kernel's, the epoll entry carries the
/// fd. A worker at `cap` connections stops accepting and leaves the rest to the others.
pub fn run(port: u16, every: Duration, procs: usize, cap: u64) -> Result<()> {
    // SAFETY: plain syscall.
    let lfd = cvt(unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })
    .context("socket")?;
    sys::set_v6only(lfd, false).context("IPV6_V6ONLY")?;
    set_int_opt(lfd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    let addr = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port);
    let (ss, len) = sockaddr(addr);
    // SAFETY: `ss` holds a sockaddr of length `len`.
    cvt(unsafe { libc::bind(lfd, (&ss as *const libc::sockaddr_storage).cast(), len) })
        .with_context(|| format!("bind {addr}"))?;
    // The kernel caps the backlog at net.core.somaxconn, which the benchmark raises.
    // SAFETY: plain syscall.
    cvt(unsafe { libc::listen(lfd, 65535) }).context("listen")?;

    let shared = Shared::new(procs)?;
    let pids = fork_workers(procs, |w| sink_worker(lfd, w, &shared, cap))?;
    let mut alive = vec![true; procs];
    let all = vec![true; procs];
    let start = Instant::now();
    let report = |shared: &Shared| {
        let line = json!({
            "t": (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "accepted": shared.sum(S_ACCEPTED, &all),
            "open": shared.sum(S_OPEN, &all),
            "closed": shared.sum(S_CLOSED, &all),
            "accept_errors": shared.sum(S_ACCEPT_ERRORS, &all),
            "full_workers": shared.sum(S_FULL, &all),
            "workers": procs,
        });
        println!("{line}");
    };
    eprintln!("READY sink port {port} workers {procs}");
    let mut next_report = start + every;
    while !SIG_STOP_ALL.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        if reap(&pids, &mut alive) == 0 {
            eprintln!("every sink worker exited");
            break;
        }
        if Instant::now() >= next_report {
            next_report += every;
            report(&shared);
        }
    }
    shared.flag(FLAG_STOP_ALL).store(1, Ordering::Release);
    let deadline = Instant::now() + WORKER_EXIT_TIMEOUT;
    while Instant::now() < deadline && (0..procs).any(|w| alive[w] && shared.get(w, S_DONE) == 0) {
        reap(&pids, &mut alive);
        std::thread::sleep(Duration::from_millis(20));
    }
    report(&shared);
    let deadline = Instant::now() + Duration::from_secs(10);
    while reap(&pids, &mut alive) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn sink_worker(lfd: RawFd, w: usize, shared: &Shared, cap: u64) {
    let Ok(ep) = Epoll::new() else { return };
    // The listener is told apart from connections by a data value no fd can have.
    const LISTENER: u64 = u64::MAX;
    // EPOLLEXCLUSIVE: a new connection wakes one worker, not all of them.
    let listen_events = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32;
    let mut listening = ep
        .ctl(libc::EPOLL_CTL_ADD, lfd, listen_events, LISTENER)
        .is_ok();
    let (mut accepted, mut open, mut closed, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    // After EMFILE/ENFILE/ENOMEM the listener stays readable; pausing avoids a busy loop.
    let mut paused_until: Option<Instant> = None;
    while !shared.flag_set(FLAG_STOP_ALL) && !SIG_STOP_ALL.load(Ordering::Relaxed) {
        let now = Instant::now();
        let want = open < cap && paused_until.is_none_or(|t| now >= t);
        if want && !listening {
            listening = ep
                .ctl(libc::EPOLL_CTL_ADD, lfd, listen_events, LISTENER)
                .is_ok();
            paused_until = None;
        } else if !want && listening {
            let _ = ep.ctl(libc::EPOLL_CTL_DEL, lfd, 0, 0);
            listening = false;
        }
        let n = ep.wait(&mut events, Duration::from_millis(100));
        for ev in &events[..n] {
            if ev.u64 == LISTENER {
                // A bounded batch, so other woken workers get their share.
                for _ in 0..64 {
                    if open >= cap {
                        break;
                    }
                    // SAFETY: plain accept4 without peer address.
                    let fd = unsafe {
                        libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if fd < 0 {
                        match io::Error::last_os_error().raw_os_error() {
                            Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                            Some(libc::ECONNABORTED) => continue,
                            _ => {
                                errors += 1;
                                paused_until = Some(Instant::now() + Duration::from_millis(50));
                            }
                        }
                        break;
                    }
                    let events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
                    if ep.ctl(libc::EPOLL_CTL_ADD, fd, events, fd as u64).is_err() {
                        errors += 1;
                        // SAFETY: we own the fd.
                        unsafe { libc::close(fd) };
                        continue;
                    }
                    accepted += 1;
                    open += 1;
                }
                continue;
            }
            let fd = ev.u64 as RawFd;
            let mut buf = [0u8; 256];
            // SAFETY: reading into a local buffer of the length passed.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                // SAFETY: sending the bytes just read. A short write only loses part of a
                // probe echo, which the client then counts as a failed probe.
                unsafe {
                    libc::send(
                        fd,
                        buf.as_ptr().cast(),
                        n as usize,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                continue;
            }
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                continue;
            }
            // SAFETY: we own the fd; closing removes it from the epoll set.
            unsafe { libc::close(fd) };
            open -= 1;
            closed += 1;
        }
        shared.set(w, S_ACCEPTED, accepted);
        shared.set(w, S_OPEN, open);
        shared.set(w, S_CLOSED, closed);
        shared.set(w, S_ACCEPT_ERRORS, errors);
        shared.set(w, S_FULL, u64::from(open >= cap));
    }
    shared.set(w, S_DONE, 1);
}

//! One `lab-load hold` worker.
//!
//! An epoll loop over its share of the connections (one byte of state each), ramping, probing a
//! sample during the hold, and publishing its counters and report to the parent.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::hold::{
    HoldPlan, WorkerText, H_ATTEMPTED, H_BROKEN, H_FAILED, H_IN_FLIGHT, H_OPEN, H_OPENED,
    H_PEAK_RSS, H_PHASE, H_PROBES_FAILED, H_PROBES_OK, H_PROBES_SENT,
};
use super::os::{os_err, peak_rss_kib, set_int_opt, so_error, sockaddr, Epoll};
use super::shared::{Shared, FLAG_NO_PROBES, FLAG_STOP_ALL, FLAG_STOP_RAMP, TEXT_MAX};
use super::signals::{SIG_STOP_ALL, SIG_STOP_RAMP};
use super::EVENTS;
use crate::reports::note_error;
use crate::sys;

/// The probe line sent on sampled connections; the sink echoes it.
const PROBE: &[u8] = b"p\n";
/// At most this many connects are started between two epoll_waits, so completions are
/// collected while the ramp runs at full speed.
const OPEN_BATCH: usize = 256;

// Per-connection states: one byte each, next to the fd, is all the tool keeps per connection.
const CONNECTING: u8 = 0;
const OPEN: u8 = 1;
/// Open, probe sent, echo not yet seen.
const PROBING: u8 = 2;
const CLOSED: u8 = 3;
/// Handshake done, confirming probe sent (`--confirm`); still counted in flight.
const CONFIRMING: u8 = 4;

#[derive(Clone, Copy)]
struct Conn {
    fd: RawFd,
    state: u8,
}

/// One hold worker: an epoll loop over its share of the connections.
pub(super) struct Worker<'a> {
    plan: &'a HoldPlan,
    index: usize,
    shared: &'a Shared,
    n: u64,
    rate: f64,
    probe_sample: usize,
    conns: Vec<Conn>,
    /// Connects in flight, oldest first (all share one timeout, so FIFO order is deadline order).
    pending: VecDeque<(u32, Instant)>,
    in_flight: usize,
    opened: u64,
    open_now: u64,
    failed: u64,
    broken: u64,
    probes_sent: u64,
    probes_ok: u64,
    probes_failed: u64,
    probe_round: usize,
    errors: Vec<String>,
    stop_reason: Option<String>,
}

impl<'a> Worker<'a> {
    pub(super) fn new(plan: &'a HoldPlan, index: usize, shared: &'a Shared) -> Worker<'a> {
        let n = plan.share(index);
        Worker {
            plan,
            index,
            shared,
            n,
            rate: plan.rate as f64 / plan.procs as f64,
            probe_sample: plan.probe_sample.div_ceil(plan.procs),
            conns: Vec::with_capacity(n as usize),
            pending: VecDeque::new(),
            in_flight: 0,
            opened: 0,
            open_now: 0,
            failed: 0,
            broken: 0,
            probes_sent: 0,
            probes_ok: 0,
            probes_failed: 0,
            probe_round: 0,
            errors: Vec::new(),
            stop_reason: None,
        }
    }

    fn stop_all(&self) -> bool {
        self.shared.flag_set(FLAG_STOP_ALL) || SIG_STOP_ALL.load(Ordering::Relaxed)
    }

    fn publish(&self, phase: u64) {
        let (s, w) = (self.shared, self.index);
        s.set(w, H_ATTEMPTED, self.conns.len() as u64);
        s.set(w, H_OPENED, self.opened);
        s.set(w, H_OPEN, self.open_now);
        s.set(w, H_FAILED, self.failed);
        s.set(w, H_BROKEN, self.broken);
        s.set(w, H_IN_FLIGHT, self.in_flight as u64);
        s.set(w, H_PROBES_SENT, self.probes_sent);
        s.set(w, H_PROBES_OK, self.probes_ok);
        s.set(w, H_PROBES_FAILED, self.probes_failed);
        s.set(w, H_PHASE, phase);
    }

    pub(super) fn run(&mut self) {
        let ep = match Epoll::new() {
            Ok(ep) => ep,
            Err(e) => {
                self.stop_reason = Some(format!("epoll: {e}"));
                self.finish();
                return;
            }
        };
        let start = Instant::now();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut ramping = true;
        let mut next_probe = start;
        loop {
            let now = Instant::now();
            if ramping {
                let stop = self.shared.flag_set(FLAG_STOP_RAMP)
                    || SIG_STOP_RAMP.load(Ordering::Relaxed)
                    || self.stop_reason.is_some();
                if self.stop_all() {
                    self.abandon_pending();
                }
                if !stop && !self.stop_all() {
                    self.open_some(&ep, start, now);
                }
                let finished = self.conns.len() as u64 >= self.n || stop || self.stop_all();
                if finished && self.in_flight == 0 {
                    ramping = false;
                    next_probe = now;
                }
            } else {
                if self.stop_all() {
                    break;
                }
                if now >= next_probe
                    && self.probe_sample > 0
                    && !self.shared.flag_set(FLAG_NO_PROBES)
                {
                    self.probe_round_start();
                    next_probe = now + self.plan.every;
                }
            }
            self.publish(if ramping { 0 } else { 1 });
            // While ramping, come back soon to start more connects; otherwise wake for the
            // next probe round or to notice the parent's flags.
            let timeout = if ramping {
                Duration::from_millis(1)
            } else {
                next_probe
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50))
            };
            let n = ep.wait(&mut events, timeout);
            for ev in &events[..n] {
                let (flags, idx) = (ev.events, ev.u64 as usize);
                self.on_event(&ep, idx, flags);
            }
            self.expire_pending(Instant::now());
        }
        // Outstanding probes at the end had a full interval and got no echo.
        for c in &mut self.conns {
            if c.state == PROBING {
                c.state = OPEN;
                self.probes_failed += 1;
            }
        }
        self.finish();
        // Exiting closes every socket; SO_LINGER 0 (set on each) makes that an RST, so the lab
        // is not left with a million FIN_WAIT/TIME_WAIT sockets to expire.
    }

    fn finish(&mut self) {
        self.publish(1);
        self.shared.set(self.index, H_PEAK_RSS, peak_rss_kib());
        let mut text = WorkerText {
            stop_reason: self.stop_reason.clone(),
            errors: self.errors.clone(),
        };
        // Keep the report within the shared page, dropping errors if it would not fit.
        let mut s = serde_json::to_string(&text).unwrap_or_default();
        while s.len() > TEXT_MAX && !text.errors.is_empty() {
            text.errors.pop();
            s = serde_json::to_string(&text).unwrap_or_default();
        }
        if s.len() > TEXT_MAX {
            s = "{}".into();
        }
        self.shared.put_text(self.index, &s);
        self.shared.set(self.index, H_PHASE, 2);
    }

    /// Starts as many connects as the rate, the in-flight cap and the batch size allow.
    fn open_some(&mut self, ep: &Epoll, start: Instant, now: Instant) {
        let attempted = self.conns.len() as u64;
        let mut budget = (self.n - attempted) as usize;
        budget = budget.min(self.plan.parallel.saturating_sub(self.in_flight));
        budget = budget.min(OPEN_BATCH);
        if self.rate > 0.0 {
            let allowed = (now.duration_since(start).as_secs_f64() * self.rate) as u64 + 1;
            budget = budget.min(allowed.saturating_sub(attempted) as usize);
        }
        let binds = &self.plan.binds;
        for _ in 0..budget {
            let idx = self.conns.len();
            // Spread over the addresses across workers too, so each address carries an equal
            // share of all the connections (each address has one port range per destination).
            let bind = (!binds.is_empty())
                .then(|| binds[(idx * self.plan.procs + self.index) % binds.len()]);
            match open_one(self.plan.target, bind) {
                Ok(fd) => {
                    // A connect that completed at once is writable at once too, so it goes
                    // through the same completion path as the others.
                    let events = (libc::EPOLLOUT | libc::EPOLLRDHUP) as u32;
                    if let Err(e) = ep.ctl(libc::EPOLL_CTL_ADD, fd, events, idx as u64) {
                        // SAFETY: we own the fd.
                        unsafe { libc::close(fd) };
                        self.conns.push(Conn {
                            fd: -1,
                            state: CLOSED,
                        });
                        self.failed += 1;
                        note_error(&mut self.errors, format!("epoll_ctl: {e}"));
                        continue;
                    }
                    self.conns.push(Conn {
                        fd,
                        state: CONNECTING,
                    });
                    self.in_flight += 1;
                    self.pending.push_back((idx as u32, now));
                }
                Err(e) => {
                    self.conns.push(Conn {
                        fd: -1,
                        state: CLOSED,
                    });
                    self.failed += 1;
                    let fatal = e.starts_with("socket");
                    note_error(&mut self.errors, e.clone());
                    if fatal {
                        // Out of descriptors or kernel memory: more attempts would fail alike.
                        self.stop_reason = Some(format!("cannot create sockets: {e}"));
                        return;
                    }
                }
            }
        }
    }

    fn on_event(&mut self, ep: &Epoll, idx: usize, flags: u32) {
        let Some(c) = self.conns.get(idx).copied() else {
            return;
        };
        match c.state {
            CONNECTING => {
                let err = so_error(c.fd);
                self.in_flight -= 1;
                if err == 0 && flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
                    let events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
                    if let Err(e) = ep.ctl(libc::EPOLL_CTL_MOD, c.fd, events, idx as u64) {
                        note_error(&mut self.errors, format!("epoll_ctl: {e}"));
                    }
                    if self.plan.confirm {
                        if send_probe(c.fd) {
                            // Stays in flight (and under the connect timeout) until the echo.
                            self.conns[idx].state = CONFIRMING;
                            self.in_flight += 1;
                        } else {
                            note_error(&mut self.errors, os_err("confirm send"));
                            self.close(idx);
                            self.failed += 1;
                        }
                        return;
                    }
                    self.conns[idx].state = OPEN;
                    self.opened += 1;
                    self.open_now += 1;
                } else {
                    let e = io::Error::from_raw_os_error(if err == 0 { libc::EIO } else { err });
                    note_error(&mut self.errors, format!("connect: {e}"));
                    self.close(idx);
                    self.failed += 1;
                }
            }
            CONFIRMING => {
                let mut buf = [0u8; 64];
                // SAFETY: reading into a local buffer of the length passed.
                let n = unsafe {
                    libc::recv(c.fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                let e = io::Error::last_os_error();
                if n < 0 && e.kind() == io::ErrorKind::WouldBlock {
                    return;
                }
                self.in_flight -= 1;
                if n > 0 {
                    self.conns[idx].state = OPEN;
                    self.opened += 1;
                    self.open_now += 1;
                    return;
                }
                let why = if n == 0 {
                    "closed by peer before the confirming echo".to_string()
                } else {
                    format!("read before the confirming echo: {e}")
                };
                note_error(&mut self.errors, why);
                self.close(idx);
                self.failed += 1;
            }
            OPEN | PROBING => {
                let mut buf = [0u8; 64];
                // SAFETY: reading into a local buffer of the length passed.
                let n = unsafe {
                    libc::recv(c.fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                if n > 0 {
                    if c.state == PROBING {
                        self.conns[idx].state = OPEN;
                        self.probes_ok += 1;
                    }
                    return;
                }
                let e = io::Error::last_os_error();
                if n < 0 && e.kind() == io::ErrorKind::WouldBlock {
                    return;
                }
                let why = if n == 0 {
                    "closed by peer".to_string()
                } else {
                    format!("read: {e}")
                };
                note_error(&mut self.errors, why);
                if c.state == PROBING {
                    self.probes_failed += 1;
                }
                self.close(idx);
                self.open_now -= 1;
                self.broken += 1;
            }
            _ => {}
        }
    }

    fn close(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        if c.fd >= 0 {
            // SAFETY: we own the fd; closing also removes it from the epoll set.
            unsafe { libc::close(c.fd) };
        }
        c.fd = -1;
        c.state = CLOSED;
    }

    /// Connects still in flight after the timeout are abandoned as failures.
    fn expire_pending(&mut self, now: Instant) {
        while let Some(&(idx, since)) = self.pending.front() {
            let idx = idx as usize;
            let state = self.conns[idx].state;
            if state != CONNECTING && state != CONFIRMING {
                self.pending.pop_front();
                continue;
            }
            if now.duration_since(since) < self.plan.connect_timeout {
                break;
            }
            self.pending.pop_front();
            self.close(idx);
            self.in_flight -= 1;
            self.failed += 1;
            let what = if state == CONNECTING {
                "connect"
            } else {
                "confirming echo"
            };
            note_error(
                &mut self.errors,
                format!("{what}: no answer within {:?}", self.plan.connect_timeout),
            );
        }
    }

    fn abandon_pending(&mut self) {
        while let Some((idx, _)) = self.pending.pop_front() {
            let idx = idx as usize;
            if matches!(self.conns[idx].state, CONNECTING | CONFIRMING) {
                self.close(idx);
                self.in_flight -= 1;
                self.failed += 1;
            }
        }
    }

    /// Closes the previous round (probes without an echo failed) and sends the probe line on
    /// about `probe_sample` open connections, spread over the whole table and shifted each round.
    fn probe_round_start(&mut self) {
        for c in &mut self.conns {
            if c.state == PROBING {
                c.state = OPEN;
                self.probes_failed += 1;
            }
        }
        let len = self.conns.len();
        if len == 0 {
            return;
        }
        let stride = (len / self.probe_sample).max(1);
        let mut idx = self.probe_round % stride;
        self.probe_round += 1;
        while idx < len {
            let c = self.conns[idx];
            if c.state == OPEN {
                self.probes_sent += 1;
                if send_probe(c.fd) {
                    self.conns[idx].state = PROBING;
                } else {
                    self.probes_failed += 1;
                    note_error(&mut self.errors, os_err("probe send"));
                }
            }
            idx += stride;
        }
    }
}

/// Creates a non-blocking socket, binds it to `bind` (port chosen at connect time) and starts
/// connecting.
fn open_one(target: SocketAddr, bind: Option<IpAddr>) -> std::result::Result<RawFd, String> {
    let family = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(os_err("socket"));
    }
    let fail = |what: &str| {
        let e = os_err(what);
        // SAFETY: we own the fd.
        unsafe { libc::close(fd) };
        Err(e)
    };
    // RST instead of FIN on close: see the end of `Worker::run`.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a live linger struct of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    // Three SYN retries (about 15 s) instead of six (about two minutes): the connect timeout
    // gives up earlier anyway, and the kernel stops resending soon after.
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, 3);
    if let Some(b) = bind {
        if b.is_ipv4() {
            // Without it bind() picks a port unique to the address alone, capping each source
            // address at one port range in total instead of one per destination.
            let _ = sys::set_bind_address_no_port(fd);
        }
        let (ss, len) = sockaddr(SocketAddr::new(b, 0));
        // SAFETY: `ss` holds a sockaddr of length `len`.
        if unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } != 0 {
            return fail("bind");
        }
    }
    let (ss, len) = sockaddr(target);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) };
    if rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS) {
        return Ok(fd);
    }
    fail("connect")
}

/// Sends the probe line; whether all of it went out.
fn send_probe(fd: RawFd) -> bool {
    // SAFETY: sending from a static buffer on our fd.
    let n = unsafe {
        libc::send(
            fd,
            PROBE.as_ptr().cast(),
            PROBE.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    n == PROBE.len() as isize
}

//! Forwarding throughput through a veth.
//!
//! The balancer, interleaved with a minimal MAC swap, runs as a live-frames traffic generator
//! (BPF_F_TEST_XDP_LIVE_FRAMES) whose XDP_TX frames leave `lb0` and are counted by its peer
//! `sink0` (native XDP drop); few and many flows, on one CPU and on two. A plain test run leaves
//! out what forwarding costs after the program returns (XDP_TX path, transmit queue, the peer's
//! NAPI); live frames run that whole path as a driver would, and the MAC swap gives its floor.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use aya::programs::Xdp;
use etherparse::PacketBuilder;
use lb_common::{Counter, COUNTER_COUNT};
use lb_userspace::{
    config::Config,
    datapath::maps::BalancerMaps,
    datapath::testrun::{self, XDP_TX},
    datapath::{balancer, objects},
};
use serde::Serialize;
use xdplb_lab::frames::{CLIENT_MAC, GW_MAC};
use xdplb_lab::netns::{self, in_netns, NetNs};

use crate::baselines;

/// The veth end the balancer's frames leave by (in the balancer namespace) and its peer (in the
/// sink namespace). Names are per namespace, so fixed names cannot collide with other labs.
const LB_IF: &str = "lb0";
const SINK_IF: &str = "sink0";
const VIP: [u8; 4] = [10, 201, 0, 1];

/// One program's forwarding rate.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramThroughput {
    pub program: String,
    /// Median over rounds of frames the sink received / wall time of the round.
    pub mpps: f64,
    /// Each round's rate, in round order, to show the spread behind `mpps`.
    pub round_mpps: Vec<f64>,
    /// Median over rounds of the kernel's own time per frame sent (the test runs' `duration`):
    /// the program, the transmit of its batches and the sink's NAPI, which runs when each batch
    /// re-enables softirqs. Leaves out the per-call set-up and teardown, and time the CPU spent
    /// on other tasks, so it is steadier than `mpps` on a shared machine.
    pub kernel_ns_per_frame: f64,
    /// Frames the generator ran the program on, summed over the measured rounds.
    pub frames_sent: u64,
    /// Frames `sink0` counted, summed over the measured rounds.
    pub frames_received: u64,
    /// 1 - received / sent.
    pub loss: f64,
    /// Median over rounds of the bench process's CPU time (user + system of all its threads,
    /// which is where the test runs execute) / wall time: how many CPUs the generator got. On
    /// a machine shared with other jobs a two-CPU case may get much less than 2.
    pub cpus_used: f64,
}

/// One case (a flow set on a number of CPUs), both programs measured in interleaved rounds.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// "few flows, 1 CPU", ...
    pub case: String,
    /// Distinct flows in the balancer's flow table (pre-filled before any timed frame).
    pub flows_in_table: u32,
    /// Distinct flows the timed calls sent, over all rounds (one flow per call).
    pub flows_timed: u32,
    pub frames_per_call: u32,
    pub generator_threads: usize,
    /// CPUs the generator threads are pinned to, round robin (the program, its transmit and
    /// the sink's NAPI all run on the CPU of the thread that issued the call).
    pub cpus: usize,
    /// The balancer first, then the MAC swap.
    pub programs: Vec<ProgramThroughput>,
    pub ratio_to_macswap: f64,
    pub kernel_ratio_to_macswap: f64,
    /// The balancer's datapath counters moved over its timed rounds, per frame sent: which
    /// path was timed (`conn_hit` and `tx_forwarded` 1.0, `conn_miss` 0 for flow-table hits).
    pub balancer_counters_per_frame: BTreeMap<&'static str, f64>,
}

/// A program's two-CPU rate against its own one-CPU rate (few flows).
#[derive(Debug, Clone, Serialize)]
pub struct Scaling {
    pub program: String,
    pub one_cpu_mpps: f64,
    pub two_cpu_mpps: f64,
    /// two_cpu_mpps / one_cpu_mpps.
    pub scaling: f64,
    /// CPUs the generator got in each case (see `ProgramThroughput::cpus_used`). A scaling
    /// measured with much less than two CPUs' worth says what the machine had spare, not what
    /// the program does with two CPUs.
    pub one_cpu_cpus_used: f64,
    pub two_cpu_cpus_used: f64,
    /// Frames per CPU-second on two CPUs / the same on one: 1.0 when a frame costs as much CPU
    /// with two CPUs sending as with one (no contention between them, as per-CPU state should
    /// give). Not a rate: it says what two free CPUs would give (2 × this), not what was seen.
    pub per_cpu_efficiency: f64,
}

/// The section's figures. The top-level fields are the few-flows one-CPU case, as before the
/// other cases existed; `cases` holds all of them.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputResult {
    /// Distinct client 4-tuples, one test-run call each per round.
    pub flows: u32,
    /// Frames per call (`repeat`): every frame of a call is the same flow.
    pub frames_per_call: u32,
    /// Live-frames batch size (frames run before their transmit is flushed).
    pub batch_size: u32,
    /// Threads issuing calls, all on one CPU (see `Settings::threads`).
    pub generator_threads: usize,
    pub frame_bytes: usize,
    pub rounds: usize,
    /// The balancer first, then the MAC swap.
    pub programs: Vec<ProgramThroughput>,
    /// Balancer `mpps` / MAC swap `mpps` (1.0 = as fast as the floor).
    pub ratio_to_macswap: f64,
    /// The same from `kernel_ns_per_frame` (MAC swap ns / balancer ns).
    pub kernel_ratio_to_macswap: f64,
    pub cases: Vec<CaseResult>,
    /// Per program, two CPUs against one (few flows).
    pub two_cpu_scaling: Vec<Scaling>,
    /// The balancer's two-CPU scaling (the goal's figure).
    pub balancer_two_cpu_scaling: f64,
    pub notes: Vec<String>,
}

#[derive(Clone, Copy)]
struct Settings {
    flows: u32,
    frames_per_call: u32,
    batch_size: u32,
    rounds: usize,
    /// Flows in the flow table for the many-flows cases (≥ 100,000, the floor).
    many_flows: u32,
    /// Calls (one flow each) per round in the many-flows cases, and their frames per call.
    many_calls: u32,
    many_frames_per_call: u32,
    /// Threads of the many-flows cases: calls with fewer frames each spend a larger share of
    /// their life asleep in the page-pool teardown, so more of them are in flight to keep the
    /// CPU busy.
    many_threads: usize,
    /// Calls in flight at once, all on the one CPU. A lone caller spends about 25 ms per call
    /// asleep after its frames are sent (tearing down the call's page pool waits for an RCU
    /// grace period, `synchronize_rcu()` in `page_pool_destroy`), with the CPU idle: 8192 frames
    /// then went at 0.3 Mpps instead of 4-6. With a few threads the CPU runs one call's frames
    /// while the others wait, and wall time matches the CPU time spent.
    threads: usize,
}

fn settings(quick: bool) -> Settings {
    // Each round sends flows × frames_per_call frames per program: 2 Mi (quick) or 8 Mi
    // frames, about 0.3 to 0.6 s (quick) per program and round at the 4-6 Mpps one core of a
    // small VM forwards. 8192 frames per call keep the per-call set-up under a tenth of the
    // time. Batches of 64 are NAPI's size; with 256 a few frames were lost here (the veth's
    // ring holds 256 frames until the peer's NAPI runs).
    // Many flows: 131,072 in the table, each round 1,024 (quick 512) calls of 4,096 frames,
    // each call a different flow spread over the table, different flows every round.
    Settings {
        flows: if quick { 256 } else { 1024 },
        frames_per_call: 8192,
        batch_size: 64,
        rounds: if quick { 3 } else { 5 },
        threads: 4,
        many_flows: 1 << 17,
        many_calls: if quick { 512 } else { 1024 },
        many_frames_per_call: 4096,
        many_threads: 24,
    }
}

/// The flow table's capacity: the many-flows cases' flows with room to spare, since the
/// kernel's common LRU can evict before it is full when its per-CPU free lists run dry.
const FLOW_TABLE_SIZE: u32 = 1 << 19;

/// Client `i`'s SYN-less TCP segment to the VIP (distinct source address and port per flow).
fn flow_frame(i: u32) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ipv4(
            [10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8],
            VIP,
            64,
        )
        .tcp(1024 + (i % 60000) as u16, 80, 1, 65535);
    let mut v = Vec::new();
    b.write(&mut v, &[0u8; 20]).expect("packet");
    v
}

/// One VIP, four backends with fixed MACs (no neighbour resolution on the way out), all of
/// them the balancer's own MAC. Live frames recycle a page without rewriting it, so from a
/// call's second batch on the balancer sees the frame it rewrote; the datapath only balances
/// frames addressed to its own MAC, so with any other backend MAC those frames would take the
/// `pass_other_host` path (and never reach the sink) instead of the hit path. The IP packet is
/// untouched (L2 DSR), so it stays the same flow.
fn config() -> String {
    let gw_mac = GW_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let mut y = format!(
        "interface: {LB_IF}\nvips:\n  - name: web\n    address: {}\n    port: 80\n    protocol: tcp\n    backends:\n",
        std::net::Ipv4Addr::from(VIP)
    );
    for b in 1..=4 {
        y += &format!("      - {{ address: 10.0.0.{b}, mac: '{gw_mac}' }}\n");
    }
    y
}

/// bpf(2) on a zero-padded attribute struct; returns the new fd.
fn bpf_fd<T>(cmd: libc::c_long, attr: &T, what: &str) -> Result<OwnedFd> {
    // SAFETY: `attr` is a live #[repr(C)] bpf_attr prefix of the size passed; the kernel only
    // reads it (and the buffers it points to, which outlive the call).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_owned());
    }
    // SAFETY: a fresh fd the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `r0 = XDP_DROP; exit` as an XDP program with bpf(BPF_PROG_LOAD). The sink needs a
/// native XDP program (a veth only runs its peer's XDP_TX frames through NAPI when it has one)
/// and one that drops is the cheapest: XDP_PASS would build an skb per frame on the same CPU
/// as the generator. Two instructions do not justify a program in lb-ebpf.
fn load_xdp_drop() -> Result<OwnedFd> {
    /// `struct bpf_insn`s as little-endian u64: BPF_ALU64|BPF_MOV|BPF_K r0 = 1 (XDP_DROP),
    /// then BPF_JMP|BPF_EXIT.
    const INSNS: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];
    /// The BPF_PROG_LOAD prefix of `union bpf_attr`; later fields are zero when absent.
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
    }
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    let insns = INSNS.map(u64::to_le);
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"bench_sink");
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
    };
    bpf_fd(BPF_PROG_LOAD, &attr, "loading the sink's XDP_DROP program")
}

/// Attaches `prog` to `ifindex` (of the calling thread's namespace) in native (driver) mode
/// with bpf(BPF_LINK_CREATE); it stays attached while the returned link fd is open.
fn attach_native(prog: BorrowedFd<'_>, ifindex: u32) -> Result<OwnedFd> {
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
    }
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_XDP: u32 = 37;
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
    let attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
    };
    bpf_fd(
        BPF_LINK_CREATE,
        &attr,
        "attaching the sink's XDP_DROP program in native mode",
    )
}

/// `if_nametoindex` in the calling thread's namespace.
fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(std::io::Error::last_os_error()).context(format!("if_nametoindex({name})"));
    }
    Ok(i)
}

/// Frames `sink0` has received. A veth counts every frame its NAPI takes from the peer's
/// XDP transmit as `rx_packets` before running its own XDP program, whatever that program
/// answers (an XDP_DROP shows up only in `ethtool -S` as `xdp_drops`, not in `rx_dropped`), so
/// this counts exactly the frames that made it across. Read through `ip -n`: /sys/class/net
/// shows the namespace sysfs was mounted in, not the caller's.
fn sink_rx(sink_ns: &str) -> Result<u64> {
    let out = netns::run_root(&["ip", "-n", sink_ns, "-s", "-j", "link", "show", SINK_IF])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -s -j link`")?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .with_context(|| format!("no rx packet count for {SINK_IF} in {out}"))
}

/// User + system CPU time of this process (every thread), seconds.
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage fills a zeroed local struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The two namespaces and the veth between them; deleted on drop (on failure too).
struct Topology {
    balancer: NetNs,
    sink: NetNs,
}

impl Topology {
    fn new() -> Result<Topology> {
        let prefix = netns::unique_prefix();
        let balancer = NetNs::new(&format!("{prefix}-tpbal"))?;
        let sink = NetNs::new(&format!("{prefix}-tpsink"))?;
        // No IPv6 on lb0: its router solicitations and MLD reports would reach the sink and be
        // counted as forwarded frames.
        balancer.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        // Created straight inside the namespaces, so the names never meet the root's devices.
        // Two queues each way: a veth's XDP transmit picks the peer's receive queue by the
        // sending CPU (`veth_select_rxq`: CPU % queues), each queue with its own NAPI, so with
        // two queues the two-CPU cases do not meet in one ring and one NAPI on the sink.
        netns::run_root(&[
            "ip",
            "link",
            "add",
            LB_IF,
            "netns",
            balancer.name(),
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "type",
            "veth",
            "peer",
            "name",
            SINK_IF,
            "netns",
            sink.name(),
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
        ])?;
        balancer.ip(&["link", "set", LB_IF, "up"])?;
        sink.ip(&["link", "set", SINK_IF, "up"])?;
        Ok(Topology { balancer, sink })
    }
}

/// Per-program tallies over the rounds.
#[derive(Default)]
struct Tally {
    round_mpps: Vec<f64>,
    kernel_ns: Vec<f64>,
    cpus_used: Vec<f64>,
    sent: u64,
    received: u64,
}

impl Tally {
    fn finish(self, program: &str) -> ProgramThroughput {
        ProgramThroughput {
            program: program.into(),
            mpps: median(self.round_mpps.clone()),
            round_mpps: self.round_mpps,
            kernel_ns_per_frame: median(self.kernel_ns),
            cpus_used: median(self.cpus_used),
            frames_sent: self.sent,
            frames_received: self.received,
            loss: 1.0 - self.received as f64 / (self.sent as f64).max(1.0),
        }
    }
}

/// One case to measure: which flows each round sends, on how many CPUs.
struct Case {
    name: &'static str,
    flows_in_table: u32,
    /// Per round (after the warm-up round 0), the indices of the flows to send, one call each.
    round_flows: Vec<Vec<usize>>,
    frames_per_call: u32,
    threads: usize,
    cpus: usize,
}

fn cases(s: &Settings) -> Vec<Case> {
    let few: Vec<usize> = (0..s.flows as usize).collect();
    // Flow k of round r: spread evenly over the whole table, shifted by one each round, so no
    // round repeats another's flows.
    let stride = (s.many_flows / s.many_calls) as usize;
    let many: Vec<Vec<usize>> = (0..=s.rounds)
        .map(|r| {
            (0..s.many_calls as usize)
                .map(|k| k * stride + r % stride)
                .collect()
        })
        .collect();
    let few_case = |name, cpus| Case {
        name,
        flows_in_table: s.many_flows,
        round_flows: vec![few.clone(); s.rounds + 1],
        frames_per_call: s.frames_per_call,
        threads: s.threads * cpus,
        cpus,
    };
    let many_case = |name, cpus| Case {
        name,
        flows_in_table: s.many_flows,
        round_flows: many.clone(),
        frames_per_call: s.many_frames_per_call,
        threads: s.many_threads,
        cpus,
    };
    vec![
        few_case("few flows, 1 CPU", 1),
        few_case("few flows, 2 CPUs", 2),
        many_case("many flows, 1 CPU", 1),
        many_case("many flows, 2 CPUs", 2),
    ]
}

/// Forwarding rate of the balancer and of the MAC swap through the veth, each case in
/// interleaved rounds.
pub fn run(quick: bool) -> Result<ThroughputResult> {
    let s = settings(quick);
    let cpus = baselines::online_cpus();
    if cpus < 2 {
        bail!("the two-CPU cases need 2 CPUs, this machine has {cpus}");
    }
    let topo = Topology::new()?;
    // The sink's program: loaded anywhere, attached from inside the sink namespace (the
    // ifindex is looked up there). The link holds the program once attached; it is detached
    // when `_sink_link` closes, before the namespaces go.
    let sink_prog = load_xdp_drop()?;
    let _sink_link = in_netns(topo.sink.name(), move || {
        attach_native(sink_prog.as_fd(), ifindex(SINK_IF)?)
    })?;
    let sink_ns = topo.sink.name().to_owned();
    let (cases, frame_bytes) = in_netns(topo.balancer.name(), move || measure(&s, &sink_ns))?;
    let few = cases.first().context("no throughput case ran")?.clone();
    let scaling_of = |i: usize| -> Scaling {
        let one = &cases[0].programs[i];
        let two = &cases[1].programs[i];
        let per_cpu = |p: &ProgramThroughput| p.mpps / p.cpus_used.max(f64::MIN_POSITIVE);
        Scaling {
            program: one.program.clone(),
            one_cpu_mpps: one.mpps,
            two_cpu_mpps: two.mpps,
            scaling: two.mpps / one.mpps.max(f64::MIN_POSITIVE),
            one_cpu_cpus_used: one.cpus_used,
            two_cpu_cpus_used: two.cpus_used,
            per_cpu_efficiency: per_cpu(two) / per_cpu(one).max(f64::MIN_POSITIVE),
        }
    };
    let two_cpu_scaling = vec![scaling_of(0), scaling_of(1)];
    Ok(ThroughputResult {
        flows: s.flows,
        frames_per_call: s.frames_per_call,
        batch_size: s.batch_size,
        generator_threads: s.threads,
        frame_bytes,
        rounds: s.rounds,
        ratio_to_macswap: few.ratio_to_macswap,
        kernel_ratio_to_macswap: few.kernel_ratio_to_macswap,
        programs: few.programs,
        balancer_two_cpu_scaling: two_cpu_scaling[0].scaling,
        two_cpu_scaling,
        cases,
        notes: vec![
            "one CPU: every generator thread on CPU 0, which runs the program, the transmit of its frames and the sink's NAPI (raised on the sending CPU); two CPUs: the threads pinned alternately to CPU 0 and CPU 1, twice as many. The sink drops frames in native XDP and counts them in its rx_packets".into(),
            format!("every case runs with {} flows in the balancer's flow table, pre-filled by one ordinary test run each before any timed frame (the counters per frame show the timed frames were flow-table hits)", s.many_flows),
            format!("each call repeats one flow's frame ({} frames per call with few flows, {} with many) and flows change from call to call: consecutive frames hit the same flow-table entry, so the many-flows cases spread the calls over the whole table ({} calls per round, a different set each round) but do not make every frame a cache miss; the per-packet growth section times the fill itself", s.frames_per_call, s.many_frames_per_call, s.many_calls),
            "live frames recycle pages without rewriting them: after a call's first batch the balancer sees the frame it rewrote (destination = the backend's MAC, which this config sets to the balancer's own, so the frame is balanced again and takes the same path; the counters show it)".into(),
            "kernel ns/frame also holds the generator's own per-frame work, the veth transmit and the sink's XDP_DROP, alike for both programs; the difference is the balancer's extra cost".into(),
            "the machine's 2 cores were shared with other jobs; a two-CPU case competes with them for the second core, so its scaling is a lower bound of what two idle cores give".into(),
        ],
    })
}

/// One round of a case: each flow's frames once, from `c.threads` threads pinned round robin
/// to the case's CPUs, in this thread's namespace (new threads inherit it), each taking the
/// next flow until none is left. Returns the kernel-measured time summed over all calls.
fn generate(
    prog: &Xdp,
    frames: &[Vec<u8>],
    flows: &[usize],
    ifindex: u32,
    c: &Case,
    s: &Settings,
) -> Result<Duration> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..c.threads)
            .map(|t| {
                let next = &next;
                sc.spawn(move || -> Result<Duration> {
                    baselines::pin_to_cpu(t % c.cpus);
                    let mut kernel = Duration::ZERO;
                    while let Some(&i) = flows.get(next.fetch_add(1, Ordering::Relaxed)) {
                        kernel += testrun::live_frames(
                            prog,
                            &frames[i],
                            ifindex,
                            c.frames_per_call,
                            s.batch_size,
                        )
                        .context(
                            "BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (kernel ≥ 5.18)",
                        )? * c.frames_per_call;
                    }
                    Ok(kernel)
                })
            })
            .collect();
        let mut total = Duration::ZERO;
        for w in workers {
            total += w.join().expect("generator thread panicked")?;
        }
        Ok(total)
    })
}

/// The measurement proper, on a thread inside the balancer namespace.
fn measure(s: &Settings, sink_ns: &str) -> Result<(Vec<CaseResult>, usize)> {
    baselines::pin_to_cpu0();
    let lb_ifindex = ifindex(LB_IF)?;
    let cfg = Config::from_yaml(&config(), "throughput bench config")?;
    let mut bal = balancer::load_balancer(FLOW_TABLE_SIZE)?;
    let mut maps = BalancerMaps::from_ebpf(&mut bal)?;
    lb_userspace::datapath::reconcile::fill(
        &cfg,
        &mut maps,
        lb_userspace::config::MacAddr(GW_MAC),
    )?;
    let mut base = baselines::load(&[baselines::MACSWAP])?;
    let frames: Vec<Vec<u8>> = (0..s.many_flows).map(flow_frame).collect();

    // Pre-fill: one ordinary (not live) run per flow inserts it into the flow table, and shows
    // the config forwards every flow. Every case runs with the whole table full.
    {
        let prog = objects::program(&mut bal, lb_common::programs::BALANCER)?;
        for f in &frames {
            let r = testrun::run(prog, f).context("pre-filling the flow table")?;
            if r.action != XDP_TX {
                bail!(
                    "the balancer answered {} instead of XDP_TX for a VIP flow",
                    r.action
                );
            }
        }
    }
    if maps.conn_count() < s.many_flows as usize {
        bail!(
            "the flow table holds {} flows after pre-filling {}",
            maps.conn_count(),
            s.many_flows
        );
    }

    let mut results = Vec::new();
    for case in cases(s) {
        let mut tallies = [Tally::default(), Tally::default()];
        let mut moved = [0u64; COUNTER_COUNT as usize];
        for (round, flows) in case.round_flows.iter().enumerate() {
            // Round 0 is an unmeasured warm-up on a few flows: page pools, caches and the CPU
            // clock settle, and it shows that frames get across at all.
            let flows = if round == 0 {
                &flows[..flows.len().min(64)]
            } else {
                &flows[..]
            };
            for k in 0..2 {
                // Alternate which program goes first, so drift over time hits both alike.
                let which = (k + round) % 2;
                let prog = if which == 0 {
                    objects::program(&mut bal, lb_common::programs::BALANCER)?
                } else {
                    objects::program(&mut base, baselines::MACSWAP)?
                };
                let counters_before = maps.global_counters()?;
                let before = sink_rx(sink_ns)?;
                let cpu_before = process_cpu_s();
                let t = Instant::now();
                let kernel = generate(prog, &frames, flows, lb_ifindex, &case, s)?;
                let elapsed = t.elapsed().as_secs_f64();
                let cpus_used = (process_cpu_s() - cpu_before) / elapsed;
                let received = sink_rx(sink_ns)? - before;
                if round == 0 {
                    if received == 0 {
                        bail!("{SINK_IF} received none of the frames (no native XDP_TX path?)");
                    }
                    continue;
                }
                if which == 0 {
                    let now = maps.global_counters()?;
                    for (m, (a, b)) in moved.iter_mut().zip(now.iter().zip(counters_before)) {
                        *m += a - b;
                    }
                }
                let sent = flows.len() as u64 * u64::from(case.frames_per_call);
                let mpps = received as f64 / elapsed / 1e6;
                let ns = kernel.as_nanos() as f64 / sent as f64;
                eprintln!(
                    "bench throughput: {} round {round} {}: {mpps:.2} Mpps, kernel {ns:.0} ns/frame, {cpus_used:.2} CPUs ({received} of {sent} frames)",
                    case.name,
                    if which == 0 { "xdplb" } else { "macswap" }
                );
                let t = &mut tallies[which];
                t.round_mpps.push(mpps);
                t.kernel_ns.push(ns);
                t.cpus_used.push(cpus_used);
                t.sent += sent;
                t.received += received;
            }
        }
        let [bal_t, swap_t] = tallies;
        let bal_sent = bal_t.sent.max(1) as f64;
        let bal_p = bal_t.finish("xdplb (established flows)");
        let swap_p = swap_t.finish("baseline: MAC swap + XDP_TX");
        let counters: BTreeMap<&'static str, f64> = Counter::ALL
            .iter()
            .filter(|c| moved[**c as usize] != 0 || **c == Counter::ConnMiss)
            .map(|c| (c.name(), moved[*c as usize] as f64 / bal_sent))
            .collect();
        // The figure is only the hit path's if every timed frame was a hit that was forwarded.
        for (c, want) in [(Counter::ConnHit, 1.0), (Counter::TxForwarded, 1.0)] {
            let got = counters.get(c.name()).copied().unwrap_or(0.0);
            if (got - want).abs() > 0.001 {
                bail!(
                    "{}: the timed frames took another path than a flow-table hit: {counters:?}",
                    case.name
                );
            }
        }
        let distinct: std::collections::BTreeSet<usize> =
            case.round_flows[1..].iter().flatten().copied().collect();
        results.push(CaseResult {
            case: case.name.into(),
            flows_in_table: case.flows_in_table,
            flows_timed: distinct.len() as u32,
            frames_per_call: case.frames_per_call,
            generator_threads: case.threads,
            cpus: case.cpus,
            ratio_to_macswap: bal_p.mpps / swap_p.mpps.max(f64::MIN_POSITIVE),
            kernel_ratio_to_macswap: swap_p.kernel_ns_per_frame
                / bal_p.kernel_ns_per_frame.max(1.0),
            programs: vec![bal_p, swap_p],
            balancer_counters_per_frame: counters,
        });
    }
    Ok((results, frames[0].len()))
}

//! Per-packet cost of the balancer with BPF_PROG_TEST_RUN, against floors measured the same way.
//!
//! The floors (an empty XDP_PASS, a minimal MAC swap) run in the same run; `sweep.rs` measures
//! how the cost grows with backends, VIPs and flow-table fill.

use std::collections::BTreeMap;

use anyhow::{ensure, Context as _, Result};
use aya::{programs::Xdp, Ebpf};
use etherparse::PacketBuilder;
use lb_common::{ConnEntry, Counter, FlowKey, COUNTER_COUNT};
use lb_userspace::{
    config::Config,
    datapath::maps::BalancerMaps,
    datapath::testrun::{self, action_name},
    datapath::{balancer, objects},
};
use serde::Serialize;
use xdplb_lab::frames::{CLIENT_MAC, GW_MAC};

use crate::baselines;
use lb_common::baselines as floors;

mod host;
mod sweep;

pub use self::sweep::sweeps;

/// One packet class's cost.
#[derive(Debug, Clone, Serialize)]
pub struct PacketCost {
    pub class: String,
    /// Median over runs of the kernel-measured time per packet.
    pub ns_per_packet: f64,
    /// 1e3 / ns: packets per second one core could run this program at, in millions.
    pub mpps_per_core: f64,
    /// Cost relative to the MAC-swap baseline measured the same way.
    pub ratio_to_macswap: f64,
    pub verdict: &'static str,
    pub note: String,
    /// `GLOBAL_STATS` slots the timed runs moved, per program run (the balancer's classes
    /// only): shows which path was timed, e.g. `conn_hit` 1 and `tx_forwarded` 1 for an
    /// established flow.
    pub counters_per_run: BTreeMap<&'static str, f64>,
}

impl PacketCost {
    /// A class's cost of `ns` per packet against a MAC swap of `swap_ns` measured the same
    /// way; the per-core rate and the ratio follow from them.
    fn new(
        class: &str,
        ns: f64,
        swap_ns: f64,
        verdict: u32,
        note: String,
        counters_per_run: BTreeMap<&'static str, f64>,
    ) -> PacketCost {
        PacketCost {
            class: class.into(),
            ns_per_packet: ns,
            mpps_per_core: 1e3 / ns.max(1.0),
            ratio_to_macswap: ns / swap_ns.max(1.0),
            verdict: action_name(verdict),
            note,
            counters_per_run,
        }
    }
}

/// One point of a cost-growth sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    pub x: u64,
    pub ns_per_packet: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub name: String,
    pub x_label: String,
    pub points: Vec<SweepPoint>,
    /// Largest over smallest cost across the sweep (goal: at most 1.10).
    pub max_over_min: f64,
}

struct Settings {
    runs: usize,
    repeat: u32,
}

fn settings(quick: bool) -> Settings {
    if quick {
        Settings {
            runs: 5,
            repeat: 20_000,
        }
    } else {
        Settings {
            runs: 15,
            repeat: 200_000,
        }
    }
}

fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1, 65535);
    let mut v = Vec::new();
    b.write(&mut v, &[0u8; 20]).expect("packet");
    v
}

fn udp6(src: [u8; 16], dst: [u8; 16], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ipv6(src, dst, 64)
        .udp(5353, dport);
    let mut v = Vec::new();
    b.write(&mut v, &[0u8; 20]).expect("packet");
    v
}

/// The flow-table size of the balancer in the per-packet classes (and of the new-flow floor's).
pub(crate) const FLOW_TABLE: u32 = 1 << 20;

/// Kernel-measured ns per packet of `repeat` runs of `prog` on `packet`, and the verdict.
pub(crate) fn time_once(prog: &mut Xdp, packet: &[u8], repeat: u32) -> Result<(f64, u32)> {
    let t = testrun::timed(prog, packet, repeat).context("BPF_PROG_TEST_RUN")?;
    Ok((t.per_run.as_nanos() as f64, t.action))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_ns(prog: &mut Xdp, packet: &[u8], s: &Settings) -> Result<(f64, u32)> {
    let (_, verdict) = time_once(prog, packet, 1)?; // fills the flow table for this flow
                                                    // One discarded full run: caches, branch predictors and the CPU's clock settle first.
    time_once(prog, packet, s.repeat)?;
    let mut v = Vec::new();
    for _ in 0..s.runs {
        v.push(time_once(prog, packet, s.repeat)?.0);
    }
    Ok((median(v), verdict))
}

/// The balancer's counters moved between `before` and now, divided by `runs` program runs.
fn per_run(
    bal: &Balancer,
    before: &[u64; COUNTER_COUNT as usize],
    runs: u64,
) -> Result<BTreeMap<&'static str, f64>> {
    let now = bal.maps.global_counters()?;
    Ok(Counter::ALL
        .iter()
        .filter(|c| now[**c as usize] != before[**c as usize])
        .map(|c| {
            let moved = now[*c as usize] - before[*c as usize];
            (c.name(), moved as f64 / runs as f64)
        })
        .collect())
}

/// Fails unless every timed run took the path `expected` names: exactly one count of each of
/// those counters per run, and no other counter moved. A figure of another path than the one
/// its class names is worse than no figure.
fn check_path(
    class: &str,
    counted: &BTreeMap<&'static str, f64>,
    expected: &[Counter],
) -> Result<()> {
    let want: BTreeMap<&'static str, f64> = expected.iter().map(|c| (c.name(), 1.0)).collect();
    ensure!(
        *counted == want,
        "{class}: the timed runs counted {counted:?} per run, not {want:?}: the timed path is not the one the class names"
    );
    Ok(())
}

/// [`median_ns`] on the balancer, with the counters its timed runs moved (per run). The
/// first run (which puts a new flow in the table) is not among them.
fn median_ns_counted(
    bal: &mut Balancer,
    packet: &[u8],
    s: &Settings,
) -> Result<(f64, u32, BTreeMap<&'static str, f64>)> {
    let (_, verdict) = time_once(bal.prog()?, packet, 1)?;
    let before = bal.maps.global_counters()?;
    time_once(bal.prog()?, packet, s.repeat)?;
    let mut v = Vec::new();
    for _ in 0..s.runs {
        v.push(time_once(bal.prog()?, packet, s.repeat)?.0);
    }
    let runs = u64::from(s.repeat) * (s.runs as u64 + 1);
    Ok((median(v), verdict, per_run(bal, &before, runs)?))
}

/// The balancer, loaded with `yaml` (backends need `mac:`), flow table of `conns` entries.
pub(crate) struct Balancer {
    ebpf: Ebpf,
    maps: BalancerMaps,
}

impl Balancer {
    fn new(yaml: &str, conns: u32) -> Result<Balancer> {
        let cfg = Config::from_yaml(yaml, "bench config")?;
        let mut ebpf = balancer::load_balancer(conns)?;
        let mut maps = BalancerMaps::from_ebpf(&mut ebpf)?;
        lb_userspace::datapath::reconcile::fill(
            &cfg,
            &mut maps,
            lb_userspace::config::MacAddr(GW_MAC),
        )?;
        Ok(Balancer { ebpf, maps })
    }

    /// The per-packet classes' balancer: one VIP of three backends and the IPv6 VIP.
    pub(crate) fn bench(conns: u32) -> Result<Balancer> {
        Balancer::new(&config(1, 3), conns)
    }

    /// [`Balancer::bench`] with its IPv4 VIP stateless.
    pub(crate) fn stateless(conns: u32) -> Result<Balancer> {
        let yaml = config(1, 3).replacen(
            "    protocol: tcp\n",
            "    protocol: tcp\n    stateless: true\n",
            1,
        );
        Balancer::new(&yaml, conns)
    }

    pub(crate) fn prog(&mut self) -> Result<&mut Xdp> {
        objects::program(&mut self.ebpf, lb_common::programs::BALANCER)
    }
}

/// A config of `vips` VIPs (10.201.x.y:80/tcp, plus fd00:201::10:53/udp) with `backends` each.
fn config(vips: u32, backends: u32) -> String {
    let gw_mac = GW_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let ring = next_prime((backends * 100).max(65_537));
    let mut y = String::from("interface: lo\nvips:\n");
    let list = |y: &mut String, v6: bool| {
        for b in 0..backends {
            let addr = if v6 {
                format!("'fd00:200::{:x}'", 0x1000 + b)
            } else {
                format!("10.{}.{}.{}", 100 + b / 65536, (b / 256) % 256, b % 256)
            };
            // Every backend sits behind the balancer's own MAC. BPF_PROG_TEST_RUN repeats run
            // on the buffer the previous run rewrote; with any other MAC the second run on
            // would see a frame for another host and time the `pass_other_host` path instead
            // of the hit path. The IP packet is left as it was (l2), so it stays the same flow.
            y.push_str(&format!("      - {{ address: {addr}, mac: '{gw_mac}' }}\n"));
        }
    };
    // VIPs without backends get the smallest table: their rings are never read by the timed
    // packets, and 512 tables of 65537 slots would take most of a minute to write.
    for v in 0..vips {
        y.push_str(&format!(
            "  - {{ name: v{v}, address: 10.201.{}.{}, port: 80, protocol: tcp, ring_size: 101, backends: [] }}\n",
            v / 256,
            v % 256
        ));
    }
    // Replace the last VIP's empty backend list with the real one (the VIP the packets hit).
    let last = format!(
        "v{}, address: 10.201.{}.{}, port: 80, protocol: tcp, ring_size: 101, backends: [] }}\n",
        vips - 1,
        (vips - 1) / 256,
        (vips - 1) % 256
    );
    let mut with = String::new();
    with.push_str(&format!("v{}\n    address: 10.201.{}.{}\n    port: 80\n    protocol: tcp\n    ring_size: {ring}\n    backends:\n", vips - 1, (vips - 1) / 256, (vips - 1) % 256));
    list(&mut with, false);
    y = y.replace(
        &format!("  - {{ name: {last}"),
        &format!("  - name: {with}"),
    );
    if vips >= lb_common::MAX_VIPS {
        return y;
    }
    y.push_str("  - name: web6\n    address: 'fd00:201::10'\n    port: 53\n    protocol: udp\n    backends:\n");
    let mut v6 = String::new();
    list(&mut v6, true);
    // The IPv6 VIP only serves the IPv6 class: three backends are enough.
    y.extend(v6.lines().take(3).map(|l| format!("{l}\n")));
    y
}

fn next_prime(mut n: u32) -> u32 {
    while !lb_userspace::config::is_prime(n) {
        n += 1;
    }
    n
}

/// The IPv6 established-flow class's packet (to the IPv6 VIP of [`Balancer::bench`]).
pub(crate) fn ipv6_packet() -> Result<Vec<u8>> {
    Ok(udp6(
        "fd00:200::11".parse::<std::net::Ipv6Addr>()?.octets(),
        "fd00:201::10".parse::<std::net::Ipv6Addr>()?.octets(),
        53,
    ))
}

pub(crate) fn vip_packet(vips: u32) -> Vec<u8> {
    let v = vips - 1;
    tcp4(
        [10, 200, 0, 11],
        40000,
        [10, 201, (v / 256) as u8, (v % 256) as u8],
        80,
    )
}

/// The `i`th packet of a fresh flow to the bench's VIP (distinct for every `i` below 2^22).
pub(crate) fn fresh_flow(i: u32) -> Vec<u8> {
    tcp4(
        [10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8],
        1024 + (i % 60000) as u16,
        [10, 201, 0, 0],
        80,
    )
}

/// The baselines object with the new-flow floor and the programs `also` loaded, the floor set
/// up for [`fresh_flow`]s: its table the balancer's size (so both insert into tables alike),
/// its VIP the bench's.
pub(crate) fn new_flow_floor(also: &[&str]) -> Result<Ebpf> {
    let names: Vec<&str> = [floors::NEW_FLOW].iter().chain(also).copied().collect();
    let mut base = baselines::load_sized(&names, &[(floors::NEW_FLOWS, FLOW_TABLE)])?;
    let keyed: [u8; floors::KEYED_BYTES] = fresh_flow(0)[..floors::KEYED_BYTES].try_into()?;
    aya::maps::HashMap::<_, u64, u32>::try_from(
        base.map_mut(floors::FLOOR_VIPS)
            .context("no FLOOR_VIPS map")?,
    )?
    .insert(floors::vip_key(&keyed), lb_common::DEFAULT_RING_SIZE, 0)?;
    Ok(base)
}

/// Per-packet cost by class, with the baselines. Every balancer class shows, through the
/// counters its timed runs moved, that it timed the path it names.
pub fn per_packet(quick: bool) -> Result<Vec<PacketCost>> {
    let _cpu0 = baselines::PinnedToCpu0::new();
    let s = settings(quick);
    let mut base = new_flow_floor(&[
        baselines::PASS,
        baselines::MACSWAP,
        floors::LOOKUP40,
        floors::LOOKUP16,
    ])?;
    let mut bal = Balancer::bench(FLOW_TABLE)?;
    let vip = vip_packet(1);
    let (mut out, mut stateless) = classes_timed_with_repeats(&mut base, &mut bal, &vip, &s)?;
    classes_timed_one_packet_per_run(quick, &mut base, &mut bal, &mut stateless, &vip, &mut out)?;
    let swap_ns = out
        .iter()
        .find(|c| c.class == "baseline: MAC swap + XDP_TX")
        .map_or(1.0, |c| c.ns_per_packet);
    out.extend(host::host_classes(&s, &mut base, swap_ns)?);
    Ok(out)
}

/// The baselines and the classes a repeated packet times (established flows, non-VIP,
/// stateless, malformed); returns them and the stateless balancer, which the new-flow classes
/// use again.
fn classes_timed_with_repeats(
    base: &mut Ebpf,
    bal: &mut Balancer,
    vip: &[u8],
    s: &Settings,
) -> Result<(Vec<PacketCost>, Balancer)> {
    let (pass_ns, _) = median_ns(objects::program(base, baselines::PASS)?, vip, s)?;
    let (swap_ns, _) = median_ns(objects::program(base, baselines::MACSWAP)?, vip, s)?;
    let mut out = Vec::new();
    let mut push =
        |class: &str, ns: f64, verdict: u32, note: &str, counted: BTreeMap<&'static str, f64>| {
            out.push(PacketCost::new(
                class,
                ns,
                swap_ns,
                verdict,
                note.into(),
                counted,
            ))
        };
    push(
        "baseline: empty XDP_PASS",
        pass_ns,
        2,
        "floor of running any XDP program",
        BTreeMap::new(),
    );
    push(
        "baseline: MAC swap + XDP_TX",
        swap_ns,
        3,
        "least an L2 forwarder does",
        BTreeMap::new(),
    );
    // The lookup floors: the MAC swap after one hit in an LRU hash, with xdplb's key size and
    // with a 16-byte IPv4 key; the least any flow-table design pays on a hit, on this kernel.
    let keyed: &[u8; floors::KEYED_BYTES] = vip[..floors::KEYED_BYTES].try_into()?;
    aya::maps::HashMap::<_, [u64; 5], u32>::try_from(
        base.map_mut(floors::FLOWS40).context("no FLOWS40 map")?,
    )?
    .insert(floors::key40(keyed), 0, 0)?;
    aya::maps::HashMap::<_, [u64; 2], u32>::try_from(
        base.map_mut(floors::FLOWS16).context("no FLOWS16 map")?,
    )?
    .insert(floors::key16(keyed), 0, 0)?;
    for (name, class, note) in [
        (
            floors::LOOKUP40,
            "baseline: MAC swap after one LRU hash hit, 40-byte key",
            "the least a flow table with xdplb's key costs on a hit",
        ),
        (
            floors::LOOKUP16,
            "baseline: MAC swap after one LRU hash hit, 16-byte key",
            "the same with an IPv4-sized key",
        ),
    ] {
        let (ns, v) = median_ns(objects::program(base, name)?, vip, s)?;
        ensure!(v == 3, "{name} did not find its key (verdict {v})");
        push(class, ns, v, note, BTreeMap::new());
    }
    let non_vip = tcp4([10, 200, 0, 11], 40000, [10, 200, 0, 1], 22);
    let class = "non-VIP TCP (passed to the stack)";
    let (ns, v, counted) = median_ns_counted(bal, &non_vip, s)?;
    check_path(class, &counted, &[Counter::PassNotVip])?;
    push(
        class,
        ns,
        v,
        "parse, flow-table miss, 2 VIP lookups",
        counted,
    );
    let hit = [Counter::ConnHit, Counter::TxForwarded];
    let class = "VIP established flow (flow-table hit)";
    let (ns, v, counted) = median_ns_counted(bal, vip, s)?;
    check_path(class, &counted, &hit)?;
    push(
        class,
        ns,
        v,
        "parse, flow-table hit, backend check, MAC rewrite, counters",
        counted,
    );
    let v6 = ipv6_packet()?;
    let class = "IPv6 VIP established flow";
    let (ns, v, counted) = median_ns_counted(bal, &v6, s)?;
    check_path(class, &counted, &hit)?;
    push(class, ns, v, "", counted);
    // A stateless VIP: every packet takes the miss path's choice (flow hash, ring) without the
    // flow table, so it can be timed with repeats; the new-flow class below minus this one is
    // the flow table's miss and insert.
    let mut stateless = Balancer::stateless(1 << 16)?;
    let class = "stateless VIP (flow hash + ring, no flow table)";
    let (ns, v, counted) = median_ns_counted(&mut stateless, vip, s)?;
    check_path(class, &counted, &[Counter::TxForwarded])?;
    push(
        class,
        ns,
        v,
        "what a new flow pays besides the flow table's miss and insert",
        counted,
    );
    let malformed = vip[..14 + 20 + 10].to_vec();
    let class = "malformed (truncated TCP header)";
    let (ns, v, counted) = median_ns_counted(bal, &malformed, s)?;
    check_path(class, &counted, &[Counter::DropMalformed])?;
    push(class, ns, v, "dropped and counted", counted);
    Ok((out, stateless))
}

/// The classes whose packets cannot repeat (each run a new flow, or an encapsulation that
/// grows the buffer in place), against the MAC swap timed the same way.
fn classes_timed_one_packet_per_run(
    quick: bool,
    base: &mut Ebpf,
    bal: &mut Balancer,
    stateless: &mut Balancer,
    vip: &[u8],
    out: &mut Vec<PacketCost>,
) -> Result<()> {
    let hit = [Counter::ConnHit, Counter::TxForwarded];
    // New flows: each packet must miss the flow table, so each run is a fresh 5-tuple with
    // repeat 1; the MAC swap is re-measured with repeat 1 so the ratio compares like with like.
    let calls: u32 = if quick { 2_000 } else { 20_000 };
    let mut swap1 = Vec::new();
    let mut new1 = Vec::new();
    // The same fresh packets through the stateless VIP: the difference is the flow table's
    // miss and insert, measured alike (one packet per run).
    let mut stateless1 = Vec::new();
    let stateless_before = stateless.maps.global_counters()?;
    let swap_prog_ns = |b: &mut Ebpf, p: &[u8]| -> Result<f64> {
        Ok(time_once(objects::program(b, baselines::MACSWAP)?, p, 1)?.0)
    };
    // And through the new-flow floor: a miss, a VIP lookup, a hash, a ring read, an insert.
    let mut floor1 = Vec::new();
    let mut verdict = 0;
    let before = bal.maps.global_counters()?;
    for i in 0..calls {
        let pkt = fresh_flow(i);
        swap1.push(swap_prog_ns(base, &pkt)?);
        let (ns, v) = time_once(bal.prog()?, &pkt, 1)?;
        verdict = v;
        new1.push(ns);
        stateless1.push(time_once(stateless.prog()?, &pkt, 1)?.0);
        let (ns, v) = time_once(objects::program(base, floors::NEW_FLOW)?, &pkt, 1)?;
        ensure!(
            v == 3,
            "{} passed a fresh flow (verdict {v}): it did not time a new flow",
            floors::NEW_FLOW
        );
        floor1.push(ns);
    }
    let class = "VIP new flow (miss + Maglev + insert)";
    let counted = per_run(bal, &before, u64::from(calls))?;
    check_path(class, &counted, &[Counter::ConnMiss, Counter::TxForwarded])?;
    let (new_ns, swap1_ns) = (median(new1), median(swap1));
    out.push(PacketCost::new(
        class,
        new_ns,
        swap1_ns,
        verdict,
        format!("one packet per run (MAC swap measured the same way: {swap1_ns:.0} ns)"),
        counted,
    ));
    // IP-in-IP: encapsulation grows the buffer in place, and BPF_PROG_TEST_RUN repeats run on
    // the same buffer, so each run is one packet (like the new-flow class) on an established
    // flow, against the repeat-1 MAC swap.
    let ipip_yaml = config(1, 3)
        .replacen(
            "interface: lo\n",
            "interface: lo\ntunnel:\n  mtu: 1500\n",
            1,
        )
        .replacen(
            "    protocol: tcp\n",
            "    protocol: tcp\n    forwarding: ipip\n",
            1,
        );
    let mut tunnel = Balancer::new(&ipip_yaml, 1 << 16)?;
    let (_, v) = time_once(tunnel.prog()?, vip, 1)?;
    if v != 3 {
        anyhow::bail!("the ipip VIP did not forward the bench packet (verdict {v})");
    }
    let before = tunnel.maps.global_counters()?;
    let mut enc = Vec::new();
    for _ in 0..calls {
        enc.push(time_once(tunnel.prog()?, vip, 1)?.0);
    }
    out.push(PacketCost::new(
        "baseline: new-flow floor (miss, VIP lookup, hash, ring read, insert, MAC swap)",
        median(floor1),
        swap1_ns,
        3,
        format!(
            "one packet per run on the new-flow class's packets: the least a balancer that remembers flows pays for a new one (MAC swap the same way: {swap1_ns:.0} ns)"
        ),
        BTreeMap::new(),
    ));
    let class = "stateless VIP, new flows (flow hash + ring, one packet per run)";
    let counted = per_run(stateless, &stateless_before, u64::from(calls))?;
    check_path(class, &counted, &[Counter::TxForwarded])?;
    out.push(PacketCost::new(
        class,
        median(stateless1),
        swap1_ns,
        3,
        format!(
            "the new-flow class's packets without the flow table: their difference is its miss and insert (MAC swap the same way: {swap1_ns:.0} ns)"
        ),
        counted,
    ));
    let class = "IPIP encapsulation (4in4, established flow)";
    let counted = per_run(&tunnel, &before, u64::from(calls))?;
    check_path(class, &counted, &hit)?;
    let enc_ns = median(enc);
    out.push(PacketCost::new(
        class,
        enc_ns,
        swap1_ns,
        v,
        format!(
            "one packet per run: grow head, outer header + checksum, flow hash for the source (MAC swap the same way: {swap1_ns:.0} ns)"
        ),
        counted,
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The new-flow floor times what its class names: a fresh flow is forwarded (and
    /// remembered), the same flow again is passed, the next fresh one forwarded. Needs root and
    /// a kernel with BPF_PROG_TEST_RUN, like the bench.
    #[test]
    fn new_flow_floor_forwards_each_fresh_flow_once() {
        let mut floor = new_flow_floor(&[]).expect("loading the new-flow floor");
        let prog = objects::program(&mut floor, floors::NEW_FLOW).expect("the floor program");
        let verdict = |prog: &mut Xdp, i| time_once(prog, &fresh_flow(i), 1).unwrap().1;
        assert_eq!(verdict(prog, 0), 3, "a fresh flow is sent (XDP_TX)");
        assert_eq!(verdict(prog, 0), 2, "a flow it holds is passed");
        assert_eq!(verdict(prog, 1), 3, "the next fresh flow is sent");
        let other_vip = tcp4([10, 100, 0, 9], 1033, [10, 201, 0, 1], 80);
        assert_eq!(
            time_once(prog, &other_vip, 1).unwrap().1,
            2,
            "a flow to another address is passed"
        );
    }
}

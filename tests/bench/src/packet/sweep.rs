//! Cost growth: per-packet cost as VIPs, backends and flows grow, the sizes measured interleaved.

use super::*;

pub(super) fn sweep(name: &str, x_label: &str, points: Vec<SweepPoint>) -> Sweep {
    let max = points
        .iter()
        .map(|p| p.ns_per_packet)
        .fold(f64::MIN, f64::max);
    let min = points
        .iter()
        .map(|p| p.ns_per_packet)
        .fold(f64::MAX, f64::min);
    Sweep {
        name: name.into(),
        x_label: x_label.into(),
        points,
        max_over_min: max / min.max(1.0),
    }
}

/// The established-flow cost while backends per VIP, VIPs and flow-table fill grow.
/// One sweep point under measurement: its x, its own loaded balancer and the flows it times.
pub(super) struct Point {
    pub(super) x: u64,
    pub(super) bal: Balancer,
    pub(super) packets: Vec<Vec<u8>>,
}

/// Flows timed per sweep point. A hash table's cost depends on the chain its key's bucket
/// holds, which at high fill differs from flow to flow: the point's figure is the mean over
/// these flows, i.e. the average flow's cost, not one lucky or unlucky bucket's.
pub(super) const SWEEP_FLOWS: u16 = 16;

/// `SWEEP_FLOWS` flows (source ports 40000+) to the last of `vips` VIPs.
pub(super) fn vip_packets(vips: u32) -> Vec<Vec<u8>> {
    let v = vips - 1;
    (0..SWEEP_FLOWS)
        .map(|k| {
            tcp4(
                [10, 200, 0, 11],
                40000 + k,
                [10, 201, (v / 256) as u8, (v % 256) as u8],
                80,
            )
        })
        .collect()
}

/// Times every point in interleaved rounds (one timed run per flow per point per round;
/// median per flow, mean over the flows), so that a noisy moment on a shared machine lands
/// on one run of every point instead of on all runs of one point and reads as growth.
pub(super) fn interleaved(
    name: &str,
    points: &mut [Point],
    s: &Settings,
) -> Result<Vec<SweepPoint>> {
    let mut times: Vec<Vec<Vec<f64>>> = points
        .iter()
        .map(|p| vec![Vec::new(); p.packets.len()])
        .collect();
    for p in points.iter_mut() {
        for packet in &p.packets {
            // Puts the flow in the table, then one discarded run to settle caches.
            time_once(p.bal.prog()?, packet, 1)?;
            time_once(p.bal.prog()?, packet, s.repeat)?;
        }
    }
    let before = points
        .iter()
        .map(|p| p.bal.maps.global_counters())
        .collect::<Result<Vec<_>>>()?;
    for _ in 0..s.runs {
        for (p, t) in points.iter_mut().zip(&mut times) {
            for (packet, tf) in p.packets.iter().zip(t.iter_mut()) {
                tf.push(time_once(p.bal.prog()?, packet, s.repeat)?.0);
            }
        }
    }
    for (p, before) in points.iter().zip(&before) {
        let runs = s.runs as u64 * u64::from(s.repeat) * p.packets.len() as u64;
        let counted = per_run(&p.bal, before, runs)?;
        check_path(
            &format!("{name} {}", p.x),
            &counted,
            &[Counter::ConnHit, Counter::TxForwarded],
        )?;
    }
    Ok(points
        .iter()
        .zip(times)
        .map(|(p, t)| {
            let flows = t.len() as f64;
            let ns = t.into_iter().map(median).sum::<f64>() / flows;
            eprintln!("bench sweep: {name} {}: {ns:.0} ns", p.x);
            SweepPoint {
                x: p.x,
                ns_per_packet: ns,
            }
        })
        .collect())
}

/// Inserts `n` other flows into the flow table from userspace.
pub(super) fn fill_flow_table(bal: &mut Balancer, n: u64) -> Result<()> {
    for i in 0..n as u32 {
        let mut src = [0u8; 16];
        src[..5].copy_from_slice(&[172, 16, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        let key = FlowKey {
            src,
            dst: [10, 201, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: (i as u16).to_be_bytes(),
            dport: 80u16.to_be_bytes(),
            proto: 6,
            family: lb_common::Family::V4,
            _pad: [0; 2],
        };
        let entry = ConnEntry {
            backend_id: 0,
            tag: 0,
            hash: 0,
            previous: lb_common::NO_BACKEND,
        };
        bal.maps.insert_conn(&key, &entry)?;
    }
    Ok(())
}

pub fn sweeps(quick: bool) -> Result<Vec<Sweep>> {
    let _cpu0 = baselines::PinnedToCpu0::new();
    let s = settings(quick);
    let mut out = Vec::new();

    let mut points = Vec::new();
    for n in [1u32, 16, 256, 1024, 4096] {
        points.push(Point {
            x: u64::from(n),
            bal: Balancer::new(&config(1, n), 1 << 16)?,
            packets: vip_packets(1),
        });
    }
    let pts = interleaved("backends", &mut points, &s)?;
    out.push(sweep("backends per VIP", "backends", pts));
    drop(points);

    let mut points = Vec::new();
    for n in [1u32, 8, 64, 512] {
        points.push(Point {
            x: u64::from(n),
            bal: Balancer::new(&config(n, 3), 1 << 16)?,
            packets: vip_packets(n),
        });
    }
    let pts = interleaved("VIPs", &mut points, &s)?;
    out.push(sweep("VIPs", "VIPs", pts));
    drop(points);

    // Flow-table fill: other flows inserted from userspace into a 1Mi table (256Ki with
    // --quick), one table per point; the last point inserts more than it holds, so the LRU
    // has evicted.
    // --quick uses a 256Ki table: filling from userspace costs tens of µs per entry.
    let (cap, fills): (u32, &[u64]) = if quick {
        (1 << 18, &[0, 25_000, 300_000])
    } else {
        (1 << 20, &[0, 10_000, 100_000, 1_000_000, 1_500_000])
    };
    let mut points = Vec::new();
    for &fill in fills {
        let mut bal = Balancer::new(&config(1, 3), cap)?;
        fill_flow_table(&mut bal, fill)?;
        points.push(Point {
            x: fill,
            bal,
            packets: vip_packets(1),
        });
    }
    let pts = interleaved("flow table fill", &mut points, &s)?;
    out.push(sweep(
        if quick {
            "flow-table fill (256Ki entries; the last point evicts)"
        } else {
            "flow-table fill (1Mi entries; the last point evicts)"
        },
        "flows inserted",
        pts,
    ));
    Ok(out)
}

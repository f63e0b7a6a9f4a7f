//! What applying a config would change (`xdplb check` against a running agent).
//!
//! It is the difference between two `Desired` states, in words, with the share of new flows that
//! would land on another backend.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use crate::{config::Config, model::desired::Desired};

/// The changes from `current` (built from `current_cfg`) to `proposed` (built from
/// `proposed_cfg` with the same facts): VIPs and backends added, removed or changed, and per
/// VIP the share of new flows whose backend would differ. Established flows keep theirs
/// through the flow table.
pub fn changes(
    current_cfg: &Config,
    current: &Desired,
    proposed_cfg: &Config,
    proposed: &Desired,
) -> Vec<String> {
    let mut lines = Vec::new();
    let old_vips: HashMap<_, _> = current_cfg.vips.iter().map(|v| (&v.name, v)).collect();
    let new_names: HashSet<_> = proposed_cfg.vips.iter().map(|v| &v.name).collect();
    for v in current_cfg
        .vips
        .iter()
        .filter(|v| !new_names.contains(&v.name))
    {
        lines.push(format!("VIP {} removed: all its flows stop", v.name));
    }
    for vip in proposed_cfg.vips.iter() {
        let Some(old) = old_vips.get(&vip.name) else {
            lines.push(format!(
                "VIP {} added ({} backends)",
                vip.name,
                vip.backends.len()
            ));
            continue;
        };
        let lines_before = lines.len();
        for (what, differs) in [
            ("hash", old.hash != vip.hash),
            ("ring_size", old.ring_size != vip.ring_size),
            ("forwarding", old.forwarding != vip.forwarding),
            ("stateless", old.stateless != vip.stateless),
            ("icmp_echo", old.icmp_echo != vip.icmp_echo),
            ("health_check", old.health_check != vip.health_check),
            (
                "address, port or protocol",
                (old.address, old.port, old.protocol) != (vip.address, vip.port, vip.protocol),
            ),
        ] {
            if differs {
                lines.push(format!("VIP {}: {what} changes", vip.name));
            }
        }
        let old_b: HashMap<_, _> = old.backends.iter().map(|b| (b.address, b)).collect();
        let new_b: HashSet<_> = vip.backends.iter().map(|b| b.address).collect();
        for b in vip.backends.iter() {
            match old_b.get(&b.address) {
                None => lines.push(format!("VIP {}: backend {} added", vip.name, b.address)),
                Some(o) if o.state != b.state => lines.push(format!(
                    "VIP {}: backend {} {:?} -> {:?}",
                    vip.name, b.address, o.state, b.state
                )),
                Some(o) if o.weight != b.weight => lines.push(format!(
                    "VIP {}: backend {} weight {} -> {}",
                    vip.name, b.address, o.weight.0, b.weight.0
                )),
                _ => {}
            }
        }
        for b in old.backends.iter().filter(|b| !new_b.contains(&b.address)) {
            lines.push(format!(
                "VIP {}: backend {} removed (its flows re-steer)",
                vip.name, b.address
            ));
        }
        let (Some(before), Some(after)) = (current.vip(&old.name), proposed.vip(&vip.name)) else {
            continue;
        };
        let by_address = |d: &Desired, ring: &[u32]| -> Vec<Option<IpAddr>> {
            ring.iter().map(|id| d.address_of(*id)).collect()
        };
        let moved = moved_share(
            &by_address(current, &before.ring),
            &by_address(proposed, &after.ring),
        );
        // A VIP that does not change says nothing, so "no changes" means none.
        if moved > 0.0 || lines.len() > lines_before {
            lines.push(format!(
                "VIP {}: {:.1}% of new flows would go to another backend",
                vip.name,
                moved * 100.0
            ));
        }
    }
    lines
}

/// Share of flow hashes whose slot names another backend in `new` than in `old`; rings may
/// differ in size, so hashes are sampled rather than slots compared.
fn moved_share(old: &[Option<IpAddr>], new: &[Option<IpAddr>]) -> f64 {
    if old.is_empty() || new.is_empty() {
        return 1.0;
    }
    const SAMPLES: u32 = 200_000;
    let moved = (0..SAMPLES)
        .filter(|i| {
            let h = lb_common::hash_words(&[*i], 0x9e37_79b9);
            old[(h % old.len() as u32) as usize] != new[(h % new.len() as u32) as usize]
        })
        .count();
    moved as f64 / f64::from(SAMPLES)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::desired::{tests::no_mtu, DownSet};

    const CONFIG: &str = "
interface: lo
vips:
  - name: web
    address: 10.0.0.10
    port: 80
    protocol: tcp
    ring_size: 1009
    backends:
      - { address: 10.0.0.1, mac: '02:00:00:00:00:01' }
      - { address: 10.0.0.2, mac: '02:00:00:00:00:02' }
      - { address: 10.0.0.3, mac: '02:00:00:00:00:03' }
      - { address: 10.0.0.4, mac: '02:00:00:00:00:04' }
";

    #[test]
    fn draining_one_of_four_moves_about_a_quarter() {
        let down = DownSet::new();
        let macs = HashMap::new();
        let facts = no_mtu(&down, &macs);
        let a = Config::from_yaml(CONFIG, "a").unwrap();
        let b = Config::from_yaml(
            &CONFIG.replace(
                "10.0.0.4, mac: '02:00:00:00:00:04' }",
                "10.0.0.4, mac: '02:00:00:00:00:04', state: draining }",
            ),
            "b",
        )
        .unwrap();
        let da = Desired::build(&a, &facts).unwrap();
        let db = Desired::build(&b, &facts).unwrap();
        let lines = changes(&a, &da, &b, &db);
        assert!(
            lines[0].contains("10.0.0.4 Active -> Draining"),
            "{lines:?}"
        );
        let share: f64 = lines[1]
            .split_whitespace()
            .find_map(|w| w.strip_suffix('%'))
            .unwrap()
            .parse()
            .unwrap();
        assert!((20.0..30.0).contains(&share), "{lines:?}");
        assert!(
            changes(&a, &da, &a, &da).is_empty(),
            "the same config changes nothing"
        );
    }
}

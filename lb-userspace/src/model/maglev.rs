//! Weighted Maglev table construction (Eisenbud et al., NSDI 2016).
//!
//! It is pure, deterministic and independent of config order, so balancers with the same config
//! build the same table.

use lb_common::{hash_words, NO_BACKEND};

/// One backend as Maglev sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Value written into the table (the backend id in `BACKENDS`).
    pub id: u32,
    /// Stable identity of the backend (its address); decides its permutation. Ids differ
    /// between balancers, addresses do not.
    pub identity: [u8; 16],
    /// Relative share of table slots (> 0).
    pub weight: u32,
}

const OFFSET_SEED: u32 = 0x6d61_676c; // "magl"
const SKIP_SEED: u32 = 0x6576_3231; // "ev21"

fn words(identity: &[u8; 16]) -> [u32; 4] {
    core::array::from_fn(|i| u32::from_be_bytes(identity[i * 4..i * 4 + 4].try_into().unwrap()))
}

/// Builds a table of `size` slots (a prime) where each backend owns a share of slots
/// proportional to its weight. With no backends every slot is `NO_BACKEND`.
///
/// Weighting follows the credit scheme: in each round every backend earns its weight in credit
/// and claims one slot per `max_weight` of credit, so a backend of half the top weight claims a
/// slot every other round. Slot choice within a backend follows its Maglev permutation
/// `(offset + j * skip) mod size`, which is what keeps disruption minimal when backends change.
pub fn build(backends: &[Entry], size: u32) -> Vec<u32> {
    let mut table = vec![NO_BACKEND; size as usize];
    let mut list: Vec<Entry> = backends.iter().copied().filter(|b| b.weight > 0).collect();
    if list.is_empty() || size == 0 {
        return table;
    }
    // Order by identity, not by config position: two balancers must agree.
    list.sort_by_key(|b| b.identity);
    let m = u64::from(size);
    let perms: Vec<(u64, u64)> = list
        .iter()
        .map(|b| {
            let w = words(&b.identity);
            let offset = u64::from(hash_words(&w, OFFSET_SEED)) % m;
            let skip = u64::from(hash_words(&w, SKIP_SEED)) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = u64::from(list.iter().map(|b| b.weight).max().unwrap_or(1));
    let mut next = vec![0u64; list.len()];
    let mut credit = vec![0u64; list.len()];
    let mut filled = 0u64;
    loop {
        for (i, b) in list.iter().enumerate() {
            credit[i] += u64::from(b.weight);
            while credit[i] >= max_weight {
                credit[i] -= max_weight;
                let (offset, skip) = perms[i];
                let mut slot = ((offset + next[i] * skip) % m) as usize;
                while table[slot] != NO_BACKEND {
                    next[i] += 1;
                    slot = ((offset + next[i] * skip) % m) as usize;
                }
                table[slot] = b.id;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn backend(i: u32, weight: u32) -> Entry {
        let mut identity = [0u8; 16];
        identity[..4].copy_from_slice(&[10, 0, (i >> 8) as u8, i as u8]);
        Entry {
            id: i,
            identity,
            weight,
        }
    }

    fn shares(table: &[u32]) -> HashMap<u32, f64> {
        let mut n: HashMap<u32, f64> = HashMap::new();
        for id in table {
            *n.entry(*id).or_default() += 1.0;
        }
        n.values_mut().for_each(|v| *v /= table.len() as f64);
        n
    }

    #[test]
    fn each_share_is_within_one_percent_of_its_weight_share() {
        for weights in [
            vec![100; 3],
            vec![100, 50, 25, 200],
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            vec![100; 64],
        ] {
            let list: Vec<_> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| backend(i as u32, *w))
                .collect();
            let table = build(&list, 65537);
            let total: u32 = weights.iter().sum();
            let got = shares(&table);
            for b in &list {
                let want = f64::from(b.weight) / f64::from(total);
                let have = got.get(&b.id).copied().unwrap_or(0.0);
                assert!(
                    (have - want).abs() <= 0.01,
                    "weights {weights:?}: backend {} has {have:.4}, wants {want:.4}",
                    b.id
                );
            }
        }
    }

    #[test]
    fn removing_one_of_n_moves_at_most_its_share_plus_one_percent() {
        for n in [2u32, 3, 5, 10, 50] {
            let list: Vec<_> = (0..n).map(|i| backend(i, 100)).collect();
            let before = build(&list, 65537);
            for removed in [0, n / 2, n - 1] {
                let rest: Vec<_> = list.iter().copied().filter(|b| b.id != removed).collect();
                let after = build(&rest, 65537);
                let moved =
                    before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / 65537.0;
                let bound = 1.0 / f64::from(n) + 0.01;
                assert!(
                    moved <= bound,
                    "n={n} removed={removed}: moved {moved:.4} > {bound:.4}"
                );
            }
        }
    }

    #[test]
    fn adding_a_backend_moves_little() {
        let list: Vec<_> = (0..4).map(|i| backend(i, 100)).collect();
        let before = build(&list, 65537);
        let mut more = list.clone();
        more.push(backend(4, 100));
        let after = build(&more, 65537);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / 65537.0;
        assert!(moved <= 0.2 + 0.01, "moved {moved}");
    }

    #[test]
    fn config_order_does_not_matter() {
        let list: Vec<_> = (0..7).map(|i| backend(i, 10 + i)).collect();
        let mut reversed = list.clone();
        reversed.reverse();
        assert_eq!(build(&list, 1009), build(&reversed, 1009));
    }

    #[test]
    fn empty_and_single() {
        assert!(build(&[], 101).iter().all(|s| *s == NO_BACKEND));
        assert!(build(&[backend(7, 1)], 101).iter().all(|s| *s == 7));
    }
}

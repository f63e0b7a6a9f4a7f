//! A log-linear (HDR-style) latency histogram.
//!
//! `lab-client rate` records every exchange in it and reports percentiles, at a fixed few KiB
//! however many samples it holds.

/// Exact below this many µs; above, each power-of-two range is split into `SUB_BUCKETS / 2`
/// buckets, so a value is off by at most 1/64 (about 1.6%) at a fixed few KiB per histogram,
/// however many samples it holds.
const SUB_BUCKETS: u64 = 128;
const SUB_BITS: u32 = 7;
const HALF: u64 = SUB_BUCKETS / 2;

/// A log-linear (HDR-style) latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        // The largest u64 lands in the last bucket of exponent 63.
        let buckets = SUB_BUCKETS + (64 - u64::from(SUB_BITS)) * HALF;
        LatencyHistogram {
            counts: vec![0; buckets as usize],
            total: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB_BUCKETS {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros();
        let shift = exp - (SUB_BITS - 1);
        let top = (v >> shift) - HALF;
        (SUB_BUCKETS + u64::from(exp - SUB_BITS) * HALF + top) as usize
    }

    /// The middle of bucket `i`'s value range.
    fn value(i: usize) -> f64 {
        let i = i as u64;
        if i < SUB_BUCKETS {
            return i as f64;
        }
        let exp = (i - SUB_BUCKETS) / HALF + u64::from(SUB_BITS);
        let shift = exp - u64::from(SUB_BITS - 1);
        let top = (i - SUB_BUCKETS) % HALF + HALF;
        let low = top << shift;
        low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
    }

    pub fn record(&mut self, us: u64) {
        self.counts[Self::index(us)] += 1;
        self.total += 1;
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The value at quantile `q` (0..=1): the smallest bucket holding the `ceil(q·n)`th
    /// sample. 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i);
            }
        }
        unreachable!("rank is at most the total")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_exact_below_128_and_within_two_percent_above() {
        let mut h = LatencyHistogram::new();
        for v in 0..128 {
            assert_eq!(
                LatencyHistogram::value(LatencyHistogram::index(v)),
                v as f64
            );
        }
        for v in [
            128u64,
            129,
            1000,
            4095,
            4096,
            123_456,
            10_000_000,
            u64::MAX / 3,
        ] {
            let got = LatencyHistogram::value(LatencyHistogram::index(v));
            assert!(
                (got - v as f64).abs() / v as f64 <= 1.0 / 64.0,
                "{v} -> {got}"
            );
        }
        // Indices are monotonic and stay inside the table up to u64::MAX.
        let mut last = 0;
        for e in 0..64 {
            for v in [1u64 << e, (1u64 << e) | ((1u64 << e) - 1)] {
                let i = LatencyHistogram::index(v);
                assert!(i >= last);
                last = i;
            }
        }
        h.record(u64::MAX);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn histogram_quantiles_and_merge() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        assert_eq!(a.quantile(0.5), 0.0);
        for v in 1..=500 {
            a.record(v);
        }
        for v in 501..=1000 {
            b.record(v);
        }
        a.merge(&b);
        assert_eq!(a.len(), 1000);
        let near = |got: f64, want: f64| (got - want).abs() / want <= 0.02;
        assert!(near(a.quantile(0.5), 500.0), "{}", a.quantile(0.5));
        assert!(near(a.quantile(0.99), 990.0), "{}", a.quantile(0.99));
        assert!(near(a.quantile(1.0), 1000.0));
        assert_eq!(a.quantile(0.0), 1.0);
    }
}

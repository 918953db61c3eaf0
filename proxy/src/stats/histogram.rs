//! Fixed-bucket histograms with Envoy's default bucket bounds (milliseconds or bytes).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Envoy's default `histogram_bucket_settings` bounds.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

#[derive(Debug, Default)]
struct Cells {
    /// One count per bucket plus one for values above the last bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    /// Sum of recorded values, in thousandths of the unit.
    sum_milli: AtomicU64,
}

#[derive(Clone, Debug, Default)]
pub struct Histogram(Arc<Cells>);

/// A copy of a histogram's state for rendering.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Non-cumulative count per bucket; the last entry is the overflow bucket.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn new() -> Self {
        Histogram::default()
    }

    /// Records one value (in the histogram's unit, e.g. milliseconds).
    pub fn record(&self, v: f64) {
        let i = BUCKETS.iter().position(|b| v <= *b).unwrap_or(BUCKETS.len());
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0.sum_milli.fetch_add((v.max(0.0) * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            count: self.0.count.load(Ordering::Relaxed),
            sum: self.0.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }

    pub(crate) fn strong_count(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl Snapshot {
    /// Estimates the q-quantile (0..=1) by linear interpolation inside the bucket holding it.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let lo = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
                let hi = BUCKETS.get(i).copied().unwrap_or(lo * 2.0);
                let frac = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lo + (hi - lo) * frac);
            }
            seen += n;
        }
        Some(*BUCKETS.last().unwrap_or(&0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_into_buckets() {
        let h = Histogram::new();
        for v in [0.2, 3.0, 3.0, 20000.0, 9e9] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[2], 2);
        assert_eq!(s.buckets[13], 1);
        assert_eq!(s.buckets[19], 1);
        let p50 = s.quantile(0.5).unwrap();
        assert!((1.0..=5.0).contains(&p50), "{p50}");
    }
}

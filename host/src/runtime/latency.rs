//! A lock-free latency histogram: one atomic add per request, percentiles
//! read from log-scale buckets (four per power of two, so within 19%).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets cover 1 µs to about 2^28 µs (4.5 minutes).
const BUCKETS: usize = 28 * 4;

#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn bucket(micros: u64) -> usize {
    let micros = micros.max(1);
    let log2 = 63 - micros.leading_zeros() as usize;
    // Two bits below the leading one pick the quarter within the octave.
    let quarter = if log2 >= 2 {
        ((micros >> (log2 - 2)) & 3) as usize
    } else {
        ((micros << (2 - log2)) & 3) as usize
    };
    (log2 * 4 + quarter).min(BUCKETS - 1)
}

/// The upper bound of a bucket, in microseconds.
fn upper_bound(index: usize) -> u64 {
    let (log2, quarter) = (index / 4, (index % 4) as u64);
    let base = 1u64 << log2;
    base + (base * (quarter + 1)) / 4
}

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile (0..=1) as a duration, or `None` with no samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(upper_bound(index)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_land_within_a_bucket() {
        let h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).unwrap().as_micros() as f64;
        let p99 = h.quantile(0.99).unwrap().as_micros() as f64;
        assert!((500.0..=500.0 * 1.26).contains(&p50), "p50 {p50}");
        assert!((990.0..=990.0 * 1.26).contains(&p99), "p99 {p99}");
        assert!(Histogram::default().quantile(0.5).is_none());
    }

    #[test]
    fn buckets_are_monotonic() {
        let mut last = 0;
        for us in 1..100_000u64 {
            let b = bucket(us);
            assert!(b >= last);
            assert!(
                upper_bound(b) >= us,
                "{us} above its bucket's bound {}",
                upper_bound(b)
            );
            last = b;
        }
    }
}

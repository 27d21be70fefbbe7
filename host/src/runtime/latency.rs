//! A lock-free latency histogram: two atomic adds per request (a bucket and
//! the sum), percentiles read from log-scale buckets (four per power of two,
//! so within 19%), and cumulative counts for Prometheus buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets cover 1 µs to about 2^28 µs (4.5 minutes).
const BUCKETS: usize = 28 * 4;

#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    /// Every sample added up, in microseconds.
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

/// A histogram as Prometheus reads it: the sum and count of the samples,
/// and per upper bound (seconds; the last one infinite) the samples above
/// the previous bound and at most this one.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    pub sum_seconds: f64,
    pub count: u64,
    pub counts: Vec<(f64, u64)>,
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
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts under the bounds `bounds_s` (seconds, ascending), and one
    /// infinite bound for the rest. A log bucket goes under the first bound
    /// its whole range is below, so a sample is never counted under a bound
    /// it exceeds (it may be counted one bound late, by up to 19%).
    pub fn buckets(&self, bounds_s: &[f64]) -> Buckets {
        let mut counts: Vec<(f64, u64)> = bounds_s
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .map(|bound| (bound, 0))
            .collect();
        let mut total = 0;
        for (i, count) in self.counts.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            total += count;
            let upper_s = upper_bound(i) as f64 / 1e6;
            let slot = counts
                .iter_mut()
                .find(|(bound, _)| upper_s <= *bound)
                .expect("the infinite bound takes everything");
            slot.1 += count;
        }
        Buckets {
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: total,
            counts,
        }
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
    fn prometheus_buckets_never_count_a_sample_under_a_lower_bound() {
        let h = Histogram::default();
        for us in [50, 700, 1_100, 30_000] {
            h.record(Duration::from_micros(us));
        }
        h.record(Duration::from_secs(3));
        let b = h.buckets(&[0.001, 0.01, 1.0]);
        assert_eq!(b.count, 5);
        assert!((b.sum_seconds - 3.03185).abs() < 1e-9, "{}", b.sum_seconds);
        assert_eq!(
            b.counts,
            vec![(0.001, 2), (0.01, 1), (1.0, 1), (f64::INFINITY, 1)]
        );
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

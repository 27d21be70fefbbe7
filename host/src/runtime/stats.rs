//! What a plugin version counts about itself, for status and metrics:
//! atomics on the request path, copied out on demand.

use std::sync::atomic::{AtomicU64, Ordering};

use super::latency::{Buckets, Histogram};

/// Counters a plugin keeps about itself (shown by status endpoints).
#[derive(Debug, Default)]
pub struct PluginStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub overloaded: AtomicU64,
    /// Requests refused at once because the circuit was open.
    pub refused: AtomicU64,
    /// Instances created, the first of each slot included.
    pub instantiations: AtomicU64,
    pub in_flight: AtomicU64,
    /// Time from arrival at the plugin (queueing included) to the answer.
    pub latency: Histogram,
}

/// A point-in-time copy of a plugin's counters, for status and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub traps: u64,
    pub timeouts: u64,
    pub overloaded: u64,
    pub refused: u64,
    /// Instances thrown away after a trap or timeout and replaced.
    pub restarts: u64,
    pub instantiations: u64,
    pub in_flight: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl PluginStats {
    /// The latency histogram under Prometheus-style bounds, in seconds.
    pub fn latency_buckets(&self, bounds_s: &[f64]) -> Buckets {
        self.latency.buckets(bounds_s)
    }
}

impl PluginStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let ms = |q| self.latency.quantile(q).map(|d| d.as_secs_f64() * 1000.0);
        StatsSnapshot {
            requests: get(&self.requests),
            errors: get(&self.errors),
            traps: get(&self.traps),
            timeouts: get(&self.timeouts),
            overloaded: get(&self.overloaded),
            refused: get(&self.refused),
            restarts: get(&self.traps) + get(&self.timeouts),
            instantiations: get(&self.instantiations),
            in_flight: get(&self.in_flight),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

/// Counts a request as in flight while alive.
pub(super) struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    pub(super) fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

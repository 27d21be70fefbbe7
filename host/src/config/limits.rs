//! `defaults` and the per-plugin limits a manifest may override: time,
//! memory, concurrency, queueing, reuse, health checks and the circuit.

use serde::{Deserialize, Serialize};

/// When repeated failures open a plugin's circuit, and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Circuit {
    /// Failures (traps, timeouts, failed health checks, instances that do
    /// not start) within `window_ms` that open the circuit.
    pub failures: u32,
    pub window_ms: u64,
    /// How long the circuit stays open the first time; each time it opens
    /// again soon after closing, twice as long, up to `max_backoff_ms`.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for Circuit {
    fn default() -> Self {
        Circuit {
            failures: 5,
            window_ms: 10_000,
            backoff_ms: 1_000,
            max_backoff_ms: 60_000,
        }
    }
}

impl Circuit {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.failures == 0 {
            return Err("circuit.failures must be at least 1".into());
        }
        if self.window_ms == 0 || self.backoff_ms == 0 {
            return Err("circuit.window_ms and circuit.backoff_ms must be at least 1".into());
        }
        if self.max_backoff_ms < self.backoff_ms {
            return Err(format!(
                "circuit.max_backoff_ms ({}) must be at least circuit.backoff_ms ({})",
                self.max_backoff_ms, self.backoff_ms
            ));
        }
        Ok(())
    }
}

/// Limits that apply to each plugin; `defaults` in the config file, and the
/// same keys in a plugin's `NAME.yaml` manifest override them per plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest a request may run, queue time included. A request's own
    /// `timeout_ms` may only lower it.
    pub timeout_ms: u64,
    /// Linear memory one instance may grow to.
    pub memory_mb: u64,
    /// Requests that may run at once; each running request has an instance.
    pub max_concurrency: u32,
    /// Requests that may wait for a free instance before `overloaded`.
    pub max_queue: u32,
    /// Requests one instance serves before it is replaced by a fresh one.
    /// `1` means a new instance per request.
    pub reuse: u32,
    /// How often the host calls a plugin's `health` export, if it has one.
    pub health_interval_ms: u64,
    /// The largest result the plugin may answer; a larger one answers
    /// `too_large`.
    pub max_response_bytes: u64,
    /// How long an instance may sit idle before it is dropped.
    pub idle_ttl_ms: u64,
    /// Log lines a second the plugin may write (log, stdout and stderr
    /// together; bursts of five seconds' worth); more are dropped and
    /// counted.
    pub log_lines_per_s: u32,
    pub circuit: Circuit,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 5_000,
            memory_mb: 64,
            max_concurrency: 64,
            max_queue: 1_024,
            reuse: 10_000,
            health_interval_ms: 5_000,
            max_response_bytes: 16 << 20,
            idle_ttl_ms: 60_000,
            log_lines_per_s: 200,
            circuit: Circuit::default(),
        }
    }
}

/// The largest linear memory the engine reserves address space for.
pub const MAX_MEMORY_MB: u64 = 4_096;
/// Instances the engine's pool holds; the sum of all plugins' concurrency
/// cannot usefully exceed it.
pub const MAX_INSTANCES: u32 = 1_000;

impl Limits {
    pub fn validate(&self) -> Result<(), String> {
        let Limits {
            timeout_ms,
            memory_mb,
            max_concurrency,
            max_queue: _,
            reuse,
            health_interval_ms,
            max_response_bytes,
            idle_ttl_ms,
            log_lines_per_s,
            circuit,
        } = *self;
        if !(1..=3_600_000).contains(&timeout_ms) {
            return Err(format!(
                "timeout_ms must be between 1 and 3600000, not {timeout_ms}"
            ));
        }
        if !(1..=MAX_MEMORY_MB).contains(&memory_mb) {
            return Err(format!(
                "memory_mb must be between 1 and {MAX_MEMORY_MB}, not {memory_mb}"
            ));
        }
        if !(1..=MAX_INSTANCES).contains(&max_concurrency) {
            return Err(format!(
                "max_concurrency must be between 1 and {MAX_INSTANCES}, not {max_concurrency}"
            ));
        }
        if reuse == 0 {
            return Err("reuse must be at least 1 (1 means a fresh instance per request)".into());
        }
        if health_interval_ms < 10 {
            return Err(format!(
                "health_interval_ms must be at least 10, not {health_interval_ms}"
            ));
        }
        if log_lines_per_s == 0 {
            return Err("log_lines_per_s must be at least 1".into());
        }
        if idle_ttl_ms < 10 {
            return Err(format!(
                "idle_ttl_ms must be at least 10, not {idle_ttl_ms}"
            ));
        }
        if max_response_bytes < 1024 {
            return Err(format!(
                "max_response_bytes must be at least 1024, not {max_response_bytes}"
            ));
        }
        circuit.validate()
    }
}

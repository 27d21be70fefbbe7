//! Supervision of a loaded version: its periodic health checks, and the
//! circuit transitions that follow from them (see `circuit.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::circuit::{Check, Origin};
use super::plugin::Plugin;
use super::pool::Warm;

/// The last health check, for status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HealthStatus {
    /// Whether the plugin exports `health`.
    pub exported: bool,
    pub checks: u64,
    pub failures: u64,
    /// Seconds since the Unix epoch of the last check.
    pub last_checked_unix_s: Option<u64>,
    pub last_ok: Option<bool>,
    pub last_error: Option<String>,
}

impl Plugin {
    /// Runs this version's periodic health checks until it is retired; a
    /// check falls due early when the back-off of an opened circuit ends.
    pub async fn supervise(self: Arc<Self>) {
        if self.health_export.is_none() {
            return;
        }
        let mut retired = self.retired.subscribe();
        loop {
            let now = Instant::now();
            let mut wake = now + Duration::from_millis(self.limits().health_interval_ms);
            if let Some(until) = self.circuit.open_until(now) {
                wake = wake.min(until);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                // Opened since the sleep began: its back-off sets the time.
                _ = self.circuit_opened.notified() => continue,
                _ = retired.wait_for(|retired| *retired) => return,
            }
            tokio::select! {
                _ = self.check_health() => {}
                _ = retired.wait_for(|retired| *retired) => return,
            }
        }
    }

    /// Calls the `health` export once, if it has one and the circuit lets a
    /// check run now (closed, or its back-off over). A check that finds no
    /// free slot is skipped: a busy plugin is not a failing one.
    pub async fn check_health(&self) {
        if self.health_export.is_none() {
            return;
        }
        let now = Instant::now();
        if self.circuit.check(now) == Check::Skip {
            return;
        }
        let Ok(_permit) = self.slots.try_acquire() else {
            return;
        };
        let outcome = self.run_health(now).await;
        {
            let mut health = self.health.lock().expect("health lock");
            health.checks += 1;
            health.last_checked_unix_s = Some(super::unix_seconds(SystemTime::now()));
            health.last_ok = Some(outcome.is_ok());
            health.last_error = outcome.as_ref().err().cloned();
            if outcome.is_err() {
                health.failures += 1;
            }
        }
        let now = Instant::now();
        match outcome {
            Ok(()) => self.settle(self.circuit.success(now, Origin::Health)),
            Err(reason) => {
                tracing::warn!(plugin = %self.name, version = self.version(), "health check failed: {reason}");
                let reason = format!("health check failed: {reason}");
                self.settle(self.circuit.failure(now, Origin::Health, reason));
            }
        }
    }

    async fn run_health(&self, started: Instant) -> Result<(), String> {
        let timeout_ms = self.limits().timeout_ms;
        let deadline = started + Duration::from_millis(timeout_ms);
        let warm = self.idle.take_any();
        let mut warm = match warm {
            Some(warm) => warm,
            None => self
                .instantiate(deadline, timeout_ms)
                .await
                .map_err(|e| e.to_string())?,
        };
        if warm.health.is_none() {
            return Ok(());
        }
        // No application: `sql` answers `unavailable` during a check.
        warm.store.data_mut().log.begin_request();
        warm.store
            .data_mut()
            .sql
            .begin_request(Arc::from(""), None, deadline);
        warm.store.set_epoch_deadline(1);
        let Warm { store, health, .. } = &mut *warm;
        let check = health.as_ref().expect("checked above");
        let outcome = tokio::time::timeout_at(deadline.into(), check.call_check(&mut *store)).await;
        match outcome {
            Err(_elapsed) => Err(format!("no answer within {timeout_ms} ms")),
            Ok(Err(trap)) => Err(self.trap(trap, warm.store.data()).to_string()),
            Ok(Ok(verdict)) => {
                self.release(warm, Instant::now());
                verdict.map_err(|e| format!("{}: {}", e.code, e.message))
            }
        }
    }
}

//! A loaded plugin version: its `InstancePre`, its settings, a pool of warm
//! instances, its circuit breaker, and one call from admission to result.
//!
//! Instances are reused: a request takes an idle instance (or instantiates a
//! new one), and gives it back if the call ended normally and the instance
//! has served fewer than `reuse` requests. An instance that trapped, ran out
//! of time or memory is dropped, and the next request gets a fresh one: that
//! is restart on trap. `reuse: 1` gives a fresh instance per request.
//! Repeated failures open the circuit (see `circuit.rs`): requests are
//! refused at once until a probe succeeds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, Semaphore, SemaphorePermit, watch};
use wasmtime::component::{ComponentExportIndex, InstancePre, TypedFunc};
use wasmtime::{Store, Trap, UpdateDeadline};

use super::circuit::{Admission, Check, Circuit, CircuitSnapshot, Origin, Transition};
use super::latency::Histogram;
use super::state::StoreState;
use crate::bindings::{Context, Service, ServiceIndices, WitError};
use crate::config::Limits;
use crate::database::Database;
use crate::error::CallError;

/// Longest trap description passed on to a caller.
const MAX_TRAP_DETAIL: usize = 1024;

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

/// Everything a plugin version runs with besides its code: the manifest
/// over the host's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub limits: Limits,
    /// Actions callable without a token (from the manifest's `public`).
    pub public: Vec<String>,
    /// Whether the manifest grants the application's database.
    pub database: bool,
    /// What the plugin reads through the `config` interface.
    pub config: Arc<BTreeMap<String, String>>,
}

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

/// One request as the plugin sees it.
pub struct Call<'a> {
    pub ctx: Context,
    /// The request's application, and its database (used only if the
    /// plugin is granted it).
    pub app: Arc<str>,
    pub database: Option<Arc<Database>>,
    pub action: &'a str,
    pub params: &'a str,
    /// When the caller stops waiting; already capped by the plugin's own
    /// `timeout_ms`.
    pub deadline: Instant,
    /// The timeout the deadline was computed from, for error messages.
    pub timeout_ms: u64,
}

type HealthFunc = TypedFunc<(), (Result<(), WitError>,)>;

/// An instance with its store, ready for another request.
struct Warm {
    store: Store<StoreState>,
    service: Service,
    health: Option<HealthFunc>,
    served: u32,
}

pub struct Plugin {
    name: Arc<str>,
    pre: InstancePre<StoreState>,
    indices: ServiceIndices,
    /// The optional `health.check` export.
    health_export: Option<ComponentExportIndex>,
    settings: Settings,
    digest: String,
    slots: Semaphore,
    queued: AtomicU32,
    idle: Mutex<Vec<Warm>>,
    circuit: Circuit,
    /// Wakes the supervisor when the circuit opens.
    circuit_opened: Notify,
    health: Mutex<HealthStatus>,
    /// Flipped when a newer version replaces this one or it is undeployed:
    /// its supervisor stops; requests already running finish.
    retired: watch::Sender<bool>,
    loaded_at: SystemTime,
    /// Names the code and manifest together (see `deploy::deployment_id`).
    deployment: Option<String>,
    pub stats: PluginStats,
}

impl Plugin {
    pub(super) fn new(
        name: &str,
        pre: InstancePre<StoreState>,
        indices: ServiceIndices,
        health_export: Option<ComponentExportIndex>,
        settings: Settings,
        digest: String,
    ) -> Self {
        Plugin {
            name: name.into(),
            pre,
            indices,
            slots: Semaphore::new(settings.limits.max_concurrency as usize),
            circuit: Circuit::new(settings.limits.circuit),
            circuit_opened: Notify::new(),
            health: Mutex::new(HealthStatus {
                exported: health_export.is_some(),
                ..HealthStatus::default()
            }),
            health_export,
            settings,
            digest,
            queued: AtomicU32::new(0),
            idle: Mutex::new(Vec::new()),
            retired: watch::Sender::new(false),
            loaded_at: SystemTime::now(),
            deployment: None,
            stats: PluginStats::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limits(&self) -> &Limits {
        &self.settings.limits
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn database_granted(&self) -> bool {
        self.settings.database
    }

    pub fn is_public(&self, action: &str) -> bool {
        self.settings.public.iter().any(|a| a == action)
    }

    pub fn public_actions(&self) -> &[String] {
        &self.settings.public
    }

    /// The short form of the file's SHA-256 that status and logs show.
    pub fn version(&self) -> &str {
        &self.digest[..12]
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    pub fn set_deployment(&mut self, id: String) {
        self.deployment = Some(id);
    }

    pub fn deployment(&self) -> Option<&str> {
        self.deployment.as_deref()
    }

    pub fn has_health(&self) -> bool {
        self.health_export.is_some()
    }

    pub fn circuit(&self, now: Instant) -> CircuitSnapshot {
        self.circuit.snapshot(now)
    }

    pub fn health_status(&self) -> HealthStatus {
        self.health.lock().expect("health lock").clone()
    }

    /// Takes this version out of service: its supervisor stops, its idle
    /// instances go; requests already running finish on it.
    pub fn retire(&self) {
        self.retired.send_replace(true);
        self.idle.lock().expect("idle pool lock").clear();
    }

    pub fn is_retired(&self) -> bool {
        *self.retired.borrow()
    }

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

    /// Instantiates one instance and parks it in the pool: proves the plugin
    /// starts (its `health` export included), and spares the first request
    /// the instantiation.
    pub async fn warm_up(&self) -> Result<(), CallError> {
        let deadline = Instant::now() + Duration::from_millis(self.limits().timeout_ms);
        let warm = self.instantiate(deadline, self.limits().timeout_ms).await?;
        self.idle.lock().expect("idle pool lock").push(warm);
        Ok(())
    }

    /// Checks the circuit, then runs the request, then tells the circuit
    /// how it went.
    pub async fn call(&self, mut call: Call<'_>) -> Result<String, CallError> {
        let arrived = Instant::now();
        let probe = match self.circuit.admit(arrived) {
            Admission::Pass => false,
            Admission::Probe => true,
            Admission::Refuse { retry_after } => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(CallError::CircuitOpen {
                    service: self.name.to_string(),
                    retry_after,
                    last_failure: self.circuit.snapshot(arrived).last_failure,
                });
            }
        };
        let verdict = Verdict::new(&self.circuit, probe);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let result = self.run(&mut call).await;
        self.stats.latency.record(arrived.elapsed());
        if let Err(e) = &result {
            let counter = match e {
                CallError::Timeout { .. } => &self.stats.timeouts,
                CallError::Trap { .. } | CallError::MemoryLimit { .. } => &self.stats.traps,
                CallError::Overloaded { .. } => &self.stats.overloaded,
                _ => &self.stats.errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        // A caller that gave the plugin less than half its own limit and ran
        // out says little about the plugin; one that gave it a fair chance
        // does.
        let impatient = call.timeout_ms.saturating_mul(2) < self.limits().timeout_ms;
        match &result {
            Ok(_) | Err(CallError::Plugin { .. }) => self.settle(verdict.success()),
            Err(CallError::Timeout { .. }) if impatient => {}
            Err(e) if e.is_plugin_failure() => self.settle(verdict.failure(e.to_string())),
            // Overloaded: says nothing about the plugin's health.
            Err(_) => {}
        }
        result
    }

    /// Acts on a circuit transition: an opened circuit throws the idle
    /// instances away, so the probe runs on a fresh one.
    fn settle(&self, transition: Option<Transition>) {
        match transition {
            Some(Transition::Opened { backoff }) => {
                self.idle.lock().expect("idle pool lock").clear();
                self.circuit_opened.notify_one();
                let snapshot = self.circuit.snapshot(Instant::now());
                tracing::warn!(
                    plugin = %self.name,
                    version = self.version(),
                    backoff_ms = backoff.as_millis() as u64,
                    last_failure = snapshot.last_failure.as_deref().unwrap_or(""),
                    "circuit opened after repeated failures; refusing requests until a probe succeeds"
                );
            }
            Some(Transition::Closed) => {
                tracing::info!(plugin = %self.name, version = self.version(), "circuit closed: the plugin recovered");
            }
            None => {}
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
        let warm = self.idle.lock().expect("idle pool lock").pop();
        let mut warm = match warm {
            Some(warm) => warm,
            None => self
                .instantiate(deadline, timeout_ms)
                .await
                .map_err(|e| e.to_string())?,
        };
        let Some(check) = warm.health else {
            return Ok(());
        };
        // No application: `sql` answers `unavailable` during a check.
        warm.store.data_mut().log.begin_request();
        warm.store
            .data_mut()
            .sql
            .begin_request(Arc::from(""), None, deadline);
        warm.store.set_epoch_deadline(1);
        let outcome =
            tokio::time::timeout_at(deadline.into(), check.call_async(&mut warm.store, ())).await;
        match outcome {
            Err(_elapsed) => Err(format!("no answer within {timeout_ms} ms")),
            Ok(Err(trap)) => Err(self.trap(trap, warm.store.data()).to_string()),
            Ok(Ok((verdict,))) => {
                self.release(warm);
                verdict.map_err(|e| format!("{}: {}", e.code, e.message))
            }
        }
    }

    /// Runs one request: waits for a slot, takes an instance, calls the
    /// handler under the deadline, and answers the handler's JSON text.
    async fn run(&self, call: &mut Call<'_>) -> Result<String, CallError> {
        let _permit = self.admit(call.deadline).await?;
        let _in_flight = Gauge::enter(&self.stats.in_flight);

        let warm = self.idle.lock().expect("idle pool lock").pop();
        let mut warm = match warm {
            Some(warm) => warm,
            None => self.instantiate(call.deadline, call.timeout_ms).await?,
        };
        warm.store.data_mut().log.begin_request();
        warm.store.data_mut().sql.begin_request(
            call.app.clone(),
            call.database.clone(),
            call.deadline,
        );
        // An instance that sat idle across epoch ticks would otherwise yield
        // at its first check: start every call with a full tick.
        warm.store.set_epoch_deadline(1);
        call.ctx.time_left_ms = call
            .deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;

        let outcome = tokio::time::timeout_at(
            call.deadline.into(),
            warm.service.ferry_plugin_handler().call_handle(
                &mut warm.store,
                &call.ctx,
                call.action,
                call.params,
            ),
        )
        .await;

        // Every path below that does not return `warm` to the pool drops it,
        // which is how a failed instance is thrown away.
        match outcome {
            Err(_elapsed) => {
                tracing::warn!(plugin = %self.name, timeout_ms = call.timeout_ms, "request timed out; instance discarded");
                Err(self.timeout(call.timeout_ms))
            }
            Ok(Err(trap)) => Err(self.trap(trap, warm.store.data())),
            Ok(Ok(Err(e))) => {
                self.release(warm);
                Err(CallError::Plugin {
                    code: e.code,
                    message: e.message,
                })
            }
            Ok(Ok(Ok(json))) => {
                self.release(warm);
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&json) {
                    return Err(CallError::BadResult {
                        service: self.name.to_string(),
                        detail: e.to_string(),
                    });
                }
                Ok(json)
            }
        }
    }

    /// Takes a concurrency slot, waiting in the bounded queue if need be.
    async fn admit(&self, deadline: Instant) -> Result<SemaphorePermit<'_>, CallError> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
        let queued = self.queued.fetch_add(1, Ordering::Relaxed);
        let _leave = Decrement(&self.queued);
        if queued >= self.limits().max_queue {
            return Err(self.overloaded(format!(
                "{} requests running and {} waiting, the most it queues",
                self.limits().max_concurrency,
                self.limits().max_queue
            )));
        }
        match tokio::time::timeout_at(deadline.into(), self.slots.acquire()).await {
            Ok(permit) => Ok(permit.expect("plugin semaphore is never closed")),
            Err(_) => Err(self.overloaded(format!(
                "no free instance before the deadline ({} requests running)",
                self.limits().max_concurrency
            ))),
        }
    }

    async fn instantiate(&self, deadline: Instant, timeout_ms: u64) -> Result<Warm, CallError> {
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        let memory_bytes = (self.limits().memory_mb << 20) as usize;
        let mut store = Store::new(
            self.pre.engine(),
            StoreState::new(&self.name, memory_bytes, &self.settings),
        );
        store.limiter(|s| &mut s.limiter);
        // Yield to the scheduler at every epoch tick: a busy plugin cannot
        // hold a worker thread, and the deadline below can fire. Tokio's own
        // yield is used because it puts the task behind every other ready
        // task; a plain self-wake would be polled again first, letting a few
        // spinning plugins starve everyone else.
        store.epoch_deadline_callback(|_| {
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        store.set_epoch_deadline(1);

        let instantiated = tokio::time::timeout_at(deadline.into(), async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            let service = self.indices.load(&mut store, &instance)?;
            let health = match &self.health_export {
                Some(index) => Some(
                    instance
                        .get_typed_func::<(), (Result<(), WitError>,)>(&mut store, index)
                        .map_err(|e| {
                            e.context("its `health.check` export has the wrong type: it must be `func() -> result<_, error>`")
                        })?,
                ),
                None => None,
            };
            Ok::<_, wasmtime::Error>((service, health))
        })
        .await;
        match instantiated {
            Err(_elapsed) => Err(self.timeout(timeout_ms)),
            Ok(Ok((service, health))) => Ok(Warm {
                store,
                service,
                health,
                served: 0,
            }),
            Ok(Err(e)) => {
                if store.data().limiter.refused {
                    return Err(self.memory_limit());
                }
                let detail = format!("{e:#}");
                // The pooling allocator refuses when every slot is taken.
                if detail.contains("maximum concurrent") {
                    return Err(
                        self.overloaded(format!("the host has no free instance slot: {detail}"))
                    );
                }
                Err(CallError::Instantiate {
                    service: self.name.to_string(),
                    detail,
                })
            }
        }
    }

    /// Returns a healthy instance to the pool unless it reached its reuse cap.
    fn release(&self, mut warm: Warm) {
        warm.store.data_mut().end_request();
        warm.served += 1;
        if warm.served >= self.limits().reuse || self.is_retired() {
            return;
        }
        let mut idle = self.idle.lock().expect("idle pool lock");
        if idle.len() < self.limits().max_concurrency as usize {
            idle.push(warm);
        }
    }

    fn timeout(&self, ms: u64) -> CallError {
        CallError::Timeout {
            service: self.name.to_string(),
            ms,
        }
    }

    fn overloaded(&self, detail: String) -> CallError {
        CallError::Overloaded {
            service: self.name.to_string(),
            detail,
        }
    }

    fn memory_limit(&self) -> CallError {
        CallError::MemoryLimit {
            service: self.name.to_string(),
            limit_mb: self.limits().memory_mb,
        }
    }

    /// Turns a failed call into the error the caller sees, quoting the last
    /// error the plugin logged (the SDK logs panics there).
    fn trap(&self, error: wasmtime::Error, state: &StoreState) -> CallError {
        if state.limiter.refused {
            return self.memory_limit();
        }
        let mut detail = match error.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{error:#}"),
        };
        if let Some(logged) = state.log.last_error() {
            detail = format!("{detail} (last error it logged: {logged})");
        }
        tracing::warn!(plugin = %self.name, "instance discarded: {error:?}");
        CallError::Trap {
            service: self.name.to_string(),
            detail: crate::interfaces::log::truncate(&detail, MAX_TRAP_DETAIL).to_owned(),
        }
    }
}

/// A request's say in the circuit. Dropped without a verdict (the caller
/// went away, the plugin was overloaded), a probe is handed back so the
/// next request can probe.
struct Verdict<'a> {
    circuit: &'a Circuit,
    probe: bool,
    given: bool,
}

impl<'a> Verdict<'a> {
    fn new(circuit: &'a Circuit, probe: bool) -> Self {
        Verdict {
            circuit,
            probe,
            given: false,
        }
    }

    fn success(mut self) -> Option<Transition> {
        self.given = true;
        let origin = Origin::Request { probe: self.probe };
        self.circuit.success(Instant::now(), origin)
    }

    fn failure(mut self, reason: String) -> Option<Transition> {
        self.given = true;
        let origin = Origin::Request { probe: self.probe };
        self.circuit.failure(Instant::now(), origin, reason)
    }
}

impl Drop for Verdict<'_> {
    fn drop(&mut self) {
        if self.probe && !self.given {
            self.circuit.abandon_probe();
        }
    }
}

/// Decrements a counter when dropped, whatever path the function takes.
struct Decrement<'a>(&'a AtomicU32);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request as in flight while alive.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

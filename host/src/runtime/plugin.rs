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
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::poll_immediate;
use tokio::sync::{Notify, Semaphore, SemaphorePermit, watch};
use wasmtime::Trap;
use wasmtime::component::InstancePre;

use super::circuit::{Admission, Circuit, CircuitSnapshot, Origin, Transition};
use super::error::CallError;
use super::idle::{IdlePool, Instances};
use super::pool::EntryIndices;
use super::state::StoreState;
use super::stats::{Gauge, PluginStats};
use super::supervisor::HealthStatus;
use crate::capabilities::Shared;
use crate::capabilities::bindings::{EventHandlerIndices, HealthIndices, WitEvent};
use crate::capabilities::invocation::Context;
use crate::capabilities::log::LogBudget;
use crate::config::{Limits, Subscription};
use crate::core::Origin as CallOrigin;
use crate::resources::database::Database;

/// Longest trap description passed on to a caller.
const MAX_TRAP_DETAIL: usize = 1024;

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
    /// Topic patterns it may publish to.
    pub publish: Arc<Vec<String>>,
    /// What its `event-handler` is delivered.
    pub subscriptions: Arc<Vec<Subscription>>,
    /// Services it may call.
    pub calls: Arc<Vec<String>>,
    /// Broker queues whose messages call its actions.
    pub consume: Arc<Vec<crate::config::Consume>>,
}

/// What a call asks of the plugin.
pub enum Work<'a> {
    /// A request to `call-handler` (or `handler`).
    Request { action: &'a str, params: &'a str },
    /// An event for `event-handler`.
    Event(&'a WitEvent),
}

/// One request or event delivery as the plugin sees it.
pub struct Call<'a> {
    pub ctx: Context<'a>,
    /// The request's application, and its database (used only if the
    /// plugin is granted it).
    pub app: Arc<str>,
    pub database: Option<Arc<Database>>,
    pub work: Work<'a>,
    /// When the request reached the host: where its latency starts, and
    /// the circuit's clock as it is admitted (a clock read fewer per call).
    pub received: Instant,
    /// When the caller stops waiting; already capped by the plugin's own
    /// `timeout_ms`.
    pub deadline: Instant,
    /// The timeout the deadline was computed from, for error messages.
    pub timeout_ms: u64,
    /// Who made the call, and its trace.
    pub origin: CallOrigin,
}

pub struct Plugin {
    pub(super) name: Arc<str>,
    pub(super) pre: InstancePre<StoreState>,
    pub(super) entry: EntryIndices,
    /// The optional `health.check` export.
    pub(super) health_export: Option<HealthIndices>,
    /// The optional `event-handler.handle-event` export.
    pub(super) event_export: Option<EventHandlerIndices>,
    pub(super) settings: Settings,
    pub(super) digest: String,
    pub(super) slots: Semaphore,
    pub(super) queued: AtomicU32,
    pub(super) idle: Arc<IdlePool>,
    /// Log lines a second its instances may write, together.
    pub(super) log_budget: Arc<LogBudget>,
    /// Every version's idle instances, to free a slot when none is left.
    pub(super) instances: Arc<Instances>,
    /// The bus its `events` import publishes on, and the way to other
    /// services.
    pub(super) shared: Shared,
    pub(super) circuit: Circuit,
    /// Wakes the supervisor when the circuit opens.
    pub(super) circuit_opened: Notify,
    pub(super) health: Mutex<HealthStatus>,
    /// Flipped when a newer version replaces this one or it is undeployed:
    /// its supervisor stops; requests already running finish.
    pub(super) retired: watch::Sender<bool>,
    pub(super) loaded_at: SystemTime,
    /// Names the code and manifest together (see `deploy::deployment_id`).
    pub(super) deployment: Option<String>,
    pub stats: PluginStats,
}

impl Plugin {
    pub(super) fn new(
        name: &str,
        pre: InstancePre<StoreState>,
        entry: EntryIndices,
        health_export: Option<HealthIndices>,
        event_export: Option<EventHandlerIndices>,
        settings: Settings,
        digest: String,
        instances: Arc<Instances>,
        shared: Shared,
    ) -> Self {
        let idle = Arc::new(IdlePool::new(
            Duration::from_millis(settings.limits.idle_ttl_ms),
            settings.limits.max_concurrency as usize,
        ));
        instances.register(&idle);
        let log_budget = Arc::new(LogBudget::new(settings.limits.log_lines_per_s));
        Plugin {
            name: name.into(),
            pre,
            entry,
            slots: Semaphore::new(settings.limits.max_concurrency as usize),
            circuit: Circuit::new(settings.limits.circuit),
            circuit_opened: Notify::new(),
            health: Mutex::new(HealthStatus {
                exported: health_export.is_some(),
                ..HealthStatus::default()
            }),
            health_export,
            event_export,
            settings,
            digest,
            queued: AtomicU32::new(0),
            idle,
            log_budget,
            instances,
            shared,
            retired: watch::Sender::new(false),
            loaded_at: SystemTime::now(),
            deployment: None,
            stats: PluginStats::default(),
        }
    }

    /// The name, shared: for what outlives a borrow of the plugin.
    pub fn shared_name(&self) -> Arc<str> {
        self.name.clone()
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

    /// The world the plugin was built for, by its entry point: `plugin`
    /// (0.1.1 on) or `service` (0.1.0).
    pub fn world(&self) -> &'static str {
        match self.entry {
            EntryIndices::Request(_) | EntryIndices::Call(_) => "plugin",
            EntryIndices::Handler(_) => "service",
        }
    }

    /// Log lines dropped for being over the plugin's budget.
    pub fn log_dropped(&self) -> u64 {
        self.log_budget.dropped()
    }

    /// Instances parked, ready for a request.
    pub fn idle_instances(&self) -> usize {
        self.idle.len()
    }

    pub fn has_health(&self) -> bool {
        self.health_export.is_some()
    }

    pub fn has_event_handler(&self) -> bool {
        self.event_export.is_some()
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
        self.clear_idle();
    }

    pub fn is_retired(&self) -> bool {
        *self.retired.borrow()
    }

    pub async fn call(&self, call: Call<'_>) -> Result<String, CallError> {
        let arrived = call.received;
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
        let timeout_ms = call.timeout_ms;
        // One clock read when the plugin is done serves the latency, the
        // idle pool's timestamp and the circuit (a read costs tens of
        // nanoseconds under some hypervisors, several per request add up).
        let mut done = None;
        let result = self.run(call, &mut done).await;
        let done = done.unwrap_or_else(Instant::now);
        self.stats
            .latency
            .record(done.saturating_duration_since(arrived));
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
        let impatient = timeout_ms.saturating_mul(2) < self.limits().timeout_ms;
        match &result {
            Ok(_) | Err(CallError::Plugin { .. }) => self.settle(verdict.success(done)),
            Err(CallError::Timeout { .. }) if impatient => {}
            Err(e) if e.is_plugin_failure() => self.settle(verdict.failure(done, e.to_string())),
            // Overloaded: says nothing about the plugin's health.
            Err(_) => {}
        }
        result
    }

    /// Acts on a circuit transition: an opened circuit throws the idle
    /// instances away, so the probe runs on a fresh one.
    pub(super) fn settle(&self, transition: Option<Transition>) {
        match transition {
            Some(Transition::Opened { backoff }) => {
                self.clear_idle();
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

    /// Runs one request: waits for a slot, takes an instance, calls the
    /// handler under the deadline, and answers the handler's JSON text.
    /// `done` is set to when the handler returned, if it was called.
    async fn run(&self, call: Call<'_>, done: &mut Option<Instant>) -> Result<String, CallError> {
        let Call {
            ctx,
            app,
            database,
            work,
            received: _,
            deadline,
            timeout_ms,
            origin,
        } = call;
        let _permit = self.admit(deadline).await?;
        let _in_flight = Gauge::enter(&self.stats.in_flight);

        let warm = self.take_idle(&app);
        let mut warm = match warm {
            Some(warm) => warm,
            // Boxed: rare, and its state would double every call's.
            None => Box::pin(self.instantiate(deadline, timeout_ms)).await?,
        };
        warm.app = Some(app.clone());
        warm.store.data_mut().log.begin_request();
        warm.store.data_mut().events.begin_call(app.clone());
        warm.store
            .data_mut()
            .services
            .begin_call(&self.name, &app, &ctx, deadline, &origin);
        warm.store.data_mut().log.set_trace(origin.trace);
        let origin_trace = origin.trace;
        warm.store
            .data_mut()
            .sql
            .begin_request(app, database, deadline);
        // An instance that sat idle across epoch ticks would otherwise yield
        // at its first check: start every call with a full tick.
        warm.store.set_epoch_deadline(1);

        // Most calls are done at their first poll: the deadline's timer is
        // armed only for one that is not (a plugin waiting on the host, or
        // yielding at an epoch tick), which spares the common call the
        // timer and a move of the handler's state (a kilobyte) into it.
        let outcome = {
            let handling = warm.handle(ctx, deadline, origin, work);
            tokio::pin!(handling);
            match poll_immediate(handling.as_mut()).await {
                Some(done) => Some(done),
                // Out of time already (say, waiting for a slot took it all):
                // cut off now, as the timer would have at this poll.
                None if Instant::now() >= deadline => None,
                None => {
                    // Back to the scheduler first, as the plugin asked by
                    // yielding: the timer's first poll polls it again.
                    tokio::task::yield_now().await;
                    tokio::time::timeout_at(deadline.into(), handling)
                        .await
                        .ok()
                }
            }
        };
        let finished = *done.insert(Instant::now());

        // Every path below that does not return `warm` to the pool drops it,
        // which is how a failed instance is thrown away.
        match outcome {
            None => {
                tracing::warn!(plugin = %self.name, timeout_ms, trace = %origin_trace, "request timed out; instance discarded");
                Err(self.timeout(timeout_ms))
            }
            Some(Err(trap)) => {
                tracing::debug!(plugin = %self.name, trace = %origin_trace, "the call trapped");
                Err(self.trap(trap, warm.store.data()))
            }
            Some(Ok(Err(e))) => {
                self.release(warm, finished);
                Err(CallError::Plugin {
                    code: e.code,
                    message: e.message,
                })
            }
            Some(Ok(Ok(json))) => {
                self.release(warm, finished);
                let limit = self.limits().max_response_bytes;
                if json.len() as u64 > limit {
                    return Err(CallError::TooLarge {
                        service: self.name.to_string(),
                        bytes: json.len(),
                        limit,
                    });
                }
                if let Err(e) = crate::core::json::check_value(&json) {
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

    pub(super) fn timeout(&self, ms: u64) -> CallError {
        CallError::Timeout {
            service: self.name.to_string(),
            ms,
        }
    }

    pub(super) fn overloaded(&self, detail: String) -> CallError {
        CallError::Overloaded {
            service: self.name.to_string(),
            detail,
        }
    }

    pub(super) fn memory_limit(&self) -> CallError {
        CallError::MemoryLimit {
            service: self.name.to_string(),
            limit_mb: self.limits().memory_mb,
        }
    }

    /// Turns a failed call into the error the caller sees, quoting the last
    /// error the plugin logged (the SDK logs panics there).
    pub(super) fn trap(&self, error: wasmtime::Error, state: &StoreState) -> CallError {
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
            detail: crate::capabilities::log::truncate(&detail, MAX_TRAP_DETAIL).to_owned(),
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

    fn success(mut self, now: Instant) -> Option<Transition> {
        self.given = true;
        let origin = Origin::Request { probe: self.probe };
        self.circuit.success(now, origin)
    }

    fn failure(mut self, now: Instant, reason: String) -> Option<Transition> {
        self.given = true;
        let origin = Origin::Request { probe: self.probe };
        self.circuit.failure(now, origin, reason)
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

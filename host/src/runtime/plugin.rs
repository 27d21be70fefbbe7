//! A loaded plugin: its `InstancePre`, its limits, a pool of warm instances,
//! and one call from admission to result.
//!
//! Instances are reused: a request takes an idle instance (or instantiates a
//! new one), and gives it back if the call ended normally and the instance
//! has served fewer than `reuse` requests. An instance that trapped, ran out
//! of time or memory is dropped, and the next request gets a fresh one: that
//! is restart on trap. `reuse: 1` gives a fresh instance per request.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Semaphore, SemaphorePermit};
use wasmtime::{Store, Trap, UpdateDeadline};

use super::latency::Histogram;
use super::state::StoreState;
use crate::bindings::{Context, Service, ServicePre};
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
            restarts: get(&self.traps) + get(&self.timeouts),
            instantiations: get(&self.instantiations),
            in_flight: get(&self.in_flight),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
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

/// An instance with its store, ready for another request.
struct Warm {
    store: Store<StoreState>,
    service: Service,
    served: u32,
}

pub struct Plugin {
    name: Arc<str>,
    pre: ServicePre<StoreState>,
    limits: Limits,
    digest: String,
    slots: Semaphore,
    queued: AtomicU32,
    idle: Mutex<Vec<Warm>>,
    /// Actions callable without a token (from the manifest's `public`).
    public: Vec<String>,
    /// Whether the manifest grants the application's database.
    database: bool,
    pub stats: PluginStats,
}

impl Plugin {
    pub(super) fn new(
        name: &str,
        pre: ServicePre<StoreState>,
        limits: Limits,
        digest: String,
    ) -> Self {
        Plugin {
            name: name.into(),
            pre,
            slots: Semaphore::new(limits.max_concurrency as usize),
            limits,
            digest,
            queued: AtomicU32::new(0),
            idle: Mutex::new(Vec::new()),
            public: Vec::new(),
            database: false,
            stats: PluginStats::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Marks `actions` as callable without a token.
    pub fn set_public(&mut self, actions: Vec<String>) {
        self.public = actions;
    }

    /// Grants (or not) the application's database through `sql`.
    pub fn set_database_grant(&mut self, granted: bool) {
        self.database = granted;
    }

    pub fn database_granted(&self) -> bool {
        self.database
    }

    pub fn is_public(&self, action: &str) -> bool {
        self.public.iter().any(|a| a == action)
    }

    pub fn public_actions(&self) -> &[String] {
        &self.public
    }

    /// SHA-256 of the plugin's file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Instantiates one instance and parks it in the pool: proves the plugin
    /// starts, and spares the first request the instantiation.
    pub async fn warm_up(&self) -> Result<(), CallError> {
        let deadline = Instant::now() + std::time::Duration::from_millis(self.limits.timeout_ms);
        let warm = self.instantiate(deadline, self.limits.timeout_ms).await?;
        self.idle.lock().expect("idle pool lock").push(warm);
        Ok(())
    }

    /// Runs one request: waits for a slot, takes an instance, calls the
    /// handler under the deadline, and answers the handler's JSON text.
    pub async fn call(&self, mut call: Call<'_>) -> Result<String, CallError> {
        let arrived = Instant::now();
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let result = self.call_inner(&mut call).await;
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
        result
    }

    async fn call_inner(&self, call: &mut Call<'_>) -> Result<String, CallError> {
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
        if queued >= self.limits.max_queue {
            return Err(self.overloaded(format!(
                "{} requests running and {} waiting, the most it queues",
                self.limits.max_concurrency, self.limits.max_queue
            )));
        }
        match tokio::time::timeout_at(deadline.into(), self.slots.acquire()).await {
            Ok(permit) => Ok(permit.expect("plugin semaphore is never closed")),
            Err(_) => Err(self.overloaded(format!(
                "no free instance before the deadline ({} requests running)",
                self.limits.max_concurrency
            ))),
        }
    }

    async fn instantiate(&self, deadline: Instant, timeout_ms: u64) -> Result<Warm, CallError> {
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        let memory_bytes = (self.limits.memory_mb << 20) as usize;
        let mut store = Store::new(
            self.pre.engine(),
            StoreState::new(&self.name, memory_bytes, self.database),
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

        match tokio::time::timeout_at(deadline.into(), self.pre.instantiate_async(&mut store)).await
        {
            Err(_elapsed) => Err(self.timeout(timeout_ms)),
            Ok(Ok(service)) => Ok(Warm {
                store,
                service,
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
        if warm.served >= self.limits.reuse {
            return;
        }
        let mut idle = self.idle.lock().expect("idle pool lock");
        if idle.len() < self.limits.max_concurrency as usize {
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
            limit_mb: self.limits.memory_mb,
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

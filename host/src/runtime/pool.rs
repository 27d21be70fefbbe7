//! A version's warm instances: instantiating one (with its memory limit
//! and epoch yield), taking an idle one, and giving it back when it may
//! serve again. An instance that trapped, timed out or hit its memory limit
//! is never given back; dropping it is the restart.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wasmtime::component::Resource;
use wasmtime::{Store, UpdateDeadline};

use super::error::CallError;
use super::plugin::{Plugin, Work};
use super::state::StoreState;
use crate::capabilities::bindings::{
    CallHandler, CallHandlerIndices, EventHandler, Handler, HandlerIndices, Health, RequestHandler,
    RequestHandlerIndices, WitError, WitFailure,
};
use crate::capabilities::invocation::{CallInfo, Context};
use crate::core::Origin;

/// The engine had no free instance slot.
pub(super) struct Exhausted(String);

/// Which entry point a version exports, found when it is loaded.
pub enum EntryIndices {
    /// `request-handler` (the `plugin` world from 0.1.3): the plugin asks
    /// for the call when it reads it.
    Request(RequestHandlerIndices),
    /// `call-handler` (the `plugin` world of 0.1.1 and 0.1.2): the call is
    /// lent with the request, its fields read on demand.
    Call(CallHandlerIndices),
    /// `handler` (the `service` world of 0.1.0): the context is a record.
    Handler(HandlerIndices),
}

/// An instance's entry point.
pub(super) enum Entry {
    Request(RequestHandler),
    Call(CallHandler),
    Handler(Handler),
}

/// An instance with its store, ready for another request. Kept boxed from
/// its instantiation on: every request takes one out of the idle pool and
/// puts it back, and a box moves as a pointer where the struct (its entry
/// points' handles and all) is copied each time.
pub struct Warm {
    pub(super) store: Store<StoreState>,
    pub(super) entry: Entry,
    pub(super) health: Option<Health>,
    pub(super) events: Option<EventHandler>,
    pub(super) served: u32,
    /// The application it serves, once it has served one.
    pub(super) app: Option<Arc<str>>,
}

impl Warm {
    /// Calls the instance's entry point with one request, or its event
    /// handler with one event (which answers `null`, or its failure as an
    /// error with code `retry` or `reject`).
    pub(super) async fn handle(
        &mut self,
        ctx: Context<'_>,
        deadline: Instant,
        origin: Origin,
        work: Work<'_>,
    ) -> wasmtime::Result<Result<String, WitError>> {
        let Warm {
            store,
            entry,
            events,
            ..
        } = self;
        let (action, params) = match work {
            Work::Request { action, params } => (action, params),
            Work::Event(event) => {
                let Some(guest) = events else {
                    wasmtime::bail!("the plugin has no `event-handler` export");
                };
                let outcome = guest
                    .call_handle_event(&mut *store, event)
                    .await?
                    .map(|()| "null".to_owned())
                    .map_err(|failure| match failure {
                        WitFailure::Retry(message) => WitError {
                            code: "retry".into(),
                            message,
                        },
                        WitFailure::Reject(message) => WitError {
                            code: "reject".into(),
                            message,
                        },
                    });
                return Ok(outcome);
            }
        };
        match entry {
            Entry::Handler(guest) => {
                guest
                    .call_handle(&mut *store, &ctx.to_wit(deadline), action, params)
                    .await
            }
            Entry::Request(guest) => {
                lend(store, ctx, deadline, origin)?;
                guest.call_handle(&mut *store, action, params).await
            }
            Entry::Call(guest) => {
                let rep = lend(store, ctx, deadline, origin)?;
                let borrowed = Resource::<CallInfo>::new_borrow(rep);
                guest
                    .call_handle(&mut *store, borrowed, action, params)
                    .await
            }
        }
    }
}

/// Opens the instance's call entry to the plugin for one request.
fn lend(
    store: &mut Store<StoreState>,
    ctx: Context<'_>,
    deadline: Instant,
    origin: Origin,
) -> wasmtime::Result<u32> {
    let state = store.data_mut();
    state.call.lend(&mut state.table, ctx, deadline, origin)
}

impl Plugin {
    /// Instantiates one instance and parks it in the pool: proves the plugin
    /// starts (its `health` export included), and spares the first request
    /// the instantiation.
    pub async fn warm_up(&self) -> Result<(), CallError> {
        let deadline = Instant::now() + Duration::from_millis(self.limits().timeout_ms);
        let warm = self.instantiate(deadline, self.limits().timeout_ms).await?;
        self.idle.put(warm, Instant::now());
        Ok(())
    }

    /// An idle instance for a request of `app`, if one is parked.
    pub(super) fn take_idle(&self, app: &Arc<str>) -> Option<Box<Warm>> {
        self.idle.take(app)
    }

    /// Throws every idle instance away.
    pub(super) fn clear_idle(&self) {
        self.idle.clear();
    }

    /// A new instance. When the engine has no free instance slot, the
    /// longest-idle instance of any plugin is dropped to make one.
    pub(super) async fn instantiate(
        &self,
        deadline: Instant,
        timeout_ms: u64,
    ) -> Result<Box<Warm>, CallError> {
        let mut attempts = 0;
        loop {
            match self.instantiate_once(deadline, timeout_ms).await {
                Err(Exhausted(detail)) => {
                    attempts += 1;
                    if attempts > 3 || !self.instances.evict_one() {
                        return Err(self.overloaded(format!(
                            "the host has no free instance slot, and no idle instance to give one up: {detail}"
                        )));
                    }
                }
                Ok(outcome) => return outcome,
            }
        }
    }

    async fn instantiate_once(
        &self,
        deadline: Instant,
        timeout_ms: u64,
    ) -> Result<Result<Box<Warm>, CallError>, Exhausted> {
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        let memory_bytes = (self.limits().memory_mb << 20) as usize;
        let mut store = Store::new(
            self.pre.engine(),
            StoreState::new(
                &self.name,
                memory_bytes,
                &self.settings,
                &self.log_budget,
                &self.shared,
            ),
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
            let entry = match &self.entry {
                EntryIndices::Request(indices) => {
                    Entry::Request(indices.load(&mut store, &instance)?)
                }
                EntryIndices::Call(indices) => Entry::Call(indices.load(&mut store, &instance)?),
                EntryIndices::Handler(indices) => {
                    Entry::Handler(indices.load(&mut store, &instance)?)
                }
            };
            let health = match &self.health_export {
                Some(indices) => Some(indices.load(&mut store, &instance).map_err(|e| {
                    e.context("its `health.check` export has the wrong type: it must be `func() -> result<_, error>`")
                })?),
                None => None,
            };
            let events = match &self.event_export {
                Some(indices) => Some(indices.load(&mut store, &instance).map_err(|e| {
                    e.context("its `event-handler.handle-event` export has the wrong type")
                })?),
                None => None,
            };
            Ok::<_, wasmtime::Error>((entry, health, events))
        })
        .await;
        Ok(match instantiated {
            Err(_elapsed) => Err(self.timeout(timeout_ms)),
            Ok(Ok((entry, health, events))) => Ok(Box::new(Warm {
                store,
                entry,
                health,
                events,
                served: 0,
                app: None,
            })),
            Ok(Err(e)) => {
                if store.data().limiter.refused {
                    return Ok(Err(self.memory_limit()));
                }
                // The pooling allocator refuses when every slot is taken.
                if e.chain().any(|c| {
                    c.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                        .is_some()
                }) {
                    return Err(Exhausted(format!("{e:#}")));
                }
                Err(CallError::Instantiate {
                    service: self.name.to_string(),
                    detail: format!("{e:#}"),
                })
            }
        })
    }

    /// Returns a healthy instance, done at `done`, to the pool unless it
    /// reached its reuse cap.
    pub(super) fn release(&self, mut warm: Box<Warm>, done: Instant) {
        warm.store.data_mut().end_request();
        warm.served += 1;
        if warm.served >= self.limits().reuse || self.is_retired() {
            return;
        }
        if warm.store.data().call.kept_past_end() {
            tracing::warn!(plugin = %self.name, "instance discarded: it kept a handle of the request it answered (drop what `invocation.current` gives before returning)");
            return;
        }
        self.idle.put(warm, done);
    }
}

//! `ferry:plugin/services`: a plugin calling other services of its
//! application from inside a handler. The checks that belong to the caller
//! happen here (the manifest's `permissions.calls`, the depth of the
//! chain); everything else (routing, the callee's limits and deadline,
//! admission) is the pipeline's, reached through the narrow [`Dispatch`]
//! trait so that this layer never imports the one above it.
//!
//! A call is a future of the caller's own call: when the caller traps or
//! runs out of time, that future is dropped, and the calls it has in
//! flight with it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use serde::Serialize;

use super::bindings::{ServicesHost, ServicesRequest, WitError};
use super::invocation::Context;
use crate::core::{Caller, ErrorBody, Identity, Origin};

/// One call a plugin makes, as the pipeline runs it.
pub struct Nested {
    pub caller: Caller,
    pub service: String,
    pub action: String,
    pub params: String,
    pub timeout_ms: Option<u64>,
    /// The callee's request id, as JSON text.
    pub request_id: String,
}

/// What the pipeline offers capabilities that call services.
pub trait Dispatch: Send + Sync {
    fn dispatch(
        &self,
        call: Nested,
    ) -> Pin<Box<dyn Future<Output = Result<String, ErrorBody>> + Send + '_>>;
}

/// Calls made between one pair of services.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct PairCounts {
    pub calls: u64,
    pub errors: u64,
}

/// The host-wide end of `services`: the pipeline once it exists, the
/// depth limit, and the counts per caller and callee.
pub struct Switchboard {
    dispatch: OnceLock<Weak<dyn Dispatch>>,
    max_depth: u32,
    pairs: Mutex<BTreeMap<(String, String), PairCounts>>,
    next_id: AtomicU64,
}

impl Switchboard {
    pub fn new(max_depth: u32) -> Switchboard {
        Switchboard {
            dispatch: OnceLock::new(),
            max_depth,
            pairs: Mutex::default(),
            next_id: AtomicU64::new(0),
        }
    }

    /// Connects the pipeline, once it is built (it is built after the
    /// runtime that hands this to every plugin).
    pub fn connect(&self, dispatch: Weak<dyn Dispatch>) {
        let _ = self.dispatch.set(dispatch);
    }

    /// Calls per (caller, callee), for status and metrics.
    pub fn pairs(&self) -> Vec<(String, String, PairCounts)> {
        let pairs = self.pairs.lock().expect("pairs lock");
        pairs
            .iter()
            .map(|((from, to), c)| (from.clone(), to.clone(), *c))
            .collect()
    }

    fn count(&self, from: &str, to: &str, failed: bool) {
        let mut pairs = self.pairs.lock().expect("pairs lock");
        let entry = match pairs.get_mut(&(from.to_owned(), to.to_owned())) {
            Some(entry) => entry,
            None => pairs.entry((from.to_owned(), to.to_owned())).or_default(),
        };
        entry.calls += 1;
        entry.errors += u64::from(failed);
    }
}

impl Default for Switchboard {
    fn default() -> Self {
        Switchboard::new(8)
    }
}

/// Per-store state of the services interface.
pub struct ServicesState {
    plugin: Arc<str>,
    /// Services the manifest lets it call.
    grants: Arc<Vec<String>>,
    board: Arc<Switchboard>,
    /// What calls made during the current call carry; kept only for
    /// plugins that may call anyone.
    current: Option<Caller>,
}

fn error(code: &str, message: String) -> WitError {
    WitError {
        code: code.to_owned(),
        message,
    }
}

impl ServicesState {
    pub fn new(plugin: Arc<str>, grants: Arc<Vec<String>>, board: Arc<Switchboard>) -> Self {
        ServicesState {
            plugin,
            grants,
            board,
            current: None,
        }
    }

    /// Takes what the call about to be handled passes on to its calls.
    pub fn begin_call(
        &mut self,
        service: &str,
        app: &Arc<str>,
        ctx: &Context<'_>,
        deadline: Instant,
        origin: &Origin,
    ) {
        if self.grants.is_empty() {
            self.current = None;
            return;
        }
        self.current = Some(Caller {
            service: service.to_owned(),
            app: app.clone(),
            identity: Identity {
                subject: ctx.subject.clone(),
                tenant: ctx.tenant.as_deref().map(str::to_owned),
                claims: String::from(&*ctx.claims),
            },
            deadline,
            depth: origin.depth + 1,
            trace: origin.trace,
        });
    }

    /// Checks one call and makes it ready for the pipeline.
    fn prepare(&self, request: ServicesRequest) -> Result<Nested, WitError> {
        if !self.grants.iter().any(|g| *g == request.service) {
            return Err(error(
                "forbidden",
                format!(
                    "plugin `{}` may not call `{}`: list it in its manifest under `permissions: {{calls: [...]}}`",
                    self.plugin, request.service
                ),
            ));
        }
        let Some(caller) = &self.current else {
            return Err(error(
                "bad_request",
                "services can be called only while handling a request".into(),
            ));
        };
        if caller.depth > self.board.max_depth {
            return Err(error(
                "forbidden",
                format!(
                    "the chain of calls is {} deep, past max_call_depth ({}): `{}` may not call `{}`",
                    caller.depth, self.board.max_depth, self.plugin, request.service
                ),
            ));
        }
        if let Err(e) = crate::core::json::check_value(&request.params) {
            return Err(error(
                "bad_request",
                format!(
                    "the params of a call to `{}` are not JSON: {e}",
                    request.service
                ),
            ));
        }
        let n = self.board.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Nested {
            request_id: format!("\"{}-call-{n}\"", caller.trace),
            caller: caller.clone(),
            service: request.service,
            action: request.action,
            params: request.params,
            timeout_ms: request.timeout_ms,
        })
    }

    async fn run(board: &Switchboard, nested: Nested) -> Result<String, WitError> {
        let Some(dispatch) = board.dispatch.get().and_then(Weak::upgrade) else {
            return Err(error("unavailable", "the host is stopping".into()));
        };
        let (from, to) = (nested.caller.service.clone(), nested.service.clone());
        let outcome = dispatch.dispatch(nested).await;
        board.count(&from, &to, outcome.is_err());
        outcome.map_err(|e| error(&e.code, e.message))
    }
}

impl ServicesHost for ServicesState {
    async fn call(&mut self, request: ServicesRequest) -> Result<String, WitError> {
        let nested = self.prepare(request)?;
        ServicesState::run(&self.board, nested).await
    }

    async fn call_many(&mut self, requests: Vec<ServicesRequest>) -> Vec<Result<String, WitError>> {
        let board = self.board.clone();
        let calls = requests.into_iter().map(|request| {
            let prepared = self.prepare(request);
            let board = board.clone();
            async move {
                match prepared {
                    Ok(nested) => ServicesState::run(&board, nested).await,
                    Err(e) => Err(e),
                }
            }
        });
        futures_util::future::join_all(calls).await
    }
}

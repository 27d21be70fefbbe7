//! One way through for every request: a door hands over an
//! [`Invocation`], and [`Pipeline::invoke`] routes it (application, then
//! service, then the serving version), authenticates it, settles its
//! tenant, computes its deadline and runs it. Every check happens before
//! the plugin is touched, so a refused request costs the plugin nothing,
//! and limits and error codes are the same whichever door was used.

mod apps;
mod auth;
pub mod bridges;
pub mod cluster;
mod consumers;
mod subscriptions;
mod table;
mod trigger;
mod verified;
pub mod webhooks;

use std::borrow::Cow;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::Duration;

pub use apps::{App, Apps, Auth};
pub use subscriptions::SubscriptionStatus;
pub use table::{Rejection, Table};
use trigger::trigger;

use crate::capabilities::Shared;
use crate::capabilities::services::{Dispatch, Nested, PairCounts, Switchboard};
use crate::core::{DoorKind, ErrorBody, ErrorCode, Identity, Invocation, Origin, Route};
use crate::resources::bus::Bus;
use crate::resources::hooks::{Hook, Tracker};
use crate::resources::rabbitmq::Brokers;
use crate::runtime::{Call, Context, Plugin, Work};

pub struct Pipeline {
    table: Table,
    /// Every application's topics and their subscribers.
    bus: Arc<Bus>,
    /// The plugins' subscriptions on the bus.
    subscriptions: subscriptions::Subscriptions,
    /// Calls between services, counted per pair.
    switchboard: Arc<Switchboard>,
    /// Asynchronous requests still owed an answer.
    tracker: Arc<Tracker>,
    /// How long a request without a `timeout_ms` of its own waits for a
    /// service that is still loading: the config's default `timeout_ms`.
    loading_wait_ms: std::sync::atomic::AtomicU64,
    /// Swapped whole, so a request sees one consistent table; read without
    /// a lock.
    apps: ArcSwap<Apps>,
    /// The outgoing webhooks, once their outbox is open.
    webhooks: std::sync::OnceLock<Arc<webhooks::Webhooks>>,
    /// The RabbitMQ brokers, one connection each.
    brokers: Arc<Brokers>,
    /// Plugins' queue consumers.
    consumers: consumers::Consumers,
    /// Event topics bridged to brokers, once their outbox is open.
    bridges: std::sync::OnceLock<Arc<bridges::Bridges>>,
    /// The other hosts, in cluster mode.
    cluster: std::sync::OnceLock<Arc<cluster::Cluster>>,
}

impl Pipeline {
    pub fn new(apps: Apps, shared: Shared) -> Pipeline {
        Pipeline {
            table: Table::default(),
            bus: shared.bus,
            switchboard: shared.switchboard,
            tracker: Arc::default(),
            loading_wait_ms: std::sync::atomic::AtomicU64::new(5_000),
            subscriptions: Default::default(),
            apps: ArcSwap::from_pointee(apps),
            webhooks: std::sync::OnceLock::new(),
            brokers: Arc::default(),
            consumers: Default::default(),
            bridges: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// Set once at start-up, in cluster mode.
    pub fn set_cluster(&self, cluster: Arc<cluster::Cluster>) {
        self.bus.set_relay(cluster.clone(), cluster.name());
        let _ = self.cluster.set(cluster);
    }

    pub fn cluster(&self) -> Option<&Arc<cluster::Cluster>> {
        self.cluster.get()
    }

    /// Set once at start-up: the bus hands them the events they want.
    pub fn set_outboxes(&self, webhooks: Arc<webhooks::Webhooks>, bridges: Arc<bridges::Bridges>) {
        self.bus
            .set_keepers(vec![webhooks.clone(), bridges.clone()]);
        let _ = self.webhooks.set(webhooks);
        let _ = self.bridges.set(bridges);
    }

    pub fn webhooks(&self) -> Option<&Arc<webhooks::Webhooks>> {
        self.webhooks.get()
    }

    pub fn bridges(&self) -> Option<&Arc<bridges::Bridges>> {
        self.bridges.get()
    }

    pub fn brokers(&self) -> &Arc<Brokers> {
        &self.brokers
    }

    /// The brokers, consumers and bridges, for the status document.
    pub fn rabbitmq_status(&self) -> serde_json::Value {
        serde_json::json!({
            "brokers": self.brokers.all().iter().map(|b| b.status()).collect::<Vec<_>>(),
            "consumers": self.consumers.status(),
            "bridges": self.bridges().map(|b| b.status()).unwrap_or_default(),
        })
    }

    /// Starts and stops what delivers to plugins without a request (bus
    /// subscriptions, queue consumers) after a deploy or a reload.
    pub fn sync_triggers(self: &Arc<Self>) {
        self.sync_subscriptions();
        self.sync_consumers();
        if let Some(cluster) = self.cluster.get() {
            cluster.sync(self);
        }
    }

    /// The services: serving, failed, refused and draining versions.
    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// Plugin subscriptions with their counters, for status and metrics.
    pub fn subscriptions(&self) -> Vec<SubscriptionStatus> {
        self.subscriptions.snapshot()
    }

    /// Ends every plugin subscription and queue consumer (the host is
    /// stopping); consumers finish the messages they hold.
    pub fn stop_triggers(&self) {
        self.subscriptions.stop_all(self);
        self.consumers.stop_all();
        if let Some(cluster) = self.cluster.get() {
            cluster.stop();
        }
    }

    /// The application an events door acts for, once `token` is checked:
    /// publishing and consuming are protected like any action that is not
    /// public, so an application with keys needs a valid token (a trusted
    /// door excepted).
    pub fn events_app(
        &self,
        to: Route<'_>,
        token: Option<&str>,
        trusted: bool,
    ) -> Result<Arc<App>, ErrorBody> {
        let apps = self.apps.load();
        let app = route(&apps, to)?.clone();
        if let Auth::Jwt(jwt) = &app.auth {
            match token {
                Some(token) => {
                    jwt.verify(token)
                        .map_err(|e| ErrorBody::new(ErrorCode::Unauthorized, e.to_string()))?;
                }
                None if trusted => {}
                None => {
                    return Err(ErrorBody::new(
                        ErrorCode::Unauthorized,
                        format!("application `{}` needs a token for its events", app.name),
                    ));
                }
            }
        }
        Ok(app)
    }

    /// Sets how long requests without a `timeout_ms` wait for a service
    /// still loading (the config's `defaults.timeout_ms`).
    pub fn set_loading_wait(&self, ms: u64) {
        self.loading_wait_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Asynchronous requests: accepted, delivered, still tracked.
    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    /// Checks an asynchronous request before it is accepted: everything a
    /// request is checked for before it reaches a plugin, and that its
    /// application lets it name `reply_to` as its hook.
    pub fn accept_async(&self, inv: &Invocation<'_>, reply_to: &str) -> Result<Hook, ErrorBody> {
        let hook = Hook::parse(reply_to).map_err(|e| ErrorBody::new(ErrorCode::BadRequest, e))?;
        {
            let apps = self.apps.load();
            let app = route(&apps, inv.route)?;
            if !app.allows_hook(reply_to) {
                return Err(ErrorBody::new(
                    ErrorCode::Forbidden,
                    format!(
                        "application `{}` does not allow the response hook `{reply_to}` (its `reply_hooks`)",
                        app.name
                    ),
                ));
            }
        }
        self.prepare(inv)?;
        Ok(hook)
    }

    /// Calls per (caller, callee).
    pub fn call_pairs(&self) -> Vec<(String, String, PairCounts)> {
        self.switchboard.pairs()
    }

    pub fn apps(&self) -> Arc<Apps> {
        self.apps.load_full()
    }

    /// Replaces the application table (a config reload); requests already
    /// routed keep the table they started with.
    pub fn set_apps(&self, apps: Apps) {
        self.apps.store(Arc::new(apps));
    }

    /// Services an application lists for which there is no plugin file at
    /// all (a file that failed to load is `failed` instead).
    pub fn missing(&self) -> Vec<String> {
        let apps = self.apps();
        apps.listed_services()
            .into_iter()
            .filter(|s| !self.table.knows(s) && !self.table.is_loading(s))
            .map(str::to_owned)
            .collect()
    }

    /// Runs one invocation; answers the plugin's JSON result text, or the
    /// error to send.
    pub async fn invoke(&self, inv: &Invocation<'_>) -> Result<String, ErrorBody> {
        // A service still compiling at start-up: wait for it within the
        // request's time rather than refuse a request that would be
        // answered a moment later.
        let waited;
        let inv = if self.table.is_loading(inv.service) {
            let wait = inv.timeout_ms.unwrap_or_else(|| {
                self.loading_wait_ms
                    .load(std::sync::atomic::Ordering::Relaxed)
            });
            // Boxed, as the cluster's forward below: rare paths whose state
            // would otherwise grow every request's future, which each door
            // moves (and the socket door copies into a task) per request.
            Box::pin(
                self.table
                    .wait_loading(inv.service, inv.received + Duration::from_millis(wait)),
            )
            .await;
            if self.table.is_loading(inv.service) {
                return Err(ErrorBody {
                    retry_after_ms: Some(1_000),
                    ..ErrorBody::new(
                        ErrorCode::Unavailable,
                        format!(
                            "service `{}` is still loading (compiling); retry shortly",
                            inv.service
                        ),
                    )
                });
            }
            // The caller's time keeps counting from when it asked; the
            // plugin's own `timeout_ms` counts from now, when it can run.
            let now = std::time::Instant::now();
            let spent = now.duration_since(inv.received).as_millis() as u64;
            waited = Invocation {
                received: now,
                timeout_ms: inv.timeout_ms.map(|t| t.saturating_sub(spent).max(1)),
                ..*inv
            };
            &waited
        } else {
            inv
        };
        // In a cluster, a service this host does not serve is asked of the
        // hosts that do (a request another host forwarded is never sent
        // on again).
        if let Some(cluster) = self.cluster.get()
            && inv.door != DoorKind::Cluster
            && self.table.get(inv.service).is_none()
        {
            let apps = self.apps.load();
            if let Ok(app) = route(&apps, inv.route)
                && app.serves(inv.service)
            {
                let mut timeout_ms = inv.timeout_ms.unwrap_or_else(|| {
                    self.loading_wait_ms
                        .load(std::sync::atomic::Ordering::Relaxed)
                });
                if let Some(caller) = inv.caller {
                    let left = caller
                        .deadline
                        .saturating_duration_since(inv.received)
                        .as_millis() as u64;
                    timeout_ms = timeout_ms.min(left);
                }
                let (name, listed) = (app.name.clone(), app.lists(inv.service));
                drop(apps);
                return Box::pin(cluster.forward(&name, listed, inv, timeout_ms)).await;
            }
        }
        let call = match self.prepare(inv) {
            Ok(ready) => ready,
            Err(refused) => {
                tracing::debug!(
                    door = inv.door.as_str(),
                    service = inv.service,
                    action = inv.action,
                    code = refused.code,
                    "refused before reaching a plugin: {}",
                    refused.message
                );
                return Err(refused);
            }
        };
        let (plugin, call) = call;
        // Boxed: a plugin call's state is kilobytes, which every door's
        // per-request task would otherwise copy as it is spawned and moved.
        Box::pin(plugin.call(call)).await.map_err(ErrorBody::from)
    }

    /// Everything before the plugin: route, authenticate, settle the tenant
    /// and the deadline.
    fn prepare<'a>(&self, inv: &Invocation<'a>) -> Result<(Arc<Plugin>, Call<'a>), ErrorBody> {
        let apps = self.apps.load();
        let app = route(&apps, inv.route)?;
        let service = inv.service;
        if !app.serves(service) {
            return Err(ErrorBody::new(
                ErrorCode::NotFound,
                format!(
                    "application `{}` has no service named `{service}`",
                    app.name
                ),
            ));
        }
        let plugin = self.table.get(service).ok_or_else(|| {
            if app.lists(service) {
                ErrorBody::new(
                    ErrorCode::Unavailable,
                    format!("service `{service}` is configured but not loaded; see `ferry status`"),
                )
            } else {
                ErrorBody::new(
                    ErrorCode::NotFound,
                    format!(
                        "no service named `{service}` (loaded: {})",
                        self.table.names().join(", ")
                    ),
                )
            }
        })?;
        let (identity, tenant) = match inv.caller {
            // A plugin's call: the identity its request was verified with,
            // unchanged.
            Some(caller) => (
                Some(caller.identity.clone()),
                caller.identity.tenant.as_deref().map(Cow::Borrowed),
            ),
            None => {
                let identity = authenticate(app, &plugin, inv)?;
                let tenant = tenancy(identity.as_ref(), inv.tenant)?;
                (identity, tenant)
            }
        };
        let mut timeout_ms = match inv.timeout_ms {
            Some(0) => {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    "`timeout_ms` must be at least 1",
                ));
            }
            Some(asked) => asked.min(plugin.limits().timeout_ms),
            None => plugin.limits().timeout_ms,
        };
        let mut deadline = inv.received + Duration::from_millis(timeout_ms);
        let origin = match inv.caller {
            Some(caller) => {
                // Never later than the caller's own deadline.
                if caller.deadline < deadline {
                    deadline = caller.deadline;
                    timeout_ms = caller
                        .deadline
                        .saturating_duration_since(inv.received)
                        .as_millis() as u64;
                }
                Origin {
                    caller: Some(caller.service.clone()),
                    depth: caller.depth,
                    trace: caller.trace,
                }
            }
            None => Origin::outside(inv.trace),
        };
        let (subject, claims) = match identity {
            Some(Identity {
                subject, claims, ..
            }) => (subject, Cow::Owned(claims)),
            None => (None, Cow::Borrowed("{}")),
        };
        let call = Call {
            ctx: Context {
                request_id: Cow::Borrowed(inv.request_id),
                app: app.name.clone(),
                // The plugin's own name is the name it was found by.
                service: if plugin.name() == service {
                    plugin.shared_name()
                } else {
                    service.into()
                },
                tenant,
                subject,
                claims,
            },
            app: app.name.clone(),
            database: app.database.clone(),
            work: Work::Request {
                action: inv.action,
                params: inv.params,
            },
            received: inv.received,
            deadline,
            timeout_ms,
            origin,
        };
        Ok((plugin, call))
    }
}

/// A plugin's call: the caller's application, identity, deadline and
/// trace, through the same checks and limits as every other door.
impl Dispatch for Pipeline {
    fn dispatch(
        &self,
        call: Nested,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, ErrorBody>> + Send + '_>>
    {
        Box::pin(async move {
            let inv = Invocation {
                door: crate::core::DoorKind::Plugin,
                route: Route::Named {
                    app: Some(&call.caller.app),
                    default: None,
                },
                service: &call.service,
                action: &call.action,
                params: &call.params,
                request_id: &call.request_id,
                token: None,
                tenant: None,
                timeout_ms: call.timeout_ms,
                trusted: true,
                received: std::time::Instant::now(),
                trace: None,
                caller: Some(&call.caller),
            };
            self.invoke(&inv).await
        })
    }
}

/// The application an invocation belongs to: HTTP's `Host` header, or on
/// a socket the request's `app`, else the listener's default.
fn route<'a>(apps: &'a Apps, route: Route<'_>) -> Result<&'a Arc<App>, ErrorBody> {
    let unknown = |name: &str| {
        ErrorBody::new(
            ErrorCode::NotFound,
            format!(
                "no application named `{name}` (this host serves: {})",
                apps.names().join(", ")
            ),
        )
    };
    match route {
        Route::Host { host, named } => {
            let app = apps.for_host(host).ok_or_else(|| {
                ErrorBody::new(
                    ErrorCode::NotFound,
                    match host {
                        Some(host) => format!("no application serves host `{host}`"),
                        None => {
                            "the request has no Host header, which picks the application".into()
                        }
                    },
                )
            })?;
            match named {
                Some(named) if named != &*app.name => Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!(
                        "this host serves application `{}`, but the request names `{named}`",
                        app.name
                    ),
                )),
                _ => Ok(app),
            }
        }
        Route::Named { app, default } => match app.or(default) {
            Some(name) => apps.get(name).ok_or_else(|| unknown(name)),
            None => apps.socket_default().ok_or_else(|| {
                ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!(
                        "name the application with `app` (this host serves: {})",
                        apps.names().join(", ")
                    ),
                )
            }),
        },
    }
}

/// Checks the invocation's token against the application's keys. Answers
/// the verified identity, or `None` for a caller without a token where none
/// is needed: an open application, a public action, a trusted door.
fn authenticate(
    app: &App,
    plugin: &Plugin,
    inv: &Invocation<'_>,
) -> Result<Option<Identity>, ErrorBody> {
    let Auth::Jwt(jwt) = &app.auth else {
        return Ok(None);
    };
    match inv.token {
        // A token that is sent is checked even where none is needed: a bad
        // one is a client bug worth reporting, not something to ignore.
        Some(token) => jwt
            .verify(token)
            .map(Some)
            .map_err(|e| ErrorBody::new(ErrorCode::Unauthorized, e.to_string())),
        None if inv.trusted || plugin.is_public(inv.action) => Ok(None),
        None => Err(ErrorBody::new(
            ErrorCode::Unauthorized,
            format!(
                "`{}.{}` needs a token (`Authorization: Bearer` over HTTP, `token` on a socket)",
                plugin.name(),
                inv.action
            ),
        )),
    }
}

/// The tenant the request acts for. With a verified token it comes only
/// from the token: a tenant asked for that differs is `forbidden`.
fn tenancy<'a>(
    identity: Option<&Identity>,
    asked: Option<&'a str>,
) -> Result<Option<Cow<'a, str>>, ErrorBody> {
    let Some(identity) = identity else {
        return Ok(asked.map(Cow::Borrowed));
    };
    if let Some(asked) = asked
        && identity.tenant.as_deref() != Some(asked)
    {
        return Err(ErrorBody::new(
            ErrorCode::Forbidden,
            match &identity.tenant {
                Some(own) => format!("tenant_id `{asked}` contradicts the token's tenant `{own}`"),
                None => format!("tenant_id `{asked}` is not allowed: the token names no tenant"),
            },
        ));
    }
    Ok(identity.tenant.clone().map(Cow::Owned))
}

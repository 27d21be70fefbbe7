//! Cluster mode: hosts joined through NATS share their services. Every
//! host answers, for each service it serves in each application, on a
//! NATS queue subscription (`ferry.req.<app>.<service>`, queue group the
//! same), so the hosts serving one service share its requests. A request
//! that reaches a host for a service it does not serve itself goes over
//! NATS request/reply with its remaining deadline (`Ferry-Timeout-Ms`),
//! its trace (`traceparent`) and what it was sent with (token, tenant,
//! a calling plugin's identity) in an envelope; the serving host runs it
//! through its own pipeline, as if it had come through a door of its own,
//! and the answer comes back unchanged. NATS's "no responders" answers
//! `unavailable`. Hosts of one cluster trust each other: a forwarded
//! plugin call keeps its caller's verified identity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::client::RequestErrorKind;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use crate::config::ClusterConfig;
use crate::core::{Caller, DoorKind, ErrorBody, ErrorCode, Identity, Invocation, Route, TraceId};

const TIMEOUT_HEADER: &str = "Ferry-Timeout-Ms";
const TRACE_HEADER: &str = "traceparent";

fn subject(app: &str, service: &str) -> String {
    format!("ferry.req.{app}.{service}")
}

/// What travels with a forwarded request, besides its deadline and trace.
#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    app: &'a str,
    #[serde(borrow)]
    action: &'a str,
    #[serde(borrow)]
    params: &'a RawValue,
    #[serde(borrow)]
    request_id: &'a RawValue,
    token: Option<&'a str>,
    tenant: Option<&'a str>,
    trusted: bool,
    caller: Option<Calling>,
}

/// A calling plugin: its identity crosses unchanged.
#[derive(Serialize, Deserialize)]
struct Calling {
    service: String,
    subject: Option<String>,
    tenant: Option<String>,
    claims: String,
    depth: u32,
}

/// One (application, service) this host answers for.
struct Serving {
    stop: CancellationToken,
    ready: Arc<AtomicBool>,
}

pub struct Cluster {
    client: async_nats::Client,
    name: String,
    serving: Mutex<HashMap<(Arc<str>, String), Serving>>,
    forwarded: AtomicU64,
    forward_failures: AtomicU64,
    served: AtomicU64,
}

impl Cluster {
    /// Connects to NATS. A server that is not up yet is waited for in the
    /// background (requests meanwhile fail as `unavailable`), so the host
    /// starts either way.
    pub async fn connect(config: &ClusterConfig) -> Result<Arc<Cluster>, String> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("ferry {}", config.name))
            .retry_on_initial_connect()
            .max_reconnects(None::<usize>)
            // Forwarded requests carry their own deadlines.
            .request_timeout(None);
        if let Some(file) = &config.credentials_file {
            options = options
                .credentials_file(file)
                .await
                .map_err(|e| format!("cluster.credentials_file: {}: {e}", file.display()))?;
        }
        if let Some(var) = &config.token_env {
            let token = std::env::var(var).map_err(|_| {
                format!("cluster.token_env: environment variable `{var}` is not set")
            })?;
            options = options.token(token);
        }
        if let Some(file) = &config.ca_file {
            options = options.add_root_certificates(file.clone());
        }
        let urls: Vec<&str> = config.nats.split(',').map(str::trim).collect();
        let client = options
            .connect(urls.as_slice())
            .await
            .map_err(|e| format!("cluster.nats: cannot use {}: {e}", config.nats))?;
        Ok(Arc::new(Cluster {
            client,
            name: config.name.clone(),
            serving: Mutex::default(),
            forwarded: AtomicU64::new(0),
            forward_failures: AtomicU64::new(0),
            served: AtomicU64::new(0),
        }))
    }

    /// Sends `inv` to a host that serves its service in `app`.
    pub(super) async fn forward(
        &self,
        app: &str,
        listed: bool,
        inv: &Invocation<'_>,
        timeout_ms: u64,
    ) -> Result<String, ErrorBody> {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        let failed = |e: ErrorBody| {
            self.forward_failures.fetch_add(1, Ordering::Relaxed);
            Err(e)
        };
        let left = timeout_ms.saturating_sub(inv.received.elapsed().as_millis() as u64);
        if left == 0 {
            return failed(ErrorBody::new(
                ErrorCode::Timeout,
                format!("no time left to forward the request for `{}`", inv.service),
            ));
        }
        let bad = |what: &str| ErrorBody::new(ErrorCode::BadRequest, format!("{what} is not JSON"));
        let params = match serde_json::from_str::<&RawValue>(inv.params) {
            Ok(p) => p,
            Err(_) => return failed(bad("params")),
        };
        let request_id = match serde_json::from_str::<&RawValue>(inv.request_id) {
            Ok(r) => r,
            Err(_) => return failed(bad("the request id")),
        };
        let trace = inv
            .caller
            .map(|c| c.trace)
            .or(inv.trace)
            .unwrap_or_else(TraceId::new);
        let envelope = Envelope {
            app,
            action: inv.action,
            params,
            request_id,
            token: inv.token,
            tenant: inv.tenant,
            trusted: inv.trusted,
            caller: inv.caller.map(|c| Calling {
                service: c.service.clone(),
                subject: c.identity.subject.clone(),
                tenant: c.identity.tenant.clone(),
                claims: c.identity.claims.clone(),
                depth: c.depth,
            }),
        };
        let payload = serde_json::to_vec(&envelope).expect("serializes");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(TIMEOUT_HEADER, left.to_string().as_str());
        headers.insert(
            TRACE_HEADER,
            format!("00-{trace}-{:016x}-01", trace.span()).as_str(),
        );
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(payload.into())
            .timeout(Some(Duration::from_millis(left)));
        let service = inv.service;
        let answer = match self
            .client
            .send_request(subject(app, service), request)
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                let body = match e.kind() {
                    RequestErrorKind::NoResponders if listed => ErrorBody {
                        retry_after_ms: Some(1_000),
                        ..ErrorBody::new(
                            ErrorCode::Unavailable,
                            format!("no host of the cluster serves `{service}` now"),
                        )
                    },
                    RequestErrorKind::NoResponders => ErrorBody::new(
                        ErrorCode::NotFound,
                        format!("no service named `{service}` on any host of the cluster"),
                    ),
                    RequestErrorKind::TimedOut => ErrorBody::new(
                        ErrorCode::Timeout,
                        format!(
                            "service `{service}` did not answer within {timeout_ms} ms (forwarded)"
                        ),
                    ),
                    _ => ErrorBody::new(
                        ErrorCode::Unavailable,
                        format!("the cluster cannot be reached: {e}"),
                    ),
                };
                return failed(body);
            }
        };
        #[derive(Deserialize)]
        struct Answer<'a> {
            #[serde(borrow, default)]
            ok: Option<&'a RawValue>,
            #[serde(default)]
            error: Option<ErrorBody>,
        }
        match serde_json::from_slice::<Answer>(&answer.payload) {
            Ok(Answer { ok: Some(ok), .. }) => Ok(ok.get().to_owned()),
            Ok(Answer { error: Some(e), .. }) => Err(e),
            _ => failed(ErrorBody::new(
                ErrorCode::Internal,
                "a host of the cluster answered something that is not an answer",
            )),
        }
    }

    /// Answers for the services this host serves, per application; stops
    /// answering for those it no longer serves.
    pub(super) fn sync(self: &Arc<Self>, pipeline: &Arc<Pipeline>) {
        let apps = pipeline.apps();
        let mut wanted = Vec::new();
        for name in apps.names() {
            let Some(app) = apps.get(name) else { continue };
            for plugin in pipeline.table.plugins() {
                if app.serves(plugin.name()) {
                    wanted.push((app.name.clone(), plugin.name().to_owned()));
                }
            }
        }
        let mut serving = self.serving.lock().expect("serving lock");
        serving.retain(|key, s| {
            let keep = wanted.contains(key);
            if !keep {
                s.stop.cancel();
            }
            keep
        });
        for key in wanted {
            if serving.contains_key(&key) {
                continue;
            }
            let s = Serving {
                stop: CancellationToken::new(),
                ready: Arc::default(),
            };
            tokio::spawn(self.clone().answer(
                Arc::downgrade(pipeline),
                key.clone(),
                s.stop.clone(),
                s.ready.clone(),
            ));
            serving.insert(key, s);
        }
    }

    pub(super) fn stop(&self) {
        for (_, s) in self.serving.lock().expect("serving lock").drain() {
            s.stop.cancel();
        }
    }

    /// The queue subscription of one (application, service).
    async fn answer(
        self: Arc<Self>,
        pipeline: Weak<Pipeline>,
        (app, service): (Arc<str>, String),
        stop: CancellationToken,
        ready: Arc<AtomicBool>,
    ) {
        let subject = subject(&app, &service);
        let mut subscriber = loop {
            match self
                .client
                .queue_subscribe(subject.clone(), subject.clone())
                .await
            {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(subject, "cannot subscribe on NATS, trying again: {e}");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        // Ready once the server has it: a flush is a round trip.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                flushed = self.client.flush() => {
                    if flushed.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        ready.store(true, Ordering::Relaxed);
        tracing::info!(app = &*app, service, "answering for the cluster");
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = subscriber.unsubscribe().await;
                    return;
                }
                message = subscriber.next() => {
                    let Some(message) = message else { return };
                    let Some(pipeline) = pipeline.upgrade() else { return };
                    let this = self.clone();
                    let service = service.clone();
                    tokio::spawn(async move { this.serve(&pipeline, &service, message).await });
                }
            }
        }
    }

    /// Runs one forwarded request and sends its answer back.
    async fn serve(&self, pipeline: &Pipeline, service: &str, message: async_nats::Message) {
        let Some(reply) = message.reply.clone() else {
            return;
        };
        self.served.fetch_add(1, Ordering::Relaxed);
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let timeout_ms = header(TIMEOUT_HEADER).and_then(|t| t.parse::<u64>().ok());
        let trace = header(TRACE_HEADER).and_then(|t| TraceId::of_traceparent(&t));
        let outcome = match serde_json::from_slice::<Envelope>(&message.payload) {
            Err(e) => Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("not a forwarded request: {e}"),
            )),
            Ok(envelope) => {
                let received = Instant::now();
                let caller = envelope.caller.as_ref().map(|c| Caller {
                    service: c.service.clone(),
                    app: Arc::from(envelope.app),
                    identity: Identity {
                        subject: c.subject.clone(),
                        tenant: c.tenant.clone(),
                        claims: c.claims.clone(),
                    },
                    deadline: received + Duration::from_millis(timeout_ms.unwrap_or(0)),
                    depth: c.depth,
                    trace: trace.unwrap_or_else(TraceId::new),
                });
                let inv = Invocation {
                    door: DoorKind::Cluster,
                    route: Route::Named {
                        app: Some(envelope.app),
                        default: None,
                    },
                    service,
                    action: envelope.action,
                    params: envelope.params.get(),
                    request_id: envelope.request_id.get(),
                    token: envelope.token,
                    tenant: envelope.tenant,
                    timeout_ms,
                    trusted: envelope.trusted,
                    received,
                    trace,
                    caller: caller.as_ref(),
                };
                pipeline.invoke(&inv).await
            }
        };
        let body = match outcome {
            Ok(result) => format!(r#"{{"ok":{result}}}"#),
            Err(e) => json!({ "error": e }).to_string(),
        };
        let _ = self.client.publish(reply, body.into()).await;
    }

    /// This host in the cluster, for the status document.
    pub fn status(&self) -> Value {
        let serving = self.serving.lock().expect("serving lock");
        let mut answering: Vec<Value> = serving
            .iter()
            .map(|((app, service), s)| {
                json!({"app": &**app, "service": service, "ready": s.ready.load(Ordering::Relaxed)})
            })
            .collect();
        answering.sort_by_key(|v| (v["app"].to_string(), v["service"].to_string()));
        json!({
            "name": self.name,
            "connected": self.client.connection_state() == async_nats::connection::State::Connected,
            "answering": answering,
            "forwarded": self.forwarded.load(Ordering::Relaxed),
            "forward_failures": self.forward_failures.load(Ordering::Relaxed),
            "served_for_others": self.served.load(Ordering::Relaxed),
        })
    }
}

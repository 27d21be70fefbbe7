//! Requests across hosts: every host answers, for each service it serves
//! in each application, on a NATS queue subscription
//! (`ferry.req.<app>.<service>`, queue group the same), so the hosts
//! serving one service share its requests. A request for a service this
//! host does not serve goes over NATS request/reply with its remaining
//! deadline (`Ferry-Timeout-Ms`), its trace (`traceparent`) and what it
//! was sent with (token, tenant, a calling plugin's identity) in an
//! envelope; the serving host runs it through its own pipeline, and the
//! answer comes back unchanged. "No responders" answers `unavailable`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::client::RequestErrorKind;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::core::{Caller, DoorKind, ErrorBody, ErrorCode, Identity, Invocation, Route, TraceId};
use crate::pipeline::Pipeline;

const TIMEOUT_HEADER: &str = "Ferry-Timeout-Ms";
const TRACE_HEADER: &str = "traceparent";

pub(super) fn subject(app: &str, service: &str) -> String {
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

impl Cluster {
    /// Sends `inv` to a host that serves its service in `app`.
    pub(in crate::pipeline) async fn forward(
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
        // While NATS is away a request would only wait out its deadline in
        // the client's buffer: say at once that the cluster is out of reach.
        if !self.connected() {
            return failed(ErrorBody {
                retry_after_ms: Some(1_000),
                ..ErrorBody::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the cluster cannot be reached now (NATS is disconnected), and this host does not serve `{}`",
                        inv.service
                    ),
                )
            });
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

    /// The queue subscription of one (application, service).
    pub(super) async fn answer(
        self: Arc<Self>,
        pipeline: Weak<Pipeline>,
        (app, service): (Arc<str>, String),
        stop: CancellationToken,
        ready: Arc<AtomicBool>,
    ) {
        let subject = subject(&app, &service);
        let Some(mut subscriber) = self.subscribed(&subject, Some(&subject), &stop).await else {
            return;
        };
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
}

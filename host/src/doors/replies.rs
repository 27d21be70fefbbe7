//! Asynchronous requests and batches, for the socket door and `/v1/rpc`.
//!
//! A request with `reply_to` is checked as any other (route, token,
//! tenant, and the application's `reply_hooks`), answered at once with
//! `{"id", "status": "accepted"}`, and then run in a task of its own whose
//! response envelope goes to the hook; the pipeline's tracker counts it
//! until then, and SIGTERM waits for it. In cluster mode an `http://`
//! hook's answer goes into the cluster's stream instead, for any host to
//! deliver (`pipeline::cluster`).
//!
//! A batch (`{"id", "batch": {NAME: request, ...}, "timeout_ms"?}`) runs its
//! named requests at once under one deadline and answers each by name, in
//! one response.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::envelope::{self, NO_ID, Request};
use crate::core::{DoorKind, ErrorBody, ErrorCode, Invocation, Route};
use crate::pipeline::Pipeline;

/// Requests one batch may hold.
pub const MAX_BATCH: usize = 100;

/// Where the request came from, as the door knew it.
#[derive(Clone)]
pub struct Arrival {
    pub door: DoorKind,
    /// The socket's own service, for a service socket.
    pub service: Option<String>,
    /// The socket's default application.
    pub default_app: Option<String>,
    /// HTTP's `Host` header (the `/v1/rpc` door).
    pub host: Option<String>,
    pub trusted: bool,
    pub received: Instant,
}

impl Arrival {
    /// Runs `request` as it arrived.
    async fn invoke(
        &self,
        pipeline: &Pipeline,
        request: &Request<'_>,
    ) -> Result<String, ErrorBody> {
        pipeline.invoke(&self.invocation(request)?).await
    }

    /// `request` as the door-neutral invocation it is here.
    fn invocation<'r>(&'r self, request: &'r Request<'_>) -> Result<Invocation<'r>, ErrorBody> {
        let service = request.service(self.service.as_deref())?;
        Ok(request.invocation(
            self.door,
            self.route(request.app.as_deref()),
            service,
            self.trusted,
            self.received,
        ))
    }

    fn route<'a>(&'a self, named: Option<&'a str>) -> Route<'a> {
        match self.door {
            DoorKind::Http => Route::Host {
                host: self.host.as_deref(),
                named,
            },
            _ => Route::Named {
                app: named,
                default: self.default_app.as_deref(),
            },
        }
    }
}

/// Checks an asynchronous request and, when it may go ahead, starts it;
/// answers the `accepted` envelope to send now, or the refusal.
pub fn accept(
    pipeline: &Arc<Pipeline>,
    request: &Request<'_>,
    frame: &[u8],
    arrival: Arrival,
) -> Result<Vec<u8>, ErrorBody> {
    let id = request.id();
    let reply_to = request
        .reply_to
        .as_deref()
        .expect("an asynchronous request");
    let hook = pipeline.accept_async(&arrival.invocation(request)?, reply_to)?;
    let tracked = pipeline.tracker().begin();
    let (pipeline, frame) = (pipeline.clone(), frame.to_vec());
    tokio::spawn(async move {
        let answer = run_later(&pipeline, &frame, &arrival).await;
        let tracker = tracked.tracker();
        if answer.timed_out {
            tracker.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        // In a cluster the stream holds it from here, and any host
        // delivers it: this one may go.
        if let Some(cluster) = pipeline.cluster()
            && cluster.keep_reply(&hook, &answer.frame).await
        {
            tracker.to_cluster.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match hook.deliver(&answer.frame, tracker).await {
            Ok(_) => {
                tracker.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracker.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    request_id = answer.id,
                    hook = ?hook,
                    "the answer of an asynchronous request could not be delivered: {e}"
                );
            }
        }
        drop(tracked);
    });
    let mut out = Vec::with_capacity(32 + id.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"status\":\"accepted\"}");
    super::framing::seal(&mut out);
    Ok(out)
}

struct Answer {
    id: String,
    frame: Vec<u8>,
    timed_out: bool,
}

/// Runs an accepted request from its frame (parsed again: the task owns
/// the bytes, not the connection's borrowed view of them).
async fn run_later(pipeline: &Pipeline, frame: &[u8], arrival: &Arrival) -> Answer {
    let request = match Request::parse(frame) {
        Ok(request) => request,
        Err(bad) => {
            let error = ErrorBody::new(ErrorCode::BadRequest, bad.message);
            return Answer {
                id: bad.id.to_owned(),
                frame: envelope::error_frame(bad.id, &error),
                timed_out: false,
            };
        }
    };
    let result = arrival.invoke(pipeline, &request).await;
    let id = request.id().to_owned();
    match result {
        Ok(result) => Answer {
            frame: envelope::success_frame(&id, &result),
            id,
            timed_out: false,
        },
        Err(error) => Answer {
            frame: envelope::error_frame(&id, &error),
            timed_out: error.code == ErrorCode::Timeout.as_str(),
            id,
        },
    }
}

/// A batch frame.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch<'a> {
    /// Optional over HTTP (`/v1/batch`).
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    batch: BTreeMap<Cow<'a, str>, &'a RawValue>,
    /// Bounds every request of the batch.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Whether the frame is a batch (an object with a `batch` key), answered
/// by [`run_batch`].
pub fn is_batch(frame: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        batch: Option<&'a RawValue>,
    }
    serde_json::from_slice::<Probe>(frame).is_ok_and(|p| p.batch.is_some())
}

/// Runs a batch and answers its response envelope:
/// `{"id", "status": "success", "batch": {NAME: response, ...}}`, each
/// response `{"status": "success", "result"}` or `{"status": "error",
/// "error"}`; or, for a batch that cannot run at all, the error (and the
/// id to answer it under).
pub async fn run_batch(
    pipeline: &Pipeline,
    frame: &[u8],
    arrival: &Arrival,
) -> Result<Vec<u8>, (String, ErrorBody)> {
    let batch: Batch = serde_json::from_slice(frame).map_err(|e| {
        (
            NO_ID.to_owned(),
            ErrorBody::new(ErrorCode::BadRequest, format!("invalid batch: {e}")),
        )
    })?;
    let id = batch.id.map_or(NO_ID, RawValue::get);
    if batch.batch.len() > MAX_BATCH {
        let error = ErrorBody::new(
            ErrorCode::TooLarge,
            format!(
                "a batch holds at most {MAX_BATCH} requests, not {}",
                batch.batch.len()
            ),
        );
        return Err((id.to_owned(), error));
    }
    // Each entry is a request envelope without `id` (its name is its id).
    let entries: Vec<(String, Vec<u8>)> = batch
        .batch
        .iter()
        .map(|(name, raw)| {
            let name_json = serde_json::to_string(name).expect("a string serializes");
            let mut text = raw.get().trim().to_owned();
            if text.starts_with('{') && text.len() > 1 {
                let rest = text[1..].trim_start();
                let separator = if rest.starts_with('}') { "" } else { "," };
                text = format!("{{\"id\":{name_json}{separator}{rest}");
            }
            (name.to_string(), text.into_bytes())
        })
        .collect();
    let runs = entries.iter().map(|(name, entry)| async move {
        let outcome = match Request::parse(entry) {
            Err(bad) => Err(ErrorBody::new(ErrorCode::BadRequest, bad.message)),
            Ok(mut request) => {
                if let Some(limit) = batch.timeout_ms {
                    request.timeout_ms = Some(request.timeout_ms.map_or(limit, |t| t.min(limit)));
                }
                arrival.invoke(pipeline, &request).await
            }
        };
        (name.as_str(), outcome)
    });
    let outcomes = futures_util::future::join_all(runs).await;
    let mut out = Vec::new();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"status\":\"success\",\"batch\":{");
    for (i, (name, outcome)) in outcomes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, name).expect("a string serializes");
        match outcome {
            Ok(result) => {
                out.extend_from_slice(b":{\"status\":\"success\",\"result\":");
                out.extend_from_slice(result.as_bytes());
                out.push(b'}');
            }
            Err(error) => {
                out.extend_from_slice(b":{\"status\":\"error\",\"error\":");
                serde_json::to_writer(&mut out, error).expect("an error serializes");
                out.push(b'}');
            }
        }
    }
    out.extend_from_slice(b"}}");
    super::framing::seal(&mut out);
    Ok(out)
}

/// The batch frame with `token` given to every request that names none
/// (the `Authorization` header of `/v1/batch`); the frame as it is when it
/// is not a batch.
pub fn with_token(frame: &[u8], token: &str) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(frame) else {
        return frame.to_vec();
    };
    if let Some(batch) = value.get_mut("batch").and_then(|b| b.as_object_mut()) {
        for entry in batch.values_mut() {
            if let Some(entry) = entry.as_object_mut() {
                entry
                    .entry("token")
                    .or_insert_with(|| serde_json::Value::String(token.to_owned()));
            }
        }
    }
    serde_json::to_vec(&value).unwrap_or_else(|_| frame.to_vec())
}

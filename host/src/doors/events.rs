//! The events socket, `events.sock` beside the main socket: outside
//! programs consume an application's events (and may publish) in
//! newline-delimited JSON, one object per line with a `type`, the protocol
//! of the event bus Ferry replaces (see PROTOCOL.md). Each connection says
//! `hello` once (which application, which topics, under which key), then
//! gets `event` lines with its own `seq`. Lines over 1 MiB are refused; a
//! consumer whose socket does not drain within the write timeout is
//! disconnected, and the bus drops its oldest events meanwhile, so no
//! consumer can slow a publisher or another consumer.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Semaphore;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::unix::{Admission, Listener, Listening, PeerConnections, turn_away};
use crate::core::names::{valid_topic, valid_topic_pattern};
use crate::core::{ErrorBody, ErrorCode, Route};
use crate::pipeline::{App, Pipeline};
use crate::resources::bus::{MAX_PAYLOAD, Subscriber};

/// Longest line a client may send.
pub const MAX_LINE: usize = 1 << 20;

/// Version of this protocol, in `hello_ack`.
const BUS_VERSION: u32 = 1;

/// Longest consumer name or event key.
const MAX_NAME: usize = 256;

/// How the events socket serves its consumers (who may connect, the
/// default application and trust are its `Listener`'s, as on every socket).
#[derive(Clone, Copy)]
pub struct EventsSettings {
    pub queue: usize,
    pub write_timeout: Duration,
}

/// A line a client sends.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientLine {
    Hello {
        consumer: String,
        event_key: String,
        #[serde(default)]
        topics: Vec<String>,
        #[serde(default)]
        app: Option<String>,
        #[serde(default)]
        token: Option<String>,
    },
    PreShutdownCheck {
        event_key: String,
    },
    // Empty structs rather than unit variants: only struct variants of an
    // internally tagged enum refuse unknown fields.
    StatusQuery {},
    Publish {
        topic: String,
        // A `Value`, not a borrowed `RawValue`: serde buffers the fields of
        // an internally tagged enum, which a `RawValue` cannot come from.
        payload: serde_json::Value,
    },
    Bye {},
}

/// What a connection shares with the others.
struct Shared {
    pipeline: Arc<Pipeline>,
    settings: EventsSettings,
    listening: Arc<Listening>,
    started: Instant,
    shutdown: CancellationToken,
}

/// Accepts consumers until shutdown; each connection's task is tracked in
/// `tasks`, so shutdown waits for every `shutdown` line to be sent.
pub async fn serve(
    listener: Listener,
    pipeline: Arc<Pipeline>,
    settings: EventsSettings,
    connections: Arc<Semaphore>,
    peers: Arc<PeerConnections>,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        pipeline,
        settings,
        listening: listener.listening.clone(),
        started: Instant::now(),
        shutdown: shutdown.clone(),
    });
    let tasks = TaskTracker::new();
    while let Some(admission) = listener.admit(&connections, &peers, &shutdown).await {
        match admission {
            Admission::Admitted {
                stream,
                permit,
                peer,
            } => {
                let shared = shared.clone();
                tasks.spawn(async move {
                    session(stream, &shared).await;
                    drop((permit, peer));
                });
            }
            Admission::Refused {
                stream,
                permit,
                code,
                reason,
            } => {
                tasks.spawn(turn_away(
                    stream,
                    error_line(code.as_str(), &reason),
                    permit,
                ));
            }
        }
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

fn error_line(code: &str, message: &str) -> Vec<u8> {
    let mut line = json!({"type": "error", "code": code, "message": message}).to_string();
    line.push('\n');
    line.into_bytes()
}

fn line(value: serde_json::Value) -> Vec<u8> {
    let mut line = value.to_string();
    line.push('\n');
    line.into_bytes()
}

/// Waits until the subscriber has events queued; without one, forever.
async fn queued(subscriber: Option<&Arc<Subscriber>>) {
    match subscriber {
        Some(subscriber) => subscriber.ready.notified().await,
        None => std::future::pending().await,
    }
}

/// What one client line asks for.
enum Step {
    Reply(Vec<u8>),
    /// A publish ack, sent once the event's webhook deliveries are durable.
    ReplyWhenKept(Vec<u8>, Kept),
    Close(Vec<u8>),
}

/// What resolves once a published event's deliveries are in the outbox.
pub type Kept = Option<tokio::sync::oneshot::Receiver<()>>;

/// Waits for `kept`; `false` when the host stopped before the write.
pub async fn kept(kept: Kept) -> bool {
    match kept {
        None => true,
        Some(done) => done.await.is_ok(),
    }
}

/// Answers read but not yet sent, in the order of their lines: a publish
/// ack waits for its event to be kept, and whatever came after it waits
/// behind it, while the lines after it are already read and handled. So a
/// client that sends many publishes gets many events into one outbox
/// commit instead of one commit per line.
#[derive(Default)]
struct Owed(std::collections::VecDeque<(Vec<u8>, Kept)>);

/// Publishes one connection may have waiting for their acks before the
/// host stops reading its lines.
const MAX_OWED: usize = 1024;

const NOT_KEPT: &str = "the host is stopping; the event may not reach its webhooks";

impl Owed {
    /// Resolves once the first answer owed is ready to go; `false` when its
    /// event could not be kept.
    async fn first_ready(&mut self) -> bool {
        match self.0.front_mut() {
            Some((_, Some(done))) => done.await.is_ok(),
            _ => true,
        }
    }

    /// The first answer (whose readiness `first_ready` said) and every one
    /// after it that is ready too, as one buffer.
    fn take_ready(&mut self, first_kept: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut first = Some(first_kept);
        while let Some((_, kept)) = self.0.front_mut() {
            let ok = match (first.take(), kept) {
                (Some(ok), _) => ok,
                (None, None) => true,
                (None, Some(done)) => match done.try_recv() {
                    Ok(()) => true,
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => false,
                },
            };
            let (reply, _) = self.0.pop_front().expect("a front");
            if ok {
                out.extend_from_slice(&reply);
            } else {
                out.extend_from_slice(&error_line(ErrorCode::Unavailable.as_str(), NOT_KEPT));
            }
        }
        out
    }
}

async fn session(stream: UnixStream, shared: &Shared) {
    let (read, mut write) = stream.into_split();
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(MAX_LINE));
    let mut subscriber: Option<Arc<Subscriber>> = None;
    let mut out = Vec::new();
    let mut owed = Owed::default();
    loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => {
                let bye = line(json!({"type": "shutdown"}));
                let _ = tokio::time::timeout(Duration::from_secs(1), write.write_all(&bye)).await;
                break;
            }
            kept = owed.first_ready(), if !owed.0.is_empty() => {
                let ready = owed.take_ready(kept);
                if !send(&mut write, &ready, shared).await {
                    break;
                }
            }
            next = lines.next(), if owed.0.len() < MAX_OWED => {
                let step = match next {
                    None => break,
                    Some(Err(LinesCodecError::MaxLineLengthExceeded)) => Step::Close(error_line(
                        ErrorCode::TooLarge.as_str(),
                        &format!("a line is over the limit of {MAX_LINE} bytes"),
                    )),
                    Some(Err(LinesCodecError::Io(_))) => break,
                    Some(Ok(text)) => handle(&text, &mut subscriber, shared),
                };
                match step {
                    Step::ReplyWhenKept(reply, done) => owed.0.push_back((reply, done)),
                    // Behind the acks still owed, to keep the order.
                    Step::Reply(reply) if !owed.0.is_empty() => owed.0.push_back((reply, None)),
                    Step::Reply(reply) => {
                        if !send(&mut write, &reply, shared).await {
                            break;
                        }
                    }
                    Step::Close(reply) => {
                        while !owed.0.is_empty() {
                            let kept = owed.first_ready().await;
                            let ready = owed.take_ready(kept);
                            if !send(&mut write, &ready, shared).await {
                                break;
                            }
                        }
                        let _ = send(&mut write, &reply, shared).await;
                        break;
                    }
                }
            }
            _ = queued(subscriber.as_ref()) => {
                let subscriber = subscriber.as_ref().expect("woken only with a subscriber");
                out.clear();
                subscriber.drain_into(&mut out);
                if !out.is_empty() && !send(&mut write, &out, shared).await {
                    tracing::info!(
                        consumer = subscriber.consumer,
                        "events consumer disconnected: it did not read for {:?}",
                        shared.settings.write_timeout
                    );
                    break;
                }
                if out.capacity() > 256 * 1024 {
                    out = Vec::new();
                }
            }
        }
    }
    if let Some(subscriber) = subscriber {
        shared.pipeline.bus().unsubscribe(&subscriber);
    }
}

/// Writes within the write timeout; `false` when the consumer is gone or
/// stalled.
async fn send(write: &mut OwnedWriteHalf, bytes: &[u8], shared: &Shared) -> bool {
    matches!(
        tokio::time::timeout(shared.settings.write_timeout, write.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

fn handle(text: &str, subscriber: &mut Option<Arc<Subscriber>>, shared: &Shared) -> Step {
    let bad = |message: String| Step::Reply(error_line(ErrorCode::BadRequest.as_str(), &message));
    let message = match serde_json::from_str::<ClientLine>(text) {
        Ok(message) => message,
        Err(e) => return bad(format!("invalid line: {e}")),
    };
    let bus = shared.pipeline.bus();
    match message {
        ClientLine::Hello {
            consumer,
            event_key,
            topics,
            app,
            token,
        } => {
            if subscriber.is_some() {
                return bad("this connection already said hello".into());
            }
            if consumer.is_empty() || consumer.len() > MAX_NAME || event_key.len() > MAX_NAME {
                return bad(format!(
                    "`consumer` must be 1 to {MAX_NAME} bytes and `event_key` at most {MAX_NAME}"
                ));
            }
            if let Some(pattern) = topics.iter().find(|p| !valid_topic_pattern(p)) {
                return bad(format!(
                    "`{pattern}` is not a topic pattern: dot-separated tokens of letters, digits, `-` and `_`, where a token may be `*` and the last may be `>`"
                ));
            }
            let route = Route::Named {
                app: app.as_deref(),
                default: shared.listening.app.as_deref(),
            };
            let app =
                match shared
                    .pipeline
                    .events_app(route, token.as_deref(), shared.listening.trusted)
                {
                    Ok(app) => app,
                    Err(e) => return Step::Reply(error_line(&e.code, &e.message)),
                };
            if let Some(pattern) = app.refused_subscription(&topics) {
                return Step::Reply(error_line(
                    ErrorCode::Forbidden.as_str(),
                    &format!(
                        "application `{}` does not let outside consumers subscribe to `{pattern}` (its `events.subscribe`)",
                        app.name
                    ),
                ));
            }
            let subscription = bus.subscribe(
                crate::resources::bus::Kind::Consumer,
                app.name.clone(),
                consumer,
                event_key,
                topics,
                shared.settings.queue,
            );
            *subscriber = Some(subscription.subscriber);
            Step::Reply(line(json!({
                "type": "hello_ack",
                "bus_version": BUS_VERSION,
                "first_for_key": subscription.first_for_key,
            })))
        }
        ClientLine::Bye {} => Step::Close(Vec::new()),
        _ if subscriber.is_none() => bad("say `hello` first".into()),
        ClientLine::PreShutdownCheck { event_key } => {
            let subscriber = subscriber.as_ref().expect("checked above");
            if event_key != subscriber.event_key {
                return bad(format!(
                    "this connection's event_key is `{}`, not `{event_key}`",
                    subscriber.event_key
                ));
            }
            Step::Reply(line(json!({
                "type": "pre_shutdown_ack",
                "event_key": event_key,
                "last_for_key": bus.last_for_key(subscriber),
            })))
        }
        ClientLine::StatusQuery {} => {
            let subscriber = subscriber.as_ref().expect("checked above");
            let consumers = bus.consumers(&subscriber.app);
            Step::Reply(line(json!({
                "type": "status_response",
                "pid": std::process::id(),
                "uptime_sec": shared.started.elapsed().as_secs(),
                "active_conns": consumers.len(),
                "app": &*subscriber.app,
                "consumers": consumers,
                "source_status": shared
                    .pipeline
                    .bridges()
                    .map_or_else(|| json!({}), |b| b.source_status(&subscriber.app)),
            })))
        }
        ClientLine::Publish { topic, payload } => {
            let subscriber = subscriber.as_ref().expect("checked above");
            // Written out by serde_json: one line, valid JSON already.
            let payload = payload.to_string();
            // Looked up now, so a reload's rules apply to connections open
            // before it.
            let Some(app) = shared.pipeline.apps().get(&subscriber.app).cloned() else {
                return Step::Reply(error_line(
                    ErrorCode::NotFound.as_str(),
                    &format!("application `{}` is no longer served", subscriber.app),
                ));
            };
            match publish_line(&shared.pipeline, &app, &topic, &payload) {
                Ok((id, done)) => {
                    Step::ReplyWhenKept(line(json!({"type": "publish_ack", "event_id": id})), done)
                }
                Err(e) => Step::Reply(error_line(&e.code, &e.message)),
            }
        }
    }
}

/// Publishes JSON text `payload` to `topic` of `app`, after the checks
/// every door makes; answers the event's id once its webhook deliveries,
/// if any endpoint wants it, are durable.
pub async fn publish(
    pipeline: &Pipeline,
    app: &App,
    topic: &str,
    payload: &str,
) -> Result<String, ErrorBody> {
    let (id, done) = publish_line(pipeline, app, topic, &compact(payload)?)?;
    if !kept(done).await {
        return Err(ErrorBody::new(ErrorCode::Unavailable, NOT_KEPT));
    }
    Ok(id)
}

/// [`publish`] for a payload already known to be one line of JSON.
fn publish_line(
    pipeline: &Pipeline,
    app: &App,
    topic: &str,
    payload: &str,
) -> Result<(String, Kept), ErrorBody> {
    if !valid_topic(topic) {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!(
                "`{topic}` is not a topic: dot-separated tokens of letters, digits, `-` and `_`"
            ),
        ));
    }
    if !app.may_publish(topic) {
        return Err(ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "application `{}` does not let outside callers publish to `{topic}` (its `events.publish`)",
                app.name
            ),
        ));
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(ErrorBody::new(
            ErrorCode::TooLarge,
            format!("an event's payload is at most {MAX_PAYLOAD} bytes"),
        ));
    }
    Ok(pipeline.bus().publish_kept(&app.name, topic, payload))
}

/// The payload as one line of JSON: a newline in JSON text can only be
/// whitespace, which is then written out.
fn compact(payload: &str) -> Result<Cow<'_, str>, ErrorBody> {
    let not_json = |e: serde_json::Error| {
        ErrorBody::new(
            ErrorCode::BadRequest,
            format!("the payload is not JSON: {e}"),
        )
    };
    if payload.contains(['\n', '\r']) {
        let value: serde_json::Value = serde_json::from_str(payload).map_err(not_json)?;
        return Ok(Cow::Owned(value.to_string()));
    }
    crate::core::json::check_value(payload).map_err(not_json)?;
    Ok(Cow::Borrowed(payload))
}

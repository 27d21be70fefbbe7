//! The WebSocket door: `GET /v1/ws` on the HTTP gateway. Each text message
//! is `{"header": {"command", "id"}, "payload"}`; a `SERVICE.ACTION`
//! command becomes an invocation for the same pipeline as every other
//! door, and its answer comes back as `{"header": {"command":
//! "<command>-response", "id"}, "payload": {"result"} | {"error"}}`, in
//! completion order. Built in: `auth`, `ping`, `subscribe` and
//! `unsubscribe` (the application's event bus, pushed as `event`
//! messages with a `seq` per connection).
//!
//! The connection is split in two: this task reads and answers, a writer
//! task owns the socket's sending half and a bounded queue. Pushed events
//! never wait for a slow client: when its queue overflows the client is
//! disconnected (4002), and the publisher and the other clients go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::http::{HttpError, HttpState};
use crate::config::WebSocketConfig;
use crate::core::{DoorKind, ErrorBody, ErrorCode, Invocation, Route, TraceId, names};
use crate::pipeline::{Auth, Pipeline};
use crate::resources::bus::{Kind, Subscriber};

/// Close codes of this door, beside the standard ones (1001 going away,
/// 1009 too big).
pub mod close {
    /// The handshake failed: no token, a bad one, or none in time.
    pub const HANDSHAKE: u16 = 4100;
    /// The client fell behind on pushed events.
    pub const TOO_SLOW: u16 = 4002;
    /// The client did not answer a ping.
    pub const NO_PONG: u16 = 4003;
}

/// The subprotocol the door speaks; a client may offer a token beside it
/// as `bearer.<token>`.
const PROTOCOL: &str = "ferry.v1";

/// What every WebSocket connection shares.
pub struct Hub {
    settings: WebSocketConfig,
    max_message: usize,
    open: AtomicUsize,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Hub {
    pub fn new(settings: WebSocketConfig, max_message: usize) -> Hub {
        Hub {
            settings,
            max_message,
            open: AtomicUsize::new(0),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// SIGTERM: every connection stops reading, finishes what it runs and
    /// closes with 1001; resolves once all have.
    pub async fn close_all(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `GET /v1/ws`.
pub async fn upgrade(
    State(state): State<HttpState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(hub) = state.websocket.clone() else {
        return HttpError::new(ErrorCode::NotFound, "the WebSocket door is off").into_response();
    };
    if hub.open.load(Ordering::Relaxed) >= hub.settings.max_connections {
        let mut response = HttpError::new(
            ErrorCode::Overloaded,
            format!(
                "{} WebSocket connections are open, the most this host takes",
                hub.settings.max_connections
            ),
        )
        .into_response();
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return response;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Which application, before any token: whether one is needed.
    let route = Route::Host {
        host: host.as_deref(),
        named: None,
    };
    let needs_token = match state.pipeline.events_app(route, None, true) {
        Ok(app) => matches!(app.auth, Auth::Jwt(_)),
        Err(e) => return HttpError(e).into_response(),
    };
    let header_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let protocol_token = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("bearer.").map(str::to_owned));
    let token = header_token.or(protocol_token);
    let ws = ws
        .protocols([PROTOCOL])
        .max_message_size(hub.max_message)
        .max_frame_size(hub.max_message);
    let pipeline = state.pipeline.clone();
    ws.on_upgrade(move |socket| {
        let hub2 = hub.clone();
        hub.tasks.track_future(async move {
            hub2.open.fetch_add(1, Ordering::Relaxed);
            Connection {
                pipeline,
                hub: hub2.clone(),
                host,
                token: None,
                subscriber: None,
            }
            .run(socket, token, needs_token)
            .await;
            hub2.open.fetch_sub(1, Ordering::Relaxed);
        })
    })
}

/// What the writer task is asked to send.
enum Out {
    Message(Message),
    Close(u16, String),
}

struct Connection {
    pipeline: Arc<Pipeline>,
    hub: Arc<Hub>,
    host: Option<String>,
    /// The verified token the connection's requests carry.
    token: Option<Arc<str>>,
    subscriber: Option<Arc<Subscriber>>,
}

fn close_message(code: u16, reason: &str) -> Message {
    let reason = crate::capabilities::log::truncate(reason, 120);
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

/// One response message, as text.
fn response(command: &str, id: &Value, payload: &str) -> Message {
    let command = serde_json::to_string(&format!("{command}-response")).expect("a string");
    Message::Text(Utf8Bytes::from(format!(
        r#"{{"header":{{"command":{command},"id":{id}}},"payload":{payload}}}"#
    )))
}

/// The payload of an error: request errors carry the message, internal
/// ones a generic message and a trace under which the cause is logged.
fn error_payload(error: &ErrorBody, command: &str) -> String {
    let internal = error.code == ErrorCode::Internal.as_str() || error.code == "plugin_trap";
    if internal {
        let trace = TraceId::new().to_string();
        tracing::warn!(
            trace,
            command,
            code = error.code,
            "websocket request failed: {}",
            error.message
        );
        json!({"error": {"code": error.code, "message": "internal error; the host's log has the cause under this trace", "timestamp": now_ms(), "trace": trace}}).to_string()
    } else {
        json!({"error": {"code": error.code, "message": error.message, "timestamp": now_ms()}})
            .to_string()
    }
}

impl Connection {
    fn route(&self) -> Route<'_> {
        Route::Host {
            host: self.host.as_deref(),
            named: None,
        }
    }

    async fn run(mut self, socket: WebSocket, token: Option<String>, needs_token: bool) {
        let (mut sink, mut stream) = socket.split();
        let settings = self.hub.settings.clone();

        // The handshake: a token from the upgrade, else the first message.
        if needs_token {
            let mut first_id = None;
            let token = match token {
                Some(token) => Some(token),
                None => {
                    let wait = Duration::from_millis(settings.handshake_timeout_ms);
                    match tokio::time::timeout(wait, stream.next()).await {
                        Ok(Some(Ok(Message::Text(text)))) => {
                            let message: Value =
                                serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                            if message["header"]["command"] == "auth" {
                                first_id = Some(message["header"]["id"].clone());
                                message["payload"]["token"].as_str().map(str::to_owned)
                            } else {
                                None
                            }
                        }
                        _ => None,
                    }
                }
            };
            let verified = match &token {
                None => Err("authentication required: send the token in `Authorization: Bearer`, as the subprotocol `bearer.<token>`, or as a first `auth` message".to_owned()),
                Some(token) => self
                    .pipeline
                    .events_app(self.route(), Some(token.as_str()), false)
                    .map(|_| ())
                    .map_err(|e| e.message),
            };
            if let Err(reason) = verified {
                let _ = sink.send(close_message(close::HANDSHAKE, &reason)).await;
                return;
            }
            self.token = token.map(Arc::from);
            if let Some(id) = first_id {
                let _ = sink
                    .send(response(
                        "auth",
                        &id,
                        r#"{"result":{"authenticated":true}}"#,
                    ))
                    .await;
            }
        }

        let (tx, mut rx) = mpsc::channel::<Out>(settings.send_queue);
        let write_timeout = Duration::from_secs(5);
        let writer = tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                let (message, last) = match out {
                    Out::Message(m) => (m, false),
                    Out::Close(code, reason) => (close_message(code, &reason), true),
                };
                let sent = tokio::time::timeout(write_timeout, sink.send(message)).await;
                if last || !matches!(sent, Ok(Ok(()))) {
                    break;
                }
            }
            let _ = sink.close().await;
        });

        let slots = Arc::new(Semaphore::new(settings.max_in_flight));
        let mut ping = tokio::time::interval(Duration::from_millis(settings.ping_interval_ms));
        ping.tick().await;
        let mut pong_owed = false;
        let evicted = CancellationToken::new();
        let closing = loop {
            tokio::select! {
                _ = self.hub.shutdown.cancelled() => break Some((1001, "the host is stopping".to_owned())),
                _ = evicted.cancelled() => break Some((close::TOO_SLOW, "fell behind on pushed events".to_owned())),
                _ = ping.tick() => {
                    if pong_owed {
                        break Some((close::NO_PONG, "no answer to the last ping".to_owned()));
                    }
                    pong_owed = true;
                    if tx.try_send(Out::Message(Message::Ping(Default::default()))).is_err() {
                        break Some((close::TOO_SLOW, "fell behind".to_owned()));
                    }
                }
                message = stream.next() => match message {
                    None => break None,
                    Some(Err(e)) => {
                        let too_big = e.into_inner().downcast_ref::<tungstenite::Error>().is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)));
                        if too_big {
                            break Some((1009, format!("a message is at most {} bytes", self.hub.max_message)));
                        }
                        break None;
                    }
                    Some(Ok(Message::Text(text))) => {
                        let permit = tokio::select! {
                            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
                            _ = self.hub.shutdown.cancelled() => break Some((1001, "the host is stopping".to_owned())),
                        };
                        self.message(text.as_str(), &tx, permit, &evicted).await;
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let _ = tx.send(Out::Message(Message::Text(Utf8Bytes::from(
                            json!({"header": {"command": "error"}, "payload": {"error": {"code": "bad_request", "message": "messages are JSON text, not binary", "timestamp": now_ms()}}}).to_string(),
                        )))).await;
                    }
                    Some(Ok(Message::Pong(_))) => pong_owed = false,
                    Some(Ok(Message::Ping(_))) => {}
                    Some(Ok(Message::Close(_))) => break None,
                }
            }
        };
        // What is running finishes first, then the close goes out.
        let _all = slots
            .acquire_many(settings.max_in_flight as u32)
            .await
            .expect("never closed");
        if let Some(subscriber) = self.subscriber.take() {
            self.pipeline.bus().unsubscribe(&subscriber);
        }
        if let Some((code, reason)) = closing {
            let _ = tx.send(Out::Close(code, reason)).await;
        }
        drop(tx);
        let _ = writer.await;
    }

    /// Handles one text message; a request runs in a task of its own.
    async fn message(
        &mut self,
        text: &str,
        tx: &mpsc::Sender<Out>,
        permit: tokio::sync::OwnedSemaphorePermit,
        evicted: &CancellationToken,
    ) {
        let received = Instant::now();
        let parsed: Result<Value, _> = serde_json::from_str(text);
        let (command, id, payload) = match parsed {
            Ok(v) if v["header"]["command"].is_string() => (
                v["header"]["command"].as_str().unwrap_or("").to_owned(),
                v["header"].get("id").cloned().unwrap_or(Value::Null),
                v.get("payload").cloned().unwrap_or(Value::Null),
            ),
            _ => {
                let error = ErrorBody::new(
                    ErrorCode::BadRequest,
                    "a message is {\"header\": {\"command\", \"id\"}, \"payload\"}",
                );
                let _ = tx
                    .send(Out::Message(response(
                        "error",
                        &Value::Null,
                        &error_payload(&error, "error"),
                    )))
                    .await;
                return;
            }
        };
        let reply = |payload: String| Out::Message(response(&command, &id, &payload));
        match command.as_str() {
            "ping" => {
                let payload =
                    json!({"origintimestamp": payload["timestamp"], "timestamp": now_ms()});
                let _ = tx.send(reply(payload.to_string())).await;
            }
            "auth" => {
                let error =
                    ErrorBody::new(ErrorCode::BadRequest, "this connection is already set up");
                let _ = tx.send(reply(error_payload(&error, &command))).await;
            }
            "subscribe" | "unsubscribe" => {
                let payload = match self.subscription(&command, &payload, tx, evicted) {
                    Ok(topics) => json!({"result": {"topics": topics}}).to_string(),
                    Err(error) => error_payload(&error, &command),
                };
                let _ = tx.send(reply(payload)).await;
            }
            _ => {
                let Some((service, action)) = command.split_once('.') else {
                    let error = ErrorBody::new(
                        ErrorCode::NotFound,
                        format!(
                            "no command `{command}`: use SERVICE.ACTION, ping, subscribe or unsubscribe"
                        ),
                    );
                    let _ = tx.send(reply(error_payload(&error, &command))).await;
                    return;
                };
                let (service, action) = (service.to_owned(), action.to_owned());
                let (pipeline, host, token, tx) = (
                    self.pipeline.clone(),
                    self.host.clone(),
                    self.token.clone(),
                    tx.clone(),
                );
                tokio::spawn(async move {
                    let params = match &payload {
                        Value::Null => "{}".to_owned(),
                        other => other.to_string(),
                    };
                    let request_id = id.to_string();
                    let inv = Invocation {
                        door: DoorKind::Http,
                        route: Route::Host {
                            host: host.as_deref(),
                            named: None,
                        },
                        service: &service,
                        action: &action,
                        params: &params,
                        request_id: &request_id,
                        token: token.as_deref(),
                        tenant: None,
                        timeout_ms: None,
                        trusted: false,
                        received,
                        trace: None,
                        caller: None,
                    };
                    let payload = match pipeline.invoke(&inv).await {
                        Ok(result) => format!(r#"{{"result":{result}}}"#),
                        Err(error) => error_payload(&error, &command),
                    };
                    let _ = tx
                        .send(Out::Message(response(&command, &id, &payload)))
                        .await;
                    drop(permit);
                });
            }
        }
    }

    /// `subscribe` / `unsubscribe` `{topics: [patterns]}`: answers the
    /// connection's topics now.
    fn subscription(
        &mut self,
        command: &str,
        payload: &Value,
        tx: &mpsc::Sender<Out>,
        evicted: &CancellationToken,
    ) -> Result<Vec<String>, ErrorBody> {
        let bad = |m: String| ErrorBody::new(ErrorCode::BadRequest, m);
        let asked: Vec<String> = payload["topics"]
            .as_array()
            .ok_or_else(|| bad("`payload.topics` is a list of topic patterns".into()))?
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("topic patterns are strings".into()))
            })
            .collect::<Result<_, _>>()?;
        if let Some(p) = asked.iter().find(|p| !names::valid_topic_pattern(p)) {
            return Err(bad(format!("`{p}` is not a topic pattern")));
        }
        let app = self
            .pipeline
            .events_app(self.route(), self.token.as_deref(), false)?;
        let mut topics = self
            .subscriber
            .as_ref()
            .map(|s| s.topics().to_vec())
            .unwrap_or_default();
        if command == "subscribe" {
            if let Some(p) = app.refused_subscription(&asked) {
                return Err(ErrorBody::new(
                    ErrorCode::Forbidden,
                    format!(
                        "application `{}` does not let outside consumers subscribe to `{p}`",
                        app.name
                    ),
                ));
            }
            for p in asked {
                if !topics.contains(&p) {
                    topics.push(p);
                }
            }
        } else {
            topics.retain(|t| !asked.contains(t));
        }
        match &self.subscriber {
            Some(subscriber) => subscriber.set_topics(topics.clone()),
            None => {
                let subscription = self.pipeline.bus().subscribe(
                    Kind::Consumer,
                    app.name.clone(),
                    "websocket".into(),
                    format!("ws-{}", TraceId::new()),
                    topics.clone(),
                    // Room for bursts the pump moves on at once; a client
                    // that stays behind overflows its send queue instead.
                    self.hub.settings.send_queue.saturating_mul(8),
                );
                let subscriber = subscription.subscriber;
                tokio::spawn(pump(subscriber.clone(), tx.clone(), evicted.clone()));
                self.subscriber = Some(subscriber);
            }
        }
        Ok(topics)
    }
}

/// Moves a connection's events from its bus queue to its send queue. A
/// full send queue, or events dropped from the bus queue, means the client
/// is behind: it is disconnected rather than waited for.
async fn pump(subscriber: Arc<Subscriber>, tx: mpsc::Sender<Out>, evicted: CancellationToken) {
    loop {
        tokio::select! {
            _ = subscriber.ready.notified() => {}
            _ = tx.closed() => return,
            _ = evicted.cancelled() => return,
        }
        while let Some((seq, event)) = subscriber.pop() {
            let payload: &serde_json::value::RawValue =
                serde_json::from_str(&event.payload).expect("the bus holds JSON");
            let text = json!({
                "header": {"command": "event"},
                "payload": {
                    "topic": event.topic,
                    "event_id": event.id,
                    "seq": seq,
                    "source_time": event.source_time_ms.to_string(),
                    "data": payload,
                },
            })
            .to_string();
            let full = tx
                .try_send(Out::Message(Message::Text(Utf8Bytes::from(text))))
                .is_err();
            if full || subscriber.status().dropped > 0 {
                evicted.cancel();
                return;
            }
        }
    }
}

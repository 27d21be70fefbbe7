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
//! task (`send`) owns the socket's sending half and a queue bounded in messages and
//! in bytes. Pushed events never wait for a slow client: when its queue
//! overflows, what it holds is dropped and the client is closed (4002),
//! and the publisher and the other clients go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::http::{HttpError, HttpState};
use crate::config::WebSocketConfig;
use crate::core::{DoorKind, ErrorBody, ErrorCode, Invocation, Route, TraceId, names};
use crate::pipeline::{Auth, Pipeline};
use crate::resources::bus::{Kind, Subscriber};

mod send;

use send::{Out, Outbox, close_message, pump};

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
    evicted: AtomicU64,
    no_pong: AtomicU64,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// The door's counters, for the status document and the metrics.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct HubCounts {
    pub open: u64,
    /// Closed with 4002: fell behind on pushed events.
    pub evicted: u64,
    /// Closed with 4003: no answer to a ping.
    pub no_pong: u64,
}

impl Hub {
    pub fn new(settings: WebSocketConfig, max_message: usize) -> Hub {
        Hub {
            settings,
            max_message,
            open: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            no_pong: AtomicU64::new(0),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }

    pub fn counts(&self) -> HubCounts {
        HubCounts {
            open: self.open.load(Ordering::Relaxed) as u64,
            evicted: self.evicted.load(Ordering::Relaxed),
            no_pong: self.no_pong.load(Ordering::Relaxed),
        }
    }

    pub fn readings(&self) -> Vec<crate::ops::metrics::Reading> {
        use crate::ops::metrics::Reading;
        let counts = self.counts();
        vec![
            Reading {
                name: "ferry_websocket_connections",
                help: "WebSocket connections open.",
                gauge: true,
                value: counts.open,
            },
            Reading {
                name: "ferry_websocket_evicted",
                help: "WebSocket clients closed with 4002 for falling behind on pushed events.",
                gauge: false,
                value: counts.evicted,
            },
            Reading {
                name: "ferry_websocket_no_pong",
                help: "WebSocket clients closed with 4003 for not answering a ping.",
                gauge: false,
                value: counts.no_pong,
            },
        ]
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
                host: host.map(Arc::from),
                token: None,
                subscriber: None,
                pump: None,
            }
            .run(socket, token, needs_token)
            .await;
            hub2.open.fetch_sub(1, Ordering::Relaxed);
        })
    })
}

struct Connection {
    pipeline: Arc<Pipeline>,
    hub: Arc<Hub>,
    host: Option<Arc<str>>,
    /// The verified token the connection's requests carry.
    token: Option<Arc<str>>,
    subscriber: Option<Arc<Subscriber>>,
    /// The task moving the subscriber's events to the queue; it holds a
    /// sender, so it is stopped when the connection ends.
    pump: Option<tokio::task::JoinHandle<()>>,
}

/// A message as it arrives, borrowed from its text.
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    header: Header<'a>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    command: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// One response message, as text.
fn response(command: &str, id: &str, payload: &str) -> Message {
    use std::fmt::Write;
    let mut text = String::with_capacity(48 + command.len() + id.len() + payload.len());
    text.push_str(r#"{"header":{"command":"#);
    // Commands are names, but one sent with quotes comes back escaped.
    if command
        .bytes()
        .all(|b| b >= b' ' && b != b'"' && b != b'\\')
    {
        let _ = write!(text, r#""{command}-response""#);
    } else {
        text.push_str(&serde_json::to_string(&format!("{command}-response")).expect("a string"));
    }
    let _ = write!(text, r#","id":{id}}},"payload":{payload}}}"#);
    Message::Text(Utf8Bytes::from(text))
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
                        &id.to_string(),
                        r#"{"result":{"authenticated":true}}"#,
                    ))
                    .await;
            }
        }

        let (outbox, rx) = Outbox::new(settings.send_queue, settings.send_queue_bytes);
        let tx = outbox.tx.clone();
        let writer = tokio::spawn(send::write(sink, rx, outbox.clone()));

        let slots = Arc::new(Semaphore::new(settings.max_in_flight));
        let mut ping = tokio::time::interval(Duration::from_millis(settings.ping_interval_ms));
        ping.tick().await;
        let mut pong_owed = false;
        let closing = loop {
            tokio::select! {
                _ = self.hub.shutdown.cancelled() => break Some((1001, "the host is stopping".to_owned())),
                // The writer sends the close itself, ahead of what is queued.
                _ = outbox.evicted.cancelled() => {
                    self.hub.evicted.fetch_add(1, Ordering::Relaxed);
                    break None;
                }
                _ = ping.tick() => {
                    if pong_owed {
                        self.hub.no_pong.fetch_add(1, Ordering::Relaxed);
                        break Some((close::NO_PONG, "no answer to the last ping".to_owned()));
                    }
                    pong_owed = true;
                    if tx.try_send(Out::Message(Message::Ping(Default::default()))).is_err() {
                        outbox.evicted.cancel();
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
                        self.message(text.as_str(), &outbox, permit).await;
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
        if let Some(pump) = self.pump.take() {
            pump.abort();
        }
        if let Some((code, reason)) = closing {
            let _ = tx.send(Out::Close(code, reason)).await;
        }
        drop((tx, outbox));
        let _ = writer.await;
    }

    /// Handles one text message; a request runs in a task of its own.
    async fn message(
        &mut self,
        text: &str,
        outbox: &Outbox,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let tx = &outbox.tx;
        let received = Instant::now();
        // Borrowed, with the payload and id left as JSON text: a request's
        // params go to the plugin as they came.
        let parsed: Result<Incoming, _> = serde_json::from_str(text);
        let (command, id, raw_payload) = match parsed {
            Ok(m) => (
                m.header.command,
                m.header.id.map_or("null", RawValue::get).to_owned(),
                m.payload,
            ),
            Err(_) => {
                let error = ErrorBody::new(
                    ErrorCode::BadRequest,
                    "a message is {\"header\": {\"command\", \"id\"}, \"payload\"}",
                );
                let _ = tx
                    .send(Out::Message(response(
                        "error",
                        "null",
                        &error_payload(&error, "error"),
                    )))
                    .await;
                return;
            }
        };
        let reply = |payload: String| Out::Message(response(&command, &id, &payload));
        let payload = || -> Value {
            raw_payload
                .and_then(|p| serde_json::from_str(p.get()).ok())
                .unwrap_or(Value::Null)
        };
        match &*command {
            "ping" => {
                let payload =
                    json!({"origintimestamp": payload()["timestamp"], "timestamp": now_ms()});
                let _ = tx.send(reply(payload.to_string())).await;
            }
            "auth" => {
                let error =
                    ErrorBody::new(ErrorCode::BadRequest, "this connection is already set up");
                let _ = tx.send(reply(error_payload(&error, &command))).await;
            }
            "subscribe" | "unsubscribe" => {
                let payload = match self.subscription(&command, &payload(), outbox) {
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
                let params = raw_payload.map_or("{}", RawValue::get).to_owned();
                let command = command.to_string();
                let (pipeline, host, token, tx) = (
                    self.pipeline.clone(),
                    self.host.clone(),
                    self.token.clone(),
                    tx.clone(),
                );
                tokio::spawn(async move {
                    let inv = Invocation {
                        door: DoorKind::Http,
                        route: Route::Host {
                            host: host.as_deref(),
                            named: None,
                        },
                        service: &service,
                        action: &action,
                        params: &params,
                        request_id: &id,
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
        outbox: &Outbox,
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
                self.pump = Some(tokio::spawn(pump(subscriber.clone(), outbox.clone())));
                self.subscriber = Some(subscriber);
            }
        }
        Ok(topics)
    }
}

//! The WebSocket benchmark's baseline: a plain axum WebSocket server doing
//! what Ferry's door does for `echo.params` and for the bus, written the
//! way one would by hand. `GET /v1/ws` answers `{"header": {"command",
//! "id"}, "payload"}` with `<command>-response` and the payload as
//! `result`; `subscribe` joins a broadcast; `POST /v1/events/{topic}`
//! pushes an `event` (with a `seq` per connection) to every subscriber.
//! Usage: `native-ws ADDR` (prints the bound address).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

type Events = broadcast::Sender<Arc<(String, String)>>;

async fn upgrade(State(events): State<Events>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| connection(socket, events))
}

async fn connection(socket: WebSocket, events: Events) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(1024);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
    });
    let mut pump = None;
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(request) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let command = request["header"]["command"].as_str().unwrap_or("");
        let id = &request["header"]["id"];
        let result = if command == "subscribe" {
            if pump.is_none() {
                let (mut feed, tx) = (events.subscribe(), tx.clone());
                pump = Some(tokio::spawn(async move {
                    let mut seq = 0u64;
                    while let Ok(event) = feed.recv().await {
                        seq += 1;
                        let (topic, data) = &*event;
                        let text = format!(
                            r#"{{"header":{{"command":"event"}},"payload":{{"topic":{topic},"seq":{seq},"data":{data}}}}}"#
                        );
                        if tx.try_send(Message::Text(Utf8Bytes::from(text))).is_err() {
                            return;
                        }
                    }
                }));
            }
            json!({"topics": request["payload"]["topics"]})
        } else {
            request["payload"].clone()
        };
        let reply = json!({
            "header": {"command": format!("{command}-response"), "id": id},
            "payload": {"result": result},
        });
        if tx
            .send(Message::Text(Utf8Bytes::from(reply.to_string())))
            .await
            .is_err()
        {
            break;
        }
    }
    if let Some(pump) = pump {
        pump.abort();
    }
    drop(tx);
    let _ = writer.await;
}

async fn publish(
    State(events): State<Events>,
    Path(topic): Path<String>,
    body: Bytes,
) -> impl IntoResponse {
    let data: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let topic = serde_json::to_string(&topic).unwrap();
    let _ = events.send(Arc::new((topic, data.to_string())));
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"event_id":"native"}"#,
    )
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).expect("usage: native-ws ADDR");
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!("{}", listener.local_addr().unwrap());
    let (events, _) = broadcast::channel(1024);
    let app = axum::Router::new()
        .route("/v1/ws", get(upgrade))
        .route("/v1/events/{topic}", post(publish))
        .with_state(events);
    axum::serve(listener, app).await.unwrap();
}

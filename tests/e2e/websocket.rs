//! The WebSocket door end to end, with a real WebSocket client library
//! (tokio-tungstenite), not the host's types: RPC by id, pipelining,
//! `ping`, internal errors behind a trace, the three ways to authenticate
//! and 4100 when none works, 1009 for an oversize message, events pushed
//! with a `seq` per connection, and 1001 on SIGTERM.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use ferry_tests::Ferry;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "a websocket test secret of thirty-two bytes";

async fn open(ferry: &Ferry, host: &str, headers: &[(&str, &str)]) -> Ws {
    let addr = ferry.http.expect("the HTTP gateway");
    let mut request = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    request.headers_mut().insert("host", host.parse().unwrap());
    for (name, value) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    ws
}

async fn send(ws: &mut Ws, command: &str, id: Value, payload: Value) {
    let text = json!({"header": {"command": command, "id": id}, "payload": payload}).to_string();
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// The next text message as JSON; panics on anything else.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the connection is open")
            .expect("a good frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// The close code the host ends the connection with.
async fn closed_with(ws: &mut Ws) -> CloseCode {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

fn token() -> String {
    ferry_tests::hs256_token(SECRET, &json!({"sub": "ada", "aud": "shop"}))
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_by_id_pipelining_ping_and_errors() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .plugin("faulty", "faulty", None)
        .start();
    let mut ws = open(&ferry, "localhost", &[]).await;
    send(&mut ws, "echo.params", json!("a-1"), json!({"x": 1})).await;
    let reply = recv(&mut ws).await;
    assert_eq!(
        reply,
        json!({"header": {"command": "echo.params-response", "id": "a-1"}, "payload": {"result": {"x": 1}}})
    );
    send(&mut ws, "ping", json!(2), json!({"timestamp": 1234})).await;
    let pong = recv(&mut ws).await;
    assert_eq!(pong["header"]["command"], "ping-response");
    assert_eq!(pong["payload"]["origintimestamp"], 1234);
    assert!(pong["payload"]["timestamp"].as_u64().unwrap() > 1_700_000_000_000);

    // A thousand at once, answered by id.
    for i in 0..1000 {
        send(&mut ws, "echo.params", json!(i), json!({"n": i})).await;
    }
    let mut ids = Vec::new();
    for _ in 0..1000 {
        let reply = recv(&mut ws).await;
        assert_eq!(reply["payload"]["result"]["n"], reply["header"]["id"]);
        ids.push(reply["header"]["id"].as_u64().unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..1000).collect::<Vec<u64>>());

    // An internal error hides its cause behind a trace that the log has.
    send(&mut ws, "faulty.trap", json!(3), json!({})).await;
    let error = recv(&mut ws).await["payload"]["error"].clone();
    assert_eq!(error["code"], "plugin_trap", "{error}");
    let trace = error["trace"].as_str().expect("a trace").to_owned();
    assert!(
        !error["message"].as_str().unwrap().contains("unreachable"),
        "{error}"
    );
    let log = ferry.log_with(&trace).await;
    assert!(
        log.lines()
            .any(|l| l.contains(&trace) && l.contains("trapped")),
        "{log}"
    );
    // A request error has its message and no trace; the connection goes on.
    send(&mut ws, "echo.sum", json!(4), json!({"numbers": "no"})).await;
    let error = recv(&mut ws).await["payload"]["error"].clone();
    assert_eq!(error["code"], "bad_request");
    assert!(error.get("trace").is_none(), "{error}");
    assert!(error["timestamp"].is_u64());
    send(&mut ws, "nothing", json!(5), Value::Null).await;
    assert_eq!(recv(&mut ws).await["payload"]["error"]["code"], "not_found");
    send(&mut ws, "echo.params", json!(6), json!(6)).await;
    assert_eq!(recv(&mut ws).await["payload"]["result"], 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_by_header_subprotocol_or_first_message_and_4100_without_one() {
    let ferry = Ferry::options()
        .env("WS_TEST_SECRET", SECRET)
        .plugin("echo", "echo", None)
        .config("apps:\n  shop:\n    hosts: [shop.localhost]\n    services: [echo]\n    auth:\n      jwt:\n        algorithms: [HS256]\n        secret_env: WS_TEST_SECRET\n")
        .start();
    let token = token();
    let bearer = format!("Bearer {token}");
    let check = async |ws: &mut Ws| {
        send(ws, "echo.context", json!(1), json!({})).await;
        let reply = recv(ws).await;
        assert_eq!(reply["payload"]["result"]["subject"], "ada", "{reply}");
    };
    let mut ws = open(&ferry, "shop.localhost", &[("authorization", &bearer)]).await;
    check(&mut ws).await;
    let protocols = format!("ferry.v1, bearer.{token}");
    let mut ws = open(
        &ferry,
        "shop.localhost",
        &[("sec-websocket-protocol", &protocols)],
    )
    .await;
    check(&mut ws).await;
    let mut ws = open(&ferry, "shop.localhost", &[]).await;
    send(&mut ws, "auth", json!("hello"), json!({"token": token})).await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["header"]["command"], "auth-response");
    assert_eq!(ack["payload"]["result"]["authenticated"], true);
    check(&mut ws).await;

    // No token, a bad one, or something else first: 4100.
    let mut ws = open(&ferry, "shop.localhost", &[]).await;
    send(&mut ws, "echo.params", json!(1), json!({})).await;
    assert_eq!(closed_with(&mut ws).await, CloseCode::from(4100));
    let mut ws = open(
        &ferry,
        "shop.localhost",
        &[("authorization", "Bearer not.a.token")],
    )
    .await;
    assert_eq!(closed_with(&mut ws).await, CloseCode::from(4100));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_message_closes_with_1009() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .config("max_frame_bytes: 4096\n")
        .start();
    let mut ws = open(&ferry, "localhost", &[]).await;
    let big = "x".repeat(5000);
    let _ = ws.send(Message::Text(big.into())).await;
    assert_eq!(closed_with(&mut ws).await, CloseCode::Size);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_a_plugin_publishes_arrive_with_seq_and_sigterm_closes_with_1001() {
    let mut ferry = Ferry::options()
        .plugin(
            "echo",
            "echo",
            Some("permissions: {events: {publish: [orders.*]}}\n"),
        )
        .start();
    let mut ws = open(&ferry, "localhost", &[]).await;
    send(
        &mut ws,
        "subscribe",
        json!("s"),
        json!({"topics": ["orders.*"]}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(
        ack["payload"]["result"]["topics"],
        json!(["orders.*"]),
        "{ack}"
    );
    let mut client = ferry.connect().await;
    for n in 1..=3 {
        let reply = client
            .request(&json!({"id": n, "service": "echo", "action": "publish",
                "params": {"topic": "orders.created", "payload": {"n": n}}}))
            .await;
        assert_eq!(reply["status"], "success", "{reply}");
    }
    for n in 1..=3u64 {
        let event = recv(&mut ws).await;
        assert_eq!(event["header"]["command"], "event");
        assert_eq!(event["payload"]["topic"], "orders.created");
        assert_eq!(event["payload"]["seq"], n);
        assert_eq!(event["payload"]["data"], json!({"n": n}));
        assert!(event["payload"]["event_id"].is_string());
        assert!(event["payload"]["source_time"].is_string());
    }
    send(
        &mut ws,
        "unsubscribe",
        json!("u"),
        json!({"topics": ["orders.*"]}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await["payload"]["result"]["topics"],
        json!([])
    );

    let closed = tokio::spawn(async move { closed_with(&mut ws).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    ferry.terminate();
    assert_eq!(closed.await.unwrap(), CloseCode::Away);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_answers_no_ping_is_closed_and_the_connection_cap_holds() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .config("websocket: {ping_interval_ms: 200, max_connections: 2}\n")
        .start();
    let mut quiet = open(&ferry, "localhost", &[]).await;
    let _second = open(&ferry, "localhost", &[]).await;
    // A third is refused at the upgrade.
    let addr = ferry.http.unwrap();
    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    // Not reading, the client answers no ping: closed with 4003.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(closed_with(&mut quiet).await, CloseCode::from(4003));
}

/// A subscriber on a socket with a small receive buffer that stops reading
/// after its subscription is acknowledged: the kernel absorbs little, so
/// the host's send queue is what fills.
async fn stalled_subscriber(ferry: &Ferry) -> Ws {
    let addr = ferry.http.expect("the HTTP gateway");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws"), stream)
        .await
        .expect("upgrade");
    send(
        &mut ws,
        "subscribe",
        json!("s"),
        json!({"topics": ["load"]}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await["payload"]["result"]["topics"],
        json!(["load"])
    );
    ws
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_evicted_while_a_hundred_others_keep_up() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    const HEALTHY: usize = 100;
    // The publisher stays at most this far ahead of the slowest healthy
    // reader: well inside their queues (256 KiB; the message bound is set
    // out of reach, so the byte bound is what evicts).
    const AHEAD: u64 = 64;
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .config(
            "websocket: {send_queue: 100000, send_queue_bytes: 262144, ping_interval_ms: 600000}\n",
        )
        .start();
    let mut stalled = stalled_subscriber(&ferry).await;

    let received: Arc<Vec<AtomicU64>> = Arc::new((0..HEALTHY).map(|_| AtomicU64::new(0)).collect());
    let mut readers = Vec::new();
    for i in 0..HEALTHY {
        let mut ws = open(&ferry, "localhost", &[]).await;
        send(&mut ws, "subscribe", json!(i), json!({"topics": ["load"]})).await;
        assert_eq!(
            recv(&mut ws).await["header"]["command"],
            "subscribe-response"
        );
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            // Every event, in order, without a gap, until `last` arrives.
            loop {
                let event = recv(&mut ws).await;
                assert_eq!(event["header"]["command"], "event", "{event}");
                let seq = event["payload"]["seq"].as_u64().unwrap();
                let before = received[i].fetch_add(1, Ordering::Relaxed);
                assert_eq!(seq, before + 1, "client {i} saw a gap");
                if event["payload"]["data"]["last"] == true {
                    return ws;
                }
            }
        }));
    }

    let (mut publisher, _) =
        ferry_tests::bus::Consumer::hello(&ferry.events_socket(), "publisher", "publisher", &[])
            .await;
    let pad = "p".repeat(1000);
    let slowest = || {
        received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .min()
            .unwrap()
    };
    let mut published = 0u64;
    let mut evicted_at = None;
    // Until the stalled client is evicted, and some more after.
    while evicted_at.is_none_or(|at| published < at + 512) {
        assert!(published < 50_000, "50 MB published and nobody was evicted");
        while published >= slowest() + AHEAD {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for _ in 0..32 {
            publisher
                .send(&json!({"type": "publish", "topic": "load", "payload": {"pad": pad, "last": false}}))
                .await;
        }
        for _ in 0..32 {
            publisher.recv_type("publish_ack").await;
        }
        published += 32;
        if evicted_at.is_none() && published % 256 == 0 {
            let status = ferry.status().await;
            if status["websocket"]["evicted"] == 1 {
                evicted_at = Some(published);
            }
        }
    }
    publisher
        .send(&json!({"type": "publish", "topic": "load", "payload": {"last": true}}))
        .await;
    publisher.recv_type("publish_ack").await;
    published += 1;

    for reader in readers {
        let mut ws = tokio::time::timeout(WAIT, reader)
            .await
            .expect("every healthy client receives every event")
            .unwrap();
        // Still connected: it answers a ping.
        send(&mut ws, "ping", json!("p"), json!({"timestamp": 1})).await;
        assert_eq!(recv(&mut ws).await["header"]["command"], "ping-response");
    }
    assert!(
        received
            .iter()
            .all(|r| r.load(Ordering::Relaxed) == published)
    );

    // The stalled client reads now: the events the kernel held, in order,
    // then the close with 4002.
    let mut seen = 0u64;
    let code = loop {
        match tokio::time::timeout(WAIT, stalled.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Text(text))) => {
                let event: Value = serde_json::from_str(&text).unwrap();
                seen += 1;
                assert_eq!(event["payload"]["seq"], seen);
            }
            Some(Ok(Message::Close(Some(frame)))) => break frame.code,
            Some(Ok(_)) => {}
            other => panic!("expected events then a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, CloseCode::from(4002));
    assert!(seen < published, "it was evicted before the end");
    let status = ferry.status().await;
    assert_eq!(status["websocket"]["evicted"], 1, "{}", status["websocket"]);
    let metrics = ferry.admin_http("GET", "/metrics").await.text();
    assert!(
        metrics.contains("ferry_websocket_evicted_total 1"),
        "{metrics}"
    );
    eprintln!(
        "evicted after {} events; it had read {seen} of {published}",
        evicted_at.unwrap()
    );
}

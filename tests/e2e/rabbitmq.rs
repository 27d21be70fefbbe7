//! RabbitMQ end to end, against the machine's real broker: a plugin's
//! manifest `consume` reads a queue and each message calls an action
//! (acked once handled); a failing one is retried through the broker's
//! delay queues and then dead-lettered; a broker restart in the middle of
//! a stream loses nothing and the consumer comes back by itself; events
//! bridged to an exchange arrive in a queue bound to it, and wait in the
//! host's outbox while the broker is down. The test side speaks AMQP with
//! `lapin` directly, never through the host.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};

use ferry_tests::bus::Consumer;
use ferry_tests::services::rabbitmq_url;
use ferry_tests::{Ferry, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// Tests that restart the broker take it whole; the others share it.
static BROKER: RwLock<()> = RwLock::new(());

/// A queue or exchange name no other run uses.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("ferry-test.{what}.{}.{nanos}", std::process::id())
}

async fn open(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("the test connects to RabbitMQ");
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

/// Publishes through the default exchange, persistent, and waits for the
/// broker's confirm.
async fn send(channel: &Channel, queue: &str, body: &[u8], id: &str) {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(id.into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the broker did not take the message");
}

/// Ready messages of `queue` (it must exist).
async fn ready(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue `{queue}` does not exist: {e}"))
        .message_count()
}

async fn delete(channel: &Channel, queues: &[String]) {
    for q in queues {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

fn header(properties: &BasicProperties, name: &str) -> Option<AMQPValue> {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name).cloned())
}

/// `rabbitmqctl stop_app`, undone when dropped (also when the test fails:
/// the broker is always left running).
struct Stopped;

impl Stopped {
    fn broker() -> Stopped {
        let ok = Command::new("rabbitmqctl")
            .arg("stop_app")
            .output()
            .expect("rabbitmqctl runs")
            .status
            .success();
        assert!(ok, "rabbitmqctl stop_app failed");
        Stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let _ = rabbitmq_url();
    }
}

/// A host whose application `shop` has the broker, with `echo` consuming
/// as `consume` says (YAML flow list) and allowed to publish `jobs.*`.
fn start(url: &str, consume: &str, extra: &str) -> Ferry {
    Ferry::options()
        .plugin(
            "echo",
            "echo",
            Some(&format!(
                "permissions: {{events: {{publish: [\"jobs.*\", \"orders.*\"]}}}}\nconsume: {consume}\n"
            )),
        )
        .socket("{path: run/ferry.sock, app: shop}")
        .config(&format!(
            "events: {{queue: 10000}}\napps:\n  shop:\n    hosts: [127.0.0.1]\n    services: [echo]\n    auth: none\n    rabbitmq: {{url: \"{url}\"}}\n{extra}"
        ))
        .start()
}

async fn consumer_status(ferry: &Ferry) -> Value {
    ferry.status().await["rabbitmq"]["consumers"][0].clone()
}

async fn until_consuming(ferry: &Ferry) {
    eventually("the consumer is up", WAIT, async || {
        (consumer_status(ferry).await["state"] == "up").then_some(())
    })
    .await;
}

/// Event payloads' `n` seen on `topic` until `want` distinct ones arrived.
async fn seen_numbers(consumer: &mut Consumer, want: usize, limit: Duration) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + limit;
    while seen.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} messages handled within {limit:?}",
            seen.len()
        );
        let line = consumer.recv().await.expect("the host stays up");
        if line["type"] == "event" {
            seen.insert(line["payload"]["n"].as_u64().expect("an n"));
        }
    }
    seen
}

#[tokio::test]
async fn a_message_is_consumed_by_a_plugin_and_acked() {
    let _shared = BROKER.read().unwrap_or_else(|e| e.into_inner());
    let Some(url) = rabbitmq_url() else { return };
    let queue = unique("jobs");
    let mut ferry = start(
        &url,
        &format!("[{{rabbitmq: \"{queue}\", action: publish, prefetch: 4}}]"),
        "",
    );
    let (mut events, _) =
        Consumer::hello(&ferry.events_socket(), "watcher", "w", &["jobs.>"]).await;
    until_consuming(&ferry).await;
    let (_connection, channel) = open(&url).await;
    for n in 0..20u64 {
        let body = json!({"topic": "jobs.done", "payload": {"n": n}}).to_string();
        send(&channel, &queue, body.as_bytes(), &format!("job-{n}")).await;
    }
    let seen = seen_numbers(&mut events, 20, WAIT).await;
    assert_eq!(seen, (0..20).collect());
    let status = eventually("all 20 acked", WAIT, async || {
        let s = consumer_status(&ferry).await;
        (s["acked"] == 20).then_some(s)
    })
    .await;
    assert_eq!(status["queue"], queue.as_str());
    assert_eq!(
        (status["retried"].as_u64(), status["dead"].as_u64()),
        (Some(0), Some(0))
    );
    let metrics = String::from_utf8(ferry.admin_http("GET", "/metrics").await.body).unwrap();
    let line =
        format!("ferry_rabbitmq_acked_total{{app=\"shop\",service=\"echo\",queue=\"{queue}\"}} 20");
    assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    // Acked, not merely taken: once the host is gone, nothing comes back
    // to the queue.
    ferry.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ready(&channel, &queue).await, 0);
    assert_eq!(ready(&channel, &format!("{queue}.dead")).await, 0);
    delete(&channel, &[queue.clone(), format!("{queue}.dead")]).await;
}

/// Waits for one message on `queue` and takes it.
async fn get_one(
    channel: &Channel,
    queue: &str,
    limit: Duration,
) -> lapin::message::BasicGetMessage {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(m) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            m.ack(BasicAckOptions::default()).await.unwrap();
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "nothing arrived in `{queue}` within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn int(value: Option<AMQPValue>) -> i64 {
    match value {
        Some(AMQPValue::LongLongInt(n)) => n,
        Some(AMQPValue::LongInt(n)) => i64::from(n),
        other => panic!("not an integer header: {other:?}"),
    }
}

fn text(value: Option<AMQPValue>) -> String {
    match value {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("not a string header: {other:?}"),
    }
}

#[tokio::test]
async fn a_failing_message_is_retried_with_growing_waits_then_dead_lettered() {
    let _shared = BROKER.read().unwrap_or_else(|e| e.into_inner());
    let Some(url) = rabbitmq_url() else { return };
    let queue = unique("failing");
    let ferry = start(
        &url,
        &format!("[{{rabbitmq: \"{queue}\", action: publish, max_attempts: 3, backoff_ms: 300}}]"),
        "",
    );
    until_consuming(&ferry).await;
    let (_connection, channel) = open(&url).await;
    // Not a granted topic: the action answers `forbidden` every time.
    let body = json!({"topic": "secret.things", "payload": {"n": 1}}).to_string();
    let sent = Instant::now();
    send(&channel, &queue, body.as_bytes(), "doomed").await;
    let dead_queue = format!("{queue}.dead");
    let dead = get_one(&channel, &dead_queue, WAIT).await;
    let took = sent.elapsed();
    // Two retries, after 300 ms and 600 ms, in the broker's delay queues.
    assert!(took >= Duration::from_millis(900), "dead after {took:?}");
    assert_eq!(dead.delivery.data, body.as_bytes(), "the body is kept");
    assert_eq!(
        dead.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("doomed")
    );
    assert_eq!(
        int(header(&dead.delivery.properties, "x-ferry-attempts")),
        3
    );
    let error = text(header(&dead.delivery.properties, "x-ferry-error"));
    assert!(error.starts_with("forbidden:"), "{error}");
    // Both delay queues exist and are empty again.
    for ms in [300, 600] {
        assert_eq!(ready(&channel, &format!("{queue}.retry.{ms}")).await, 0);
    }
    // A body that is not JSON is not worth a retry: dead at once.
    send(&channel, &queue, b"not json {", "garbage").await;
    let garbage = get_one(&channel, &dead_queue, WAIT).await;
    assert_eq!(garbage.delivery.data, b"not json {");
    assert_eq!(
        int(header(&garbage.delivery.properties, "x-ferry-attempts")),
        1
    );
    assert!(text(header(&garbage.delivery.properties, "x-ferry-error")).contains("not JSON"));
    let status = eventually("the counts settle", WAIT, async || {
        let s = consumer_status(&ferry).await;
        (s["dead"] == 2).then_some(s)
    })
    .await;
    assert_eq!(status["retried"], 2, "{status}");
    assert_eq!(status["acked"], 0, "{status}");
    assert_eq!(ready(&channel, &queue).await, 0);
    delete(
        &channel,
        &[
            queue.clone(),
            dead_queue,
            format!("{queue}.retry.300"),
            format!("{queue}.retry.600"),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_broker_restart_mid_stream_loses_no_message_and_the_consumer_resumes() {
    let _whole = BROKER.write().unwrap_or_else(|e| e.into_inner());
    let Some(url) = rabbitmq_url() else { return };
    let queue = unique("stream");
    let ferry = start(
        &url,
        &format!("[{{rabbitmq: \"{queue}\", action: publish, prefetch: 2}}]"),
        "",
    );
    let (mut events, _) =
        Consumer::hello(&ferry.events_socket(), "watcher", "w", &["jobs.>"]).await;
    until_consuming(&ferry).await;
    const N: u64 = 300;
    {
        let (connection, channel) = open(&url).await;
        for n in 0..N {
            // 10 ms each, two at a time: about 1.5 s of work in the queue.
            let body = json!({"topic": "jobs.done", "payload": {"n": n}, "spin_ms": 10});
            send(
                &channel,
                &queue,
                body.to_string().as_bytes(),
                &format!("m{n}"),
            )
            .await;
        }
        let _ = connection.close(200, "done".into()).await;
    }
    let mut seen = seen_numbers(&mut events, 40, WAIT).await;
    {
        let _stopped = Stopped::broker();
        // The host notices, and keeps trying while the broker is away.
        eventually("the consumer is down", WAIT, async || {
            (consumer_status(&ferry).await["state"] == "down").then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(rabbitmq_url().is_some());
    until_consuming(&ferry).await;
    seen.extend(
        seen_numbers(
            &mut events,
            N as usize - seen.len(),
            Duration::from_secs(60),
        )
        .await,
    );
    // Then take the rest of the stream's messages (duplicates are allowed:
    // a message being handled when the broker went is delivered again).
    let mut all = seen;
    while all.len() < N as usize {
        all.extend(seen_numbers(&mut events, 1, WAIT).await);
    }
    assert_eq!(all, (0..N).collect(), "every message handled");
    // New messages after the restart flow too.
    let (_connection, channel) = open(&url).await;
    for n in N..N + 10 {
        let body = json!({"topic": "jobs.done", "payload": {"n": n}});
        send(
            &channel,
            &queue,
            body.to_string().as_bytes(),
            &format!("m{n}"),
        )
        .await;
    }
    let mut after = BTreeSet::new();
    while after.len() < 10 {
        after.extend(
            seen_numbers(&mut events, 1, WAIT)
                .await
                .into_iter()
                .filter(|n| *n >= N),
        );
    }
    let broker = &ferry.status().await["rabbitmq"]["brokers"][0];
    assert!(broker["connections"].as_u64().unwrap() >= 2, "{broker}");
    assert_eq!(
        broker["url"], "amqp://guest:***@127.0.0.1:5672/%2f",
        "no password shown"
    );
    eventually("the queue is drained", WAIT, async || {
        (ready(&channel, &queue).await == 0).then_some(())
    })
    .await;
    let mut queues = vec![queue.clone(), format!("{queue}.dead")];
    queues.extend([1000, 2000, 4000, 8000].map(|ms| format!("{queue}.retry.{ms}")));
    delete(&channel, &queues).await;
}

/// Publishes through the plugin, as a plugin's event; answers its id.
async fn publish(ferry: &Ferry, topic: &str, payload: Value) -> String {
    ferry.publish_through_echo(topic, payload).await
}

/// The events socket's `source_status` for the bridge `orders`.
async fn source_status(ferry: &Ferry) -> Value {
    let (mut c, _) = Consumer::hello(&ferry.events_socket(), "probe", "p", &[]).await;
    c.send(&json!({"type": "status_query"})).await;
    c.recv_type("status_response").await["source_status"]["rabbitmq:orders"].clone()
}

#[tokio::test]
async fn bridged_events_arrive_in_a_queue_and_wait_out_a_broker_outage() {
    let _whole = BROKER.write().unwrap_or_else(|e| e.into_inner());
    let Some(url) = rabbitmq_url() else { return };
    let exchange = unique("orders-exchange");
    let ferry = start(
        &url,
        "[]",
        &format!(
            "    bridges:\n      orders: {{events: [\"orders.>\"], exchange: \"{exchange}\"}}\n"
        ),
    );
    eventually("the bridge is up", WAIT, async || {
        (source_status(&ferry).await["state"] == "up").then_some(())
    })
    .await;
    // The host declared the exchange; a queue of the test's binds to it.
    let (_connection, channel) = open(&url).await;
    let queue = unique("orders-copy");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "orders.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(publish(&ferry, "orders.created", json!({"n": n})).await);
    }
    // Not bridged: another topic.
    publish(&ferry, "jobs.other", json!({"n": 99})).await;
    for (n, id) in ids.iter().enumerate() {
        let m = get_one(&channel, &queue, WAIT).await;
        let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
        assert_eq!(body, json!({"n": n}), "in order, the payload as published");
        assert_eq!(m.delivery.routing_key.as_str(), "orders.created");
        assert_eq!(
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some(id.as_str())
        );
        assert_eq!(
            *m.delivery.properties.delivery_mode(),
            Some(2),
            "persistent"
        );
    }
    drop((_connection, channel));
    // The broker goes away: events are still accepted, and wait.
    let mut later = Vec::new();
    {
        let _stopped = Stopped::broker();
        eventually("the bridge is down", WAIT, async || {
            (source_status(&ferry).await["state"] == "down").then_some(())
        })
        .await;
        for n in 10..30 {
            later.push(publish(&ferry, "orders.created", json!({"n": n})).await);
        }
        let status = source_status(&ferry).await;
        assert_eq!(status["pending"], 20, "{status}");
        assert!(status["last_error"].is_string(), "{status}");
        let bridge = &ferry.status().await["rabbitmq"]["bridges"][0];
        assert_eq!(
            (&bridge["state"], &bridge["pending"]),
            (&json!("down"), &json!(20)),
            "{bridge}"
        );
    }
    assert!(rabbitmq_url().is_some());
    let (_connection, channel) = open(&url).await;
    for (i, id) in later.iter().enumerate() {
        let m = get_one(&channel, &queue, WAIT).await;
        let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
        assert_eq!(body, json!({"n": 10 + i}));
        assert_eq!(
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some(id.as_str())
        );
    }
    let status = eventually("the bridge is up with nothing pending", WAIT, async || {
        let s = source_status(&ferry).await;
        (s["state"] == "up" && s["pending"] == 0).then_some(s)
    })
    .await;
    assert!(status["last_error"].is_null(), "{status}");
    assert_eq!(
        ready(&channel, &queue).await,
        0,
        "nothing more than was published"
    );
    let bridge = &ferry.status().await["rabbitmq"]["bridges"][0];
    assert_eq!(bridge["published"], 30, "{bridge}");
    delete(&channel, &[queue]).await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
}

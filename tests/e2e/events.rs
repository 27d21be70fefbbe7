//! The events socket end to end, with a client written from the protocol
//! description in host/PROTOCOL.md (newline-delimited JSON objects with a
//! `type`), not from the host's types: hello and `first_for_key`, `seq` per
//! connection, drop-oldest with its gap and counter, disconnecting a
//! consumer that does not drain, the 1 MiB line limit, `pre_shutdown_check`,
//! `status_query`, `shutdown` on SIGTERM, and applications kept apart.

use std::time::{Duration, Instant};

use ferry_tests::bus::Consumer;
use ferry_tests::{Ferry, assert_error};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

async fn publish(ferry: &Ferry, topic: &str, payload: &Value) -> String {
    let reply = ferry
        .http(
            "POST",
            &format!("/v1/events/{topic}"),
            &[],
            payload.to_string().as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["event_id"]
        .as_str()
        .expect("an event id")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_say_hello_and_get_their_topics_in_seq_order() {
    let ferry = Ferry::options().start();
    let path = ferry.events_socket();
    let (mut first, ack) = Consumer::hello(&path, "billing-1", "billing", &["orders.*"]).await;
    assert_eq!(ack["first_for_key"], true);
    assert!(ack["bus_version"].is_number(), "{ack}");
    let (_second, ack) = Consumer::hello(&path, "billing-2", "billing", &["orders.*"]).await;
    assert_eq!(ack["first_for_key"], false);
    let (mut other, ack) = Consumer::hello(&path, "audit", "audit", &["audit.>"]).await;
    assert_eq!(ack["first_for_key"], true);

    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(publish(&ferry, "orders.created", &json!({"n": n})).await);
    }
    publish(&ferry, "orders.created.eu", &json!({"n": 0})).await;
    for (n, id) in (1..=3).zip(&ids) {
        let event = first.recv().await.unwrap();
        assert_eq!(event["type"], "event");
        assert_eq!(event["event_type"], "orders.created");
        assert_eq!(event["seq"], n);
        assert_eq!(event["payload"], json!({"n": n}));
        assert_eq!(&event["event_id"], id);
        let time = event["source_time"]
            .as_str()
            .expect("source_time is a string");
        assert!(
            time.len() >= 13 && time.bytes().all(|b| b.is_ascii_digit()),
            "{time}"
        );
    }
    // `orders.*` does not cover `orders.created.eu`; `audit.>` covers
    // `audit.login.failed`, and it is that consumer's first event.
    publish(&ferry, "audit.login.failed", &json!("x")).await;
    let event = other.recv().await.unwrap();
    assert_eq!(
        (event["event_type"].clone(), event["seq"].clone()),
        (json!("audit.login.failed"), json!(1))
    );

    let metrics = ferry.admin_http("GET", "/metrics").await.text();
    for line in [
        r#"ferry_events_published_total{app="default",topic="orders.created"} 3"#,
        r#"ferry_events_queued_total{app="default",topic="orders.created"} 6"#,
        r#"ferry_events_dropped_total{app="default",topic="orders.created"} 0"#,
        r#"ferry_events_published_total{app="default",topic="orders.created.eu"} 1"#,
        r#"ferry_event_consumers{app="default"} 3"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }

    first.send(&json!({"type": "status_query"})).await;
    let status = first.recv_type("status_response").await;
    assert_eq!(status["pid"], ferry.pid());
    assert!(status["uptime_sec"].is_number());
    assert_eq!(status["active_conns"], 3);
    let consumers = status["consumers"].as_array().unwrap();
    let billing = consumers
        .iter()
        .find(|c| c["consumer"] == "billing-1")
        .expect("listed");
    assert_eq!(billing["event_key"], "billing");
    assert_eq!(billing["topics"], json!(["orders.*"]));
    assert_eq!(billing["seq"], 3);
    assert_eq!(billing["dropped"], 0);
    assert!(consumers.iter().any(|c| c["consumer"] == "audit"));

    // Bad lines are answered and the connection stays.
    first.send(&json!({"type": "subscribe_all"})).await;
    assert_eq!(first.recv_type("error").await["code"], "bad_request");
    first
        .send(&json!({"type": "status_query", "extra": 1}))
        .await;
    assert_eq!(first.recv_type("error").await["code"], "bad_request");
    first.write.write_all(b"not json\n").await.unwrap();
    assert_eq!(first.recv_type("error").await["code"], "bad_request");
    let mut bad = Consumer::connect(&path).await;
    bad.send(&json!({"type": "hello", "consumer": "x", "event_key": "k", "topics": ["a.>.b"]}))
        .await;
    assert_eq!(bad.recv().await.unwrap()["code"], "bad_request");
    // Nothing but hello (and bye) before hello.
    bad.send(&json!({"type": "status_query"})).await;
    assert_eq!(bad.recv().await.unwrap()["code"], "bad_request");
    first.send(&json!({"type": "status_query"})).await;
    first.recv_type("status_response").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_that_stops_reading_sees_a_gap_then_its_newest_events() {
    let ferry = Ferry::options().config("events: {queue: 5}\n").start();
    let (mut slow, _) = Consumer::hello(&ferry.events_socket(), "slow", "k", &["load"]).await;
    // More than the socket's buffers hold, while the consumer reads nothing.
    let big = "x".repeat(16 * 1024);
    let total = 200u64;
    for n in 1..=total {
        publish(&ferry, "load", &json!({"n": n, "pad": big})).await;
    }
    let mut seqs = Vec::new();
    while seqs.last() != Some(&total) {
        let event = slow.recv().await.expect("an event");
        let seq = event["seq"].as_u64().unwrap();
        assert_eq!(event["payload"]["n"], seq, "seq and payload agree");
        seqs.push(seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq only grows");
    let received = seqs.len() as u64;
    assert!(
        received < total,
        "nothing was dropped: {received} of {total}"
    );
    // The newest five (the queue) all arrived after the gap.
    assert_eq!(&seqs[seqs.len() - 5..], &[196, 197, 198, 199, 200]);
    slow.send(&json!({"type": "status_query"})).await;
    let status = slow.recv_type("status_response").await;
    let me = &status["consumers"][0];
    assert_eq!(
        me["dropped"],
        total - received,
        "the drop counter is the gap: {me}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_that_does_not_drain_is_dropped_while_the_rest_carry_on() {
    let ferry = Ferry::options().start();
    let path = ferry.events_socket();
    let (stalled, _) = Consumer::hello(&path, "stalled", "s", &["tick"]).await;
    let (mut live, _) = Consumer::hello(&path, "live", "l", &["tick"]).await;
    let reader = tokio::spawn(async move {
        let mut expected = 1;
        while let Some(event) = live.recv().await {
            if event["type"] == "shutdown" {
                break;
            }
            assert_eq!(event["seq"], expected, "the live consumer lost nothing");
            expected += 1;
            if event["payload"]["last"] == true {
                break;
            }
        }
        expected - 1
    });
    let pad = "y".repeat(4 * 1024);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut published = 0u64;
    let mut gone_after = None;
    while started.elapsed() < Duration::from_secs(8) {
        let began = Instant::now();
        publish(&ferry, "tick", &json!({"pad": pad, "last": false})).await;
        slowest = slowest.max(began.elapsed());
        published += 1;
        if published % 50 == 0 && gone_after.is_none() {
            let status = ferry.status().await;
            let consumers = status["events"]["default"]["consumers"]
                .as_array()
                .unwrap()
                .clone();
            if !consumers.iter().any(|c| c["consumer"] == "stalled") {
                gone_after = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    publish(&ferry, "tick", &json!({"pad": "", "last": true})).await;
    let delivered = reader.await.unwrap();
    assert_eq!(
        delivered,
        published + 1,
        "the live consumer got every event"
    );
    let gone_after = gone_after.expect("the stalled consumer was never disconnected");
    assert!(
        gone_after > Duration::from_secs(4) && gone_after < Duration::from_secs(7),
        "disconnected after {gone_after:?}; the write timeout is 5 s"
    );
    assert!(
        slowest < Duration::from_millis(500),
        "a publish waited {slowest:?}"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_line_over_one_mebibyte_is_refused() {
    let ferry = Ferry::options().start();
    let mut c = Consumer::connect(&ferry.events_socket()).await;
    let mut line = vec![b' '; (1 << 20) + 1];
    line.push(b'\n');
    let _ = c.write.write_all(&line).await;
    let answer = c.recv().await.expect("an error line");
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["code"], "too_large");
    assert!(c.recv().await.is_none(), "the connection is closed");
    // A line of exactly 1 MiB is read (and is simply not a message).
    let mut c = Consumer::connect(&ferry.events_socket()).await;
    let mut line = vec![b' '; 1 << 20];
    line.push(b'\n');
    c.write.write_all(&line).await.unwrap();
    assert_eq!(c.recv().await.unwrap()["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread")]
async fn of_ten_consumers_leaving_at_once_exactly_one_is_last() {
    let ferry = Ferry::options().start();
    let path = ferry.events_socket();
    let mut consumers = Vec::new();
    for i in 0..10 {
        consumers.push(
            Consumer::hello(&path, &format!("worker-{i}"), "cleanup", &[])
                .await
                .0,
        );
    }
    let asks = consumers.into_iter().map(|mut c| {
        tokio::spawn(async move {
            c.send(&json!({"type": "pre_shutdown_check", "event_key": "cleanup"}))
                .await;
            let ack = c.recv_type("pre_shutdown_ack").await;
            (ack["last_for_key"].as_bool().expect("a boolean"), c)
        })
    });
    let mut answers = Vec::new();
    for ask in asks.collect::<Vec<_>>() {
        answers.push(ask.await.unwrap());
    }
    assert_eq!(
        answers.iter().filter(|(last, _)| *last).count(),
        1,
        "exactly one is last"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_tells_every_consumer_the_bus_is_stopping() {
    let mut ferry = Ferry::options().start();
    let path = ferry.events_socket();
    let mut readers = Vec::new();
    for i in 0..3 {
        let (mut c, _) = Consumer::hello(&path, &format!("c{i}"), "k", &["x"]).await;
        readers.push(tokio::spawn(async move { c.recv_type("shutdown").await }));
    }
    let status = tokio::task::block_in_place(|| ferry.terminate());
    assert!(status.success(), "{status}");
    for reader in readers {
        assert_eq!(reader.await.unwrap()["type"], "shutdown");
    }
    assert!(!path.exists(), "the events socket is removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn applications_have_buses_of_their_own_and_keys_guard_them() {
    let secret = "an events test secret of thirty-two bytes or more";
    let ferry = Ferry::options()
        .env("EVENTS_TEST_SECRET", secret)
        .config(
            "apps:\n  shop:\n    hosts: [shop.localhost]\n    services: []\n    auth: none\n  blog:\n    hosts: [blog.localhost]\n    services: []\n    auth: none\n  vault:\n    hosts: [vault.localhost]\n    services: []\n    auth:\n      jwt:\n        algorithms: [HS256]\n        secret_env: EVENTS_TEST_SECRET\n",
        )
        .start();
    let path = ferry.events_socket();
    let hello = async |app: &str, token: Option<&str>| {
        let mut c = Consumer::connect(&path).await;
        c.send(&json!({"type": "hello", "consumer": app, "event_key": "k", "topics": [">"], "app": app, "token": token}))
            .await;
        let ack = c.recv().await.unwrap();
        (c, ack)
    };
    let (mut shop, ack) = hello("shop", None).await;
    assert_eq!(ack["type"], "hello_ack");
    let (mut blog, ack) = hello("blog", None).await;
    assert_eq!(ack["first_for_key"], true, "keys are per application too");
    let (_, refused) = hello("vault", None).await;
    assert_eq!(
        (refused["type"].clone(), refused["code"].clone()),
        (json!("error"), json!("unauthorized"))
    );
    let (_, refused) = hello("vault", Some("not.a.token")).await;
    assert_eq!(refused["code"], "unauthorized");

    let post = async |host: &str, auth: Option<&str>| {
        let mut headers = vec![("Host", host)];
        let bearer;
        if let Some(token) = auth {
            bearer = format!("Bearer {token}");
            headers.push(("Authorization", &bearer));
        }
        ferry
            .http("POST", "/v1/events/news", &headers, br#"{"for": "shop"}"#)
            .await
    };
    assert_eq!(post("shop.localhost", None).await.status, 200);
    assert_error(&post("vault.localhost", None).await, 401, "unauthorized");
    assert_error(&post("nobody.localhost", None).await, 404, "not_found");
    let reply = ferry
        .http(
            "POST",
            "/v1/events/bad..topic",
            &[("Host", "shop.localhost")],
            b"{}",
        )
        .await;
    assert_error(&reply, 400, "bad_request");
    let reply = ferry
        .http(
            "POST",
            "/v1/events/news",
            &[("Host", "shop.localhost")],
            b"{nope",
        )
        .await;
    assert_error(&reply, 400, "bad_request");

    let event = shop.recv().await.unwrap();
    assert_eq!(event["payload"], json!({"for": "shop"}));
    // Blog sees nothing of shop's: its first event is its own.
    blog.send(&json!({"type": "publish", "topic": "news", "payload": {"for": "blog"}}))
        .await;
    let ack = blog.recv_type("publish_ack").await;
    assert!(ack["event_id"].is_string());
    let event = blog.recv_type("event").await;
    assert_eq!(
        (event["payload"].clone(), event["seq"].clone()),
        (json!({"for": "blog"}), json!(1))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_application_says_which_topics_outside_callers_may_use() {
    let ferry = Ferry::options()
        .config(
            "apps:\n  shop:\n    hosts: [shop.localhost]\n    services: []\n    auth: none\n    events: {publish: [orders.*], subscribe: [orders.>]}\n",
        )
        .start();
    let path = ferry.events_socket();
    let hello = async |topics: &[&str]| {
        let mut c = Consumer::connect(&path).await;
        c.send(&json!({"type": "hello", "consumer": "c", "event_key": "k", "topics": topics, "app": "shop"}))
            .await;
        let ack = c.recv().await.unwrap();
        (c, ack)
    };
    let (_, refused) = hello(&[">"]).await;
    assert_eq!(
        (refused["type"].clone(), refused["code"].clone()),
        (json!("error"), json!("forbidden")),
        "{refused}"
    );
    let (_, refused) = hello(&["orders.*", "audit.*"]).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let (mut c, ack) = hello(&["orders.*"]).await;
    assert_eq!(ack["type"], "hello_ack", "{ack}");

    let post = async |topic: &str| {
        ferry
            .http(
                "POST",
                &format!("/v1/events/{topic}"),
                &[("Host", "shop.localhost")],
                b"{}",
            )
            .await
    };
    c.send(&json!({"type": "publish", "topic": "orders.a.b", "payload": 1}))
        .await;
    assert_eq!(c.recv_type("error").await["code"], "forbidden");
    let message = assert_error(&post("news").await, 403, "forbidden");
    assert!(message.contains("events.publish"), "{message}");
    assert_eq!(post("orders.created").await.status, 200);
    let event = c.recv_type("event").await;
    assert_eq!(event["event_type"], "orders.created");
}

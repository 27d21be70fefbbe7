//! Plugins on the event bus, end to end: a plugin publishes from a request
//! (`ferry:plugin/events`), and plugins in Rust, Python and JavaScript
//! receive it through their `event-handler` export as their manifests
//! subscribe. Each receiving example publishes what it was delivered on
//! `seen.<name>`, so an outside consumer (the protocol client in
//! `ferry_tests::bus`) watches deliveries arrive: in order when ordered,
//! again after `retry`, on after a trap, to the dead-letter topic when
//! rejected or out of attempts, and never across applications.

use std::time::{Duration, Instant};

use ferry_tests::bus::Consumer;
use ferry_tests::{Ferry, expect_error, expect_success};
use serde_json::{Value, json};

/// Grants `seen.>` (where the examples report) and subscribes to `topics`.
fn receiver(topics: &str) -> String {
    format!("permissions:\n  events:\n    publish: [seen.>]\n    subscribe: {topics}\n")
}

/// The next `count` events, as `(event_type, payload)`.
async fn events(consumer: &mut Consumer, count: usize) -> Vec<(String, Value)> {
    let mut got = Vec::new();
    while got.len() < count {
        let e = consumer.recv_type("event").await;
        got.push((
            e["event_type"].as_str().unwrap().to_owned(),
            e["payload"].clone(),
        ));
    }
    got
}

async fn watch(ferry: &Ferry, topics: &[&str]) -> Consumer {
    let (consumer, _) = Consumer::hello(&ferry.events_socket(), "test", "test", topics).await;
    consumer
}

async fn publish_over_http(ferry: &Ferry, host: &str, topic: &str, payload: &Value) {
    let reply = ferry
        .http(
            "POST",
            &format!("/v1/events/{topic}"),
            &[("Host", host)],
            payload.to_string().as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

fn subscription(status: &Value, service: &str, topic: &str) -> Value {
    status["subscriptions"]
        .as_array()
        .expect("a subscriptions list")
        .iter()
        .find(|s| s["service"] == service && s["topic"] == topic)
        .cloned()
        .unwrap_or_else(|| panic!("no subscription {service} {topic} in {status}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_publishes_and_rust_python_javascript_and_c_plugins_receive_it() {
    let subscribe = receiver("[orders.>]");
    let ferry = Ferry::options()
        .plugin(
            "echo",
            "shop",
            Some("permissions: {events: {publish: [orders.*]}}\n"),
        )
        .plugin("echo", "echo", Some(&subscribe))
        .plugin("hello-py", "hello-py", Some(&subscribe))
        .plugin("hello-js", "hello-js", Some(&subscribe))
        .plugin("hello-c", "hello-c", Some(&subscribe))
        .start();
    let mut seen = watch(&ferry, &["seen.>"]).await;
    let mut client = ferry.connect().await;
    let mut publish = async |topic: &str, payload: Value| {
        client
            .request(&json!({"id": 1, "service": "shop", "action": "publish",
                "params": {"topic": topic, "payload": payload}}))
            .await
    };

    let reply = publish("orders.created", json!({"order": 7})).await;
    let id = expect_success(&reply)["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut got = events(&mut seen, 4).await;
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        names,
        [
            "seen.echo",
            "seen.hello-c",
            "seen.hello-js",
            "seen.hello-py"
        ]
    );
    for (_, delivery) in &got {
        assert_eq!(delivery["topic"], "orders.created", "{delivery}");
        assert_eq!(delivery["subscription"], "orders.>");
        assert_eq!(delivery["id"], id.as_str());
        assert_eq!(delivery["seq"], 1);
        assert_eq!(delivery["attempt"], 1);
        assert_eq!(delivery["app"], "default");
        assert_eq!(delivery["payload"], json!({"order": 7}));
        assert!(delivery["source_time_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }

    // Each language's handler answers `retry` until attempt 2.
    let reply = publish("orders.paid", json!({"retry_until": 2})).await;
    expect_success(&reply);
    for (_, delivery) in events(&mut seen, 4).await {
        assert_eq!(
            (delivery["attempt"].clone(), delivery["seq"].clone()),
            (json!(2), json!(2)),
            "{delivery}"
        );
    }

    // What the grant and the bus refuse, with its code.
    let reply = publish("payments.made", json!({})).await;
    let message = expect_error(&reply, "forbidden");
    assert!(message.contains("permissions"), "{message}");
    expect_error(&publish("orders..x", json!({})).await, "bad_request");
    expect_error(
        &publish("orders.big", json!("x".repeat(300 * 1024))).await,
        "too_large",
    );

    let status = ferry.status().await;
    for service in ["echo", "hello-py", "hello-js", "hello-c"] {
        let s = subscription(&status, service, "orders.>");
        assert_eq!(
            (s["delivered"].clone(), s["retried"].clone()),
            (json!(2), json!(1)),
            "{s}"
        );
        assert_eq!(s["lag"], 0, "{s}");
    }
    let metrics = ferry.admin_http("GET", "/metrics").await.text();
    let line = r#"ferry_events_delivered_total{app="default",topic="orders.created"} 4"#;
    assert!(
        metrics.lines().any(|l| l == line),
        "no `{line}` in\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ordered_delivery_keeps_the_order_and_concurrent_does_not_wait() {
    let ferry = Ferry::options()
        .plugin(
            "echo",
            "echo",
            Some(&receiver(
                "[ordered.>, {topic: parallel.>, delivery: concurrent, concurrency: 4}]",
            )),
        )
        .start();
    let mut seen = watch(&ferry, &["seen.>"]).await;
    // The first event takes 400 ms to handle, the second 10 ms.
    for topic in ["ordered.a", "parallel.a"] {
        publish_over_http(&ferry, "localhost", topic, &json!({"n": 1, "spin_ms": 400})).await;
        publish_over_http(&ferry, "localhost", topic, &json!({"n": 2, "spin_ms": 10})).await;
    }
    let mut ordered = Vec::new();
    let mut parallel = Vec::new();
    for (_, delivery) in events(&mut seen, 4).await {
        let n = delivery["payload"]["n"].as_u64().unwrap();
        match delivery["subscription"].as_str().unwrap() {
            "ordered.>" => ordered.push(n),
            _ => parallel.push(n),
        }
    }
    assert_eq!(ordered, [1, 2], "ordered delivery waits for each event");
    assert_eq!(
        parallel,
        [2, 1],
        "concurrent delivery does not hold the fast one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_is_retried_a_trap_does_not_stop_the_subscription_and_failures_are_dead_lettered() {
    let ferry = Ferry::options()
        .plugin(
            "echo",
            "echo",
            Some(&format!(
                "{}circuit: {{failures: 50}}\n",
                receiver(
                    "[{topic: work.>, max_attempts: 3, backoff_ms: 20, dead_letter: dead.work}]"
                )
            )),
        )
        .start();
    let mut seen = watch(&ferry, &["seen.>", "dead.>"]).await;
    let started = Instant::now();
    publish_over_http(
        &ferry,
        "localhost",
        "work.a",
        &json!({"n": 1, "retry_until": 3}),
    )
    .await;
    let got = events(&mut seen, 1).await;
    assert_eq!(got[0].0, "seen.echo");
    assert_eq!(got[0].1["attempt"], 3);
    // Back-off: 20 ms, then 40 ms.
    assert!(started.elapsed() >= Duration::from_millis(60));

    publish_over_http(
        &ferry,
        "localhost",
        "work.b",
        &json!({"n": 2, "trap": true}),
    )
    .await;
    publish_over_http(&ferry, "localhost", "work.c", &json!({"n": 3})).await;
    publish_over_http(
        &ferry,
        "localhost",
        "work.d",
        &json!({"n": 4, "retry_until": 10}),
    )
    .await;
    publish_over_http(
        &ferry,
        "localhost",
        "work.e",
        &json!({"n": 5, "reject": true}),
    )
    .await;
    let got = events(&mut seen, 4).await;
    let kinds: Vec<(&str, u64)> = got
        .iter()
        .map(|(t, p)| {
            let n = p["payload"]["n"]
                .as_u64()
                .or(p["event"]["payload"]["n"].as_u64());
            (t.as_str(), n.unwrap())
        })
        .collect();
    // Ordered: the trapping event is tried three times, then dead-lettered,
    // and the subscription goes on with the next.
    assert_eq!(
        kinds,
        [
            ("dead.work", 2),
            ("seen.echo", 3),
            ("dead.work", 4),
            ("dead.work", 5)
        ]
    );
    let letter = &got[0].1;
    assert_eq!(letter["attempts"], 3);
    assert_eq!(letter["service"], "echo");
    assert_eq!(letter["event"]["topic"], "work.b");
    assert!(
        letter["reason"].as_str().unwrap().contains("trapped"),
        "{letter}"
    );
    assert!(
        got[3].1["reason"].as_str().unwrap().starts_with("rejected"),
        "{}",
        got[3].1
    );
    assert_eq!(got[3].1["attempts"], 1);

    let s = subscription(&ferry.status().await, "echo", "work.>");
    assert_eq!(s["delivered"], 2, "{s}");
    assert_eq!(s["retried"], 2 + 2 + 2, "{s}");
    assert_eq!(s["failed"], 3, "{s}");
    assert_eq!(s["rejected"], 1, "{s}");
    let metrics = ferry.admin_http("GET", "/metrics").await.text();
    for line in [
        r#"ferry_event_subscription_retried_total{app="default",service="echo",topic="work.>"} 6"#,
        r#"ferry_event_subscription_failed_total{app="default",service="echo",topic="work.>"} 3"#,
        r#"ferry_event_subscription_lag{app="default",service="echo",topic="work.>"} 0"#,
        r#"ferry_events_failed_total{app="default",topic="work.e"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_of_one_application_never_reach_another() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", Some(&receiver("[orders.>]")))
        .config(
            "apps:\n  shop:\n    hosts: [shop.localhost]\n    services: [echo]\n    auth: none\n  blog:\n    hosts: [blog.localhost]\n    services: [echo]\n    auth: none\n",
        )
        .start();
    let path = ferry.events_socket();
    let hello = async |app: &str| {
        let mut c = Consumer::connect(&path).await;
        c.send(&json!({"type": "hello", "consumer": app, "event_key": "k", "topics": ["seen.>"], "app": app}))
            .await;
        assert_eq!(c.recv().await.unwrap()["type"], "hello_ack");
        c
    };
    let mut shop = hello("shop").await;
    let mut blog = hello("blog").await;
    publish_over_http(
        &ferry,
        "shop.localhost",
        "orders.created",
        &json!({"for": "shop"}),
    )
    .await;
    let got = events(&mut shop, 1).await;
    assert_eq!(got[0].1["app"], "shop");
    assert_eq!(got[0].1["payload"], json!({"for": "shop"}));
    // Blog's plugin subscription saw nothing of shop's: its first delivery,
    // and blog's consumer's first event, are blog's own.
    publish_over_http(
        &ferry,
        "blog.localhost",
        "orders.created",
        &json!({"for": "blog"}),
    )
    .await;
    let event = blog.recv_type("event").await;
    assert_eq!(event["seq"], 1);
    assert_eq!(event["payload"]["app"], "blog");
    assert_eq!(event["payload"]["seq"], 1);
    assert_eq!(event["payload"]["payload"], json!({"for": "blog"}));
    let status = ferry.status().await;
    let apps: Vec<&str> = status["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["app"].as_str().unwrap())
        .collect();
    assert_eq!(apps, ["blog", "shop"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_that_subscribes_needs_the_handler_and_valid_patterns() {
    let ferry = Ferry::options()
        .plugin("echo", "good", Some(&receiver("[a.>]")))
        .plugin("echo", "bad", Some(&receiver("[a.>.b]")))
        .start_with(|deploy| {
            std::fs::copy(
                ferry_tests::fixture("echo-wit-0.1.1.wasm"),
                deploy.join("old.wasm"),
            )
            .unwrap();
            std::fs::write(deploy.join("old.yaml"), receiver("[a.>]")).unwrap();
        });
    let status = ferry.status().await;
    let failed = |name: &str| {
        let s = ferry_tests::service_status(&status, name);
        assert_eq!(s["state"], "failed", "{s}");
        s["error"].as_str().unwrap().to_owned()
    };
    assert!(
        failed("bad").contains("not a topic pattern"),
        "{}",
        failed("bad")
    );
    assert!(failed("old").contains("event-handler"), "{}", failed("old"));
    let good = ferry_tests::service_status(&status, "good");
    assert_eq!(good["events"]["handler"], true);
    assert_eq!(good["events"]["subscribe"], json!(["a.>"]));
}

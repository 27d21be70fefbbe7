//! Outgoing webhooks end to end: events of a real host POSTed to a real
//! HTTP receiver (`ferry_tests::receiver`), signatures checked with the
//! Standard Webhooks reference library (the `standardwebhooks` crate), not
//! the host's code; retries that keep the id with growing gaps,
//! `Retry-After`, 410 disabling the endpoint, `ferry webhooks list` and
//! `retry`, a `kill -9` with 100 deliveries pending that loses none, and
//! an HTTPS receiver (trusted through the endpoint's `ca_file`; refused
//! against the public roots). In cluster mode, with two hosts on a real
//! NATS server with JetStream: each delivery is sent once, whichever host
//! took it, and one whose host is killed between its attempts is sent by
//! the other, with the same id.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use ferry_tests::receiver::{Received, Receiver};
use ferry_tests::services::OwnNats;
use ferry_tests::{Ferry, eventually, ferry_bin};

const WAIT: Duration = Duration::from_secs(20);

fn secret(seed: u8) -> String {
    let key: Vec<u8> = (0..24)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i))
        .collect();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The config of an application `shop` on the main socket with webhook
/// endpoints: (name, url, topic pattern, retry_ms).
fn config(endpoints: &[(&str, String, &str, &str)]) -> String {
    let mut hooks = String::new();
    for (name, url, pattern, retry) in endpoints {
        hooks.push_str(&format!(
            "      {name}:\n        url: {url}\n        secret_env: HOOK_SECRET\n        events: [\"{pattern}\"]\n        retry_ms: {retry}\n        timeout_ms: 2000\n"
        ));
    }
    format!(
        "apps:\n  shop:\n    hosts: [127.0.0.1]\n    services: [echo]\n    auth: none\n    webhooks:\n{hooks}"
    )
}

fn start(endpoints: &[(&str, String, &str, &str)], secrets: &str) -> Ferry {
    Ferry::options()
        .plugin(
            "echo",
            "echo",
            Some("permissions: {events: {publish: [\"orders.*\", \"ping.*\"]}}\n"),
        )
        .env("HOOK_SECRET", secrets)
        .socket("{path: run/ferry.sock, app: shop}")
        .config(&config(endpoints))
        .start()
}

/// Publishes through the plugin, as a plugin's event.
async fn publish(ferry: &Ferry, topic: &str, payload: Value) -> String {
    ferry.publish_through_echo(topic, payload).await
}

/// Checks a request with the reference library, for each secret given.
fn verify(request: &Received, secrets: &[String]) {
    for secret in secrets {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&request.body, &request.headers)
            .unwrap_or_else(|e| panic!("signature refused ({e:?}): {request:?}"));
    }
}

async fn received(receiver: &Receiver, path: &str, n: usize) -> Vec<Received> {
    eventually(&format!("{n} requests on {path}"), WAIT, async || {
        let got = receiver.received(path);
        (got.len() >= n).then_some(got)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_event_arrives_signed_and_the_reference_library_accepts_it() {
    let receiver = Receiver::start().await;
    let (old, new) = (secret(1), secret(2));
    // Two secrets while one is rotated: both sign.
    let ferry = start(
        &[("billing", receiver.url("/billing"), "orders.>", "[100]")],
        &format!("{old} {new}"),
    );
    let id = publish(
        &ferry,
        "orders.created",
        json!({"order": 7, "total": "12.50"}),
    )
    .await;
    publish(&ferry, "ping.x", json!({})).await;
    let got = received(&receiver, "/billing", 1).await;
    let request = &got[0];
    verify(request, &[old.clone(), new.clone()]);
    assert_eq!(request.header("webhook-id"), format!("msg_{id}_billing"));
    assert_eq!(
        request.header("webhook-signature").split(' ').count(),
        2,
        "{request:?}"
    );
    assert_eq!(request.header("content-type"), "application/json");
    let body = request.json();
    assert_eq!(body["type"], "orders.created");
    assert_eq!(body["data"], json!({"order": 7, "total": "12.50"}));
    let timestamp = body["timestamp"].as_str().unwrap();
    assert!(
        timestamp.len() == 24 && timestamp.ends_with('Z') && timestamp.contains('T'),
        "{timestamp}"
    );
    // A body altered by one byte is refused by the same library.
    let mut forged = request.clone();
    forged.body = request
        .body
        .iter()
        .map(|b| if *b == b'7' { b'8' } else { *b })
        .collect::<Vec<u8>>()
        .into();
    assert!(
        standardwebhooks::Webhook::new(&old)
            .unwrap()
            .verify(&forged.body, &forged.headers)
            .is_err()
    );
    // Only the topics the endpoint asked for.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received("/billing").len(), 1);
    let status = ferry.status().await;
    let hook = &status["webhooks"][0];
    assert_eq!(
        (&hook["endpoint"], &hook["delivered"], &hook["pending"]),
        (&json!("billing"), &json!(1), &json!(0)),
        "{hook}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_keep_the_id_with_growing_gaps_honour_retry_after_and_410_disables() {
    let receiver = Receiver::start().await;
    receiver.script("/flaky", &[(500, None), (500, None)]);
    receiver.script("/busy", &[(503, Some(1))]);
    receiver.otherwise("/gone", 410);
    let key = secret(3);
    let ferry = start(
        &[
            (
                "flaky",
                receiver.url("/flaky"),
                "orders.flaky",
                "[150, 600]",
            ),
            ("busy", receiver.url("/busy"), "orders.busy", "[50]"),
            ("gone", receiver.url("/gone"), "orders.gone", "[50, 50]"),
        ],
        &key,
    );

    // 500, 500, then 200: three attempts, one id, the second gap longer.
    publish(&ferry, "orders.flaky", json!({"n": 1})).await;
    let got = received(&receiver, "/flaky", 3).await;
    let ids: BTreeSet<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "{got:?}");
    for r in &got {
        verify(r, std::slice::from_ref(&key));
    }
    let (first, second) = (got[1].at - got[0].at, got[2].at - got[1].at);
    assert!(first >= Duration::from_millis(120), "{first:?}");
    assert!(second > first, "gaps {first:?} then {second:?}");
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 200]
    );

    // 503 with Retry-After: 1 waits a second, not the schedule's 50 ms.
    publish(&ferry, "orders.busy", json!({})).await;
    let got = received(&receiver, "/busy", 2).await;
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(950),
        "{:?}",
        got[1].at - got[0].at
    );

    // 410: the endpoint is disabled, the delivery dead, later events kept
    // back; `ferry webhooks retry` brings both back.
    publish(&ferry, "orders.gone", json!({"n": 1})).await;
    received(&receiver, "/gone", 1).await;
    let status = eventually("the endpoint is disabled", WAIT, async || {
        let status = ferry.status().await;
        let gone = status["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["endpoint"] == "gone")
            .cloned()
            .unwrap();
        (!gone["disabled"].is_null()).then_some(gone)
    })
    .await;
    assert!(
        status["disabled"].as_str().unwrap().contains("410"),
        "{status}"
    );
    publish(&ferry, "orders.gone", json!({"n": 2})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.received("/gone").len(),
        1,
        "nothing goes to a disabled endpoint"
    );

    let config = ferry.config_path();
    let list = Command::new(ferry_bin())
        .args(["webhooks", "list", "--dead", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(list.status.success(), "{list:?}");
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    let dead = listed["deliveries"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{listed}");
    assert_eq!(dead[0]["endpoint"], "gone");
    assert_eq!(dead[0]["state"], "dead");
    let id = dead[0]["id"].as_str().unwrap().to_owned();

    receiver.otherwise("/gone", 200);
    let retried = Command::new(ferry_bin())
        .args(["webhooks", "retry", &id, "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(retried.status.success(), "{retried:?}");
    let got = received(&receiver, "/gone", 2).await;
    assert_eq!(got[1].header("webhook-id"), id);
    assert_eq!(got[1].status, 200);
    let missing = Command::new(ferry_bin())
        .args(["webhooks", "retry", "msg_nothing", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stdout).contains("no dead delivery"));
    let metrics = ferry.admin_http("GET", "/metrics").await.text();
    assert!(
        metrics.contains(r#"ferry_webhook_delivered_total{app="shop",endpoint="flaky"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_100_deliveries_pending_loses_none() {
    let receiver = Receiver::start().await;
    receiver.otherwise("/k", 500);
    let key = secret(4);
    let endpoints = [(
        "k",
        receiver.url("/k"),
        "orders.>",
        "[100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100]",
    )];
    let ferry = start(&endpoints, &key);
    // Published from outside over HTTP: each is answered once its delivery
    // is in the outbox.
    let mut ids = BTreeSet::new();
    for n in 0..100 {
        let reply = ferry
            .http(
                "POST",
                "/v1/events/orders.created",
                &[],
                json!({"n": n}).to_string().as_bytes(),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        ids.insert(format!(
            "msg_{}_k",
            reply.json()["event_id"].as_str().unwrap()
        ));
    }
    received(&receiver, "/k", 10).await;
    let dir = ferry.kill_keeping_dir();

    receiver.otherwise("/k", 200);
    let again = Ferry::options_in(dir)
        .plugin("echo", "echo", None)
        .env("HOOK_SECRET", &key)
        .socket("{path: run/ferry.sock, app: shop}")
        .config(&config(&endpoints))
        .start();
    let delivered = eventually(
        "all 100 delivered after the restart",
        Duration::from_secs(60),
        async || {
            let delivered: BTreeSet<String> = receiver
                .received("/k")
                .iter()
                .filter(|r| r.status == 200)
                .map(|r| r.header("webhook-id").to_owned())
                .collect();
            (delivered.len() >= 100).then_some(delivered)
        },
    )
    .await;
    assert_eq!(delivered, ids);
    for r in receiver.received("/k").iter().filter(|r| r.status == 200) {
        verify(r, std::slice::from_ref(&key));
    }
    let status = eventually("nothing pending", WAIT, async || {
        let status = again.status().await;
        (status["webhooks"][0]["pending"] == 0).then_some(status)
    })
    .await;
    assert_eq!(
        status["webhooks"][0]["delivered"], 100,
        "{}",
        status["webhooks"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_endpoint_is_verified_and_one_that_cannot_be_is_not_sent_to() {
    let (receiver, ca) = Receiver::start_tls().await;
    let key = secret(3);
    let hooks = format!(
        "      trusted:\n        url: {}\n        ca_file: ca.pem\n        secret_env: HOOK_SECRET\n        events: [\"orders.>\"]\n        retry_ms: [60000]\n        timeout_ms: 2000\n      \
         untrusted:\n        url: {}\n        secret_env: HOOK_SECRET\n        events: [\"orders.>\"]\n        retry_ms: [60000]\n        timeout_ms: 2000\n",
        receiver.https_url("/trusted"),
        receiver.https_url("/untrusted"),
    );
    let ferry = Ferry::options()
        .plugin(
            "echo",
            "echo",
            Some("permissions: {events: {publish: [\"orders.*\"]}}\n"),
        )
        .env("HOOK_SECRET", &key)
        .file("ca.pem", ca.as_bytes())
        .socket("{path: run/ferry.sock, app: shop}")
        .config(&format!(
            "apps:\n  shop:\n    hosts: [127.0.0.1]\n    services: [echo]\n    auth: none\n    webhooks:\n{hooks}"
        ))
        .start();
    let id = publish(&ferry, "orders.created", json!({"order": 8})).await;
    // Over TLS, trusting only the endpoint's own CA: signed as over http.
    let got = received(&receiver, "/trusted", 1).await;
    verify(&got[0], std::slice::from_ref(&key));
    assert_eq!(got[0].header("webhook-id"), format!("msg_{id}_trusted"));
    assert_eq!(got[0].json()["data"], json!({"order": 8}));
    // The same receiver checked against the public roots fails the
    // handshake: nothing is sent, and the error says why.
    let untrusted = eventually("the untrusted attempt fails", WAIT, async || {
        let status = ferry.status().await;
        status["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["endpoint"] == "untrusted" && h["retried"] == 1)
            .cloned()
    })
    .await;
    let error = untrusted["last_error"].as_str().unwrap();
    assert!(
        error.contains("TLS") && error.contains("certificate"),
        "{error}"
    );
    assert!(receiver.received("/untrusted").is_empty());
}

/// A host of cluster `url` named `name`, publishing `orders.*` events
/// (through `echo`) of application `shop` to one endpoint, `billing`.
fn cluster_host(url: &str, name: &str, receiver: &Receiver, secret: &str) -> Ferry {
    let endpoints = [("billing", receiver.url("/billing"), "orders.*", "[1500]")];
    Ferry::options()
        .plugin(
            "echo",
            "echo",
            Some("permissions: {events: {publish: [\"orders.*\"]}}\n"),
        )
        .env("HOOK_SECRET", secret)
        .socket("{path: run/ferry.sock, app: shop}")
        .config(&format!(
            "cluster: {{nats: \"{url}\", name: {name}}}\n{}",
            config(&endpoints)
        ))
        .start()
}

/// The `billing` endpoint's line in `ferry`'s status.
async fn billing(ferry: &Ferry) -> Value {
    ferry.status().await["webhooks"][0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_cluster_each_delivery_is_sent_once_and_another_host_finishes_a_dead_hosts_retry() {
    // A JetStream of the test's own: the stream starts empty.
    let nats = OwnNats::with_jetstream();
    let receiver = Receiver::start().await;
    let secret = secret(7);
    let a = cluster_host(&nats.url(), "host-a", &receiver, &secret);
    let b = cluster_host(&nats.url(), "host-b", &receiver, &secret);
    for host in [&a, &b] {
        eventually("the host uses the cluster's stream", WAIT, async || {
            billing(host).await["queued_in_cluster"].as_u64()
        })
        .await;
    }

    // Published on either host, sent once by one of them.
    let mut ids = BTreeSet::new();
    for n in 0..20 {
        let on = if n % 2 == 0 { &a } else { &b };
        ids.insert(publish(on, &format!("orders.{n}"), json!({"n": n})).await);
    }
    let got = received(&receiver, "/billing", 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count("/billing"), 20, "a delivery was sent twice");
    let sent: BTreeSet<String> = got
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    let wanted: BTreeSet<String> = ids.iter().map(|id| format!("msg_{id}_billing")).collect();
    assert_eq!(sent, wanted);
    for r in &got {
        verify(r, std::slice::from_ref(&secret));
    }
    let delivered = |v: &Value| v["delivered"].as_u64().unwrap();
    assert_eq!(
        delivered(&billing(&a).await) + delivered(&billing(&b).await),
        20
    );

    // The next attempt fails; the host that made it dies before its retry
    // (due 1.5 s later), and the other host sends it.
    receiver.script("/billing", &[(500, None)]);
    let id = publish(&a, "orders.last", json!({"last": true})).await;
    received(&receiver, "/billing", 21).await;
    let (tried, other) = eventually("one host counts the retry", WAIT, async || {
        let (on_a, on_b) = (billing(&a).await, billing(&b).await);
        match (on_a["retried"].as_u64()?, on_b["retried"].as_u64()?) {
            (1, 0) => Some(("a", "b")),
            (0, 1) => Some(("b", "a")),
            _ => None,
        }
    })
    .await;
    let (dying, survivor) = if tried == "a" { (a, b) } else { (b, a) };
    let before = delivered(&billing(&survivor).await);
    // Time for its negative acknowledgement to reach the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    dying.kill_keeping_dir();
    let got = received(&receiver, "/billing", 22).await;
    let (first, second) = (&got[20], &got[21]);
    assert_eq!(first.header("webhook-id"), format!("msg_{id}_billing"));
    assert_eq!(second.header("webhook-id"), first.header("webhook-id"));
    assert_eq!(second.body, first.body);
    verify(second, std::slice::from_ref(&secret));
    let gap = second.at.duration_since(first.at);
    assert!(
        gap >= Duration::from_millis(1_200),
        "the retry came after {gap:?}, before its time"
    );
    eventually(
        &format!("host-{other} counts it delivered"),
        WAIT,
        async || (delivered(&billing(&survivor).await) == before + 1).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count("/billing"), 22);
}

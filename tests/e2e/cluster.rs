//! Cluster mode end to end: three real hosts and the machine's real NATS
//! server. A request that reaches host A for a service only other hosts
//! serve is answered by them, with its token, tenant, trace and remaining
//! deadline carried across; with two hosts serving, both take a share; a
//! service no host serves answers `unavailable`; a plugin's call to a
//! service on another host keeps the caller's identity.

use std::time::Duration;

use serde_json::{Value, json};

use ferry_tests::services::nats_url;
use ferry_tests::{Ferry, eventually, expect_error, expect_success, hs256_token};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "cluster-test-secret-of-enough-length";

/// An application name no other run shares on the NATS server.
fn unique_app() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "c{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A host named `name` in the cluster, serving `plugins` ((plugin,
/// service, manifest)) of application `app` (which lists `echo`, `relay`
/// and `todo` whether or not this host has them).
fn host(url: &str, app: &str, name: &str, plugins: &[(&str, &str, Option<&str>)]) -> Ferry {
    let mut options = Ferry::options();
    for (plugin, service, manifest) in plugins {
        options = options.plugin(plugin, service, *manifest);
    }
    options
        .env("CLUSTER_TEST_SECRET", SECRET)
        .socket(&format!("{{path: run/ferry.sock, app: {app}}}"))
        .config(&format!(
            "cluster: {{nats: \"{url}\", name: {name}}}\napps:\n  {app}:\n    hosts: [127.0.0.1]\n    services: [echo, relay, todo]\n    auth:\n      jwt:\n        algorithms: [HS256]\n        secret_env: CLUSTER_TEST_SECRET\n        tenant_claim: tenant\n"
        ))
        .start()
}

/// Waits until `ferry` answers for `service` of `app` in the cluster.
async fn answering(ferry: &Ferry, app: &str, service: &str) {
    eventually(
        &format!("{service} answers for the cluster"),
        WAIT,
        async || {
            let status = ferry.status().await;
            status["cluster"]["answering"]
                .as_array()?
                .iter()
                .any(|a| a["app"] == app && a["service"] == service && a["ready"] == true)
                .then_some(())
        },
    )
    .await;
}

/// A token for application `app` (its name is the audience).
fn token(app: &str, subject: &str, tenant: &str) -> String {
    hs256_token(
        SECRET,
        &json!({"sub": subject, "tenant": tenant, "aud": app}),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_reach_the_hosts_that_serve_them_and_share_out_between_them() {
    let Some(url) = nats_url() else { return };
    let app = unique_app();
    let public = Some("public: [params]\n");
    let a = host(&url, &app, "host-a", &[]);
    let b = host(&url, &app, "host-b", &[("echo", "echo", public)]);
    let c = host(&url, &app, "host-c", &[("echo", "echo", public)]);
    answering(&b, &app, "echo").await;
    answering(&c, &app, "echo").await;

    // Identity, tenant, trace and the time left cross with the request.
    let mut client = a.connect().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reply = client
        .request(
            &json!({"id": "ctx-1", "service": "echo", "action": "context",
            "token": token(&app, "ada", "acme"), "timeout_ms": 2000, "trace": trace}),
        )
        .await;
    let seen = expect_success(&reply);
    assert_eq!(reply["id"], "ctx-1", "{reply}");
    assert_eq!(
        (&seen["subject"], &seen["tenant"]),
        (&json!("ada"), &json!("acme")),
        "{seen}"
    );
    assert_eq!(seen["trace_id"], trace, "{seen}");
    assert_eq!(seen["request_id"], "\"ctx-1\"", "{seen}");
    let left = seen["time_left_ms"].as_u64().unwrap();
    assert!(left <= 2000 && left > 1000, "time left {left}");
    // Checked by the host that serves it: no token, no access.
    let reply = client
        .request(&json!({"id": 2, "service": "echo", "action": "context"}))
        .await;
    expect_error(&reply, "unauthorized");

    // Load is shared between B and C.
    let before = b.plugin_requests("echo").await + c.plugin_requests("echo").await;
    for n in 0..60 {
        let reply = client
            .request(&json!({"id": n, "service": "echo", "action": "params", "params": {"n": n}}))
            .await;
        assert_eq!(expect_success(&reply), &json!({"n": n}), "{reply}");
    }
    let (on_b, on_c) = (
        b.plugin_requests("echo").await,
        c.plugin_requests("echo").await,
    );
    assert_eq!(on_b + on_c - before, 60);
    assert!(
        on_b > 5 && on_c > 5,
        "one host took nearly all: b {on_b}, c {on_c}"
    );
    // Over HTTP too.
    let reply = a
        .http("POST", "/v1/echo/params", &[], br#"{"over":"http"}"#)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"over": "http"}));

    // A listed service that no host serves.
    let reply = client
        .request(&json!({"id": 3, "service": "todo", "action": "list", "token": token(&app, "ada", "acme")}))
        .await;
    let message = expect_error(&reply, "unavailable");
    assert!(
        message.contains("no host of the cluster serves `todo`"),
        "{message}"
    );

    let status = a.status().await;
    let cluster: &Value = &status["cluster"];
    assert_eq!(cluster["name"], "host-a");
    assert_eq!(cluster["connected"], true);
    assert!(cluster["forwarded"].as_u64().unwrap() >= 63, "{cluster}");
    let served = b.status().await["cluster"]["served_for_others"]
        .as_u64()
        .unwrap()
        + c.status().await["cluster"]["served_for_others"]
            .as_u64()
            .unwrap();
    assert!(served >= 62, "{served}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_call_to_a_service_on_another_host_keeps_its_identity() {
    let Some(url) = nats_url() else { return };
    let app = unique_app();
    // `relay` (the echo plugin) lives on A and may call `echo`, which only
    // B serves.
    let a = host(
        &url,
        &app,
        "host-a",
        &[("echo", "relay", Some("permissions: {calls: [echo]}\n"))],
    );
    let b = host(&url, &app, "host-b", &[("echo", "echo", None)]);
    answering(&b, &app, "echo").await;
    let mut client = a.connect().await;
    let reply = client
        .request(&json!({"id": 1, "service": "relay", "action": "relay",
            "token": token(&app, "grace", "initech"),
            "params": {"calls": [{"service": "echo", "action": "context"}]}}))
        .await;
    let outcome = &expect_success(&reply)["outcomes"][0]["result"];
    assert_eq!(outcome["caller"], "relay", "{reply}");
    assert_eq!(
        (&outcome["subject"], &outcome["tenant"]),
        (&json!("grace"), &json!("initech")),
        "{reply}"
    );
    assert_eq!(outcome["service"], "echo");
    assert_eq!(b.plugin_requests("echo").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_killed_under_load_fails_only_what_it_held_and_the_others_take_over() {
    let Some(url) = nats_url() else { return };
    let app = unique_app();
    let public = Some("public: [params, spin]\n");
    let a = host(&url, &app, "host-a", &[]);
    let b = host(&url, &app, "host-b", &[("echo", "echo", public)]);
    let c = host(&url, &app, "host-c", &[("echo", "echo", public)]);
    answering(&b, &app, "echo").await;
    answering(&c, &app, "echo").await;
    let socket = a.socket.clone();
    let started = std::time::Instant::now();
    // Four clients, each one request at a time (5 ms of work, 1 s
    // deadline), for three seconds; B dies after one.
    let mut clients = Vec::new();
    for k in 0..4u64 {
        let socket = socket.clone();
        clients.push(tokio::spawn(async move {
            let mut client = ferry_tests::Client::connect(&socket).await;
            let mut outcomes = Vec::new();
            let mut n = 0u64;
            while started.elapsed() < Duration::from_secs(3) {
                n += 1;
                let sent = std::time::Instant::now();
                let reply = tokio::time::timeout(
                    Duration::from_secs(3),
                    client.request(&json!({"id": k * 100_000 + n, "service": "echo",
                        "action": "spin", "params": {"ms": 5}, "timeout_ms": 1000})),
                )
                .await
                .expect("no request hangs");
                outcomes.push((sent.duration_since(started), sent.elapsed(), reply));
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = started.elapsed();
    let served_by_b = b.plugin_requests("echo").await;
    b.kill_keeping_dir();
    let mut failed = 0;
    let mut total = 0;
    for client in clients {
        for (at, took, reply) in client.await.unwrap() {
            total += 1;
            if reply["status"] == "success" {
                continue;
            }
            failed += 1;
            // Only what B held when it died, and within its deadline.
            let code = reply["error"]["code"].as_str().unwrap_or("");
            assert!(matches!(code, "timeout" | "unavailable"), "{reply}");
            assert!(
                took < Duration::from_millis(1_500),
                "a failure took {took:?}"
            );
            assert!(
                at + took >= killed_at && at < killed_at + Duration::from_millis(1_200),
                "a request sent {at:?} (B died at {killed_at:?}) failed: {reply}"
            );
        }
    }
    assert!(served_by_b > 0, "B took no share before it died");
    assert!(failed <= 4, "{failed} of {total} failed");
    assert!(total > 100, "only {total} requests in three seconds");
    // Everything after is C's.
    let mut client = a.connect().await;
    for n in 0..10 {
        let reply = client
            .request(&json!({"id": n, "service": "echo", "action": "params", "params": {"n": n}}))
            .await;
        assert_eq!(expect_success(&reply), &json!({"n": n}), "{reply}");
    }
}

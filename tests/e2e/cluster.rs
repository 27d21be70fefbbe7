//! Cluster mode end to end: three real hosts and the machine's real NATS
//! server. A request that reaches host A for a service only other hosts
//! serve is answered by them, with its token, tenant, trace and remaining
//! deadline carried across; with two hosts serving, both take a share; a
//! service no host serves answers `unavailable`; a plugin's call to a
//! service on another host keeps the caller's identity; an event
//! published on one host reaches outside consumers on every host and each
//! plugin subscription once per cluster; a NATS restart makes forwarded
//! requests `unavailable` meanwhile, and then they flow again; `ferry
//! deploy --cluster` reaches every host, one started later too.

use std::time::Duration;

use serde_json::{Value, json};

use ferry_tests::bus::Consumer;
use ferry_tests::services::{OwnNats, nats_url};
use ferry_tests::{
    Ferry, eventually, expect_error, expect_success, ferry_bin, hs256_token, plugin_wasm,
    scratch_dir, service_status,
};

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

    // A has heard from the hosts, and knows `echo` is served elsewhere.
    eventually("A lists the hosts of the cluster", WAIT, async || {
        let cluster = a.status().await["cluster"].clone();
        let names: Vec<&str> = cluster["hosts"]
            .as_array()?
            .iter()
            .filter_map(|h| h["name"].as_str())
            .collect();
        let echo = cluster["services"]
            .as_array()?
            .iter()
            .find(|s| s["app"] == app.as_str() && s["service"] == "echo")?
            .clone();
        (names == ["host-a", "host-b", "host-c"]
            && echo["served"] == "remote"
            && echo["remote_hosts"] == json!(["host-b", "host-c"]))
        .then_some(())
    })
    .await;
    // `ferry status` prints the same.
    let printed = std::process::Command::new(ferry_bin())
        .args(["status", "--admin", &a.admin.unwrap().to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.status.success(), "{table}");
    assert!(
        table.contains("cluster: this host is host-a (connected)"),
        "{table}"
    );
    let row = |start: &str| {
        table
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no `{start}` line in {table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(row("host-a (this)").ends_with(" -"), "{table}");
    assert!(row("host-b").ends_with(&format!("{app}/echo")), "{table}");
    assert_eq!(
        row(&format!("{app}/echo")),
        format!("{app}/echo remote host-b, host-c")
    );
    let metrics = a.admin_http("GET", "/metrics").await.text();
    let forwarded = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_cluster_forwarded_total{host=\"host-a\"} "))
        .unwrap_or_else(|| panic!("no forwarded count in {metrics}"));
    assert!(forwarded.parse::<u64>().unwrap() >= 63, "{forwarded}");
    assert!(
        metrics.contains("ferry_cluster_connected{host=\"host-a\"} 1"),
        "{metrics}"
    );
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

/// An outside consumer of `app` on `ferry`'s events socket.
async fn consumer(ferry: &Ferry, app: &str, topics: &[&str]) -> Consumer {
    let mut c = Consumer::connect(&ferry.events_socket()).await;
    c.send(
        &json!({"type": "hello", "consumer": "test", "event_key": "test",
        "topics": topics, "token": token(app, "ops", "acme")}),
    )
    .await;
    let ack = c.recv().await.expect("a hello_ack");
    assert_eq!(ack["type"], "hello_ack", "{ack}");
    c
}

/// Waits until `ferry` takes other hosts' events and feeds its plugin
/// subscriptions (`subscriptions` of them) from the cluster.
async fn feeding(ferry: &Ferry, subscriptions: usize) {
    eventually("the cluster's events are fed", WAIT, async || {
        let events = &ferry.status().await["cluster"]["events"];
        let feeds = events["subscriptions"].as_array()?;
        (events["consumers_ready"] == true
            && feeds.len() == subscriptions
            && feeds.iter().all(|f| f["ready"] == true))
        .then_some(())
    })
    .await;
}

/// The `delivered` count of `ferry`'s subscription of `service` to `topic`.
async fn handled(ferry: &Ferry, service: &str, topic: &str) -> u64 {
    let status = ferry.status().await;
    let list = status["subscriptions"].as_array().unwrap();
    let s = list
        .iter()
        .find(|s| s["service"] == service && s["topic"] == topic)
        .unwrap_or_else(|| panic!("no subscription {service} {topic} in {status}"));
    s["delivered"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_reaches_consumers_on_every_host_and_a_plugin_subscription_once() {
    let Some(url) = nats_url() else { return };
    let app = unique_app();
    // `relay` on A publishes; `echo` on B and C subscribes to `orders.>`
    // and reports each event it handles on `seen.echo`.
    let publisher = "public: [publish]\npermissions: {events: {publish: [orders.*]}}\n";
    let subscriber = "permissions:\n  events:\n    publish: [seen.>]\n    subscribe: [orders.>]\n";
    let a = host(&url, &app, "host-a", &[("echo", "relay", Some(publisher))]);
    let b = host(&url, &app, "host-b", &[("echo", "echo", Some(subscriber))]);
    let c = host(&url, &app, "host-c", &[("echo", "echo", Some(subscriber))]);
    feeding(&a, 0).await;
    feeding(&b, 1).await;
    feeding(&c, 1).await;
    let mut on_a = consumer(&a, &app, &["orders.>"]).await;
    let mut on_c = consumer(&c, &app, &["orders.>", "seen.>"]).await;
    // The consumers' hellos are in; their hosts' subscriptions to the
    // cluster were ready before.

    let mut client = a.connect().await;
    let mut published = Vec::new();
    for n in 0..30 {
        let reply = client
            .request(&json!({"id": n, "service": "relay", "action": "publish",
                "params": {"topic": "orders.created", "payload": {"n": n}}}))
            .await;
        published.push(
            expect_success(&reply)["event_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Ids are unique across the cluster: they name their host.
    assert!(published[0].contains("host-a"), "{}", published[0]);

    // A's own consumer: every event once, in order, from A itself.
    for (n, id) in published.iter().enumerate() {
        let e = on_a.recv_type("event").await;
        assert_eq!(e["event_id"], id.as_str(), "{e}");
        assert_eq!(e["payload"], json!({"n": n}), "{e}");
    }
    // C's consumer: every event once and in order, and for each, one
    // report from whichever of B and C handled it.
    let mut orders = Vec::new();
    let mut seen = Vec::new();
    while orders.len() < published.len() || seen.len() < published.len() {
        let e = on_c.recv_type("event").await;
        match e["event_type"].as_str().unwrap() {
            "orders.created" => orders.push(e["event_id"].as_str().unwrap().to_owned()),
            "seen.echo" => seen.push(e["payload"]["id"].as_str().unwrap().to_owned()),
            other => panic!("an event on {other}: {e}"),
        }
    }
    assert_eq!(orders, published);
    seen.sort();
    let mut expected = published.clone();
    expected.sort();
    assert_eq!(seen, expected, "each event handled once by the cluster");

    // Nothing more comes: the counts stay at one handling per event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (by_b, by_c) = (
        handled(&b, "echo", "orders.>").await,
        handled(&c, "echo", "orders.>").await,
    );
    assert_eq!(by_b + by_c, 30, "b {by_b}, c {by_c}");
    let consumers = |status: Value| status["events"][&app]["consumers"][0]["seq"].clone();
    assert_eq!(
        consumers(a.status().await),
        30,
        "A's consumer got each event once"
    );
    assert_eq!(
        consumers(c.status().await),
        60,
        "C's consumer got each event once"
    );
    let sent = a.status().await["cluster"]["events"]["sent"]
        .as_u64()
        .unwrap();
    assert!(sent >= 30, "{sent}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_restart_makes_forwarded_requests_unavailable_and_then_they_flow_again() {
    // A server of this test's own, so it can be killed and started again.
    let mut nats = OwnNats::start();
    let url = nats.url();
    let app = unique_app();
    let public = Some("public: [params]\n");
    let a = host(&url, &app, "host-a", &[]);
    let b = host(&url, &app, "host-b", &[("echo", "echo", public)]);
    answering(&b, &app, "echo").await;
    let mut client = a.connect().await;
    let ask = async |client: &mut ferry_tests::Client, n: u64| {
        client
            .request(&json!({"id": n, "service": "echo", "action": "params",
                "params": {"n": n}, "timeout_ms": 2000}))
            .await
    };
    assert_eq!(expect_success(&ask(&mut client, 0).await), &json!({"n": 0}));

    nats.kill();
    eventually("A sees NATS gone", WAIT, async || {
        (a.status().await["cluster"]["connected"] == false).then_some(())
    })
    .await;
    for n in 1..=5 {
        let sent = std::time::Instant::now();
        let reply = ask(&mut client, n).await;
        let message = expect_error(&reply, "unavailable");
        assert!(message.contains("cannot be reached"), "{message}");
        assert!(
            sent.elapsed() < Duration::from_millis(500),
            "told only after {:?}",
            sent.elapsed()
        );
    }
    // B's own requests go on meanwhile.
    let mut on_b = b.connect().await;
    assert_eq!(expect_success(&ask(&mut on_b, 6).await), &json!({"n": 6}));

    nats.restart();
    eventually(
        "forwarded requests flow again",
        Duration::from_secs(30),
        async || {
            let mut client = a.connect().await;
            (ask(&mut client, 7).await["status"] == "success").then_some(())
        },
    )
    .await;
    for n in 8..20 {
        assert_eq!(expect_success(&ask(&mut client, n).await), &json!({"n": n}));
    }
    assert_eq!(a.status().await["cluster"]["connected"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn ferry_deploy_to_the_cluster_reaches_every_host_one_started_later_too() {
    // A server of its own with JetStream: the bucket starts empty and goes
    // with the test.
    let nats = OwnNats::with_jetstream();
    let url = nats.url();
    let app = unique_app();
    let a = host(&url, &app, "host-a", &[]);
    let b = host(&url, &app, "host-b", &[]);
    for h in [&a, &b] {
        h.log_with("following the cluster's components").await;
    }
    let dir = scratch_dir();
    let manifest = dir.join("todo.yaml");
    std::fs::write(&manifest, "public: [params]\n").unwrap();
    let out = std::process::Command::new(ferry_bin())
        .args(["deploy", "--cluster", plugin_wasm("echo").to_str().unwrap()])
        .args(["--name", "todo", "--manifest", manifest.to_str().unwrap()])
        .args(["--config", a.config_path().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It waits for the host of its own config.
    assert!(stdout.contains("serving after"), "{stdout}");
    let c = host(&url, &app, "host-c", &[]);
    let deployment = service_status(&a.status().await, "todo")["deployment"].clone();
    for (name, h) in [("a", &a), ("b", &b), ("c", &c)] {
        eventually(&format!("host {name} serves todo"), WAIT, async || {
            let status = h.status().await;
            let todo = status["services"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == "todo")?
                .clone();
            (todo["deployment"] == deployment).then_some(())
        })
        .await;
        // Served by the host itself, with the manifest that came with it
        // (`params` public: no token).
        let before = h.plugin_requests("todo").await;
        let mut client = h.connect().await;
        let reply = client
            .request(
                &json!({"id": 1, "service": "todo", "action": "params", "params": {"on": name}}),
            )
            .await;
        assert_eq!(expect_success(&reply), &json!({"on": name}), "{reply}");
        assert_eq!(h.plugin_requests("todo").await, before + 1);
        assert!(h.deploy_dir().join("todo.yaml").is_file());
    }

    // Without a cluster block, `--cluster` says so.
    let plain = Ferry::options().start();
    let out = std::process::Command::new(ferry_bin())
        .args(["deploy", "--cluster", plugin_wasm("echo").to_str().unwrap()])
        .args(["--config", plain.config_path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cluster needs a `cluster` block"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Instances as a shared, bounded resource: idle ones expire, idle ones of
//! any plugin give up their slots when the engine has none left, and no
//! instance serves two applications.

use std::time::{Duration, Instant};

use ferry_tests::{Ferry, eventually, expect_success, plugin_bytes, service_status};
use serde_json::json;

/// Keeps `n` requests of `nap` running at once, so `n` instances exist.
async fn busy(ferry: &Ferry, n: u64, ms: u64) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let socket = ferry.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = ferry_tests::Client::connect(&socket).await;
            let response = client
                .request(
                    &json!({"id": i, "service": "faulty", "action": "nap", "params": {"ms": ms}}),
                )
                .await;
            expect_success(&response);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn idle(ferry: &Ferry, service: &str) -> u64 {
    service_status(&ferry.status().await, service)["idle_instances"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_instances_give_their_slots_to_deploys_and_restarts() {
    // Twelve instance slots in all; faulty alone parks ten.
    let ferry = Ferry::options()
        .plugin("faulty", "faulty", Some("max_concurrency: 10\n"))
        .config("max_instances: 12\n")
        .start();
    busy(&ferry, 10, 300).await;
    assert!(idle(&ferry, "faulty").await >= 9);
    // Three more services, each needing a slot to start.
    for name in ["one", "two", "three"] {
        ferry.place(&format!("{name}.wasm"), &plugin_bytes("echo"));
    }
    let status = eventually(
        "three more services serve",
        Duration::from_secs(30),
        async || {
            let status = ferry.status().await;
            let ready = |name: &str| {
                status["services"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["name"] == name && s["state"] == "ready")
            };
            ["one", "two", "three"]
                .iter()
                .all(|n| ready(n))
                .then_some(status.clone())
        },
    )
    .await;
    assert!(idle(&ferry, "faulty").await < 10, "{status}");
    let mut client = ferry.connect().await;
    for name in ["one", "two", "three"] {
        let response = client
            .request(&json!({"id": 1, "service": name, "action": "params", "params": [name]}))
            .await;
        assert_eq!(expect_success(&response), &json!([name]));
    }
    // A trap drops its instance; the restart finds a slot as well.
    busy(&ferry, 10, 200).await;
    let response = client
        .request(&json!({"id": 2, "service": "faulty", "action": "trap"}))
        .await;
    ferry_tests::expect_error(&response, "plugin_trap");
    let response = client
        .request(&json!({"id": 3, "service": "faulty", "action": "ok"}))
        .await;
    expect_success(&response);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_instances_expire() {
    let ferry = Ferry::options()
        .plugin("faulty", "faulty", Some("idle_ttl_ms: 300\n"))
        .start();
    busy(&ferry, 8, 200).await;
    assert!(idle(&ferry, "faulty").await >= 7);
    let began = Instant::now();
    eventually(
        "idle instances expire",
        Duration::from_secs(5),
        async || (idle(&ferry, "faulty").await == 0).then_some(()),
    )
    .await;
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_never_serves_two_applications() {
    let ferry = Ferry::options()
        .plugin("faulty", "faulty", Some("max_concurrency: 1\n"))
        .config("apps:\n  alpha:\n    services: [faulty]\n    auth: none\n  beta:\n    services: [faulty]\n    auth: none\n")
        .start();
    let mut client = ferry.connect().await;
    let remember = |app: &str, value: &str| json!({"id": 1, "app": app, "service": "faulty", "action": "remember", "params": value});
    // One instance at a time: without separate pools beta would get the
    // instance alpha just used, globals and all.
    let first = client.request(&remember("alpha", "alpha's secret")).await;
    assert_eq!(expect_success(&first)["previous"], json!(null));
    let other = client.request(&remember("beta", "beta's")).await;
    assert_eq!(
        expect_success(&other)["previous"],
        json!(null),
        "beta saw what alpha left in the instance"
    );
    let again = client.request(&remember("alpha", "again")).await;
    assert_eq!(expect_success(&again)["previous"], "alpha's secret");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_keeps_a_call_handle_past_its_request_serves_no_other() {
    let ferry = Ferry::options()
        .plugin("faulty", "faulty", Some("max_concurrency: 1\n"))
        .start();
    let mut client = ferry.connect().await;
    let stash =
        |id: &str| json!({"id": id, "service": "faulty", "action": "stash_call", "params": {}});
    let instantiations = |status: &serde_json::Value| {
        service_status(status, "faulty")["stats"]["instantiations"]
            .as_u64()
            .unwrap()
    };
    // An instance that drops its handles serves request after request.
    let ok = json!({"id": 0, "service": "faulty", "action": "ok", "params": {}});
    expect_success(&client.request(&ok).await);
    let before = instantiations(&ferry.status().await);
    for _ in 0..3 {
        expect_success(&client.request(&ok).await);
    }
    assert_eq!(instantiations(&ferry.status().await), before);
    for id in ["first", "second", "third"] {
        // One instance at a time: were the one that kept a handle given
        // the next request, that handle would read it.
        let response = client.request(&stash(id)).await;
        assert_eq!(
            expect_success(&response)["previous"],
            json!(null),
            "{id}: a kept handle reached a later request"
        );
    }
    // Each instance kept its handle, so each was discarded after it: the
    // first stash ran on the warm instance, the other two and the request
    // after them on new ones.
    expect_success(&client.request(&ok).await);
    assert_eq!(instantiations(&ferry.status().await), before + 3);
}

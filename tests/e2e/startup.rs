//! A cold start serves at once: the doors open before any plugin is
//! compiled, each plugin is served the moment its own compilation ends
//! (the small ones first), a request for one still compiling waits for it,
//! and status and `/readyz` say `loading` meanwhile.

use std::time::{Duration, Instant};

use ferry_tests::{Ferry, expect_success, service_status};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_start_answers_echo_at_once_while_python_and_javascript_compile() {
    let spawned = Instant::now();
    // A new scratch folder: an empty compile cache.
    let ferry = Ferry::options()
        .plugin("hello-py", "hello-py", None)
        .plugin("hello-js", "hello-js", None)
        .plugin("echo", "echo", None)
        .doors_open()
        .start();
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": 1, "service": "echo", "action": "params", "params": {"n": 1}}))
        .await;
    let answered = spawned.elapsed();
    assert_eq!(expect_success(&response), &json!({"n": 1}));
    assert!(
        answered < Duration::from_secs(1),
        "echo answered {answered:?} after start"
    );

    // The interpreters are still compiling (seconds each): status and
    // readyz say so.
    let status = ferry.status().await;
    let py = service_status(&status, "hello-py");
    assert_eq!(py["state"], "loading", "{status}");
    let ready = ferry.admin_http("GET", "/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "loading", "{}", ready.text());
    let log = ferry.log();
    assert!(
        log.contains("compiling (or loading from the cache)"),
        "{log}"
    );

    // A request for one of them waits until it is loaded, then answers.
    // The client waits past the request's own 60 s deadline: a cold
    // compile of an interpreter takes tens of seconds on a slow machine,
    // and the host, not the client, is what must answer within it.
    let wait = Duration::from_secs(70);
    let response = client
        .request_within(&json!({"id": 2, "service": "hello-py", "action": "echo", "params": {"p": 1}, "timeout_ms": 60000}), wait)
        .await;
    assert_eq!(expect_success(&response)["params"], json!({"p": 1}));
    let response = client
        .request_within(&json!({"id": 3, "service": "hello-js", "action": "echo", "params": {"j": 1}, "timeout_ms": 60000}), wait)
        .await;
    assert_eq!(expect_success(&response)["params"], json!({"j": 1}));
    ferry.log_with("ferry is serving").await;
    let ready = ferry.admin_http("GET", "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    // A request with a short deadline for a plugin still loading answers
    // `unavailable` with a retry hint rather than hanging: shown on a
    // second host, whose cache is cold again.
    let other = Ferry::options()
        .plugin("hello-js", "hello-js", None)
        .doors_open()
        .start();
    let response = other
        .connect()
        .await
        .request(&json!({"id": 4, "service": "hello-js", "action": "echo", "timeout_ms": 100}))
        .await;
    assert_eq!(response["error"]["code"], "unavailable", "{response}");
    assert_eq!(response["error"]["retry_after_ms"], 1000, "{response}");
}

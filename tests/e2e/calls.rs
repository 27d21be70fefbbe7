//! Calls between services, end to end: `echo` deployed under several
//! names, each allowed by its manifest to call the next, relays calls
//! (`relay`), reports what it was called with (`context`) and keeps busy
//! (`spin`). A chain passes identity, trace and a shrinking deadline on; a
//! call not granted never reaches its callee; depth is bounded; a fan-out
//! runs at once; a caller that runs out of time cancels its calls.

use std::time::{Duration, Instant};

use ferry_tests::{Client, Ferry, eventually, expect_error, expect_success};
use serde_json::{Value, json};

const SECRET: &str = "a calls test secret of thirty-two bytes or more";

fn may_call(services: &[&str]) -> String {
    format!("permissions: {{calls: {services:?}}}\n").replace('"', "")
}

fn token(sub: &str, tenant: &str) -> String {
    ferry_tests::hs256_token(
        SECRET,
        &json!({"sub": sub, "tenant": tenant, "aud": "shop", "role": "buyer"}),
    )
}

/// `relay`'s outcomes, one per call.
fn outcomes(response: &Value) -> Vec<Value> {
    expect_success(response)["outcomes"]
        .as_array()
        .expect("outcomes")
        .clone()
}

async fn relay(client: &mut Client, service: &str, params: Value) -> Value {
    client
        .request(&json!({"id": 1, "service": service, "action": "relay", "params": params}))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_passes_identity_trace_and_a_shrinking_deadline() {
    let ferry = Ferry::options()
        .env("CALLS_TEST_SECRET", SECRET)
        .config(
            "apps:\n  shop:\n    services: [a, b, c]\n    auth:\n      jwt:\n        algorithms: [HS256]\n        secret_env: CALLS_TEST_SECRET\n        tenant_claim: tenant\n",
        )
        .plugin("echo", "a", Some(&may_call(&["b"])))
        .plugin("echo", "b", Some(&may_call(&["c"])))
        .plugin("echo", "c", None)
        .start();
    let mut client = ferry.connect().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = client
        .request(&json!({
            "id": 7, "service": "a", "action": "relay", "token": token("alice", "acme"),
            "timeout_ms": 3000, "trace": trace,
            "params": {"calls": [{"service": "b", "action": "relay", "params": {
                "calls": [{"service": "c", "action": "context"}]
            }}]}
        }))
        .await;
    let b = &outcomes(&response)[0]["result"];
    assert_eq!(b["by"], "b", "{response}");
    let c = &b["outcomes"][0]["result"];
    assert_eq!(c["service"], "c", "{response}");
    assert_eq!(c["caller"], "b");
    assert_eq!(c["app"], "shop");
    assert_eq!(c["tenant"], "acme");
    assert_eq!(c["subject"], "alice");
    assert_eq!(c["claims"]["role"], "buyer");
    assert_eq!(c["trace_id"], trace);
    let left = c["time_left_ms"].as_u64().unwrap();
    assert!(left > 2_000 && left < 3_000, "c had {left} ms of a's 3000");

    // The caller's own context: no caller, the same trace.
    let response = client
        .request(&json!({"id": 8, "service": "a", "action": "context", "token": token("alice", "acme"), "trace": trace}))
        .await;
    assert_eq!(expect_success(&response)["caller"], Value::Null);
    let status = ferry.status().await;
    let pairs = status["calls"].as_array().unwrap();
    assert!(
        pairs.contains(&json!({"caller": "a", "callee": "b", "calls": 1, "errors": 0})),
        "{pairs:?}"
    );
    let metrics = ferry.admin_http("GET", "/metrics").await.text();
    let line = r#"ferry_service_calls_total{caller="b",callee="c"} 1"#;
    assert!(
        metrics.lines().any(|l| l == line),
        "no `{line}` in\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn what_is_not_granted_never_runs_and_depth_is_bounded() {
    let ferry = Ferry::options()
        .config("max_call_depth: 3\n")
        .plugin("echo", "a", Some(&may_call(&["a", "b"])))
        .plugin("echo", "b", None)
        .plugin("echo", "secret", None)
        .start();
    let mut client = ferry.connect().await;
    let before = ferry.plugin_requests("secret").await;
    let response = relay(
        &mut client,
        "a",
        json!({"calls": [{"service": "secret", "action": "echo"}]}),
    )
    .await;
    let error = &outcomes(&response)[0]["error"];
    assert_eq!(error["code"], "forbidden", "{response}");
    assert!(error["message"].as_str().unwrap().contains("permissions"));
    assert_eq!(ferry.plugin_requests("secret").await, before);

    // a → a → a → a: the fourth call is one too deep.
    let nest =
        |inner: Value| json!({"calls": [{"service": "a", "action": "relay", "params": inner}]});
    let deepest = json!({"calls": [{"service": "b", "action": "context"}]});
    let response = relay(&mut client, "a", nest(nest(nest(deepest)))).await;
    let mut level = &outcomes(&response)[0];
    let mut depth = 1;
    while let Some(next) = level["result"]["outcomes"].get(0) {
        level = next;
        depth += 1;
    }
    assert_eq!(level["error"]["code"], "forbidden", "{response}");
    assert!(
        level["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_call_depth"),
        "{level}"
    );
    assert_eq!(depth, 4, "three calls deep work, the fourth is refused");

    // A callee's error comes back unchanged.
    let response = relay(
        &mut client,
        "a",
        json!({"calls": [{"service": "b", "action": "nope"}]}),
    )
    .await;
    assert_eq!(outcomes(&response)[0]["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fan_out_runs_at_once_and_a_callee_timeout_answers_on_time() {
    let ferry = Ferry::options()
        .plugin("echo", "a", Some(&may_call(&["b"])))
        .plugin("echo", "b", None)
        .start();
    let mut client = ferry.connect().await;
    let spin = json!({"service": "b", "action": "spin", "params": {"ms": 100}});
    // Warm b's instances, so the fan-out measures calls, not instantiation.
    relay(
        &mut client,
        "a",
        json!({"calls": vec![spin.clone(); 10], "many": true}),
    )
    .await;
    let started = Instant::now();
    let response = relay(
        &mut client,
        "a",
        json!({"calls": vec![spin.clone(); 10], "many": true}),
    )
    .await;
    let took = started.elapsed();
    let all = outcomes(&response);
    assert_eq!(all.len(), 10);
    assert!(
        all.iter().all(|o| o["result"]["spun_ms"] == 100),
        "{response}"
    );
    assert!(
        took < Duration::from_millis(600),
        "ten 100 ms calls at once took {took:?}"
    );

    // A callee limited to 100 ms inside a caller with 2 s: the caller hears
    // `timeout` after about 100 ms.
    let started = Instant::now();
    let response = relay(
        &mut client,
        "a",
        json!({"calls": [{"service": "b", "action": "spin", "params": {"ms": 1500}, "timeout_ms": 100}]}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        outcomes(&response)[0]["error"]["code"],
        "timeout",
        "{response}"
    );
    assert!(took < Duration::from_millis(800), "answered after {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_out_of_time_cancels_its_calls_and_a_cycle_under_saturation_ends() {
    let ferry = Ferry::options()
        .plugin(
            "echo",
            "a",
            Some(&format!(
                "{}max_concurrency: 2\nmax_queue: 4\n",
                may_call(&["b"])
            )),
        )
        .plugin(
            "echo",
            "b",
            Some(&format!(
                "{}max_concurrency: 2\nmax_queue: 4\n",
                may_call(&["a"])
            )),
        )
        .start();
    let mut client = ferry.connect().await;
    let started = Instant::now();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let response = client
        .request(
            &json!({"id": 1, "service": "a", "action": "relay", "timeout_ms": 300, "trace": trace,
            "params": {"calls": [{"service": "b", "action": "spin", "params": {"ms": 3000}}]}}),
        )
        .await;
    expect_error(&response, "timeout");
    assert!(started.elapsed() < Duration::from_millis(1_000));
    // The log line about it names the trace.
    let log = ferry.log_with("request timed out").await;
    assert!(
        log.lines()
            .any(|l| l.contains("request timed out") && l.contains(trace)),
        "{log}"
    );
    // b's call went with a's: nothing of it is left running.
    eventually(
        "b's cancelled call is gone",
        Duration::from_secs(1),
        async || {
            let status = ferry.status().await;
            let b = ferry_tests::service_status(&status, "b");
            (b["stats"]["in_flight"] == 0).then_some(())
        },
    )
    .await;

    // a → b → a → b ... with two slots each: every request ends in an
    // error within its deadline, none hangs.
    let ping_pong = |depth: usize| {
        let mut params =
            json!({"calls": [{"service": "b", "action": "spin", "params": {"ms": 50}}]});
        for i in 0..depth {
            let (next, action) = if i % 2 == 0 {
                ("a", "relay")
            } else {
                ("b", "relay")
            };
            params = json!({"calls": [{"service": next, "action": action, "params": params}]});
        }
        params
    };
    let mut tasks = Vec::new();
    for i in 0..6 {
        let path = ferry.socket.clone();
        // a → b → a → b → a → b.spin
        let params = ping_pong(4);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&path).await;
            let started = Instant::now();
            let response = client
                .request(&json!({"id": i, "service": "a", "action": "relay", "timeout_ms": 1000, "params": params}))
                .await;
            (response, started.elapsed())
        }));
    }
    let mut refused = 0;
    for task in tasks {
        let (response, took) = task.await.unwrap();
        assert!(
            took < Duration::from_millis(2_000),
            "took {took:?}: {response}"
        );
        let text = response.to_string();
        let failed = text.contains("\"overloaded\"") || text.contains("\"timeout\"");
        assert!(response.get("result").is_some() || failed, "{response}");
        refused += usize::from(failed);
    }
    // Six chains each needing three of a's two slots cannot all pass.
    assert!(refused > 0, "no chain ran out of slots");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_orders_example_composes_todo_and_echo() {
    let ferry = Ferry::options()
        .plugin("todo", "todo", Some("permissions: {database: true}\n"))
        .plugin("echo", "echo", None)
        .plugin(
            "orders",
            "orders",
            Some("permissions: {calls: [todo, echo]}\n"),
        )
        .start();
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": 1, "service": "orders", "action": "place",
            "params": {"title": "two crates"}, "tenant_id": "acme"}))
        .await;
    let placed = expect_success(&response);
    assert_eq!(placed["item"]["title"], "two crates", "{response}");
    assert_eq!(placed["open_items"], 1);
    assert_eq!(
        placed["receipt"],
        json!({"order": placed["item"]["id"], "for": "acme"})
    );
    // Another tenant sees none of acme's items through the same chain.
    let response = client
        .request(&json!({"id": 2, "service": "orders", "action": "summary", "tenant_id": "globex"}))
        .await;
    let summary = expect_success(&response);
    assert_eq!(summary["todo"]["result"]["items"], json!([]), "{response}");
    assert_eq!(summary["echo"]["result"]["caller"], "orders");
    assert_eq!(summary["echo"]["result"]["tenant"], "globex");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_plugins_call_services_and_http_answers_the_trace() {
    let grant = may_call(&["echo"]);
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .plugin("hello-py", "hello-py", Some(&grant))
        .plugin("hello-js", "hello-js", Some(&grant))
        .start();
    let mut client = ferry.connect().await;
    for service in ["hello-py", "hello-js"] {
        let response = client
            .request(
                &json!({"id": 1, "service": service, "action": "call", "tenant_id": "acme",
                "params": {"service": "echo", "action": "context"}}),
            )
            .await;
        let answer = &expect_success(&response)["answer"];
        assert_eq!(answer["caller"], service, "{response}");
        assert_eq!(answer["tenant"], "acme");
        let response = client
            .request(&json!({"id": 2, "service": service, "action": "call",
                "params": {"service": "hello-py", "action": "echo"}}))
            .await;
        expect_error(&response, "forbidden");
    }

    // HTTP takes a W3C traceparent, carries its trace id to the plugin,
    // and answers it in a traceparent of its own.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reply = ferry
        .http(
            "POST",
            "/v1/echo/context",
            &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
            b"{}",
        )
        .await;
    assert_eq!(reply.json()["trace_id"], trace);
    let answered = reply.header("traceparent").expect("a traceparent");
    assert!(answered.starts_with(&format!("00-{trace}-")), "{answered}");
    // `/v1/rpc`: the envelope's own `trace` wins over the header's.
    let envelope_trace = "0af7651916cd43dd8448eb211c80319c";
    let reply = ferry
        .http(
            "POST",
            "/v1/rpc",
            &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
            json!({"id": 1, "service": "echo", "action": "context", "trace": envelope_trace})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(reply.json()["result"]["trace_id"], envelope_trace);
    let answered = reply.header("traceparent").expect("a traceparent");
    assert!(
        answered.starts_with(&format!("00-{envelope_trace}-")),
        "{answered}"
    );
    // Without one, the host makes a trace id and says which.
    let reply = ferry.http("POST", "/v1/echo/context", &[], b"{}").await;
    let made = reply.json()["trace_id"].as_str().unwrap().to_owned();
    assert_eq!(made.len(), 32);
    assert_eq!(
        reply.header("traceparent").unwrap().split('-').nth(1),
        Some(made.as_str())
    );
}

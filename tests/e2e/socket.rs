//! The Unix-socket gateway end to end: round trips, pipelining, and every
//! kind of bad input, against the real binary and the real `echo` plugin.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ferry_tests::{Client, Ferry, eventually, expect_error, expect_success, service_status};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn echo_round_trip_on_the_main_socket() {
    let ferry = Ferry::start_default();
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({
            "id": "req-1", "service": "echo", "action": "echo",
            "params": {"hello": "world", "n": [1, 2.5, null]}, "tenant_id": "acme"
        }))
        .await;
    assert_eq!(response["id"], "req-1");
    let result = expect_success(&response);
    assert_eq!(
        result["params"],
        json!({"hello": "world", "n": [1, 2.5, null]})
    );
    assert_eq!(result["ctx"]["service"], "echo");
    assert_eq!(result["ctx"]["app"], "default");
    assert_eq!(result["ctx"]["tenant"], "acme");
    assert_eq!(result["ctx"]["request_id"], "\"req-1\"");
    let left = result["ctx"]["time_left_ms"].as_u64().unwrap();
    assert!(
        left > 4_000 && left <= 5_000,
        "default deadline is 5 s, plugin saw {left} ms"
    );
}

/// `echo.params`, the benchmarks' action, answers exactly its params, over
/// both doors, so the native baselines it is compared with do the same work.
#[tokio::test(flavor = "multi_thread")]
async fn the_params_action_answers_exactly_its_params() {
    let ferry = Ferry::start_default();
    let params = json!({"user": "ada", "items": [1, 2, 3], "note": "hello ferry"});
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": 1, "service": "echo", "action": "params", "params": params}))
        .await;
    assert_eq!(expect_success(&response), &params);
    let reply = ferry
        .http(
            "POST",
            "/v1/echo/params",
            &[],
            params.to_string().as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json(), params);
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_round_trip_on_the_service_socket() {
    let ferry = Ferry::start_default();
    let mut client = Client::connect(&ferry.service_socket("echo")).await;
    let response = client
        .request(&json!({"id": 7, "action": "echo", "params": [1, 2, 3], "timeout_ms": 1000}))
        .await;
    assert_eq!(response["id"], 7);
    let result = expect_success(&response);
    assert_eq!(result["params"], json!([1, 2, 3]));
    assert!(result["ctx"]["time_left_ms"].as_u64().unwrap() <= 1000);

    // Naming the socket's own service is allowed; naming another is not.
    let same = client
        .request(&json!({"id": 8, "service": "echo", "action": "echo"}))
        .await;
    assert_eq!(expect_success(&same)["params"], json!({}));
    let other = client
        .request(&json!({"id": 9, "service": "faulty", "action": "ok"}))
        .await;
    assert!(expect_error(&other, "bad_request").contains("serves `echo`"));

    // Each loaded service has its own socket.
    let mut faulty = Client::connect(&ferry.service_socket("faulty")).await;
    let ok = faulty.request(&json!({"id": 1, "action": "ok"})).await;
    assert_eq!(expect_success(&ok)["ok"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_pipelined_requests_are_all_answered_and_matched() {
    let ferry = Ferry::start_default();
    let mut client = ferry.connect().await;
    const N: u64 = 1000;
    let mut batch = Vec::new();
    for i in 0..N {
        let payload = serde_json::to_vec(&json!({
            "id": i, "service": "echo", "action": "echo", "params": {"i": i}
        }))
        .unwrap();
        batch.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        batch.extend_from_slice(&payload);
    }
    // All of it goes out before a single response is read.
    client.send_raw(&batch).await;
    let mut seen = HashSet::new();
    for _ in 0..N {
        let response = client.recv().await.expect("a response for every request");
        let id = response["id"].as_u64().unwrap();
        assert_eq!(
            expect_success(&response)["params"]["i"],
            id,
            "response matched to the wrong request"
        );
        assert!(seen.insert(id), "id {id} answered twice");
    }
    assert_eq!(seen.len() as u64, N);
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_come_back_in_completion_order() {
    let ferry = Ferry::start_default();
    let mut client = ferry.connect().await;
    client
        .send(&json!({"id": "slow", "service": "faulty", "action": "slow", "timeout_ms": 400}))
        .await;
    client
        .send(&json!({"id": "fast", "service": "echo", "action": "echo"}))
        .await;
    assert_eq!(client.recv().await.unwrap()["id"], "fast");
    let slow = client.recv().await.unwrap();
    assert_eq!(slow["id"], "slow");
    expect_error(&slow, "timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_get_bad_request_and_the_connection_stays_usable() {
    let ferry = Ferry::start_default();
    let mut client = ferry.connect().await;

    client.send_payload(b"{this is not json").await;
    let response = client.recv().await.unwrap();
    assert_eq!(response["id"], Value::Null);
    assert!(expect_error(&response, "bad_request").contains("invalid request"));

    client.send_payload(&[0xff, 0xfe, 0x00]).await;
    expect_error(&client.recv().await.unwrap(), "bad_request");

    client.send_payload(b"").await;
    expect_error(&client.recv().await.unwrap(), "bad_request");

    // A request is an object: an array of the fields in order is not one
    // (serde would read it as one; fuzzing found that).
    client
        .send_payload(br#"[44, "echo", "echo", {"a": 1}]"#)
        .await;
    let response = client.recv().await.unwrap();
    assert_eq!(response["id"], Value::Null, "{response}");
    assert!(expect_error(&response, "bad_request").contains("JSON object"));

    // A missing field: the id is still echoed so the client can match it.
    let response = client.request(&json!({"id": 41, "service": "echo"})).await;
    assert_eq!(response["id"], 41);
    assert!(expect_error(&response, "bad_request").contains("missing field `action`"));

    let response = client.request(&json!({"id": 42, "action": "echo"})).await;
    assert_eq!(response["id"], 42);
    assert!(expect_error(&response, "bad_request").contains("missing field `service`"));

    let response = client
        .request(&json!({"id": 43, "service": "echo", "action": "echo", "tenant": "x"}))
        .await;
    assert!(expect_error(&response, "bad_request").contains("unknown field `tenant`"));

    let response = client
        .request(&json!({"id": {"a": 1}, "service": "echo", "action": "echo"}))
        .await;
    assert!(expect_error(&response, "bad_request").contains("`id` must be a string or a number"));

    let response = client
        .request(&json!({"id": 44, "service": "echo", "action": "echo", "timeout_ms": 0}))
        .await;
    expect_error(&response, "bad_request");

    // Params that do not fit the action's type: the SDK answers bad_request.
    let response = client
        .request(
            &json!({"id": 45, "service": "echo", "action": "sum", "params": {"numbers": "1,2"}}),
        )
        .await;
    assert!(expect_error(&response, "bad_request").contains("invalid params"));
    let response = client
        .request(&json!({"id": 45, "service": "echo", "action": "sum", "params": {"numbers": [1, 2, 39]}}))
        .await;
    assert_eq!(expect_success(&response)["sum"], 42);

    // After all that, the same connection still works.
    let response = client
        .request(
            &json!({"id": 46, "service": "echo", "action": "echo", "params": {"still": "here"}}),
        )
        .await;
    assert_eq!(expect_success(&response)["params"]["still"], "here");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_services_and_actions_are_not_found() {
    let ferry = Ferry::start_default();
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": 1, "service": "nope", "action": "x"}))
        .await;
    let message = expect_error(&response, "not_found");
    assert!(
        message.contains("no service named `nope`") && message.contains("echo"),
        "{message}"
    );

    let response = client
        .request(&json!({"id": 2, "service": "echo", "action": "nope"}))
        .await;
    let message = expect_error(&response, "not_found");
    assert!(
        message.contains("no action `nope`") && message.contains("echo"),
        "{message}"
    );

    let response = client
        .request(&json!({"id": 3, "service": "echo", "action": "echo", "app": "shop"}))
        .await;
    assert!(expect_error(&response, "not_found").contains("no application named `shop`"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_frame_is_refused_without_reading_its_payload() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .config("max_frame_bytes: 4096\n")
        .start();
    let mut client = ferry.connect().await;
    // Only the header: if the host waited for the payload, this would hang.
    client.send_raw(&(10u32 << 20).to_be_bytes()).await;
    let response = client.recv().await.expect("a too_large answer");
    assert_eq!(response["id"], Value::Null);
    let message = expect_error(&response, "too_large");
    assert!(
        message.contains("10485760") && message.contains("4096"),
        "{message}"
    );
    assert!(
        client.recv().await.is_none(),
        "the connection is closed after too_large"
    );

    // A frame at the limit is fine.
    let mut client = ferry.connect().await;
    let filler = "x".repeat(4096 - 80);
    let response = client
        .request(&json!({"id": 1, "service": "echo", "action": "echo", "params": {"f": filler}}))
        .await;
    expect_success(&response);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_partial_frame_is_closed_while_others_are_served() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .config("idle_timeout_ms: 300\n")
        .start();
    let mut stalled = ferry.connect().await;
    let mut frame = 100u32.to_be_bytes().to_vec();
    frame.extend_from_slice(b"{\"id\":1,");
    stalled.send_raw(&frame).await;
    let began = Instant::now();

    // Meanwhile another connection is served promptly.
    let mut other = ferry.connect().await;
    for i in 0..20 {
        let response = other
            .request(&json!({"id": i, "service": "echo", "action": "echo"}))
            .await;
        expect_success(&response);
    }

    assert!(
        stalled.recv().await.is_none(),
        "stalled connection is closed"
    );
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}, expected about 300 ms"
    );

    // A connection that idles *between* frames is not cut off.
    let mut idle = ferry.connect().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let response = idle
        .request(&json!({"id": 1, "service": "echo", "action": "echo"}))
        .await;
    expect_success(&response);
}

#[tokio::test(flavor = "multi_thread")]
async fn half_closed_clients_still_get_every_response() {
    let ferry = Ferry::start_default();
    let mut client = ferry.connect().await;
    for i in 0..50 {
        client
            .send(&json!({"id": i, "service": "echo", "action": "echo"}))
            .await;
    }
    client.shutdown_write().await;
    let mut answered = 0;
    while let Some(response) = client.recv().await {
        expect_success(&response);
        answered += 1;
    }
    assert_eq!(answered, 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_vanish_mid_request_leak_nothing() {
    let ferry = Ferry::start_default();
    // Warm up so lazily created resources exist before the baseline.
    let mut client = ferry.connect().await;
    for i in 0..20 {
        client
            .request(&json!({"id": i, "service": "echo", "action": "echo"}))
            .await;
    }
    let fds_before = ferry.open_fds();

    for round in 0..100 {
        let mut gone = ferry.connect().await;
        gone.send(&json!({"id": round, "service": "faulty", "action": "slow", "timeout_ms": 2000}))
            .await;
        gone.send(&json!({"id": round, "service": "echo", "action": "echo"}))
            .await;
        if round % 2 == 0 {
            // With every answer it could get written, the host has nothing
            // to write: only the socket's hang-up says the client is gone.
            expect_success(&gone.recv().await.unwrap());
        }
        let mut half = 8u32.to_be_bytes().to_vec();
        half.extend_from_slice(b"{\"id\"");
        gone.send_raw(&half).await;
        drop(gone);
    }

    // The host notices each disconnect and cancels the work: the last slow
    // request would run until its deadline, 2 s from now, if it were not.
    let dropped = Instant::now();
    eventually(
        "every request of the vanished clients ends",
        Duration::from_secs(5),
        async || {
            let status = ferry.status().await;
            let running: Vec<u64> = ["faulty", "echo"]
                .iter()
                .map(|s| {
                    service_status(&status, s)["stats"]["in_flight"]
                        .as_u64()
                        .unwrap()
                })
                .collect();
            (running == [0, 0]).then_some(())
        },
    )
    .await;
    let cancelled_after = dropped.elapsed();
    assert!(
        cancelled_after < Duration::from_millis(1000),
        "in_flight took {cancelled_after:?} to come back to 0; the slow requests were not cancelled"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fds = ferry.open_fds();
        if fds <= fds_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fds grew from {fds_before} to {fds}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = client
        .request(&json!({"id": "after", "service": "echo", "action": "echo"}))
        .await;
    expect_success(&response);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_clients_do_not_disturb_good_ones() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        // Forty failures on purpose: the circuit would rightly open after
        // five and answer the rest `unavailable`; here each abuse is to get
        // its own answer.
        .plugin("faulty", "faulty", Some("circuit: {failures: 1000}\n"))
        .config("max_frame_bytes: 4096\nidle_timeout_ms: 500\n")
        .start();
    let socket = ferry.socket.clone();

    // A steady client keeps asking while others misbehave in every way.
    let steady = tokio::spawn({
        let socket = socket.clone();
        async move {
            let mut client = Client::connect(&socket).await;
            let mut slowest = Duration::ZERO;
            for i in 0..300 {
                let began = Instant::now();
                let response = client
                    .request(&json!({"id": i, "service": "echo", "action": "echo", "params": i}))
                    .await;
                slowest = slowest.max(began.elapsed());
                assert_eq!(expect_success(&response)["params"], i);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            slowest
        }
    });

    let mut abusers = Vec::new();
    for n in 0..60u32 {
        let socket = socket.clone();
        abusers.push(tokio::spawn(async move {
            let mut client = Client::connect(&socket).await;
            let mode = n % 6;
            let began = Instant::now();
            match mode {
                0 => client.send_payload(b"][ not json").await,
                1 => client.send_raw(&(1u32 << 30).to_be_bytes()).await,
                2 => client.send_raw(&[0, 0, 0, 50, b'{']).await,
                3 => client
                    .send(
                        &json!({"id": n, "service": "faulty", "action": "loop", "timeout_ms": 300}),
                    )
                    .await,
                4 => {
                    client
                        .send(&json!({"id": n, "service": "faulty", "action": "trap"}))
                        .await
                }
                _ => {
                    client
                        .send(&json!({"id": n, "service": "faulty", "action": "alloc"}))
                        .await
                }
            }
            // Each abuse gets its own answer, and in time.
            let answer = client.recv().await;
            let waited = began.elapsed();
            match (mode, &answer) {
                (0, Some(r)) => {
                    expect_error(r, "bad_request");
                    assert_eq!(r["id"], Value::Null, "{r}");
                }
                (1, Some(r)) => {
                    expect_error(r, "too_large");
                    assert_eq!(r["id"], Value::Null, "{r}");
                    assert!(client.recv().await.is_none(), "the connection is closed");
                }
                // A frame that stops half-way is cut off at its deadline
                // (idle_timeout_ms, 500 ms from its first byte), unanswered.
                (2, None) => assert!(
                    waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
                    "a stalled frame was closed after {waited:?}"
                ),
                (3, Some(r)) => {
                    expect_error(r, "timeout");
                    assert_eq!(r["id"], n);
                }
                (4, Some(r)) => {
                    expect_error(r, "plugin_trap");
                    assert_eq!(r["id"], n);
                }
                (5, Some(r)) => {
                    let message = expect_error(r, "plugin_trap");
                    assert!(message.contains("memory"), "{message}");
                    assert_eq!(r["id"], n);
                }
                (mode, answer) => panic!("abuse mode {mode} was answered {answer:?}"),
            }
            mode
        }));
    }
    let mut ran = [0u32; 6];
    for abuser in abusers {
        ran[abuser.await.unwrap() as usize] += 1;
    }
    assert_eq!(ran, [10; 6], "every abuse mode ran ten times");
    let slowest = steady.await.unwrap();
    eprintln!("slowest steady request while under abuse: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(500),
        "a good client waited {slowest:?}"
    );
    let mut client = ferry.connect().await;
    expect_success(
        &client
            .request(&json!({"id": "end", "service": "echo", "action": "echo"}))
            .await,
    );
}

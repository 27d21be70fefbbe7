//! The HTTP gateway end to end: the same plugins, limits and error codes as
//! the sockets, one status table for errors, and the operations endpoints.

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_tests::{Ferry, assert_error, expect_success, ferry_bin, service_status};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn post_service_action_answers_the_plugin_result() {
    let ferry = Ferry::start_default();
    let reply = ferry
        .http(
            "POST",
            "/v1/echo/echo",
            &[
                ("x-request-id", "abc-1"),
                ("x-tenant-id", "acme"),
                ("content-type", "application/json"),
            ],
            br#"{"hello": ["world", 1]}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let result = reply.json();
    assert_eq!(result["params"], json!({"hello": ["world", 1]}));
    assert_eq!(result["ctx"]["tenant"], "acme");
    assert_eq!(result["ctx"]["request_id"], "\"abc-1\"");

    // An empty body means `{}`; typed params are checked by the SDK.
    let reply = ferry.http("POST", "/v1/echo/echo", &[], b"").await;
    assert_eq!(reply.json()["params"], json!({}));
    let reply = ferry
        .http("POST", "/v1/echo/sum", &[], br#"{"numbers": [40, 2]}"#)
        .await;
    assert_eq!(reply.json(), json!({"sum": 42}));
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_takes_and_answers_the_socket_envelope() {
    let ferry = Ferry::start_default();
    let reply = ferry
        .http(
            "POST",
            "/v1/rpc",
            &[],
            &serde_json::to_vec(
                &json!({"id": 9, "service": "echo", "action": "echo", "params": [1]}),
            )
            .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200);
    let envelope = reply.json();
    assert_eq!(envelope["id"], 9);
    assert_eq!(expect_success(&envelope)["params"], json!([1]));

    let reply = ferry
        .http(
            "POST",
            "/v1/rpc",
            &[],
            br#"{"id": "x", "service": "nope", "action": "a"}"#,
        )
        .await;
    assert_eq!(reply.status, 404);
    let envelope = reply.json();
    assert_eq!(
        (envelope["id"].clone(), envelope["status"].clone()),
        (json!("x"), json!("error"))
    );
    assert_eq!(envelope["error"]["code"], "not_found");

    let reply = ferry.http("POST", "/v1/rpc", &[], b"{broken").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["id"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_code_maps_to_its_documented_status() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .plugin(
            "faulty",
            "faulty",
            Some("max_concurrency: 1\nmax_queue: 0\n"),
        )
        .config("max_frame_bytes: 4096\n")
        .start();

    assert_error(
        &ferry.http("POST", "/v1/echo/echo", &[], b"{not json").await,
        400,
        "bad_request",
    );
    assert_error(
        &ferry
            .http("POST", "/v1/echo/echo", &[("x-timeout-ms", "soon")], b"{}")
            .await,
        400,
        "bad_request",
    );
    let message = assert_error(
        &ferry.http("POST", "/v1/nope/echo", &[], b"{}").await,
        404,
        "not_found",
    );
    assert!(message.contains("no service named `nope`"), "{message}");
    assert_error(
        &ferry.http("POST", "/v1/echo/nope", &[], b"{}").await,
        404,
        "not_found",
    );
    assert_error(
        &ferry.http("GET", "/nowhere", &[], b"").await,
        404,
        "not_found",
    );
    assert_error(
        &ferry.http("GET", "/v1/echo/echo", &[], b"").await,
        405,
        "bad_request",
    );
    // Paths next to the call route's shape are refused, whichever way.
    for path in [
        "/v1/echo/params/",
        "/v1/echo/params/more",
        "/v1//params",
        "/v1/echo/",
    ] {
        assert_error(
            &ferry.http("POST", path, &[], b"{}").await,
            404,
            "not_found",
        );
    }
    // A percent-encoded part is decoded, as by the router.
    let reply = ferry
        .http("POST", "/v1/echo/par%61ms", &[], br#"{"a":1}"#)
        .await;
    assert_eq!((reply.status, reply.text()), (200, r#"{"a":1}"#.to_owned()));
    let big = vec![b' '; 10_000];
    let message = assert_error(
        &ferry.http("POST", "/v1/echo/echo", &[], &big).await,
        413,
        "too_large",
    );
    assert!(message.contains("4096"), "{message}");
    let message = assert_error(
        &ferry.http("POST", "/v1/faulty/trap", &[], b"{}").await,
        500,
        "plugin_trap",
    );
    assert!(message.contains("unreachable"), "{message}");
    assert_error(
        &ferry
            .http("POST", "/v1/faulty/loop", &[("x-timeout-ms", "200")], b"{}")
            .await,
        504,
        "timeout",
    );
    assert_error(
        &ferry.http("POST", "/v1/faulty/refuse", &[], b"{}").await,
        422,
        "out_of_stock",
    );

    // The socket and HTTP share one plugin's limits: with its only instance
    // busy on a socket request, an HTTP request is turned away.
    let mut client = ferry.connect().await;
    client
        .send(&json!({"id": 1, "service": "faulty", "action": "slow", "timeout_ms": 1500}))
        .await;
    // The slow request holds the plugin's instance once the host counts it.
    ferry_tests::eventually(
        "the slow request is running",
        std::time::Duration::from_secs(5),
        async || {
            let status = ferry.status().await;
            (ferry_tests::service_status(&status, "faulty")["stats"]["in_flight"] == 1)
                .then_some(())
        },
    )
    .await;
    let reply = ferry.http("POST", "/v1/faulty/ok", &[], b"{}").await;
    assert_error(&reply, 429, "overloaded");
    assert_eq!(reply.header("retry-after"), Some("1"));
    client.recv().await.unwrap();
    assert_eq!(
        ferry.http("POST", "/v1/faulty/ok", &[], b"{}").await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_status_and_metrics() {
    let ferry = Ferry::start_default();
    assert_eq!(ferry.http("GET", "/healthz", &[], b"").await.status, 200);
    assert_eq!(ferry.http("GET", "/readyz", &[], b"").await.status, 200);

    for _ in 0..5 {
        assert_eq!(
            ferry.http("POST", "/v1/echo/echo", &[], b"{}").await.status,
            200
        );
    }
    let mut client = ferry.connect().await;
    client
        .request(&json!({"id": 1, "service": "faulty", "action": "trap"}))
        .await;
    client
        .request(&json!({"id": 2, "service": "faulty", "action": "loop", "timeout_ms": 100}))
        .await;

    let status = ferry.admin_http("GET", "/v1/status").await.json();
    let service = |name: &str| service_status(&status, name);
    let echo = service("echo");
    assert_eq!(echo["state"], "ready");
    assert_eq!(echo["version"].as_str().unwrap().len(), 12);
    assert_eq!(echo["stats"]["requests"], 5);
    assert_eq!(echo["stats"]["in_flight"], 0);
    assert!(echo["stats"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(echo["stats"]["p99_ms"].as_f64().unwrap() >= echo["stats"]["p50_ms"].as_f64().unwrap());
    let faulty = service("faulty");
    assert_eq!(faulty["stats"]["traps"], 1);
    assert_eq!(faulty["stats"]["timeouts"], 1);
    assert_eq!(faulty["stats"]["restarts"], 2);

    let metrics = ferry.admin_http("GET", "/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(
        text.contains("ferry_requests_total{service=\"echo\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("ferry_traps_total{service=\"faulty\"} 1"),
        "{text}"
    );
    // Latency is a histogram (the issue that moved /metrics to
    // prometheus-client asked for `_sum`, `_count` and buckets; it was a
    // summary of two quantiles before).
    assert!(
        text.contains("# TYPE ferry_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("ferry_request_duration_seconds_count{service=\"echo\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("ferry_request_duration_seconds_bucket{le=\"+Inf\",service=\"echo\"} 5"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    // `ferry status` prints the same in a table.
    let out = Command::new(ferry_bin())
        .args(["status", "--admin", &ferry.admin.unwrap().to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.starts_with("SERVICE"), "{table}");
    let echo_row = table
        .lines()
        .find(|l| l.starts_with("echo"))
        .expect("echo row");
    let cells: Vec<&str> = echo_row.split_whitespace().collect();
    assert_eq!(
        &cells[1..4],
        ["ready", echo["version"].as_str().unwrap(), "5"],
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_fails_to_load_keeps_readyz_red_and_shows_why() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .start_with(|deploy| {
            std::fs::write(deploy.join("broken.wasm"), b"\0asm\x01\0\0\0").unwrap();
        });
    let reply = ferry.http("GET", "/readyz", &[], b"").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["failed"], json!(["broken"]));
    let status = ferry.admin_http("GET", "/v1/status").await.json();
    let broken = service_status(&status, "broken");
    assert_eq!(broken["state"], "failed");
    assert!(
        broken["error"]
            .as_str()
            .unwrap()
            .contains("core wasm module"),
        "{broken}"
    );
    // The others are served all the same.
    assert_eq!(
        ferry.http("POST", "/v1/echo/echo", &[], b"{}").await.status,
        200
    );
}

/// Status and metrics describe every application: they are served on the
/// admin listener only, never on the public gateway.
#[tokio::test(flavor = "multi_thread")]
async fn status_and_metrics_are_on_the_admin_listener_only() {
    let ferry = Ferry::start_default();
    for path in ["/v1/status", "/metrics"] {
        let reply = ferry.http("GET", path, &[], b"").await;
        assert_eq!(reply.status, 404, "{path} on the gateway: {}", reply.text());
        let reply = ferry.admin_http("GET", path).await;
        assert_eq!(reply.status, 200, "{path} on the admin listener");
    }
    assert_eq!(ferry.admin.unwrap().ip().to_string(), "127.0.0.1");
}

/// A thousand connections that never finish their headers, and a thousand
/// that send nothing, against a host that may open 1024 files: the gateway
/// holds at most its `max_connections` and closes the oldest idle one to
/// let a newcomer in, so a well-behaved client is served over HTTP and the
/// socket all along.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_http_connections_do_not_lock_out_good_clients() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .http("{listen: 127.0.0.1:0, max_connections: 256, header_timeout_ms: 30000}")
        .fd_limit(1024)
        .start();
    let addr = ferry.http.unwrap();
    let mut stalled = Vec::new();
    for i in 0..2000 {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
        else {
            continue;
        };
        if i % 2 == 0 {
            use tokio::io::AsyncWriteExt;
            let _ = stream
                .write_all(b"POST /v1/echo/params HTTP/1.1\r\nHost: x\r\nContent-Le")
                .await;
        }
        stalled.push(stream);
    }
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let began = Instant::now();
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            ferry_tests::try_http_request(
                addr,
                "POST",
                "/v1/echo/params",
                &[],
                format!("{{\"n\":{i}}}").as_bytes(),
            ),
        )
        .await
        .expect("a good HTTP client waited over 5 s")
        .expect("a good HTTP client was refused");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["n"], i);
        let mut client = ferry.connect().await;
        let response = client
            .request(&json!({"id": i, "service": "echo", "action": "params", "params": i}))
            .await;
        assert_eq!(ferry_tests::expect_success(&response), &json!(i));
        slowest = slowest.max(began.elapsed());
    }
    eprintln!("slowest good round trip beside 2000 stalled connections: {slowest:?}");
    assert!(
        ferry.open_fds() < 700,
        "the host holds {} files",
        ferry.open_fds()
    );
    drop(stalled);
}

/// `header_timeout_ms` bounds the wait for a request head: a head that
/// stalls, and a keep-alive connection left idle, are closed once it
/// passes (never before), while a head that arrives in pieces within it is
/// served, and a busy keep-alive connection is not cut off between requests.
#[tokio::test(flavor = "multi_thread")]
async fn the_header_timeout_closes_stalled_and_idle_connections_and_only_those() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TIMEOUT: Duration = Duration::from_millis(500);
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .http("{listen: 127.0.0.1:0, header_timeout_ms: 500}")
        .start();
    let addr = ferry.http.unwrap();
    // Reads until the host closes the connection; what it sent, and when.
    let closed = async |stream: &mut tokio::net::TcpStream| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("the connection is still open 5 s on")
            {
                Ok(0) | Err(_) => return (Instant::now(), got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    // Closed once the timeout passed, not before, and not long after.
    let on_time = |waited: Duration, what: &str| {
        assert!(
            waited >= TIMEOUT - Duration::from_millis(20),
            "{what} closed after {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(3),
            "{what} closed only after {waited:?}"
        );
    };
    let request = |body: &str| {
        format!(
            "POST /v1/echo/params HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };

    // Half a head, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let began = Instant::now();
    stalled
        .write_all(b"POST /v1/echo/params HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .unwrap();
    let (at, got) = closed(&mut stalled).await;
    on_time(at - began, "a stalled head");
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "a stalled head was answered"
    );

    // A head in three pieces, 150 ms apart: within the timeout, answered;
    // then four more requests 300 ms apart on the same connection (each
    // wait shorter than the timeout, their sum longer); then idle, closed.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let first = request(r#"{"n":0}"#);
    let (a, rest) = first.split_at(20);
    let (b, c) = rest.split_at(20);
    for piece in [a, b, c] {
        slow.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut answered = 0;
    let mut buf = vec![0u8; 4096];
    let mut read_reply = async |stream: &mut tokio::net::TcpStream, n: u32| {
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains(&format!("{{\"n\":{n}}}")) {
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("no answer within 5 s")
                .unwrap();
            assert!(read > 0, "closed before answering request {n}");
            got.extend_from_slice(&buf[..read]);
        }
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    };
    read_reply(&mut slow, 0).await;
    answered += 1;
    for n in 1..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        slow.write_all(request(&format!(r#"{{"n":{n}}}"#)).as_bytes())
            .await
            .unwrap();
        read_reply(&mut slow, n).await;
        answered += 1;
    }
    assert_eq!(answered, 5);
    let idle_from = Instant::now();
    let (at, got) = closed(&mut slow).await;
    assert!(got.is_empty(), "sent on an idle connection: {got:?}");
    on_time(at - idle_from, "an idle keep-alive connection");
}

/// An HTTP client that goes away mid-request has its request cancelled, as
/// on the socket: the plugin's instance is free long before the deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_mid_request_has_it_cancelled() {
    use tokio::io::AsyncWriteExt;
    let ferry = Ferry::start_default();
    let addr = ferry.http.unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /v1/faulty/slow HTTP/1.1\r\nHost: {addr}\r\nX-Timeout-Ms: 3000\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let in_flight = async |n: u64| {
        let status = ferry.status().await;
        (service_status(&status, "faulty")["stats"]["in_flight"] == n).then_some(())
    };
    ferry_tests::eventually(
        "the slow request runs",
        Duration::from_secs(5),
        async || in_flight(1).await,
    )
    .await;
    drop(stream);
    let gone = Instant::now();
    ferry_tests::eventually(
        "the request is cancelled",
        Duration::from_secs(5),
        async || in_flight(0).await,
    )
    .await;
    assert!(
        gone.elapsed() < Duration::from_secs(1),
        "cancelled after {:?}",
        gone.elapsed()
    );
}

/// A request body is read whole however it arrives: chunks sent apart are
/// joined in order; chunks that together pass the limit (no length
/// declared up front) are refused as `too_large`; a body that stops
/// arriving is refused once the header timeout has passed, not before.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_in_chunks_is_joined_and_refused_past_the_limit_or_when_it_stalls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .config("max_frame_bytes: 4096\n")
        .http("{listen: 127.0.0.1:0, header_timeout_ms: 500}")
        .start();
    let addr = ferry.http.unwrap();
    // Writes the head and then each piece 100 ms apart (a write the host
    // refuses by closing is not an error here), and reads the response to
    // its end: its status line and body.
    let exchange = async |head: &str, pieces: &[&[u8]]| {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        for piece in pieces {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(piece).await.is_err() {
                break;
            }
        }
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
            .await
            .expect("no end of the response within 5 s");
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
        (
            head.lines().next().unwrap_or_default().to_owned(),
            body.to_owned(),
        )
    };
    let chunked = format!(
        "POST /v1/echo/params HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );

    // Three chunks of one JSON object: the plugin gets all of it.
    let (status, body) = exchange(
        &chunked,
        &[
            b"9\r\n{\"user\":\"\r\n",
            b"4\r\nada\"\r\n",
            b"d\r\n,\"items\":[1]}\r\n",
            b"0\r\n\r\n",
        ],
    )
    .await;
    assert!(status.contains(" 200 "), "{status}: {body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"user": "ada", "items": [1]})
    );

    // Three chunks of 2,000 bytes: past the 4,096 limit with the third.
    let chunk = format!("7d0\r\n{}\r\n", "a".repeat(2000));
    let (status, body) = exchange(
        &chunked,
        &[
            chunk.as_bytes(),
            chunk.as_bytes(),
            chunk.as_bytes(),
            b"0\r\n\r\n",
        ],
    )
    .await;
    assert!(status.contains(" 413 "), "{status}: {body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "too_large"
    );

    // Ten bytes of a declared twenty, then nothing.
    let began = Instant::now();
    let (status, body) = exchange(
        &format!(
            "POST /v1/echo/params HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 20\r\n\r\n"
        ),
        &[b"{\"user\":\"a"],
    )
    .await;
    let waited = began.elapsed();
    assert!(status.contains(" 400 "), "{status}: {body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "bad_request");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not arrive within 500 ms"),
        "{error}"
    );
    assert!(
        waited >= Duration::from_millis(500),
        "refused after {waited:?}"
    );
}

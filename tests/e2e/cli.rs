//! The command line: `check`, `call`, `serve` start-up rules (config
//! validation, defaults, stale sockets, compile cache) and shutdown.

use std::os::unix::net::UnixListener;
use std::process::{Command, Output};
use std::time::Instant;

use ferry_tests::{Ferry, expect_success, ferry_bin, plugin_wasm, scratch_dir};
use serde_json::{Value, json};

fn ferry(args: &[&str]) -> Output {
    Command::new(ferry_bin())
        .args(args)
        .output()
        .expect("run ferry")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_a_plugin_and_explains_what_is_wrong_with_others() {
    let out = ferry(&["check", plugin_wasm("echo").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).starts_with("ok: "),
        "{}",
        text(&out.stdout)
    );

    let dir = scratch_dir();
    let cases: [(&str, &[u8], &str); 4] = [
        ("core.wasm", b"\0asm\x01\0\0\0", "core wasm module"),
        ("text.wasm", b"hello", "not a WebAssembly file"),
        (
            "empty.wasm",
            b"\0asm\x0d\0\x01\0",
            "does not export the `ferry:plugin/handler@0.1.0`",
        ),
        (
            "broken.wasm",
            b"\0asm\x0d\0\x01\0\x07\xff",
            "does not compile",
        ),
    ];
    for (name, bytes, reason) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = ferry(&["check", path.to_str().unwrap()]);
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: {stdout}{}",
            text(&out.stderr)
        );
        assert!(
            stdout.starts_with("invalid: ") && stdout.contains(reason),
            "{name}: {stdout}"
        );
    }
    let out = ferry(&["check", dir.join("missing.wasm").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("cannot read"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_unknown_config_key_is_named_and_nothing_is_opened() {
    let dir = scratch_dir();
    let config = dir.join("ferry.yaml");
    std::fs::write(
        &config,
        "socket: run/ferry.sock\ndefaults:\n  timeout_ms: 100\n  memory: 5\n",
    )
    .unwrap();
    let out = ferry(&["serve", "--config", config.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(config.to_str().unwrap()),
        "names the file: {stderr}"
    );
    assert!(
        stderr.contains("unknown field `memory`"),
        "names the key: {stderr}"
    );
    assert!(!dir.join("run").exists(), "no socket was opened");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn call_prints_the_response_and_exits_by_status() {
    let ferry_host = Ferry::start_default();
    let socket = ferry_host.socket.to_str().unwrap().to_owned();
    let out = ferry(&[
        "call",
        "echo",
        "echo",
        r#"{"x": 1}"#,
        "--socket",
        &socket,
        "--tenant",
        "t1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let response: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(expect_success(&response)["params"], json!({"x": 1}));
    assert_eq!(response["result"]["ctx"]["tenant"], "t1");

    let out = ferry(&["call", "faulty", "trap", "--socket", &socket]);
    assert_eq!(out.status.code(), Some(1));
    let response: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response["error"]["code"], "plugin_trap");

    let out = ferry(&["call", "echo", "echo", "{oops", "--socket", &socket]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("params are not valid JSON"));

    let out = ferry(&[
        "call",
        "echo",
        "echo",
        "--socket",
        "/tmp/no-such-ferry.sock",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is `ferry serve` running"));
}

#[test]
fn a_second_start_loads_plugins_from_the_compile_cache() {
    let first = Ferry::options()
        .plugin("echo", "echo", None)
        .plugin("faulty", "faulty", None)
        .start();
    assert!(first.log().contains("cache=miss"), "{}", first.log());
    let cold = first.startup;
    let dir = first.stop_keeping_dir();
    let second = Ferry::options_in(dir)
        .plugin("echo", "echo", None)
        .plugin("faulty", "faulty", None)
        .start();
    let log = second.log();
    assert_eq!(log.matches("cache=hit").count(), 2, "{log}");
    assert!(!log.contains("cache=miss"), "{log}");
    eprintln!(
        "start-up to serving: cold cache {cold:?}, warm cache {:?}",
        second.startup
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_runs_without_a_config_on_embedded_defaults() {
    let dir = scratch_dir();
    std::fs::create_dir_all(dir.join("deploy")).unwrap();
    std::fs::copy(plugin_wasm("echo"), dir.join("deploy/echo.wasm")).unwrap();
    let mut child = Command::new(ferry_bin())
        .arg("serve")
        .current_dir(&dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = dir.join("run/ferry.sock");
    let began = Instant::now();
    let mut client = loop {
        if let Ok(stream) = tokio::net::UnixStream::connect(&socket).await {
            drop(stream);
            break ferry_tests::Client::connect(&socket).await;
        }
        assert!(
            began.elapsed().as_secs() < 60,
            "no socket at run/ferry.sock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let response = client
        .request(&json!({"id": 1, "service": "echo", "action": "echo"}))
        .await;
    expect_success(&response);
    assert!(dir.join("data/cache").is_dir(), "compile cache under data/");
    assert!(dir.join("run/services/echo.sock").exists());
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(!socket.exists(), "socket file removed on shutdown");
    assert!(!dir.join("run/services/echo.sock").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_socket_is_replaced_but_a_live_one_is_not() {
    let dir = scratch_dir();
    std::fs::create_dir_all(dir.join("run")).unwrap();
    // A socket file nobody listens on, as a crashed host leaves behind.
    drop(UnixListener::bind(dir.join("run/ferry.sock")).unwrap());
    assert!(dir.join("run/ferry.sock").exists());
    let first = Ferry::options_in(dir.clone())
        .plugin("echo", "echo", None)
        .start();
    let mut client = first.connect().await;
    expect_success(
        &client
            .request(&json!({"id": 1, "service": "echo", "action": "echo"}))
            .await,
    );

    // A second host on the same socket must refuse, not steal it.
    let config = dir.join("ferry.yaml");
    let out = ferry(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );
    expect_success(
        &client
            .request(&json!({"id": 2, "service": "echo", "action": "echo"}))
            .await,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_requests_in_flight_and_exits_cleanly() {
    let mut ferry = Ferry::start_default();
    let mut client = ferry.connect().await;
    client
        .send(&json!({"id": 1, "service": "faulty", "action": "slow", "timeout_ms": 300}))
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
    let status = tokio::task::block_in_place(|| ferry.terminate());
    let response = client
        .recv()
        .await
        .expect("the in-flight request is answered");
    assert_eq!(response["error"]["code"], "timeout");
    assert!(status.success(), "exit status {status}");
    assert!(!ferry.socket.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_answers_every_accepted_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let mut ferry = Ferry::start_default();
    let received = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..8u64 {
        let (socket, received) = (ferry.socket.clone(), received.clone());
        clients.push(tokio::spawn(async move {
            let mut client = ferry_tests::Client::connect(&socket).await;
            let request = |n: u64| {
                // A few slow ones keep requests in flight at the signal.
                if n.is_multiple_of(500) {
                    json!({"id": n, "service": "faulty", "action": "slow", "timeout_ms": 200})
                } else {
                    json!({"id": n, "service": "echo", "action": "echo", "params": n})
                }
            };
            let mut next = c * 1_000_000;
            for _ in 0..8 {
                client.try_send(&request(next)).await.unwrap();
                next += 1;
            }
            // Keep eight in flight until the host closes the connection.
            while let Some(response) = client.recv().await {
                let code = response["error"]["code"].as_str().unwrap_or("");
                assert!(
                    response["status"] == "success" || code == "timeout",
                    "{response}"
                );
                received.fetch_add(1, Ordering::Relaxed);
                let _ = client.try_send(&request(next)).await;
                next += 1;
            }
        }));
    }
    // HTTP callers at the same time, one request per connection: a request
    // either gets its whole answer or fails before the host accepted it.
    let http_received = Arc::new(AtomicU64::new(0));
    let addr = ferry.http.expect("the HTTP gateway is on");
    for c in 0..4u64 {
        let http_received = http_received.clone();
        clients.push(tokio::spawn(async move {
            for n in 0u64.. {
                let body = json!({"client": c, "n": n}).to_string();
                let path = if n.is_multiple_of(1000) {
                    "/v1/faulty/slow"
                } else {
                    "/v1/echo/echo"
                };
                let headers: &[(&str, &str)] = if n.is_multiple_of(1000) {
                    &[("x-timeout-ms", "200")]
                } else {
                    &[]
                };
                match ferry_tests::try_http_request(addr, "POST", path, headers, body.as_bytes())
                    .await
                {
                    Ok(reply) => {
                        assert!(reply.status == 200 || reply.status == 504, "{reply:?}");
                        http_received.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let status = tokio::task::block_in_place(|| ferry.terminate());
    for client in clients {
        client.await.unwrap();
    }
    assert!(status.success(), "exit status {status}");

    let log = ferry.log();
    let line = log
        .lines()
        .find(|l| l.contains("stopped;"))
        .expect("a shutdown summary");
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line}"))
    };
    let received = received.load(Ordering::Relaxed);
    let http_received = http_received.load(Ordering::Relaxed);
    eprintln!(
        "SIGTERM under load: socket accepted {}, answered {}, received {received}; http accepted {}, answered {}, received {http_received}",
        field("accepted"),
        field("answered"),
        field("http_accepted"),
        field("http_answered"),
    );
    assert!(
        http_received > 20,
        "the HTTP load was running ({http_received} responses)"
    );
    assert_eq!(field("http_accepted"), field("http_answered"), "{line}");
    assert_eq!(
        field("http_answered"),
        http_received,
        "every HTTP answer reached its client"
    );
    assert!(
        received > 100,
        "the load was running ({received} responses)"
    );
    assert_eq!(field("accepted"), field("answered"), "{line}");
    assert_eq!(
        field("answered"),
        received,
        "every answer reached its client"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_asks_the_control_socket_when_http_is_off() {
    let host = Ferry::start_default();
    // Another config for the same host, without the HTTP gateway.
    let config = host.dir.join("no-http.yaml");
    std::fs::write(&config, "socket: run/ferry.sock\nhttp: null\n").unwrap();
    let out = ferry(&["status", "--config", config.to_str().unwrap()]);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}{}", text(&out.stderr));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("echo") && l.contains("ready")),
        "{table}"
    );
    // Nobody else's user could have asked: the socket is owner-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(host.dir.join("run/control.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

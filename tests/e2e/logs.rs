//! What a plugin writes cannot pass for the host's own log lines, cannot
//! flood the log, and a log reader that is slow or stuck cannot stall the
//! host.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::{
    Client, Ferry, eventually, expect_error, expect_success, ferry_bin, plugin_wasm, scratch_dir,
    service_status,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn plugin_text_cannot_forge_host_lines() {
    let ferry = Ferry::start_default();
    let forged =
        "hello\n2026-12-01T00:00:00.000000Z  INFO ferry::cli::serve: forged line\rmore\u{1b}[31m";
    let mut client = ferry.connect().await;
    for stdout in [false, true] {
        let response = client
            .request(&json!({"id": 1, "service": "faulty", "action": "chatter", "params": {"lines": 1, "text": forged, "stdout": stdout}}))
            .await;
        expect_success(&response);
    }
    let log = eventually(
        "both lines are logged",
        Duration::from_secs(5),
        async || {
            let log = ferry.log();
            (log.matches("forged line").count() >= 2).then_some(log)
        },
    )
    .await;
    for line in log.lines() {
        assert!(
            !line.starts_with("2026-12-01T00:00:00"),
            "a forged line: {line}"
        );
        assert!(
            !line.contains('\r') && !line.contains('\u{1b}'),
            "raw control characters: {line:?}"
        );
    }
    assert!(log.contains("hello\\n2026-12-01T00:00:00"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chatty_plugin_is_held_to_its_log_budget() {
    let ferry = Ferry::options()
        .plugin("faulty", "faulty", Some("log_lines_per_s: 100\n"))
        .start();
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": 1, "service": "faulty", "action": "chatter", "params": {"lines": 5000, "text": "chatter chatter"}}))
        .await;
    expect_success(&response);
    // One more line later reports how many were dropped.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = client
        .request(&json!({"id": 2, "service": "faulty", "action": "chatter", "params": {"lines": 1, "text": "after"}}))
        .await;
    expect_success(&response);
    let log = eventually("the drop is reported", Duration::from_secs(5), async || {
        let log = ferry.log();
        log.contains("log lines dropped").then_some(log)
    })
    .await;
    let written = log.matches("chatter chatter").count();
    assert!(
        written <= 600,
        "{written} lines of 5000 written at 100 a second"
    );
    let dropped = service_status(&ferry.status().await, "faulty")["log_lines_dropped"]
        .as_u64()
        .unwrap();
    assert!(dropped >= 4400, "dropped {dropped}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_reader_that_does_not_read_cannot_stall_the_host() {
    let dir = scratch_dir();
    std::fs::create_dir_all(dir.join("deploy")).unwrap();
    std::fs::copy(plugin_wasm("faulty"), dir.join("deploy/faulty.wasm")).unwrap();
    // Traps are the point here: the circuit must not stop them.
    std::fs::write(
        dir.join("deploy/faulty.yaml"),
        "circuit: {failures: 100000}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("ferry.yaml"),
        "socket: run/ferry.sock\nplugins: deploy\ndata: data\nhttp: null\nadmin: null\n",
    )
    .unwrap();
    // stderr is a pipe nobody reads: it fills after 64 KiB.
    let mut child = Command::new(ferry_bin())
        .arg("serve")
        .arg("--config")
        .arg(dir.join("ferry.yaml"))
        .env("FERRY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let socket = dir.join("run/ferry.sock");
    eventually("the host serves", Duration::from_secs(30), async || {
        match tokio::net::UnixStream::connect(&socket).await {
            Ok(_) => Some(()),
            Err(_) => None,
        }
    })
    .await;
    let began = Instant::now();
    let mut client = Client::connect(&socket).await;
    // Each trap logs a few hundred bytes: 2000 of them are far more than
    // the pipe holds.
    for id in 0..2000 {
        let response = client
            .request(&json!({"id": id, "service": "faulty", "action": "trap"}))
            .await;
        expect_error(&response, "plugin_trap");
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "stalled at request {id}"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
}

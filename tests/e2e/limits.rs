//! What one socket client can cost the host: responses it does not read
//! are bounded in bytes and in time, a result larger than the plugin's
//! `max_response_bytes` is refused, a frame that trickles in is cut off
//! at its deadline, and one user cannot hold every connection.

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use ferry_tests::{Client, Ferry, expect_error, expect_success};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// A frame of `echo.params` whose params carry `size` bytes.
fn big_request(id: u64, size: usize) -> Vec<u8> {
    let body = json!({"id": id, "service": "echo", "action": "params", "params": {"pad": "x".repeat(size)}});
    let payload = serde_json::to_vec(&body).unwrap();
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_a_client_does_not_read_are_bounded() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .config("max_unsent_bytes: 1048576\nwrite_timeout_ms: 60000\n")
        .start();
    let baseline = ferry.rss_kib();
    // 300 requests for 300 KiB each (90 MiB of answers), none read.
    let stream = tokio::net::UnixStream::connect(&ferry.socket)
        .await
        .unwrap();
    let (_read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        for id in 0..300 {
            let frame = big_request(id, 300 * 1024);
            match tokio::time::timeout(Duration::from_secs(2), write.write_all(&frame)).await {
                Ok(Ok(())) => sent += 1,
                _ => break,
            }
        }
        (sent, write)
    });
    let (sent, _write) = writer.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown_mib = ferry.rss_kib().saturating_sub(baseline) / 1024;
    assert!(
        sent < 300,
        "the host kept reading from a client that read nothing ({sent} frames taken)"
    );
    assert!(
        grown_mib < 40,
        "the host grew by {grown_mib} MiB for one client's unread answers"
    );
    // Others are served meanwhile.
    let mut other = ferry.connect().await;
    expect_success(
        &other
            .request(&json!({"id": 1, "service": "echo", "action": "params"}))
            .await,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .config("max_unsent_bytes: 1048576\nwrite_timeout_ms: 500\n")
        .start();
    let mut client = ferry.connect().await;
    for id in 0..40 {
        if client
            .try_send(&json!({"id": id, "service": "echo", "action": "params", "params": {"pad": "y".repeat(200_000)}}))
            .await
            .is_err()
        {
            break;
        }
    }
    let began = Instant::now();
    // After the timeout the host has closed: reading gets what was sent
    // before, then the end of the stream; it does not get all 40 answers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut answers = 0;
    while client.recv().await.is_some() {
        answers += 1;
    }
    assert!(
        answers < 40,
        "all {answers} answers arrived: nothing was given up"
    );
    assert!(began.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_over_max_response_bytes_answers_too_large() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", Some("max_response_bytes: 2048\n"))
        .start();
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": 1, "service": "echo", "action": "params", "params": {"pad": "z".repeat(4000)}}))
        .await;
    let message = expect_error(&response, "too_large");
    assert!(message.contains("max_response_bytes"), "{message}");
    let small = client
        .request(&json!({"id": 2, "service": "echo", "action": "params", "params": {"pad": "z"}}))
        .await;
    expect_success(&small);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frame_that_trickles_in_is_cut_off_at_its_deadline() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .config("idle_timeout_ms: 400\n")
        .start();
    let mut client = ferry.connect().await;
    let frame = big_request(1, 50);
    let began = Instant::now();
    // One byte every 100 ms: each read makes progress, the frame never
    // completes in time.
    let mut closed = false;
    for byte in &frame {
        if client.try_send_raw(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if began.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !closed {
        assert!(
            client.recv().await.is_none(),
            "the host answered a trickled frame"
        );
    }
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "still open after {:?}",
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_cannot_hold_every_connection() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .socket("{path: run/ferry.sock, mode: \"0666\", max_connections_per_uid: 5}")
        .config("max_connections: 50\n")
        .start();
    // This user (the test's) holds its five.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut client = ferry.connect().await;
        expect_success(
            &client
                .request(&json!({"id": 1, "service": "echo", "action": "params"}))
                .await,
        );
        held.push(client);
    }
    let mut sixth = ferry.connect().await;
    let refused = sixth.recv().await.expect("a refusal");
    let message = expect_error(&refused, "overloaded");
    assert!(message.contains("max_connections_per_uid"), "{message}");
    // Another user still gets in.
    let socket = ferry.socket.display().to_string();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            r#"
import json, socket, struct
s = socket.socket(socket.AF_UNIX)
s.connect({socket:?})
body = json.dumps({{"id": 7, "service": "echo", "action": "params", "params": {{"who": "nobody"}}}}).encode()
s.sendall(struct.pack(">I", len(body)) + body)
n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
print(s.recv(n, socket.MSG_WAITALL).decode())
"#
        ))
        .uid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(expect_success(&answer)["who"], "nobody");
    // A connection given back makes room again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = Client::connect(&ferry.socket).await;
    expect_success(
        &again
            .request(&json!({"id": 2, "service": "echo", "action": "params"}))
            .await,
    );
}

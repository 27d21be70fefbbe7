//! The brokers benchmark's native baselines, doing what the host does
//! without plugins, outbox or status:
//!
//! - `native-brokers webhooks ADDR PATH N CONCURRENCY SECRET`: N signed
//!   POSTs (Standard Webhooks headers, HMAC-SHA256 with the key after
//!   `whsec_`) to `ADDR`, each on a fresh connection as the host's are,
//!   CONCURRENCY at once; prints `{"per_s"}`.
//! - `native-brokers consume URL QUEUE N PREFETCH`: consumes N messages,
//!   parsing each body as JSON and writing it back out (what `echo.params`
//!   does), acking each; prints `{"per_s"}` from the first delivery to the
//!   last.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::Engine as _;
use futures_util::StreamExt as _;
use hmac::{Hmac, Mac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("webhooks") => webhooks(&args[2..]).await,
        Some("consume") => consume(&args[2..]).await,
        _ => panic!("usage: native-brokers webhooks|consume ..."),
    }
}

async fn webhooks(args: &[String]) {
    let [addr, path, n, concurrency, secret] = args else {
        panic!("usage: native-brokers webhooks ADDR PATH N CONCURRENCY SECRET");
    };
    let n: u64 = n.parse().unwrap();
    let concurrency: u64 = concurrency.parse().unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, key, addr, path) = (next.clone(), key.clone(), addr.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let id = format!("msg_{i}");
                let body = format!(
                    r#"{{"type":"orders.created","timestamp":"2026-12-02T00:00:00.000Z","data":{{"n":{i}}}}}"#
                );
                let timestamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
                mac.update(format!("{id}.{timestamp}.").as_bytes());
                mac.update(body.as_bytes());
                let signature = base64::engine::general_purpose::STANDARD
                    .encode(mac.finalize().into_bytes());
                let request = format!(
                    "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\nwebhook-id: {id}\r\nwebhook-timestamp: {timestamp}\r\nwebhook-signature: v1,{signature}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
                stream.write_all(request.as_bytes()).await.unwrap();
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await.unwrap();
                assert!(answer.starts_with(b"HTTP/1.1 200"), "not a 200");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let per_s = n as f64 / started.elapsed().as_secs_f64();
    println!("{}", serde_json::json!({ "per_s": per_s }));
}

async fn consume(args: &[String]) {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    let [url, queue, n, prefetch] = args else {
        panic!("usage: native-brokers consume URL QUEUE N PREFETCH");
    };
    let n: u64 = n.parse().unwrap();
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(prefetch.parse().unwrap(), BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "native".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let mut first = None;
    let mut done = 0;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.unwrap();
        first.get_or_insert_with(Instant::now);
        let value: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        std::hint::black_box(value.to_string());
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        done += 1;
        if done == n {
            break;
        }
    }
    let per_s = (n - 1) as f64 / first.unwrap().elapsed().as_secs_f64();
    println!("{}", serde_json::json!({ "per_s": per_s }));
}

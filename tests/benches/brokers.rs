//! Webhooks and RabbitMQ benchmark, Ferry against native programs doing
//! the same work (`native-brokers`), in one run, Ferry and the natives on
//! CPU 0, the load (publisher, receiver) on CPU 1, rounds interleaved:
//!
//! - Webhook deliveries: N events published on the events socket to a
//!   topic one endpoint (concurrency 16) wants; deliveries per second
//!   until the local receiver (axum) has all N, and the time from each
//!   publish to its arrival. Native: N signed POSTs, 16 at once, each on
//!   a fresh connection as the host's are, without an outbox.
//! - RabbitMQ consumption: a queue filled with N messages, then consumed
//!   with prefetch 64 by `echo.params` through the host, or by a native
//!   lapin consumer that parses and re-serializes each body; messages per
//!   second from the first ack to the last.
//!
//! `make bench`. `BENCH_DELIVERIES` (default 5000) and `BENCH_MESSAGES`
//! (default 20000) size the rounds, `BENCH_ROUNDS` (default 3) counts
//! them.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use ferry_tests::receiver::Receiver;
use ferry_tests::services::rabbitmq_url;
use ferry_tests::{Ferry, env_u64, run_on_cpu};

const CONCURRENCY: u64 = 16;
const PREFETCH: u16 = 64;
const BODY: &str = r#"{"user":"ada","items":[1,2,3],"note":"hello ferry"}"#;

fn secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    )
}

fn native(args: &[&str]) -> f64 {
    let mut command = Command::new(env!("CARGO_BIN_EXE_native-brokers"));
    command.args(args).stdout(Stdio::piped());
    let out = run_on_cpu(&mut command, 0)
        .output()
        .expect("native-brokers runs");
    assert!(out.status.success(), "native-brokers failed");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON line");
    line["per_s"].as_f64().unwrap()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One round of webhook deliveries through the host: deliveries per
/// second and every delivery's publish-to-arrival time in microseconds.
async fn ferry_webhooks(ferry: &Ferry, receiver: &Receiver, path: &str, n: u64) -> (f64, Vec<u64>) {
    let stream = tokio::net::UnixStream::connect(ferry.events_socket())
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write
        .write_all(
            b"{\"type\":\"hello\",\"consumer\":\"bench\",\"event_key\":\"b\",\"topics\":[]}\n",
        )
        .await
        .unwrap();
    assert!(
        lines
            .next_line()
            .await
            .unwrap()
            .unwrap()
            .contains("hello_ack")
    );
    let before = receiver.count(path);
    let base = Instant::now();
    let started = Instant::now();
    let acks = tokio::spawn(async move {
        for _ in 0..n {
            let line = lines.next_line().await.unwrap().unwrap();
            assert!(line.contains("publish_ack"), "{line}");
        }
    });
    let mut batch = String::new();
    for i in 0..n {
        let at = base.elapsed().as_micros() as u64;
        batch.push_str(&format!(
            "{{\"type\":\"publish\",\"topic\":\"orders.created\",\"payload\":{{\"n\":{i},\"at\":{at}}}}}\n"
        ));
        if batch.len() > 16 * 1024 {
            write.write_all(batch.as_bytes()).await.unwrap();
            batch.clear();
        }
    }
    write.write_all(batch.as_bytes()).await.unwrap();
    acks.await.unwrap();
    eprintln!(
        "acked after {:?}, {} received",
        started.elapsed(),
        receiver.count(path) - before
    );
    while receiver.count(path) < before + n as usize {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "deliveries stalled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let per_s = n as f64 / started.elapsed().as_secs_f64();
    let mut latencies: Vec<u64> = receiver.received(path)[before..]
        .iter()
        .map(|r| {
            let sent = r.json()["data"]["at"].as_u64().unwrap();
            (r.at.duration_since(base).as_micros() as u64).saturating_sub(sent)
        })
        .collect();
    latencies.sort_unstable();
    (per_s, latencies)
}

async fn fill(url: &str, queue: &str, n: u64) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..n {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                BODY.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
    }
    channel.wait_for_confirms().await.unwrap();
    let _ = connection.close(200, "filled".into()).await;
}

/// A host consuming `queue` with `echo.params`: messages per second from
/// the first ack seen to the last.
async fn ferry_consume(url: &str, queue: &str, n: u64) -> f64 {
    let ferry = Ferry::options()
        .plugin(
            "echo",
            "echo",
            Some(&format!("consume: [{{rabbitmq: \"{queue}\", action: params, prefetch: {PREFETCH}}}]\n")),
        )
        .socket("{path: run/ferry.sock, app: shop}")
        .config(&format!(
            "apps:\n  shop:\n    services: [echo]\n    auth: none\n    rabbitmq: {{url: \"{url}\"}}\n"
        ))
        .cpu0()
        .start();
    let acked = async || {
        ferry.status().await["rabbitmq"]["consumers"][0]["acked"]
            .as_u64()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let (first, from) = loop {
        let a = acked().await;
        if a > 0 {
            break (Instant::now(), a);
        }
        assert!(Instant::now() < deadline, "the consumer never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    loop {
        let a = acked().await;
        if a >= n {
            return (a - from) as f64 / first.elapsed().as_secs_f64();
        }
        assert!(Instant::now() < deadline, "consumption stalled at {a}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    let rounds = env_u64("BENCH_ROUNDS", 3);
    let deliveries = env_u64("BENCH_DELIVERIES", 5_000);
    let messages = env_u64("BENCH_MESSAGES", 20_000);
    let runtime = ferry_tests::load::load_runtime();
    let url = rabbitmq_url().expect("RabbitMQ for the benchmark");
    println!(
        "brokers: {rounds} rounds; webhooks: {deliveries} deliveries per round, {CONCURRENCY} at once; \
         RabbitMQ: {messages} messages per round, prefetch {PREFETCH}; Ferry and natives on CPU 0, \
         load on CPU 1, interleaved\n"
    );
    runtime.block_on(async {
        let receiver = Receiver::start().await;
        let addr = receiver.addr.unwrap().to_string();
        let ferry = Ferry::options()
            .plugin("echo", "echo", None)
            .env("HOOK_SECRET", &secret())
            .config(&format!(
                "events: {{queue: 100000}}\napps:\n  shop:\n    services: [echo]\n    auth: none\n    webhooks:\n      bench:\n        url: {}\n        secret_env: HOOK_SECRET\n        events: [\"orders.>\"]\n        concurrency: {CONCURRENCY}\n        retry_ms: [1000]\n",
                receiver.url("/ferry")
            ))
            .cpu0()
            .start();
        let (mut hooks, mut native_hooks, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut latencies = Vec::new();
        for _ in 0..rounds {
            let (per_s, lat) = ferry_webhooks(&ferry, &receiver, "/ferry", deliveries).await;
            let n = deliveries.to_string();
            let c = CONCURRENCY.to_string();
            let native_per_s = tokio::task::spawn_blocking({
                let (addr, secret) = (addr.clone(), secret());
                move || native(&["webhooks", &addr, "/native", &n, &c, &secret])
            })
            .await
            .unwrap();
            ratios.push(per_s / native_per_s);
            hooks.push(per_s);
            native_hooks.push(native_per_s);
            latencies.extend(lat);
        }
        latencies.sort_unstable();
        let status = &ferry.status().await["webhooks"][0];
        assert_eq!(status["dead"], 0, "{status}");
        drop(ferry);
        let (mut consumed, mut native_consumed, mut consume_ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let queue = format!("ferry-bench.{}.{round}", std::process::id());
            fill(&url, &queue, messages).await;
            let per_s = ferry_consume(&url, &queue, messages).await;
            let native_queue = format!("{queue}.native");
            fill(&url, &native_queue, messages).await;
            let native_per_s = tokio::task::spawn_blocking({
                let (url, q, n, p) = (url.clone(), native_queue.clone(), messages.to_string(), PREFETCH.to_string());
                move || native(&["consume", &url, &q, &n, &p])
            })
            .await
            .unwrap();
            consume_ratios.push(per_s / native_per_s);
            consumed.push(per_s);
            native_consumed.push(native_per_s);
            // The queues go; the host's retry and dead-letter ones too.
            let connection = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
            let channel = connection.create_channel().await.unwrap();
            for q in [queue.clone(), native_queue, format!("{queue}.dead"), format!("{queue}.retry.1000"),
                      format!("{queue}.retry.2000"), format!("{queue}.retry.4000"), format!("{queue}.retry.8000")] {
                let _ = channel.queue_delete(q.as_str().into(), Default::default()).await;
            }
        }
        println!("{:<36} {:>12} {:>12}", "case", "per second", "ratio");
        let fmt = |r: &[f64]| r.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
        println!("{:<36} {:>12.0}", "webhooks: native sender", median(&mut native_hooks));
        println!(
            "{:<36} {:>12.0} {:>12.2}   (rounds {}; publish to arrival p50 {:.1} ms, p99 {:.1} ms)",
            "webhooks: ferry (outbox, signed)",
            median(&mut hooks),
            median(&mut ratios.clone()),
            fmt(&ratios),
            percentile(&latencies, 0.5) as f64 / 1000.0,
            percentile(&latencies, 0.99) as f64 / 1000.0,
        );
        println!("{:<36} {:>12.0}", "rabbitmq: native lapin consumer", median(&mut native_consumed));
        println!(
            "{:<36} {:>12.0} {:>12.2}   (rounds {})",
            "rabbitmq: ferry consumer, echo.params",
            median(&mut consumed),
            median(&mut consume_ratios.clone()),
            fmt(&consume_ratios),
        );
    });
}

//! Events: publish → outside consumers over the events socket, Ferry
//! against a native Rust bus (`native-events`: a tokio broadcast feeding the
//! same ndjson lines). One publisher pipelines `publish` lines (32 awaiting
//! their ack), consumers read `event` lines; one consumer, then a fan-out
//! to 100. Servers on CPU 0, publisher and consumers on CPU 1, interleaved
//! rounds; delivered events per second and publish-to-receipt latency.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_tests::load::wait_for_socket;
use ferry_tests::{Ferry, env_u64, pin_to_cpu, run_on_cpu, scratch_dir};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const WINDOW: u64 = 32;
const WARMUP: Duration = Duration::from_secs(1);

struct Round {
    delivered_per_s: f64,
    latencies_us: Vec<u64>,
}

async fn hello(
    path: &Path,
    name: &str,
    topics: &[&str],
) -> (
    BufReader<tokio::net::unix::OwnedReadHalf>,
    tokio::net::unix::OwnedWriteHalf,
) {
    let (read, mut write) = UnixStream::connect(path).await.unwrap().into_split();
    let line =
        serde_json::json!({"type": "hello", "consumer": name, "event_key": name, "topics": topics})
            .to_string()
            + "\n";
    write.write_all(line.as_bytes()).await.unwrap();
    let mut read = BufReader::new(read);
    let mut ack = String::new();
    read.read_line(&mut ack).await.unwrap();
    assert!(ack.contains("hello_ack"), "{ack}");
    (read, write)
}

/// Hands every line to `each` until `stop` is set or the server closes;
/// looks at `stop` at least every 200 ms.
async fn read_lines(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    stop: &AtomicBool,
    mut each: impl FnMut(&str),
) {
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match tokio::time::timeout(Duration::from_millis(200), read.read_line(&mut line)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Err(_) => continue,
            Ok(Ok(_)) => each(&line),
        }
    }
}

/// The publish time the payload carries, from an event line.
fn sent_at(line: &str) -> Option<u64> {
    let at = line.find("\"t\":")? + 4;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

async fn round(path: &Path, consumers: usize, seconds: u64) -> Round {
    let clock = Instant::now();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for i in 0..consumers {
        let (mut read, write) = hello(path, &format!("c{i}"), &["bench"]).await;
        let (measuring, stop, delivered) = (measuring.clone(), stop.clone(), delivered.clone());
        readers.push(tokio::spawn(async move {
            let _keep = write;
            let mut latencies = Vec::new();
            read_lines(&mut read, &stop, |line| {
                if measuring.load(Ordering::Relaxed) && line.contains("\"event\"") {
                    delivered.fetch_add(1, Ordering::Relaxed);
                    if i == 0
                        && let Some(t) = sent_at(line)
                    {
                        latencies.push((clock.elapsed().as_micros() as u64).saturating_sub(t));
                    }
                }
            })
            .await;
            latencies
        }));
    }
    let (mut acks, mut publisher) = hello(path, "publisher", &[]).await;
    let sent = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let ack_reader = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            read_lines(&mut acks, &stop, |line| {
                if line.contains("publish_ack") {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await;
        })
    };
    let pad = "x".repeat(100);
    let started = Instant::now();
    let mut measured_from = None;
    while started.elapsed() < WARMUP + Duration::from_secs(seconds) {
        if measured_from.is_none() && started.elapsed() >= WARMUP {
            measuring.store(true, Ordering::Relaxed);
            delivered.store(0, Ordering::Relaxed);
            measured_from = Some(Instant::now());
        }
        if sent.load(Ordering::Relaxed) - acked.load(Ordering::Relaxed) >= WINDOW {
            tokio::task::yield_now().await;
            continue;
        }
        let line = format!(
            "{{\"type\":\"publish\",\"topic\":\"bench\",\"payload\":{{\"t\":{},\"pad\":\"{pad}\"}}}}\n",
            clock.elapsed().as_micros()
        );
        publisher.write_all(line.as_bytes()).await.unwrap();
        sent.fetch_add(1, Ordering::Relaxed);
    }
    let elapsed = measured_from.expect("measured").elapsed();
    let count = delivered.load(Ordering::Relaxed);
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for reader in readers {
        let mut l = reader.await.unwrap();
        latencies.append(&mut l);
    }
    ack_reader.await.unwrap();
    latencies.sort_unstable();
    Round {
        delivered_per_s: count as f64 / elapsed.as_secs_f64(),
        latencies_us: latencies,
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

fn main() {
    let seconds = env_u64("BENCH_SECS", 5);
    let rounds = env_u64("BENCH_ROUNDS", 3);
    pin_to_cpu(1).expect("pin the load to CPU 1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = scratch_dir();
    let native_path = dir.join("native-events.sock");
    let mut command = Command::new(env!("CARGO_BIN_EXE_native-events"));
    command.arg(&native_path).stdout(Stdio::null());
    let mut native = run_on_cpu(&mut command, 0)
        .spawn()
        .expect("start native-events");
    wait_for_socket(&native_path);
    let ferry = Ferry::options().cpu0().start();
    let servers: [(&str, PathBuf); 2] = [
        ("native bus", native_path.clone()),
        ("ferry", ferry.events_socket()),
    ];

    println!(
        "events: one publisher ({WINDOW} publishes awaiting their ack), {rounds} rounds of {seconds} s per case, interleaved; servers on CPU 0, load on CPU 1\n"
    );
    let mut table = Vec::new();
    for consumers in [1usize, 100] {
        let mut results: Vec<Vec<Round>> = vec![Vec::new(), Vec::new()];
        for r in 0..rounds {
            for (i, (label, path)) in servers.iter().enumerate() {
                let result = runtime.block_on(round(path, consumers, seconds));
                eprintln!(
                    "round {r}: {consumers:>3} consumer(s), {label:<10} {:>10.0} events/s delivered",
                    result.delivered_per_s
                );
                results[i].push(result);
            }
        }
        let mut ratios: Vec<f64> = results[1]
            .iter()
            .zip(&results[0])
            .map(|(f, n)| f.delivered_per_s / n.delivered_per_s)
            .collect();
        ratios.sort_by(f64::total_cmp);
        for (i, (label, _)) in servers.iter().enumerate() {
            let mut order: Vec<&Round> = results[i].iter().collect();
            order.sort_by(|a, b| a.delivered_per_s.total_cmp(&b.delivered_per_s));
            let median = order[order.len() / 2];
            table.push(format!(
                "| {consumers:>9} | {label:<10} | {:>18.0} | {:>8.3} | {:>8.3} |",
                median.delivered_per_s,
                percentile(&median.latencies_us, 0.5),
                percentile(&median.latencies_us, 0.99)
            ));
        }
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        table.push(format!(
            "ferry / native bus, {consumers} consumer(s): {:.2} (rounds: {})",
            ratios[ratios.len() / 2],
            shown.join(", ")
        ));
    }
    println!("| consumers | server     | delivered events/s | p50 (ms) | p99 (ms) |");
    println!("|-----------|------------|--------------------|----------|----------|");
    for line in table.iter().filter(|l| l.starts_with('|')) {
        println!("{line}");
    }
    println!();
    for line in table.iter().filter(|l| !l.starts_with('|')) {
        println!("{line}");
    }
    let _ = native.kill();
    let _ = native.wait();
    drop(ferry);
    let _ = std::fs::remove_dir_all(dir);
}

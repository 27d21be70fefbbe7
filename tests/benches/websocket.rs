//! WebSocket benchmark, Ferry's door against a native axum WebSocket server
//! doing the same work (`native-ws`), in one run, servers on CPU 0 and the
//! clients (tokio-tungstenite) on CPU 1, rounds interleaved:
//!
//! - RPC echo: `echo.params` over 8 connections, 16 requests in flight on
//!   each; requests per second and round-trip latency.
//! - Broadcast: 1000 connected clients subscribed to one topic; one event
//!   published over HTTP; the time until the last client has it.
//!
//! `make bench`. `BENCH_SECS` (default 5) is one RPC round on one server,
//! `BENCH_ROUNDS` (default 3) the rounds, `BENCH_CLIENTS` (default 1000)
//! the broadcast's clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use ferry_tests::{Ferry, env_u64, run_on_cpu, try_http_request};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const CONNECTIONS: usize = 8;
const DEPTH: usize = 16;
const WARMUP: Duration = Duration::from_secs(1);
const PUBLISHES: usize = 20;

async fn open(addr: SocketAddr) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .expect("upgrade");
    ws
}

fn request(id: u64) -> Message {
    Message::Text(
        format!(
            r#"{{"header":{{"command":"echo.params","id":{id}}},"payload":{{"user":"ada","items":[1,2,3],"note":"hello ferry"}}}}"#
        )
        .into(),
    )
}

/// The `id` of a response, checking that it is a result.
fn answered(text: &str) -> u64 {
    let reply: serde_json::Value = serde_json::from_str(text).expect("JSON");
    assert!(
        reply["payload"]["result"]["user"] == "ada",
        "not an echo: {text}"
    );
    reply["header"]["id"].as_u64().expect("an id")
}

struct Rpc {
    per_s: f64,
    latencies_us: Vec<u64>,
}

async fn rpc_round(addr: SocketAddr, seconds: u64) -> Rpc {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let mut ws = open(addr).await;
        let (measuring, stop, done) = (measuring.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent: HashMap<u64, Instant> = HashMap::new();
            let mut next = (c as u64) << 40;
            let mut latencies = Vec::new();
            for _ in 0..DEPTH {
                sent.insert(next, Instant::now());
                ws.feed(request(next)).await.unwrap();
                next += 1;
            }
            ws.flush().await.unwrap();
            while !sent.is_empty() {
                let Some(Ok(Message::Text(text))) = ws.next().await else {
                    panic!("the connection ended");
                };
                let id = answered(&text);
                let at = sent.remove(&id).expect("an id that was sent");
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(at.elapsed().as_micros() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                if !stop.load(Ordering::Relaxed) {
                    sent.insert(next, Instant::now());
                    ws.send(request(next)).await.unwrap();
                    next += 1;
                }
            }
            let _ = ws.close(None).await;
            latencies
        }));
    }
    tokio::time::sleep(WARMUP).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.append(&mut task.await.unwrap());
    }
    latencies_us.sort_unstable();
    Rpc {
        per_s: count as f64 / elapsed.as_secs_f64(),
        latencies_us,
    }
}

/// 1000 subscribers of one server, and what they have seen.
struct Audience {
    addr: SocketAddr,
    clock: Instant,
    received: Arc<AtomicU64>,
    last_us: Arc<AtomicU64>,
    all: Arc<Notify>,
    clients: u64,
}

impl Audience {
    async fn gather(addr: SocketAddr, clients: u64) -> Audience {
        let audience = Audience {
            addr,
            clock: Instant::now(),
            received: Arc::new(AtomicU64::new(0)),
            last_us: Arc::new(AtomicU64::new(0)),
            all: Arc::new(Notify::new()),
            clients,
        };
        for _ in 0..clients {
            let mut ws = open(addr).await;
            ws.send(Message::Text(
                r#"{"header":{"command":"subscribe","id":1},"payload":{"topics":["bcast"]}}"#
                    .into(),
            ))
            .await
            .unwrap();
            let Some(Ok(Message::Text(ack))) = ws.next().await else {
                panic!("no subscribe answer");
            };
            assert!(ack.contains("subscribe-response"), "{ack}");
            let (clock, received, last_us, all) = (
                audience.clock,
                audience.received.clone(),
                audience.last_us.clone(),
                audience.all.clone(),
            );
            tokio::spawn(async move {
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message
                        && text.contains(r#""command":"event""#)
                    {
                        last_us.fetch_max(clock.elapsed().as_micros() as u64, Ordering::Relaxed);
                        if received.fetch_add(1, Ordering::Relaxed) + 1 == clients {
                            all.notify_one();
                        }
                    }
                }
            });
        }
        audience
    }

    /// Publishes one event; the microseconds until the last client had it.
    async fn broadcast(&self) -> u64 {
        self.received.store(0, Ordering::Relaxed);
        let wait = self.all.notified();
        let from = self.clock.elapsed().as_micros() as u64;
        let reply = try_http_request(
            self.addr,
            "POST",
            "/v1/events/bcast",
            &[],
            br#"{"note":"to everyone"}"#,
        )
        .await
        .expect("publish");
        assert_eq!(reply.status, 200, "{}", reply.text());
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("every client received the event");
        self.last_us.load(Ordering::Relaxed) - from
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn native() -> (Child, SocketAddr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_native-ws"));
    command.arg("127.0.0.1:0").stdout(Stdio::piped());
    let mut child = run_on_cpu(&mut command, 0)
        .spawn()
        .expect("spawn native-ws");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    (
        child,
        line.trim().parse().expect("native-ws prints its address"),
    )
}

fn main() {
    let seconds = env_u64("BENCH_SECS", 5);
    let rounds = env_u64("BENCH_ROUNDS", 3);
    let clients = env_u64("BENCH_CLIENTS", 1000);
    let runtime = ferry_tests::load::load_runtime();
    let (mut native, native_addr) = native();
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .http("{listen: 127.0.0.1:0, max_connections: 4096}")
        .cpu0()
        .start();
    let servers = [
        ("native axum WebSocket", native_addr),
        ("ferry /v1/ws", ferry.http.expect("the gateway")),
    ];
    println!(
        "websocket: RPC echo over {CONNECTIONS} connections x {DEPTH} in flight, {rounds} rounds of \
         {seconds} s per server after {WARMUP:?} of warm-up; broadcast to {clients} clients, \
         {PUBLISHES} events per round; servers on CPU 0, clients on CPU 1, interleaved\n"
    );
    runtime.block_on(async {
        let audiences = [
            Audience::gather(servers[0].1, clients).await,
            Audience::gather(servers[1].1, clients).await,
        ];
        let mut per_s = [Vec::new(), Vec::new()];
        let mut latencies = [Vec::new(), Vec::new()];
        let mut fanout = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (i, (_, addr)) in servers.iter().enumerate() {
                let round = rpc_round(*addr, seconds).await;
                per_s[i].push(round.per_s);
                latencies[i].push(round.latencies_us);
                for _ in 0..PUBLISHES {
                    fanout[i].push(audiences[i].broadcast().await);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        println!(
            "{:<24} {:>12} {:>9} {:>9} {:>14} {:>14}",
            "server", "RPC req/s", "p50 us", "p99 us", "last rcv p50", "last rcv p99"
        );
        let mut summary = Vec::new();
        for (i, (label, _)) in servers.iter().enumerate() {
            let rate = median(&mut per_s[i]);
            let mut all: Vec<u64> = latencies[i].concat();
            all.sort_unstable();
            fanout[i].sort_unstable();
            let (p50, p99) = (percentile(&all, 0.5), percentile(&all, 0.99));
            let (f50, f99) = (percentile(&fanout[i], 0.5), percentile(&fanout[i], 0.99));
            println!(
                "{label:<24} {rate:>12.0} {p50:>9} {p99:>9} {:>11.2} ms {:>11.2} ms",
                f50 as f64 / 1000.0,
                f99 as f64 / 1000.0
            );
            summary.push((rate, p99, f50));
        }
        let (native, ferry) = (summary[0], summary[1]);
        println!(
            "\nferry / native: RPC echo {:.2} of the requests per second, p99 {:.2}x; \
             broadcast to {clients}: {:.2}x the time until the last client has the event",
            ferry.0 / native.0,
            ferry.1 as f64 / native.1.max(1) as f64,
            ferry.2 as f64 / native.2.max(1) as f64,
        );
        drop(audiences);
    });
    drop(runtime);
    let _ = native.kill();
    let _ = native.wait();
    drop(ferry);
}

//! Socket echo benchmark: requests per second and latency of `echo` through
//! Ferry, against a plain native Rust server doing the same framed JSON echo,
//! in one run. Each server is held to CPU 0 and the load generator to CPU 1.
//!
//! `make bench`. `BENCH_SECS` (default 5) is the measured time of one round
//! on one server, `BENCH_ROUNDS` (default 3) the rounds; servers take turns,
//! so a noisy moment hits all of them, and the median round is reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::{Ferry, env_u64, pin_to_cpu, run_on_cpu, scratch_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const CONNECTIONS: usize = 16;
const DEPTH: usize = 4;
const WARMUP: Duration = Duration::from_secs(1);

struct Outcome {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

fn request_frame(id: u64) -> Vec<u8> {
    let payload = format!(
        r#"{{"id":{id},"service":"echo","action":"echo","params":{{"user":"ada","items":[1,2,3],"note":"hello ferry"}},"tenant_id":"acme"}}"#
    );
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload.as_bytes());
    frame
}

#[derive(serde::Deserialize)]
struct Reply<'a> {
    id: u64,
    status: &'a str,
}

/// Keeps `DEPTH` requests outstanding on one connection until `until`;
/// records latencies of responses that arrive after `measure_from`.
async fn drive(socket: PathBuf, measure_from: Instant, until: Instant) -> Outcome {
    let stream = UnixStream::connect(&socket).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut next_id = 0u64;
    let mut outgoing = Vec::new();
    for _ in 0..DEPTH {
        outgoing.extend(request_frame(next_id));
        sent.insert(next_id, Instant::now());
        next_id += 1;
    }
    write.write_all(&outgoing).await.unwrap();
    let mut outcome = Outcome {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = read.read(&mut chunk).await.unwrap();
        assert!(n > 0, "server closed the connection");
        buffer.extend_from_slice(&chunk[..n]);
        let now = Instant::now();
        outgoing.clear();
        let mut consumed = 0;
        while buffer.len() - consumed >= 4 {
            let len =
                u32::from_be_bytes(buffer[consumed..consumed + 4].try_into().unwrap()) as usize;
            if buffer.len() - consumed - 4 < len {
                break;
            }
            let reply: Reply =
                serde_json::from_slice(&buffer[consumed + 4..consumed + 4 + len]).unwrap();
            consumed += 4 + len;
            let started = sent.remove(&reply.id).expect("reply to a request we sent");
            if now >= measure_from {
                outcome.requests += 1;
                if reply.status != "success" {
                    outcome.errors += 1;
                }
                outcome
                    .latencies_us
                    .push(now.duration_since(started).as_micros() as u32);
            }
            if now < until {
                outgoing.extend(request_frame(next_id));
                sent.insert(next_id, now);
                next_id += 1;
            }
        }
        buffer.drain(..consumed);
        if !outgoing.is_empty() {
            write.write_all(&outgoing).await.unwrap();
        }
        if sent.is_empty() {
            return outcome;
        }
    }
}

async fn run_load(socket: &Path, seconds: u64) -> Outcome {
    let measure_from = Instant::now() + WARMUP;
    let until = measure_from + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(drive(socket.to_owned(), measure_from, until)))
        .collect();
    let mut total = Outcome {
        requests: 0,
        errors: 0,
        elapsed: Duration::from_secs(seconds),
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let o = task.await.unwrap();
        total.requests += o.requests;
        total.errors += o.errors;
        total.latencies_us.extend(o.latencies_us);
    }
    total
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "no server at {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One server under test and what every round measured of it.
struct Case {
    label: &'static str,
    socket: PathBuf,
    rounds: Vec<f64>,
    latencies_us: Vec<u32>,
    errors: u64,
}

impl Case {
    fn new(label: &'static str, socket: PathBuf) -> Self {
        Case {
            label,
            socket,
            rounds: Vec::new(),
            latencies_us: Vec::new(),
            errors: 0,
        }
    }

    fn median_rps(&self) -> f64 {
        let mut r = self.rounds.clone();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

fn main() {
    let seconds = env_u64("BENCH_SECS", 5);
    let rounds = env_u64("BENCH_ROUNDS", 3);
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("this benchmark needs two CPUs: one for the server, one for the load");
        std::process::exit(1);
    }
    pin_to_cpu(1).expect("pin the load generator to CPU 1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let dir = scratch_dir();
    let mut natives = Vec::new();
    let mut cases = Vec::new();
    for (label, flag) in [
        ("native Rust, plain", None),
        ("native Rust, batched writes", Some("--batch")),
    ] {
        let socket = dir.join(format!("native-{}.sock", natives.len()));
        let mut command = Command::new(env!("CARGO_BIN_EXE_native-echo"));
        command.arg(&socket).args(flag).stdout(Stdio::null());
        natives.push(run_on_cpu(&mut command, 0).spawn().expect("spawn server"));
        wait_for_socket(&socket);
        cases.push(Case::new(label, socket));
    }
    let reuse = Ferry::options().plugin("echo", "echo", None).cpu0().start();
    cases.push(Case::new("ferry, instance reuse", reuse.socket.clone()));
    let fresh = Ferry::options()
        .plugin("echo", "echo", Some("reuse: 1\n"))
        .cpu0()
        .start();
    cases.push(Case::new(
        "ferry, instance per request",
        fresh.socket.clone(),
    ));

    println!(
        "socket echo: {CONNECTIONS} connections x {DEPTH} in flight; {rounds} rounds of {seconds} s per server, \
         interleaved, each after {WARMUP:?} of warm-up; servers on CPU 0, load generator on CPU 1\n"
    );
    for round in 0..rounds {
        for case in &mut cases {
            let outcome = runtime.block_on(run_load(&case.socket, seconds));
            eprintln!(
                "round {round}: {:<30} {:>9.0} req/s",
                case.label,
                outcome.rps()
            );
            case.rounds.push(outcome.rps());
            case.errors += outcome.errors;
            case.latencies_us.extend(outcome.latencies_us);
        }
    }
    for case in &mut cases {
        case.latencies_us.sort_unstable();
    }

    println!("| server                       | req/s (median) | p50 (ms) | p99 (ms) | errors |");
    println!("|------------------------------|----------------|----------|----------|--------|");
    for case in &cases {
        println!(
            "| {:<28} | {:>14.0} | {:>8.3} | {:>8.3} | {:>6} |",
            case.label,
            case.median_rps(),
            case.percentile_ms(0.50),
            case.percentile_ms(0.99),
            case.errors
        );
    }
    println!();
    // Ratios are taken round by round (the servers ran back to back, so a
    // noisy moment hits both), and the median of those is reported.
    for ferry in &cases[2..] {
        for native in &cases[..2] {
            let mut ratios: Vec<f64> = ferry
                .rounds
                .iter()
                .zip(&native.rounds)
                .map(|(f, n)| f / n)
                .collect();
            ratios.sort_by(f64::total_cmp);
            let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "{} / {}: {:.2} (rounds: {})",
                ferry.label,
                native.label,
                ratios[ratios.len() / 2],
                shown.join(", ")
            );
        }
    }

    for mut native in natives {
        let _ = native.kill();
        let _ = native.wait();
    }
    drop((reuse, fresh));
    let _ = std::fs::remove_dir_all(dir);
    let failed: u64 = cases.iter().map(|c| c.errors).sum();
    if failed > 0 {
        eprintln!("{failed} requests failed");
        std::process::exit(1);
    }
}

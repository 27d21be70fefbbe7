//! Closed-loop load over a framed-JSON Unix socket, for the socket
//! benchmarks: a fixed number of connections, each keeping a fixed number of
//! requests outstanding, and the servers under test taking turns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Time each round runs before its answers count.
pub const WARMUP: Duration = Duration::from_secs(1);

/// The shape of one load: how many connections, how deep each pipelines,
/// and the frame (length prefix included) of request number `id`.
#[derive(Clone)]
pub struct Shape {
    pub connections: usize,
    pub depth: usize,
    pub frame: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>,
}

/// A frame: the length prefix, then `payload`.
pub fn frame(payload: &str) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload.as_bytes());
    frame
}

/// What one round of load saw.
pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
    /// The first error response, to say why a benchmark failed.
    pub first_error: Option<String>,
}

impl Outcome {
    fn new(elapsed: Duration) -> Self {
        Outcome {
            requests: 0,
            errors: 0,
            elapsed,
            latencies_us: Vec::new(),
            first_error: None,
        }
    }

    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(serde::Deserialize)]
struct Reply<'a> {
    id: u64,
    status: &'a str,
}

/// Keeps `depth` requests outstanding on one connection until `until`;
/// records latencies of responses that arrive after `measure_from`.
async fn drive(socket: PathBuf, shape: Shape, measure_from: Instant, until: Instant) -> Outcome {
    let stream = UnixStream::connect(&socket).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut next_id = 0u64;
    let mut outgoing = Vec::new();
    for _ in 0..shape.depth {
        outgoing.extend((shape.frame)(next_id));
        sent.insert(next_id, Instant::now());
        next_id += 1;
    }
    write.write_all(&outgoing).await.unwrap();
    let mut outcome = Outcome::new(Duration::ZERO);
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
            let payload = &buffer[consumed + 4..consumed + 4 + len];
            let reply: Reply = serde_json::from_slice(payload).unwrap();
            consumed += 4 + len;
            let started = sent.remove(&reply.id).expect("reply to a request we sent");
            if now >= measure_from {
                outcome.requests += 1;
                if reply.status != "success" {
                    outcome.errors += 1;
                    outcome
                        .first_error
                        .get_or_insert_with(|| String::from_utf8_lossy(payload).into_owned());
                }
                outcome
                    .latencies_us
                    .push(now.duration_since(started).as_micros() as u32);
            }
            if now < until {
                outgoing.extend((shape.frame)(next_id));
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

/// One round: warm-up, then `seconds` of measured load.
pub async fn run_load(socket: &Path, shape: &Shape, seconds: u64) -> Outcome {
    let measure_from = Instant::now() + WARMUP;
    let until = measure_from + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..shape.connections)
        .map(|_| tokio::spawn(drive(socket.to_owned(), shape.clone(), measure_from, until)))
        .collect();
    let mut total = Outcome::new(Duration::from_secs(seconds));
    for task in tasks {
        let o = task.await.unwrap();
        total.requests += o.requests;
        total.errors += o.errors;
        total.latencies_us.extend(o.latencies_us);
        total.first_error = total.first_error.or(o.first_error);
    }
    total
}

/// Waits until something accepts connections at `path`.
pub fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "no server at {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One server under test and what every round measured of it.
pub struct Case {
    pub label: String,
    pub socket: PathBuf,
    pub rounds: Vec<f64>,
    pub latencies_us: Vec<u32>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Case {
    pub fn new(label: impl Into<String>, socket: PathBuf) -> Self {
        Case {
            label: label.into(),
            socket,
            rounds: Vec::new(),
            latencies_us: Vec::new(),
            errors: 0,
            first_error: None,
        }
    }

    /// Runs one round against this server and keeps what it saw.
    pub fn round(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        shape: &Shape,
        seconds: u64,
        round: u64,
    ) {
        let outcome = runtime.block_on(run_load(&self.socket, shape, seconds));
        eprintln!(
            "round {round}: {:<36} {:>9.0} req/s",
            self.label,
            outcome.rps()
        );
        self.rounds.push(outcome.rps());
        self.errors += outcome.errors;
        self.latencies_us.extend(outcome.latencies_us);
        self.first_error = self.first_error.take().or(outcome.first_error);
    }

    pub fn median_rps(&self) -> f64 {
        let mut r = self.rounds.clone();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    }

    /// Latency at quantile `p` over every round (sorts the samples).
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    /// The median of this server's round-by-round throughput over
    /// `baseline`'s (the two ran back to back, so a noisy moment hits both),
    /// and every round's ratio.
    pub fn ratio_to(&self, baseline: &Case) -> (f64, Vec<f64>) {
        let mut ratios: Vec<f64> = self
            .rounds
            .iter()
            .zip(&baseline.rounds)
            .map(|(a, b)| a / b)
            .collect();
        ratios.sort_by(f64::total_cmp);
        (ratios[ratios.len() / 2], ratios)
    }
}

/// Prints the results table in Markdown.
pub fn print_table(cases: &mut [Case]) {
    println!(
        "| server                               | req/s (median) | p50 (ms) | p99 (ms) | errors |"
    );
    println!(
        "|--------------------------------------|----------------|----------|----------|--------|"
    );
    for case in cases {
        let (p50, p99) = (case.percentile_ms(0.50), case.percentile_ms(0.99));
        println!(
            "| {:<36} | {:>14.0} | {:>8.3} | {:>8.3} | {:>6} |",
            case.label,
            case.median_rps(),
            p50,
            p99,
            case.errors
        );
    }
    println!();
}

/// Prints `case / baseline` with its rounds.
pub fn print_ratio(case: &Case, baseline: &Case) {
    let (median, rounds) = case.ratio_to(baseline);
    let shown: Vec<String> = rounds.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "{} / {}: {median:.2} (rounds: {})",
        case.label,
        baseline.label,
        shown.join(", ")
    );
}

/// Exits non-zero, saying why, if any server answered an error.
pub fn fail_on_errors(cases: &[Case]) {
    let mut failed = false;
    for case in cases {
        if case.errors > 0 {
            eprintln!(
                "{}: {} requests failed; the first: {}",
                case.label,
                case.errors,
                case.first_error.as_deref().unwrap_or("?")
            );
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}

/// The load generator's side of a benchmark: exits unless there are two
/// CPUs, pins this thread to CPU 1 (servers go on CPU 0), and answers the
/// single-threaded runtime the load runs on.
pub fn load_runtime() -> tokio::runtime::Runtime {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("this benchmark needs two CPUs: one for the server, one for the load");
        std::process::exit(1);
    }
    crate::pin_to_cpu(1).expect("pin the load generator to CPU 1");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

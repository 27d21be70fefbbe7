//! Start-up with the example plugins (echo, faulty, todo, orders,
//! hello-py, hello-js): time from spawning `ferry serve` to the first
//! answered `echo` request and to every plugin loaded, and the host's RSS
//! once it is serving, with a cold compile cache (a new folder) and then a
//! warm one (the same folder again). With `FERRY_BASELINE` set to another
//! build, that build is measured the same way in the same run.
//!
//! `make bench`. `BENCH_ROUNDS` (default 2) cold-then-warm rounds per build.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_tests::{Ferry, Options, env_u64, scratch_dir};
use serde_json::json;

const PLUGINS: [&str; 6] = ["echo", "faulty", "todo", "orders", "hello-py", "hello-js"];

fn manifest(plugin: &str) -> Option<&'static str> {
    match plugin {
        "todo" | "hello-py" | "hello-js" => Some("permissions: {database: true}\n"),
        "orders" => Some("permissions: {calls: [todo, echo]}\n"),
        _ => None,
    }
}

struct Start {
    first_answer: Duration,
    all_loaded: Duration,
    rss_mib: u64,
}

fn options(dir: PathBuf, baseline: &Option<PathBuf>, fresh: bool) -> Options {
    let mut options = Ferry::options_in(dir);
    if fresh {
        for plugin in PLUGINS {
            options = options.plugin(plugin, plugin, manifest(plugin));
        }
    }
    match baseline {
        // An older build says only when everything is loaded.
        Some(binary) => options.binary(binary.clone()),
        None => options.doors_open(),
    }
}

async fn start(options: Options) -> (Ferry, Start) {
    let spawned = Instant::now();
    let ferry = options.start();
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": 1, "service": "echo", "action": "params", "params": {}, "timeout_ms": 60000}))
        .await;
    assert_eq!(response["status"], "success", "{response}");
    let first_answer = spawned.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ferry.log().contains("ferry is serving") {
        assert!(Instant::now() < deadline, "not loaded:\n{}", ferry.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_loaded = spawned.elapsed();
    // Let what start-up freed settle before reading the RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_mib = ferry.rss_kib() / 1024;
    (
        ferry,
        Start {
            first_answer,
            all_loaded,
            rss_mib,
        },
    )
}

fn main() {
    let rounds = env_u64("BENCH_ROUNDS", 2);
    let baseline = std::env::var_os("FERRY_BASELINE").map(PathBuf::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut builds = vec![("this build", None)];
    if let Some(path) = baseline {
        builds.push(("FERRY_BASELINE", Some(path)));
    }
    println!("start-up with {PLUGINS:?}; {rounds} rounds of a cold, then a warm start per build\n");
    println!("| build | cache | first echo answered (s) | all loaded (s) | RSS serving (MiB) |");
    println!("|---|---|---|---|---|");
    for round in 0..rounds {
        for (label, binary) in &builds {
            let dir = scratch_dir();
            let (ferry, cold) = runtime.block_on(start(options(dir, binary, true)));
            let dir = ferry.stop_keeping_dir();
            let (ferry, warm) = runtime.block_on(start(options(dir.clone(), binary, false)));
            drop(ferry);
            let _ = std::fs::remove_dir_all(dir);
            for (cache, s) in [("cold", &cold), ("warm", &warm)] {
                println!(
                    "| {label} (round {round}) | {cache} | {:.3} | {:.3} | {} |",
                    s.first_answer.as_secs_f64(),
                    s.all_loaded.as_secs_f64(),
                    s.rss_mib
                );
            }
            println!(
                "|   | cold RSS / warm RSS | | | {:.2} |",
                cold.rss_mib as f64 / warm.rss_mib as f64
            );
        }
    }
}

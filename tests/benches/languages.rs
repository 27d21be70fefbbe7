//! The cost of each plugin language, in one run: component size, compile
//! time on first load (empty cache), load time from the compile cache, the
//! time until the service is ready in both cases (its first instance
//! started), and the latency of `echo` through the socket (one request at
//! a time), for the Rust `echo` (the baseline), `hello-py`, `hello-js` and `hello-c`.
//! The host is held to CPU 0 and the client to CPU 1.
//!
//! `make bench`; `BENCH_ROUNDS` (default 3) rounds, `BENCH_REQUESTS`
//! (default 2000) measured requests per round and plugin.

use std::time::Instant;

use ferry_tests::{Ferry, env_u64, expect_success, pin_to_cpu, plugin_wasm, scratch_dir};
use serde_json::json;

/// A number field of the first log line about `plugin` that contains all
/// of `marks`.
fn logged_ms(log: &str, plugin: &str, marks: &[&str], field: &str) -> f64 {
    log.lines()
        .find(|l| l.contains(&format!("plugin={plugin}")) && marks.iter().all(|m| l.contains(m)))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{field}=")))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {marks:?} line with {field} for {plugin} in:\n{log}"))
}

/// How long loading took (compile, or from the cache) and how long until
/// the service was ready (loaded and its first instance started).
fn load_and_ready(log: &str, plugin: &str, cache: &str) -> (f64, f64) {
    let cache = format!("cache={cache}");
    (
        logged_ms(log, plugin, &["plugin loaded", &cache], "load_ms"),
        logged_ms(log, plugin, &["service deployed"], "took_ms"),
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn quantile(sorted: &[u32], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
}

#[derive(Default)]
struct Measured {
    compile_ms: Vec<f64>,
    cold_ready_ms: Vec<f64>,
    cached_ms: Vec<f64>,
    warm_ready_ms: Vec<f64>,
    latencies_us: Vec<u32>,
}

fn main() {
    let rounds = env_u64("BENCH_ROUNDS", 3);
    let requests = env_u64("BENCH_REQUESTS", 2000);
    pin_to_cpu(1).expect("pin the client to CPU 1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plugins = [
        ("Rust", "echo"),
        ("Python", "hello-py"),
        ("JavaScript", "hello-js"),
        ("C", "hello-c"),
    ];
    let mut measured: Vec<Measured> = plugins.iter().map(|_| Measured::default()).collect();
    println!(
        "plugin languages: {rounds} rounds; each a start on an empty compile cache, a restart on a warm one, \
         and {requests} echo requests one at a time over the socket; host on CPU 0, client on CPU 1\n"
    );
    for round in 0..rounds {
        for ((language, plugin), m) in plugins.iter().zip(&mut measured) {
            let cold = Ferry::options_in(scratch_dir())
                .plugin(plugin, plugin, None)
                .cpu0()
                .start();
            let (compile, ready) = load_and_ready(&cold.log(), plugin, "miss");
            m.compile_ms.push(compile);
            m.cold_ready_ms.push(ready);
            let dir = cold.stop_keeping_dir();
            let warm = Ferry::options_in(dir)
                .plugin(plugin, plugin, None)
                .cpu0()
                .start();
            let (cached, ready) = load_and_ready(&warm.log(), plugin, "hit");
            m.cached_ms.push(cached);
            m.warm_ready_ms.push(ready);
            runtime.block_on(async {
                let mut client = warm.connect().await;
                let request = json!({"id": 1, "service": plugin, "action": "echo", "params": {"user": "ada", "items": [1, 2, 3]}, "tenant_id": "acme"});
                for _ in 0..200 {
                    expect_success(&client.request(&request).await);
                }
                for _ in 0..requests {
                    let sent = Instant::now();
                    expect_success(&client.request(&request).await);
                    m.latencies_us.push(sent.elapsed().as_micros() as u32);
                }
            });
            eprintln!(
                "round {round}: {language:<10} compile {compile:>6.0} ms (ready {:>6.0} ms), cached load {cached:>4.0} ms (ready {ready:>4.0} ms)",
                m.cold_ready_ms.last().unwrap(),
            );
            drop(warm);
        }
    }

    println!(
        "| language | component | compile on first load (ms) | ready, cold (ms) | load from cache (ms) | ready, warm (ms) | echo p50 (ms) | echo p99 (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut p50s = Vec::new();
    for ((language, plugin), m) in plugins.iter().zip(&mut measured) {
        let size = std::fs::metadata(plugin_wasm(plugin)).unwrap().len();
        m.latencies_us.sort_unstable();
        let p50 = quantile(&m.latencies_us, 0.5);
        p50s.push(p50);
        println!(
            "| {language} (`{plugin}`) | {:.2} MB | {:.0} | {:.0} | {:.0} | {:.0} | {p50:.3} | {:.3} |",
            size as f64 / 1e6,
            median(m.compile_ms.clone()),
            median(m.cold_ready_ms.clone()),
            median(m.cached_ms.clone()),
            median(m.warm_ready_ms.clone()),
            quantile(&m.latencies_us, 0.99),
        );
    }
    println!();
    for ((language, _), p50) in plugins.iter().zip(&p50s).skip(1) {
        println!("{language} echo p50 / Rust echo p50: {:.1}", p50 / p50s[0]);
    }
}

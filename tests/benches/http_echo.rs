//! HTTP echo benchmark: requests per second and latency of `POST
//! /v1/echo/params` through Ferry's gateway, against a native axum handler
//! doing the same JSON echo, in one run, with wrk as the load generator.
//! Servers are held to CPU 0, wrk to CPU 1; servers take turns over rounds.
//!
//! `make bench` (it installs wrk). `BENCH_SECS` (default 5) and
//! `BENCH_ROUNDS` (default 3) as in the socket benchmark.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ferry_tests::{Ferry, env_u64, run_on_cpu, scratch_dir};

const CONNECTIONS: u32 = 64;

struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// wrk prints latencies like `1.23ms`, `850.00us` or `1.02s`.
fn millis(text: &str) -> f64 {
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .expect("a unit"),
    );
    let n: f64 = number.parse().expect("a number");
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => panic!("unknown unit in {text}"),
    }
}

fn wrk(url: &str, seconds: u64, script: &std::path::Path) -> Run {
    let mut command = Command::new("wrk");
    command
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url);
    let out = run_on_cpu(&mut command, 1)
        .output()
        .expect("run wrk (make bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    };
    let errors = field("Non-2xx or 3xx responses:").map_or(0, |n| n.parse().unwrap())
        + field("Socket errors:").map_or(0, |s| {
            s.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        });
    Run {
        rps: field("Requests/sec:")
            .expect("Requests/sec")
            .parse()
            .unwrap(),
        p50_ms: millis(&field("50%").expect("50% latency")),
        p99_ms: millis(&field("99%").expect("99% latency")),
        errors,
    }
}

/// The secret of the benchmark's JWT application.
const SECRET: &str = "bench-secret-0123456789abcdef-0123456789";

/// A wrk script that POSTs the same JSON with `headers`.
fn post_script(path: &std::path::Path, headers: &[(&str, &str)]) {
    let mut lua = String::from(
        "wrk.method = \"POST\"\nwrk.body = '{\"user\":\"ada\",\"items\":[1,2,3],\"note\":\"hello ferry\"}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    );
    for (k, v) in headers {
        lua.push_str(&format!("wrk.headers[\"{k}\"] = \"{v}\"\n"));
    }
    std::fs::write(path, lua).unwrap();
}

/// An HS256 token for the benchmark's `bench` application, valid an hour.
fn token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims =
        serde_json::json!({"sub": "ada", "tenant": "acme", "aud": "bench", "exp": now + 3600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn main() {
    let seconds = env_u64("BENCH_SECS", 5);
    let rounds = env_u64("BENCH_ROUNDS", 3);
    let dir = scratch_dir();
    let script = dir.join("post.lua");
    post_script(&script, &[("X-Tenant-Id", "acme")]);
    let jwt_script = dir.join("post-jwt.lua");
    post_script(
        &jwt_script,
        &[("Authorization", &format!("Bearer {}", token()))],
    );

    let mut command = Command::new(env!("CARGO_BIN_EXE_native-http"));
    command.arg("127.0.0.1:0").stdout(Stdio::piped());
    let mut native = run_on_cpu(&mut command, 0)
        .spawn()
        .expect("start native-http");
    let mut line = String::new();
    BufReader::new(native.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let native_url = format!("http://{}/v1/echo/params", line.trim());
    let ferry = Ferry::options().plugin("echo", "echo", None).cpu0().start();
    let ferry_url = format!(
        "http://{}/v1/echo/params",
        ferry.http.expect("ferry http address")
    );
    // The same echo behind an application that verifies an HS256 token on
    // every request (wrk sends 127.0.0.1:port as the Host).
    let ferry_jwt = Ferry::options()
        .plugin("echo", "echo", None)
        .env("BENCH_JWT_SECRET", SECRET)
        .config("apps:\n  bench:\n    hosts: [127.0.0.1]\n    services: [echo]\n    auth:\n      jwt:\n        algorithms: [HS256]\n        secret_env: BENCH_JWT_SECRET\n        audience: bench\n        tenant_claim: tenant\n")
        .cpu0()
        .start();
    let ferry_jwt_url = format!(
        "http://{}/v1/echo/params",
        ferry_jwt.http.expect("ferry http address")
    );

    let baseline = Ferry::baseline_echo();
    let baseline_url = baseline.as_ref().map(|b| {
        format!(
            "http://{}/v1/echo/params",
            b.http.expect("baseline http address")
        )
    });

    println!(
        "http echo: wrk -t1 -c{CONNECTIONS}, {rounds} rounds of {seconds} s per server, interleaved; servers on CPU 0, wrk on CPU 1\n"
    );
    let mut results: Vec<(&str, Vec<Run>)> = vec![
        ("native axum", Vec::new()),
        ("ferry", Vec::new()),
        ("ferry + JWT", Vec::new()),
    ];
    let mut servers = vec![
        ("native axum", &native_url, &script),
        ("ferry", &ferry_url, &script),
        ("ferry + JWT", &ferry_jwt_url, &jwt_script),
    ];
    if let Some(url) = &baseline_url {
        results.push(("baseline", Vec::new()));
        servers.push(("baseline", url, &script));
    }
    for round in 0..rounds {
        for &(label, url, script) in &servers {
            let run = wrk(url, seconds, script);
            eprintln!("round {round}: {label:<12} {:>9.0} req/s", run.rps);
            results
                .iter_mut()
                .find(|(l, _)| *l == label)
                .unwrap()
                .1
                .push(run);
        }
    }
    let _ = native.kill();
    let _ = native.wait();

    println!("| server       | req/s (median) | p50 (ms) | p99 (ms) | errors |");
    println!("|--------------|----------------|----------|----------|--------|");
    let median_index = |runs: &[Run]| {
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|&a, &b| runs[a].rps.total_cmp(&runs[b].rps));
        order[order.len() / 2]
    };
    for (label, runs) in &results {
        let m = &runs[median_index(runs)];
        let errors: u64 = runs.iter().map(|r| r.errors).sum();
        println!(
            "| {label:<12} | {:>14.0} | {:>8.3} | {:>8.3} | {errors:>6} |",
            m.rps, m.p50_ms, m.p99_ms
        );
    }
    println!();
    let mut ratios_shown = vec![(1, "ferry"), (2, "ferry + JWT")];
    if baseline.is_some() {
        ratios_shown.push((3, "baseline"));
    }
    for (i, label) in ratios_shown {
        let mut ratios: Vec<f64> = results[i]
            .1
            .iter()
            .zip(&results[0].1)
            .map(|(f, n)| f.rps / n.rps)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{label} / native axum: {:.2} (rounds: {})",
            ratios[ratios.len() / 2],
            shown.join(", ")
        );
    }
    if baseline.is_some() {
        let ratios: Vec<String> = results[1]
            .1
            .iter()
            .zip(&results[3].1)
            .map(|(f, b)| format!("{:.2}", f.rps / b.rps))
            .collect();
        println!("ferry / baseline, round by round: {}", ratios.join(", "));
    }
    drop(ferry);
    drop(ferry_jwt);
    drop(baseline);
    let _ = std::fs::remove_dir_all(dir);
    let errors: u64 = results
        .iter()
        .flat_map(|(_, runs)| runs.iter().map(|r| r.errors))
        .sum();
    if errors > 0 {
        eprintln!("{errors} requests failed");
        std::process::exit(1);
    }
}

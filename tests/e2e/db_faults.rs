//! A database outage under load: PostgreSQL is stopped and started again
//! while `todo.get` requests flow. Requests during the outage answer
//! `unavailable` or `timeout` within their deadline, none hang, and the pool
//! recovers by itself. (Its own test binary: it takes the shared server
//! down, which no other test should see.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_tests::services::{POSTGRES_START, postgres_url};
use ferry_tests::{Ferry, expect_success};
use serde_json::json;

const STOP: &str =
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main stop -m fast";

/// Starts PostgreSQL again however the test ends.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(POSTGRES_START)
            .status();
    }
}

fn shell(command: &str) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .expect("run sh");
    assert!(status.success(), "`{command}` failed: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_under_load_fails_fast_and_recovers() {
    let Some(url) = postgres_url() else { return };
    let ferry = Ferry::options()
        .plugin("todo", "todo", Some("permissions: {database: true}\n"))
        .config(&format!(
            "apps:\n  shop:\n    services: [todo]\n    auth: none\n    database:\n      url: {url}\n      acquire_timeout_ms: 500\n"
        ))
        .start();
    let tenant = format!("outage-{}", std::process::id());
    let mut client = ferry.connect().await;
    let created = client
        .request(&json!({"id": 0, "service": "todo", "action": "create", "tenant_id": tenant, "params": {"title": "survive"}}))
        .await;
    let id = expect_success(&created)["id"].as_str().unwrap().to_owned();

    const TIMEOUT_MS: u64 = 1000;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (socket, stop, tenant, id) = (
            ferry.socket.clone(),
            stop.clone(),
            tenant.clone(),
            id.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut client = ferry_tests::Client::connect(&socket).await;
            // (time since start, outcome, how long it took)
            let mut seen: Vec<(Duration, String, Duration)> = Vec::new();
            let began = Instant::now();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sent = Instant::now();
                let response = client
                    .request(&json!({"id": n, "service": "todo", "action": "get", "tenant_id": tenant, "timeout_ms": TIMEOUT_MS, "params": {"id": id}}))
                    .await;
                let outcome = if response["status"] == "success" {
                    assert_eq!(response["result"]["title"], "survive", "{response}");
                    "success".to_owned()
                } else {
                    response["error"]["code"].as_str().unwrap().to_owned()
                };
                seen.push((sent - began, outcome, sent.elapsed()));
                if seen.last().unwrap().1 != "success" {
                    // Do not spin on a down database.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            seen
        }));
    }

    let _restart = Restart;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outage = Instant::now();
    tokio::task::block_in_place(|| shell(STOP));
    let stopped = outage.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| shell(POSTGRES_START));
    let restarted = outage.elapsed();
    eprintln!("stopped after {stopped:?}, started after {restarted:?}");
    // Long enough for the pool to notice and reconnect.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    let slowest = all.iter().map(|(_, _, took)| *took).max().unwrap();
    let failures: Vec<&String> = all
        .iter()
        .map(|(_, o, _)| o)
        .filter(|o| *o != "success")
        .collect();
    let last_failure = all
        .iter()
        .filter(|(_, o, _)| o != "success")
        .map(|(at, _, _)| *at)
        .max();
    eprintln!(
        "postgres outage: {} requests, {} failed ({:?}), slowest answer {slowest:?}, restart after {restarted:?}, last failure at {last_failure:?}",
        all.len(),
        failures.len(),
        {
            let mut kinds: Vec<&String> = failures.clone();
            kinds.sort();
            kinds.dedup();
            kinds
        }
    );
    for (at, outcome, took) in &all {
        if outcome != "success" {
            eprintln!("  {at:?}: {outcome} in {took:?}");
        }
    }
    for (_, outcome, _) in &all {
        assert!(
            ["success", "unavailable", "timeout"].contains(&outcome.as_str()),
            "unexpected outcome {outcome}"
        );
    }
    assert!(!failures.is_empty(), "the outage was not observed");
    assert!(
        slowest < Duration::from_millis(TIMEOUT_MS + 300),
        "a request took {slowest:?} with a {TIMEOUT_MS} ms deadline"
    );
    // Recovered by itself: the final stretch of the run is all successes.
    let tail: Vec<&String> = all
        .iter()
        .filter(|(at, _, _)| *at > Duration::from_millis(500) + restarted + Duration::from_secs(2))
        .map(|(_, o, _)| o)
        .collect();
    assert!(!tail.is_empty(), "no requests after the restart");
    assert!(
        tail.iter().all(|o| *o == "success"),
        "still failing 2 s after the restart: {tail:?}"
    );
}

//! Cluster mode: what forwarding a request over NATS costs against
//! serving it where it arrives, in one run. Two hosts on CPU 0 (A serves
//! nothing, B serves `echo`), the load generator on CPU 1, the machine's
//! NATS server wherever the kernel puts it; cases take turns round by
//! round:
//!
//! - local: `echo.params` sent to B;
//! - forwarded: the same sent to A, which asks B through NATS.
//!
//! Each one request at a time (latency) and 16 connections x 4 in flight
//! (throughput). `make bench`. `BENCH_SECS` (default 5), `BENCH_ROUNDS`
//! (default 3).

use std::sync::Arc;

use ferry_tests::load::{Case, Shape, WARMUP, fail_on_errors, frame, load_runtime, print_table};
use ferry_tests::services::nats_url;
use ferry_tests::{Ferry, env_u64};

const REQUEST: &str = r#"{"id":ID,"service":"echo","action":"params","params":{"user":"ada","items":[1,2,3],"note":"hello ferry"}}"#;

fn shape(connections: usize, depth: usize) -> Shape {
    Shape {
        connections,
        depth,
        frame: Arc::new(|id| frame(&REQUEST.replace("ID", &id.to_string()))),
    }
}

fn host(url: &str, app: &str, name: &str, echo: bool) -> Ferry {
    let mut options = Ferry::options();
    if echo {
        options = options.plugin("echo", "echo", None);
    }
    options
        .socket(&format!("{{path: run/ferry.sock, app: {app}}}"))
        .config(&format!(
            "cluster: {{nats: \"{url}\", name: {name}}}\napps:\n  {app}:\n    services: [echo]\n    auth: none\n"
        ))
        .cpu0()
        .start()
}

fn main() {
    let seconds = env_u64("BENCH_SECS", 5);
    let rounds = env_u64("BENCH_ROUNDS", 3);
    let runtime = load_runtime();
    let url = nats_url().expect("NATS for the benchmark");
    let app = format!("bench{}", std::process::id());
    let a = host(&url, &app, "bench-a", false);
    let b = host(&url, &app, "bench-b", true);
    runtime.block_on(async {
        ferry_tests::eventually(
            "B answers for the cluster",
            std::time::Duration::from_secs(30),
            async || {
                let status = b.status().await;
                (status["cluster"]["answering"][0]["ready"] == true).then_some(())
            },
        )
        .await;
    });
    let mut cases = vec![
        (Case::new("local, 1 x 1", b.socket.clone()), shape(1, 1)),
        (Case::new("forwarded, 1 x 1", a.socket.clone()), shape(1, 1)),
        (Case::new("local, 16 x 4", b.socket.clone()), shape(16, 4)),
        (
            Case::new("forwarded, 16 x 4", a.socket.clone()),
            shape(16, 4),
        ),
    ];
    println!(
        "cluster: {rounds} rounds of {seconds} s per case, interleaved, each after {WARMUP:?} of warm-up; both hosts on CPU 0, load on CPU 1, NATS unpinned\n"
    );
    for round in 0..rounds {
        for (case, shape) in &mut cases {
            case.round(&runtime, shape, seconds, round);
        }
    }
    let mut cases: Vec<Case> = cases.into_iter().map(|(case, _)| case).collect();
    print_table(&mut cases);
    let (local, forwarded) = (cases[0].percentile_ms(0.5), cases[1].percentile_ms(0.5));
    let (ratio, per_round) = cases[3].ratio_to(&cases[2]);
    println!(
        "forwarding adds {:.0} µs at p50 one at a time ({forwarded:.3} ms against {local:.3} ms); under load it gives {ratio:.2} of the local throughput (rounds: {})",
        (forwarded - local) * 1000.0,
        per_round
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop((a, b));
    fail_on_errors(&cases);
}

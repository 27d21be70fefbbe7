//! Calls between services: what a plugin-to-plugin call costs against the
//! same work done in one plugin, and how long a fan-out takes against its
//! slowest single call, in one run. The host is held to CPU 0 and the load
//! generator to CPU 1; cases take turns round by round.
//!
//! Throughput (16 connections x 4 in flight):
//! - `a.params`: the work (parse and answer the params) in one plugin;
//! - `a.relay` with no calls: the relay's own work, for reference;
//! - `a.relay` calling `b.params` once: the same work one call away.
//!
//! Latency (one request at a time): `a.relay` calling `n.nap` (a 20 ms
//! sleep) once, and ten times at once with `call-many`.
//!
//! `make bench`. `BENCH_SECS` (default 5), `BENCH_ROUNDS` (default 3).

use std::sync::Arc;

use ferry_tests::load::{Case, Shape, WARMUP, fail_on_errors, frame, load_runtime, print_table};
use ferry_tests::{Ferry, env_u64};

const PARAMS: &str = r#"{"user":"ada","items":[1,2,3],"note":"hello ferry"}"#;

fn shape(connections: usize, depth: usize, request: &'static str) -> Shape {
    Shape {
        connections,
        depth,
        frame: Arc::new(move |id| frame(&request.replace("ID", &id.to_string()))),
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn main() {
    let seconds = env_u64("BENCH_SECS", 5);
    let rounds = env_u64("BENCH_ROUNDS", 3);
    let runtime = load_runtime();
    let ferry = Ferry::options()
        .plugin("echo", "a", Some("permissions: {calls: [b, n]}\n"))
        .plugin("echo", "b", None)
        .plugin("faulty", "n", None)
        .cpu0()
        .start();

    let direct = leak(format!(
        r#"{{"id":ID,"service":"a","action":"params","params":{PARAMS}}}"#
    ));
    let relay_none = r#"{"id":ID,"service":"a","action":"relay","params":{"calls":[]}}"#;
    let relay_one = leak(format!(
        r#"{{"id":ID,"service":"a","action":"relay","params":{{"calls":[{{"service":"b","action":"params","params":{PARAMS}}}]}}}}"#
    ));
    let nap = r#"{"service":"n","action":"nap","params":{"ms":20}}"#;
    let nap_one = leak(format!(
        r#"{{"id":ID,"service":"a","action":"relay","params":{{"calls":[{nap}],"many":true}}}}"#
    ));
    let nap_ten = leak(format!(
        r#"{{"id":ID,"service":"a","action":"relay","params":{{"calls":[{}],"many":true}}}}"#,
        vec![nap; 10].join(",")
    ));
    let mut cases = vec![
        (
            Case::new("one plugin: a.params", ferry.socket.clone()),
            shape(16, 4, direct),
        ),
        (
            Case::new("a.relay, no call", ferry.socket.clone()),
            shape(16, 4, relay_none),
        ),
        (
            Case::new("a.relay -> b.params", ferry.socket.clone()),
            shape(16, 4, relay_one),
        ),
        (
            Case::new("one 20 ms call", ferry.socket.clone()),
            shape(1, 1, nap_one),
        ),
        (
            Case::new("ten 20 ms calls at once", ferry.socket.clone()),
            shape(1, 1, nap_ten),
        ),
    ];
    println!(
        "calls between services: {rounds} rounds of {seconds} s per case, interleaved, each after {WARMUP:?} of warm-up; host on CPU 0, load on CPU 1\n"
    );
    for round in 0..rounds {
        for (case, shape) in &mut cases {
            case.round(&runtime, shape, seconds, round);
        }
    }
    let mut cases: Vec<Case> = cases.into_iter().map(|(case, _)| case).collect();
    print_table(&mut cases);
    let (direct_p50, call_p50) = (cases[0].percentile_ms(0.5), cases[2].percentile_ms(0.5));
    println!(
        "a call: {:.2} of the one-plugin throughput (rounds: {}); p50 {:.3} ms against {:.3} ms, {:.0} µs more per request",
        cases[2].ratio_to(&cases[0]).0,
        cases[2]
            .ratio_to(&cases[0])
            .1
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        call_p50,
        direct_p50,
        (call_p50 - direct_p50) * 1000.0
    );
    let (one, ten) = (cases[3].percentile_ms(0.5), cases[4].percentile_ms(0.5));
    println!(
        "fan-out: ten 20 ms calls at once take {ten:.2} ms at the median, one takes {one:.2} ms: {:.2} times the slowest single call",
        ten / one
    );
    drop(ferry);
    fail_on_errors(&cases);
}

//! Socket echo benchmark: requests per second and latency of `echo.params`
//! (answer exactly the params) through Ferry, against a plain native Rust
//! server doing the same framed JSON echo, in one run. Each server is held to CPU 0 and the load generator to CPU 1.
//!
//! `make bench`. `BENCH_SECS` (default 5) is the measured time of one round
//! on one server, `BENCH_ROUNDS` (default 3) the rounds; servers take turns,
//! so a noisy moment hits all of them, and the median round is reported.

use std::process::{Command, Stdio};

use std::sync::Arc;

use ferry_tests::load::{
    Case, Shape, WARMUP, fail_on_errors, frame, print_ratio, print_table, wait_for_socket,
};
use ferry_tests::{Ferry, env_u64, run_on_cpu, scratch_dir};

fn shape() -> Shape {
    Shape {
        connections: 16,
        depth: 4,
        frame: Arc::new(|id| {
            frame(&format!(
                r#"{{"id":{id},"service":"echo","action":"params","params":{{"user":"ada","items":[1,2,3],"note":"hello ferry"}},"tenant_id":"acme"}}"#
            ))
        }),
    }
}

fn main() {
    let seconds = env_u64("BENCH_SECS", 5);
    let rounds = env_u64("BENCH_ROUNDS", 3);
    let runtime = ferry_tests::load::load_runtime();

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
    let baseline = Ferry::baseline_echo();
    if let Some(baseline) = &baseline {
        cases.push(Case::new(
            "ferry at FERRY_BASELINE, reuse",
            baseline.socket.clone(),
        ));
    }

    let shape = shape();
    println!(
        "socket echo: {} connections x {} in flight; {rounds} rounds of {seconds} s per server, \
         interleaved, each after {WARMUP:?} of warm-up; servers on CPU 0, load generator on CPU 1\n",
        shape.connections, shape.depth
    );
    for round in 0..rounds {
        for case in &mut cases {
            case.round(&runtime, &shape, seconds, round);
        }
    }
    print_table(&mut cases);
    for ferry in &cases[2..] {
        for native in &cases[..2] {
            print_ratio(ferry, native);
        }
    }
    if baseline.is_some() {
        print_ratio(&cases[2], &cases[4]);
    }

    for mut native in natives {
        let _ = native.kill();
        let _ = native.wait();
    }
    drop((reuse, fresh, baseline));
    let _ = std::fs::remove_dir_all(dir);
    fail_on_errors(&cases);
}

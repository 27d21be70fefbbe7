//! The socket benchmark's load on its own, for profiling a running host:
//! `socket-load SOCKET [SECONDS] [ACTION]` keeps 16 connections with 4
//! requests in flight each on `echo.ACTION` (default `params`) for SECONDS
//! (default 10) after a second of warm-up, then prints requests per second.
//! Run it on another CPU than the host (`taskset -c 1`).

use std::sync::Arc;

use ferry_tests::load::{Shape, frame, run_load};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let socket = args
        .next()
        .expect("usage: socket-load SOCKET [SECONDS] [ACTION]");
    let seconds: u64 = args.next().map_or(10, |s| s.parse().expect("SECONDS"));
    let action = args.next().unwrap_or_else(|| "params".into());
    let shape = Shape {
        connections: 16,
        depth: 4,
        frame: Arc::new(move |id| {
            frame(&format!(
                r#"{{"id":{id},"service":"echo","action":"{action}","params":{{"user":"ada","items":[1,2,3],"note":"hello ferry"}},"tenant_id":"acme"}}"#
            ))
        }),
    };
    let outcome = run_load(socket.as_ref(), &shape, seconds).await;
    println!(
        "{:.0} req/s, {} errors{}",
        outcome.rps(),
        outcome.errors,
        outcome
            .first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
}

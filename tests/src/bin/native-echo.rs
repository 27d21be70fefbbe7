//! The benchmark's baseline: a plain native Rust server speaking Ferry's
//! framed JSON protocol and doing the same echo as `plugins/echo`, with no
//! plugin in between. Usage: `native-echo SOCKET_PATH [--batch]`; with
//! `--batch` the writer batches responses the way Ferry's does.

use std::time::Instant;

use ferry_tests::baseline::{Echoed, Seen, json_frame, serve_frames};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Request {
    id: Value,
    #[allow(dead_code)]
    service: Option<String>,
    action: String,
    params: Option<Box<RawValue>>,
    tenant_id: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct Response<'a> {
    id: &'a Value,
    status: &'a str,
    result: Echoed<'a>,
}

fn handle(frame: &[u8]) -> Vec<u8> {
    let started = Instant::now();
    let request: Request = serde_json::from_slice(frame).expect("benchmark sends valid requests");
    assert_eq!(request.action, "echo");
    let params: Value =
        serde_json::from_str(request.params.as_ref().map_or("{}", |p| p.get())).unwrap();
    let timeout = request.timeout_ms.unwrap_or(5000);
    let response = Response {
        id: &request.id,
        status: "success",
        result: Echoed {
            params,
            ctx: Seen {
                request_id: request.id.to_string(),
                app: "default",
                service: "echo",
                tenant: request.tenant_id.as_deref(),
                subject: None,
                time_left_ms: timeout.saturating_sub(started.elapsed().as_millis() as u64),
            },
        },
    };
    json_frame(&response)
}

#[tokio::main]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: native-echo SOCKET_PATH [--batch]");
    let batch = std::env::args().nth(2).is_some_and(|a| a == "--batch");
    serve_frames(path.as_ref(), batch, |frame: Vec<u8>| async move {
        handle(&frame)
    })
    .await;
}

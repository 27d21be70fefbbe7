//! The benchmark's baseline: a plain native Rust server speaking Ferry's
//! framed JSON protocol and doing the same work as `echo.params` (parse the
//! request and its params, answer the params), with no plugin in between.
//! Usage: `native-echo SOCKET_PATH [--batch]`; with `--batch` the writer
//! batches responses the way Ferry's does.

use ferry_tests::baseline::{json_frame, serve_frames};
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
    #[allow(dead_code)]
    tenant_id: Option<String>,
}

#[derive(Serialize)]
struct Response<'a> {
    id: &'a Value,
    status: &'a str,
    result: Value,
}

fn handle(frame: &[u8]) -> Vec<u8> {
    let request: Request = serde_json::from_slice(frame).expect("benchmark sends valid requests");
    assert_eq!(request.action, "params");
    let params: Value =
        serde_json::from_str(request.params.as_ref().map_or("{}", |p| p.get())).unwrap();
    json_frame(&Response {
        id: &request.id,
        status: "success",
        result: params,
    })
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

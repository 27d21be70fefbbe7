//! The benchmark's baseline: a plain native Rust server speaking Ferry's
//! framed JSON protocol and doing the same echo as `plugins/echo`, with no
//! plugin in between. Usage: `native-echo SOCKET_PATH [--batch]`; with
//! `--batch` the writer batches responses the way Ferry's does.

use std::time::Instant;

use ferry_tests::baseline::{Echoed, Seen};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

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
    let mut out = vec![0; 4];
    serde_json::to_writer(&mut out, &response).unwrap();
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

async fn connection(stream: UnixStream, batch: bool) {
    let (read, write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut out = BufWriter::new(write);
        while let Some(frame) = rx.recv().await {
            if out.write_all(&frame).await.is_err() {
                return;
            }
            if batch {
                // The same write batching as Ferry's socket writer.
                tokio::task::yield_now().await;
            }
            while let Ok(frame) = rx.try_recv() {
                if out.write_all(&frame).await.is_err() {
                    return;
                }
            }
            if out.flush().await.is_err() {
                return;
            }
        }
    });
    let mut read = BufReader::new(read);
    loop {
        let mut header = [0u8; 4];
        if read.read_exact(&mut header).await.is_err() {
            return;
        }
        let mut frame = vec![0; u32::from_be_bytes(header) as usize];
        if read.read_exact(&mut frame).await.is_err() {
            return;
        }
        // Like Ferry, each request is its own task, so slow ones never block.
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(handle(&frame));
        });
    }
}

#[tokio::main]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: native-echo SOCKET_PATH [--batch]");
    let batch = std::env::args().nth(2).is_some_and(|a| a == "--batch");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    println!("listening");
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        tokio::spawn(connection(stream, batch));
    }
}

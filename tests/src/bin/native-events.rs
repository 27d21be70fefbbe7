//! The events benchmark's native baseline: the same ndjson protocol subset
//! the benchmark uses (`hello` → `hello_ack`, `publish` → `publish_ack`,
//! `event` lines with a per-connection `seq`), fanned out with a
//! `tokio::sync::broadcast` of 100 (a lagging consumer loses its oldest, as
//! in Ferry), each consumer writing its own lines. No applications, tokens
//! or status: the least a bus must do.
//!
//! Usage: native-events SOCKET

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

struct Event {
    topic: String,
    id: String,
    time: String,
    payload: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: native-events SOCKET");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    let (events, _) = broadcast::channel::<Arc<Event>>(100);
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        tokio::spawn(session(stream, events.clone(), ids.clone()));
    }
}

async fn session(stream: UnixStream, events: broadcast::Sender<Arc<Event>>, ids: Arc<AtomicU64>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut receiver: Option<broadcast::Receiver<Arc<Event>>> = None;
    let mut topics: Vec<String> = Vec::new();
    let mut seq = 0u64;
    let mut out = Vec::new();
    loop {
        let next = async {
            match &mut receiver {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { return };
                let message: Value = match serde_json::from_str(&line) {
                    Ok(m) => m,
                    Err(_) => continue,
                };
                let reply = match message["type"].as_str() {
                    Some("hello") => {
                        topics = message["topics"].as_array().into_iter().flatten()
                            .filter_map(|t| t.as_str().map(str::to_owned)).collect();
                        receiver = Some(events.subscribe());
                        r#"{"type":"hello_ack","bus_version":1,"first_for_key":true}"#.to_owned()
                    }
                    Some("publish") => {
                        let id = format!("n-{}", ids.fetch_add(1, Ordering::Relaxed) + 1);
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
                        let event = Event {
                            topic: message["topic"].as_str().unwrap_or("").to_owned(),
                            id: id.clone(),
                            time: now.to_string(),
                            payload: message["payload"].to_string(),
                        };
                        let _ = events.send(Arc::new(event));
                        format!(r#"{{"type":"publish_ack","event_id":"{id}"}}"#)
                    }
                    _ => continue,
                };
                out.clear();
                out.extend_from_slice(reply.as_bytes());
                out.push(b'\n');
                if write.write_all(&out).await.is_err() {
                    return;
                }
            }
            event = next => {
                out.clear();
                match event {
                    Ok(event) => push(&event, &topics, &mut seq, &mut out),
                    // Lagged: the oldest are gone, and the seq jumps.
                    Err(broadcast::error::RecvError::Lagged(n)) => seq += n,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                // Whatever else is ready leaves in the same write.
                if let Some(r) = &mut receiver {
                    while let Ok(event) = r.try_recv() {
                        push(&event, &topics, &mut seq, &mut out);
                    }
                }
                if !out.is_empty() && write.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn push(event: &Event, topics: &[String], seq: &mut u64, out: &mut Vec<u8>) {
    if topics.iter().any(|t| t == &event.topic) {
        *seq += 1;
        out.extend_from_slice(
            format!(
                r#"{{"type":"event","event_type":"{}","event_id":"{}","source_time":"{}","seq":{},"payload":{}}}"#,
                event.topic, event.id, event.time, seq, event.payload
            )
            .as_bytes(),
        );
        out.push(b'\n');
    }
}

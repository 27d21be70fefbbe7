//! The sending half of a WebSocket connection: one queue per client,
//! bounded in messages and in bytes, and the writer task that drains it.
//! Pushed events never wait for a slow client: when its queue overflows,
//! what it holds is dropped and the client is closed (4002).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::close;
use crate::resources::bus::Subscriber;

/// What the writer task is asked to send.
pub(super) enum Out {
    Message(Message),
    /// A pushed event, counted in the queue's bytes until it is sent.
    Event(Utf8Bytes),
    Close(u16, String),
}

/// Messages the writer sends with one flush, at most.
const WRITE_BATCH: usize = 64;

/// Sends a batch of queued messages with one flush; answers whether it held
/// the close (nothing is sent after it).
async fn write_batch(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    batch: &mut Vec<Out>,
    queued: &AtomicUsize,
) -> Result<bool, axum::Error> {
    let mut last = false;
    for out in batch.drain(..) {
        let message = match out {
            Out::Message(m) => m,
            Out::Event(text) => {
                queued.fetch_sub(text.len(), Ordering::Relaxed);
                Message::Text(text)
            }
            Out::Close(code, reason) => {
                last = true;
                close_message(code, &reason)
            }
        };
        sink.feed(message).await?;
        if last {
            break;
        }
    }
    sink.flush().await?;
    Ok(last)
}

/// The sending side of a connection's queue: pushed events are bounded in
/// messages (the channel) and in bytes (`queued`), and never waited for.
#[derive(Clone)]
pub(super) struct Outbox {
    pub(super) tx: mpsc::Sender<Out>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    /// Set when the client fell behind: the writer drops what is queued
    /// and closes with 4002.
    pub(super) evicted: CancellationToken,
}

impl Outbox {
    /// A queue of `messages` and `bytes`, and the end the writer reads.
    pub(super) fn new(messages: usize, bytes: usize) -> (Outbox, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(messages);
        let outbox = Outbox {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            max_bytes: bytes,
            evicted: CancellationToken::new(),
        };
        (outbox, rx)
    }

    /// Queues an event, or evicts the client if there is no room.
    fn push(&self, text: String) -> bool {
        let len = text.len();
        let before = self.queued.load(Ordering::Relaxed);
        // An event larger than the bound alone still goes to an idle client.
        if before > 0 && before + len > self.max_bytes {
            self.evicted.cancel();
            return false;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        if self.tx.try_send(Out::Event(Utf8Bytes::from(text))).is_err() {
            self.evicted.cancel();
            return false;
        }
        true
    }
}

/// How long one write to a client may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer task: sends what is queued, several messages per flush,
/// until the queue closes, the close goes out, or the client falls behind.
pub(super) async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Out>,
    outbox: Outbox,
) {
    let (evicted, queued, write_timeout) =
        (outbox.evicted.clone(), outbox.queued.clone(), WRITE_TIMEOUT);
    drop(outbox);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        let first = tokio::select! {
            biased;
            // What is queued for a client that fell behind is dropped.
            _ = evicted.cancelled() => Out::Close(close::TOO_SLOW, "fell behind on pushed events".to_owned()),
            out = rx.recv() => match out {
                Some(out) => out,
                None => break,
            },
        };
        let closing = matches!(first, Out::Close(..));
        batch.push(first);
        if !closing && rx.is_empty() {
            // Requests finishing at about the same time share a
            // write: one send for many answers under load.
            tokio::task::yield_now().await;
        }
        // Whatever else is ready goes out in the same write.
        while !closing
            && batch.len() < WRITE_BATCH
            && let Ok(out) = rx.try_recv()
        {
            batch.push(out);
        }
        let write =
            tokio::time::timeout(write_timeout, write_batch(&mut sink, &mut batch, &queued));
        let written = if closing {
            Some(write.await)
        } else {
            tokio::select! {
                biased;
                written = write => Some(written),
                // A write stuck on a client that stopped reading
                // gives way to the close.
                _ = evicted.cancelled() => None,
            }
        };
        match written {
            None => batch.clear(),
            Some(Ok(Ok(false))) => {}
            Some(_) => break,
        }
    }
    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
}

pub(super) fn close_message(code: u16, reason: &str) -> Message {
    let reason = crate::capabilities::log::truncate(reason, 120);
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

/// Moves a connection's events from its bus queue to its send queue. A
/// full send queue, or events dropped from the bus queue, means the client
/// is behind: it is disconnected rather than waited for.
pub(super) async fn pump(subscriber: Arc<Subscriber>, outbox: Outbox) {
    loop {
        tokio::select! {
            _ = subscriber.ready.notified() => {}
            _ = outbox.tx.closed() => return,
            _ = outbox.evicted.cancelled() => return,
        }
        while let Some((seq, event)) = subscriber.pop() {
            let payload: &RawValue =
                serde_json::from_str(&event.payload).expect("the bus holds JSON");
            let text = json!({
                "header": {"command": "event"},
                "payload": {
                    "topic": event.topic,
                    "event_id": event.id,
                    "seq": seq,
                    "source_time": event.source_time_ms.to_string(),
                    "data": payload,
                },
            })
            .to_string();
            if !outbox.push(text) {
                return;
            }
            if subscriber.status().dropped > 0 {
                outbox.evicted.cancel();
                return;
            }
        }
    }
}

//! Answers of asynchronous requests in cluster mode. An answer owed to an
//! `http://` hook goes into the JetStream work-queue stream
//! `FERRY_REPLIES` once it is ready, and is posted from there, retrying on
//! the hooks' schedule by negative acknowledgements with delay, so it
//! outlives the process that made it. A hook on a routable address may be
//! posted to by any host (one durable consumer shared by all); a hook on
//! loopback is beside the accepting host, so only a host of that name
//! posts it (a consumer of its own), the same host after a restart
//! included. `unix:` hooks are delivered by the accepting host itself, as
//! without a cluster.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::Cluster;
use crate::pipeline::Pipeline;
use crate::resources::hooks::{ATTEMPT_TIMEOUT, Hook, RETRY_AFTER};
use crate::resources::work_queue;

const STREAM: &str = "FERRY_REPLIES";
const SUBJECTS: &str = "ferry.replies.>";
/// Hooks any host can reach.
const SHARED: &str = "ferry.replies.http";
const SHARED_CONSUMER: &str = "ferry-replies";
const HOOK_HEADER: &str = "Ferry-Hook";
/// Answers one host posts at once.
const SLOTS: usize = 32;

pub(super) struct Replies {
    jetstream: jetstream::Context,
    client: async_nats::Client,
    /// The stream exists: until then answers are delivered by the host
    /// that has them.
    ready: AtomicBool,
    started: AtomicBool,
    /// With the host's name and start time, a message id no other answer
    /// has.
    sequence: AtomicU64,
    boot_ms: u128,
}

impl Replies {
    pub(super) fn new(client: async_nats::Client) -> Replies {
        Replies {
            jetstream: work_queue::context(client.clone()),
            client,
            ready: AtomicBool::new(false),
            started: AtomicBool::new(false),
            sequence: AtomicU64::new(0),
            boot_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
        }
    }

    pub(super) fn status(&self) -> Value {
        json!({"ready": self.ready.load(Ordering::Relaxed)})
    }
}

impl Cluster {
    /// Hands `frame` (the framed answer) owed to `hook` to the cluster;
    /// `false` when it does not take it (a socket hook, the stream not
    /// there yet, the server not storing it): the caller delivers it.
    pub async fn keep_reply(&self, hook: &Hook, frame: &[u8]) -> bool {
        let replies = &self.replies;
        if !matches!(hook, Hook::Http { .. }) || !replies.ready.load(Ordering::Relaxed) {
            return false;
        }
        let subject = if hook.is_local() {
            self.own_subject()
        } else {
            SHARED.to_owned()
        };
        let id = format!(
            "{}-{}-{}",
            self.name,
            replies.boot_ms,
            replies.sequence.fetch_add(1, Ordering::Relaxed)
        );
        let message = jetstream::message::PublishMessage::build()
            .message_id(id)
            .header(HOOK_HEADER, hook.text().as_str())
            .payload(bytes::Bytes::copy_from_slice(frame));
        match work_queue::put(&replies.jetstream, &replies.client, subject, message).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "the cluster's stream did not take an answer ({e}); this host delivers it"
                );
                false
            }
        }
    }

    /// Starts this host's share of the answers' delivery, once.
    pub(super) fn start_replies(self: &Arc<Self>, pipeline: &Arc<Pipeline>) {
        if self.replies.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let (this, pipeline) = (self.clone(), Arc::downgrade(pipeline));
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(SLOTS));
            loop {
                match this.deliver_replies(&pipeline, &slots).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!("cannot take answers from the cluster now: {e}"),
                }
                tokio::select! {
                    _ = this.stopping.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    /// The subject of answers owed to hooks beside this host.
    fn own_subject(&self) -> String {
        format!("ferry.replies.host.{}", self.name)
    }

    async fn deliver_replies(
        self: &Arc<Self>,
        pipeline: &Weak<Pipeline>,
        slots: &Arc<Semaphore>,
    ) -> Result<(), String> {
        let replies = &self.replies;
        let stream = work_queue::stream(
            &replies.jetstream,
            STREAM,
            SUBJECTS,
            "Ferry's answers of asynchronous requests, owed to their hooks",
        )
        .await?;
        let ack_wait = ATTEMPT_TIMEOUT + Duration::from_secs(10);
        let shared =
            work_queue::consumer(&stream, SHARED_CONSUMER, SHARED.into(), ack_wait).await?;
        let own_name = format!("ferry-replies-host-{}", self.name);
        let own = work_queue::consumer(&stream, &own_name, self.own_subject(), ack_wait).await?;
        replies.ready.store(true, Ordering::Relaxed);
        let take = async |consumer: &jetstream::consumer::PullConsumer| {
            while work_queue::pull(consumer, slots, &self.stopping, |message, permit| {
                let pipeline = pipeline.clone();
                tokio::spawn(async move {
                    post(pipeline, message).await;
                    drop(permit);
                });
            })
            .await?
            {}
            Ok::<(), String>(())
        };
        tokio::try_join!(take(&shared), take(&own))?;
        Ok(())
    }
}

/// One attempt at an answer from the stream; counted on this host's
/// tracker, whichever host accepted the request.
async fn post(pipeline: Weak<Pipeline>, message: jetstream::Message) {
    let hook = work_queue::header(&message, HOOK_HEADER)
        .and_then(|h| Hook::parse(&h).ok())
        .filter(|h| matches!(h, Hook::Http { .. }));
    let framed = message.payload.len() >= 4
        && u32::from_be_bytes(message.payload[..4].try_into().expect("four bytes")) as usize
            == message.payload.len() - 4;
    let (Some(hook), true) = (hook, framed) else {
        tracing::warn!("an answer in {STREAM} that no Ferry host wrote; dropped");
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    // A host that is stopping leaves the answer to the next one.
    let Some(pipeline) = pipeline.upgrade() else {
        let _ = message.ack_with(AckKind::Nak(None)).await;
        return;
    };
    let attempt = message.info().map_or(1, |i| i.delivered.max(1) as usize);
    let outcome = hook.try_once(&message.payload).await;
    let tracker = pipeline.tracker();
    let acked = match outcome {
        Ok(()) => {
            tracker.delivered.fetch_add(1, Ordering::Relaxed);
            message.double_ack().await
        }
        Err(e) => match RETRY_AFTER.get(attempt - 1) {
            Some(wait) => {
                tracker.retried.fetch_add(1, Ordering::Relaxed);
                message.ack_with(AckKind::Nak(Some(*wait))).await
            }
            None => {
                tracker.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    hook = hook.text(),
                    attempts = attempt,
                    "the answer of an asynchronous request could not be delivered: {e}"
                );
                message.ack_with(AckKind::Term).await
            }
        },
    };
    if let Err(e) = acked {
        tracing::warn!("cannot acknowledge an answer's attempt to the cluster: {e}");
    }
}

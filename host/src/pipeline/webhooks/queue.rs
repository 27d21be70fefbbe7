//! Webhooks in cluster mode: deliveries go into a JetStream work-queue
//! stream instead of this host's outbox, with one durable consumer per
//! endpoint that every host with that endpoint pulls from, so each
//! delivery is attempted by one host at a time, and one that a host held
//! when it died is taken by another. The delivery id is the message's
//! `Nats-Msg-Id` (a publish sent twice is stored once), a retry is a
//! negative acknowledgement with the schedule's delay, and the attempt's
//! number is the server's delivery count. What the stream cannot take
//! (NATS away past the publish timeout, a body over NATS's size limit) is
//! kept in this host's outbox and sent from here: nothing is lost either
//! way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::endpoints::Endpoint;
use super::{Counts, Key, Webhooks, now_ms};
use crate::resources::outbox::{NewDelivery, Outbox, Outcome};
use crate::resources::work_queue;

const STREAM: &str = "FERRY_WEBHOOKS";
const SUBJECTS: &str = "ferry.webhooks.>";
const TOPIC_HEADER: &str = "Ferry-Topic";
const CREATED_HEADER: &str = "Ferry-Created";

/// The subject of one endpoint's deliveries.
fn subject(app: &str, endpoint: &str) -> String {
    format!("ferry.webhooks.{app}.{endpoint}")
}

/// The durable consumer of one endpoint. Names may hold `-` themselves:
/// the application name's length keeps two pairs from sharing one.
fn consumer_name(app: &str, endpoint: &str) -> String {
    format!("ferry-webhooks-{}-{app}-{endpoint}", app.len())
}

pub(super) struct Queue {
    jetstream: jetstream::Context,
    client: async_nats::Client,
    /// The stream exists (created by this host or another): until then
    /// deliveries stay in the outbox.
    ready: AtomicBool,
    workers: Mutex<HashMap<Key, CancellationToken>>,
    stop: CancellationToken,
}

impl Queue {
    pub(super) fn new(client: async_nats::Client, stop: CancellationToken) -> Queue {
        Queue {
            jetstream: work_queue::context(client.clone()),
            client,
            ready: AtomicBool::new(false),
            workers: Mutex::default(),
            stop,
        }
    }

    pub(super) fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    async fn stream(&self) -> Result<async_nats::jetstream::stream::Stream, String> {
        let stream = work_queue::stream(
            &self.jetstream,
            STREAM,
            SUBJECTS,
            "Ferry's webhook deliveries, owed to endpoints",
        )
        .await?;
        self.ready.store(true, Ordering::Relaxed);
        Ok(stream)
    }
}

impl Queue {
    /// Puts `deliveries` into the stream; answers once the server has
    /// stored each one, or the outbox has those it did not take.
    pub(super) fn keep(
        &self,
        outbox: Arc<Outbox>,
        deliveries: Vec<(NewDelivery, Arc<Counts>)>,
    ) -> oneshot::Receiver<()> {
        let (jetstream, client) = (self.jetstream.clone(), self.client.clone());
        let (done, kept) = oneshot::channel();
        tokio::spawn(async move {
            let puts = deliveries.iter().map(|(d, _)| {
                let message = jetstream::message::PublishMessage::build()
                    .message_id(&d.id)
                    .header(TOPIC_HEADER, d.topic.as_str())
                    .header(CREATED_HEADER, d.at_ms.to_string().as_str())
                    .payload(d.body.clone().into());
                work_queue::put(&jetstream, &client, subject(&d.app, &d.endpoint), message)
            });
            let stored = futures_util::future::join_all(puts).await;
            let mut left = Vec::new();
            for ((d, counts), stored) in deliveries.into_iter().zip(stored) {
                if let Err(e) = stored {
                    tracing::warn!(
                        id = d.id,
                        "webhooks: the cluster's stream did not take a delivery ({e}); this host sends it"
                    );
                    counts.pending.fetch_add(1, Ordering::Relaxed);
                    left.push(d);
                }
            }
            if !left.is_empty() {
                let _ = outbox.keep(left).await;
            }
            let _ = done.send(());
        });
        kept
    }
}

impl Webhooks {
    /// Cluster mode: webhook deliveries from now on go through the
    /// cluster's stream, and this host takes its share of every endpoint's.
    pub fn join_cluster(self: &Arc<Self>, client: async_nats::Client, stop: CancellationToken) {
        let queue = Arc::new(Queue::new(client, stop));
        if self.queue.set(queue.clone()).is_err() {
            return;
        }
        // Created now rather than by the first worker: a host with no
        // endpoint of its own still publishes into it.
        tokio::spawn(async move {
            loop {
                match queue.stream().await {
                    Ok(_) => return,
                    Err(e) => tracing::warn!("webhooks: {e}; trying again"),
                }
                tokio::select! {
                    _ = queue.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        self.sync_workers();
    }

    /// One worker per configured endpoint; the removed ones' stop.
    pub(super) fn sync_workers(self: &Arc<Self>) {
        let Some(queue) = self.queue.get() else {
            return;
        };
        let endpoints = self.endpoints.load();
        let mut workers = queue.workers.lock().expect("workers lock");
        workers.retain(|key, stop| {
            let keep = endpoints.contains_key(key);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for key in endpoints.keys() {
            if workers.contains_key(key) {
                continue;
            }
            let stop = queue.stop.child_token();
            tokio::spawn(self.clone().work(queue.clone(), key.clone(), stop.clone()));
            workers.insert(key.clone(), stop);
        }
    }

    /// Takes the endpoint's deliveries from the stream while it has free
    /// slots, until stopped; comes back by itself after NATS was away.
    async fn work(self: Arc<Self>, queue: Arc<Queue>, key: Key, stop: CancellationToken) {
        loop {
            match self.work_once(&queue, &key, &stop).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(
                    app = key.0,
                    endpoint = key.1,
                    "webhooks: cannot take deliveries from the cluster now: {e}"
                ),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn work_once(
        self: &Arc<Self>,
        queue: &Queue,
        key: &Key,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let Some(endpoint) = self.endpoints.load().get(key).cloned() else {
            return Ok(());
        };
        let name = consumer_name(&key.0, &key.1);
        // An attempt, with room: past it, a host that died holding a
        // delivery gives it up to the others.
        let ack_wait = endpoint.timeout + Duration::from_secs(10);
        // Slots of its own: the outbox's dispatcher (deliveries kept here
        // while the stream was away, revived dead ones) must not wait on a
        // pull that holds the endpoint's.
        let slots = Arc::new(tokio::sync::Semaphore::new(endpoint.concurrency));
        let consumer = work_queue::consumer(
            &queue.stream().await?,
            &name,
            subject(&key.0, &key.1),
            ack_wait,
        )
        .await?;
        loop {
            // The config of now: a reload may have changed the endpoint.
            let Some(endpoint) = self.endpoints.load().get(key).cloned() else {
                return Ok(());
            };
            if let Ok(info) = consumer.get_info().await {
                self.counts(&key.0, &key.1).queued.store(
                    info.num_pending + info.num_ack_pending as u64,
                    Ordering::Relaxed,
                );
            }
            if self.disabled(&key.0, &key.1) {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(work_queue::PULL_WAIT) => continue,
                }
            }
            let pulled = work_queue::pull(&consumer, &slots, stop, |message, permit| {
                tokio::spawn(
                    self.clone()
                        .attempt_queued(endpoint.clone(), message, permit),
                );
            })
            .await?;
            if !pulled {
                return Ok(());
            }
        }
    }

    /// One attempt of a delivery from the stream; its outcome is its
    /// acknowledgement.
    async fn attempt_queued(
        self: Arc<Self>,
        endpoint: Arc<Endpoint>,
        message: jetstream::Message,
        _permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let header = |name: &str| work_queue::header(&message, name);
        let (Some(id), Ok(body)) = (
            header(async_nats::header::NATS_MESSAGE_ID.as_ref()),
            std::str::from_utf8(&message.payload),
        ) else {
            tracing::warn!("webhooks: a message in {STREAM} that no Ferry host wrote; dropped");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        };
        let attempts = message.info().map_or(1, |i| i.delivered.max(1) as usize);
        let outcome = self.try_once(&endpoint, &id, body, attempts).await;
        let acked = match &outcome {
            Outcome::Delivered { .. } => message.double_ack().await,
            Outcome::Retry { next_at_ms, .. } => {
                let delay = Duration::from_millis((next_at_ms - now_ms()).max(0) as u64);
                message.ack_with(AckKind::Nak(Some(delay))).await
            }
            Outcome::Dead { status, error } => {
                // Kept where `ferry webhooks list --dead` and `retry` on
                // this host find it.
                let dead = NewDelivery {
                    id: id.clone(),
                    app: endpoint.app.clone(),
                    endpoint: endpoint.name.clone(),
                    topic: header(TOPIC_HEADER).unwrap_or_default(),
                    body: body.to_owned(),
                    at_ms: header(CREATED_HEADER)
                        .and_then(|t| t.parse().ok())
                        .unwrap_or_else(now_ms),
                };
                if let Err(e) = self
                    .outbox
                    .bury(dead, attempts as i64, *status, error, now_ms())
                    .await
                {
                    tracing::error!("webhooks outbox: cannot keep a dead delivery: {e}");
                }
                message.double_ack().await
            }
        };
        if let Err(e) = acked {
            // The server gives it to a host again after the ack wait,
            // with the same id: at least once, as a receiver expects.
            tracing::warn!(
                id,
                "webhooks: cannot acknowledge an attempt to the cluster: {e}"
            );
        }
    }
}

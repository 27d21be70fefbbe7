//! Durable work on JetStream, for cluster mode: a work-queue stream (each
//! message stays until one consumer acknowledges it), a durable pull
//! consumer that every host shares, and a pull that takes only as many
//! messages as its caller has free slots, so a host never holds work it
//! cannot start (what it holds another host cannot take until the ack
//! wait runs out).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, stream};
use futures_util::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long a pull waits for messages before it returns (and its caller
/// looks at its config and counts again).
pub const PULL_WAIT: Duration = Duration::from_secs(2);

/// How long a JetStream API call or a publish's ack may take: the
/// client's own requests have no timeout (forwarded requests carry their
/// deadlines), and a call lost in a NATS restart must not wait for ever.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// A JetStream context whose calls end within `API_TIMEOUT`.
pub fn context(client: async_nats::Client) -> jetstream::Context {
    let mut context = jetstream::new(client);
    context.set_timeout(API_TIMEOUT);
    context
}

/// The stream `name` over `subjects`, created if no host has yet.
pub async fn stream(
    jetstream: &jetstream::Context,
    name: &str,
    subjects: &str,
    description: &str,
) -> Result<stream::Stream, String> {
    jetstream
        .get_or_create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            description: Some(description.into()),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot open the stream {name} (is JetStream on?): {e}"))
}

/// The durable consumer `name` of `subject`, shared by every host. Its
/// user decides when a message is dead (no `max_deliver`); a message held
/// past `ack_wait` goes to another host.
pub async fn consumer(
    stream: &stream::Stream,
    name: &str,
    subject: String,
    ack_wait: Duration,
) -> Result<PullConsumer, String> {
    stream
        .get_or_create_consumer(
            name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: subject,
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait,
                max_deliver: -1,
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("the consumer {name}: {e}"))
}

/// One pull: waits for a free slot, asks for as many messages as there
/// are free slots, and hands each to `handle` with its slot, until the
/// pull's wait ends. `Ok(false)` when stopped.
pub async fn pull(
    consumer: &PullConsumer,
    slots: &Arc<Semaphore>,
    stop: &CancellationToken,
    mut handle: impl FnMut(jetstream::Message, OwnedSemaphorePermit),
) -> Result<bool, String> {
    let first = tokio::select! {
        _ = stop.cancelled() => return Ok(false),
        permit = slots.clone().acquire_owned() => permit.map_err(|e| e.to_string())?,
    };
    let mut permits = vec![first];
    while let Ok(permit) = slots.clone().try_acquire_owned() {
        permits.push(permit);
    }
    let mut batch = consumer
        .batch()
        .max_messages(permits.len())
        .expires(PULL_WAIT)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            message = batch.next() => match message {
                Some(message) => message.map_err(|e| e.to_string())?,
                None => return Ok(true),
            },
        };
        match permits.pop() {
            Some(permit) => handle(message, permit),
            // More than asked for: another host's, at once.
            None => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
        }
    }
}

/// A message's header, when it has it.
pub fn header(message: &jetstream::Message, name: &str) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
}

/// Publishes `message` and waits until the server has stored it. Refused
/// at once while NATS is disconnected: the client would keep the publish
/// and send it on reconnecting, after its caller had given up on it and
/// done the work another way, and the work would be done twice.
pub async fn put(
    jetstream: &jetstream::Context,
    client: &async_nats::Client,
    subject: String,
    message: jetstream::message::PublishMessage,
) -> Result<(), String> {
    if client.connection_state() != async_nats::connection::State::Connected {
        return Err("NATS is disconnected".into());
    }
    let ack = jetstream
        .send_publish(subject, message)
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map(drop).map_err(|e| e.to_string())
}

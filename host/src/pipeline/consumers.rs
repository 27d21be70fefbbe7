//! RabbitMQ consumers: for every application with a broker and every
//! plugin it serves, each entry of the plugin's manifest `consume` reads a
//! durable queue and calls an action with each message's JSON body. A
//! message is acknowledged once the action answered; on an error it is
//! published (persistent, confirmed) to a retry queue of the broker whose
//! messages expire after the back-off and flow back into the queue, and
//! after `max_attempts` to the queue's dead-letter queue, and only then
//! acknowledged, so a crash at any point leaves every message in the
//! broker. At most `prefetch` messages are unacknowledged at once, and
//! each call takes a plugin slot like a request.
//!
//! The queues, for a consumed queue `Q`: `Q` (durable; an existing one is
//! used as it is), `Q.retry.<ms>` (one per distinct wait: a queue's
//! messages share one time to live, so they expire in order; their dead
//! letters go back to `Q`) and `Q.dead`. The attempts so far travel in the
//! header `x-ferry-attempts`, the last error in `x-ferry-error`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use crate::config::Consume;
use crate::resources::rabbitmq::{Backoff, Broker};
use crate::runtime::{CallError, Work};

const ATTEMPTS: &str = "x-ferry-attempts";
const ERROR: &str = "x-ferry-error";
/// How long messages in hand may take to finish once the connection is
/// lost (their acknowledgements cannot arrive; the broker redelivers).
const HANDLERS_AFTER_LOSS: std::time::Duration = std::time::Duration::from_secs(3);

/// One consumer of one plugin in one application.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    app: Arc<str>,
    service: String,
    url: String,
    spec: Consume,
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    in_flight: AtomicU64,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
}

struct Running {
    counters: Arc<Counters>,
    stop: CancellationToken,
}

#[derive(Default)]
pub struct Consumers {
    running: Mutex<HashMap<Key, Running>>,
}

impl Consumers {
    pub fn stop_all(&self) {
        for (_, r) in self.running.lock().expect("consumers lock").drain() {
            r.stop.cancel();
        }
    }

    /// Per consumer: where it reads, its state and counts.
    pub fn status(&self) -> Vec<Value> {
        let running = self.running.lock().expect("consumers lock");
        let mut out: Vec<Value> = running
            .iter()
            .map(|(key, r)| {
                let c = &r.counters;
                json!({
                    "app": &*key.app,
                    "service": key.service,
                    "queue": key.spec.rabbitmq,
                    "action": key.spec.action,
                    "state": if c.connected.load(Ordering::Relaxed) { "up" } else { "down" },
                    "acked": c.acked.load(Ordering::Relaxed),
                    "retried": c.retried.load(Ordering::Relaxed),
                    "dead": c.dead.load(Ordering::Relaxed),
                    "in_flight": c.in_flight.load(Ordering::Relaxed),
                    "last_error": *c.last_error.lock().expect("lock"),
                })
            })
            .collect();
        out.sort_by_key(|v| {
            (
                v["app"].to_string(),
                v["service"].to_string(),
                v["queue"].to_string(),
            )
        });
        out
    }
}

impl Pipeline {
    /// Brings the consumers in line with the service table and the
    /// applications, as `sync_subscriptions` does for the bus.
    pub(super) fn sync_consumers(self: &Arc<Self>) {
        let mut running = self.consumers.running.lock().expect("consumers lock");
        let apps = self.apps();
        let plugins = self.table.plugins();
        let mut wanted = Vec::new();
        for name in apps.names() {
            let Some(app) = apps.get(name) else { continue };
            for plugin in &plugins {
                if !app.serves(plugin.name()) || plugin.settings().consume.is_empty() {
                    continue;
                }
                let Some(url) = &app.rabbitmq else {
                    tracing::warn!(
                        app = &*app.name,
                        plugin = plugin.name(),
                        "the plugin consumes RabbitMQ queues but the application has no `rabbitmq` broker; not consuming"
                    );
                    continue;
                };
                for spec in plugin.settings().consume.iter() {
                    wanted.push(Key {
                        app: app.name.clone(),
                        service: plugin.name().to_owned(),
                        url: url.clone(),
                        spec: spec.clone(),
                    });
                }
            }
        }
        running.retain(|key, r| {
            let keep = wanted.contains(key);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for key in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let r = Running {
                counters: Arc::default(),
                stop: CancellationToken::new(),
            };
            let consuming = Arc::new(Consuming {
                pipeline: Arc::downgrade(self),
                broker: self.brokers.get(&key.url),
                key: key.clone(),
                counters: r.counters.clone(),
                stop: r.stop.clone(),
            });
            tokio::spawn(consuming.run());
            running.insert(key, r);
        }
    }
}

/// The task behind one consumer.
struct Consuming {
    pipeline: Weak<Pipeline>,
    broker: Arc<Broker>,
    key: Key,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

/// How handling one message ended.
enum Handled {
    Ok,
    Failed(String),
    /// Not worth another attempt (the body is not JSON).
    Hopeless(String),
}

impl Consuming {
    fn queue(&self) -> &str {
        &self.key.spec.rabbitmq
    }

    fn retry_queue(&self, ms: u64) -> String {
        format!("{}.retry.{ms}", self.queue())
    }

    fn dead_queue(&self) -> String {
        format!("{}.dead", self.queue())
    }

    async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        loop {
            let error = match self.session(&mut backoff).await {
                Ok(()) => return,
                Err(e) => e,
            };
            // A consuming session marked itself down (and said so) already.
            self.broker.failed(&error);
            *self.counters.last_error.lock().expect("lock") = Some(error);
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.next()) => {}
            }
        }
    }

    /// Declares the queues and consumes until the channel fails (an
    /// error) or the consumer stops (messages being handled finish first).
    async fn session(self: &Arc<Self>, backoff: &mut Backoff) -> Result<(), String> {
        let channel = self.declare().await?;
        let publisher = self.broker.channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("confirm.select: {e}"))?;
        let publisher = Arc::new(publisher);
        channel
            .basic_qos(self.key.spec.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| format!("basic.qos: {e}"))?;
        let tag = format!("ferry:{}:{}", self.key.app, self.key.service);
        let mut consumer = channel
            .basic_consume(
                self.queue().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot consume `{}`: {e}", self.queue()))?;
        self.counters.connected.store(true, Ordering::Relaxed);
        *self.counters.last_error.lock().expect("lock") = None;
        backoff.reset();
        tracing::info!(
            app = &*self.key.app,
            plugin = self.key.service,
            queue = self.queue(),
            action = self.key.spec.action,
            "consuming"
        );
        let mut handling = JoinSet::new();
        // A connection cut abruptly (a reset, not a close) does not always
        // end the consumer's stream: the channel's state is looked at too.
        let mut check = tokio::time::interval(std::time::Duration::from_millis(500));
        let ended = loop {
            tokio::select! {
                _ = self.stop.cancelled() => break Ok(()),
                Some(_) = handling.join_next(), if !handling.is_empty() => {}
                _ = check.tick() => {
                    if !channel.status().connected() || !publisher.status().connected() {
                        break Err(format!("the connection of the consumer of `{}` was lost", self.queue()));
                    }
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let this = self.clone();
                        let publisher = publisher.clone();
                        handling.spawn(async move { this.handle(&publisher, delivery).await });
                    }
                    Some(Err(e)) => break Err(format!("the consumer of `{}` failed: {e}", self.queue())),
                    None => break Err(format!("the broker ended the consumer of `{}`", self.queue())),
                },
            }
        };
        if let Err(error) = &ended {
            // Down from now, not once the messages in hand are done: an
            // acknowledgement on a cut connection may take its time.
            if self.counters.connected.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    app = &*self.key.app,
                    plugin = self.key.service,
                    queue = self.queue(),
                    "consumer stopped, reconnecting: {error}"
                );
            }
            // The broker gives back whatever was not acknowledged; those in
            // hand get a moment to finish, then are dropped.
            let finishing = async { while handling.join_next().await.is_some() {} };
            if tokio::time::timeout(HANDLERS_AFTER_LOSS, finishing)
                .await
                .is_err()
            {
                handling.abort_all();
            }
            return ended;
        }
        // Stopping: those in hand finish and are acknowledged.
        while handling.join_next().await.is_some() {}
        if ended.is_ok() {
            let _ = channel.close(200, "consumer stopped".into()).await;
            let _ = publisher.close(200, "consumer stopped".into()).await;
        }
        ended
    }

    /// The consumed queue, its retry queues and its dead-letter queue; a
    /// channel to consume on.
    async fn declare(&self) -> Result<Channel, String> {
        let mut channel = self.broker.channel().await?;
        let fail = |queue: &str, e: lapin::Error| format!("cannot declare queue `{queue}`: {e}");
        // An existing queue is taken as it is, whatever its arguments (a
        // declare with others would be refused); a missing one is made.
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        if channel
            .queue_declare(self.queue().into(), passive, FieldTable::default())
            .await
            .is_err()
        {
            // The refusal closed the channel.
            channel = self.broker.channel().await?;
            channel
                .queue_declare(self.queue().into(), durable, FieldTable::default())
                .await
                .map_err(|e| fail(self.queue(), e))?;
        }
        let spec = &self.key.spec;
        let waits: BTreeSet<u64> = (2..=spec.max_attempts).map(|a| spec.delay_ms(a)).collect();
        for ms in waits {
            let name = self.retry_queue(ms);
            let mut args = FieldTable::default();
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms as i64));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(self.queue().into()),
            );
            channel
                .queue_declare(name.as_str().into(), durable, args)
                .await
                .map_err(|e| fail(&name, e))?;
        }
        let dead = self.dead_queue();
        channel
            .queue_declare(dead.as_str().into(), durable, FieldTable::default())
            .await
            .map_err(|e| fail(&dead, e))?;
        Ok(channel)
    }

    async fn handle(&self, publisher: &Channel, delivery: Delivery) {
        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let before = attempts(&delivery.properties);
        let attempt = before + 1;
        let handled = match std::str::from_utf8(&delivery.data)
            .ok()
            .filter(|body| serde_json::from_str::<&serde_json::value::RawValue>(body).is_ok())
        {
            None => Handled::Hopeless("the message body is not JSON".into()),
            Some(body) => match self.call(body, &delivery).await {
                Ok(()) => Handled::Ok,
                Err(CallError::Plugin { code, message }) => {
                    Handled::Failed(format!("{code}: {message}"))
                }
                Err(e) => Handled::Failed(e.to_string()),
            },
        };
        let target = match &handled {
            Handled::Ok => None,
            Handled::Failed(_) if attempt < self.key.spec.max_attempts => {
                Some(self.retry_queue(self.key.spec.delay_ms(attempt + 1)))
            }
            _ => Some(self.dead_queue()),
        };
        let settled = match (&handled, target) {
            (Handled::Ok, _) | (_, None) => {
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
                delivery.ack(BasicAckOptions::default()).await.is_ok()
            }
            (Handled::Failed(error) | Handled::Hopeless(error), Some(queue)) => {
                let dead = queue.ends_with(".dead");
                if dead {
                    tracing::warn!(
                        app = &*self.key.app,
                        plugin = self.key.service,
                        queue = self.queue(),
                        attempts = attempt,
                        "message dead-lettered to `{queue}`: {error}"
                    );
                }
                match republish(publisher, &queue, &delivery, attempt, error).await {
                    Ok(()) => {
                        let counter = if dead {
                            &self.counters.dead
                        } else {
                            &self.counters.retried
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        delivery.ack(BasicAckOptions::default()).await.is_ok()
                    }
                    Err(e) => {
                        // Not moved: it goes back to the queue as it was.
                        tracing::warn!(
                            queue = self.queue(),
                            "cannot move a message to `{queue}`: {e}"
                        );
                        let requeue = BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        };
                        delivery.nack(requeue).await.is_ok()
                    }
                }
            }
        };
        if !settled {
            tracing::debug!(
                queue = self.queue(),
                "a message could not be settled; the broker gives it back"
            );
        }
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// One call of the action, on the version serving now.
    async fn call(&self, body: &str, delivery: &Delivery) -> Result<(), CallError> {
        let id = match delivery.properties.message_id() {
            Some(id) => id.to_string(),
            None => format!("{}:{}", self.queue(), delivery.delivery_tag),
        };
        let work = Work::Request {
            action: &self.key.spec.action,
            params: body,
        };
        super::trigger(&self.pipeline, &self.key.app, &self.key.service, &id, work).await
    }
}

/// The attempts a message has had, from its header.
fn attempts(properties: &BasicProperties) -> u32 {
    let value = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ATTEMPTS).cloned());
    match value {
        Some(AMQPValue::LongLongInt(n)) => n.clamp(0, 1_000) as u32,
        Some(AMQPValue::LongInt(n)) => n.clamp(0, 1_000) as u32,
        _ => 0,
    }
}

/// Publishes a copy of `delivery` to `queue` (through the default
/// exchange) with its attempts and error, and waits for the broker's
/// confirm.
async fn republish(
    publisher: &Channel,
    queue: &str,
    delivery: &Delivery,
    attempt: u32,
    error: &str,
) -> Result<(), String> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(attempt)));
    let error: String = error.chars().take(1_000).collect();
    headers.insert(ERROR.into(), AMQPValue::LongString(error.as_str().into()));
    let properties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    let confirm = publisher
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &delivery.data,
            properties,
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err("the broker refused it".into())
    }
}

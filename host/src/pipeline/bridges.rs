//! Broker bridges: an application's events on the topics a bridge names
//! are published to a RabbitMQ exchange. An event is written to the
//! bridges' outbox (`data/bridges.sqlite`) before its publisher is
//! answered; one worker per bridge sends what is pending, in order,
//! persistent and with publisher confirms, and marks it sent only once
//! the broker confirmed it. While the broker is down, events wait in the
//! outbox (the bridge shows `down`, with what is pending) and flow when it
//! is back; a crash between the broker's confirm and the mark sends an
//! event again, with the same `message_id`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::webhooks::{KEEP_DELIVERED_MS, PRUNE_EVERY_MS, now_ms};
use crate::config::Config;
use crate::core::names::topic_matches;
use crate::resources::bus::Keeper;
use crate::resources::outbox::{NewDelivery, Outbox};
use crate::resources::rabbitmq::{Backoff, Broker, Brokers};

/// Events sent per round trip of confirms.
const BATCH: i64 = 512;

type Key = (String, String);

/// One configured bridge.
#[derive(PartialEq)]
struct Spec {
    url: String,
    exchange: String,
    patterns: Vec<String>,
}

/// A bridge's counters and state, kept across reloads.
#[derive(Default)]
struct Counts {
    published: AtomicU64,
    pending: AtomicU64,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
}

struct Running {
    spec: Arc<Spec>,
    stop: CancellationToken,
}

pub struct Bridges {
    outbox: Outbox,
    brokers: Arc<Brokers>,
    specs: arc_swap::ArcSwap<BTreeMap<Key, Arc<Spec>>>,
    running: Mutex<BTreeMap<Key, Running>>,
    counts: Mutex<BTreeMap<Key, Arc<Counts>>>,
    stop: CancellationToken,
}

/// The bridges `config` names, with their brokers' URLs read.
fn specs(config: &Config) -> Result<BTreeMap<Key, Arc<Spec>>, String> {
    let mut out = BTreeMap::new();
    for (app, app_config) in &config.apps {
        let Some(broker) = &app_config.rabbitmq else {
            continue;
        };
        for (name, bridge) in &app_config.bridges {
            out.insert(
                (app.clone(), name.clone()),
                Arc::new(Spec {
                    url: broker.resolve(&format!("apps.{app}.rabbitmq"))?,
                    exchange: bridge.exchange.clone(),
                    patterns: bridge.events.clone(),
                }),
            );
        }
    }
    Ok(out)
}

impl Bridges {
    /// Opens the outbox under the config's data folder; workers start with
    /// [`Bridges::configure`].
    pub async fn open(
        config: &Config,
        brokers: Arc<Brokers>,
        stop: CancellationToken,
    ) -> Result<Arc<Bridges>, String> {
        let specs = specs(config)?;
        let outbox = Outbox::open(&config.data.join("bridges.sqlite"), "bridges").await?;
        let bridges = Arc::new(Bridges {
            outbox,
            brokers,
            specs: arc_swap::ArcSwap::from_pointee(BTreeMap::new()),
            running: Mutex::default(),
            counts: Mutex::default(),
            stop,
        });
        if let Ok(rows) = bridges.outbox.counts().await {
            for (app, bridge, state, n) in rows {
                if state == "pending" {
                    bridges
                        .counts(&app, &bridge)
                        .pending
                        .store(n as u64, Ordering::Relaxed);
                }
            }
        }
        bridges.start(specs);
        Ok(bridges)
    }

    /// A reloaded config's bridges: new ones start, removed ones stop
    /// (what they have pending stays in the outbox for when they return).
    pub fn configure(self: &Arc<Self>, config: &Config) -> Result<(), String> {
        self.start(specs(config)?);
        Ok(())
    }

    fn start(self: &Arc<Self>, specs: BTreeMap<Key, Arc<Spec>>) {
        let mut running = self.running.lock().expect("bridges lock");
        running.retain(|key, r| {
            let keep = specs.get(key).is_some_and(|s| **s == *r.spec);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for (key, spec) in &specs {
            if running.contains_key(key) {
                continue;
            }
            let stop = self.stop.child_token();
            let worker = Worker {
                bridges: self.clone(),
                app: key.0.clone(),
                name: key.1.clone(),
                spec: spec.clone(),
                broker: self.brokers.get(&spec.url),
                counts: self.counts(&key.0, &key.1),
                stop: stop.clone(),
            };
            tokio::spawn(worker.run());
            running.insert(
                key.clone(),
                Running {
                    spec: spec.clone(),
                    stop,
                },
            );
        }
        self.specs.store(Arc::new(specs));
    }

    fn counts(&self, app: &str, bridge: &str) -> Arc<Counts> {
        self.counts
            .lock()
            .expect("counts lock")
            .entry((app.to_owned(), bridge.to_owned()))
            .or_default()
            .clone()
    }

    /// Per bridge: its exchange, broker, state and counts. `state` is
    /// `up` while the broker takes its events, else `down`.
    pub fn status(&self) -> Vec<Value> {
        self.specs
            .load()
            .iter()
            .map(|((app, name), spec)| {
                let c = self.counts(app, name);
                json!({
                    "app": app,
                    "bridge": name,
                    "exchange": spec.exchange,
                    "broker": self.brokers.get(&spec.url).shown(),
                    "state": if c.connected.load(Ordering::Relaxed) { "up" } else { "down" },
                    "published": c.published.load(Ordering::Relaxed),
                    "pending": c.pending.load(Ordering::Relaxed),
                    "last_error": *c.last_error.lock().expect("lock"),
                })
            })
            .collect()
    }

    /// The `source_status` of one application: its bridges' states, as
    /// the events socket's `status_response` and status show them.
    pub fn source_status(&self, app: &str) -> Value {
        let sources: serde_json::Map<String, Value> = self
            .status()
            .into_iter()
            .filter(|b| b["app"] == app)
            .map(|b| {
                (
                    format!("rabbitmq:{}", b["bridge"].as_str().unwrap_or("")),
                    json!({"state": b["state"], "pending": b["pending"], "last_error": b["last_error"]}),
                )
            })
            .collect();
        Value::Object(sources)
    }
}

impl Keeper for Bridges {
    fn keep(
        &self,
        app: &str,
        topic: &str,
        id: &str,
        _source_time_ms: u64,
        payload: &str,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let specs = self.specs.load();
        let at_ms = now_ms();
        let deliveries: Vec<NewDelivery> = specs
            .iter()
            .filter(|((a, _), spec)| {
                a == app && spec.patterns.iter().any(|p| topic_matches(p, topic))
            })
            .map(|((_, name), _)| {
                self.counts(app, name)
                    .pending
                    .fetch_add(1, Ordering::Relaxed);
                NewDelivery {
                    id: format!("{id}_{name}"),
                    app: app.to_owned(),
                    endpoint: name.clone(),
                    topic: topic.to_owned(),
                    body: payload.to_owned(),
                    at_ms,
                }
            })
            .collect();
        if deliveries.is_empty() {
            return None;
        }
        Some(self.outbox.keep(deliveries))
    }
}

/// The task behind one bridge.
struct Worker {
    bridges: Arc<Bridges>,
    app: String,
    name: String,
    spec: Arc<Spec>,
    broker: Arc<Broker>,
    counts: Arc<Counts>,
    stop: CancellationToken,
}

impl Worker {
    async fn run(self) {
        let mut backoff = Backoff::default();
        loop {
            let error = match self.session(&mut backoff).await {
                Ok(()) => return,
                Err(e) => e,
            };
            if self.counts.connected.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    app = self.app,
                    bridge = self.name,
                    "bridge down, events wait in the outbox: {error}"
                );
            }
            self.broker.failed(&error);
            *self.counts.last_error.lock().expect("lock") = Some(error);
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.next()) => {}
            }
        }
    }

    /// Sends pending events until the channel fails (an error) or the
    /// bridge stops.
    async fn session(&self, backoff: &mut Backoff) -> Result<(), String> {
        let channel = self.broker.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("confirm.select: {e}"))?;
        channel
            .exchange_declare(
                self.spec.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot declare exchange `{}`: {e}", self.spec.exchange))?;
        self.counts.connected.store(true, Ordering::Relaxed);
        *self.counts.last_error.lock().expect("lock") = None;
        tracing::info!(
            app = self.app,
            bridge = self.name,
            exchange = self.spec.exchange,
            "bridge up"
        );
        backoff.reset();
        let mut commits = self.bridges.outbox.commits();
        let mut pruned_at = 0;
        loop {
            let now = now_ms();
            if now - pruned_at > PRUNE_EVERY_MS {
                pruned_at = now;
                let _ = self.bridges.outbox.prune(now - KEEP_DELIVERED_MS).await;
            }
            let pending = self
                .bridges
                .outbox
                .pending_for(&self.app, &self.name, BATCH)
                .await
                .map_err(|e| format!("the bridges outbox: {e}"))?;
            if pending.is_empty() {
                tokio::select! {
                    _ = self.stop.cancelled() => return Ok(()),
                    _ = commits.changed() => {}
                    // Also notices a channel the broker closed while idle.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if !channel.status().connected() {
                            return Err("the broker closed the channel".into());
                        }
                    }
                }
                continue;
            }
            let sent = self.send(&channel, &pending).await;
            if !sent.is_empty() {
                self.bridges
                    .outbox
                    .delivered(sent.clone(), now_ms())
                    .await
                    .map_err(|e| format!("the bridges outbox: {e}"))?;
                let n = sent.len() as u64;
                self.counts.published.fetch_add(n, Ordering::Relaxed);
                let _ =
                    self.counts
                        .pending
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                            Some(p.saturating_sub(n))
                        });
            }
            if sent.len() < pending.len() {
                return Err(format!(
                    "{} of {} events not confirmed by the broker",
                    pending.len() - sent.len(),
                    pending.len()
                ));
            }
        }
    }

    /// Publishes a batch, then waits for the broker's confirms; answers
    /// the ids it confirmed, in order up to the first that failed (so the
    /// order on the exchange is the order of publishing).
    async fn send(
        &self,
        channel: &Channel,
        pending: &[crate::resources::outbox::Delivery],
    ) -> Vec<String> {
        let mut confirms = Vec::with_capacity(pending.len());
        for d in pending {
            let event_id = d.id.split_once('_').map_or(d.id.as_str(), |(e, _)| e);
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(event_id.into())
                .with_type(d.topic.as_str().into())
                .with_app_id(self.app.as_str().into())
                .with_timestamp((d.created_ms / 1000) as u64);
            match channel
                .basic_publish(
                    self.spec.exchange.as_str().into(),
                    d.topic.as_str().into(),
                    BasicPublishOptions::default(),
                    d.body.as_bytes(),
                    properties,
                )
                .await
            {
                Ok(confirm) => confirms.push(confirm),
                Err(_) => break,
            }
        }
        let mut sent = Vec::with_capacity(confirms.len());
        for (confirm, d) in confirms.into_iter().zip(pending) {
            match confirm.await {
                Ok(c) if c.is_ack() => sent.push(d.id.clone()),
                _ => break,
            }
        }
        sent
    }
}

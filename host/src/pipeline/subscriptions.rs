//! Plugin subscriptions: for every application and every plugin it serves,
//! each entry of the plugin's `permissions.events.subscribe` is a
//! subscriber on that application's bus, with its own bounded queue, and a
//! task that hands its events to the plugin's `event-handler`, one at a
//! time (ordered) or up to `concurrency` at once. Each delivery goes
//! through `Plugin::call`, so it takes a slot before an instance is made,
//! runs under the plugin's `timeout_ms` and memory limit, and counts in its
//! circuit like a request. A handler's `retry`, a trap or a timeout backs
//! off and tries again, up to `max_attempts`; a `reject` or the last failed
//! attempt counts the event as failed and sends it to the subscription's
//! `dead_letter` topic when it has one.
//!
//! Subscriptions follow the service table and the applications: they are
//! brought in line after every deploy, undeploy and config reload. A new
//! version of a plugin with the same subscriptions keeps them (and what
//! they have waiting); deliveries go to whichever version serves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use crate::capabilities::bindings::WitEvent;
use crate::config::{Delivery, Subscription};
use crate::resources::bus::{Event, Kind, Subscriber};
use crate::runtime::{CallError, Work};

/// One subscription of one plugin in one application.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    app: Arc<str>,
    service: String,
    spec: Subscription,
}

/// A subscription's counters over its life.
#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    in_flight: AtomicU64,
}

struct Running {
    subscriber: Arc<Subscriber>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

#[derive(Default)]
pub struct Subscriptions {
    running: Mutex<HashMap<Key, Running>>,
}

impl Subscriptions {
    /// Stops every subscription: no new deliveries start; those running
    /// finish their attempt.
    pub fn stop_all(&self, pipeline: &Pipeline) {
        let running: Vec<Running> = {
            let mut map = self.running.lock().expect("subscriptions lock");
            map.drain().map(|(_, r)| r).collect()
        };
        for r in running {
            r.stop.cancel();
            pipeline.bus.unsubscribe(&r.subscriber);
        }
    }

    /// Every subscription's subscriber, for the cluster to feed: `(app,
    /// service, pattern, subscriber)`.
    pub(super) fn feeds(&self) -> Vec<(Arc<str>, String, String, Arc<Subscriber>)> {
        let map = self.running.lock().expect("subscriptions lock");
        map.iter()
            .map(|(key, r)| {
                (
                    key.app.clone(),
                    key.service.clone(),
                    key.spec.topic.clone(),
                    r.subscriber.clone(),
                )
            })
            .collect()
    }

    /// Every subscription with its counters, sorted by application,
    /// service and topic.
    pub fn snapshot(&self) -> Vec<SubscriptionStatus> {
        let map = self.running.lock().expect("subscriptions lock");
        let mut list: Vec<SubscriptionStatus> = map
            .iter()
            .map(|(key, r)| {
                let queue = r.subscriber.status();
                let c = &r.counters;
                let in_flight = c.in_flight.load(Ordering::Relaxed);
                SubscriptionStatus {
                    app: key.app.to_string(),
                    service: key.service.clone(),
                    topic: key.spec.topic.clone(),
                    delivery: key.spec.delivery,
                    concurrency: match key.spec.delivery {
                        Delivery::Ordered => 1,
                        Delivery::Concurrent => key.spec.concurrency,
                    },
                    seq: queue.seq,
                    queued: queue.queued as u64,
                    in_flight,
                    lag: queue.queued as u64 + in_flight,
                    dropped: queue.dropped,
                    delivered: c.delivered.load(Ordering::Relaxed),
                    retried: c.retried.load(Ordering::Relaxed),
                    failed: c.failed.load(Ordering::Relaxed),
                    rejected: c.rejected.load(Ordering::Relaxed),
                }
            })
            .collect();
        list.sort_by(|a, b| (&a.app, &a.service, &a.topic).cmp(&(&b.app, &b.service, &b.topic)));
        list
    }
}

/// One subscription as status and metrics show it.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionStatus {
    pub app: String,
    pub service: String,
    pub topic: String,
    pub delivery: Delivery,
    /// Deliveries at once: 1 when ordered.
    pub concurrency: u32,
    /// The `seq` of the last event queued for it.
    pub seq: u64,
    pub queued: u64,
    pub in_flight: u64,
    /// Events published to it and not yet handled: queued and in flight.
    pub lag: u64,
    /// Dropped, the oldest first, because its queue was full.
    pub dropped: u64,
    pub delivered: u64,
    /// Attempts after the first.
    pub retried: u64,
    /// Given up on: rejected, or out of attempts.
    pub failed: u64,
    /// Of `failed`, those the handler rejected.
    pub rejected: u64,
}

impl Pipeline {
    /// Brings the plugin subscriptions in line with the service table and
    /// the applications: starts those that are new, stops those whose
    /// plugin, application or settings are gone. Subscribing is done
    /// before this returns, so an event published once a deploy is
    /// reported reaches the new subscription.
    pub(super) fn sync_subscriptions(self: &Arc<Self>) {
        // Held while the table and applications are read, so of two syncs
        // the later one always works from the later state.
        let mut running = self
            .subscriptions
            .running
            .lock()
            .expect("subscriptions lock");
        let apps = self.apps();
        let plugins = self.table.plugins();
        let mut wanted = Vec::new();
        for name in apps.names() {
            let Some(app) = apps.get(name) else { continue };
            for plugin in &plugins {
                if !app.serves(plugin.name()) {
                    continue;
                }
                for spec in plugin.settings().subscriptions.iter() {
                    wanted.push(Key {
                        app: app.name.clone(),
                        service: plugin.name().to_owned(),
                        spec: spec.clone(),
                    });
                }
            }
        }
        running.retain(|key, r| {
            let keep = wanted.contains(key);
            if !keep {
                r.stop.cancel();
                self.bus.unsubscribe(&r.subscriber);
                tracing::info!(
                    app = &*key.app,
                    plugin = key.service,
                    topic = key.spec.topic,
                    "subscription ended"
                );
            }
            keep
        });
        for key in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let subscription = self.bus.subscribe(
                Kind::Plugin,
                key.app.clone(),
                key.service.clone(),
                format!("plugin:{}", key.service),
                vec![key.spec.topic.clone()],
                key.spec.queue,
            );
            let r = Running {
                subscriber: subscription.subscriber,
                counters: Arc::default(),
                stop: CancellationToken::new(),
            };
            let delivering = Delivering {
                pipeline: Arc::downgrade(self),
                key: key.clone(),
                subscriber: r.subscriber.clone(),
                counters: r.counters.clone(),
                stop: r.stop.clone(),
            };
            tokio::spawn(delivering.run());
            tracing::info!(
                app = &*key.app,
                plugin = key.service,
                topic = key.spec.topic,
                delivery = ?key.spec.delivery,
                "subscription started"
            );
            running.insert(key, r);
        }
    }
}

/// The task behind one subscription.
#[derive(Clone)]
struct Delivering {
    /// Weak, so a task never keeps a stopped host alive.
    pipeline: Weak<Pipeline>,
    key: Key,
    subscriber: Arc<Subscriber>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl Delivering {
    async fn run(self) {
        let slots = Arc::new(Semaphore::new(match self.key.spec.delivery {
            Delivery::Ordered => 1,
            Delivery::Concurrent => self.key.spec.concurrency as usize,
        }));
        loop {
            // The slot first: an event stays in the queue (where the newest
            // push out the oldest) until there is a slot to handle it.
            let permit = tokio::select! {
                _ = self.stop.cancelled() => return,
                permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            };
            match self.subscriber.pop() {
                Some((seq, event)) => {
                    self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
                    let this = self.clone();
                    let one = async move {
                        this.deliver(seq, &event).await;
                        this.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    };
                    match self.key.spec.delivery {
                        Delivery::Ordered => one.await,
                        Delivery::Concurrent => {
                            tokio::spawn(one);
                        }
                    }
                }
                None => {
                    drop(permit);
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = self.subscriber.ready.notified() => {}
                    }
                }
            }
        }
    }

    /// Delivers one event until the handler takes it, rejects it, or it
    /// runs out of attempts.
    async fn deliver(&self, seq: u64, event: &Event) {
        let spec = &self.key.spec;
        let mut reason = String::new();
        for attempt in 1..=spec.max_attempts {
            if attempt > 1 {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                let shift = (attempt - 2).min(30);
                let wait = spec
                    .backoff_ms
                    .saturating_mul(1 << shift)
                    .min(spec.max_backoff_ms);
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                }
            }
            match self.attempt(seq, event, attempt).await {
                Ok(()) => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    event.count_delivered();
                    return;
                }
                Err(CallError::Plugin { code, message }) if code == "reject" => {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    self.give_up(event, seq, attempt, &format!("rejected: {message}"));
                    return;
                }
                Err(e) => {
                    reason = match e {
                        CallError::Plugin { message, .. } => format!("retry: {message}"),
                        other => other.to_string(),
                    };
                    tracing::debug!(
                        app = &*self.key.app,
                        plugin = self.key.service,
                        event_id = event.id,
                        attempt,
                        "event not handled: {reason}"
                    );
                }
            }
            if self.pipeline.strong_count() == 0 {
                return;
            }
        }
        self.give_up(event, seq, spec.max_attempts, &reason);
    }

    /// One call of the handler, on the version serving now.
    async fn attempt(&self, seq: u64, event: &Event, attempt: u32) -> Result<(), CallError> {
        let wit = WitEvent {
            app: self.key.app.to_string(),
            topic: event.topic.clone(),
            subscription: self.key.spec.topic.clone(),
            id: event.id.clone(),
            seq,
            source_time_ms: event.source_time_ms,
            attempt,
            payload: event.payload.clone(),
        };
        super::trigger(
            &self.pipeline,
            &self.key.app,
            &self.key.service,
            &event.id,
            Work::Event(&wit),
        )
        .await
    }

    /// Counts an event the subscription gave up on, logs it, and sends it
    /// to the dead-letter topic if there is one.
    fn give_up(&self, event: &Event, seq: u64, attempts: u32, reason: &str) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        event.count_failed();
        tracing::warn!(
            app = &*self.key.app,
            plugin = self.key.service,
            topic = event.topic,
            event_id = event.id,
            attempts,
            "event not handled; giving up on it: {reason}"
        );
        let (Some(topic), Some(pipeline)) = (&self.key.spec.dead_letter, self.pipeline.upgrade())
        else {
            return;
        };
        let payload: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
        let letter = json!({
            "service": self.key.service,
            "subscription": self.key.spec.topic,
            "reason": reason,
            "attempts": attempts,
            "event": {
                "topic": event.topic,
                "id": event.id,
                "seq": seq,
                "source_time": event.source_time_ms.to_string(),
                "payload": payload,
            },
        });
        pipeline
            .bus
            .publish(&self.key.app, topic, &letter.to_string());
    }
}

//! The event bus: what is published to an application's topics, and a
//! bounded queue per subscriber. A publish copies the event into the queue
//! of every subscriber whose pattern covers the topic and returns: it never
//! waits for a subscriber. A full queue drops its oldest event and counts
//! it, and the sequence number each subscriber gets with each event shows
//! the gap. Applications have buses of their own; nothing crosses them.
//!
//! Hand-written rather than a `tokio::sync::broadcast`: a broadcast keeps
//! one ring for all receivers and tells a lagging one only how many it
//! missed, while here each subscriber has its own bound, its own drop
//! counter and its own sequence, and keys shared between consumers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

mod subscriber;
use subscriber::fan_out;
pub use subscriber::{Event, Kind, Subscriber, SubscriberStatus};

/// Largest payload an event may carry, so every event line stays far
/// below the consumers' 1 MiB line limit.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// Consumers sharing one `event_key`, for `first_for_key` and
/// `pre_shutdown_check`.
#[derive(Default)]
struct Key {
    live: HashSet<u64>,
    leaving: HashSet<u64>,
    /// Someone was told it is the last: nobody else will be.
    reserved: bool,
}

/// Per topic, over the host's life.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct TopicCounts {
    pub published: u64,
    /// Copies queued for a subscriber.
    pub queued: u64,
    /// Copies dropped because a subscriber's queue was full.
    pub dropped: u64,
    /// Copies written to a consumer or handled by a plugin.
    pub delivered: u64,
    /// Copies a plugin subscription gave up on (rejected, or out of
    /// attempts).
    pub failed: u64,
}

/// A topic's counters, updated outside the bus lock.
#[derive(Default)]
struct TopicCounters {
    published: AtomicU64,
    queued: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl TopicCounters {
    fn snapshot(&self) -> TopicCounts {
        TopicCounts {
            published: self.published.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
struct AppBus {
    subscribers: Vec<Arc<Subscriber>>,
    keys: HashMap<String, Key>,
    topics: BTreeMap<String, Arc<TopicCounters>>,
}

impl AppBus {
    fn counters(&mut self, topic: &str) -> Arc<TopicCounters> {
        match self.topics.get(topic) {
            Some(counters) => counters.clone(),
            None => self.topics.entry(topic.to_owned()).or_default().clone(),
        }
    }

    fn topic_counts(&self) -> BTreeMap<String, TopicCounts> {
        self.topics
            .iter()
            .map(|(topic, counters)| (topic.clone(), counters.snapshot()))
            .collect()
    }
}

#[derive(Default)]
pub struct Bus {
    apps: Mutex<HashMap<Arc<str>, AppBus>>,
    next_subscriber: AtomicU64,
    next_event: AtomicU64,
    keepers: std::sync::OnceLock<Vec<Arc<dyn Keeper>>>,
    relay: std::sync::OnceLock<Arc<dyn Relay>>,
    /// In a cluster, this host's name, in every event id it makes.
    origin: std::sync::OnceLock<String>,
}

/// What carries events to the other hosts of a cluster. With one set,
/// plugin subscriptions are no longer fed by local publishes: every event
/// goes out, and each plugin subscription takes its share back through
/// [`Bus::deliver_remote`], so it handles an event once per cluster.
pub trait Relay: Send + Sync {
    fn relay(&self, app: &str, topic: &str, id: &str, source_time_ms: u64, payload: &str);
}

/// What keeps events beyond the bus's memory: the webhooks and the broker
/// bridges, which turn the events they want into deliveries in an outbox.
pub trait Keeper: Send + Sync {
    /// Takes the event if it wants it; the answer resolves once it is kept.
    fn keep(
        &self,
        app: &str,
        topic: &str,
        id: &str,
        source_time_ms: u64,
        payload: &str,
    ) -> Option<tokio::sync::oneshot::Receiver<()>>;
}

/// What `subscribe` answers.
pub struct Subscription {
    pub subscriber: Arc<Subscriber>,
    /// No other live consumer of the application holds the key.
    pub first_for_key: bool,
}

impl Bus {
    /// Set once at start-up.
    pub fn set_keepers(&self, keepers: Vec<Arc<dyn Keeper>>) {
        let _ = self.keepers.set(keepers);
    }

    /// Set once at start-up, in cluster mode.
    /// `origin` (the host's name) goes into event ids, which stay unique
    /// across the cluster.
    pub fn set_relay(&self, relay: Arc<dyn Relay>, origin: &str) {
        let _ = self.relay.set(relay);
        let _ = self.origin.set(origin.to_owned());
    }

    /// Publishes `payload` (JSON text, already checked) to `topic` (already
    /// valid) of `app`; answers the event's id.
    pub fn publish(&self, app: &str, topic: &str, payload: &str) -> String {
        self.publish_kept(app, topic, payload).0
    }

    /// [`Bus::publish`], and what resolves once the event's deliveries
    /// are durable, when an endpoint wants it: a publisher that is waiting
    /// for an answer gets it after that.
    pub fn publish_kept(
        &self,
        app: &str,
        topic: &str,
        payload: &str,
    ) -> (String, Option<tokio::sync::oneshot::Receiver<()>>) {
        let number = self.next_event.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Unique over restarts too: the start of the millisecond and a count.
        let id = match self.origin.get() {
            Some(origin) => format!("{now:x}-{origin}-{number}"),
            None => format!("{now:x}-{number}"),
        };
        let relay = self.relay.get();
        let (counters, subscribers) = {
            let mut apps = self.apps.lock().expect("bus lock");
            let bus = match apps.get_mut(app) {
                Some(bus) => bus,
                None => apps.entry(Arc::from(app)).or_default(),
            };
            let subscribers: Vec<Arc<Subscriber>> = bus
                .subscribers
                .iter()
                .filter(|s| relay.is_none() || s.kind == Kind::Consumer)
                .filter(|s| s.wants(topic))
                .cloned()
                .collect();
            (bus.counters(topic), subscribers)
        };
        counters.published.fetch_add(1, Ordering::Relaxed);
        let event = Event::new(topic, id.clone(), now, payload.to_owned(), counters.clone());
        fan_out(&counters, &event, &subscribers);
        if let Some(relay) = relay {
            relay.relay(app, topic, &id, now, payload);
        }
        let mut kept: Vec<tokio::sync::oneshot::Receiver<()>> = self
            .keepers
            .get()
            .into_iter()
            .flatten()
            .filter_map(|k| k.keep(app, topic, &id, now, payload))
            .collect();
        let kept = match kept.len() {
            0 | 1 => kept.pop(),
            _ => {
                // Kept once every keeper has it.
                let (done, all) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    for one in kept {
                        if one.await.is_err() {
                            return;
                        }
                    }
                    let _ = done.send(());
                });
                Some(all)
            }
        };
        (id, kept)
    }

    /// An event published on another host of the cluster: to `plugin`, a
    /// plugin subscription that took it from its queue group, or else to
    /// every outside consumer of `app` on this host whose patterns cover it.
    pub fn deliver_remote(
        &self,
        app: &str,
        topic: &str,
        id: String,
        source_time_ms: u64,
        payload: String,
        plugin: Option<&Arc<Subscriber>>,
    ) {
        let (counters, subscribers) = {
            let mut apps = self.apps.lock().expect("bus lock");
            // Only applications this host knows of: no entry for others'.
            let Some(bus) = apps.get_mut(app) else { return };
            let subscribers: Vec<Arc<Subscriber>> = match plugin {
                Some(plugin) => vec![plugin.clone()],
                None => bus
                    .subscribers
                    .iter()
                    .filter(|s| s.kind == Kind::Consumer)
                    .filter(|s| s.wants(topic))
                    .cloned()
                    .collect(),
            };
            if subscribers.is_empty() {
                return;
            }
            (bus.counters(topic), subscribers)
        };
        let event = Event::new(topic, id, source_time_ms, payload, counters.clone());
        fan_out(&counters, &event, &subscribers);
    }

    /// Adds a subscriber to `app`'s topics (patterns already valid). Only
    /// consumers share keys and show in `status_response`.
    pub fn subscribe(
        &self,
        kind: Kind,
        app: Arc<str>,
        consumer: String,
        event_key: String,
        topics: Vec<String>,
        capacity: usize,
    ) -> Subscription {
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed) + 1;
        let subscriber = Arc::new(Subscriber::new(
            id,
            kind,
            app.clone(),
            consumer,
            event_key.clone(),
            topics,
            capacity,
        ));
        let mut apps = self.apps.lock().expect("bus lock");
        let bus = apps.entry(app).or_default();
        let mut first_for_key = true;
        if kind == Kind::Consumer {
            let key = bus.keys.entry(event_key).or_default();
            first_for_key = key.live.is_empty();
            if first_for_key {
                key.reserved = false;
            }
            key.live.insert(id);
        }
        bus.subscribers.push(subscriber.clone());
        Subscription {
            subscriber,
            first_for_key,
        }
    }

    /// `pre_shutdown_check`: whether `subscriber` is the last of its key's
    /// live consumers to leave. Of consumers that all ask, exactly one is
    /// told yes; the answer is reserved for it.
    pub fn last_for_key(&self, subscriber: &Subscriber) -> bool {
        let mut apps = self.apps.lock().expect("bus lock");
        let Some(key) = apps
            .get_mut(&subscriber.app)
            .and_then(|b| b.keys.get_mut(&subscriber.event_key))
        else {
            return false;
        };
        key.leaving.insert(subscriber.id);
        let last = !key.reserved && key.leaving.len() >= key.live.len();
        if last {
            key.reserved = true;
        }
        last
    }

    /// Removes a subscriber whose connection or subscription ended; what
    /// it had waiting goes with it.
    pub fn unsubscribe(&self, subscriber: &Subscriber) {
        subscriber.close();
        let mut apps = self.apps.lock().expect("bus lock");
        if let Some(bus) = apps.get_mut(&subscriber.app) {
            bus.subscribers.retain(|s| s.id != subscriber.id);
            if subscriber.kind == Kind::Consumer
                && let Some(key) = bus.keys.get_mut(&subscriber.event_key)
            {
                key.live.remove(&subscriber.id);
                key.leaving.remove(&subscriber.id);
                if key.live.is_empty() {
                    bus.keys.remove(&subscriber.event_key);
                }
            }
        }
    }

    /// `app`'s consumers, for `status_response`.
    pub fn consumers(&self, app: &str) -> Vec<SubscriberStatus> {
        let subscribers: Vec<Arc<Subscriber>> = {
            let apps = self.apps.lock().expect("bus lock");
            apps.get(app)
                .map(|b| b.subscribers.clone())
                .unwrap_or_default()
        };
        subscribers
            .iter()
            .filter(|s| s.kind == Kind::Consumer)
            .map(|s| s.status())
            .collect()
    }

    /// Every application's topics with their counters, and its number of
    /// consumers, for the metrics.
    pub fn counts(&self) -> Vec<(Arc<str>, BTreeMap<String, TopicCounts>, usize)> {
        let apps = self.apps.lock().expect("bus lock");
        apps.iter()
            .map(|(name, b)| {
                let consumers = b.subscribers.iter().filter(|s| s.kind == Kind::Consumer);
                (name.clone(), b.topic_counts(), consumers.count())
            })
            .collect()
    }

    /// Per application: its topics' counters and its consumers, for the
    /// host's status document.
    pub fn describe(&self) -> serde_json::Value {
        let apps: Vec<(
            Arc<str>,
            BTreeMap<String, TopicCounts>,
            Vec<Arc<Subscriber>>,
        )> = {
            let apps = self.apps.lock().expect("bus lock");
            apps.iter()
                .map(|(name, b)| (name.clone(), b.topic_counts(), b.subscribers.clone()))
                .collect()
        };
        let mut out = serde_json::Map::new();
        for (name, topics, subscribers) in apps {
            let consumers: Vec<SubscriberStatus> = subscribers
                .iter()
                .filter(|s| s.kind == Kind::Consumer)
                .map(|s| s.status())
                .collect();
            out.insert(
                name.to_string(),
                serde_json::json!({ "topics": topics, "consumers": consumers }),
            );
        }
        serde_json::Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(subscriber: &Subscriber) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        subscriber.drain_into(&mut out);
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_the_seq_shows_the_gap() {
        let bus = Bus::default();
        let sub = bus.subscribe(
            Kind::Consumer,
            "shop".into(),
            "c".into(),
            "k".into(),
            vec!["orders.>".into()],
            3,
        );
        for n in 1..=5 {
            bus.publish("shop", "orders.created", &n.to_string());
        }
        bus.publish("shop", "other", "0");
        bus.publish("blog", "orders.created", "0");
        let got = lines(&sub.subscriber);
        let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(got[2]["payload"], 5);
        assert_eq!(got[0]["event_type"], "orders.created");
        assert_eq!(sub.subscriber.status().dropped, 2);
    }

    #[test]
    fn of_consumers_leaving_together_exactly_one_is_last() {
        let bus = Bus::default();
        let subs: Vec<Subscription> = (0..4)
            .map(|i| {
                bus.subscribe(
                    Kind::Consumer,
                    "shop".into(),
                    format!("c{i}"),
                    "k".into(),
                    vec![">".into()],
                    10,
                )
            })
            .collect();
        assert!(subs[0].first_for_key);
        assert!(subs[1..].iter().all(|s| !s.first_for_key));
        let last: Vec<bool> = subs
            .iter()
            .map(|s| bus.last_for_key(&s.subscriber))
            .collect();
        assert_eq!(last.iter().filter(|l| **l).count(), 1);
        for s in &subs {
            bus.unsubscribe(&s.subscriber);
        }
        let again = bus.subscribe(
            Kind::Consumer,
            "shop".into(),
            "c".into(),
            "k".into(),
            vec![">".into()],
            10,
        );
        assert!(again.first_for_key);
    }
}

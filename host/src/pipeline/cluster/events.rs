//! Events across hosts. Every event published on a host goes out on
//! `ferry.evt.<app>.<topic>`, in order, with its id, source time and
//! origin in headers. Each host subscribes to `ferry.evt.>` and hands the
//! events of other hosts to its own outside consumers (its own events
//! reached them already, without a round trip). Plugin subscriptions are
//! fed only from NATS, each through a queue group named for its
//! application, service and pattern, so of all the hosts that run one
//! subscription exactly one gets each event, its publisher's host included.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::core::names::valid_topic;
use crate::pipeline::Pipeline;
use crate::resources::bus::{Bus, Relay, Subscriber};

const PREFIX: &str = "ferry.evt.";
const ID_HEADER: &str = "Ferry-Event-Id";
const TIME_HEADER: &str = "Ferry-Source-Time";
const ORIGIN_HEADER: &str = "Ferry-Origin";

/// Events waiting to go out while NATS is slow or away. Past this, new
/// events are not sent to other hosts, and each one is counted.
const OUTGOING: usize = 65_536;

struct Outgoing {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
}

/// One plugin subscription fed from its queue group.
struct Feed {
    app: Arc<str>,
    service: String,
    pattern: String,
    stop: CancellationToken,
    ready: Arc<AtomicBool>,
}

pub(super) struct Events {
    outgoing: mpsc::Sender<Outgoing>,
    stop: CancellationToken,
    /// Subscriber id → its feed.
    feeds: Mutex<HashMap<u64, Feed>>,
    /// The subscription for outside consumers, started once.
    consumers: Mutex<Option<Arc<AtomicBool>>>,
    sent: Arc<AtomicU64>,
    not_sent: AtomicU64,
    received: Arc<AtomicU64>,
}

impl Events {
    /// Starts the task that sends events out, in the order published.
    pub(super) fn start(client: async_nats::Client, stop: CancellationToken) -> Events {
        let (outgoing, mut queue) = mpsc::channel::<Outgoing>(OUTGOING);
        let sent = Arc::new(AtomicU64::new(0));
        {
            let (stop, sent) = (stop.clone(), sent.clone());
            tokio::spawn(async move {
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        event = queue.recv() => match event {
                            Some(event) => event,
                            None => return,
                        },
                    };
                    match client
                        .publish_with_headers(event.subject, event.headers, event.payload)
                        .await
                    {
                        Ok(()) => {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => tracing::warn!("an event was not sent to the cluster: {e}"),
                    }
                }
            });
        }
        Events {
            outgoing,
            stop,
            feeds: Mutex::default(),
            consumers: Mutex::default(),
            sent,
            not_sent: AtomicU64::new(0),
            received: Arc::default(),
        }
    }

    pub(super) fn stop(&self) {
        for (_, feed) in self.feeds.lock().expect("feeds lock").drain() {
            feed.stop.cancel();
        }
    }

    pub(super) fn status(&self) -> Value {
        let mut feeds: Vec<Value> = self
            .feeds
            .lock()
            .expect("feeds lock")
            .values()
            .map(|f| {
                json!({"app": &*f.app, "service": f.service, "topic": f.pattern,
                    "ready": f.ready.load(Ordering::Relaxed)})
            })
            .collect();
        feeds.sort_by_key(|v| v.to_string());
        let consumers_ready = self
            .consumers
            .lock()
            .expect("consumers lock")
            .as_ref()
            .is_some_and(|r| r.load(Ordering::Relaxed));
        json!({
            "sent": self.sent.load(Ordering::Relaxed),
            "not_sent": self.not_sent.load(Ordering::Relaxed),
            "received": self.received.load(Ordering::Relaxed),
            "consumers_ready": consumers_ready,
            "subscriptions": feeds,
        })
    }
}

impl Relay for Cluster {
    fn relay(&self, app: &str, topic: &str, id: &str, source_time_ms: u64, payload: &str) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ID_HEADER, id);
        headers.insert(TIME_HEADER, source_time_ms.to_string().as_str());
        headers.insert(ORIGIN_HEADER, self.name.as_str());
        let event = Outgoing {
            subject: format!("{PREFIX}{app}.{topic}"),
            headers,
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        };
        if self.events.outgoing.try_send(event).is_err() {
            let before = self.events.not_sent.fetch_add(1, Ordering::Relaxed);
            if before.is_multiple_of(1_000) {
                tracing::warn!(
                    app,
                    topic,
                    "the cluster is not taking events fast enough: {} not sent to other hosts",
                    before + 1
                );
            }
        }
    }
}

/// An event from NATS, as the bus takes it.
struct Incoming {
    app: String,
    topic: String,
    id: String,
    source_time_ms: u64,
    origin: String,
    payload: String,
}

impl Incoming {
    /// `None` for what no Ferry host sends.
    fn of(message: async_nats::Message) -> Option<Incoming> {
        let (app, topic) = message.subject.strip_prefix(PREFIX)?.split_once('.')?;
        if !valid_topic(topic) {
            return None;
        }
        let headers = message.headers.as_ref()?;
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        let payload = String::from_utf8(message.payload.to_vec()).ok()?;
        Some(Incoming {
            app: app.to_owned(),
            topic: topic.to_owned(),
            id: header(ID_HEADER)?,
            source_time_ms: header(TIME_HEADER)?.parse().ok()?,
            origin: header(ORIGIN_HEADER)?,
            payload,
        })
    }

    fn deliver(self, bus: &Bus, plugin: Option<&Arc<Subscriber>>) {
        bus.deliver_remote(
            &self.app,
            &self.topic,
            self.id,
            self.source_time_ms,
            self.payload,
            plugin,
        );
    }
}

/// A stable name for a pattern in a queue group's name, which cannot hold
/// the pattern's wildcards (FNV-1a, written out: 64 bits are plenty for
/// the few patterns of one service).
fn pattern_key(pattern: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pattern.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

impl Cluster {
    /// Feeds the plugin subscriptions the pipeline runs now, and starts
    /// the outside consumers' subscription the first time.
    pub(super) fn sync_events(self: &Arc<Self>, pipeline: &Arc<Pipeline>) {
        {
            let mut consumers = self.events.consumers.lock().expect("consumers lock");
            if consumers.is_none() {
                let ready = Arc::new(AtomicBool::new(false));
                tokio::spawn(
                    self.clone()
                        .feed_consumers(Arc::downgrade(pipeline), ready.clone()),
                );
                *consumers = Some(ready);
            }
        }
        let wanted = pipeline.subscriptions.feeds();
        let mut feeds = self.events.feeds.lock().expect("feeds lock");
        feeds.retain(|id, feed| {
            let keep = wanted.iter().any(|(_, _, _, s)| s.id == *id);
            if !keep {
                feed.stop.cancel();
            }
            keep
        });
        for (app, service, pattern, subscriber) in wanted {
            if feeds.contains_key(&subscriber.id) {
                continue;
            }
            let feed = Feed {
                app,
                service,
                pattern,
                stop: CancellationToken::new(),
                ready: Arc::default(),
            };
            let subject = format!("{PREFIX}{}.{}", feed.app, feed.pattern);
            let queue = format!(
                "ferry.sub.{}.{}.{}",
                feed.app,
                feed.service,
                pattern_key(&feed.pattern)
            );
            tokio::spawn(self.clone().feed_plugin(
                Arc::downgrade(pipeline),
                subject,
                queue,
                subscriber.clone(),
                feed.stop.clone(),
                feed.ready.clone(),
            ));
            feeds.insert(subscriber.id, feed);
        }
    }

    /// Other hosts' events, to this host's outside consumers.
    async fn feed_consumers(self: Arc<Self>, pipeline: Weak<Pipeline>, ready: Arc<AtomicBool>) {
        let stop = self.events.stop.clone();
        let subject = format!("{PREFIX}>");
        let Some(mut subscriber) = self.subscribed(&subject, None, &stop).await else {
            return;
        };
        ready.store(true, Ordering::Relaxed);
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                message = subscriber.next() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            let Some(event) = Incoming::of(message) else {
                continue;
            };
            if event.origin == self.name {
                continue;
            }
            let Some(pipeline) = pipeline.upgrade() else {
                return;
            };
            self.events.received.fetch_add(1, Ordering::Relaxed);
            event.deliver(&pipeline.bus, None);
        }
    }

    /// One plugin subscription's share of its application's events.
    async fn feed_plugin(
        self: Arc<Self>,
        pipeline: Weak<Pipeline>,
        subject: String,
        queue: String,
        target: Arc<Subscriber>,
        stop: CancellationToken,
        ready: Arc<AtomicBool>,
    ) {
        let Some(mut subscriber) = self.subscribed(&subject, Some(&queue), &stop).await else {
            return;
        };
        ready.store(true, Ordering::Relaxed);
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => {
                    let _ = subscriber.unsubscribe().await;
                    return;
                }
                message = subscriber.next() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            let Some(pipeline) = pipeline.upgrade() else {
                return;
            };
            if let Some(event) = Incoming::of(message) {
                event.deliver(&pipeline.bus, Some(&target));
            }
        }
    }
}

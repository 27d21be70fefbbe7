//! The bus's subscribers: an event as every subscriber shares it, and
//! each subscriber's bounded queue (drop-oldest, with its own `seq` and
//! counters).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::Notify;

use super::TopicCounters;
use crate::core::names::topic_matches;

/// One published event, shared by every subscriber. For consumers it is
/// written once as the line up to its `seq`; only the number and the
/// payload after it are added per consumer.
pub struct Event {
    head: String,
    pub topic: String,
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub source_time_ms: u64,
    /// JSON text.
    pub payload: String,
    /// Its topic's counters, for deliveries and failures.
    counters: Arc<TopicCounters>,
}

impl Event {
    pub(super) fn new(
        topic: &str,
        id: String,
        source_time_ms: u64,
        payload: String,
        counters: Arc<TopicCounters>,
    ) -> Arc<Event> {
        let topic_json = serde_json::to_string(topic).expect("a string serializes");
        let id_json = serde_json::to_string(&id).expect("a string serializes");
        Arc::new(Event {
            head: format!(
                r#"{{"type":"event","event_type":{topic_json},"event_id":{id_json},"source_time":"{source_time_ms}","seq":"#
            ),
            topic: topic.to_owned(),
            id,
            source_time_ms,
            payload,
            counters,
        })
    }

    /// Counts a plugin subscription's failure to handle it.
    pub fn count_failed(&self) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one subscriber's handling of it.
    pub fn count_delivered(&self) {
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends this event as an event line with `seq`.
    pub fn write_line(&self, seq: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(seq.to_string().as_bytes());
        out.extend_from_slice(br#","payload":"#);
        out.extend_from_slice(self.payload.as_bytes());
        out.extend_from_slice(b"}\n");
    }
}

/// Who a subscriber is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An outside consumer's connection on the events socket.
    Consumer,
    /// A plugin's subscription, delivered to its `event-handler`.
    Plugin,
}

/// What a subscriber has waiting.
struct Queue {
    events: VecDeque<(u64, Arc<Event>)>,
    /// The `seq` of the last event given to this subscriber.
    seq: u64,
    dropped: u64,
    delivered: u64,
    closed: bool,
}

/// One subscriber: an outside consumer's connection, or a plugin's
/// subscription.
pub struct Subscriber {
    pub id: u64,
    pub kind: Kind,
    pub app: Arc<str>,
    pub consumer: String,
    pub event_key: String,
    /// Swapped whole when a WebSocket client changes its subscriptions;
    /// read without a lock by every publish.
    topics: arc_swap::ArcSwap<Vec<String>>,
    capacity: usize,
    queue: Mutex<Queue>,
    /// Wakes the subscriber's writer when an event is queued.
    pub ready: Notify,
}

/// A subscriber's counters, for status.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberStatus {
    pub consumer: String,
    pub event_key: String,
    pub topics: Vec<String>,
    pub seq: u64,
    pub queued: usize,
    pub dropped: u64,
    pub delivered: u64,
}

impl Subscriber {
    pub(super) fn new(
        id: u64,
        kind: Kind,
        app: Arc<str>,
        consumer: String,
        event_key: String,
        topics: Vec<String>,
        capacity: usize,
    ) -> Subscriber {
        Subscriber {
            id,
            kind,
            app,
            consumer,
            event_key,
            topics: arc_swap::ArcSwap::from_pointee(topics),
            capacity,
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                seq: 0,
                dropped: 0,
                delivered: 0,
                closed: false,
            }),
            ready: Notify::new(),
        }
    }

    /// Takes no more events; what it had waiting goes.
    pub(super) fn close(&self) {
        self.queue.lock().expect("subscriber queue lock").closed = true;
    }

    fn push(&self, event: &Arc<Event>) -> Pushed {
        let mut queue = self.queue.lock().expect("subscriber queue lock");
        if queue.closed {
            return Pushed::Closed;
        }
        queue.seq += 1;
        let seq = queue.seq;
        let mut outcome = Pushed::Queued;
        if queue.events.len() >= self.capacity {
            queue.events.pop_front();
            queue.dropped += 1;
            outcome = Pushed::DroppedOldest;
        }
        queue.events.push_back((seq, event.clone()));
        drop(queue);
        self.ready.notify_one();
        outcome
    }

    /// Whether one of its patterns covers `topic`.
    pub(super) fn wants(&self, topic: &str) -> bool {
        self.topics.load().iter().any(|p| topic_matches(p, topic))
    }

    /// The patterns it receives.
    pub fn topics(&self) -> Arc<Vec<String>> {
        self.topics.load_full()
    }

    /// Replaces the patterns it receives (already valid); its `seq` goes on.
    pub fn set_topics(&self, topics: Vec<String>) {
        self.topics.store(Arc::new(topics));
    }

    /// Takes the oldest event waiting, with its `seq`.
    pub fn pop(&self) -> Option<(u64, Arc<Event>)> {
        let mut queue = self.queue.lock().expect("subscriber queue lock");
        let next = queue.events.pop_front()?;
        queue.delivered += 1;
        Some(next)
    }

    /// Takes everything waiting, written as event lines into `out`;
    /// answers how many.
    pub fn drain_into(&self, out: &mut Vec<u8>) -> usize {
        let mut queue = self.queue.lock().expect("subscriber queue lock");
        let n = queue.events.len();
        for (seq, event) in queue.events.drain(..) {
            event.write_line(seq, out);
            event.count_delivered();
        }
        queue.delivered += n as u64;
        n
    }

    pub fn status(&self) -> SubscriberStatus {
        let queue = self.queue.lock().expect("subscriber queue lock");
        SubscriberStatus {
            consumer: self.consumer.clone(),
            event_key: self.event_key.clone(),
            topics: self.topics.load().to_vec(),
            seq: queue.seq,
            queued: queue.events.len(),
            dropped: queue.dropped,
            delivered: queue.delivered,
        }
    }
}

enum Pushed {
    Queued,
    DroppedOldest,
    Closed,
}

/// Queues `event` for each of `subscribers` and counts what it did.
pub(super) fn fan_out(
    counters: &TopicCounters,
    event: &Arc<Event>,
    subscribers: &[Arc<Subscriber>],
) {
    let (mut queued, mut dropped) = (0, 0);
    for subscriber in subscribers {
        match subscriber.push(event) {
            Pushed::Queued => queued += 1,
            Pushed::DroppedOldest => {
                queued += 1;
                dropped += 1;
            }
            Pushed::Closed => {}
        }
    }
    counters.queued.fetch_add(queued, Ordering::Relaxed);
    counters.dropped.fetch_add(dropped, Ordering::Relaxed);
}

//! `/metrics`: every loaded plugin's counters, in-flight gauge and latency
//! histogram, and every application's event topics and consumers, in the
//! OpenMetrics text format, through `prometheus-client`.
//! The numbers live in each plugin's own atomics (one add per request on
//! the hot path); a collector reads them at scrape time.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use std::collections::BTreeMap;

use crate::capabilities::services::PairCounts;
use crate::pipeline::Pipeline;
use crate::pipeline::SubscriptionStatus;
use crate::resources::bus::TopicCounts;
use crate::runtime::{Plugin, StatsSnapshot};

/// The media type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the latency histogram, in seconds: from a tenth of a
/// millisecond (an echo) to the longest `timeout_ms` people set in practice.
const LATENCY_BOUNDS_S: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A counter's name (the encoder adds `_total`), help, and its reading.
type Counter = (&'static str, &'static str, fn(&StatsSnapshot) -> u64);

const COUNTERS: [Counter; 8] = [
    ("ferry_requests", "Requests that reached a plugin.", |s| {
        s.requests
    }),
    (
        "ferry_errors",
        "Requests the plugin answered with an error of its own.",
        |s| s.errors,
    ),
    (
        "ferry_traps",
        "Requests that trapped, panicked or hit the memory limit.",
        |s| s.traps,
    ),
    (
        "ferry_timeouts",
        "Requests cut off at their deadline.",
        |s| s.timeouts,
    ),
    (
        "ferry_overloaded",
        "Requests refused because every instance was busy.",
        |s| s.overloaded,
    ),
    (
        "ferry_refused",
        "Requests refused at once because the circuit was open.",
        |s| s.refused,
    ),
    (
        "ferry_restarts",
        "Instances replaced after a trap or timeout.",
        |s| s.restarts,
    ),
    ("ferry_instantiations", "Instances created.", |s| {
        s.instantiations
    }),
];

/// Reads the serving plugins at scrape time.
struct Plugins(Vec<Arc<Plugin>>);

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|p| p.name()))
            .finish()
    }
}

impl Collector for Plugins {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshots: Vec<(&str, StatsSnapshot)> = self
            .0
            .iter()
            .map(|p| (p.name(), p.stats.snapshot()))
            .collect();
        for (name, help, value) in COUNTERS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (service, snapshot) in &snapshots {
                let labels = [("service", *service)];
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&value(snapshot), None)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "ferry_in_flight",
            "Requests running now.",
            None,
            MetricType::Gauge,
        )?;
        for (service, snapshot) in &snapshots {
            let labels = [("service", *service)];
            metric
                .encode_family(&labels)?
                .encode_gauge(&(snapshot.in_flight as i64))?;
        }
        let mut metric = encoder.encode_descriptor(
            "ferry_request_duration_seconds",
            "Time from arrival at the plugin (queueing included) to the answer.",
            None,
            MetricType::Histogram,
        )?;
        for plugin in &self.0 {
            let h = plugin.stats.latency_buckets(&LATENCY_BOUNDS_S);
            let labels = [("service", plugin.name())];
            metric
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.counts, None)?;
        }
        Ok(())
    }
}

/// A topic counter's name, help, and its reading.
type TopicCounter = (&'static str, &'static str, fn(&TopicCounts) -> u64);

const TOPIC_COUNTERS: [TopicCounter; 5] = [
    (
        "ferry_events_published",
        "Events published to the topic.",
        |c| c.published,
    ),
    (
        "ferry_events_queued",
        "Copies of the topic's events queued for a consumer.",
        |c| c.queued,
    ),
    (
        "ferry_events_dropped",
        "Copies dropped, the oldest first, because a consumer's queue was full.",
        |c| c.dropped,
    ),
    (
        "ferry_events_delivered",
        "Copies written to a consumer or handled by a plugin subscription.",
        |c| c.delivered,
    ),
    (
        "ferry_events_failed",
        "Copies a plugin subscription rejected or gave up on after its last attempt.",
        |c| c.failed,
    ),
];

/// Reads the bus at scrape time.
#[derive(Debug)]
struct Topics(Vec<(Arc<str>, BTreeMap<String, TopicCounts>, usize)>);

impl Collector for Topics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in TOPIC_COUNTERS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (app, topics, _) in &self.0 {
                for (topic, counts) in topics {
                    let labels = [("app", &**app), ("topic", topic.as_str())];
                    metric
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&value(counts), None)?;
                }
            }
        }
        let mut metric = encoder.encode_descriptor(
            "ferry_event_consumers",
            "Consumers connected to the events socket.",
            None,
            MetricType::Gauge,
        )?;
        for (app, _, consumers) in &self.0 {
            let labels = [("app", &**app)];
            metric
                .encode_family(&labels)?
                .encode_gauge(&(*consumers as i64))?;
        }
        Ok(())
    }
}

/// A subscription counter's name, help, and its reading.
type SubscriptionCounter = (&'static str, &'static str, fn(&SubscriptionStatus) -> u64);

const SUBSCRIPTION_COUNTERS: [SubscriptionCounter; 5] = [
    (
        "ferry_event_subscription_delivered",
        "Events a plugin subscription's handler took.",
        |s| s.delivered,
    ),
    (
        "ferry_event_subscription_retried",
        "Deliveries tried again after `retry`, a trap or a timeout.",
        |s| s.retried,
    ),
    (
        "ferry_event_subscription_failed",
        "Events a plugin subscription gave up on: rejected or out of attempts.",
        |s| s.failed,
    ),
    (
        "ferry_event_subscription_rejected",
        "Events the handler rejected.",
        |s| s.rejected,
    ),
    (
        "ferry_event_subscription_dropped",
        "Events dropped, the oldest first, because the subscription's queue was full.",
        |s| s.dropped,
    ),
];

/// Reads the plugin subscriptions at scrape time.
#[derive(Debug)]
struct Subscriptions(Vec<SubscriptionStatus>);

impl Collector for Subscriptions {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels = |s: &SubscriptionStatus| {
            [
                ("app", s.app.clone()),
                ("service", s.service.clone()),
                ("topic", s.topic.clone()),
            ]
        };
        for (name, help, value) in SUBSCRIPTION_COUNTERS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &self.0 {
                metric
                    .encode_family(&labels(s))?
                    .encode_counter::<NoLabelSet, _, u64>(&value(s), None)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "ferry_event_subscription_lag",
            "Events published to a plugin subscription and not yet handled.",
            None,
            MetricType::Gauge,
        )?;
        for s in &self.0 {
            metric
                .encode_family(&labels(s))?
                .encode_gauge(&(s.lag as i64))?;
        }
        Ok(())
    }
}

/// Calls between services, per caller and callee, read at scrape time.
#[derive(Debug)]
struct Calls(Vec<(String, String, PairCounts)>);

impl Collector for Calls {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Reading = fn(&PairCounts) -> u64;
        let counters: [(&str, &str, Reading); 2] = [
            (
                "ferry_service_calls",
                "Calls a plugin made to another service.",
                |c| c.calls,
            ),
            (
                "ferry_service_call_errors",
                "Of those calls, the ones answered with an error.",
                |c| c.errors,
            ),
        ];
        for (name, help, value) in counters {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (caller, callee, counts) in &self.0 {
                let labels = [("caller", caller.as_str()), ("callee", callee.as_str())];
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&value(counts), None)?;
            }
        }
        Ok(())
    }
}

/// Webhook endpoints, from their status entries.
#[derive(Debug)]
/// Metrics read from the rows of a status list (webhook endpoints, queue
/// consumers, bridges): one family per reading, labelled by some of each
/// row's fields. A reading's field is a number, `up`/`down` (1/0), or
/// anything else (1 unless null).
struct Rows {
    rows: Vec<serde_json::Value>,
    labels: &'static [(&'static str, &'static str)],
    readings: &'static [(&'static str, &'static str, &'static str, MetricType)],
}

impl Collector for Rows {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, field, kind) in self.readings {
            let mut metric = encoder.encode_descriptor(name, help, None, kind.clone())?;
            for row in &self.rows {
                let labels: Vec<(&str, &str)> = self
                    .labels
                    .iter()
                    .map(|(label, key)| (*label, row[*key].as_str().unwrap_or("")))
                    .collect();
                let value = match &row[*field] {
                    serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
                    serde_json::Value::String(s) if s == "down" => 0,
                    serde_json::Value::Bool(b) => u64::from(*b),
                    other => u64::from(!other.is_null()),
                };
                let mut family = metric.encode_family(&labels)?;
                if *kind == MetricType::Counter {
                    family.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
                } else {
                    family.encode_gauge(&(value as i64))?;
                }
            }
        }
        Ok(())
    }
}

const WEBHOOKS: &[(&str, &str, &str, MetricType)] = &[
    (
        "ferry_webhook_delivered",
        "Deliveries a 2xx answered.",
        "delivered",
        MetricType::Counter,
    ),
    (
        "ferry_webhook_retried",
        "Attempts that failed and were scheduled again.",
        "retried",
        MetricType::Counter,
    ),
    (
        "ferry_webhook_dead",
        "Deliveries given up after their last attempt (or a 410).",
        "dead",
        MetricType::Counter,
    ),
    (
        "ferry_webhook_pending",
        "Deliveries in the outbox still to be sent.",
        "pending",
        MetricType::Gauge,
    ),
    (
        "ferry_webhook_disabled",
        "1 while a 410 keeps the endpoint disabled.",
        "disabled",
        MetricType::Gauge,
    ),
];

const CONSUMERS: &[(&str, &str, &str, MetricType)] = &[
    (
        "ferry_rabbitmq_acked",
        "Messages the action handled and the host acknowledged.",
        "acked",
        MetricType::Counter,
    ),
    (
        "ferry_rabbitmq_retried",
        "Messages moved to a retry queue after a failed attempt.",
        "retried",
        MetricType::Counter,
    ),
    (
        "ferry_rabbitmq_dead",
        "Messages moved to the dead-letter queue.",
        "dead",
        MetricType::Counter,
    ),
    (
        "ferry_rabbitmq_in_flight",
        "Messages being handled.",
        "in_flight",
        MetricType::Gauge,
    ),
    (
        "ferry_rabbitmq_consumer_up",
        "1 while the consumer is consuming.",
        "state",
        MetricType::Gauge,
    ),
];

const BRIDGES: &[(&str, &str, &str, MetricType)] = &[
    (
        "ferry_bridge_published",
        "Events the broker confirmed.",
        "published",
        MetricType::Counter,
    ),
    (
        "ferry_bridge_pending",
        "Events in the outbox still to be published.",
        "pending",
        MetricType::Gauge,
    ),
    (
        "ferry_bridge_up",
        "1 while the broker takes the bridge's events.",
        "state",
        MetricType::Gauge,
    ),
];

const CLUSTER: &[(&str, &str, &str, MetricType)] = &[
    (
        "ferry_cluster_forwarded",
        "Requests sent to another host of the cluster.",
        "forwarded",
        MetricType::Counter,
    ),
    (
        "ferry_cluster_forward_failures",
        "Forwarded requests that got no answer (unavailable, timeout).",
        "forward_failures",
        MetricType::Counter,
    ),
    (
        "ferry_cluster_served_for_others",
        "Requests other hosts forwarded to this one.",
        "served_for_others",
        MetricType::Counter,
    ),
    (
        "ferry_cluster_connected",
        "1 while the host is connected to NATS.",
        "connected",
        MetricType::Gauge,
    ),
    (
        "ferry_cluster_hosts",
        "Hosts of the cluster heard from lately, this one included.",
        "hosts",
        MetricType::Gauge,
    ),
    (
        "ferry_cluster_events_sent",
        "Events sent to the other hosts.",
        "events_sent",
        MetricType::Counter,
    ),
    (
        "ferry_cluster_events_not_sent",
        "Events not sent to the other hosts because NATS did not take them in time.",
        "events_not_sent",
        MetricType::Counter,
    ),
    (
        "ferry_cluster_events_received",
        "Events from other hosts handed to this host's consumers.",
        "events_received",
        MetricType::Counter,
    ),
];

/// One number a door keeps of its own (the WebSocket door's connections
/// and closes), beside what the pipeline knows.
pub struct Reading {
    pub name: &'static str,
    pub help: &'static str,
    /// A gauge; a counter otherwise.
    pub gauge: bool,
    pub value: u64,
}

/// The exposition of every loaded plugin's metrics, and the doors' own.
pub fn render(pipeline: &Pipeline, doors: &[Reading]) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Plugins(pipeline.table().plugins())));
    registry.register_collector(Box::new(Topics(pipeline.bus().counts())));
    registry.register_collector(Box::new(Subscriptions(pipeline.subscriptions())));
    registry.register_collector(Box::new(Calls(pipeline.call_pairs())));
    if let Some(webhooks) = pipeline.webhooks() {
        registry.register_collector(Box::new(Rows {
            rows: webhooks.status(),
            labels: &[("app", "app"), ("endpoint", "endpoint")],
            readings: WEBHOOKS,
        }));
    }
    if let Some(cluster) = pipeline.cluster() {
        let status = cluster.status();
        let events = &status["events"];
        registry.register_collector(Box::new(Rows {
            rows: vec![serde_json::json!({
                "name": status["name"],
                "forwarded": status["forwarded"],
                "forward_failures": status["forward_failures"],
                "served_for_others": status["served_for_others"],
                "connected": status["connected"],
                "hosts": status["hosts"].as_array().map_or(0, Vec::len),
                "events_sent": events["sent"],
                "events_not_sent": events["not_sent"],
                "events_received": events["received"],
            })],
            labels: &[("host", "name")],
            readings: CLUSTER,
        }));
    }
    let rabbitmq = pipeline.rabbitmq_status();
    for (list, labels, readings) in [
        (
            "consumers",
            &[("app", "app"), ("service", "service"), ("queue", "queue")][..],
            CONSUMERS,
        ),
        (
            "bridges",
            &[("app", "app"), ("bridge", "bridge")][..],
            BRIDGES,
        ),
    ] {
        let rows = rabbitmq[list].as_array().cloned().unwrap_or_default();
        if !rows.is_empty() {
            registry.register_collector(Box::new(Rows {
                rows,
                labels,
                readings,
            }));
        }
    }
    let owed = pipeline.tracker().status();
    for (name, help, value) in [
        (
            "ferry_async_requests_accepted",
            "Asynchronous requests accepted.",
            owed.accepted,
        ),
        (
            "ferry_async_requests_delivered",
            "Answers delivered to their hooks.",
            owed.delivered,
        ),
        (
            "ferry_async_requests_timed_out",
            "Asynchronous requests answered `timeout`.",
            owed.timed_out,
        ),
        (
            "ferry_async_delivery_retries",
            "Deliveries to a hook tried again.",
            owed.retried,
        ),
        (
            "ferry_async_delivery_failures",
            "Answers no attempt could deliver.",
            owed.failed_deliveries,
        ),
        (
            "ferry_async_handed_to_cluster",
            "Answers handed to the cluster's stream, for any host to deliver.",
            owed.to_cluster,
        ),
    ] {
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }
    for reading in doors {
        if reading.gauge {
            let gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
            gauge.set(reading.value as i64);
            registry.register(reading.name, reading.help, gauge);
        } else {
            let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
            counter.inc_by(reading.value);
            registry.register(reading.name, reading.help, counter);
        }
    }
    let tracked = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    tracked.set(owed.tracked as i64);
    registry.register(
        "ferry_async_requests_tracked",
        "Asynchronous requests still owed an answer.",
        tracked,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

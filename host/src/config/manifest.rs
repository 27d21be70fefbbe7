//! A plugin's manifest, `NAME.yaml` beside `NAME.wasm`: limits over the
//! defaults, public actions, grants and plain config values.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use super::limits::{Circuit, Limits};

/// A plugin's optional `NAME.yaml` beside `NAME.wasm`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub max_concurrency: Option<u32>,
    pub max_queue: Option<u32>,
    pub reuse: Option<u32>,
    pub health_interval_ms: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub idle_ttl_ms: Option<u64>,
    pub log_lines_per_s: Option<u32>,
    /// Any of the circuit keys; the rest come from `defaults.circuit`.
    #[serde(default)]
    pub circuit: CircuitManifest,
    /// Actions callable without a token. Every other action of the plugin
    /// needs a verified token in applications that use JWT.
    #[serde(default)]
    pub public: Vec<String>,
    /// Host capabilities the plugin may use; none by default.
    #[serde(default)]
    pub permissions: Permissions,
    /// Plain values the plugin reads through the WIT `config` interface.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
    /// Broker queues whose messages call an action, in every application
    /// that serves the plugin and has a broker.
    #[serde(default)]
    pub consume: Vec<super::rabbitmq::Consume>,
}

/// A manifest's `circuit`: each key overrides one of `defaults.circuit`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitManifest {
    pub failures: Option<u32>,
    pub window_ms: Option<u64>,
    pub backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
}

/// A value in a manifest's `config` map: a string, a number or a boolean,
/// handed to the plugin as text. Lists and maps are refused, so what the
/// plugin reads is always what the file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigValue(pub String);

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_norway::Value::deserialize(d)? {
            serde_norway::Value::String(s) => Ok(ConfigValue(s)),
            serde_norway::Value::Number(n) => Ok(ConfigValue(n.to_string())),
            serde_norway::Value::Bool(b) => Ok(ConfigValue(b.to_string())),
            _ => Err(D::Error::custom(
                "config values must be strings, numbers or booleans (quote anything else)",
            )),
        }
    }
}

/// What a plugin's manifest grants it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// The `sql` interface on the request's application database.
    #[serde(default)]
    pub database: bool,
    /// The application's event bus: topics to publish to, topics to handle.
    #[serde(default)]
    pub events: EventGrants,
    /// Services of the same application the plugin may call.
    #[serde(default)]
    pub calls: Vec<String>,
}

/// A manifest's `permissions.events`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventGrants {
    /// Topic patterns the plugin may publish to (`*` one token, `>` the
    /// rest).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Subscriptions, each delivered to the plugin's `event-handler`.
    #[serde(default)]
    pub subscribe: Vec<SubscriptionSpec>,
}

/// How events of one subscription reach the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// One at a time, in the order they were published.
    #[default]
    Ordered,
    /// Up to `concurrency` at once; order is not kept.
    Concurrent,
}

/// One entry of `permissions.events.subscribe`: a pattern alone, or a map.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscriptionSpec {
    Topic(String),
    Full(Subscription),
}

/// By hand rather than `untagged`, so a map with a wrong key is reported
/// as that key, not as "did not match any variant".
impl<'de> Deserialize<'de> for SubscriptionSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_norway::Value::deserialize(d)? {
            serde_norway::Value::String(topic) => Ok(SubscriptionSpec::Topic(topic)),
            map @ serde_norway::Value::Mapping(_) => serde_norway::from_value(map)
                .map(SubscriptionSpec::Full)
                .map_err(D::Error::custom),
            _ => Err(D::Error::custom(
                "a subscription is a topic pattern or a map with `topic`",
            )),
        }
    }
}

/// A subscription with all its settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub topic: String,
    #[serde(default)]
    pub delivery: Delivery,
    /// Deliveries at once under `delivery: concurrent`.
    #[serde(default = "Subscription::default_concurrency")]
    pub concurrency: u32,
    /// Deliveries of one event before it counts as failed (1: no retry).
    #[serde(default = "Subscription::default_max_attempts")]
    pub max_attempts: u32,
    /// The wait before the first retry; each further retry waits twice as
    /// long, up to `max_backoff_ms`.
    #[serde(default = "Subscription::default_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "Subscription::default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Events waiting for the plugin; past it the oldest is dropped.
    #[serde(default = "Subscription::default_queue")]
    pub queue: usize,
    /// A topic that rejected and failed events are published to, wrapped
    /// as `{event, reason}` (a topic the plugin need not be granted).
    #[serde(default)]
    pub dead_letter: Option<String>,
}

impl Subscription {
    fn default_concurrency() -> u32 {
        8
    }
    fn default_max_attempts() -> u32 {
        5
    }
    fn default_backoff_ms() -> u64 {
        100
    }
    fn default_max_backoff_ms() -> u64 {
        10_000
    }
    fn default_queue() -> usize {
        1_000
    }

    fn of(topic: String) -> Subscription {
        Subscription {
            topic,
            delivery: Delivery::Ordered,
            concurrency: Self::default_concurrency(),
            max_attempts: Self::default_max_attempts(),
            backoff_ms: Self::default_backoff_ms(),
            max_backoff_ms: Self::default_max_backoff_ms(),
            queue: Self::default_queue(),
            dead_letter: None,
        }
    }
}

impl SubscriptionSpec {
    pub fn resolve(&self) -> Subscription {
        match self {
            SubscriptionSpec::Topic(topic) => Subscription::of(topic.clone()),
            SubscriptionSpec::Full(s) => s.clone(),
        }
    }
}

impl EventGrants {
    /// The subscriptions with their defaults filled in, once every pattern
    /// and bound is checked.
    pub fn validate(&self) -> Result<Vec<Subscription>, String> {
        use crate::core::names::{valid_topic, valid_topic_pattern};
        for pattern in &self.publish {
            if !valid_topic_pattern(pattern) {
                return Err(format!(
                    "permissions.events.publish: `{pattern}` is not a topic pattern (dot-separated letters, digits, `-`, `_`; `*` for one token, `>` last for the rest)"
                ));
            }
        }
        let mut out = Vec::new();
        for (i, spec) in self.subscribe.iter().enumerate() {
            let s = spec.resolve();
            let at = format!("permissions.events.subscribe[{i}]");
            if !valid_topic_pattern(&s.topic) {
                return Err(format!(
                    "{at}: `{}` is not a topic pattern (dot-separated letters, digits, `-`, `_`; `*` for one token, `>` last for the rest)",
                    s.topic
                ));
            }
            if !(1..=1024).contains(&s.concurrency) {
                return Err(format!("{at}.concurrency must be 1 to 1024"));
            }
            if !(1..=100).contains(&s.max_attempts) {
                return Err(format!("{at}.max_attempts must be 1 to 100"));
            }
            if s.backoff_ms == 0 || s.max_backoff_ms < s.backoff_ms || s.max_backoff_ms > 3_600_000
            {
                return Err(format!(
                    "{at}: backoff_ms must be at least 1 and at most max_backoff_ms (at most an hour)"
                ));
            }
            if !(1..=1_000_000).contains(&s.queue) {
                return Err(format!("{at}.queue must be 1 to 1000000"));
            }
            if let Some(topic) = &s.dead_letter {
                if !valid_topic(topic) {
                    return Err(format!("{at}.dead_letter: `{topic}` is not a topic"));
                }
                // A rejected event would come back to the same handler, as
                // a new event each time, for ever.
                if crate::core::names::topic_matches(&s.topic, topic) {
                    return Err(format!(
                        "{at}.dead_letter: `{topic}` is covered by the subscription's own `{}`",
                        s.topic
                    ));
                }
            }
            out.push(s);
        }
        Ok(out)
    }
}

impl Manifest {
    /// Parses manifest text read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Manifest::default());
        }
        serde_norway::from_str(text).map_err(|e| ConfigError {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// The plugin's effective limits: the manifest over the defaults.
    pub fn limits(&self, defaults: &Limits) -> Result<Limits, String> {
        let circuit = &self.circuit;
        let limits = Limits {
            timeout_ms: self.timeout_ms.unwrap_or(defaults.timeout_ms),
            memory_mb: self.memory_mb.unwrap_or(defaults.memory_mb),
            max_concurrency: self.max_concurrency.unwrap_or(defaults.max_concurrency),
            max_queue: self.max_queue.unwrap_or(defaults.max_queue),
            reuse: self.reuse.unwrap_or(defaults.reuse),
            health_interval_ms: self
                .health_interval_ms
                .unwrap_or(defaults.health_interval_ms),
            max_response_bytes: self
                .max_response_bytes
                .unwrap_or(defaults.max_response_bytes),
            idle_ttl_ms: self.idle_ttl_ms.unwrap_or(defaults.idle_ttl_ms),
            log_lines_per_s: self.log_lines_per_s.unwrap_or(defaults.log_lines_per_s),
            circuit: Circuit {
                failures: circuit.failures.unwrap_or(defaults.circuit.failures),
                window_ms: circuit.window_ms.unwrap_or(defaults.circuit.window_ms),
                backoff_ms: circuit.backoff_ms.unwrap_or(defaults.circuit.backoff_ms),
                max_backoff_ms: circuit
                    .max_backoff_ms
                    .unwrap_or(defaults.circuit.max_backoff_ms),
            },
        };
        limits.validate()?;
        Ok(limits)
    }

    /// The `consume` entries, once each is checked.
    pub fn consumers(&self) -> Result<Vec<super::rabbitmq::Consume>, String> {
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.consume.iter().enumerate() {
            c.validate(&format!("consume[{i}]"))?;
            if !seen.insert(&c.rabbitmq) {
                return Err(format!(
                    "consume[{i}]: queue `{}` is consumed twice",
                    c.rabbitmq
                ));
            }
        }
        Ok(self.consume.clone())
    }

    /// The `config` map as the plugin reads it.
    pub fn config_values(&self) -> BTreeMap<String, String> {
        self.config
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn manifest_overrides_defaults() {
        let m: Manifest = serde_norway::from_str("timeout_ms: 100\n").unwrap();
        let l = m.limits(&Limits::default()).unwrap();
        assert_eq!(l.timeout_ms, 100);
        assert_eq!(l.max_concurrency, 64);
        assert!(serde_norway::from_str::<Manifest>("timeoutms: 1\n").is_err());
    }

    #[test]
    fn manifest_circuit_keys_override_one_by_one() {
        let defaults = Config::parse("defaults:\n  circuit: {failures: 9, backoff_ms: 50}\n")
            .unwrap()
            .defaults;
        let m: Manifest = serde_norway::from_str("circuit: {window_ms: 700}\n").unwrap();
        let c = m.limits(&defaults).unwrap().circuit;
        assert_eq!((c.failures, c.window_ms, c.backoff_ms), (9, 700, 50));
        let m: Manifest = serde_norway::from_str("circuit: {failures: 0}\n").unwrap();
        assert!(
            m.limits(&defaults)
                .unwrap_err()
                .contains("circuit.failures")
        );
        assert!(serde_norway::from_str::<Manifest>("circuit: {failure: 1}\n").is_err());
    }

    #[test]
    fn manifest_config_is_plain_values() {
        let m: Manifest =
            serde_norway::from_str("config: {greeting: hi, retries: 3, loud: true, ratio: 0.5}\n")
                .unwrap();
        let values = m.config_values();
        assert_eq!(values["greeting"], "hi");
        assert_eq!(values["retries"], "3");
        assert_eq!(values["loud"], "true");
        assert_eq!(values["ratio"], "0.5");
        let e = serde_norway::from_str::<Manifest>("config: {nested: {a: 1}}\n").unwrap_err();
        assert!(
            e.to_string().contains("strings, numbers or booleans"),
            "{e}"
        );
    }

    #[test]
    fn event_grants_take_patterns_and_subscriptions_short_or_full() {
        let m: Manifest = serde_norway::from_str(
            "permissions:\n  events:\n    publish: [orders.*]\n    subscribe:\n      - orders.>\n      - {topic: audit.*, delivery: concurrent, concurrency: 3, dead_letter: dead.audit}\n",
        )
        .unwrap();
        let subs = m.permissions.events.validate().unwrap();
        assert_eq!(subs[0].topic, "orders.>");
        assert_eq!(subs[0].delivery, Delivery::Ordered);
        assert_eq!(subs[0].max_attempts, 5);
        assert_eq!(subs[1].delivery, Delivery::Concurrent);
        assert_eq!(subs[1].concurrency, 3);
        assert_eq!(subs[1].dead_letter.as_deref(), Some("dead.audit"));
        for bad in [
            "permissions: {events: {publish: [a..b]}}\n",
            "permissions: {events: {subscribe: [a.>.b]}}\n",
            "permissions: {events: {subscribe: [{topic: a, max_attempts: 0}]}}\n",
            "permissions: {events: {subscribe: [{topic: a, dead_letter: a.*}]}}\n",
            "permissions: {events: {subscribe: [{topic: a.>, dead_letter: a.dead}]}}\n",
        ] {
            let m: Manifest = serde_norway::from_str(bad).unwrap();
            assert!(m.permissions.events.validate().is_err(), "{bad}");
        }
        let e = serde_norway::from_str::<Manifest>(
            "permissions: {events: {subscribe: [{topic: a, order: 1}]}}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `order`"), "{e}");
    }
}

//! `apps.NAME.rabbitmq` (the application's broker), `apps.NAME.bridges`
//! (event topics published to an exchange) and a manifest's `consume`
//! (queues whose messages call an action).

use serde::Deserialize;

/// The broker an application's consumers and bridges use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitConfig {
    /// `amqp://user:password@host:port/vhost`.
    #[serde(default)]
    pub url: Option<String>,
    /// Or the variable holding it, to keep a password out of the file.
    #[serde(default)]
    pub url_env: Option<String>,
}

impl RabbitConfig {
    pub(super) fn validate(&self, key: &str) -> Result<(), String> {
        match (&self.url, &self.url_env) {
            (Some(url), None) => check_url(key, url),
            (None, Some(var)) if !var.is_empty() => Ok(()),
            (Some(_), Some(_)) => Err(format!("{key}: give url or url_env, not both")),
            _ => Err(format!("{key}: set url or url_env")),
        }
    }

    /// The URL, read from the environment when `url_env` names it.
    pub fn resolve(&self, key: &str) -> Result<String, String> {
        match (&self.url, &self.url_env) {
            (Some(url), _) => Ok(url.clone()),
            (None, Some(var)) => {
                let url = std::env::var(var).map_err(|_| {
                    format!("{key}.url_env: environment variable `{var}` is not set")
                })?;
                check_url(key, &url)?;
                Ok(url)
            }
            (None, None) => unreachable!("validated"),
        }
    }
}

fn check_url(key: &str, url: &str) -> Result<(), String> {
    if url.starts_with("amqp://") {
        Ok(())
    } else {
        Err(format!(
            "{key}.url: an amqp:// URL is needed (amqps:// is not supported: reach the broker over a network you trust)"
        ))
    }
}

/// `apps.NAME.bridges.BRIDGE`: events on matching topics are published to
/// `exchange` (a durable topic exchange, declared if missing) with the
/// topic as routing key, persistent, confirmed by the broker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    pub events: Vec<String>,
    pub exchange: String,
}

impl BridgeConfig {
    pub(super) fn validate(&self, key: &str) -> Result<(), String> {
        use crate::core::names::valid_topic_pattern;
        if self.events.is_empty() {
            return Err(format!("{key}.events: list at least one topic pattern"));
        }
        if let Some(bad) = self.events.iter().find(|p| !valid_topic_pattern(p)) {
            return Err(format!("{key}.events: `{bad}` is not a topic pattern"));
        }
        valid_broker_name(&self.exchange)
            .map_err(|e| format!("{key}.exchange: `{}` {e}", self.exchange))?;
        if self.exchange.starts_with("amq.") {
            return Err(format!("{key}.exchange: `amq.` names are the broker's own"));
        }
        Ok(())
    }
}

/// A queue or exchange name as AMQP takes it (a short string), kept to
/// printable ASCII so that it reads the same in logs and status.
pub fn valid_broker_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 200 {
        return Err("must be 1 to 200 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return Err("may hold only letters, digits, `.`, `-`, `_` and `:`");
    }
    Ok(())
}

/// One entry of a manifest's `consume`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consume {
    /// The queue (declared durable if missing).
    pub rabbitmq: String,
    /// The action each message's JSON body is the params of.
    pub action: String,
    /// Messages handed to the plugin at once (the channel's prefetch).
    #[serde(default = "Consume::default_prefetch")]
    pub prefetch: u16,
    /// Handlings of one message before it is dead-lettered (1: no retry).
    #[serde(default = "Consume::default_max_attempts")]
    pub max_attempts: u32,
    /// The broker-side wait before the first retry, doubling after each,
    /// up to `max_backoff_ms`.
    #[serde(default = "Consume::default_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "Consume::default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

impl Consume {
    fn default_prefetch() -> u16 {
        8
    }
    fn default_max_attempts() -> u32 {
        5
    }
    fn default_backoff_ms() -> u64 {
        1_000
    }
    fn default_max_backoff_ms() -> u64 {
        300_000
    }

    /// The wait before attempt `attempt` (2 and later).
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let shift = attempt.saturating_sub(2).min(30);
        self.backoff_ms
            .saturating_mul(1 << shift)
            .min(self.max_backoff_ms)
    }

    pub fn validate(&self, at: &str) -> Result<(), String> {
        valid_broker_name(&self.rabbitmq)
            .map_err(|e| format!("{at}.rabbitmq: `{}` {e}", self.rabbitmq))?;
        if self.rabbitmq.starts_with("amq.") {
            return Err(format!("{at}.rabbitmq: `amq.` names are the broker's own"));
        }
        if self.action.is_empty() {
            return Err(format!("{at}.action: name the action to call"));
        }
        if !(1..=1024).contains(&self.prefetch) {
            return Err(format!("{at}.prefetch must be 1 to 1024"));
        }
        if !(1..=20).contains(&self.max_attempts) {
            return Err(format!("{at}.max_attempts must be 1 to 20"));
        }
        if self.backoff_ms == 0
            || self.max_backoff_ms < self.backoff_ms
            || self.max_backoff_ms > 86_400_000
        {
            return Err(format!(
                "{at}: backoff_ms must be at least 1 and at most max_backoff_ms (at most a day)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Manifest};

    const APP: &str = "apps:\n  shop:\n    services: [echo]\n    auth: none\n";

    #[test]
    fn a_bridge_needs_the_application_broker_and_a_fit_exchange() {
        let ok = format!(
            "{APP}    rabbitmq: {{url: \"amqp://guest:guest@127.0.0.1:5672/%2f\"}}\n    bridges:\n      orders: {{events: [orders.>], exchange: shop.orders}}\n"
        );
        let config = Config::parse(&ok).unwrap();
        assert_eq!(
            config.apps["shop"].bridges["orders"].exchange,
            "shop.orders"
        );
        for (bad, says) in [
            (
                format!("{APP}    bridges:\n      orders: {{events: [orders.>], exchange: x}}\n"),
                "no `rabbitmq` broker",
            ),
            (
                format!(
                    "{APP}    rabbitmq: {{url: \"amqp://h\"}}\n    bridges:\n      orders: {{events: [orders.>], exchange: amq.topic}}\n"
                ),
                "the broker's own",
            ),
            (
                format!("{APP}    rabbitmq: {{url: \"amqps://h\"}}\n"),
                "amqp:// URL",
            ),
            (
                format!("{APP}    rabbitmq: {{url: \"amqp://h\", url_env: X}}\n"),
                "not both",
            ),
            (
                format!(
                    "{APP}    rabbitmq: {{url: \"amqp://h\"}}\n    bridges:\n      orders: {{events: [orders.>], exchange: x, kind: fanout}}\n"
                ),
                "unknown field `kind`",
            ),
        ] {
            let e = Config::parse(&bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn consume_entries_are_checked_and_the_waits_double() {
        let m: Manifest = serde_norway::from_str(
            "consume: [{rabbitmq: jobs, action: work, max_attempts: 4, backoff_ms: 100, max_backoff_ms: 250}]\n",
        )
        .unwrap();
        let c = &m.consumers().unwrap()[0];
        assert_eq!(c.prefetch, 8);
        assert_eq!(
            [c.delay_ms(2), c.delay_ms(3), c.delay_ms(4)],
            [100, 200, 250]
        );
        for (bad, says) in [
            (
                "consume: [{rabbitmq: jobs, action: a}, {rabbitmq: jobs, action: b}]\n",
                "consumed twice",
            ),
            (
                "consume: [{rabbitmq: \"a b\", action: a}]\n",
                "may hold only",
            ),
            (
                "consume: [{rabbitmq: jobs, action: a, prefetch: 0}]\n",
                "prefetch",
            ),
            (
                "consume: [{rabbitmq: jobs, action: a, max_attempts: 0}]\n",
                "max_attempts",
            ),
        ] {
            let m: Manifest = serde_norway::from_str(bad).unwrap();
            let e = m.consumers().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}

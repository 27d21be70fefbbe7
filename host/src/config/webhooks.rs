//! `apps.NAME.webhooks`: the endpoints an application's events are POSTed
//! to, signed per Standard Webhooks. Only endpoints written here: a plugin
//! can never make the host send to an address of its choosing.

use std::path::PathBuf;

use serde::Deserialize;

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://host[:port]/path`, or `http://host:port/path` for a
    /// receiver on a network you trust.
    pub url: String,
    /// For `https://`: a PEM file of the certificate authorities to trust
    /// instead of the public ones built in (a private CA, a self-signed
    /// receiver).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The variable holding the secret(s), `whsec_<base64>`; several,
    /// separated by spaces, while a secret is rotated: each signs.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Or a file holding them.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Topic patterns of the application's bus; every event on a matching
    /// topic becomes one delivery.
    pub events: Vec<String>,
    /// How long one attempt may take, connecting included.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// The waits before the second, third... attempt; after the last the
    /// delivery is dead (kept, and `ferry webhooks retry` revives it).
    /// The default is the Standard Webhooks example schedule: 5 s, 5 min,
    /// 30 min, 2 h, 5 h, 10 h, 10 h.
    #[serde(default = "default_retry")]
    pub retry_ms: Vec<u64>,
    /// Attempts in flight to this endpoint at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_timeout() -> u64 {
    15_000
}

fn default_retry() -> Vec<u64> {
    vec![
        5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
    ]
}

fn default_concurrency() -> usize {
    4
}

impl WebhookConfig {
    pub(super) fn validate(&self, key: &str) -> Result<(), String> {
        use crate::core::names::valid_topic_pattern;
        let (rest, tls) = match (
            self.url.strip_prefix("https://"),
            self.url.strip_prefix("http://"),
        ) {
            (Some(rest), _) => (rest, true),
            (None, Some(rest)) => (rest, false),
            _ => {
                return Err(format!(
                    "{key}.url: `{}` is not an https:// or http:// URL",
                    self.url
                ));
            }
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        // https has its default port; a plain http receiver names its own.
        if authority.is_empty()
            || authority.starts_with(':')
            || authority.contains('@')
            || (!tls && !authority.contains(':'))
        {
            return Err(format!(
                "{key}.url: `{}` needs a host{}, and no user",
                self.url,
                if tls { "" } else { " and a port" }
            ));
        }
        if self.ca_file.is_some() && !tls {
            return Err(format!("{key}.ca_file: only for an https:// URL"));
        }
        match (&self.secret_env, &self.secret_file) {
            (None, None) => return Err(format!("{key}: set secret_env or secret_file")),
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{key}: give the secret once: secret_env or secret_file, not both"
                ));
            }
            _ => {}
        }
        if self.events.is_empty() {
            return Err(format!("{key}.events: list at least one topic pattern"));
        }
        if let Some(bad) = self.events.iter().find(|p| !valid_topic_pattern(p)) {
            return Err(format!("{key}.events: `{bad}` is not a topic pattern"));
        }
        if self.timeout_ms == 0 || self.concurrency == 0 {
            return Err(format!(
                "{key}: timeout_ms and concurrency must be at least 1"
            ));
        }
        if self.retry_ms.len() > 32 {
            return Err(format!("{key}.retry_ms: at most 32 retries"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn endpoint(url_and_more: &str) -> Result<Config, String> {
        Config::parse(&format!(
            "apps:\n  shop:\n    services: [echo]\n    auth: none\n    webhooks:\n      billing: {{url: {url_and_more}, secret_env: S, events: [orders.>]}}\n"
        ))
    }

    #[test]
    fn urls_are_https_or_http_with_a_port() {
        for ok in [
            "https://billing.example/hooks",
            "https://billing.example:8443/hooks?x=1",
            "\"https://localhost:9443/h\", ca_file: ca.pem",
            "http://127.0.0.1:9000/h",
        ] {
            endpoint(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, says) in [
            ("ftp://billing.example/", "not an https:// or http://"),
            ("http://billing.example/h", "needs a host and a port"),
            ("https://user@billing.example/h", "no user"),
            ("https:///h", "needs a host"),
            (
                "\"http://127.0.0.1:9000/h\", ca_file: ca.pem",
                "only for an https://",
            ),
        ] {
            let e = endpoint(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}

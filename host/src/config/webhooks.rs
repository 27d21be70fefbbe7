//! `apps.NAME.webhooks`: the endpoints an application's events are POSTed
//! to, signed per Standard Webhooks. Only endpoints written here: a plugin
//! can never make the host send to an address of its choosing.

use std::path::PathBuf;

use serde::Deserialize;

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host:port/path` (the host makes no TLS connections of its
    /// own; put a TLS proxy beside it for an `https://` receiver).
    pub url: String,
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
        let rest = self.url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "{key}.url: `{}` is not an http:// URL (the host makes no TLS connections; put a TLS proxy beside it for https)",
                self.url
            )
        })?;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() || authority.contains('@') || !authority.contains(':') {
            return Err(format!(
                "{key}.url: `{}` needs a host and a port, and no user",
                self.url
            ));
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

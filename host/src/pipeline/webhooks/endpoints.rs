//! The webhooks' endpoints as the config names them (their secrets read),
//! and what every attempt needs of them: the body's timestamp, the
//! signature, the jittered wait.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use tokio::sync::Semaphore;

use super::Key;
use crate::config::{Config, WebhookConfig};
use crate::resources::outbox::Delivery;

/// One configured endpoint.
pub(super) struct Endpoint {
    pub(super) app: String,
    pub(super) name: String,
    pub(super) url: String,
    /// `host:port`, to connect to and to name in `Host`.
    pub(super) authority: String,
    /// For an `https://` URL.
    pub(super) tls: Option<crate::resources::tls::Tls>,
    pub(super) path: String,
    pub(super) secrets: Vec<Vec<u8>>,
    pub(super) patterns: Vec<String>,
    pub(super) timeout: Duration,
    pub(super) retry_ms: Vec<u64>,
    pub(super) slots: Arc<Semaphore>,
    pub(super) concurrency: usize,
    /// Claimed, waiting for a slot.
    pub(super) ahead: Mutex<std::collections::VecDeque<Delivery>>,
}

/// Reads an endpoint's secrets: `whsec_<base64>`, several separated by
/// spaces.
fn secrets(app: &str, name: &str, config: &WebhookConfig) -> Result<Vec<Vec<u8>>, String> {
    let key = format!("apps.{app}.webhooks.{name}");
    let text = match (&config.secret_env, &config.secret_file) {
        (Some(var), _) => std::env::var(var)
            .map_err(|_| format!("{key}.secret_env: environment variable `{var}` is not set"))?,
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| format!("{key}.secret_file: cannot read {}: {e}", file.display()))?,
        (None, None) => unreachable!("validated: one of the two is set"),
    };
    let keys: Result<Vec<Vec<u8>>, String> = text
        .split_whitespace()
        .map(|s| {
            let encoded = s.strip_prefix("whsec_").ok_or_else(|| {
                format!("{key}: a secret has the form whsec_<base64> (Standard Webhooks)")
            })?;
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| format!("{key}: the secret after whsec_ is not base64: {e}"))
        })
        .collect();
    let keys = keys?;
    if keys.is_empty() || keys.iter().any(Vec::is_empty) {
        return Err(format!("{key}: the secret is empty"));
    }
    Ok(keys)
}

/// The endpoints `config` names, with their secrets read; an error names
/// the endpoint and the key.
pub(super) fn endpoints(config: &Config) -> Result<BTreeMap<Key, Arc<Endpoint>>, String> {
    let mut out = BTreeMap::new();
    for (app, app_config) in &config.apps {
        for (name, hook) in &app_config.webhooks {
            let key = format!("apps.{app}.webhooks.{name}");
            let (rest, https) = match hook.url.strip_prefix("https://") {
                Some(rest) => (rest, true),
                None => (hook.url.strip_prefix("http://").expect("validated"), false),
            };
            let (authority, path) = match rest.find(['/', '?']) {
                Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
                Some(i) => (&rest[..i], rest[i..].to_owned()),
                None => (rest, "/".to_owned()),
            };
            // The host part, without a port ("[::1]:8443" is "::1").
            let host = match authority.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(v6),
                None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
            };
            let has_port = match authority.strip_prefix('[') {
                Some(v6) => v6.contains("]:"),
                None => authority.contains(':'),
            };
            let authority = if has_port {
                authority.to_owned()
            } else {
                format!("{authority}:443")
            };
            let tls = https
                .then(|| crate::resources::tls::Tls::new(host, hook.ca_file.as_deref()))
                .transpose()
                .map_err(|e| format!("{key}: {e}"))?;
            out.insert(
                (app.clone(), name.clone()),
                Arc::new(Endpoint {
                    app: app.clone(),
                    name: name.clone(),
                    url: hook.url.clone(),
                    authority,
                    tls,
                    path,
                    secrets: secrets(app, name, hook)?,
                    patterns: hook.events.clone(),
                    timeout: Duration::from_millis(hook.timeout_ms),
                    retry_ms: hook.retry_ms.clone(),
                    slots: Arc::new(Semaphore::new(hook.concurrency)),
                    concurrency: hook.concurrency,
                    ahead: Mutex::default(),
                }),
            );
        }
    }
    Ok(out)
}

/// Milliseconds since the epoch as ISO-8601 in UTC.
pub(super) fn iso8601(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The `webhook-signature` header: one `v1,<base64>` per secret.
pub(super) fn signature(secrets: &[Vec<u8>], id: &str, timestamp: i64, body: &str) -> String {
    secrets
        .iter()
        .map(|key| {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body.as_bytes());
            let digest = mac.finalize().into_bytes();
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A wait of `ms` give or take a tenth, so that retries of many
/// deliveries spread out.
pub(super) fn jittered(ms: u64) -> i64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let spread = (ms / 10) as i64;
    let offset = if spread == 0 {
        0
    } else {
        (i64::from(nanos) % (2 * spread + 1)) - spread
    };
    ms as i64 + offset
}

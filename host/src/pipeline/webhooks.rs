//! Outgoing webhooks: each application's events become signed POSTs to the
//! endpoints its config names. Publishing writes one delivery per matching
//! endpoint into the outbox (`resources::outbox`) before the publisher is
//! answered; a dispatcher takes due deliveries from it, within each
//! endpoint's concurrency, and signs every attempt per Standard Webhooks
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64
//! HMAC-SHA256 of "{id}.{timestamp}.{body}">`). A 2xx delivers; anything
//! else retries on the endpoint's schedule with jitter (`Retry-After` on
//! 429 and 503 is honoured) until the last attempt, which makes it dead;
//! a 410 disables the endpoint.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, WebhookConfig};
use crate::core::names::topic_matches;
use crate::resources::bus::Keeper;
use crate::resources::hooks::post_signed;
use crate::resources::outbox::{Delivery, NewDelivery, Outbox, Outcome};

/// Deliveries looked at per pass of the dispatcher.
const BATCH: i64 = 256;
/// The longest `Retry-After` taken as it is.
const MAX_RETRY_AFTER_MS: i64 = 24 * 3600 * 1000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One configured endpoint.
struct Endpoint {
    app: String,
    name: String,
    url: String,
    authority: String,
    path: String,
    secrets: Vec<Vec<u8>>,
    patterns: Vec<String>,
    timeout: Duration,
    retry_ms: Vec<u64>,
    slots: Arc<Semaphore>,
}

/// What an endpoint has done since the host started, beside what the
/// outbox holds; kept across reloads.
#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    pending: AtomicU64,
    last_error: Mutex<Option<String>>,
    disabled: Mutex<Option<String>>,
}

type Key = (String, String);

pub struct Webhooks {
    outbox: Outbox,
    endpoints: ArcSwap<BTreeMap<Key, Arc<Endpoint>>>,
    counts: Mutex<BTreeMap<Key, Arc<Counts>>>,
    /// Deliveries with an attempt running in this process.
    running: Mutex<HashSet<String>>,
    wake: Notify,
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
fn endpoints(config: &Config) -> Result<BTreeMap<Key, Arc<Endpoint>>, String> {
    let mut out = BTreeMap::new();
    for (app, app_config) in &config.apps {
        for (name, hook) in &app_config.webhooks {
            let rest = hook.url.strip_prefix("http://").expect("validated");
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            out.insert(
                (app.clone(), name.clone()),
                Arc::new(Endpoint {
                    app: app.clone(),
                    name: name.clone(),
                    url: hook.url.clone(),
                    authority: authority.to_owned(),
                    path: path.to_owned(),
                    secrets: secrets(app, name, hook)?,
                    patterns: hook.events.clone(),
                    timeout: Duration::from_millis(hook.timeout_ms),
                    retry_ms: hook.retry_ms.clone(),
                    slots: Arc::new(Semaphore::new(hook.concurrency)),
                }),
            );
        }
    }
    Ok(out)
}

/// Milliseconds since the epoch as ISO-8601 in UTC.
fn iso8601(ms: u64) -> String {
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
fn signature(secrets: &[Vec<u8>], id: &str, timestamp: i64, body: &str) -> String {
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
fn jittered(ms: u64) -> i64 {
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

impl Webhooks {
    /// Opens the outbox under the config's data folder, with the config's
    /// endpoints (secrets read now: a missing one refuses the start).
    pub async fn open(config: &Config) -> Result<Arc<Webhooks>, String> {
        let endpoints = endpoints(config)?;
        let outbox = Outbox::open(&config.data.join("webhooks.sqlite")).await?;
        let webhooks = Arc::new(Webhooks {
            outbox,
            endpoints: ArcSwap::from_pointee(endpoints),
            counts: Mutex::default(),
            running: Mutex::default(),
            wake: Notify::new(),
        });
        webhooks.refresh_counts().await;
        Ok(webhooks)
    }

    /// A reloaded config's endpoints; refused whole when one is not usable.
    pub fn configure(&self, config: &Config) -> Result<(), String> {
        self.endpoints.store(Arc::new(endpoints(config)?));
        self.wake.notify_one();
        Ok(())
    }

    fn counts(&self, app: &str, endpoint: &str) -> Arc<Counts> {
        self.counts
            .lock()
            .expect("counts lock")
            .entry((app.to_owned(), endpoint.to_owned()))
            .or_default()
            .clone()
    }

    /// Pending counts and disabled endpoints, from the outbox.
    async fn refresh_counts(&self) {
        if let Ok(rows) = self.outbox.counts().await {
            for (app, endpoint, state, n) in rows {
                if state == "pending" {
                    self.counts(&app, &endpoint)
                        .pending
                        .store(n as u64, Ordering::Relaxed);
                }
            }
        }
        if let Ok(rows) = self.outbox.disabled().await {
            let endpoints = self.endpoints.load();
            for (app, endpoint, url, reason) in rows {
                // A new URL is a new endpoint: the 410 was the old one's.
                let same = endpoints
                    .get(&(app.clone(), endpoint.clone()))
                    .is_some_and(|e| e.url == url);
                if same {
                    *self.counts(&app, &endpoint).disabled.lock().expect("lock") = Some(reason);
                }
            }
        }
    }

    fn disabled(&self, app: &str, endpoint: &str) -> bool {
        self.counts(app, endpoint)
            .disabled
            .lock()
            .expect("lock")
            .is_some()
    }

    /// Sends due deliveries until `stop`.
    pub async fn dispatch(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let now = now_ms();
            let due = match self.outbox.due(now, BATCH).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!("webhooks outbox: cannot read due deliveries: {e}");
                    Vec::new()
                }
            };
            let endpoints = self.endpoints.load();
            for delivery in due {
                let key = (delivery.app.clone(), delivery.endpoint.clone());
                // An endpoint no longer configured keeps its deliveries
                // pending, for when it comes back.
                let Some(endpoint) = endpoints.get(&key).cloned() else {
                    continue;
                };
                if self.disabled(&delivery.app, &delivery.endpoint)
                    || self
                        .running
                        .lock()
                        .expect("running lock")
                        .contains(&delivery.id)
                {
                    continue;
                }
                let Ok(permit) = endpoint.slots.clone().try_acquire_owned() else {
                    continue;
                };
                let lease = now + endpoint.timeout.as_millis() as i64 + 5_000;
                if !matches!(self.outbox.claim(&delivery.id, now, lease).await, Ok(true)) {
                    continue;
                }
                self.running
                    .lock()
                    .expect("running lock")
                    .insert(delivery.id.clone());
                let webhooks = self.clone();
                tokio::spawn(async move {
                    let id = delivery.id.clone();
                    webhooks.attempt(&endpoint, delivery).await;
                    webhooks.running.lock().expect("running lock").remove(&id);
                    drop(permit);
                    webhooks.wake.notify_one();
                });
            }
            let wait = match self.outbox.next_due().await {
                Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(20, 1_000) as u64),
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = self.outbox.committed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn attempt(&self, endpoint: &Endpoint, delivery: Delivery) {
        let timestamp = now_ms() / 1000;
        let headers = [
            ("webhook-id", delivery.id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                signature(&endpoint.secrets, &delivery.id, timestamp, &delivery.body),
            ),
        ];
        let sent = tokio::time::timeout(
            endpoint.timeout,
            post_signed(
                &endpoint.authority,
                &endpoint.path,
                &headers,
                delivery.body.as_bytes(),
            ),
        )
        .await;
        let (status, retry_after, error) = match sent {
            Err(_) => (
                None,
                None,
                format!("no answer within {:?}", endpoint.timeout),
            ),
            Ok(Err(e)) => (None, None, e),
            Ok(Ok((status, retry_after))) => (
                Some(status),
                retry_after,
                format!("{} answered {status}", endpoint.url),
            ),
        };
        let counts = self.counts(&endpoint.app, &endpoint.name);
        let now = now_ms();
        let attempts = delivery.attempts as usize + 1;
        let outcome = match status {
            Some(s) if (200..300).contains(&s) => Outcome::Delivered { status: s },
            Some(410) => {
                let reason = format!("{} answered 410 Gone", endpoint.url);
                tracing::warn!(
                    app = endpoint.app,
                    endpoint = endpoint.name,
                    "webhook endpoint disabled: {reason}"
                );
                if let Err(e) = self
                    .outbox
                    .disable(&endpoint.app, &endpoint.name, &endpoint.url, &reason, now)
                    .await
                {
                    tracing::error!("webhooks outbox: cannot record a disabled endpoint: {e}");
                }
                *counts.disabled.lock().expect("lock") = Some(reason.clone());
                Outcome::Dead {
                    status,
                    error: reason,
                }
            }
            _ if attempts > endpoint.retry_ms.len() => Outcome::Dead { status, error },
            _ => {
                let scheduled = jittered(endpoint.retry_ms[attempts - 1]);
                // The receiver's own wait, on 429 and 503, when it gives one.
                let asked = matches!(status, Some(429 | 503))
                    .then_some(retry_after)
                    .flatten()
                    .map(|s| (s as i64 * 1000).min(MAX_RETRY_AFTER_MS));
                Outcome::Retry {
                    status,
                    error,
                    next_at_ms: now + asked.unwrap_or(scheduled),
                }
            }
        };
        match &outcome {
            Outcome::Delivered { .. } => {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
                let _ = counts
                    .pending
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(1))
                    });
            }
            Outcome::Retry { error, .. } => {
                counts.retried.fetch_add(1, Ordering::Relaxed);
                *counts.last_error.lock().expect("lock") = Some(error.clone());
            }
            Outcome::Dead { error, .. } => {
                counts.dead.fetch_add(1, Ordering::Relaxed);
                let _ = counts
                    .pending
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(1))
                    });
                *counts.last_error.lock().expect("lock") = Some(error.clone());
                tracing::warn!(
                    id = delivery.id,
                    app = endpoint.app,
                    endpoint = endpoint.name,
                    attempts,
                    "webhook delivery dead: {error}"
                );
            }
        }
        // Until this is written the lease stands, so a crash here sends
        // the delivery again (with the same id) after the lease.
        if let Err(e) = self.outbox.finish(&delivery.id, now, &outcome).await {
            tracing::error!(
                id = delivery.id,
                "webhooks outbox: cannot record an attempt: {e}"
            );
        }
    }

    /// Per endpoint: its URL, counts and state, for the status document.
    pub fn status(&self) -> Vec<Value> {
        let endpoints = self.endpoints.load();
        endpoints
            .values()
            .map(|e| {
                let c = self.counts(&e.app, &e.name);
                json!({
                    "app": e.app,
                    "endpoint": e.name,
                    "url": e.url,
                    "pending": c.pending.load(Ordering::Relaxed),
                    "delivered": c.delivered.load(Ordering::Relaxed),
                    "retried": c.retried.load(Ordering::Relaxed),
                    "dead": c.dead.load(Ordering::Relaxed),
                    "last_error": *c.last_error.lock().expect("lock"),
                    "disabled": *c.disabled.lock().expect("lock"),
                })
            })
            .collect()
    }

    /// `ferry webhooks list [--dead]`.
    pub async fn list(&self, dead_only: bool) -> Result<Value, String> {
        let deliveries = self
            .outbox
            .list(dead_only, 1_000)
            .await
            .map_err(|e| format!("the webhooks outbox: {e}"))?;
        Ok(json!({ "deliveries": deliveries }))
    }

    /// `ferry webhooks retry ID`: a dead delivery is due again now, and its
    /// endpoint, if a 410 disabled it, is enabled again.
    pub async fn retry(&self, id: &str) -> Result<Value, String> {
        let revived = self
            .outbox
            .revive(id, now_ms())
            .await
            .map_err(|e| format!("the webhooks outbox: {e}"))?
            .ok_or_else(|| format!("no dead delivery `{id}`"))?;
        let counts = self.counts(&revived.app, &revived.endpoint);
        if self
            .outbox
            .enable(&revived.app, &revived.endpoint)
            .await
            .unwrap_or(false)
        {
            *counts.disabled.lock().expect("lock") = None;
        }
        counts.pending.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        Ok(json!({ "delivery": revived }))
    }
}

impl Keeper for Webhooks {
    fn keep(
        &self,
        app: &str,
        topic: &str,
        id: &str,
        source_time_ms: u64,
        payload: &str,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let endpoints = self.endpoints.load();
        let wanted: Vec<&Arc<Endpoint>> = endpoints
            .values()
            .filter(|e| e.app == app && e.patterns.iter().any(|p| topic_matches(p, topic)))
            .filter(|e| !self.disabled(&e.app, &e.name))
            .collect();
        if wanted.is_empty() {
            return None;
        }
        let topic_json = serde_json::to_string(topic).expect("a string");
        let body = format!(
            r#"{{"type":{topic_json},"timestamp":"{}","data":{payload}}}"#,
            iso8601(source_time_ms)
        );
        let at_ms = now_ms();
        let deliveries = wanted
            .iter()
            .map(|e| {
                self.counts(&e.app, &e.name)
                    .pending
                    .fetch_add(1, Ordering::Relaxed);
                NewDelivery {
                    id: format!("msg_{id}_{}", e.name),
                    app: app.to_owned(),
                    endpoint: e.name.clone(),
                    topic: topic.to_owned(),
                    body: body.clone(),
                    at_ms,
                }
            })
            .collect();
        Some(self.outbox.keep(deliveries))
    }
}

//! Outgoing webhooks: each application's events become signed POSTs to the
//! endpoints its config names. Publishing writes one delivery per matching
//! endpoint into the outbox (`resources::outbox`) before the publisher is
//! answered; a dispatcher takes due deliveries from it, within each
//! endpoint's concurrency, and signs every attempt per Standard Webhooks
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64
//! HMAC-SHA256 of "{id}.{timestamp}.{body}">`). A 2xx delivers; anything
//! else retries on the endpoint's schedule with jitter (`Retry-After` on
//! 429 and 503 is honoured) until the last attempt, which makes it dead;
//! a 410 disables the endpoint. In cluster mode the deliveries go through
//! the cluster's JetStream stream instead (`queue`).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::names::topic_matches;
use crate::resources::bus::Keeper;
use crate::resources::hooks::post_signed;
use crate::resources::outbox::{Delivery, NewDelivery, Outbox, Outcome};

mod endpoints;
mod queue;
use endpoints::{Endpoint, endpoints, iso8601, jittered, signature};

/// Deliveries claimed ahead of the endpoint's free slots, per slot: enough
/// that slots never wait for the outbox's next commit.
const AHEAD: usize = 4;
/// Deliveries looked at per pass of the dispatcher.
const BATCH: usize = 256;
/// Delivered deliveries are kept an hour (for a look with sqlite3), then
/// forgotten; the check runs once a minute.
pub(super) const KEEP_DELIVERED_MS: i64 = 3_600_000;
pub(super) const PRUNE_EVERY_MS: i64 = 60_000;
/// The longest `Retry-After` taken as it is.
const MAX_RETRY_AFTER_MS: i64 = 24 * 3600 * 1000;

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What an endpoint has done since the host started, beside what the
/// outbox holds; kept across reloads.
#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    pending: AtomicU64,
    /// In the cluster's stream (cluster mode), as last seen.
    queued: AtomicU64,
    last_error: Mutex<Option<String>>,
    disabled: Mutex<Option<String>>,
}

type Key = (String, String);

pub struct Webhooks {
    outbox: Arc<Outbox>,
    /// Cluster mode's stream, once joined.
    queue: OnceLock<Arc<queue::Queue>>,
    endpoints: ArcSwap<BTreeMap<Key, Arc<Endpoint>>>,
    counts: Mutex<BTreeMap<Key, Arc<Counts>>>,
    /// Deliveries with an attempt running in this process.
    running: Mutex<HashSet<String>>,
    wake: Notify,
}

impl Webhooks {
    /// Opens the outbox under the config's data folder, with the config's
    /// endpoints (secrets read now: a missing one refuses the start).
    pub async fn open(config: &Config) -> Result<Arc<Webhooks>, String> {
        let endpoints = endpoints(config)?;
        let outbox = Outbox::open(&config.data.join("webhooks.sqlite"), "webhooks").await?;
        match outbox.release_leases().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "webhooks: {n} deliveries were in flight when the host last stopped; sending them again"
            ),
            Err(e) => return Err(format!("the webhooks outbox: {e}")),
        }
        let webhooks = Arc::new(Webhooks {
            outbox: Arc::new(outbox),
            queue: OnceLock::new(),
            endpoints: ArcSwap::from_pointee(endpoints),
            counts: Mutex::default(),
            running: Mutex::default(),
            wake: Notify::new(),
        });
        webhooks.refresh_counts().await;
        Ok(webhooks)
    }

    /// A reloaded config's endpoints; refused whole when one is not usable.
    pub fn configure(self: &Arc<Self>, config: &Config) -> Result<(), String> {
        self.endpoints.store(Arc::new(endpoints(config)?));
        self.sync_workers();
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
        let mut commits = self.outbox.commits();
        let mut pruned_at = 0;
        loop {
            let now = now_ms();
            if now - pruned_at > PRUNE_EVERY_MS {
                pruned_at = now;
                if let Err(e) = self.outbox.prune(now - KEEP_DELIVERED_MS).await {
                    tracing::warn!("webhooks outbox: cannot forget delivered deliveries: {e}");
                }
            }
            let endpoints = self.endpoints.load();
            // Per endpoint, as many due deliveries as it has free slots and
            // room ahead, claimed together in one transaction. Those claimed
            // ahead wait in memory for a slot: an attempt that ends takes
            // the next at once, without waiting for the outbox.
            let mut claims = Vec::new();
            for (key, endpoint) in endpoints.iter() {
                if self.disabled(&key.0, &key.1) {
                    endpoint.ahead.lock().expect("ahead lock").clear();
                    continue;
                }
                let free = endpoint.slots.available_permits();
                let room = (AHEAD * endpoint.concurrency)
                    .saturating_sub(endpoint.ahead.lock().expect("ahead lock").len());
                let want = (free + room).min(BATCH);
                if want == 0 {
                    continue;
                }
                let due = match self.outbox.due_for(&key.0, &key.1, now, want as i64).await {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::error!("webhooks outbox: cannot read due deliveries: {e}");
                        continue;
                    }
                };
                // Time for its turn and its attempt.
                let lease = now + (AHEAD as i64 + 1) * endpoint.timeout.as_millis() as i64 + 5_000;
                for delivery in due {
                    if !self
                        .running
                        .lock()
                        .expect("running lock")
                        .contains(&delivery.id)
                    {
                        claims.push((delivery, endpoint.clone(), lease));
                    }
                }
            }
            let leases: Vec<(String, i64)> = claims
                .iter()
                .map(|(d, _, lease)| (d.id.clone(), *lease))
                .collect();
            let taken: HashSet<String> = if leases.is_empty() {
                HashSet::new()
            } else {
                match self.outbox.claim_many(leases, now).await {
                    Ok(taken) => taken.into_iter().collect(),
                    Err(e) => {
                        tracing::error!("webhooks outbox: cannot claim deliveries: {e}");
                        HashSet::new()
                    }
                }
            };
            for (delivery, endpoint, _) in claims {
                if !taken.contains(&delivery.id) {
                    continue;
                }
                self.running
                    .lock()
                    .expect("running lock")
                    .insert(delivery.id.clone());
                match endpoint.slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(self.clone().send_in_turn(endpoint, delivery, permit));
                    }
                    Err(_) => endpoint
                        .ahead
                        .lock()
                        .expect("ahead lock")
                        .push_back(delivery),
                }
            }
            let wait = match self.outbox.next_due().await {
                Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(20, 1_000) as u64),
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = commits.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sends `delivery`, then whatever the endpoint has claimed ahead, in
    /// one of its slots.
    async fn send_in_turn(
        self: Arc<Self>,
        endpoint: Arc<Endpoint>,
        mut delivery: Delivery,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        loop {
            let id = delivery.id.clone();
            self.attempt(&endpoint, delivery).await;
            self.running.lock().expect("running lock").remove(&id);
            let (next, left) = {
                let mut ahead = endpoint.ahead.lock().expect("ahead lock");
                (ahead.pop_front(), ahead.len())
            };
            // The dispatcher refills once half of what is ahead is gone,
            // not after every attempt: each pass costs queries.
            if left <= AHEAD * endpoint.concurrency / 2 {
                self.wake.notify_one();
            }
            match next {
                Some(next) if !self.disabled(&endpoint.app, &endpoint.name) => delivery = next,
                _ => break,
            }
        }
        drop(permit);
    }

    async fn attempt(&self, endpoint: &Endpoint, delivery: Delivery) {
        let attempts = delivery.attempts as usize + 1;
        let outcome = self
            .try_once(endpoint, &delivery.id, &delivery.body, attempts)
            .await;
        if !matches!(outcome, Outcome::Retry { .. }) {
            let _ = self
                .counts(&endpoint.app, &endpoint.name)
                .pending
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
        }
        // Until this is written the lease stands, so a crash before it
        // sends the delivery again (with the same id) after the lease.
        self.outbox.finish(&delivery.id, now_ms(), outcome);
    }

    /// Attempt number `attempts` of delivery `id`: sent, judged, counted.
    async fn try_once(
        &self,
        endpoint: &Endpoint,
        id: &str,
        body: &str,
        attempts: usize,
    ) -> Outcome {
        let timestamp = now_ms() / 1000;
        let headers = [
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                signature(&endpoint.secrets, id, timestamp, body),
            ),
        ];
        let sent = tokio::time::timeout(
            endpoint.timeout,
            post_signed(
                &endpoint.authority,
                endpoint.tls.as_ref(),
                &endpoint.path,
                &headers,
                body.as_bytes(),
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
            }
            Outcome::Retry { error, .. } => {
                counts.retried.fetch_add(1, Ordering::Relaxed);
                *counts.last_error.lock().expect("lock") = Some(error.clone());
            }
            Outcome::Dead { error, .. } => {
                counts.dead.fetch_add(1, Ordering::Relaxed);
                *counts.last_error.lock().expect("lock") = Some(error.clone());
                tracing::warn!(
                    id,
                    app = endpoint.app,
                    endpoint = endpoint.name,
                    attempts,
                    "webhook delivery dead: {error}"
                );
            }
        }
        outcome
    }

    /// Per endpoint: its URL, counts and state, for the status document.
    pub fn status(&self) -> Vec<Value> {
        let endpoints = self.endpoints.load();
        let in_cluster = self.queue.get().is_some_and(|q| q.ready());
        endpoints
            .values()
            .map(|e| {
                let c = self.counts(&e.app, &e.name);
                json!({
                    "app": e.app,
                    "endpoint": e.name,
                    "url": e.url,
                    "pending": c.pending.load(Ordering::Relaxed) + c.queued.load(Ordering::Relaxed),
                    // Cluster mode, once the stream is there: what it holds.
                    "queued_in_cluster": in_cluster.then(|| c.queued.load(Ordering::Relaxed)),
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
        let queue = self.queue.get().filter(|q| q.ready());
        let deliveries: Vec<(NewDelivery, Arc<Counts>)> = wanted
            .iter()
            .map(|e| {
                let counts = self.counts(&e.app, &e.name);
                if queue.is_none() {
                    counts.pending.fetch_add(1, Ordering::Relaxed);
                }
                let delivery = NewDelivery {
                    id: format!("msg_{id}_{}", e.name),
                    app: app.to_owned(),
                    endpoint: e.name.clone(),
                    topic: topic.to_owned(),
                    body: body.clone(),
                    at_ms,
                };
                (delivery, counts)
            })
            .collect();
        Some(match queue {
            Some(queue) => queue.keep(self.outbox.clone(), deliveries),
            None => self
                .outbox
                .keep(deliveries.into_iter().map(|(d, _)| d).collect()),
        })
    }
}

//! Cluster mode: hosts joined through NATS share their services and their
//! events. Requests for a service served elsewhere are forwarded
//! (`requests`); events cross to every host, and each plugin subscription
//! handles an event once per cluster (`events`); answers of asynchronous
//! requests go through a JetStream work queue (`replies`). Hosts of one
//! cluster
//! trust each other: a forwarded plugin call keeps its caller's verified
//! identity.

mod events;
mod hosts;
mod replies;
mod requests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use crate::config::ClusterConfig;

/// A NATS client as `config` says. A host waits for a server that is not
/// up yet (`wait`); the command line says at once that it cannot reach it.
pub async fn client(config: &ClusterConfig, wait: bool) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("ferry {}", config.name))
        .max_reconnects(None::<usize>)
        // Forwarded requests carry their own deadlines.
        .request_timeout(None);
    if wait {
        options = options.retry_on_initial_connect();
    }
    if let Some(file) = &config.credentials_file {
        options = options
            .credentials_file(file)
            .await
            .map_err(|e| format!("cluster.credentials_file: {}: {e}", file.display()))?;
    }
    if let Some(var) = &config.token_env {
        let token = std::env::var(var)
            .map_err(|_| format!("cluster.token_env: environment variable `{var}` is not set"))?;
        options = options.token(token);
    }
    if let Some(file) = &config.ca_file {
        options = options.add_root_certificates(file.clone());
    }
    let urls: Vec<&str> = config.nats.split(',').map(str::trim).collect();
    options
        .connect(urls.as_slice())
        .await
        .map_err(|e| format!("cluster.nats: cannot use {}: {e}", config.nats))
}

/// One (application, service) this host answers for.
struct Serving {
    stop: CancellationToken,
    ready: Arc<AtomicBool>,
}

pub struct Cluster {
    client: async_nats::Client,
    name: String,
    serving: Mutex<HashMap<(Arc<str>, String), Serving>>,
    forwarded: AtomicU64,
    forward_failures: AtomicU64,
    served: AtomicU64,
    events: events::Events,
    hosts: hosts::Hosts,
    replies: replies::Replies,
    /// Ends every task of the cluster's when the host stops.
    stopping: CancellationToken,
}

impl Cluster {
    /// Connects to NATS. A server that is not up yet is waited for in the
    /// background (requests meanwhile fail as `unavailable`), so the host
    /// starts either way.
    pub async fn connect(config: &ClusterConfig) -> Result<Arc<Cluster>, String> {
        let client = client(config, true).await?;
        let stopping = CancellationToken::new();
        let cluster = Arc::new(Cluster {
            events: events::Events::start(client.clone(), stopping.clone()),
            hosts: hosts::Hosts::default(),
            replies: replies::Replies::new(client.clone()),
            stopping,
            client,
            name: config.name.clone(),
            serving: Mutex::default(),
            forwarded: AtomicU64::new(0),
            forward_failures: AtomicU64::new(0),
            served: AtomicU64::new(0),
        });
        cluster.start_hosts();
        Ok(cluster)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Subscribes to `subject` (in `queue` when given), retrying while
    /// NATS cannot be reached; answers once the server has the
    /// subscription (a flush is a round trip), or `None` when stopped.
    async fn subscribed(
        &self,
        subject: &str,
        queue: Option<&str>,
        stop: &CancellationToken,
    ) -> Option<async_nats::Subscriber> {
        let subscriber = loop {
            let subscribing = match queue {
                Some(queue) => {
                    self.client
                        .queue_subscribe(subject.to_owned(), queue.to_owned())
                        .await
                }
                None => self.client.subscribe(subject.to_owned()).await,
            };
            match subscribing {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(subject, "cannot subscribe on NATS, trying again: {e}");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                flushed = self.client.flush() => {
                    if flushed.is_ok() {
                        return Some(subscriber);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Answers for the services this host serves, per application; stops
    /// answering for those it no longer serves.
    pub(super) fn sync(self: &Arc<Self>, pipeline: &Arc<Pipeline>) {
        let apps = pipeline.apps();
        let mut wanted = Vec::new();
        for name in apps.names() {
            let Some(app) = apps.get(name) else { continue };
            for plugin in pipeline.table.plugins() {
                if app.serves(plugin.name()) {
                    wanted.push((app.name.clone(), plugin.name().to_owned()));
                }
            }
        }
        let mut serving = self.serving.lock().expect("serving lock");
        serving.retain(|key, s| {
            let keep = wanted.contains(key);
            if !keep {
                s.stop.cancel();
            }
            keep
        });
        for key in wanted {
            if serving.contains_key(&key) {
                continue;
            }
            let s = Serving {
                stop: CancellationToken::new(),
                ready: Arc::default(),
            };
            tokio::spawn(self.clone().answer(
                Arc::downgrade(pipeline),
                key.clone(),
                s.stop.clone(),
                s.ready.clone(),
            ));
            serving.insert(key, s);
        }
        drop(serving);
        self.sync_events(pipeline);
        self.start_replies(pipeline);
    }

    pub(super) fn stop(&self) {
        for (_, s) in self.serving.lock().expect("serving lock").drain() {
            s.stop.cancel();
        }
        self.events.stop();
        self.stopping.cancel();
    }

    /// This host in the cluster, for the status document.
    pub fn status(&self) -> Value {
        let (hosts, services) = self.hosts_status();
        let serving = self.serving.lock().expect("serving lock");
        let mut answering: Vec<Value> = serving
            .iter()
            .map(|((app, service), s)| {
                json!({"app": &**app, "service": service, "ready": s.ready.load(Ordering::Relaxed)})
            })
            .collect();
        answering.sort_by_key(|v| (v["app"].to_string(), v["service"].to_string()));
        json!({
            "name": self.name,
            "connected": self.connected(),
            "answering": answering,
            "forwarded": self.forwarded.load(Ordering::Relaxed),
            "forward_failures": self.forward_failures.load(Ordering::Relaxed),
            "served_for_others": self.served.load(Ordering::Relaxed),
            "events": self.events.status(),
            "replies": self.replies.status(),
            "hosts": hosts,
            "services": services,
        })
    }
}

//! Who is in the cluster, for status: every host says every two seconds on
//! `ferry.hosts.<name>` which services it answers for, and every host keeps
//! what it heard for three such periods. Nothing routes by this: NATS does
//! the routing; this only shows it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Cluster;

const EVERY: Duration = Duration::from_secs(2);
const FORGET: Duration = Duration::from_secs(6);

#[derive(Serialize, Deserialize)]
struct Announce {
    name: String,
    serves: Vec<(String, String)>,
}

/// What a host serves, and when it last said so.
type Heard = (Vec<(String, String)>, Instant);

/// What was last heard from each host.
#[derive(Default)]
pub(super) struct Hosts {
    heard: Mutex<HashMap<String, Heard>>,
}

impl Cluster {
    /// Says what this host serves, and listens to the others, until the
    /// cluster stops.
    pub(super) fn start_hosts(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let stop = this.stopping.clone();
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let announce = Announce {
                    name: this.name.clone(),
                    serves: this.answering_for(),
                };
                let body = serde_json::to_vec(&announce).expect("serializes");
                // While NATS is away the client buffers; a lost one is
                // made up for by the next.
                let _ = this
                    .client
                    .publish(format!("ferry.hosts.{}", this.name), body.into())
                    .await;
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            let stop = this.stopping.clone();
            let Some(mut heard) = this.subscribed("ferry.hosts.*", None, &stop).await else {
                return;
            };
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => return,
                    message = heard.next() => match message {
                        Some(message) => message,
                        None => return,
                    },
                };
                if let Ok(a) = serde_json::from_slice::<Announce>(&message.payload) {
                    this.hosts
                        .heard
                        .lock()
                        .expect("hosts lock")
                        .insert(a.name, (a.serves, Instant::now()));
                }
            }
        });
    }

    /// The (application, service) pairs this host answers for.
    fn answering_for(&self) -> Vec<(String, String)> {
        let serving = self.serving.lock().expect("serving lock");
        let mut list: Vec<(String, String)> = serving
            .keys()
            .map(|(app, service)| (app.to_string(), service.clone()))
            .collect();
        list.sort();
        list
    }

    /// The hosts heard from lately, and per service who serves it: this
    /// host (`local`), others (`remote`), or both.
    pub(super) fn hosts_status(&self) -> (Value, Value) {
        let now = Instant::now();
        let mut heard = self.hosts.heard.lock().expect("hosts lock");
        heard.retain(|_, (_, at)| now.duration_since(*at) < FORGET);
        let mut hosts: Vec<Value> = heard
            .iter()
            .map(|(name, (serves, at))| {
                json!({
                    "name": name,
                    "this": *name == self.name,
                    "serves": serves.iter().map(|(a, s)| json!({"app": a, "service": s})).collect::<Vec<_>>(),
                    "last_seen_ms": now.duration_since(*at).as_millis() as u64,
                })
            })
            .collect();
        hosts.sort_by_key(|h| h["name"].as_str().unwrap_or("").to_owned());
        let mut by_service: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for (name, (serves, _)) in heard.iter() {
            if *name == self.name {
                continue;
            }
            for key in serves {
                by_service
                    .entry(key.clone())
                    .or_default()
                    .insert(name.clone());
            }
        }
        drop(heard);
        let local: BTreeSet<(String, String)> = self.answering_for().into_iter().collect();
        for key in &local {
            by_service.entry(key.clone()).or_default();
        }
        let services: Vec<Value> = by_service
            .into_iter()
            .map(|((app, service), others)| {
                let here = local.contains(&(app.clone(), service.clone()));
                let served = match (here, others.is_empty()) {
                    (true, true) => "local",
                    (true, false) => "both",
                    _ => "remote",
                };
                json!({"app": app, "service": service, "served": served, "remote_hosts": others})
            })
            .collect();
        (Value::Array(hosts), Value::Array(services))
    }
}

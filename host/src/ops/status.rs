//! The status document: every service's state, version, settings, health,
//! circuit and counters, the versions still draining, and the applications.
//! `/v1/status` and the control socket answer it; `ferry status` prints it.

use std::time::Instant;

use serde_json::{Value, json};

use crate::pipeline::Pipeline;
use crate::runtime::{Plugin, unix_seconds};

/// A loaded version as status shows it.
fn version(plugin: &Plugin, now: Instant) -> Value {
    let circuit = plugin.circuit(now);
    let state = match circuit.state {
        "closed" => "ready",
        other => other,
    };
    json!({
        "name": plugin.name(),
        "state": state,
        "version": plugin.version(),
        "world": plugin.world(),
        "deployment": plugin.deployment(),
        "loaded_at_unix_s": unix_seconds(plugin.loaded_at()),
        "limits": plugin.limits(),
        "public": plugin.public_actions(),
        "database": plugin.database_granted(),
        "events": {
            "handler": plugin.has_event_handler(),
            "publish": &*plugin.settings().publish,
            "subscribe": plugin.settings().subscriptions.iter().map(|s| &s.topic).collect::<Vec<_>>(),
        },
        "config_keys": plugin.settings().config.keys().collect::<Vec<_>>(),
        "health": plugin.health_status(),
        "circuit": circuit,
        "stats": plugin.stats.snapshot(),
        "idle_instances": plugin.idle_instances(),
        "log_lines_dropped": plugin.log_dropped(),
    })
}

pub fn document(pipeline: &Pipeline, started: Instant) -> Value {
    let table = pipeline.table();
    let now = Instant::now();
    let mut services: Vec<Value> = table
        .plugins()
        .iter()
        .map(|plugin| {
            let mut entry = version(plugin, now);
            entry["rejected"] = json!(table.rejected(plugin.name()));
            entry
        })
        .collect();
    services.extend(table.failed().into_iter().map(|(name, rejection)| {
        json!({ "name": name, "state": "failed", "error": rejection.reason, "rejected": rejection })
    }));
    services.extend(
        table
            .loading()
            .into_iter()
            .map(|name| json!({ "name": name, "state": "loading" })),
    );
    services.extend(pipeline.missing().into_iter().map(|name| {
        json!({ "name": name, "state": "missing", "error": "listed by an application, but no plugin by this name" })
    }));
    let draining: Vec<Value> = table
        .draining()
        .iter()
        .map(|plugin| {
            json!({
                "name": plugin.name(),
                "version": plugin.version(),
                "deployment": plugin.deployment(),
                "in_flight": plugin.stats.snapshot().in_flight,
            })
        })
        .collect();
    json!({
        "uptime_s": started.elapsed().as_secs(),
        "services": services,
        "draining": draining,
        "apps": pipeline.apps().describe(),
        "events": pipeline.bus().describe(),
        "subscriptions": pipeline.subscriptions(),
        "async_requests": pipeline.tracker().status(),
        "webhooks": pipeline.webhooks().map(|w| w.status()).unwrap_or_default(),
        "rabbitmq": pipeline.rabbitmq_status(),
        "cluster": pipeline.cluster().map(|c| c.status()),
        "calls": pipeline.call_pairs().into_iter().map(|(caller, callee, c)| json!({
            "caller": caller, "callee": callee, "calls": c.calls, "errors": c.errors,
        })).collect::<Vec<_>>(),
    })
}

//! Config reloads (SIGHUP, `ferry reload`): the new file is checked whole
//! against every serving plugin before anything changes, then plugins
//! whose effective settings moved are rebuilt, then the applications are
//! swapped. Settings that belong to sockets and listeners already open
//! keep their running values until a restart.

use std::sync::Arc;

use serde_json::{Value, json};

use super::Deployer;
use super::source::settings;
use crate::config::Config;
use crate::pipeline::Apps;

impl Deployer {
    /// Reads the config file again and applies it: applications, hosts,
    /// keys, databases and plugin limits change without dropping a
    /// connection. A file that is wrong anywhere (a key that does not load,
    /// a manifest that does not hold under the new defaults) changes
    /// nothing. Answers what changed.
    #[tracing::instrument(name = "reload", skip(self))]
    pub async fn reload(&self) -> Result<Value, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.config();
        let mut next = match &self.config_path {
            Some(path) => Config::load(path).map_err(|e| e.to_string())?,
            None => (*current).clone(),
        };
        let needs_restart = keep_restart_only(&current, &mut next);
        {
            let deployed = self.deployed.lock().await;
            for (name, source) in &deployed.serving {
                let path = next.plugins.join(format!("{name}.yaml"));
                settings(&path, source.manifest.as_deref(), &next.defaults)
                    .map_err(|e| format!("under the new defaults, {e}"))?;
            }
        }
        let apps = Apps::build(&next, true, Some(&self.pipeline.apps()))
            .map_err(|e| format!("invalid config: {e}"))?;
        if let Some(webhooks) = self.pipeline.webhooks() {
            webhooks
                .configure(&next)
                .map_err(|e| format!("invalid config: {e}"))?;
        }
        if let Some(bridges) = self.pipeline.bridges() {
            bridges
                .configure(&next)
                .map_err(|e| format!("invalid config: {e}"))?;
        }
        for key in &needs_restart {
            tracing::warn!(
                key,
                "changed in the config, but takes effect only on restart"
            );
        }
        *self.config.write().expect("config lock") = Arc::new(next);
        // Plugins first, then the applications: routes never point at a
        // service whose new limits are not in force yet.
        self.deployed.lock().await.refused.clear();
        let (changed, refused) = self.reconcile_all().await;
        self.pipeline.set_apps(apps);
        self.pipeline
            .set_loading_wait(self.config().defaults.timeout_ms);
        self.pipeline.sync_triggers();
        tracing::info!(plugins_changed = ?changed, plugins_refused = ?refused, "config reloaded");
        Ok(json!({
            "apps": self.pipeline.apps().names(),
            "plugins_changed": changed,
            "plugins_refused": refused,
            "needs_restart": needs_restart,
        }))
    }
}

/// Settings that belong to sockets, listeners, folders and the engine,
/// all set up once at start: a reload keeps the running values (named in
/// the answer) and applies the rest.
fn keep_restart_only(current: &Config, next: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($($field:ident),*) => {$(
            if next.$field != current.$field {
                kept.push(stringify!($field));
                next.$field = current.$field.clone();
            }
        )*};
    }
    keep!(
        socket,
        http,
        admin,
        events,
        websocket,
        plugins,
        data,
        max_frame_bytes,
        idle_timeout_ms,
        max_connections,
        max_unsent_bytes,
        write_timeout_ms,
        max_instances,
        max_call_depth,
        compile_jobs,
        cluster
    );
    kept
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_reload_keeps_what_needs_a_restart() {
        let current = Config::parse("socket: a.sock\ndefaults: {timeout_ms: 10}\n").unwrap();
        let mut next = Config::parse(
            "socket: b.sock\nhttp: null\nmax_unsent_bytes: 1048576\ndefaults: {timeout_ms: 20}\n",
        )
        .unwrap();
        let kept = keep_restart_only(&current, &mut next);
        assert_eq!(kept, ["socket", "http", "max_unsent_bytes"]);
        assert_eq!(next.socket.path, PathBuf::from("a.sock"));
        assert_eq!(next.http, current.http);
        assert_eq!(next.max_unsent_bytes, current.max_unsent_bytes);
        assert_eq!(next.defaults.timeout_ms, 20);
    }
}

//! Deployment: the plugins folder is the source of truth. `NAME.wasm` (with
//! an optional `NAME.yaml`) is service `NAME`; the host watches the folder
//! (`watch`) and brings the service table in line with it, one service at
//! a time: a new or changed file (`source`) is compiled and
//! test-instantiated before it takes over (requests already running finish
//! on the old version), a removed file unloads its service, and a file that
//! fails leaves the previous version serving. Config reloads (`reload`) go
//! through here too, since limits in the config shape every plugin.

pub mod cluster;
mod memory;
mod reload;
mod source;
mod staged;
mod watch;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use source::{NotRead, Source, read_source};
pub use source::{deployment_id, service_of, settings};
pub use staged::Staged;

use crate::config::Config;
use crate::doors::Doors;
use crate::doors::control::Operator;
use crate::pipeline::{Pipeline, Rejection};
use crate::runtime::{Plugin, Runtime};

/// What one look at a service's files did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Deployed,
    Removed,
    Refused,
    /// The file changed while it was read: look again later.
    Unsettled,
}

#[derive(Default)]
struct Deployed {
    /// What each serving version was built from.
    serving: BTreeMap<String, Source>,
    /// The last source refused for a fault of its own (it does not compile
    /// or link, its manifest is wrong), so repeated events about the same
    /// bad file are not refused and logged again. A version that merely
    /// failed to start is tried again on the next event or reload.
    refused: BTreeMap<String, Source>,
}

/// Why a version was not built, and whether trying the same files again
/// could go differently.
struct Refusal {
    reason: String,
    lasting: bool,
}

/// Longest a new version may take to start before it is refused; the
/// deploy lock is held meanwhile.
const MAX_WARM_UP: Duration = Duration::from_secs(30);

pub struct Deployer {
    runtime: Arc<Runtime>,
    pipeline: Arc<Pipeline>,
    doors: Arc<Doors>,
    /// The config in force; a reload replaces it.
    config: RwLock<Arc<Config>>,
    config_path: Option<PathBuf>,
    /// When the host started, for status.
    started: Instant,
    /// What serves and what was refused; held only briefly.
    deployed: tokio::sync::Mutex<Deployed>,
    /// One look at a service at a time (two looks at one service never
    /// race); looks at different services run side by side.
    looking: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Compilations at once, so a big deploy leaves cores to the requests
    /// already being served.
    compiling: tokio::sync::Semaphore,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Deployer {
    pub fn new(
        runtime: Arc<Runtime>,
        pipeline: Arc<Pipeline>,
        doors: Arc<Doors>,
        config: Config,
        config_path: Option<PathBuf>,
        started: Instant,
    ) -> Deployer {
        let jobs = config.compile_jobs();
        Deployer {
            runtime,
            pipeline,
            doors,
            config: RwLock::new(Arc::new(config)),
            config_path,
            started,
            deployed: tokio::sync::Mutex::default(),
            looking: std::sync::Mutex::default(),
            compiling: tokio::sync::Semaphore::new(jobs),
            reloading: tokio::sync::Mutex::default(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    /// Every service the folder or the service table knows of.
    async fn known_services(&self) -> Vec<String> {
        let dir = self.config().plugins.clone();
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| service_of(&e.path()))
                .collect(),
            Err(e) => {
                tracing::error!(dir = %dir.display(), "cannot read the plugins folder: {e}");
                Vec::new()
            }
        };
        let deployed = self.deployed.lock().await;
        names.extend(deployed.serving.keys().cloned());
        names.extend(deployed.refused.keys().cloned());
        names.extend(
            self.pipeline
                .table()
                .failed()
                .into_iter()
                .map(|(name, _)| name),
        );
        names.sort();
        names.dedup();
        names
    }

    /// Services with files in the folder and no version serving yet: what
    /// a cold start is about to load.
    pub async fn not_yet_serving(&self) -> Vec<String> {
        let table = self.pipeline.table();
        let dir = self.config().plugins.clone();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
                    .filter_map(|e| service_of(&e.path()))
                    .filter(|name| table.get(name).is_none())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.dedup();
        names
    }

    /// Brings every service in line with the folder, several at once (as
    /// many compilations as `compile_jobs` allows); answers the services
    /// that were deployed, replaced or removed, and those refused.
    pub async fn reconcile_all(&self) -> (Vec<String>, Vec<String>) {
        let compiling = memory::Compiling::begin();
        let mut names = self.known_services().await;
        // Smallest first: compile slots are handed out in order, so the
        // quick plugins are served while the big ones still compile.
        let dir = self.config().plugins.clone();
        names.sort_by_key(|name| {
            std::fs::metadata(dir.join(format!("{name}.wasm"))).map_or(0, |m| m.len())
        });
        let looks = names.iter().map(|name| async move {
            let mut outcome = self.reconcile(name).await;
            // A file still being written at start-up or reload: wait for it.
            for _ in 0..20 {
                if outcome != Outcome::Unsettled {
                    break;
                }
                tokio::time::sleep(watch::SETTLED_MANIFEST).await;
                outcome = self.reconcile(name).await;
            }
            (name, outcome)
        });
        let (mut changed, mut refused) = (Vec::new(), Vec::new());
        for (name, outcome) in futures_util::future::join_all(looks).await {
            match outcome {
                Outcome::Deployed | Outcome::Removed => changed.push(name.clone()),
                Outcome::Refused => refused.push(name.clone()),
                Outcome::Unchanged | Outcome::Unsettled => {}
            }
        }
        drop(compiling);
        memory::give_back().await;
        (changed, refused)
    }

    /// Looks at one service's files and acts on what changed; a first
    /// load, whatever its outcome, ends the service's `loading` state.
    pub async fn reconcile(&self, name: &str) -> Outcome {
        let lock = {
            let mut looking = self.looking.lock().expect("looking lock");
            looking.entry(name.to_owned()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        let outcome = self.reconcile_one(name).await;
        if outcome != Outcome::Unsettled {
            self.pipeline.table().done_loading(name);
        }
        outcome
    }

    #[tracing::instrument(name = "deploy", skip(self, name), fields(plugin = %name))]
    async fn reconcile_one(&self, name: &str) -> Outcome {
        let config = self.config();
        let wasm = config.plugins.join(format!("{name}.wasm"));
        let read = {
            let (wasm, defaults) = (wasm.clone(), config.defaults);
            tokio::task::spawn_blocking(move || read_source(&wasm, &defaults)).await
        };
        let table = self.pipeline.table();
        let (source, bytes) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(NotRead::Unsettled)) => return Outcome::Unsettled,
            Ok(Err(NotRead::Gone)) => {
                let mut deployed = self.deployed.lock().await;
                deployed.refused.remove(name);
                let was_serving = deployed.serving.remove(name).is_some();
                drop(deployed);
                let was_failed = table.failed().iter().any(|(n, _)| n == name);
                if !was_serving && !was_failed {
                    return Outcome::Unchanged;
                }
                self.undeploy(name);
                return Outcome::Removed;
            }
            Ok(Err(NotRead::Failed(reason))) => {
                self.refuse(name, Rejection::now(None, None, reason));
                return Outcome::Refused;
            }
            Err(e) => {
                self.refuse(
                    name,
                    Rejection::now(None, None, format!("the reader failed: {e}")),
                );
                return Outcome::Refused;
            }
        };
        let mut deployed = self.deployed.lock().await;
        if deployed.serving.get(name) == Some(&source) {
            // Back to what serves (a refused file was replaced by it): the
            // refusal is history.
            deployed.refused.remove(name);
            table.clear_rejection(name);
            return Outcome::Unchanged;
        }
        if deployed.refused.get(name) == Some(&source) {
            return Outcome::Unchanged;
        }
        drop(deployed);
        let started = Instant::now();
        let id = deployment_id(&source.digest, source.manifest.as_deref());
        match self.build(name, bytes, &source, &id).await {
            Ok(plugin) => {
                let plugin = Arc::new(plugin);
                // The service's own socket first (or again, if it could not
                // be opened before): once the new version answers on the
                // main socket, its socket is there too.
                self.doors.open_service(name).await;
                let previous = table.insert(plugin.clone());
                self.pipeline.sync_triggers();
                tokio::spawn(plugin.clone().supervise());
                match &previous {
                    Some(previous) => tracing::info!(
                        version = plugin.version(),
                        deployment = id,
                        previous = previous.version(),
                        still_running = previous.stats.snapshot().in_flight,
                        took_ms = started.elapsed().as_millis() as u64,
                        "new version serving; the previous one finishes what it is running"
                    ),
                    None => tracing::info!(
                        version = plugin.version(),
                        deployment = id,
                        took_ms = started.elapsed().as_millis() as u64,
                        "service deployed"
                    ),
                }
                let mut deployed = self.deployed.lock().await;
                deployed.refused.remove(name);
                deployed.serving.insert(name.to_owned(), source);
                Outcome::Deployed
            }
            Err(refusal) => {
                let rejection = Rejection::now(
                    Some(source.digest[..12].to_owned()),
                    Some(id),
                    refusal.reason,
                );
                self.refuse(name, rejection);
                if refusal.lasting {
                    let mut deployed = self.deployed.lock().await;
                    deployed.refused.insert(name.to_owned(), source);
                }
                Outcome::Refused
            }
        }
    }

    /// Compiles (or takes from the cache), links and test-instantiates one
    /// version; nothing is routed to it yet.
    async fn build(
        &self,
        name: &str,
        bytes: Vec<u8>,
        source: &Source,
        deployment: &str,
    ) -> Result<Plugin, Refusal> {
        let lasting = |reason: String| Refusal {
            reason,
            lasting: true,
        };
        let settings = source.settings.clone().map_err(lasting)?;
        let (runtime, owned_name, digest) =
            (self.runtime.clone(), name.to_owned(), source.digest.clone());
        let started = Instant::now();
        let size_kib = bytes.len() / 1024;
        let slot = match self.compiling.try_acquire() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::info!(size_kib, "waiting for a compile slot (compile_jobs)");
                self.compiling.acquire().await.expect("never closed")
            }
        };
        tracing::info!(
            size_kib,
            waited_ms = started.elapsed().as_millis() as u64,
            "compiling (or loading from the cache)"
        );
        let compiling = memory::Compiling::begin();
        let loaded = tokio::task::spawn_blocking(move || {
            runtime.load_bytes(&owned_name, &bytes, digest, settings, started)
        })
        .await
        .map_err(|e| Refusal {
            reason: format!("the loader failed: {e}"),
            lasting: false,
        })?;
        drop((slot, compiling));
        memory::give_back().await;
        let (mut plugin, report) = loaded.map_err(|e| lasting(e.to_string()))?;
        plugin.set_deployment(deployment.to_owned());
        match tokio::time::timeout(MAX_WARM_UP, plugin.warm_up()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Refusal {
                    reason: format!("it compiles and links, but does not start: {e}"),
                    lasting: false,
                });
            }
            Err(_) => {
                return Err(Refusal {
                    reason: format!("it did not start within {MAX_WARM_UP:?}"),
                    lasting: false,
                });
            }
        }
        tracing::info!(
            version = plugin.version(),
            cache = %report.cache.as_str(),
            load_ms = report.elapsed.as_millis() as u64,
            health = plugin.has_health(),
            event_handler = plugin.has_event_handler(),
            subscriptions = plugin.settings().subscriptions.len(),
            "plugin loaded"
        );
        Ok(plugin)
    }

    /// Notes that a file for `name` was not loaded, beside the version that
    /// keeps serving if there is one.
    fn refuse(&self, name: &str, rejection: Rejection) {
        let refused = rejection.version.as_deref().unwrap_or("?");
        let reason = &rejection.reason;
        let table = self.pipeline.table();
        match table.get(name) {
            Some(serving) => tracing::error!(
                refused,
                serving = serving.version(),
                "new version refused; the previous version keeps serving: {reason}"
            ),
            None => tracing::error!(version = refused, "plugin not loaded: {reason}"),
        }
        table.refuse(name, rejection);
    }

    fn undeploy(&self, name: &str) {
        match self.pipeline.table().remove(name) {
            Some(plugin) => {
                self.pipeline.sync_triggers();
                self.doors.close_service(name);
                tracing::info!(
                    version = plugin.version(),
                    still_running = plugin.stats.snapshot().in_flight,
                    "service undeployed; requests already running finish"
                );
            }
            None => tracing::info!("failed plugin file removed"),
        }
    }
}

/// The control socket's commands, answered here: status reads the table,
/// reload goes through [`Deployer::reload`].
impl Deployer {
    fn outbox(&self) -> Result<&Arc<crate::pipeline::webhooks::Webhooks>, String> {
        self.pipeline
            .webhooks()
            .ok_or_else(|| "this host has no webhooks outbox".to_owned())
    }
}

impl Operator for Deployer {
    fn status(&self) -> Value {
        crate::ops::status::document(&self.pipeline, self.started)
    }

    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + '_>> {
        Box::pin(Deployer::reload(self))
    }

    fn webhooks(
        &self,
        dead: bool,
    ) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + '_>> {
        Box::pin(async move { self.outbox()?.list(dead).await })
    }

    fn retry_webhook(
        &self,
        id: String,
    ) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + '_>> {
        Box::pin(async move { self.outbox()?.retry(&id).await })
    }
}

//! Deployment: the plugins folder is the source of truth. `NAME.wasm` (with
//! an optional `NAME.yaml`) is service `NAME`; the host watches the folder
//! and brings the routing table in line with it, one service at a time:
//! a new or changed file is compiled and test-instantiated before it takes
//! over (requests already running finish on the old version), a removed
//! file unloads its service, and a file that fails leaves the previous
//! version serving. Config reloads (SIGHUP, `ferry reload`) go through here
//! too, since limits in the config shape every plugin.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use notify::Watcher as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::apps::Apps;
use crate::config::{Config, ConfigError, Limits, Manifest};
use crate::doors::Doors;
use crate::router::{Rejection, Router, valid_service_name};
use crate::runtime::{Plugin, Runtime, Settings};

/// How long a file must stay quiet before it is loaded: a copy in progress
/// keeps producing events, so a half-written file is not picked up.
const QUIET: Duration = Duration::from_millis(150);

/// The wait after an event that says a file is complete (renamed into
/// place, closed after writing, removed): just long enough to take a
/// manifest renamed in beside it along.
const SETTLED: Duration = Duration::from_millis(10);

/// The settings a plugin runs with: its manifest (text, when there is one)
/// over the config's defaults.
pub fn settings(
    manifest_path: &Path,
    text: Option<&str>,
    defaults: &Limits,
) -> Result<Settings, ConfigError> {
    let manifest = match text {
        Some(text) => Manifest::parse(manifest_path, text)?,
        None => Manifest::default(),
    };
    let limits = manifest.limits(defaults).map_err(|message| ConfigError {
        path: manifest_path.to_owned(),
        message,
    })?;
    Ok(Settings {
        limits,
        config: Arc::new(manifest.config_values()),
        public: manifest.public,
        database: manifest.permissions.database,
    })
}

/// The service a file in the plugins folder belongs to: `NAME.wasm` or
/// `NAME.yaml` with a plain NAME. Hidden files, editor leftovers and
/// anything else are not services.
pub fn service_of(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let name = file
        .strip_suffix(".wasm")
        .or_else(|| file.strip_suffix(".yaml"))?;
    valid_service_name(name).then(|| name.to_owned())
}

/// What a serving version was built from: when none of it changed, an
/// event about the service is nothing to act on.
#[derive(Debug, Clone, PartialEq)]
struct Source {
    digest: String,
    manifest: Option<String>,
    defaults: Limits,
}

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

enum Read {
    Gone,
    Unsettled,
    Bytes(Vec<u8>),
}

/// Reads a plugin file whole, or says it is gone or still being written.
fn read_settled(path: &Path) -> std::io::Result<Read> {
    let stamp = |meta: &std::fs::Metadata| (meta.len(), meta.modified().ok());
    let before = match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => stamp(&meta),
        Ok(_) => return Ok(Read::Gone),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::Gone),
        Err(e) => return Err(e),
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::Gone),
        Err(e) => return Err(e),
    };
    match std::fs::metadata(path) {
        Ok(meta) if stamp(&meta) == before && meta.len() == bytes.len() as u64 => {
            Ok(Read::Bytes(bytes))
        }
        Ok(_) => Ok(Read::Unsettled),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Read::Gone),
        Err(e) => Err(e),
    }
}

/// Reads a manifest, if there is one.
fn read_manifest(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Default)]
struct Deployed {
    /// What each serving version was built from.
    serving: BTreeMap<String, Source>,
    /// The last refused source per service, so repeated events about the
    /// same bad file are not refused (and logged) again.
    refused: BTreeMap<String, Source>,
}

pub struct Deployer {
    runtime: Arc<Runtime>,
    router: Arc<Router>,
    doors: Arc<Doors>,
    /// The config in force; a reload replaces it.
    config: RwLock<Arc<Config>>,
    config_path: Option<PathBuf>,
    /// Held for a whole look at one service, so two never race.
    deployed: tokio::sync::Mutex<Deployed>,
}

impl Deployer {
    pub fn new(
        runtime: Arc<Runtime>,
        router: Arc<Router>,
        doors: Arc<Doors>,
        config: Config,
        config_path: Option<PathBuf>,
    ) -> Deployer {
        Deployer {
            runtime,
            router,
            doors,
            config: RwLock::new(Arc::new(config)),
            config_path,
            deployed: tokio::sync::Mutex::default(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Every service the folder or the routing table knows of.
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
        names.extend(self.router.failed().into_iter().map(|(name, _)| name));
        names.sort();
        names.dedup();
        names
    }

    /// Brings every service in line with the folder; answers the services
    /// that were deployed, replaced or removed.
    pub async fn reconcile_all(&self) -> Vec<String> {
        let mut changed = Vec::new();
        for name in self.known_services().await {
            let mut outcome = self.reconcile(&name).await;
            // A file still being written at start-up or reload: wait for it.
            for _ in 0..20 {
                if outcome != Outcome::Unsettled {
                    break;
                }
                tokio::time::sleep(QUIET).await;
                outcome = self.reconcile(&name).await;
            }
            if matches!(outcome, Outcome::Deployed | Outcome::Removed) {
                changed.push(name);
            }
        }
        changed
    }

    /// Looks at one service's files and acts on what changed.
    #[tracing::instrument(name = "deploy", skip(self, name), fields(plugin = %name))]
    pub async fn reconcile(&self, name: &str) -> Outcome {
        let config = self.config();
        let wasm = config.plugins.join(format!("{name}.wasm"));
        let manifest_path = wasm.with_extension("yaml");
        let mut deployed = self.deployed.lock().await;
        let bytes = match read_settled(&wasm) {
            Ok(Read::Bytes(bytes)) => bytes,
            Ok(Read::Unsettled) => return Outcome::Unsettled,
            Ok(Read::Gone) => {
                deployed.refused.remove(name);
                let was_serving = deployed.serving.remove(name).is_some();
                let was_failed = self.router.failed().iter().any(|(n, _)| n == name);
                if !was_serving && !was_failed {
                    return Outcome::Unchanged;
                }
                self.undeploy(name);
                return Outcome::Removed;
            }
            Err(e) => {
                self.refuse(name, None, format!("cannot read {}: {e}", wasm.display()));
                return Outcome::Refused;
            }
        };
        let manifest = match read_manifest(&manifest_path) {
            Ok(text) => text,
            Err(e) => {
                let reason = format!("cannot read {}: {e}", manifest_path.display());
                self.refuse(name, None, reason);
                return Outcome::Refused;
            }
        };
        let source = Source {
            digest: crate::runtime::digest(&bytes),
            manifest,
            defaults: config.defaults,
        };
        if deployed.serving.get(name) == Some(&source)
            || deployed.refused.get(name) == Some(&source)
        {
            return Outcome::Unchanged;
        }
        let started = Instant::now();
        match self
            .build(name, bytes, &source, &manifest_path, started)
            .await
        {
            Ok(plugin) => {
                let plugin = Arc::new(plugin);
                let previous = self.router.insert(plugin.clone());
                tokio::spawn(plugin.clone().supervise());
                match &previous {
                    Some(previous) => tracing::info!(
                        version = plugin.version(),
                        previous = previous.version(),
                        still_running = previous.stats.snapshot().in_flight,
                        took_ms = started.elapsed().as_millis() as u64,
                        "new version serving; the previous one finishes what it is running"
                    ),
                    None => {
                        self.doors.open_service(name).await;
                        tracing::info!(
                            version = plugin.version(),
                            took_ms = started.elapsed().as_millis() as u64,
                            "service deployed"
                        );
                    }
                }
                deployed.refused.remove(name);
                deployed.serving.insert(name.to_owned(), source);
                Outcome::Deployed
            }
            Err(reason) => {
                self.refuse(name, Some(source.digest[..12].to_owned()), reason);
                deployed.refused.insert(name.to_owned(), source);
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
        manifest_path: &Path,
        started: Instant,
    ) -> Result<Plugin, String> {
        let settings = settings(manifest_path, source.manifest.as_deref(), &source.defaults)
            .map_err(|e| e.to_string())?;
        let (runtime, owned_name, digest) =
            (self.runtime.clone(), name.to_owned(), source.digest.clone());
        let (plugin, report) = tokio::task::spawn_blocking(move || {
            runtime.load_bytes(&owned_name, &bytes, digest, settings, started)
        })
        .await
        .map_err(|e| format!("the loader failed: {e}"))?
        .map_err(|e| e.to_string())?;
        plugin
            .warm_up()
            .await
            .map_err(|e| format!("it compiles and links, but does not start: {e}"))?;
        tracing::info!(
            version = plugin.version(),
            cache = %report.cache.as_str(),
            load_ms = report.elapsed.as_millis() as u64,
            health = plugin.has_health(),
            "plugin loaded"
        );
        Ok(plugin)
    }

    fn refuse(&self, name: &str, version: Option<String>, reason: String) {
        let serving = self.router.get(name);
        match &serving {
            Some(serving) => tracing::error!(
                refused = version.as_deref().unwrap_or("?"),
                serving = serving.version(),
                "new version refused; the previous version keeps serving: {reason}"
            ),
            None => tracing::error!(
                version = version.as_deref().unwrap_or("?"),
                "plugin not loaded: {reason}"
            ),
        }
        self.router.refuse(name, Rejection::now(version, reason));
    }

    fn undeploy(&self, name: &str) {
        match self.router.remove(name) {
            Some(plugin) => {
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

    /// Watches the plugins folder and acts on what changes in it, until the
    /// returned watcher is dropped.
    pub fn watch(self: &Arc<Self>) -> notify::Result<notify::RecommendedWatcher> {
        let (changes, changed) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let change = match event {
                    Ok(event) if event.need_rescan() => vec![Change::Rescan],
                    Ok(event) => {
                        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
                        let settled = matches!(
                            event.kind,
                            EventKind::Access(AccessKind::Close(AccessMode::Write))
                                | EventKind::Modify(ModifyKind::Name(_))
                                | EventKind::Remove(_)
                        );
                        let wait = if settled { SETTLED } else { QUIET };
                        event
                            .paths
                            .iter()
                            .filter_map(|p| service_of(p))
                            .map(|name| Change::Service(name, wait))
                            .collect()
                    }
                    Err(e) => {
                        tracing::warn!("watching the plugins folder: {e}; rescanning it");
                        vec![Change::Rescan]
                    }
                };
                for change in change {
                    let _ = changes.send(change);
                }
            })?;
        watcher.watch(&self.config().plugins, notify::RecursiveMode::NonRecursive)?;
        tokio::spawn(self.clone().follow(changed));
        Ok(watcher)
    }

    /// Acts on folder events once each service's files have been quiet for
    /// a moment.
    async fn follow(self: Arc<Self>, mut changed: mpsc::UnboundedReceiver<Change>) {
        let mut due: HashMap<String, Instant> = HashMap::new();
        loop {
            let next = due.values().min().copied();
            tokio::select! {
                change = changed.recv() => match change {
                    Some(Change::Service(name, wait)) => {
                        due.insert(name, Instant::now() + wait);
                    }
                    Some(Change::Rescan) => {
                        for name in self.known_services().await {
                            due.insert(name, Instant::now() + QUIET);
                        }
                    }
                    // The watcher is gone: the host is shutting down.
                    None => return,
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {
                    let now = Instant::now();
                    let ready: Vec<String> = due
                        .iter()
                        .filter(|(_, at)| **at <= now)
                        .map(|(name, _)| name.clone())
                        .collect();
                    for name in ready {
                        due.remove(&name);
                        if self.reconcile(&name).await == Outcome::Unsettled {
                            due.insert(name, Instant::now() + QUIET);
                        }
                    }
                }
            }
        }
    }

    /// Reads the config file again and applies it: applications, hosts,
    /// keys, databases and plugin limits change without dropping a
    /// connection. An invalid file changes nothing. Answers what changed.
    #[tracing::instrument(name = "reload", skip(self))]
    pub async fn reload(&self) -> Result<Value, String> {
        let current = self.config();
        let mut next = match &self.config_path {
            Some(path) => Config::load(path).map_err(|e| e.to_string())?,
            None => (*current).clone(),
        };
        let apps = Apps::build(&next, true, Some(&self.router.apps()))
            .map_err(|e| format!("invalid config: {e}"))?;
        let needs_restart = keep_restart_only(&current, &mut next);
        for key in &needs_restart {
            tracing::warn!(
                key,
                "changed in the config, but takes effect only on restart"
            );
        }
        self.router.set_apps(apps);
        *self.config.write().expect("config lock") = Arc::new(next);
        let changed = self.reconcile_all().await;
        tracing::info!(plugins_changed = ?changed, "config reloaded");
        Ok(json!({
            "apps": self.router.apps().names(),
            "plugins_changed": changed,
            "needs_restart": needs_restart,
        }))
    }
}

enum Change {
    /// Something happened to a service's files; look at them after a wait.
    Service(String, Duration),
    Rescan,
}

/// Settings that belong to sockets and folders already open: a reload keeps
/// the running values (named in the answer) and applies the rest.
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
        plugins,
        data,
        max_frame_bytes,
        idle_timeout_ms,
        max_connections
    );
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_services() {
        for (file, service) in [
            ("echo.wasm", Some("echo")),
            ("echo.yaml", Some("echo")),
            ("todo-v2_x.wasm", Some("todo-v2_x")),
            (".echo.wasm", None),
            (".echo.wasm.swp", None),
            ("echo.wasm~", None),
            ("echo.wasm.tmp", None),
            ("Echo.wasm", None),
            ("#echo.wasm#", None),
            ("echo.txt", None),
            ("..wasm", None),
        ] {
            assert_eq!(
                service_of(Path::new("/deploy").join(file).as_path()).as_deref(),
                service,
                "{file}"
            );
        }
    }

    #[test]
    fn a_reload_keeps_what_needs_a_restart() {
        let current = Config::parse("socket: a.sock\ndefaults: {timeout_ms: 10}\n").unwrap();
        let mut next =
            Config::parse("socket: b.sock\nhttp: null\ndefaults: {timeout_ms: 20}\n").unwrap();
        let kept = keep_restart_only(&current, &mut next);
        assert_eq!(kept, ["socket", "http"]);
        assert_eq!(next.socket.path, PathBuf::from("a.sock"));
        assert_eq!(next.http, current.http);
        assert_eq!(next.defaults.timeout_ms, 20);
    }
}

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

/// When a file is looked at after an event about it. A file renamed into
/// place, closed after writing, or removed is complete now: a wasm is taken
/// at once; a manifest waits a little for the wasm that usually follows it.
/// Anything else (created, still being written) waits until the writer has
/// been quiet for a long while, so a half-written file is not picked up.
const SETTLED_WASM: Duration = Duration::from_millis(10);
const SETTLED_MANIFEST: Duration = Duration::from_millis(150);
const QUIET: Duration = Duration::from_secs(2);

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

/// Names one deployment: the code and the manifest it runs with. Status
/// shows it, and `ferry deploy` waits for it.
pub fn deployment_id(digest: &str, manifest: Option<&str>) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(digest.as_bytes());
    hash.update([0]);
    hash.update(manifest.unwrap_or("").as_bytes());
    hash.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a serving version was built from: when none of it changed, an
/// event about the service is nothing to act on. A reload that leaves a
/// plugin's effective settings as they were leaves the plugin alone.
#[derive(Debug, Clone, PartialEq)]
struct Source {
    digest: String,
    manifest: Option<String>,
    /// The manifest over the defaults in force; the error when it is wrong.
    settings: Result<Settings, String>,
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

/// Why a service's files were not read.
enum NotRead {
    Gone,
    /// The file changed while it was read: look again later.
    Unsettled,
    Failed(String),
}

/// Reads a service's files (off the async threads: a plugin can be tens of
/// megabytes) and names what they hold.
fn read_source(wasm: &Path, defaults: &Limits) -> Result<(Source, Vec<u8>), NotRead> {
    let bytes = read_settled(wasm)?;
    let manifest_path = wasm.with_extension("yaml");
    let manifest = read_manifest(&manifest_path)
        .map_err(|e| NotRead::Failed(format!("cannot read {}: {e}", manifest_path.display())))?;
    let settings =
        settings(&manifest_path, manifest.as_deref(), defaults).map_err(|e| e.to_string());
    let source = Source {
        digest: crate::runtime::digest(&bytes),
        manifest,
        settings,
    };
    Ok((source, bytes))
}

/// Reads a plugin file whole, or says it is gone or still being written.
fn read_settled(path: &Path) -> Result<Vec<u8>, NotRead> {
    let failed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => NotRead::Gone,
        _ => NotRead::Failed(format!("cannot read {}: {e}", path.display())),
    };
    let stamp = |meta: &std::fs::Metadata| (meta.len(), meta.modified().ok());
    let before = std::fs::metadata(path).map_err(failed)?;
    if !before.is_file() {
        return Err(NotRead::Gone);
    }
    let bytes = std::fs::read(path).map_err(failed)?;
    let after = std::fs::metadata(path).map_err(failed)?;
    if stamp(&after) != stamp(&before) || after.len() != bytes.len() as u64 {
        return Err(NotRead::Unsettled);
    }
    Ok(bytes)
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
    router: Arc<Router>,
    doors: Arc<Doors>,
    /// The config in force; a reload replaces it.
    config: RwLock<Arc<Config>>,
    config_path: Option<PathBuf>,
    /// Held for a whole look at one service, so two never race.
    deployed: tokio::sync::Mutex<Deployed>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
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
            reloading: tokio::sync::Mutex::default(),
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
    /// that were deployed, replaced or removed, and those refused.
    pub async fn reconcile_all(&self) -> (Vec<String>, Vec<String>) {
        let (mut changed, mut refused) = (Vec::new(), Vec::new());
        for name in self.known_services().await {
            let mut outcome = self.reconcile(&name).await;
            // A file still being written at start-up or reload: wait for it.
            for _ in 0..20 {
                if outcome != Outcome::Unsettled {
                    break;
                }
                tokio::time::sleep(SETTLED_MANIFEST).await;
                outcome = self.reconcile(&name).await;
            }
            match outcome {
                Outcome::Deployed | Outcome::Removed => changed.push(name),
                Outcome::Refused => refused.push(name),
                Outcome::Unchanged | Outcome::Unsettled => {}
            }
        }
        (changed, refused)
    }

    /// Looks at one service's files and acts on what changed.
    #[tracing::instrument(name = "deploy", skip(self, name), fields(plugin = %name))]
    pub async fn reconcile(&self, name: &str) -> Outcome {
        let config = self.config();
        let wasm = config.plugins.join(format!("{name}.wasm"));
        let mut deployed = self.deployed.lock().await;
        let read = {
            let (wasm, defaults) = (wasm.clone(), config.defaults);
            tokio::task::spawn_blocking(move || read_source(&wasm, &defaults)).await
        };
        let (source, bytes) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(NotRead::Unsettled)) => return Outcome::Unsettled,
            Ok(Err(NotRead::Gone)) => {
                deployed.refused.remove(name);
                let was_serving = deployed.serving.remove(name).is_some();
                let was_failed = self.router.failed().iter().any(|(n, _)| n == name);
                if !was_serving && !was_failed {
                    return Outcome::Unchanged;
                }
                self.undeploy(name);
                return Outcome::Removed;
            }
            Ok(Err(NotRead::Failed(reason))) => {
                self.refuse(name, None, reason);
                return Outcome::Refused;
            }
            Err(e) => {
                self.refuse(name, None, format!("the reader failed: {e}"));
                return Outcome::Refused;
            }
        };
        if deployed.serving.get(name) == Some(&source) {
            // Back to what serves (a refused file was replaced by it): the
            // refusal is history.
            deployed.refused.remove(name);
            self.router.clear_rejection(name);
            return Outcome::Unchanged;
        }
        if deployed.refused.get(name) == Some(&source) {
            return Outcome::Unchanged;
        }
        let started = Instant::now();
        let id = deployment_id(&source.digest, source.manifest.as_deref());
        match self.build(name, bytes, &source, &id, started).await {
            Ok(plugin) => {
                let plugin = Arc::new(plugin);
                let previous = self.router.insert(plugin.clone());
                tokio::spawn(plugin.clone().supervise());
                // A socket that could not be opened before gets another try.
                self.doors.open_service(name).await;
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
                self.refuse_with(name, rejection);
                if refusal.lasting {
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
        started: Instant,
    ) -> Result<Plugin, Refusal> {
        let lasting = |reason: String| Refusal {
            reason,
            lasting: true,
        };
        let settings = source.settings.clone().map_err(lasting)?;
        let (runtime, owned_name, digest) =
            (self.runtime.clone(), name.to_owned(), source.digest.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            runtime.load_bytes(&owned_name, &bytes, digest, settings, started)
        })
        .await
        .map_err(|e| Refusal {
            reason: format!("the loader failed: {e}"),
            lasting: false,
        })?;
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
            "plugin loaded"
        );
        Ok(plugin)
    }

    fn refuse(&self, name: &str, version: Option<String>, reason: String) {
        self.refuse_with(name, Rejection::now(version, None, reason));
    }

    fn refuse_with(&self, name: &str, rejection: Rejection) {
        let refused = rejection.version.as_deref().unwrap_or("?");
        let reason = &rejection.reason;
        match self.router.get(name) {
            Some(serving) => tracing::error!(
                refused,
                serving = serving.version(),
                "new version refused; the previous version keeps serving: {reason}"
            ),
            None => tracing::error!(version = refused, "plugin not loaded: {reason}"),
        }
        self.router.refuse(name, rejection);
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
                        event
                            .paths
                            .iter()
                            .filter_map(|path| {
                                let name = service_of(path)?;
                                let manifest = path.extension().is_some_and(|e| e == "yaml");
                                let wait = match (settled, manifest) {
                                    (true, false) => SETTLED_WASM,
                                    (true, true) => SETTLED_MANIFEST,
                                    (false, _) => QUIET,
                                };
                                Some(Change::Service(name, wait))
                            })
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
        let apps = Apps::build(&next, true, Some(&self.router.apps()))
            .map_err(|e| format!("invalid config: {e}"))?;
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
        self.router.set_apps(apps);
        tracing::info!(plugins_changed = ?changed, plugins_refused = ?refused, "config reloaded");
        Ok(json!({
            "apps": self.router.apps().names(),
            "plugins_changed": changed,
            "plugins_refused": refused,
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

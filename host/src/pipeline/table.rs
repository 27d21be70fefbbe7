//! The service table: which version of each service serves, which files
//! failed to load (and why), the refused newer file of a service that keeps
//! serving, and the replaced versions still finishing their requests. The
//! deployer writes it; the pipeline routes by it; status reads it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;

use crate::runtime::Plugin;

/// A newer file for a service that was refused while the previous version
/// kept serving.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejection {
    /// The refused file's short digest, when it could be read.
    pub version: Option<String>,
    /// The refused deployment (file and manifest), when it could be read.
    pub deployment: Option<String>,
    pub reason: String,
    /// Seconds since the Unix epoch.
    pub at_unix_s: u64,
}

impl Rejection {
    pub fn now(version: Option<String>, deployment: Option<String>, reason: String) -> Self {
        Rejection {
            version,
            deployment,
            reason,
            at_unix_s: crate::runtime::unix_seconds(std::time::SystemTime::now()),
        }
    }
}

#[derive(Default)]
pub struct Table {
    /// Read by every request without a lock; replaced whole by a deploy.
    services: ArcSwap<BTreeMap<String, Arc<Plugin>>>,
    /// Plugin files found but not loaded, with the reason; shown by status
    /// and keeping `/readyz` red.
    failed: RwLock<BTreeMap<String, Rejection>>,
    /// The last refused file of a service that still serves its previous
    /// version.
    rejected: RwLock<BTreeMap<String, Rejection>>,
    /// Replaced or undeployed versions, until their last request is done.
    draining: std::sync::Mutex<Vec<std::sync::Weak<Plugin>>>,
    /// Services whose files were found and are being compiled for the
    /// first time; requests for them wait (see `wait_loading`).
    loading: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Whether `loading` holds anything: read by every request, so the
    /// common case costs one load.
    any_loading: std::sync::atomic::AtomicBool,
    /// Wakes requests waiting for a service that was loading.
    loaded: tokio::sync::Notify,
}

impl Table {
    /// Marks services as loading for the first time.
    pub fn set_loading(&self, services: impl IntoIterator<Item = String>) {
        let mut loading = self.loading.lock().expect("loading lock");
        loading.extend(services);
        self.any_loading
            .store(!loading.is_empty(), std::sync::atomic::Ordering::Release);
    }

    /// Ends a service's first load, whatever its outcome.
    pub fn done_loading(&self, service: &str) {
        let mut loading = self.loading.lock().expect("loading lock");
        if loading.remove(service) {
            self.any_loading
                .store(!loading.is_empty(), std::sync::atomic::Ordering::Release);
            drop(loading);
            self.loaded.notify_waiters();
        }
    }

    /// Whether `service` has no version yet and is being compiled.
    pub fn is_loading(&self, service: &str) -> bool {
        self.any_loading.load(std::sync::atomic::Ordering::Acquire)
            && self.loading.lock().expect("loading lock").contains(service)
    }

    /// Services still loading, for status and `/readyz`.
    pub fn loading(&self) -> Vec<String> {
        if !self.any_loading.load(std::sync::atomic::Ordering::Acquire) {
            return Vec::new();
        }
        self.loading
            .lock()
            .expect("loading lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Waits until `service` is no longer loading, or `deadline`.
    pub async fn wait_loading(&self, service: &str, deadline: std::time::Instant) {
        loop {
            let notified = self.loaded.notified();
            if !self.is_loading(service) {
                return;
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Whether the service has a loaded version or a file that failed.
    pub fn knows(&self, service: &str) -> bool {
        self.services.load().contains_key(service)
            || self
                .failed
                .read()
                .expect("failed table lock")
                .contains_key(service)
    }

    /// Serves `plugin` from now on, in place of any previous version of its
    /// service, which is retired: requests already running finish on it.
    pub fn insert(&self, plugin: Arc<Plugin>) -> Option<Arc<Plugin>> {
        let name = plugin.name().to_owned();
        self.failed
            .write()
            .expect("failed table lock")
            .remove(&name);
        self.rejected
            .write()
            .expect("rejected table lock")
            .remove(&name);
        let mut previous = None;
        self.services.rcu(|services| {
            let mut services = BTreeMap::clone(services);
            previous = services.insert(name.clone(), plugin.clone());
            services
        });
        if let Some(previous) = &previous {
            self.retire(previous);
        }
        previous
    }

    /// Stops routing to `service` (its file is gone); requests already
    /// running finish on it.
    pub fn remove(&self, service: &str) -> Option<Arc<Plugin>> {
        self.failed
            .write()
            .expect("failed table lock")
            .remove(service);
        self.rejected
            .write()
            .expect("rejected table lock")
            .remove(service);
        let mut removed = None;
        self.services.rcu(|services| {
            let mut services = BTreeMap::clone(services);
            removed = services.remove(service);
            services
        });
        if let Some(removed) = &removed {
            self.retire(removed);
        }
        removed
    }

    fn retire(&self, plugin: &Arc<Plugin>) {
        plugin.retire();
        let mut draining = self.draining.lock().expect("draining lock");
        draining.retain(|p| p.strong_count() > 0);
        draining.push(Arc::downgrade(plugin));
    }

    /// Retired versions that still have requests running.
    pub fn draining(&self) -> Vec<Arc<Plugin>> {
        let mut draining = self.draining.lock().expect("draining lock");
        draining.retain(|p| p.strong_count() > 0);
        draining
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect()
    }

    /// Records that the file for `service` could not be loaded. With a
    /// version serving, that version stays and the refusal is noted beside
    /// it; otherwise the service is `failed`.
    pub fn refuse(&self, service: &str, rejection: Rejection) {
        let serving = self.services.load().contains_key(service);
        let table = if serving {
            &self.rejected
        } else {
            &self.failed
        };
        table
            .write()
            .expect("refusal table lock")
            .insert(service.to_owned(), rejection);
    }

    /// Services whose files failed to load, with the reasons.
    pub fn failed(&self) -> Vec<(String, Rejection)> {
        let failed = self.failed.read().expect("failed table lock");
        failed.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Forgets the refusal noted beside a serving service.
    pub fn clear_rejection(&self, service: &str) {
        self.rejected
            .write()
            .expect("rejected table lock")
            .remove(service);
    }

    /// The last refused file of a service that still serves.
    pub fn rejected(&self, service: &str) -> Option<Rejection> {
        self.rejected
            .read()
            .expect("rejected table lock")
            .get(service)
            .cloned()
    }

    /// Every loaded plugin, by name.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.services.load().values().cloned().collect()
    }

    pub fn get(&self, service: &str) -> Option<Arc<Plugin>> {
        self.services.load().get(service).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.services.load().keys().cloned().collect()
    }
}

//! Watching the plugins folder: inotify events become "look at service
//! NAME after a wait", and the wait depends on how complete the file
//! probably is. A burst of events about one service is looked at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::Watcher as _;
use tokio::sync::mpsc;

use super::source::service_of;
use super::{Deployer, Outcome};

/// When a file is looked at after an event about it. A file renamed into
/// place, closed after writing, or removed is complete now: a wasm is taken
/// at once; a manifest waits a little for the wasm that usually follows it.
/// Anything else (created, still being written) waits until the writer has
/// been quiet for a long while, so a half-written file is not picked up.
const SETTLED_WASM: Duration = Duration::from_millis(10);
pub(super) const SETTLED_MANIFEST: Duration = Duration::from_millis(150);
const QUIET: Duration = Duration::from_secs(2);

enum Change {
    /// Something happened to a service's files; look at them after a wait.
    Service(String, Duration),
    Rescan,
}

/// What one inotify event asks for.
fn changes(event: notify::Result<notify::Event>) -> Vec<Change> {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    let event = match event {
        Ok(event) if event.need_rescan() => return vec![Change::Rescan],
        Ok(event) => event,
        Err(e) => {
            tracing::warn!("watching the plugins folder: {e}; rescanning it");
            return vec![Change::Rescan];
        }
    };
    // The host's own reads of a plugin (open, read, close without writing)
    // change nothing; taken for changes, each look at a file would schedule
    // the next, and every plugin would be read and hashed again every
    // `QUIET`, for as long as the host runs.
    if let EventKind::Access(kind) = event.kind
        && kind != AccessKind::Close(AccessMode::Write)
    {
        return Vec::new();
    }
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

impl Deployer {
    /// Watches the plugins folder and acts on what changes in it, until the
    /// returned watcher is dropped.
    pub fn watch(self: &Arc<Self>) -> notify::Result<notify::RecommendedWatcher> {
        let (sender, received) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                for change in changes(event) {
                    let _ = sender.send(change);
                }
            })?;
        watcher.watch(&self.config().plugins, notify::RecursiveMode::NonRecursive)?;
        tokio::spawn(self.clone().follow(received));
        Ok(watcher)
    }

    /// Acts on folder events once each service's files have been quiet for
    /// a moment.
    async fn follow(self: Arc<Self>, mut received: mpsc::UnboundedReceiver<Change>) {
        let mut due: HashMap<String, Instant> = HashMap::new();
        loop {
            let next = due.values().min().copied();
            tokio::select! {
                change = received.recv() => match change {
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
}

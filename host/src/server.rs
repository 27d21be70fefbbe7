//! `ferry serve`: start-up in a fixed order (config already validated, then
//! the runtime, then the plugins, then the sockets and the HTTP listener),
//! and shutdown on a signal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{Semaphore, watch};

use crate::apps::{Apps, Auth};
use crate::config::{Config, Manifest};
use crate::http;
use crate::router::{Listening, Router, valid_service_name};
use crate::runtime::{Plugin, Runtime};
use crate::socket::{self, ConnectionLimits, Listener};

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    // Keys are read and checked here, before anything else starts.
    let apps = Apps::build(&config, true).map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("cannot create the data folder {}", config.data.display()))?;
    let runtime = Arc::new(Runtime::new(Some(config.cache_dir()))?);
    let router = Arc::new(Router::new(apps));

    for (name, wasm) in discover(&config.plugins)? {
        match load(&runtime, &config, &name, &wasm).await {
            Ok(plugin) => {
                router.insert(plugin);
            }
            Err(e) => {
                tracing::error!(plugin = %name, path = %wasm.display(), "plugin not loaded: {e:#}");
                router.insert_failed(&name, format!("{e:#}"));
            }
        }
    }

    warn_about_apps(&router);

    let socket = &config.socket;
    let allow_uids: Option<Arc<[u32]>> = socket.allow_uids.as_deref().map(Arc::from);
    let listening = |service: Option<&str>| {
        Arc::new(Listening {
            service: service.map(Arc::from),
            app: socket.app.as_deref().map(Arc::from),
            trusted: socket.trusted,
        })
    };
    let mut listeners = vec![Listener {
        listener: socket::bind(&socket.path, socket.mode).await?,
        path: socket.path.clone(),
        listening: listening(None),
        allow_uids: allow_uids.clone(),
    }];
    for name in router.names() {
        let path = config.services_dir().join(format!("{name}.sock"));
        if path.as_os_str().len() > crate::config::MAX_SOCKET_PATH {
            tracing::error!(
                path = %path.display(),
                "path too long for a Unix socket; `{name}` is reachable through the main socket only"
            );
            continue;
        }
        listeners.push(Listener {
            listener: socket::bind(&path, socket.mode).await?,
            path,
            listening: listening(Some(&name)),
            allow_uids: allow_uids.clone(),
        });
    }

    let http_listener = match config.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for HTTP on {addr}"))?,
        ),
        None => None,
    };

    let limits = ConnectionLimits {
        max_frame: config.max_frame_bytes,
        stall_timeout: Duration::from_millis(config.idle_timeout_ms),
    };
    let connections = Arc::new(Semaphore::new(config.max_connections as usize));
    let tally = Arc::new(socket::Tally::default());
    let (stop, stopped) = watch::channel(false);
    let mut doors = tokio::task::JoinSet::new();
    for listener in listeners {
        doors.spawn(socket::serve(
            listener,
            router.clone(),
            limits,
            connections.clone(),
            tally.clone(),
            stopped.clone(),
        ));
    }
    if let Some(listener) = http_listener {
        let addr = listener.local_addr()?;
        let app = http::app(http::HttpState {
            router: router.clone(),
            started,
            max_body: config.max_frame_bytes as usize,
            tally: tally.clone(),
        });
        let stop = socket::stopping(stopped.clone());
        doors.spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!("http gateway failed: {e}");
            }
        });
        tracing::info!(%addr, "http gateway listening");
    }
    tracing::info!(
        socket = %config.socket.path.display(),
        services = ?router.names(),
        pooling = runtime.pooling(),
        startup_ms = started.elapsed().as_millis() as u64,
        "ferry is serving"
    );

    shutdown_signal().await?;
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    let _ = stop.send(true);
    let drain = Duration::from_millis(config.drain_timeout_ms);
    if tokio::time::timeout(drain, async { while doors.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("requests still running after {drain:?}; exiting anyway");
    }
    let count = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        accepted = count(&tally.accepted),
        answered = count(&tally.answered),
        http_accepted = count(&tally.http_accepted),
        http_answered = count(&tally.http_answered),
        "stopped; requests accepted and answered over the host's life"
    );
    Ok(())
}

/// Says at start-up what an operator would want to know about the
/// applications: which accept any caller, and which listed services are
/// missing.
fn warn_about_apps(router: &Router) {
    let apps = router.apps();
    for name in apps.names() {
        if let Some(app) = apps.get(name)
            && matches!(app.auth, Auth::Open)
        {
            tracing::info!(
                app = name,
                "application has no auth: every action is public"
            );
        }
    }
    for service in router.missing() {
        tracing::warn!(
            service,
            "an application lists this service, but no plugin by that name is loaded"
        );
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Plugin files in `dir`: `NAME.wasm` where NAME is a valid service name.
/// Anything else (hidden files, editor leftovers, odd names) is skipped.
fn discover(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %dir.display(), "plugins folder does not exist; serving no plugins");
            return Ok(Vec::new());
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the plugins folder {}", dir.display()));
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wasm"))
        else {
            continue;
        };
        if !valid_service_name(name) {
            tracing::warn!(path = %path.display(), "ignored: a plugin name is lowercase letters, digits, `-` and `_`");
            continue;
        }
        if path.is_file() {
            found.push((name.to_owned(), path));
        }
    }
    found.sort();
    Ok(found)
}

/// Loads one plugin with its manifest, compiling on a blocking thread.
async fn load(
    runtime: &Arc<Runtime>,
    config: &Config,
    name: &str,
    wasm: &Path,
) -> anyhow::Result<Plugin> {
    let manifest = Manifest::load_optional(&wasm.with_extension("yaml"))?;
    let limits = manifest
        .limits(&config.defaults)
        .map_err(|e| anyhow::anyhow!("{}: {e}", wasm.with_extension("yaml").display()))?;
    let (runtime, name, wasm) = (runtime.clone(), name.to_owned(), wasm.to_owned());
    let (mut plugin, report) =
        tokio::task::spawn_blocking(move || runtime.load(&name, &wasm, limits)).await??;
    plugin.set_public(manifest.public);
    plugin.set_database_grant(manifest.permissions.database);
    plugin.warm_up().await?;
    tracing::info!(
        plugin = plugin.name(),
        version = &plugin.digest()[..12],
        cache = %report.cache.as_str(),
        load_ms = report.elapsed.as_millis() as u64,
        "plugin loaded"
    );
    Ok(plugin)
}

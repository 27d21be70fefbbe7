//! `ferry serve`: start-up in a fixed order (config already validated, then
//! the runtime, then the plugins, then the sockets and the HTTP listener),
//! signals (SIGHUP reloads the config; SIGTERM and SIGINT drain and stop),
//! and shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::deploy::Deployer;
use crate::doors::control::{self, Control};
use crate::doors::{Doors, http};
use crate::pipeline::{Auth, Pipeline};
use crate::runtime::Runtime;

pub async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let started = Instant::now();
    // Taken first: a signal during start-up (a SIGHUP while plugins
    // compile) must not end the process with the default action.
    let signals = Signals::new()?;
    // Keys are read and checked here, before anything else starts.
    let apps = crate::pipeline::Apps::build(&config, true, None)
        .map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    for dir in [&config.data, &config.plugins] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the folder {}", dir.display()))?;
    }
    // One bus: plugins publish on it through the runtime, doors and
    // subscriptions reach it through the pipeline.
    let shared = crate::capabilities::Shared {
        bus: Arc::default(),
        switchboard: Arc::new(crate::capabilities::services::Switchboard::new(
            config.max_call_depth,
        )),
    };
    let runtime = Arc::new(Runtime::new(
        Some(config.cache_dir()),
        config.max_instances,
        shared.clone(),
    )?);
    let pipeline = Arc::new(Pipeline::new(apps, shared.clone()));
    pipeline.set_loading_wait(config.defaults.timeout_ms);
    // The outbox opens (and its secrets are read) before any door does.
    let webhooks = crate::pipeline::webhooks::Webhooks::open(&config)
        .await
        .map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    let shutdown = CancellationToken::new();
    let bridges = crate::pipeline::bridges::Bridges::open(
        &config,
        pipeline.brokers().clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    pipeline.set_outboxes(webhooks.clone(), bridges);
    if let Some(settings) = &config.cluster {
        let cluster = crate::pipeline::cluster::Cluster::connect(settings)
            .await
            .map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
        // Versions deployed to the cluster land in this host's folder,
        // where the watcher (started below, before the first scan) sees them.
        tokio::spawn(crate::deploy::cluster::follow(
            cluster.client().clone(),
            settings.bucket.clone(),
            config.plugins.clone(),
            shutdown.clone(),
        ));
        // Webhook deliveries go through the cluster's stream: any host
        // sends them, and one that dies leaves its share to the others.
        webhooks.join_cluster(cluster.client().clone(), shutdown.clone());
        pipeline.set_cluster(cluster);
    }
    shared
        .switchboard
        .connect(Arc::downgrade(&pipeline)
            as std::sync::Weak<dyn crate::capabilities::services::Dispatch>);
    tokio::spawn(webhooks.dispatch(shutdown.clone()));
    let doors = Arc::new(Doors::new(&config, pipeline.clone(), shutdown.clone()));
    let deployer = Arc::new(Deployer::new(
        runtime.clone(),
        pipeline.clone(),
        doors.clone(),
        config.clone(),
        config_path,
        started,
    ));

    // Watching starts before the first scan, so a file dropped in between
    // is not missed.
    let watcher = deployer.watch().with_context(|| {
        format!(
            "cannot watch the plugins folder {}",
            config.plugins.display()
        )
    })?;
    // The doors open before any plugin is compiled: each service is
    // served the moment its own compilation ends, and requests for one
    // still loading wait for it.
    let loading = deployer.not_yet_serving().await;
    pipeline.table().set_loading(loading.iter().cloned());

    doors.open_main(config.socket.path.clone()).await?;
    if let (Some(path), Some(events)) = (config.events_socket(), &config.events) {
        doors
            .open_events(path.clone(), events)
            .await
            .with_context(|| format!("cannot open the events socket {}", path.display()))?;
        tracing::info!(path = %path.display(), "events socket listening");
    }
    let control = Control::bind(control::path(&config)).await?;
    doors.spawn(control.serve(deployer.clone(), shutdown.clone()));
    let state = http::HttpState {
        pipeline: pipeline.clone(),
        started,
        max_body: config.max_frame_bytes as usize,
        tally: doors.tally.clone(),
        websocket: config.websocket.clone().map(|settings| {
            Arc::new(crate::doors::websocket::Hub::new(
                settings,
                config.max_frame_bytes as usize,
            ))
        }),
    };
    let websocket = state.websocket.clone();
    if let Some(gateway) = config.http {
        let listener = tokio::net::TcpListener::bind(gateway.listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", gateway.listen))?;
        let addr = listener.local_addr()?;
        let limits = http::HttpLimits {
            max_connections: gateway.max_connections as usize,
            header_timeout: Duration::from_millis(gateway.header_timeout_ms),
        };
        doors.spawn(http::serve(
            listener,
            http::Door::gateway(state.clone(), limits.header_timeout),
            limits,
            shutdown.clone(),
        ));
        tracing::info!(%addr, "http gateway listening");
    }
    if let Some(admin) = config.admin {
        let listener = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("cannot listen for the admin endpoints on {admin}"))?;
        let addr = listener.local_addr()?;
        let limits = http::HttpLimits {
            max_connections: 64,
            header_timeout: Duration::from_secs(30),
        };
        doors.spawn(http::serve(
            listener,
            http::Door::admin(state),
            limits,
            shutdown.clone(),
        ));
        tracing::info!(%addr, "admin endpoints listening");
    }
    tracing::info!(
        socket = %config.socket.path.display(),
        loading = ?loading,
        open_ms = started.elapsed().as_millis() as u64,
        "listening; plugins are loading"
    );
    {
        let (deployer, pipeline, runtime) = (deployer.clone(), pipeline.clone(), runtime.clone());
        let socket = config.socket.path.clone();
        tokio::spawn(async move {
            deployer.reconcile_all().await;
            warn_about_apps(&pipeline);
            tracing::info!(
                socket = %socket.display(),
                services = ?pipeline.table().names(),
                pooling = runtime.pooling(),
                startup_ms = started.elapsed().as_millis() as u64,
                "ferry is serving"
            );
        });
    }

    signals.serve(&deployer).await;
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    shutdown.cancel();
    pipeline.stop_triggers();
    drop(watcher);
    let drain = Duration::from_millis(deployer.config().drain_timeout_ms);
    let tracker = pipeline.tracker().clone();
    let finish = async {
        // WebSocket clients finish what they run, then get 1001.
        if let Some(hub) = &websocket {
            hub.close_all().await;
        }
        doors.finish().await;
        // Accepted asynchronous requests are owed their answers too.
        tracker.idle().await;
    };
    if tokio::time::timeout(drain, finish).await.is_err() {
        tracing::warn!("requests still running after {drain:?}; exiting anyway");
    }
    // Messages a consumer still holds go back to their queues at once.
    for broker in pipeline.brokers().all() {
        broker.close().await;
    }
    let owed = tracker.status();
    tracing::info!(
        accepted = owed.accepted,
        delivered = owed.delivered,
        timed_out = owed.timed_out,
        failed_deliveries = owed.failed_deliveries,
        still_tracked = owed.tracked,
        "asynchronous requests over the host's life"
    );
    let tally = &doors.tally;
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
fn warn_about_apps(pipeline: &Pipeline) {
    let apps = pipeline.apps();
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
    for service in pipeline.missing() {
        tracing::warn!(
            service,
            "an application lists this service, but no plugin by that name is loaded"
        );
    }
}

/// The signals a running host answers.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Serves signals until SIGTERM or SIGINT: SIGHUP reloads the config
    /// in the background (a bad file is logged and changes nothing), so a
    /// SIGTERM is never kept waiting by a reload.
    async fn serve(mut self, deployer: &Arc<Deployer>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    let deployer = deployer.clone();
                    tokio::spawn(async move {
                        if let Err(e) = deployer.reload().await {
                            tracing::error!("config reload refused; the running config stays: {e}");
                        }
                    });
                }
            }
        }
    }
}

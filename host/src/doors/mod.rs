//! The doors of a running host: the main socket, one socket per service
//! (opened and closed as services are deployed and undeployed), the HTTP
//! gateway and the control socket. Every door turns what it reads into an
//! `Invocation` for the pipeline. Every door is a task in one set, so
//! shutdown can wait for the last request on any of them.

pub mod connection;
pub mod control;
pub mod envelope;
pub mod events;
pub mod framing;
pub mod http;
pub mod replies;
pub mod unix;
pub mod websocket;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::sync::atomic::AtomicU64;

use crate::config::{Config, MAX_SOCKET_PATH};
use crate::pipeline::Pipeline;
use unix::{ConnectionLimits, Listener, Listening, PeerConnections};

/// Requests read and responses written over every door, so shutdown can
/// say whether every accepted request was answered.
#[derive(Debug, Default)]
pub struct Tally {
    pub accepted: AtomicU64,
    pub answered: AtomicU64,
    /// HTTP requests that reached a handler, and responses handed back to
    /// the connection.
    pub http_accepted: AtomicU64,
    pub http_answered: AtomicU64,
}

pub struct Doors {
    pipeline: Arc<Pipeline>,
    limits: ConnectionLimits,
    connections: Arc<Semaphore>,
    peers: Arc<PeerConnections>,
    pub tally: Arc<Tally>,
    shutdown: CancellationToken,
    services_dir: PathBuf,
    mode: u32,
    allow_uids: Option<Arc<[u32]>>,
    app: Option<Arc<str>>,
    trusted: bool,
    /// Each service socket's own close switch, a child of `shutdown`.
    service_sockets: Mutex<HashMap<String, CancellationToken>>,
    /// Every door's task; shutdown waits for the last.
    tasks: TaskTracker,
}

impl Doors {
    pub fn new(config: &Config, pipeline: Arc<Pipeline>, shutdown: CancellationToken) -> Doors {
        let socket = &config.socket;
        Doors {
            pipeline,
            limits: ConnectionLimits {
                max_frame: config.max_frame_bytes,
                stall_timeout: std::time::Duration::from_millis(config.idle_timeout_ms),
                max_unsent: config.max_unsent_bytes,
                write_timeout: std::time::Duration::from_millis(config.write_timeout_ms),
            },
            connections: Arc::new(Semaphore::new(config.max_connections as usize)),
            peers: Arc::new(PeerConnections::new(socket.max_connections_per_uid)),
            tally: Arc::new(Tally::default()),
            shutdown,
            services_dir: config.services_dir(),
            mode: socket.mode,
            allow_uids: socket.allow_uids.as_deref().map(Arc::from),
            app: socket.app.as_deref().map(Arc::from),
            trusted: socket.trusted,
            service_sockets: Mutex::default(),
            tasks: TaskTracker::new(),
        }
    }

    fn listening(&self, service: Option<&str>) -> Arc<Listening> {
        Arc::new(Listening {
            service: service.map(Arc::from),
            app: self.app.clone(),
            trusted: self.trusted,
        })
    }

    /// Runs `door` until it ends; shutdown waits for it.
    pub fn spawn(&self, door: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(door);
    }

    /// Binds the main socket and serves it.
    pub async fn open_main(&self, path: PathBuf) -> std::io::Result<()> {
        let listener = Listener::bind(
            path,
            self.mode,
            self.listening(None),
            self.allow_uids.clone(),
        )
        .await?;
        self.serve(listener, self.shutdown.clone());
        Ok(())
    }

    /// Serves `listener` until `stop` (the host's shutdown, or a child of
    /// it that closes just this door).
    fn serve(&self, listener: Listener, stop: CancellationToken) {
        self.spawn(unix::serve(
            listener,
            self.pipeline.clone(),
            self.limits,
            self.connections.clone(),
            self.peers.clone(),
            self.tally.clone(),
            self.shutdown.clone(),
            stop,
        ));
    }

    /// Binds the events socket and serves its consumers.
    pub async fn open_events(
        &self,
        path: PathBuf,
        settings: &crate::config::EventsConfig,
    ) -> std::io::Result<()> {
        let listener = Listener::bind(
            path,
            self.mode,
            self.listening(None),
            self.allow_uids.clone(),
        )
        .await?;
        let settings = events::EventsSettings {
            queue: settings.queue,
            write_timeout: std::time::Duration::from_millis(settings.write_timeout_ms),
        };
        self.spawn(events::serve(
            listener,
            self.pipeline.clone(),
            settings,
            self.connections.clone(),
            self.peers.clone(),
            self.shutdown.clone(),
        ));
        Ok(())
    }

    /// Opens `run/services/NAME.sock` for a newly deployed service. A
    /// failure is logged: the service stays reachable through the main
    /// socket and HTTP.
    pub async fn open_service(&self, name: &str) {
        if self
            .service_sockets
            .lock()
            .expect("service sockets lock")
            .contains_key(name)
            || self.shutdown.is_cancelled()
        {
            return;
        }
        let path = self.services_dir.join(format!("{name}.sock"));
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            tracing::error!(
                path = %path.display(),
                "path too long for a Unix socket; `{name}` is reachable through the main socket only"
            );
            return;
        }
        let listener = match Listener::bind(
            path.clone(),
            self.mode,
            self.listening(Some(name)),
            self.allow_uids.clone(),
        )
        .await
        {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(path = %path.display(), "cannot open the service's socket; it is reachable through the main socket only: {e}");
                return;
            }
        };
        let close = self.shutdown.child_token();
        self.service_sockets
            .lock()
            .expect("service sockets lock")
            .insert(name.to_owned(), close.clone());
        self.serve(listener, close);
    }

    /// Closes an undeployed service's socket: its file goes at once, and no
    /// new connection is accepted. Connections already open stay until the
    /// client or the host ends them; their requests now answer `not_found`
    /// (`unavailable` when an application lists the service).
    pub fn close_service(&self, name: &str) {
        if let Some(close) = self
            .service_sockets
            .lock()
            .expect("service sockets lock")
            .remove(name)
        {
            // Removed here rather than when the listener is dropped, so that
            // deploying the service again at once finds the path free.
            let _ = std::fs::remove_file(self.services_dir.join(format!("{name}.sock")));
            close.cancel();
        }
    }

    /// Waits for every door to finish its requests (after shutdown began).
    pub async fn finish(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

//! The doors of a running host: the main socket, one socket per service
//! (opened and closed as services are deployed and undeployed), the HTTP
//! gateway and the control socket. Every door turns what it reads into an
//! `Invocation` for the pipeline. Every door is a task in one set, so
//! shutdown can wait for the last request on any of them.

pub mod control;
pub mod envelope;
pub mod framing;
pub mod http;
pub mod unix;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use std::sync::atomic::AtomicU64;

use crate::config::{Config, MAX_SOCKET_PATH};
use crate::pipeline::Pipeline;
use unix::{ConnectionLimits, Listener, Listening};

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
    pub tally: Arc<Tally>,
    shutdown: watch::Receiver<bool>,
    services_dir: PathBuf,
    mode: u32,
    allow_uids: Option<Arc<[u32]>>,
    app: Option<Arc<str>>,
    trusted: bool,
    /// Each service socket's own close switch.
    service_sockets: Mutex<HashMap<String, watch::Sender<bool>>>,
    tasks: Mutex<JoinSet<()>>,
}

impl Doors {
    pub fn new(config: &Config, pipeline: Arc<Pipeline>, shutdown: watch::Receiver<bool>) -> Doors {
        let socket = &config.socket;
        Doors {
            pipeline,
            limits: ConnectionLimits {
                max_frame: config.max_frame_bytes,
                stall_timeout: std::time::Duration::from_millis(config.idle_timeout_ms),
            },
            connections: Arc::new(Semaphore::new(config.max_connections as usize)),
            tally: Arc::new(Tally::default()),
            shutdown,
            services_dir: config.services_dir(),
            mode: socket.mode,
            allow_uids: socket.allow_uids.as_deref().map(Arc::from),
            app: socket.app.as_deref().map(Arc::from),
            trusted: socket.trusted,
            service_sockets: Mutex::default(),
            tasks: Mutex::default(),
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
        let mut tasks = self.tasks.lock().expect("door set lock");
        // Doors of undeployed services end; do not keep them forever.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(door);
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
        self.serve(listener, None);
        Ok(())
    }

    fn serve(&self, listener: Listener, close: Option<watch::Receiver<bool>>) {
        self.spawn(unix::serve(
            listener,
            self.pipeline.clone(),
            self.limits,
            self.connections.clone(),
            self.tally.clone(),
            self.shutdown.clone(),
            close,
        ));
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
            || *self.shutdown.borrow()
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
        let (close, closed) = watch::channel(false);
        self.service_sockets
            .lock()
            .expect("service sockets lock")
            .insert(name.to_owned(), close);
        self.serve(listener, Some(closed));
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
            close.send_replace(true);
        }
    }

    /// Waits for every door to finish its requests (after shutdown began).
    pub async fn finish(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("door set lock"));
        while tasks.join_next().await.is_some() {}
    }
}

/// Resolves once shutdown has begun.
pub async fn stopping(mut shutdown: watch::Receiver<bool>) {
    // A closed channel means the server is gone, which is a shutdown too.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

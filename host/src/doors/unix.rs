//! The Unix-socket doors: binding (with stale-socket recovery) and peer
//! credentials, and accepting under a connection limit; each accepted
//! connection is served by `connection.rs`.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Tally;
use super::envelope;
use crate::core::{ErrorBody, ErrorCode};
use crate::pipeline::Pipeline;

/// A socket listener's settings, shared by its connections.
#[derive(Debug, Clone)]
pub struct Listening {
    /// A service's own socket implies its service.
    pub service: Option<Arc<str>>,
    /// Requests that name no application go to this one.
    pub app: Option<Arc<str>>,
    /// Callers need no token here.
    pub trusted: bool,
}

/// Settings every connection shares.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_frame: u32,
    pub stall_timeout: Duration,
    /// Response bytes a connection may have waiting before reading pauses.
    pub max_unsent: usize,
    /// How long a write may stall before the connection is closed.
    pub write_timeout: Duration,
}

/// Connections open per peer uid, over every socket.
pub struct PeerConnections {
    open: Mutex<HashMap<u32, u32>>,
    max: u32,
}

impl PeerConnections {
    pub fn new(max: u32) -> Self {
        PeerConnections {
            open: Mutex::default(),
            max,
        }
    }

    /// Counts one more connection of `uid`, or says why not.
    pub(super) fn enter(self: &Arc<Self>, uid: u32) -> Result<PeerSlot, String> {
        let mut open = self.open.lock().expect("peer table lock");
        let count = open.entry(uid).or_default();
        if *count >= self.max {
            return Err(format!(
                "uid {uid} already has {} connections open, the most one user may (socket.max_connections_per_uid)",
                self.max
            ));
        }
        *count += 1;
        Ok(PeerSlot {
            peers: self.clone(),
            uid,
        })
    }
}

/// One connection's place in its uid's count.
pub struct PeerSlot {
    peers: Arc<PeerConnections>,
    uid: u32,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.open.lock().expect("peer table lock");
        if let Some(count) = open.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// Binds a listener at `path`, creating its folder, and gives the file
/// `mode`. An existing socket file is replaced only if nothing answers on
/// it; any other file is left alone.
pub async fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is in use by a running process (another ferry?)",
                        path.display()
                    ),
                ));
            }
            Err(_) => {
                tracing::info!(path = %path.display(), "replacing stale socket");
                std::fs::remove_file(path)?;
            }
        },
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", path.display()),
        )
    })?;
    // Connections are only accepted once `serve` runs, so nobody is served
    // under the umask's mode in between.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot set mode {mode:o} on {}: {e}", path.display()),
        )
    })?;
    Ok(listener)
}

/// A bound socket and the door it opens; removes its file when dropped.
pub struct Listener {
    pub path: PathBuf,
    pub listener: UnixListener,
    pub listening: Arc<Listening>,
    /// Peer uids allowed to connect; `None` lets in whoever the file mode
    /// lets in.
    pub allow_uids: Option<Arc<[u32]>>,
    /// The socket file's device and inode, taken when it was bound.
    file: Option<(u64, u64)>,
}

impl Listener {
    /// Binds `path` (see [`bind`]) for `listening`.
    pub async fn bind(
        path: PathBuf,
        mode: u32,
        listening: Arc<Listening>,
        allow_uids: Option<Arc<[u32]>>,
    ) -> io::Result<Listener> {
        let listener = bind(&path, mode).await?;
        let file = file_id(&path);
        Ok(Listener {
            listener,
            path,
            listening,
            allow_uids,
            file,
        })
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Drop for Listener {
    fn drop(&mut self) {
        // A service that was undeployed and deployed again has a new socket
        // at the same path by now: only remove the file if it is still ours.
        if self.file.is_some() && file_id(&self.path) == self.file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A connection the accept loop took, holding its places in the connection
/// limits, or one it turns away, with the reason.
pub(super) enum Admission {
    Admitted {
        stream: UnixStream,
        permit: OwnedSemaphorePermit,
        peer: PeerSlot,
    },
    Refused {
        stream: UnixStream,
        permit: OwnedSemaphorePermit,
        code: ErrorCode,
        reason: String,
    },
}

impl Listener {
    /// The next connection, once one of `connections` is free, checked as
    /// every socket checks its peers: readable credentials, `allow_uids`,
    /// the per-uid cap. `None` once `stop` fires.
    pub(super) async fn admit(
        &self,
        connections: &Arc<Semaphore>,
        peers: &Arc<PeerConnections>,
        stop: &CancellationToken,
    ) -> Option<Admission> {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("connection semaphore is never closed"),
            _ = stop.cancelled() => return None,
        };
        let stream = loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => break stream,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(path = %self.path.display(), "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stop.cancelled() => return None,
            }
        };
        let checked = match stream.peer_cred() {
            Err(e) => Err((
                ErrorCode::Forbidden,
                format!("cannot read the peer's credentials: {e}"),
            )),
            Ok(cred) => match &self.allow_uids {
                Some(allowed) if !allowed.contains(&cred.uid()) => Err((
                    ErrorCode::Forbidden,
                    format!("uid {} is not in this socket's allow_uids", cred.uid()),
                )),
                _ => peers
                    .enter(cred.uid())
                    .map_err(|reason| (ErrorCode::Overloaded, reason)),
            },
        };
        Some(match checked {
            Ok(peer) => Admission::Admitted {
                stream,
                permit,
                peer,
            },
            Err((code, reason)) => {
                tracing::warn!(path = %self.path.display(), "refused a connection: {reason}");
                Admission::Refused {
                    stream,
                    permit,
                    code,
                    reason,
                }
            }
        })
    }
}

/// Accepts connections until `stop` (the host's shutdown, or this door's
/// own close), then waits for the connections it started to finish their
/// in-flight requests. A closed door's connections stay until the host
/// shuts down.
pub async fn serve(
    listener: Listener,
    pipeline: Arc<Pipeline>,
    limits: ConnectionLimits,
    connections: Arc<Semaphore>,
    peers: Arc<PeerConnections>,
    tally: Arc<Tally>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    let tasks = TaskTracker::new();
    while let Some(admission) = listener.admit(&connections, &peers, &stop).await {
        let (stream, permit, peer) = match admission {
            Admission::Admitted {
                stream,
                permit,
                peer,
            } => (stream, permit, peer),
            Admission::Refused {
                stream,
                permit,
                code,
                reason,
            } => {
                let frame = envelope::error_frame(envelope::NO_ID, &ErrorBody::new(code, reason));
                tasks.spawn(turn_away(stream, frame, permit));
                continue;
            }
        };
        let (pipeline, listening, tally, shutdown) = (
            pipeline.clone(),
            listener.listening.clone(),
            tally.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            super::connection::serve(stream, pipeline, listening, limits, tally, shutdown).await;
            drop((permit, peer));
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// Tells a refused peer why (`message`, in its door's own format), then
/// closes.
pub(super) async fn turn_away(
    mut stream: UnixStream,
    message: Vec<u8>,
    permit: OwnedSemaphorePermit,
) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&message).await?;
        stream.shutdown().await
    })
    .await;
    drop(permit);
}

//! The Unix-socket doors: binding (with stale-socket recovery) and peer
//! credentials, accepting under a connection limit, and serving one
//! connection with many requests in flight and responses written as they
//! complete. Each frame becomes an envelope, then an invocation.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::envelope::{self, Request};
use super::framing::{FrameError, FrameReader};
use super::Tally;
use crate::core::{DoorKind, ErrorBody, ErrorCode, Route};
use crate::pipeline::Pipeline;

/// Requests one connection may have in flight; reading pauses beyond it, so
/// one client cannot queue unbounded work.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;

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

/// Accepts connections until `stop` (the host's shutdown, or this door's
/// own close), then waits for the connections it started to finish their
/// in-flight requests. A closed door's connections stay until the host
/// shuts down.
pub async fn serve(
    listener: Listener,
    pipeline: Arc<Pipeline>,
    limits: ConnectionLimits,
    connections: Arc<Semaphore>,
    tally: Arc<Tally>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    let tasks = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("connection semaphore is never closed"),
            _ = stop.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(path = %listener.path.display(), "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        if let Some(allowed) = &listener.allow_uids
            && let Err(refusal) = check_peer(&stream, allowed)
        {
            tracing::warn!(path = %listener.path.display(), "refused a connection: {refusal}");
            tasks.spawn(refuse(stream, refusal, permit));
            continue;
        }
        let (pipeline, listening, tally, shutdown) = (
            pipeline.clone(),
            listener.listening.clone(),
            tally.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            connection(stream, pipeline, listening, limits, tally, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// Checks the connecting process's uid, as the kernel reports it, against
/// the listener's allow-list.
fn check_peer(stream: &UnixStream, allowed: &[u32]) -> Result<(), String> {
    let uid = stream
        .peer_cred()
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?
        .uid();
    if allowed.contains(&uid) {
        Ok(())
    } else {
        Err(format!("uid {uid} is not in this socket's allow_uids"))
    }
}

/// Tells a refused peer why (one `forbidden` frame), then closes.
async fn refuse(mut stream: UnixStream, reason: String, permit: OwnedSemaphorePermit) {
    let frame = envelope::error_frame(
        &serde_json::Value::Null,
        &ErrorBody::new(ErrorCode::Forbidden, reason),
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&frame).await?;
        stream.shutdown().await
    })
    .await;
    drop(permit);
}

/// Serves one connection. Requests run concurrently and their responses are
/// written in completion order. A clean end of stream (or a shutdown) stops
/// reading but still delivers every response owed; a client that is gone
/// cancels the work done on its behalf.
async fn connection(
    stream: UnixStream,
    pipeline: Arc<Pipeline>,
    listening: Arc<Listening>,
    limits: ConnectionLimits,
    tally: Arc<Tally>,
    shutdown: CancellationToken,
) {
    // Created once: registering a fresh shutdown waiter per frame costs time.
    let stop = shutdown.cancelled();
    tokio::pin!(stop);
    let (read, write) = stream.into_split();
    let mut frames = FrameReader::new(read, limits.max_frame, limits.stall_timeout);
    let (responses, outbox) = mpsc::unbounded_channel::<Outgoing>();
    let mut writer = tokio::spawn(write_responses(write, outbox, tally.clone()));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let mut requests = JoinSet::new();

    loop {
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => permit.expect("in-flight semaphore is never closed"),
            _ = &mut stop => break,
        };
        let frame: Bytes = tokio::select! {
            read = frames.read_frame() => match read {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    if let Some(response) = e.response() {
                        let _ = responses.send((response, None));
                    }
                    match &e {
                        FrameError::Io(_) | FrameError::Truncated => tracing::debug!("connection closed: {e}"),
                        _ => tracing::info!("closing connection: {e}"),
                    }
                    break;
                }
            },
            _ = &mut stop => break,
            _ = &mut writer => {
                // The client stopped reading: nobody wants the answers.
                requests.abort_all();
                return;
            }
        };
        tally.accepted.fetch_add(1, Ordering::Relaxed);
        let (pipeline, listening, responses) = (pipeline.clone(), listening.clone(), responses.clone());
        requests.spawn(async move {
            let response = answer(&pipeline, &frame, &listening).await;
            let _ = responses.send((response, Some(permit)));
        });
        while requests.try_join_next().is_some() {}
    }

    drop(responses);
    tokio::select! {
        _ = async { while requests.join_next().await.is_some() {} } => {
            let _ = writer.await;
        }
        _ = &mut writer => requests.abort_all(),
    }
}

/// A response frame, with the in-flight slot it holds until it is written:
/// a client that sends but does not read stalls itself, not the host.
type Outgoing = (Vec<u8>, Option<OwnedSemaphorePermit>);

/// Writes response frames as they come, flushing whenever no more are ready
/// so that pipelined responses share system calls.
async fn write_responses(
    write: OwnedWriteHalf,
    mut outbox: mpsc::UnboundedReceiver<Outgoing>,
    tally: Arc<Tally>,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, write);
    let mut written = 0;
    while let Some((frame, slot)) = outbox.recv().await {
        if out.write_all(&frame).await.is_err() {
            return;
        }
        written += u64::from(slot.is_some());
        // Let the requests that are ready finish first: their responses then
        // leave in the same write, which saves a system call and a wake-up of
        // the client per response.
        tokio::task::yield_now().await;
        while let Ok((frame, slot)) = outbox.try_recv() {
            if out.write_all(&frame).await.is_err() {
                return;
            }
            written += u64::from(slot.is_some());
        }
        if out.flush().await.is_err() {
            return;
        }
        // Counted once flushed: only then has the client been answered. Only
        // responses to requests count (they hold a slot); a too_large
        // refusal answers no request.
        tally.answered.fetch_add(written, Ordering::Relaxed);
        written = 0;
    }
    let _ = out.shutdown().await;
}

/// Handles one frame and answers the response frame. Never fails: every
/// problem becomes an error response.
async fn answer(pipeline: &Pipeline, frame: &[u8], listening: &Listening) -> Vec<u8> {
    let received = std::time::Instant::now();
    let request = match Request::parse(frame) {
        Ok(request) => request,
        Err(bad) => {
            return envelope::error_frame(
                &bad.id,
                &ErrorBody::new(ErrorCode::BadRequest, bad.message),
            );
        }
    };
    let result = match request.service(listening.service.as_deref()) {
        Err(e) => Err(e),
        Ok(service) => {
            let request_id = serde_json::to_string(&request.id).unwrap_or_default();
            let route = Route::Named {
                app: request.app.as_deref(),
                default: listening.app.as_deref(),
            };
            let invocation = request.invocation(
                DoorKind::Unix,
                route,
                service,
                &request_id,
                listening.trusted,
                received,
            );
            pipeline.invoke(&invocation).await
        }
    };
    match result {
        Ok(result) => envelope::success_frame(&request.id, &result),
        Err(error) => envelope::error_frame(&request.id, &error),
    }
}

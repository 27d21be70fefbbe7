//! One Unix-socket connection: frames in, each request its own task, and
//! responses out in completion order. Request tasks write their response
//! envelopes straight into the connection's outbox; the writer sends
//! whatever has gathered in one write, so pipelined responses share system
//! calls and wake-ups of the client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::poll_immediate;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Tally;
use super::envelope::{self, Request};
use super::framing::{FrameError, FrameReader};
use super::replies;
use super::unix::{ConnectionLimits, Listening};
use crate::core::{DoorKind, ErrorBody, ErrorCode, Route};
use crate::pipeline::Pipeline;

/// Requests one connection may have in flight or waiting to be written;
/// reading pauses beyond it, so one client cannot queue unbounded work.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;

/// An output buffer that grew past this is given back after its write.
const KEEP_CAPACITY: usize = 256 * 1024;

/// Serves one connection. Requests run concurrently and their responses are
/// written in completion order. A clean end of stream (or a shutdown) stops
/// reading but still delivers every response owed; a client that is gone
/// cancels the work done on its behalf.
pub async fn serve(
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
    let outbox = Arc::new(Outbox::default());
    let mut writer = tokio::spawn(write_responses(
        write,
        outbox.clone(),
        tally.clone(),
        limits.write_timeout,
    ));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let mut requests = JoinSet::new();

    loop {
        // The waits below are biased to the work, which is usually ready at
        // once (polling the shutdown and the writer on every frame was
        // their largest cost), so these two are looked at here first: a
        // flood of frames still cannot keep a shutdown or a gone reader
        // from ending the loop.
        if shutdown.is_cancelled() {
            break;
        }
        if writer.is_finished() {
            requests.abort_all();
            return;
        }
        let permit = tokio::select! {
            biased;
            permit = in_flight.clone().acquire_owned() => permit.expect("in-flight semaphore is never closed"),
            _ = &mut stop => break,
        };
        // A client that does not read its responses stops being read: the
        // host holds at most `max_unsent` bytes of answers for it.
        tokio::select! {
            biased;
            _ = outbox.below(limits.max_unsent) => {}
            _ = &mut stop => break,
            _ = &mut writer => {
                requests.abort_all();
                return;
            }
        }
        let frame: Bytes = tokio::select! {
            biased;
            read = frames.read_frame() => match read {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    if let Some(error) = e.response() {
                        outbox.push(None, |out| envelope::write_error(out, envelope::NO_ID, &error));
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
        let (pipeline, listening, outbox) = (pipeline.clone(), listening.clone(), outbox.clone());
        // The answer's state (over a kilobyte) boxed once: the task holds
        // only the box, so spawning and finishing it copy a few words
        // instead of that state, several times over.
        requests.spawn(async move {
            Box::pin(answer(&pipeline, &frame, &listening, &outbox, permit)).await;
        });
        while requests.try_join_next().is_some() {}
    }

    // Reading is over: a clean end of stream may be a half-close (the
    // client still reads its answers) or the client gone altogether, which
    // only the socket's hang-up says when there is nothing to write.
    tokio::select! {
        _ = async { while requests.join_next().await.is_some() {} } => {
            outbox.close();
            let _ = writer.await;
        }
        _ = &mut writer => requests.abort_all(),
        _ = hung_up(frames.get_ref().as_ref()) => {
            tracing::debug!("client hung up; cancelling its requests");
            requests.abort_all();
            writer.abort();
        }
    }
}

/// How often a connection whose reading has ended looks for a hang-up.
const HANGUP_CHECK: Duration = Duration::from_millis(20);

/// Resolves once the client has closed its end of the socket entirely, not
/// just its sending side (the kernel reports `EPOLLHUP` only then).
async fn hung_up(stream: &UnixStream) {
    loop {
        match stream.ready(tokio::io::Interest::WRITABLE).await {
            Ok(ready) if ready.is_write_closed() => return,
            Ok(_) => tokio::time::sleep(HANGUP_CHECK).await,
            Err(_) => return,
        }
    }
}

/// Handles one frame and puts its response in the outbox. Never fails:
/// every problem becomes an error response.
async fn answer(
    pipeline: &Arc<Pipeline>,
    frame: &[u8],
    listening: &Listening,
    outbox: &Outbox,
    slot: OwnedSemaphorePermit,
) {
    let received = Instant::now();
    let arrival = || replies::Arrival {
        door: DoorKind::Unix,
        service: listening.service.as_deref().map(str::to_owned),
        default_app: listening.app.as_deref().map(str::to_owned),
        host: None,
        trusted: listening.trusted,
        received,
    };
    let request = match Request::parse(frame) {
        Ok(request) => request,
        // Looked for only when the frame is not a plain request, so plain
        // requests pay nothing for batches.
        Err(_) if replies::is_batch(frame) => {
            match Box::pin(replies::run_batch(pipeline, frame, &arrival())).await {
                Ok(response) => outbox.push(Some(slot), |out| out.extend_from_slice(&response)),
                Err((id, error)) => {
                    outbox.push(Some(slot), |out| envelope::write_error(out, &id, &error))
                }
            }
            return;
        }
        Err(bad) => {
            let error = ErrorBody::new(ErrorCode::BadRequest, bad.message);
            outbox.push(Some(slot), |out| envelope::write_error(out, bad.id, &error));
            return;
        }
    };
    if request.reply_to.is_some() {
        match replies::accept(pipeline, &request, frame, arrival()) {
            Ok(response) => outbox.push(Some(slot), |out| out.extend_from_slice(&response)),
            Err(error) => {
                let id = request.id();
                outbox.push(Some(slot), |out| envelope::write_error(out, id, &error));
            }
        }
        return;
    }
    let result = match request.service(listening.service.as_deref()) {
        Err(e) => Err(e),
        Ok(service) => {
            let route = Route::Named {
                app: request.app.as_deref(),
                default: listening.app.as_deref(),
            };
            let invocation =
                request.invocation(DoorKind::Unix, route, service, listening.trusted, received);
            pipeline.invoke(&invocation).await
        }
    };
    let id = request.id();
    match result {
        Ok(result) => outbox.push(Some(slot), |out| envelope::write_success(out, id, &result)),
        Err(error) => outbox.push(Some(slot), |out| envelope::write_error(out, id, &error)),
    }
}

/// Responses waiting to be written: filled by the request tasks, drained by
/// the writer. Each response keeps its in-flight slot until it is written,
/// so a client that sends but does not read stalls itself, not the host.
#[derive(Default)]
struct Outbox {
    pending: Mutex<Pending>,
    ready: Notify,
    /// Bytes pushed and not yet written (in the buffer, or being written).
    unsent: AtomicUsize,
    /// Signalled after every write.
    drained: Notify,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The slots of the responses in `bytes`, merged into one permit (one
    /// per request answered): handed back together after the write, with
    /// one turn of the semaphore's lock rather than one per response.
    slots: Option<OwnedSemaphorePermit>,
    /// No more responses will come.
    closed: bool,
}

impl Outbox {
    /// Appends one response (written by `write`) and wakes the writer.
    /// A response without a slot answers no request (a `too_large` refusal).
    fn push(&self, slot: Option<OwnedSemaphorePermit>, write: impl FnOnce(&mut Vec<u8>)) {
        {
            let mut pending = self.pending.lock().expect("outbox lock");
            let before = pending.bytes.len();
            write(&mut pending.bytes);
            self.unsent
                .fetch_add(pending.bytes.len() - before, Ordering::Relaxed);
            match (&mut pending.slots, slot) {
                (Some(held), Some(slot)) => held.merge(slot),
                (held, slot @ Some(_)) => *held = slot,
                (_, None) => {}
            }
        }
        self.ready.notify_one();
    }

    /// Resolves once fewer than `max` bytes wait to be written.
    async fn below(&self, max: usize) {
        loop {
            let drained = self.drained.notified();
            if self.unsent.load(Ordering::Relaxed) < max {
                return;
            }
            drained.await;
        }
    }

    fn close(&self) {
        self.pending.lock().expect("outbox lock").closed = true;
        self.ready.notify_one();
    }
}

/// Writes what the outbox holds whenever it holds something, until it is
/// closed and empty or the client stops reading.
async fn write_responses(
    mut write: OwnedWriteHalf,
    outbox: Arc<Outbox>,
    tally: Arc<Tally>,
    write_timeout: Duration,
) {
    // Two buffers take turns: the request tasks fill one while the other is
    // being written.
    let mut sending = Vec::new();
    loop {
        outbox.ready.notified().await;
        // Let the requests that are ready finish first: their responses then
        // leave in the same write.
        tokio::task::yield_now().await;
        let (slots, closed) = {
            let mut pending = outbox.pending.lock().expect("outbox lock");
            std::mem::swap(&mut pending.bytes, &mut sending);
            (std::mem::take(&mut pending.slots), pending.closed)
        };
        if !sending.is_empty() {
            // A client that reads nothing for this long is given up on: its
            // connection closes, and the work done for it is cancelled. The
            // timer is armed only for a write the socket does not take at
            // once, which is rare: arming one costs a clock read and more.
            let mut writing = std::pin::pin!(write.write_all(&sending));
            let written = match poll_immediate(writing.as_mut()).await {
                Some(done) => Ok(done),
                None => tokio::time::timeout(write_timeout, writing).await,
            };
            match written {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!(
                        "closing a connection whose client has not read for {write_timeout:?}"
                    );
                    return;
                }
            }
            outbox.unsent.fetch_sub(sending.len(), Ordering::Relaxed);
            outbox.drained.notify_waiters();
            sending.clear();
            if sending.capacity() > KEEP_CAPACITY {
                sending = Vec::new();
            }
        }
        // Counted once written: only then has the client been answered.
        let answered = slots.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        tally.answered.fetch_add(answered as u64, Ordering::Relaxed);
        drop(slots);
        // Closed after the last request finished: what was swapped out
        // above was the last of it.
        if closed && outbox.pending.lock().expect("outbox lock").bytes.is_empty() {
            let _ = write.shutdown().await;
            return;
        }
    }
}

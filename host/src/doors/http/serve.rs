//! Serving the HTTP router over TCP with the limits a public door needs:
//! at most `max_connections` open, headers within `header_timeout` (which
//! also closes keep-alive connections left idle that long), bodies within
//! the same time. At the cap, the oldest connection that has no request
//! running is closed to make room, so connections that stall or idle
//! cannot lock well-behaved clients out; only when every connection is
//! busy is the newcomer turned away, with a 503.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::timer::{self, Clock, Deadline, HeaderTimer};

/// The HTTP door's limits.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// One open connection, as the accept loop sees it.
struct Open {
    /// Requests being handled now.
    busy: AtomicUsize,
    /// What the accept loop asks of it: `RUN`, `EVICT` or `DRAIN`.
    stop: AtomicU8,
    /// The connection's task, woken when `stop` changes.
    waker: AtomicWaker,
    /// When the request head hyper waits for is due, for the sweeper.
    header: Arc<Deadline>,
}

/// Serving as usual.
const RUN: u8 = 0;
/// Close at once (only ever asked of one with nothing running).
const EVICT: u8 = 1;
/// Finish the request running, then close (the host is shutting down).
const DRAIN: u8 = 2;

impl Open {
    fn ask(&self, stop: u8) {
        self.stop.store(stop, Ordering::Release);
        self.waker.wake();
    }

    /// Ready with `EVICT` or `DRAIN` once asked. The connection's task
    /// looks at this every time it wakes, so it is an atomic and a waker
    /// rather than a cancellation token for each reason: a token's check
    /// takes a lock, and its wait another.
    fn poll_stop(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<u8> {
        self.waker.register(cx.waker());
        match self.stop.load(Ordering::Acquire) {
            RUN => std::task::Poll::Pending,
            stop => std::task::Poll::Ready(stop),
        }
    }
}

#[derive(Default)]
struct Connections {
    /// By age: the first is the oldest.
    open: Mutex<BTreeMap<u64, Arc<Open>>>,
    next: AtomicU64,
}

impl Connections {
    fn add(&self) -> (u64, Arc<Open>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let open = Arc::new(Open {
            busy: AtomicUsize::new(0),
            stop: AtomicU8::new(RUN),
            waker: AtomicWaker::new(),
            header: Arc::default(),
        });
        self.open
            .lock()
            .expect("connections lock")
            .insert(id, open.clone());
        (id, open)
    }

    fn remove(&self, id: u64) {
        self.open.lock().expect("connections lock").remove(&id);
    }

    /// Asks every open connection to finish what it runs and close.
    fn drain(&self) {
        for open in self.open.lock().expect("connections lock").values() {
            open.ask(DRAIN);
        }
    }

    /// Wakes the connections whose request head is overdue.
    fn sweep(&self, clock: &Clock) {
        for open in self.open.lock().expect("connections lock").values() {
            open.header.wake_if_due(clock);
        }
    }

    /// Makes room for one more under `max`: closes the oldest connection
    /// with nothing running. Answers false when every one is busy.
    fn make_room(&self, max: usize) -> bool {
        let mut open = self.open.lock().expect("connections lock");
        if open.len() < max {
            return true;
        }
        let idle = open
            .iter()
            .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id);
        match idle.and_then(|id| open.remove(&id)) {
            Some(evicted) => {
                evicted.ask(EVICT);
                true
            }
            None => false,
        }
    }
}

/// Counts a request as running while alive.
struct Busy(Arc<Open>);

impl Busy {
    fn enter(open: &Arc<Open>) -> Self {
        open.busy.fetch_add(1, Ordering::AcqRel);
        Busy(open.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets requests in
/// flight finish and closes every connection.
pub async fn serve(
    listener: TcpListener,
    door: super::Door,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Connections::default());
    let door = Arc::new(door);
    let tasks = TaskTracker::new();
    let clock = Clock::new();
    // Runs until the last connection is gone (draining ones still need
    // their header deadline), so outside `tasks`, and stopped after them.
    let sweeper = tokio::spawn({
        let connections = connections.clone();
        let mut ticks = tokio::time::interval(timer::tick(limits.header_timeout));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        async move {
            loop {
                ticks.tick().await;
                connections.sweep(&clock);
            }
        }
    });
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and similar: back off.
                    tracing::warn!("http accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        if !connections.make_room(limits.max_connections) {
            tasks.spawn(turn_away(stream));
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (id, open) = connections.add();
        let (door, connections) = (door.clone(), connections.clone());
        tasks.spawn(async move {
            let service = hyper::service::service_fn({
                let open = open.clone();
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let busy = Busy::enter(&open);
                    let door = door.clone();
                    async move {
                        let response = door.answer(request.map(axum::body::Body::new)).await;
                        drop(busy);
                        Ok::<_, std::convert::Infallible>(response)
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(HeaderTimer {
                    clock,
                    deadline: open.header.clone(),
                })
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                // `GET /v1/ws` takes the connection over; it then counts
                // against the WebSocket door's own limit, not this one.
                .with_upgrades();
            tokio::pin!(conn);
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    stop = std::future::poll_fn(|cx| open.poll_stop(cx)), if !closing => {
                        // Evicted: nothing runs on it (a head half-read,
                        // or an idle keep-alive), so it is simply closed.
                        if stop == EVICT {
                            break;
                        }
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            connections.remove(id);
        });
    }
    drop(listener);
    // Every connection was added before its task was spawned, and none is
    // added after the loop: each one is asked.
    connections.drain();
    tasks.close();
    tasks.wait().await;
    sweeper.abort();
}

/// Answers a connection there is no room for, and closes it.
async fn turn_away(mut stream: tokio::net::TcpStream) {
    let body = r#"{"error":{"code":"overloaded","message":"every HTTP connection is busy running a request; retry in a moment"}}"#;
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
}

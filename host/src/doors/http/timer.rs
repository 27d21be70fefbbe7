//! The HTTP door's header deadline: the `Timer` hyper's
//! `header_read_timeout` runs on, one per connection, with one sweeper per
//! listener that wakes the connections whose head is late.
//!
//! hyper arms a fresh sleep each time a connection waits for a request
//! head and drops it once the head is in, so on a keep-alive connection
//! every request armed one. With tokio's timer each of them registered and
//! cancelled a timer-wheel entry under the driver's lock. Here a sleep only writes
//! its deadline into its connection's [`Deadline`]; the sweeper looks at
//! every connection once a tick and wakes those past their deadline. A
//! head is never cut off before its deadline, and at most a tick after.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

/// How often the sweeper looks: an eighth of the header timeout, within
/// 5 to 250 ms.
pub fn tick(header_timeout: Duration) -> Duration {
    (header_timeout / 8).clamp(Duration::from_millis(5), Duration::from_millis(250))
}

/// The listener's clock: deadlines are kept as milliseconds since `start`,
/// so that a connection's deadline fits in an atomic.
#[derive(Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    /// `at` in milliseconds, rounded up, plus one: zero means no deadline.
    fn millis(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start);
        since.as_millis() as u64 + u64::from(!since.subsec_nanos().is_multiple_of(1_000_000)) + 1
    }

    fn now_millis(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }
}

/// One connection's armed deadline, if any, and who waits on it.
#[derive(Default)]
pub struct Deadline {
    /// `Clock::millis` of the deadline; 0 when nothing is armed.
    at: AtomicU64,
    waker: AtomicWaker,
}

impl Deadline {
    /// Wakes the waiting connection if its deadline has passed (the
    /// sleep itself then checks the time again).
    pub fn wake_if_due(&self, clock: &Clock) {
        let at = self.at.load(Ordering::Acquire);
        if at != 0 && at <= clock.now_millis() {
            self.waker.wake();
        }
    }
}

/// hyper's timer for one connection.
pub struct HeaderTimer {
    pub clock: Clock,
    pub deadline: Arc<Deadline>,
}

impl hyper::rt::Timer for HeaderTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeaderSleep {
            deadline,
            clock: self.clock,
            slot: self.deadline.clone(),
            armed: None,
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeaderSleep>() {
            Some(mut sleep) => {
                sleep.disarm();
                sleep.deadline = new_deadline;
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

struct HeaderSleep {
    deadline: Instant,
    clock: Clock,
    slot: Arc<Deadline>,
    /// The deadline as written into `slot` (as the sweeper reads it), once
    /// it is.
    armed: Option<u64>,
}

impl HeaderSleep {
    fn disarm(&mut self) {
        if let Some(at) = self.armed.take() {
            // Only this sleep's own deadline: another may have armed since.
            let _ = self
                .slot
                .at
                .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

impl Future for HeaderSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // The first poll comes right after hyper took the time to set the
        // deadline, so only later ones (a sweep's wake-up, or the socket's)
        // read the clock.
        if this.armed.is_some() && Instant::now() >= this.deadline {
            this.disarm();
            return Poll::Ready(());
        }
        // The waker first: a sweep that sees the deadline then finds it.
        this.slot.waker.register(cx.waker());
        if this.armed.is_none() {
            let at = this.clock.millis(this.deadline);
            this.slot.at.store(at, Ordering::Release);
            this.armed = Some(at);
        }
        Poll::Pending
    }
}

impl Drop for HeaderSleep {
    fn drop(&mut self) {
        self.disarm();
    }
}

impl hyper::rt::Sleep for HeaderSleep {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_sleep_is_woken_by_the_sweep_only_once_due_and_disarms_when_dropped() {
        let clock = Clock::new();
        let deadline = Arc::new(Deadline::default());
        let timer = HeaderTimer {
            clock,
            deadline: deadline.clone(),
        };
        let woken = Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);

        let mut sleep = timer.sleep(Duration::from_millis(30));
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        deadline.wake_if_due(&clock);
        assert_eq!(
            woken.0.load(Ordering::Relaxed),
            0,
            "woken before its deadline"
        );
        std::thread::sleep(Duration::from_millis(40));
        deadline.wake_if_due(&clock);
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        assert!(sleep.as_mut().poll(&mut cx).is_ready());

        // Reset to later, polled, then dropped: nothing stays armed.
        timer.reset(&mut sleep, Instant::now() + Duration::from_millis(5));
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        drop(sleep);
        std::thread::sleep(Duration::from_millis(10));
        deadline.wake_if_due(&clock);
        assert_eq!(
            woken.0.load(Ordering::Relaxed),
            1,
            "a dropped sleep was woken"
        );
    }
}

//! A plugin's circuit breaker: supervision the way a process supervisor
//! does it, for components. Failures (traps, timeouts, instances that will
//! not start, failed health checks) are counted in a sliding window, and
//! failed health checks also in a row; too many open the circuit, and
//! requests are refused at once with a retry-after hint. When the back-off
//! has passed, a health check (if the plugin exports one) may veto: a
//! failing one reopens the circuit for twice as long. Otherwise the next
//! request is the probe: if it succeeds the circuit closes, if it fails the
//! circuit opens again for twice as long. Only a request can close it, since
//! only a request shows the handler works.
//!
//! Time is passed in, so the state machine is tested without sleeping.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config;

/// How long a refused caller is told to wait while a probe is running.
const PROBE_RETRY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// The back-off has passed; `probing` while a request probes.
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Failure times within the window (closed phase only).
    recent: VecDeque<Instant>,
    /// Failed health checks since the last good one.
    health_streak: u32,
    /// The back-off of the latest opening.
    backoff: Duration,
    /// When the circuit last closed after being open.
    closed_at: Option<Instant>,
    opens: u64,
    last_failure: Option<String>,
}

/// What happened to the circuit, for the log and for the plugin (which
/// drops its idle instances when the circuit opens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened { backoff: Duration },
    Closed,
}

pub struct Circuit {
    settings: config::Circuit,
    state: Mutex<State>,
    /// Whether the phase is `Closed`, readable without the lock: the common
    /// case of a request to a healthy plugin takes no lock at all.
    closed: AtomicBool,
}

/// Whether a request may run now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: run.
    Pass,
    /// Half-open: this request is the probe; report its outcome with
    /// `probe: true` (or call [`Circuit::abandon_probe`]).
    Probe,
    /// Open: answer `unavailable` now.
    Refuse { retry_after: Duration },
}

/// What a health check due now would be.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Closed: an ordinary check; a failure counts like a failed request.
    Regular,
    /// The back-off has passed: a failing check reopens the circuit.
    Gate,
    /// Open, or a probe is running: not now.
    Skip,
}

/// Where an outcome came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Request { probe: bool },
    Health,
}

/// The circuit as status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CircuitSnapshot {
    pub state: &'static str,
    pub failures_in_window: usize,
    pub failed_health_checks_in_a_row: u32,
    /// Open: how long until a probe may run.
    pub retry_in_ms: Option<u64>,
    pub backoff_ms: u64,
    pub opens: u64,
    pub last_failure: Option<String>,
}

impl Circuit {
    pub fn new(settings: config::Circuit) -> Circuit {
        Circuit {
            settings,
            state: Mutex::new(State {
                phase: Phase::Closed,
                recent: VecDeque::new(),
                health_streak: 0,
                backoff: Duration::from_millis(settings.backoff_ms),
                closed_at: None,
                opens: 0,
                last_failure: None,
            }),
            closed: AtomicBool::new(true),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("circuit lock")
    }

    pub fn admit(&self, now: Instant) -> Admission {
        if self.closed.load(Ordering::Acquire) {
            return Admission::Pass;
        }
        let mut state = self.lock();
        match state.phase {
            Phase::Closed => Admission::Pass,
            Phase::Open { until } if now < until => Admission::Refuse {
                retry_after: until - now,
            },
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                state.phase = Phase::HalfOpen { probing: true };
                Admission::Probe
            }
            Phase::HalfOpen { probing: true } => Admission::Refuse {
                retry_after: PROBE_RETRY,
            },
        }
    }

    pub fn check(&self, now: Instant) -> Check {
        let mut state = self.lock();
        match state.phase {
            Phase::Closed => Check::Regular,
            Phase::Open { until } if now < until => Check::Skip,
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                state.phase = Phase::HalfOpen { probing: false };
                Check::Gate
            }
            Phase::HalfOpen { probing: true } => Check::Skip,
        }
    }

    /// A probe that ended without a verdict (its caller went away, or it
    /// was refused for another reason): the next request may probe.
    pub fn abandon_probe(&self) {
        let mut state = self.lock();
        if state.phase == (Phase::HalfOpen { probing: true }) {
            state.phase = Phase::HalfOpen { probing: false };
        }
    }

    /// When the back-off of an open circuit ends, while it has not.
    pub fn open_until(&self, now: Instant) -> Option<Instant> {
        match self.lock().phase {
            Phase::Open { until } if until > now => Some(until),
            _ => None,
        }
    }

    pub fn success(&self, now: Instant, origin: Origin) -> Option<Transition> {
        // Only a probe's success changes anything for a request.
        if origin == (Origin::Request { probe: false }) {
            return None;
        }
        let mut state = self.lock();
        match origin {
            Origin::Health => {
                state.health_streak = 0;
                None
            }
            Origin::Request { probe: true } if matches!(state.phase, Phase::HalfOpen { .. }) => {
                state.phase = Phase::Closed;
                self.closed.store(true, Ordering::Release);
                state.recent.clear();
                state.health_streak = 0;
                state.closed_at = Some(now);
                Some(Transition::Closed)
            }
            Origin::Request { .. } => None,
        }
    }

    pub fn failure(&self, now: Instant, origin: Origin, reason: String) -> Option<Transition> {
        let mut state = self.lock();
        state.last_failure = Some(reason);
        if origin == Origin::Health {
            state.health_streak += 1;
        }
        let window = Duration::from_millis(self.settings.window_ms);
        let initial = Duration::from_millis(self.settings.backoff_ms);
        let max = Duration::from_millis(self.settings.max_backoff_ms);
        let backoff = match (state.phase, origin) {
            // The probe, or a health check after the back-off, failed.
            (Phase::HalfOpen { .. }, Origin::Request { probe: true } | Origin::Health) => {
                (state.backoff * 2).min(max)
            }
            (Phase::Closed, _) => {
                state.recent.push_back(now);
                while state
                    .recent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > window)
                {
                    state.recent.pop_front();
                }
                let limit = self.settings.failures;
                if state.recent.len() < limit as usize && state.health_streak < limit {
                    return None;
                }
                // Failing again soon after recovering: back off longer.
                let relapse = state
                    .closed_at
                    .is_some_and(|closed| now.duration_since(closed) <= window);
                if relapse {
                    (state.backoff * 2).min(max)
                } else {
                    initial
                }
            }
            // Requests that were already running when the circuit opened,
            // or a failure beside the probe: the verdict is the probe's.
            _ => return None,
        };
        state.phase = Phase::Open {
            until: now + backoff,
        };
        self.closed.store(false, Ordering::Release);
        state.backoff = backoff;
        state.recent.clear();
        state.opens += 1;
        Some(Transition::Opened { backoff })
    }

    pub fn snapshot(&self, now: Instant) -> CircuitSnapshot {
        let state = self.lock();
        let window = Duration::from_millis(self.settings.window_ms);
        let (name, retry_in) = match state.phase {
            Phase::Closed => ("closed", None),
            Phase::Open { until } => (
                "open",
                Some(until.saturating_duration_since(now).as_millis() as u64),
            ),
            Phase::HalfOpen { .. } => ("half_open", Some(0)),
        };
        CircuitSnapshot {
            state: name,
            failures_in_window: state
                .recent
                .iter()
                .filter(|t| now.duration_since(**t) <= window)
                .count(),
            failed_health_checks_in_a_row: state.health_streak,
            retry_in_ms: retry_in,
            backoff_ms: state.backoff.as_millis() as u64,
            opens: state.opens,
            last_failure: state.last_failure.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: Origin = Origin::Request { probe: false };
    const PROBE: Origin = Origin::Request { probe: true };

    fn circuit() -> Circuit {
        Circuit::new(config::Circuit {
            failures: 3,
            window_ms: 1_000,
            backoff_ms: 100,
            max_backoff_ms: 300,
        })
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn open(c: &Circuit, at: Instant) -> Option<Transition> {
        (0..3)
            .map(|i| c.failure(at + ms(i), REQUEST, "x".into()))
            .last()
            .flatten()
    }

    #[test]
    fn opens_after_enough_failures_within_the_window() {
        let c = circuit();
        let t = Instant::now();
        assert_eq!(c.failure(t, REQUEST, "a".into()), None);
        // The first failure falls out of the window before the third.
        assert_eq!(c.failure(t + ms(900), REQUEST, "b".into()), None);
        assert_eq!(c.failure(t + ms(1_200), REQUEST, "c".into()), None);
        assert_eq!(c.admit(t + ms(1_200)), Admission::Pass);
        assert_eq!(
            c.failure(t + ms(1_300), REQUEST, "d".into()),
            Some(Transition::Opened { backoff: ms(100) })
        );
        assert_eq!(
            c.admit(t + ms(1_350)),
            Admission::Refuse {
                retry_after: ms(50)
            }
        );
        assert_eq!(c.check(t + ms(1_350)), Check::Skip);
        assert_eq!(c.open_until(t + ms(1_350)), Some(t + ms(1_400)));
        assert_eq!(c.open_until(t + ms(1_400)), None, "never a time past");
        let snapshot = c.snapshot(t + ms(1_350));
        assert_eq!((snapshot.state, snapshot.opens), ("open", 1));
        assert_eq!(snapshot.last_failure.as_deref(), Some("d"));
    }

    #[test]
    fn one_probe_at_a_time_and_only_a_request_closes() {
        let c = circuit();
        let t = Instant::now();
        open(&c, t);
        let after = t + ms(150);
        // A passing health check after the back-off does not close it.
        assert_eq!(c.check(after), Check::Gate);
        assert_eq!(c.success(after, Origin::Health), None);
        assert_eq!(c.snapshot(after).state, "half_open");
        assert_eq!(c.admit(after), Admission::Probe);
        assert!(matches!(c.admit(after), Admission::Refuse { .. }));
        assert_eq!(c.check(after), Check::Skip, "a request is probing");
        // A failed probe reopens for twice as long.
        assert_eq!(
            c.failure(after, PROBE, "still broken".into()),
            Some(Transition::Opened { backoff: ms(200) })
        );
        assert!(matches!(c.admit(after + ms(199)), Admission::Refuse { .. }));
        // A probe whose caller went away lets the next request probe.
        assert_eq!(c.admit(after + ms(200)), Admission::Probe);
        c.abandon_probe();
        assert_eq!(c.admit(after + ms(201)), Admission::Probe);
        assert_eq!(c.success(after + ms(210), PROBE), Some(Transition::Closed));
        assert_eq!(c.admit(after + ms(211)), Admission::Pass);
        assert_eq!(c.check(after + ms(211)), Check::Regular);
    }

    #[test]
    fn a_failing_health_check_after_the_back_off_reopens() {
        let c = circuit();
        let t = Instant::now();
        open(&c, t);
        assert_eq!(c.check(t + ms(150)), Check::Gate);
        assert_eq!(
            c.failure(t + ms(150), Origin::Health, "sick".into()),
            Some(Transition::Opened { backoff: ms(200) })
        );
    }

    #[test]
    fn failed_health_checks_in_a_row_open_it_whatever_the_window() {
        let c = circuit();
        let t = Instant::now();
        // One check every 10 s: never three in a 1 s window.
        assert_eq!(c.failure(t, Origin::Health, "sick".into()), None);
        assert_eq!(
            c.failure(t + ms(10_000), Origin::Health, "sick".into()),
            None
        );
        assert!(
            c.failure(t + ms(20_000), Origin::Health, "sick".into())
                .is_some()
        );
        // A good check in between starts the count again.
        let c = circuit();
        c.failure(t, Origin::Health, "sick".into());
        c.failure(t + ms(10_000), Origin::Health, "sick".into());
        c.success(t + ms(15_000), Origin::Health);
        assert_eq!(
            c.failure(t + ms(20_000), Origin::Health, "sick".into()),
            None
        );
        assert_eq!(c.snapshot(t + ms(20_000)).failed_health_checks_in_a_row, 1);
    }

    #[test]
    fn relapses_back_off_exponentially_up_to_the_cap() {
        let c = circuit();
        let mut t = Instant::now();
        let mut backoffs = Vec::new();
        for _ in 0..4 {
            if let Some(Transition::Opened { backoff }) = open(&c, t) {
                backoffs.push(backoff);
                t += backoff + ms(10);
            }
            assert_eq!(c.admit(t), Admission::Probe);
            c.success(t, PROBE);
            t += ms(20);
        }
        assert_eq!(backoffs, [ms(100), ms(200), ms(300), ms(300)]);
        // Healthy for longer than the window: back to the first back-off.
        t += ms(2_000);
        assert_eq!(open(&c, t), Some(Transition::Opened { backoff: ms(100) }));
    }

    #[test]
    fn successes_while_closed_do_not_reset_the_count() {
        let c = circuit();
        let t = Instant::now();
        c.failure(t, REQUEST, "x".into());
        c.failure(t + ms(1), REQUEST, "x".into());
        assert_eq!(c.success(t + ms(2), REQUEST), None);
        assert!(c.failure(t + ms(3), REQUEST, "x".into()).is_some());
    }
}

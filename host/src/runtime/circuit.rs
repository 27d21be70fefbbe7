//! A plugin's circuit breaker: supervision the way a process supervisor
//! does it, for components. Failures (traps, timeouts, failed health checks,
//! instances that will not start) are counted in a sliding window; too many
//! open the circuit, and requests are refused at once with a retry-after
//! hint. When the back-off has passed, one probe (a health check, or the
//! next request) decides: success closes the circuit, failure opens it again
//! for twice as long.
//!
//! Time is passed in, so the state machine is tested without sleeping.

use std::collections::VecDeque;
use std::sync::Mutex;
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
    /// The back-off has passed; `probing` while the one probe runs.
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Failure times within the window (closed phase only).
    recent: VecDeque<Instant>,
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

/// The circuit as status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CircuitSnapshot {
    pub state: &'static str,
    pub failures_in_window: usize,
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
                backoff: Duration::from_millis(settings.backoff_ms),
                closed_at: None,
                opens: 0,
                last_failure: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("circuit lock")
    }

    pub fn admit(&self, now: Instant) -> Admission {
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

    /// A probe that ended without a verdict (its caller went away, or it
    /// was refused for another reason): the next request may probe.
    pub fn abandon_probe(&self) {
        let mut state = self.lock();
        if state.phase == (Phase::HalfOpen { probing: true }) {
            state.phase = Phase::HalfOpen { probing: false };
        }
    }

    /// When the open circuit's back-off ends, if it is open.
    pub fn open_until(&self) -> Option<Instant> {
        match self.lock().phase {
            Phase::Open { until } => Some(until),
            _ => None,
        }
    }

    pub fn success(&self, now: Instant, probe: bool) -> Option<Transition> {
        let mut state = self.lock();
        if probe && matches!(state.phase, Phase::HalfOpen { .. }) {
            state.phase = Phase::Closed;
            state.recent.clear();
            state.closed_at = Some(now);
            return Some(Transition::Closed);
        }
        None
    }

    pub fn failure(&self, now: Instant, probe: bool, reason: String) -> Option<Transition> {
        let mut state = self.lock();
        state.last_failure = Some(reason);
        let window = Duration::from_millis(self.settings.window_ms);
        let initial = Duration::from_millis(self.settings.backoff_ms);
        let max = Duration::from_millis(self.settings.max_backoff_ms);
        let backoff = match state.phase {
            Phase::HalfOpen { .. } if probe => (state.backoff * 2).min(max),
            Phase::Closed => {
                state.recent.push_back(now);
                while state
                    .recent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > window)
                {
                    state.recent.pop_front();
                }
                if state.recent.len() < self.settings.failures as usize {
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
            Phase::Open { .. } | Phase::HalfOpen { .. } => return None,
        };
        state.phase = Phase::Open {
            until: now + backoff,
        };
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

    #[test]
    fn opens_after_enough_failures_within_the_window() {
        let c = circuit();
        let t = Instant::now();
        assert_eq!(c.failure(t, false, "a".into()), None);
        // The first failure falls out of the window before the third.
        assert_eq!(c.failure(t + ms(900), false, "b".into()), None);
        assert_eq!(c.failure(t + ms(1_200), false, "c".into()), None);
        assert_eq!(c.admit(t + ms(1_200)), Admission::Pass);
        assert_eq!(
            c.failure(t + ms(1_300), false, "d".into()),
            Some(Transition::Opened { backoff: ms(100) })
        );
        assert_eq!(
            c.admit(t + ms(1_350)),
            Admission::Refuse {
                retry_after: ms(50)
            }
        );
        let snapshot = c.snapshot(t + ms(1_350));
        assert_eq!((snapshot.state, snapshot.opens), ("open", 1));
        assert_eq!(snapshot.last_failure.as_deref(), Some("d"));
    }

    #[test]
    fn one_probe_at_a_time_and_its_verdict_decides() {
        let c = circuit();
        let t = Instant::now();
        for i in 0..3 {
            c.failure(t + ms(i), false, "x".into());
        }
        let after = t + ms(150);
        assert_eq!(c.admit(after), Admission::Probe);
        assert!(matches!(c.admit(after), Admission::Refuse { .. }));
        // A failed probe reopens for twice as long.
        assert_eq!(
            c.failure(after, true, "still broken".into()),
            Some(Transition::Opened { backoff: ms(200) })
        );
        assert!(matches!(c.admit(after + ms(199)), Admission::Refuse { .. }));
        // A probe whose caller went away lets the next request probe.
        assert_eq!(c.admit(after + ms(200)), Admission::Probe);
        c.abandon_probe();
        assert_eq!(c.admit(after + ms(201)), Admission::Probe);
        assert_eq!(c.success(after + ms(210), true), Some(Transition::Closed));
        assert_eq!(c.admit(after + ms(211)), Admission::Pass);
        assert_eq!(c.snapshot(after + ms(211)).state, "closed");
    }

    #[test]
    fn relapses_back_off_exponentially_up_to_the_cap() {
        let c = circuit();
        let mut t = Instant::now();
        let mut backoffs = Vec::new();
        for _ in 0..4 {
            for i in 0..3 {
                if let Some(Transition::Opened { backoff }) =
                    c.failure(t + ms(i), false, "x".into())
                {
                    backoffs.push(backoff);
                    t += backoff + ms(10);
                }
            }
            assert_eq!(c.admit(t), Admission::Probe);
            c.success(t, true);
            t += ms(20);
        }
        assert_eq!(backoffs, [ms(100), ms(200), ms(300), ms(300)]);
        // Healthy for longer than the window: back to the first back-off.
        t += ms(2_000);
        let mut opened = None;
        for i in 0..3 {
            opened = c.failure(t + ms(i), false, "x".into()).or(opened);
        }
        assert_eq!(opened, Some(Transition::Opened { backoff: ms(100) }));
    }

    #[test]
    fn successes_while_closed_do_not_reset_the_count() {
        let c = circuit();
        let t = Instant::now();
        c.failure(t, false, "x".into());
        c.failure(t + ms(1), false, "x".into());
        assert_eq!(c.success(t + ms(2), false), None);
        assert!(c.failure(t + ms(3), false, "x".into()).is_some());
    }
}

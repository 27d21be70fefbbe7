//! `ferry:plugin/log`: plugin log records into the host's log, tagged with the
//! plugin's name. What a plugin writes cannot pass for the host's own lines
//! (control characters are escaped) and cannot flood the log (each version
//! has a budget of lines per second; what is over it is counted and
//! reported, not written). Its stdout and stderr (see `wasi`) go the same way.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::bindings::{LogHost, LogLevel};

/// Longest message kept from a plugin's log record; the rest is cut so a
/// plugin cannot flood the host log with one call.
const MAX_MESSAGE: usize = 8 * 1024;

/// A version's budget of log lines: `rate` a second, up to `burst` at once.
/// Shared by all its instances.
pub struct LogBudget {
    rate: f64,
    burst: f64,
    bucket: Mutex<(f64, Instant)>,
    dropped: AtomicU64,
    /// Dropped lines already reported in the log.
    reported: AtomicU64,
}

impl LogBudget {
    pub fn new(lines_per_s: u32) -> Self {
        let rate = f64::from(lines_per_s);
        LogBudget {
            rate,
            burst: rate * 5.0,
            bucket: Mutex::new((rate * 5.0, Instant::now())),
            dropped: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        }
    }

    /// Whether one more line may be written now; counts it if not.
    fn allow(&self) -> bool {
        let mut bucket = self.bucket.lock().expect("log budget lock");
        let now = Instant::now();
        let (tokens, last) = *bucket;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            true
        } else {
            *bucket = (tokens, now);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Lines dropped so far, for status.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A plugin's text as one log line: control characters (new lines,
/// carriage returns, terminal escapes) written as escapes, so a message
/// can never start a line that looks like the host's.
pub fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Where a plugin's line came from.
#[derive(Clone, Copy)]
pub enum Source {
    Log(LogLevel),
    Stdout,
    Stderr,
}

/// Writes one line of a plugin's into the host log, within its budget;
/// `trace` is the trace id of the call it was written in, if known.
pub fn emit(
    plugin: &str,
    budget: &LogBudget,
    source: Source,
    text: &str,
    trace: Option<crate::core::TraceId>,
) {
    let trace = trace.map(tracing::field::display);
    if !budget.allow() {
        return;
    }
    let dropped = budget.dropped.load(Ordering::Relaxed);
    let reported = budget.reported.swap(dropped, Ordering::Relaxed);
    if dropped > reported {
        tracing::warn!(
            target: "plugin",
            plugin,
            dropped = dropped - reported,
            "log lines dropped: over this plugin's log_lines_per_s"
        );
    }
    let text = clean(truncate(text, MAX_MESSAGE));
    match source {
        Source::Log(LogLevel::Trace) => tracing::trace!(target: "plugin", plugin, trace, "{text}"),
        Source::Log(LogLevel::Debug) => tracing::debug!(target: "plugin", plugin, trace, "{text}"),
        Source::Log(LogLevel::Info) => tracing::info!(target: "plugin", plugin, trace, "{text}"),
        Source::Log(LogLevel::Warn) => tracing::warn!(target: "plugin", plugin, trace, "{text}"),
        Source::Log(LogLevel::Error) => tracing::error!(target: "plugin", plugin, trace, "{text}"),
        Source::Stdout => tracing::info!(target: "plugin", plugin, stream = "stdout", "{text}"),
        Source::Stderr => tracing::warn!(target: "plugin", plugin, stream = "stderr", "{text}"),
    }
}

/// Per-store state of the log interface.
pub struct PluginLog {
    plugin: Arc<str>,
    budget: Arc<LogBudget>,
    /// The last error-level message of the current request, quoted when the
    /// request traps (the SDK logs panic messages at error level).
    last_error: Option<String>,
    /// The trace id of the call being handled.
    trace: Option<crate::core::TraceId>,
}

impl PluginLog {
    pub fn new(plugin: Arc<str>, budget: Arc<LogBudget>) -> Self {
        PluginLog {
            plugin,
            budget,
            last_error: None,
            trace: None,
        }
    }

    /// Tags what the plugin logs from now on with the call's trace id.
    pub fn set_trace(&mut self, trace: crate::core::TraceId) {
        self.trace = Some(trace);
    }

    /// Forgets what the previous request logged.
    pub fn begin_request(&mut self) {
        self.last_error = None;
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl LogHost for PluginLog {
    fn log(&mut self, level: LogLevel, message: String) {
        let message = truncate(&message, MAX_MESSAGE);
        emit(
            &self.plugin,
            &self.budget,
            Source::Log(level),
            message,
            self.trace,
        );
        if matches!(level, LogLevel::Error) {
            self.last_error = Some(clean(message).into_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("plain"), "plain");
        assert_eq!(
            clean("a\n2026-12-01T00:00:00Z INFO ferry: forged\rx\u{1b}[31m"),
            "a\\n2026-12-01T00:00:00Z INFO ferry: forged\\rx\\u{1b}[31m"
        );
    }

    #[test]
    fn the_budget_drops_what_is_over_it_and_counts() {
        let budget = LogBudget::new(10);
        let allowed = (0..200).filter(|_| budget.allow()).count();
        assert_eq!(allowed, 50, "the burst is five seconds' worth");
        assert_eq!(budget.dropped(), 150);
    }
}

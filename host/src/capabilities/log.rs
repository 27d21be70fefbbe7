//! `ferry:plugin/log`: plugin log records into the host's log, tagged with the
//! plugin's name.

use std::sync::Arc;

use super::bindings::{LogHost, LogLevel};

/// Longest message kept from a plugin's log record; the rest is cut so a
/// plugin cannot flood the host log with one call.
const MAX_MESSAGE: usize = 8 * 1024;

/// Per-store state of the log interface.
pub struct PluginLog {
    plugin: Arc<str>,
    /// The last error-level message of the current request, quoted when the
    /// request traps (the SDK logs panic messages at error level).
    last_error: Option<String>,
}

impl PluginLog {
    pub fn new(plugin: Arc<str>) -> Self {
        PluginLog {
            plugin,
            last_error: None,
        }
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
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            LogLevel::Error => {
                tracing::error!(target: "plugin", plugin, "{message}");
                self.last_error = Some(message.to_owned());
            }
        }
    }
}

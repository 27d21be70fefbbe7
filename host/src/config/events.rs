//! The `events` section: the socket outside programs consume events on.

use std::path::PathBuf;

use serde::Deserialize;

/// Where outside consumers connect, and what each may have waiting.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// The consumers' socket; without it, `events.sock` beside the main
    /// socket. Mode and `allow_uids` are the main socket's.
    pub path: Option<PathBuf>,
    /// Events one consumer may have waiting; past it the oldest is dropped.
    pub queue: usize,
    /// How long a write to a consumer may stall before the consumer is
    /// disconnected.
    pub write_timeout_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            path: None,
            queue: 100,
            write_timeout_ms: 5_000,
        }
    }
}

impl EventsConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if !(1..=1_000_000).contains(&self.queue) {
            return Err(format!(
                "events.queue must be 1 to 1000000, not {}",
                self.queue
            ));
        }
        if self.write_timeout_ms == 0 {
            return Err("events.write_timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

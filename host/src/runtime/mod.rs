//! The plugin runtime: the engine and its compile cache, loaded versions
//! with their instance pools and circuit breakers, and their supervision.
//! Below the pipeline, above the capabilities a plugin imports.

mod cache;
mod circuit;
mod engine;
mod error;
mod idle;
mod latency;
mod plugin;
mod pool;
mod state;
mod stats;
mod supervisor;

pub use cache::digest;
pub use engine::{LoadReport, Runtime};
pub use error::CallError;
pub use plugin::{Call, Plugin, Settings, Work};
pub use stats::StatsSnapshot;

pub use crate::capabilities::invocation::Context;

/// Seconds since the Unix epoch, as status shows times.
pub fn unix_seconds(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

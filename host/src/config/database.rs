//! `apps.NAME.database`: an application's pool settings.

use serde::Deserialize;

/// An application's database pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite:PATH`, `mysql://…`/`mariadb://…` or `postgres://…`. Absent:
    /// `sqlite:` at `data/db/APP.sqlite`, created on first use.
    pub url: Option<String>,
    pub max_connections: u32,
    /// How long a statement may wait for a free connection.
    pub acquire_timeout_ms: u64,
    /// The server-side limit on one statement (the request's deadline
    /// applies as well, whichever is sooner).
    pub statement_timeout_ms: u64,
    /// Bytes of rows one query may hold in the host's memory; more answers
    /// `too_large`.
    pub max_result_bytes: usize,
    /// Transactions one request may hold open at once (each holds a
    /// connection; never more than `max_connections`); one more answers
    /// `too_large`.
    pub max_open_transactions: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: 10,
            acquire_timeout_ms: 2_000,
            statement_timeout_ms: 5_000,
            max_result_bytes: 16 << 20,
            max_open_transactions: 4,
        }
    }
}

impl DatabaseConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if !(1..=1_000).contains(&self.max_connections) {
            return Err(format!(
                "max_connections must be between 1 and 1000, not {}",
                self.max_connections
            ));
        }
        if self.acquire_timeout_ms == 0 || self.statement_timeout_ms == 0 {
            return Err("acquire_timeout_ms and statement_timeout_ms must be at least 1".into());
        }
        if self.max_result_bytes < 1024 {
            return Err(format!(
                "max_result_bytes must be at least 1024, not {}",
                self.max_result_bytes
            ));
        }
        if self.max_open_transactions == 0 {
            return Err("max_open_transactions must be at least 1".into());
        }
        Ok(())
    }
}

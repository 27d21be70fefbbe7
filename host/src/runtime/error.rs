//! Why a call into a plugin did not produce a result, and the error object
//! each failure becomes for the caller.

use crate::core::{ErrorBody, ErrorCode};

/// Why a call into a plugin did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin answered an error of its own; it passes through as is.
    #[error("{message}")]
    Plugin { code: String, message: String },
    #[error("service `{service}` is overloaded: {detail}")]
    Overloaded { service: String, detail: String },
    #[error("service `{service}` did not answer within {ms} ms")]
    Timeout { service: String, ms: u64 },
    #[error("service `{service}` trapped: {detail}")]
    Trap { service: String, detail: String },
    #[error("service `{service}` exceeded its memory limit of {limit_mb} MiB")]
    MemoryLimit { service: String, limit_mb: u64 },
    #[error("service `{service}` answered a result that is not valid JSON: {detail}")]
    BadResult { service: String, detail: String },
    #[error(
        "service `{service}` answered {bytes} bytes, over its limit of {limit} (max_response_bytes)"
    )]
    TooLarge {
        service: String,
        bytes: usize,
        limit: u64,
    },
    #[error("service `{service}` could not be started: {detail}")]
    Instantiate { service: String, detail: String },
    #[error(
        "service `{service}` is failing and its circuit is open; retry in {} ms{}",
        retry_after.as_millis(),
        last_failure.as_ref().map(|f| format!(" (last failure: {f})")).unwrap_or_default()
    )]
    CircuitOpen {
        service: String,
        retry_after: std::time::Duration,
        last_failure: Option<String>,
    },
}

impl CallError {
    pub fn code(&self) -> &str {
        match self {
            CallError::Plugin { code, .. } => code,
            CallError::Overloaded { .. } => ErrorCode::Overloaded.as_str(),
            CallError::Timeout { .. } => ErrorCode::Timeout.as_str(),
            CallError::Trap { .. } | CallError::MemoryLimit { .. } => {
                ErrorCode::PluginTrap.as_str()
            }
            CallError::BadResult { .. } => ErrorCode::Internal.as_str(),
            CallError::TooLarge { .. } => ErrorCode::TooLarge.as_str(),
            CallError::Instantiate { .. } | CallError::CircuitOpen { .. } => {
                ErrorCode::Unavailable.as_str()
            }
        }
    }

    /// Whether the plugin itself failed (as opposed to answering an error of
    /// its own, or the host being busy): what the circuit breaker counts.
    pub fn is_plugin_failure(&self) -> bool {
        matches!(
            self,
            CallError::Timeout { .. }
                | CallError::Trap { .. }
                | CallError::MemoryLimit { .. }
                | CallError::BadResult { .. }
                | CallError::Instantiate { .. }
        )
    }
}

impl From<CallError> for ErrorBody {
    fn from(e: CallError) -> Self {
        let retry_after_ms = match &e {
            // Rounded up: retrying a moment early only meets a refusal.
            CallError::CircuitOpen { retry_after, .. } => Some(retry_after.as_millis() as u64 + 1),
            _ => None,
        };
        ErrorBody {
            code: e.code().to_owned(),
            message: e.to_string(),
            retry_after_ms,
        }
    }
}

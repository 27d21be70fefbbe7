//! What operators read: the status document (`/v1/status`, the control
//! socket, `ferry status`) and the Prometheus metrics. Read-only views over
//! the pipeline's table and applications.

pub mod metrics;
pub mod status;

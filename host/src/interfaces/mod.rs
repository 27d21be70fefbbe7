//! Host implementations of the interfaces plugins import: one module per WIT
//! interface, each with its own state reached through a projection from the
//! store's data.

pub mod config;
pub mod log;
pub mod sql;
pub mod wasi;

//! Host implementations of the interfaces plugins import: one module per WIT
//! interface, each with its own state in the instance's store, reached
//! through a projection from the store's data. The WIT bindings are
//! generated once, in `bindings`.

pub mod bindings;
pub mod config;
pub mod events;
pub mod invocation;
pub mod log;
pub mod sql;
pub mod wasi;

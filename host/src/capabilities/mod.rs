//! Host implementations of the interfaces plugins import: one module per WIT
//! interface, each with its own state in the instance's store, reached
//! through a projection from the store's data. The WIT bindings are
//! generated once, in `bindings`.

pub mod bindings;
pub mod config;
pub mod events;
pub mod invocation;
pub mod log;
pub mod services;
pub mod sql;
pub mod wasi;

use std::sync::Arc;

/// What the capabilities of every instance share host-wide: the event bus
/// and the way to other services.
#[derive(Clone, Default)]
pub struct Shared {
    pub bus: Arc<crate::resources::bus::Bus>,
    pub switchboard: Arc<services::Switchboard>,
}

//! The one place WIT bindings are generated for the host. Only the types the
//! rest of the host needs are re-exported.

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "service",
        exports: { default: async },
    });
}

pub use generated::ferry::plugin::log::{
    Host as LogHost, Level as LogLevel, add_to_linker as add_log_to_linker,
};
pub use generated::ferry::plugin::types::Context;
pub use generated::{Service, ServicePre};

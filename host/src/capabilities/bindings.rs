//! The one place WIT bindings are generated for the host. Only the types the
//! rest of the host needs are re-exported.

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "service",
        exports: { default: async },
        imports: { "ferry:plugin/sql": async | trappable },
        with: { "ferry:plugin/sql.transaction": crate::capabilities::sql::Transaction },
    });
}

pub use generated::ferry::plugin::config::{
    Host as ConfigHost, add_to_linker as add_config_to_linker,
};
pub use generated::ferry::plugin::log::{
    Host as LogHost, Level as LogLevel, add_to_linker as add_log_to_linker,
};
pub use generated::ferry::plugin::sql::{
    Executed as SqlExecuted, Host as SqlHost, HostTransaction as SqlHostTransaction,
    Rows as SqlRows, Value as SqlValue, add_to_linker as add_sql_to_linker,
};
pub use generated::ferry::plugin::types::{Context, Error as WitError};
pub use generated::{Service, ServiceIndices};

/// Where the optional `health` export lives; `world service` does not
/// require it, so it is looked up by name instead of generated.
pub const HEALTH_INTERFACE: &str = "ferry:plugin/health@0.1.0";
pub const HEALTH_CHECK: &str = "check";

//! The one place WIT bindings are generated for the host, from the `host`
//! world: every interface a plugin may import, and every export the host
//! knows how to call. Only what the rest of the host needs is re-exported.

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "host",
        exports: { default: async },
        imports: {
            "ferry:plugin/sql": async | trappable,
            "ferry:plugin/invocation": trappable,
            "ferry:plugin/services": async,
            "ferry:plugin/events": async,
        },
        with: {
            "ferry:plugin/sql.transaction": crate::capabilities::sql::Transaction,
            "ferry:plugin/invocation.call": crate::capabilities::invocation::CallInfo,
        },
    });
}

pub use generated::exports::ferry::plugin::call_handler::{
    Guest as CallHandler, GuestIndices as CallHandlerIndices,
};
pub use generated::exports::ferry::plugin::event_handler::{
    Event as WitEvent, Failure as WitFailure, Guest as EventHandler,
    GuestIndices as EventHandlerIndices,
};
pub use generated::exports::ferry::plugin::handler::{
    Guest as Handler, GuestIndices as HandlerIndices,
};
pub use generated::exports::ferry::plugin::health::{
    Guest as Health, GuestIndices as HealthIndices,
};
pub use generated::exports::ferry::plugin::request_handler::{
    Guest as RequestHandler, GuestIndices as RequestHandlerIndices,
};
pub use generated::ferry::plugin::config::{
    Host as ConfigHost, add_to_linker as add_config_to_linker,
};
pub use generated::ferry::plugin::events::{
    Host as EventsHost, add_to_linker as add_events_to_linker,
};
pub use generated::ferry::plugin::invocation::{
    Host as InvocationHost, HostCall as InvocationHostCall,
    add_to_linker as add_invocation_to_linker,
};
pub use generated::ferry::plugin::log::{
    Host as LogHost, Level as LogLevel, add_to_linker as add_log_to_linker,
};
pub use generated::ferry::plugin::services::{
    Host as ServicesHost, Request as ServicesRequest, add_to_linker as add_services_to_linker,
};
pub use generated::ferry::plugin::sql::{
    Executed as SqlExecuted, Host as SqlHost, HostTransaction as SqlHostTransaction,
    Rows as SqlRows, Value as SqlValue, add_to_linker as add_sql_to_linker,
};
pub use generated::ferry::plugin::types::{Context as WitContext, Error as WitError};

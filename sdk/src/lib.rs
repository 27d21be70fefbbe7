//! Ferry SDK: write a Ferry plugin as plain Rust functions.
//!
//! A plugin is a set of actions. Each action is one function that takes the
//! request context and serde-typed params and returns a serde-typed result:
//!
//! ```ignore
//! use ferry_sdk::{Ctx, Error};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Greet { name: String }
//!
//! #[derive(Serialize)]
//! struct Greeting { message: String }
//!
//! fn greet(ctx: &Ctx, p: Greet) -> Result<Greeting, Error> {
//!     if p.name.is_empty() {
//!         return Err(Error::bad_request("name must not be empty"));
//!     }
//!     ferry_sdk::info!("greeting {} for {:?}", p.name, ctx.subject());
//!     Ok(Greeting { message: format!("hello, {}", p.name) })
//! }
//!
//! ferry_sdk::service!(greet);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` and drop the
//! `.wasm` file into the host's plugins folder. The WIT contract behind this
//! lives in the repository's `wit/` folder; plugin authors never touch it.

#[cfg(any(
    test,
    all(
        feature = "allocator",
        target_family = "wasm",
        not(target_feature = "atomics")
    )
))]
mod alloc;

use std::cell::OnceCell;
use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};

#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin-with-events",
        pub_export_macro: true,
        export_macro_name: "__export_service",
        default_bindings_module: "ferry_sdk::__bindings",
    });
}

pub mod config;
pub mod events;
pub mod services;
pub mod sql;

use __bindings::ferry::plugin::invocation::{self as wit_invocation, Call};
use __bindings::ferry::plugin::log as wit_log;
use __bindings::ferry::plugin::types::Error as WitError;

/// An error an action answers with. Its `code` reaches the caller unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: String,
    message: String,
}

impl Error {
    /// An error with a code of your own choosing (use `snake_case`).
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The caller sent something this action cannot accept.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new("bad_request", message)
    }

    /// The caller is not allowed to do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new("forbidden", message)
    }

    /// What the caller asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new("not_found", message)
    }

    /// Something this plugin depends on is not reachable right now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new("unavailable", message)
    }

    /// The plugin itself failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("internal", message)
    }

    /// The stable, machine-readable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

/// What the host tells an action about the request it handles. Each field
/// is fetched from the host the first time it is read, so an action pays
/// only for what it looks at (and one that reads none, nothing at all).
pub struct Ctx {
    /// The host's handle of the request, asked for at the first read.
    call: OnceCell<Call>,
    request_id: OnceCell<String>,
    app: OnceCell<String>,
    service: OnceCell<String>,
    tenant: OnceCell<Option<String>>,
    subject: OnceCell<Option<String>>,
    claims: OnceCell<String>,
    caller: OnceCell<Option<String>>,
    trace_id: OnceCell<String>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("request_id", &self.request_id())
            .field("app", &self.app())
            .field("service", &self.service())
            .field("tenant", &self.tenant())
            .field("subject", &self.subject())
            .finish_non_exhaustive()
    }
}

impl Ctx {
    fn new() -> Self {
        Ctx {
            call: OnceCell::new(),
            request_id: OnceCell::new(),
            app: OnceCell::new(),
            service: OnceCell::new(),
            tenant: OnceCell::new(),
            subject: OnceCell::new(),
            claims: OnceCell::new(),
            caller: OnceCell::new(),
            trace_id: OnceCell::new(),
        }
    }

    fn call(&self) -> &Call {
        self.call.get_or_init(|| {
            // A `Ctx` exists only inside the host's call of `handle`, where
            // the host always has the request.
            wit_invocation::current().expect("the host lends the request while `handle` runs")
        })
    }

    /// The service that called this one through `services`, or `None`
    /// for a request from outside the host.
    pub fn caller(&self) -> Option<&str> {
        self.caller.get_or_init(|| self.call().caller()).as_deref()
    }

    /// The request's trace id (32 hex digits), the same along a chain of
    /// calls and in the host's log lines.
    pub fn trace_id(&self) -> &str {
        self.trace_id.get_or_init(|| self.call().trace_id())
    }

    /// The caller's request id, as JSON text (`42` or `"a-1"`).
    pub fn request_id(&self) -> &str {
        self.request_id.get_or_init(|| self.call().request_id())
    }

    /// The application the request came through.
    pub fn app(&self) -> &str {
        self.app.get_or_init(|| self.call().app())
    }

    /// This service's name, as the caller addressed it.
    pub fn service(&self) -> &str {
        self.service.get_or_init(|| self.call().service())
    }

    /// The tenant the request acts for, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.get_or_init(|| self.call().tenant()).as_deref()
    }

    /// The authenticated subject, if a token was verified.
    pub fn subject(&self) -> Option<&str> {
        self.subject
            .get_or_init(|| self.call().subject())
            .as_deref()
    }

    /// The verified token's claims as JSON text (`{}` without a token).
    pub fn claims_json(&self) -> &str {
        self.claims.get_or_init(|| self.call().claims())
    }

    /// The verified token's claims, deserialized into `T`.
    pub fn claims<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(self.claims_json()).map_err(|e| {
            Error::forbidden(format!("token claims do not have the expected shape: {e}"))
        })
    }

    /// Time left now before the host cuts this request off.
    pub fn time_left(&self) -> Duration {
        Duration::from_millis(self.call().time_left_ms())
    }
}

/// Severity of a log record; see [`log`].
pub use wit_log::Level;

/// Writes one record to the host log, tagged with this plugin's name.
pub fn log(level: Level, message: &str) {
    wit_log::log(level, message);
}

/// Logs at `info` level with `format!` syntax.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &::std::format!($($arg)*)) };
}

/// Logs at `warn` level with `format!` syntax.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)*)) };
}

/// Logs at `error` level with `format!` syntax.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log($crate::Level::Error, &::std::format!($($arg)*)) };
}

/// Logs at `debug` level with `format!` syntax.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)*)) };
}

/// Declares the plugin's actions and exports them to the host.
///
/// `service!(echo, add)` serves function `echo` as action `"echo"` and `add`
/// as `"add"`. To serve an action under a name that is not a Rust
/// identifier, name it: `service!(list, "get-item" => get_item)`.
/// Each function has the shape `fn(&Ctx, P) -> Result<R, Error>` with
/// `P: Deserialize` and `R: Serialize`. An unknown action answers
/// `not_found`; params that do not deserialize into `P` answer
/// `bad_request`.
///
/// The host calls a health check periodically; by default it always passes.
/// Name your own (`fn() -> Result<(), Error>`) first:
/// `service!(health = ready; echo, add)`. A failing check counts towards
/// the plugin's circuit breaker like a failed request.
///
/// Events of the topics the manifest subscribes to go to the handler named
/// by `events = ...;` (`fn(&events::Event) -> Result<(), events::Failure>`):
/// `service!(events = on_event; echo)`, also after `health = ...;`.
#[macro_export]
macro_rules! service {
    (@collect [$($acc:tt)*] [$health:path] [$events:path]) => {
        $crate::__service_impl!([$health] [$events] $($acc)*);
    };
    (@collect [$($acc:tt)*] [$health:path] [$events:path] $name:literal => $action:path $(, $($rest:tt)*)?) => {
        $crate::service!(@collect [$($acc)* ($name, $action)] [$health] [$events] $($($rest)*)?);
    };
    (@collect [$($acc:tt)*] [$health:path] [$events:path] $action:ident $(, $($rest:tt)*)?) => {
        $crate::service!(@collect [$($acc)* (::std::stringify!($action), $action)] [$health] [$events] $($($rest)*)?);
    };
    (@options [$health:path] [$events:path] health = $new:path; $($items:tt)+) => {
        $crate::service!(@options [$new] [$events] $($items)+);
    };
    (@options [$health:path] [$events:path] events = $new:path; $($items:tt)+) => {
        $crate::service!(@options [$health] [$new] $($items)+);
    };
    (@options [$health:path] [$events:path] $($items:tt)+) => {
        $crate::service!(@collect [] [$health] [$events] $($items)+);
    };
    ($($items:tt)+) => {
        $crate::service!(@options [$crate::__healthy] [$crate::events::__no_events] $($items)+);
    };
}

/// The health check of a plugin that names none: it can serve.
#[doc(hidden)]
pub fn __healthy() -> Result<(), Error> {
    Ok(())
}

/// Runs a health check for the code `service!` generates.
#[doc(hidden)]
pub fn __check(check: fn() -> Result<(), Error>) -> Result<(), WitError> {
    install_panic_hook();
    check().map_err(|e| WitError {
        code: e.code,
        message: e.message,
    })
}

/// The expansion of [`service!`] once every action has a name.
#[doc(hidden)]
#[macro_export]
macro_rules! __service_impl {
    ([$health:path] [$events:path] $(($name:expr, $action:path))+) => {
        #[doc(hidden)]
        pub struct __FerryService;

        impl $crate::__bindings::exports::ferry::plugin::request_handler::Guest for __FerryService {
            fn handle(
                action: ::std::string::String,
                params: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, $crate::__bindings::ferry::plugin::types::Error> {
                $crate::__handle(&action, &params, &[$($name),+], |ctx, action, params| {
                    $(if action == $name {
                        return ::std::option::Option::Some($crate::__invoke(ctx, params, $action));
                    })+
                    ::std::option::Option::None
                })
            }
        }

        impl $crate::__bindings::exports::ferry::plugin::health::Guest for __FerryService {
            fn check() -> ::std::result::Result<(), $crate::__bindings::ferry::plugin::types::Error> {
                $crate::__check($health)
            }
        }

        impl $crate::__bindings::exports::ferry::plugin::event_handler::Guest for __FerryService {
            fn handle_event(
                event: $crate::__bindings::exports::ferry::plugin::event_handler::Event,
            ) -> ::std::result::Result<(), $crate::__bindings::exports::ferry::plugin::event_handler::Failure> {
                $crate::events::__handle_event(event, $events)
            }
        }

        $crate::__bindings::__export_service!(__FerryService with_types_in $crate::__bindings);
    };
}

#[doc(hidden)]
pub type __Dispatch = fn(&Ctx, &str, &str) -> Option<Result<String, Error>>;

/// Runs one request through the plugin's dispatch table. Called by the code
/// `service!` generates; not part of the public API.
#[doc(hidden)]
pub fn __handle(
    action: &str,
    params: &str,
    actions: &[&str],
    dispatch: __Dispatch,
) -> Result<String, WitError> {
    install_panic_hook();
    let ctx = Ctx::new();
    let outcome = dispatch(&ctx, action, params).unwrap_or_else(|| {
        Err(Error::not_found(format!(
            "service `{}` has no action `{action}` (it has: {})",
            ctx.service(),
            actions.join(", ")
        )))
    });
    outcome.map_err(|e| WitError {
        code: e.code,
        message: e.message,
    })
}

/// Deserializes params, calls one action, serializes its result.
#[doc(hidden)]
pub fn __invoke<'a, P, R, F>(ctx: &'a Ctx, params: &str, action: F) -> Result<String, Error>
where
    P: DeserializeOwned,
    R: Serialize + 'a,
    F: FnOnce(&'a Ctx, P) -> Result<R, Error>,
{
    let params: P = serde_json::from_str(params)
        .map_err(|e| Error::bad_request(format!("invalid params: {e}")))?;
    let result = action(ctx, params)?;
    serde_json::to_string(&result)
        .map_err(|e| Error::internal(format!("cannot encode the result: {e}")))
}

/// Routes panic messages into the host log at error level, so that the host
/// can quote them when it reports the trap that follows.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            wit_log::log(Level::Error, &format!("panic: {info}"));
        }));
    });
}

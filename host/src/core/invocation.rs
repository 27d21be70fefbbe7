//! The door-neutral request: what every door turns its bytes into before
//! the pipeline routes, authenticates and runs it. Nothing after the door
//! knows which door it was, except through `door` (for logs and metrics).

use std::time::Instant;

/// Which door an invocation came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoorKind {
    /// The main socket or a service's own socket.
    Unix,
    Http,
}

impl DoorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DoorKind::Unix => "unix",
            DoorKind::Http => "http",
        }
    }
}

/// How the invocation's application is chosen.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// HTTP: the `Host` header picks the application; an application the
    /// request names as well must be that one.
    Host {
        host: Option<&'a str>,
        named: Option<&'a str>,
    },
    /// A socket: the request's `app`, else the listener's default, else the
    /// only application there is.
    Named {
        app: Option<&'a str>,
        default: Option<&'a str>,
    },
}

/// One request, as every door hands it to the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    pub door: DoorKind,
    pub route: Route<'a>,
    pub service: &'a str,
    pub action: &'a str,
    /// The params as JSON text (`{}` when the caller sent none).
    pub params: &'a str,
    /// The caller's request id as JSON text (`42`, `"a-1"`).
    pub request_id: &'a str,
    /// A token to verify against the application's keys.
    pub token: Option<&'a str>,
    /// The tenant the caller asks to act for.
    pub tenant: Option<&'a str>,
    /// A tighter deadline than the plugin's own `timeout_ms`.
    pub timeout_ms: Option<u64>,
    /// The door's callers need no token (a trusted socket).
    pub trusted: bool,
    /// When the door read the request: its deadline counts from here.
    pub received: Instant,
}

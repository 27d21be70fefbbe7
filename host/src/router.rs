//! The routing table: from a parsed request to the plugin that serves it,
//! and back to a response frame. Every door (the main socket, a service's own
//! socket, later HTTP) goes through here, so limits and error codes are the
//! same whichever door a request used.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::bindings::Context;
use crate::error::{ErrorBody, ErrorCode};
use crate::protocol::{self, Request};
use crate::runtime::{Call, Plugin};

/// Longest service name; also bounds the per-service socket path.
pub const MAX_SERVICE_NAME: usize = 64;

/// The application every request belongs to until applications are
/// configured.
pub const DEFAULT_APP: &str = "default";

/// Which door a request came through.
#[derive(Debug, Clone)]
pub enum Door {
    /// The main socket: the request names its service.
    Main,
    /// A service's own socket: the service is implied.
    Service(Arc<str>),
}

/// Whether `name` can be a service name: it becomes a file name and a socket
/// name, so only lowercase letters, digits, `-` and `_`, starting with a
/// letter or digit.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[derive(Default)]
pub struct Router {
    services: RwLock<BTreeMap<String, Arc<Plugin>>>,
    /// Plugin files found but not loaded, with the reason; shown by status
    /// and keeping `/readyz` red.
    failed: RwLock<BTreeMap<String, String>>,
}

impl Router {
    pub fn insert(&self, plugin: Plugin) -> Arc<Plugin> {
        let plugin = Arc::new(plugin);
        self.failed
            .write()
            .expect("failed table lock")
            .remove(plugin.name());
        self.services
            .write()
            .expect("routing table lock")
            .insert(plugin.name().to_owned(), plugin.clone());
        plugin
    }

    /// Records that the plugin file for `service` could not be loaded.
    pub fn insert_failed(&self, service: &str, reason: String) {
        self.failed
            .write()
            .expect("failed table lock")
            .insert(service.to_owned(), reason);
    }

    /// Services whose files failed to load, with the reasons.
    pub fn failed(&self) -> Vec<(String, String)> {
        let failed = self.failed.read().expect("failed table lock");
        failed.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Every loaded plugin, by name.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.services
            .read()
            .expect("routing table lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, service: &str) -> Option<Arc<Plugin>> {
        self.services
            .read()
            .expect("routing table lock")
            .get(service)
            .cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.services
            .read()
            .expect("routing table lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Handles one frame and answers the response frame. Never fails: every
    /// problem becomes an error response.
    pub async fn handle_frame(&self, frame: &[u8], door: &Door) -> Vec<u8> {
        let received = Instant::now();
        let request = match Request::parse(frame) {
            Ok(request) => request,
            Err(bad) => {
                return protocol::error_frame(
                    &bad.id,
                    &ErrorBody::new(ErrorCode::BadRequest, bad.message),
                );
            }
        };
        match self.dispatch(&request, door, received).await {
            Ok(result) => protocol::success_frame(&request.id, &result),
            Err(error) => protocol::error_frame(&request.id, &error),
        }
    }

    /// Routes a parsed request and runs it; answers the plugin's JSON result
    /// text or the error to send.
    pub async fn dispatch(
        &self,
        request: &Request,
        door: &Door,
        received: Instant,
    ) -> Result<String, ErrorBody> {
        let service: &str = match (door, &request.service) {
            (Door::Main, Some(service)) => service,
            (Door::Main, None) => {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    "invalid request: missing field `service`",
                ));
            }
            (Door::Service(own), Some(named)) if **own != **named => {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!("this socket serves `{own}`, but the request names service `{named}`"),
                ));
            }
            (Door::Service(own), _) => own,
        };
        if let Some(app) = request.app.as_deref().filter(|app| *app != DEFAULT_APP) {
            return Err(ErrorBody::new(
                ErrorCode::NotFound,
                format!("no application named `{app}` (this host serves only `{DEFAULT_APP}`)"),
            ));
        }
        let plugin = self.get(service).ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::NotFound,
                format!(
                    "no service named `{service}` (loaded: {})",
                    self.names().join(", ")
                ),
            )
        })?;
        let timeout_ms = match request.timeout_ms {
            Some(0) => {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    "`timeout_ms` must be at least 1",
                ));
            }
            Some(asked) => asked.min(plugin.limits().timeout_ms),
            None => plugin.limits().timeout_ms,
        };
        let call = Call {
            ctx: Context {
                request_id: serde_json::to_string(&request.id).unwrap_or_default(),
                app: DEFAULT_APP.to_owned(),
                service: service.to_owned(),
                tenant: request.tenant_id.clone(),
                subject: None,
                claims: "{}".to_owned(),
                time_left_ms: timeout_ms,
            },
            action: &request.action,
            params: request.params_json(),
            deadline: received + std::time::Duration::from_millis(timeout_ms),
            timeout_ms,
        };
        plugin.call(call).await.map_err(ErrorBody::from)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_service_name;

    #[test]
    fn service_names_are_plain() {
        assert!(valid_service_name("echo"));
        assert!(valid_service_name("todo-v2_x"));
        for bad in [
            "",
            ".hidden",
            "-x",
            "Echo",
            "a/b",
            "a.b",
            "x~",
            &"a".repeat(65),
        ] {
            assert!(!valid_service_name(bad), "{bad:?}");
        }
    }
}

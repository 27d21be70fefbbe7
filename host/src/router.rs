//! The routing table: from a parsed request to the plugin that serves it,
//! and back to a response frame. Every door (the main socket, a service's own
//! socket, HTTP) goes through here, so limits and error codes are the
//! same whichever door a request used.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::apps::{App, Apps, Auth};
use crate::auth::Identity;
use crate::bindings::Context;
use crate::error::{ErrorBody, ErrorCode};
use crate::protocol::{self, Request};
use crate::runtime::{Call, Plugin};

/// Longest service name; also bounds the per-service socket path.
pub const MAX_SERVICE_NAME: usize = 64;

/// The application every request belongs to until applications are
/// configured.
pub const DEFAULT_APP: &str = "default";

/// A socket listener's settings, shared by its connections.
#[derive(Debug, Clone)]
pub struct Listening {
    /// A service's own socket implies its service.
    pub service: Option<Arc<str>>,
    /// Requests that name no application go to this one.
    pub app: Option<Arc<str>>,
    /// Callers need no token here.
    pub trusted: bool,
}

/// Which door a request came through.
#[derive(Debug, Clone, Copy)]
pub enum Door<'a> {
    Socket(&'a Listening),
    /// The HTTP gateway, with the request's `Host` header.
    Http {
        host: Option<&'a str>,
    },
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

/// A newer file for a service that was refused while the previous version
/// kept serving.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejection {
    /// The refused file's short digest, when it could be read.
    pub version: Option<String>,
    /// The refused deployment (file and manifest), when it could be read.
    pub deployment: Option<String>,
    pub reason: String,
    /// Seconds since the Unix epoch.
    pub at_unix_s: u64,
}

impl Rejection {
    pub fn now(version: Option<String>, deployment: Option<String>, reason: String) -> Self {
        Rejection {
            version,
            deployment,
            reason,
            at_unix_s: crate::runtime::unix_seconds(std::time::SystemTime::now()),
        }
    }
}

pub struct Router {
    services: RwLock<BTreeMap<String, Arc<Plugin>>>,
    /// Plugin files found but not loaded, with the reason; shown by status
    /// and keeping `/readyz` red.
    failed: RwLock<BTreeMap<String, Rejection>>,
    /// The last refused file of a service that still serves its previous
    /// version.
    rejected: RwLock<BTreeMap<String, Rejection>>,
    /// Replaced or undeployed versions, until their last request is done.
    draining: std::sync::Mutex<Vec<std::sync::Weak<Plugin>>>,
    /// Swapped whole, so a request sees one consistent table.
    apps: RwLock<Arc<Apps>>,
}

impl Router {
    pub fn new(apps: Apps) -> Router {
        Router {
            services: RwLock::default(),
            failed: RwLock::default(),
            rejected: RwLock::default(),
            draining: std::sync::Mutex::default(),
            apps: RwLock::new(Arc::new(apps)),
        }
    }

    pub fn apps(&self) -> Arc<Apps> {
        self.apps.read().expect("apps lock").clone()
    }

    /// Replaces the application table (a config reload); requests already
    /// routed keep the table they started with.
    pub fn set_apps(&self, apps: Apps) {
        *self.apps.write().expect("apps lock") = Arc::new(apps);
    }

    /// Services an application lists for which there is no plugin file at
    /// all (a file that failed to load is in `failed` instead).
    pub fn missing(&self) -> Vec<String> {
        let apps = self.apps();
        let services = self.services.read().expect("routing table lock");
        let failed = self.failed.read().expect("failed table lock");
        apps.listed_services()
            .into_iter()
            .filter(|s| !services.contains_key(*s) && !failed.contains_key(*s))
            .map(str::to_owned)
            .collect()
    }

    /// Serves `plugin` from now on, in place of any previous version of its
    /// service, which is retired: requests already running finish on it.
    pub fn insert(&self, plugin: Arc<Plugin>) -> Option<Arc<Plugin>> {
        let name = plugin.name().to_owned();
        self.failed
            .write()
            .expect("failed table lock")
            .remove(&name);
        self.rejected
            .write()
            .expect("rejected table lock")
            .remove(&name);
        let previous = self
            .services
            .write()
            .expect("routing table lock")
            .insert(name, plugin);
        if let Some(previous) = &previous {
            self.retire(previous);
        }
        previous
    }

    /// Stops routing to `service` (its file is gone); requests already
    /// running finish on it.
    pub fn remove(&self, service: &str) -> Option<Arc<Plugin>> {
        self.failed
            .write()
            .expect("failed table lock")
            .remove(service);
        self.rejected
            .write()
            .expect("rejected table lock")
            .remove(service);
        let removed = self
            .services
            .write()
            .expect("routing table lock")
            .remove(service);
        if let Some(removed) = &removed {
            self.retire(removed);
        }
        removed
    }

    fn retire(&self, plugin: &Arc<Plugin>) {
        plugin.retire();
        let mut draining = self.draining.lock().expect("draining lock");
        draining.retain(|p| p.strong_count() > 0);
        draining.push(Arc::downgrade(plugin));
    }

    /// Retired versions that still have requests running.
    pub fn draining(&self) -> Vec<Arc<Plugin>> {
        let mut draining = self.draining.lock().expect("draining lock");
        draining.retain(|p| p.strong_count() > 0);
        draining
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect()
    }

    /// Records that the file for `service` could not be loaded. With a
    /// version serving, that version stays and the refusal is noted beside
    /// it; otherwise the service is `failed`.
    pub fn refuse(&self, service: &str, rejection: Rejection) {
        let serving = self
            .services
            .read()
            .expect("routing table lock")
            .contains_key(service);
        let table = if serving {
            &self.rejected
        } else {
            &self.failed
        };
        table
            .write()
            .expect("refusal table lock")
            .insert(service.to_owned(), rejection);
    }

    /// Services whose files failed to load, with the reasons.
    pub fn failed(&self) -> Vec<(String, Rejection)> {
        let failed = self.failed.read().expect("failed table lock");
        failed.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Forgets the refusal noted beside a serving service.
    pub fn clear_rejection(&self, service: &str) {
        self.rejected
            .write()
            .expect("rejected table lock")
            .remove(service);
    }

    /// The last refused file of a service that still serves.
    pub fn rejected(&self, service: &str) -> Option<Rejection> {
        self.rejected
            .read()
            .expect("rejected table lock")
            .get(service)
            .cloned()
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
    pub async fn handle_frame(&self, frame: &[u8], door: Door<'_>) -> Vec<u8> {
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
    /// text or the error to send. Every check (application, service, token,
    /// tenant) happens before the plugin is touched.
    pub async fn dispatch(
        &self,
        request: &Request,
        door: Door<'_>,
        received: Instant,
    ) -> Result<String, ErrorBody> {
        let service: &str = match (door, &request.service) {
            (
                Door::Socket(Listening {
                    service: Some(own), ..
                }),
                Some(named),
            ) if **own != **named => {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!("this socket serves `{own}`, but the request names service `{named}`"),
                ));
            }
            (
                Door::Socket(Listening {
                    service: Some(own), ..
                }),
                _,
            ) => own,
            (_, Some(service)) => service,
            (_, None) => {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    "invalid request: missing field `service`",
                ));
            }
        };
        let apps = self.apps();
        let app = resolve_app(&apps, request, door)?;
        if !app.serves(service) {
            return Err(ErrorBody::new(
                ErrorCode::NotFound,
                format!(
                    "application `{}` has no service named `{service}`",
                    app.name
                ),
            ));
        }
        let plugin = self.get(service).ok_or_else(|| {
            if app.lists(service) {
                ErrorBody::new(
                    ErrorCode::Unavailable,
                    format!("service `{service}` is configured but not loaded; see `ferry status`"),
                )
            } else {
                ErrorBody::new(
                    ErrorCode::NotFound,
                    format!(
                        "no service named `{service}` (loaded: {})",
                        self.names().join(", ")
                    ),
                )
            }
        })?;
        let trusted = matches!(door, Door::Socket(Listening { trusted: true, .. }));
        let identity = authenticate(app, &plugin, request, trusted)?;
        let tenant = match &identity {
            Some(identity) => {
                if let Some(asked) = &request.tenant_id
                    && identity.tenant.as_deref() != Some(asked.as_str())
                {
                    return Err(ErrorBody::new(
                        ErrorCode::Forbidden,
                        match &identity.tenant {
                            Some(own) => format!(
                                "tenant_id `{asked}` contradicts the token's tenant `{own}`"
                            ),
                            None => format!(
                                "tenant_id `{asked}` is not allowed: the token names no tenant"
                            ),
                        },
                    ));
                }
                identity.tenant.clone()
            }
            None => request.tenant_id.clone(),
        };
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
        let (subject, claims) = match identity {
            Some(Identity {
                subject, claims, ..
            }) => (subject, claims),
            None => (None, "{}".to_owned()),
        };
        let call = Call {
            ctx: Context {
                request_id: serde_json::to_string(&request.id).unwrap_or_default(),
                app: app.name.to_string(),
                service: service.to_owned(),
                tenant,
                subject,
                claims,
                time_left_ms: timeout_ms,
            },
            app: app.name.clone(),
            database: app.database.clone(),
            action: &request.action,
            params: request.params_json(),
            deadline: received + std::time::Duration::from_millis(timeout_ms),
            timeout_ms,
        };
        plugin.call(call).await.map_err(ErrorBody::from)
    }
}

/// The application a request belongs to: HTTP's `Host` header, or on a
/// socket the request's `app`, else the listener's default.
fn resolve_app<'a>(
    apps: &'a Apps,
    request: &Request,
    door: Door<'_>,
) -> Result<&'a Arc<App>, ErrorBody> {
    let unknown = |name: &str| {
        ErrorBody::new(
            ErrorCode::NotFound,
            format!(
                "no application named `{name}` (this host serves: {})",
                apps.names().join(", ")
            ),
        )
    };
    match door {
        Door::Http { host } => {
            let app = apps.for_host(host).ok_or_else(|| {
                ErrorBody::new(
                    ErrorCode::NotFound,
                    match host {
                        Some(host) => format!("no application serves host `{host}`"),
                        None => {
                            "the request has no Host header, which picks the application".into()
                        }
                    },
                )
            })?;
            match request.app.as_deref() {
                Some(named) if named != &*app.name => Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!(
                        "this host serves application `{}`, but the request names `{named}`",
                        app.name
                    ),
                )),
                _ => Ok(app),
            }
        }
        Door::Socket(listening) => match request.app.as_deref().or(listening.app.as_deref()) {
            Some(name) => apps.get(name).ok_or_else(|| unknown(name)),
            None => apps.socket_default().ok_or_else(|| {
                ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!(
                        "name the application with `app` (this host serves: {})",
                        apps.names().join(", ")
                    ),
                )
            }),
        },
    }
}

/// Checks the request's token against the application's keys. Answers the
/// verified identity, or `None` for a caller without a token where none is
/// needed: an open application, a public action, a trusted socket.
fn authenticate(
    app: &App,
    plugin: &Plugin,
    request: &Request,
    trusted: bool,
) -> Result<Option<Identity>, ErrorBody> {
    let Auth::Jwt(jwt) = &app.auth else {
        return Ok(None);
    };
    match &request.token {
        // A token that is sent is checked even where none is needed: a bad
        // one is a client bug worth reporting, not something to ignore.
        Some(token) => jwt
            .verify(token)
            .map(Some)
            .map_err(|e| ErrorBody::new(ErrorCode::Unauthorized, e.to_string())),
        None if trusted || plugin.is_public(&request.action) => Ok(None),
        None => Err(ErrorBody::new(
            ErrorCode::Unauthorized,
            format!(
                "`{}.{}` needs a token (`Authorization: Bearer` over HTTP, `token` on a socket)",
                plugin.name(),
                request.action
            ),
        )),
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

//! Configuration: the YAML file (or the embedded defaults), per-plugin
//! manifests, and their validation. Everything here is checked before any
//! socket opens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod apps;
mod auth;
mod cluster;
mod database;
mod events;
mod limits;
mod manifest;
mod rabbitmq;
mod server;
mod webhooks;
mod websocket;

pub use apps::{AppConfig, AppEvents};
pub use auth::{AuthConfig, JwtConfig};
pub use cluster::ClusterConfig;
pub use database::DatabaseConfig;
pub use events::EventsConfig;
pub use limits::{Circuit, Limits, MAX_INSTANCES, MAX_MEMORY_MB};
pub use manifest::{Delivery, Manifest, Subscription};
pub use rabbitmq::Consume;
pub use server::{HttpConfig, MAX_SOCKET_PATH, SocketConfig};
pub use webhooks::WebhookConfig;
pub use websocket::WebSocketConfig;

use crate::core::names::{DEFAULT_APP, valid_app_name, valid_service_name};

/// The host's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The main Unix socket and who may use it. Per-service sockets go in
    /// `services/` beside it and share its settings.
    #[serde(deserialize_with = "server::socket_config")]
    pub socket: SocketConfig,
    /// The HTTP gateway; `null` turns it off.
    #[serde(deserialize_with = "server::http_config")]
    pub http: Option<HttpConfig>,
    /// Where `/v1/status` and `/metrics` are served (loopback by default:
    /// they describe every application); `null` turns them off. The
    /// command line reads status through the control socket either way.
    pub admin: Option<SocketAddr>,
    /// The socket outside programs consume (and publish) events on; `null`
    /// turns it off.
    pub events: Option<EventsConfig>,
    /// The WebSocket door (`GET /v1/ws` on the HTTP gateway); `null` turns
    /// it off.
    pub websocket: Option<WebSocketConfig>,
    /// Folder of plugins: `NAME.wasm` with an optional `NAME.yaml` manifest.
    pub plugins: PathBuf,
    /// Folder for the host's own state, such as the compile cache.
    pub data: PathBuf,
    /// Largest frame, in bytes, a client may send.
    pub max_frame_bytes: u32,
    /// How long a frame may take to arrive whole, from its first byte.
    pub idle_timeout_ms: u64,
    /// Connections served at once over all sockets; more wait to be accepted.
    pub max_connections: u32,
    /// Bytes of responses a socket connection may have waiting to be
    /// written; past it, the host reads no more of its requests until the
    /// client reads.
    pub max_unsent_bytes: usize,
    /// How long a write to a socket client may stall before the host gives
    /// up on the client and closes its connection.
    pub write_timeout_ms: u64,
    /// Limits for every plugin that its manifest does not override.
    pub defaults: Limits,
    /// Instances the engine holds at once over every plugin (running and
    /// idle); when all are taken, idle instances are given up first.
    pub max_instances: u32,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub drain_timeout_ms: u64,
    /// Calls between services one request may lead to in a chain
    /// (A → B → C is 2); a deeper call answers `forbidden`.
    pub max_call_depth: u32,
    /// Plugins compiled at once (start-up, deploys, reloads); `null` means
    /// one per core.
    pub compile_jobs: Option<u32>,
    /// Applications by name. Without any, one application named `default`
    /// serves every loaded service with no authentication.
    pub apps: BTreeMap<String, AppConfig>,
    /// Other hosts to share services with, through NATS; `null` (the
    /// default) is one host on its own.
    pub cluster: Option<ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: SocketConfig::at("run/ferry.sock"),
            http: Some(HttpConfig::at(SocketAddr::from(([127, 0, 0, 1], 8080)))),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
            events: Some(EventsConfig::default()),
            websocket: Some(WebSocketConfig::default()),
            plugins: PathBuf::from("deploy"),
            data: PathBuf::from("data"),
            max_frame_bytes: 1 << 20,
            idle_timeout_ms: 10_000,
            max_connections: 1_024,
            max_unsent_bytes: 4 << 20,
            write_timeout_ms: 10_000,
            defaults: Limits::default(),
            max_instances: MAX_INSTANCES,
            drain_timeout_ms: 10_000,
            max_call_depth: 8,
            compile_jobs: None,
            apps: BTreeMap::new(),
            cluster: None,
        }
    }
}

/// A config or manifest file that cannot be used, with the file's name.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
}

impl Config {
    /// Reads and validates a config file. Relative paths inside it are taken
    /// relative to the file's own folder, so the host can start from anywhere.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let error = |message: String| ConfigError {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
        let mut config = Config::parse(&text).map_err(error)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let events = config.events.as_mut().and_then(|e| e.path.as_mut());
        for p in [
            Some(&mut config.socket.path),
            Some(&mut config.plugins),
            Some(&mut config.data),
            events,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(cluster) = &mut config.cluster {
            for p in [&mut cluster.credentials_file, &mut cluster.ca_file]
                .into_iter()
                .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        for app in config.apps.values_mut() {
            if let Some(url) = &mut app.database.url
                && let Some(file) = url.strip_prefix("sqlite:")
                && !file.starts_with('/')
                && !file.starts_with("//")
            {
                *url = format!("sqlite:{}", base.join(file).display());
            }
            for hook in app.webhooks.values_mut() {
                for p in [&mut hook.secret_file, &mut hook.ca_file]
                    .into_iter()
                    .flatten()
                {
                    if p.is_relative() {
                        *p = base.join(&*p);
                    }
                }
            }
            if let AuthConfig::Jwt(jwt) = &mut app.auth {
                for p in [
                    &mut jwt.secret_file,
                    &mut jwt.public_key_file,
                    &mut jwt.jwks_file,
                ]
                .into_iter()
                .flatten()
                {
                    if p.is_relative() {
                        *p = base.join(&*p);
                    }
                }
            }
        }
        Ok(config)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, String> {
        // An empty file means "all defaults", which YAML reads as null.
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_norway::from_str(text).map_err(|e| e.to_string())?
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        if self.compile_jobs == Some(0) {
            return Err("compile_jobs must be at least 1 (or null: one per core)".into());
        }
        if !(1..=64).contains(&self.max_call_depth) {
            return Err(format!(
                "max_call_depth must be 1 to 64, not {}",
                self.max_call_depth
            ));
        }
        if !(64..=(64 << 20)).contains(&self.max_frame_bytes) {
            return Err(format!(
                "max_frame_bytes must be between 64 and 67108864, not {}",
                self.max_frame_bytes
            ));
        }
        if self.idle_timeout_ms == 0 {
            return Err("idle_timeout_ms must be at least 1".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if !(1..=MAX_INSTANCES).contains(&self.max_instances) {
            return Err(format!(
                "max_instances must be between 1 and {MAX_INSTANCES}, not {}",
                self.max_instances
            ));
        }
        if self.max_unsent_bytes < 64 * 1024 {
            return Err(format!(
                "max_unsent_bytes must be at least 65536, not {}",
                self.max_unsent_bytes
            ));
        }
        if !(1..=3_600_000).contains(&self.write_timeout_ms) {
            return Err(format!(
                "write_timeout_ms must be between 1 and 3600000, not {}",
                self.write_timeout_ms
            ));
        }
        if let Some(http) = &self.http {
            http.validate()?;
        }
        if let Some(websocket) = &self.websocket {
            websocket.validate()?;
        }
        if let Some(events) = &self.events {
            events.validate()?;
        }
        if self.socket.max_connections_per_uid == 0 {
            return Err("socket.max_connections_per_uid must be at least 1".into());
        }
        if !(1..=3_600_000).contains(&self.drain_timeout_ms) {
            return Err(format!(
                "drain_timeout_ms must be between 1 and 3600000, not {}",
                self.drain_timeout_ms
            ));
        }
        // sockaddr_un holds 108 bytes; say so now rather than at bind time.
        if self.socket.path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "socket path {} is too long: Unix socket paths must stay under {} bytes",
                self.socket.path.display(),
                MAX_SOCKET_PATH + 1
            ));
        }
        self.defaults
            .validate()
            .map_err(|e| format!("defaults: {e}"))?;
        self.validate_apps()
    }

    /// Checks what can be checked without reading key files: names, hosts
    /// claimed twice, the socket's default application. Keys are loaded (and
    /// checked) by `apps::Apps::build`, also before any socket opens.
    fn validate_apps(&self) -> Result<(), String> {
        let mut hosts: BTreeMap<String, &str> = BTreeMap::new();
        for (name, app) in &self.apps {
            if !valid_app_name(name) {
                return Err(format!(
                    "apps: `{name}` is not a valid application name (lowercase letters, digits, `-` and `_`)"
                ));
            }
            for host in &app.hosts {
                let host = host.to_ascii_lowercase();
                let with_port = host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err();
                if host.is_empty() || with_port || host.contains(['/', ' ', '[', ']']) {
                    return Err(format!(
                        "apps.{name}.hosts: `{host}` is not a host name (write it without scheme or port)"
                    ));
                }
                if let Some(other) = hosts.insert(host.clone(), name) {
                    return Err(format!(
                        "apps: host `{host}` is claimed by both `{other}` and `{name}`"
                    ));
                }
            }
            for service in &app.services {
                if !valid_service_name(service) {
                    return Err(format!(
                        "apps.{name}.services: `{service}` is not a valid service name"
                    ));
                }
            }
            if let AuthConfig::Jwt(jwt) = &app.auth {
                jwt.validate()
                    .map_err(|e| format!("apps.{name}.auth.jwt: {e}"))?;
            }
            app.database
                .validate()
                .map_err(|e| format!("apps.{name}.database: {e}"))?;
            app.events.validate(name)?;
            for (endpoint, hook) in &app.webhooks {
                let key = format!("apps.{name}.webhooks.{endpoint}");
                if !valid_service_name(endpoint) {
                    return Err(format!(
                        "{key}: not an endpoint name (lowercase letters, digits, `-` and `_`)"
                    ));
                }
                hook.validate(&key)?;
            }
            if let Some(broker) = &app.rabbitmq {
                broker.validate(&format!("apps.{name}.rabbitmq"))?;
            }
            for (bridge, spec) in &app.bridges {
                let key = format!("apps.{name}.bridges.{bridge}");
                if !valid_service_name(bridge) {
                    return Err(format!(
                        "{key}: not a bridge name (lowercase letters, digits, `-` and `_`)"
                    ));
                }
                if app.rabbitmq.is_none() {
                    return Err(format!(
                        "{key}: the application has no `rabbitmq` broker to bridge to"
                    ));
                }
                spec.validate(&key)?;
            }
            if let Some(bad) = app
                .reply_hooks
                .iter()
                .find(|p| !(p.starts_with("unix:/") || p.starts_with("http://")))
            {
                return Err(format!(
                    "apps.{name}.reply_hooks: `{bad}` must start with `unix:/` or `http://`"
                ));
            }
        }
        if let Some(app) = &self.socket.app {
            let known = if self.apps.is_empty() {
                app == DEFAULT_APP
            } else {
                self.apps.contains_key(app)
            };
            if !known {
                return Err(format!("socket.app: no application named `{app}`"));
            }
        }
        Ok(())
    }

    /// Compilations at once: `compile_jobs`, else one per core.
    pub fn compile_jobs(&self) -> usize {
        match self.compile_jobs {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Where outside event consumers connect, if they may.
    pub fn events_socket(&self) -> Option<PathBuf> {
        let events = self.events.as_ref()?;
        Some(events.path.clone().unwrap_or_else(|| {
            self.socket
                .path
                .parent()
                .unwrap_or(Path::new("."))
                .join("events.sock")
        }))
    }

    /// Where per-service sockets live: `services/` beside the main socket.
    pub fn services_dir(&self) -> PathBuf {
        self.socket
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .join("services")
    }

    /// The compile cache folder.
    pub fn cache_dir(&self) -> PathBuf {
        self.data.join("cache")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_all_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.socket.path, PathBuf::from("run/ferry.sock"));
        assert_eq!(c.socket.mode, 0o660);
        assert!(!c.socket.trusted);
        assert_eq!(c.defaults, Limits::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("sockett: x\n").unwrap_err();
        assert!(e.contains("unknown field `sockett`"), "{e}");
        let e = Config::parse("defaults:\n  timeout: 5\n").unwrap_err();
        assert!(e.contains("unknown field `timeout`"), "{e}");
    }

    #[test]
    fn http_can_be_moved_or_turned_off() {
        let listen = |text: &str| Config::parse(text).unwrap().http.map(|h| h.listen);
        assert_eq!(listen(""), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(
            listen("http: 0.0.0.0:9000\n"),
            Some("0.0.0.0:9000".parse().unwrap())
        );
        let long = Config::parse("http: {listen: 127.0.0.1:1, max_connections: 5}\n")
            .unwrap()
            .http
            .unwrap();
        assert_eq!((long.max_connections, long.header_timeout_ms), (5, 30_000));
        assert!(Config::parse("http: {listen: 127.0.0.1:1, max_conections: 5}\n").is_err());
        assert_eq!(Config::parse("http: null\n").unwrap().http, None);
        assert!(Config::parse("http: localhost\n").is_err());
    }

    #[test]
    fn partial_defaults_keep_the_rest() {
        let c = Config::parse("defaults:\n  timeout_ms: 250\n").unwrap();
        assert_eq!(c.defaults.timeout_ms, 250);
        assert_eq!(c.defaults.memory_mb, 64);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(
            Config::parse("max_frame_bytes: 1\n")
                .unwrap_err()
                .contains("max_frame_bytes")
        );
        assert!(
            Config::parse("defaults:\n  reuse: 0\n")
                .unwrap_err()
                .contains("reuse")
        );
        assert!(
            Config::parse("defaults:\n  memory_mb: 100000\n")
                .unwrap_err()
                .contains("memory_mb")
        );
    }

    #[test]
    fn socket_is_a_path_or_a_map_and_modes_are_octal() {
        let c = Config::parse("socket: /run/x.sock\n").unwrap();
        assert_eq!(c.socket.path, PathBuf::from("/run/x.sock"));
        for (text, mode) in [
            ("0660", 0o660),
            ("\"0600\"", 0o600),
            ("660", 0o660),
            ("0o640", 0o640),
        ] {
            let c = Config::parse(&format!("socket: {{path: a.sock, mode: {text}}}\n")).unwrap();
            assert_eq!(c.socket.mode, mode, "{text}");
        }
        for bad in ["\"0999\"", "7777", "rw"] {
            assert!(
                Config::parse(&format!("socket: {{path: a.sock, mode: {bad}}}\n")).is_err(),
                "{bad}"
            );
        }
        let e = Config::parse("socket: {path: a.sock, trusted: true, moed: 1}\n").unwrap_err();
        assert!(e.contains("moed"), "{e}");
    }
}

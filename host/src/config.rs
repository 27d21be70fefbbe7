//! Configuration: the YAML file (or the embedded defaults), per-plugin
//! manifests, and their validation. Everything here is checked before any
//! socket opens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// When repeated failures open a plugin's circuit, and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Circuit {
    /// Failures (traps, timeouts, failed health checks, instances that do
    /// not start) within `window_ms` that open the circuit.
    pub failures: u32,
    pub window_ms: u64,
    /// How long the circuit stays open the first time; each time it opens
    /// again soon after closing, twice as long, up to `max_backoff_ms`.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for Circuit {
    fn default() -> Self {
        Circuit {
            failures: 5,
            window_ms: 10_000,
            backoff_ms: 1_000,
            max_backoff_ms: 60_000,
        }
    }
}

impl Circuit {
    fn validate(&self) -> Result<(), String> {
        if self.failures == 0 {
            return Err("circuit.failures must be at least 1".into());
        }
        if self.window_ms == 0 || self.backoff_ms == 0 {
            return Err("circuit.window_ms and circuit.backoff_ms must be at least 1".into());
        }
        if self.max_backoff_ms < self.backoff_ms {
            return Err(format!(
                "circuit.max_backoff_ms ({}) must be at least circuit.backoff_ms ({})",
                self.max_backoff_ms, self.backoff_ms
            ));
        }
        Ok(())
    }
}

/// Limits that apply to each plugin; `defaults` in the config file, and the
/// same keys in a plugin's `NAME.yaml` manifest override them per plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest a request may run, queue time included. A request's own
    /// `timeout_ms` may only lower it.
    pub timeout_ms: u64,
    /// Linear memory one instance may grow to.
    pub memory_mb: u64,
    /// Requests that may run at once; each running request has an instance.
    pub max_concurrency: u32,
    /// Requests that may wait for a free instance before `overloaded`.
    pub max_queue: u32,
    /// Requests one instance serves before it is replaced by a fresh one.
    /// `1` means a new instance per request.
    pub reuse: u32,
    /// How often the host calls a plugin's `health` export, if it has one.
    pub health_interval_ms: u64,
    pub circuit: Circuit,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 5_000,
            memory_mb: 64,
            max_concurrency: 64,
            max_queue: 1_024,
            reuse: 10_000,
            health_interval_ms: 5_000,
            circuit: Circuit::default(),
        }
    }
}

/// The largest linear memory the engine reserves address space for.
pub const MAX_MEMORY_MB: u64 = 4_096;
/// Instances the engine's pool holds; the sum of all plugins' concurrency
/// cannot usefully exceed it.
pub const MAX_INSTANCES: u32 = 1_000;

impl Limits {
    fn validate(&self) -> Result<(), String> {
        let Limits {
            timeout_ms,
            memory_mb,
            max_concurrency,
            max_queue: _,
            reuse,
            health_interval_ms,
            circuit,
        } = *self;
        if !(1..=3_600_000).contains(&timeout_ms) {
            return Err(format!(
                "timeout_ms must be between 1 and 3600000, not {timeout_ms}"
            ));
        }
        if !(1..=MAX_MEMORY_MB).contains(&memory_mb) {
            return Err(format!(
                "memory_mb must be between 1 and {MAX_MEMORY_MB}, not {memory_mb}"
            ));
        }
        if !(1..=MAX_INSTANCES).contains(&max_concurrency) {
            return Err(format!(
                "max_concurrency must be between 1 and {MAX_INSTANCES}, not {max_concurrency}"
            ));
        }
        if reuse == 0 {
            return Err("reuse must be at least 1 (1 means a fresh instance per request)".into());
        }
        if health_interval_ms < 10 {
            return Err(format!(
                "health_interval_ms must be at least 10, not {health_interval_ms}"
            ));
        }
        circuit.validate()
    }
}

/// Longest path a Unix socket can be bound at.
pub const MAX_SOCKET_PATH: usize = 107;

/// The host's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The main Unix socket and who may use it. Per-service sockets go in
    /// `services/` beside it and share its settings.
    #[serde(deserialize_with = "socket_config")]
    pub socket: SocketConfig,
    /// Address of the HTTP gateway; `null` turns it off.
    pub http: Option<SocketAddr>,
    /// Folder of plugins: `NAME.wasm` with an optional `NAME.yaml` manifest.
    pub plugins: PathBuf,
    /// Folder for the host's own state, such as the compile cache.
    pub data: PathBuf,
    /// Largest frame, in bytes, a client may send.
    pub max_frame_bytes: u32,
    /// How long a connection may stall in the middle of a frame.
    pub idle_timeout_ms: u64,
    /// Connections served at once over all sockets; more wait to be accepted.
    pub max_connections: u32,
    /// Limits for every plugin that its manifest does not override.
    pub defaults: Limits,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub drain_timeout_ms: u64,
    /// Applications by name. Without any, one application named `default`
    /// serves every loaded service with no authentication.
    pub apps: BTreeMap<String, AppConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: SocketConfig::at("run/ferry.sock"),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            plugins: PathBuf::from("deploy"),
            data: PathBuf::from("data"),
            max_frame_bytes: 1 << 20,
            idle_timeout_ms: 10_000,
            max_connections: 1_024,
            defaults: Limits::default(),
            drain_timeout_ms: 10_000,
            apps: BTreeMap::new(),
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
        for p in [
            &mut config.socket.path,
            &mut config.plugins,
            &mut config.data,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
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
        // An empty file means "all defaults", which serde_yaml reads as null.
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| e.to_string())?
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
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
                if !crate::router::valid_service_name(service) {
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
        }
        if let Some(app) = &self.socket.app {
            let known = if self.apps.is_empty() {
                app == crate::router::DEFAULT_APP
            } else {
                self.apps.contains_key(app)
            };
            if !known {
                return Err(format!("socket.app: no application named `{app}`"));
            }
        }
        Ok(())
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

/// Whether `name` can name an application: the same rule as service names.
pub fn valid_app_name(name: &str) -> bool {
    crate::router::valid_service_name(name)
}

/// The main socket: where it is and who may use it.
///
/// Written either as a plain path (`socket: run/ferry.sock`) or as a map
/// with `path` and the optional keys below.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    pub path: PathBuf,
    /// Permission bits of the socket files, as a quoted octal string.
    #[serde(default = "default_socket_mode", deserialize_with = "octal_mode")]
    pub mode: u32,
    /// Peer user ids allowed to connect (checked with SO_PEERCRED); absent
    /// means any user the file mode lets in.
    #[serde(default)]
    pub allow_uids: Option<Vec<u32>>,
    /// The application a request belongs to when it names none.
    #[serde(default)]
    pub app: Option<String>,
    /// Local callers need no token on this socket. Never the default.
    #[serde(default)]
    pub trusted: bool,
}

fn default_socket_mode() -> u32 {
    0o660
}

impl SocketConfig {
    pub fn at(path: impl Into<PathBuf>) -> Self {
        SocketConfig {
            path: path.into(),
            mode: default_socket_mode(),
            allow_uids: None,
            app: None,
            trusted: false,
        }
    }
}

/// Reads a file mode as octal digits: `"0660"`, `0660`, `660` and `0o660`
/// all mean rw-rw----. (serde_yaml hands an unquoted scalar over as its
/// text, so `0660` is never misread as the decimal or YAML-1.1 octal number.)
fn octal_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::Error;
    let text = String::deserialize(d)
        .map_err(|_| D::Error::custom("write the mode as an octal string, for example \"0660\""))?;
    let digits = text.strip_prefix("0o").unwrap_or(&text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(D::Error::custom(format!(
            "`{text}` is not a file mode: use octal digits up to \"0777\", for example \"0660\""
        ))),
    }
}

/// Reads `socket`: a string is a path; a map is the full form.
fn socket_config<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketConfig, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = SocketConfig;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(
                "a socket path, or a map with `path`, `mode`, `allow_uids`, `app`, `trusted`",
            )
        }
        fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<SocketConfig, E> {
            Ok(SocketConfig::at(path))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<SocketConfig, A::Error> {
            SocketConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(Visitor)
}

/// One application: its host names, its services and how it authenticates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// HTTP `Host` names (without port) that select this application.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The services reachable through this application.
    pub services: Vec<String>,
    /// `none`, or `jwt: {...}`. Required, so an open application is a
    /// decision written down, never an omission.
    pub auth: AuthConfig,
    /// The application's database; without it, its own SQLite file.
    #[serde(default)]
    pub database: DatabaseConfig,
}

/// An application's database pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite:PATH`, `mysql://…`/`mariadb://…` or `postgres://…`. Absent:
    /// `sqlite:` at `data/db/APP.sqlite`, created on first use.
    pub url: Option<String>,
    pub max_connections: u32,
    /// How long a statement may wait for a free connection.
    pub acquire_timeout_ms: u64,
    /// The server-side limit on one statement (the request's deadline
    /// applies as well, whichever is sooner).
    pub statement_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: 10,
            acquire_timeout_ms: 2_000,
            statement_timeout_ms: 5_000,
        }
    }
}

impl DatabaseConfig {
    fn validate(&self) -> Result<(), String> {
        if !(1..=1_000).contains(&self.max_connections) {
            return Err(format!(
                "max_connections must be between 1 and 1000, not {}",
                self.max_connections
            ));
        }
        if self.acquire_timeout_ms == 0 || self.statement_timeout_ms == 0 {
            return Err("acquire_timeout_ms and statement_timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// `auth: none`, or `auth: {jwt: {...}}`.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// Every action is public; tokens are not checked.
    None,
    Jwt(JwtConfig),
}

// serde_yaml writes enum variants as `!tags`; the config reads better as a
// plain word or a one-key map, so this is spelled out by hand.
impl<'de> Deserialize<'de> for AuthConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AuthMap {
            jwt: JwtConfig,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AuthConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`none`, or a map with `jwt`")
            }
            fn visit_str<E: serde::de::Error>(self, word: &str) -> Result<AuthConfig, E> {
                match word {
                    "none" => Ok(AuthConfig::None),
                    other => Err(E::custom(format!(
                        "`{other}` is not an auth setting: write `none`, or a map with `jwt`"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<AuthConfig, A::Error> {
                AuthMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|m| AuthConfig::Jwt(m.jwt))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Where an application's JWT keys come from and what a token must say.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted `alg` values; a token's header can only pick among these.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Environment variable holding the HMAC secret (HS256/384/512).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the HMAC secret; surrounding whitespace is ignored.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// PEM public key (RS*/PS*, ES256/384 or EdDSA).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// A JWK set; the token's `kid` picks the key.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud`.
    #[serde(default)]
    pub audience: Option<String>,
    /// The claim that names the tenant.
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
}

fn default_leeway() -> u64 {
    30
}

impl JwtConfig {
    fn validate(&self) -> Result<(), String> {
        if self.algorithms.is_empty() {
            return Err("algorithms must list at least one algorithm".into());
        }
        if self.secret_env.is_some() && self.secret_file.is_some() {
            return Err("give the HMAC secret once: secret_env or secret_file, not both".into());
        }
        if self.public_key_file.is_none()
            && self.jwks_file.is_none()
            && self.secret_env.is_none()
            && self.secret_file.is_none()
        {
            return Err("no key: set secret_env, secret_file, public_key_file or jwks_file".into());
        }
        if self.leeway_s > 300 {
            return Err(format!(
                "leeway_s must be at most 300 seconds, not {}",
                self.leeway_s
            ));
        }
        if self.tenant_claim.as_deref() == Some("") {
            return Err("tenant_claim must not be empty".into());
        }
        Ok(())
    }
}

/// A plugin's optional `NAME.yaml` beside `NAME.wasm`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub max_concurrency: Option<u32>,
    pub max_queue: Option<u32>,
    pub reuse: Option<u32>,
    pub health_interval_ms: Option<u64>,
    /// Any of the circuit keys; the rest come from `defaults.circuit`.
    #[serde(default)]
    pub circuit: CircuitManifest,
    /// Actions callable without a token. Every other action of the plugin
    /// needs a verified token in applications that use JWT.
    #[serde(default)]
    pub public: Vec<String>,
    /// Host capabilities the plugin may use; none by default.
    #[serde(default)]
    pub permissions: Permissions,
    /// Plain values the plugin reads through the WIT `config` interface.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
}

/// A manifest's `circuit`: each key overrides one of `defaults.circuit`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitManifest {
    pub failures: Option<u32>,
    pub window_ms: Option<u64>,
    pub backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
}

/// A value in a manifest's `config` map: a string, a number or a boolean,
/// handed to the plugin as text. Lists and maps are refused, so what the
/// plugin reads is always what the file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigValue(pub String);

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(s) => Ok(ConfigValue(s)),
            serde_yaml::Value::Number(n) => Ok(ConfigValue(n.to_string())),
            serde_yaml::Value::Bool(b) => Ok(ConfigValue(b.to_string())),
            _ => Err(D::Error::custom(
                "config values must be strings, numbers or booleans (quote anything else)",
            )),
        }
    }
}

/// What a plugin's manifest grants it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// The `sql` interface on the request's application database.
    #[serde(default)]
    pub database: bool,
}

impl Manifest {
    /// Parses manifest text read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Manifest::default());
        }
        serde_yaml::from_str(text).map_err(|e| ConfigError {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// The plugin's effective limits: the manifest over the defaults.
    pub fn limits(&self, defaults: &Limits) -> Result<Limits, String> {
        let circuit = &self.circuit;
        let limits = Limits {
            timeout_ms: self.timeout_ms.unwrap_or(defaults.timeout_ms),
            memory_mb: self.memory_mb.unwrap_or(defaults.memory_mb),
            max_concurrency: self.max_concurrency.unwrap_or(defaults.max_concurrency),
            max_queue: self.max_queue.unwrap_or(defaults.max_queue),
            reuse: self.reuse.unwrap_or(defaults.reuse),
            health_interval_ms: self
                .health_interval_ms
                .unwrap_or(defaults.health_interval_ms),
            circuit: Circuit {
                failures: circuit.failures.unwrap_or(defaults.circuit.failures),
                window_ms: circuit.window_ms.unwrap_or(defaults.circuit.window_ms),
                backoff_ms: circuit.backoff_ms.unwrap_or(defaults.circuit.backoff_ms),
                max_backoff_ms: circuit
                    .max_backoff_ms
                    .unwrap_or(defaults.circuit.max_backoff_ms),
            },
        };
        limits.validate()?;
        Ok(limits)
    }

    /// The `config` map as the plugin reads it.
    pub fn config_values(&self) -> BTreeMap<String, String> {
        self.config
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect()
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
        assert_eq!(
            Config::parse("").unwrap().http,
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            Config::parse("http: 0.0.0.0:9000\n").unwrap().http,
            Some("0.0.0.0:9000".parse().unwrap())
        );
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

    #[test]
    fn manifest_overrides_defaults() {
        let m: Manifest = serde_yaml::from_str("timeout_ms: 100\n").unwrap();
        let l = m.limits(&Limits::default()).unwrap();
        assert_eq!(l.timeout_ms, 100);
        assert_eq!(l.max_concurrency, 64);
        assert!(serde_yaml::from_str::<Manifest>("timeoutms: 1\n").is_err());
    }

    #[test]
    fn manifest_circuit_keys_override_one_by_one() {
        let defaults = Config::parse("defaults:\n  circuit: {failures: 9, backoff_ms: 50}\n")
            .unwrap()
            .defaults;
        let m: Manifest = serde_yaml::from_str("circuit: {window_ms: 700}\n").unwrap();
        let c = m.limits(&defaults).unwrap().circuit;
        assert_eq!((c.failures, c.window_ms, c.backoff_ms), (9, 700, 50));
        let m: Manifest = serde_yaml::from_str("circuit: {failures: 0}\n").unwrap();
        assert!(
            m.limits(&defaults)
                .unwrap_err()
                .contains("circuit.failures")
        );
        assert!(serde_yaml::from_str::<Manifest>("circuit: {failure: 1}\n").is_err());
    }

    #[test]
    fn manifest_config_is_plain_values() {
        let m: Manifest =
            serde_yaml::from_str("config: {greeting: hi, retries: 3, loud: true, ratio: 0.5}\n")
                .unwrap();
        let values = m.config_values();
        assert_eq!(values["greeting"], "hi");
        assert_eq!(values["retries"], "3");
        assert_eq!(values["loud"], "true");
        assert_eq!(values["ratio"], "0.5");
        let e = serde_yaml::from_str::<Manifest>("config: {nested: {a: 1}}\n").unwrap_err();
        assert!(
            e.to_string().contains("strings, numbers or booleans"),
            "{e}"
        );
    }
}

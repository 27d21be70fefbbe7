//! Configuration: the YAML file (or the embedded defaults), per-plugin
//! manifests, and their validation. Everything here is checked before any
//! socket opens.

use std::path::{Path, PathBuf};

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 5_000,
            memory_mb: 64,
            max_concurrency: 64,
            max_queue: 1_024,
            reuse: 10_000,
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
        Ok(())
    }
}

/// Longest path a Unix socket can be bound at.
pub const MAX_SOCKET_PATH: usize = 107;

/// The host's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The main Unix socket. Per-service sockets go in `services/` beside it.
    pub socket: PathBuf,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from("run/ferry.sock"),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            plugins: PathBuf::from("deploy"),
            data: PathBuf::from("data"),
            max_frame_bytes: 1 << 20,
            idle_timeout_ms: 10_000,
            max_connections: 1_024,
            defaults: Limits::default(),
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
        for p in [&mut config.socket, &mut config.plugins, &mut config.data] {
            if p.is_relative() {
                *p = base.join(&*p);
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
        // sockaddr_un holds 108 bytes; say so now rather than at bind time.
        if self.socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "socket path {} is too long: Unix socket paths must stay under {} bytes",
                self.socket.display(),
                MAX_SOCKET_PATH + 1
            ));
        }
        self.defaults
            .validate()
            .map_err(|e| format!("defaults: {e}"))
    }

    /// Where per-service sockets live: `services/` beside the main socket.
    pub fn services_dir(&self) -> PathBuf {
        self.socket
            .parent()
            .unwrap_or(Path::new("."))
            .join("services")
    }

    /// The compile cache folder.
    pub fn cache_dir(&self) -> PathBuf {
        self.data.join("cache")
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
}

impl Manifest {
    /// Reads `path` if it exists; a missing manifest means no overrides.
    pub fn load_optional(path: &Path) -> Result<Manifest, ConfigError> {
        let error = |message: String| ConfigError {
            path: path.to_owned(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(e) => return Err(error(format!("cannot read: {e}"))),
        };
        if text.trim().is_empty() {
            return Ok(Manifest::default());
        }
        serde_yaml::from_str(&text).map_err(|e| error(e.to_string()))
    }

    /// The plugin's effective limits: the manifest over the defaults.
    pub fn limits(&self, defaults: &Limits) -> Result<Limits, String> {
        let limits = Limits {
            timeout_ms: self.timeout_ms.unwrap_or(defaults.timeout_ms),
            memory_mb: self.memory_mb.unwrap_or(defaults.memory_mb),
            max_concurrency: self.max_concurrency.unwrap_or(defaults.max_concurrency),
            max_queue: self.max_queue.unwrap_or(defaults.max_queue),
            reuse: self.reuse.unwrap_or(defaults.reuse),
        };
        limits.validate()?;
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_all_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.socket, PathBuf::from("run/ferry.sock"));
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
    fn manifest_overrides_defaults() {
        let m: Manifest = serde_yaml::from_str("timeout_ms: 100\n").unwrap();
        let l = m.limits(&Limits::default()).unwrap();
        assert_eq!(l.timeout_ms, 100);
        assert_eq!(l.max_concurrency, 64);
        assert!(serde_yaml::from_str::<Manifest>("timeoutms: 1\n").is_err());
    }
}

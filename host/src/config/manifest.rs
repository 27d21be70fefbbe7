//! A plugin's manifest, `NAME.yaml` beside `NAME.wasm`: limits over the
//! defaults, public actions, grants and plain config values.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use super::limits::{Circuit, Limits};

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
    pub max_response_bytes: Option<u64>,
    pub idle_ttl_ms: Option<u64>,
    pub log_lines_per_s: Option<u32>,
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
        match serde_norway::Value::deserialize(d)? {
            serde_norway::Value::String(s) => Ok(ConfigValue(s)),
            serde_norway::Value::Number(n) => Ok(ConfigValue(n.to_string())),
            serde_norway::Value::Bool(b) => Ok(ConfigValue(b.to_string())),
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
        serde_norway::from_str(text).map_err(|e| ConfigError {
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
            max_response_bytes: self
                .max_response_bytes
                .unwrap_or(defaults.max_response_bytes),
            idle_ttl_ms: self.idle_ttl_ms.unwrap_or(defaults.idle_ttl_ms),
            log_lines_per_s: self.log_lines_per_s.unwrap_or(defaults.log_lines_per_s),
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
    use crate::config::Config;

    #[test]
    fn manifest_overrides_defaults() {
        let m: Manifest = serde_norway::from_str("timeout_ms: 100\n").unwrap();
        let l = m.limits(&Limits::default()).unwrap();
        assert_eq!(l.timeout_ms, 100);
        assert_eq!(l.max_concurrency, 64);
        assert!(serde_norway::from_str::<Manifest>("timeoutms: 1\n").is_err());
    }

    #[test]
    fn manifest_circuit_keys_override_one_by_one() {
        let defaults = Config::parse("defaults:\n  circuit: {failures: 9, backoff_ms: 50}\n")
            .unwrap()
            .defaults;
        let m: Manifest = serde_norway::from_str("circuit: {window_ms: 700}\n").unwrap();
        let c = m.limits(&defaults).unwrap().circuit;
        assert_eq!((c.failures, c.window_ms, c.backoff_ms), (9, 700, 50));
        let m: Manifest = serde_norway::from_str("circuit: {failures: 0}\n").unwrap();
        assert!(
            m.limits(&defaults)
                .unwrap_err()
                .contains("circuit.failures")
        );
        assert!(serde_norway::from_str::<Manifest>("circuit: {failure: 1}\n").is_err());
    }

    #[test]
    fn manifest_config_is_plain_values() {
        let m: Manifest =
            serde_norway::from_str("config: {greeting: hi, retries: 3, loud: true, ratio: 0.5}\n")
                .unwrap();
        let values = m.config_values();
        assert_eq!(values["greeting"], "hi");
        assert_eq!(values["retries"], "3");
        assert_eq!(values["loud"], "true");
        assert_eq!(values["ratio"], "0.5");
        let e = serde_norway::from_str::<Manifest>("config: {nested: {a: 1}}\n").unwrap_err();
        assert!(
            e.to_string().contains("strings, numbers or booleans"),
            "{e}"
        );
    }
}

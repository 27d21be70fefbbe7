//! What a service is built from: its files in the plugins folder, read
//! whole and named by digest, and its manifest over the config's defaults.
//! The deployer compares sources to tell an event worth acting on from one
//! that changes nothing.

use std::path::Path;
use std::sync::Arc;

use crate::config::{ConfigError, Limits, Manifest};
use crate::core::names::valid_service_name;
use crate::runtime::Settings;

/// The settings a plugin runs with: its manifest (text, when there is one)
/// over the config's defaults.
pub fn settings(
    manifest_path: &Path,
    text: Option<&str>,
    defaults: &Limits,
) -> Result<Settings, ConfigError> {
    let manifest = match text {
        Some(text) => Manifest::parse(manifest_path, text)?,
        None => Manifest::default(),
    };
    let limits = manifest.limits(defaults).map_err(|message| ConfigError {
        path: manifest_path.to_owned(),
        message,
    })?;
    let subscriptions = manifest
        .permissions
        .events
        .validate()
        .map_err(|message| ConfigError {
            path: manifest_path.to_owned(),
            message,
        })?;
    let consume = manifest.consumers().map_err(|message| ConfigError {
        path: manifest_path.to_owned(),
        message,
    })?;
    if let Some(bad) = manifest
        .permissions
        .calls
        .iter()
        .find(|s| !valid_service_name(s))
    {
        return Err(ConfigError {
            path: manifest_path.to_owned(),
            message: format!("permissions.calls: `{bad}` is not a service name"),
        });
    }
    Ok(Settings {
        limits,
        config: Arc::new(manifest.config_values()),
        public: manifest.public,
        database: manifest.permissions.database,
        publish: Arc::new(manifest.permissions.events.publish),
        subscriptions: Arc::new(subscriptions),
        calls: Arc::new(manifest.permissions.calls),
        consume: Arc::new(consume),
    })
}

/// The service a file in the plugins folder belongs to: `NAME.wasm` or
/// `NAME.yaml` with a plain NAME. Hidden files, editor leftovers and
/// anything else are not services.
pub fn service_of(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let name = file
        .strip_suffix(".wasm")
        .or_else(|| file.strip_suffix(".yaml"))?;
    valid_service_name(name).then(|| name.to_owned())
}

/// Names one deployment: the code and the manifest it runs with. Status
/// shows it, and `ferry deploy` waits for it.
pub fn deployment_id(digest: &str, manifest: Option<&str>) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(digest.as_bytes());
    hash.update([0]);
    hash.update(manifest.unwrap_or("").as_bytes());
    hash.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a serving version was built from: when none of it changed, an
/// event about the service is nothing to act on. A reload that leaves a
/// plugin's effective settings as they were leaves the plugin alone.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Source {
    pub digest: String,
    pub manifest: Option<String>,
    /// The manifest over the defaults in force; the error when it is wrong.
    pub settings: Result<Settings, String>,
}

/// Why a service's files were not read.
pub(super) enum NotRead {
    Gone,
    /// The file changed while it was read: look again later.
    Unsettled,
    Failed(String),
}

/// Reads a service's files (call it off the async threads: a plugin can be
/// tens of megabytes) and names what they hold.
pub(super) fn read_source(wasm: &Path, defaults: &Limits) -> Result<(Source, Vec<u8>), NotRead> {
    let bytes = read_settled(wasm)?;
    let manifest_path = wasm.with_extension("yaml");
    let manifest = read_manifest(&manifest_path)
        .map_err(|e| NotRead::Failed(format!("cannot read {}: {e}", manifest_path.display())))?;
    let settings =
        settings(&manifest_path, manifest.as_deref(), defaults).map_err(|e| e.to_string());
    let source = Source {
        digest: crate::runtime::digest(&bytes),
        manifest,
        settings,
    };
    Ok((source, bytes))
}

/// Reads a plugin file whole, or says it is gone or still being written.
fn read_settled(path: &Path) -> Result<Vec<u8>, NotRead> {
    let failed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => NotRead::Gone,
        _ => NotRead::Failed(format!("cannot read {}: {e}", path.display())),
    };
    let stamp = |meta: &std::fs::Metadata| (meta.len(), meta.modified().ok());
    let before = std::fs::metadata(path).map_err(failed)?;
    if !before.is_file() {
        return Err(NotRead::Gone);
    }
    let bytes = std::fs::read(path).map_err(failed)?;
    let after = std::fs::metadata(path).map_err(failed)?;
    if stamp(&after) != stamp(&before) || after.len() != bytes.len() as u64 {
        return Err(NotRead::Unsettled);
    }
    Ok(bytes)
}

/// Reads a manifest, if there is one.
fn read_manifest(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_services() {
        for (file, service) in [
            ("echo.wasm", Some("echo")),
            ("echo.yaml", Some("echo")),
            ("todo-v2_x.wasm", Some("todo-v2_x")),
            (".echo.wasm", None),
            (".echo.wasm.swp", None),
            ("echo.wasm~", None),
            ("echo.wasm.tmp", None),
            ("Echo.wasm", None),
            ("#echo.wasm#", None),
            ("echo.txt", None),
            ("..wasm", None),
        ] {
            assert_eq!(
                service_of(Path::new("/deploy").join(file).as_path()).as_deref(),
                service,
                "{file}"
            );
        }
    }

    #[test]
    fn a_deployment_names_code_and_manifest_together() {
        let bare = deployment_id("abc", None);
        assert_eq!(bare.len(), 12);
        assert_eq!(bare, deployment_id("abc", Some("")));
        assert_ne!(bare, deployment_id("abc", Some("timeout_ms: 5\n")));
        assert_ne!(bare, deployment_id("abd", None));
    }
}

//! On-disk cache of compiled plugins, so a restart does not recompile.
//!
//! An entry is keyed by the SHA-256 of the component's bytes together with
//! the engine's compatibility hash (Wasmtime version and every setting that
//! changes generated code), so a host upgrade or config change misses instead
//! of loading incompatible code.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded compiled code from the cache.
    Hit,
    /// Compiled, and stored for next time when possible.
    Miss,
    /// Compiled; no cache in use.
    Off,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Off => "off",
        }
    }
}

/// Hex SHA-256 of a plugin's bytes; also shown as the plugin's version.
pub fn digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds `Hash` output into SHA-256, which, unlike `DefaultHasher`, is stable.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        unreachable!("only the SHA-256 digest is read")
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

pub struct CodeCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl CodeCache {
    /// A cache in `dir`, or none when `dir` is `None`.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        CodeCache {
            dir,
            engine_key: hex(&hasher.0.finalize()[..8]),
        }
    }

    fn entry(&self, dir: &Path, digest: &str) -> PathBuf {
        dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// Loads the compiled form of `bytes` (whose SHA-256 is `digest`), or
    /// compiles it. A cache that cannot be read or written only costs time.
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, bytes)?, CacheOutcome::Off));
        };
        let path = self.entry(dir, digest);
        if path.exists() {
            // SAFETY: files in the cache folder are written only by
            // `Component::serialize` below, under the host's data folder,
            // and their name carries the engine's compatibility hash.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "dropping unusable compile cache entry: {e}");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let started = Instant::now();
        let component = Component::new(engine, bytes)?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compiled component"
        );
        if let Err(e) = store(dir, &path, &component) {
            tracing::warn!(path = %path.display(), "cannot write compile cache entry: {e}");
        }
        Ok((component, CacheOutcome::Miss))
    }
}

/// Writes next to the final name and renames, so a crash or a concurrent
/// host never leaves a half-written entry under the real name.
fn store(dir: &Path, path: &Path, component: &Component) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let code = component.serialize()?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, code)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

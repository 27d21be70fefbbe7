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
    /// The settings of a throwaway engine each compilation runs on, when it
    /// makes code the serving engine takes (see `compile`).
    compile_config: Option<wasmtime::Config>,
}

fn key_of(engine: &Engine) -> String {
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex(&hasher.0.finalize()[..8])
}

impl CodeCache {
    /// A cache in `dir`, or none when `dir` is `None`; compilations run on
    /// engines built from `compile_config` when their code is compatible.
    pub fn new(engine: &Engine, dir: Option<PathBuf>, compile_config: wasmtime::Config) -> Self {
        let engine_key = key_of(engine);
        let compile_config = Engine::new(&compile_config)
            .ok()
            .filter(|compiler| key_of(compiler) == engine_key)
            .map(|_| compile_config);
        tracing::debug!(
            throwaway_compilers = compile_config.is_some(),
            "compile cache ready"
        );
        CodeCache {
            dir,
            engine_key,
            compile_config,
        }
    }

    /// Compiles `bytes` into serialized code. On an engine of its own,
    /// dropped right after: the compiler keeps working memory per engine
    /// (contexts, buffers sized for the largest function it has seen), and
    /// the serving engine would hold it for the host's life.
    ///
    /// Each compilation also gets threads of its own (wasmtime compiles a
    /// component's functions in parallel on whichever rayon pool it runs
    /// in): on the one global pool, a small plugin's few functions would
    /// queue behind the thousands of an interpreter's compiling beside it.
    fn compile(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("ferry-compile-{i}"))
            .build()
            .map_err(|e| wasmtime::Error::msg(format!("cannot start compile threads: {e}")))?;
        pool.install(|| match &self.compile_config {
            Some(config) => Engine::new(config)?.precompile_component(bytes),
            None => engine.precompile_component(bytes),
        })
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
            let code = self.compile(engine, bytes)?;
            // SAFETY: `code` was just compiled for an engine whose code this
            // one takes.
            let component = unsafe { Component::deserialize(engine, &code)? };
            return Ok((component, CacheOutcome::Off));
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
        let code = self.compile(engine, bytes)?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compiled component"
        );
        // Loaded back from the file, as a warm start loads it: the code is
        // then mapped from the file rather than held in the compiler's
        // memory, so a cold start ends up no bigger than a warm one.
        match store(dir, &path, &code) {
            // SAFETY: as above; the file was written from `code` just now.
            Ok(()) => match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Miss)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cannot load the compile cache entry just written: {e}")
                }
            },
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot write compile cache entry: {e}")
            }
        }
        // SAFETY: `code` is what `precompile_component` produced, by this
        // engine, a moment ago.
        let component = unsafe { Component::deserialize(engine, &code)? };
        Ok((component, CacheOutcome::Miss))
    }
}

/// Writes next to the final name and renames, so a crash or a concurrent
/// host never leaves a half-written entry under the real name.
fn store(dir: &Path, path: &Path, code: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, code)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

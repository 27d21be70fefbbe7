//! The engine: one Wasmtime `Engine` and `Linker` for the whole host (every
//! capability linked once), the epoch ticker, and loading a `.wasm` file
//! into a ready-to-call [`Plugin`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::cache::{self, CacheOutcome};
use super::idle::Instances;
use super::plugin::{Plugin, Settings};
use super::pool::EntryIndices;
use super::state::StoreState;
use crate::capabilities::Shared;
use crate::capabilities::bindings::{
    CallHandlerIndices, EventHandlerIndices, HandlerIndices, HealthIndices, RequestHandlerIndices,
    add_config_to_linker, add_events_to_linker, add_invocation_to_linker, add_log_to_linker,
    add_services_to_linker, add_sql_to_linker,
};
use crate::config::MAX_MEMORY_MB;

/// How often the epoch advances. A running plugin yields to the scheduler at
/// every tick, so a deadline is enforced within about one tick, and a ready
/// request waits at most a tick per busy plugin ahead of it.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Why a file is not a usable plugin. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "not a WebAssembly component: it is a core wasm module. Build it for the `wasm32-wasip2` target (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("not a WebAssembly file: it does not start with the `\\0asm` magic bytes")]
    NotWasm,
    #[error("the component does not compile: {0}")]
    Compile(String),
    #[error("the component imports something Ferry does not provide: {0}")]
    Imports(String),
    #[error(
        "its manifest subscribes to events (`permissions.events.subscribe`), but the component does not export `ferry:plugin/event-handler@0.1.3`: build it for the `plugin-with-events` world (the Rust SDK does) or `service-with-events`"
    )]
    NoEventHandler,
    #[error(
        "the component does not export the `ferry:plugin/handler@0.1.0` interface of the `service` world, nor `ferry:plugin/request-handler@0.1.3` (or `call-handler@0.1.1`) of the `plugin` world: {0}"
    )]
    Exports(String),
}

/// What loading a plugin did, for the log and `ferry check`.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub bytes: usize,
    pub cache: CacheOutcome,
    pub elapsed: Duration,
}

pub struct Runtime {
    engine: Engine,
    /// Every version's idle instances.
    instances: Arc<Instances>,
    linker: Linker<StoreState>,
    /// The bus plugins publish on, and the way to other services.
    shared: Shared,
    cache: cache::CodeCache,
    pooling: bool,
    stop_ticker: Arc<AtomicBool>,
}

impl Runtime {
    /// Builds the engine (with the pooling allocator when the machine lets
    /// us reserve its address space), the linker, and the epoch ticker.
    /// `cache_dir` of `None` compiles every time.
    pub fn new(
        cache_dir: Option<PathBuf>,
        max_instances: u32,
        shared: Shared,
    ) -> anyhow::Result<Runtime> {
        let (engine, pooling) = match Engine::new(&engine_config(Some(max_instances))) {
            Ok(engine) => (engine, true),
            Err(e) => {
                tracing::warn!(
                    "pooling allocator unavailable ({e}); allocating instances on demand"
                );
                (Engine::new(&engine_config(None))?, false)
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        add_log_to_linker::<StoreState, HasSelf<_>>(&mut linker, |s: &mut StoreState| &mut s.log)?;
        add_config_to_linker::<StoreState, HasSelf<_>>(&mut linker, |s: &mut StoreState| {
            &mut s.config
        })?;
        add_sql_to_linker::<StoreState, crate::capabilities::sql::HasSql>(
            &mut linker,
            StoreState::sql,
        )?;
        add_invocation_to_linker::<StoreState, crate::capabilities::invocation::HasCalls>(
            &mut linker,
            StoreState::calls,
        )?;
        add_events_to_linker::<StoreState, HasSelf<_>>(&mut linker, |s: &mut StoreState| {
            &mut s.events
        })?;
        add_services_to_linker::<StoreState, HasSelf<_>>(&mut linker, |s: &mut StoreState| {
            &mut s.services
        })?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (ticker_engine, stop) = (engine.clone(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("ferry-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })?;

        Ok(Runtime {
            instances: Instances::new()?,
            cache: cache::CodeCache::new(&engine, cache_dir, engine_config(None)),
            engine,
            linker,
            shared,
            pooling,
            stop_ticker,
        })
    }

    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Compiles (or loads from the cache) and links a plugin whose bytes
    /// and [`digest`] are at hand; `started` is when the load began, for
    /// the report. This is CPU-heavy: call it from a blocking thread.
    pub fn load_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        digest: String,
        settings: Settings,
        started: Instant,
    ) -> Result<(Plugin, LoadReport), LoadError> {
        check_header(bytes)?;
        let (component, outcome) = self
            .cache
            .load(&self.engine, bytes, &digest)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Imports(format!("{e:#}")))?;
        // Plugins built against 0.1.3 and later export `request-handler`;
        // against 0.1.1 and 0.1.2, `call-handler`; against 0.1.0, `handler`.
        let entry = if let Ok(indices) = RequestHandlerIndices::new(&instance_pre) {
            EntryIndices::Request(indices)
        } else if let Ok(indices) = CallHandlerIndices::new(&instance_pre) {
            EntryIndices::Call(indices)
        } else {
            EntryIndices::Handler(
                HandlerIndices::new(&instance_pre)
                    .map_err(|e| LoadError::Exports(format!("{e:#}")))?,
            )
        };
        let health = HealthIndices::new(&instance_pre).ok();
        let event_handler = EventHandlerIndices::new(&instance_pre).ok();
        if !settings.subscriptions.is_empty() && event_handler.is_none() {
            return Err(LoadError::NoEventHandler);
        }
        let report = LoadReport {
            bytes: bytes.len(),
            cache: outcome,
            elapsed: started.elapsed(),
        };
        let plugin = Plugin::new(
            name,
            instance_pre,
            entry,
            health,
            event_handler,
            settings,
            digest,
            self.instances.clone(),
            self.shared.clone(),
        );
        Ok((plugin, report))
    }
}

/// Rejects files that are not components before spending time on them.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    match bytes.get(0..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(LoadError::CoreModule),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
        _ => Err(LoadError::NotWasm),
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// The engine's settings; with `pooling`, the pooling allocator sized for
/// that many instances.
fn engine_config(pooling: Option<u32>) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // `FERRY_PROFILE=perfmap` writes /tmp/perf-PID.map, so `perf` can name
    // the compiled plugin functions it samples.
    if std::env::var("FERRY_PROFILE").is_ok_and(|p| p == "perfmap") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if let Some(instances) = pooling {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .total_stacks(instances)
            .max_memory_size((MAX_MEMORY_MB << 20) as usize)
            .max_tables_per_module(4)
            .max_memories_per_module(2)
            .table_elements(1 << 16);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

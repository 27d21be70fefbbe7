//! The data each instance's `Store` carries, and the memory limiter that
//! enforces a plugin's `memory_mb`.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::plugin::Settings;
use crate::capabilities::Shared;
use crate::capabilities::config::PluginConfig;
use crate::capabilities::events::EventsState;
use crate::capabilities::invocation::{CallSlot, CallTable};
use crate::capabilities::log::{LogBudget, PluginLog};
use crate::capabilities::services::ServicesState;
use crate::capabilities::sql::{SqlState, SqlView};
use crate::capabilities::wasi;

/// Everything one instance owns. Each WIT interface's state is a field,
/// reached from the linker through a projection.
pub struct StoreState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    /// The request being handled, as `invocation` lends it.
    pub call: CallSlot,
    pub limiter: MemoryLimiter,
    pub log: PluginLog,
    pub sql: SqlState,
    pub config: PluginConfig,
    pub events: EventsState,
    pub services: ServicesState,
}

impl StoreState {
    pub fn new(
        plugin: &Arc<str>,
        memory_bytes: usize,
        settings: &Settings,
        log_budget: &Arc<LogBudget>,
        shared: &Shared,
    ) -> Self {
        StoreState {
            wasi: wasi::sandbox(plugin, log_budget),
            table: ResourceTable::new(),
            call: CallSlot::default(),
            limiter: MemoryLimiter::new(memory_bytes),
            log: PluginLog::new(plugin.clone(), log_budget.clone()),
            sql: SqlState::new(plugin.clone(), settings.database),
            config: PluginConfig::new(settings.config.clone()),
            events: EventsState::new(plugin.clone(), shared.bus.clone(), settings.publish.clone()),
            services: ServicesState::new(
                plugin.clone(),
                settings.calls.clone(),
                shared.switchboard.clone(),
            ),
        }
    }

    /// The projection the linker hands the `sql` interface.
    pub fn sql(&mut self) -> SqlView<'_> {
        SqlView {
            state: &mut self.sql,
            table: &mut self.table,
        }
    }

    /// The projection the linker hands the `invocation` interface.
    pub fn calls(&mut self) -> CallTable<'_> {
        CallTable {
            table: &mut self.table,
            slot: &mut self.call,
        }
    }

    /// Clears what one request left behind, before the instance serves the
    /// next.
    pub fn end_request(&mut self) {
        self.call.end();
        self.sql.end_request(&mut self.table);
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Table elements one instance may grow its tables to.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Caps linear memory and remembers when it refused a growth, so that the
/// trap that usually follows can be reported as "memory limit exceeded".
pub struct MemoryLimiter {
    max_bytes: usize,
    pub refused: bool,
}

impl MemoryLimiter {
    fn new(max_bytes: usize) -> Self {
        MemoryLimiter {
            max_bytes,
            refused: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

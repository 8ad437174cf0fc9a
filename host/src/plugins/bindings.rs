//! Host-side bindings of `wit/strategy.wit` and the per-instance state behind them.

use std::sync::Arc;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "strategy",
});

pub use exports::recohost::strategy::plugin::Guest as PluginExports;
pub use recohost::strategy::types::{
    EventKind as WitEventKind, Feedback, Item, PluginInfo, Request, Scored, StrategyError,
};

/// The WIT package version this host implements (`package recohost:strategy@...`).
pub const WIT_PACKAGE: &str = "recohost:strategy";
pub const WIT_VERSION: (u64, u64, u64) = (1, 0, 0);

/// Everything one plugin instance's `Store` holds.
pub struct InstanceState {
    pub plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
    /// Bytes of log messages the current call may still send (reset before each call).
    pub log_budget: usize,
}

impl InstanceState {
    /// WASI grants nothing here: no preopened directories, no environment, no arguments, no
    /// sockets, no inherited stdio. Clocks and randomness stay (Rust's std needs them).
    pub fn new(plugin: Arc<str>, limits: StoreLimits) -> Self {
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().build();
        Self {
            plugin,
            wasi,
            table: ResourceTable::new(),
            limits,
            log_budget: 0,
        }
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl recohost::strategy::types::Host for InstanceState {}

impl recohost::strategy::host_log::Host for InstanceState {
    fn log(&mut self, level: recohost::strategy::host_log::Level, message: String) {
        use recohost::strategy::host_log::Level;
        // Bounded so a chatty plugin cannot flood the log: each message is cut to 2,000
        // characters, and a call may log `max_log_bytes_per_call` in all.
        let plugin = &*self.plugin;
        if self.log_budget == 0 {
            return;
        }
        let message: String = message.chars().take(2000).collect();
        if message.len() >= self.log_budget {
            self.log_budget = 0;
            tracing::warn!(
                plugin,
                "the plugin reached its log limit for this call; dropping the rest"
            );
            return;
        }
        self.log_budget -= message.len();
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

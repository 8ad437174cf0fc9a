//! Host-side bindings of `wit/strategy.wit` and the per-instance state behind them.

use std::sync::{Arc, Mutex};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, ResourceTable, WasmStr};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bounded_io::BoundedIo;
use super::engine::EpochClock;
use super::limiter::SandboxLimiter;
use super::output_tail::OutputTail;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "strategy",
});

pub use exports::recohost::strategy::plugin::Guest as PluginExports;
pub use recohost::strategy::types::{
    EventKind as WitEventKind, Feedback, Item, PluginInfo, Request, Scored, StrategyError,
    TrainingReport,
};

/// The WIT package version this host implements (`package recohost:strategy@...`).
pub const WIT_PACKAGE: &str = "recohost:strategy";
pub const WIT_VERSION: (u64, u64, u64) = (1, 0, 0);

/// Entries an instance's WASI resource table may hold (pollables, streams): a few dozen in
/// practice; the cap keeps a guest from filling host memory with them.
pub const MAX_WASI_RESOURCES: usize = 10_000;
/// Largest `get-random-bytes` / `get-insecure-random-bytes` answer, in bytes (the host
/// allocates it before copying it into the guest).
pub const MAX_RANDOM_BYTES: u64 = 1024 * 1024;

/// Everything one plugin instance's `Store` holds.
pub struct InstanceState {
    pub plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: SandboxLimiter,
    /// The epoch tick at which the call under way must end: blocking WASI calls give up then
    /// ([`super::bounded_io`]).
    pub deadline_tick: u64,
    clock: EpochClock,
    /// Bytes of log messages the current call may still send (reset before each call).
    pub log_budget: usize,
    /// Log messages dropped because a call reached its log budget, since the instance began.
    pub log_messages_dropped: u64,
    /// Network uses the sandbox refused (`connect 127.0.0.1:22`), since the instance began.
    pub denied_network: Arc<Mutex<Vec<String>>>,
    /// The end of what the guest wrote to stdout and stderr, for a trap's reason.
    pub output: OutputTail,
}

impl InstanceState {
    /// WASI grants nothing here: no preopened directories, no environment, no arguments, no
    /// sockets, no inherited stdio (stdout and stderr go to a small [`OutputTail`] that only
    /// a trap's reason reads). Clocks and randomness stay (Rust's std needs them), with their
    /// host-side allocations bounded.
    ///
    /// With `observe_network` (`recohost plugin check`), sockets may be created so that a
    /// connect or bind reaches the address check, which refuses every address and notes it.
    pub fn new(
        plugin: Arc<str>,
        memory_bytes: usize,
        observe_network: bool,
        clock: EpochClock,
    ) -> Self {
        let denied_network = Arc::new(Mutex::new(Vec::new()));
        let noted = denied_network.clone();
        let output = OutputTail::default();
        let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
        builder
            .stdout(output.clone())
            .stderr(output.clone())
            .max_random_size(MAX_RANDOM_BYTES)
            .allow_tcp(observe_network)
            .allow_udp(observe_network)
            .socket_addr_check(move |address, usage| {
                let mut noted = noted.lock().unwrap_or_else(|p| p.into_inner());
                if noted.len() < 16 {
                    noted.push(format!("{usage:?} {address}"));
                }
                Box::pin(async { false })
            });
        let wasi = builder.build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_WASI_RESOURCES);
        Self {
            plugin,
            wasi,
            table,
            limits: SandboxLimiter::new(memory_bytes),
            deadline_tick: 0,
            clock,
            log_budget: 0,
            log_messages_dropped: 0,
            denied_network,
            output,
        }
    }

    /// The state the bounded blocking calls use.
    pub fn bounded_io(&mut self) -> BoundedIo<'_> {
        BoundedIo {
            table: &mut self.table,
            deadline: tokio::time::Instant::now() + self.clock.until(self.deadline_tick),
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
    fn log(&mut self, level: LogLevel, message: String) {
        self.log_message(level, &message);
    }
}

use recohost::strategy::host_log::Level as LogLevel;

/// Characters of one log message kept.
const MAX_LOG_MESSAGE_CHARS: usize = 2_000;

impl InstanceState {
    /// Logs a plugin's message, bounded so a chatty plugin cannot flood the log: each message
    /// is cut to 2,000 characters, and a call may log `max_log_bytes_per_call` in all.
    fn log_message(&mut self, level: LogLevel, message: &str) {
        let plugin = &*self.plugin;
        if self.log_budget == 0 {
            self.log_messages_dropped += 1;
            return;
        }
        let message: String = message.chars().take(MAX_LOG_MESSAGE_CHARS).collect();
        if message.len() >= self.log_budget {
            self.log_budget = 0;
            self.log_messages_dropped += 1;
            tracing::warn!(
                plugin,
                "the plugin reached its log limit for this call; dropping the rest"
            );
            return;
        }
        self.log_budget -= message.len();
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// Links `host-log.log` in place of the generated binding, which copies the whole message
/// into a host `String` before the host can cut it: this one reads the guest's string where
/// it lies and copies only the characters kept.
pub fn link_host_log(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let name = format!(
        "{WIT_PACKAGE}/host-log@{}.{}.{}",
        WIT_VERSION.0, WIT_VERSION.1, WIT_VERSION.2
    );
    linker.instance(&name)?.func_wrap(
        "log",
        |mut store: StoreContextMut<'_, InstanceState>, (level, message): (LogLevel, WasmStr)| {
            if store.data().log_budget == 0 {
                // Past this call's log budget: dropped unread.
                store.data_mut().log_messages_dropped += 1;
                return Ok(());
            }
            // Invalid UTF-8 is refused by `to_str`; the cut is on characters.
            let kept: String = message
                .to_str(&store)?
                .chars()
                .take(MAX_LOG_MESSAGE_CHARS)
                .collect();
            store.data_mut().log_message(level, &kept);
            Ok(())
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

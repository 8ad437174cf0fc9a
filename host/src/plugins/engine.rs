//! The one wasmtime `Engine` of the process, its epoch ticker and the compiled-code cache.
//!
//! Time limits use epoch interruption: a background thread advances the engine's epoch every
//! [`EPOCH_TICK`], and each call sets a deadline in ticks before it enters the guest. A tokio
//! timeout could not stop a tight loop inside WebAssembly; an epoch deadline traps it.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// How often the epoch advances: the granularity of every call's time budget.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The epoch, as the host reads it: how many [`EPOCH_TICK`]s the ticker has counted. Reading
/// it is one atomic load, so a call can note when it must end without asking the OS clock.
#[derive(Clone, Default)]
pub struct EpochClock(Arc<AtomicU64>);

impl EpochClock {
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn advance_for_tests(&self, ticks: u64) {
        self.0.fetch_add(ticks, Ordering::Relaxed);
    }

    /// How long until the clock reads `tick` (zero once it has).
    pub fn until(&self, tick: u64) -> Duration {
        let ticks = tick.saturating_sub(self.now());
        EPOCH_TICK.saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX))
    }
}

#[derive(Clone)]
pub struct PluginEngine {
    engine: Engine,
    clock: EpochClock,
    cache_dir: Option<Arc<PathBuf>>,
    /// See [`Self::observing_network`].
    observe_network: bool,
    /// The server's inline-call slots ([`super::placement`]); none outside the server.
    inline: Arc<super::placement::InlineSlots>,
}

impl PluginEngine {
    /// Builds the engine and starts its epoch ticker. Compiled components are cached under
    /// `cache_dir` (when given) so that a restart does not recompile them.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::build(cache_dir, true)
    }

    /// An engine whose calls have no time limit, for one thing only: the benchmark that
    /// measures what the limit costs (`cargo bench -p recohost --bench native_vs_wasm`). A
    /// plugin that loops never returns from it; the server never builds one.
    #[doc(hidden)]
    pub fn without_time_limit_for_benchmarks() -> anyhow::Result<Self> {
        Self::build(None, false)
    }

    fn build(cache_dir: Option<PathBuf>, time_limit: bool) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(time_limit);
        // `RECOHOST_WASM_PROFILER=perfmap|jitdump` makes compiled plugin code visible to
        // `perf` (docs/benchmarks.md shows how to profile a plugin).
        match std::env::var("RECOHOST_WASM_PROFILER").as_deref() {
            Ok("perfmap") => {
                config.profiler(wasmtime::ProfilingStrategy::PerfMap);
            }
            Ok("jitdump") => {
                config.profiler(wasmtime::ProfilingStrategy::JitDump);
            }
            _ => {}
        }
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let weak = engine.weak();
        let clock = EpochClock::default();
        let ticks = clock.0.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    ticks.fetch_add(1, Ordering::Relaxed);
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("cannot start the epoch ticker thread")?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("cannot create the compiled-code cache {}", dir.display())
            })?;
        }
        Ok(Self {
            engine,
            clock,
            cache_dir: cache_dir.map(Arc::new),
            observe_network: false,
            inline: Arc::new(super::placement::InlineSlots::none()),
        })
    }

    /// An engine whose plugins' serving calls may run on the server's async workers
    /// ([`super::placement`]), for a server whose requests time out after `request_timeout`.
    pub fn serving_inline(mut self, request_timeout: Duration) -> Self {
        self.inline = Arc::new(super::placement::InlineSlots::new(request_timeout));
        self
    }

    pub(super) fn inline_slots(&self) -> &super::placement::InlineSlots {
        &self.inline
    }

    /// An engine whose instances may create sockets, so that a plugin's attempt to connect
    /// or bind reaches the socket-address check, which refuses it and records it. For
    /// `recohost plugin check` only: serving instances cannot even create a socket (a plugin
    /// could otherwise hold host file descriptors).
    pub fn observing_network(mut self) -> Self {
        self.observe_network = true;
        self
    }

    pub fn observes_network(&self) -> bool {
        self.observe_network
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The epoch as the ticker counts it.
    pub fn clock(&self) -> &EpochClock {
        &self.clock
    }

    /// Deadline, in epoch ticks, for a call budget. Budgets are bounded at load
    /// (`PluginLimits::validate`), so this stays far below where wasmtime's epoch arithmetic
    /// could overflow; it saturates rather than wraps all the same.
    pub fn ticks(budget: Duration) -> u64 {
        let ticks = budget.as_micros() / EPOCH_TICK.as_micros();
        u64::try_from(ticks)
            .unwrap_or(u64::MAX / 2)
            .clamp(1, u64::MAX / 2)
            + 1
    }

    /// Compiles `wasm`, or loads the result of an earlier compilation of the same bytes by the
    /// same engine configuration from the cache; says which.
    pub fn compile(&self, wasm: &[u8], origin: &Path) -> anyhow::Result<(Component, CodeSource)> {
        let Some(dir) = &self.cache_dir else {
            return Ok((self.compile_uncached(wasm, origin)?, CodeSource::Compiled));
        };
        let path = dir.join(format!("{}.cwasm", self.cache_key(wasm)));
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of this very engine
            // configuration (the key includes the engine's compatibility hash), in the data
            // directory that only this server writes. A file that fails the engine's own
            // checks is recompiled below.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok((component, CodeSource::Cache)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring a stale compiled-code cache entry")
                }
            }
        }
        let component = self.compile_uncached(wasm, origin)?;
        match component.serialize() {
            Ok(bytes) => {
                let temporary = path.with_extension("tmp");
                if let Err(error) = std::fs::write(&temporary, bytes)
                    .and_then(|()| std::fs::rename(&temporary, &path))
                {
                    tracing::warn!(path = %path.display(), %error, "cannot write the compiled-code cache");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot serialize a compiled component"),
        }
        Ok((component, CodeSource::Compiled))
    }

    fn compile_uncached(&self, wasm: &[u8], origin: &Path) -> anyhow::Result<Component> {
        let started = std::time::Instant::now();
        let component = Component::new(&self.engine, wasm).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a valid WebAssembly component: {e}",
                origin.display()
            )
        })?;
        tracing::info!(path = %origin.display(), elapsed_ms = started.elapsed().as_millis() as u64, "compiled plugin");
        Ok(component)
    }

    fn cache_key(&self, wasm: &[u8]) -> String {
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let mut digest = Sha256::new();
        digest.update(wasm);
        digest.update(engine_hash.finish().to_le_bytes());
        digest.update(env!("CARGO_PKG_VERSION").as_bytes());
        hex(&digest.finalize())
    }
}

/// Where a plugin's machine code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CodeSource {
    /// Compiled from the .wasm at load (seconds, for a large plugin).
    Compiled,
    /// Loaded from the compiled-code cache, made by an earlier load of the same bytes.
    Cache,
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

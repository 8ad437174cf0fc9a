//! The plugin runtime: wasmtime engine, contract check, instances under limits, and the set
//! of loaded plugins.
//!
//! - [`engine`]: the process-wide engine, epoch ticker (time limits), compiled-code cache.
//! - [`contract`]: which WIT versions this host runs.
//! - [`health`]: the circuit breaker that marks a failing plugin unhealthy, with backoff.
//! - [`instance`]: one sandboxed instance and its typed, budgeted calls.
//! - [`limiter`]: the memory budget every instance's linear memories and tables share.
//! - [`bounded_io`]: WASI's blocking calls, ended by the deadline of the call they are in.
//! - [`fast_abi`]: the hot calls' arguments, copied into the guest in one pass.
//! - [`placement`]: whether a serving call runs on the async worker or the blocking pool.
//! - [`runtime`]: one plugin: current model version and its pool of serving instances.
//! - [`PluginRegistry`]: every loaded plugin by name; [`LivePlugins`]: the registry serving
//!   now, replaced as a whole when plugins are added or replaced without a restart.

pub mod bindings;
pub mod bounded_io;
pub mod contract;
pub mod engine;
pub mod fast_abi;
pub mod health;
pub mod instance;
pub mod limiter;
pub mod limits;
pub mod output_tail;
pub mod placement;
pub mod runtime;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use engine::PluginEngine;
pub use limits::PluginLimits;
pub use runtime::{
    ModelVersion, PluginLoadError, PluginRuntime, PluginStatus, RecommendCallError, Session,
    fingerprint,
};

/// The loaded plugins, by name.
#[derive(Clone, Default)]
pub struct PluginRegistry {
    plugins: BTreeMap<String, Arc<PluginRuntime>>,
}

impl PluginRegistry {
    pub fn insert(&mut self, plugin: PluginRuntime) {
        self.insert_shared(Arc::new(plugin));
    }

    pub fn insert_shared(&mut self, plugin: Arc<PluginRuntime>) {
        self.plugins.insert(plugin.name().to_string(), plugin);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<PluginRuntime>> {
        self.plugins.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.plugins.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<PluginRuntime>> {
        self.plugins.values()
    }

    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }
}

/// The registry serving now. Readers take a consistent snapshot without waiting; a reload
/// builds a new registry and swaps it in at once, so a request never sees half of one.
pub struct LivePlugins {
    current: arc_swap::ArcSwap<PluginRegistry>,
}

impl LivePlugins {
    pub fn new(registry: PluginRegistry) -> Self {
        Self {
            current: arc_swap::ArcSwap::from_pointee(registry),
        }
    }

    /// The registry serving now.
    pub fn current(&self) -> Arc<PluginRegistry> {
        self.current.load_full()
    }

    /// The plugin serving under `name` now.
    pub fn get(&self, name: &str) -> Option<Arc<PluginRuntime>> {
        self.current.load().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.current.load().names()
    }

    pub fn replace(&self, registry: PluginRegistry) {
        self.current.store(Arc::new(registry));
    }
}

/// A bundled plugin's .wasm built by `cargo xtask plugins`, for unit tests that run real
/// plugins (`cargo xtask test` sets `RECOHOST_PLUGINS_DIR`).
#[cfg(test)]
pub(crate) fn bundled_plugin_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("RECOHOST_PLUGINS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist/plugins")
        });
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

//! The plugin runtime: wasmtime engine, contract check, instances under limits, and the set
//! of loaded plugins.
//!
//! - [`engine`]: the process-wide engine, epoch ticker (time limits), compiled-code cache.
//! - [`contract`]: which WIT versions this host runs.
//! - [`instance`]: one sandboxed instance and its typed, budgeted calls.
//! - [`runtime`]: one plugin: current model version and its pool of serving instances.
//! - [`PluginRegistry`]: every loaded plugin by name.

pub mod bindings;
pub mod contract;
pub mod engine;
pub mod instance;
pub mod limits;
pub mod runtime;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use engine::PluginEngine;
pub use limits::PluginLimits;
pub use runtime::{
    ModelVersion, PluginLoadError, PluginRuntime, PluginStatus, RecommendCallError, Session,
};

/// The loaded plugins, by name.
#[derive(Default)]
pub struct PluginRegistry {
    plugins: BTreeMap<String, Arc<PluginRuntime>>,
}

impl PluginRegistry {
    pub fn insert(&mut self, plugin: PluginRuntime) {
        self.plugins
            .insert(plugin.name().to_string(), Arc::new(plugin));
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

//! What the benchmarks share: the bundled plugins, where their .wasm files are, and how a
//! bench gets one loaded and trained. Each bench uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use recohost::catalog::Catalog;
use recohost::plugins::bindings::Feedback;
use recohost::plugins::{ModelVersion, PluginEngine, PluginLimits, PluginRuntime};

/// The bundled plugins (`plugins/*`), as `cargo xtask plugins` builds them.
pub const PLUGINS: [&str; 5] = [
    "popularity",
    "collaborative",
    "content",
    "hybrid",
    "ratings",
];

/// The built components: `RECOHOST_PLUGINS_DIR`, else `dist/plugins/` of the workspace.
pub fn plugins_dir() -> PathBuf {
    std::env::var_os("RECOHOST_PLUGINS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist/plugins"))
}

/// Bundled plugin `name` loaded under the default limits for `catalog`, not trained.
pub fn load(engine: &PluginEngine, name: &str, catalog: &Catalog) -> PluginRuntime {
    PluginRuntime::load(
        engine,
        name,
        &plugins_dir().join(format!("{name}.wasm")),
        "{}".into(),
        PluginLimits::default(),
        catalog.plugin_items(),
        catalog.fingerprint(),
    )
    .unwrap_or_else(|e| panic!("{e} (build the plugins with `cargo xtask plugins`)"))
}

/// [`load`], trained on `events` with the model installed (version 1), ready to serve; and
/// its snapshot.
pub fn trained(
    engine: &PluginEngine,
    name: &str,
    catalog: &Catalog,
    events: &[Feedback],
) -> (PluginRuntime, Vec<u8>) {
    let runtime = load(engine, name, catalog);
    let snapshot = runtime.train(events).expect("train");
    runtime
        .install(ModelVersion {
            version: 1,
            snapshot: Arc::new(snapshot.clone()),
            created_at: 0,
            through_event: 0,
        })
        .expect("install");
    (runtime, snapshot)
}

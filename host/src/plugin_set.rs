//! The plugins a cluster runs. Each node's config file declares plugins, as on a single node;
//! operators publish a plugin to the whole cluster on top of that (`recohost plugin push`,
//! `POST /admin/plugins/{name}`): its .wasm goes into PostgreSQL once per content (SHA-256)
//! and a new numbered revision of the published set names it with its config and limits.
//! Every node runs its declared plugins with the newest revision's put over them by name
//! (and the ones no file declares added), the .wasm written into its data directory by hash,
//! so nodes share no file system. A node follows a new revision within a second the way it
//! takes a changed config file: `reload.rs` builds the new plugins aside and swaps them in.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::catalog::Catalog;
use crate::config::{LearningConfig, PluginDeclaration};
use crate::plugins::{PluginEngine, PluginLimits, PluginRuntime};
use crate::store::{PublishedPlugin, Store, wasm_sha256};

/// Largest .wasm accepted for publication (interpreter-based components from Python or
/// JavaScript weigh tens of MB).
pub const MAX_WASM_BYTES: usize = 128 * 1024 * 1024;

/// A revision of the published plugins, as a node puts it in force.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishedSet {
    pub revision: u64,
    pub plugins: Vec<PublishedPlugin>,
}

/// Where a node keeps the published .wasm files it runs: `data_dir/published/SHA256.wasm`.
pub fn wasm_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("published")
}

/// The plugins a node runs: `declared` with each plugin of `published` in place of the
/// declared one of its name, or added; their .wasm fetched from `store` into `dir` when not
/// there yet.
pub fn overlay(
    mut declared: Vec<PluginDeclaration>,
    published: Option<&PublishedSet>,
    store: &Store,
    dir: &Path,
) -> anyhow::Result<Vec<PluginDeclaration>> {
    let Some(set) = published else {
        return Ok(declared);
    };
    for plugin in &set.plugins {
        let path = wasm_file(store, dir, &plugin.wasm_sha256)?;
        let declaration = declaration(plugin, path, Some(set.revision))?;
        match declared.iter_mut().find(|d| d.name == plugin.name) {
            Some(slot) => *slot = declaration,
            None => declared.push(declaration),
        }
    }
    Ok(declared)
}

/// `plugin` as a node declares it, its .wasm at `path`.
pub fn declaration(
    plugin: &PublishedPlugin,
    path: PathBuf,
    revision: Option<u64>,
) -> anyhow::Result<PluginDeclaration> {
    Ok(PluginDeclaration {
        name: plugin.name.clone(),
        path,
        config: toml_config(&plugin.config)
            .with_context(|| format!("published plugin {:?}", plugin.name))?,
        limits: plugin.limits.clone(),
        // Rollback is the declaring node's choice; a published plugin has none.
        auto_rollback: false,
        published_revision: revision,
    })
}

/// The file holding the .wasm of hash `sha256` under `dir`, fetched from `store` when
/// missing or not what its name says (a write cut short).
fn wasm_file(store: &Store, dir: &Path, sha256: &str) -> anyhow::Result<PathBuf> {
    if sha256.is_empty() || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        anyhow::bail!("a published .wasm hash that is not hex: {sha256:?}");
    }
    let path = dir.join(format!("{sha256}.wasm"));
    if std::fs::read(&path).is_ok_and(|bytes| wasm_sha256(&bytes) == sha256) {
        return Ok(path);
    }
    let wasm = store
        .plugin_wasm(sha256)?
        .with_context(|| format!("the published .wasm {sha256} is not in the database"))?;
    if wasm_sha256(&wasm) != sha256 {
        anyhow::bail!("the published .wasm {sha256} in the database does not match its hash");
    }
    write_wasm(dir, &wasm)
}

/// Writes `wasm` under `dir` as `SHA256.wasm`, aside then renamed, so that no reader ever
/// sees part of one. Returns its path.
pub fn write_wasm(dir: &Path, wasm: &[u8]) -> anyhow::Result<PathBuf> {
    let sha256 = wasm_sha256(wasm);
    let path = dir.join(format!("{sha256}.wasm"));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let partial = dir.join(format!(
        ".{sha256}.{}.{:08x}.partial",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&partial, wasm)
        .and_then(|()| std::fs::rename(&partial, &path))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// What to publish as `name` with `wasm`: the `config` and `limits` given, else those it was
/// published with before, else those this node declares for it, else empty and defaults.
pub fn entry(
    name: &str,
    wasm: &[u8],
    config: Option<serde_json::Map<String, serde_json::Value>>,
    limits: Option<PluginLimits>,
    published: Option<&PublishedSet>,
    declared: &[PluginDeclaration],
) -> anyhow::Result<PublishedPlugin> {
    check_name(name)?;
    if wasm.len() > MAX_WASM_BYTES {
        anyhow::bail!(
            "the .wasm is {} MiB; at most {} MiB is accepted",
            wasm.len() >> 20,
            MAX_WASM_BYTES >> 20
        );
    }
    let before = published.and_then(|set| set.plugins.iter().find(|p| p.name == name));
    let declaration = declared.iter().find(|d| d.name == name);
    let config = match (config, before, declaration) {
        (Some(config), _, _) => config,
        (None, Some(before), _) => before.config.clone(),
        (None, None, Some(declaration)) => match serde_json::to_value(&declaration.config)? {
            serde_json::Value::Object(config) => config,
            _ => serde_json::Map::new(),
        },
        (None, None, None) => serde_json::Map::new(),
    };
    // Checked here so that an entry that nodes cannot run is never published.
    toml_config(&config)?;
    let limits = limits
        .or_else(|| before.map(|p| p.limits.clone()))
        .or_else(|| declaration.map(|d| d.limits.clone()))
        .unwrap_or_default();
    limits
        .validate()
        .map_err(|error| anyhow::anyhow!("limits: {error}"))?;
    Ok(PublishedPlugin::new(name, wasm, config, limits))
}

/// A plugin name as the config file accepts it: letters, digits, `-` and `_`.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !plain {
        anyhow::bail!("{name:?} is not a plugin name: use 1 to 64 letters, digits, '-' and '_'");
    }
    Ok(())
}

/// Loads the plugin `declaration` names and gives it a model (its stored snapshot when one
/// fits, else a training over the training window, stored as a snapshot): what a node
/// does with a published plugin, and what proves one before it is published.
pub fn load_with_model(
    engine: &PluginEngine,
    declaration: &PluginDeclaration,
    catalog: &Catalog,
    store: &Store,
    learning: &LearningConfig,
) -> anyhow::Result<PluginRuntime> {
    let plugin = crate::app::load_declared(engine, declaration, catalog)?;
    let training = crate::app::TrainingSet::new(store, learning, catalog);
    crate::app::restore_or_train(&plugin, &training)
        .with_context(|| format!("plugin {:?}: cannot train a model", plugin.name()))?;
    Ok(plugin)
}

/// A published config as the TOML table a declaration holds (TOML has no null).
fn toml_config(config: &serde_json::Map<String, serde_json::Value>) -> anyhow::Result<toml::Table> {
    serde_json::from_value(serde_json::Value::Object(config.clone()))
        .context("the config must be a JSON object without nulls (what [plugins.config] can hold)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(name: &str, k: i64, memory_mb: u64) -> PluginDeclaration {
        PluginDeclaration {
            name: name.into(),
            path: "x.wasm".into(),
            config: toml::toml! { k = k },
            limits: PluginLimits {
                memory_mb,
                ..Default::default()
            },
            auto_rollback: false,
            published_revision: None,
        }
    }

    fn json(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn an_entry_takes_what_is_given_else_what_was_published_else_what_is_declared() {
        let declared = [declared("pop", 1, 100)];
        let fresh = entry("pop", b"w", None, None, None, &declared).unwrap();
        assert_eq!(fresh.config, json(serde_json::json!({ "k": 1 })));
        assert_eq!(fresh.limits.memory_mb, 100);
        let before = PublishedSet {
            revision: 3,
            plugins: vec![PublishedPlugin::new(
                "pop",
                b"old",
                json(serde_json::json!({ "k": 2 })),
                PluginLimits {
                    memory_mb: 200,
                    ..Default::default()
                },
            )],
        };
        let again = entry("pop", b"w", None, None, Some(&before), &declared).unwrap();
        assert_eq!(again.config, json(serde_json::json!({ "k": 2 })));
        assert_eq!(again.limits.memory_mb, 200);
        let given = entry(
            "pop",
            b"w",
            Some(json(serde_json::json!({ "k": 3 }))),
            Some(PluginLimits::default()),
            Some(&before),
            &declared,
        )
        .unwrap();
        assert_eq!(given.config, json(serde_json::json!({ "k": 3 })));
        assert_eq!(given.limits, PluginLimits::default());
        let unknown = entry("new", b"w", None, None, Some(&before), &declared).unwrap();
        assert!(unknown.config.is_empty());
        assert_eq!(unknown.wasm_sha256, fresh.wasm_sha256);
    }

    #[test]
    fn an_entry_nodes_could_not_run_is_refused() {
        let refused = |name: &str, config: serde_json::Value, limits: PluginLimits| {
            entry(name, b"w", Some(json(config)), Some(limits), None, &[])
                .unwrap_err()
                .to_string()
        };
        assert!(
            refused("Pop!", serde_json::json!({}), Default::default())
                .contains("not a plugin name")
        );
        assert!(
            refused("pop", serde_json::json!({ "k": null }), Default::default())
                .contains("without nulls")
        );
        let zero = PluginLimits {
            memory_mb: 0,
            ..Default::default()
        };
        assert!(refused("pop", serde_json::json!({}), zero).contains("memory_mb"));
    }
}

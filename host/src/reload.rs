//! Changes without a restart: plugins added to or replaced in the config file (a new entry,
//! a rebuilt .wasm, a changed `[plugins.config]` or limits), and the experiment files.
//!
//! Both are noticed by file watchers (debounced: editors and `cp` write in several steps) and
//! forced by `POST /admin/reload`. Each reload is all or nothing: a plugin that does not load,
//! or an experiment file that does not validate, leaves everything in force as it was, and
//! the error is kept for the API. Requests never wait for a reload: a new registry or
//! experiment set is built aside and swapped in at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use serde::Serialize;

use crate::app::{App, load_declared, restore_or_train};
use crate::config::Config;
use crate::experiments::live::ReloadFailure;
use crate::plugins::fingerprint;
use crate::store::unix_now_ms;

/// Quiet time after the last change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// What a plugin reload did.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct PluginChanges {
    pub added: Vec<String>,
    pub replaced: Vec<String>,
    pub unchanged: Vec<String>,
    /// Declared no more, but still serving: removing a plugin takes a restart (experiments
    /// and clients may still name it).
    pub removed_but_kept: Vec<String>,
}

/// The outcome of the latest plugin reload attempt.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct PluginReloadStatus {
    pub reloads: u64,
    pub last_changes: Option<PluginChanges>,
    pub error: Option<ReloadFailure>,
}

/// Plugin reloads run one at a time (a reload may train for minutes); their outcome is read
/// by `/plugins` without waiting for one under way, so the two live behind different locks.
#[derive(Default)]
pub struct PluginReloads {
    /// Held for a whole reload, by the blocking thread that runs it (never by a request).
    running: std::sync::Mutex<()>,
    status: arc_swap::ArcSwap<PluginReloadStatus>,
}

impl App {
    /// Re-reads the `[[plugins]]` of the config file. Added and changed plugins are loaded and
    /// given a model (their latest matching snapshot, else a training over the training window)
    /// while the old ones serve; then all of them are swapped in at once. Blocking.
    pub fn reload_plugins(&self) -> anyhow::Result<PluginChanges> {
        let _one_at_a_time = self
            .plugin_reload
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let result = self.reload_plugins_locked();
        let mut status = (*self.plugin_reload.status.load_full()).clone();
        match &result {
            Ok(changes) => {
                status.reloads += 1;
                status.last_changes = Some(changes.clone());
                status.error = None;
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "plugin reload rejected; the plugins in force stay");
                status.error = Some(ReloadFailure {
                    at_ms: unix_now_ms(),
                    message: format!("{error:#}"),
                });
            }
        }
        self.plugin_reload.status.store(Arc::new(status));
        result
    }

    /// The outcome of the latest reload; never waits for one under way.
    pub fn plugin_reload_status(&self) -> PluginReloadStatus {
        (*self.plugin_reload.status.load_full()).clone()
    }

    fn reload_plugins_locked(&self) -> anyhow::Result<PluginChanges> {
        let path = self.config.source.as_ref().context(
            "the server was started without a config file, so there is no plugin list to re-read",
        )?;
        let config = Config::load(path)?;
        let current = self.plugins.current();
        let mut changes = PluginChanges::default();
        let mut fresh = Vec::new();
        for declaration in &config.plugins {
            let wasm = std::fs::read(&declaration.path).with_context(|| {
                format!(
                    "plugin {:?}: cannot read {}",
                    declaration.name,
                    declaration.path.display()
                )
            })?;
            let wanted = fingerprint(
                &wasm,
                &declaration.config_json(),
                self.catalog.fingerprint(),
            );
            match current.get(&declaration.name) {
                Some(plugin)
                    if plugin.fingerprint() == wanted && *plugin.limits() == declaration.limits =>
                {
                    changes.unchanged.push(declaration.name.clone());
                }
                Some(_) => {
                    changes.replaced.push(declaration.name.clone());
                    fresh.push(declaration);
                }
                None => {
                    changes.added.push(declaration.name.clone());
                    fresh.push(declaration);
                }
            }
        }
        changes.removed_but_kept = current
            .names()
            .into_iter()
            .filter(|name| !config.plugins.iter().any(|d| d.name == *name))
            .collect();
        if fresh.is_empty() {
            return Ok(changes);
        }
        let mut registry = (*current).clone();
        for declaration in fresh {
            let plugin = load_declared(&self.engine, declaration, &self.catalog)?;
            let serving = current
                .get(plugin.name())
                .filter(|old| old.fingerprint() == plugin.fingerprint())
                .and_then(|old| old.model());
            match serving {
                // Only its limits changed: the model serving now stays, with what it has
                // learned (a stored snapshot may be older, and the events since may have
                // left the learning buffer).
                Some(model) => plugin.install(model).with_context(|| {
                    format!("plugin {:?}: cannot load its serving model", plugin.name())
                })?,
                None => {
                    restore_or_train(&plugin, &self.store, &self.config.learning).with_context(
                        || format!("plugin {:?}: cannot train a model", plugin.name()),
                    )?;
                }
            }
            // A replaced plugin starts afresh: its predecessor's failed updates are not its.
            self.learning.forget_failures(plugin.name());
            registry.insert_shared(Arc::new(plugin));
        }
        self.plugins.replace(registry);
        tracing::info!(
            added = ?changes.added,
            replaced = ?changes.replaced,
            "plugins reloaded"
        );
        Ok(changes)
    }
}

/// Calls `on_change` after changes to files in the folders `dirs` gives for which `relevant`
/// holds, once they have settled. `dirs` is asked again after each change, so a folder that
/// a reload brought in (a new plugin's) is watched from then on. The watcher lives on its
/// thread for as long as the process.
fn watch_dirs(
    name: &str,
    dirs: impl Fn() -> Vec<PathBuf> + Send + 'static,
    relevant: impl Fn(&Path) -> bool + Send + 'static,
    mut on_change: impl FnMut() + Send + 'static,
) -> anyhow::Result<()> {
    let (changed, changes) = channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Reads change nothing.
            Ok(event) if event.kind.is_access() => {}
            Ok(event) => {
                if event.paths.iter().any(|p| relevant(p)) {
                    let _ = changed.send(());
                }
            }
            Err(error) => tracing::warn!(%error, "file watcher error"),
        }
    })?;
    let mut watched: Vec<PathBuf> = Vec::new();
    let mut watch_new = move |watcher: &mut notify::RecommendedWatcher| -> anyhow::Result<()> {
        for dir in dirs() {
            if !watched.contains(&dir) {
                watcher
                    .watch(&dir, RecursiveMode::NonRecursive)
                    .with_context(|| format!("cannot watch {}", dir.display()))?;
                tracing::info!(dir = %dir.display(), "watching for changes");
                watched.push(dir);
            }
        }
        Ok(())
    };
    watch_new(&mut watcher)?;
    std::thread::Builder::new()
        .name(format!("{name}-watcher"))
        .spawn(move || {
            while changes.recv().is_ok() {
                loop {
                    match changes.recv_timeout(DEBOUNCE) {
                        Ok(()) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                on_change();
                if let Err(error) = watch_new(&mut watcher) {
                    tracing::warn!(error = %format!("{error:#}"), "cannot watch a new folder");
                }
            }
        })?;
    Ok(())
}

/// The folder of `path`, if it exists (`.` for a bare file name).
fn folder_of(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    dir.is_dir().then(|| dir.to_path_buf())
}

/// Starts the watchers: the experiments directory, and the config file with the folders of
/// the plugins' .wasm files.
pub fn watch(app: &Arc<App>) -> anyhow::Result<()> {
    if let Some(dir) = app.experiments.dir() {
        let dir = dir.to_path_buf();
        let experiments = app.experiments.clone();
        watch_dirs(
            "experiments",
            move || vec![dir.clone()],
            |path| path.extension().is_some_and(|e| e == "toml"),
            move || {
                // A rejected set is logged and kept in the reload status by `reload`.
                let _ = experiments.reload();
            },
        )?;
    }
    if let Some(config_file) = app.config.source.clone() {
        let config_name = config_file.file_name().map(ToOwned::to_owned);
        let plugins = app.plugins.clone();
        let dirs = move || {
            let mut dirs: Vec<PathBuf> = std::iter::once(folder_of(&config_file))
                .chain(plugins.current().iter().map(|p| folder_of(p.path())))
                .flatten()
                .collect();
            dirs.sort();
            dirs.dedup();
            dirs
        };
        let app = app.clone();
        watch_dirs(
            "plugin",
            dirs,
            move |path| {
                path.extension().is_some_and(|e| e == "wasm")
                    || path.file_name().map(ToOwned::to_owned) == config_name
            },
            move || {
                // The experiments may name a plugin that just arrived.
                if app.reload_plugins().is_ok_and(|c| !c.added.is_empty()) {
                    let _ = app.experiments.reload();
                }
            },
        )?;
    }
    Ok(())
}

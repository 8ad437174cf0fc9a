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

use crate::app::{App, TrainingSet, load_declared, restore_or_train};
use crate::config::Config;
use crate::experiments::live::ReloadFailure;
use crate::plugin_set::{self, PublishedSet};
use crate::plugins::{PluginRegistry, fingerprint};
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
    /// The published plugin revision in force (cluster mode), if any.
    published: arc_swap::ArcSwapOption<PublishedSet>,
    /// The newest published revision this node has seen in the database.
    newest_seen: std::sync::atomic::AtomicU64,
    /// Whether this node's last look at the database for a new revision succeeded.
    database_answered: std::sync::atomic::AtomicBool,
    /// A published revision that failed to load here, and when: tried again only after
    /// `RETRY_FAILED_REVISION` (a database that was away), or when a newer one comes.
    failed: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
}

/// How long a published plugin revision that failed to load waits before it is tried again.
const RETRY_FAILED_REVISION: Duration = Duration::from_secs(30);

impl PluginReloads {
    /// Reloads that start with `published` in force (what start-up loaded).
    pub fn new(published: Option<PublishedSet>) -> Self {
        Self {
            newest_seen: published.as_ref().map_or(0, |set| set.revision).into(),
            database_answered: true.into(),
            published: arc_swap::ArcSwapOption::from_pointee(published),
            ..Self::default()
        }
    }
}

/// Why a plugin could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// What the operator sent cannot run: nothing was published.
    #[error("{0:#}")]
    Invalid(anyhow::Error),
    /// The node could not do its part (database, config file): nothing was published.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl App {
    /// Re-reads the `[[plugins]]` of the config file. Added and changed plugins are loaded and
    /// given a model (their latest matching snapshot, else a training over the training window)
    /// while the old ones serve; then all of them are swapped in at once. Blocking.
    pub fn reload_plugins(&self) -> anyhow::Result<PluginChanges> {
        self.reloading(|| {
            let path = self.config.source.as_ref().context(
                "the server was started without a config file, so there is no plugin list to re-read",
            )?;
            let declared = Config::load(path)?.plugins;
            let published = self.plugin_reload.published.load_full();
            let declarations = self.over_published(declared, published.as_deref())?;
            let (registry, changes) = self.prepare(&declarations)?;
            if let Some(registry) = registry {
                self.plugins.replace(registry);
            }
            Ok(changes)
        })
    }

    /// The outcome of the latest reload; never waits for one under way.
    pub fn plugin_reload_status(&self) -> PluginReloadStatus {
        (*self.plugin_reload.status.load_full()).clone()
    }

    /// The newest published plugin revision this node has seen, and whether the database
    /// answered its last look (cluster mode; `/health/ready`).
    pub fn published_plugins_seen(&self) -> (u64, bool) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.plugin_reload.newest_seen.load(Relaxed),
            self.plugin_reload.database_answered.load(Relaxed),
        )
    }

    /// The published plugin revision in force (cluster mode), if any.
    pub fn published_plugins(&self) -> Option<Arc<PublishedSet>> {
        self.plugin_reload.published.load_full()
    }

    /// Puts the newest published plugin revision in force if it is newer than the one in
    /// force and did not fail here before (the cluster's nodes poll this). Blocking.
    pub fn follow_published_plugins(&self) -> anyhow::Result<()> {
        let in_force = |app: &Self| app.published_plugins().map_or(0, |set| set.revision);
        let newest = self.store.latest_plugin_revision();
        self.plugin_reload
            .database_answered
            .store(newest.is_ok(), std::sync::atomic::Ordering::Relaxed);
        let newest = newest?;
        self.plugin_reload
            .newest_seen
            .fetch_max(newest, std::sync::atomic::Ordering::Relaxed);
        let failed_recently = self
            .plugin_reload
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|(revision, at)| {
                revision == newest && at.elapsed() < RETRY_FAILED_REVISION
            });
        if newest <= in_force(self) || failed_recently {
            return Ok(());
        }
        self.reloading(|| {
            let Some((revision, plugins)) = self.store.latest_plugins()? else {
                return Ok(PluginChanges::default());
            };
            if revision <= in_force(self) {
                return Ok(PluginChanges::default());
            }
            let set = PublishedSet { revision, plugins };
            let outcome = self
                .over_published(self.declared_now()?, Some(&set))
                .and_then(|declarations| self.prepare(&declarations));
            let (registry, changes) = outcome.inspect_err(|_| {
                *self
                    .plugin_reload
                    .failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) =
                    Some((revision, std::time::Instant::now()));
            })?;
            if let Some(registry) = registry {
                self.plugins.replace(registry);
            }
            self.plugin_reload.published.store(Some(Arc::new(set)));
            tracing::info!(revision, "put a published plugin revision in force");
            Ok(changes)
        })
        .map(|_| ())
        .map_err(|error: anyhow::Error| {
            error.context("a published plugin revision cannot run here")
        })
    }

    /// Publishes `wasm` as plugin `name` to the cluster: proven here first (loaded against
    /// the catalog and given a model, stored as a snapshot that the other nodes restore),
    /// then stored as a new revision and swapped in on this node. Nothing is published when
    /// any step fails. Blocking.
    pub fn publish_plugin(
        &self,
        name: &str,
        wasm: &[u8],
        config: Option<serde_json::Map<String, serde_json::Value>>,
        limits: Option<crate::plugins::PluginLimits>,
    ) -> Result<(u64, PluginChanges), PublishError> {
        let mut revision = 0;
        let changes = self.reloading(|| {
            let failed = PublishError::Failed;
            let declared = self.declared_now().map_err(failed)?;
            let newest = self
                .store
                .latest_plugins()
                .map_err(|e| failed(e.into()))?
                .map(|(revision, plugins)| PublishedSet { revision, plugins });
            let entry = plugin_set::entry(name, wasm, config, limits, newest.as_ref(), &declared)
                .map_err(PublishError::Invalid)?;
            // The new plugin is written where followers will write it, and loaded from there.
            plugin_set::write_wasm(&plugin_set::wasm_dir(&self.config.data_dir), wasm)
                .map_err(failed)?;
            let base = newest.as_ref().map_or(0, |set| set.revision);
            let mut candidate = newest.unwrap_or(PublishedSet {
                revision: 0,
                plugins: Vec::new(),
            });
            candidate.plugins.retain(|p| p.name != entry.name);
            candidate.plugins.push(entry.clone());
            candidate.revision = base + 1;
            let declarations = self
                .over_published(declared, Some(&candidate))
                .map_err(failed)?;
            let (registry, changes) = self.prepare(&declarations).map_err(PublishError::Invalid)?;
            revision = self
                .store
                .publish_plugin(&entry, wasm)
                .map_err(|e| failed(e.into()))?;
            if let Some(registry) = registry {
                self.plugins.replace(registry);
            }
            // Another publication landed between our read and ours: what runs here is not
            // all of that revision, so it is recorded as the older one and the follower puts
            // the new one in force at its next poll.
            if revision != candidate.revision {
                candidate.revision = base;
            }
            self.plugin_reload
                .published
                .store(Some(Arc::new(candidate)));
            tracing::info!(plugin = name, revision, "published a plugin to the cluster");
            Ok(changes)
        })?;
        Ok((revision, changes))
    }

    /// Runs one plugin reload under the reload lock and records its outcome.
    fn reloading<E: std::fmt::Display>(
        &self,
        reload: impl FnOnce() -> Result<PluginChanges, E>,
    ) -> Result<PluginChanges, E> {
        let _one_at_a_time = self
            .plugin_reload
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let result = reload();
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

    /// The plugins the config file declares now (the start-up config's without a file).
    fn declared_now(&self) -> anyhow::Result<Vec<crate::config::PluginDeclaration>> {
        match &self.config.source {
            Some(path) => Ok(Config::load(path)?.plugins),
            None => Ok(self.config.plugins.clone()),
        }
    }

    fn over_published(
        &self,
        declared: Vec<crate::config::PluginDeclaration>,
        published: Option<&PublishedSet>,
    ) -> anyhow::Result<Vec<crate::config::PluginDeclaration>> {
        plugin_set::overlay(
            declared,
            published,
            &self.store,
            &plugin_set::wasm_dir(&self.config.data_dir),
        )
    }

    /// Loads what `declarations` add or change, each given a model, while the plugins in
    /// force serve. Returns the registry to swap in (`None`: nothing changed) and what
    /// changed. Any failure leaves everything as it is.
    fn prepare(
        &self,
        declarations: &[crate::config::PluginDeclaration],
    ) -> anyhow::Result<(Option<PluginRegistry>, PluginChanges)> {
        let current = self.plugins.current();
        let mut changes = PluginChanges::default();
        let mut fresh = Vec::new();
        for declaration in declarations {
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
            .filter(|name| !declarations.iter().any(|d| d.name == *name))
            .collect();
        if fresh.is_empty() {
            return Ok((None, changes));
        }
        let mut registry = (*current).clone();
        let training = TrainingSet::new(&self.store, &self.config.learning, &self.catalog);
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
                    restore_or_train(&plugin, &training).with_context(|| {
                        format!("plugin {:?}: cannot train a model", plugin.name())
                    })?;
                }
            }
            // A replaced plugin starts afresh: its predecessor's failed updates are not its.
            self.learning.forget_failures(plugin.name());
            registry.insert_shared(Arc::new(plugin));
        }
        tracing::info!(
            added = ?changes.added,
            replaced = ?changes.replaced,
            "plugins reloaded"
        );
        Ok((Some(registry), changes))
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

/// How often a cluster node looks for a newly published plugin revision.
const PUBLISHED_PLUGINS_POLL: Duration = Duration::from_millis(250);

/// Whether a change to `path` in the experiments folder matters: an experiment file, or
/// the `..data` link a Kubernetes ConfigMap volume swaps to update its files at once.
fn is_experiment_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
        || path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with(".."))
}

/// Starts the watchers: the experiments directory, and the config file with the folders of
/// the plugins' .wasm files; in a cluster also the thread that follows published plugins.
/// A cluster node publishes its experiments folder when it changes (the cluster's
/// experiments live in the database, so that is how a folder edit reaches them).
pub fn watch(app: &Arc<App>) -> anyhow::Result<()> {
    if let Some(dir) = app.experiments.dir() {
        let dir = dir.to_path_buf();
        let app = app.clone();
        watch_dirs(
            "experiments",
            move || vec![dir.clone()],
            is_experiment_file,
            move || {
                // A rejected set is logged and kept in the reload status.
                if app.node.in_cluster() {
                    match app.experiments.publish_dir(&app.store) {
                        Ok(Some(set)) => tracing::info!(
                            revision = set.revision,
                            "published the experiments folder to the cluster"
                        ),
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(%error, "the experiments folder was not published")
                        }
                    }
                } else {
                    let _ = app.experiments.reload();
                }
            },
        )?;
    }
    if let Some(config_file) = app.config.source.clone() {
        let config_name = config_file.file_name().map(ToOwned::to_owned);
        let plugins = app.plugins.clone();
        // Published .wasm files are written by this node itself, from the database.
        let published = plugin_set::wasm_dir(&app.config.data_dir);
        let dirs = move || {
            let mut dirs: Vec<PathBuf> = std::iter::once(folder_of(&config_file))
                .chain(plugins.current().iter().map(|p| folder_of(p.path())))
                .flatten()
                .filter(|dir| *dir != published)
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
    if app.node.in_cluster() {
        let app = app.clone();
        std::thread::Builder::new()
            .name("published-plugins".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(PUBLISHED_PLUGINS_POLL);
                    // Errors are logged and kept in the reload status; the next revision
                    // (or the database back) is tried at the next poll.
                    if let Err(error) = app.follow_published_plugins() {
                        tracing::debug!(error = %format!("{error:#}"), "published plugins not followed");
                    }
                }
            })?;
    }
    Ok(())
}

//! Start-up: open the store (seeding demo data into an empty one), load the catalog and the
//! plugins, and give every plugin a model, restoring its latest snapshot where it still fits
//! and training otherwise.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use anyhow::Context;

use crate::catalog::{Catalog, Users, to_feedback};
use crate::config::Config;
use crate::plugins::{ModelVersion, PluginEngine, PluginRegistry, PluginRuntime};
use crate::recommend::Recommender;
use crate::store::{EventRow, SnapshotRow, Store, unix_now};

/// Snapshots kept per plugin; older ones are deleted.
const SNAPSHOTS_KEPT: u64 = 5;

/// Everything the API serves from.
pub struct App {
    pub config: Config,
    pub store: Arc<Store>,
    pub catalog: Arc<Catalog>,
    pub users: Arc<RwLock<Users>>,
    pub plugins: Arc<PluginRegistry>,
    pub recommender: Recommender,
}

impl App {
    /// Opens everything; blocking (run it before the async server starts serving).
    pub fn open(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
        let store = Arc::new(
            Store::open(&config.data_dir.join("recohost.db"))
                .context("cannot open the database")?,
        );
        if store.counts()?.items == 0 && config.demo_data {
            let started = Instant::now();
            let batch = crate::import::demo::generate(&crate::import::demo::DemoSize::default());
            store.import(&batch).context("cannot store the demo data")?;
            tracing::info!(
                items = batch.items.len(),
                events = batch.events.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "empty database: generated demo data"
            );
        }
        let catalog = Arc::new(Catalog::new(store.items()?));
        let events = store.events_after(0)?;
        let users = Arc::new(RwLock::new(Users::new(store.users()?, &events)));
        tracing::info!(
            items = catalog.len(),
            events = events.len(),
            "loaded the catalog and event history"
        );

        let engine = PluginEngine::new(Some(config.data_dir.join("compiled")))?;
        let plugins = Arc::new(load_plugins(&config, &engine, &catalog)?);
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let tasks: Vec<_> = plugins
                .iter()
                .map(|plugin| scope.spawn(|| restore_or_train(plugin, &store, &events)))
                .collect();
            for task in tasks {
                task.join()
                    .map_err(|_| anyhow::anyhow!("a training thread panicked"))??;
            }
            Ok(())
        })?;

        let recommender = Recommender::new(
            catalog.clone(),
            users.clone(),
            plugins.clone(),
            config.default_model.clone(),
            config.history_limit,
            config.max_recommendations,
        );
        Ok(Self {
            config,
            store,
            catalog,
            users,
            plugins,
            recommender,
        })
    }
}

fn load_plugins(
    config: &Config,
    engine: &PluginEngine,
    catalog: &Catalog,
) -> anyhow::Result<PluginRegistry> {
    let loaded: Vec<anyhow::Result<PluginRuntime>> = std::thread::scope(|scope| {
        let tasks: Vec<_> = config
            .plugins
            .iter()
            .map(|declaration| {
                scope.spawn(move || {
                    PluginRuntime::load(
                        engine,
                        &declaration.name,
                        &declaration.path,
                        declaration.config_json(),
                        declaration.limits.clone(),
                        catalog.plugin_items(),
                        catalog.fingerprint(),
                    )
                    .map_err(anyhow::Error::from)
                })
            })
            .collect();
        tasks
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("plugin loader panicked")))
            })
            .collect()
    });
    let mut registry = PluginRegistry::default();
    for plugin in loaded {
        registry.insert(plugin?);
    }
    Ok(registry)
}

/// Gives `plugin` a serving model: its latest snapshot when it was made by the same .wasm,
/// config and catalog (brought up to date with the events stored since), else a fresh training.
fn restore_or_train(
    plugin: &PluginRuntime,
    store: &Store,
    events: &[EventRow],
) -> anyhow::Result<()> {
    let started = Instant::now();
    let through_event = events.last().map(|e| e.id).unwrap_or(0);
    let latest = store.latest_snapshot(plugin.name())?;
    let next_version = latest.as_ref().map(|s| s.version + 1).unwrap_or(1);
    if let Some(snapshot) = latest.filter(|s| s.fingerprint == plugin.fingerprint()) {
        match restore(plugin, store, snapshot, events, next_version, through_event) {
            Ok(how) => {
                tracing::info!(
                    plugin = plugin.name(),
                    how,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "model ready"
                );
                return Ok(());
            }
            Err(error) => {
                tracing::warn!(plugin = plugin.name(), error = %format!("{error:#}"), "cannot restore the snapshot; retraining")
            }
        }
    }
    let feedback: Vec<_> = events.iter().map(to_feedback).collect();
    let bytes = plugin.train(&feedback)?;
    save_and_install(plugin, store, next_version, through_event, bytes)?;
    tracing::info!(
        plugin = plugin.name(),
        events = feedback.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "trained model"
    );
    Ok(())
}

/// Installs a stored snapshot, first feeding it the events stored after it (if any).
fn restore(
    plugin: &PluginRuntime,
    store: &Store,
    snapshot: SnapshotRow,
    events: &[EventRow],
    next_version: u64,
    through_event: i64,
) -> anyhow::Result<&'static str> {
    let newer: Vec<_> = events
        .iter()
        .filter(|e| e.id > snapshot.through_event)
        .map(to_feedback)
        .collect();
    if newer.is_empty() {
        let model = ModelVersion {
            version: snapshot.version,
            snapshot: Arc::new(snapshot.bytes),
            created_at: snapshot.created_at,
        };
        plugin.install(model)?;
        return Ok("restored");
    }
    let bytes = plugin.update(&snapshot.bytes, &newer)?;
    save_and_install(plugin, store, next_version, through_event, bytes)?;
    Ok("restored and updated with newer events")
}

fn save_and_install(
    plugin: &PluginRuntime,
    store: &Store,
    version: u64,
    through_event: i64,
    bytes: Vec<u8>,
) -> anyhow::Result<()> {
    let created_at = unix_now();
    let model = ModelVersion {
        version,
        snapshot: Arc::new(bytes),
        created_at,
    };
    plugin.install(model.clone())?;
    let row = SnapshotRow {
        plugin: plugin.name().to_string(),
        version,
        created_at,
        fingerprint: plugin.fingerprint().to_string(),
        through_event,
        bytes: model.snapshot.to_vec(),
    };
    store.save_snapshot(&row, SNAPSHOTS_KEPT)?;
    Ok(())
}

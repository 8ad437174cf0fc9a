//! Start-up: open the store (seeding demo data into an empty one), load the catalog and the
//! plugins, give every plugin a model (its latest snapshot where it still fits, else a fresh
//! training), and put the events no model has learned yet back into the learning buffer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::catalog::{Catalog, Users};
use crate::cluster::Node;
use crate::config::{Config, LearningConfig, PluginDeclaration};
use crate::events::EventWriter;
use crate::experiments::Experiments;
use crate::features::{Features, SharedFeatures};
use crate::histories::HistoriesBuilder;
use crate::learning::job::save_snapshot;
use crate::learning::{Learning, Unlearned};
use crate::plugin_set::PublishedSet;
use crate::plugins::bindings::Feedback;
use crate::plugins::{LivePlugins, ModelVersion, PluginEngine, PluginRegistry, PluginRuntime};
use crate::recommend::Recommender;
use crate::store::{Store, unix_now};

/// Snapshots kept per plugin; older ones are deleted.
pub const SNAPSHOTS_KEPT: u64 = 5;

/// Everything the API serves from.
pub struct App {
    pub config: Config,
    pub store: Arc<Store>,
    /// The database's schema version when it was opened (`/health`).
    pub schema_version: usize,
    /// This node: its id, role, and whether it is its cluster's learner.
    pub node: Arc<Node>,
    pub catalog: Arc<Catalog>,
    pub users: Arc<RwLock<Users>>,
    pub plugins: Arc<LivePlugins>,
    /// Compiles plugins added or replaced while the server runs.
    pub engine: PluginEngine,
    pub recommender: Recommender,
    pub learning: Arc<Learning>,
    pub events: EventWriter,
    pub experiments: Arc<Experiments>,
    /// Model monitoring (`None` when `[monitoring] enabled = false`).
    pub monitor: Option<crate::monitoring::monitor::Monitor>,
    /// Recomputes the bandits' weights each period while this node learns.
    pub bandits: crate::experiments::allocation::BanditRunner,
    /// Plugin reloads, one at a time, and the last outcome (`reload.rs`).
    pub(crate) plugin_reload: crate::reload::PluginReloads,
    /// Request counts and latency by route (`GET /metrics`).
    pub http_metrics: crate::api::http_metrics::HttpMetrics,
    /// In-flight limit, request timeout and shed counters (`[http]`).
    pub overload: crate::api::overload::Overload,
    /// Recent request rates and latency, for the dashboard (`GET /overview`).
    pub timeline: crate::timeline::Timeline,
    /// When the server opened, for its uptime.
    pub started_at: Instant,
    /// Set when a stop was requested: `/health/ready` answers 503 from then on.
    pub draining: std::sync::atomic::AtomicBool,
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
        let database = config.database();
        let store = Arc::new(
            Store::connect(&database)
                .with_context(|| format!("cannot open the database ({})", database.describe()))?,
        );
        let schema_version = store.schema_version()?;
        tracing::info!(database = %database.describe(), schema_version, "opened the database");
        if store.counts()?.items == 0 && config.demo_data {
            let started = Instant::now();
            let batch = crate::import::demo::generate(&crate::import::demo::DemoSize::default());
            // `seed`: another node starting on the same empty database may get there first;
            // while it writes, this one waits (busy), then finds the data there.
            let seeded = loop {
                match store.seed(&batch) {
                    Err(error)
                        if error.is_busy() && started.elapsed() < Duration::from_secs(300) =>
                    {
                        tracing::info!("another node is storing the demo data; waiting");
                    }
                    other => break other.context("cannot store the demo data")?,
                }
            };
            if seeded.is_some() {
                tracing::info!(
                    items = batch.items.len(),
                    events = batch.events.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "empty database: generated demo data"
                );
            }
        }
        let catalog = Arc::new(Catalog::new(store.items()?));

        let engine = PluginEngine::new(Some(config.data_dir.join("compiled")))?
            .serving_inline(Duration::from_millis(config.http.request_timeout_ms));
        // A cluster runs the plugins published to it over those its config file declares.
        let published = match database {
            crate::store::Database::Postgres(_) => store
                .latest_plugins()?
                .map(|(revision, plugins)| PublishedSet { revision, plugins }),
            crate::store::Database::Sqlite(_) => None,
        };
        let declarations = crate::plugin_set::overlay(
            config.plugins.clone(),
            published.as_ref(),
            &store,
            &crate::plugin_set::wasm_dir(&config.data_dir),
        )
        .context("cannot fetch the plugins published to the cluster")?;
        let registry = load_plugins(&declarations, &engine, &catalog)?;
        restore_or_train_all(
            &registry,
            &TrainingSet::new(&store, &config.learning, &catalog),
        )?;

        // Every event some model has not learned goes back into the learning buffer.
        let learned_through = registry
            .iter()
            .map(|p| p.model().map(|m| m.through_event).unwrap_or(0))
            .min()
            .unwrap_or(0);
        let clustered = matches!(database, crate::store::Database::Postgres(_));
        // The log as far as this id: the users are read after it, so each of those events
        // has its user among them (a user is stored with, or before, their first event).
        // Events other writers store meanwhile are caught up after start, as any later one.
        let through = store.last_event_id()?;
        let mut users = Users::without_histories(store.users()?);
        // A cluster node keeps no user histories: they are in the shared feature store.
        let mut histories = (!clustered).then(|| HistoriesBuilder::new(users.len()));
        let mut monitor_history = config.monitoring.enabled.then(|| {
            crate::monitoring::monitor::EventHistory::new(&config.monitoring, catalog.len())
        });
        // One pass over the stored events feeds the users' histories, the monitor and the
        // learning buffer, event by event: the events are not held (at MovieLens 25M's size
        // 800 MB as rows). It runs after the trainings, whose copy of the window and the
        // sandboxes holding it would otherwise come on top of the histories.
        let reading = Instant::now();
        let mut unlearned = Unlearned::new(&config.learning);
        let mut stored_events = 0u64;
        store.scan_events_after(0, &mut |event| {
            if event.id > through {
                return;
            }
            stored_events += 1;
            users.record(event);
            if let Some(histories) = &mut histories {
                histories.push(event);
            }
            if let Some(history) = &mut monitor_history {
                history.add(event);
            }
            if event.id > learned_through {
                unlearned.push(event);
            }
        })?;
        if let Some(histories) = histories {
            users.keep_histories(histories.build());
        }
        let users = Arc::new(RwLock::new(users));
        let store_id = store.store_id()?;
        let features = Arc::new(if clustered {
            Features::Shared(Arc::new(SharedFeatures::new(
                &config.cache,
                &store_id,
                users.clone(),
                // A pool of its own: reads on the request path never queue behind learning.
                Arc::new(Store::connect(&database)?),
                u32::try_from(catalog.len()).unwrap_or(u32::MAX),
                config.history_limit,
            )?))
        } else {
            Features::Local {
                users: users.clone(),
                history_limit: config.history_limit,
            }
        });
        tracing::info!(
            items = catalog.len(),
            events = stored_events,
            elapsed_ms = reading.elapsed().as_millis() as u64,
            "loaded the catalog and event history"
        );
        if !unlearned.is_empty() {
            tracing::info!(
                events = unlearned.len(),
                "events not yet learned by every model are back in the learning buffer"
            );
        }
        let plugins = Arc::new(LivePlugins::new(registry));
        let node_id = config
            .cluster
            .node_id
            .clone()
            .unwrap_or_else(crate::cluster::default_node_id);
        let node = Arc::new(match database {
            crate::store::Database::Postgres(_) => Node::clustered(node_id, config.cluster.role),
            crate::store::Database::Sqlite(_) => Node::single(node_id),
        });
        let mut learning = Learning::new(
            config.learning.clone(),
            store.clone(),
            plugins.clone(),
            u32::try_from(catalog.len()).unwrap_or(u32::MAX),
            unlearned,
            stored_events,
        )?;
        if let crate::store::Database::Postgres(_) = database {
            learning = learning.in_cluster(node.learner.clone());
        }
        let auto_rollback: std::collections::HashSet<String> = config
            .plugins
            .iter()
            .filter(|p| p.auto_rollback)
            .map(|p| p.name.clone())
            .collect();
        learning = learning.with_auto_rollback(auto_rollback.clone());
        let learning = Arc::new(learning);

        let monitoring = &config.monitoring;
        let monitor = if let Some(history) = monitor_history {
            let webhooks = Arc::new(
                crate::monitoring::webhooks::Webhooks::start(monitoring.webhooks.clone())
                    .context("cannot start the webhook thread")?,
            );
            let parts = crate::monitoring::monitor::MonitorParts {
                config: monitoring.clone(),
                // A connection of its own: the monitor reads every new list and event.
                store: Store::connect(&database)?,
                users: users.clone(),
                learning: learning.clone(),
                catalog_items: catalog.len(),
                auto_rollback,
                node_id: node.id.clone(),
                webhooks,
            };
            Some(
                crate::monitoring::monitor::start(parts, history)
                    .context("cannot start model monitoring")?,
            )
        } else {
            None
        };
        let served = monitoring
            .enabled
            .then(|| {
                crate::monitoring::served::ServedLog::start(
                    &database,
                    monitoring.top_k,
                    monitoring.sample_rate,
                )
            })
            .transpose()?;

        let events = EventWriter::start(
            &database,
            users.clone(),
            features.clone(),
            learning.clone(),
            catalog.len(),
            config.events.max_batch,
        )?;

        if let Some(dir) = &config.experiments_dir
            && !dir.is_dir()
        {
            anyhow::bail!("the experiments directory {} does not exist", dir.display());
        }
        let experiments = Arc::new(
            Experiments::open(
                config.experiments_dir.clone(),
                {
                    let plugins = plugins.clone();
                    Box::new(move || plugins.names())
                },
                store.clone(),
                &database,
            )
            .context("cannot load the experiments")?,
        );
        let running = experiments.current().experiments.len();
        tracing::info!(experiments = running, "loaded the experiments");
        if let crate::store::Database::Postgres(_) = database {
            // The cluster's published experiments, if any, before the first request.
            crate::cluster::follow_experiments(&store, &experiments);
        }
        node.start(
            // A connection of its own: a lease claim never waits behind the event writer.
            Arc::new(Store::connect(&database)?),
            learning.clone(),
            plugins.clone(),
            experiments.clone(),
            std::time::Duration::from_secs(config.cluster.lease_secs),
        )
        .context("cannot start the cluster thread")?;
        let bandits = crate::experiments::allocation::BanditRunner::start(
            // A connection of its own: counting a bandit's trials reads all its exposures.
            Store::connect(&database)?,
            experiments.clone(),
            node.learner.clone(),
            node.id.clone(),
        )
        .context("cannot start the bandit thread")?;

        let recommender = Recommender {
            catalog: catalog.clone(),
            users: users.clone(),
            features: features.clone(),
            plugins: plugins.clone(),
            experiments: experiments.clone(),
            cache: crate::cache::from_config(&config.cache, node.in_cluster())?,
            store_id,
            default_model: config.default_model.clone(),
            fallback_model: config.fallback_model.clone(),
            max_recommendations: config.max_recommendations,
            served,
        };
        let overload = crate::api::overload::Overload::new(&config.http);
        Ok(Self {
            config,
            store,
            schema_version,
            node,
            catalog,
            users,
            plugins,
            engine,
            recommender,
            learning,
            events,
            experiments,
            monitor,
            bandits,
            plugin_reload: crate::reload::PluginReloads::new(published),
            http_metrics: Default::default(),
            overload,
            timeline: Default::default(),
            started_at: Instant::now(),
            draining: false.into(),
        })
    }
}

/// Loads one `[[plugins]]` entry for `catalog` (compiles, checks the contract, configures).
pub fn load_declared(
    engine: &PluginEngine,
    declaration: &PluginDeclaration,
    catalog: &Catalog,
) -> anyhow::Result<PluginRuntime> {
    Ok(PluginRuntime::load(
        engine,
        &declaration.name,
        &declaration.path,
        declaration.config_json(),
        declaration.limits.clone(),
        catalog.plugin_items(),
        catalog.fingerprint(),
    )?
    .published_in(declaration.published_revision))
}

fn load_plugins(
    declarations: &[PluginDeclaration],
    engine: &PluginEngine,
    catalog: &Catalog,
) -> anyhow::Result<PluginRegistry> {
    let loaded: Vec<anyhow::Result<PluginRuntime>> = std::thread::scope(|scope| {
        let tasks: Vec<_> = declarations
            .iter()
            .map(|declaration| scope.spawn(move || load_declared(engine, declaration, catalog)))
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

/// A training window's events and the id of its newest.
type Window = (Vec<Feedback>, i64);

/// The training window of a start-up or a reload, read from the store at most once for all
/// the plugins that need it, and only if one does: at MovieLens 25M's size it is 600 MB.
pub(crate) struct TrainingSet<'a> {
    store: &'a Store,
    config: &'a LearningConfig,
    items: u32,
    window: Mutex<Option<Arc<Window>>>,
}

impl<'a> TrainingSet<'a> {
    pub fn new(store: &'a Store, config: &'a LearningConfig, catalog: &Catalog) -> Self {
        Self {
            store,
            config,
            items: u32::try_from(catalog.len()).unwrap_or(u32::MAX),
            window: Mutex::new(None),
        }
    }

    /// The window's events and the id of its newest. Callers wait while one reads it.
    fn window(&self) -> anyhow::Result<Arc<Window>> {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(window) = &*window {
            return Ok(window.clone());
        }
        let read = Arc::new(crate::learning::training_window(
            self.store,
            self.config,
            self.items,
        )?);
        *window = Some(read.clone());
        Ok(read)
    }
}

/// [`restore_or_train`] for every plugin of `registry`, as many at a time as there are CPU
/// cores: training is CPU-bound, so more at once would not finish sooner, and each training
/// instance holds its own copy of the window in its sandbox.
fn restore_or_train_all(registry: &PluginRegistry, training: &TrainingSet) -> anyhow::Result<()> {
    let plugins: Vec<&Arc<PluginRuntime>> = registry.iter().collect();
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .clamp(1, plugins.len().max(1));
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    while let Some(plugin) = plugins.get(next.fetch_add(1, Ordering::Relaxed)) {
                        restore_or_train(plugin, training)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.join()
                .map_err(|_| anyhow::anyhow!("a training thread panicked"))??;
        }
        Ok(())
    })
}

/// Gives `plugin` a serving model: its latest snapshot when it was made by the same .wasm,
/// config and catalog, else a fresh training over the training window. Events after the
/// snapshot are not learned here: they go into the learning buffer, so that start-up does not
/// wait for a backlog.
pub(crate) fn restore_or_train(
    plugin: &PluginRuntime,
    training: &TrainingSet,
) -> anyhow::Result<()> {
    let store = training.store;
    let started = Instant::now();
    let latest = store.latest_snapshot(plugin.name())?;
    if let Some(snapshot) = latest.filter(|s| s.fingerprint == plugin.fingerprint()) {
        let model = ModelVersion {
            version: snapshot.version,
            snapshot: Arc::new(snapshot.bytes),
            created_at: snapshot.created_at,
            through_event: snapshot.through_event,
        };
        match plugin.install(model) {
            Ok(()) => {
                tracing::info!(
                    plugin = plugin.name(),
                    version = snapshot.version,
                    through_event = snapshot.through_event,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "restored the latest snapshot"
                );
                return Ok(());
            }
            Err(error) => {
                tracing::warn!(plugin = plugin.name(), %error, "cannot restore the snapshot; retraining")
            }
        }
    }
    let window = training.window()?;
    let (feedback, through_event) = (&window.0, window.1);
    let bytes = plugin.train(feedback)?;
    let next_version = store.allocate_model_versions(&[plugin.name()], through_event, None)?[0];
    plugin.install(ModelVersion {
        version: next_version,
        snapshot: Arc::new(bytes),
        created_at: unix_now(),
        through_event,
    })?;
    save_snapshot(store, plugin)?;
    tracing::info!(
        plugin = plugin.name(),
        events = feedback.len(),
        version = next_version,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "trained model"
    );
    Ok(())
}

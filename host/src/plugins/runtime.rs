//! One loaded plugin: its compiled component, its current model version, and a pool of
//! serving instances that hold that model.
//!
//! Models move between instances only as snapshots (`save` / `load`). Training runs in a
//! fresh *learner* instance; its snapshot becomes a new model version that serving instances
//! load. A serving instance is checked out by one request at a time, so no lock is held while
//! WebAssembly runs, and both cores serve in parallel. An instance that traps is dropped and the
//! next request builds a new one from the current snapshot.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::histogram::LatencyHistogram;
use thiserror::Error;

use super::bindings::{Feedback, InstanceState, Item, PluginInfo, Request, Scored, StrategyPre};
use super::contract::{self, ContractError};
use super::engine::{CodeSource, PluginEngine, hex};
use super::health::{Admission, Health, HealthReport};
use super::instance::{CallError, PluginInstance, export_names};
use super::limits::PluginLimits;
use super::placement::{CallPlacement, Inline};

#[derive(Debug, Error)]
pub enum PluginLoadError {
    #[error("plugin `{plugin}`: cannot read {path}: {source}")]
    Read {
        plugin: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin `{plugin}` ({path}): {reason}")]
    Invalid {
        plugin: String,
        path: PathBuf,
        reason: String,
    },
    #[error("plugin `{plugin}` ({path}): {source}")]
    Contract {
        plugin: String,
        path: PathBuf,
        source: ContractError,
    },
    #[error("plugin `{plugin}` rejected its configuration: {source}")]
    Config { plugin: String, source: CallError },
}

/// A model version ready to serve.
#[derive(Clone, Debug)]
pub struct ModelVersion {
    pub version: u64,
    pub snapshot: Arc<Vec<u8>>,
    /// Unix seconds.
    pub created_at: u64,
    /// Id of the newest stored event this model has learned (0: none).
    pub through_event: i64,
}

/// Counters for `/plugins` and `/metrics`.
#[derive(Default)]
struct CallStats {
    calls: AtomicU64,
    /// Calls that count against its health: traps, limits, answers out of bounds.
    failures: AtomicU64,
    traps: AtomicU64,
    /// Calls it answered with an error (not counted as failures).
    refusals: AtomicU64,
    /// Requests not sent to the plugin because it was unhealthy.
    skipped: AtomicU64,
    /// Requests it failed that the fallback plugin answered.
    fallbacks: AtomicU64,
    /// Time of each `recommend` call, from checkout to answer.
    recommend_latency: LatencyHistogram,
    /// Moving average of successful `recommend` calls, in microseconds (probe budgets).
    ok_latency_us: AtomicU64,
}

/// How the plugin is doing, for `/plugins`.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PluginStatus {
    pub name: String,
    pub version: String,
    pub description: String,
    pub wit_version: String,
    pub path: String,
    /// The published plugin revision it came in (cluster mode), if it was published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_revision: Option<u64>,
    /// Whether its machine code was compiled at load or came from the compiled-code cache.
    pub code: CodeSource,
    pub model_version: Option<u64>,
    pub model_created_at: Option<u64>,
    /// `ready`, `unhealthy` (skipped until its backoff ends) or `not_trained`.
    pub status: &'static str,
    pub calls: u64,
    /// Calls that failed: traps, time or memory limits, answers out of bounds. These count
    /// toward `failures_before_unhealthy`.
    pub failures: u64,
    /// Calls that ended the instance: traps, and answers the host would not copy out.
    pub traps: u64,
    /// Calls the plugin answered with an error (a refusal): not failures.
    pub refusals: u64,
    /// Requests not sent to it while unhealthy.
    pub skipped: u64,
    /// Requests it failed that the fallback plugin answered.
    pub fallbacks: u64,
    /// Mean `recommend` latency in microseconds.
    pub mean_recommend_us: u64,
    /// `recommend` latency percentiles since start in microseconds, estimated from the
    /// histogram buckets of `/metrics`; `null` before the first call.
    pub p50_recommend_us: Option<u64>,
    pub p99_recommend_us: Option<u64>,
    pub health: HealthReport,
    pub limits: PluginLimits,
    pub memory: PluginMemory,
    /// This node's last full training of the plugin (at start-up or a retrain), if any since
    /// it was loaded: `null` when its model came from a snapshot.
    pub last_training: Option<TrainingCost>,
    /// Whether its calls may run on the server's async workers now (short calls, a budget
    /// under the request timeout), rather than on the blocking pool (for 10 s after slow or
    /// failed calls; for good once it waited inside WASI). See docs/architecture.md.
    pub serving_inline: bool,
}

/// The memory the plugin's instances hold on this node (linear memories and tables; they
/// only grow), for sizing a node: the sum over plugins, plus the host's own, is what the
/// plugins cost. Instances busy with a request at the moment of asking are not counted.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PluginMemory {
    /// Serving instances idle in the pool at the moment (the pool holds up to the
    /// `serving_instances` limit), and their bytes.
    pub pool_instances: usize,
    pub pool_bytes: u64,
    /// The instance kept between updates (the learning node only; 0 elsewhere).
    pub learner_bytes: u64,
    /// Instances of a replaced model version kept for reuse by the next install.
    pub spare_instances: usize,
    pub spare_bytes: u64,
    /// The largest single instance: what each further pooled instance will cost.
    pub largest_instance_bytes: u64,
    pub total_bytes: u64,
}

/// What this node's last full training of a plugin cost, inside the sandbox.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TrainingCost {
    /// Events it was given.
    pub events: u64,
    /// From instantiating the learner to the end of `train` (not `save`), in milliseconds.
    pub train_ms: f64,
    /// The most memory the learner instance held, the events it was given included.
    pub peak_memory_bytes: u64,
    /// The size of the snapshot it saved.
    pub snapshot_bytes: u64,
}

pub struct PluginRuntime {
    name: Arc<str>,
    path: PathBuf,
    /// The published plugin revision it came in (`plugin_set.rs`), if it was published.
    published_revision: Option<u64>,
    info: PluginInfo,
    wit_version: String,
    code: CodeSource,
    fingerprint: String,
    engine: PluginEngine,
    pre: StrategyPre<InstanceState>,
    limits: Arc<PluginLimits>,
    config_json: String,
    catalog: Arc<Vec<Item>>,
    model: RwLock<Option<ModelVersion>>,
    idle: Mutex<Vec<PluginInstance>>,
    /// The instance that applies updates, kept between them so that an update does not pay
    /// for instantiating, configuring and loading the model again. Its `model_version` is
    /// the version its state will be installed as.
    learner: Mutex<Option<PluginInstance>>,
    /// Serving instances of replaced versions, reused by the next `install`: loading a model
    /// into an instance whose memory is already grown and paged in costs a fraction of
    /// building a new one (page faults dominated that).
    spare: Mutex<Vec<PluginInstance>>,
    /// The kept learner's memory, recorded when it is put back: reading it under `learner`
    /// would wait for a whole update.
    learner_bytes: AtomicU64,
    max_idle: usize,
    /// One permit per pooled serving instance: requests beyond that wait for an instance
    /// instead of building one (configure + load, milliseconds) under load.
    serving: Arc<tokio::sync::Semaphore>,
    stats: CallStats,
    health: Health,
    placement: CallPlacement,
    last_training: Mutex<Option<TrainingCost>>,
}

impl PluginRuntime {
    /// Reads, compiles (or loads from the cache) and checks a plugin, then configures one
    /// instance to prove that the plugin accepts its config and the catalog.
    pub fn load(
        engine: &PluginEngine,
        name: &str,
        path: &Path,
        config_json: String,
        limits: PluginLimits,
        catalog: Arc<Vec<Item>>,
        catalog_fingerprint: &str,
    ) -> Result<Self, PluginLoadError> {
        let invalid = |reason: String| PluginLoadError::Invalid {
            plugin: name.into(),
            path: path.into(),
            reason,
        };
        let wasm = std::fs::read(path).map_err(|source| PluginLoadError::Read {
            plugin: name.into(),
            path: path.into(),
            source,
        })?;
        let (component, code) = engine
            .compile(&wasm, path)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let wit_version = contract::check(&export_names(engine, &component)).map_err(|source| {
            PluginLoadError::Contract {
                plugin: name.into(),
                path: path.into(),
                source,
            }
        })?;
        let mut linker = wasmtime::component::Linker::<InstanceState>::new(engine.engine());
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .and_then(|()| super::bounded_io::link(&mut linker, InstanceState::bounded_io))
            .map_err(|e| invalid(format!("{e:#}")))?;
        super::bindings::Strategy::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |state| state,
        )
        .and_then(|()| super::bindings::link_host_log(&mut linker))
        .map_err(|e| invalid(format!("{e:#}")))?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|e| {
            invalid(format!(
                "it imports something the sandbox does not provide: {e:#}"
            ))
        })?;
        let pre = StrategyPre::new(instance_pre).map_err(|e| invalid(format!("{e:#}")))?;
        let health = Health::new(&limits);
        let limits = Arc::new(limits);
        let plugin: Arc<str> = Arc::from(name);
        let mut probe =
            PluginInstance::new(engine, &pre, plugin.clone(), limits.clone(), limits.train())
                .map_err(|e| invalid(format!("{e:#}")))?;
        let info = probe.describe().map_err(|e| invalid(e.to_string()))?;
        probe
            .configure(&config_json, &catalog)
            .map_err(|source| PluginLoadError::Config {
                plugin: name.into(),
                source,
            })?;

        let fingerprint = fingerprint(&wasm, &config_json, catalog_fingerprint);
        let max_idle = match limits.serving_instances {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        };
        Ok(Self {
            name: plugin,
            path: path.into(),
            published_revision: None,
            info,
            wit_version,
            code,
            fingerprint,
            engine: engine.clone(),
            pre,
            limits,
            config_json,
            catalog,
            model: RwLock::new(None),
            idle: Mutex::new(Vec::new()),
            learner: Mutex::new(None),
            spare: Mutex::new(Vec::new()),
            learner_bytes: AtomicU64::new(0),
            max_idle,
            serving: Arc::new(tokio::sync::Semaphore::new(max_idle)),
            stats: CallStats::default(),
            health,
            placement: CallPlacement::new(engine.clock().clone()),
            last_training: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hash of the .wasm, its config and the catalog: a snapshot is reusable only if it matches.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The .wasm file it was loaded from.
    /// Marks it as published to the cluster in `revision`.
    pub fn published_in(mut self, revision: Option<u64>) -> Self {
        self.published_revision = revision;
        self
    }

    /// The published plugin revision it came in, if it was published.
    pub fn published_revision(&self) -> Option<u64> {
        self.published_revision
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// The model version now serving, if any.
    pub fn model(&self) -> Option<ModelVersion> {
        self.model.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The version number of the model now serving, if any (cheaper than [`Self::model`]).
    pub fn model_version(&self) -> Option<u64> {
        self.model
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|m| m.version)
    }

    pub fn status(&self) -> PluginStatus {
        let model = self.model();
        let health = self.health.report();
        let latency = self.stats.recommend_latency.snapshot();
        PluginStatus {
            name: self.name.to_string(),
            version: self.info.version.clone(),
            description: self.info.description.clone(),
            wit_version: self.wit_version.clone(),
            path: self.path.display().to_string(),
            published_revision: self.published_revision,
            code: self.code,
            model_version: model.as_ref().map(|m| m.version),
            model_created_at: model.as_ref().map(|m| m.created_at),
            status: match (&model, health.healthy) {
                (None, _) => "not_trained",
                (Some(_), true) => "ready",
                (Some(_), false) => "unhealthy",
            },
            calls: self.stats.calls.load(Ordering::Relaxed),
            failures: self.stats.failures.load(Ordering::Relaxed),
            traps: self.stats.traps.load(Ordering::Relaxed),
            refusals: self.stats.refusals.load(Ordering::Relaxed),
            skipped: self.stats.skipped.load(Ordering::Relaxed),
            fallbacks: self.stats.fallbacks.load(Ordering::Relaxed),
            mean_recommend_us: self.stats.recommend_latency.mean().as_micros() as u64,
            p50_recommend_us: latency.quantile(0.5).map(|d| d.as_micros() as u64),
            p99_recommend_us: latency.quantile(0.99).map(|d| d.as_micros() as u64),
            health,
            limits: (*self.limits).clone(),
            memory: self.memory(),
            last_training: self
                .last_training
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            serving_inline: self.placement.inline()
                && self.engine.inline_slots().allows(self.limits.recommend()),
        }
    }

    fn memory(&self) -> PluginMemory {
        // Held only to push or pop an instance, so these locks are brief.
        let sizes = |instances: &Mutex<Vec<PluginInstance>>| -> Vec<u64> {
            let instances = instances.lock().unwrap_or_else(|p| p.into_inner());
            instances
                .iter()
                .map(|i| i.peak_memory_bytes() as u64)
                .collect()
        };
        let (pool, spare) = (sizes(&self.idle), sizes(&self.spare));
        let learner_bytes = self.learner_bytes.load(Ordering::Relaxed);
        let (pool_bytes, spare_bytes) = (pool.iter().sum::<u64>(), spare.iter().sum::<u64>());
        PluginMemory {
            pool_instances: pool.len(),
            pool_bytes,
            learner_bytes,
            spare_instances: spare.len(),
            spare_bytes,
            largest_instance_bytes: pool
                .iter()
                .chain(&spare)
                .copied()
                .chain([learner_bytes])
                .max()
                .unwrap_or(0),
            total_bytes: pool_bytes + spare_bytes + learner_bytes,
        }
    }

    /// Counts a request this plugin failed that the fallback plugin answered.
    pub fn count_fallback(&self) {
        self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// The `recommend` latency histogram, for `/metrics`.
    pub fn recommend_latency(&self) -> &LatencyHistogram {
        &self.stats.recommend_latency
    }

    /// A configured instance with no model.
    pub(super) fn configured_instance(&self) -> Result<PluginInstance, CallError> {
        self.configured_instance_within(self.limits.train())
    }

    /// [`Self::configured_instance`], instantiated and configured within `budget` each.
    fn configured_instance_within(&self, budget: Duration) -> Result<PluginInstance, CallError> {
        let mut instance = PluginInstance::new(
            &self.engine,
            &self.pre,
            self.name.clone(),
            self.limits.clone(),
            budget,
        )
        .map_err(|e| CallError::Trapped {
            plugin: self.name.to_string(),
            call: "instantiate",
            reason: format!("{e:#}"),
        })?;
        instance.configure_within(&self.config_json, &self.catalog, budget)?;
        Ok(instance)
    }

    /// The budget of each step (instantiate, `configure`, `load`) of rebuilding a serving
    /// instance on a request's path (after a trap discarded one): 8 x `recommend_ms`, at
    /// least 2 s, at most `train_ms`. The learner's and `install`'s use `train_ms`; a plugin
    /// that hangs in `load` must not hold a serving thread that long.
    fn rebuild_budget(&self) -> Duration {
        self.limits
            .recommend()
            .saturating_mul(8)
            .max(Duration::from_secs(2))
            .min(self.limits.train())
    }

    /// Items of the catalog it was configured with.
    pub fn catalog_len(&self) -> usize {
        self.catalog.len()
    }

    /// What the plugin says about itself (`describe`).
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Whether the plugin says its `predict` returns rating estimates.
    pub fn predicts_ratings(&self) -> bool {
        self.info.predicts_ratings
    }

    /// A private instance trained on `events`, for replaying a stream against one model
    /// (prequential evaluation): no pool, no snapshots, every call on the same instance.
    pub fn session(&self, events: &[Feedback]) -> Result<Session, CallError> {
        let mut instance = self.configured_instance()?;
        instance.train(events)?;
        Ok(Session { instance })
    }

    /// A private instance with the model of `snapshot` loaded (see [`Self::session`]).
    pub fn session_from_snapshot(&self, snapshot: &[u8]) -> Result<Session, CallError> {
        let mut instance = self.configured_instance()?;
        instance.load(snapshot)?;
        Ok(Session { instance })
    }

    /// Trains a new model on `events` in a learner instance and returns its snapshot. What it
    /// cost is kept for `/plugins` ([`TrainingCost`]).
    pub fn train(&self, events: &[Feedback]) -> Result<Vec<u8>, CallError> {
        let started = Instant::now();
        let mut learner = self.configured_instance()?;
        learner.train(events)?;
        let train_ms = started.elapsed().as_secs_f64() * 1e3;
        let snapshot = learner.save()?;
        *self
            .last_training
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(TrainingCost {
            events: events.len() as u64,
            train_ms,
            peak_memory_bytes: learner.peak_memory_bytes() as u64,
            snapshot_bytes: snapshot.len() as u64,
        });
        Ok(snapshot)
    }

    /// Loads `snapshot` into a learner instance, applies `events`, and returns the new snapshot.
    pub fn update(&self, snapshot: &[u8], events: &[Feedback]) -> Result<Vec<u8>, CallError> {
        let mut learner = self.configured_instance()?;
        learner.load(snapshot)?;
        learner.update(events)?;
        learner.save()
    }

    /// Applies `events` to the model now serving and returns the snapshot to install as
    /// `next_version`. Serving is not touched. Uses the kept learner when it holds the serving
    /// model, else builds one from the serving snapshot. A learner whose call fails is
    /// dropped: a refused update may have changed part of its state.
    pub fn learn(&self, events: &[Feedback], next_version: u64) -> Result<Vec<u8>, CallError> {
        let model = self.model().ok_or_else(|| CallError::Refused {
            plugin: self.name.to_string(),
            call: "update",
            error: super::bindings::StrategyError::NotReady("no model to update yet".into()),
        })?;
        let mut kept = self.learner.lock().unwrap_or_else(|p| p.into_inner());
        // Until it is put back: a failed call drops it.
        self.learner_bytes.store(0, Ordering::Relaxed);
        let mut learner = match kept.take() {
            Some(learner) if learner.model_version == model.version => learner,
            _ => {
                let mut learner = self.configured_instance()?;
                learner.load(&model.snapshot)?;
                learner
            }
        };
        learner.update(events)?;
        let snapshot = learner.save()?;
        learner.model_version = next_version;
        self.learner_bytes
            .store(learner.peak_memory_bytes() as u64, Ordering::Relaxed);
        *kept = Some(learner);
        Ok(snapshot)
    }

    /// Proves that `model` loads, builds a full pool of serving instances from it, then makes
    /// it the serving version in one step: no request waits for an instance to be built, and
    /// requests under way finish on the version they had (their instances are dropped at
    /// check-in).
    pub fn install(&self, model: ModelVersion) -> Result<(), CallError> {
        let mut pool = Vec::with_capacity(self.max_idle);
        for _ in 0..self.max_idle {
            let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut instance = match spare {
                Some(instance) => instance,
                None => self.configured_instance()?,
            };
            // An instance whose `load` fails is dropped here: its state is unknown.
            instance.load(&model.snapshot)?;
            instance.model_version = model.version;
            pool.push(instance);
        }
        let replaced = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            *self.model.write().unwrap_or_else(|p| p.into_inner()) = Some(model);
            std::mem::replace(&mut *idle, pool)
        };
        self.keep_spares(replaced);
        Ok(())
    }

    /// [`Self::recommend`] from async code: unless the plugin is unhealthy (then it fails at
    /// once), waits for a free serving instance and calls it, on this worker while its calls
    /// are short and on a blocking thread otherwise ([`super::placement`]).
    pub async fn recommend_async(
        self: &Arc<Self>,
        request: Request,
    ) -> Result<(Vec<Scored>, u64), RecommendCallError> {
        let probe = match self.health.admit() {
            Admission::Call => false,
            Admission::Probe => true,
            Admission::Skip { retry_in } => {
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                return Err(RecommendCallError::Unhealthy {
                    plugin: self.name.to_string(),
                    retry_in_ms: retry_in.as_millis() as u64,
                    last_error: self.health.report().last_error.unwrap_or_default(),
                });
            }
        };
        let permit = self
            .serving
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RecommendCallError::NotTrained(self.name.to_string()))?;
        if !probe
            && self.placement.inline()
            && self.engine.inline_slots().allows(self.limits.recommend())
            && let Some(_slot) = self.engine.inline_slots().take()
            && let Some((model, instance)) = self.idle_instance()
        {
            let outcome = self.placement.run_inline(|| {
                let result = self.recommend_on(model, instance, &request, false);
                let failed = matches!(&result, Err(RecommendCallError::Call(e)) if e.is_failure());
                (result, failed)
            });
            match outcome {
                Inline::Done(result) => return result,
                Inline::Waited => {
                    // The inline attempt counted a call that the pool now makes.
                    self.stats.calls.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(
                    plugin = %self.name,
                    "the plugin waited inside WASI on an async worker (tokio's panic above says so); that request is served again on the blocking pool, and its calls run there from now on"
                    );
                }
            }
        }
        let plugin = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            plugin.call_recommend(&request, probe)
        })
        .await
        .unwrap_or_else(|error| {
            Err(RecommendCallError::Call(CallError::Trapped {
                plugin: self.name.to_string(),
                call: "recommend",
                reason: format!("the calling thread failed: {error}"),
            }))
        })
    }

    /// Asks the current model for recommendations. Blocking: run it off the async runtime.
    pub fn recommend(&self, request: &Request) -> Result<(Vec<Scored>, u64), RecommendCallError> {
        self.call_recommend(request, false)
    }

    /// A health probe gets a budget of four times the plugin's usual successful call (at
    /// least 10 ms, at most `recommend_ms`): enough for a plugin that has recovered, while a
    /// plugin that still loops costs the other plugins a few milliseconds of CPU per probe
    /// instead of a whole budget.
    fn probe_budget(&self) -> std::time::Duration {
        let usual = self.stats.ok_latency_us.load(Ordering::Relaxed);
        std::time::Duration::from_micros(usual.saturating_mul(4))
            .max(std::time::Duration::from_millis(10))
            .min(self.limits.recommend())
    }

    fn call_recommend(
        &self,
        request: &Request,
        probe: bool,
    ) -> Result<(Vec<Scored>, u64), RecommendCallError> {
        let model = self
            .model()
            .ok_or_else(|| RecommendCallError::NotTrained(self.name.to_string()))?;
        let instance = self
            .checkout(&model)
            .inspect_err(|error| self.record_failure(error))?;
        self.recommend_on(model, instance, request, probe)
    }

    /// The model serving now and an idle instance holding it, if the pool has one (an
    /// inline call must not build one on a worker).
    fn idle_instance(&self) -> Option<(ModelVersion, PluginInstance)> {
        let model = self.model()?;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let position = idle
            .iter()
            .rposition(|instance| instance.model_version == model.version)?;
        Some((model, idle.swap_remove(position)))
    }

    /// Calls `instance` (holding `model`) and files the outcome: stats, health, the pool.
    fn recommend_on(
        &self,
        model: ModelVersion,
        mut instance: PluginInstance,
        request: &Request,
        probe: bool,
    ) -> Result<(Vec<Scored>, u64), RecommendCallError> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let result = if probe {
            instance.recommend_within(request, self.probe_budget())
        } else {
            instance.recommend(request)
        };
        let elapsed = started.elapsed();
        self.stats.recommend_latency.record(elapsed);
        match &result {
            Err(error) if error.is_trap() => {
                self.record_failure(error);
                tracing::error!(plugin = %self.name, %error, "discarding the instance; the next request gets a fresh one from the snapshot");
            }
            Err(error) if error.is_failure() => {
                self.record_failure(error);
                self.checkin(instance);
            }
            Err(_) => {
                // A refusal: the plugin said no to this input. Neither a failure nor a sign of
                // recovery: it leaves the breaker as it was (a probe that meets one frees
                // the next request to probe).
                self.stats.refusals.fetch_add(1, Ordering::Relaxed);
                if probe {
                    self.health.probe_inconclusive();
                }
                self.checkin(instance);
            }
            Ok(_) => {
                self.health.succeeded();
                self.checkin(instance);
                // Exponential moving average, weight 1/16 (the first call seeds it).
                let sample = elapsed.as_micros() as u64;
                let _ = self.stats.ok_latency_us.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |old| {
                        Some(if old == 0 {
                            sample
                        } else {
                            old - old / 16 + sample / 16
                        })
                    },
                );
            }
        }
        Ok((result?, model.version))
    }

    fn record_failure(&self, error: &CallError) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        if error.is_trap() {
            self.stats.traps.fetch_add(1, Ordering::Relaxed);
        }
        if self.health.failed(&error.to_string()) {
            let report = self.health.report();
            tracing::error!(plugin = %self.name, %error, retry_in_ms = report.retry_in_ms, "plugin marked unhealthy: requests skip it until one probe succeeds");
        }
    }

    fn checkout(&self, model: &ModelVersion) -> Result<PluginInstance, CallError> {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(instance) = idle.pop() {
                if instance.model_version == model.version {
                    return Ok(instance);
                }
            }
        }
        let budget = self.rebuild_budget();
        let mut instance = self.configured_instance_within(budget)?;
        instance.load_within(&model.snapshot, budget)?;
        instance.model_version = model.version;
        Ok(instance)
    }

    fn checkin(&self, instance: PluginInstance) {
        if Some(instance.model_version) != self.model_version() {
            self.keep_spares(vec![instance]);
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(instance);
        }
    }

    /// Keeps healthy instances of replaced versions for reuse, up to one pool's worth.
    fn keep_spares(&self, instances: Vec<PluginInstance>) {
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        for instance in instances {
            if spare.len() < self.max_idle {
                spare.push(instance);
            }
        }
    }
}

/// See [`PluginRuntime::session`].
pub struct Session {
    instance: PluginInstance,
}

impl Session {
    pub fn recommend(&mut self, request: &Request) -> Result<Vec<Scored>, CallError> {
        self.instance.recommend(request)
    }

    pub fn update(&mut self, events: &[Feedback]) -> Result<(), CallError> {
        self.instance.update(events).map(|_| ())
    }

    pub fn predict(&mut self, user: u32, items: &[u32]) -> Result<Vec<f32>, CallError> {
        self.instance.predict(user, items)
    }

    pub fn save(&mut self) -> Result<Vec<u8>, CallError> {
        self.instance.save()
    }

    pub fn load(&mut self, snapshot: &[u8]) -> Result<(), CallError> {
        self.instance.load(snapshot)
    }

    /// The instance itself, for what it used (memory, log, refused network uses).
    pub fn instance(&self) -> &PluginInstance {
        &self.instance
    }
}

#[derive(Debug, Error)]
pub enum RecommendCallError {
    #[error("plugin `{0}` has no trained model yet")]
    NotTrained(String),
    #[error(
        "plugin `{plugin}` is unhealthy after repeated failures (last: {last_error}); next probe in {retry_in_ms} ms"
    )]
    Unhealthy {
        plugin: String,
        retry_in_ms: u64,
        last_error: String,
    },
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("{first}; the fallback plugin `{fallback}` failed too: {second}")]
    FallbackFailed {
        first: String,
        fallback: String,
        second: String,
    },
}

impl RecommendCallError {
    /// How long a client should wait before asking again, when the plugin is backing off.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::Unhealthy { retry_in_ms, .. } => Some(*retry_in_ms),
            _ => None,
        }
    }
}

/// Hash of a plugin's .wasm, its config and the catalog it serves: a snapshot is reusable,
/// and a loaded plugin unchanged, only while it matches.
pub fn fingerprint(wasm: &[u8], config_json: &str, catalog_fingerprint: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(wasm);
    digest.update(config_json.as_bytes());
    digest.update(catalog_fingerprint.as_bytes());
    hex(&digest.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The misbehaving fixture, built by `cargo xtask test` next to the bundled plugins.
    fn misbehaving() -> PathBuf {
        let plugins = crate::plugins::bundled_plugin_path("popularity");
        let dist = plugins.parent().and_then(Path::parent).unwrap();
        let path = dist.join("fixtures/misbehaving.wasm");
        assert!(path.exists(), "{} is not built", path.display());
        path
    }

    /// `ratings` keeps every rating, so its snapshot is mostly them. A learner that loaded
    /// the serving snapshot must save the next one where the loaded bytes were, not beside
    /// them: otherwise its first update needs a whole snapshot more memory than its `load`
    /// did (at MovieLens 25M's size, past the default 512 MiB).
    #[test]
    fn a_learner_saves_its_snapshot_where_the_loaded_one_was() {
        let data = crate::plugin_dev::check::dataset_of(&crate::import::demo::DemoSize {
            users: 5_000,
            items: 1_200,
            seed: 7,
        });
        let engine = PluginEngine::new(None).unwrap();
        let runtime = PluginRuntime::load(
            &engine,
            "ratings",
            &crate::plugins::bundled_plugin_path("ratings"),
            "{}".into(),
            PluginLimits::default(),
            data.catalog.plugin_items(),
            data.catalog.fingerprint(),
        )
        .unwrap();
        let snapshot = runtime.train(&data.train).unwrap();
        runtime
            .install(ModelVersion {
                version: 1,
                snapshot: Arc::new(snapshot.clone()),
                created_at: 0,
                through_event: 0,
            })
            .unwrap();
        let mut loaded = runtime.configured_instance().unwrap();
        loaded.load(&snapshot).unwrap();
        // No learner is kept yet: this one loads the serving snapshot, updates, saves.
        runtime.learn(&data.update[..1_000], 2).unwrap();
        let learner = runtime.memory().learner_bytes as usize;
        let grown = learner.saturating_sub(loaded.peak_memory_bytes());
        // The model is larger than its snapshot, and the copy that moves it spills that
        // excess past the hole (measured: half a snapshot here, a whole one without the copy).
        assert!(
            grown < snapshot.len() * 3 / 4,
            "the update took {grown} bytes more than the load ({} bytes), for a snapshot of {}",
            loaded.peak_memory_bytes(),
            snapshot.len()
        );
    }

    #[test]
    fn rebuilding_a_serving_instance_on_a_request_has_a_short_budget() {
        let data = crate::plugin_dev::check::dataset();
        let engine = PluginEngine::new(None).unwrap();
        let limits = PluginLimits {
            train_ms: 60_000,
            ..PluginLimits::default()
        };
        let runtime = PluginRuntime::load(
            &engine,
            "misbehaving",
            &misbehaving(),
            r#"{"load": "sleep"}"#.into(),
            limits,
            data.catalog.plugin_items(),
            data.catalog.fingerprint(),
        )
        .unwrap();
        let snapshot = runtime.train(&data.train).unwrap();
        // Serving, with no instance in the pool (as after a trap discarded one): the next
        // request rebuilds one, and this plugin's `load` never returns.
        *runtime.model.write().unwrap() = Some(ModelVersion {
            version: 1,
            snapshot: Arc::new(snapshot),
            created_at: 0,
            through_event: 0,
        });
        let request = Request {
            user: None,
            count: 5,
            history: Vec::new(),
            exclude: Vec::new(),
        };
        let error = runtime.recommend(&request).unwrap_err().to_string();
        assert!(
            error.contains("`load`") && error.contains("time budget of 2000 ms"),
            "{error}"
        );
        assert_eq!(runtime.status().failures, 1);
    }
}

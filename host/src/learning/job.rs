//! Running one update or retrain across every plugin (blocking; the scheduler runs it on a
//! blocking thread).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::buffer::Batch;
use super::{Failing, Job, JobKind, Learning};
use crate::app::SNAPSHOTS_KEPT;
use crate::catalog::to_feedback;
use crate::plugins::bindings::Feedback;
use crate::plugins::{ModelVersion, PluginRuntime};
use crate::store::{LearningRun, SnapshotRow, Store, VersionRow, unix_now, unix_now_ms};

impl Learning {
    /// Runs `job` to the end and records it. Each plugin switches serving to its new version
    /// as soon as it is ready; a plugin that fails keeps its previous version.
    pub(super) fn run(&self, job: Job) {
        if !self.is_learner() {
            // The lease was lost between scheduling and now: another node learns these.
            self.finish(job, None);
            return;
        }
        let started = Instant::now();
        let started_at_ms = unix_now_ms();
        if job.kind == JobKind::Retrain && job.trigger == super::Trigger::Manual {
            // An operator's retrain is the operator acting: rolled-back plugins learn again.
            let released: Vec<String> = self.lock().held.drain().map(|(name, _)| name).collect();
            for plugin in released {
                tracing::info!(plugin, "an operator's retrain lifts the plugin's hold");
            }
        }
        // The plugins serving when the run starts; one added meanwhile learns next time.
        let plugins = self.plugins.current();
        let (events, through_event) = match self.job_events(job) {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(update_id = job.id, %error, "cannot read the events to learn");
                self.finish(job, None);
                return;
            }
        };
        // Version numbers are handed out by the database before any model is served under
        // them: no crash, and no other node, can make a number serve two different models.
        // A plugin that ends up unchanged leaves its number unused.
        let names: Vec<&str> = plugins.iter().map(|plugin| plugin.name()).collect();
        let reserved: Vec<(String, VersionRow)> = match self.store.allocate_model_versions(
            &names,
            through_event,
            self.learner.fence().as_ref(),
        ) {
            Ok(versions) => names
                .iter()
                .zip(versions)
                .map(|(name, version)| {
                    let row = VersionRow {
                        version,
                        through_event,
                    };
                    (name.to_string(), row)
                })
                .collect(),
            Err(crate::store::StoreError::Fenced(_)) => {
                tracing::warn!(
                    update_id = job.id,
                    "another node is the learner now; this run makes no model"
                );
                self.finish(job, None);
                return;
            }
            Err(error) => {
                tracing::error!(update_id = job.id, %error, "cannot reserve model versions; skipping the run");
                self.finish(job, None);
                return;
            }
        };
        // Plugins learn one after another, on this one thread: an update then takes at most
        // one core from serving. Learning them in parallel made updates ~40% shorter but
        // doubled their effect on `/recommend` tail latency (docs/benchmarks.md).
        // Plugins whose updates have been failing go last: a retry (up to `update_ms`) or a
        // retrain of one of them then never delays the others' new versions.
        let mut order: Vec<_> = plugins.iter().zip(&reserved).collect();
        {
            let state = self.lock();
            order.sort_by_key(|(plugin, _)| state.failing.contains_key(plugin.name()));
        }
        let outcomes: Vec<(String, Value)> = order
            .into_iter()
            .map(|(plugin, (_, row))| {
                // A rollback waits for this plugin's install, and this for a rollback.
                let _installing = self.installing.lock().unwrap_or_else(|p| p.into_inner());
                // A rollback that ran since this job reserved its numbers installed a newer
                // one: this job's model for the plugin would go back behind it.
                if let Some(serving) = plugin.model_version()
                    && serving >= row.version
                {
                    let outcome = json!({
                        "status": "superseded",
                        "model_version": serving,
                        "events": 0,
                    });
                    return (plugin.name().to_string(), outcome);
                }
                let outcome = match &events {
                    JobEvents::Batch { batch, .. } => {
                        self.update_one(plugin, batch, row.version, through_event)
                    }
                    JobEvents::Window(window) => {
                        self.retrain_one(plugin, window, row.version, through_event)
                    }
                };
                (plugin.name().to_string(), outcome)
            })
            .collect();
        // The run's duration: until every plugin serves its new version. Bookkeeping after
        // that does not delay anything a client sees.
        let duration_ms = started.elapsed().as_secs_f64() * 1e3;
        let models_updated = outcomes
            .iter()
            .filter(|(_, o)| o["status"] == "updated" || o["status"] == "retrained")
            .count() as u64;
        let run = LearningRun {
            update_id: job.id,
            kind: job.kind.as_str().into(),
            trigger: job.trigger.as_str().into(),
            started_at_ms,
            duration_ms,
            feedback_count: events.len() as u64,
            through_event,
            models_updated,
            outcomes: outcomes.into_iter().collect(),
        };
        if let Err(error) = self.store.record_learning_run(&run) {
            tracing::error!(%error, "cannot record the learning run");
        }
        self.save_snapshots_if_due(job.kind == JobKind::Retrain || self.publish_each_version);
        if self.publish_each_version
            && models_updated > 0
            && let Err(error) = self
                .store
                .announce(crate::cluster::MODELS_CHANNEL, &run.update_id.to_string())
        {
            tracing::warn!(%error, "cannot announce the new models; the other nodes poll");
        }
        tracing::info!(
            update_id = run.update_id,
            kind = %run.kind,
            trigger = %run.trigger,
            events = run.feedback_count,
            models_updated,
            duration_ms = format!("{:.1}", run.duration_ms),
            "learning run finished"
        );
        self.finish(job, Some(run));
    }

    /// The events a job learns, and the id of the newest. An update takes the buffer as it
    /// is (the `Arc`s of its chunks, not the events): what arrives meanwhile waits for the
    /// next one.
    fn job_events(&self, job: Job) -> crate::store::StoreResult<(JobEvents, i64)> {
        match job.kind {
            JobKind::Update => {
                let mut state = self.lock();
                let batch = state.buffer.batch();
                let new = batch.count_after(state.offered_through);
                state.offered_through = state.newest;
                state.waiting = 0;
                state.waiting_since = None;
                Ok((JobEvents::Batch { batch, new }, state.newest))
            }
            JobKind::Retrain => {
                let (events, through) =
                    super::training_window(&self.store, &self.config, self.items)?;
                Ok((JobEvents::Window(events), through))
            }
        }
    }

    /// Drops from the buffer what every plugin has learned, counts what some plugin has not,
    /// and makes the next job runnable.
    fn finish(&self, job: Job, run: Option<LearningRun>) {
        let registry = self.plugins.current();
        let learned_through = registry
            .iter()
            .filter_map(|p| p.model().map(|m| m.through_event))
            .min()
            // Plugins without a model have learned nothing; with no plugin, nothing is owed.
            .or_else(|| (!registry.is_empty()).then_some(0));
        let (first_buffered, newest) = {
            let mut state = self.lock();
            if let Some(learned) = learned_through {
                state.buffer.drop_through(learned);
            }
            (state.buffer.first_id(), state.newest)
        };
        // Events a lagging plugin needs from before the buffer are counted in the store (on
        // this thread: never on a request's path).
        let before_buffer = match (learned_through, first_buffered) {
            (Some(learned), Some(first)) if learned + 1 < first => self
                .store
                .count_events_between(learned, first, self.items)
                .unwrap_or(0),
            (Some(learned), None) if learned < newest => self
                .store
                .count_events_between(learned, newest + 1, self.items)
                .unwrap_or(0),
            _ => 0,
        };
        let mut state = self.lock();
        let in_buffer = learned_through.map_or(0, |learned| state.buffer.count_after(learned));
        // Events stored after the buffer was read above are counted by `push` already.
        state.unlearned = before_buffer + in_buffer as u64;
        state.running = None;
        if job.kind == JobKind::Retrain {
            state.last_retrain = Instant::now();
        }
        if let Some(run) = run {
            state.runs += 1;
            state.last_run = Some(run);
        }
    }

    /// Applies the events `plugin` has not learned; the outcome as JSON. They come from the
    /// batch, and from the store for those older than the buffer. A plugin further behind
    /// than `max_lag_events` is retrained from the store instead.
    fn update_one(
        &self,
        plugin: &Arc<PluginRuntime>,
        batch: &Batch,
        version: u64,
        through: i64,
    ) -> Value {
        let Some(current) = plugin.model() else {
            return json!({ "status": "unchanged", "model_version": null, "events": 0 });
        };
        let unchanged =
            json!({ "status": "unchanged", "model_version": current.version, "events": 0 });
        let learned = current.through_event;
        if through <= learned {
            return unchanged;
        }
        if let Some(hold) = self.hold(plugin.name()) {
            return json!({
                "status": "held",
                "model_version": current.version,
                "events": 0,
                "bad_version": hold.bad_version,
                "restored_version": hold.restored_version,
            });
        }
        if let Some(backing_off) = self.backing_off(plugin.name(), current.version) {
            return backing_off;
        }
        let lag = through - learned;
        if lag > self.config.max_lag() as i64 {
            tracing::warn!(
                plugin = plugin.name(),
                lag,
                "the plugin is too far behind to be fed the backlog; retraining it from the store"
            );
            return match super::training_window(&self.store, &self.config, self.items) {
                Ok((window, through)) => {
                    let mut outcome = self.retrain_one(plugin, &window, version, through);
                    outcome["reason"] = format!("{lag} events behind").into();
                    outcome
                }
                Err(error) => self.failed(plugin, &current, 0, Duration::ZERO, &error),
            };
        }
        let older = match batch.first_id() {
            Some(first) if learned + 1 < first => {
                self.store
                    .events_between(learned, first, self.items, usize::MAX)
            }
            None => self
                .store
                .events_between(learned, through + 1, self.items, usize::MAX),
            Some(_) => Ok(Vec::new()),
        };
        let feedback: Vec<_> = match older {
            Ok(older) => older
                .iter()
                .chain(batch.after(learned).take_while(|e| e.id <= through))
                .map(to_feedback)
                .collect(),
            Err(error) => return self.failed(plugin, &current, 0, Duration::ZERO, &error),
        };
        if feedback.is_empty() {
            return unchanged;
        }
        let started = Instant::now();
        let result = plugin.learn(&feedback, version).and_then(|bytes| {
            self.remember_replaced(plugin);
            plugin.install(ModelVersion {
                version,
                snapshot: Arc::new(bytes),
                created_at: unix_now(),
                through_event: through,
            })
        });
        match result {
            Ok(()) => {
                self.succeeded(plugin.name());
                json!({
                    "status": "updated",
                    "model_version": version,
                    "events": feedback.len(),
                    "duration_ms": started.elapsed().as_secs_f64() * 1e3,
                })
            }
            Err(error) => self.failed(plugin, &current, feedback.len(), started.elapsed(), &error),
        }
    }

    /// Retrains `plugin` on `feedback` (the training window's events through
    /// `through_event`) and installs the result.
    fn retrain_one(
        &self,
        plugin: &Arc<PluginRuntime>,
        feedback: &[Feedback],
        version: u64,
        through_event: i64,
    ) -> Value {
        let started = Instant::now();
        let result = plugin.train(feedback).and_then(|bytes| {
            self.remember_replaced(plugin);
            plugin.install(ModelVersion {
                version,
                snapshot: Arc::new(bytes),
                created_at: unix_now(),
                through_event,
            })
        });
        match result {
            Ok(()) => {
                self.succeeded(plugin.name());
                self.lock()
                    .retrained
                    .insert(plugin.name().to_string(), version);
                json!({
                    "status": "retrained",
                    "model_version": version,
                    "events": feedback.len(),
                    "duration_ms": started.elapsed().as_secs_f64() * 1e3,
                })
            }
            Err(error) => match plugin.model() {
                Some(current) => {
                    self.failed(plugin, &current, feedback.len(), started.elapsed(), &error)
                }
                None => {
                    json!({ "status": "failed", "model_version": null, "error": error.to_string() })
                }
            },
        }
    }

    /// The outcome for a plugin still in its backoff after failed updates, if it is.
    fn backing_off(&self, plugin: &str, version: u64) -> Option<Value> {
        let state = self.lock();
        let failing = state.failing.get(plugin)?;
        let wait = failing.retry_at.saturating_duration_since(Instant::now());
        (!wait.is_zero()).then(|| {
            json!({
                "status": "backing_off",
                "model_version": version,
                "events": 0,
                "failed_updates": failing.failures,
                "retry_in_ms": wait.as_millis() as u64,
            })
        })
    }

    fn succeeded(&self, plugin: &str) {
        if self.lock().failing.remove(plugin).is_some() {
            tracing::info!(plugin, "the plugin learns again");
        }
    }

    /// Records a failed update of `plugin` (its backoff doubles) and returns the outcome.
    fn failed(
        &self,
        plugin: &PluginRuntime,
        current: &ModelVersion,
        events: usize,
        took: Duration,
        error: &dyn std::fmt::Display,
    ) -> Value {
        let error = error.to_string();
        let (failures, retry_in) = {
            let mut state = self.lock();
            let failures = state
                .failing
                .get(plugin.name())
                .map_or(1, |f| f.failures.saturating_add(1));
            let first = Duration::from_secs(self.config.failed_update_backoff_secs);
            let max = Duration::from_secs(self.config.max_failed_update_backoff_secs);
            let retry_in = first
                .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(20)))
                .min(max);
            state.failing.insert(
                plugin.name().to_string(),
                Failing {
                    failures,
                    retry_at: Instant::now() + retry_in,
                    last_error: error.clone(),
                },
            );
            (failures, retry_in)
        };
        tracing::warn!(
            plugin = plugin.name(),
            %error,
            failures,
            retry_in_secs = retry_in.as_secs(),
            "model update failed; the previous version keeps serving"
        );
        json!({
            "status": "failed",
            "model_version": current.version,
            "events": events,
            "duration_ms": took.as_secs_f64() * 1e3,
            "error": error,
            "failed_updates": failures,
            "retry_in_ms": retry_in.as_millis() as u64,
        })
    }

    /// Stores every plugin's serving model when the snapshot interval has passed (or `now`).
    fn save_snapshots_if_due(&self, now: bool) {
        let interval = Duration::from_secs(self.config.snapshot_interval_secs);
        {
            let mut state = self.lock();
            if !now && state.last_snapshot.elapsed() < interval {
                return;
            }
            state.last_snapshot = Instant::now();
        }
        self.save_snapshots();
    }

    /// Stores every plugin's serving model as a snapshot (at shutdown, and when due).
    pub fn save_snapshots(&self) {
        for plugin in self.plugins.current().iter() {
            if let Err(error) = save_snapshot(&self.store, plugin) {
                tracing::error!(plugin = plugin.name(), error = %format!("{error:#}"), "cannot store the snapshot");
            }
        }
    }
}

/// Stores `plugin`'s serving model unless that version is stored already.
pub fn save_snapshot(store: &Store, plugin: &PluginRuntime) -> anyhow::Result<()> {
    let Some(model) = plugin.model() else {
        return Ok(());
    };
    if store
        .latest_snapshot_version(plugin.name())?
        .is_some_and(|v| v >= model.version)
    {
        return Ok(());
    }
    store.save_snapshot(
        &SnapshotRow {
            plugin: plugin.name().to_string(),
            version: model.version,
            created_at: model.created_at,
            fingerprint: plugin.fingerprint().to_string(),
            through_event: model.through_event,
            bytes: model.snapshot.to_vec(),
        },
        SNAPSHOTS_KEPT,
    )?;
    Ok(())
}

/// What a job learns: an update's batch from the buffer (`new`: how many of its events no
/// earlier update was offered), or a retrain's training window.
enum JobEvents {
    Batch { batch: Batch, new: usize },
    Window(Vec<Feedback>),
}

impl JobEvents {
    /// The events the run reports as its feedback: new ones, or the whole window.
    fn len(&self) -> usize {
        match self {
            Self::Batch { new, .. } => *new,
            Self::Window(window) => window.len(),
        }
    }
}

//! Running one update or retrain across every plugin (blocking; the scheduler runs it on a
//! blocking thread).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Job, JobKind, Learning};
use crate::app::SNAPSHOTS_KEPT;
use crate::catalog::to_feedback;
use crate::plugins::{ModelVersion, PluginRuntime};
use crate::store::{EventRow, LearningRun, SnapshotRow, Store, VersionRow, unix_now, unix_now_ms};

impl Learning {
    /// Runs `job` to the end and records it. Each plugin switches serving to its new version
    /// as soon as it is ready; a plugin that fails keeps its previous version.
    pub(super) fn run(&self, job: Job) {
        let started = Instant::now();
        let started_at_ms = unix_now_ms();
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
        // Version numbers are reserved durably before any model is served under them, so a
        // crash at any point cannot make a number serve two different models. A plugin that
        // ends up unchanged leaves its number unused.
        let reserved: Vec<(String, VersionRow)> = {
            let mut state = self.lock();
            plugins
                .iter()
                .map(|plugin| {
                    let highest = state.versions.entry(plugin.name().to_string()).or_insert(0);
                    *highest += 1;
                    let row = VersionRow {
                        version: *highest,
                        through_event,
                    };
                    (plugin.name().to_string(), row)
                })
                .collect()
        };
        if let Err(error) = self.store.reserve_model_versions(&reserved) {
            tracing::error!(update_id = job.id, %error, "cannot reserve model versions; skipping the run");
            self.finish(job, None);
            return;
        }
        // Plugins learn one after another, on this one thread: an update then takes at most
        // one core from serving. Learning them in parallel made updates ~40% shorter but
        // doubled their effect on `/recommend` tail latency (docs/benchmarks.md).
        let outcomes: Vec<(String, Value)> = plugins
            .iter()
            .zip(&reserved)
            .map(|(plugin, (_, row))| {
                let outcome = learn_one(job.kind, plugin, &events, row.version, through_event);
                (plugin.name().to_string(), outcome)
            })
            .collect();
        // The run's duration: until every plugin serves its new version. Bookkeeping after
        // that does not delay anything a client sees.
        let duration_ms = started.elapsed().as_secs_f64() * 1e3;
        let models_updated = outcomes
            .iter()
            .filter(|(_, o)| o["status"] == "updated")
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
        self.save_snapshots_if_due(job.kind == JobKind::Retrain);
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

    /// The events a job learns, and the id of the newest.
    fn job_events(&self, job: Job) -> crate::store::StoreResult<(Vec<EventRow>, i64)> {
        match job.kind {
            JobKind::Update => {
                let mut state = self.lock();
                state.in_flight = state.buffer.len();
                let events = state.buffer.clone();
                let through = events.last().map(|e| e.id).unwrap_or(0);
                Ok((events, through))
            }
            JobKind::Retrain => {
                self.lock().in_flight = 0;
                let (events, through) = super::training_window(&self.store, &self.config)?;
                Ok((events, through))
            }
        }
    }

    /// Drops the events every plugin has learned from the buffer and makes the next job runnable.
    fn finish(&self, job: Job, run: Option<LearningRun>) {
        let learned_through = self
            .plugins
            .current()
            .iter()
            .map(|p| p.model().map(|m| m.through_event).unwrap_or(0))
            .min()
            .unwrap_or(0);
        let mut state = self.lock();
        let learned = state.buffer.partition_point(|e| e.id <= learned_through);
        state.buffer.drain(..learned);
        state.total_processed += learned as u64;
        state.in_flight = 0;
        state.running = None;
        if state.buffer.is_empty() {
            state.waiting_since = None;
        } else if learned > 0 {
            state.waiting_since = Some(Instant::now());
        }
        if job.kind == JobKind::Retrain {
            state.last_retrain = Instant::now();
        }
        if let Some(run) = run {
            state.runs += 1;
            state.last_run = Some(run);
        }
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

/// Updates or retrains one plugin and installs the result; the outcome as JSON.
fn learn_one(
    kind: JobKind,
    plugin: &Arc<PluginRuntime>,
    events: &[EventRow],
    version: u64,
    through_event: i64,
) -> Value {
    let started = Instant::now();
    let current = plugin.model();
    let learned_through = current.as_ref().map(|m| m.through_event).unwrap_or(0);
    let feedback: Vec<_> = match kind {
        // Only what this plugin has not learned: after a failed update it gets that batch again.
        JobKind::Update => events
            .iter()
            .filter(|e| e.id > learned_through)
            .map(to_feedback)
            .collect(),
        JobKind::Retrain => events.iter().map(to_feedback).collect(),
    };
    let current_version = current.as_ref().map(|m| m.version);
    if kind == JobKind::Update && (feedback.is_empty() || current.is_none()) {
        return json!({ "status": "unchanged", "model_version": current_version, "events": 0 });
    }
    let snapshot = match kind {
        JobKind::Update => plugin.learn(&feedback, version),
        JobKind::Retrain => plugin.train(&feedback),
    };
    let result = snapshot.and_then(|bytes| {
        plugin.install(ModelVersion {
            version,
            snapshot: Arc::new(bytes),
            created_at: unix_now(),
            through_event,
        })
    });
    let duration_ms = started.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok(()) => json!({
            "status": "updated",
            "model_version": version,
            "events": feedback.len(),
            "duration_ms": duration_ms,
        }),
        Err(error) => {
            tracing::warn!(plugin = plugin.name(), %error, "model update failed; the previous version keeps serving");
            json!({
                "status": "failed",
                "model_version": current_version,
                "events": feedback.len(),
                "duration_ms": duration_ms,
                "error": error.to_string(),
            })
        }
    }
}

//! Online learning: the feedback buffer, the update scheduler, and the record of updates.
//!
//! Every stored event enters the buffer ([`Learning::push`]). An update takes the events
//! waiting in it, feeds each plugin the ones it has not learned (`update` in the plugin's kept
//! learner instance), and switches serving to the new model versions ([`job`]). Updates start
//! when the buffer reaches `update_buffer_size`, when events have waited
//! `update_interval_secs`, or on an operator's request; a full retrain over the training window
//! runs on request or every `retrain_interval_secs` ([`scheduler`]). One job runs at a time;
//! events arriving meanwhile wait for the next.
//!
//! Durability comes from the event log, not from snapshots: an event is in SQLite before it is
//! acknowledged, and each plugin's model records the newest event it has learned
//! (`through_event`). Snapshots are checkpoints, stored at most every
//! `snapshot_interval_secs`; after a crash each plugin resumes from its newest snapshot and
//! every event after it goes back into the buffer.

pub mod job;
pub mod scheduler;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::config::LearningConfig;
use crate::plugins::LivePlugins;
use crate::store::{EventRow, LearningRun, Store, StoreResult};

/// What kind of job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Update,
    Retrain,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Update => "update",
            Self::Retrain => "retrain",
        }
    }
}

/// Why a job started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    BufferSize,
    Interval,
    Manual,
    Schedule,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BufferSize => "buffer_size",
            Self::Interval => "interval",
            Self::Manual => "manual",
            Self::Schedule => "schedule",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Job {
    id: u64,
    kind: JobKind,
    trigger: Trigger,
}

/// The buffer as an event's response reports it.
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub struct BufferStatus {
    /// Events stored but not yet being learned.
    pub buffer_size: usize,
    /// Whether the buffer has reached the size that triggers an update.
    pub should_update: bool,
    /// Events every plugin has learned.
    pub total_processed: u64,
}

/// What asking for a job did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduled {
    /// A new job with this id will run next.
    New(u64),
    /// A job of the same kind was already waiting to run; it will include this request.
    Already(u64),
    /// An update was asked for but no event waits to be learned.
    NothingToLearn,
}

struct State {
    /// Events some plugin has not learned yet, oldest first.
    buffer: Vec<EventRow>,
    /// How many of the oldest buffered events the running update is learning.
    in_flight: usize,
    pending: Option<Job>,
    running: Option<Job>,
    next_job_id: u64,
    total_processed: u64,
    runs: u64,
    last_run: Option<LearningRun>,
    /// When events started waiting in an otherwise empty buffer (for the interval trigger).
    waiting_since: Option<Instant>,
    last_retrain: Instant,
    last_snapshot: Instant,
    /// Highest model version handed out per plugin: versions never repeat.
    versions: HashMap<String, u64>,
}

impl State {
    fn waiting(&self) -> usize {
        self.buffer.len() - self.in_flight
    }

    fn schedule(&mut self, kind: JobKind, trigger: Trigger) -> Scheduled {
        if let Some(pending) = &mut self.pending {
            // A retrain asked for while an update waits takes its place (and its id): it
            // learns everything the update would have.
            if kind == JobKind::Retrain && pending.kind == JobKind::Update {
                pending.kind = kind;
                pending.trigger = trigger;
            }
            return Scheduled::Already(pending.id);
        }
        let id = self.next_job_id;
        self.next_job_id += 1;
        self.pending = Some(Job { id, kind, trigger });
        Scheduled::New(id)
    }
}

pub struct Learning {
    config: LearningConfig,
    store: Arc<Store>,
    plugins: Arc<LivePlugins>,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
}

/// `GET /learning/stats`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LearningStats {
    pub buffer_size: usize,
    /// Events some plugin has not learned yet, including those the running update learns.
    pub unlearned_events: usize,
    pub total_processed: u64,
    pub total_events_stored: u64,
    pub update_count: u64,
    pub running: Option<RunningJob>,
    pub pending: Option<RunningJob>,
    pub triggers: LearningConfig,
    /// Plugin name → its serving model version and what it has learned.
    #[schema(value_type = Object)]
    pub models: serde_json::Map<String, serde_json::Value>,
    pub last_update: Option<LearningRun>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunningJob {
    pub update_id: u64,
    pub kind: JobKind,
    pub trigger: Trigger,
}

impl From<Job> for RunningJob {
    fn from(job: Job) -> Self {
        Self {
            update_id: job.id,
            kind: job.kind,
            trigger: job.trigger,
        }
    }
}

/// The events a full training learns: every stored event up to the newest (whose id is
/// returned too), limited to the configured window (`retrain_window_days`,
/// `retrain_window_events`). Read the newest id first, so that events stored meanwhile are
/// left to the next update.
pub fn training_window(
    store: &Store,
    config: &LearningConfig,
) -> StoreResult<(Vec<EventRow>, i64)> {
    let through = store.last_event_id()?;
    let days = config.retrain_window_days;
    let since = (days > 0).then(|| crate::store::unix_now().saturating_sub(days * 86_400));
    let last = (config.retrain_window_events > 0).then_some(config.retrain_window_events);
    Ok((store.training_window(through, since, last)?, through))
}

impl Learning {
    /// `unlearned` are the stored events that some plugin's serving model has not learned;
    /// they go back into the buffer (after a restart, the events since the last snapshot).
    pub fn new(
        config: LearningConfig,
        store: Arc<Store>,
        plugins: Arc<LivePlugins>,
        unlearned: Vec<EventRow>,
    ) -> StoreResult<Self> {
        let (runs, highest_id) = store.learning_run_counts()?;
        let last_run = store.learning_runs(1)?.into_iter().next();
        let versions = store
            .model_versions()?
            .into_iter()
            .map(|(plugin, row)| (plugin, row.version))
            .collect::<HashMap<_, _>>();
        let learned_through = unlearned.first().map(|e| e.id - 1);
        let total_processed = store.events_through(learned_through)?;
        let now = Instant::now();
        let waiting_since = (!unlearned.is_empty()).then_some(now);
        let mut state = State {
            buffer: unlearned,
            in_flight: 0,
            pending: None,
            running: None,
            next_job_id: highest_id + 1,
            total_processed,
            runs,
            last_run,
            waiting_since,
            last_retrain: now,
            last_snapshot: now,
            versions,
        };
        // Include the versions of models restored or trained at start-up.
        for plugin in plugins.current().iter() {
            if let Some(model) = plugin.model() {
                let highest = state.versions.entry(plugin.name().to_string()).or_insert(0);
                *highest = (*highest).max(model.version);
            }
        }
        let learning = Self {
            config,
            store,
            plugins,
            state: Mutex::new(state),
            wake: tokio::sync::Notify::new(),
        };
        let mut state = learning.lock();
        if state.waiting() >= learning.config.update_buffer_size {
            state.schedule(JobKind::Update, Trigger::BufferSize);
            learning.wake.notify_one();
        }
        drop(state);
        Ok(learning)
    }

    /// Hands out the next model version of `plugin` for a model made outside a learning run
    /// (a plugin added or replaced while the server runs), durably, like a run does.
    pub fn reserve_version(&self, plugin: &str) -> StoreResult<u64> {
        let mut state = self.lock();
        let highest = state.versions.entry(plugin.to_string()).or_insert(0);
        *highest += 1;
        let version = *highest;
        self.store.reserve_model_versions(&[(
            plugin.to_string(),
            crate::store::VersionRow {
                version,
                through_event: 0,
            },
        )])?;
        Ok(version)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds newly stored events to the buffer. Returns the buffer's status and, when these
    /// events made it reach the update size, the id of the update that will learn them.
    pub fn push(&self, events: &[EventRow]) -> (BufferStatus, Option<u64>) {
        let mut state = self.lock();
        if state.buffer.is_empty() && !events.is_empty() {
            state.waiting_since = Some(Instant::now());
        }
        state.buffer.extend_from_slice(events);
        let should_update = state.waiting() >= self.config.update_buffer_size;
        let mut scheduled = None;
        if should_update
            && state.pending.is_none()
            && let Scheduled::New(id) = state.schedule(JobKind::Update, Trigger::BufferSize)
        {
            scheduled = Some(id);
            self.wake.notify_one();
        }
        let status = BufferStatus {
            buffer_size: state.waiting(),
            should_update,
            total_processed: state.total_processed,
        };
        (status, scheduled)
    }

    /// Asks for a job (an operator's request or the schedule).
    pub fn request(&self, kind: JobKind, trigger: Trigger) -> Scheduled {
        let mut state = self.lock();
        if kind == JobKind::Update && state.waiting() == 0 {
            return Scheduled::NothingToLearn;
        }
        let scheduled = state.schedule(kind, trigger);
        self.wake.notify_one();
        scheduled
    }

    pub fn stats(&self) -> StoreResult<LearningStats> {
        let total_events_stored = self.store.counts()?.events;
        let state = self.lock();
        let mut models = serde_json::Map::new();
        for plugin in self.plugins.current().iter() {
            let model = plugin.model();
            models.insert(
                plugin.name().to_string(),
                serde_json::json!({
                    "model_version": model.as_ref().map(|m| m.version),
                    "through_event": model.as_ref().map(|m| m.through_event),
                    "created_at": model.as_ref().map(|m| m.created_at),
                }),
            );
        }
        Ok(LearningStats {
            buffer_size: state.waiting(),
            unlearned_events: state.buffer.len(),
            total_processed: state.total_processed,
            total_events_stored,
            update_count: state.runs,
            running: state.running.map(RunningJob::from),
            pending: state.pending.map(RunningJob::from),
            triggers: self.config.clone(),
            models,
            last_update: state.last_run.clone(),
        })
    }

    pub fn history(&self, limit: usize) -> StoreResult<Vec<LearningRun>> {
        self.store.learning_runs(limit)
    }
}

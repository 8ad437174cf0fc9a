//! Online learning: the feedback buffer, the update scheduler, and the record of updates.
//!
//! Every stored event enters the buffer ([`Learning::push`]). An update takes the events
//! waiting in it, feeds each plugin the ones it has not learned (`update` in the plugin's kept
//! learner instance), and switches serving to the new model versions ([`job`]). Updates start
//! when `update_buffer_size` events wait, when events have waited `update_interval_secs`, or
//! on an operator's request; a full retrain over the training window runs on request or every
//! `retrain_interval_secs` ([`scheduler`]). One job runs at a time; events arriving meanwhile
//! wait for the next.
//!
//! Plugins learn independently. Each model records the newest event it has learned
//! (`through_event`), and each update feeds a plugin exactly the events after it: from the
//! buffer ([`buffer`], bounded at `max_lag_events`), and from the store for anything older.
//! A plugin further behind than `max_lag_events` is retrained from the store instead of fed
//! the backlog. A plugin whose update fails keeps serving its model and is skipped for a
//! backoff that doubles with each failure in a row (`failed_update_backoff_secs`), then tried
//! again; the others go on learning meanwhile, and one failing plugin never holds the buffer.
//!
//! Durability comes from the event log, not from snapshots: an event is in SQLite before it is
//! acknowledged. Snapshots are checkpoints, stored at most every `snapshot_interval_secs`;
//! after a crash each plugin resumes from its newest snapshot and learns the events after it.

pub mod buffer;
pub mod job;
pub mod rollback;
pub mod scheduler;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use buffer::Buffer;

use crate::catalog::to_feedback;
use crate::cluster::Learner;
use crate::config::LearningConfig;
use crate::plugins::LivePlugins;
use crate::plugins::bindings::Feedback;
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
    /// A plugin whose update failed is due to be tried again.
    Retry,
    /// This node became the learner: it learns what the previous one had not.
    Takeover,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BufferSize => "buffer_size",
            Self::Interval => "interval",
            Self::Manual => "manual",
            Self::Schedule => "schedule",
            Self::Retry => "retry",
            Self::Takeover => "takeover",
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
    /// This node is not the learner of its cluster: ask the one that is.
    NotLearner,
}

struct State {
    /// Stored events some plugin may still need, bounded at `max_lag_events`.
    buffer: Buffer,
    /// Events stored since the last update took its batch: what the triggers count.
    waiting: usize,
    /// Events some plugin has not learned, as of the last job (or start) plus those stored
    /// since.
    unlearned: u64,
    /// Events stored in all.
    stored: u64,
    /// Id of the newest event stored.
    newest: i64,
    /// Id of the newest event an update has been offered.
    offered_through: i64,
    pending: Option<Job>,
    running: Option<Job>,
    next_job_id: u64,
    runs: u64,
    last_run: Option<LearningRun>,
    /// When the oldest waiting event arrived (for the interval trigger).
    waiting_since: Option<Instant>,
    last_retrain: Instant,
    last_snapshot: Instant,
    /// Plugins whose last updates failed, by name.
    failing: HashMap<String, Failing>,
    /// Plugins rolled back and held on the restored model: updates skip them.
    held: HashMap<String, rollback::Hold>,
    /// The version each plugin's newest retrain made (the learner's monitor learns of it
    /// at once; other nodes from the learning record).
    retrained: HashMap<String, u64>,
    /// Each `auto_rollback` plugin's model that monitoring accepted last.
    pinned: HashMap<String, crate::plugins::ModelVersion>,
    /// The models each plugin served before its current one, oldest first.
    lineage: HashMap<String, std::collections::VecDeque<crate::plugins::ModelVersion>>,
}

/// A plugin whose updates fail: how often in a row, and when to try again.
#[derive(Clone, Debug)]
struct Failing {
    failures: u32,
    retry_at: Instant,
    last_error: String,
}

impl State {
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
    /// Items of the catalog the plugins serve: events of items imported since start are
    /// never fed to them (they wait for a restart, when the catalog includes them).
    items: u32,
    store: Arc<Store>,
    plugins: Arc<LivePlugins>,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
    /// Whether this node learns now (always, unless it is one node of a cluster).
    learner: Arc<Learner>,
    /// Cluster mode: every new version is stored at once, for the other nodes to install.
    publish_each_version: bool,
    /// Set at shutdown: no job starts any more.
    stopped: std::sync::atomic::AtomicBool,
    /// Held while a plugin learns and installs, or is rolled back: one at a time.
    installing: Mutex<()>,
    /// Plugins declared with `auto_rollback`: they keep more earlier models.
    auto_rollback: std::collections::HashSet<String>,
}

/// `GET /learning/stats`, answered from memory.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LearningStats {
    /// Events stored since the last update took its batch.
    pub buffer_size: usize,
    /// Events some plugin has not learned yet (as of the last update, plus those stored since).
    pub unlearned_events: u64,
    /// Events held in memory for updates (at most `max_lag_events`; older ones are read from
    /// the store when a plugin needs them).
    pub buffered_events: usize,
    /// Events every plugin has learned.
    pub total_processed: u64,
    pub total_events_stored: u64,
    pub update_count: u64,
    pub running: Option<RunningJob>,
    pub pending: Option<RunningJob>,
    pub triggers: LearningConfig,
    /// Plugin name → its serving model version and what it has learned; for a plugin whose
    /// updates fail, `failed_updates` in a row, `retry_in_ms` and `last_error`.
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

/// The events a full training learns: every stored event of the `items` items the plugins
/// serve, up to the newest (whose id is returned too), limited to the configured window
/// (`retrain_window_days`, `retrain_window_events`). Read the newest id first, so that events
/// stored meanwhile are left to the next update.
///
/// The events come in the form the plugins take, converted once: at MovieLens 25M's size the
/// store's rows are 800 MB and this list 600 MB, so callers share one list among all the
/// plugins they train instead of converting per plugin.
pub fn training_window(
    store: &Store,
    config: &LearningConfig,
    items: u32,
) -> StoreResult<(Vec<Feedback>, i64)> {
    let through = store.last_event_id()?;
    let days = config.retrain_window_days;
    let since = (days > 0).then(|| crate::store::unix_now().saturating_sub(days * 86_400));
    let last = (config.retrain_window_events > 0).then_some(config.retrain_window_events);
    let rows = store.training_window(through, since, last, items)?;
    Ok((rows.iter().map(to_feedback).collect(), through))
}

/// The stored events some serving model has not learned, as start-up finds them ([`push`]
/// in id order): how many, the first one's id, and the events themselves while they fit the
/// learning buffer (`max_lag`). Past that the buffer would drop them all, and the
/// scheduler reads them from the store, so they are not held.
///
/// [`push`]: Unlearned::push
#[derive(Default)]
pub struct Unlearned {
    count: usize,
    first_id: Option<i64>,
    events: Vec<EventRow>,
    capacity: usize,
}

impl Unlearned {
    /// For a buffer of `config`'s size.
    pub fn new(config: &LearningConfig) -> Self {
        Self {
            capacity: config.max_lag(),
            ..Self::default()
        }
    }

    pub fn push(&mut self, event: &EventRow) {
        self.count += 1;
        self.first_id.get_or_insert(event.id);
        if self.count <= self.capacity {
            self.events.push(*event);
        } else if !self.events.is_empty() {
            self.events = Vec::new();
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl Learning {
    /// `unlearned` are the stored events that some plugin's serving model has not learned
    /// (after a restart, the events since the oldest snapshot); `stored` counts all events.
    pub fn new(
        config: LearningConfig,
        store: Arc<Store>,
        plugins: Arc<LivePlugins>,
        items: u32,
        unlearned: Unlearned,
        stored: u64,
    ) -> StoreResult<Self> {
        let (runs, highest_id) = store.learning_run_counts()?;
        let last_run = store.learning_runs(1)?.into_iter().next();
        let now = Instant::now();
        let newest = store.last_event_id()?;
        let mut buffer = Buffer::new(config.max_lag());
        buffer.push(&unlearned.events);
        let state = State {
            buffer,
            waiting: unlearned.count,
            unlearned: unlearned.count as u64,
            stored,
            newest,
            offered_through: unlearned.first_id.map_or(newest, |id| id - 1),
            pending: None,
            running: None,
            next_job_id: highest_id + 1,
            runs,
            last_run,
            waiting_since: (unlearned.count > 0).then_some(now),
            last_retrain: now,
            last_snapshot: now,
            failing: HashMap::new(),
            held: HashMap::new(),
            retrained: HashMap::new(),
            pinned: HashMap::new(),
            lineage: HashMap::new(),
        };
        let learning = Self {
            config,
            items,
            store,
            plugins,
            state: Mutex::new(state),
            wake: tokio::sync::Notify::new(),
            learner: Arc::new(Learner::always()),
            publish_each_version: false,
            stopped: std::sync::atomic::AtomicBool::new(false),
            installing: Mutex::new(()),
            auto_rollback: Default::default(),
        };
        let mut state = learning.lock();
        if state.waiting >= learning.config.update_buffer_size {
            state.schedule(JobKind::Update, Trigger::BufferSize);
            learning.wake.notify_one();
        }
        drop(state);
        Ok(learning)
    }

    /// Names the plugins declared with `auto_rollback` (they keep more earlier models).
    pub fn with_auto_rollback(mut self, plugins: std::collections::HashSet<String>) -> Self {
        self.auto_rollback = plugins;
        self
    }

    /// Makes this the learning of one node of a cluster: it learns only while `learner`
    /// says so, and stores every new model version at once for the other nodes.
    pub fn in_cluster(mut self, learner: Arc<Learner>) -> Self {
        self.learner = learner;
        self.publish_each_version = true;
        self
    }

    pub(crate) fn is_learner(&self) -> bool {
        self.learner.is_learner() && !self.stopped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts no job any more and waits (up to `patience`) for the one running to end: at
    /// shutdown, before the models are stored and, in a cluster, the lease given up.
    pub fn stop(&self, patience: std::time::Duration) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let deadline = Instant::now() + patience;
        while self.lock().running.is_some() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// This node (not the learner) installed models another node stored: the buffer lets go
    /// of what they have learned, and the counts follow, so that a node that never learns
    /// holds only what it would need if it were elected.
    pub fn followed(&self) {
        let learned = self
            .plugins
            .current()
            .iter()
            .map(|plugin| plugin.model().map_or(0, |model| model.through_event))
            .min();
        let Some(learned) = learned else { return };
        let mut state = self.lock();
        state.buffer.drop_through(learned);
        let unlearned = state.buffer.count_after(learned);
        state.unlearned = unlearned as u64;
        state.waiting = unlearned;
        state.offered_through = state.offered_through.max(learned);
        if unlearned == 0 {
            state.waiting_since = None;
        }
    }

    /// This node has just become the learner: continue the numbering of learning runs where
    /// the last learner left it, and learn what the models (just installed from the store)
    /// have not.
    pub fn take_over(&self) {
        let counts = self.store.learning_run_counts();
        let last_run = self.store.learning_runs(1);
        let behind = self
            .plugins
            .current()
            .iter()
            .map(|plugin| plugin.model().map_or(i64::MAX, |model| model.through_event))
            .min();
        let mut state = self.lock();
        match counts {
            Ok((runs, highest)) => {
                state.next_job_id = state.next_job_id.max(highest + 1);
                state.runs = runs;
                // A job asked for before this node learned (at its start) gets a number
                // after every run the other learners recorded.
                let next = state.next_job_id;
                if let Some(pending) = state.pending.as_mut() {
                    pending.id = next;
                    state.next_job_id += 1;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the learning record"),
        }
        if let Ok(Some(run)) = last_run.map(|runs| runs.into_iter().next()) {
            state.last_run = Some(run);
        }
        if behind.is_some_and(|through| through < state.newest) {
            state.schedule(JobKind::Update, Trigger::Takeover);
            self.wake.notify_one();
        }
    }

    /// The version each plugin's newest retrain on this node made.
    pub fn retrained_versions(&self) -> HashMap<String, u64> {
        self.lock().retrained.clone()
    }

    /// Forgets the failed updates, the hold and the earlier models of `plugin` (it was
    /// replaced: the new one starts afresh, and an old build's models are not its own).
    pub fn forget_failures(&self, plugin: &str) {
        let mut state = self.lock();
        state.failing.remove(plugin);
        state.held.remove(plugin);
        state.lineage.remove(plugin);
        state.pinned.remove(plugin);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds newly stored events to the buffer. Returns the buffer's status and, when these
    /// events made it reach the update size, the id of the update that will learn them.
    /// Called by the event writer after each commit: constant time, whatever the buffer holds.
    pub fn push(&self, events: &[EventRow]) -> (BufferStatus, Option<u64>) {
        let mut state = self.lock();
        if let Some(last) = events.last() {
            if state.waiting == 0 {
                state.waiting_since = Some(Instant::now());
            }
            state.buffer.push(events);
            state.waiting += events.len();
            state.unlearned += events.len() as u64;
            state.stored += events.len() as u64;
            state.newest = state.newest.max(last.id);
        }
        let should_update = state.waiting >= self.config.update_buffer_size;
        let mut scheduled = None;
        if should_update
            && state.pending.is_none()
            && self.learner.is_learner()
            && let Scheduled::New(id) = state.schedule(JobKind::Update, Trigger::BufferSize)
        {
            scheduled = Some(id);
            self.wake.notify_one();
        }
        let status = BufferStatus {
            buffer_size: state.waiting,
            should_update,
            total_processed: state.stored.saturating_sub(state.unlearned),
        };
        (status, scheduled)
    }

    /// Asks for a job (an operator's request or the schedule).
    pub fn request(&self, kind: JobKind, trigger: Trigger) -> Scheduled {
        if !self.learner.is_learner() {
            return Scheduled::NotLearner;
        }
        let mut state = self.lock();
        if kind == JobKind::Update && state.unlearned == 0 {
            return Scheduled::NothingToLearn;
        }
        let scheduled = state.schedule(kind, trigger);
        self.wake.notify_one();
        scheduled
    }

    /// The learning state, from memory (no database query: `/metrics` and the dashboard
    /// poll it).
    pub fn stats(&self) -> LearningStats {
        let registry = self.plugins.current();
        let state = self.lock();
        let now = Instant::now();
        let mut models = serde_json::Map::new();
        for plugin in registry.iter() {
            let model = plugin.model();
            let mut entry = serde_json::json!({
                "model_version": model.as_ref().map(|m| m.version),
                "through_event": model.as_ref().map(|m| m.through_event),
                "created_at": model.as_ref().map(|m| m.created_at),
            });
            if let Some(hold) = state.held.get(plugin.name()) {
                entry["held"] = serde_json::to_value(hold).unwrap_or_default();
            }
            if let Some(failing) = state.failing.get(plugin.name()) {
                entry["failed_updates"] = failing.failures.into();
                entry["retry_in_ms"] =
                    (failing.retry_at.saturating_duration_since(now).as_millis() as u64).into();
                entry["last_error"] = failing.last_error.clone().into();
            }
            models.insert(plugin.name().to_string(), entry);
        }
        LearningStats {
            buffer_size: state.waiting,
            unlearned_events: state.unlearned,
            buffered_events: state.buffer.len(),
            total_processed: state.stored.saturating_sub(state.unlearned),
            total_events_stored: state.stored,
            update_count: state.runs,
            running: state.running.map(RunningJob::from),
            pending: state.pending.map(RunningJob::from),
            triggers: self.config.clone(),
            models,
            last_update: state.last_run.clone(),
        }
    }

    pub fn history(&self, limit: usize) -> StoreResult<Vec<LearningRun>> {
        self.store.learning_runs(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlearned_events_are_held_only_while_they_fit_the_buffer() {
        let config = LearningConfig {
            max_lag_events: Some(3),
            ..LearningConfig::default()
        };
        let mut unlearned = Unlearned::new(&config);
        for id in 5..8 {
            unlearned.push(&event(id));
        }
        assert_eq!((unlearned.len(), unlearned.first_id), (3, Some(5)));
        assert_eq!(unlearned.events.len(), 3);
        // One more than the buffer holds: the buffer would drop them all, so none are kept,
        // but the count and the first id still say where learning starts.
        unlearned.push(&event(8));
        assert_eq!((unlearned.len(), unlearned.first_id), (4, Some(5)));
        assert!(unlearned.events.is_empty());
        unlearned.push(&event(9));
        assert!(unlearned.events.is_empty());
    }
    use crate::plugins::PluginRegistry;
    use crate::store::{EventKind, ImportBatch, ImportEvent, ItemRow};

    /// A click with id `id` (for the buffer's tests too).
    pub(super) fn event(id: i64) -> EventRow {
        EventRow {
            id,
            user: 0,
            item: 0,
            kind: EventKind::Click,
            value: 1.0,
            timestamp: 0,
        }
    }

    #[test]
    fn stats_answer_from_memory_without_reading_the_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Arc::new(Store::open(&path).unwrap());
        let plugins = Arc::new(LivePlugins::new(PluginRegistry::default()));
        let learning = Learning::new(
            LearningConfig::default(),
            store,
            plugins,
            1,
            Default::default(),
            0,
        )
        .unwrap();
        learning.push(&[event(1), event(2)]);
        // Without the events table, any COUNT(*) over it fails: stats must not need one
        // (`/metrics` and the dashboard poll them).
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("ALTER TABLE events RENAME TO events_elsewhere")
            .unwrap();
        let stats = learning.stats();
        assert_eq!(
            (
                stats.total_events_stored,
                stats.buffer_size,
                stats.buffered_events
            ),
            (2, 2, 2)
        );
        assert_eq!((stats.unlearned_events, stats.total_processed), (2, 0));
    }

    #[test]
    fn the_training_window_is_selected_in_sql() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let events = (0..10)
            .map(|i| ImportEvent {
                user: "u".into(),
                item: "1".into(),
                kind: EventKind::Click,
                value: 1.0,
                timestamp: 100 + i,
            })
            .collect();
        let items = vec![ItemRow {
            external_id: "1".into(),
            title: "One".into(),
            tags: vec![],
        }];
        store.import(&ImportBatch { items, events }).unwrap();
        let ids = |window: Vec<EventRow>| window.iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.training_window(8, None, None, 1).unwrap()),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(
            ids(store.training_window(8, Some(104), None, 1).unwrap()),
            vec![5, 6, 7, 8]
        );
        assert_eq!(
            ids(store.training_window(10, Some(102), Some(3), 1).unwrap()),
            vec![8, 9, 10]
        );
        assert_eq!(
            ids(store.training_window(10, None, Some(0), 1).unwrap()),
            Vec::<i64>::new()
        );
        // Events of items past the served catalog are left out.
        assert!(store.training_window(10, None, None, 0).unwrap().is_empty());
    }
}

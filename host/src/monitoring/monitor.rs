//! The monitor: one thread per node that follows the lists served and the events stored,
//! closes windows, and on the learner acts on what it finds (stores windows, raises and
//! resolves alerts, calls webhooks, rolls back).
//!
//! Every node follows the same two logs (new rows only, by id: never a scan), so a node
//! elected learner already knows the current windows and the lists awaiting their users.
//! Only the learner writes, so a cluster raises each alert once.
//!
//! Each tick ([`TICK`]): read new lists and events, close the lists whose attribution time
//! is over (each a hit or not, fed to its plugin's [`VersionWatch`]), and close windows:
//! - the quality window every `window_secs`: per plugin and version, lists served, hit
//!   rate, CTR, coverage, popularity, scores;
//! - the drift window every `window_secs` once it holds `min_window_events` events (it
//!   grows until then): each feature's PSI and Jensen-Shannon distance against the
//!   reference, and each plugin's score distribution against its reference scores.
//!
//! The reference is the newest `reference_events` events when the server started, and
//! again after each retrain: the data the serving models were trained on. The reference
//! scores are each plugin's first scores served after that.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::alerts::{Alert, AlertBook, Change, DriftReading, Severity};
use super::drift::{QuantileBins, jensen_shannon, psi};
use super::features::{EventWindow, FeatureDrift, Reference, WindowEvent, compare};
use super::quality::{
    self, Attribution, Verdict, VersionQuality, VersionWatch, WindowQuality, popularity_percentiles,
};
use super::webhooks::{Notification, Webhooks};
use crate::catalog::Users;
use crate::config::MonitoringConfig;
use crate::learning::Learning;
use crate::store::{EventRow, ServedListRow, Store, StoreResult, unix_now_ms};

/// How often the monitor reads what is new.
const TICK: Duration = Duration::from_millis(500);
/// Rows read per query.
const PAGE: usize = 10_000;
/// Scores a plugin's reference holds.
const REFERENCE_SCORES: usize = 5_000;
/// Users a drift window needs for `events_per_user` to raise an alert: its deciles are of
/// the window's users, and a few dozen users (a window of heavy raters) move them by chance.
const MIN_ACTIVE_USERS: u64 = 500;
/// Learning runs read per look (retrains and rollbacks are followed by them).
const RUNS_READ: usize = 50;
/// Longest an event waits for its user to be known to this node's view.
const UNKNOWN_USER_WAIT: Duration = Duration::from_secs(5);
/// How long events of unknown users are then skipped without waiting.
const UNKNOWN_USER_SKIP: Duration = Duration::from_secs(60);

/// A rollback that finished on its thread.
struct RollbackDone {
    plugin: String,
    test: super::quality::QualityTest,
    summary: String,
    evidence: Value,
    result: Result<crate::learning::rollback::Hold, crate::learning::rollback::RollbackError>,
}

/// Scores kept per plugin in a drift window.
const WINDOW_SCORES: usize = 50_000;
/// Scores a plugin needs in a drift window for its prediction drift to be measured.
const MIN_WINDOW_SCORES: usize = 500;

/// One closed window, as stored and as `GET /monitoring` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WindowReport {
    pub started_at_ms: u64,
    pub ended_at_ms: u64,
    pub quality: Vec<VersionQuality>,
    /// Set when a drift window closed with this one.
    pub drift: Option<DriftReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriftReport {
    /// Events in the drift window and in the reference.
    pub events: u64,
    /// Users with an event in the drift window.
    pub active_users: u64,
    pub reference_events: u64,
    pub features: Vec<FeatureReport>,
    /// Each plugin's score distribution against its reference scores.
    pub predictions: Vec<FeatureReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeatureReport {
    /// The feature, or for predictions the plugin.
    pub name: String,
    pub psi: Option<f64>,
    pub jensen_shannon: Option<f64>,
    pub level: Level,
}

/// How far a feature moved: `warning` at PSI `psi_warn` and above, `alert` at `psi_alert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Warning,
    Alert,
}

/// What `/metrics` and the dashboard read, from memory.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MonitorStatus {
    pub last_window: Option<WindowReport>,
    /// The newest drift report (most windows close without one).
    pub last_drift: Option<DriftReport>,
    pub open_alerts: Vec<Alert>,
    pub lists_open: usize,
    /// Lists left unjudged since start: a waiting cap was reached, or their user's next
    /// event was read too long before them.
    pub lists_unjudged: u64,
    pub rollbacks: u64,
}

/// The monitor's handle: its status.
pub struct Monitor {
    status: Arc<Mutex<MonitorStatus>>,
    pub webhooks: Arc<Webhooks>,
}

impl Monitor {
    pub fn status(&self) -> MonitorStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What the monitor needs from the rest of the server.
pub struct MonitorParts {
    pub config: MonitoringConfig,
    /// A connection of its own.
    pub store: Store,
    pub users: Arc<RwLock<Users>>,
    pub learning: Arc<Learning>,
    pub catalog_items: usize,
    /// Plugins declared with `auto_rollback = true`.
    pub auto_rollback: HashSet<String>,
    pub node_id: String,
    pub webhooks: Arc<Webhooks>,
}

/// What the monitor keeps of every event it has seen: events per item, the users seen, and
/// the newest `reference_events` (the next reference when a retrain runs). Start-up builds
/// it in its one pass over the stored events ([`EventHistory::add`]) and hands it to
/// [`start`]; the monitor then adds each new event.
pub struct EventHistory {
    /// Id of the newest event added (0: none).
    newest: i64,
    item_events: Vec<u64>,
    user_seen: Vec<bool>,
    recent: VecDeque<WindowEvent>,
    keep_recent: usize,
}

impl EventHistory {
    pub fn new(config: &MonitoringConfig, catalog_items: usize) -> Self {
        Self {
            newest: 0,
            item_events: vec![0; catalog_items],
            user_seen: Vec::new(),
            recent: VecDeque::new(),
            keep_recent: config.reference_events,
        }
    }

    /// Adds the next stored event (ids ascending).
    pub fn add(&mut self, event: &EventRow) {
        self.newest = event.id;
        let seen = self.see(event);
        self.remember(seen);
    }

    /// Counts `event` as seen and returns it as a window takes it.
    fn see(&mut self, event: &EventRow) -> WindowEvent {
        let user = event.user as usize;
        if self.user_seen.len() <= user {
            self.user_seen.resize(user + 1, false);
        }
        let new_user = !std::mem::replace(&mut self.user_seen[user], true);
        let item = event.item as usize;
        if self.item_events.len() <= item {
            self.item_events.resize(item + 1, 0);
        }
        let new_item = self.item_events[item] == 0;
        self.item_events[item] += 1;
        WindowEvent {
            user: event.user,
            item: event.item,
            kind: event.kind,
            value: event.value,
            new_user,
            new_item,
        }
    }

    fn remember(&mut self, event: WindowEvent) {
        self.recent.push_back(event);
        while self.recent.len() > self.keep_recent {
            self.recent.pop_front();
        }
    }

    fn reference(&self) -> Reference {
        Reference::new(self.recent.iter().copied())
    }
}

/// Starts the monitor thread, which goes on from `history`: the events stored at start.
pub fn start(parts: MonitorParts, history: EventHistory) -> StoreResult<Monitor> {
    let status = Arc::new(Mutex::new(MonitorStatus::default()));
    let webhooks = parts.webhooks.clone();
    let mut state = State::new(parts, history, status.clone())?;
    std::thread::Builder::new()
        .name("monitor".into())
        .spawn(move || {
            loop {
                let started = Instant::now();
                // A panic in one tick is logged and the next tick goes on: monitoring must
                // not stop silently.
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.tick())) {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "model monitoring could not read; trying again")
                    }
                    Err(_) => tracing::error!("model monitoring panicked in a tick; going on"),
                }
                std::thread::sleep(TICK.saturating_sub(started.elapsed()));
            }
        })
        .map_err(|e| crate::store::StoreError::Corrupt(format!("cannot start the monitor: {e}")))?;
    Ok(Monitor { status, webhooks })
}

struct State {
    parts: MonitorParts,
    status: Arc<Mutex<MonitorStatus>>,
    events_after: i64,
    lists_after: i64,
    history: EventHistory,
    reference: Reference,
    /// Plugins' names, shared (see [`quality::intern`]).
    plugin_names: HashSet<Arc<str>>,
    reference_scores: HashMap<Arc<str>, Vec<f64>>,
    drift_window: EventWindow,
    drift_scores: BTreeMap<Arc<str>, Vec<f64>>,
    drift_started: Instant,
    quality_window: WindowQuality,
    window_started: Instant,
    window_started_ms: u64,
    attribution: Attribution,
    watches: HashMap<String, VersionWatch>,
    book: AlertBook,
    /// Whether this node acted as the learner last tick (a new learner adopts open alerts).
    was_learner: bool,
    /// Learning runs taken into account (by id): retrains and rollbacks, from the store,
    /// so every node follows them.
    runs_seen: HashSet<u64>,
    /// The learning record's (runs, highest id) when it was last read: unchanged, the
    /// record is not read again (decoding the newest runs every tick was 2% of a busy
    /// server's CPU).
    runs_counted: Option<(u64, u64)>,
    /// Rollbacks running on threads of their own, and their outcomes.
    rollbacks: (
        std::sync::mpsc::Sender<RollbackDone>,
        std::sync::mpsc::Receiver<RollbackDone>,
    ),
    /// The version each watch accepted last, as pinned.
    pinned: HashMap<String, u64>,
    /// Set when this node became the learner until the open alerts are read.
    adopt_pending: bool,
    /// Since when the event page has waited for a user the view does not know yet, and
    /// until when such events are skipped at once (the view lags for good).
    unknown_user_since: Option<Instant>,
    skip_unknown_until: Option<Instant>,
    /// Lists read and not yet given to the attribution (kept across a failed tick).
    pending_lists: VecDeque<ServedListRow>,
    /// Plugins whose rollback thread is running.
    rolling_back: HashSet<String>,
    /// This node's retrains already given to the watches, per plugin.
    retrained_seen: HashMap<String, u64>,
    last_expiry: Instant,
}

impl State {
    fn new(
        parts: MonitorParts,
        history: EventHistory,
        status: Arc<Mutex<MonitorStatus>>,
    ) -> StoreResult<Self> {
        let lists_after = parts.store.last_served_list_id()?;
        let events_after = history.newest;
        let now = Instant::now();
        let mut state = Self {
            attribution: Attribution::new(parts.config.attribution_secs),
            reference: history.reference(),
            history,
            plugin_names: HashSet::new(),
            reference_scores: HashMap::new(),
            drift_window: EventWindow::default(),
            drift_scores: BTreeMap::new(),
            drift_started: now,
            quality_window: WindowQuality::default(),
            window_started: now,
            window_started_ms: unix_now_ms(),
            watches: HashMap::new(),
            book: AlertBook::default(),
            was_learner: false,
            runs_seen: HashSet::new(),
            runs_counted: None,
            rollbacks: std::sync::mpsc::channel(),
            pinned: HashMap::new(),
            adopt_pending: false,
            unknown_user_since: None,
            skip_unknown_until: None,
            pending_lists: VecDeque::new(),
            rolling_back: HashSet::new(),
            retrained_seen: HashMap::new(),
            last_expiry: now,
            events_after,
            lists_after,
            status,
            parts,
        };
        // Runs before start are in the models and the reference already.
        state.runs_seen = match state.parts.store.learning_runs(RUNS_READ) {
            Ok(runs) => runs.into_iter().map(|run| run.update_id).collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read the learning record; following it from now");
                HashSet::new()
            }
        };
        Ok(state)
    }

    fn tick(&mut self) -> StoreResult<()> {
        let now_ms = unix_now_ms();
        self.read_lists()?;
        self.read_events(now_ms)?;
        // Lists whose users' next events are not stored yet wait for them.
        while let Some(list) = self.pending_lists.pop_front() {
            self.attribution.served(&list);
        }
        let learner = self.parts.learning.is_learner();
        if learner && !self.was_learner {
            self.adopt_pending = true;
            // Pins live in the learner's process: a new learner pins afresh.
            self.pinned.clear();
        }
        if learner && self.adopt_pending {
            self.adopt_open_alerts();
        }
        if !learner && self.was_learner {
            // The next learner owns the alerts now (it adopts the open ones from the store).
            self.book = AlertBook::default();
        }
        if let Err(error) = self.follow_runs() {
            tracing::warn!(%error, "cannot read the learning record; trying again");
        }
        // This node's own retrains, at once (the record has them when the job ends).
        for (plugin, version) in self.parts.learning.retrained_versions() {
            if self.retrained_seen.get(&plugin) != Some(&version)
                && let Some(watch) = self.watches.get_mut(&plugin)
            {
                watch.retrained(version);
                self.retrained_seen.insert(plugin, version);
            }
        }
        self.finish_rollbacks(learner, now_ms);
        self.was_learner = learner;
        for outcome in self.attribution.close(now_ms) {
            self.quality_window.judged(&outcome);
            if !outcome.answered {
                continue;
            }
            let verdict = self
                .watches
                .entry(outcome.plugin.to_string())
                .or_insert_with(|| {
                    VersionWatch::new(
                        self.parts.config.quality_min_lists,
                        self.parts.config.quality_alpha,
                        self.parts.config.quality_margin,
                    )
                })
                .judged(outcome.model_version, outcome.hit);
            if let Some(verdict) = verdict {
                self.on_verdict(&outcome.plugin, verdict, learner, now_ms);
            }
            self.pin_accepted(&outcome.plugin, learner);
        }
        let window = Duration::from_secs(self.parts.config.window_secs);
        if self.window_started.elapsed() >= window {
            self.close_window(learner, now_ms);
        }
        if learner && self.last_expiry.elapsed() >= window {
            self.last_expiry = Instant::now();
            let horizon = self.parts.config.retention_hours * 3_600_000;
            // Lists are needed only until they are judged; kept an hour (or two attribution
            // times) for a look at what was served.
            let lists = (2 * self.parts.config.attribution_secs * 1_000).max(3_600_000);
            self.parts.store.expire_monitoring(
                now_ms.saturating_sub(lists.min(horizon)),
                now_ms.saturating_sub(horizon),
            )?;
        }
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.open_alerts = self.book.open().cloned().collect();
        status.lists_open = self.attribution.open();
        status.lists_unjudged = self.attribution.overflowed;
        Ok(())
    }

    /// The new lists, newest last by the event they were served after; counted in the
    /// window, not yet given to the attribution (the events decide when).
    fn read_lists(&mut self) -> StoreResult<()> {
        let mut lists = Vec::new();
        loop {
            let page = self
                .parts
                .store
                .served_lists_after(self.lists_after, PAGE)?;
            for list in &page {
                self.lists_after = list.id;
                self.quality_window.served(list);
                let plugin = quality::intern(&mut self.plugin_names, &list.plugin);
                let scores = list.scores.iter().map(|s| f64::from(*s));
                let reference = self.reference_scores.entry(plugin.clone()).or_default();
                if reference.len() < REFERENCE_SCORES {
                    reference.extend(scores);
                } else {
                    // Bounded: a drift window waiting for events (an ingestion outage) must
                    // not grow with every list served meanwhile.
                    let current = self.drift_scores.entry(plugin).or_default();
                    let room = WINDOW_SCORES.saturating_sub(current.len());
                    current.extend(scores.take(room));
                }
            }
            let complete = page.len() < PAGE;
            lists.extend(page);
            if complete {
                break;
            }
        }
        // Stable: lists served after the same event keep their order.
        self.pending_lists.extend(lists);
        self.pending_lists
            .make_contiguous()
            .sort_by_key(|list| list.after_event);
        Ok(())
    }

    /// Reads the new events in order, giving the attribution each list just before the
    /// first event stored after it was served: a user's lists and events then meet in the
    /// order they happened, however many of each one tick reads.
    fn read_events(&mut self, now_ms: u64) -> StoreResult<()> {
        loop {
            let page = self.parts.store.events_between(
                self.events_after,
                i64::MAX,
                u32::try_from(self.parts.catalog_items).unwrap_or(u32::MAX),
                PAGE,
            )?;
            // The users' IDs, read under the lock once per page.
            let ids: Vec<Option<String>> = {
                let users = self.parts.users.read().unwrap_or_else(|p| p.into_inner());
                page.iter()
                    .map(|e| users.external_id(e.user).map(str::to_string))
                    .collect()
            };
            for (event, id) in page.iter().zip(ids) {
                while self
                    .pending_lists
                    .front()
                    .is_some_and(|l| l.after_event < event.id)
                {
                    let list = self.pending_lists.pop_front().expect("a front");
                    self.attribution.served(&list);
                }
                let Some(id) = id else {
                    // The view takes in users registered by other writers within about a
                    // second: wait for it (up to UNKNOWN_USER_WAIT), so that this event
                    // decides its user's lists rather than a later one. After a wait in
                    // vain, such events are skipped at once for a while.
                    let skipping = self
                        .skip_unknown_until
                        .is_some_and(|until| Instant::now() < until);
                    let since = *self.unknown_user_since.get_or_insert_with(Instant::now);
                    if !skipping && since.elapsed() < UNKNOWN_USER_WAIT {
                        return Ok(());
                    }
                    if !skipping {
                        self.skip_unknown_until = Some(Instant::now() + UNKNOWN_USER_SKIP);
                    }
                    tracing::warn!(
                        event = event.id,
                        "an event's user is unknown to this node; skipping it"
                    );
                    self.unknown_user_since = None;
                    self.events_after = event.id;
                    continue;
                };
                self.unknown_user_since = None;
                self.events_after = event.id;
                self.attribution
                    .event(&id, event.item, event.kind, event.id, now_ms);
                let seen = self.history.see(event);
                self.drift_window.record(seen);
                self.history.remember(seen);
            }
            if page.len() < PAGE {
                return Ok(());
            }
        }
    }

    fn on_verdict(&mut self, plugin: &str, verdict: Verdict, learner: bool, now_ms: u64) {
        let key = format!("quality:{plugin}");
        match verdict {
            Verdict::Passed(test) => {
                let held = self.parts.learning.hold(plugin);
                // A held plugin's alert lasts until a model newer than the restored one (a
                // retrain) passes.
                let resolves = held
                    .as_ref()
                    .is_none_or(|hold| test.first_version > hold.serving_version);
                if learner && resolves {
                    if held.is_some() {
                        self.parts.learning.release(plugin);
                    }
                    let evidence = serde_json::to_value(&test).unwrap_or_default();
                    if let Some(change) = self.book.resolve_if_open(&key, now_ms, &evidence) {
                        self.publish(change);
                    }
                }
            }
            Verdict::Worse(test) => {
                let watch = self.watches.get_mut(plugin).expect("a watch");
                let serving = self
                    .parts
                    .learning
                    .plugin_version(plugin)
                    .unwrap_or(test.first_version);
                // Everything after the accepted version (a late outcome may have started the
                // candidate above one of them).
                watch.reject(test.previous_version + 1, serving.max(test.last_version));
                if !learner {
                    return;
                }
                if self.rolling_back.contains(plugin) {
                    // The rollback under way covers this line too.
                    return;
                }
                let rate = |hits: u64, lists: u64| hits as f64 / lists.max(1) as f64;
                let summary = format!(
                    "{plugin}: model versions from {} hit {:.1}% of {} lists, against {:.1}% of {} before: below {:.0}% of it (p = {:.2e} < {})",
                    test.first_version,
                    100.0 * rate(test.candidate_hits, test.candidate_lists),
                    test.candidate_lists,
                    100.0 * rate(test.baseline_hits, test.baseline_lists),
                    test.baseline_lists,
                    100.0 * (1.0 - test.margin),
                    test.p_value,
                    test.alpha,
                );
                let evidence = serde_json::to_value(&test).unwrap_or_default();
                if self.parts.auto_rollback.contains(plugin) {
                    self.rolling_back.insert(plugin.to_string());
                    // On a thread of its own: a rollback waits for a learning job's install,
                    // which may take minutes of retraining; the monitor must keep reading.
                    let learning = self.parts.learning.clone();
                    let done = self.rollbacks.0.clone();
                    let name = plugin.to_string();
                    let (thread_summary, thread_evidence) = (summary.clone(), evidence.clone());
                    let spawned =
                        std::thread::Builder::new()
                            .name("rollback".into())
                            .spawn(move || {
                                let result = learning.roll_back(
                                    &name,
                                    Some(test.previous_version + 1),
                                    Some(test.previous_version),
                                    &thread_summary,
                                    false,
                                );
                                let _ = done.send(RollbackDone {
                                    plugin: name,
                                    test,
                                    summary: thread_summary,
                                    evidence: thread_evidence,
                                    result,
                                });
                            });
                    match spawned {
                        Ok(_) => return,
                        Err(error) => {
                            tracing::error!(%error, "cannot start a rollback thread");
                            self.rolling_back.remove(plugin);
                            let summary = format!("{summary}; rollback not started: {error}");
                            self.raise_quality_alert(&key, summary, evidence, now_ms);
                            return;
                        }
                    }
                }
                self.raise_quality_alert(&key, summary, evidence, now_ms);
            }
        }
    }

    /// Raises the quality alert (again, if one is open: a new decision replaces it).
    fn raise_quality_alert(&mut self, key: &str, summary: String, evidence: Value, now_ms: u64) {
        let superseded = json!({"superseded": "a newer quality decision"});
        if let Some(change) = self.book.resolve_if_open(key, now_ms, &superseded) {
            self.publish(change);
        }
        if let Some(change) = self
            .book
            .raise(key, Severity::Critical, summary, evidence, now_ms)
        {
            self.publish(change);
        }
    }

    /// Raises the alerts of the rollbacks that finished.
    fn finish_rollbacks(&mut self, learner: bool, now_ms: u64) {
        while let Ok(done) = self.rollbacks.1.try_recv() {
            let RollbackDone {
                plugin,
                test,
                mut summary,
                mut evidence,
                result,
            } = done;
            self.rolling_back.remove(&plugin);
            match result {
                Ok(hold) => {
                    // A version installed while the rollback waited is of the bad line too.
                    if let Some(watch) = self.watches.get_mut(&plugin) {
                        watch.reject(
                            test.previous_version + 1,
                            hold.serving_version.saturating_sub(1),
                        );
                    }
                    summary.push_str(&format!(
                        "; rolled back: version {} serves again as version {}, updates held until a retrain passes",
                        hold.restored_version, hold.serving_version
                    ));
                    evidence["rollback"] = serde_json::to_value(&hold).unwrap_or_default();
                    self.status
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .rollbacks += 1;
                }
                Err(error) => {
                    summary.push_str(&format!("; rollback failed: {error}"));
                    evidence["rollback_error"] = error.to_string().into();
                }
            }
            // A node that lost the lease meanwhile leaves the alert to the next learner.
            if learner {
                self.raise_quality_alert(&format!("quality:{plugin}"), summary, evidence, now_ms);
            }
        }
    }

    /// Pins the version `plugin`'s watch accepted last (what a rollback restores).
    fn pin_accepted(&mut self, plugin: &str, learner: bool) {
        let Some(accepted) = self.watches.get(plugin).map(VersionWatch::accepted) else {
            return;
        };
        // Retried each outcome until the model is found (it may not be in memory).
        if learner
            && self.pinned.get(plugin) != Some(&accepted)
            && self.parts.learning.pin(plugin, accepted)
        {
            self.pinned.insert(plugin.to_string(), accepted);
        }
    }

    /// Takes in the learning runs stored since the last look, on every node: a retrain
    /// makes the newest events the reference and starts the plugins' next quality decisions
    /// at their retrained versions; a rollback (automatic or by hand) rejects the versions
    /// it replaced.
    fn follow_runs(&mut self) -> StoreResult<()> {
        let counted = self.parts.store.learning_run_counts()?;
        if self.runs_counted == Some(counted) {
            return Ok(());
        }
        let mut runs = self.parts.store.learning_runs(RUNS_READ)?;
        runs.retain(|run| !self.runs_seen.contains(&run.update_id));
        runs.sort_by_key(|run| run.update_id);
        let mut rebase = false;
        for run in &runs {
            self.runs_seen.insert(run.update_id);
            for (plugin, outcome) in &run.outcomes {
                let version = |key: &str| outcome.get(key).and_then(Value::as_u64);
                let Some(watch) = self.watches.get_mut(plugin) else {
                    continue;
                };
                match outcome.get("status").and_then(Value::as_str) {
                    Some("retrained") => {
                        rebase = true;
                        if let Some(v) = version("model_version") {
                            watch.retrained(v);
                        }
                    }
                    Some("rolled_back") => {
                        if let (Some(bad), Some(serving)) =
                            (version("bad_version"), version("model_version"))
                        {
                            watch.reject(bad, serving.saturating_sub(1));
                        }
                    }
                    _ => {}
                }
            }
        }
        if rebase {
            self.reference = self.history.reference();
            self.reference_scores.clear();
        }
        // Forget ids older than what is read each time.
        if self.runs_seen.len() > 4 * RUNS_READ {
            let newest: HashSet<u64> = self
                .parts
                .store
                .learning_runs(RUNS_READ)?
                .into_iter()
                .map(|run| run.update_id)
                .collect();
            self.runs_seen.retain(|id| newest.contains(id));
        }
        self.runs_counted = Some(counted);
        Ok(())
    }

    fn close_window(&mut self, learner: bool, now_ms: u64) {
        let config = &self.parts.config;
        let percentiles = popularity_percentiles(&self.history.item_events);
        let quality = std::mem::take(&mut self.quality_window)
            .summarize(self.parts.catalog_items, |item| {
                percentiles.get(item as usize).copied()
            });
        let window = Duration::from_secs(config.window_secs);
        let drift = (self.drift_started.elapsed() >= window
            && self.drift_window.events >= config.min_window_events)
            .then(|| self.close_drift_window());
        let report = WindowReport {
            started_at_ms: self.window_started_ms,
            ended_at_ms: now_ms,
            quality,
            drift,
        };
        self.window_started = Instant::now();
        self.window_started_ms = now_ms;
        if learner {
            if let Ok(body) = serde_json::to_string(&report)
                && let Err(error) = self.parts.store.append_monitoring_window(now_ms, &body)
            {
                tracing::warn!(%error, "cannot store the monitoring window");
            }
            if let Some(drift) = &report.drift {
                let readings = drift_readings(drift);
                let changes = self.book.drift(
                    &readings,
                    self.parts.config.psi_warn,
                    self.parts.config.psi_alert,
                    self.parts.config.resolve_after_windows,
                    now_ms,
                );
                for change in changes {
                    self.publish(change);
                }
            }
        }
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(drift) = &report.drift {
            status.last_drift = Some(drift.clone());
        }
        status.last_window = Some(report);
    }

    fn close_drift_window(&mut self) -> DriftReport {
        let current = std::mem::take(&mut self.drift_window);
        let scores = std::mem::take(&mut self.drift_scores);
        self.drift_started = Instant::now();
        let level = |psi: Option<f64>| match psi {
            Some(p) if p >= self.parts.config.psi_alert => Level::Alert,
            Some(p) if p >= self.parts.config.psi_warn => Level::Warning,
            _ => Level::Ok,
        };
        let report = |name: String, d: (Option<f64>, Option<f64>)| FeatureReport {
            name,
            psi: d.0,
            jensen_shannon: d.1,
            level: level(d.0),
        };
        let features = compare(&self.reference, &current)
            .into_iter()
            .map(
                |FeatureDrift {
                     feature,
                     psi,
                     jensen_shannon,
                 }| { report(feature.to_string(), (psi, jensen_shannon)) },
            )
            .collect();
        let predictions = scores
            .iter()
            .filter(|(_, s)| s.len() >= MIN_WINDOW_SCORES)
            .filter_map(|(plugin, current)| {
                let reference = self.reference_scores.get(plugin)?;
                let bins = QuantileBins::from_reference(reference);
                let (r, c) = (
                    bins.counts(reference.iter().copied()),
                    bins.counts(current.iter().copied()),
                );
                Some(report(
                    plugin.to_string(),
                    (psi(&r, &c), jensen_shannon(&r, &c)),
                ))
            })
            .collect();
        DriftReport {
            events: current.events,
            active_users: current.active_users() as u64,
            reference_events: self.reference.window.events,
            features,
            predictions,
        }
    }

    /// Stores a change, tells the webhooks, and gives a raised alert its id.
    fn publish(&mut self, change: Change) {
        let store = &self.parts.store;
        let (status, alert) = match change {
            Change::Raised(mut alert) => {
                match store.raise_alert(&alert.alert, alert.raised_at_ms, &alert_body(&alert)) {
                    Ok(id) => {
                        alert.id = id;
                        self.book.set_id(&alert.alert, id);
                    }
                    Err(error) => tracing::error!(%error, "cannot store the alert"),
                }
                tracing::warn!(alert = %alert.alert, summary = %alert.summary, "alert raised");
                ("raised", alert)
            }
            Change::Resolved(alert) => {
                if let Err(error) = store.resolve_alert(
                    alert.id,
                    alert.resolved_at_ms.unwrap_or_default(),
                    &alert_body(&alert),
                ) {
                    tracing::error!(%error, "cannot store the alert's resolution");
                }
                tracing::info!(alert = %alert.alert, "alert resolved");
                ("resolved", alert)
            }
        };
        self.parts.webhooks.send(&Notification {
            status,
            alert,
            node: self.parts.node_id.clone(),
        });
    }

    /// Takes the alerts open in the store (raised by this node before a restart, or by the
    /// previous learner) into the book, so that they are resolved rather than raised again.
    fn adopt_open_alerts(&mut self) {
        match self.parts.store.alerts(u64::MAX, 1_000) {
            Ok(rows) => {
                self.adopt_pending = false;
                for row in rows.iter().filter(|row| row.resolved_at_ms.is_none()) {
                    if let Some(alert) = alert_from_row(row)
                        && !self.book.is_open(&alert.alert)
                    {
                        self.book.adopt(alert);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the open alerts"),
        }
    }
}

/// What is stored of an alert: everything but its id and times, which are columns.
fn alert_body(alert: &Alert) -> String {
    json!({
        "severity": alert.severity,
        "summary": alert.summary,
        "evidence": alert.evidence,
        "resolution": alert.resolution,
    })
    .to_string()
}

/// An alert read back from the store (`None` if its body is not one).
pub fn alert_from_row(row: &crate::store::AlertRow) -> Option<Alert> {
    let body: Value = serde_json::from_str(&row.body).ok()?;
    let severity = match body.get("severity")?.as_str()? {
        "warning" => Severity::Warning,
        _ => Severity::Critical,
    };
    Some(Alert {
        id: row.id,
        alert: row.alert.clone(),
        severity,
        summary: body.get("summary")?.as_str()?.to_string(),
        evidence: body.get("evidence").cloned().unwrap_or(Value::Null),
        raised_at_ms: row.raised_at_ms,
        resolved_at_ms: row.resolved_at_ms,
        resolution: body.get("resolution").cloned().filter(|v| !v.is_null()),
    })
}

/// A drift report's features and predictions as alert readings.
fn drift_readings(drift: &DriftReport) -> Vec<DriftReading> {
    // Prediction drift is shown, not alerted on: an online model's scores move with every
    // update (popularity's are counts, which only grow), so against scores from the last
    // retrain it drifts by design. Events per user is alerted on only over enough users.
    let kind = "drift";
    drift
        .features
        .iter()
        .filter(|f| f.name != "events_per_user" || drift.active_users >= MIN_ACTIVE_USERS)
        .filter_map(|f| {
            let psi = f.psi?;
            Some(DriftReading {
                alert: format!("{kind}:{}", f.name),
                psi,
                summary: format!(
                    "{} moved: PSI {psi:.3} over {} events against a reference of {}",
                    f.name, drift.events, drift.reference_events
                ),
                evidence: json!({
                    "psi": psi,
                    "jensen_shannon": f.jensen_shannon,
                    "events": drift.events,
                    "reference_events": drift.reference_events,
                }),
            })
        })
        .collect()
}

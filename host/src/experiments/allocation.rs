//! Bandit allocation over time: the weights revisions of a Thompson-sampling experiment, who
//! writes them and from what evidence.
//!
//! A bandit's weights live in numbered **revisions** stored in the database, one row per
//! revision with the counts it came from, so that every node serves from the same weights and
//! a restart or another node reproduces them exactly:
//!
//! - `start`: equal weights, written by the learner as soon as a running bandit has no
//!   revision for its groups (a new experiment, or groups renamed, added or removed);
//! - `update`: every `period_secs`, the learner counts the trials and successes since the
//!   bandit started (or was reset) and draws the next weights ([`super::bandit`]), seeded by
//!   the experiment's seed and the revision number, so the stored counts give the stored
//!   weights again;
//! - `freeze` / `resume`: an operator stops the weights where they are, or lets them move;
//! - `reset`: equal weights, and the counting starts over from this revision;
//! - `promote`: one arm serves everyone (kept groups included): the bandit is over.
//!
//! Revision numbers are claimed in the database (`append_weights_revision` refuses a number
//! taken): a learner and an operator acting at once, or two learners around a failover, never
//! both extend the same revision; the one refused reads the new one and decides again.
//!
//! **Trials.** A trial is a user in a period: the user's first exposure under a weights
//! revision (the revision in force is the period) starts it, in the arm that exposure served.
//! It succeeds when one of the user's metric events, stored after the exposure and before
//! any later trial of theirs, is stamped within `attribution_secs` after the exposure. So a heavy user
//! counts once per period, however many lists they were shown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bandit::{ArmCounts, WeightSettings, thompson_weights};
use super::definition::{BanditSettings, Experiment, Metric, Status};
use super::live::Experiments;
use crate::cluster::Learner;
use crate::store::{
    EventKind, ExposureKey, Store, StoreError, StoreResult, WeightsRevisionRow, unix_now_ms,
};

/// What made a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Start,
    Update,
    Freeze,
    Resume,
    Reset,
    Promote,
}

/// Whether the weights follow the evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BanditState {
    /// Recomputed every period.
    Learning,
    /// Held by an operator until `resume`, `reset` or `promote`.
    Frozen,
    /// One arm serves everyone.
    Promoted,
}

impl std::fmt::Display for BanditState {
    /// As the API writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Learning => "learning",
            Self::Frozen => "frozen",
            Self::Promoted => "promoted",
        })
    }
}

/// One arm's trials and successes, as stored and shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrialCounts {
    pub trials: u64,
    pub successes: u64,
}

impl From<TrialCounts> for ArmCounts {
    fn from(c: TrialCounts) -> Self {
        Self {
            trials: c.trials,
            successes: c.successes,
        }
    }
}

/// One weights revision of a bandit experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WeightsRevision {
    pub revision: u64,
    /// When it was stored (Unix milliseconds).
    pub at_ms: u64,
    pub action: Action,
    pub state: BanditState,
    /// The groups, in the experiment's order: the weights and counts are theirs.
    pub groups: Vec<String>,
    /// Each group's plugin: an arm given another plugin is a new arm, with no evidence yet.
    #[serde(default)]
    pub plugins: Vec<String>,
    /// Sum to 1; what new users are hashed with while this revision is in force.
    pub weights: Vec<f64>,
    /// Per group, trials and successes counted from revision `counted_from` on.
    pub counts: Vec<TrialCounts>,
    /// Per group, the probability of being the best if the arms differ.
    pub best_probability: Vec<f64>,
    /// The probability that all arms have the same rate.
    pub equal_probability: f64,
    /// Whether every arm had its burn-in of users (else the weights stayed equal).
    pub burned_in: bool,
    /// The seed of the draws (from the experiment's seed and the revision number; an
    /// operator's revision keeps the one its weights were drawn with).
    pub seed: u64,
    /// The settings the weights were drawn with (`update` revisions): with `counts` and
    /// `seed` they give the weights again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drawn_with: Option<DrawSettings>,
    /// Exposures served under this revision or later are counted.
    pub counted_from: u64,
    /// Who wrote it: `learner <node>` or `operator via <node>`.
    pub by: String,
    /// The operator's reason, if they gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl WeightsRevision {
    /// The revision as stored.
    pub fn to_row(&self, experiment_id: &str) -> StoreResult<WeightsRevisionRow> {
        Ok(WeightsRevisionRow {
            experiment_id: experiment_id.to_string(),
            revision: self.revision,
            at_ms: self.at_ms,
            body: serde_json::to_string(self).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        })
    }

    /// A stored revision read back.
    pub fn from_row(row: &WeightsRevisionRow) -> StoreResult<Self> {
        serde_json::from_str(&row.body).map_err(|e| {
            StoreError::Corrupt(format!(
                "weights revision {} of {}: {e}",
                row.revision, row.experiment_id
            ))
        })
    }

    /// Whether it is for `definition`'s arms (same names and plugins, same order) and whole.
    /// A revision stored before revisions named their plugins matches by names alone.
    pub fn fits(&self, definition: &Experiment) -> bool {
        let arms = definition.groups.len();
        let plugin_of = |i: usize| self.plugins.get(i);
        self.groups.len() == arms
            && (self.plugins.is_empty() || self.plugins.len() == arms)
            && definition.groups.iter().enumerate().all(|(i, group)| {
                self.groups[i] == group.name
                    && plugin_of(i).is_none_or(|plugin| *plugin == group.plugin)
            })
            && self.weights.len() == arms
            && self.counts.len() == arms
            && self.best_probability.len() == arms
    }

    /// The promoted group's index, once the bandit is over.
    pub fn promoted(&self) -> Option<usize> {
        if self.state != BanditState::Promoted {
            return None;
        }
        self.weights.iter().position(|&w| w >= 1.0)
    }
}

/// [`WeightSettings`] as stored with a revision.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrawSettings {
    pub burn_in_users: u64,
    pub min_weight: f64,
    pub top_two: bool,
    pub null_prior: f64,
}

impl From<DrawSettings> for WeightSettings {
    fn from(s: DrawSettings) -> Self {
        Self {
            burn_in_users: s.burn_in_users,
            min_weight: s.min_weight,
            top_two: s.top_two,
            null_prior: s.null_prior,
        }
    }
}

/// The draw settings of a bandit.
pub fn draw_settings(settings: &BanditSettings) -> DrawSettings {
    DrawSettings {
        burn_in_users: settings.burn_in_users,
        min_weight: settings.min_weight,
        top_two: settings.top_two,
        null_prior: settings.null_prior,
    }
}

/// The seed of revision `revision`'s draws: FNV-1a of the experiment's seed and the number,
/// so that a revision's weights can be recomputed from its counts anywhere.
pub fn draw_seed(experiment_seed: &str, revision: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in experiment_seed
        .bytes()
        .chain([b'/'])
        .chain(revision.to_le_bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Whether an event is a success under `metric`.
fn is_success(metric: Metric, kind: EventKind, value: f32) -> bool {
    match metric {
        Metric::Click => kind == EventKind::Click,
        Metric::PositiveRating { threshold } => kind == EventKind::Rate && value >= threshold,
        Metric::AnyInteraction => true,
    }
}

/// How far before an exposure a client's event timestamp may be and still count (clocks).
const CLOCK_SKEW_SECS: u64 = 300;

/// Counts a bandit's trials and successes from its exposures and the events after them
/// (see the module doc). Feed it events in id order.
pub struct TrialCounter {
    metric: Metric,
    attribution_ms: u64,
    /// Per trial: its group, when it started, and whether it succeeded.
    trials: Vec<(usize, u64, bool)>,
    /// Per user: every counted exposure's (after_event, at_ms, trial index), in serving order.
    by_user: HashMap<String, Vec<(i64, u64, usize)>>,
    groups: usize,
    first_after: i64,
}

impl TrialCounter {
    /// The trials of `exposures` served under revision `counted_from` or later, in
    /// `definition`'s groups (exposures of groups it no longer has are left out).
    pub fn new(
        definition: &Experiment,
        settings: &BanditSettings,
        exposures: &[ExposureKey],
        counted_from: u64,
    ) -> Self {
        let mut trials = Vec::new();
        let mut by_user: HashMap<String, Vec<(i64, u64, usize)>> = HashMap::new();
        let mut started: HashMap<(&str, u64), usize> = HashMap::new();
        let mut first_after = i64::MAX;
        for exposure in exposures {
            if exposure.weights_revision < counted_from {
                continue;
            }
            let Some(group) = definition.group_index(&exposure.group_name) else {
                continue;
            };
            // The user's first exposure under a revision starts their trial of that period.
            let trial = *started
                .entry((&exposure.user_id, exposure.weights_revision))
                .or_insert_with(|| {
                    trials.push((group, exposure.at_ms, false));
                    trials.len() - 1
                });
            by_user.entry(exposure.user_id.clone()).or_default().push((
                exposure.after_event,
                exposure.at_ms,
                trial,
            ));
            first_after = first_after.min(exposure.after_event);
        }
        for list in by_user.values_mut() {
            // Stable: exposures after the same event keep serving order.
            list.sort_by_key(|&(after, _, _)| after);
        }
        Self {
            metric: settings.metric,
            attribution_ms: settings.attribution_secs.saturating_mul(1000),
            trials,
            by_user,
            groups: definition.groups.len(),
            first_after,
        }
    }

    /// Events with ids above this may be successes.
    pub fn events_after(&self) -> i64 {
        self.first_after
    }

    /// Takes one event (`timestamp` in Unix seconds) into account: it is feedback on the
    /// user's latest exposure stored before it, and a success of that exposure's trial if
    /// it is stamped within the attribution window after that exposure.
    pub fn event(&mut self, id: i64, user: &str, kind: EventKind, value: f32, timestamp: u64) {
        if !is_success(self.metric, kind, value) {
            return;
        }
        let Some(list) = self.by_user.get(user) else {
            return;
        };
        let before = list.partition_point(|&(after, _, _)| after < id);
        let Some(&(_, shown_ms, trial)) = before.checked_sub(1).and_then(|i| list.get(i)) else {
            return;
        };
        // Event timestamps are whole seconds: the window ends at the end of its last second.
        // An event stamped well before the exposure (a backfill, an import of old events) is
        // not feedback on it, whatever its id; a few minutes are allowed for client clocks.
        let deadline_secs = shown_ms.saturating_add(self.attribution_ms) / 1000;
        let earliest_secs = (shown_ms / 1000).saturating_sub(CLOCK_SKEW_SECS);
        if (earliest_secs..=deadline_secs).contains(&timestamp) {
            self.trials[trial].2 = true;
        }
    }

    /// Per group: trials that started at or before `mature_before_ms`, and their successes.
    /// Younger trials are left for a later count: their outcome is not known yet, and
    /// counting them as failures would bias down the arm with the most recent traffic.
    pub fn finish(self, mature_before_ms: u64) -> Vec<TrialCounts> {
        let mut counts = vec![TrialCounts::default(); self.groups];
        for (group, started_ms, success) in self.trials {
            if started_ms <= mature_before_ms {
                counts[group].trials += 1;
                counts[group].successes += u64::from(success);
            }
        }
        counts
    }
}

/// How long a trial runs before it counts: the attribution window, but never more than half
/// a period, so that each update counts at least the first half of the period just ended.
pub fn maturity_ms(settings: &BanditSettings) -> u64 {
    settings
        .attribution_secs
        .saturating_mul(1000)
        .min(settings.period_secs.saturating_mul(500))
}

/// Counts `definition`'s trials from revision `counted_from` on that started at or before
/// `mature_before_ms`, reading its exposures and the events after them. Blocking.
pub fn count_trials(
    store: &Store,
    definition: &Experiment,
    settings: &BanditSettings,
    counted_from: u64,
    mature_before_ms: u64,
) -> StoreResult<Vec<TrialCounts>> {
    let exposures = store.exposures_of(&definition.id)?;
    let mut counter = TrialCounter::new(definition, settings, &exposures, counted_from);
    drop(exposures);
    let after = counter.events_after();
    if after < i64::MAX {
        store.for_each_event_after(after, &mut |id, user, kind, value, timestamp| {
            counter.event(id, user, kind, value, timestamp)
        })?;
    }
    Ok(counter.finish(mature_before_ms))
}

/// A revision with equal weights and no evidence, numbered `revision`.
fn equal_revision(
    definition: &Experiment,
    settings: &BanditSettings,
    revision: u64,
    action: Action,
    counted_from: u64,
    by: String,
) -> WeightsRevision {
    let arms = definition.groups.len();
    let equal = vec![1.0 / arms as f64; arms];
    WeightsRevision {
        revision,
        at_ms: unix_now_ms(),
        action,
        state: BanditState::Learning,
        groups: definition.group_names(),
        plugins: definition.groups.iter().map(|g| g.plugin.clone()).collect(),
        weights: equal.clone(),
        counts: vec![TrialCounts::default(); arms],
        best_probability: equal,
        equal_probability: settings.null_prior,
        burned_in: false,
        seed: draw_seed(&definition.seed, revision),
        drawn_with: None,
        counted_from,
        by,
        note: None,
    }
}

/// The first revision for `definition`'s arms after `previous` (for other arms, or none):
/// equal weights, counting from itself on (from the very start for a new bandit). An
/// operator's decision carries over: a frozen bandit stays frozen, a promoted arm that is
/// still there stays promoted.
fn start_revision(
    definition: &Experiment,
    settings: &BanditSettings,
    previous: Option<&WeightsRevision>,
    by: &str,
) -> WeightsRevision {
    let next = previous.map_or(1, |r| r.revision + 1);
    let counted_from = if previous.is_none() { 0 } else { next };
    let mut start = equal_revision(
        definition,
        settings,
        next,
        Action::Start,
        counted_from,
        format!("learner {by}"),
    );
    match previous {
        Some(p) if p.state == BanditState::Frozen => start.state = BanditState::Frozen,
        Some(p) if p.state == BanditState::Promoted => {
            let promoted = p.promoted().and_then(|i| {
                let name = p.groups.get(i)?;
                definition.groups.iter().position(|g| {
                    g.name == *name && p.plugins.get(i).is_none_or(|plugin| *plugin == g.plugin)
                })
            });
            if let Some(index) = promoted {
                start.state = BanditState::Promoted;
                start.weights = one_hot(definition.groups.len(), index);
            }
        }
        _ => {}
    }
    start
}

fn one_hot(arms: usize, index: usize) -> Vec<f64> {
    (0..arms)
        .map(|i| if i == index { 1.0 } else { 0.0 })
        .collect()
}

/// Whether the learner has a revision to write for `definition` now, given its newest
/// stored one: a start (no revision for these arms yet) or a period's update.
fn is_due(
    definition: &Experiment,
    settings: &BanditSettings,
    newest: Option<&WeightsRevision>,
    now_ms: u64,
) -> bool {
    match newest {
        Some(newest) if newest.fits(definition) => {
            newest.state == BanditState::Learning
                && now_ms
                    >= newest
                        .at_ms
                        .saturating_add(settings.period_secs.saturating_mul(1000))
        }
        _ => true,
    }
}

/// The revision the learner writes for `definition` now (call when [`is_due`]).
fn due_revision(
    store: &Store,
    definition: &Experiment,
    settings: &BanditSettings,
    newest: Option<&WeightsRevision>,
    now_ms: u64,
    by: &str,
) -> StoreResult<WeightsRevision> {
    let Some(newest) = newest.filter(|r| r.fits(definition)) else {
        return Ok(start_revision(definition, settings, newest, by));
    };
    let next = newest.revision + 1;
    let mature_before_ms = now_ms.saturating_sub(maturity_ms(settings));
    let counts = count_trials(
        store,
        definition,
        settings,
        newest.counted_from,
        mature_before_ms,
    )?;
    let seed = draw_seed(&definition.seed, next);
    let arm_counts: Vec<ArmCounts> = counts.iter().copied().map(ArmCounts::from).collect();
    let drawn_with = draw_settings(settings);
    let drawn = thompson_weights(&arm_counts, &drawn_with.into(), seed);
    Ok(WeightsRevision {
        revision: next,
        at_ms: now_ms,
        action: Action::Update,
        state: BanditState::Learning,
        groups: definition.group_names(),
        plugins: definition.groups.iter().map(|g| g.plugin.clone()).collect(),
        weights: drawn.weights,
        counts,
        best_probability: drawn.best_probability,
        equal_probability: drawn.equal_probability,
        burned_in: drawn.burned_in,
        seed,
        drawn_with: Some(drawn_with),
        counted_from: newest.counted_from,
        by: format!("learner {by}"),
        note: None,
    })
}

/// The newest stored weights revisions, by experiment id.
pub struct NewestRevisions {
    /// The newest readable revision of each experiment.
    pub readable: HashMap<String, WeightsRevision>,
    /// Experiments whose newest row this version cannot read (written by a newer version
    /// during a rolling upgrade, say): nobody here may extend them.
    pub unreadable: std::collections::HashSet<String>,
}

/// Reads the newest weights revision of each experiment. Where the newest row cannot be
/// read, the newest one that can stands in (logged once per row): it stops only its own
/// experiment's weights from moving here.
pub fn newest_revisions(store: &Store) -> StoreResult<NewestRevisions> {
    let mut newest = NewestRevisions {
        readable: HashMap::new(),
        unreadable: Default::default(),
    };
    for row in store.latest_weights_revisions()? {
        match WeightsRevision::from_row(&row) {
            Ok(revision) => {
                newest.readable.insert(row.experiment_id, revision);
            }
            Err(error) => {
                warn_unreadable(&row, &error);
                let fallback = readable_revisions(store, &row.experiment_id, None)?.pop();
                if let Some(revision) = fallback {
                    newest.readable.insert(row.experiment_id.clone(), revision);
                }
                newest.unreadable.insert(row.experiment_id);
            }
        }
    }
    Ok(newest)
}

/// The readable ones of the newest `newest` weights revisions of `experiment_id` (all for
/// `None`), oldest first (unreadable rows are logged once and left out).
pub fn readable_revisions(
    store: &Store,
    experiment_id: &str,
    newest: Option<u64>,
) -> StoreResult<Vec<WeightsRevision>> {
    Ok(store
        .weights_revisions(experiment_id, newest)?
        .iter()
        .filter_map(|row| {
            WeightsRevision::from_row(row)
                .map_err(|error| warn_unreadable(row, &error))
                .ok()
        })
        .collect())
}

/// Warns about an unreadable revision row once per process.
fn warn_unreadable(row: &WeightsRevisionRow, error: &StoreError) {
    static WARNED: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());
    let key = (row.experiment_id.clone(), row.revision);
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if !warned.contains(&key) {
        warned.push(key);
        tracing::warn!(%error, "skipping a weights revision this version cannot read");
    }
}

/// The learner's pass over the running bandits: writes each one's due revision, then puts
/// the newest revisions in force here. Blocking.
pub fn run_due_updates(store: &Store, experiments: &Experiments, node: &str) -> StoreResult<usize> {
    let set = experiments.current();
    let running: Vec<_> = set
        .experiments
        .iter()
        .filter(|e| e.definition.bandit().is_some() && e.definition.status == Status::Running)
        .collect();
    if running.is_empty() {
        return Ok(0);
    }
    let newest = newest_revisions(store)?;
    let now_ms = unix_now_ms();
    let mut written = 0;
    let mut flushed = false;
    for experiment in running {
        let definition = &experiment.definition;
        let Some(settings) = definition.bandit() else {
            continue;
        };
        if newest.unreadable.contains(&definition.id) {
            continue;
        }
        let previous = newest.readable.get(&definition.id);
        if !is_due(definition, settings, previous, now_ms) {
            continue;
        }
        if !flushed {
            // Queued exposures first: the period just ended must be counted whole.
            experiments.flush();
            flushed = true;
        }
        let revision = due_revision(store, definition, settings, previous, now_ms, node)?;
        if store.append_weights_revision(&revision.to_row(&definition.id)?)? {
            written += 1;
            tracing::info!(
                experiment = %definition.id,
                revision = revision.revision,
                action = ?revision.action,
                weights = ?revision.weights,
                "stored new bandit weights"
            );
        }
    }
    // Every pass, not only after a write: a single node has no other follower, and a
    // revision stored by an operator's request or a write whose follow failed must still
    // come into force here.
    experiments.follow_weights(store)?;
    Ok(written)
}

/// What an operator asks of a bandit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorAction {
    Freeze,
    Resume,
    Reset,
    Promote(String),
}

/// Why an operator's action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("experiment `{0}` is not a bandit (it has no [allocation] type = \"thompson\")")]
    NotABandit(String),
    #[error("unknown group `{requested}`; groups: {}", groups.join(", "))]
    UnknownGroup {
        requested: String,
        groups: Vec<String>,
    },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies an operator's `action` to `definition`'s bandit as its next revision, and puts it
/// in force here (other nodes follow within a second). Blocking.
pub fn operator_action(
    store: &Store,
    experiments: &Experiments,
    definition: &Experiment,
    action: &OperatorAction,
    note: Option<String>,
    node: &str,
) -> Result<WeightsRevision, ActionError> {
    let settings = definition
        .bandit()
        .ok_or_else(|| ActionError::NotABandit(definition.id.clone()))?;
    let by = format!("operator via {node}");
    // Another writer may take the number we read; read again and decide again.
    for _ in 0..5 {
        // The newest few are enough: the newest row's number, and the newest readable one.
        let rows = store.weights_revisions(&definition.id, Some(16))?;
        // The number follows the newest row, readable or not, whatever arms it was for; the
        // weights start from the newest readable revision only if it is for these arms.
        let next = rows.last().map_or(1, |row| row.revision + 1);
        let latest = rows.iter().rev().find_map(|row| {
            WeightsRevision::from_row(row)
                .map_err(|error| warn_unreadable(row, &error))
                .ok()
        });
        let base = match latest {
            Some(r) if r.fits(definition) => r,
            other => start_revision(definition, settings, other.as_ref(), node),
        };
        let state = base.state;
        let mut revision = WeightsRevision {
            revision: next,
            at_ms: unix_now_ms(),
            by: by.clone(),
            note: note.clone(),
            ..base
        };
        match action {
            OperatorAction::Freeze => {
                if state != BanditState::Learning {
                    return Err(ActionError::Conflict(format!(
                        "the weights are {state}, not learning: nothing to freeze"
                    )));
                }
                revision.action = Action::Freeze;
                revision.state = BanditState::Frozen;
            }
            OperatorAction::Resume => {
                if state != BanditState::Frozen {
                    return Err(ActionError::Conflict(format!(
                        "the weights are {state}, not frozen: nothing to resume"
                    )));
                }
                revision.action = Action::Resume;
                revision.state = BanditState::Learning;
            }
            OperatorAction::Reset => {
                let mut equal =
                    equal_revision(definition, settings, next, Action::Reset, next, by.clone());
                equal.note = note.clone();
                revision = equal;
            }
            OperatorAction::Promote(group) => {
                let index =
                    definition
                        .group_index(group)
                        .ok_or_else(|| ActionError::UnknownGroup {
                            requested: group.clone(),
                            groups: definition.group_names(),
                        })?;
                revision.action = Action::Promote;
                revision.state = BanditState::Promoted;
                revision.weights = one_hot(definition.groups.len(), index);
                // One-hot weights are not drawn from the counts.
                revision.drawn_with = None;
            }
        }
        if store.append_weights_revision(&revision.to_row(&definition.id)?)? {
            tracing::info!(
                experiment = %definition.id,
                revision = revision.revision,
                action = ?revision.action,
                "an operator changed a bandit's weights"
            );
            experiments.follow_weights(store)?;
            return Ok(revision);
        }
    }
    Err(ActionError::Conflict(
        "other writers kept changing the weights; try again".into(),
    ))
}

/// The thread that runs the bandits' periodic updates while this node is the learner.
pub struct BanditRunner {
    stopping: Arc<AtomicBool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// How often the runner looks for due updates: a period is at least a second.
const TICK: Duration = Duration::from_millis(250);

impl BanditRunner {
    /// Starts the thread; `store` should be a connection of its own (counting reads every
    /// exposure of a bandit and the events after them).
    pub fn start(
        store: Store,
        experiments: Arc<Experiments>,
        learner: Arc<Learner>,
        node: String,
    ) -> std::io::Result<Self> {
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("bandits".into())
            .spawn(move || {
                let mut failing = false;
                // The first pass at once: a new bandit's first revision comes before most
                // of its users (those served before it get the same equal weights).
                while !stop.load(Ordering::Relaxed) {
                    let outcome = if learner.is_learner() {
                        run_due_updates(&store, &experiments, &node).map(|_| ())
                    } else {
                        // Not the learner: the cluster thread follows the learner's weights.
                        Ok(())
                    };
                    match outcome {
                        Ok(()) => failing = false,
                        Err(error) if !failing => {
                            failing = true;
                            tracing::warn!(%error, "cannot update the bandits' weights; retrying");
                        }
                        Err(_) => {}
                    }
                    std::thread::sleep(TICK);
                }
            })?;
        Ok(Self {
            stopping,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Stops the thread after its current pass.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::definition::tests::BANDIT;

    fn bandit() -> Experiment {
        Experiment::parse(
            std::path::Path::new("b.toml"),
            BANDIT,
            &["collaborative".into(), "hybrid".into()],
        )
        .unwrap()
    }

    fn exposure(id: i64, user: &str, group: &str, after: i64, at_ms: u64, rev: u64) -> ExposureKey {
        ExposureKey {
            id,
            user_id: user.into(),
            group_name: group.into(),
            after_event: after,
            at_ms,
            weights_revision: rev,
        }
    }

    #[test]
    fn a_user_is_one_trial_per_period_and_succeeds_within_the_attribution_window() {
        let definition = bandit();
        let settings = BanditSettings {
            attribution_secs: 60,
            ..definition.bandit().unwrap().clone()
        };
        let exposures = [
            // u1: three lists in revision 1 (one trial), one in revision 2 (another).
            exposure(1, "u1", "control", 10, 1_000_000, 1),
            exposure(2, "u1", "control", 11, 1_001_000, 1),
            exposure(3, "u1", "control", 12, 1_002_000, 1),
            exposure(4, "u1", "control", 20, 2_000_000, 2),
            // u2: treatment, clicks too late.
            exposure(5, "u2", "treatment", 10, 1_000_000, 1),
            // u3: treatment, served before counting started.
            exposure(6, "u3", "treatment", 5, 500_000, 0),
            // u4: a group the experiment no longer has.
            exposure(7, "u4", "gone", 10, 1_000_000, 1),
        ];
        let mut counter = TrialCounter::new(&definition, &settings, &exposures, 1);
        assert_eq!(counter.events_after(), 10);
        // u1 clicks within a minute of revision 1's exposure: revision 1's trial succeeds.
        counter.event(15, "u1", EventKind::Click, 1.0, 1_030);
        // A view is not a click.
        counter.event(21, "u1", EventKind::View, 1.0, 2_001);
        // u2 clicks two minutes later: no success.
        counter.event(16, "u2", EventKind::Click, 1.0, 1_120);
        counter.event(17, "u3", EventKind::Click, 1.0, 1_000);
        counter.event(18, "u4", EventKind::Click, 1.0, 1_000);
        // u2's backfilled click, stamped ten minutes before the exposure: not feedback.
        counter.event(19, "u2", EventKind::Click, 1.0, 400);
        assert_eq!(
            counter.finish(u64::MAX),
            vec![
                TrialCounts {
                    trials: 2,
                    successes: 1
                },
                TrialCounts {
                    trials: 1,
                    successes: 0
                },
            ]
        );
    }

    #[test]
    fn the_window_runs_from_the_latest_list_shown_and_young_trials_wait() {
        let definition = bandit();
        let settings = BanditSettings {
            attribution_secs: 60,
            ..definition.bandit().unwrap().clone()
        };
        let exposures = [
            // u1: shown a list at 1,000 s and another at 1,100 s, in the same period.
            exposure(1, "u1", "control", 10, 1_000_000, 1),
            exposure(2, "u1", "control", 12, 1_100_000, 1),
            // u2: a trial started at 1,500 s, too young to count at 1,520 s.
            exposure(3, "u2", "treatment", 12, 1_500_000, 1),
        ];
        let mut counter = TrialCounter::new(&definition, &settings, &exposures, 0);
        // 130 s after the first list, 30 s after the second: a success of u1's trial.
        counter.event(13, "u1", EventKind::Click, 1.0, 1_130);
        counter.event(14, "u2", EventKind::Click, 1.0, 1_510);
        let counts = counter.finish(1_520_000 - maturity_ms(&settings));
        assert_eq!(
            counts,
            vec![
                TrialCounts {
                    trials: 1,
                    successes: 1
                },
                TrialCounts::default()
            ]
        );
        // Half the 60 s period: shorter than the 60 s window.
        assert_eq!(maturity_ms(&settings), 30_000);
    }

    #[test]
    fn an_update_is_reproducible_from_its_stored_counts_seed_and_settings() {
        use crate::store::{ExposureRow, ImportBatch, ImportEvent, ItemRow};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let definition = bandit();
        let settings = BanditSettings {
            burn_in_users: 10,
            null_prior: 0.5,
            ..definition.bandit().unwrap().clone()
        };
        let now_ms = unix_now_ms();
        let shown_ms = now_ms - 3_600_000;
        // 40 users per arm an hour ago; a third of treatment's and a tenth of control's click.
        let users: Vec<(String, &str, bool)> = (0..80)
            .map(|u| {
                let group = if u % 2 == 0 { "control" } else { "treatment" };
                let clicks = if u % 2 == 0 { u % 20 == 0 } else { u % 6 == 1 };
                (format!("u{u}"), group, clicks)
            })
            .collect();
        let exposures: Vec<ExposureRow> = users
            .iter()
            .map(|(user, group, _)| ExposureRow {
                experiment_id: "bandit".into(),
                group_name: (*group).into(),
                user_id: user.clone(),
                plugin: "p".into(),
                model_version: 1,
                after_event: 0,
                at_ms: shown_ms,
                weights_revision: 1,
            })
            .collect();
        store.append_exposures(&exposures, &[]).unwrap();
        let clicks = users
            .iter()
            .filter(|(_, _, clicks)| *clicks)
            .map(|(user, _, _)| ImportEvent {
                user: user.clone(),
                item: "i".into(),
                kind: EventKind::Click,
                value: 1.0,
                timestamp: shown_ms / 1000 + 30,
            })
            .collect::<Vec<_>>();
        let clicked = clicks.len() as u64;
        store
            .import(&ImportBatch {
                items: vec![ItemRow {
                    external_id: "i".into(),
                    title: "I".into(),
                    tags: vec![],
                }],
                events: clicks,
            })
            .unwrap();
        let mut previous = equal_revision(&definition, &settings, 1, Action::Start, 0, "t".into());
        previous.at_ms = shown_ms;
        let mut with_settings = definition.clone();
        with_settings.allocation = crate::experiments::definition::Allocation::Thompson(settings);
        let settings = with_settings.bandit().unwrap();
        assert!(is_due(&with_settings, settings, Some(&previous), now_ms));
        let update = due_revision(
            &store,
            &with_settings,
            settings,
            Some(&previous),
            now_ms,
            "me",
        )
        .unwrap();
        let total: u64 = update.counts.iter().map(|c| c.successes).sum();
        assert_eq!(total, clicked);
        assert_eq!(update.counts[0].trials + update.counts[1].trials, 80);
        assert!(
            update.burned_in && update.weights[1] > update.weights[0],
            "{update:?}"
        );
        // From the stored row alone: the same weights.
        let stored = WeightsRevision::from_row(&update.to_row("bandit").unwrap()).unwrap();
        let counts: Vec<ArmCounts> = stored.counts.iter().copied().map(ArmCounts::from).collect();
        let again = thompson_weights(&counts, &stored.drawn_with.unwrap().into(), stored.seed);
        assert_eq!(again.weights, stored.weights);
        // Not due again before a period has passed.
        assert!(!is_due(&with_settings, settings, Some(&stored), now_ms + 1));
    }

    #[test]
    fn new_arms_start_afresh_but_keep_an_operators_freeze_or_promotion() {
        let definition = bandit();
        let settings = definition.bandit().unwrap();
        let mut previous = equal_revision(&definition, settings, 7, Action::Update, 3, "t".into());
        // Another plugin behind a group makes it another arm.
        let mut swapped = definition.clone();
        swapped.groups[1].plugin = "collaborative".into();
        assert!(previous.fits(&definition) && !previous.fits(&swapped));
        let start = start_revision(&swapped, settings, Some(&previous), "me");
        assert_eq!((start.revision, start.counted_from), (8, 8));
        assert_eq!(
            (start.action, start.state),
            (Action::Start, BanditState::Learning)
        );
        assert!(start.fits(&swapped));
        // Frozen stays frozen; a promotion of an arm that is still there stays.
        previous.state = BanditState::Frozen;
        let start = start_revision(&swapped, settings, Some(&previous), "me");
        assert_eq!(start.state, BanditState::Frozen);
        previous.state = BanditState::Promoted;
        previous.weights = vec![1.0, 0.0];
        let start = start_revision(&swapped, settings, Some(&previous), "me");
        assert_eq!(start.state, BanditState::Promoted);
        assert_eq!(start.weights, vec![1.0, 0.0]);
        // The promoted arm's plugin changed: it is a new arm, and the bandit learns again.
        previous.weights = vec![0.0, 1.0];
        let start = start_revision(&swapped, settings, Some(&previous), "me");
        assert_eq!(start.state, BanditState::Learning);
        // A revision from before revisions named plugins matches by names.
        previous.plugins.clear();
        assert!(previous.fits(&definition) && previous.fits(&swapped));
        // The very first revision counts every exposure so far.
        assert_eq!(
            start_revision(&definition, settings, None, "me").counted_from,
            0
        );
    }

    #[test]
    fn the_metric_decides_what_succeeds() {
        assert!(is_success(Metric::Click, EventKind::Click, 1.0));
        assert!(!is_success(Metric::Click, EventKind::Purchase, 1.0));
        let positive = Metric::PositiveRating { threshold: 4.0 };
        assert!(is_success(positive, EventKind::Rate, 4.0));
        assert!(!is_success(positive, EventKind::Rate, 3.5));
        assert!(!is_success(positive, EventKind::Click, 5.0));
        assert!(is_success(Metric::AnyInteraction, EventKind::View, 0.0));
    }

    #[test]
    fn a_revision_round_trips_and_fits_only_its_groups() {
        let definition = bandit();
        let settings = definition.bandit().unwrap();
        let revision = equal_revision(&definition, settings, 3, Action::Start, 0, "me".into());
        let row = revision.to_row("bandit").unwrap();
        assert_eq!((row.revision, row.experiment_id.as_str()), (3, "bandit"));
        assert_eq!(WeightsRevision::from_row(&row).unwrap(), revision);
        assert!(revision.fits(&definition));
        let mut renamed = definition.clone();
        renamed.groups[1].name = "other".into();
        assert!(!revision.fits(&renamed));
        assert_eq!(revision.promoted(), None);
        assert_ne!(draw_seed("bandit", 3), draw_seed("bandit", 4));
        assert_ne!(draw_seed("bandit", 3), draw_seed("other", 3));
    }
}

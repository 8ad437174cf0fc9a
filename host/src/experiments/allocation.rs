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
//! It succeeds when the user's next metric event (after the exposure, and before any later
//! trial of theirs) is stored within `attribution_secs` of the exposure. So a heavy user
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
    /// The seed of the draws (from the experiment's seed and the revision number).
    pub seed: u64,
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

    /// Whether it is for `definition`'s groups (same names, same order).
    pub fn fits(&self, definition: &Experiment) -> bool {
        self.groups.len() == definition.groups.len()
            && self
                .groups
                .iter()
                .zip(&definition.groups)
                .all(|(name, group)| *name == group.name)
            && self.weights.len() == self.groups.len()
    }

    /// The promoted group's index, once the bandit is over.
    pub fn promoted(&self) -> Option<usize> {
        if self.state != BanditState::Promoted {
            return None;
        }
        self.weights.iter().position(|&w| w >= 1.0)
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

/// The weight settings of a bandit.
pub fn weight_settings(settings: &BanditSettings) -> WeightSettings {
    WeightSettings {
        burn_in_users: settings.burn_in_users,
        min_weight: settings.min_weight,
        top_two: settings.top_two,
        null_prior: settings.null_prior,
    }
}

/// Whether an event is a success under `metric`.
fn is_success(metric: Metric, kind: EventKind, value: f32) -> bool {
    match metric {
        Metric::Click => kind == EventKind::Click,
        Metric::PositiveRating { threshold } => kind == EventKind::Rate && value >= threshold,
        Metric::AnyInteraction => true,
    }
}

/// Counts a bandit's trials and successes from its exposures and the events after them
/// (see the module doc). Feed it events in id order.
pub struct TrialCounter {
    metric: Metric,
    attribution_ms: u64,
    /// Per trial: its group and whether it succeeded.
    trials: Vec<(usize, bool)>,
    /// Per user: their trials' (after_event, started at ms, trial index), oldest first.
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
        let mut started: std::collections::HashSet<(&str, u64)> = Default::default();
        let mut first_after = i64::MAX;
        for exposure in exposures {
            if exposure.weights_revision < counted_from {
                continue;
            }
            let Some(group) = definition.group_index(&exposure.group_name) else {
                continue;
            };
            if !started.insert((&exposure.user_id, exposure.weights_revision)) {
                continue;
            }
            by_user.entry(exposure.user_id.clone()).or_default().push((
                exposure.after_event,
                exposure.at_ms,
                trials.len(),
            ));
            trials.push((group, false));
            first_after = first_after.min(exposure.after_event);
        }
        for list in by_user.values_mut() {
            list.sort_by_key(|&(after, at, _)| (after, at));
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

    /// Takes one event (`timestamp` in Unix seconds) into account.
    pub fn event(&mut self, id: i64, user: &str, kind: EventKind, value: f32, timestamp: u64) {
        if !is_success(self.metric, kind, value) {
            return;
        }
        let Some(list) = self.by_user.get(user) else {
            return;
        };
        // The user's latest trial started before the event.
        let before = list.partition_point(|&(after, _, _)| after < id);
        let Some(&(_, started_ms, trial)) = before.checked_sub(1).and_then(|i| list.get(i)) else {
            return;
        };
        // Event timestamps are whole seconds: the window ends at the end of its last second.
        let deadline_secs = started_ms.saturating_add(self.attribution_ms) / 1000;
        if timestamp <= deadline_secs {
            self.trials[trial].1 = true;
        }
    }

    /// Per group: trials and successes.
    pub fn finish(self) -> Vec<TrialCounts> {
        let mut counts = vec![TrialCounts::default(); self.groups];
        for (group, success) in self.trials {
            counts[group].trials += 1;
            counts[group].successes += u64::from(success);
        }
        counts
    }
}

/// Counts `definition`'s trials from revision `counted_from` on, reading its exposures and
/// the events after them. Blocking.
pub fn count_trials(
    store: &Store,
    definition: &Experiment,
    settings: &BanditSettings,
    counted_from: u64,
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
    Ok(counter.finish())
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
        weights: equal.clone(),
        counts: vec![TrialCounts::default(); arms],
        best_probability: equal,
        equal_probability: settings.null_prior,
        burned_in: false,
        seed: draw_seed(&definition.seed, revision),
        counted_from,
        by,
        note: None,
    }
}

/// What the learner should write for `definition` now, given its newest stored revision
/// (`None`: nothing due).
fn due_revision(
    store: &Store,
    definition: &Experiment,
    settings: &BanditSettings,
    newest: Option<&WeightsRevision>,
    now_ms: u64,
    by: &str,
) -> StoreResult<Option<WeightsRevision>> {
    let next = newest.map_or(1, |r| r.revision + 1);
    let Some(newest) = newest.filter(|r| r.fits(definition)) else {
        // The first revision counts every exposure so far; one after a change of groups
        // counts from itself on.
        let counted_from = if newest.is_none() { 0 } else { next };
        return Ok(Some(equal_revision(
            definition,
            settings,
            next,
            Action::Start,
            counted_from,
            format!("learner {by}"),
        )));
    };
    let period_ms = settings.period_secs.saturating_mul(1000);
    if newest.state != BanditState::Learning || now_ms < newest.at_ms.saturating_add(period_ms) {
        return Ok(None);
    }
    let counts = count_trials(store, definition, settings, newest.counted_from)?;
    let seed = draw_seed(&definition.seed, next);
    let arm_counts: Vec<ArmCounts> = counts.iter().copied().map(ArmCounts::from).collect();
    let drawn = thompson_weights(&arm_counts, &weight_settings(settings), seed);
    Ok(Some(WeightsRevision {
        revision: next,
        at_ms: now_ms,
        action: Action::Update,
        state: BanditState::Learning,
        groups: definition.group_names(),
        weights: drawn.weights,
        counts,
        best_probability: drawn.best_probability,
        equal_probability: drawn.equal_probability,
        burned_in: drawn.burned_in,
        seed,
        counted_from: newest.counted_from,
        by: format!("learner {by}"),
        note: None,
    }))
}

/// The learner's pass over the running bandits: writes each one's due revision, then puts
/// the newest revisions in force here. Blocking.
pub fn run_due_updates(store: &Store, experiments: &Experiments, node: &str) -> StoreResult<usize> {
    let set = experiments.current();
    let newest: HashMap<String, WeightsRevision> = store
        .latest_weights_revisions()?
        .iter()
        .map(|row| Ok((row.experiment_id.clone(), WeightsRevision::from_row(row)?)))
        .collect::<StoreResult<_>>()?;
    let mut written = 0;
    let running = set
        .experiments
        .iter()
        .filter(|e| e.definition.bandit().is_some() && e.definition.status == Status::Running);
    let mut flushed = false;
    for experiment in running {
        let definition = &experiment.definition;
        let Some(settings) = definition.bandit() else {
            continue;
        };
        if !flushed {
            // Queued exposures first: the period just ended must be counted whole.
            experiments.flush();
            flushed = true;
        }
        let due = due_revision(
            store,
            definition,
            settings,
            newest.get(&definition.id),
            unix_now_ms(),
            node,
        )?;
        if let Some(revision) = due
            && store.append_weights_revision(&revision.to_row(&definition.id)?)?
        {
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
        let newest = store
            .weights_revisions(&definition.id)?
            .last()
            .map(WeightsRevision::from_row)
            .transpose()?
            .filter(|r| r.fits(definition));
        let next = newest.as_ref().map_or(1, |r| r.revision + 1);
        let base = newest.clone().unwrap_or_else(|| {
            equal_revision(definition, settings, 0, Action::Start, 0, by.clone())
        });
        let state = base.state;
        let mut revision = WeightsRevision {
            revision: next,
            at_ms: unix_now_ms(),
            seed: draw_seed(&definition.seed, next),
            by: by.clone(),
            note: note.clone(),
            ..base
        };
        match action {
            OperatorAction::Freeze => {
                if state != BanditState::Learning {
                    return Err(ActionError::Conflict(format!(
                        "the weights are {state:?}, not learning: nothing to freeze"
                    )));
                }
                revision.action = Action::Freeze;
                revision.state = BanditState::Frozen;
            }
            OperatorAction::Resume => {
                if state != BanditState::Frozen {
                    return Err(ActionError::Conflict(format!(
                        "the weights are {state:?}, not frozen: nothing to resume"
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
                revision.weights = (0..definition.groups.len())
                    .map(|i| if i == index { 1.0 } else { 0.0 })
                    .collect();
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
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
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
        assert_eq!(
            counter.finish(),
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

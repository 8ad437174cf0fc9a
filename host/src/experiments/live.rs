//! The experiments in force, who is in which arm, and reloading them without a restart.
//!
//! The validated set is swapped atomically ([`arc_swap`]): a request reads one consistent set
//! and never waits for a reload, and a reload that fails validation changes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use serde::Serialize;
use thiserror::Error;

use super::allocation::WeightsRevision;
use super::assignment::{bucket_ranges, choose_variation, hash, in_namespace};
use super::definition::{DefinitionError, Experiment, Group, Status, load_dir, load_files};
use super::exposures::{ExposureLog, ExposureLogCounts, PendingExposure};
use super::results::{Results, Tally};
use super::results_cache::ResultsCache;
use crate::store::{Database, StickyRow, Store, StoreError, unix_now_ms};

/// Published files as the parser takes them (their names stand for paths in errors).
fn as_paths(files: &[(String, String)]) -> Vec<(PathBuf, String)> {
    files
        .iter()
        .map(|(name, text)| (PathBuf::from(name), text.clone()))
        .collect()
}

/// GrowthBook's hash version used for assignment.
const HASH_VERSION: u32 = 2;

/// An experiment in force, with its groups' hash ranges.
#[derive(Debug)]
pub struct LiveExperiment {
    pub definition: Experiment,
    /// Each group's `[start, end)` range of the hash, at the experiment's coverage.
    pub ranges: Vec<(f64, f64)>,
    /// The published revision it came with (cluster mode); `None` from a directory.
    pub revision: Option<u64>,
    /// A bandit's weights revision in force (`None`: the definition's weights, which for a
    /// bandit are equal until its first revision is stored).
    pub weights: Option<Arc<WeightsRevision>>,
}

impl LiveExperiment {
    fn new(
        definition: Experiment,
        revision: Option<u64>,
        weights: Option<Arc<WeightsRevision>>,
    ) -> Self {
        // Only a revision for these very groups counts (the learner starts a new one when
        // the groups change).
        let weights = weights.filter(|w| definition.bandit().is_some() && w.fits(&definition));
        let shares: Vec<f64> = match &weights {
            Some(revision) => revision.weights.clone(),
            None => definition.groups.iter().map(|g| g.weight).collect(),
        };
        let ranges = bucket_ranges(shares.len() as i64, definition.coverage, Some(&shares));
        Self {
            definition,
            ranges,
            revision,
            weights,
        }
    }

    /// The weights revision exposures are served under now (0: none).
    pub fn weights_revision(&self) -> u64 {
        self.weights.as_ref().map_or(0, |w| w.revision)
    }

    /// The group every user gets once a bandit's arm was promoted.
    pub fn promoted(&self) -> Option<usize> {
        self.weights.as_ref().and_then(|w| w.promoted())
    }

    /// Each group's share of new users now (the weights revision's, else the definition's).
    pub fn weights_in_force(&self) -> Vec<f64> {
        match &self.weights {
            Some(revision) => revision.weights.clone(),
            None => self.definition.groups.iter().map(|g| g.weight).collect(),
        }
    }
}

/// Why a user is or is not in an experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// In the group with this index, by the hash.
    Hashed(usize),
    /// In the group with this index, kept from an earlier assignment (sticky experiments).
    Kept(usize),
    /// In the group with this index, promoted by an operator to serve everyone (bandits).
    Promoted(usize),
    NotRunning,
    OutsideNamespace,
    OutsideCoverage,
}

impl Placement {
    pub fn group(self) -> Option<usize> {
        match self {
            Self::Hashed(group) | Self::Kept(group) | Self::Promoted(group) => Some(group),
            _ => None,
        }
    }

    /// Why the user is not in the experiment (`None` when they are).
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Self::Hashed(_) | Self::Kept(_) | Self::Promoted(_) => None,
            Self::NotRunning => Some("not_running"),
            Self::OutsideNamespace => Some("outside_namespace"),
            Self::OutsideCoverage => Some("outside_coverage"),
        }
    }
}

/// Where one user stands in one experiment.
#[derive(Clone, Debug)]
pub struct Decision {
    pub experiment: Arc<LiveExperiment>,
    /// GrowthBook's hash of the user under the experiment's seed, in [0, 1).
    pub hash: f64,
    pub placement: Placement,
}

/// A user placed in a group: what serves them.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub experiment: Arc<LiveExperiment>,
    pub group: usize,
}

impl Assignment {
    pub fn group(&self) -> &Group {
        &self.experiment.definition.groups[self.group]
    }
}

#[derive(Debug, Error)]
pub enum ExperimentError {
    #[error("unknown experiment `{requested}`; experiments in force: {}", in_force.join(", "))]
    Unknown {
        requested: String,
        in_force: Vec<String>,
    },
    #[error("experiments are off: the server was started without an experiments directory")]
    Disabled,
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A validated set of experiments, highest priority first (ties by id).
#[derive(Debug, Default)]
pub struct ExperimentSet {
    pub experiments: Vec<Arc<LiveExperiment>>,
    pub loaded_at_ms: u64,
    /// The published revision this set is (cluster mode), `None` when it came from the
    /// experiments directory.
    pub revision: Option<u64>,
}

/// The newest weights revision of each bandit: experiment id -> revision.
type WeightsMap = HashMap<String, Arc<WeightsRevision>>;

impl ExperimentSet {
    fn new(definitions: Vec<Experiment>, revision: Option<u64>, weights: &WeightsMap) -> Self {
        let mut experiments: Vec<Arc<LiveExperiment>> = definitions
            .into_iter()
            .map(|d| {
                let w = weights.get(&d.id).cloned();
                Arc::new(LiveExperiment::new(d, revision, w))
            })
            .collect();
        experiments.sort_by(|a, b| {
            (b.definition.priority, &a.definition.id)
                .cmp(&(a.definition.priority, &b.definition.id))
        });
        Self {
            experiments,
            loaded_at_ms: unix_now_ms(),
            revision,
        }
    }

    /// The experiment `id`, or an error naming the ones in force.
    pub fn get(&self, id: &str) -> Result<&Arc<LiveExperiment>, ExperimentError> {
        self.experiments
            .iter()
            .find(|e| e.definition.id == id)
            .ok_or_else(|| ExperimentError::Unknown {
                requested: id.to_string(),
                in_force: self
                    .experiments
                    .iter()
                    .map(|e| e.definition.id.clone())
                    .collect(),
            })
    }
}

/// The outcome of the latest reload attempt.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ReloadStatus {
    /// Successful loads since start (the first load counts).
    pub reloads: u64,
    pub loaded_at_ms: u64,
    /// The last attempt's error, while the previous set stays in force; cleared by a
    /// successful reload.
    pub error: Option<ReloadFailure>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ReloadFailure {
    pub at_ms: u64,
    pub message: String,
}

/// The user's stored group in each sticky experiment: experiment id -> user id -> entry.
type StickyMap = HashMap<String, HashMap<String, StickyEntry>>;

#[derive(Clone, Debug)]
struct StickyEntry {
    group: String,
    bucket_version: u32,
}

/// The names of the plugins serving now (they change when plugins are reloaded).
pub type PluginNames = Box<dyn Fn() -> Vec<String> + Send + Sync>;

/// Experiments service: the set in force, assignment, exposures, results.
pub struct Experiments {
    dir: Option<PathBuf>,
    plugins: PluginNames,
    current: ArcSwap<ExperimentSet>,
    status: Mutex<ReloadStatus>,
    sticky: RwLock<StickyMap>,
    /// The newest weights revision of each bandit, as read from the database.
    weights: RwLock<WeightsMap>,
    /// The newest published revision seen in the database (cluster mode).
    newest_published: std::sync::atomic::AtomicU64,
    /// When the newest sticky assignment taken in from the store was stored (its clock).
    sticky_seen_ms: std::sync::atomic::AtomicU64,
    log: ExposureLog,
    /// A connection of its own for results: their scans never wait for, nor hold up, the
    /// server's other reads and writes.
    results_store: Store,
    results: ResultsCache,
}

impl Experiments {
    /// Loads the experiments of `dir` (none when `None`), validating groups against the
    /// names `plugins` gives. A bad file stops start-up: there is no earlier set to fall back
    /// to.
    pub fn open(
        dir: Option<PathBuf>,
        plugins: PluginNames,
        store: Arc<Store>,
        database: &Database,
    ) -> Result<Self, ExperimentError> {
        let definitions = match &dir {
            Some(dir) => load_dir(dir, &plugins())?,
            None => Vec::new(),
        };
        let mut sticky = StickyMap::new();
        let (rows, sticky_seen_ms) = store.sticky_assignments(0)?;
        for row in rows {
            sticky.entry(row.experiment_id).or_default().insert(
                row.user_id,
                StickyEntry {
                    group: row.group_name,
                    bucket_version: row.bucket_version,
                },
            );
        }
        let weights = read_weights(&store)?;
        let set = ExperimentSet::new(definitions, None, &weights);
        let status = ReloadStatus {
            reloads: 1,
            loaded_at_ms: set.loaded_at_ms,
            error: None,
        };
        Ok(Self {
            dir,
            plugins,
            current: ArcSwap::from_pointee(set),
            status: Mutex::new(status),
            sticky: RwLock::new(sticky),
            weights: RwLock::new(weights),
            sticky_seen_ms: sticky_seen_ms.into(),
            newest_published: 0.into(),
            log: ExposureLog::start(database)?,
            results_store: Store::connect(database)?,
            results: ResultsCache::default(),
        })
    }

    /// The watched directory, if experiments are on.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<ExperimentSet> {
        self.current.load_full()
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the directory. On success the new set replaces the old one at once; on
    /// failure the old set stays in force and the error is kept for the API.
    pub fn reload(&self) -> Result<Arc<ExperimentSet>, ExperimentError> {
        let dir = self.dir.as_ref().ok_or(ExperimentError::Disabled)?;
        // One reload at a time, so an older read of the directory never replaces a newer one.
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current.load_full();
        if let Some(revision) = current.revision {
            // A cluster's experiments are its published revisions; this node's folder does
            // not override them.
            tracing::warn!(
                revision,
                "experiments are published in the database; the directory is not read"
            );
            return Ok(current);
        }
        match load_dir(dir, &(self.plugins)()) {
            Ok(definitions) => {
                let set = Arc::new(ExperimentSet::new(definitions, None, &self.weights_map()));
                self.current.store(set.clone());
                status.reloads += 1;
                status.loaded_at_ms = set.loaded_at_ms;
                status.error = None;
                tracing::info!(
                    experiments = set.experiments.len(),
                    "reloaded the experiments"
                );
                Ok(set)
            }
            Err(error) => {
                tracing::warn!(%error, "experiment files rejected; the previous set stays in force");
                status.error = Some(ReloadFailure {
                    at_ms: unix_now_ms(),
                    message: error.to_string(),
                });
                Err(error.into())
            }
        }
    }

    /// Validates experiment files as a revision would be (all or nothing), without applying
    /// them.
    pub fn validate(&self, files: &[(String, String)]) -> Result<usize, ExperimentError> {
        Ok(load_files(&as_paths(files), &(self.plugins)())?.len())
    }

    /// Notes the newest revision published in the database (what `/health/ready` waits for).
    pub fn saw_published(&self, revision: u64) {
        self.newest_published
            .fetch_max(revision, std::sync::atomic::Ordering::Relaxed);
    }

    /// The newest revision seen published in the database (0: none).
    pub fn newest_published(&self) -> u64 {
        self.newest_published
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Publishes `files` as the cluster's next experiment revision and puts it in force here:
    /// validated whole first (one invalid file and nothing is published).
    pub fn publish(
        &self,
        store: &Store,
        files: &[(String, String)],
    ) -> Result<Arc<ExperimentSet>, ExperimentError> {
        self.validate(files)?;
        let revision = store.publish_experiments(files, false)?.unwrap_or(0);
        self.apply_revision(revision, files)
    }

    /// Publishes this node's experiments directory as the cluster's next revision, unless
    /// the newest revision holds the same files (every node watching the same folder, a
    /// Kubernetes ConfigMap mounted on each, sees the same edit). `None` when unchanged.
    pub fn publish_dir(
        &self,
        store: &Store,
    ) -> Result<Option<Arc<ExperimentSet>>, ExperimentError> {
        let dir = self.dir.as_ref().ok_or(ExperimentError::Disabled)?;
        let outcome = super::definition::dir_files(dir)
            .map_err(ExperimentError::from)
            .and_then(|files| {
                self.validate(&files)?;
                match store.publish_experiments(&files, true)? {
                    Some(revision) => self.apply_revision(revision, &files).map(Some),
                    None => Ok(None),
                }
            });
        // Kept for the API, as a rejected folder is on a single node.
        if let Err(error) = &outcome {
            self.status.lock().unwrap_or_else(|p| p.into_inner()).error = Some(ReloadFailure {
                at_ms: unix_now_ms(),
                message: error.to_string(),
            });
        }
        outcome
    }

    /// Puts published revision `revision` in force, unless a revision as new is already in
    /// force. On failure the set in force stays (and the error is kept for the API).
    pub fn apply_revision(
        &self,
        revision: u64,
        files: &[(String, String)],
    ) -> Result<Arc<ExperimentSet>, ExperimentError> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current.load_full();
        if current.revision.is_some_and(|applied| applied >= revision) {
            return Ok(current);
        }
        match load_files(&as_paths(files), &(self.plugins)()) {
            Ok(definitions) => {
                let set = Arc::new(ExperimentSet::new(
                    definitions,
                    Some(revision),
                    &self.weights_map(),
                ));
                self.current.store(set.clone());
                status.reloads += 1;
                status.loaded_at_ms = set.loaded_at_ms;
                status.error = None;
                tracing::info!(
                    revision,
                    experiments = set.experiments.len(),
                    "put a published experiment revision in force"
                );
                Ok(set)
            }
            Err(error) => {
                tracing::warn!(revision, %error, "a published experiment revision is invalid here; the set in force stays");
                status.error = Some(ReloadFailure {
                    at_ms: unix_now_ms(),
                    message: format!("revision {revision}: {error}"),
                });
                Err(error.into())
            }
        }
    }

    /// Where `user_id` stands in `experiment`.
    pub fn decide(&self, experiment: &Arc<LiveExperiment>, user_id: &str) -> Decision {
        let definition = &experiment.definition;
        let hash = hash(&definition.seed, user_id, HASH_VERSION).unwrap_or(0.0);
        let decision = |placement| Decision {
            experiment: experiment.clone(),
            hash,
            placement,
        };
        if definition.status != Status::Running {
            return decision(Placement::NotRunning);
        }
        let outside_namespace = |ns: &super::definition::Namespace| {
            !in_namespace(user_id, (&ns.name, ns.start, ns.end))
        };
        if let Some(group) = experiment.promoted() {
            // The bandit is over: everyone in the experiment gets the promoted arm. A user
            // placed before is in it, wherever the hash puts them now; a new user is placed
            // as by any weights (the promoted arm's range is the whole coverage).
            if definition.sticky && self.kept_group(definition, user_id).is_some() {
                return decision(Placement::Promoted(group));
            }
            if definition.namespace.as_ref().is_some_and(outside_namespace) {
                return decision(Placement::OutsideNamespace);
            }
            return match choose_variation(hash, &bucket_ranges(1, definition.coverage, None)) {
                Some(_) => decision(Placement::Promoted(group)),
                None => decision(Placement::OutsideCoverage),
            };
        }
        if definition.sticky
            && let Some(group) = self.kept_group(definition, user_id)
        {
            return decision(Placement::Kept(group));
        }
        if definition.namespace.as_ref().is_some_and(outside_namespace) {
            return decision(Placement::OutsideNamespace);
        }
        match choose_variation(hash, &experiment.ranges) {
            Some(group) => decision(Placement::Hashed(group)),
            None => decision(Placement::OutsideCoverage),
        }
    }

    /// Where `user_id` stands: in `experiment_id` when given (placed or not), else in the
    /// highest-priority running experiment that includes the user (`None`: no such one).
    pub fn decision(
        &self,
        user_id: &str,
        experiment_id: Option<&str>,
    ) -> Result<Option<Decision>, ExperimentError> {
        let set = self.current.load();
        Ok(match experiment_id {
            Some(id) => Some(self.decide(set.get(id)?, user_id)),
            None => set
                .experiments
                .iter()
                .filter(|e| e.definition.status == Status::Running)
                .map(|e| self.decide(e, user_id))
                .find(|d| d.placement.group().is_some()),
        })
    }

    /// The group serving `user_id` (see [`Self::decision`]); `None`: no experiment.
    pub fn assign(
        &self,
        user_id: &str,
        experiment_id: Option<&str>,
    ) -> Result<Option<Assignment>, ExperimentError> {
        Ok(self.decision(user_id, experiment_id)?.and_then(|d| {
            d.placement.group().map(|group| Assignment {
                experiment: d.experiment,
                group,
            })
        }))
    }

    /// Looks up an experiment of the set in force.
    pub fn get(&self, id: &str) -> Result<Arc<LiveExperiment>, ExperimentError> {
        self.current.load().get(id).cloned()
    }

    /// Logs that `assignment`'s plugin served `user_id` (model `model_version`, with
    /// `after_event` the newest event stored then), and keeps a sticky user's group.
    pub fn record_exposure(
        &self,
        assignment: &Assignment,
        user_id: &str,
        model_version: u64,
        after_event: i64,
    ) {
        let definition = &assignment.experiment.definition;
        let group = assignment.group();
        let now = unix_now_ms();
        // A promoted arm is not kept: should the bandit be reset, users go back to theirs.
        let keep = definition.sticky && assignment.experiment.promoted().is_none();
        let sticky = keep
            .then(|| self.keep_group(definition, user_id, &group.name, now))
            .flatten();
        self.log.record(
            PendingExposure {
                experiment: assignment.experiment.clone(),
                group: assignment.group,
                user_id: user_id.to_string(),
                model_version,
                after_event,
                at_ms: now,
            },
            sticky,
        );
    }

    /// Per-group outcomes of `experiment`, at most `max_age_ms` old ([`ResultsCache`]):
    /// queued exposures are stored first, then the experiment's exposures and the events
    /// after them are read. Blocking.
    pub fn results(&self, experiment: &LiveExperiment) -> Result<Arc<Results>, ExperimentError> {
        let definition = &experiment.definition;
        self.results.get(definition, || {
            self.log.flush();
            let exposures = self.results_store.exposures_of(&definition.id)?;
            // The sample ratio is tested against the weights each user was placed with.
            let weights_by_revision = if definition.bandit().is_some() {
                self.weights_history(&definition.id, None)?
                    .into_iter()
                    .filter(|r| r.fits(definition))
                    .map(|r| (r.revision, r.weights))
                    .collect()
            } else {
                HashMap::new()
            };
            let mut tally = Tally::new(definition, exposures, weights_by_revision);
            let after = tally.events_after();
            if after < i64::MAX {
                self.results_store
                    .for_each_event_after(after, &mut |id, user, kind, value, _| {
                        tally.event(id, user, kind, value)
                    })?;
            }
            let mut results = tally.finish();
            // Each declared group's share of new users now (a bandit's latest weights).
            for (group, weight) in results.groups.iter_mut().zip(experiment.weights_in_force()) {
                group.weight = Some(weight);
            }
            Ok(results)
        })
    }

    /// Waits until every queued exposure is stored (shutdown).
    pub fn flush(&self) {
        self.log.flush();
    }

    /// Exposures since start: stored, failed, dropped.
    pub fn exposure_log_counts(&self) -> ExposureLogCounts {
        self.log.counts()
    }

    /// Takes in the sticky assignments other nodes of a cluster stored since the last look,
    /// so that a user keeps their group whichever node serves them next (within about a
    /// second of the exposure being stored). Polled by the time the database stored them,
    /// read again from a while before the newest one seen (a transaction may commit a
    /// little after its rows' time); taking a row in twice changes nothing. Blocking.
    pub fn follow_sticky(&self, store: &Store) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        /// How far back each look reads again.
        const OVERLAP_MS: u64 = 10_000;
        let seen = self.sticky_seen_ms.load(Ordering::Relaxed);
        let (rows, newest) = store.sticky_assignments(seen.saturating_sub(OVERLAP_MS))?;
        // A kept group of a newer bucket version stays; otherwise the stored one wins, as
        // the database's last write did.
        let differs = |sticky: &StickyMap, row: &StickyRow| {
            sticky
                .get(&row.experiment_id)
                .and_then(|users| users.get(&row.user_id))
                .is_none_or(|entry| {
                    entry.bucket_version < row.bucket_version
                        || (entry.bucket_version == row.bucket_version
                            && entry.group != row.group_name)
                })
        };
        let changes: Vec<StickyRow> = {
            let sticky = self.sticky.read().unwrap_or_else(|p| p.into_inner());
            rows.into_iter()
                .filter(|row| differs(&sticky, row))
                .collect()
        };
        if !changes.is_empty() {
            let mut sticky = self.sticky.write().unwrap_or_else(|p| p.into_inner());
            for row in changes {
                sticky.entry(row.experiment_id).or_default().insert(
                    row.user_id,
                    StickyEntry {
                        group: row.group_name,
                        bucket_version: row.bucket_version,
                    },
                );
            }
        }
        self.sticky_seen_ms.fetch_max(newest, Ordering::Relaxed);
        Ok(())
    }

    /// The newest weights revision of each bandit, as last read.
    fn weights_map(&self) -> WeightsMap {
        self.weights
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The newest `newest` weights revisions of `experiment_id` (all for `None`), oldest
    /// first (the history). Blocking.
    pub fn weights_history(
        &self,
        experiment_id: &str,
        newest: Option<u64>,
    ) -> Result<Vec<WeightsRevision>, StoreError> {
        super::allocation::readable_revisions(&self.results_store, experiment_id, newest)
    }

    /// Puts the newest stored weights revision of each bandit in force, where it is newer
    /// than the one in force: the set is rebuilt with the new hash ranges and swapped in one
    /// step. Every node calls it (the learner after writing, the others each second), so a
    /// new revision serves everywhere within about a second. Blocking.
    pub fn follow_weights(&self, store: &Store) -> Result<(), StoreError> {
        let newest = read_weights(store)?;
        let changed = {
            let held = self.weights.read().unwrap_or_else(|p| p.into_inner());
            newest
                .iter()
                .any(|(id, revision)| held.get(id).is_none_or(|h| h.revision < revision.revision))
        };
        if !changed {
            return Ok(());
        }
        // As a reload does: one rebuild at a time, so an older one never replaces a newer.
        let _status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let weights = {
            let mut held = self.weights.write().unwrap_or_else(|p| p.into_inner());
            for (id, revision) in newest {
                if held.get(&id).is_none_or(|h| h.revision < revision.revision) {
                    held.insert(id, revision);
                }
            }
            held.clone()
        };
        let current = self.current.load_full();
        let definitions = current
            .experiments
            .iter()
            .map(|e| e.definition.clone())
            .collect();
        let mut set = ExperimentSet::new(definitions, current.revision, &weights);
        set.loaded_at_ms = current.loaded_at_ms;
        self.current.store(Arc::new(set));
        Ok(())
    }

    fn kept_group(&self, definition: &Experiment, user_id: &str) -> Option<usize> {
        let sticky = self.sticky.read().unwrap_or_else(|p| p.into_inner());
        let entry = sticky.get(&definition.id)?.get(user_id)?;
        if entry.bucket_version != definition.bucket_version {
            return None;
        }
        definition.group_index(&entry.group)
    }

    /// Stores `group` as the user's kept group; the row to persist when it changed.
    fn keep_group(
        &self,
        definition: &Experiment,
        user_id: &str,
        group: &str,
        now: u64,
    ) -> Option<StickyRow> {
        let unchanged = |entry: &StickyEntry| {
            entry.group == group && entry.bucket_version == definition.bucket_version
        };
        {
            // The common case, a user already kept in this group, needs only the read lock.
            let sticky = self.sticky.read().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = sticky.get(&definition.id).and_then(|u| u.get(user_id))
                && unchanged(entry)
            {
                return None;
            }
        }
        let mut sticky = self.sticky.write().unwrap_or_else(|p| p.into_inner());
        let users = sticky.entry(definition.id.clone()).or_default();
        if users.get(user_id).is_some_and(unchanged) {
            return None;
        }
        users.insert(
            user_id.to_string(),
            StickyEntry {
                group: group.to_string(),
                bucket_version: definition.bucket_version,
            },
        );
        Some(StickyRow {
            experiment_id: definition.id.clone(),
            user_id: user_id.to_string(),
            group_name: group.to_string(),
            bucket_version: definition.bucket_version,
            assigned_at_ms: now,
        })
    }
}

/// The newest weights revision of each bandit in `store`.
fn read_weights(store: &Store) -> Result<WeightsMap, StoreError> {
    Ok(super::allocation::newest_revisions(store)?
        .readable
        .into_iter()
        .map(|(id, revision)| (id, Arc::new(revision)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::results::sample_ratio;

    /// id "model_comparison", 50/50 collaborative (control) vs hybrid (treatment).
    use crate::experiments::definition::tests::VALID as TWO_ARMS;

    struct Fixture {
        dir: tempfile::TempDir,
        experiments: Experiments,
    }

    fn open_with(files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let experiments_dir = dir.path().join("experiments");
        std::fs::create_dir(&experiments_dir).unwrap();
        for (name, text) in files {
            std::fs::write(experiments_dir.join(name), text).unwrap();
        }
        let database = dir.path().join("db");
        let store = Arc::new(Store::open(&database).unwrap());
        let plugins = || vec!["collaborative".into(), "hybrid".into(), "popularity".into()];
        let experiments = Experiments::open(
            Some(experiments_dir),
            Box::new(plugins),
            store,
            &Database::Sqlite(database),
        )
        .unwrap();
        Fixture { dir, experiments }
    }

    impl Fixture {
        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.dir.path().join("experiments").join(name), text).unwrap();
        }

        fn group(&self, user: &str) -> Option<String> {
            self.experiments
                .assign(user, None)
                .unwrap()
                .map(|a| a.group().name.clone())
        }
    }

    #[test]
    fn a_full_exposure_queue_drops_and_counts_exposures_but_keeps_sticky_groups() {
        let sticky = TWO_ARMS.replace(
            "status = \"running\"",
            "status = \"running\"\nsticky = true",
        );
        let fixture = open_with(&[("cmp.toml", &sticky)]);
        // Another connection holds the write lock: the log's writer cannot store anything.
        let blocker = rusqlite::Connection::open(fixture.dir.path().join("db")).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let total = crate::experiments::exposures::QUEUE_CAPACITY + 20_000;
        let mut groups = HashMap::new();
        for n in 0..total {
            let user = format!("u{n}");
            let assignment = fixture.experiments.assign(&user, None).unwrap().unwrap();
            groups.insert(user.clone(), assignment.group().name.clone());
            fixture
                .experiments
                .record_exposure(&assignment, &user, 1, n as i64);
        }
        let while_stuck = fixture.experiments.exposure_log_counts();
        // At most one batch (10,000) in the writer's hands beyond the queue.
        assert!(while_stuck.dropped >= 10_000, "{while_stuck:?}");
        blocker.execute_batch("COMMIT").unwrap();
        fixture.experiments.flush();
        let counts = fixture.experiments.exposure_log_counts();
        assert_eq!(
            counts.stored + counts.failed + counts.dropped,
            total as u64,
            "{counts:?}"
        );
        assert_eq!(counts.dropped, while_stuck.dropped);
        // Every user's sticky group was stored (the flush included those set aside), dropped
        // exposure or not.
        let store = Store::open(&fixture.dir.path().join("db")).unwrap();
        let stored: HashMap<String, String> = store
            .sticky_assignments(0)
            .map(|(rows, _)| rows)
            .unwrap()
            .into_iter()
            .map(|row| (row.user_id, row.group_name))
            .collect();
        assert_eq!(stored, groups);
    }

    #[test]
    fn shares_of_100000_users_follow_the_weights_without_srm() {
        for weights in [[0.5, 0.5], [0.2, 0.8]] {
            let text = TWO_ARMS
                .replacen("weight = 0.5", &format!("weight = {}", weights[0]), 1)
                .replacen("weight = 0.5", &format!("weight = {}", weights[1]), 1);
            let fixture = open_with(&[("cmp.toml", &text)]);
            let mut counts = [0u64; 2];
            for user in 0..100_000 {
                let assignment = fixture
                    .experiments
                    .assign(&format!("user-{user}"), None)
                    .unwrap()
                    .unwrap();
                counts[assignment.group] += 1;
            }
            for (count, weight) in counts.iter().zip(weights) {
                let share = *count as f64 / 100_000.0;
                assert!((share - weight).abs() < 0.01, "{counts:?} vs {weights:?}");
            }
            let srm = sample_ratio(&counts, &weights).unwrap();
            assert!(!srm.flagged, "{srm:?}");
        }
    }

    #[test]
    fn assignment_is_growthbooks() {
        let fixture = open_with(&[("cmp.toml", TWO_ARMS)]);
        for user in ["1", "42", "alice", "ünïcødé"] {
            let expected_hash = hash("model_comparison", user, 2).unwrap();
            let decision = fixture
                .experiments
                .decide(&fixture.experiments.get("model_comparison").unwrap(), user);
            assert_eq!(decision.hash, expected_hash);
            let expected = if expected_hash < 0.5 {
                "control"
            } else {
                "treatment"
            };
            assert_eq!(fixture.group(user).as_deref(), Some(expected));
        }
    }

    #[test]
    fn coverage_namespace_status_and_priority() {
        let low = TWO_ARMS.replace("id = \"model_comparison\"", "id = \"low\"");
        let high = TWO_ARMS
            .replace(
                "id = \"model_comparison\"",
                "id = \"high\"\npriority = 5\ncoverage = 0.0",
            )
            .replace("plugin = \"hybrid\"", "plugin = \"popularity\"");
        let fixture = open_with(&[("low.toml", &low), ("high.toml", &high)]);
        // `high` wins on priority but covers nobody, so everyone falls through to `low`.
        let assignment = fixture.experiments.assign("u1", None).unwrap().unwrap();
        assert_eq!(assignment.experiment.definition.id, "low");
        let decision = fixture
            .experiments
            .decide(&fixture.experiments.get("high").unwrap(), "u1");
        assert_eq!(decision.placement, Placement::OutsideCoverage);
        assert!(
            fixture
                .experiments
                .assign("u1", Some("high"))
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            fixture.experiments.assign("u1", Some("nope")),
            Err(ExperimentError::Unknown { .. })
        ));

        // Two experiments splitting one namespace never share a user.
        let half = |id: &str, range: &str| {
            format!(
                "{}\n[namespace]\nname = \"ranking\"\nrange = {range}\n",
                TWO_ARMS.replace("id = \"model_comparison\"", &format!("id = \"{id}\""))
            )
        };
        let fixture = open_with(&[
            ("a.toml", &half("a", "[0.0, 0.5]")),
            ("b.toml", &half("b", "[0.5, 1.0]")),
        ]);
        let mut seen = [0; 2];
        for user in 0..2000 {
            let user = user.to_string();
            let in_a = fixture
                .experiments
                .assign(&user, Some("a"))
                .unwrap()
                .is_some();
            let in_b = fixture
                .experiments
                .assign(&user, Some("b"))
                .unwrap()
                .is_some();
            assert!(in_a != in_b, "user {user} in both or neither");
            seen[usize::from(in_b)] += 1;
        }
        assert!(seen[0] > 800 && seen[1] > 800, "{seen:?}");

        let paused = TWO_ARMS.replace("\"running\"", "\"paused\"");
        let fixture = open_with(&[("cmp.toml", &paused)]);
        assert_eq!(fixture.group("u1"), None);
        let decision = fixture
            .experiments
            .decide(&fixture.experiments.get("model_comparison").unwrap(), "u1");
        assert_eq!(decision.placement.reason(), Some("not_running"));
    }

    #[test]
    fn a_rejected_reload_keeps_the_set_in_force() {
        let fixture = open_with(&[("cmp.toml", TWO_ARMS)]);
        let before = fixture.group("u1");
        fixture.write(
            "cmp.toml",
            &TWO_ARMS.replace("weight = 0.5", "weight = 0.7"),
        );
        let error = fixture.experiments.reload().unwrap_err();
        assert!(error.to_string().contains("groups.weight"), "{error}");
        assert_eq!(fixture.group("u1"), before);
        let status = fixture.experiments.reload_status();
        assert!(status.error.unwrap().message.contains("cmp.toml"));

        fixture.write(
            "cmp.toml",
            &TWO_ARMS.replace("plugin = \"hybrid\"", "plugin = \"popularity\""),
        );
        fixture.experiments.reload().unwrap();
        assert!(fixture.experiments.reload_status().error.is_none());
        let plugins: Vec<String> = (0..50)
            .filter_map(|u| fixture.experiments.assign(&u.to_string(), None).unwrap())
            .map(|a| a.group().plugin.clone())
            .collect();
        assert!(plugins.contains(&"popularity".to_string()));
        assert!(!plugins.contains(&"hybrid".to_string()));
    }

    /// Stores `revision` as the bandit's next weights and puts it in force.
    fn store_weights(fixture: &Fixture, revision: &WeightsRevision) {
        let store = Store::open(&fixture.dir.path().join("db")).unwrap();
        assert!(
            store
                .append_weights_revision(&revision.to_row("bandit").unwrap())
                .unwrap()
        );
        fixture.experiments.follow_weights(&store).unwrap();
    }

    fn revision(number: u64, weights: [f64; 2], state: BanditState) -> WeightsRevision {
        WeightsRevision {
            revision: number,
            at_ms: number,
            action: Action::Update,
            state,
            groups: vec!["control".into(), "treatment".into()],
            plugins: vec!["collaborative".into(), "hybrid".into()],
            weights: weights.to_vec(),
            counts: vec![Default::default(); 2],
            best_probability: weights.to_vec(),
            equal_probability: 0.0,
            burned_in: true,
            seed: 0,
            drawn_with: None,
            counted_from: 0,
            by: "test".into(),
            note: None,
        }
    }

    use crate::experiments::allocation::{Action, BanditState};
    use crate::experiments::definition::tests::BANDIT;

    #[test]
    fn a_bandits_weights_place_new_users_while_assigned_ones_keep_their_arm() {
        let fixture = open_with(&[("bandit.toml", BANDIT)]);
        let serve = |user: &str| {
            let assignment = fixture.experiments.assign(user, None).unwrap().unwrap();
            fixture.experiments.record_exposure(&assignment, user, 1, 0);
            assignment
        };
        let early: Vec<(String, String)> = (0..300)
            .map(|u| {
                let user = format!("early{u}");
                let group = serve(&user).group().name.clone();
                (user, group)
            })
            .collect();
        let treated = early.iter().filter(|(_, g)| g == "treatment").count();
        assert!(
            (100..200).contains(&treated),
            "{treated} of 300 before any revision"
        );
        assert_eq!(
            fixture
                .experiments
                .get("bandit")
                .unwrap()
                .weights_revision(),
            0
        );

        // Revision 1 sends 95% of new users to treatment.
        store_weights(&fixture, &revision(1, [0.05, 0.95], BanditState::Learning));
        let live = fixture.experiments.get("bandit").unwrap();
        assert_eq!(live.weights_revision(), 1);
        assert_eq!(live.ranges[1], (0.05, 1.0));
        for (user, group) in &early {
            assert_eq!(&serve(user).group().name, group, "{user} moved");
        }
        let late = (0..1000)
            .filter(|u| serve(&format!("late{u}")).group().name == "treatment")
            .count();
        assert!(late > 930, "{late} of 1000 new users in treatment");

        // Promoted: everyone gets control, kept users included (whatever their hash says
        // under the promoted weights); their kept arm stays stored.
        store_weights(&fixture, &revision(2, [1.0, 0.0], BanditState::Promoted));
        for (user, _) in &early {
            let decision = fixture.experiments.decision(user, None).unwrap().unwrap();
            assert_eq!(decision.placement, Placement::Promoted(0), "{user}");
            serve(user);
        }
        // A reset to equal: users go back to the arm they kept.
        store_weights(&fixture, &revision(3, [0.5, 0.5], BanditState::Learning));
        for (user, group) in &early {
            assert_eq!(&serve(user).group().name, group, "{user} after the reset");
        }

        // Every exposure says which revision served it, and the sample ratio is tested
        // against those weights, not the definition's 50/50 (which it would fail).
        fixture.experiments.flush();
        let store = Store::open(&fixture.dir.path().join("db")).unwrap();
        let revisions: Vec<u64> = store
            .exposures_of("bandit")
            .unwrap()
            .iter()
            .map(|e| e.weights_revision)
            .collect();
        assert_eq!(revisions.iter().filter(|&&r| r == 0).count(), 300);
        assert_eq!(revisions.iter().filter(|&&r| r == 1).count(), 1300);
        let results = fixture
            .experiments
            .results(&fixture.experiments.get("bandit").unwrap())
            .unwrap();
        let srm = results.srm.clone().unwrap();
        assert!(!srm.flagged, "{srm:?}");
        assert!(
            sample_ratio(
                &results.groups.iter().map(|g| g.users).collect::<Vec<_>>(),
                &[0.5, 0.5]
            )
            .unwrap()
            .flagged
        );
    }

    #[test]
    fn a_promotion_at_half_coverage_keeps_everyone_who_was_in() {
        let half = BANDIT.replace("sticky = true", "sticky = true\ncoverage = 0.5");
        let fixture = open_with(&[("bandit.toml", &half)]);
        let placed: Vec<String> = (0..400)
            .map(|u| format!("u{u}"))
            .filter(
                |user| match fixture.experiments.assign(user, None).unwrap() {
                    Some(assignment) => {
                        fixture.experiments.record_exposure(&assignment, user, 1, 0);
                        true
                    }
                    None => false,
                },
            )
            .collect();
        assert!(
            (100..300).contains(&placed.len()),
            "{} of 400 in",
            placed.len()
        );
        store_weights(&fixture, &revision(1, [0.0, 1.0], BanditState::Promoted));
        for user in &placed {
            let decision = fixture
                .experiments
                .decision(user, Some("bandit"))
                .unwrap()
                .unwrap();
            assert_eq!(decision.placement, Placement::Promoted(1), "{user}");
        }
        // New users: in by the hash, as at any weights (half of them).
        let newcomers = (0..400)
            .filter(|u| {
                let user = format!("new{u}");
                fixture.experiments.assign(&user, None).unwrap().is_some()
            })
            .count();
        assert!(
            (100..300).contains(&newcomers),
            "{newcomers} of 400 new users in"
        );
    }

    #[test]
    fn sticky_users_keep_their_group_until_the_bucket_version_rises() {
        let sticky = TWO_ARMS.replace(
            "status = \"running\"",
            "status = \"running\"\nsticky = true",
        );
        let fixture = open_with(&[("cmp.toml", &sticky)]);
        let users: Vec<String> = (0..200).map(|u| format!("u{u}")).collect();
        let first: Vec<Option<String>> = users
            .iter()
            .map(|u| {
                let assignment = fixture.experiments.assign(u, None).unwrap().unwrap();
                fixture.experiments.record_exposure(&assignment, u, 1, 0);
                Some(assignment.group().name.clone())
            })
            .collect();
        // Everyone to control by weight: sticky users stay where they were.
        let shifted = sticky
            .replacen("weight = 0.5", "weight = 0.99", 1)
            .replacen("weight = 0.5", "weight = 0.01", 1);
        fixture.write("cmp.toml", &shifted);
        fixture.experiments.reload().unwrap();
        let kept: Vec<Option<String>> = users.iter().map(|u| fixture.group(u)).collect();
        assert_eq!(kept, first);

        // Kept across a restart too (the assignments are in SQLite).
        fixture.experiments.flush();
        let database = fixture.dir.path().join("db");
        let reopened = Experiments::open(
            Some(fixture.dir.path().join("experiments")),
            Box::new(|| vec!["collaborative".into(), "hybrid".into()]),
            Arc::new(Store::open(&database).unwrap()),
            &Database::Sqlite(database),
        )
        .unwrap();
        let after_restart: Vec<Option<String>> = users
            .iter()
            .map(|u| {
                reopened
                    .assign(u, None)
                    .unwrap()
                    .map(|a| a.group().name.clone())
            })
            .collect();
        assert_eq!(after_restart, first);

        // A new bucket version re-buckets by the new weights.
        fixture.write(
            "cmp.toml",
            &shifted.replace("sticky = true", "sticky = true\nbucket_version = 2"),
        );
        fixture.experiments.reload().unwrap();
        let control = users
            .iter()
            .filter(|u| fixture.group(u).as_deref() == Some("control"))
            .count();
        assert!(control > 190, "{control}");
    }
}

//! Durable storage: items, users, events, model snapshots, the learning record, experiment
//! records. One interface ([`Backend`]), two engines side by side:
//!
//! - `sqlite/`: the embedded default, one file in `data_dir`, one node.
//! - `postgres/`: the system of record of a cluster (`database_url = "postgres://..."`),
//!   shared by every node.
//!
//! The rest of the host holds a [`Store`] and never knows which engine it has. The interface
//! is synchronous, like the SQLite it grew from: callers already run store work on their own
//! threads (the event writer, the exposure log, learning jobs) or in `spawn_blocking`, never
//! on a tokio worker for anything slow. The PostgreSQL engine runs its async driver on a
//! runtime of its own and blocks the calling thread, so both engines behave the same to a
//! caller. `tests.rs` is the one test suite, run over both.
//!
//! The event log's ids are its order: a consumer that has read through id N never later
//! finds a committed event with an id at or below N. SQLite gets this from its single writer;
//! PostgreSQL, whose sequence values are handed out in another order than transactions
//! commit, from one transaction-scoped lock that every event append and import takes (see
//! `postgres/events.rs`; docs/architecture.md says why this and not a commit horizon).

mod exposure_batches;
pub mod migrate;
mod postgres;
mod served_list_batches;
mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[cfg(test)]
use postgres::test_server::TestPostgres;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cannot reach PostgreSQL: {0}")]
    Unavailable(String),
    #[error("corrupt row in the database: {0}")]
    Corrupt(String),
    /// The data given to an import could not be read (nothing was written).
    #[error("cannot read the data to import: {0}")]
    Input(String),
    #[error("this node no longer holds the {0} lease")]
    Fenced(&'static str),
    #[error(
        "database schema version {found} is newer than this build of recohost understands ({supported})"
    )]
    TooNew { found: usize, supported: usize },
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Whether another writer held a lock for longer than the wait allowed: the same
    /// statement may succeed later.
    pub fn is_busy(&self) -> bool {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(error, _)) => matches!(
                error.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            Self::Postgres(error) => postgres::is_busy(error),
            _ => false,
        }
    }

    /// Whether the database could not be reached (down, restarting, network): nothing was
    /// done, and the same call may succeed once it is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Postgres(error) => postgres::is_unavailable(error),
            _ => false,
        }
    }
}

/// Which database to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://user:password@host:port/dbname?param=value`).
    Postgres(String),
}

impl Database {
    /// The database of a configuration: `database_url` when set, else `data_dir/recohost.db`.
    pub fn from_url_or_dir(url: Option<&str>, data_dir: &std::path::Path) -> Self {
        match url {
            Some(url) => Self::Postgres(url.to_string()),
            None => Self::Sqlite(data_dir.join("recohost.db")),
        }
    }

    /// Where it is, for logs and errors (a URL's password left out).
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("SQLite {}", path.display()),
            Self::Postgres(url) => format!("PostgreSQL {}", postgres::redact(url)),
        }
    }
}

/// How much a write must survive once it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// On disk before the call returns: what an acknowledged event needs.
    Full,
    /// Safe from a crash of the server, not necessarily from a power cut or an OS crash:
    /// for records nobody was promised (exposures), saving a disk sync per write.
    Relaxed,
}

/// What kind of feedback an event is; stored as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Rate,
    Click,
    View,
    Purchase,
}

impl EventKind {
    /// Every kind, at its [`Self::index`].
    pub const ALL: [Self; 4] = [Self::Rate, Self::Click, Self::View, Self::Purchase];

    /// The kind's place in [`Self::ALL`]: a small code for compact rows and per-kind counts.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rate => "rate",
            Self::Click => "click",
            Self::View => "view",
            Self::Purchase => "purchase",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "rate" => Some(Self::Rate),
            "click" => Some(Self::Click),
            "view" => Some(Self::View),
            "purchase" => Some(Self::Purchase),
            _ => None,
        }
    }
}

/// An item row.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemRow {
    pub external_id: String,
    pub title: String,
    pub tags: Vec<String>,
}

/// An event row, with dense indices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventRow {
    pub id: i64,
    pub user: u32,
    pub item: u32,
    pub kind: EventKind,
    pub value: f32,
    pub timestamp: u64,
}

/// One user's events as [`EventLog::user_history`] reads them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserHistory {
    /// How many events the user has.
    pub count: u64,
    /// The id of their newest event (0: none).
    pub through: i64,
    /// Their newest events, newest first.
    pub recent: Vec<EventRow>,
    /// Every item they had an event with, ascending.
    pub items: Vec<u32>,
}

/// A stored model snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotRow {
    pub plugin: String,
    pub version: u64,
    pub created_at: u64,
    pub fingerprint: String,
    pub through_event: i64,
    pub bytes: Vec<u8>,
}

/// Counts for `/health`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StoreCounts {
    pub items: u64,
    pub users: u64,
    pub events: u64,
}

/// A dataset to import: items, and events naming users and items by external ID.
#[derive(Debug, Default)]
pub struct ImportBatch {
    pub items: Vec<ItemRow>,
    pub events: Vec<ImportEvent>,
}

/// Events to import, read one at a time; an `Err` (the reader's message) ends the import.
pub type EventSource<'a> = &'a mut dyn Iterator<Item = Result<ImportEvent, String>>;

#[derive(Debug, Clone)]
pub struct ImportEvent {
    pub user: String,
    pub item: String,
    pub kind: EventKind,
    pub value: f32,
    pub timestamp: u64,
}

/// How long a client's idempotency key is remembered.
pub const IDEMPOTENCY_KEY_TTL_SECS: u64 = 86_400;

/// A validated event, its item resolved to a dense index, its user still an external ID.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub user: String,
    pub item: u32,
    pub kind: EventKind,
    pub value: f32,
    pub timestamp: u64,
}

/// One client's request within a group commit.
pub struct AppendRequest<'a> {
    pub events: &'a [NewEvent],
    /// The client's idempotency key, and a hash of what the request asked to store.
    pub idempotency: Option<(&'a str, &'a str)>,
}

/// What became of one request of a group commit (once the group is committed).
#[derive(Debug, PartialEq)]
pub enum AppendOutcome {
    /// Stored: the rows with their ids and user indices, in the order given.
    Stored(Vec<EventRow>),
    /// Its idempotency key was seen before with the same request: nothing stored again.
    Replayed { first_event_id: i64, stored: usize },
    /// Its idempotency key was seen before with another request.
    KeyReused,
    /// It failed and stored nothing; the rest of the group is unaffected.
    Failed(String),
}

/// One recommendation served under an experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct ExposureRow {
    pub experiment_id: String,
    pub group_name: String,
    pub user_id: String,
    pub plugin: String,
    pub model_version: u64,
    /// Newest stored event id when it was served: the user's events after it are feedback.
    pub after_event: i64,
    pub at_ms: u64,
    /// The bandit weights revision it was served under (0: none, or fixed weights).
    pub weights_revision: u64,
}

/// The group a user of a sticky experiment keeps while the bucket version stays the same.
#[derive(Clone, Debug, PartialEq)]
pub struct StickyRow {
    pub experiment_id: String,
    pub user_id: String,
    pub group_name: String,
    pub bucket_version: u32,
    pub assigned_at_ms: u64,
}

/// An exposure as results need it: whose, which group, from which event on.
#[derive(Clone, Debug, PartialEq)]
pub struct ExposureKey {
    /// Its place among the experiment's exposures (ascending in storage order; exposures
    /// stored in batches are numbered after the rows stored one by one before them).
    pub id: i64,
    pub user_id: String,
    pub group_name: String,
    pub after_event: i64,
    pub at_ms: u64,
    pub weights_revision: u64,
}

/// One revision of a bandit experiment's weights, as stored: the experiments module owns
/// what `body` (JSON) holds.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightsRevisionRow {
    pub experiment_id: String,
    /// 1, 2, ... per experiment.
    pub revision: u64,
    pub at_ms: u64,
    pub body: String,
}

/// One model update or retrain, as `GET /learning/history` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LearningRun {
    pub update_id: u64,
    /// `update` (a batch of new events) or `retrain` (from scratch over the training window).
    pub kind: String,
    /// What started it: `buffer_size`, `interval`, `manual`, `schedule`.
    pub trigger: String,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub duration_ms: f64,
    pub feedback_count: u64,
    pub through_event: i64,
    pub models_updated: u64,
    /// Plugin name → what happened to it.
    #[schema(value_type = Object)]
    pub outcomes: serde_json::Map<String, serde_json::Value>,
}

/// The newest version a plugin has served, and the newest event that version learned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VersionRow {
    pub version: u64,
    pub through_event: i64,
}

/// What every storage engine does, in three parts (one file each per engine). Methods block
/// the calling thread (see the module doc).
pub trait Backend:
    EventLog
    + ModelRecord
    + ExperimentRecord
    + MonitoringRecord
    + PluginSetRecord
    + Leases
    + Announcements
    + Send
    + Sync
{
    /// Which engine this is (`sqlite`, `postgres`), for `/health`.
    fn engine(&self) -> &'static str;
    /// The schema version this database has.
    fn schema_version(&self) -> StoreResult<usize>;
    /// This database's random identity, made on first use and kept for its life: model
    /// versions count per database, so a cache shared by several servers (Redis) must tell
    /// their entries apart by it.
    fn store_id(&self) -> StoreResult<String>;
    fn counts(&self) -> StoreResult<StoreCounts>;
}

/// The catalog, the users and the event log (`events.rs` of each engine).
pub trait EventLog {
    /// All items, by dense index.
    fn items(&self) -> StoreResult<Vec<ItemRow>>;
    /// All users' external IDs, by dense index.
    fn users(&self) -> StoreResult<Vec<String>>;
    /// Users registered with an index of `from` or more, by index.
    fn users_from(&self, from: u32) -> StoreResult<Vec<(u32, String)>>;
    /// Writes a whole dataset (items, users, events) in one transaction: all or nothing.
    /// Items and users already present (same external ID) keep their index; item titles and
    /// tags are updated. Returns the number of events added.
    fn import(&self, batch: &ImportBatch) -> StoreResult<u64> {
        let mut events = batch.events.iter().cloned().map(Ok);
        Ok(self
            .import_if(&batch.items, &mut events, false)?
            .unwrap_or(0))
    }
    /// [`EventLog::import`] with the events read one at a time, for datasets larger than
    /// memory: the engine holds a chunk of them and the users' indices, nothing more. An
    /// event the source fails to read ends the import, and nothing is written.
    fn import_stream(&self, items: &[ItemRow], events: EventSource<'_>) -> StoreResult<u64> {
        Ok(self.import_if(items, events, false)?.unwrap_or(0))
    }
    /// [`EventLog::import`] into a database without items only (`None` otherwise), decided
    /// inside the import's transaction: nodes starting together on an empty database seed
    /// the demo data once.
    fn seed(&self, batch: &ImportBatch) -> StoreResult<Option<u64>> {
        let mut events = batch.events.iter().cloned().map(Ok);
        self.import_if(&batch.items, &mut events, true)
    }
    /// [`EventLog::import_stream`], or nothing if `only_into_empty` and the database has
    /// items.
    fn import_if(
        &self,
        items: &[ItemRow],
        events: EventSource<'_>,
        only_into_empty: bool,
    ) -> StoreResult<Option<u64>>;
    /// Stores each request in its own savepoint of one transaction: all of a request or
    /// none of it, whatever the others do. `known_user` maps the users the caller knows to
    /// their indices; new users get the next dense index inside the transaction, so another
    /// writer (an import, another node) never collides with it. Fails as a whole only if
    /// the transaction cannot begin or commit.
    fn append_requests(
        &self,
        requests: &[AppendRequest<'_>],
        known_user: &dyn Fn(&str) -> Option<u32>,
    ) -> StoreResult<Vec<AppendOutcome>>;
    /// Forgets idempotency keys older than [`IDEMPOTENCY_KEY_TTL_SECS`].
    fn expire_idempotency_keys(&self) -> StoreResult<usize>;
    /// Id of the newest event, 0 when there are none.
    fn last_event_id(&self) -> StoreResult<i64>;
    /// Calls `visit` with every event with an id above `after`, oldest first, without holding
    /// them all: start-up reads the whole log this way (at MovieLens 25M's size, 800 MB as
    /// rows). The store is busy until it returns (SQLite's connection lock is held): `visit`
    /// must not use the same store.
    fn scan_events_after(&self, after: i64, visit: &mut dyn FnMut(&EventRow)) -> StoreResult<()>;
    /// Events with an id above `after`, oldest first ([`Self::scan_events_after`], collected).
    fn events_after(&self, after: i64) -> StoreResult<Vec<EventRow>> {
        let mut events = Vec::new();
        self.scan_events_after(after, &mut |event| events.push(*event))?;
        Ok(events)
    }
    /// How many events of the first `items` items have an id in `(after, before)`: the
    /// events a plugin that learned through `after` still needs beyond the learning buffer,
    /// which starts at `before` (`items`: the catalog the plugins serve; events of items
    /// imported since start wait for a restart).
    fn count_events_between(&self, after: i64, before: i64, items: u32) -> StoreResult<u64>;
    /// The events of the first `items` items with an id in `(after, before)`, oldest first,
    /// at most `limit` of them.
    fn events_between(
        &self,
        after: i64,
        before: i64,
        items: u32,
        limit: usize,
    ) -> StoreResult<Vec<EventRow>>;
    /// The training window of a retrain: events of the first `items` items up to id
    /// `through_event`, no older than `since_timestamp` (Unix seconds, when given), of those
    /// the newest `last_events` (when given), oldest first. The filters run in the database:
    /// only the window is read.
    fn training_window(
        &self,
        through_event: i64,
        since_timestamp: Option<u64>,
        last_events: Option<u64>,
        items: u32,
    ) -> StoreResult<Vec<EventRow>>;
    /// One user's events of the first `items` items, read in one snapshot: how many, the
    /// newest id, the newest `limit` (newest first) and every item among them. What a
    /// cluster node serves a user from when the shared feature store cannot answer.
    fn user_history(&self, user: u32, items: u32, limit: usize) -> StoreResult<UserHistory>;
    /// Calls `visit(event id, external user ID, kind, value)` for every event with an id above
    /// `after`, oldest first, without holding them all in memory.
    /// `visit(id, user, kind, value, timestamp)`.
    fn for_each_event_after(
        &self,
        after: i64,
        visit: &mut dyn FnMut(i64, &str, EventKind, f32, u64),
    ) -> StoreResult<()>;
}

/// Model snapshots and the learning record (`learning.rs` of each engine).
pub trait ModelRecord {
    /// The newest snapshot of `plugin`, if any.
    fn latest_snapshot(&self, plugin: &str) -> StoreResult<Option<SnapshotRow>>;
    /// Version of the newest stored snapshot of `plugin`, if any.
    fn latest_snapshot_version(&self, plugin: &str) -> StoreResult<Option<u64>>;
    /// Stores a snapshot and keeps only the newest `keep` of its plugin.
    fn save_snapshot(&self, snapshot: &SnapshotRow, keep: u64) -> StoreResult<()>;
    fn record_learning_run(&self, run: &LearningRun) -> StoreResult<()>;
    /// The newest `limit` runs, newest first.
    fn learning_runs(&self, limit: usize) -> StoreResult<Vec<LearningRun>>;
    /// (number of runs, highest run id).
    fn learning_run_counts(&self) -> StoreResult<(u64, u64)>;
    /// Hands out the next model version of each of `plugins` (their highest ever plus one),
    /// recording it with `through_event`, in one transaction. The database counts, not the
    /// caller: two nodes (a learner that lost its lease and the one that took it, or nodes
    /// training at the same start) never get the same number, and a crash at any point
    /// cannot make a number serve two different models. A number handed out but never used
    /// stays unused.
    ///
    /// With a `fence`, only while that lease is held by that holder under that term (checked
    /// in the same transaction, the lease row locked): a learner that lost its lease gets
    /// [`StoreError::Fenced`] and makes no model.
    fn allocate_model_versions(
        &self,
        plugins: &[&str],
        through_event: i64,
        fence: Option<&Fence>,
    ) -> StoreResult<Vec<u64>>;
    fn model_versions(&self) -> StoreResult<HashMap<String, VersionRow>>;
}

/// Experiment records: exposures and sticky assignments, and the experiment definitions a
/// cluster runs, published as numbered revisions (`experiments.rs` of each engine).
pub trait ExperimentRecord {
    /// Stores a new revision of the experiment definitions (file name -> TOML text, all of
    /// them: a revision replaces the one before whole) and returns its number. With
    /// `unless_unchanged`, nothing is stored (`None`) when the newest revision holds the same
    /// files, decided in the same transaction (nodes watching one folder publish an edit
    /// once).
    fn publish_experiments(
        &self,
        files: &[(String, String)],
        unless_unchanged: bool,
    ) -> StoreResult<Option<u64>>;
    /// The number of the newest revision, 0 when none was ever published (a cheap poll).
    fn latest_experiment_revision(&self) -> StoreResult<u64>;
    /// The newest revision and its files, if any.
    fn latest_experiments(&self) -> StoreResult<Option<(u64, ExperimentFiles)>>;
    /// Stores exposures (one row per experiment: `exposure_batches.rs`) and sticky
    /// assignments in one transaction.
    fn append_exposures(&self, exposures: &[ExposureRow], sticky: &[StickyRow]) -> StoreResult<()>;
    /// The sticky assignments stored (by the database's clock) at or after `since_ms` (0:
    /// all of them), and the newest such time (`since_ms` when none): what a cluster's
    /// nodes take in from each other. By when they were stored, not made: an assignment
    /// stored late (its node's exposures queued while the database was away) or made by a
    /// node whose clock is behind is still found.
    fn sticky_assignments(&self, since_ms: u64) -> StoreResult<(Vec<StickyRow>, u64)>;
    /// Every exposure of `experiment_id`, oldest first.
    fn exposures_of(&self, experiment_id: &str) -> StoreResult<Vec<ExposureKey>>;
    /// Stores a bandit's next weights revision, unless that experiment already has one of
    /// that number (`false`): two writers that read the same latest revision (a learner and
    /// an operator, or two learners during a failover) never both extend it.
    fn append_weights_revision(&self, revision: &WeightsRevisionRow) -> StoreResult<bool>;
    /// The newest `newest` weights revisions of `experiment_id` (all of them for `None`),
    /// oldest first.
    fn weights_revisions(
        &self,
        experiment_id: &str,
        newest: Option<u64>,
    ) -> StoreResult<Vec<WeightsRevisionRow>>;
    /// The newest weights revision of each experiment that has one (what every node polls).
    fn latest_weights_revisions(&self) -> StoreResult<Vec<WeightsRevisionRow>>;
}

/// One list of recommendations served, as model monitoring reads it back.
#[derive(Clone, Debug, PartialEq)]
pub struct ServedListRow {
    /// Assigned by the database (ignored when appending).
    pub id: i64,
    pub at_ms: u64,
    pub user_id: String,
    /// The plugin that answered, and its model version.
    pub plugin: String,
    pub model_version: u64,
    /// Newest stored event id when it was served: the user's events after it may hit it.
    pub after_event: i64,
    /// The top of the list, best first, and their scores.
    pub items: Vec<u32>,
    pub scores: Vec<f32>,
}

/// An alert as stored: raised, and resolved or not yet.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRow {
    pub id: i64,
    /// What it is about (`drift:rating`, `quality:hybrid`...): at most one open per name.
    pub alert: String,
    pub raised_at_ms: u64,
    pub resolved_at_ms: Option<u64>,
    /// JSON: severity, the evidence, the resolution (the monitoring module owns it).
    pub body: String,
}

/// What model monitoring keeps: the lists served, what each window found, and alerts
/// (`monitoring.rs` of each engine). Measurements, not acknowledged data: kept for the
/// configured retention, then expired.
pub trait MonitoringRecord {
    /// Stores `lists` together (`served_list_batches.rs`: one row per call), in order.
    fn append_served_lists(&self, lists: &[ServedListRow]) -> StoreResult<()>;
    /// Lists with an id above `after`, oldest first, at most `limit`.
    fn served_lists_after(&self, after: i64, limit: usize) -> StoreResult<Vec<ServedListRow>>;
    /// Id of the newest list, 0 when there is none.
    fn last_served_list_id(&self) -> StoreResult<i64>;
    fn append_monitoring_window(&self, at_ms: u64, body: &str) -> StoreResult<()>;
    /// The newest `limit` windows at or after `since_ms`, oldest first, as (at_ms, body).
    fn monitoring_windows(&self, since_ms: u64, limit: usize) -> StoreResult<Vec<(u64, String)>>;
    /// Stores a raised alert; returns its id.
    fn raise_alert(&self, alert: &str, at_ms: u64, body: &str) -> StoreResult<i64>;
    /// Marks alert `id` resolved at `at_ms`, its body replaced by `body`.
    fn resolve_alert(&self, id: i64, at_ms: u64, body: &str) -> StoreResult<()>;
    /// Open alerts, and those resolved at or after `resolved_since_ms`, newest first, at
    /// most `limit`.
    fn alerts(&self, resolved_since_ms: u64, limit: usize) -> StoreResult<Vec<AlertRow>>;
    /// Deletes lists served before `lists_before_ms` (the lists of one append go together,
    /// when the newest of them is that old), and windows older than `before_ms` and alerts
    /// resolved before it. Returns the rows deleted.
    fn expire_monitoring(&self, lists_before_ms: u64, before_ms: u64) -> StoreResult<u64>;
}

/// The plugins a cluster runs beyond what each node's config file declares: their .wasm
/// stored once per content (SHA-256), and numbered revisions of the published set
/// (`plugin_sets.rs` of each engine).
pub trait PluginSetRecord {
    /// Stores `wasm` (once per content) and a new revision: the newest one with `plugin`
    /// added, or replacing the plugin of its name, in one transaction (two publications at
    /// once both end up in the set). `plugin.wasm_sha256` must be `wasm`'s
    /// ([`PublishedPlugin::new`]). Returns the new revision's number.
    fn publish_plugin(&self, plugin: &PublishedPlugin, wasm: &[u8]) -> StoreResult<u64>;
    /// The number of the newest revision, 0 when none was ever published (a cheap poll).
    fn latest_plugin_revision(&self) -> StoreResult<u64>;
    /// The newest revision and its plugins, by name, if any.
    fn latest_plugins(&self) -> StoreResult<Option<(u64, Vec<PublishedPlugin>)>>;
    /// The .wasm stored under `sha256`, if any.
    fn plugin_wasm(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>>;
}

/// A plugin published to a cluster: which .wasm (by content), with which config and limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublishedPlugin {
    pub name: String,
    /// Hex SHA-256 of the .wasm bytes.
    pub wasm_sha256: String,
    /// What `[plugins.config]` would hold.
    pub config: serde_json::Map<String, serde_json::Value>,
    pub limits: crate::plugins::PluginLimits,
}

impl PublishedPlugin {
    pub fn new(
        name: &str,
        wasm: &[u8],
        config: serde_json::Map<String, serde_json::Value>,
        limits: crate::plugins::PluginLimits,
    ) -> Self {
        Self {
            name: name.to_string(),
            wasm_sha256: wasm_sha256(wasm),
            config,
            limits,
        }
    }
}

/// The hex SHA-256 that names a .wasm in the store.
pub fn wasm_sha256(wasm: &[u8]) -> String {
    use sha2::Digest;
    crate::plugins::engine::hex(&sha2::Sha256::digest(wasm))
}

/// `plugins` with `plugin` added or put in place of the one of its name, sorted by name.
fn with_plugin(
    mut plugins: Vec<PublishedPlugin>,
    plugin: &PublishedPlugin,
) -> Vec<PublishedPlugin> {
    plugins.retain(|p| p.name != plugin.name);
    plugins.push(plugin.clone());
    plugins.sort_by(|a, b| a.name.cmp(&b.name));
    plugins
}

/// A published plugin set as stored: a JSON array.
fn plugin_set_json(plugins: &[PublishedPlugin]) -> StoreResult<String> {
    serde_json::to_string(plugins).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A published plugin set read back.
fn plugin_set_from_json(json: &str) -> StoreResult<Vec<PublishedPlugin>> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("a plugin revision: {e}")))
}

/// Leases: which node holds a role (the learner) until when, by the database's clock, so
/// that nodes whose clocks disagree still agree on who holds it (`leases.rs` of each engine).
pub trait Leases {
    /// Takes the lease `name` for `holder` for `duration_ms`, or renews it if `holder` has
    /// it. Returns the lease's term (raised by one whenever the holder changes), or `None`
    /// when another holder's lease has not expired.
    fn acquire_lease(&self, name: &str, holder: &str, duration_ms: u64)
    -> StoreResult<Option<u64>>;
    /// Gives the lease up at once, if `holder` has it (another node may take it right away).
    fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()>;
    /// Who holds the lease, its term, and for how many more milliseconds (0: expired).
    fn lease(&self, name: &str) -> StoreResult<Option<LeaseRow>>;
}

/// Announcements from one node to the others (PostgreSQL's LISTEN/NOTIFY): "a new model is
/// stored", so that followers need not wait for their next poll. Best effort: listeners
/// still poll, an announcement only wakes them early. SQLite has one node and nobody to
/// tell (`listen` then only waits).
pub trait Announcements {
    /// Tells every node listening on `channel` (an SQL identifier) that `payload` happened.
    fn announce(&self, channel: &'static str, payload: &str) -> StoreResult<()>;
    /// Listens on `channel` on a connection of its own.
    fn listen(&self, channel: &'static str) -> StoreResult<Box<dyn Listener>>;
}

/// A connection listening for announcements.
pub trait Listener: Send {
    /// Waits up to `timeout`: `Ok(true)` when an announcement came, `Ok(false)` when none
    /// did, an error when the connection is gone (listen again).
    fn wait(&self, timeout: std::time::Duration) -> StoreResult<bool>;
}

/// A lease its holder believes it holds: what version allocation checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub lease: &'static str,
    pub holder: String,
    pub term: u64,
}

/// A lease as [`Leases::lease`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub holder: String,
    pub term: u64,
    pub remaining_ms: u64,
}

/// An open database, whichever engine holds it.
pub struct Store {
    backend: Box<dyn Backend>,
}

impl Store {
    /// Opens (creating and migrating if needed) `database` with full durability.
    pub fn connect(database: &Database) -> StoreResult<Self> {
        Self::connect_with(database, Durability::Full)
    }

    /// [`Store::connect`] with the durability this connection's writes need.
    pub fn connect_with(database: &Database, durability: Durability) -> StoreResult<Self> {
        let backend: Box<dyn Backend> = match database {
            Database::Sqlite(path) => Box::new(sqlite::SqliteStore::open(path, durability)?),
            Database::Postgres(url) => Box::new(postgres::PostgresStore::open(url, durability)?),
        };
        Ok(Self { backend })
    }

    /// Opens the SQLite database at `path` (the embedded default; tests and tools).
    pub fn open(path: &std::path::Path) -> StoreResult<Self> {
        Self::connect(&Database::Sqlite(path.to_path_buf()))
    }
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

/// Experiment definition files: file name -> TOML text.
pub type ExperimentFiles = Vec<(String, String)>;

/// A revision's files as stored: a JSON object, file name -> text.
fn revision_json(files: &[(String, String)]) -> StoreResult<String> {
    let object: serde_json::Map<String, serde_json::Value> = files
        .iter()
        .map(|(name, text)| (name.clone(), serde_json::Value::String(text.clone())))
        .collect();
    serde_json::to_string(&object).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A revision's files read back, in file-name order.
fn revision_files(json: &str) -> StoreResult<Vec<(String, String)>> {
    let object: std::collections::BTreeMap<String, String> = serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("an experiment revision: {e}")))?;
    Ok(object.into_iter().collect())
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

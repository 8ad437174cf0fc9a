//! Live events: validation, and the writer that stores them durably before anyone is told.
//!
//! All events go through one writer thread with its own SQLite connection. It takes every
//! append request waiting in its queue and stores them in one transaction (group commit): one
//! disk sync covers many clients' events, so durability stays fast under load. Each request
//! is stored in a savepoint of its own, so one request's failure is its alone. Only after the
//! commit does it update the in-memory view (new users, histories), push the events into the
//! learning buffer and answer the waiting requests. A failed commit fails every request in the
//! group and changes nothing.
//!
//! The queue is bounded in events, not requests: past its capacity, appends wait for room
//! (asynchronously); a request that times out meanwhile, or whose client left before the
//! writer took it, stores nothing. A client's `Idempotency-Key` makes a retry safe: the same
//! request under the same key is answered with the first one's receipt, stored once.
//!
//! Another process may write to the same database (`recohost import` while the server runs):
//! users get their indices inside the transaction, and the writer takes in the users and
//! events stored by others, between and after its own groups.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::catalog::{Catalog, Users};
use crate::config::EventsConfig;
use crate::features::Features;
use crate::learning::{BufferStatus, Learning};
use crate::store::EventRow;
use crate::store::{
    AppendOutcome, AppendRequest, Database, EventKind, NewEvent, Store, StoreError, unix_now,
};

/// An event as a client describes it, before validation.
#[derive(Clone, Debug)]
pub struct EventInput {
    pub user_id: String,
    pub item_id: String,
    pub event_type: String,
    pub rating: Option<f64>,
    pub timestamp: Option<u64>,
}

#[derive(Debug, Error, PartialEq)]
pub enum EventError {
    #[error(
        "unknown item `{0}`: add it to the catalog (recohost import) before sending events for it"
    )]
    UnknownItem(String),
    #[error("unknown event_type `{0}`; expected one of rate, click, view, purchase")]
    UnknownType(String),
    #[error("a `rate` event needs a `rating`")]
    MissingRating,
    #[error("`rating` belongs only to `rate` events, not `{0}`")]
    UnexpectedRating(String),
    #[error("rating must be a number between {min} and {max}, got {got}")]
    RatingOutOfRange { got: f64, min: f32, max: f32 },
    #[error("timestamp {0} is more than a day in the future (Unix seconds expected)")]
    FutureTimestamp(u64),
}

/// Largest clock difference accepted for a client's timestamp (the importer's too).
pub const MAX_FUTURE_SECS: u64 = 86_400;

/// Checks an event against the catalog and the configured rating scale.
pub fn validate(
    input: &EventInput,
    catalog: &Catalog,
    config: &EventsConfig,
) -> Result<NewEvent, EventError> {
    let kind = EventKind::parse(&input.event_type)
        .ok_or_else(|| EventError::UnknownType(input.event_type.clone()))?;
    let value = match (kind, input.rating) {
        (EventKind::Rate, None) => return Err(EventError::MissingRating),
        (EventKind::Rate, Some(rating)) => {
            let in_range = rating.is_finite()
                && rating >= f64::from(config.rating_min)
                && rating <= f64::from(config.rating_max);
            if !in_range {
                return Err(EventError::RatingOutOfRange {
                    got: rating,
                    min: config.rating_min,
                    max: config.rating_max,
                });
            }
            rating as f32
        }
        (_, Some(_)) => return Err(EventError::UnexpectedRating(input.event_type.clone())),
        (_, None) => 1.0,
    };
    let now = unix_now();
    let timestamp = match input.timestamp {
        Some(t) if t > now + MAX_FUTURE_SECS => return Err(EventError::FutureTimestamp(t)),
        Some(t) => t,
        None => now,
    };
    let item = catalog
        .index_of(&input.item_id)
        .ok_or_else(|| EventError::UnknownItem(input.item_id.clone()))?;
    Ok(NewEvent {
        user: input.user_id.clone(),
        item,
        kind,
        value,
        timestamp,
    })
}

/// What a successful append tells the client.
#[derive(Clone, Copy, Debug)]
pub struct Receipt {
    pub first_event_id: i64,
    pub stored: usize,
    pub buffer: BufferStatus,
    /// The update these events triggered, if they did.
    pub update_id: Option<u64>,
    /// The request's idempotency key had been used for the same request: these are the
    /// first request's ids, and nothing was stored again.
    pub replayed: bool,
}

#[derive(Debug, Error)]
pub enum AppendError {
    #[error("the events could not be stored; nothing was recorded: {0}")]
    Store(String),
    #[error("the event writer has stopped; the events may not have been stored")]
    Stopped,
    /// The database could not be reached (PostgreSQL down or restarting). Nothing was
    /// acknowledged; if the connection broke during the commit itself the events may have
    /// been stored, which a retry with the same Idempotency-Key settles.
    #[error("the database cannot be reached: {0}")]
    Unavailable(String),
    #[error("the Idempotency-Key was used before for a different request")]
    KeyReused,
}

/// A client's idempotency key and a hash of what its request asks to store.
#[derive(Clone, Debug)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
}

struct AppendJob {
    events: Vec<NewEvent>,
    idempotency: Option<Idempotency>,
    reply: oneshot::Sender<Result<Receipt, AppendError>>,
    /// This job's share of the queue's capacity, given back when the job is done.
    _queued: OwnedSemaphorePermit,
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct EventWriter {
    queue: Sender<AppendJob>,
    /// Events that may wait in the queue: appends beyond it wait (asynchronously) for room.
    capacity: Arc<Semaphore>,
    capacity_events: usize,
    health: Arc<WriterHealth>,
}

/// Events that may wait for the writer, at least: past it, requests wait for room (and the
/// request timeout answers 503 without storing anything).
const MIN_QUEUE_EVENTS: usize = 100_000;
/// Most events stored by one transaction.
const MAX_GROUP_EVENTS: usize = 50_000;
/// How often an idle writer looks for events and users another process stored (another node
/// of a cluster, `recohost import` into a running server's database): an event accepted by
/// any node changes what this one recommends within about this long. A look is one indexed
/// `MAX(id)` query.
const IDLE_CHECK: Duration = Duration::from_millis(200);
/// How often expired idempotency keys are deleted.
const KEY_EXPIRY_INTERVAL: Duration = Duration::from_secs(3_600);
/// Events of another writer taken in at once (each page under a short write lock on the view).
const CATCH_UP_PAGE: usize = 10_000;

/// Whether the writer runs, for `/health`.
#[derive(Default)]
pub struct WriterHealth {
    stopped: AtomicBool,
    restarts: AtomicU64,
    /// The last failure the writer went on after, and when.
    last_failure: Mutex<Option<(Instant, String)>>,
}

/// A failure this recent makes the writer's status `failing`.
const RECENT_FAILURE: Duration = Duration::from_secs(60);

/// What `/health` shows of the writer.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct WriterReport {
    /// `ok`; `failing` when it caught a failure in the last minute (the server then reports
    /// itself `degraded`); `stopped` when events cannot be stored (the server exits at once
    /// so that it is restarted; until then `/health` answers 503).
    pub status: &'static str,
    /// Times a failure inside the writer was caught and it went on (the requests it was
    /// storing got an error; nothing acknowledged was lost).
    pub restarts: u64,
    pub last_failure: Option<String>,
}

impl WriterHealth {
    pub fn report(&self) -> WriterReport {
        let last = self
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let status = if self.is_stopped() {
            "stopped"
        } else if last
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < RECENT_FAILURE)
        {
            "failing"
        } else {
            "ok"
        };
        WriterReport {
            status,
            restarts: self.restarts.load(Ordering::Relaxed),
            last_failure: last.map(|(_, message)| message),
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

/// Marks the writer stopped when its thread ends. Ending for any reason but the server's own
/// shutdown (the queue closed) ends the process: a server that can no longer store events
/// must not go on acknowledging nothing; its supervisor (Docker, Kubernetes, systemd)
/// restarts it, and nothing acknowledged was lost.
struct StoppedOnExit {
    health: Arc<WriterHealth>,
    shutting_down: bool,
}

impl Drop for StoppedOnExit {
    fn drop(&mut self) {
        self.health.stopped.store(true, Ordering::Relaxed);
        if !self.shutting_down {
            tracing::error!("the event writer stopped; exiting so that the server is restarted");
            std::process::exit(70);
        }
    }
}

/// What the writer thread works with.
struct Writer {
    store: Store,
    users: Arc<RwLock<Users>>,
    /// Told of every event taken in, in event order, before the view counts it (a
    /// cluster's feature store).
    features: Arc<Features>,
    learning: Arc<Learning>,
    /// Items the serving catalog holds: events for items imported since start wait for a
    /// restart (plugins know only this catalog).
    catalog_len: u32,
    health: Arc<WriterHealth>,
}

impl EventWriter {
    /// Starts the writer thread on its own connection to `database`.
    /// `max_batch` is the largest append a request may make.
    pub fn start(
        database: &Database,
        users: Arc<RwLock<Users>>,
        features: Arc<Features>,
        learning: Arc<Learning>,
        catalog_len: usize,
        max_batch: usize,
    ) -> Result<Self, StoreError> {
        let capacity_events = MIN_QUEUE_EVENTS.max(max_batch.saturating_mul(4));
        Self::start_with_queue(
            database,
            users,
            features,
            learning,
            catalog_len,
            capacity_events,
        )
    }

    /// [`Self::start`] with a queue of `capacity_events` events.
    fn start_with_queue(
        database: &Database,
        users: Arc<RwLock<Users>>,
        features: Arc<Features>,
        learning: Arc<Learning>,
        catalog_len: usize,
        capacity_events: usize,
    ) -> Result<Self, StoreError> {
        let store = Store::connect(database)?;
        let (queue, jobs) = channel();
        let health = Arc::new(WriterHealth::default());
        let writer = Writer {
            store,
            users,
            features,
            learning,
            catalog_len: u32::try_from(catalog_len).unwrap_or(u32::MAX),
            health: health.clone(),
        };
        std::thread::Builder::new()
            .name("event-writer".into())
            .spawn(move || writer.run(jobs))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the event writer: {e}")))?;
        Ok(Self {
            queue,
            capacity: Arc::new(Semaphore::new(capacity_events)),
            capacity_events,
            health,
        })
    }

    /// Stores `events` durably (all or nothing), then feeds them to learning. With an
    /// idempotency key seen before for the same request, answers that request's receipt
    /// without storing anything. Waits while the queue holds its capacity of events; a
    /// caller that gives up meanwhile (the request timeout) stores nothing.
    pub async fn append(
        &self,
        events: Vec<NewEvent>,
        idempotency: Option<Idempotency>,
    ) -> Result<Receipt, AppendError> {
        let wanted = u32::try_from(events.len().min(self.capacity_events)).unwrap_or(u32::MAX);
        let queued = self
            .capacity
            .clone()
            .acquire_many_owned(wanted)
            .await
            .map_err(|_| AppendError::Stopped)?;
        let (reply, answer) = oneshot::channel();
        let job = AppendJob {
            events,
            idempotency,
            reply,
            _queued: queued,
        };
        self.queue.send(job).map_err(|_| AppendError::Stopped)?;
        answer.await.map_err(|_| AppendError::Stopped)?
    }

    pub fn health(&self) -> &WriterHealth {
        &self.health
    }
}

impl Writer {
    /// Takes every append request waiting and stores them in one transaction, until the
    /// server stops. A panic while storing a group is caught: those requests get an error,
    /// the writer goes on (and counts it); the thread ending for any other reason marks the
    /// writer stopped, which `/health` reports.
    fn run(self, jobs: Receiver<AppendJob>) {
        let mut stopped_on_exit = StoppedOnExit {
            health: self.health.clone(),
            shutting_down: false,
        };
        let mut keys_expired_at = Instant::now();
        loop {
            // Checked on every turn: a server that never idles expires keys too.
            if keys_expired_at.elapsed() >= KEY_EXPIRY_INTERVAL {
                keys_expired_at = Instant::now();
                if let Err(error) = self.store.expire_idempotency_keys() {
                    tracing::warn!(%error, "cannot expire idempotency keys");
                }
            }
            let first = match jobs.recv_timeout(IDLE_CHECK) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.supervised("taking in another process's writes", || self.idle());
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    stopped_on_exit.shutting_down = true;
                    return;
                }
            };
            let mut group = vec![first];
            let mut size = group[0].events.len();
            while size < MAX_GROUP_EVENTS {
                match jobs.try_recv() {
                    Ok(job) => {
                        size += job.events.len();
                        group.push(job);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            // A requester that gave up (its request timed out, its client left) was told its
            // events were not stored: keep it that way.
            group.retain(|job| !job.reply.is_closed());
            if !group.is_empty() {
                let writer = &self;
                let jobs = &jobs;
                self.supervised("storing events", move || writer.store_group(group, jobs));
            }
        }
    }

    /// Runs `work`, catching a panic: the writer must outlive a bug in one group.
    fn supervised(&self, what: &str, work: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            tracing::error!(what, %message, "the event writer failed; it goes on with the next requests");
            self.health.restarts.fetch_add(1, Ordering::Relaxed);
            *self
                .health
                .last_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), format!("{what}: {message}")));
        }
    }

    /// Stores one group and answers its requests. `jobs` is the queue, for the requests that
    /// must be turned away while the database cannot be reached.
    fn store_group(&self, mut group: Vec<AppendJob>, jobs: &Receiver<AppendJob>) {
        #[cfg(test)]
        if group
            .iter()
            .any(|job| job.events.iter().any(|e| e.user == tests::PANIC_USER))
        {
            panic!("a test asked the writer to fail");
        }
        let outcomes = loop {
            let outcomes = self.append(&group);
            match outcomes {
                // Another process holds the write lock longer than the busy timeout (a large
                // `recohost import`): keep waiting for as long as someone waits for an
                // answer. A client that gives up gets the request timeout's 503, and its
                // events are not stored.
                Err(error) if error.is_busy() => {
                    group.retain(|job| !job.reply.is_closed());
                    if group.is_empty() {
                        return;
                    }
                    tracing::warn!(%error, "another process holds the database's write lock; waiting to store events");
                }
                other => break other,
            }
        };
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            Err(error) => {
                tracing::error!(%error, events = group.iter().map(|j| j.events.len()).sum::<usize>(), "cannot store events");
                let unavailable = error.is_unavailable();
                if unavailable {
                    // Those queued behind this group would meet the same.
                    turn_away_queued(jobs, &error);
                }
                let error = error.to_string();
                for job in group {
                    let _ = job.reply.send(Err(if unavailable {
                        AppendError::Unavailable(error.clone())
                    } else {
                        AppendError::Store(error.clone())
                    }));
                }
                return;
            }
        };
        let first_stored = outcomes.iter().find_map(|outcome| match outcome {
            AppendOutcome::Stored(rows) => rows.first().map(|r| r.id),
            _ => None,
        });
        // What another writer stored before this group (and the users it registered), then
        // this group's own rows. Until that can be read, nothing is recorded or answered:
        // recording this group first would skip the other writer's events for good (the
        // view, and learning, go by event id). The clients wait; one that gives up retries
        // with its Idempotency-Key.
        let mut wait = Duration::from_millis(50);
        while let Err(error) = self.catch_up(first_stored) {
            tracing::error!(%error, "cannot read what another process stored; trying again");
            if error.is_unavailable() {
                // The database went away after this group's commit.
                turn_away_queued(jobs, &error);
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(2));
        }
        self.take_in(outcomes.iter().flat_map(|outcome| match outcome {
            AppendOutcome::Stored(rows) => rows.as_slice(),
            _ => &[],
        }));
        for (job, outcome) in group.into_iter().zip(outcomes) {
            let reply = match outcome {
                AppendOutcome::Stored(rows) => {
                    let (buffer, update_id) = self.learning.push(&rows);
                    Ok(Receipt {
                        first_event_id: rows.first().map(|r| r.id).unwrap_or(0),
                        stored: rows.len(),
                        buffer,
                        update_id,
                        replayed: false,
                    })
                }
                AppendOutcome::Replayed {
                    first_event_id,
                    stored,
                } => Ok(Receipt {
                    first_event_id,
                    stored,
                    buffer: self.learning.push(&[]).0,
                    update_id: None,
                    replayed: true,
                }),
                AppendOutcome::KeyReused => Err(AppendError::KeyReused),
                AppendOutcome::Failed(error) => {
                    tracing::error!(%error, "cannot store one request's events");
                    Err(AppendError::Store(error))
                }
            };
            let _ = job.reply.send(reply);
        }
    }

    /// Stores the group's requests in one transaction.
    fn append(&self, group: &[AppendJob]) -> Result<Vec<AppendOutcome>, StoreError> {
        let requests: Vec<AppendRequest<'_>> = group
            .iter()
            .map(|job| AppendRequest {
                events: &job.events,
                idempotency: job
                    .idempotency
                    .as_ref()
                    .map(|i| (i.key.as_str(), i.request_hash.as_str())),
            })
            .collect();
        let view = self.users.read().unwrap_or_else(|p| p.into_inner());
        self.store
            .append_requests(&requests, &|id| view.index_of(id))
    }

    /// When idle: anything another process stored.
    fn idle(&self) {
        let newest = self.store.last_event_id().unwrap_or(0);
        let known = self
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .last_event_id();
        if newest > known
            && let Err(error) = self.catch_up(Some(newest + 1))
        {
            tracing::warn!(%error, "cannot take in what another process stored; trying again in a second");
        }
    }

    /// Takes stored events (in event order, after everything before them) into the feature
    /// store, then into the view. In that order: a reader that finds the view's newest
    /// event id for a user then finds it in the feature store too.
    fn take_in<'a>(&self, rows: impl IntoIterator<Item = &'a EventRow> + Clone) {
        if let Features::Shared(_) = *self.features {
            let view = self.users.read().unwrap_or_else(|p| p.into_inner());
            let mut newest: HashMap<u32, i64> = HashMap::new();
            let events: Vec<(EventRow, i64)> = rows
                .clone()
                .into_iter()
                .filter(|row| (row.user as usize) < view.len())
                .map(|row| {
                    let before = newest
                        .entry(row.user)
                        .or_insert(view.newest_event(row.user));
                    (*row, std::mem::replace(before, row.id))
                })
                .collect();
            drop(view);
            self.features.recorded(&events);
        }
        let mut view = self.users.write().unwrap_or_else(|p| p.into_inner());
        for row in rows {
            view.record(row);
        }
    }

    /// Brings the in-memory view and the learning buffer up to what the store holds before
    /// event `before` (exclusive): users registered by anyone, and events another writer
    /// stored (`recohost import` into this database), a page at a time so that requests
    /// reading the view never wait long. Events for items the serving catalog does not hold
    /// are left for the next start.
    fn catch_up(&self, before: Option<i64>) -> Result<(), StoreError> {
        let known_users = self.users.read().unwrap_or_else(|p| p.into_inner()).len() as u32;
        let users = self.store.users_from(known_users)?;
        if !users.is_empty() {
            let mut view = self.users.write().unwrap_or_else(|p| p.into_inner());
            for (index, external_id) in users {
                if index as usize == view.len() {
                    view.register(index, external_id);
                }
            }
        }
        let Some(before) = before else {
            return Ok(());
        };
        let mut taken = 0;
        loop {
            let known = self
                .users
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .last_event_id();
            if known + 1 >= before {
                break;
            }
            let page = self
                .store
                .events_between(known, before, self.catalog_len, CATCH_UP_PAGE)?;
            let complete = page.len() < CATCH_UP_PAGE;
            let seen = match page.last() {
                Some(last) if !complete => last.id,
                _ => before - 1,
            };
            self.take_in(&page);
            self.users
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .skip_to(seen);
            taken += page.len();
            self.learning.push(&page);
            if complete {
                break;
            }
        }
        if taken > 0 {
            tracing::info!(events = taken, "took in events another process stored");
        }
        Ok(())
    }
}

/// Answers every request still queued with `error` (the database cannot be reached): they
/// were not attempted, so they are told now instead of waiting out their timeout.
fn turn_away_queued(jobs: &Receiver<AppendJob>, error: &StoreError) {
    let error = error.to_string();
    while let Ok(job) = jobs.try_recv() {
        let _ = job.reply.send(Err(AppendError::Unavailable(error.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ItemRow;

    /// Events of this user make the writer panic (test builds only): how the tests below
    /// check that the writer outlives a failure.
    pub(super) const PANIC_USER: &str = "\u{1}panic-the-writer";

    fn event(user: &str) -> NewEvent {
        NewEvent {
            user: user.into(),
            item: 0,
            kind: EventKind::Click,
            value: 1.0,
            timestamp: 1,
        }
    }

    /// A writer over a fresh database with one item.
    fn writer(dir: &std::path::Path) -> EventWriter {
        writer_with_queue(dir, 1_000)
    }

    fn writer_with_queue(dir: &std::path::Path, capacity_events: usize) -> EventWriter {
        let path = dir.join("db");
        let store = Arc::new(Store::open(&path).unwrap());
        store
            .import(&crate::store::ImportBatch {
                items: vec![ItemRow {
                    external_id: "42".into(),
                    title: "Answer".into(),
                    tags: vec![],
                }],
                events: vec![],
            })
            .unwrap();
        let plugins = Arc::new(crate::plugins::LivePlugins::new(Default::default()));
        let learning = Arc::new(
            Learning::new(Default::default(), store, plugins, 1, Default::default(), 0).unwrap(),
        );
        let users = Arc::new(RwLock::new(Users::default()));
        let features = Arc::new(Features::Local {
            users: users.clone(),
            history_limit: 500,
        });
        EventWriter::start_with_queue(
            &Database::Sqlite(path),
            users,
            features,
            learning,
            1,
            capacity_events,
        )
        .unwrap()
    }

    fn stored_events(dir: &std::path::Path) -> u64 {
        Store::open(&dir.join("db"))
            .unwrap()
            .counts()
            .unwrap()
            .events
    }

    #[tokio::test]
    async fn a_write_lock_held_past_the_busy_timeout_delays_appends_without_failing_them() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path());
        // Another process (a large `recohost import`) holds the write lock for 6 s, past
        // the 5 s busy timeout of the writer's connection.
        let blocker = std::thread::spawn({
            let path = dir.path().join("db");
            move || {
                let connection = rusqlite::Connection::open(path).unwrap();
                connection.execute_batch("BEGIN IMMEDIATE").unwrap();
                std::thread::sleep(Duration::from_secs(6));
                connection.execute_batch("COMMIT").unwrap();
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let receipt = writer.append(vec![event("a")], None).await;
        assert!(receipt.is_ok(), "{receipt:?}");
        blocker.join().unwrap();
        assert_eq!(stored_events(dir.path()), 1);
    }

    #[tokio::test]
    async fn requests_that_gave_up_store_nothing_and_the_queue_is_bounded_in_events() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer_with_queue(dir.path(), 10);
        // Another connection holds the write lock: the writer's next transaction waits.
        let blocker = rusqlite::Connection::open(dir.path().join("db")).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let patient = {
            let writer = writer.clone();
            tokio::spawn(async move { writer.append(vec![event("a"); 4], None).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Queued behind it, then abandoned (the request timed out, the client left).
        let abandoned = tokio::time::timeout(
            Duration::from_millis(100),
            writer.append(vec![event("b"); 4], None),
        )
        .await;
        assert!(abandoned.is_err(), "it could not have been stored yet");
        // 4 + 4 events queued, room for 2: a third request waits for room, and gives up.
        let waiting = tokio::time::timeout(
            Duration::from_millis(100),
            writer.append(vec![event("c"); 4], None),
        )
        .await;
        assert!(waiting.is_err(), "it waited for room in the queue");
        blocker.execute_batch("COMMIT").unwrap();
        let receipt = patient.await.unwrap().unwrap();
        assert_eq!(receipt.stored, 4);
        // Once the writer is done, only the patient request's events are stored.
        let done = writer.append(vec![event("d")], None).await.unwrap();
        assert_eq!(done.stored, 1);
        assert_eq!(stored_events(dir.path()), 5);
    }

    #[tokio::test]
    async fn the_writer_outlives_a_failure_and_health_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path());
        assert!(writer.append(vec![event("a")], None).await.is_ok());
        let failed = writer.append(vec![event(PANIC_USER)], None).await;
        assert!(matches!(failed, Err(AppendError::Stopped)), "{failed:?}");
        // The requester hears of the failure while the writer unwinds; then it is counted.
        let mut report = writer.health().report();
        for _ in 0..100 {
            if report.restarts > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            report = writer.health().report();
        }
        assert_eq!(
            (report.status, report.restarts),
            ("failing", 1),
            "{report:?}"
        );
        assert!(report.last_failure.unwrap().contains("a test asked"));
        // Before, the thread was gone: every later append failed while /health said ok.
        let receipt = writer.append(vec![event("b")], None).await.unwrap();
        assert_eq!(receipt.stored, 1);
    }

    #[tokio::test]
    async fn a_retry_with_the_same_idempotency_key_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path());
        let key = |hash: &str| {
            Some(Idempotency {
                key: "retry-1".into(),
                request_hash: hash.into(),
            })
        };
        let first = writer
            .append(vec![event("a"), event("a")], key("h"))
            .await
            .unwrap();
        let again = writer
            .append(vec![event("a"), event("a")], key("h"))
            .await
            .unwrap();
        assert!(again.replayed && !first.replayed);
        assert_eq!(
            (again.first_event_id, again.stored),
            (first.first_event_id, 2)
        );
        let other = writer.append(vec![event("a")], key("other")).await;
        assert!(matches!(other, Err(AppendError::KeyReused)), "{other:?}");
    }

    fn catalog() -> Catalog {
        Catalog::new(vec![ItemRow {
            external_id: "42".into(),
            title: "Answer".into(),
            tags: vec![],
        }])
    }

    fn input(event_type: &str, rating: Option<f64>) -> EventInput {
        EventInput {
            user_id: "u".into(),
            item_id: "42".into(),
            event_type: event_type.into(),
            rating,
            timestamp: Some(7),
        }
    }

    #[test]
    fn accepts_ratings_in_range_and_plain_interactions() {
        let config = EventsConfig::default();
        let rated = validate(&input("rate", Some(4.5)), &catalog(), &config).unwrap();
        assert_eq!(
            (rated.item, rated.kind, rated.value, rated.timestamp),
            (0, EventKind::Rate, 4.5, 7)
        );
        let clicked = validate(&input("click", None), &catalog(), &config).unwrap();
        assert_eq!((clicked.kind, clicked.value), (EventKind::Click, 1.0));
    }

    #[test]
    fn refuses_bad_events_with_the_reason() {
        let config = EventsConfig::default();
        let check = |input: EventInput| validate(&input, &catalog(), &config).unwrap_err();
        assert_eq!(check(input("rate", None)), EventError::MissingRating);
        assert!(matches!(
            check(input("rate", Some(f64::NAN))),
            EventError::RatingOutOfRange { .. }
        ));
        assert!(matches!(
            check(input("rate", Some(9.0))),
            EventError::RatingOutOfRange { .. }
        ));
        assert!(matches!(
            check(input("rate", Some(0.0))),
            EventError::RatingOutOfRange { .. }
        ));
        assert_eq!(
            check(input("click", Some(3.0))),
            EventError::UnexpectedRating("click".into())
        );
        assert_eq!(
            check(input("like", None)),
            EventError::UnknownType("like".into())
        );
        let mut unknown = input("view", None);
        unknown.item_id = "7".into();
        assert_eq!(check(unknown), EventError::UnknownItem("7".into()));
        let mut future = input("view", None);
        future.timestamp = Some(unix_now() + 3 * 86_400);
        assert!(matches!(check(future), EventError::FutureTimestamp(_)));
    }
}

//! The exposure log: every recommendation served under an experiment, written to SQLite in
//! batches by one thread with its own connection, off the request path.
//!
//! Requests only queue a record (never wait for the disk). The thread takes everything
//! waiting and stores it in one transaction, so under load one commit covers many exposures.
//! [`ExposureLog::flush`] waits until everything queued before it is stored: results and
//! counts call it first, and shutdown calls it last.
//!
//! The queue is bounded ([`QUEUE_CAPACITY`]): when the disk cannot keep up (or is stuck), a
//! record that finds the queue full is dropped and counted (`dropped`, and
//! `recohost_exposures_dropped_total`) rather than held in memory without bound or making the
//! request wait. A dropped exposure is missing from the results. Its sticky assignment, if
//! it made one, is kept aside and stored with the next batch: it decides the user's arm after
//! a restart, and there is at most one per user and experiment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::live::LiveExperiment;
use crate::store::{Database, Durability, ExposureRow, StickyRow, Store, StoreError};

/// An exposure as the request path queues it: cheap to build (one `Arc` and the user ID);
/// the writer thread turns it into an [`ExposureRow`].
pub struct PendingExposure {
    pub experiment: Arc<LiveExperiment>,
    pub group: usize,
    pub user_id: String,
    pub model_version: u64,
    pub after_event: i64,
    pub at_ms: u64,
}

impl PendingExposure {
    fn into_row(self) -> ExposureRow {
        let definition = &self.experiment.definition;
        let group = &definition.groups[self.group];
        ExposureRow {
            experiment_id: definition.id.clone(),
            group_name: group.name.clone(),
            user_id: self.user_id,
            plugin: group.plugin.clone(),
            model_version: self.model_version,
            after_event: self.after_event,
            at_ms: self.at_ms,
            weights_revision: self.experiment.weights_revision(),
        }
    }
}

/// Most records one transaction stores.
const MAX_BATCH: usize = 10_000;
/// Records that may wait for the writer: several seconds of exposures at the server's
/// highest request rates, about 10 MiB at most.
pub const QUEUE_CAPACITY: usize = 65_536;
/// How long `flush` waits for the writer before giving up.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

enum Message {
    Record(PendingExposure, Option<StickyRow>),
    Flush(SyncSender<()>),
}

/// Handle to the writer thread.
pub struct ExposureLog {
    queue: SyncSender<Message>,
    counters: Arc<Counters>,
    /// Sticky assignments whose exposure found the queue full: kept (they decide a user's
    /// arm after a restart, and there is at most one per user and experiment), and stored
    /// with the next batch.
    overflow: Arc<Mutex<Vec<StickyRow>>>,
}

/// What the writer has done, for the API.
#[derive(Default)]
struct Counters {
    stored: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// Exposures since start: written, failed to write, dropped because the queue was full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExposureLogCounts {
    pub stored: u64,
    pub failed: u64,
    pub dropped: u64,
}

impl ExposureLog {
    /// Starts the writer thread on its own connection to `database`.
    pub fn start(database: &Database) -> Result<Self, StoreError> {
        Self::start_with_capacity(database, QUEUE_CAPACITY)
    }

    /// [`Self::start`] with a queue of `capacity` records.
    pub fn start_with_capacity(database: &Database, capacity: usize) -> Result<Self, StoreError> {
        // Exposures are measurements nobody was promised: relaxed durability keeps them safe
        // from a crash of the process and only a power cut can lose the last batches, and it
        // saves a disk sync per batch (the writer used a fifth of the server's CPU under load).
        let store = Store::connect_with(database, Durability::Relaxed)?;
        let (queue, messages) = sync_channel(capacity);
        let counters = Arc::new(Counters::default());
        let overflow = Arc::new(Mutex::new(Vec::new()));
        let writer = Writer {
            store,
            counters: counters.clone(),
            overflow: overflow.clone(),
        };
        std::thread::Builder::new()
            .name("exposure-log".into())
            .spawn(move || writer.run(&messages))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the exposure log: {e}")))?;
        Ok(Self {
            queue,
            counters,
            overflow,
        })
    }

    /// Queues an exposure (and the sticky assignment it made, if any); never waits.
    pub fn record(&self, exposure: PendingExposure, sticky: Option<StickyRow>) {
        match self.queue.try_send(Message::Record(exposure, sticky)) {
            Ok(()) => {}
            Err(TrySendError::Full(message)) => {
                if let Message::Record(_, Some(sticky)) = message {
                    self.overflow
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(sticky);
                }
                if self
                    .counters
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(10_000)
                {
                    tracing::warn!("the exposure log's queue is full; dropping exposures");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Blocks until every record queued before this call is stored (or failed), or
    /// [`FLUSH_TIMEOUT`] has passed (a full queue included). Blocking: call it off the async
    /// runtime.
    pub fn flush(&self) {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        let (done, wait) = sync_channel(1);
        let mut flush = Message::Flush(done);
        loop {
            match self.queue.try_send(flush) {
                Ok(()) => break,
                Err(TrySendError::Full(message)) if Instant::now() < deadline => {
                    flush = message;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {
                    tracing::warn!("the exposure log did not flush in time");
                    return;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if wait.recv_timeout(left).is_err() {
            tracing::warn!("the exposure log did not flush in time");
        }
    }

    /// Exposures since start.
    pub fn counts(&self) -> ExposureLogCounts {
        ExposureLogCounts {
            stored: self.counters.stored.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
        }
    }
}

/// One transaction's worth of queued messages.
#[derive(Default)]
struct Batch {
    exposures: Vec<ExposureRow>,
    sticky: Vec<StickyRow>,
    waiters: Vec<SyncSender<()>>,
}

impl Batch {
    fn take(&mut self, message: Message) {
        match message {
            Message::Record(exposure, sticky) => {
                self.exposures.push(exposure.into_row());
                self.sticky.extend(sticky);
            }
            Message::Flush(done) => self.waiters.push(done),
        }
    }
}

/// The writer thread's side.
struct Writer {
    store: Store,
    counters: Arc<Counters>,
    overflow: Arc<Mutex<Vec<StickyRow>>>,
}

/// How often an idle writer stores sticky assignments that overflowed the queue.
const OVERFLOW_CHECK: Duration = Duration::from_secs(1);

impl Writer {
    fn run(&self, messages: &Receiver<Message>) {
        loop {
            let mut batch = Batch::default();
            let mut closed = false;
            match messages.recv_timeout(OVERFLOW_CHECK) {
                Ok(first) => batch.take(first),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => closed = true,
            }
            while !closed && batch.exposures.len() < MAX_BATCH {
                match messages.try_recv() {
                    Ok(message) => batch.take(message),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => closed = true,
                }
            }
            batch.sticky.extend(
                self.overflow
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drain(..),
            );
            self.store_batch(batch);
            if closed {
                break;
            }
        }
    }

    fn store_batch(&self, batch: Batch) {
        let count = batch.exposures.len() as u64;
        if !batch.exposures.is_empty() || !batch.sticky.is_empty() {
            match self.store.append_exposures(&batch.exposures, &batch.sticky) {
                Ok(()) => {
                    self.counters.stored.fetch_add(count, Ordering::Relaxed);
                }
                Err(error) => {
                    // Exposures are measurements, not acknowledged data: a failed batch is
                    // counted and logged, and serving goes on.
                    self.counters.failed.fetch_add(count, Ordering::Relaxed);
                    tracing::error!(%error, exposures = count, "cannot store exposures");
                }
            }
        }
        for done in batch.waiters {
            let _ = done.send(());
        }
    }
}

//! The exposure log: every recommendation served under an experiment, written to SQLite in
//! batches by one thread with its own connection, off the request path.
//!
//! Requests only queue a record (never wait for the disk). The thread takes everything
//! waiting and stores it in one transaction, so under load one commit covers many exposures.
//! [`ExposureLog::flush`] waits until everything queued before it is stored: results and
//! counts call it first, and shutdown calls it last.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, channel, sync_channel};
use std::time::Duration;

use super::live::LiveExperiment;
use crate::store::{ExposureRow, StickyRow, Store, StoreError};

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
        }
    }
}

/// Most records one transaction stores.
const MAX_BATCH: usize = 10_000;
/// How long `flush` waits for the writer before giving up.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

enum Message {
    Record(PendingExposure, Option<StickyRow>),
    Flush(SyncSender<()>),
}

/// Handle to the writer thread.
pub struct ExposureLog {
    queue: Sender<Message>,
    counters: Arc<Counters>,
}

/// What the writer has done, for the API.
#[derive(Default)]
struct Counters {
    stored: AtomicU64,
    failed: AtomicU64,
}

impl ExposureLog {
    /// Starts the writer thread on its own connection to the database at `path`.
    pub fn start(path: &Path) -> Result<Self, StoreError> {
        // Exposures are measurements nobody was promised: in WAL mode, NORMAL keeps them safe
        // from a crash of the process and only a power cut can lose the last batches, and it
        // saves a disk sync per batch (the writer used a fifth of the server's CPU under load).
        let store = Store::open_with_synchronous(path, "NORMAL")?;
        let (queue, messages) = channel();
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        std::thread::Builder::new()
            .name("exposure-log".into())
            .spawn(move || write_loop(&store, &messages, &thread_counters))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the exposure log: {e}")))?;
        Ok(Self { queue, counters })
    }

    /// Queues an exposure (and the sticky assignment it made, if any).
    pub fn record(&self, exposure: PendingExposure, sticky: Option<StickyRow>) {
        if self.queue.send(Message::Record(exposure, sticky)).is_err() {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Blocks until every record queued before this call is stored (or failed).
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        let sent = self.queue.send(Message::Flush(done)).is_ok();
        if sent && wait.recv_timeout(FLUSH_TIMEOUT).is_err() {
            tracing::warn!("the exposure log did not flush in time");
        }
    }

    /// (stored, failed) exposures since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counters.stored.load(Ordering::Relaxed),
            self.counters.failed.load(Ordering::Relaxed),
        )
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

fn write_loop(store: &Store, messages: &Receiver<Message>, counters: &Counters) {
    while let Ok(first) = messages.recv() {
        let mut batch = Batch::default();
        batch.take(first);
        let mut closed = false;
        while batch.exposures.len() < MAX_BATCH {
            match messages.try_recv() {
                Ok(message) => batch.take(message),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let count = batch.exposures.len() as u64;
        if !batch.exposures.is_empty() || !batch.sticky.is_empty() {
            match store.append_exposures(&batch.exposures, &batch.sticky) {
                Ok(()) => {
                    counters.stored.fetch_add(count, Ordering::Relaxed);
                }
                Err(error) => {
                    // Exposures are measurements, not acknowledged data: a failed batch is
                    // counted and logged, and serving goes on.
                    counters.failed.fetch_add(count, Ordering::Relaxed);
                    tracing::error!(%error, exposures = count, "cannot store exposures");
                }
            }
        }
        for done in batch.waiters {
            let _ = done.send(());
        }
        if closed {
            break;
        }
    }
}

//! The served-list log: the top of every list of recommendations served (a sampled share,
//! `sample_rate`), written to the store in batches by one thread with its own connection,
//! off the request path. Model monitoring reads them back to learn which lists were hit.
//!
//! Like the exposure log, requests only queue a record and never wait; a record that finds
//! the bounded queue full is dropped and counted. These are measurements: a dropped list is
//! missing from the quality figures, nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use crate::store::{Database, Durability, ServedListRow, Store, StoreError};

/// Lists that may wait for the writer.
const QUEUE_CAPACITY: usize = 65_536;
/// Most lists one transaction stores.
const MAX_BATCH: usize = 10_000;

/// Handle to the writer thread.
pub struct ServedLog {
    queue: SyncSender<ServedListRow>,
    top_k: usize,
    sample_rate: f64,
    dropped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ServedLog {
    /// Starts the writer on its own connection to `database`.
    pub fn start(database: &Database, top_k: usize, sample_rate: f64) -> Result<Self, StoreError> {
        let store = Store::connect_with(database, Durability::Relaxed)?;
        let (queue, lists) = sync_channel(QUEUE_CAPACITY);
        let failed = Arc::new(AtomicU64::new(0));
        let writer_failed = failed.clone();
        std::thread::Builder::new()
            .name("served-lists".into())
            .spawn(move || write_batches(&store, &lists, &writer_failed))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the served-list log: {e}")))?;
        Ok(Self {
            queue,
            top_k,
            sample_rate,
            dropped: Arc::new(AtomicU64::new(0)),
            failed,
        })
    }

    /// Queues a list (its top `top_k`) if it falls in the sample; never waits.
    pub fn record(&self, mut list: ServedListRow) {
        if self.sample_rate < 1.0 && rand::random::<f64>() >= self.sample_rate {
            return;
        }
        list.items.truncate(self.top_k);
        list.scores.truncate(self.top_k);
        match self.queue.try_send(list) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(10_000)
                {
                    tracing::warn!("the served-list log's queue is full; dropping lists");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lists dropped (queue full) and failed to store, since start.
    pub fn lost(&self) -> (u64, u64) {
        (
            self.dropped.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn write_batches(store: &Store, lists: &Receiver<ServedListRow>, failed: &AtomicU64) {
    loop {
        let first = match lists.recv_timeout(Duration::from_secs(1)) {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        batch.extend(lists.try_iter().take(MAX_BATCH - 1));
        if let Err(error) = store.append_served_lists(&batch) {
            failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::error!(%error, lists = batch.len(), "cannot store served lists");
        }
    }
}

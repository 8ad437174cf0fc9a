//! The served-list log: the top of every list of recommendations served (a sampled share,
//! `sample_rate`), written to the store in batches by one thread with its own connection,
//! off the request path. Model monitoring reads them back to learn which lists were hit.
//!
//! Like the exposure log, requests only queue a record and never wait; a record that finds
//! the bounded queue full is dropped and counted. These are measurements: a dropped list is
//! missing from the quality figures, nothing else.

use crate::batch_writer::BatchWriter;
use crate::store::{Database, Durability, ServedListRow, Store, StoreError};

/// Lists that may wait for the writer.
const QUEUE_CAPACITY: usize = 65_536;

/// Handle to the writer thread.
pub struct ServedLog {
    writer: BatchWriter<ServedListRow>,
    top_k: usize,
    sample_rate: f64,
}

impl ServedLog {
    /// Starts the writer on its own connection to `database`.
    pub fn start(database: &Database, top_k: usize, sample_rate: f64) -> Result<Self, StoreError> {
        let store = Store::connect_with(database, Durability::Relaxed)?;
        let sink = Box::new(move |lists: Vec<ServedListRow>| {
            if lists.is_empty() {
                return Ok(());
            }
            store
                .append_served_lists(&lists)
                .map_err(|error| error.to_string())
        });
        let writer = BatchWriter::start("served-lists", QUEUE_CAPACITY, sink)
            .map_err(|e| StoreError::Corrupt(format!("cannot start the served-list log: {e}")))?;
        Ok(Self {
            writer,
            top_k,
            sample_rate,
        })
    }

    /// Queues a list (its top `top_k`) if it falls in the sample; never waits.
    pub fn record(&self, mut list: ServedListRow) {
        if self.sample_rate < 1.0 && rand::random::<f64>() >= self.sample_rate {
            return;
        }
        list.items.truncate(self.top_k);
        list.scores.truncate(self.top_k);
        // A list the queue has no room for is counted by the writer and dropped.
        let _ = self.writer.record(list);
    }

    /// Blocks until the lists queued before this call are stored (shutdown). Blocking.
    pub fn flush(&self) {
        self.writer.flush();
    }

    /// Lists dropped (queue full) and failed to store, since start.
    pub fn lost(&self) -> (u64, u64) {
        let counts = self.writer.counts();
        (counts.dropped, counts.failed)
    }
}

//! The exposure log: every recommendation served under an experiment, written to the store
//! in batches by a thread with its own connection, off the request path
//! ([`crate::batch_writer`]: requests never wait for the disk, one commit covers many
//! exposures). [`ExposureLog::flush`] waits until everything queued before it is stored:
//! results and counts call it first, and shutdown calls it last.
//!
//! The queue is bounded ([`QUEUE_CAPACITY`]): when the disk cannot keep up (or is stuck), a
//! record that finds the queue full is dropped and counted (`dropped`, and
//! `recohost_exposures_dropped_total`) rather than held in memory without bound or making the
//! request wait. A dropped exposure is missing from the results. Its sticky assignment, if
//! it made one, is kept aside and stored with the next batch: it decides the user's arm after
//! a restart, and there is at most one per user and experiment.

use std::sync::{Arc, Mutex};

use super::live::LiveExperiment;
use crate::batch_writer::{BatchWriter, WriterCounts};
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

/// Records that may wait for the writer: several seconds of exposures at the server's
/// highest request rates, about 10 MiB at most.
pub const QUEUE_CAPACITY: usize = 65_536;

/// Handle to the writer thread.
pub struct ExposureLog {
    writer: BatchWriter<(PendingExposure, Option<StickyRow>)>,
    /// Sticky assignments whose exposure found the queue full: kept (they decide a user's
    /// arm after a restart, and there is at most one per user and experiment), and stored
    /// with the next batch.
    overflow: Arc<Mutex<Vec<StickyRow>>>,
}

/// Exposures since start: written, failed to write, dropped because the queue was full.
pub type ExposureLogCounts = WriterCounts;

impl ExposureLog {
    /// Starts the writer thread on its own connection to `database`.
    pub fn start(database: &Database) -> Result<Self, StoreError> {
        // Exposures are measurements nobody was promised: relaxed durability keeps them safe
        // from a crash of the process and only a power cut can lose the last batches, and it
        // saves a disk sync per batch (the writer used a fifth of the server's CPU under load).
        let store = Store::connect_with(database, Durability::Relaxed)?;
        let overflow = Arc::new(Mutex::new(Vec::new()));
        let set_aside = overflow.clone();
        let sink = Box::new(move |records: Vec<(PendingExposure, Option<StickyRow>)>| {
            let mut exposures = Vec::with_capacity(records.len());
            let mut sticky = Vec::new();
            for (exposure, assignment) in records {
                exposures.push(exposure.into_row());
                sticky.extend(assignment);
            }
            sticky.extend(
                set_aside
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drain(..),
            );
            if exposures.is_empty() && sticky.is_empty() {
                return Ok(());
            }
            store
                .append_exposures(&exposures, &sticky)
                .map_err(|error| error.to_string())
        });
        let writer = BatchWriter::start("exposure-log", QUEUE_CAPACITY, sink)
            .map_err(|e| StoreError::Corrupt(format!("cannot start the exposure log: {e}")))?;
        Ok(Self { writer, overflow })
    }

    /// Queues an exposure (and the sticky assignment it made, if any); never waits.
    pub fn record(&self, exposure: PendingExposure, sticky: Option<StickyRow>) {
        if let Err((_, Some(sticky))) = self.writer.record((exposure, sticky)) {
            self.overflow
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(sticky);
        }
    }

    /// Blocks until every record queued before this call is stored (or failed), or 10 s have
    /// passed. Blocking: call it off the async runtime.
    pub fn flush(&self) {
        self.writer.flush();
    }

    /// Exposures since start.
    pub fn counts(&self) -> ExposureLogCounts {
        self.writer.counts()
    }
}

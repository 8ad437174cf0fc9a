//! A measurement log's writer: requests queue records without waiting, and one thread of the
//! log's own stores them in batches (the exposure log, the served-list log).
//!
//! The thread does not wake per record. After the first record of a quiet spell it sleeps
//! [`GATHER`] and then takes everything queued, up to [`MAX_BATCH`], into one transaction.
//! A queue send that finds the thread asleep (not waiting on the queue) wakes nobody, so under
//! load a request pays for a lock-free push, not a futex wake and a context switch, and the
//! store sees one commit per [`GATHER`] instead of one per few records. (Waking per record
//! made the served-list writer a fifth of the server's CPU under wrk, most of it commits.)
//!
//! The queue is bounded: a record that finds it full is handed back to the caller, counted as
//! dropped, and never held in memory without bound or made to wait for the disk. These are
//! measurements nobody was promised; what is acknowledged to clients is stored elsewhere.
//! [`BatchWriter::flush`] waits until everything queued before it is stored (results read
//! after it, and shutdown).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::time::{Duration, Instant};

/// How long the writer lets records gather after the first one before storing them.
pub const GATHER: Duration = Duration::from_millis(20);
/// Most records one batch stores.
pub const MAX_BATCH: usize = 10_000;
/// How often an idle writer calls its sink with an empty batch (work of its own it may have).
const IDLE_CALL: Duration = Duration::from_secs(1);
/// How long `flush` waits for the writer before giving up.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Stores one batch; an error fails the whole batch (counted, logged by the caller's sink).
pub type Sink<T> = Box<dyn FnMut(Vec<T>) -> Result<(), String> + Send>;

enum Message<T> {
    Record(T),
    Flush(SyncSender<()>),
}

/// Records since start: stored, failed to store, dropped because the queue was full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterCounts {
    pub stored: u64,
    pub failed: u64,
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    stored: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// Handle to a writer thread.
pub struct BatchWriter<T> {
    queue: SyncSender<Message<T>>,
    counters: Arc<Counters>,
    name: &'static str,
}

impl<T: Send + 'static> BatchWriter<T> {
    /// Starts the thread `name`, which hands each batch to `sink`.
    pub fn start(name: &'static str, capacity: usize, sink: Sink<T>) -> std::io::Result<Self> {
        let (queue, messages) = sync_channel(capacity);
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&messages, sink, &thread_counters, name))?;
        Ok(Self {
            queue,
            counters,
            name,
        })
    }

    /// Queues a record; never waits. A record the queue has no room for comes back (and is
    /// counted as dropped).
    pub fn record(&self, record: T) -> Result<(), T> {
        match self.queue.try_send(Message::Record(record)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Message::Record(record))) => {
                let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if dropped.is_multiple_of(10_000) {
                    tracing::warn!(writer = self.name, "the queue is full; dropping records");
                }
                Err(record)
            }
            Err(TrySendError::Disconnected(Message::Record(record))) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                Err(record)
            }
            Err(_) => unreachable!("a record was sent"),
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
                    tracing::warn!(writer = self.name, "did not flush in time");
                    return;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if wait.recv_timeout(left).is_err() {
            tracing::warn!(writer = self.name, "did not flush in time");
        }
    }

    pub fn counts(&self) -> WriterCounts {
        WriterCounts {
            stored: self.counters.stored.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
        }
    }
}

fn run<T>(messages: &Receiver<Message<T>>, mut sink: Sink<T>, counters: &Counters, name: &str) {
    loop {
        let mut records = Vec::new();
        let mut waiters = Vec::new();
        let mut closed = false;
        let mut take = |message, records: &mut Vec<T>| match message {
            Message::Record(record) => records.push(record),
            Message::Flush(done) => waiters.push(done),
        };
        match messages.recv_timeout(IDLE_CALL) {
            Ok(first) => {
                // A flush is answered at once; records wait for company.
                if matches!(first, Message::Record(_)) {
                    std::thread::sleep(GATHER);
                }
                take(first, &mut records);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => closed = true,
        }
        while !closed && records.len() < MAX_BATCH {
            match messages.try_recv() {
                Ok(message) => take(message, &mut records),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => closed = true,
            }
        }
        let count = records.len() as u64;
        match sink(records) {
            Ok(()) => counters.stored.fetch_add(count, Ordering::Relaxed),
            Err(error) => {
                tracing::error!(writer = name, %error, records = count, "cannot store a batch");
                counters.failed.fetch_add(count, Ordering::Relaxed)
            }
        };
        for done in waiters {
            let _ = done.send(());
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn collecting(batches: Arc<Mutex<Vec<Vec<u32>>>>) -> Sink<u32> {
        Box::new(move |batch| {
            if !batch.is_empty() {
                batches.lock().unwrap().push(batch);
            }
            Ok(())
        })
    }

    #[test]
    fn records_arriving_together_are_stored_in_one_batch_and_flush_waits_for_them() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let writer = BatchWriter::start("test-writer", 100, collecting(batches.clone())).unwrap();
        for i in 0..50 {
            writer.record(i).unwrap();
        }
        writer.flush();
        let batches = batches.lock().unwrap().clone();
        assert_eq!(
            batches.concat(),
            (0..50).collect::<Vec<_>>(),
            "all, in order"
        );
        assert_eq!(
            batches.len(),
            1,
            "one batch, not one per record: {batches:?}"
        );
        assert_eq!(writer.counts().stored, 50);
    }

    #[test]
    fn a_full_queue_hands_the_record_back_and_counts_it() {
        let (release, wait) = sync_channel::<()>(0);
        let wait = Mutex::new(wait);
        let sink: Sink<u32> = Box::new(move |batch| {
            if !batch.is_empty() {
                let _ = wait.lock().unwrap().recv();
            }
            Ok(())
        });
        let writer = BatchWriter::start("test-writer", 2, sink).unwrap();
        writer.record(1).unwrap();
        // The writer takes 1 and blocks in the sink; the queue then holds two more.
        std::thread::sleep(GATHER * 3);
        writer.record(2).unwrap();
        writer.record(3).unwrap();
        assert_eq!(writer.record(4), Err(4));
        assert_eq!(writer.counts().dropped, 1);
        drop(release);
    }

    #[test]
    fn a_failed_batch_is_counted_as_failed() {
        let writer: BatchWriter<u32> =
            BatchWriter::start("test-writer", 10, Box::new(|_| Err("disk full".into()))).unwrap();
        writer.record(1).unwrap();
        writer.record(2).unwrap();
        writer.flush();
        let counts = writer.counts();
        assert_eq!((counts.stored, counts.failed), (0, 2));
    }
}

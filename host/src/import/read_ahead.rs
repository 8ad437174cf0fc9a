//! Parsing a dataset on a thread of its own while the store writes what was parsed.
//!
//! An import is one thread of SQLite inserts fed by a CSV parser; on two cores the parser's
//! share (a seventh of an import) runs beside the inserts instead of before each of them.

use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// Items per hand-over: a channel send per item would cost more than it saves.
const CHUNK: usize = 4_096;
/// Chunks parsed ahead of the consumer: bounds memory (a few MB of events).
const CHUNKS_AHEAD: usize = 4;

/// `source` read by a thread of its own, a few chunks ahead of the caller, in order. The
/// thread stops when the source ends or the returned iterator is dropped; a panic on it (in
/// the source) is raised again in the caller when it reaches that point, so a failed read
/// never passes for the end of the data.
pub fn read_ahead<T: Send + 'static>(
    source: impl Iterator<Item = T> + Send + 'static,
) -> std::io::Result<ReadAhead<T>> {
    let (chunks, received) = sync_channel::<Vec<T>>(CHUNKS_AHEAD);
    let reader = std::thread::Builder::new()
        .name("import-reader".into())
        .spawn(move || {
            let mut source = source.fuse();
            loop {
                let chunk: Vec<T> = source.by_ref().take(CHUNK).collect();
                // Empty: the source is done. A failed send: the consumer stopped.
                if chunk.is_empty() || chunks.send(chunk).is_err() {
                    return;
                }
            }
        })?;
    Ok(ReadAhead {
        chunks: received,
        current: Vec::new().into_iter(),
        reader: Some(reader),
    })
}

/// The items [`read_ahead`] reads.
pub struct ReadAhead<T> {
    chunks: Receiver<Vec<T>>,
    current: std::vec::IntoIter<T>,
    reader: Option<JoinHandle<()>>,
}

impl<T> Iterator for ReadAhead<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.current.next() {
                return Some(item);
            }
            match self.chunks.recv() {
                Ok(chunk) => self.current = chunk.into_iter(),
                Err(_) => {
                    // The reader is gone: finished, or panicked.
                    if let Some(reader) = self.reader.take()
                        && let Err(panic) = reader.join()
                    {
                        std::panic::resume_unwind(panic);
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_every_item_in_order_across_chunks() {
        let count = CHUNK * 3 + 17;
        let read: Vec<usize> = read_ahead(0..count).unwrap().collect();
        assert_eq!(read, (0..count).collect::<Vec<_>>());
        assert_eq!(read_ahead(std::iter::empty::<u8>()).unwrap().count(), 0);
    }

    #[test]
    fn a_source_that_panics_is_not_taken_for_the_end_of_the_data() {
        let source = (0..CHUNK * 2).inspect(|&n| assert!(n < CHUNK + 5, "the source fails"));
        let mut read = read_ahead(source).unwrap();
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read.by_ref().count()));
        assert!(caught.is_err(), "the reader's panic reaches the caller");
    }

    #[test]
    fn a_consumer_that_stops_early_stops_the_reader() {
        let (done, finished) = std::sync::mpsc::channel();
        // A source that would never end; it reports when the reader drops it.
        struct Endless(std::sync::mpsc::Sender<()>);
        impl Iterator for Endless {
            type Item = u32;
            fn next(&mut self) -> Option<u32> {
                Some(1)
            }
        }
        impl Drop for Endless {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let first: Vec<u32> = read_ahead(Endless(done)).unwrap().take(10).collect();
        assert_eq!(first.len(), 10);
        finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the reader thread stops once the consumer is gone");
    }
}

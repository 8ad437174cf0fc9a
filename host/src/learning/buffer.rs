//! The learning buffer: stored events that some plugin may still need, oldest first, kept in
//! the chunks the event writer appended (one per append). An update takes its batch by
//! cloning the chunks' `Arc`s under the lock the writer also needs, never the events.
//!
//! It is bounded: past its capacity the oldest chunks go. That loses nothing: every event is
//! in the store, and a plugin that needs events older than the buffer reads them from there
//! (or, further behind than the capacity, is retrained from the store).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::store::EventRow;

pub struct Buffer {
    chunks: VecDeque<Arc<[EventRow]>>,
    len: usize,
    capacity: usize,
}

/// The buffer's events at one moment, shared with it.
#[derive(Clone, Default)]
pub struct Batch {
    chunks: Vec<Arc<[EventRow]>>,
}

impl Buffer {
    pub fn new(capacity: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            len: 0,
            capacity,
        }
    }

    /// Appends newly stored events (ids above every buffered one), then drops the oldest
    /// chunks while the buffer is over its capacity.
    pub fn push(&mut self, rows: &[EventRow]) {
        if rows.is_empty() {
            return;
        }
        self.chunks.push_back(Arc::from(rows));
        self.len += rows.len();
        while self.len > self.capacity {
            let Some(oldest) = self.chunks.pop_front() else {
                break;
            };
            self.len -= oldest.len();
        }
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Id of the oldest event held.
    pub fn first_id(&self) -> Option<i64> {
        self.chunks
            .front()
            .and_then(|chunk| chunk.first())
            .map(|e| e.id)
    }

    /// Everything held now.
    pub fn batch(&self) -> Batch {
        Batch {
            chunks: self.chunks.iter().cloned().collect(),
        }
    }

    /// Drops the chunks whose events all have ids up to `id` (learned by everyone).
    pub fn drop_through(&mut self, id: i64) {
        while let Some(oldest) = self.chunks.front() {
            if oldest.last().is_some_and(|e| e.id > id) {
                break;
            }
            self.len -= oldest.len();
            self.chunks.pop_front();
        }
    }

    /// How many events held have an id above `id`.
    pub fn count_after(&self, id: i64) -> usize {
        count_after(self.chunks.iter(), id)
    }
}

impl Batch {
    /// Id of the oldest event in the batch.
    pub fn first_id(&self) -> Option<i64> {
        self.chunks
            .first()
            .and_then(|chunk| chunk.first())
            .map(|e| e.id)
    }

    /// Id of the newest event in the batch (0 when empty).
    pub fn last_id(&self) -> i64 {
        self.chunks
            .last()
            .and_then(|chunk| chunk.last())
            .map(|e| e.id)
            .unwrap_or(0)
    }

    /// The events with an id above `id`, oldest first.
    pub fn after(&self, id: i64) -> impl Iterator<Item = &EventRow> {
        self.chunks
            .iter()
            .skip_while(move |chunk| chunk.last().is_some_and(|e| e.id <= id))
            .flat_map(|chunk| chunk.iter())
            .filter(move |e| e.id > id)
    }

    /// How many events of the batch have an id above `id`.
    pub fn count_after(&self, id: i64) -> usize {
        count_after(self.chunks.iter(), id)
    }
}

fn count_after<'a>(chunks: impl Iterator<Item = &'a Arc<[EventRow]>>, id: i64) -> usize {
    chunks
        .map(|chunk| {
            let learned = chunk.partition_point(|e| e.id <= id);
            chunk.len() - learned
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(ids: std::ops::RangeInclusive<i64>) -> Vec<EventRow> {
        ids.map(super::super::tests::event).collect()
    }

    #[test]
    fn holds_at_most_its_capacity_dropping_whole_chunks_oldest_first() {
        let mut buffer = Buffer::new(10);
        buffer.push(&rows(1..=4));
        buffer.push(&rows(5..=8));
        assert_eq!((buffer.len(), buffer.first_id()), (8, Some(1)));
        buffer.push(&rows(9..=12));
        assert_eq!((buffer.len(), buffer.first_id()), (8, Some(5)));
        assert_eq!(buffer.count_after(6), 6);
    }

    #[test]
    fn a_batch_is_shared_and_filters_by_id() {
        let mut buffer = Buffer::new(100);
        buffer.push(&rows(1..=3));
        buffer.push(&rows(4..=6));
        let batch = buffer.batch();
        buffer.push(&rows(7..=9));
        let ids: Vec<i64> = batch.after(2).map(|e| e.id).collect();
        assert_eq!(ids, vec![3, 4, 5, 6]);
        assert_eq!((batch.first_id(), batch.last_id()), (Some(1), 6));
        assert_eq!(batch.count_after(5), 1);
        // Only whole chunks learned by everyone go.
        buffer.drop_through(4);
        assert_eq!((buffer.len(), buffer.first_id()), (6, Some(4)));
        buffer.drop_through(9);
        assert!(buffer.is_empty());
    }
}

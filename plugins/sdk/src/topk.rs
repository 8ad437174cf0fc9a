//! Picking the best `count` items from a dense score vector: every plugin ends with this.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::{ItemIndex, Scored, kernels};

/// Returns up to `count` items with the highest finite scores, best first, skipping the items
/// in `exclude` (any order) and items whose score is not finite. Ties go to the lower index, so
/// the answer is deterministic.
pub fn top_k(scores: &[f32], count: usize, exclude: &[ItemIndex]) -> Vec<Scored> {
    if count == 0 {
        return Vec::new();
    }
    // A mask: measured faster, natively and in WebAssembly, than walking the sorted
    // `exclude` alongside the scores.
    let mut excluded = vec![false; scores.len()];
    for &item in exclude {
        if let Some(flag) = excluded.get_mut(item as usize) {
            *flag = true;
        }
    }
    top_k_where(scores, count, |index| !excluded[index])
}

/// Like [`top_k`], with an arbitrary filter on item indices.
pub fn top_k_where(
    scores: &[f32],
    count: usize,
    mut allowed: impl FnMut(usize) -> bool,
) -> Vec<Scored> {
    if count == 0 {
        return Vec::new();
    }
    // A min-heap of the best `count` seen so far: its top is the weakest kept candidate.
    let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(count + 1);
    // Once the heap is full, only a score strictly above its weakest can enter (items come in
    // ascending index order, so an equal score loses the tie): one float comparison rejects
    // almost every item.
    let mut floor = f32::NEG_INFINITY;
    // Blocks of scores: once the heap is full most blocks hold nothing above the floor and
    // are skipped with one vectorized test (see `kernels`).
    const BLOCK: usize = 64;
    for (block, chunk) in scores.chunks(BLOCK).enumerate() {
        if heap.len() == count && !kernels::any_above(chunk, floor) {
            continue;
        }
        for (offset, &score) in chunk.iter().enumerate() {
            let index = block * BLOCK + offset;
            let full = heap.len() == count;
            if !score.is_finite() || (full && score <= floor) || !allowed(index) {
                continue;
            }
            heap.push(Candidate {
                score,
                index: index as ItemIndex,
            });
            if heap.len() > count {
                heap.pop();
            }
            if heap.len() == count
                && let Some(weakest) = heap.peek()
            {
                floor = weakest.score;
            }
        }
    }
    let mut best = heap.into_vec();
    best.sort();
    best.into_iter()
        .map(|c| Scored {
            item: c.index,
            score: c.score,
        })
        .collect()
}

/// Ordered so that "less" means "better": higher score first, then lower index.
#[derive(Clone, Copy, PartialEq)]
struct Candidate {
    score: f32,
    index: ItemIndex,
}

impl Eq for Candidate {}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(result: &[Scored]) -> Vec<ItemIndex> {
        result.iter().map(|s| s.item).collect()
    }

    #[test]
    fn picks_highest_scores_best_first() {
        let scores = [0.1, 0.9, 0.5, 0.7, 0.3];
        assert_eq!(items(&top_k(&scores, 3, &[])), vec![1, 3, 2]);
    }

    #[test]
    fn skips_excluded_and_non_finite() {
        let scores = [0.1, f32::NAN, 0.5, f32::INFINITY, 0.3];
        assert_eq!(items(&top_k(&scores, 10, &[2])), vec![4, 0]);
    }

    #[test]
    fn unsorted_and_duplicate_exclusions_work_too() {
        let scores = [0.1, 0.9, 0.5, 0.7, 0.3];
        assert_eq!(items(&top_k(&scores, 3, &[3, 1, 1])), vec![2, 4, 0]);
    }

    #[test]
    fn ties_go_to_lower_index() {
        let scores = [1.0, 1.0, 1.0, 1.0];
        assert_eq!(items(&top_k(&scores, 2, &[])), vec![0, 1]);
    }

    #[test]
    fn zero_count_and_out_of_range_exclusions() {
        assert!(top_k(&[1.0], 0, &[]).is_empty());
        assert_eq!(items(&top_k(&[1.0, 2.0], 5, &[7])), vec![1, 0]);
    }
}

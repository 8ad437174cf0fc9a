//! Top-k ranking metrics, by the protocol of `recohost eval`:
//! binary relevance (an item is relevant when it is in the user's test set), log2 discount,
//! ideal DCG over min(|relevant|, k), and average precision normalized by min(|relevant|, k).

use std::collections::HashSet;

use serde::Serialize;

/// Metrics of one user's ranked list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct UserMetrics {
    pub precision: f64,
    pub recall: f64,
    pub ndcg: f64,
    pub map: f64,
}

/// Scores the first `k` entries of `ranked` against `relevant` (which must not be empty).
pub fn score(ranked: &[u32], relevant: &HashSet<u32>, k: usize) -> UserMetrics {
    if relevant.is_empty() || k == 0 {
        return UserMetrics::default();
    }
    let mut hits = 0usize;
    let mut dcg = 0.0;
    let mut precision_sum = 0.0;
    for (rank, item) in ranked.iter().take(k).enumerate() {
        if relevant.contains(item) {
            hits += 1;
            dcg += 1.0 / ((rank + 2) as f64).log2();
            precision_sum += hits as f64 / (rank + 1) as f64;
        }
    }
    let ideal_hits = relevant.len().min(k);
    let idcg: f64 = (0..ideal_hits)
        .map(|rank| 1.0 / ((rank + 2) as f64).log2())
        .sum();
    UserMetrics {
        precision: hits as f64 / k as f64,
        recall: hits as f64 / relevant.len() as f64,
        ndcg: dcg / idcg,
        map: precision_sum / ideal_hits as f64,
    }
}

/// A rating estimate as scored: clipped to the rating scale `(low, high)`; a missing or
/// non-finite estimate counts as the middle of the scale.
pub fn scored_estimate(estimate: Option<f32>, (low, high): (f32, f32)) -> f32 {
    match estimate {
        Some(estimate) if estimate.is_finite() => estimate.clamp(low, high),
        _ => (low + high) / 2.0,
    }
}

/// Running mean of [`UserMetrics`] over users.
#[derive(Clone, Copy, Debug, Default)]
pub struct MeanMetrics {
    sum: UserMetrics,
    users: usize,
}

impl MeanMetrics {
    pub fn add(&mut self, metrics: UserMetrics) {
        self.sum.precision += metrics.precision;
        self.sum.recall += metrics.recall;
        self.sum.ndcg += metrics.ndcg;
        self.sum.map += metrics.map;
        self.users += 1;
    }

    pub fn merge(&mut self, other: MeanMetrics) {
        self.sum.precision += other.sum.precision;
        self.sum.recall += other.sum.recall;
        self.sum.ndcg += other.sum.ndcg;
        self.sum.map += other.sum.map;
        self.users += other.users;
    }

    pub fn users(&self) -> usize {
        self.users
    }

    pub fn mean(&self) -> UserMetrics {
        let n = self.users.max(1) as f64;
        UserMetrics {
            precision: self.sum.precision / n,
            recall: self.sum.recall / n,
            ndcg: self.sum.ndcg / n,
            map: self.sum.map / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[u32]) -> HashSet<u32> {
        items.iter().copied().collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn perfect_ranking_scores_one() {
        let m = score(&[1, 2, 3], &set(&[1, 2, 3]), 3);
        assert!(
            close(m.precision, 1.0)
                && close(m.recall, 1.0)
                && close(m.ndcg, 1.0)
                && close(m.map, 1.0)
        );
    }

    #[test]
    fn hand_computed_mixed_ranking() {
        // k = 5, relevant {a=10, b=20, c=30}; ranked 10, 99, 20, 98, 97: hits at ranks 1 and 3.
        let m = score(&[10, 99, 20, 98, 97], &set(&[10, 20, 30]), 5);
        assert!(close(m.precision, 2.0 / 5.0));
        assert!(close(m.recall, 2.0 / 3.0));
        // DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) + 1/log2(4) = 2.130929753571457
        assert!(
            close(m.ndcg, 1.5 / (1.0 + 1.0 / 3f64.log2() + 0.5)),
            "{}",
            m.ndcg
        );
        // AP = (1/1 + 2/3) / min(3, 5) = 0.5555...
        assert!(close(m.map, (1.0 + 2.0 / 3.0) / 3.0));
    }

    #[test]
    fn ideal_dcg_counts_at_most_k_relevant_items() {
        // 4 relevant, k = 2, both top slots hit: a perfect top-2.
        let m = score(&[1, 2], &set(&[1, 2, 3, 4]), 2);
        assert!(close(m.ndcg, 1.0) && close(m.map, 1.0) && close(m.recall, 0.5));
        // One hit at rank 2 of 2: NDCG = (1/log2 3) / (1 + 1/log2 3); AP = (1/2) / 2.
        let m = score(&[9, 3], &set(&[1, 2, 3, 4]), 2);
        let g = 1.0 / 3f64.log2();
        assert!(close(m.ndcg, g / (1.0 + g)) && close(m.map, 0.25) && close(m.precision, 0.5));
    }

    #[test]
    fn short_lists_and_misses() {
        let m = score(&[5], &set(&[5]), 10);
        assert!(close(m.precision, 0.1) && close(m.ndcg, 1.0) && close(m.map, 1.0));
        assert_eq!(score(&[1, 2], &set(&[3]), 2), UserMetrics::default());
    }

    #[test]
    fn mean_over_users() {
        let mut mean = MeanMetrics::default();
        mean.add(score(&[1], &set(&[1]), 1));
        mean.add(score(&[2], &set(&[1]), 1));
        assert_eq!(mean.users(), 2);
        assert!(close(mean.mean().ndcg, 0.5) && close(mean.mean().precision, 0.5));
    }
}

//! How far apart two distributions are, and whether one proportion is significantly below
//! another: the statistics model monitoring raises drift and quality alerts from.
//!
//! - [`psi`]: the population stability index, `Σ (cᵢ − rᵢ) · ln(cᵢ / rᵢ)` over bins, `r` the
//!   reference proportions and `c` the current ones. A bin empty on one side would make it
//!   infinite, so an empty bin counts as a proportion of [`EMPTY_BIN`] (10⁻⁴, as Evidently
//!   does), without renormalising. Practice reads it as: below 0.1 stable, 0.1 to 0.25 a
//!   moderate shift, above 0.25 a major one.
//! - [`jensen_shannon`]: the Jensen-Shannon distance, `√(½ KL(r‖m) + ½ KL(c‖m))` with
//!   `m = (r + c) / 2` and base-2 logarithms, so it lies in [0, 1] (0: the same
//!   distribution, 1: disjoint supports) and is defined whatever bins are empty.
//! - [`QuantileBins`]: the bins numeric features are compared in: the reference's deciles
//!   (fewer bins where values repeat, as ratings do), so that each bin holds about a tenth
//!   of the reference and PSI weighs every part of the distribution alike.
//! - [`TopCategories`]: the bins of a feature with many values (items): the reference's most
//!   frequent ones, each its own bin, and one bin for all the others.
//! - [`proportion_drop`]: a one-sided two-proportion z-test that a new model's rate (hit
//!   rate, CTR) is below the previous model's, for a decision taken once at a fixed number
//!   of trials: its false-alarm rate is the level it is compared with.

use std::collections::HashMap;
use std::hash::Hash;

use statrs::distribution::{ContinuousCDF, Normal};

/// The proportion an empty bin counts as in [`psi`].
pub const EMPTY_BIN: f64 = 1e-4;

/// Counts as proportions of their total (all zero when the total is).
pub fn proportions(counts: &[f64]) -> Vec<f64> {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 {
        return vec![0.0; counts.len()];
    }
    counts.iter().map(|c| c / total).collect()
}

/// The population stability index of `current` counts against `reference` counts over the
/// same bins (`None` if either is empty or the bins differ).
pub fn psi(reference: &[f64], current: &[f64]) -> Option<f64> {
    if reference.len() != current.len() || reference.is_empty() {
        return None;
    }
    if reference.iter().sum::<f64>() <= 0.0 || current.iter().sum::<f64>() <= 0.0 {
        return None;
    }
    let floor = |p: f64| if p > 0.0 { p } else { EMPTY_BIN };
    Some(
        proportions(reference)
            .into_iter()
            .zip(proportions(current))
            .map(|(r, c)| {
                let (r, c) = (floor(r), floor(c));
                (c - r) * (c / r).ln()
            })
            .sum(),
    )
}

/// The Jensen-Shannon distance (base 2, in [0, 1]) between `reference` and `current` counts
/// over the same bins (`None` if either is empty or the bins differ).
pub fn jensen_shannon(reference: &[f64], current: &[f64]) -> Option<f64> {
    if reference.len() != current.len() || reference.is_empty() {
        return None;
    }
    if reference.iter().sum::<f64>() <= 0.0 || current.iter().sum::<f64>() <= 0.0 {
        return None;
    }
    let (r, c) = (proportions(reference), proportions(current));
    // ½ Σ p log2(p / m) over both sides; a zero proportion adds nothing.
    let half_kl = |p: &[f64], q: &[f64]| -> f64 {
        p.iter()
            .zip(q)
            .filter(|(p, _)| **p > 0.0)
            .map(|(p, q)| p * (2.0 * p / (p + q)).log2())
            .sum::<f64>()
            / 2.0
    };
    let divergence = (half_kl(&r, &c) + half_kl(&c, &r)).max(0.0);
    Some(divergence.sqrt().min(1.0))
}

/// Bins for a numeric feature: upper edges at the reference's deciles and its largest value.
/// Bin `i` holds values above edge `i − 1` up to edge `i`; the last bin everything above the
/// reference's largest value.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantileBins {
    edges: Vec<f64>,
}

/// Bins [`QuantileBins`] aims for.
pub const QUANTILE_BINS: usize = 10;

impl QuantileBins {
    /// The deciles of `reference` (non-finite values ignored) as upper edges; repeated edges
    /// are merged, so a feature with few distinct values gets one bin per value.
    pub fn from_reference(reference: &[f64]) -> Self {
        let mut sorted: Vec<f64> = reference
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        sorted.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = Vec::new();
        if let Some(&largest) = sorted.last() {
            for k in 1..QUANTILE_BINS {
                // The k-th decile, by the nearest rank below.
                let index = (k * sorted.len() / QUANTILE_BINS).min(sorted.len() - 1);
                let edge = sorted[index.saturating_sub(1)];
                if edges.last().is_none_or(|last| edge > *last) {
                    edges.push(edge);
                }
            }
            // The last bin holds what lies beyond everything the reference saw: empty in the
            // reference, so values there weigh heavily (a reference where every user had 5
            // events still tells 40 from 5).
            if edges.last().is_none_or(|last| largest > *last) {
                edges.push(largest);
            }
        }
        Self { edges }
    }

    /// How many bins there are.
    pub fn len(&self) -> usize {
        self.edges.len() + 1
    }

    /// Whether there is only the one catch-all bin (an empty reference).
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// The bin of `value` (NaN goes to the last bin).
    pub fn bin(&self, value: f64) -> usize {
        self.edges.partition_point(|edge| *edge < value)
    }

    /// Counts of `values` per bin.
    pub fn counts(&self, values: impl IntoIterator<Item = f64>) -> Vec<f64> {
        let mut counts = vec![0.0; self.len()];
        for value in values {
            counts[self.bin(value)] += 1.0;
        }
        counts
    }
}

/// Bins for a feature with many values: the reference's `k` most frequent values (ties by
/// value, so the bins are reproducible), and one bin for every other value.
#[derive(Clone, Debug, PartialEq)]
pub struct TopCategories<K: Eq + Hash> {
    index: HashMap<K, usize>,
}

impl<K: Eq + Hash + Ord + Clone> TopCategories<K> {
    pub fn from_reference(counts: &HashMap<K, u64>, k: usize) -> Self {
        let mut ranked: Vec<(&K, &u64)> = counts.iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        Self {
            index: ranked
                .into_iter()
                .take(k)
                .enumerate()
                .map(|(i, (key, _))| (key.clone(), i))
                .collect(),
        }
    }

    /// Bins: the top values, then "other".
    pub fn len(&self) -> usize {
        self.index.len() + 1
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Counts per bin of `counts` (value -> count).
    pub fn counts(&self, counts: &HashMap<K, u64>) -> Vec<f64> {
        let other = self.index.len();
        let mut bins = vec![0.0; self.len()];
        for (key, count) in counts {
            bins[self.index.get(key).copied().unwrap_or(other)] += *count as f64;
        }
        bins
    }
}

/// The outcome of [`proportion_drop`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProportionDrop {
    /// The previous and the new rate.
    pub before: f64,
    pub after: f64,
    /// The z statistic of `before − after` under "no difference".
    pub z: f64,
    /// One-sided: the probability of a drop at least this large if the rates were equal.
    pub p_value: f64,
}

/// Tests whether `after` (successes of trials) is below `before`: a one-sided pooled
/// two-proportion z-test. `None` when either side has no trials or the pooled rate is 0
/// or 1 (nothing to tell apart).
pub fn proportion_drop(before: (u64, u64), after: (u64, u64)) -> Option<ProportionDrop> {
    let (s1, n1) = before;
    let (s2, n2) = after;
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let (p1, p2) = (s1.min(n1) as f64 / n1f, s2.min(n2) as f64 / n2f);
    let pooled = (s1.min(n1) + s2.min(n2)) as f64 / (n1f + n2f);
    let variance = pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f);
    if variance <= 0.0 {
        return None;
    }
    let z = (p1 - p2) / variance.sqrt();
    let normal = Normal::standard();
    Some(ProportionDrop {
        before: p1,
        after: p2,
        z,
        p_value: normal.sf(z),
    })
}

/// Tests whether the `after` rate is below `(1 − margin)` times the `before` rate (each as
/// successes of trials): a one-sided Wald test with unpooled variances,
/// `z = ((1 − m)·p₁ − p₂) / √((1 − m)²·p₁(1 − p₁)/n₁ + p₂(1 − p₂)/n₂)`. With a margin, a
/// small drop (less than the margin) is never significant however many trials there are:
/// rates measured on different stretches of traffic differ by a little even when the model
/// does not, and a test of "any drop" would find that little with enough trials. `None`
/// when either side has no trials; when both rates are 0 or 1, p is 0 for a drop beyond
/// the margin, else 0.5.
pub fn relative_drop(before: (u64, u64), after: (u64, u64), margin: f64) -> Option<ProportionDrop> {
    let (s1, n1) = before;
    let (s2, n2) = after;
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (p1, p2) = (s1.min(n1) as f64 / n1 as f64, s2.min(n2) as f64 / n2 as f64);
    let keep = 1.0 - margin;
    let variance = keep * keep * p1 * (1.0 - p1) / n1 as f64 + p2 * (1.0 - p2) / n2 as f64;
    if variance <= 0.0 {
        // Both rates are 0 or 1: no spread to weigh the difference by. All hits before and
        // none after is as clear a drop as there is.
        let dropped = keep * p1 > p2;
        return Some(ProportionDrop {
            before: p1,
            after: p2,
            z: if dropped { f64::INFINITY } else { 0.0 },
            p_value: if dropped { 0.0 } else { 0.5 },
        });
    }
    let z = (keep * p1 - p2) / variance.sqrt();
    Some(ProportionDrop {
        before: p1,
        after: p2,
        z,
        p_value: Normal::standard().sf(z),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn all_hits_before_and_none_after_is_a_drop() {
        assert_eq!(
            relative_drop((500, 500), (0, 500), 0.3).unwrap().p_value,
            0.0
        );
        assert_eq!(relative_drop((0, 500), (0, 500), 0.3).unwrap().p_value, 0.5);
    }

    #[test]
    fn a_relative_drop_is_judged_against_the_margin() {
        // 10% of 1,000 before; 8% of 1,000 after. Margin 0: z = 0.02 / √(0.09/1000 +
        // 0.0736/1000) = 0.02 / 0.012784 = 1.5645.
        let any = relative_drop((100, 1_000), (80, 1_000), 0.0).unwrap();
        assert!(close(any.z, 1.5645, 1e-3), "{any:?}");
        // Margin 0.3: 0.07 − 0.08 < 0, no evidence of a drop beyond the margin.
        assert!(
            relative_drop((100, 1_000), (80, 1_000), 0.3)
                .unwrap()
                .p_value
                > 0.5
        );
        // 10% against 0.6% (random over 1,682 items), 500 lists each: far beyond it.
        // z = (0.07 − 0.006) / √(0.49·0.09/500 + 0.006·0.994/500) = 0.064 / 0.0099955.
        let random = relative_drop((50, 500), (3, 500), 0.3).unwrap();
        assert!(close(random.z, 6.403, 1e-2), "{random:?}");
    }

    #[test]
    fn psi_matches_a_hand_computed_case() {
        // Reference 50/30/20, current 40/30/30:
        // (0.4-0.5)ln(0.8) + 0 + (0.3-0.2)ln(1.5) = 0.022314 + 0.040547 = 0.062861.
        let value = psi(&[50.0, 30.0, 20.0], &[40.0, 30.0, 30.0]).unwrap();
        assert!(close(value, 0.062_861, 1e-6), "{value}");
        // The same distribution: 0, whatever the totals.
        assert!(close(psi(&[5.0, 5.0], &[50.0, 50.0]).unwrap(), 0.0, 1e-12));
        // An empty bin counts as 1e-4: (0.5-1e-4)ln(0.5/1e-4) + (0.5-1)ln(0.5) = 4.5045.
        let value = psi(&[0.0, 10.0], &[5.0, 5.0]).unwrap();
        let expected = (0.5 - 1e-4) * (0.5f64 / 1e-4).ln() + (0.5 - 1.0) * 0.5f64.ln();
        assert!(close(value, expected, 1e-9), "{value} vs {expected}");
        assert_eq!(psi(&[1.0], &[1.0, 2.0]), None);
        assert_eq!(psi(&[0.0, 0.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn jensen_shannon_is_zero_for_equal_one_for_disjoint_and_symmetric() {
        assert!(close(
            jensen_shannon(&[1.0, 3.0], &[2.0, 6.0]).unwrap(),
            0.0,
            1e-9
        ));
        assert!(close(
            jensen_shannon(&[1.0, 0.0], &[0.0, 1.0]).unwrap(),
            1.0,
            1e-12
        ));
        let (a, b) = ([50.0, 30.0, 20.0], [40.0, 30.0, 30.0]);
        let forward = jensen_shannon(&a, &b).unwrap();
        assert!(close(forward, jensen_shannon(&b, &a).unwrap(), 1e-12));
        // By hand: m = (0.45, 0.3, 0.25); ½Σ r log2(r/m) + ½Σ c log2(c/m)
        // = ½(0.5·log2(0.5/0.45) + 0.2·log2(0.2/0.25)) + ½(0.4·log2(0.4/0.45) + 0.3·log2(0.3/0.25)).
        let r = 0.5 * (0.5f64 / 0.45).log2() + 0.2 * (0.2f64 / 0.25).log2();
        let c = 0.4 * (0.4f64 / 0.45).log2() + 0.3 * (0.3f64 / 0.25).log2();
        assert!(close(forward, ((r + c) / 2.0).sqrt(), 1e-12), "{forward}");
    }

    #[test]
    fn decile_bins_hold_a_tenth_of_the_reference_each_and_merge_repeats() {
        let reference: Vec<f64> = (1..=1000).map(f64::from).collect();
        let bins = QuantileBins::from_reference(&reference);
        // Ten deciles, and one bin beyond the reference's largest value.
        assert_eq!(bins.len(), 11);
        let counts = bins.counts(reference.iter().copied());
        assert_eq!(counts[..10], [100.0; 10], "{counts:?}");
        assert_eq!(counts[10], 0.0);
        assert!(close(psi(&counts, &counts).unwrap(), 0.0, 1e-12));
        // Ratings 1-5: one bin per value (the repeated deciles merged).
        let ratings: Vec<f64> = (0..500).map(|i| f64::from(1 + i % 5)).collect();
        let bins = QuantileBins::from_reference(&ratings);
        assert_eq!(bins.len(), 6, "{bins:?}");
        assert_eq!(
            bins.counts(ratings.iter().copied()),
            vec![100.0, 100.0, 100.0, 100.0, 100.0, 0.0]
        );
        // Values beyond the reference land in the end bins.
        assert_eq!(bins.bin(-3.0), 0);
        assert_eq!(bins.bin(9.0), 5);
        // A constant reference: its value, and beyond it.
        assert_eq!(QuantileBins::from_reference(&[5.0; 40]).len(), 2);
        assert_eq!(QuantileBins::from_reference(&[]).len(), 1);
    }

    #[test]
    fn top_categories_keep_the_most_frequent_and_pool_the_rest() {
        let reference: HashMap<u32, u64> = [(1, 50), (2, 30), (3, 30), (4, 5), (5, 1)].into();
        let top = TopCategories::from_reference(&reference, 3);
        assert_eq!(top.len(), 4);
        assert_eq!(top.counts(&reference), vec![50.0, 30.0, 30.0, 6.0]);
        let current: HashMap<u32, u64> = [(9, 10), (1, 5)].into();
        assert_eq!(top.counts(&current), vec![5.0, 0.0, 0.0, 10.0]);
    }

    #[test]
    fn a_drop_in_a_proportion_is_tested_one_sided() {
        // 120 of 1000 against 80 of 1000: pooled 0.1, se = sqrt(0.1·0.9·0.002) = 0.013416,
        // z = 0.04 / 0.013416 = 2.9814, one-sided p = 0.001435.
        let drop = proportion_drop((120, 1000), (80, 1000)).unwrap();
        assert!(close(drop.z, 2.9814, 1e-4), "{drop:?}");
        assert!(close(drop.p_value, 0.001_435, 2e-6), "{drop:?}");
        // A rise is no drop.
        assert!(proportion_drop((80, 1000), (120, 1000)).unwrap().p_value > 0.99);
        assert_eq!(proportion_drop((0, 0), (1, 10)), None);
        assert_eq!(proportion_drop((0, 10), (0, 10)), None);
    }
}

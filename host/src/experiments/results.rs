//! Per-arm outcomes of an experiment, with 95% confidence intervals and a sample-ratio check.
//!
//! Attribution: an event of user U is feedback on U's latest exposure in the experiment that
//! was served before it (the exposure's `after_event` is the newest event id stored when it
//! was served), so it counts for that exposure's group. Events of users never exposed, and
//! events from before a user's first exposure, count for no group.
//!
//! Per group:
//! - `users`: distinct users exposed; `exposures`: recommendations served.
//! - `events`, `clicks`: attributed events, and those of kind `click`.
//! - `ctr`: share of exposures followed by at least one click (a proportion, Wilson interval).
//! - `mean_rating`: mean of attributed `rate` events (Student's t interval).
//!
//! Sample-ratio mismatch (SRM): a chi-square goodness-of-fit test of users per group against
//! the weights that were in force when each user was first served (a bandit's weights move
//! every period: each user is expected in a group with the share of the revision that
//! placed them), flagged when p < 0.001. A flagged SRM means the assignment or the
//! logging is broken (or the weights changed mid-experiment), and the results cannot be
//! trusted.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF, StudentsT};

use super::definition::Experiment;
use crate::store::{EventKind, ExposureKey};

/// Normal quantile of a two-sided 95% interval.
const Z_95: f64 = 1.959_963_984_540_054;
/// SRM is flagged below this p-value (the threshold of GrowthBook and of Kohavi et al.).
pub const SRM_P_THRESHOLD: f64 = 0.001;

/// A value with its 95% confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Estimate {
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GroupResult {
    pub group: String,
    /// The group's plugin and share of new users now (a bandit's latest weights); `None` for
    /// a group no longer in the definition.
    pub plugin: Option<String>,
    pub weight: Option<f64>,
    pub users: u64,
    pub exposures: u64,
    pub events: u64,
    pub clicks: u64,
    pub clicked_exposures: u64,
    pub ctr: Option<Estimate>,
    pub ratings: u64,
    pub mean_rating: Option<Estimate>,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SampleRatio {
    pub chi_square: f64,
    pub degrees_of_freedom: u64,
    pub p_value: f64,
    pub threshold: f64,
    pub flagged: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Results {
    pub experiment_id: String,
    pub groups: Vec<GroupResult>,
    /// `None` until some user has been exposed, or with a single group.
    pub srm: Option<SampleRatio>,
    /// When these results were computed (Unix milliseconds): they are reused for
    /// `max_age_ms` (at least 5 s) before a request computes them again.
    pub computed_at_ms: u64,
    pub max_age_ms: u64,
}

/// Wilson score interval of `successes` out of `trials` (`None` without trials).
pub fn wilson(successes: u64, trials: u64) -> Option<Estimate> {
    if trials == 0 {
        return None;
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = Z_95 * Z_95;
    let denominator = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denominator;
    let half = Z_95 / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(Estimate {
        value: p,
        ci_low: (center - half).max(0.0),
        ci_high: (center + half).min(1.0),
    })
}

/// Running sums for a mean and its Student's t interval.
#[derive(Clone, Copy, Debug, Default)]
pub struct MeanAccumulator {
    count: u64,
    sum: f64,
    sum_squares: f64,
}

impl MeanAccumulator {
    pub fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.sum_squares += value * value;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The mean with its 95% interval (a point interval for a single value).
    pub fn estimate(&self) -> Option<Estimate> {
        if self.count == 0 {
            return None;
        }
        let n = self.count as f64;
        let mean = self.sum / n;
        if self.count == 1 {
            return Some(Estimate {
                value: mean,
                ci_low: mean,
                ci_high: mean,
            });
        }
        let variance = ((self.sum_squares - n * mean * mean) / (n - 1.0)).max(0.0);
        let t = StudentsT::new(0.0, 1.0, n - 1.0)
            .map(|d| d.inverse_cdf(0.975))
            .unwrap_or(Z_95);
        let half = t * (variance / n).sqrt();
        Some(Estimate {
            value: mean,
            ci_low: mean - half,
            ci_high: mean + half,
        })
    }
}

/// Chi-square goodness of fit of `observed` counts against `weights` (summing to 1). A group
/// expected to get nobody (a weight of 0) adds nothing if it got nobody, and flags the
/// mismatch if it got someone.
pub fn sample_ratio(observed: &[u64], weights: &[f64]) -> Option<SampleRatio> {
    let total: u64 = observed.iter().sum();
    if total == 0 || observed.len() < 2 || observed.len() != weights.len() {
        return None;
    }
    let expected_somewhere = weights.iter().filter(|&&w| w > 0.0).count();
    if expected_somewhere < 2 {
        return None;
    }
    let chi_square: f64 = observed
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let expected = total as f64 * w;
            match (o, expected > 0.0) {
                (_, true) => (o as f64 - expected).powi(2) / expected,
                (0, false) => 0.0,
                (_, false) => f64::INFINITY,
            }
        })
        .sum();
    let degrees_of_freedom = expected_somewhere as u64 - 1;
    let p_value = ChiSquared::new(degrees_of_freedom as f64)
        .map(|d| d.sf(chi_square))
        .unwrap_or(f64::NAN);
    Some(SampleRatio {
        chi_square,
        degrees_of_freedom,
        p_value,
        threshold: SRM_P_THRESHOLD,
        flagged: p_value < SRM_P_THRESHOLD,
    })
}

#[derive(Default)]
struct GroupTally {
    users: HashSet<String>,
    exposures: u64,
    events: u64,
    clicks: u64,
    clicked: HashSet<usize>,
    ratings: MeanAccumulator,
}

/// Builds [`Results`] from an experiment's exposures and the events after them.
pub struct Tally<'a> {
    experiment: &'a Experiment,
    exposures: Vec<ExposureKey>,
    /// Group names in report order: the definition's, then any only in old exposures.
    names: Vec<String>,
    /// Per exposure, its group's slot in `names`.
    slots: Vec<usize>,
    /// Per user, their exposures' (after_event, index), in serving order.
    by_user: HashMap<String, Vec<(i64, usize)>>,
    groups: Vec<GroupTally>,
    /// The weights of each weights revision exposures were served under, by declared group
    /// (a revision not found: the definition's weights).
    weights_by_revision: HashMap<u64, Vec<f64>>,
}

impl<'a> Tally<'a> {
    pub fn new(
        experiment: &'a Experiment,
        exposures: Vec<ExposureKey>,
        weights_by_revision: HashMap<u64, Vec<f64>>,
    ) -> Self {
        let mut names: Vec<String> = experiment.groups.iter().map(|g| g.name.clone()).collect();
        let mut groups: Vec<GroupTally> = names.iter().map(|_| GroupTally::default()).collect();
        let mut slots = Vec::with_capacity(exposures.len());
        let mut by_user: HashMap<String, Vec<(i64, usize)>> = HashMap::new();
        for (index, exposure) in exposures.iter().enumerate() {
            let slot = match names.iter().position(|n| *n == exposure.group_name) {
                Some(slot) => slot,
                None => {
                    names.push(exposure.group_name.clone());
                    groups.push(GroupTally::default());
                    names.len() - 1
                }
            };
            slots.push(slot);
            let group = &mut groups[slot];
            group.exposures += 1;
            if !group.users.contains(&exposure.user_id) {
                group.users.insert(exposure.user_id.clone());
            }
            by_user
                .entry(exposure.user_id.clone())
                .or_default()
                .push((exposure.after_event, index));
        }
        for list in by_user.values_mut() {
            // Stable: exposures with the same after_event keep serving order.
            list.sort_by_key(|&(after, _)| after);
        }
        Self {
            experiment,
            exposures,
            names,
            slots,
            by_user,
            groups,
            weights_by_revision,
        }
    }

    /// Users by the declared group of their first exposure, and each declared group's
    /// expected share of them: the mean, over those users, of the weights in force at their
    /// first exposure. (By first exposure: a user an operator's promotion or a new bucket
    /// version moved counts once, where they were placed.)
    fn placed_and_expected(&self) -> (Vec<u64>, Vec<f64>) {
        let declared: Vec<f64> = self.experiment.groups.iter().map(|g| g.weight).collect();
        let mut placed = vec![0u64; declared.len()];
        let mut sums = vec![0.0; declared.len()];
        let mut users = 0usize;
        for list in self.by_user.values() {
            // The first exposure served (lists are sorted by after_event, then serving order).
            let Some(&first) = list.iter().map(|(_, index)| index).min() else {
                continue;
            };
            let Some(slot) = placed.get_mut(self.slots[first]) else {
                continue;
            };
            *slot += 1;
            let revision = self.exposures[first].weights_revision;
            let weights = self
                .weights_by_revision
                .get(&revision)
                .filter(|w| w.len() == declared.len())
                .unwrap_or(&declared);
            for (sum, w) in sums.iter_mut().zip(weights) {
                *sum += w;
            }
            users += 1;
        }
        if users == 0 {
            return (placed, declared);
        }
        (placed, sums.iter().map(|s| s / users as f64).collect())
    }

    /// Events with ids above this may be feedback on some exposure.
    pub fn events_after(&self) -> i64 {
        self.exposures
            .iter()
            .map(|e| e.after_event)
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Attributes one event (visit events in id order).
    pub fn event(&mut self, id: i64, user_id: &str, kind: EventKind, value: f32) {
        let Some(list) = self.by_user.get(user_id) else {
            return;
        };
        let before = list.partition_point(|&(after, _)| after < id);
        let Some(&(_, exposure)) = before.checked_sub(1).and_then(|i| list.get(i)) else {
            return;
        };
        let group = &mut self.groups[self.slots[exposure]];
        group.events += 1;
        match kind {
            EventKind::Click => {
                group.clicks += 1;
                group.clicked.insert(exposure);
            }
            EventKind::Rate => group.ratings.add(f64::from(value)),
            EventKind::View | EventKind::Purchase => {}
        }
    }

    pub fn finish(self) -> Results {
        let (placed, expected_shares) = self.placed_and_expected();
        let definition = &self.experiment.groups;
        let groups: Vec<GroupResult> = self
            .names
            .into_iter()
            .zip(self.groups)
            .map(|(name, tally)| {
                let declared = definition.iter().find(|g| g.name == name);
                GroupResult {
                    plugin: declared.map(|g| g.plugin.clone()),
                    weight: declared.map(|g| g.weight),
                    users: tally.users.len() as u64,
                    exposures: tally.exposures,
                    events: tally.events,
                    clicks: tally.clicks,
                    clicked_exposures: tally.clicked.len() as u64,
                    ctr: wilson(tally.clicked.len() as u64, tally.exposures),
                    ratings: tally.ratings.count(),
                    mean_rating: tally.ratings.estimate(),
                    group: name,
                }
            })
            .collect();
        let srm = sample_ratio(&placed, &expected_shares);
        Results {
            experiment_id: self.experiment.id.clone(),
            groups,
            srm,
            computed_at_ms: 0,
            max_age_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn wilson_matches_hand_computed_intervals() {
        // 5 of 10: p = 0.5, interval 0.2366..0.7634 (Wilson 1927; any statistics table).
        let e = wilson(5, 10).unwrap();
        assert!(close(e.value, 0.5) && close(e.ci_low, 0.2366) && close(e.ci_high, 0.7634));
        // 0 of 20: 0..0.1611.
        let e = wilson(0, 20).unwrap();
        assert!(close(e.ci_low, 0.0) && close(e.ci_high, 0.1611), "{e:?}");
        assert_eq!(wilson(0, 0), None);
    }

    #[test]
    fn mean_interval_uses_students_t() {
        // 1..5: mean 3, s = 1.5811, se = 0.7071, t(0.975, 4) = 2.7764 -> 1.0368..4.9632.
        let mut m = MeanAccumulator::default();
        for v in 1..=5 {
            m.add(f64::from(v));
        }
        let e = m.estimate().unwrap();
        assert!(close(e.value, 3.0) && close(e.ci_low, 1.0368) && close(e.ci_high, 4.9632));
        assert_eq!(MeanAccumulator::default().estimate(), None);
    }

    #[test]
    fn sample_ratio_chi_square() {
        // 60/40 against 50/50: chi2 = 4, df 1, p = 0.0455.
        let s = sample_ratio(&[60, 40], &[0.5, 0.5]).unwrap();
        assert!(close(s.chi_square, 4.0) && close(s.p_value, 0.0455) && !s.flagged);
        // 600/400: chi2 = 40, p ~ 2.5e-10: flagged.
        assert!(sample_ratio(&[600, 400], &[0.5, 0.5]).unwrap().flagged);
        assert_eq!(sample_ratio(&[0, 0], &[0.5, 0.5]), None);
    }
}

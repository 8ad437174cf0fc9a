//! Arm weights for bandit experiments: Thompson sampling over a Beta posterior per arm.
//!
//! Each period, every arm's users and successes (one trial per user per period) give a
//! Beta(1 + successes, 1 + failures) posterior of its success rate. `DRAWS` joint draws, one
//! per arm each, from a generator seeded by the caller, estimate each arm's probability of
//! being the best (or, with `top_two`, of being the best or the second best, as GrowthBook
//! offers for finding the best of three or more arms); those probabilities, under a floor,
//! are the next weights.
//!
//! What follows GrowthBook's bandits (`gbstats/bayesian/bandits.py`): 10,000 draws; weights
//! equal until every arm has its burn-in of users; the floor applied as
//! `w = f + (1 - n·f) · p / Σp`, so no arm gets less than `f` and the weights still sum to 1
//! (equal weights if `n·f ≥ 1`); top-two as (times first + times second) / (2 · draws).
//! Where it differs: GrowthBook samples a Gaussian posterior of each arm's mean (flat prior,
//! data weighted by period); a Beta posterior is the exact conjugate for the 0/1 metrics
//! recohost counts, and stays proper for an arm with no success yet, where the Gaussian's
//! variance is 0 and falls back to its very wide prior (such an arm then wins often).
//!
//! **Equal arms.** Pure Thompson sampling chases noise when the arms are equally good: the
//! probability that arm A is best, `Φ(z)` for the z-score of the observed difference, is
//! then uniform on (0, 1) at every look, so an arm is above 0.7 at a given look with
//! probability 0.6 however many users there are (the simulation in docs/experiments.md
//! shows it in every one of 20 runs). recohost therefore also weighs the hypothesis that all
//! arms share one rate (Bayesian model comparison with a point null): with prior probability
//! `null_prior` they are equal, else independent, each rate Beta(1, 1) a priori. The
//! posterior probability of "equal" is
//!
//! `q = π₀·m₀ / (π₀·m₀ + (1 − π₀)·m₁)`, `m₀ = B(1 + S, 1 + F)`, `m₁ = Π B(1 + sᵢ, 1 + fᵢ)`
//!
//! (S, F the successes and failures of all arms together; the binomial coefficients cancel),
//! and the preference is `q / n + (1 − q) · P(best | arms differ)`. Under equal arms `q`
//! grows with the data (the Bayes factor favours the simpler model by about √n) and the
//! weights stay near equal; under a real difference `q` falls exponentially and the weights
//! are Thompson's. `null_prior = 0` is GrowthBook's pure Thompson sampling.
//!
//! Pure and deterministic: the same counts, settings and seed give the same weights on every
//! node, so a stored weights revision can be recomputed from its counts.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};

/// Joint posterior draws per weights computation (GrowthBook's `n_samples`): the Monte
/// Carlo error of a probability is at most 0.5% (one standard deviation).
pub const DRAWS: usize = 10_000;

/// One arm's evidence over the periods counted: users who were exposed (trials) and those
/// of them whose metric event followed (successes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArmCounts {
    pub trials: u64,
    pub successes: u64,
}

/// How the weights are derived from the counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightSettings {
    /// Users per arm before the weights move from equal.
    pub burn_in_users: u64,
    /// No arm gets less; `min_weight · arms` must be below 1 for the evidence to count.
    pub min_weight: f64,
    /// Weight from P(best or second best) instead of P(best).
    pub top_two: bool,
    /// Prior probability that all arms have the same rate (0: pure Thompson sampling).
    pub null_prior: f64,
}

/// The outcome of one weights computation.
#[derive(Clone, Debug, PartialEq)]
pub struct ArmWeights {
    /// Sums to 1, each at least `min_weight` (unless `min_weight · arms ≥ 1`: then equal).
    pub weights: Vec<f64>,
    /// Each arm's estimated probability of being the best if the arms differ, before the
    /// floor (all equal during burn-in): what the dashboard shows as "leads with probability".
    pub best_probability: Vec<f64>,
    /// Posterior probability that all arms have the same rate (`null_prior` during burn-in).
    pub equal_probability: f64,
    /// Whether every arm had its burn-in of users, so that the weights follow the evidence.
    pub burned_in: bool,
}

/// The next weights for arms with `counts`, drawing from a generator seeded with `seed`.
pub fn thompson_weights(counts: &[ArmCounts], settings: &WeightSettings, seed: u64) -> ArmWeights {
    let arms = counts.len();
    if arms == 0 {
        return ArmWeights {
            weights: Vec::new(),
            best_probability: Vec::new(),
            equal_probability: settings.null_prior,
            burned_in: false,
        };
    }
    let equal = vec![1.0 / arms as f64; arms];
    if counts.iter().any(|c| c.trials < settings.burn_in_users) {
        return ArmWeights {
            weights: equal.clone(),
            best_probability: equal,
            equal_probability: settings.null_prior,
            burned_in: false,
        };
    }
    let posteriors: Vec<Beta<f64>> = counts
        .iter()
        .map(|c| {
            let successes = c.successes.min(c.trials) as f64;
            let failures = c.trials.saturating_sub(c.successes) as f64;
            Beta::new(1.0 + successes, 1.0 + failures)
                .expect("Beta parameters of at least 1 are valid")
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut first = vec![0u64; arms];
    let mut second = vec![0u64; arms];
    let mut draw = vec![0.0f64; arms];
    for _ in 0..DRAWS {
        for (value, posterior) in draw.iter_mut().zip(&posteriors) {
            *value = posterior.sample(&mut rng);
        }
        let (best, runner_up) = top_two_indices(&draw);
        first[best] += 1;
        if let Some(runner_up) = runner_up {
            second[runner_up] += 1;
        }
    }
    let best_probability: Vec<f64> = first.iter().map(|&n| n as f64 / DRAWS as f64).collect();
    let differ: Vec<f64> = if settings.top_two && arms > 1 {
        first
            .iter()
            .zip(&second)
            .map(|(&a, &b)| (a + b) as f64 / (2 * DRAWS) as f64)
            .collect()
    } else {
        best_probability.clone()
    };
    let equal_probability = equal_rates_probability(counts, settings.null_prior);
    let preference: Vec<f64> = differ
        .iter()
        .map(|p| equal_probability / arms as f64 + (1.0 - equal_probability) * p)
        .collect();
    ArmWeights {
        weights: floor_weights(&preference, settings.min_weight),
        best_probability,
        equal_probability,
        burned_in: true,
    }
}

/// Posterior probability that all arms share one success rate, against each arm having its
/// own, with prior probability `null_prior` for the former and a Beta(1, 1) prior on every
/// rate (see the module doc). Computed in logarithms: the marginal likelihoods underflow.
pub fn equal_rates_probability(counts: &[ArmCounts], null_prior: f64) -> f64 {
    use statrs::function::beta::ln_beta;
    if counts.len() < 2 || null_prior <= 0.0 {
        return 0.0;
    }
    if null_prior >= 1.0 {
        return 1.0;
    }
    let split = |c: &ArmCounts| {
        let successes = c.successes.min(c.trials) as f64;
        (successes, c.trials as f64 - successes)
    };
    let (all_successes, all_failures) = counts
        .iter()
        .map(split)
        .fold((0.0, 0.0), |(s, f), (a, b)| (s + a, f + b));
    let log_equal = ln_beta(1.0 + all_successes, 1.0 + all_failures);
    let log_differ: f64 = counts
        .iter()
        .map(split)
        .map(|(s, f)| ln_beta(1.0 + s, 1.0 + f))
        .sum();
    // q = 1 / (1 + (1 - π)/π · m1/m0)
    let log_odds_against = ((1.0 - null_prior) / null_prior).ln() + log_differ - log_equal;
    1.0 / (1.0 + log_odds_against.exp())
}

/// An arm's Beta posterior summarised for people: its mean success rate and central 95%
/// credible interval (the dashboard's "mean and 95% interval" of each arm).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PosteriorSummary {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

/// The summary of `counts`' posterior, Beta(1 + successes, 1 + failures).
pub fn posterior_summary(counts: ArmCounts) -> PosteriorSummary {
    use statrs::distribution::{Beta as Exact, ContinuousCDF};
    let alpha = 1.0 + counts.successes.min(counts.trials) as f64;
    let beta = 1.0 + counts.trials.saturating_sub(counts.successes) as f64;
    let posterior = Exact::new(alpha, beta).expect("Beta parameters of at least 1 are valid");
    PosteriorSummary {
        mean: alpha / (alpha + beta),
        low: posterior.inverse_cdf(0.025),
        high: posterior.inverse_cdf(0.975),
    }
}

/// The indices of the largest and second largest values (ties go to the lower index, which
/// continuous draws make a probability-zero event).
fn top_two_indices(values: &[f64]) -> (usize, Option<usize>) {
    let mut best = 0;
    let mut runner_up: Option<usize> = None;
    for (i, &value) in values.iter().enumerate().skip(1) {
        if value > values[best] {
            runner_up = Some(best);
            best = i;
        } else if runner_up.is_none_or(|r| value > values[r]) {
            runner_up = Some(i);
        }
    }
    (best, runner_up)
}

/// `preference` (non-negative) as weights that sum to 1 with none below `min_weight`:
/// `f + (1 - n·f) · p / Σp` (GrowthBook's floor). Equal weights when the floor leaves no room
/// (`n·f ≥ 1`) or nothing is preferred.
pub fn floor_weights(preference: &[f64], min_weight: f64) -> Vec<f64> {
    let arms = preference.len();
    let floor = min_weight.max(0.0);
    let total: f64 = preference.iter().sum();
    if arms == 0 || floor * arms as f64 >= 1.0 || total <= 0.0 || !total.is_finite() {
        return vec![1.0 / arms.max(1) as f64; arms];
    }
    let room = 1.0 - floor * arms as f64;
    preference
        .iter()
        .map(|p| floor + room * p / total)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: WeightSettings = WeightSettings {
        burn_in_users: 100,
        min_weight: 0.01,
        top_two: false,
        null_prior: 0.0,
    };

    fn counts(pairs: &[(u64, u64)]) -> Vec<ArmCounts> {
        pairs
            .iter()
            .map(|&(trials, successes)| ArmCounts { trials, successes })
            .collect()
    }

    fn assert_valid(weights: &ArmWeights, min_weight: f64) {
        let sum: f64 = weights.weights.iter().sum();
        assert!((sum - 1.0).abs() < 1e-9, "{weights:?}");
        assert!(
            weights.weights.iter().all(|&w| w >= min_weight - 1e-12),
            "{weights:?}"
        );
    }

    #[test]
    fn weights_stay_equal_until_every_arm_has_its_burn_in() {
        let weights = thompson_weights(&counts(&[(5_000, 500), (99, 0)]), &SETTINGS, 7);
        assert_eq!(weights.weights, vec![0.5, 0.5]);
        assert!(!weights.burned_in);
    }

    #[test]
    fn the_clearly_better_arm_gets_almost_everything_but_the_floor() {
        // 6% against 4% over 5,000 users each: P(B best) is above 0.999.
        let weights = thompson_weights(&counts(&[(5_000, 200), (5_000, 300)]), &SETTINGS, 1);
        assert_valid(&weights, 0.01);
        assert!(weights.weights[1] > 0.98, "{weights:?}");
        assert!((weights.weights[0] - 0.01).abs() < 0.005, "{weights:?}");
        assert!(weights.best_probability[1] > 0.99, "{weights:?}");
    }

    #[test]
    fn equal_evidence_gives_near_equal_weights() {
        let weights = thompson_weights(
            &counts(&[(2_000, 100), (2_000, 100), (2_000, 100)]),
            &SETTINGS,
            3,
        );
        assert_valid(&weights, 0.01);
        for w in &weights.weights {
            assert!((w - 1.0 / 3.0).abs() < 0.03, "{weights:?}");
        }
    }

    #[test]
    fn the_probability_of_being_best_matches_the_closed_form() {
        // Two Beta posteriors: P(B > A) by numerical integration of the exact densities.
        let (a, b) = (
            ArmCounts {
                trials: 400,
                successes: 20,
            },
            ArmCounts {
                trials: 400,
                successes: 28,
            },
        );
        let weights = thompson_weights(&[a, b], &SETTINGS, 11);
        let exact = probability_b_beats_a(a, b);
        assert!(
            (weights.best_probability[1] - exact).abs() < 0.02,
            "{} vs exact {exact}",
            weights.best_probability[1]
        );
    }

    /// P(X_b > X_a) for X ~ Beta(1 + s, 1 + f), by the midpoint rule over a fine grid.
    fn probability_b_beats_a(a: ArmCounts, b: ArmCounts) -> f64 {
        use statrs::distribution::{Beta as Exact, Continuous, ContinuousCDF};
        let posterior = |c: ArmCounts| {
            Exact::new(
                1.0 + c.successes as f64,
                1.0 + (c.trials - c.successes) as f64,
            )
            .unwrap()
        };
        let (pa, pb) = (posterior(a), posterior(b));
        let steps = 20_000;
        (0..steps)
            .map(|i| {
                let x = (i as f64 + 0.5) / steps as f64;
                pb.pdf(x) * pa.cdf(x) / steps as f64
            })
            .sum()
    }

    #[test]
    fn the_same_seed_gives_the_same_weights_and_another_seed_nearly_the_same() {
        let evidence = counts(&[(800, 40), (800, 52), (800, 47)]);
        let one = thompson_weights(&evidence, &SETTINGS, 42);
        assert_eq!(one, thompson_weights(&evidence, &SETTINGS, 42));
        let other = thompson_weights(&evidence, &SETTINGS, 43);
        assert_ne!(one.weights, other.weights);
        for (x, y) in one.weights.iter().zip(&other.weights) {
            assert!((x - y).abs() < 0.03, "{one:?} {other:?}");
        }
    }

    #[test]
    fn top_two_keeps_the_runner_up_in_play() {
        // Arms 1 and 2 both beat arm 0; plain Thompson gives arm 1 most of the traffic,
        // top-two gives arms 1 and 2 about half each and arm 0 little.
        let evidence = counts(&[(3_000, 90), (3_000, 180), (3_000, 170)]);
        let plain = thompson_weights(&evidence, &SETTINGS, 5);
        let top_two = thompson_weights(
            &evidence,
            &WeightSettings {
                top_two: true,
                ..SETTINGS
            },
            5,
        );
        assert_valid(&top_two, 0.01);
        assert!(
            top_two.weights[2] > plain.weights[2] + 0.1,
            "{plain:?} {top_two:?}"
        );
        assert!(top_two.weights[0] < 0.05, "{top_two:?}");
        // The probability of being best is reported the same either way.
        assert_eq!(plain.best_probability, top_two.best_probability);
    }

    #[test]
    fn the_floor_keeps_every_arm_at_its_minimum_and_the_sum_at_one() {
        let weights = floor_weights(&[0.0, 0.0, 1.0], 0.05);
        assert_eq!(weights.len(), 3);
        assert!((weights[0] - 0.05).abs() < 1e-12 && (weights[1] - 0.05).abs() < 1e-12);
        assert!((weights[2] - 0.9).abs() < 1e-12);
        // A floor that leaves no room: equal.
        assert_eq!(floor_weights(&[0.2, 0.8], 0.5), vec![0.5, 0.5]);
        assert_eq!(floor_weights(&[0.0, 0.0], 0.01), vec![0.5, 0.5]);
    }

    #[test]
    fn the_posterior_summary_has_the_beta_mean_and_a_95_percent_interval() {
        // No data: the uniform prior, mean 1/2, interval [0.025, 0.975].
        let prior = posterior_summary(ArmCounts::default());
        assert!((prior.mean - 0.5).abs() < 1e-12);
        assert!((prior.low - 0.025).abs() < 1e-6 && (prior.high - 0.975).abs() < 1e-6);
        // 50 of 1,000: mean 51/1002; the interval is about ±1.96 standard deviations.
        let summary = posterior_summary(ArmCounts {
            trials: 1_000,
            successes: 50,
        });
        assert!((summary.mean - 51.0 / 1002.0).abs() < 1e-12);
        let (a, b) = (51.0f64, 951.0f64);
        let sd = (a * b / ((a + b).powi(2) * (a + b + 1.0))).sqrt();
        assert!(
            (summary.low - (summary.mean - 1.96 * sd)).abs() < 0.004,
            "{summary:?}"
        );
        assert!(
            (summary.high - (summary.mean + 1.96 * sd)).abs() < 0.004,
            "{summary:?}"
        );
        assert!(summary.low < summary.mean && summary.mean < summary.high);
    }

    #[test]
    fn the_probability_of_equal_rates_is_the_bayes_factor_posterior() {
        // One success in one trial against one failure: m0 = B(2, 2) = 1/6, m1 = B(2, 1) ·
        // B(1, 2) = 1/4; with even prior odds q = (1/6) / (1/6 + 1/4) = 0.4.
        let tiny = counts(&[(1, 1), (1, 0)]);
        assert!((equal_rates_probability(&tiny, 0.5) - 0.4).abs() < 1e-12);
        assert_eq!(equal_rates_probability(&tiny, 0.0), 0.0);
        // Equal evidence over many users: "equal" is likely, and more so with more users.
        let some = equal_rates_probability(&counts(&[(1_000, 50), (1_000, 50)]), 0.5);
        let more = equal_rates_probability(&counts(&[(10_000, 500), (10_000, 500)]), 0.5);
        assert!(some > 0.8 && more > some, "{some} {more}");
        // 4% against 6% over 5,000 users each (z = 4.6): "equal" is all but ruled out, even
        // at prior odds of 4 to 1 for it.
        let differ = equal_rates_probability(&counts(&[(5_000, 200), (5_000, 300)]), 0.8);
        assert!(differ < 0.02, "{differ}");
    }

    #[test]
    fn with_a_null_prior_equal_arms_keep_near_equal_weights_and_different_ones_do_not() {
        let settings = WeightSettings {
            null_prior: 0.8,
            ..SETTINGS
        };
        // A chance lead (z = 1.6) that pure Thompson sampling follows to about 0.95.
        let chance = counts(&[(3_000, 150), (3_000, 175)]);
        let pure = thompson_weights(&chance, &SETTINGS, 9);
        let tempered = thompson_weights(&chance, &settings, 9);
        assert!(pure.weights[1] > 0.9, "{pure:?}");
        assert!(tempered.weights[1] < 0.7, "{tempered:?}");
        assert_valid(&tempered, 0.01);
        // A real difference moves the weights as much as pure Thompson sampling does.
        let real = counts(&[(5_000, 200), (5_000, 300)]);
        let tempered = thompson_weights(&real, &settings, 9);
        assert!(tempered.weights[1] > 0.98, "{tempered:?}");
        assert_eq!(
            tempered.best_probability,
            thompson_weights(&real, &SETTINGS, 9).best_probability
        );
    }

    #[test]
    fn top_two_indices_orders_by_value() {
        assert_eq!(top_two_indices(&[0.1, 0.5, 0.3]), (1, Some(2)));
        assert_eq!(top_two_indices(&[0.9, 0.5, 0.7]), (0, Some(2)));
        assert_eq!(top_two_indices(&[0.1, 0.2, 0.3]), (2, Some(1)));
        assert_eq!(top_two_indices(&[0.4]), (0, None));
    }
}

//! Train/test splits of one ratings file.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::store::ImportEvent;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitKind {
    /// A seeded random `test_fraction` of all ratings is the test set.
    Random,
    /// The newest `test_fraction` of all ratings (by timestamp) is the test set: the model is
    /// asked about the future, as in production.
    Temporal,
    /// A seeded random `test_fraction` of each user's ratings is the test set, so every user
    /// with at least two ratings is both trained on and tested (heavy users do not dominate
    /// the test set as in `random`).
    PerUser,
}

/// Splits `ratings` into (train, test).
pub fn split(
    mut ratings: Vec<ImportEvent>,
    kind: SplitKind,
    test_fraction: f64,
    seed: u64,
) -> (Vec<ImportEvent>, Vec<ImportEvent>) {
    match kind {
        SplitKind::Random => ratings.shuffle(&mut ChaCha8Rng::seed_from_u64(seed)),
        // Stable sort: equal timestamps keep file order.
        SplitKind::Temporal => ratings.sort_by_key(|r| r.timestamp),
        SplitKind::PerUser => return split_per_user(ratings, test_fraction, seed),
    }
    let test_len = ((ratings.len() as f64) * test_fraction.clamp(0.0, 1.0)).round() as usize;
    let train_len = ratings.len() - test_len;
    let test = ratings.split_off(train_len);
    let mut train = ratings;
    // Training sees events in time order, as the server would have received them.
    train.sort_by_key(|r| r.timestamp);
    (train, test)
}

fn split_per_user(
    ratings: Vec<ImportEvent>,
    test_fraction: f64,
    seed: u64,
) -> (Vec<ImportEvent>, Vec<ImportEvent>) {
    let mut by_user: std::collections::BTreeMap<String, Vec<ImportEvent>> = Default::default();
    for rating in ratings {
        by_user.entry(rating.user.clone()).or_default().push(rating);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (_, mut own) in by_user {
        own.shuffle(&mut rng);
        // At least one rating stays in training, so the user can be asked about the rest.
        let test_len = ((own.len() as f64) * test_fraction.clamp(0.0, 1.0)).round() as usize;
        let test_len = test_len.min(own.len() - 1);
        test.extend(own.drain(..test_len));
        train.extend(own);
    }
    train.sort_by_key(|r| r.timestamp);
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventKind;

    fn ratings(n: u64) -> Vec<ImportEvent> {
        (0..n)
            .map(|i| ImportEvent {
                user: (i % 7).to_string(),
                item: i.to_string(),
                kind: EventKind::Rate,
                value: 4.0,
                timestamp: 1000 - i,
            })
            .collect()
    }

    #[test]
    fn random_split_is_seeded_and_sized() {
        let (train, test) = split(ratings(100), SplitKind::Random, 0.2, 42);
        assert_eq!((train.len(), test.len()), (80, 20));
        let (_, again) = split(ratings(100), SplitKind::Random, 0.2, 42);
        assert_eq!(
            test.iter().map(|r| &r.item).collect::<Vec<_>>(),
            again.iter().map(|r| &r.item).collect::<Vec<_>>()
        );
        let (_, other) = split(ratings(100), SplitKind::Random, 0.2, 43);
        assert_ne!(
            test.iter().map(|r| &r.item).collect::<Vec<_>>(),
            other.iter().map(|r| &r.item).collect::<Vec<_>>()
        );
    }

    #[test]
    fn temporal_split_tests_on_the_newest_ratings() {
        let (train, test) = split(ratings(10), SplitKind::Temporal, 0.3, 0);
        let newest_train = train.iter().map(|r| r.timestamp).max().unwrap();
        assert!(test.iter().all(|r| r.timestamp > newest_train));
        assert_eq!(test.len(), 3);
    }

    #[test]
    fn per_user_split_tests_a_share_of_every_user() {
        let (train, test) = split(ratings(70), SplitKind::PerUser, 0.2, 42);
        assert_eq!(train.len() + test.len(), 70);
        // 7 users with 10 ratings each: 2 of each in the test set.
        for user in 0..7 {
            let user = user.to_string();
            assert_eq!(test.iter().filter(|r| r.user == user).count(), 2);
        }
        // A user with one rating keeps it for training.
        let one = vec![ImportEvent {
            user: "solo".into(),
            ..ratings(1)[0].clone()
        }];
        let (train, test) = split(one, SplitKind::PerUser, 0.5, 1);
        assert_eq!((train.len(), test.len()), (1, 0));
        assert!(train.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    }
}

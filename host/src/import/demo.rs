//! A deterministic demo dataset, so the server has something to recommend on first start
//! without any download.
//!
//! Users belong to taste clusters: each has one or two favourite genres, rates mostly items
//! of those genres (4-5 stars) and now and then something else (1-3 stars). Item popularity
//! follows a long tail. The same seed always yields the same data (ChaCha8 is specified to be
//! stable across versions), so tests can rely on it.

use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::store::{EventKind, ImportBatch, ImportEvent, ItemRow};

pub const GENRES: [&str; 12] = [
    "action",
    "comedy",
    "drama",
    "horror",
    "romance",
    "sci-fi",
    "thriller",
    "animation",
    "documentary",
    "fantasy",
    "mystery",
    "western",
];

const ADJECTIVES: [&str; 24] = [
    "Silent", "Crimson", "Last", "Hidden", "Golden", "Broken", "Midnight", "Electric", "Lonely",
    "Frozen", "Wild", "Secret", "Distant", "Burning", "Little", "Endless", "Savage", "Gentle",
    "Iron", "Paper", "Velvet", "Hollow", "Lucky", "Northern",
];

const NOUNS: [&str; 30] = [
    "Harbor",
    "Kingdom",
    "Detective",
    "Garden",
    "Frontier",
    "Machine",
    "River",
    "Promise",
    "Island",
    "Witness",
    "Summer",
    "Empire",
    "Signal",
    "Orchard",
    "Voyage",
    "Mirror",
    "Canyon",
    "Letter",
    "Carnival",
    "Station",
    "Lighthouse",
    "Orbit",
    "Legacy",
    "Stranger",
    "Meadow",
    "Circus",
    "Tunnel",
    "Comet",
    "Heist",
    "Dynasty",
];

/// How much demo data to make.
#[derive(Clone, Debug)]
pub struct DemoSize {
    pub users: u32,
    pub items: u32,
    pub seed: u64,
}

impl Default for DemoSize {
    fn default() -> Self {
        Self {
            users: 2_000,
            items: 1_200,
            seed: 42,
        }
    }
}

/// Unix time of the first demo event (2025-01-01T00:00:00Z); events span 180 days.
const START: u64 = 1_735_689_600;
const SPAN: u64 = 180 * 86_400;

pub fn generate(size: &DemoSize) -> ImportBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(size.seed);
    let item_count = size.items.max(1) as usize;

    // Items: a primary genre, sometimes a second one, and a long-tail popularity.
    let mut ranks: Vec<usize> = (0..item_count).collect();
    ranks.shuffle(&mut rng);
    let mut items = Vec::with_capacity(item_count);
    let mut popularity = Vec::with_capacity(item_count);
    let mut by_genre: Vec<Vec<usize>> = vec![Vec::new(); GENRES.len()];
    for (index, rank) in ranks.iter().enumerate() {
        let primary = rng.random_range(0..GENRES.len());
        let mut genres = vec![primary];
        if rng.random_bool(0.3) {
            let second = rng.random_range(0..GENRES.len());
            if second != primary {
                genres.push(second);
            }
        }
        for &genre in &genres {
            by_genre[genre].push(index);
        }
        let title = format!(
            "The {} {} ({})",
            ADJECTIVES[rng.random_range(0..ADJECTIVES.len())],
            NOUNS[rng.random_range(0..NOUNS.len())],
            1960 + rng.random_range(0..65)
        );
        items.push(ItemRow {
            external_id: (index + 1).to_string(),
            title,
            tags: genres.iter().map(|&g| GENRES[g].to_string()).collect(),
        });
        popularity.push(1.0 / ((*rank as f64) + 10.0).powf(0.9));
    }
    let everything = WeightedIndex::new(&popularity).ok();
    let per_genre: Vec<Option<WeightedIndex<f64>>> = by_genre
        .iter()
        .map(|members| WeightedIndex::new(members.iter().map(|&i| popularity[i])).ok())
        .collect();

    let mut events = Vec::new();
    for user in 1..=size.users {
        let favourites: Vec<usize> = if rng.random_bool(0.6) {
            vec![rng.random_range(0..GENRES.len())]
        } else {
            let mut pair: Vec<usize> = (0..GENRES.len()).collect();
            pair.shuffle(&mut rng);
            pair.truncate(2);
            pair
        };
        let wanted = rng.random_range(15..=70).min(item_count);
        let mut rated = std::collections::HashSet::new();
        let mut attempts = 0;
        while rated.len() < wanted && attempts < wanted * 20 {
            attempts += 1;
            let favourite = favourites[rng.random_range(0..favourites.len())];
            let pick = if rng.random_bool(0.8) {
                per_genre[favourite]
                    .as_ref()
                    .map(|d| by_genre[favourite][d.sample(&mut rng)])
            } else {
                everything.as_ref().map(|d| d.sample(&mut rng))
            };
            let Some(item) = pick else { continue };
            if !rated.insert(item) {
                continue;
            }
            let liked = items[item]
                .tags
                .iter()
                .any(|t| favourites.iter().any(|&f| GENRES[f] == t));
            let (kind, value) = if liked {
                if rng.random_bool(0.25) {
                    (EventKind::Click, 1.0)
                } else {
                    (EventKind::Rate, rng.random_range(4..=5) as f32)
                }
            } else {
                (EventKind::Rate, rng.random_range(1..=3) as f32)
            };
            events.push(ImportEvent {
                user: user.to_string(),
                item: items[item].external_id.clone(),
                kind,
                value,
                timestamp: START + rng.random_range(0..SPAN),
            });
        }
    }
    // Stored in time order, as a live system would have received them.
    events.sort_by_key(|e| e.timestamp);
    ImportBatch { items, events }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_deterministic_and_sized() {
        let size = DemoSize {
            users: 50,
            items: 80,
            seed: 7,
        };
        let (a, b) = (generate(&size), generate(&size));
        assert_eq!(a.items, b.items);
        assert_eq!(a.events.len(), b.events.len());
        assert_eq!(a.items.len(), 80);
        let users: std::collections::HashSet<_> = a.events.iter().map(|e| e.user.clone()).collect();
        assert_eq!(users.len(), 50);
        assert!(
            a.events
                .windows(2)
                .all(|w| w[0].timestamp <= w[1].timestamp)
        );
    }

    #[test]
    fn users_mostly_like_their_favourite_genres() {
        let batch = generate(&DemoSize {
            users: 200,
            items: 300,
            seed: 1,
        });
        let high = batch
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Click || e.value >= 4.0)
            .count();
        let share = high as f64 / batch.events.len() as f64;
        assert!(share > 0.6, "share of positive events {share}");
    }
}

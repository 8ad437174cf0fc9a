//! A deterministic demo dataset, so the server has something to recommend on first start
//! without any download.
//!
//! Users belong to taste clusters: each has one or two favourite genres, rates mostly items
//! of those genres (4-5 stars) and now and then something else (1-3 stars). Item popularity
//! follows a long tail. The same seed always yields the same data (ChaCha8 is specified to be
//! stable across versions), so tests can rely on it.

use std::path::Path;

use anyhow::Context;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::LogNormal;

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
    let catalog = Catalog::generate(&mut rng, size.items);
    let mut events = Vec::new();
    for user in 1..=size.users {
        let favourites = favourite_genres(&mut rng);
        let wanted = rng.random_range(15..=70).min(catalog.items.len());
        catalog.user_events(&mut rng, &favourites, wanted, |item, liked, rng| {
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
                item: catalog.items[item].external_id.clone(),
                kind,
                value,
                timestamp: START + rng.random_range(0..SPAN),
            });
        });
    }
    // Stored in time order, as a live system would have received them.
    events.sort_by_key(|e| e.timestamp);
    ImportBatch {
        items: catalog.items,
        events,
    }
}

/// Titled items in genres, with a long-tailed popularity, and the samplers users pick from.
struct Catalog {
    items: Vec<ItemRow>,
    by_genre: Vec<Vec<usize>>,
    everything: Option<WeightedIndex<f64>>,
    per_genre: Vec<Option<WeightedIndex<f64>>>,
}

impl Catalog {
    fn generate(rng: &mut ChaCha8Rng, items: u32) -> Self {
        let item_count = items.max(1) as usize;
        // Items: a primary genre, sometimes a second one, and a long-tail popularity.
        let mut ranks: Vec<usize> = (0..item_count).collect();
        ranks.shuffle(rng);
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
        let per_genre = by_genre
            .iter()
            .map(|members| WeightedIndex::new(members.iter().map(|&i| popularity[i])).ok())
            .collect();
        Self {
            items,
            by_genre,
            everything,
            per_genre,
        }
    }

    /// Picks up to `wanted` distinct items for a user of these favourite genres (mostly from
    /// them, by popularity; a fifth from anywhere) and hands each to `emit` with whether it
    /// is in a favourite genre.
    fn user_events(
        &self,
        rng: &mut ChaCha8Rng,
        favourites: &[usize],
        wanted: usize,
        mut emit: impl FnMut(usize, bool, &mut ChaCha8Rng),
    ) {
        let mut rated = std::collections::HashSet::new();
        let mut attempts = 0;
        while rated.len() < wanted && attempts < wanted * 20 {
            attempts += 1;
            let favourite = favourites[rng.random_range(0..favourites.len())];
            let pick = if rng.random_bool(0.8) {
                self.per_genre[favourite]
                    .as_ref()
                    .map(|d| self.by_genre[favourite][d.sample(rng)])
            } else {
                self.everything.as_ref().map(|d| d.sample(rng))
            };
            let Some(item) = pick else { continue };
            if !rated.insert(item) {
                continue;
            }
            let liked = self.items[item]
                .tags
                .iter()
                .any(|t| favourites.iter().any(|&f| GENRES[f] == t));
            emit(item, liked, rng);
        }
    }
}

/// One favourite genre (60% of users) or two.
fn favourite_genres(rng: &mut ChaCha8Rng) -> Vec<usize> {
    if rng.random_bool(0.6) {
        vec![rng.random_range(0..GENRES.len())]
    } else {
        let mut pair: Vec<usize> = (0..GENRES.len()).collect();
        pair.shuffle(rng);
        pair.truncate(2);
        pair
    }
}

/// The size of a generated dataset for `recohost demo-data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub users: u32,
    pub items: u32,
    /// About this many events: each user's count is drawn around `events / users`.
    pub events: u64,
    pub seed: u64,
}

impl Shape {
    /// The demo's size: 2,000 users, 1,200 items, about 85,000 events (ratings only, and
    /// MovieLens-like activity: not the server's first-start data event for event).
    pub const S: Self = Self {
        users: 2_000,
        items: 1_200,
        events: 85_000,
        seed: 42,
    };
    /// Ten times the demo.
    pub const M: Self = Self {
        users: 20_000,
        items: 12_000,
        events: 850_000,
        seed: 42,
    };
    /// MovieLens 25M's size: 162,541 users, 62,423 movies, 25,000,095 ratings.
    pub const L: Self = Self {
        users: 162_541,
        items: 62_423,
        events: 25_000_095,
        seed: 42,
    };

    pub fn named(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "s" => Some(Self::S),
            "m" => Some(Self::M),
            "l" => Some(Self::L),
            _ => None,
        }
    }
}

/// What [`write_movielens`] wrote.
#[derive(Debug, PartialEq, Eq)]
pub struct Written {
    pub items: u64,
    pub users: u64,
    pub events: u64,
}

/// Users' activity: log-normal, as in MovieLens (most users rate a few dozen items, a few
/// rate thousands). σ = 1 puts the median at 0.6 × the mean, near MovieLens 25M's 71 of 154.
const ACTIVITY_SIGMA: f64 = 1.0;
/// The most events `write_movielens` makes (40x MovieLens 25M).
const MAX_EVENTS: u64 = 1_000_000_000;
/// No user has fewer (MovieLens keeps users with at least 20 ratings).
const MIN_PER_USER: f64 = 20.0;

/// Writes a generated dataset of `shape` into `dir` in MovieLens's ml-latest format
/// (`movies.csv`: movieId,title,genres; `ratings.csv`: userId,movieId,rating,timestamp), so
/// that `recohost import --format movielens` reads it like the real thing. Ratings only (the
/// format has no clicks): 4-5 stars in a user's favourite genres, 1-3 elsewhere. The same
/// taste clusters and long-tailed item popularity as the demo data; deterministic for a seed.
/// Rows are in time order, as a live system would have received them. Memory: 16 bytes per
/// event while sorting (400 MB at L).
pub fn write_movielens(shape: &Shape, dir: &Path, progress: bool) -> anyhow::Result<Written> {
    use std::io::Write;

    anyhow::ensure!(
        shape.users > 0 && shape.items > 0,
        "a dataset needs at least one user and one item"
    );
    // 16 bytes an event are held for the sort: a billion is 16 GB, past any machine here.
    anyhow::ensure!(
        shape.events <= MAX_EVENTS,
        "at most {MAX_EVENTS} events (asked for {})",
        shape.events
    );
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(shape.seed);
    let catalog = Catalog::generate(&mut rng, shape.items);
    let mut movies = csv::Writer::from_path(dir.join("movies.csv"))
        .with_context(|| format!("cannot write {}", dir.join("movies.csv").display()))?;
    movies.write_record(["movieId", "title", "genres"])?;
    for item in &catalog.items {
        let genres: Vec<String> = item.tags.iter().map(|g| capitalized(g)).collect();
        movies.write_record([&item.external_id, &item.title, &genres.join("|")])?;
    }
    movies.flush()?;

    let mean = (shape.events as f64 / f64::from(shape.users)).max(1.0);
    let minimum = MIN_PER_USER.min(mean);
    let activity = LogNormal::new(activity_mu(mean, minimum), ACTIVITY_SIGMA)
        .context("activity distribution")?;
    let bar = count_bar(shape.events, "generating events", progress);
    // (seconds after START, user, item, stars): compact, for the sort by time.
    let mut events: Vec<(u32, u32, u32, u8)> = Vec::with_capacity(shape.events as usize);
    for user in 1..=shape.users {
        let favourites = favourite_genres(&mut rng);
        let wanted =
            (activity.sample(&mut rng).max(minimum).round() as usize).min(catalog.items.len());
        catalog.user_events(&mut rng, &favourites, wanted, |item, liked, rng| {
            let stars = if liked {
                rng.random_range(4..=5)
            } else {
                rng.random_range(1..=3)
            };
            let at = rng.random_range(0..SPAN) as u32;
            events.push((at, user, item as u32 + 1, stars));
        });
        bar.set_position(events.len() as u64);
    }
    bar.finish_and_clear();
    events.sort_unstable();
    let path = dir.join("ratings.csv");
    let file =
        std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "userId,movieId,rating,timestamp")?;
    let bar = count_bar(events.len() as u64, "writing ratings.csv", progress);
    for (n, &(at, user, item, stars)) in events.iter().enumerate() {
        writeln!(out, "{user},{item},{stars}.0,{}", START + u64::from(at))?;
        if n % 100_000 == 0 {
            bar.set_position(n as u64);
        }
    }
    out.flush()?;
    bar.finish_and_clear();
    let users = events
        .iter()
        .map(|e| e.1)
        .collect::<std::collections::HashSet<_>>()
        .len();
    Ok(Written {
        items: catalog.items.len() as u64,
        users: users as u64,
        events: events.len() as u64,
    })
}

/// The μ that gives `max(minimum, X)` a mean of `mean` for X log-normal(μ, σ): the floor
/// raises the mean, so μ is found by bisection on the closed form
/// E[max(m, X)] = m·Φ((ln m − μ)/σ) + e^(μ+σ²/2)·Φ((μ + σ² − ln m)/σ).
fn activity_mu(mean: f64, minimum: f64) -> f64 {
    let sigma = ACTIVITY_SIGMA;
    let floored_mean = |mu: f64| {
        let m = minimum.ln();
        minimum * normal_cdf((m - mu) / sigma)
            + (mu + sigma * sigma / 2.0).exp() * normal_cdf((mu + sigma * sigma - m) / sigma)
    };
    let (mut low, mut high) = (-20.0_f64, mean.ln() + 1.0);
    for _ in 0..100 {
        let mid = (low + high) / 2.0;
        if floored_mean(mid) < mean {
            low = mid;
        } else {
            high = mid;
        }
    }
    (low + high) / 2.0
}

/// The standard normal CDF, from erf (Abramowitz and Stegun 7.1.26, error under 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// A progress bar counting `what` (hidden unless `visible`).
fn count_bar(len: u64, what: &str, visible: bool) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {human_pos}/{human_len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn capitalized(genre: &str) -> String {
    let mut chars = genre.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
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
    fn the_demo_data_is_what_it_was() {
        // The server's first-start data: tests and documented figures were measured on it,
        // so the generator's refactoring must not change a single event.
        let batch = generate(&DemoSize::default());
        assert_eq!(batch.items.len(), 1_200);
        assert_eq!(batch.events.len(), 85_015);
        let first = &batch.events[0];
        // Read back from a database the generator of fba773c seeded.
        assert_eq!(
            (first.user.as_str(), first.item.as_str(), first.timestamp),
            ("39", "889", 1_735_689_821)
        );
        let times: u64 = batch.events.iter().map(|e| e.timestamp).sum();
        assert_eq!(times, 148_223_178_157_213);
    }

    #[test]
    fn a_generated_movielens_folder_reads_back_with_the_shape_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        // The demo's proportions (about 40 a user, several times more items than a heavy
        // user rates): in a catalog the heaviest users exhaust, they rate fewer than drawn.
        let shape = Shape {
            users: 300,
            items: 2_000,
            events: 15_000,
            seed: 3,
        };
        let written = write_movielens(&shape, dir.path(), false).unwrap();
        let batch = crate::import::movielens::read(dir.path(), false).unwrap();
        assert_eq!(batch.items.len(), 2_000);
        assert_eq!(batch.events.len() as u64, written.events);
        assert_eq!(written.users, 300);
        // About the events asked for (the floor of 20 a user is allowed for).
        let ratio = written.events as f64 / 15_000.0;
        assert!((0.95..1.05).contains(&ratio), "{written:?}");
        assert!(
            batch
                .events
                .windows(2)
                .all(|w| w[0].timestamp <= w[1].timestamp)
        );
        assert!(batch.items.iter().all(|i| !i.tags.is_empty()));
        assert!(batch.events.iter().all(|e| (1.0..=5.0).contains(&e.value)));
        // Deterministic.
        let again = tempfile::tempdir().unwrap();
        write_movielens(&shape, again.path(), false).unwrap();
        for file in ["movies.csv", "ratings.csv"] {
            assert_eq!(
                std::fs::read(dir.path().join(file)).unwrap(),
                std::fs::read(again.path().join(file)).unwrap()
            );
        }
        // Long-tailed: the busiest user rates several times the median user.
        let mut per_user = std::collections::HashMap::<&str, u32>::new();
        for event in &batch.events {
            *per_user.entry(event.user.as_str()).or_default() += 1;
        }
        let mut counts: Vec<u32> = per_user.into_values().collect();
        counts.sort_unstable();
        assert!(
            counts[counts.len() - 1] > 4 * counts[counts.len() / 2],
            "{counts:?}"
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

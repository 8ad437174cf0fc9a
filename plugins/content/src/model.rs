use std::collections::HashMap;

use recohost_plugin_sdk::weights::EventWeights;
use recohost_plugin_sdk::{
    EventKind, Feedback, Item, PluginInfo, Request, Scored, Strategy, StrategyError,
    TrainingReport, check_item, config, snapshot, topk,
};
use serde::{Deserialize, Serialize};

const NAME: &str = "content";
const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ContentConfig {
    /// Ratings above this pull a profile toward the item's tags, below it push away.
    pub neutral_rating: f32,
    /// Share of the final score taken by popularity, in [0, 1].
    pub popularity_weight: f32,
    pub event_weights: EventWeights,
}

impl Default for ContentConfig {
    fn default() -> Self {
        Self {
            neutral_rating: 3.0,
            popularity_weight: 0.05,
            event_weights: EventWeights::default(),
        }
    }
}

/// Item tag vectors (from the catalog) and learned item popularity.
pub struct Content {
    config: ContentConfig,
    /// Unit-length sparse tag vector of each item: (tag id, weight).
    item_vectors: TagVectors,
    tag_count: usize,
    state: State,
    /// `state.item_weights` scaled into [0, 1], derived after every change.
    prior: Vec<f32>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct State {
    /// Weighted interactions per item.
    item_weights: Vec<f32>,
}

impl Content {
    /// How much `event` says the user likes the item (negative: dislikes).
    fn affinity(&self, event: &Feedback) -> f32 {
        match event.kind {
            EventKind::Rate => {
                (event.value - self.config.neutral_rating) * self.config.event_weights.rate
            }
            _ => self.config.event_weights.weight(event),
        }
    }

    /// Cosine similarity of every item to the history's taste profile, in [-1, 1]; all zero
    /// for a history that says nothing about tags. Exposed for `hybrid`.
    pub fn score_history(&self, history: &[Feedback]) -> Vec<f32> {
        let mut profile = vec![0.0f32; self.tag_count];
        for event in history {
            let Some(vector) = self.item_vectors.get(event.item as usize) else {
                continue;
            };
            let affinity = self.affinity(event);
            for &(tag, weight) in vector {
                profile[tag as usize] += affinity * weight;
            }
        }
        let norm = profile.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return vec![0.0; self.item_vectors.len()];
        }
        let mut scores = vec![0.0f32; self.item_vectors.len()];
        self.item_vectors.dots(&profile, &mut scores);
        // Divided in a pass of its own, which vectorizes (a division per item inside the
        // dot products stalled them); the quotients are the same, division is exactly rounded.
        for score in &mut scores {
            *score /= norm;
        }
        scores
    }

    /// Interactions per item scaled into [0, 1]. Exposed for `hybrid`.
    pub fn popularity_scores(&self) -> &[f32] {
        &self.prior
    }

    fn refresh_prior(&mut self) {
        self.prior = self.scaled_weights();
    }

    fn scaled_weights(&self) -> Vec<f32> {
        let max = self
            .state
            .item_weights
            .iter()
            .copied()
            .fold(0.0f32, f32::max);
        if max <= 0.0 {
            return vec![0.0; self.state.item_weights.len()];
        }
        self.state.item_weights.iter().map(|&w| w / max).collect()
    }

    fn learn(&mut self, events: &[Feedback]) -> Result<(), StrategyError> {
        for event in events {
            check_item(event.item, self.item_vectors.len())?;
        }
        for event in events {
            self.state.item_weights[event.item as usize] += self.config.event_weights.weight(event);
        }
        self.refresh_prior();
        Ok(())
    }
}

/// IDF-weighted, unit-length tag vectors, and the number of distinct tags.
fn tag_vectors(catalog: &[Item]) -> (TagVectors, usize) {
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut item_tags: Vec<Vec<u32>> = Vec::with_capacity(catalog.len());
    for item in catalog {
        let mut tags: Vec<u32> = item
            .tags
            .iter()
            .map(|tag| {
                let next = ids.len() as u32;
                *ids.entry(tag.as_str()).or_insert(next)
            })
            .collect();
        tags.sort_unstable();
        tags.dedup();
        item_tags.push(tags);
    }
    let mut document_frequency = vec![0u32; ids.len()];
    for tags in &item_tags {
        for &tag in tags {
            document_frequency[tag as usize] += 1;
        }
    }
    let items = catalog.len().max(1) as f32;
    let mut vectors = TagVectors {
        ends: Vec::with_capacity(item_tags.len()),
        entries: Vec::new(),
    };
    for tags in item_tags {
        let weighted: Vec<(u32, f32)> = tags
            .into_iter()
            .map(|tag| {
                (
                    tag,
                    (1.0 + items / document_frequency[tag as usize] as f32).ln(),
                )
            })
            .collect();
        let norm = weighted.iter().map(|(_, w)| w * w).sum::<f32>().sqrt();
        vectors
            .entries
            .extend(weighted.into_iter().map(|(tag, w)| (tag, w / norm)));
        vectors.ends.push(vectors.entries.len());
    }
    (vectors, ids.len())
}

/// Every item's sparse tag vector, (tag id, weight) pairs, stored back to back: scoring walks
/// one array instead of chasing a pointer per item.
struct TagVectors {
    /// `entries[ends[i - 1]..ends[i]]` is item `i`'s vector.
    ends: Vec<usize>,
    entries: Vec<(u32, f32)>,
}

impl TagVectors {
    /// `out[i]` = item `i`'s vector · `dense`.
    fn dots(&self, dense: &[f32], out: &mut [f32]) {
        let mut start = 0;
        for (out, &end) in out.iter_mut().zip(&self.ends) {
            let mut dot = 0.0f32;
            for &(tag, w) in &self.entries[start..end] {
                dot += dense[tag as usize] * w;
            }
            *out = dot;
            start = end;
        }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, item: usize) -> Option<&[(u32, f32)]> {
        let end = *self.ends.get(item)?;
        let start = if item == 0 { 0 } else { self.ends[item - 1] };
        Some(&self.entries[start..end])
    }
}

impl Strategy for Content {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Item tags matched against a taste profile built from the user's history"
                .into(),
            predicts_ratings: false,
        }
    }

    fn configure(config_json: &str, catalog: Vec<Item>) -> Result<Self, StrategyError> {
        let config: ContentConfig = config::parse(config_json)?;
        config::require_at_least("neutral_rating", f64::from(config.neutral_rating), f64::MIN)?;
        let weight = f64::from(config.popularity_weight);
        if !(0.0..=1.0).contains(&weight) {
            return Err(StrategyError::InvalidInput(format!(
                "invalid plugin config: `popularity_weight` must be in [0, 1], got {weight}"
            )));
        }
        config.event_weights.validate()?;
        let (item_vectors, tag_count) = tag_vectors(&catalog);
        let catalog_len = catalog.len();
        let state = State {
            item_weights: vec![0.0; catalog.len()],
        };
        Ok(Self {
            config,
            item_vectors,
            tag_count,
            prior: vec![0.0; catalog_len],
            state,
        })
    }

    fn train(&mut self, events: Vec<Feedback>) -> Result<TrainingReport, StrategyError> {
        for event in &events {
            check_item(event.item, self.item_vectors.len())?;
        }
        self.state = State {
            item_weights: vec![0.0; self.item_vectors.len()],
        };
        self.learn(&events)?;
        Ok(TrainingReport {
            events_used: events.len() as u64,
            message: String::new(),
        })
    }

    fn update(&mut self, events: Vec<Feedback>) -> Result<TrainingReport, StrategyError> {
        self.learn(&events)?;
        Ok(TrainingReport {
            events_used: events.len() as u64,
            message: String::new(),
        })
    }

    fn recommend(&self, request: &Request) -> Result<Vec<Scored>, StrategyError> {
        let taste = self.score_history(&request.history);
        let popularity = self.popularity_scores();
        let share = self.config.popularity_weight;
        let scores: Vec<f32> = taste
            .iter()
            .zip(popularity)
            // A tiny popularity term orders items the profile cannot tell apart.
            .map(|(&t, &p)| (1.0 - share) * t + share * p + 1e-6 * p)
            .collect();
        Ok(topk::top_k(
            &scores,
            request.count as usize,
            &request.exclude,
        ))
    }

    fn save(&self) -> Result<Vec<u8>, StrategyError> {
        snapshot::encode(NAME, SNAPSHOT_FORMAT, &self.state)
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), StrategyError> {
        let state: State = snapshot::decode(NAME, SNAPSHOT_FORMAT, bytes)?;
        if state.item_weights.len() != self.item_vectors.len() {
            return Err(StrategyError::InvalidInput(format!(
                "snapshot rejected: it covers {} items, the catalog has {}",
                state.item_weights.len(),
                self.item_vectors.len()
            )));
        }
        self.state = state;
        self.refresh_prior();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recohost_plugin_sdk::testing::recommend_for_history as recommend;

    /// Items 0-3 are "comedy", 4-7 "horror", 8 is both; item 9 has no tags.
    fn catalog() -> Vec<Item> {
        (0..10)
            .map(|index| {
                let tags = match index {
                    0..=3 => vec!["comedy".to_string()],
                    4..=7 => vec!["horror".to_string()],
                    8 => vec!["comedy".to_string(), "horror".to_string()],
                    _ => vec![],
                };
                Item {
                    index,
                    title: format!("item {index}"),
                    tags,
                }
            })
            .collect()
    }

    fn rate(item: u32, value: f32) -> Feedback {
        Feedback {
            user: 0,
            item,
            kind: EventKind::Rate,
            value,
            timestamp: 1,
        }
    }

    #[test]
    fn user_who_liked_one_genre_gets_that_genre() {
        let mut model = Content::configure("{}", catalog()).unwrap();
        // Horror is more popular overall, but this user loves comedy.
        let crowd: Vec<Feedback> = (4..8).flat_map(|i| vec![rate(i, 4.0); 5]).collect();
        model.train(crowd).unwrap();
        let top = recommend(&model, vec![rate(0, 5.0), rate(1, 5.0)], 2);
        assert_eq!(top.len(), 2);
        assert!(top.iter().all(|i| [2, 3].contains(i)), "{top:?}");
    }

    #[test]
    fn a_low_rating_pushes_the_genre_down() {
        let model = Content::configure("{}", catalog()).unwrap();
        let top = recommend(&model, vec![rate(4, 1.0), rate(0, 4.0)], 9);
        let horror_rank = top.iter().position(|&i| i == 5).unwrap();
        let untagged_rank = top.iter().position(|&i| i == 9).unwrap();
        assert!(horror_rank > untagged_rank, "{top:?}");
    }

    #[test]
    fn cold_user_gets_popular_items_and_update_changes_the_answer() {
        let mut model = Content::configure("{}", catalog()).unwrap();
        model
            .train(vec![rate(2, 4.0), rate(2, 4.0), rate(6, 4.0)])
            .unwrap();
        assert_eq!(recommend(&model, vec![], 1), vec![2]);
        model.update(vec![rate(6, 4.0), rate(6, 4.0)]).unwrap();
        assert_eq!(recommend(&model, vec![], 1), vec![6]);
    }

    #[test]
    fn snapshot_round_trip_and_bad_config() {
        let mut model = Content::configure("{}", catalog()).unwrap();
        model.train(vec![rate(2, 4.0)]).unwrap();
        let mut copy = Content::configure("{}", catalog()).unwrap();
        copy.load(&model.save().unwrap()).unwrap();
        assert_eq!(
            recommend(&copy, vec![rate(0, 5.0)], 5),
            recommend(&model, vec![rate(0, 5.0)], 5)
        );
        assert!(Content::configure(r#"{"popularity_weight": 2}"#, catalog()).is_err());
    }
}

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
    /// [`Strategy::update`] on borrowed events (see [`Self::train_on`]).
    pub fn update_on(&mut self, events: &[Feedback]) -> Result<TrainingReport, StrategyError> {
        self.learn(events)?;
        Ok(TrainingReport {
            events_used: events.len() as u64,
            message: String::new(),
        })
    }

    /// [`Strategy::train`] on borrowed events: the hybrid plugin trains this model and its
    /// collaborative one on the same window without a copy of it (600 MB at MovieLens 25M).
    pub fn train_on(&mut self, events: &[Feedback]) -> Result<TrainingReport, StrategyError> {
        for event in events {
            check_item(event.item, self.item_vectors.len())?;
        }
        self.state = State {
            item_weights: vec![0.0; self.item_vectors.len()],
        };
        self.learn(events)?;
        Ok(TrainingReport {
            events_used: events.len() as u64,
            message: String::new(),
        })
    }

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
        let tag_sets = self.score_tag_sets(history);
        self.item_vectors
            .vector_of
            .iter()
            .map(|&set| tag_sets[set as usize])
            .collect()
    }

    /// [`Self::score_history`] per distinct tag set: item `i` scores
    /// `scores[self.tag_set_of()[i]]`. Exposed for `hybrid`, which then works per tag set.
    pub fn score_tag_sets(&self, history: &[Feedback]) -> Vec<f32> {
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
        let mut scores = self.item_vectors.dots(&profile);
        let norm = profile.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm == 0.0 || !norm.is_finite() {
            scores.fill(0.0);
            return scores;
        }
        for score in &mut scores {
            *score /= norm;
        }
        scores
    }

    /// The distinct tag set of each item (see [`Self::score_tag_sets`]).
    pub fn tag_set_of(&self) -> &[u32] {
        &self.item_vectors.vector_of
    }

    /// How many items have each distinct tag set.
    pub fn tag_set_sizes(&self) -> &[u32] {
        &self.item_vectors.members
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
        ends: Vec::new(),
        entries: Vec::new(),
        vector_of: Vec::with_capacity(item_tags.len()),
        members: Vec::new(),
    };
    let mut distinct: HashMap<Vec<u32>, u32> = HashMap::new();
    for tags in item_tags {
        let next = distinct.len() as u32;
        let vector = *distinct.entry(tags.clone()).or_insert(next);
        vectors.vector_of.push(vector);
        if vector != next {
            vectors.members[vector as usize] += 1;
            continue;
        }
        vectors.members.push(1);
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

/// Every item's sparse tag vector, (tag id, weight) pairs. Items with the same tags share one
/// vector: a catalog has far fewer distinct tag sets than items (MovieLens 25M's 62k movies
/// have under 2,000 genre combinations), so scoring computes one dot product per distinct set
/// and copies it to the set's items, instead of one per item (at 62k items that was most of a
/// request's time). The distinct vectors are stored back to back in one array.
struct TagVectors {
    /// `entries[ends[v - 1]..ends[v]]` is distinct vector `v`.
    ends: Vec<usize>,
    entries: Vec<(u32, f32)>,
    /// The distinct vector of each item.
    vector_of: Vec<u32>,
    /// How many items have each distinct vector.
    members: Vec<u32>,
}

impl TagVectors {
    /// Each distinct vector · `dense`.
    fn dots(&self, dense: &[f32]) -> Vec<f32> {
        let mut dots = Vec::with_capacity(self.ends.len());
        let mut start = 0;
        for &end in &self.ends {
            let mut dot = 0.0f32;
            for &(tag, w) in &self.entries[start..end] {
                dot += dense[tag as usize] * w;
            }
            dots.push(dot);
            start = end;
        }
        dots
    }

    fn len(&self) -> usize {
        self.vector_of.len()
    }

    fn get(&self, item: usize) -> Option<&[(u32, f32)]> {
        let vector = *self.vector_of.get(item)? as usize;
        let end = self.ends[vector];
        let start = if vector == 0 {
            0
        } else {
            self.ends[vector - 1]
        };
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
        self.train_on(&events)
    }

    fn update(&mut self, events: Vec<Feedback>) -> Result<TrainingReport, StrategyError> {
        self.update_on(&events)
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
    fn items_with_the_same_tags_share_one_vector_and_score_alike() {
        let mut catalog = catalog();
        // Item 8's tags again, in another order and repeated: the same set.
        catalog[9].tags = vec!["horror".into(), "comedy".into(), "horror".into()];
        let model = Content::configure("{}", catalog).unwrap();
        let vectors = &model.item_vectors;
        assert_eq!(vectors.ends.len(), 3, "comedy, horror, comedy+horror");
        assert_eq!(vectors.get(0), vectors.get(3));
        assert_eq!(vectors.get(8), vectors.get(9));
        assert_ne!(vectors.get(0), vectors.get(4));
        assert_ne!(vectors.get(0), vectors.get(8));
        assert_eq!(vectors.get(4).unwrap().len(), 1);
        assert_eq!(vectors.get(8).unwrap().len(), 2);
        // Each item's score is its own vector's cosine with the profile.
        let scores = model.score_history(&[rate(0, 5.0), rate(4, 4.0)]);
        assert!(scores[0] > scores[4] && scores[4] > 0.0, "{scores:?}");
        assert_eq!(scores[0], scores[2]);
        assert_eq!(scores[8], scores[9]);
        assert!(scores[8] > scores[0], "both liked tags: {scores:?}");
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

//! Item-based k-nearest neighbours: two items are similar when the same users liked both
//! (cosine similarity of their user sets); a user's candidates are scored by their summed
//! similarity to the items in the user's history, using each item's `neighbors` most similar
//! items only.
//!
//! Online learning: `update` adds each new (user, item) pair to the co-occurrence counts at
//! once, so the next request sees it. Snapshots hold the users' liked items only; `load`
//! rebuilds the counts from them (deterministic, so a loaded model answers identically).
//!
//! Written from `wit/strategy.wit` and docs/plugins.md, starting from `recohost plugin new`:
//! this file replaces the generated model; `src/lib.rs` passes the request's history.

use std::collections::{BTreeSet, HashMap};

use serde::Deserialize;

pub const DESCRIPTION: &str =
    "Item-based kNN: cosine similarity of co-liked items (example external plugin)";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Ratings below this are not counted as liking the item.
    pub positive_rating: f32,
    /// Neighbours of each history item that may contribute to a score.
    pub neighbors: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            positive_rating: 3.5,
            neighbors: 50,
        }
    }
}

impl Settings {
    pub fn from_json(json: &str) -> Result<Self, String> {
        let settings: Self =
            serde_json::from_str(json).map_err(|e| format!("invalid config: {e}"))?;
        if !settings.positive_rating.is_finite() || settings.neighbors == 0 {
            return Err(
                "invalid config: positive_rating must be a number and neighbors at least 1".into(),
            );
        }
        Ok(settings)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Rate,
    Click,
    View,
    Purchase,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Event {
    pub user: u32,
    pub item: u32,
    pub kind: Kind,
    pub value: f32,
    pub timestamp: u64,
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"itemknn1";

pub struct Model {
    settings: Settings,
    catalog_len: usize,
    /// Items each user liked.
    liked: HashMap<u32, BTreeSet<u32>>,
    /// Users who liked each item.
    item_users: Vec<u32>,
    /// Co-occurrence counts of item pairs (both directions).
    together: Vec<HashMap<u32, u32>>,
}

impl Model {
    pub fn new(settings: Settings, catalog_len: usize) -> Self {
        Self {
            settings,
            catalog_len,
            liked: HashMap::new(),
            item_users: vec![0; catalog_len],
            together: vec![HashMap::new(); catalog_len],
        }
    }

    fn likes(&self, event: &Event) -> bool {
        event.kind != Kind::Rate || event.value >= self.settings.positive_rating
    }

    pub fn train(&mut self, events: &[Event]) -> Result<usize, String> {
        *self = Self::new(self.settings.clone(), self.catalog_len);
        self.update(events)
    }

    /// Adds the new likes; refuses (and learns nothing from) a batch with an unknown item.
    pub fn update(&mut self, events: &[Event]) -> Result<usize, String> {
        if let Some(bad) = events.iter().find(|e| e.item as usize >= self.catalog_len) {
            return Err(format!(
                "item index {} is outside the catalog of {} items",
                bad.item, self.catalog_len
            ));
        }
        let liked: Vec<(u32, u32)> = events
            .iter()
            .filter(|e| self.likes(e))
            .map(|e| (e.user, e.item))
            .collect();
        for (user, item) in liked {
            self.add(user, item);
        }
        Ok(events.len())
    }

    fn add(&mut self, user: u32, item: u32) {
        let liked = self.liked.entry(user).or_default();
        if !liked.insert(item) {
            return;
        }
        self.item_users[item as usize] += 1;
        let others: Vec<u32> = liked
            .iter()
            .copied()
            .filter(|&other| other != item)
            .collect();
        for other in others {
            *self.together[item as usize].entry(other).or_insert(0) += 1;
            *self.together[other as usize].entry(item).or_insert(0) += 1;
        }
    }

    fn similarity(&self, a: u32, b: u32, together: u32) -> f32 {
        let norm = (self.item_users[a as usize] as f32 * self.item_users[b as usize] as f32).sqrt();
        if norm > 0.0 {
            together as f32 / norm
        } else {
            0.0
        }
    }

    /// Up to `count` items scored from `history` (items the user interacted with, newest
    /// first), none of `exclude` (sorted); best first, ties by the lower index. A user with
    /// no history gets the most-liked items.
    pub fn recommend(&self, history: &[u32], count: usize, exclude: &[u32]) -> Vec<(u32, f32)> {
        let mut scores: HashMap<u32, f32> = HashMap::new();
        let seen: BTreeSet<u32> = history
            .iter()
            .copied()
            .filter(|&i| (i as usize) < self.catalog_len)
            .collect();
        for &item in &seen {
            let mut neighbours: Vec<(u32, f32)> = self.together[item as usize]
                .iter()
                .map(|(&other, &n)| (other, self.similarity(item, other, n)))
                .collect();
            neighbours.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for (other, similarity) in neighbours.into_iter().take(self.settings.neighbors) {
                *scores.entry(other).or_insert(0.0) += similarity;
            }
        }
        if scores.is_empty() {
            // Cold start: popularity (how many users liked the item), as a small score.
            scores = (0..self.catalog_len as u32)
                .map(|i| (i, self.item_users[i as usize] as f32 * 1e-6))
                .collect();
        }
        let mut ranked: Vec<(u32, f32)> = scores
            .into_iter()
            .filter(|(item, _)| exclude.binary_search(item).is_err())
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(count);
        ranked
    }

    /// The magic, then per user (sorted): user, number of items, the items (little-endian u32).
    pub fn save(&self) -> Vec<u8> {
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        let mut users: Vec<&u32> = self.liked.keys().collect();
        users.sort();
        for user in users {
            let items = &self.liked[user];
            bytes.extend_from_slice(&user.to_le_bytes());
            bytes.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for item in items {
                bytes.extend_from_slice(&item.to_le_bytes());
            }
        }
        bytes
    }

    pub fn load(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let body = snapshot
            .strip_prefix(SNAPSHOT_MAGIC.as_slice())
            .ok_or("not a snapshot of itemknn")?;
        let words: Vec<u32> = body
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if body.len() % 4 != 0 {
            return Err("truncated snapshot".into());
        }
        let mut fresh = Self::new(self.settings.clone(), self.catalog_len);
        let mut at = 0;
        while at < words.len() {
            let (user, len) = (
                words[at],
                *words.get(at + 1).ok_or("truncated snapshot")? as usize,
            );
            let items = words
                .get(at + 2..at + 2 + len)
                .ok_or("truncated snapshot")?;
            for &item in items {
                if item as usize >= self.catalog_len {
                    return Err(format!(
                        "the snapshot names item {item}, outside the catalog"
                    ));
                }
                fresh.add(user, item);
            }
            at += 2 + len;
        }
        *self = fresh;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click(user: u32, item: u32) -> Event {
        Event {
            user,
            item,
            kind: Kind::Click,
            value: 1.0,
            timestamp: 0,
        }
    }

    /// Users 0-2 like items 0 and 1 together; users 3-4 like 2 and 3 together.
    fn trained() -> Model {
        let mut model = Model::new(Settings::default(), 5);
        let events: Vec<Event> = [
            (0, 0),
            (0, 1),
            (1, 0),
            (1, 1),
            (2, 0),
            (2, 1),
            (3, 2),
            (3, 3),
            (4, 2),
            (4, 3),
        ]
        .iter()
        .map(|&(u, i)| click(u, i))
        .collect();
        model.train(&events).expect("valid");
        model
    }

    #[test]
    fn recommends_what_was_liked_together() {
        let model = trained();
        assert_eq!(model.recommend(&[0], 1, &[0])[0].0, 1);
        assert_eq!(model.recommend(&[3], 1, &[3])[0].0, 2);
    }

    #[test]
    fn a_user_without_history_gets_the_most_liked() {
        let answer = trained().recommend(&[], 2, &[]);
        assert_eq!(answer.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn update_links_new_pairs_at_once() {
        let mut model = trained();
        assert!(
            model.recommend(&[4], 5, &[4]).is_empty() || model.recommend(&[4], 5, &[4])[0].1 < 1e-3
        );
        model.update(&[click(9, 4), click(9, 0)]).expect("valid");
        assert_eq!(model.recommend(&[4], 1, &[4])[0].0, 0);
    }

    #[test]
    fn a_loaded_snapshot_answers_identically_and_foreign_bytes_are_refused() {
        let model = trained();
        let mut restored = Model::new(Settings::default(), 5);
        restored.load(&model.save()).expect("valid");
        for item in 0..5 {
            assert_eq!(
                restored.recommend(&[item], 5, &[item]),
                model.recommend(&[item], 5, &[item])
            );
        }
        assert!(restored.load(b"itemknn1\x01").is_err());
        assert!(restored.load(b"popularity").is_err());
    }

    #[test]
    fn never_returns_excluded_items_or_more_than_asked() {
        let answer = trained().recommend(&[0, 2], 2, &[0, 1, 2]);
        assert!(answer.len() <= 2 && answer.iter().all(|(i, _)| *i > 2));
    }
}

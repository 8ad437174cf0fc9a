use recohost_plugin_sdk::weights::EventWeights;
use recohost_plugin_sdk::{
    Feedback, Item, ItemIndex, PluginInfo, Request, Scored, Strategy, StrategyError,
    TrainingReport, by_user, check_item, config, kernels, snapshot, topk,
};
use serde::{Deserialize, Serialize};

use faer::linalg::solvers::DenseSolveCore;

const NAME: &str = "collaborative";
/// 2: the weight matrix stored as one block of bytes.
const SNAPSHOT_FORMAT: u32 = 2;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CollaborativeConfig {
    /// L2 regularization λ added to the Gram matrix's diagonal.
    pub l2: f64,
    /// Weights kept per item row of B.
    pub neighbors: usize,
    /// Most items taking part in the solve (cost grows with its cube).
    pub max_items: usize,
    /// Re-solve B in `update` once new events reach this fraction of the solved ones.
    pub refresh_fraction: f64,
    pub event_weights: EventWeights,
}

impl Default for CollaborativeConfig {
    fn default() -> Self {
        Self {
            l2: 300.0,
            neighbors: 1000,
            max_items: 1000,
            refresh_fraction: 0.1,
            event_weights: EventWeights::default(),
        }
    }
}

/// B restricted to the modeled items, dense and row-major: row `h` holds the weights from
/// modeled item `h` to every modeled item, so scoring a history is a sum of contiguous rows
/// (vectorized with WebAssembly SIMD). Weights outside a row's `neighbors` strongest are 0.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
struct Weights {
    /// Item index of each modeled column.
    items: Vec<ItemIndex>,
    /// Column of each catalog item, `u32::MAX` when it is not modeled.
    column_of: Vec<u32>,
    /// `items.len()` squared entries.
    #[serde(with = "snapshot::f32_blob")]
    matrix: Vec<f32>,
}

/// The EASE model and the interactions it was solved on.
pub struct Collaborative {
    config: CollaborativeConfig,
    catalog_len: usize,
    state: State,
    /// Popularity scaled into [0, 1), derived from `state` after every change.
    prior: Vec<f32>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct State {
    /// Items each user interacted with positively, sorted, by user index.
    user_items: Vec<Vec<ItemIndex>>,
    /// Users with a positive interaction, by item: the popularity used for cold users and ties.
    item_counts: Vec<u32>,
    /// The weights B over the modeled items (at most `max_items`, the most interacted).
    weights: Weights,
    /// Interactions in `user_items` when B was last solved, and added since.
    solved_interactions: u64,
    pending_interactions: u64,
}

impl Collaborative {
    /// Adds the positive events to the interaction matrix; returns how many were new pairs.
    fn absorb(&mut self, events: &[Feedback]) -> Result<u64, StrategyError> {
        for event in events {
            check_item(event.item, self.catalog_len)?;
        }
        let mut added = 0;
        for event in events {
            if self.config.event_weights.weight(event) <= 0.0 {
                continue;
            }
            let user = event.user as usize;
            if user >= self.state.user_items.len() {
                self.state.user_items.resize_with(user + 1, Vec::new);
            }
            let items = &mut self.state.user_items[user];
            if let Err(position) = items.binary_search(&event.item) {
                items.insert(position, event.item);
                self.state.item_counts[event.item as usize] += 1;
                added += 1;
            }
        }
        Ok(added)
    }

    /// Solves B from the current interactions.
    fn solve(&mut self) -> Result<(), StrategyError> {
        // Columns of the solve: the most interacted items, at most `max_items`.
        let mut modeled: Vec<usize> = (0..self.catalog_len)
            .filter(|&i| self.state.item_counts[i] > 0)
            .collect();
        modeled.sort_by(|&a, &b| {
            self.state.item_counts[b]
                .cmp(&self.state.item_counts[a])
                .then(a.cmp(&b))
        });
        modeled.truncate(self.config.max_items);
        let mut column = vec![usize::MAX; self.catalog_len];
        for (c, &item) in modeled.iter().enumerate() {
            column[item] = c;
        }
        let m = modeled.len();
        let mut gram = faer::Mat::<f64>::zeros(m, m);
        let mut columns = Vec::new();
        for items in &self.state.user_items {
            columns.clear();
            columns.extend(
                items
                    .iter()
                    .map(|&i| column[i as usize])
                    .filter(|&c| c != usize::MAX),
            );
            for &a in &columns {
                for &b in &columns {
                    gram[(a, b)] += 1.0;
                }
            }
        }
        for c in 0..m {
            gram[(c, c)] += self.config.l2;
        }
        let precision = gram
            .llt(faer::Side::Lower)
            .map_err(|_| {
                StrategyError::Internal(
                    "the regularized Gram matrix is not positive definite".into(),
                )
            })?
            .inverse();
        let keep = self.config.neighbors;
        let mut matrix = vec![0.0f32; m * m];
        let mut magnitudes = Vec::with_capacity(m);
        for h in 0..m {
            let row = &mut matrix[h * m..h * m + m];
            for (j, weight) in row.iter_mut().enumerate() {
                if j != h {
                    // B[h][j] = -P[h][j] / P[j][j]
                    *weight = (-precision[(h, j)] / precision[(j, j)]) as f32;
                }
            }
            if m > 1 && keep < m - 1 {
                // Keep the `keep` strongest weights of the row, zero the rest.
                magnitudes.clear();
                magnitudes.extend(row.iter().map(|w| w.abs()));
                let (_, threshold, _) =
                    magnitudes.select_nth_unstable_by(m - 1 - keep, |a, b| a.total_cmp(b));
                let threshold = *threshold;
                row.iter_mut()
                    .filter(|w| w.abs() < threshold)
                    .for_each(|w| *w = 0.0);
            }
        }
        let column_of = column
            .iter()
            .map(|&c| u32::try_from(c).unwrap_or(u32::MAX))
            .collect();
        self.state.weights = Weights {
            items: modeled.iter().map(|&i| i as ItemIndex).collect(),
            column_of,
            matrix,
        };
        self.state.solved_interactions += self.state.pending_interactions;
        self.state.pending_interactions = 0;
        Ok(())
    }

    /// Recomputes the popularity prior after the interactions changed.
    fn refresh_prior(&mut self) {
        self.prior = self.popularity();
    }

    /// Popularity scaled into [0, 1): the cold-start answer and the tie-breaker.
    fn popularity(&self) -> Vec<f32> {
        let max = self
            .state
            .item_counts
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(1) as f32;
        self.state
            .item_counts
            .iter()
            .map(|&c| c as f32 / (max * 1.0001))
            .collect()
    }

    /// Raw EASE scores for a history (zero everywhere for an empty one). Exposed for `hybrid`.
    pub fn score_history(&self, history: &[Feedback]) -> Vec<f32> {
        let (items, sums) = self.score_modeled(history);
        let mut scores = vec![0.0f32; self.catalog_len];
        for (&item, sum) in items.iter().zip(sums) {
            scores[item as usize] = sum;
        }
        scores
    }

    /// The items the weights cover (at most `max_items`, the most interacted), in the order
    /// of [`Self::score_modeled`]'s scores. Exposed for `hybrid`.
    pub fn modeled_items(&self) -> &[ItemIndex] {
        &self.state.weights.items
    }

    /// [`Self::score_history`] where it is not zero: the modeled items (at most `max_items`)
    /// and their scores, in the same order. Every other item scores 0. Exposed for `hybrid`,
    /// which then need not walk the whole catalog for this part.
    pub fn score_modeled(&self, history: &[Feedback]) -> (&[ItemIndex], Vec<f32>) {
        let weights = &self.state.weights;
        let m = weights.items.len();
        let mut rows: Vec<u32> = history
            .iter()
            .filter(|event| self.config.event_weights.weight(event) > 0.0)
            .filter_map(|event| weights.column_of.get(event.item as usize).copied())
            .filter(|&c| c != u32::MAX)
            .collect();
        rows.sort_unstable();
        rows.dedup();
        let mut sums = vec![0.0f32; m];
        kernels::sum_rows(&weights.matrix, m, &rows, &mut sums);
        (&weights.items, sums)
    }

    /// Popularity in [0, 1) for the cold start of other models. Exposed for `hybrid`.
    pub fn popularity_scores(&self) -> &[f32] {
        &self.prior
    }
}

impl Strategy for Collaborative {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "EASE item-item collaborative filtering, scored from the user's history"
                .into(),
            predicts_ratings: false,
        }
    }

    fn configure(config_json: &str, catalog: Vec<Item>) -> Result<Self, StrategyError> {
        let config: CollaborativeConfig = config::parse(config_json)?;
        config::require_at_least("l2", config.l2, f64::MIN_POSITIVE)?;
        config::require_at_least("refresh_fraction", config.refresh_fraction, 0.0)?;
        config::require_at_least("neighbors", config.neighbors as f64, 1.0)?;
        config::require_at_least("max_items", config.max_items as f64, 1.0)?;
        config.event_weights.validate()?;
        let catalog_len = catalog.len();
        let state = State {
            item_counts: vec![0; catalog_len],
            ..State::default()
        };
        Ok(Self {
            config,
            catalog_len,
            state,
            prior: vec![0.0; catalog_len],
        })
    }

    fn train(&mut self, events: Vec<Feedback>) -> Result<TrainingReport, StrategyError> {
        for event in &events {
            check_item(event.item, self.catalog_len)?;
        }
        // The interactions in one pass per user, not `absorb`'s insert per event: see
        // `by_user` for why (MovieLens 25M would not fit the instance's memory).
        let events_used = events.len() as u64;
        let weights = &self.config.event_weights;
        let mut user_items = by_user::group_by_user(&events, |event| {
            (weights.weight(event) > 0.0).then_some(event.item)
        });
        drop(events);
        let mut item_counts = vec![0; self.catalog_len];
        let mut added = 0;
        for items in &mut user_items {
            items.sort_unstable();
            items.dedup();
            for &item in items.iter() {
                item_counts[item as usize] += 1;
            }
            added += items.len() as u64;
        }
        self.state = State {
            user_items,
            item_counts,
            ..State::default()
        };
        self.refresh_prior();
        self.state.pending_interactions = added;
        self.solve()?;
        Ok(TrainingReport {
            events_used,
            message: format!("solved on {added} user-item pairs"),
        })
    }

    fn update(&mut self, events: Vec<Feedback>) -> Result<TrainingReport, StrategyError> {
        let added = self.absorb(&events)?;
        self.refresh_prior();
        self.state.pending_interactions += added;
        let threshold = self.config.refresh_fraction * self.state.solved_interactions as f64;
        let message = if self.state.pending_interactions > 0
            && self.state.pending_interactions as f64 >= threshold
        {
            self.solve()?;
            "re-solved the item-item weights".to_string()
        } else {
            format!(
                "{} new pairs wait for the next re-solve",
                self.state.pending_interactions
            )
        };
        Ok(TrainingReport {
            events_used: events.len() as u64,
            message,
        })
    }

    fn recommend(&self, request: &Request) -> Result<Vec<Scored>, StrategyError> {
        let mut scores = self.score_history(&request.history);
        for (score, popularity) in scores.iter_mut().zip(&self.prior) {
            *score += 1e-6 * popularity;
        }
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
        if state.item_counts.len() != self.catalog_len
            || state.weights.column_of.len() != self.catalog_len
        {
            return Err(StrategyError::InvalidInput(format!(
                "snapshot rejected: it covers {} items, the catalog has {}",
                state.item_counts.len(),
                self.catalog_len
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
    use recohost_plugin_sdk::EventKind;
    use recohost_plugin_sdk::testing::{
        catalog, click as view, recommend_after_clicks as recommend,
    };

    /// Users 0-4 like items 0, 1, 2; users 5-9 like 3, 4. Item 5 is popular with everyone else.
    fn two_tastes() -> Vec<Feedback> {
        let mut events = Vec::new();
        for user in 0..5 {
            events.extend([view(user, 0), view(user, 1), view(user, 2)]);
        }
        for user in 5..10 {
            events.extend([view(user, 3), view(user, 4)]);
        }
        for user in 10..20 {
            events.push(view(user, 5));
        }
        events
    }

    #[test]
    fn a_training_window_gives_the_interactions_one_at_a_time_give() {
        // Repeats, interleaved users, and events that weigh nothing.
        let mut events = two_tastes();
        events.extend([view(3, 2), view(45, 1), view(3, 2), view(3, 0)]);
        events.push(Feedback {
            kind: EventKind::Rate,
            value: 1.0,
            ..view(46, 3)
        });
        let config = r#"{"event_weights": {"min_rating": 2.0}}"#;
        let mut trained = Collaborative::configure(config, catalog(6)).unwrap();
        trained.train(events.clone()).unwrap();
        let mut absorbed = Collaborative::configure(config, catalog(6)).unwrap();
        absorbed.train(Vec::new()).unwrap();
        absorbed.absorb(&events).unwrap();
        assert_eq!(trained.state.user_items, absorbed.state.user_items);
        assert_eq!(trained.state.item_counts, absorbed.state.item_counts);
    }

    #[test]
    fn ranks_item_co_liked_by_similar_users_above_unrelated_ones() {
        let mut model = Collaborative::configure(r#"{"l2": 1.0}"#, catalog(6)).unwrap();
        model.train(two_tastes()).unwrap();
        let top = recommend(&model, &[0, 1], 3);
        assert_eq!(top[0], 2, "item 2 is co-liked with 0 and 1: {top:?}");
        let top = recommend(&model, &[3], 1);
        assert_eq!(top, vec![4]);
    }

    #[test]
    fn cold_user_gets_most_popular_items() {
        let mut model = Collaborative::configure("{}", catalog(6)).unwrap();
        model.train(two_tastes()).unwrap();
        assert_eq!(recommend(&model, &[], 1), vec![5]);
    }

    #[test]
    fn update_changes_the_next_answer() {
        let config = r#"{"l2": 1.0, "refresh_fraction": 0.0}"#;
        let mut model = Collaborative::configure(config, catalog(6)).unwrap();
        model.train(two_tastes()).unwrap();
        assert_eq!(recommend(&model, &[0, 1, 2], 1)[0], 5);
        // Many users now pair item 0 with item 3: it becomes 0's neighbour.
        let batch: Vec<Feedback> = (20..40).flat_map(|u| [view(u, 0), view(u, 3)]).collect();
        model.update(batch).unwrap();
        assert_eq!(recommend(&model, &[0, 1, 2], 1), vec![3]);
    }

    #[test]
    fn update_waits_for_refresh_fraction_before_re_solving() {
        let mut model =
            Collaborative::configure(r#"{"refresh_fraction": 10.0}"#, catalog(6)).unwrap();
        model.train(two_tastes()).unwrap();
        let before = model.state.weights.clone();
        let report = model.update(vec![view(50, 0), view(50, 3)]).unwrap();
        assert!(model.state.weights == before);
        assert!(report.message.contains("wait"), "{}", report.message);
    }

    #[test]
    fn snapshot_round_trip_answers_identically() {
        let mut model = Collaborative::configure("{}", catalog(6)).unwrap();
        model.train(two_tastes()).unwrap();
        let mut copy = Collaborative::configure("{}", catalog(6)).unwrap();
        copy.load(&model.save().unwrap()).unwrap();
        assert_eq!(recommend(&copy, &[0], 5), recommend(&model, &[0], 5));
    }

    #[test]
    fn never_returns_excluded_items_or_more_than_asked() {
        let mut model = Collaborative::configure("{}", catalog(6)).unwrap();
        model.train(two_tastes()).unwrap();
        let top = recommend(&model, &[0, 1, 2, 3], 10);
        assert_eq!(top.len(), 2);
        assert!(top.iter().all(|i| ![0, 1, 2, 3].contains(i)));
    }
}

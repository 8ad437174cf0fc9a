use recohost_plugin_sdk::{
    EventKind, Feedback, Item, ItemIndex, PluginInfo, Request, Scored, Strategy, StrategyError,
    TrainingReport, UserIndex, by_user, check_item, config, snapshot, topk,
};
use serde::{Deserialize, Serialize};

const NAME: &str = "ratings";
const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RatingsConfig {
    pub user_damping: f64,
    pub item_damping: f64,
    pub neighbors: usize,
    pub shrinkage: f64,
    pub knn_weight: f64,
    pub max_items: usize,
    pub refresh_fraction: f64,
}

impl Default for RatingsConfig {
    fn default() -> Self {
        // Tuned by prequential replay of ML-100k (docs/evaluation.md).
        Self {
            user_damping: 5.0,
            item_damping: 5.0,
            neighbors: 30,
            shrinkage: 100.0,
            knn_weight: 0.7,
            // 500 items: RMSE 0.9525 vs 0.9486 with 1,000, for a quarter of the similarity
            // matrix that every update saves and every serving instance loads.
            max_items: 500,
            refresh_fraction: 0.1,
        }
    }
}

pub struct Ratings {
    config: RatingsConfig,
    catalog_len: usize,
    state: State,
    /// Each item's baseline estimate (mean plus item bias; `-inf` for an item nobody rated):
    /// the ranking `recommend` returns, since a user's own bias shifts every item alike.
    /// Derived from `state`, recomputed whenever `train`, `update` or `load` change it, so a
    /// request only selects from it.
    ranking: Vec<f32>,
    /// Set by `load`, cleared by the next `update` or `train`: the model still sits above the
    /// hole the snapshot's bytes left in linear memory (see
    /// [`Ratings::move_into_snapshot_hole`]).
    above_snapshot_hole: bool,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct State {
    /// Each user's ratings: (item, rating), the latest per item.
    users: Vec<Vec<(ItemIndex, f32)>>,
    /// Sum and number of ratings per item.
    item_sums: Vec<f64>,
    item_counts: Vec<u32>,
    total: f64,
    count: u64,
    similarities: Similarities,
    /// Ratings when the similarities were computed, and new ratings since.
    solved: u64,
    pending: u64,
}

/// Residual similarities between the most-rated items, dense.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Similarities {
    /// Column of each catalog item, `u32::MAX` when it is not modeled.
    column_of: Vec<u32>,
    size: usize,
    #[serde(with = "snapshot::f32_blob")]
    matrix: Vec<f32>,
}

impl Ratings {
    /// Copies the model down into the space the loaded snapshot's bytes occupied.
    ///
    /// `load` decodes the users' ratings above the snapshot's bytes, which are freed when it
    /// returns. A learner's first `update` is followed by `save`, which needs one block a
    /// little larger than that hole (the update grew the model), so the instance grew by a
    /// whole snapshot more: at MovieLens 25M's size 162 MiB of bytes + 190 MiB of ratings +
    /// the new snapshot = 547 MB, over the default 512 MiB limit. wasi-libc's allocator fills
    /// freed chunks before it grows memory, so a copy made now lands in the hole (what does
    /// not fit spills past it: the model is larger than its snapshot), and the model's old
    /// place, freed in one piece, is where the new snapshot then fits. The learner then peaks
    /// near what `load` needed plus the model's excess over its snapshot, not plus a whole
    /// snapshot. One copy of the model per learner, on its first update only.
    fn move_into_snapshot_hole(&mut self) {
        if std::mem::take(&mut self.above_snapshot_hole) {
            self.state = self.state.clone();
        }
    }

    fn mean(&self) -> f64 {
        if self.state.count == 0 {
            3.0
        } else {
            self.state.total / self.state.count as f64
        }
    }

    fn refresh_ranking(&mut self) {
        let mean = self.mean();
        self.ranking = (0..self.catalog_len)
            .map(|i| {
                if self.state.item_counts[i] == 0 {
                    f32::NEG_INFINITY
                } else {
                    (mean + self.item_bias(i, mean)) as f32
                }
            })
            .collect();
    }

    fn item_bias(&self, item: usize, mean: f64) -> f64 {
        let n = f64::from(self.state.item_counts[item]);
        (self.state.item_sums[item] - n * mean) / (n + self.config.item_damping)
    }

    fn user_bias(&self, ratings: &[(ItemIndex, f32)], mean: f64) -> f64 {
        let sum: f64 = ratings
            .iter()
            .map(|&(j, r)| f64::from(r) - mean - self.item_bias(j as usize, mean))
            .sum();
        sum / (ratings.len() as f64 + self.config.user_damping)
    }

    /// Adds rate events; returns how many were used and how many of those were new ratings
    /// (not re-ratings).
    fn absorb(&mut self, events: &[Feedback]) -> Result<(u64, u64), StrategyError> {
        self.check(events)?;
        let (mut used, mut new) = (0, 0);
        for event in events.iter().filter(|e| e.kind == EventKind::Rate) {
            let user = event.user as usize;
            if user >= self.state.users.len() {
                self.state.users.resize_with(user + 1, Vec::new);
            }
            let item = event.item as usize;
            let rating = f64::from(event.value);
            let ratings = &mut self.state.users[user];
            match ratings.iter_mut().find(|(j, _)| *j == event.item) {
                Some(previous) => {
                    // A re-rating replaces the old value everywhere.
                    let old = f64::from(previous.1);
                    previous.1 = event.value;
                    self.state.item_sums[item] += rating - old;
                    self.state.total += rating - old;
                }
                None => {
                    ratings.push((event.item, event.value));
                    self.state.item_sums[item] += rating;
                    self.state.item_counts[item] += 1;
                    self.state.total += rating;
                    self.state.count += 1;
                    new += 1;
                }
            }
            used += 1;
        }
        Ok((used, new))
    }

    /// Refuses events outside the catalog and ratings that are not numbers.
    fn check(&self, events: &[Feedback]) -> Result<(), StrategyError> {
        for event in events {
            check_item(event.item, self.catalog_len)?;
            if event.kind == EventKind::Rate && !event.value.is_finite() {
                return Err(StrategyError::InvalidInput(format!(
                    "rating {} of item {} is not a number",
                    event.value, event.item
                )));
            }
        }
        Ok(())
    }

    /// What `absorb` makes of a whole training window, with each user's ratings gathered in
    /// one pass (see `by_user` for why); returns the rate events used.
    fn absorb_window(&mut self, events: Vec<Feedback>) -> Result<u64, StrategyError> {
        self.check(&events)?;
        let used = events.iter().filter(|e| e.kind == EventKind::Rate).count() as u64;
        let mut users = by_user::group_by_user(&events, |event| {
            (event.kind == EventKind::Rate).then_some((event.item, event.value))
        });
        drop(events);
        for ratings in &mut users {
            latest_per_item(ratings);
            for &(item, rating) in ratings.iter() {
                let rating = f64::from(rating);
                self.state.item_sums[item as usize] += rating;
                self.state.item_counts[item as usize] += 1;
                self.state.total += rating;
                self.state.count += 1;
            }
        }
        self.state.users = users;
        Ok(used)
    }

    /// Recomputes the residual similarities between the most-rated items.
    fn solve(&mut self) {
        let mut order: Vec<usize> = (0..self.catalog_len)
            .filter(|&i| self.state.item_counts[i] > 0)
            .collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(self.state.item_counts[i]), i));
        order.truncate(self.config.max_items);
        let m = order.len();
        let mut column_of = vec![u32::MAX; self.catalog_len];
        for (c, &i) in order.iter().enumerate() {
            column_of[i] = c as u32;
        }
        let mean = self.mean();
        let biases: Vec<f64> = (0..self.catalog_len)
            .map(|i| self.item_bias(i, mean))
            .collect();
        // Per pair: Σ a·b, Σ a² (row's item), co-rating count, accumulated user by user.
        let mut products = vec![0.0f32; m * m];
        let mut squares = vec![0.0f32; m * m];
        let mut counts = vec![0u16; m * m];
        let mut residuals: Vec<(usize, f32)> = Vec::new();
        for ratings in &self.state.users {
            if ratings.is_empty() {
                continue;
            }
            let user_bias = self.user_bias(ratings, mean);
            residuals.clear();
            residuals.extend(ratings.iter().filter_map(|&(j, r)| {
                let c = column_of[j as usize];
                (c != u32::MAX).then(|| {
                    let residual = f64::from(r) - mean - biases[j as usize] - user_bias;
                    (c as usize, residual as f32)
                })
            }));
            for &(a, ra) in &residuals {
                let row = a * m;
                for &(b, rb) in &residuals {
                    products[row + b] += ra * rb;
                    squares[row + b] += ra * ra;
                    counts[row + b] = counts[row + b].saturating_add(1);
                }
            }
        }
        let shrinkage = self.config.shrinkage as f32;
        let mut matrix = vec![0.0f32; m * m];
        for a in 0..m {
            for b in 0..m {
                let (ab, ba) = (a * m + b, b * m + a);
                let denominator = (squares[ab] * squares[ba]).sqrt();
                if a == b || denominator <= 0.0 {
                    continue;
                }
                let co = f32::from(counts[ab]);
                matrix[ab] = products[ab] / denominator * (co / (co + shrinkage));
            }
        }
        self.state.similarities = Similarities {
            column_of,
            size: m,
            matrix,
        };
        self.state.solved = self.state.count;
        self.state.pending = 0;
    }

    /// Predicted rating of `item` for a user with `ratings`.
    fn predict_one(&self, ratings: &[(ItemIndex, f32)], item: usize, mean: f64) -> f64 {
        let user_bias = self.user_bias(ratings, mean);
        let baseline = mean + self.item_bias(item, mean) + user_bias;
        let similarities = &self.state.similarities;
        let Some(&column) = similarities.column_of.get(item) else {
            return baseline;
        };
        if column == u32::MAX {
            return baseline;
        }
        let row = &similarities.matrix[column as usize * similarities.size..][..similarities.size];
        let mut neighbours: Vec<(f32, f64)> = ratings
            .iter()
            .filter_map(|&(j, r)| {
                let c = similarities.column_of[j as usize];
                if c == u32::MAX || j as usize == item {
                    return None;
                }
                let s = row[c as usize];
                let residual = f64::from(r) - mean - self.item_bias(j as usize, mean) - user_bias;
                (s != 0.0).then_some((s, residual))
            })
            .collect();
        let keep = self.config.neighbors.min(neighbours.len());
        if keep == 0 {
            return baseline;
        }
        neighbours.select_nth_unstable_by(keep - 1, |a, b| b.0.abs().total_cmp(&a.0.abs()));
        let (mut weighted, mut total) = (0.0, 0.0);
        for &(s, residual) in &neighbours[..keep] {
            weighted += f64::from(s) * residual;
            total += f64::from(s.abs());
        }
        baseline + self.config.knn_weight * weighted / total
    }
}

/// Keeps one rating per item, where the user first rated it, with the latest value: what
/// `absorb` makes of the same ratings one at a time.
fn latest_per_item(ratings: &mut Vec<(ItemIndex, f32)>) {
    if ratings.len() < 2 {
        return;
    }
    let mut order: Vec<usize> = (0..ratings.len()).collect();
    order.sort_unstable_by_key(|&i| (ratings[i].0, i));
    let runs: Vec<(usize, usize)> = order
        .chunk_by(|&a, &b| ratings[a].0 == ratings[b].0)
        .map(|run| (run[0], run[run.len() - 1]))
        .collect();
    let mut keep = vec![false; ratings.len()];
    for (first, last) in runs {
        ratings[first].1 = ratings[last].1;
        keep[first] = true;
    }
    let mut position = 0;
    ratings.retain(|_| {
        position += 1;
        keep[position - 1]
    });
}

impl Strategy for Ratings {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Rating prediction: damped biases plus item-kNN on the residuals".into(),
            predicts_ratings: true,
        }
    }

    fn configure(config_json: &str, catalog: Vec<Item>) -> Result<Self, StrategyError> {
        let config: RatingsConfig = config::parse(config_json)?;
        config::require_at_least("user_damping", config.user_damping, 0.0)?;
        config::require_at_least("item_damping", config.item_damping, 0.0)?;
        config::require_at_least("shrinkage", config.shrinkage, 0.0)?;
        config::require_at_least("knn_weight", config.knn_weight, 0.0)?;
        config::require_at_least("refresh_fraction", config.refresh_fraction, 0.0)?;
        config::require_at_least("max_items", config.max_items as f64, 1.0)?;
        let catalog_len = catalog.len();
        let state = State {
            item_sums: vec![0.0; catalog_len],
            item_counts: vec![0; catalog_len],
            ..State::default()
        };
        Ok(Self {
            config,
            catalog_len,
            state,
            ranking: vec![f32::NEG_INFINITY; catalog_len],
            above_snapshot_hole: false,
        })
    }

    fn train(&mut self, events: Vec<Feedback>) -> Result<TrainingReport, StrategyError> {
        self.above_snapshot_hole = false;
        self.state = State {
            item_sums: vec![0.0; self.catalog_len],
            item_counts: vec![0; self.catalog_len],
            ..State::default()
        };
        // Refused events leave an empty model behind: rank as such.
        self.refresh_ranking();
        let used = self.absorb_window(events)?;
        self.solve();
        self.refresh_ranking();
        Ok(TrainingReport {
            events_used: used,
            message: format!("similarities over {} items", self.state.similarities.size),
        })
    }

    fn update(&mut self, events: Vec<Feedback>) -> Result<TrainingReport, StrategyError> {
        self.move_into_snapshot_hole();
        let (used, new) = self.absorb(&events)?;
        self.state.pending += new;
        let refreshed = self.state.pending as f64
            > self.config.refresh_fraction * self.state.solved.max(1) as f64;
        if refreshed {
            self.solve();
        }
        self.refresh_ranking();
        Ok(TrainingReport {
            events_used: used,
            message: if refreshed {
                "similarities recomputed".into()
            } else {
                String::new()
            },
        })
    }

    fn recommend(&self, request: &Request) -> Result<Vec<Scored>, StrategyError> {
        Ok(topk::top_k(
            &self.ranking,
            request.count as usize,
            &request.exclude,
        ))
    }

    fn predict(&self, user: UserIndex, items: &[ItemIndex]) -> Result<Vec<f32>, StrategyError> {
        let mean = self.mean();
        let ratings = self
            .state
            .users
            .get(user as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        items
            .iter()
            .map(|&item| {
                let item = check_item(item, self.catalog_len)?;
                Ok(self.predict_one(ratings, item, mean) as f32)
            })
            .collect()
    }

    fn save(&self) -> Result<Vec<u8>, StrategyError> {
        snapshot::encode(NAME, SNAPSHOT_FORMAT, &self.state)
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), StrategyError> {
        let state: State = snapshot::decode(NAME, SNAPSHOT_FORMAT, bytes)?;
        let m = state.similarities.size;
        if state.item_counts.len() != self.catalog_len
            || state.item_sums.len() != self.catalog_len
            || state.similarities.matrix.len() != m * m
        {
            return Err(StrategyError::InvalidInput(format!(
                "snapshot rejected: it covers {} items, the catalog has {}",
                state.item_counts.len(),
                self.catalog_len
            )));
        }
        self.state = state;
        self.above_snapshot_hole = true;
        self.refresh_ranking();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recohost_plugin_sdk::testing::catalog;

    fn rate(user: u32, item: u32, value: f32) -> Feedback {
        Feedback {
            user,
            item,
            kind: EventKind::Rate,
            value,
            timestamp: 1,
        }
    }

    /// Users 0-9 love items 0 and 1 and dislike 2 and 3; users 10-19 the opposite.
    fn two_camps() -> Vec<Feedback> {
        let mut events = Vec::new();
        for user in 0..20 {
            let camp_a = user < 10;
            for item in 0..4 {
                let liked = (item < 2) == camp_a;
                events.push(rate(user, item, if liked { 5.0 } else { 1.0 }));
            }
        }
        events
    }

    fn model(events: Vec<Feedback>) -> Ratings {
        let mut model = Ratings::configure("{}", catalog(6)).unwrap();
        model.train(events).unwrap();
        model
    }

    #[test]
    fn neighbours_tell_the_camps_apart() {
        let mut model = model(two_camps());
        // A new user rates item 0 high: item 1 (same camp) must be predicted above item 2.
        model.update(vec![rate(30, 0, 5.0)]).unwrap();
        let predicted = model.predict(30, &[1, 2]).unwrap();
        assert!(predicted[0] > predicted[1] + 1.0, "{predicted:?}");
    }

    #[test]
    fn biases_move_online_and_unknown_users_get_the_baseline() {
        let mut model = model(two_camps());
        let before = model.predict(99, &[4]).unwrap()[0];
        assert!(
            (before - 3.0).abs() < 0.01,
            "unrated item, no bias: {before}"
        );
        model
            .update((40..60).map(|u| rate(u, 4, 5.0)).collect())
            .unwrap();
        let after = model.predict(99, &[4]).unwrap()[0];
        assert!(after > before + 1.0, "{before} -> {after}");
        assert!(model.predict(0, &[9]).is_err(), "item outside the catalog");
    }

    #[test]
    fn a_training_window_gives_the_model_its_events_one_at_a_time_give() {
        // Re-ratings, interleaved users, a user with no ratings and a non-rating event.
        let mut events = two_camps();
        events.extend([
            rate(3, 0, 2.0),
            rate(25, 5, 4.0),
            rate(3, 5, 1.0),
            rate(3, 0, 4.5),
        ]);
        events.push(Feedback {
            kind: EventKind::Click,
            ..rate(27, 4, 1.0)
        });
        let trained = model(events.clone());
        let mut absorbed = model(Vec::new());
        absorbed.update(events).unwrap();
        assert_eq!(trained.state.users, absorbed.state.users);
        assert_eq!(trained.state.item_counts, absorbed.state.item_counts);
        assert_eq!(trained.state.count, absorbed.state.count);
        for (a, b) in trained
            .state
            .item_sums
            .iter()
            .zip(&absorbed.state.item_sums)
        {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }

    #[test]
    fn re_rating_replaces_and_snapshots_round_trip() {
        let mut model = model(two_camps());
        model.update(vec![rate(0, 0, 1.0)]).unwrap();
        assert_eq!(model.state.count, 80, "a re-rating is not a new rating");
        let bytes = model.save().unwrap();
        let mut copy = Ratings::configure("{}", catalog(6)).unwrap();
        copy.load(&bytes).unwrap();
        assert_eq!(
            copy.predict(3, &[0, 1, 2]).unwrap(),
            model.predict(3, &[0, 1, 2]).unwrap()
        );
        assert!(
            Ratings::configure("{}", catalog(7))
                .unwrap()
                .load(&bytes)
                .is_err()
        );
    }

    #[test]
    fn only_rate_events_count() {
        let mut model = model(two_camps());
        let mut click = rate(0, 5, 1.0);
        click.kind = EventKind::Click;
        assert_eq!(model.update(vec![click]).unwrap().events_used, 0);
        assert!(model.update(vec![rate(0, 5, f32::NAN)]).is_err());
    }
}

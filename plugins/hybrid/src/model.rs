use collaborative::Collaborative;
use content::Content;
use recohost_plugin_sdk::{
    Feedback, Item, ItemIndex, PluginInfo, Request, Scored, Strategy, StrategyError,
    TrainingReport, config, snapshot,
};
use serde::{Deserialize, Serialize};

const NAME: &str = "hybrid";
/// 2: the parts stored as blocks of bytes.
const SNAPSHOT_FORMAT: u32 = 2;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HybridConfig {
    pub collaborative_weight: f32,
    pub content_weight: f32,
    /// History length from which the collaborative part gets its full weight.
    pub cold_start_history: u32,
    /// Config of the collaborative part (see the `collaborative` plugin).
    pub collaborative: serde_json::Value,
    /// Config of the content part (see the `content` plugin).
    pub content: serde_json::Value,
}

impl Default for HybridConfig {
    fn default() -> Self {
        Self {
            collaborative_weight: 0.8,
            content_weight: 0.05,
            cold_start_history: 5,
            collaborative: serde_json::json!({}),
            content: serde_json::json!({}),
        }
    }
}

pub struct Hybrid {
    config: HybridConfig,
    collaborative: Collaborative,
    content: Content,
    /// Every item, by the collaborative part's popularity, lowest first: the ends of the
    /// popularity part's range without a pass over the catalog.
    popularity_order: Vec<u32>,
    /// The items outside the collaborative model, grouped by tag set, most popular first
    /// within a set: set `s` is `unmodeled_by_set[ends[s - 1]..ends[s]]` (see `best`).
    unmodeled_by_set: Vec<u32>,
    unmodeled_by_set_ends: Vec<usize>,
}

/// The snapshot: each part's own snapshot.
#[derive(Serialize, Deserialize)]
struct Parts {
    #[serde(with = "snapshot::byte_blob")]
    collaborative: Vec<u8>,
    #[serde(with = "snapshot::byte_blob")]
    content: Vec<u8>,
}

/// Lowest and highest of each of three score vectors over the allowed items, in one pass.
/// The min-max normalization of a range as `(offset, scale)` so that
/// `(score - offset) * scale` lies in [0, 1]; scale 0 when the allowed scores are all equal.
fn normalization((low, high): (f32, f32)) -> (f32, f32) {
    let range = high - low;
    if range > 0.0 && range.is_finite() {
        (low, 1.0 / range)
    } else {
        (0.0, 0.0)
    }
}

/// One request's blend with everything but the per-item work done: each part's factor and
/// offset (normalization and weight folded together), the collaborative scores of the modeled
/// items, the content score of each tag set, and each tag set's blend outside the model.
///
/// An item's blend is `c.0 * (cs - c.1) + t.0 * (ts - t.1) + p.0 * (ps - p.1)` for its
/// collaborative, content and popularity scores, summed in that order. Only the popularity
/// part varies item by item over the whole catalog: the collaborative part is 0 outside its
/// modeled items (at most `max_items`), and the content part is one value per distinct tag
/// set. So the normalization ranges come from those few values (and, for popularity, from its
/// sorted order), and the first two terms of an item outside the model are its tag set's
/// `base`. The scores are those of the part-by-part formula, operation for operation (a test
/// compares them bit for bit).
struct Blend<'a> {
    modeled: &'a [ItemIndex],
    sums: Vec<f32>,
    tag_sets: Vec<f32>,
    c: (f32, f32),
    t: (f32, f32),
    p: (f32, f32),
    base: Vec<f32>,
}

impl Hybrid {
    fn prepare(&self, request: &Request) -> Blend<'_> {
        let n = self.catalog_len();
        let (modeled, sums) = self.collaborative.score_modeled(&request.history);
        let tag_sets = self.content.score_tag_sets(&request.history);
        let set_of = self.content.tag_set_of();
        let popularity = self.collaborative.popularity_scores();
        let excluded = |item: u32| request.exclude.binary_search(&item).is_ok();
        let in_catalog = |item: &&u32| (**item as usize) < n;

        // Collaborative: the modeled items allowed, and 0 if any other item is allowed.
        let mut collaborative_range = (f32::INFINITY, f32::NEG_INFINITY);
        for (&item, &score) in modeled.iter().zip(&sums) {
            if !excluded(item) {
                collaborative_range = widen(collaborative_range, score);
            }
        }
        let excluded_modeled = modeled.iter().filter(|&&item| excluded(item)).count();
        let excluded_in_catalog = request.exclude.iter().filter(in_catalog).count();
        if n - modeled.len() > excluded_in_catalog - excluded_modeled {
            collaborative_range = widen(collaborative_range, 0.0);
        }
        // Content: the tag sets with an item allowed.
        let mut allowed_in_set = self.content.tag_set_sizes().to_vec();
        for &item in request.exclude.iter().filter(in_catalog) {
            allowed_in_set[set_of[item as usize] as usize] -= 1;
        }
        let mut content_range = (f32::INFINITY, f32::NEG_INFINITY);
        for (&score, &allowed) in tag_sets.iter().zip(&allowed_in_set) {
            if allowed > 0 {
                content_range = widen(content_range, score);
            }
        }
        // Popularity: the first allowed item from each end of its order.
        let order = &self.popularity_order;
        let lowest = order.iter().find(|&&item| !excluded(item));
        let highest = order.iter().rev().find(|&&item| !excluded(item));
        let popularity_range = match (lowest, highest) {
            (Some(&low), Some(&high)) => (popularity[low as usize], popularity[high as usize]),
            _ => (f32::INFINITY, f32::NEG_INFINITY),
        };

        let ramp = if self.config.cold_start_history == 0 {
            1.0
        } else {
            (request.history.len() as f32 / self.config.cold_start_history as f32).min(1.0)
        };
        let (wc, wt) = (self.config.collaborative_weight, self.config.content_weight);
        let weights = [ramp * wc, wt, (1.0 - ramp) * wc + 1e-6];
        let ranges = [collaborative_range, content_range, popularity_range];
        let [c, t, p]: [(f32, f32); 3] = std::array::from_fn(|i| {
            let (offset, scale) = normalization(ranges[i]);
            (weights[i] * scale, offset)
        });
        let unmodeled = c.0 * (0.0 - c.1);
        let base = tag_sets
            .iter()
            .map(|&ts| unmodeled + t.0 * (ts - t.1))
            .collect();
        Blend {
            modeled,
            sums,
            tag_sets,
            c,
            t,
            p,
            base,
        }
    }

    /// Blended scores of every item for this request; excluded items are NaN. Serving uses
    /// [`Self::best`]; this dense form is what the tests compare with the item-by-item
    /// formula.
    #[cfg(test)]
    fn blend(&self, request: &Request) -> Vec<f32> {
        let blend = self.prepare(request);
        let set_of = self.content.tag_set_of();
        let popularity = self.collaborative.popularity_scores();
        let p = blend.p;
        let mut scores: Vec<f32> = set_of
            .iter()
            .zip(popularity)
            .map(|(&set, &ps)| blend.base[set as usize] + p.0 * (ps - p.1))
            .collect();
        for (&item, &cs) in blend.modeled.iter().zip(&blend.sums) {
            scores[item as usize] = self.modeled_blend(&blend, item, cs);
        }
        for &item in &request.exclude {
            if let Some(score) = scores.get_mut(item as usize) {
                *score = f32::NAN;
            }
        }
        scores
    }

    /// The blend of a modeled item whose collaborative score is `cs`.
    fn modeled_blend(&self, blend: &Blend, item: ItemIndex, cs: f32) -> f32 {
        let (c, t, p) = (blend.c, blend.t, blend.p);
        let ts = blend.tag_sets[self.content.tag_set_of()[item as usize] as usize];
        let ps = self.collaborative.popularity_scores()[item as usize];
        c.0 * (cs - c.1) + t.0 * (ts - t.1) + p.0 * (ps - p.1)
    }

    /// The best `request.count` items of [`Self::blend`], without blending the whole
    /// catalog: higher scores first, equal scores to the more popular item, then to the lower
    /// index. (Popularity is also the blend's own tie-breaker, a term of weight 1e-6; for a
    /// warm user it is below the rounding of most scores, so equal scores are common.)
    ///
    /// Outside the model, an item's blend is its tag set's base plus a popularity term that
    /// never decreases with its popularity (each floating-point step is monotonic). So the
    /// items of a tag set, walked from the most popular (ties to the lower index), come in
    /// exactly the order above, and only the first `count` allowed ones can be among the best.
    /// Those of every tag set and the modeled items are the candidates: at most `count` per
    /// tag set plus the modeled items, instead of the whole catalog (at L's 62k items and
    /// 10 asked, a few thousand).
    fn best(&self, request: &Request) -> Vec<Scored> {
        let count = request.count as usize;
        if count == 0 {
            return Vec::new();
        }
        let blend = self.prepare(request);
        let excluded = |item: u32| request.exclude.binary_search(&item).is_ok();
        let popularity = self.collaborative.popularity_scores();
        let p = blend.p;
        let mut candidates: Vec<Scored> = blend
            .modeled
            .iter()
            .zip(&blend.sums)
            .filter(|&(&item, _)| !excluded(item))
            .map(|(&item, &cs)| Scored {
                item,
                score: self.modeled_blend(&blend, item, cs),
            })
            .collect();
        let mut start = 0;
        for (&end, &base) in self.unmodeled_by_set_ends.iter().zip(&blend.base) {
            let items = &self.unmodeled_by_set[start..end];
            let score = |item: u32| base + p.0 * (popularity[item as usize] - p.1);
            take_first_allowed(items, count, excluded, score, &mut candidates);
            start = end;
        }
        order_best(candidates, count, popularity)
    }

    fn catalog_len(&self) -> usize {
        self.content.tag_set_of().len()
    }

    /// Rebuilds the orders `prepare` and `best` walk after the collaborative part changed:
    /// the catalog by popularity, and the items outside the model by tag set.
    fn refresh_orders(&mut self) {
        let popularity = self.collaborative.popularity_scores();
        let mut order: Vec<u32> = (0..popularity.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| popularity[a as usize].total_cmp(&popularity[b as usize]));
        self.popularity_order = order;

        let set_of = self.content.tag_set_of();
        let mut modeled = vec![false; popularity.len()];
        for &item in self.collaborative.modeled_items() {
            modeled[item as usize] = true;
        }
        // Most popular first, ties to the lower index; then grouped by tag set, keeping that
        // order within each set (a counting sort).
        let mut unmodeled: Vec<u32> = (0..popularity.len() as u32)
            .filter(|&item| !modeled[item as usize])
            .collect();
        unmodeled.sort_unstable_by(|&a, &b| {
            popularity[b as usize]
                .total_cmp(&popularity[a as usize])
                .then(a.cmp(&b))
        });
        let mut ends = vec![0usize; self.content.tag_set_sizes().len()];
        for &item in &unmodeled {
            ends[set_of[item as usize] as usize] += 1;
        }
        let mut next = Vec::with_capacity(ends.len());
        let mut total = 0;
        for end in &mut ends {
            next.push(total);
            total += *end;
            *end = total;
        }
        let mut by_set = vec![0u32; unmodeled.len()];
        for &item in &unmodeled {
            let slot = &mut next[set_of[item as usize] as usize];
            by_set[*slot] = item;
            *slot += 1;
        }
        self.unmodeled_by_set = by_set;
        self.unmodeled_by_set_ends = ends;
    }
}

/// Adds to `candidates` the first `count` allowed `items`.
fn take_first_allowed(
    items: &[u32],
    count: usize,
    excluded: impl Fn(u32) -> bool,
    score: impl Fn(u32) -> f32,
    candidates: &mut Vec<Scored>,
) {
    candidates.extend(
        items
            .iter()
            .filter(|&&item| !excluded(item))
            .take(count)
            .map(|&item| Scored {
                item,
                score: score(item),
            }),
    );
}

/// The best `count` of `candidates`: finite scores only, higher first; equal scores go to the
/// more popular item, then to the lower index.
fn order_best(mut candidates: Vec<Scored>, count: usize, popularity: &[f32]) -> Vec<Scored> {
    candidates.retain(|c| c.score.is_finite());
    let order = |a: &Scored, b: &Scored| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(popularity[b.item as usize].total_cmp(&popularity[a.item as usize]))
            .then(a.item.cmp(&b.item))
    };
    if candidates.len() > count {
        candidates.select_nth_unstable_by(count, order);
        candidates.truncate(count);
    }
    candidates.sort_unstable_by(order);
    candidates
}

/// `range` widened to take in `value`, with the comparisons of `kernels::min_max`.
fn widen((low, high): (f32, f32), value: f32) -> (f32, f32) {
    (
        if value < low { value } else { low },
        if value > high { value } else { high },
    )
}

impl Strategy for Hybrid {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Collaborative and content scores blended, popularity for cold users"
                .into(),
            predicts_ratings: false,
        }
    }

    fn configure(config_json: &str, catalog: Vec<Item>) -> Result<Self, StrategyError> {
        let config: HybridConfig = config::parse(config_json)?;
        config::require_at_least(
            "collaborative_weight",
            f64::from(config.collaborative_weight),
            0.0,
        )?;
        config::require_at_least("content_weight", f64::from(config.content_weight), 0.0)?;
        let collaborative =
            Collaborative::configure(&config.collaborative.to_string(), catalog.clone())
                .map_err(|e| prefixed("collaborative", e))?;
        let content = Content::configure(&config.content.to_string(), catalog)
            .map_err(|e| prefixed("content", e))?;
        let mut hybrid = Self {
            config,
            collaborative,
            content,
            popularity_order: Vec::new(),
            unmodeled_by_set: Vec::new(),
            unmodeled_by_set_ends: Vec::new(),
        };
        hybrid.refresh_orders();
        Ok(hybrid)
    }

    fn train(&mut self, events: Vec<Feedback>) -> Result<TrainingReport, StrategyError> {
        // Content first, on borrowed events: collaborative takes the window itself and frees
        // it as soon as it has its interactions, so the window is never copied.
        self.content.train_on(&events)?;
        let report = self.collaborative.train(events);
        self.refresh_orders();
        report
    }

    fn update(&mut self, events: Vec<Feedback>) -> Result<TrainingReport, StrategyError> {
        // As in `train`: content on borrowed events, so a catch-up batch is not copied. (A
        // refusal of either part leaves the learner dropped by the host, whatever the order.)
        self.content.update_on(&events)?;
        let report = self.collaborative.update(events);
        // Popularity changed: its order is rebuilt (sorting the catalog, 10 ms at 62k items).
        self.refresh_orders();
        report
    }

    fn recommend(&self, request: &Request) -> Result<Vec<Scored>, StrategyError> {
        // `best` counts and looks up exclusions by binary search: it needs them sorted and
        // without duplicates, as the contract promises. A host that broke it still gets a
        // right answer.
        if request.exclude.is_sorted_by(|a, b| a < b) {
            Ok(self.best(request))
        } else {
            let mut exclude = request.exclude.clone();
            exclude.sort_unstable();
            exclude.dedup();
            Ok(self.best(&Request {
                exclude,
                ..request.clone()
            }))
        }
    }

    fn save(&self) -> Result<Vec<u8>, StrategyError> {
        let parts = Parts {
            collaborative: self.collaborative.save()?,
            content: self.content.save()?,
        };
        snapshot::encode(NAME, SNAPSHOT_FORMAT, &parts)
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), StrategyError> {
        let parts: Parts = snapshot::decode(NAME, SNAPSHOT_FORMAT, bytes)?;
        let loaded = self.collaborative.load(&parts.collaborative);
        self.refresh_orders();
        loaded?;
        self.content.load(&parts.content)
    }
}

/// Names the part whose config was refused.
fn prefixed(part: &str, error: StrategyError) -> StrategyError {
    match error {
        StrategyError::InvalidInput(message) => {
            StrategyError::InvalidInput(format!("{part}: {message}"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recohost_plugin_sdk::kernels;
    use recohost_plugin_sdk::testing::{click, recommend_after_clicks as recommend};

    impl Hybrid {
        /// The blend as it was computed before `blend` worked per tag set: every part over the
        /// whole catalog, then normalized and summed item by item.
        fn blend_item_by_item(&self, request: &Request) -> Vec<f32> {
            let mut collaborative = self.collaborative.score_history(&request.history);
            let mut content = self.content.score_history(&request.history);
            let mut popularity = self.collaborative.popularity_scores().to_vec();
            // Excluded items become NaN: the normalization ranges ignore them (comparisons are
            // false), so do their blended scores and `top_k` (not finite). One vectorized pass
            // per part then finds the ranges, instead of testing a mask per item.
            for &item in &request.exclude {
                for part in [&mut collaborative, &mut content, &mut popularity] {
                    if let Some(score) = part.get_mut(item as usize) {
                        *score = f32::NAN;
                    }
                }
            }
            let ramp = if self.config.cold_start_history == 0 {
                1.0
            } else {
                (request.history.len() as f32 / self.config.cold_start_history as f32).min(1.0)
            };
            let (wc, wt) = (self.config.collaborative_weight, self.config.content_weight);
            // Each part min-max normalized over the candidates, folded into one factor and offset
            // per part so the blend is a single pass.
            let parts = [&collaborative[..], &content[..], &popularity[..]];
            let weights = [ramp * wc, wt, (1.0 - ramp) * wc + 1e-6];
            let ranges = parts.map(kernels::min_max);
            let [c, t, p]: [(f32, f32); 3] = std::array::from_fn(|i| {
                let (offset, scale) = normalization(ranges[i]);
                (weights[i] * scale, offset)
            });
            // A part with factor 0 adds exactly 0 (its scores are finite).
            collaborative
                .iter()
                .zip(&content)
                .zip(&popularity)
                .map(|((&cs, &ts), &ps)| c.0 * (cs - c.1) + t.0 * (ts - t.1) + p.0 * (ps - p.1))
                .collect()
        }
    }

    /// Items 0-2 "drama", 3-5 "scifi", 6 "drama", 7 untagged and very popular.
    fn catalog() -> Vec<Item> {
        (0..8)
            .map(|index| {
                let tags = match index {
                    0..=2 | 6 => vec!["drama".to_string()],
                    3..=5 => vec!["scifi".to_string()],
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

    fn events() -> Vec<Feedback> {
        let mut events = Vec::new();
        for user in 0..6 {
            events.extend([click(user, 0), click(user, 1), click(user, 2)]);
        }
        for user in 6..12 {
            events.extend([click(user, 3), click(user, 4), click(user, 5)]);
        }
        for user in 12..30 {
            events.push(click(user, 7));
        }
        events
    }

    /// The best `count` of a dense blend, sorting the whole catalog (excluded items are NaN).
    fn reference_best(model: &Hybrid, blend: &[f32], count: usize) -> Vec<Scored> {
        let popularity = model.collaborative.popularity_scores();
        let mut all: Vec<Scored> = (0..blend.len() as u32)
            .filter(|&item| blend[item as usize].is_finite())
            .map(|item| Scored {
                item,
                score: blend[item as usize],
            })
            .collect();
        all.sort_by(|a, b| {
            b.score
                .partial_cmp(&a.score)
                .unwrap()
                .then(popularity[b.item as usize].total_cmp(&popularity[a.item as usize]))
                .then(a.item.cmp(&b.item))
        });
        all.truncate(count);
        all
    }

    #[test]
    fn the_blend_is_the_item_by_item_formula_bit_for_bit() {
        const ITEMS: u32 = 200;
        // A catalog with repeated tag sets, users with overlapping tastes, requests with and
        // without exclusions (the most and least popular items among them) and histories of
        // every length around the cold-start ramp.
        let catalog: Vec<Item> = (0..ITEMS)
            .map(|index| Item {
                index,
                title: format!("item {index}"),
                tags: match index % 5 {
                    0 => vec!["drama".into()],
                    1 => vec!["drama".into(), "scifi".into()],
                    2 => vec!["scifi".into()],
                    3 => vec!["comedy".into(), "drama".into()],
                    _ => vec![],
                },
            })
            .collect();
        let events: Vec<Feedback> = (0..400u32)
            .flat_map(|user| {
                (0..(user % 23 + 1))
                    .map(move |k| click(user, (user * 7 + k * k * 13) % (ITEMS - 3)))
            })
            .collect();
        let config = r#"{"cold_start_history": 3, "collaborative": {"l2": 1.0, "max_items": 12}}"#;
        let mut model = Hybrid::configure(config, catalog).unwrap();
        model.train(events).unwrap();
        let most_popular = *model.popularity_order.last().unwrap();
        let least_popular = model.popularity_order[0];
        let modeled = model.collaborative.modeled_items().to_vec();
        let unmodeled = (0..ITEMS).find(|item| !modeled.contains(item)).unwrap();
        let all_but =
            |kept: &[u32]| -> Vec<u32> { (0..ITEMS).filter(|i| !kept.contains(i)).collect() };
        let mut exclusions = vec![
            vec![],
            vec![least_popular, most_popular],
            vec![1, 3, 38],
            (0..ITEMS).collect(),
        ];
        // Whole tag sets out, or all but one set.
        for class in 0..5 {
            exclusions.push((0..ITEMS).filter(|i| i % 5 == class).collect());
            exclusions.push((0..ITEMS).filter(|i| i % 5 != class).collect());
        }
        // One modeled item left, alone or with one item outside the model.
        for &item in &modeled {
            exclusions.push(all_but(&[item]));
            exclusions.push(all_but(&[item, unmodeled]));
        }
        for length in 0..6u32 {
            // Modeled items, so that the collaborative part scores something.
            let history: Vec<Feedback> = (0..length as usize)
                .map(|k| click(999, modeled[k * 2 % modeled.len()]))
                .collect();
            for exclude in &exclusions {
                let mut exclude = exclude.clone();
                exclude.extend(history.iter().map(|e| e.item));
                exclude.sort_unstable();
                exclude.dedup();
                let request = Request {
                    user: Some(999),
                    count: 10,
                    history: history.clone(),
                    exclude,
                };
                let reference = model.blend_item_by_item(&request);
                let bits = |scores: &[f32]| scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&model.blend(&request)),
                    bits(&reference),
                    "history {length}, exclude {:?}",
                    request.exclude
                );
                // And the answer walked by tag set is `top_k` of them, for several counts.
                for count in [1, 3, 10, 40, ITEMS] {
                    let request = Request {
                        count,
                        ..request.clone()
                    };
                    let best = model.best(&request);
                    let expected = reference_best(&model, &reference, count as usize);
                    let pairs = |list: &[Scored]| {
                        list.iter()
                            .map(|s| (s.item, s.score.to_bits()))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(
                        pairs(&best),
                        pairs(&expected),
                        "count {count}, {:?}",
                        request.exclude
                    );
                }
            }
        }
    }

    #[test]
    fn equal_scores_go_to_the_more_popular_item_then_the_lower_index() {
        let popularity = [0.1, 0.5, 0.5, 0.9, 0.2];
        let scored = |item: u32, score: f32| Scored { item, score };
        let candidates = vec![
            scored(0, 0.7),
            scored(4, f32::NAN),
            scored(2, 0.7),
            scored(1, 0.7),
            scored(3, 0.3),
        ];
        let items = |list: Vec<Scored>| list.iter().map(|s| s.item).collect::<Vec<_>>();
        assert_eq!(
            items(order_best(candidates.clone(), 10, &popularity)),
            [1, 2, 0, 3]
        );
        assert_eq!(items(order_best(candidates, 2, &popularity)), [1, 2]);
    }

    #[test]
    fn exclusions_out_of_order_or_repeated_are_still_excluded() {
        let mut model = Hybrid::configure("{}", catalog()).unwrap();
        model.train(events()).unwrap();
        let request = |exclude: Vec<u32>| Request {
            user: Some(0),
            count: 8,
            history: vec![click(0, 0)],
            exclude,
        };
        let sorted = model.recommend(&request(vec![0, 1, 3, 5, 7])).unwrap();
        assert_eq!(sorted.len(), 3);
        assert!(sorted.iter().all(|s| [2, 4, 6].contains(&s.item)));
        assert_eq!(
            model.recommend(&request(vec![7, 5, 3, 1, 0, 7])).unwrap(),
            sorted
        );
    }

    #[test]
    fn cold_user_gets_popular_items() {
        let mut model = Hybrid::configure("{}", catalog()).unwrap();
        model.train(events()).unwrap();
        assert_eq!(recommend(&model, &[], 1), vec![7]);
    }

    #[test]
    fn warm_user_gets_co_liked_items_and_then_same_genre() {
        let config = r#"{"cold_start_history": 1, "collaborative": {"l2": 1.0}}"#;
        let mut model = Hybrid::configure(config, catalog()).unwrap();
        model.train(events()).unwrap();
        let top = recommend(&model, &[3, 4], 2);
        assert_eq!(top[0], 5, "{top:?}");
        // Item 6 is drama nobody clicked: only the content part can find it for a drama fan.
        let top = recommend(&model, &[0, 1, 2], 1);
        assert_eq!(top, vec![6]);
    }

    #[test]
    fn snapshot_round_trip_and_part_config_errors_are_named() {
        let mut model = Hybrid::configure("{}", catalog()).unwrap();
        model.train(events()).unwrap();
        let mut copy = Hybrid::configure("{}", catalog()).unwrap();
        copy.load(&model.save().unwrap()).unwrap();
        assert_eq!(recommend(&copy, &[0], 4), recommend(&model, &[0], 4));
        let Err(StrategyError::InvalidInput(message)) =
            Hybrid::configure(r#"{"collaborative": {"l2": -1}}"#, catalog())
        else {
            panic!("negative l2 accepted");
        };
        assert!(message.starts_with("collaborative:"), "{message}");
    }
}

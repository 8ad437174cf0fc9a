use collaborative::Collaborative;
use content::Content;
use recohost_plugin_sdk::{
    Feedback, Item, PluginInfo, Request, Scored, Strategy, StrategyError, TrainingReport, config,
    kernels, snapshot, topk,
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

impl Hybrid {
    /// Blended scores of every item for this request.
    pub fn blend(&self, request: &Request) -> Vec<f32> {
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
        Ok(Self {
            config,
            collaborative,
            content,
        })
    }

    fn train(&mut self, events: Vec<Feedback>) -> Result<TrainingReport, StrategyError> {
        let report = self.collaborative.train(events.clone())?;
        self.content.train(events)?;
        Ok(report)
    }

    fn update(&mut self, events: Vec<Feedback>) -> Result<TrainingReport, StrategyError> {
        let report = self.collaborative.update(events.clone())?;
        self.content.update(events)?;
        Ok(report)
    }

    fn recommend(&self, request: &Request) -> Result<Vec<Scored>, StrategyError> {
        let scores = self.blend(request);
        Ok(topk::top_k(
            &scores,
            request.count as usize,
            &request.exclude,
        ))
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
        self.collaborative.load(&parts.collaborative)?;
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
    use recohost_plugin_sdk::testing::{click, recommend_after_clicks as recommend};

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

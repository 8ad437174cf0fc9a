//! How much one piece of feedback counts, by kind: shared so that every bundled plugin reads
//! the same `event_weights` config table the same way.

use serde::Deserialize;

use crate::{EventKind, Feedback, StrategyError};

/// Weight of each kind of event, and the rating below which a `rate` event does not count as a
/// positive signal. TOML: `[plugins.config.event_weights] rate = 1.0, view = 0.5, ...`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventWeights {
    pub rate: f32,
    pub click: f32,
    pub view: f32,
    pub purchase: f32,
    /// `rate` events with a value below this weigh 0 (0.0 counts every rating).
    pub min_rating: f32,
}

impl Default for EventWeights {
    fn default() -> Self {
        Self {
            rate: 1.0,
            click: 1.0,
            view: 0.5,
            purchase: 2.0,
            min_rating: 0.0,
        }
    }
}

impl EventWeights {
    /// The weight of `event`: its kind's weight, or 0 for a rating under `min_rating`.
    pub fn weight(&self, event: &Feedback) -> f32 {
        match event.kind {
            EventKind::Rate if event.value < self.min_rating => 0.0,
            EventKind::Rate => self.rate,
            EventKind::Click => self.click,
            EventKind::View => self.view,
            EventKind::Purchase => self.purchase,
        }
    }

    /// Refuses negative or non-finite weights.
    pub fn validate(&self) -> Result<(), StrategyError> {
        for (name, value) in [
            ("rate", self.rate),
            ("click", self.click),
            ("view", self.view),
            ("purchase", self.purchase),
            ("min_rating", self.min_rating),
        ] {
            crate::config::require_at_least(
                &format!("event_weights.{name}"),
                f64::from(value),
                0.0,
            )?;
        }
        Ok(())
    }
}

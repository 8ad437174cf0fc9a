//! The recommendation service: places the user in an experiment arm (or takes the requested
//! model), asks the plugin, checks its answer before anyone sees it, and logs the exposure.
//! Knows nothing about HTTP.

use std::sync::{Arc, RwLock};

use serde::Serialize;
use thiserror::Error;

use crate::catalog::{Catalog, Users};
use crate::experiments::{ExperimentError, Experiments};
use crate::plugins::bindings::Request;
use crate::plugins::{LivePlugins, RecommendCallError};

#[derive(Debug, Error)]
pub enum RecommendError {
    #[error("unknown model `{requested}`; available models: {}", available.join(", "))]
    UnknownModel {
        requested: String,
        available: Vec<String>,
    },
    #[error("n_recommendations must be between 1 and {max}, got {requested}")]
    InvalidCount { requested: u64, max: u32 },
    #[error(transparent)]
    Experiment(#[from] ExperimentError),
    #[error("model `{model}` is unavailable: {source}")]
    PluginFailed {
        model: String,
        source: RecommendCallError,
    },
}

/// One recommended item.
#[derive(Clone, Debug, Serialize)]
pub struct RecommendedItem {
    pub item_id: String,
    pub title: String,
    pub score: f32,
}

/// What a client asks for.
#[derive(Clone, Debug, Default)]
pub struct RecommendQuery<'a> {
    /// External user ID; an unknown user is a cold start, not an error.
    pub user_id: &'a str,
    pub count: u64,
    /// Plugin to use outside experiments (default: the configured default model).
    pub model: Option<&'a str>,
    /// Experiment to place the user in (default: the highest-priority running one that
    /// includes the user).
    pub experiment_id: Option<&'a str>,
    /// Ignore experiments: serve `model`, log no exposure (operators' previews).
    pub bypass_experiments: bool,
}

/// The experiment arm that served a recommendation.
#[derive(Clone, Debug, Serialize)]
pub struct ServedArm {
    pub experiment_id: String,
    pub experiment_name: String,
    pub group: String,
}

/// A plugin's answer, checked and mapped back to external IDs.
#[derive(Clone, Debug, Serialize)]
pub struct Recommendation {
    pub model: String,
    pub model_version: u64,
    /// The experiment and group that chose the model, if any.
    pub experiment: Option<ServedArm>,
    /// True when the user has no history, so the answer cannot be personal.
    pub cold_start: bool,
    pub items: Vec<RecommendedItem>,
    /// Entries of the plugin's answer that were dropped (unknown, excluded, duplicate, not
    /// finite or past the count). Zero for a well-behaved plugin.
    pub dropped: usize,
}

pub struct Recommender {
    pub catalog: Arc<Catalog>,
    pub users: Arc<RwLock<Users>>,
    pub plugins: Arc<LivePlugins>,
    pub experiments: Arc<Experiments>,
    pub default_model: String,
    /// Newest events of a user sent with each request.
    pub history_limit: usize,
    pub max_recommendations: u32,
}

impl Recommender {
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// Recommends `query.count` items. A user in an experiment gets their group's plugin,
    /// whatever `query.model` says.
    pub async fn recommend(
        &self,
        query: &RecommendQuery<'_>,
    ) -> Result<Recommendation, RecommendError> {
        let (user_id, count) = (query.user_id, query.count);
        if count == 0 || count > u64::from(self.max_recommendations) {
            return Err(RecommendError::InvalidCount {
                requested: count,
                max: self.max_recommendations,
            });
        }
        let assignment = if query.bypass_experiments {
            None
        } else {
            self.experiments.assign(user_id, query.experiment_id)?
        };
        let model = match &assignment {
            Some(assignment) => assignment.group().plugin.clone(),
            None => query.model.unwrap_or(&self.default_model).to_string(),
        };
        let plugin = self
            .plugins
            .get(&model)
            .ok_or_else(|| RecommendError::UnknownModel {
                requested: model.clone(),
                available: self.plugins.names(),
            })?;
        let (request, after_event) = self.request(user_id, count as u32);
        let cold_start = request.history.is_empty();
        let exclude = request.exclude.clone();
        let (scored, model_version) = plugin.recommend_async(request).await.map_err(|source| {
            RecommendError::PluginFailed {
                model: model.clone(),
                source,
            }
        })?;

        // The plugin is untrusted: keep only known, allowed, distinct, finite entries.
        let received = scored.len();
        let mut seen = std::collections::HashSet::new();
        let items: Vec<RecommendedItem> = scored
            .into_iter()
            .filter(|s| {
                s.score.is_finite()
                    && exclude.binary_search(&s.item).is_err()
                    && seen.insert(s.item)
            })
            .filter_map(|s| {
                let item = self.catalog.get(s.item)?;
                Some(RecommendedItem {
                    item_id: item.external_id.clone(),
                    title: item.title.clone(),
                    score: s.score,
                })
            })
            .take(count as usize)
            .collect();
        let dropped = received - items.len();
        if dropped > 0 {
            tracing::warn!(
                model,
                dropped,
                "dropped malformed entries from a plugin's answer"
            );
        }
        let experiment = assignment.map(|assignment| {
            self.experiments
                .record_exposure(&assignment, user_id, model_version, after_event);
            let definition = &assignment.experiment.definition;
            ServedArm {
                experiment_id: definition.id.clone(),
                experiment_name: definition.name.clone(),
                group: assignment.group().name.clone(),
            }
        });
        Ok(Recommendation {
            model,
            model_version,
            experiment,
            cold_start,
            items,
            dropped,
        })
    }

    /// The plugin request for a user (newest history first, capped; all seen items
    /// excluded), and the id of the newest event stored when it was made.
    fn request(&self, user_id: &str, count: u32) -> (Request, i64) {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        let after_event = users.last_event_id();
        let Some(user) = users.index_of(user_id) else {
            let request = Request {
                user: None,
                count,
                history: Vec::new(),
                exclude: Vec::new(),
            };
            return (request, after_event);
        };
        let full = users.history(user);
        let history = full
            .iter()
            .rev()
            .take(self.history_limit)
            .cloned()
            .collect();
        let mut exclude: Vec<u32> = full.iter().map(|event| event.item).collect();
        exclude.sort_unstable();
        exclude.dedup();
        let request = Request {
            user: Some(user),
            count,
            history,
            exclude,
        };
        (request, after_event)
    }
}

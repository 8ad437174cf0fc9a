//! The recommendation service: resolves the model and the user, asks the plugin, and checks
//! its answer before anyone sees it. Knows nothing about HTTP.

use std::sync::{Arc, RwLock};

use serde::Serialize;
use thiserror::Error;

use crate::catalog::{Catalog, Users};
use crate::plugins::bindings::Request;
use crate::plugins::{PluginRegistry, RecommendCallError};

#[derive(Debug, Error)]
pub enum RecommendError {
    #[error("unknown model `{requested}`; available models: {}", available.join(", "))]
    UnknownModel {
        requested: String,
        available: Vec<String>,
    },
    #[error("n_recommendations must be between 1 and {max}, got {requested}")]
    InvalidCount { requested: u64, max: u32 },
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

/// A plugin's answer, checked and mapped back to external IDs.
#[derive(Clone, Debug, Serialize)]
pub struct Recommendation {
    pub model: String,
    pub model_version: u64,
    /// True when the user has no history, so the answer cannot be personal.
    pub cold_start: bool,
    pub items: Vec<RecommendedItem>,
    /// Entries of the plugin's answer that were dropped (unknown, excluded, duplicate, not
    /// finite or past the count). Zero for a well-behaved plugin.
    pub dropped: usize,
}

pub struct Recommender {
    catalog: Arc<Catalog>,
    users: Arc<RwLock<Users>>,
    plugins: Arc<PluginRegistry>,
    default_model: String,
    history_limit: usize,
    max_recommendations: u32,
}

impl Recommender {
    pub fn new(
        catalog: Arc<Catalog>,
        users: Arc<RwLock<Users>>,
        plugins: Arc<PluginRegistry>,
        default_model: String,
        history_limit: usize,
        max_recommendations: u32,
    ) -> Self {
        Self {
            catalog,
            users,
            plugins,
            default_model,
            history_limit,
            max_recommendations,
        }
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// Recommends `count` items for the user with external ID `user_id` from `model` (or the
    /// default model). An unknown user is a cold start, not an error.
    pub async fn recommend(
        &self,
        user_id: &str,
        count: u64,
        model: Option<&str>,
    ) -> Result<Recommendation, RecommendError> {
        if count == 0 || count > u64::from(self.max_recommendations) {
            return Err(RecommendError::InvalidCount {
                requested: count,
                max: self.max_recommendations,
            });
        }
        let model = model.unwrap_or(&self.default_model).to_string();
        let plugin =
            self.plugins
                .get(&model)
                .cloned()
                .ok_or_else(|| RecommendError::UnknownModel {
                    requested: model.clone(),
                    available: self.plugins.names(),
                })?;
        let request = self.request(user_id, count as u32);
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
        Ok(Recommendation {
            model,
            model_version,
            cold_start,
            items,
            dropped,
        })
    }

    /// The plugin request for a user: newest history first (capped), all seen items excluded.
    fn request(&self, user_id: &str, count: u32) -> Request {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        let Some(user) = users.index_of(user_id) else {
            return Request {
                user: None,
                count,
                history: Vec::new(),
                exclude: Vec::new(),
            };
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
        Request {
            user: Some(user),
            count,
            history,
            exclude,
        }
    }
}

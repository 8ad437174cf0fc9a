//! The recommendation service: places the user in an experiment arm (or takes the requested
//! model), asks the plugin, checks its answer before anyone sees it, and logs the exposure.
//! Knows nothing about HTTP.

use std::sync::{Arc, RwLock};

use serde::Serialize;
use thiserror::Error;

use crate::cache::{self, KeyScope, RecommendationCache};
use crate::catalog::{Catalog, Users};
use crate::experiments::{ExperimentError, Experiments};
use crate::plugins::bindings::{Request, Scored};
use crate::plugins::{LivePlugins, PluginRuntime, RecommendCallError};

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

/// One recommended item: its catalog index (known to the catalog: answers are checked) and
/// score. Callers look up the external ID and title in the catalog, without copying them.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RecommendedItem {
    pub item: u32,
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

/// Why the fallback plugin answered instead of the chosen one.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Fallback {
    /// The plugin that was chosen and failed.
    pub from: String,
    pub reason: String,
}

/// A plugin's answer, checked and mapped back to external IDs.
#[derive(Clone, Debug, Serialize)]
pub struct Recommendation {
    /// The plugin that answered (the fallback's name when `fallback` is set).
    pub model: String,
    pub model_version: u64,
    /// The experiment and group that chose the model, if any.
    pub experiment: Option<ServedArm>,
    /// Set when the chosen plugin failed and the fallback plugin answered.
    pub fallback: Option<Fallback>,
    /// True when the user has no history, so the answer cannot be personal.
    pub cold_start: bool,
    /// Served from the cache (the same model version once answered this user and count).
    pub cached: bool,
    pub items: Vec<RecommendedItem>,
    /// Entries of the plugin's answer that were dropped (unknown, excluded, duplicate, not
    /// finite or past the count). Zero for a well-behaved plugin.
    pub dropped: usize,
}

/// One plugin's checked answer to one user.
struct Answer {
    entries: Vec<(u32, f32)>,
    model_version: u64,
    dropped: usize,
    cached: bool,
}

/// The user as the cache key and the plugin request see them.
struct UserView<'a> {
    id: &'a str,
    index: Option<u32>,
    /// Their event count: part of the cache key.
    version: u64,
}

pub struct Recommender {
    pub catalog: Arc<Catalog>,
    pub users: Arc<RwLock<Users>>,
    pub plugins: Arc<LivePlugins>,
    pub experiments: Arc<Experiments>,
    pub cache: Arc<dyn RecommendationCache>,
    /// The database's id, part of every cache key (`Store::store_id`).
    pub store_id: String,
    pub default_model: String,
    /// Answers when the chosen plugin fails or is unhealthy (`None`: 503).
    pub fallback_model: Option<String>,
    /// Newest events of a user sent with each request.
    pub history_limit: usize,
    pub max_recommendations: u32,
}

impl Recommender {
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// Recommends `query.count` items. A user in an experiment gets their group's plugin,
    /// whatever `query.model` says. When that plugin fails, the fallback plugin answers
    /// (marked as such) if one is configured.
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
        let (user, after_event) = {
            let users = self.users.read().unwrap_or_else(|p| p.into_inner());
            let index = users.index_of(user_id);
            let version = index.map(|u| users.version(u)).unwrap_or(0);
            let user = UserView {
                id: user_id,
                index,
                version,
            };
            (user, users.last_event_id())
        };
        let count = count as u32;
        let (model, answer, fallback) = match self.answer(&model, &plugin, &user, count).await {
            Ok(answer) => (model, answer, None),
            Err(source) => {
                let fallback = self
                    .fallback_model
                    .as_ref()
                    .filter(|name| **name != model)
                    .and_then(|name| Some((name, self.plugins.get(name)?)));
                let Some((fallback_name, fallback_plugin)) = fallback else {
                    return Err(RecommendError::PluginFailed { model, source });
                };
                tracing::warn!(model, fallback = %fallback_name, error = %source, "serving the fallback plugin's answer");
                let answer = self
                    .answer(fallback_name, &fallback_plugin, &user, count)
                    .await
                    .map_err(|fallback_error| RecommendError::PluginFailed {
                        model: model.clone(),
                        source: RecommendCallError::FallbackFailed {
                            first: source.to_string(),
                            fallback: fallback_name.clone(),
                            second: fallback_error.to_string(),
                        },
                    })?;
                plugin.count_fallback();
                let fallback = Fallback {
                    from: model,
                    reason: source.to_string(),
                };
                (fallback_name.clone(), answer, Some(fallback))
            }
        };
        let items = answer
            .entries
            .iter()
            .filter(|&&(index, _)| self.catalog.get(index).is_some())
            .map(|&(item, score)| RecommendedItem { item, score })
            .collect();
        // Exposures count the group the user was placed in, whichever plugin answered
        // (intent to treat): fallbacks are part of what the arm costs.
        let experiment = assignment.map(|assignment| {
            let version = if fallback.is_some() {
                plugin.model_version().unwrap_or(0)
            } else {
                answer.model_version
            };
            self.experiments
                .record_exposure(&assignment, user_id, version, after_event);
            let definition = &assignment.experiment.definition;
            ServedArm {
                experiment_id: definition.id.clone(),
                experiment_name: definition.name.clone(),
                group: assignment.group().name.clone(),
            }
        });
        Ok(Recommendation {
            model,
            model_version: answer.model_version,
            experiment,
            fallback,
            cold_start: user.version == 0,
            cached: answer.cached,
            items,
            dropped: answer.dropped,
        })
    }

    /// `plugin`'s checked answer for `user`: from the cache when the same model version
    /// answered the same user version, else from the plugin (then cached).
    async fn answer(
        &self,
        model: &str,
        plugin: &Arc<PluginRuntime>,
        user: &UserView<'_>,
        count: u32,
    ) -> Result<Answer, RecommendCallError> {
        // The cache key names the plugin's serving model version and the user's version
        // (their event count): an update or the user's feedback moves it.
        let serving_version = plugin.model_version();
        let scope = |model_version| KeyScope {
            store_id: &self.store_id,
            plugin: model,
            model_version,
        };
        let key = serving_version.map(|version| {
            let user_key = user.index.map(|_| (user.id, user.version));
            cache::key(scope(version), count, user_key)
        });
        let cached = match &key {
            Some(key) => self.cache.get(key).await.and_then(|b| cache::decode(&b)),
            None => None,
        };
        if let Some(entries) = cached {
            return Ok(Answer {
                entries,
                model_version: serving_version.unwrap_or_default(),
                dropped: 0,
                cached: true,
            });
        }
        let (request, history_len) = self.request(user.id, count);
        let exclude = request.exclude.clone();
        let (scored, model_version) = plugin.recommend_async(request).await?;
        let received = scored.len();
        let entries = self.check(scored, &exclude, count as usize);
        let dropped = received - entries.len();
        if dropped > 0 {
            tracing::warn!(
                model,
                dropped,
                "dropped malformed entries from a plugin's answer"
            );
        }
        // Store only what the key describes: the same model and user versions.
        if let Some(key) = key
            && key
                == cache::key(
                    scope(model_version),
                    count,
                    user.index.map(|_| (user.id, history_len as u64)),
                )
        {
            // Awaited, not spawned: the next request of this user must find it (a miss
            // already paid for a plugin call; Redis adds one round trip).
            self.cache.put(key, cache::encode(&entries)).await;
        }
        Ok(Answer {
            entries,
            model_version,
            dropped,
            cached: false,
        })
    }

    /// The plugin is untrusted: keeps only known, allowed, distinct, finite entries, at most
    /// `count` of them.
    fn check(&self, scored: Vec<Scored>, exclude: &[u32], count: usize) -> Vec<(u32, f32)> {
        let mut seen = std::collections::HashSet::new();
        scored
            .into_iter()
            .filter(|s| {
                s.score.is_finite()
                    && exclude.binary_search(&s.item).is_err()
                    && self.catalog.get(s.item).is_some()
                    && seen.insert(s.item)
            })
            .map(|s| (s.item, s.score))
            .take(count)
            .collect()
    }

    /// The plugin request for a user (newest history first, capped; all seen items
    /// excluded), and the length of the user's whole history.
    fn request(&self, user_id: &str, count: u32) -> (Request, usize) {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        let Some(user) = users.index_of(user_id) else {
            let request = Request {
                user: None,
                count,
                history: Vec::new(),
                exclude: Vec::new(),
            };
            return (request, 0);
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
        (request, full.len())
    }
}

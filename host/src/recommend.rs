//! The recommendation service: places the user in an experiment arm (or takes the requested
//! model), asks the plugin, checks its answer before anyone sees it, and logs the exposure.
//! Knows nothing about HTTP.

use std::sync::{Arc, RwLock};

use serde::Serialize;
use thiserror::Error;

use crate::cache::{self, KeyScope, RecommendationCache};
use crate::catalog::{Catalog, Users};
use crate::experiments::{ExperimentError, Experiments};
use crate::features::UserFeatures;
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
    /// The published experiment revision that placed the user (cluster mode).
    pub revision: Option<u64>,
    /// A bandit's weights revision in force when the user was served.
    pub weights_revision: Option<u64>,
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
    /// The published plugin revision the answering plugin came in (cluster mode), if it
    /// was published rather than declared in the config file.
    pub plugin_revision: Option<u64>,
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
    /// What requests send the plugins about their user (`features`).
    pub features: Arc<crate::features::Features>,
    pub plugins: Arc<LivePlugins>,
    pub experiments: Arc<Experiments>,
    pub cache: Arc<dyn RecommendationCache>,
    /// The database's id, part of every cache key (`Store::store_id`).
    pub store_id: String,
    pub default_model: String,
    /// Answers when the chosen plugin fails or is unhealthy (`None`: 503).
    pub fallback_model: Option<String>,
    pub max_recommendations: u32,
    /// Where the lists served go for model monitoring (`None`: monitoring is off).
    pub served: Option<crate::monitoring::served::ServedLog>,
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
        // A model the client names must exist even when an experiment then decides: a
        // misspelt name is the client's error whoever the user is.
        if let Some(requested) = query.model
            && self.plugins.get(requested).is_none()
        {
            return Err(RecommendError::UnknownModel {
                requested: requested.to_string(),
                available: self.plugins.names(),
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
        let (model, answer, fallback, plugin_revision) = match self
            .answer(&model, &plugin, &user, count, !query.bypass_experiments)
            .await
        {
            Ok(answer) => (model, answer, None, plugin.published_revision()),
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
                    .answer(
                        fallback_name,
                        &fallback_plugin,
                        &user,
                        count,
                        !query.bypass_experiments,
                    )
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
                (
                    fallback_name.clone(),
                    answer,
                    Some(fallback),
                    fallback_plugin.published_revision(),
                )
            }
        };
        let items: Vec<RecommendedItem> = answer
            .entries
            .iter()
            .filter(|&&(index, _)| self.catalog.get(index).is_some())
            .map(|&(item, score)| RecommendedItem { item, score })
            .collect();
        // Operators' previews are not what users were shown. A known user's cache hit is the
        // list already logged when it was computed (same model version, no event of the user
        // since): logging it again would count one outcome (the user's next event) several
        // times, as if repeated views were independent trials, and cost a row per request.
        if let Some(served) = &self.served
            && !query.bypass_experiments
            && !(answer.cached && user.index.is_some())
        {
            served.record(crate::store::ServedListRow {
                id: 0,
                at_ms: crate::store::unix_now_ms(),
                user_id: user_id.to_string(),
                plugin: model.clone(),
                model_version: answer.model_version,
                after_event,
                items: items.iter().map(|i| i.item).collect(),
                scores: items.iter().map(|i| i.score).collect(),
            });
        }
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
                revision: assignment.experiment.revision,
                weights_revision: definition
                    .bandit()
                    .map(|_| assignment.experiment.weights_revision()),
            }
        });
        Ok(Recommendation {
            model,
            model_version: answer.model_version,
            plugin_revision,
            experiment,
            fallback,
            cold_start: user.version == 0,
            cached: answer.cached,
            items,
            dropped: answer.dropped,
        })
    }

    /// `plugin`'s checked answer for `user`: from the cache when the same model version
    /// answered the same user version, else from the plugin (then cached, if `store`: an
    /// operator's preview is not, since a user's later cache hit is not logged for
    /// monitoring again and the preview's list never was).
    async fn answer(
        &self,
        model: &str,
        plugin: &Arc<PluginRuntime>,
        user: &UserView<'_>,
        count: u32,
        store: bool,
    ) -> Result<Answer, RecommendCallError> {
        // The cache key names the plugin's serving model version and the user's version
        // (their event count): an update or the user's feedback moves it.
        let serving_version = plugin.model_version();
        // What the key describes: the model version and the user's version (`None`: a cold
        // start). No key at all when the cache is off: building one is a visible share of an
        // uncached request.
        let described_by_key = serving_version
            .filter(|_| self.cache.stores_anything())
            .map(|version| (version, user.index.map(|_| user.version)));
        let key = described_by_key.map(|(model_version, user_version)| {
            let scope = KeyScope {
                store_id: &self.store_id,
                plugin: model,
                model_version,
            };
            cache::key(scope, count, user_version.map(|version| (user.id, version)))
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
        // The user's features are read now, and may be newer than the version the key was
        // made with (or the user unknown then may have had their first event since): the
        // answer is stored only under the key of what it was built from.
        let index = user.index.or_else(|| {
            self.users
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .index_of(user.id)
        });
        let features = match index {
            Some(index) => self.features.user(index).await,
            None => UserFeatures::default(),
        };
        let built_from = index
            .filter(|_| features.is_complete())
            .map(|_| features.version);
        let exclude = features.exclude;
        let request = Request {
            user: index,
            count,
            history: features.history,
            exclude: exclude.clone(),
        };
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
        // Store only what the key describes: the same model version, and the same user
        // version (for a user unknown at lookup and known now, the keys differ: the cold
        // key must never hold one user's exclusions).
        let described = index.is_none() || built_from.is_some();
        if let Some(key) = key
            && store
            && described
            && described_by_key == Some((model_version, built_from))
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheConfig;
    use crate::plugins::{ModelVersion, PluginEngine, PluginLimits, PluginRegistry};
    use crate::store::{EventKind, EventRow, Store};

    /// A recommender serving a trained popularity model over the check's dataset.
    fn recommender(dir: &std::path::Path) -> (Recommender, Arc<PluginRuntime>) {
        let data = crate::plugin_dev::check::dataset();
        let engine = PluginEngine::new(None).unwrap();
        let plugin = PluginRuntime::load(
            &engine,
            "popularity",
            &crate::plugins::bundled_plugin_path("popularity"),
            "{}".into(),
            PluginLimits::default(),
            data.catalog.plugin_items(),
            data.catalog.fingerprint(),
        )
        .unwrap();
        let snapshot = plugin.train(&data.train).unwrap();
        plugin
            .install(ModelVersion {
                version: 1,
                snapshot: Arc::new(snapshot),
                created_at: 0,
                through_event: 0,
            })
            .unwrap();
        let plugin = Arc::new(plugin);
        let mut registry = PluginRegistry::default();
        registry.insert_shared(plugin.clone());
        let database = dir.join("db");
        let store = Arc::new(Store::open(&database).unwrap());
        let experiments = Experiments::open(
            None,
            Box::new(Vec::new),
            store,
            &crate::store::Database::Sqlite(database),
        )
        .unwrap();
        let users = Arc::new(RwLock::new(Users::with_histories(Vec::new())));
        let recommender = Recommender {
            catalog: Arc::new(data.catalog),
            features: Arc::new(crate::features::Features::Local {
                users: users.clone(),
                history_limit: 500,
            }),
            users,
            plugins: Arc::new(LivePlugins::new(registry)),
            experiments: Arc::new(experiments),
            cache: cache::from_config(&CacheConfig::default(), false).unwrap(),
            store_id: "test".into(),
            default_model: "popularity".into(),
            fallback_model: None,
            max_recommendations: 100,
            served: None,
        };
        (recommender, plugin)
    }

    #[tokio::test]
    async fn an_answer_for_a_user_who_appeared_meanwhile_is_not_cached_for_cold_users() {
        let dir = tempfile::tempdir().unwrap();
        let (recommender, plugin) = recommender(dir.path());
        let cold = |id| UserView {
            id,
            index: None,
            version: 0,
        };
        // What every cold user is recommended first (asked without the cache).
        let (anonymous, _) = plugin
            .recommend_async(Request {
                user: None,
                count: 5,
                history: Vec::new(),
                exclude: Vec::new(),
            })
            .await
            .unwrap();
        let top = anonymous[0].item;

        // The race: the lookup saw "new" as unknown, then their first event, on the top
        // item, was stored before the request was built.
        {
            let mut users = recommender.users.write().unwrap();
            users.register(0, "new".into());
            users.record(&EventRow {
                id: 1,
                user: 0,
                item: top,
                kind: EventKind::Click,
                value: 1.0,
                timestamp: 1,
            });
        }
        let theirs = recommender
            .answer("popularity", &plugin, &cold("new"), 5, true)
            .await
            .unwrap();
        assert!(theirs.entries.iter().all(|&(item, _)| item != top));

        // Another cold user must not get that answer (with "new"'s exclusion) from the cache.
        let other = recommender
            .answer("popularity", &plugin, &cold("other"), 5, true)
            .await
            .unwrap();
        assert!(!other.cached, "the cold key held one user's answer");
        assert_eq!(other.entries[0].0, top);
    }
}

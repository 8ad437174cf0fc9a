//! `GET /experiments`, `GET /experiments/{id}`, `GET /experiments/{id}/results`,
//! `GET /users/{user_id}/experiment-group` and the operator action `POST /admin/reload`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

use super::auth::Operator;
use super::error::{ApiError, ErrorBody};
use super::ids::{ExternalId, PathId};
use super::{AppState, ids};
use crate::experiments::LiveExperiment;
use crate::experiments::definition::Status;
use crate::experiments::live::ReloadStatus;
use crate::experiments::results::Results;

/// An experiment as loaded, with each group's slice of the hash space.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ExperimentView {
    id: String,
    name: String,
    description: String,
    status: Status,
    seed: String,
    /// GrowthBook's hash version used for buckets (always 2).
    hash_version: u32,
    coverage: f64,
    priority: i64,
    namespace: Option<NamespaceView>,
    sticky: bool,
    bucket_version: u32,
    groups: Vec<GroupView>,
    /// How traffic is split: `{"type": "fixed"}`, or a `thompson` bandit with its settings.
    #[schema(value_type = Object)]
    allocation: Value,
    /// A bandit's weights in force, arm by arm (with their history on
    /// `GET /experiments/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    bandit: Option<super::bandits::BanditView>,
    /// The TOML file it came from.
    file: String,
    /// `GET /experiments/{id}` only: exposures logged so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    counts: Option<ExposureCounts>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct NamespaceView {
    name: String,
    /// `[start, end)` of the namespace hash.
    range: [f64; 2],
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GroupView {
    name: String,
    plugin: String,
    /// The share of new users in force (a bandit's latest weights): they sum to 1.
    weight: f64,
    /// `[start, end)`: users whose hash falls here are in this group.
    hash_range: [f64; 2],
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ExposureCounts {
    exposures: u64,
    groups: BTreeMap<String, GroupCountView>,
    /// When they were counted (Unix milliseconds): shared with the results, reused for a
    /// few seconds.
    computed_at_ms: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GroupCountView {
    exposures: u64,
    users: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ExperimentList {
    /// The watched folder of experiment files, if any.
    directory: Option<String>,
    experiments: Vec<ExperimentView>,
    reload: ReloadStatus,
    exposures_logged: ExposuresLogged,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ExposuresLogged {
    stored: u64,
    failed: u64,
    /// Not logged because the log's queue was full (the disk could not keep up).
    dropped: u64,
}

/// Where a user stands in an experiment.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UserGroup {
    #[schema(value_type = ExternalId)]
    user_id: Value,
    experiment_id: Option<String>,
    experiment_name: Option<String>,
    in_experiment: bool,
    group_name: Option<String>,
    /// The plugin that serves the user's group.
    model: Option<String>,
    /// Why the user is not in it: `not_running`, `outside_namespace`, `outside_coverage`,
    /// `no_running_experiment_includes_the_user`.
    reason: Option<&'static str>,
    /// The group was kept from an earlier assignment (sticky experiments).
    #[serde(skip_serializing_if = "Option::is_none")]
    sticky: Option<bool>,
    /// The bandit's weights revision that would place the user now (bandits only).
    #[serde(skip_serializing_if = "Option::is_none")]
    weights_revision: Option<u64>,
    /// The user's hash in `[0, 1)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReloadAnswer {
    /// Always `reloaded`.
    status: &'static str,
    /// What changed among the plugins (`null` when the server has no config file).
    plugins: Option<crate::reload::PluginChanges>,
    /// The ids of the experiments now in force (`null` without an experiments folder).
    experiments: Option<Vec<String>>,
}

fn definition(experiment: &LiveExperiment) -> ExperimentView {
    let d = &experiment.definition;
    let weights = experiment.weights_in_force();
    ExperimentView {
        id: d.id.clone(),
        name: d.name.clone(),
        description: d.description.clone(),
        status: d.status,
        seed: d.seed.clone(),
        hash_version: 2,
        coverage: d.coverage,
        priority: d.priority,
        namespace: d.namespace.as_ref().map(|ns| NamespaceView {
            name: ns.name.clone(),
            range: [ns.start, ns.end],
        }),
        sticky: d.sticky,
        bucket_version: d.bucket_version,
        groups: d
            .groups
            .iter()
            .zip(&experiment.ranges)
            .zip(weights)
            .map(|((g, (start, end)), weight)| GroupView {
                name: g.name.clone(),
                plugin: g.plugin.clone(),
                weight,
                hash_range: [*start, *end],
            })
            .collect(),
        allocation: serde_json::to_value(&d.allocation).unwrap_or(Value::Null),
        bandit: super::bandits::view(experiment, None),
        file: d.path.display().to_string(),
        counts: None,
    }
}

/// Every experiment in force, and the outcome of the last reload.
#[utoipa::path(get, path = "/experiments", tag = "experiments", responses((status = 200, body = ExperimentList)))]
pub async fn list(State(state): State<AppState>) -> Json<ExperimentList> {
    let experiments = &state.experiments;
    let set = experiments.current();
    let logged = experiments.exposure_log_counts();
    Json(ExperimentList {
        directory: experiments.dir().map(|d| d.display().to_string()),
        experiments: set.experiments.iter().map(|e| definition(e)).collect(),
        reload: experiments.reload_status(),
        exposures_logged: ExposuresLogged {
            stored: logged.stored,
            failed: logged.failed,
            dropped: logged.dropped,
        },
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    /// A bandit's newest weights revisions to list in `bandit.history` (default 1,000, at
    /// most 100,000).
    #[param(maximum = 100_000)]
    history: Option<u32>,
}

/// A bandit's history lists at most this many revisions unless asked for fewer.
const HISTORY_DEFAULT: u32 = 1_000;
/// The most a request may ask for.
const HISTORY_MAX: u32 = 100_000;

/// One experiment, with its exposure counts per group (and a bandit's weights history).
#[utoipa::path(get, path = "/experiments/{id}", tag = "experiments",
    params(("id" = String, Path, description = "The experiment's id"), ShowQuery),
    responses(
        (status = 200, body = ExperimentView),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 404, description = "Unknown experiment", body = ErrorBody),
    ))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<ShowQuery>, QueryRejection>,
) -> Result<Json<ExperimentView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let keep = query.history.unwrap_or(HISTORY_DEFAULT);
    if keep > HISTORY_MAX {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("history is at most {HISTORY_MAX}, got {keep}"),
        ));
    }
    let experiment = state.experiments.get(&id)?;
    let service = state.experiments.clone();
    let live = experiment.clone();
    let (results, history) = tokio::task::spawn_blocking(move || {
        let history = match live.definition.bandit() {
            Some(_) => Some(service.weights_history(&live.definition.id, Some(u64::from(keep)))?),
            None => None,
        };
        Ok::<_, crate::experiments::ExperimentError>((service.results(&live)?, history))
    })
    .await
    .map_err(ApiError::internal)??;
    let mut view = definition(&experiment);
    view.bandit = super::bandits::view(&experiment, history);
    view.counts = Some(ExposureCounts {
        exposures: results.groups.iter().map(|g| g.exposures).sum(),
        groups: results
            .groups
            .iter()
            .map(|g| {
                let group = GroupCountView {
                    exposures: g.exposures,
                    users: g.users,
                };
                (g.group.clone(), group)
            })
            .collect(),
        computed_at_ms: results.computed_at_ms,
    });
    Ok(Json(view))
}

/// Per group: users, exposures, CTR and mean rating with 95% intervals; sample ratio check.
/// Computed at most every `max_age_ms` (5 s or more) and shared by every request meanwhile.
#[utoipa::path(get, path = "/experiments/{id}/results", tag = "experiments",
    params(("id" = String, Path, description = "The experiment's id")),
    responses(
        (status = 200, body = Results),
        (status = 404, description = "Unknown experiment", body = ErrorBody),
    ))]
pub async fn results(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Results>, ApiError> {
    let experiment = state.experiments.get(&id)?;
    let service = state.experiments.clone();
    let results = tokio::task::spawn_blocking(move || service.results(&experiment))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(Results::clone(&results)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GroupQuery {
    /// Default: the highest-priority running experiment that includes the user.
    experiment_id: Option<String>,
}

/// The group a user is (or would be) in, and why.
#[utoipa::path(get, path = "/users/{id}/experiment-group", tag = "experiments",
    params(("id" = PathId, Path, description = "The user's external ID"), GroupQuery),
    responses(
        (status = 200, body = UserGroup),
        (status = 400, description = "Invalid ID or query", body = ErrorBody),
        (status = 404, description = "Unknown experiment", body = ErrorBody),
    ))]
pub async fn user_group(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    query: Result<Query<GroupQuery>, QueryRejection>,
) -> Result<Json<UserGroup>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let user_id = ids::from_text("user_id", &user_id)?;
    let decision = state
        .experiments
        .decision(&user_id, query.experiment_id.as_deref())?;
    let Some(decision) = decision else {
        return Ok(Json(UserGroup {
            user_id: ids::to_json(&user_id),
            experiment_id: None,
            experiment_name: None,
            in_experiment: false,
            group_name: None,
            model: None,
            reason: Some("no_running_experiment_includes_the_user"),
            sticky: None,
            weights_revision: None,
            hash: None,
        }));
    };
    let definition = &decision.experiment.definition;
    let group = decision.placement.group().map(|i| &definition.groups[i]);
    Ok(Json(UserGroup {
        user_id: ids::to_json(&user_id),
        experiment_id: Some(definition.id.clone()),
        experiment_name: Some(definition.name.clone()),
        in_experiment: group.is_some(),
        group_name: group.map(|g| g.name.clone()),
        model: group.map(|g| g.plugin.clone()),
        reason: decision.placement.reason(),
        sticky: Some(matches!(
            decision.placement,
            crate::experiments::Placement::Kept(_)
        )),
        weights_revision: definition
            .bandit()
            .map(|_| decision.experiment.weights_revision()),
        hash: Some(decision.hash),
    }))
}

/// Re-reads the config's plugins and the experiment files now (operator).
#[utoipa::path(post, path = "/admin/reload", tag = "experiments",
    security(("admin_token" = [])),
    responses(
        (status = 200, body = ReloadAnswer),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "No admin token configured on a public address", body = ErrorBody),
        (status = 422, description = "A plugin or experiment file is invalid; nothing changed", body = ErrorBody),
    ))]
pub async fn reload(
    _operator: Operator,
    State(state): State<AppState>,
) -> Result<Json<ReloadAnswer>, ApiError> {
    let app = state.clone();
    let plugins = if app.config.source.is_some() {
        let changes = tokio::task::spawn_blocking(move || app.reload_plugins())
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_plugins",
                    format!("{e:#}"),
                )
            })?;
        Some(changes)
    } else {
        None
    };
    let experiments = state.experiments.clone();
    let set = match experiments.dir() {
        Some(_) => Some(
            tokio::task::spawn_blocking(move || experiments.reload())
                .await
                .map_err(ApiError::internal)??,
        ),
        None => None,
    };
    Ok(Json(ReloadAnswer {
        status: "reloaded",
        plugins,
        experiments: set.map(|set| {
            set.experiments
                .iter()
                .map(|e| e.definition.id.clone())
                .collect()
        }),
    }))
}

/// Experiment files to publish to every node of a cluster.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// File name (`NAME.toml`) -> TOML text, for every experiment the cluster should run: a
    /// revision replaces the one before whole.
    files: BTreeMap<String, String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PublishAnswer {
    /// The new revision's number; every node puts it in force within about a second.
    revision: u64,
    /// The ids of its experiments.
    experiments: Vec<String>,
}

/// Publishes experiment definitions to every node of the cluster (operator). Validated
/// whole: one invalid file and nothing is published.
#[utoipa::path(post, path = "/admin/experiments", tag = "experiments",
    security(("admin_token" = [])),
    request_body = PublishBody,
    responses(
        (status = 200, body = PublishAnswer),
        (status = 400, description = "Malformed JSON or a file name that is not NAME.toml", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "No admin token configured on a public address", body = ErrorBody),
        (status = 409, description = "A single node (SQLite): edit its experiments directory instead", body = ErrorBody),
        (status = 415, description = "Body not sent as JSON", body = ErrorBody),
        (status = 422, description = "An experiment file is invalid; nothing was published", body = ErrorBody),
    ))]
pub async fn publish(
    _operator: Operator,
    State(state): State<AppState>,
    body: Result<Json<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<PublishAnswer>, ApiError> {
    let Json(body) = body?;
    if state.store.engine() != "postgres" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "single_node",
            "experiments are published to a cluster (database_url); a single node reads its experiments directory: edit it, or POST /admin/reload",
        ));
    }
    for name in body.files.keys() {
        let plain = name.ends_with(".toml")
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !plain {
            return Err(ApiError::bad_request(
                "invalid_file_name",
                format!("{name:?}: name each file NAME.toml (letters, digits, '-', '_', '.')"),
            ));
        }
    }
    let files: Vec<(String, String)> = body.files.into_iter().collect();
    let (store, experiments) = (state.store.clone(), state.experiments.clone());
    let set = tokio::task::spawn_blocking(move || experiments.publish(&store, &files))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(PublishAnswer {
        revision: set.revision.unwrap_or(0),
        experiments: set
            .experiments
            .iter()
            .map(|e| e.definition.id.clone())
            .collect(),
    }))
}

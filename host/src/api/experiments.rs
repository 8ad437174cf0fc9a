//! `GET /experiments`, `GET /experiments/{id}`, `GET /experiments/{id}/results`,
//! `GET /users/{user_id}/experiment-group` and the operator action `POST /admin/reload`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Operator;
use super::error::ApiError;
use super::{AppState, ids};
use crate::experiments::LiveExperiment;

/// An experiment's definition as clients see it, with each group's hash range.
fn definition(experiment: &LiveExperiment) -> Value {
    let d = &experiment.definition;
    let groups: Vec<Value> = d
        .groups
        .iter()
        .zip(&experiment.ranges)
        .map(|(g, (start, end))| {
            json!({ "name": g.name, "plugin": g.plugin, "weight": g.weight, "hash_range": [start, end] })
        })
        .collect();
    json!({
        "id": d.id,
        "name": d.name,
        "description": d.description,
        "status": d.status,
        "seed": d.seed,
        "hash_version": 2,
        "coverage": d.coverage,
        "priority": d.priority,
        "namespace": d.namespace.as_ref().map(|ns| json!({ "name": ns.name, "range": [ns.start, ns.end] })),
        "sticky": d.sticky,
        "bucket_version": d.bucket_version,
        "groups": groups,
        "file": d.path.display().to_string(),
    })
}

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let experiments = &state.experiments;
    let set = experiments.current();
    let (stored, failed) = experiments.exposure_log_counts();
    Json(json!({
        "directory": experiments.dir().map(|d| d.display().to_string()),
        "experiments": set.experiments.iter().map(|e| definition(e)).collect::<Vec<_>>(),
        "reload": experiments.reload_status(),
        "exposures_logged": { "stored": stored, "failed": failed },
    }))
}

pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let experiment = state.experiments.get(&id)?;
    let service = state.experiments.clone();
    let counts = tokio::task::spawn_blocking(move || service.counts(&id))
        .await
        .map_err(ApiError::internal)??;
    let mut body = definition(&experiment);
    let per_group: serde_json::Map<String, Value> = counts
        .iter()
        .map(|c| {
            (
                c.group_name.clone(),
                json!({ "exposures": c.exposures, "users": c.users }),
            )
        })
        .collect();
    body["counts"] = json!({
        "exposures": counts.iter().map(|c| c.exposures).sum::<u64>(),
        "groups": per_group,
    });
    Ok(Json(body))
}

pub async fn results(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let experiment = state.experiments.get(&id)?;
    let service = state.experiments.clone();
    let results = tokio::task::spawn_blocking(move || service.results(&experiment))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(
        serde_json::to_value(results).map_err(ApiError::internal)?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupQuery {
    experiment_id: Option<String>,
}

/// Which group serves a user: in the named experiment, or else the experiment that would
/// serve them now. Computing it changes nothing (no exposure, no sticky assignment).
pub async fn user_group(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    query: Result<Query<GroupQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let user_id = ids::from_text("user_id", &user_id)?;
    let decision = state
        .experiments
        .decision(&user_id, query.experiment_id.as_deref())?;
    let Some(decision) = decision else {
        return Ok(Json(json!({
            "user_id": ids::to_json(&user_id),
            "experiment_id": null,
            "experiment_name": null,
            "in_experiment": false,
            "group_name": null,
            "model": null,
            "reason": "no_running_experiment_includes_the_user",
        })));
    };
    let definition = &decision.experiment.definition;
    let group = decision.placement.group().map(|i| &definition.groups[i]);
    Ok(Json(json!({
        "user_id": ids::to_json(&user_id),
        "experiment_id": definition.id,
        "experiment_name": definition.name,
        "in_experiment": group.is_some(),
        "group_name": group.map(|g| &g.name),
        "model": group.map(|g| &g.plugin),
        "reason": decision.placement.reason(),
        "sticky": matches!(decision.placement, crate::experiments::Placement::Kept(_)),
        "hash": decision.hash,
    })))
}

/// Re-reads the plugins of the config file, then the experiments directory. A rejected plugin
/// list or experiment set is a 422 naming the file, field or plugin and the reason; what was
/// in force stays.
pub async fn reload(
    _operator: Operator,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "status": "reloaded",
        "plugins": plugins,
        "experiments": set.map(|set| set.experiments.iter().map(|e| e.definition.id.clone()).collect::<Vec<_>>()),
    })))
}

//! `GET /learning/stats`, `GET /learning/history`, and the operator actions
//! `POST /learning/trigger-update` and `POST /learning/retrain`.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Operator;
use super::error::{ApiError, ErrorBody};
use crate::learning::{JobKind, LearningStats, Scheduled, Trigger};
use crate::store::LearningRun;

const DEFAULT_HISTORY: usize = 20;
const MAX_HISTORY: usize = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Newest runs to list (1-1000, default 20).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct HistoryResponse {
    /// Newest first.
    updates: Vec<LearningRun>,
}

/// What asking for an update or retrain did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JobAnswer {
    /// `scheduled`, `already_scheduled` (a waiting job will include this request) or
    /// `nothing_to_learn`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    update_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    buffer_size: Option<usize>,
}

/// The feedback buffer, triggers, running job and every model's version.
#[utoipa::path(get, path = "/learning/stats", tag = "learning", responses((status = 200, body = LearningStats)))]
pub async fn stats(State(state): State<AppState>) -> Json<LearningStats> {
    Json(state.learning.stats())
}

/// Past updates and retrains, with what each did to each plugin.
#[utoipa::path(get, path = "/learning/history", tag = "learning", params(HistoryQuery),
    responses(
        (status = 200, body = HistoryResponse),
        (status = 400, description = "Invalid limit", body = ErrorBody),
    ))]
pub async fn history(
    State(state): State<AppState>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = super::limit(query.limit, DEFAULT_HISTORY, MAX_HISTORY)?;
    let learning = state.learning.clone();
    let updates = tokio::task::spawn_blocking(move || learning.history(limit))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(HistoryResponse { updates }))
}

/// Updates every model with the buffered events now (operator).
#[utoipa::path(post, path = "/learning/trigger-update", tag = "learning",
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Scheduled", body = JobAnswer),
        (status = 409, description = "This node is not its cluster's learner: ask the node /health names as learner", body = JobAnswer),
        (status = 200, description = "Nothing to learn", body = JobAnswer),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "No admin token configured on a public address", body = ErrorBody),
    ))]
pub async fn trigger_update(
    _operator: Operator,
    State(state): State<AppState>,
) -> (StatusCode, Json<JobAnswer>) {
    answer(state.learning.request(JobKind::Update, Trigger::Manual))
}

/// Retrains every model from scratch over the training window (operator).
#[utoipa::path(post, path = "/learning/retrain", tag = "learning",
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Scheduled", body = JobAnswer),
        (status = 409, description = "This node is not its cluster's learner: ask the node /health names as learner", body = JobAnswer),
        (status = 200, description = "Nothing to learn", body = JobAnswer),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "No admin token configured on a public address", body = ErrorBody),
    ))]
pub async fn retrain(
    _operator: Operator,
    State(state): State<AppState>,
) -> (StatusCode, Json<JobAnswer>) {
    answer(state.learning.request(JobKind::Retrain, Trigger::Manual))
}

fn answer(scheduled: Scheduled) -> (StatusCode, Json<JobAnswer>) {
    let (status, code, update_id, buffer_size) = match scheduled {
        Scheduled::New(id) => (StatusCode::ACCEPTED, "scheduled", Some(id), None),
        Scheduled::Already(id) => (StatusCode::ACCEPTED, "already_scheduled", Some(id), None),
        Scheduled::NothingToLearn => (StatusCode::OK, "nothing_to_learn", None, Some(0)),
        Scheduled::NotLearner => (StatusCode::CONFLICT, "not_the_learner", None, None),
    };
    (
        status,
        Json(JobAnswer {
            status: code,
            update_id,
            buffer_size,
        }),
    )
}

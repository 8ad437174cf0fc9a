//! `GET /learning/stats`, `GET /learning/history`, and the operator actions
//! `POST /learning/trigger-update` and `POST /learning/retrain`.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Operator;
use super::error::ApiError;
use crate::learning::{JobKind, Scheduled, Trigger};

const DEFAULT_HISTORY: usize = 20;
const MAX_HISTORY: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    limit: Option<usize>,
}

pub async fn stats(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let learning = state.learning.clone();
    let stats = tokio::task::spawn_blocking(move || learning.stats())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(
        serde_json::to_value(stats).map_err(ApiError::internal)?,
    ))
}

pub async fn history(
    State(state): State<AppState>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = super::limit(query.limit, DEFAULT_HISTORY, MAX_HISTORY)?;
    let learning = state.learning.clone();
    let updates = tokio::task::spawn_blocking(move || learning.history(limit))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "updates": updates })))
}

pub async fn trigger_update(
    _operator: Operator,
    State(state): State<AppState>,
) -> (StatusCode, Json<Value>) {
    answer(state.learning.request(JobKind::Update, Trigger::Manual))
}

pub async fn retrain(
    _operator: Operator,
    State(state): State<AppState>,
) -> (StatusCode, Json<Value>) {
    answer(state.learning.request(JobKind::Retrain, Trigger::Manual))
}

fn answer(scheduled: Scheduled) -> (StatusCode, Json<Value>) {
    match scheduled {
        Scheduled::New(id) => (
            StatusCode::ACCEPTED,
            Json(json!({ "status": "scheduled", "update_id": id })),
        ),
        Scheduled::Already(id) => (
            StatusCode::ACCEPTED,
            Json(json!({ "status": "already_scheduled", "update_id": id })),
        ),
        Scheduled::NothingToLearn => (
            StatusCode::OK,
            Json(json!({ "status": "nothing_to_learn", "buffer_size": 0 })),
        ),
    }
}

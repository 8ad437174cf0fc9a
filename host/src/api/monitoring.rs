//! Model monitoring: `GET /alerts`, `GET /monitoring` (the newest windows), and the
//! operator's `POST /plugins/{name}/rollback`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Operator;
use super::error::{ApiError, ErrorBody};
use crate::learning::rollback::{Hold, RollbackError};
use crate::monitoring::alerts::Alert;
use crate::monitoring::monitor::{WindowReport, alert_from_row};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    /// Resolved alerts from the last this many hours are listed too (default 24, at most
    /// 8,760).
    #[param(minimum = 0, maximum = 8760)]
    hours: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AlertsResponse {
    /// Open alerts, newest first.
    open: Vec<Alert>,
    /// Alerts resolved within the period asked for, newest first.
    recent: Vec<Alert>,
}

/// Most alerts listed.
const MAX_ALERTS: usize = 1_000;

/// Alerts open now, and those resolved recently (from the store: every node answers the
/// same).
#[utoipa::path(get, path = "/alerts", tag = "monitoring", params(AlertsQuery),
    responses(
        (status = 200, body = AlertsResponse),
        (status = 400, description = "Invalid query", body = ErrorBody),
    ))]
pub async fn alerts(
    State(state): State<AppState>,
    query: Result<Query<AlertsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AlertsResponse>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let hours = query.hours.unwrap_or(24);
    if hours > 8_760 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "hours is at most 8760",
        ));
    }
    let since = crate::store::unix_now_ms().saturating_sub(u64::from(hours) * 3_600_000);
    let store = state.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.alerts(since, MAX_ALERTS))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let (open, recent): (Vec<Alert>, Vec<Alert>) = rows
        .iter()
        .filter_map(alert_from_row)
        .partition(|a| a.resolved_at_ms.is_none());
    Ok(Json(AlertsResponse { open, recent }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WindowsQuery {
    /// Newest windows to list (1-2,016, default 288: a day of 5-minute windows).
    #[param(minimum = 1, maximum = 2016)]
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MonitoringResponse {
    /// Whether `[monitoring]` is enabled.
    enabled: bool,
    /// Thresholds the levels and alerts use.
    psi_warn: f64,
    psi_alert: f64,
    quality_alpha: f64,
    /// Closed windows, oldest first.
    windows: Vec<WindowReport>,
    /// Lists waiting for their users' events (this node).
    lists_open: usize,
    /// Lists left unjudged since start (this node): a waiting cap was reached, or their
    /// user's next event was read too long before them.
    lists_unjudged: u64,
}

/// Model monitoring's newest windows: quality per plugin and model version, and drift.
#[utoipa::path(get, path = "/monitoring", tag = "monitoring", params(WindowsQuery),
    responses(
        (status = 200, body = MonitoringResponse),
        (status = 400, description = "Invalid limit", body = ErrorBody),
    ))]
pub async fn windows(
    State(state): State<AppState>,
    query: Result<Query<WindowsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<MonitoringResponse>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = super::limit(query.limit, 288, 2_016)?;
    let store = state.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.monitoring_windows(0, limit))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let windows = rows
        .iter()
        .filter_map(|(_, body)| serde_json::from_str(body).ok())
        .collect();
    let config = &state.config.monitoring;
    Ok(Json(MonitoringResponse {
        enabled: config.enabled,
        psi_warn: config.psi_warn,
        psi_alert: config.psi_alert,
        quality_alpha: config.quality_alpha,
        windows,
        lists_open: state.monitor.as_ref().map_or(0, |m| m.status().lists_open),
        lists_unjudged: state
            .monitor
            .as_ref()
            .map_or(0, |m| m.status().lists_unjudged),
    }))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// Why (at most 1,000 characters), kept in the learning history.
    #[schema(max_length = 1000)]
    note: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RollbackAnswer {
    plugin: String,
    hold: Hold,
}

/// Serves the plugin's previous model again and holds it there: updates skip it until it
/// is retrained (`POST /learning/retrain`) and the retrained model passes the quality test
/// (operator).
#[utoipa::path(post, path = "/plugins/{name}/rollback", tag = "monitoring",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The plugin's name")),
    request_body(content = Option<RollbackBody>, description = "Optional: a note"),
    responses(
        (status = 200, body = RollbackAnswer),
        (status = 400, description = "Malformed JSON or a note over 1,000 characters", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "No admin token configured on a public address, or a cross-origin request", body = ErrorBody),
        (status = 404, description = "Unknown plugin", body = ErrorBody),
        (status = 409, description = "No earlier model kept since the server started, or this node is not the learner", body = ErrorBody),
        (status = 500, description = "The earlier model could not be installed (the plugin keeps serving its model)", body = ErrorBody),
    ))]
pub async fn rollback(
    _operator: Operator,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<RollbackAnswer>, ApiError> {
    let note = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<RollbackBody>(&body)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
            .note
    };
    if note.as_ref().is_some_and(|n| n.chars().count() > 1_000) {
        return Err(ApiError::bad_request(
            "invalid_note",
            "a note has at most 1,000 characters",
        ));
    }
    let learning = state.learning.clone();
    let plugin = name.clone();
    let reason = note.unwrap_or_else(|| "rolled back by an operator".into());
    let hold =
        tokio::task::spawn_blocking(move || learning.roll_back(&plugin, None, None, &reason, true))
            .await
            .map_err(ApiError::internal)?
            .map_err(|error| {
                let message = error.to_string();
                match error {
                    RollbackError::UnknownPlugin(_) => {
                        ApiError::not_found("unknown_plugin", message)
                    }
                    RollbackError::NotLearner => {
                        ApiError::new(StatusCode::CONFLICT, "not_the_learner", message)
                    }
                    RollbackError::NothingToRestore(_) => {
                        ApiError::new(StatusCode::CONFLICT, "nothing_to_restore", message)
                    }
                    RollbackError::Failed { .. } => ApiError::internal(message),
                }
            })?;
    Ok(Json(RollbackAnswer { plugin: name, hold }))
}

//! `GET /items/{id}` and `GET /users/{id}`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, ErrorBody};
use super::ids::{ExternalId, PathId};
use super::{AppState, ids};

/// How many of a user's newest events `GET /users/{id}` lists by default, and at most.
const RECENT_EVENTS: usize = 20;
const MAX_RECENT_EVENTS: usize = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UserQuery {
    /// Newest events to list (1-1000, default 20).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ItemResponse<'a> {
    #[schema(value_type = ExternalId)]
    item_id: Value,
    title: &'a str,
    tags: &'a [String],
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserResponse {
    #[schema(value_type = ExternalId)]
    user_id: Value,
    event_count: usize,
    /// Newest first.
    recent_events: Vec<UserEvent>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserEvent {
    #[schema(value_type = ExternalId)]
    item_id: Value,
    title: String,
    event_type: &'static str,
    value: f32,
    /// Unix seconds.
    timestamp: u64,
}

/// One item of the catalog.
#[utoipa::path(get, path = "/items/{id}", tag = "catalog",
    params(("id" = PathId, Path, description = "The item's external ID")),
    responses(
        (status = 200, body = ItemResponse),
        (status = 400, description = "Invalid ID", body = ErrorBody),
        (status = 404, description = "Unknown item", body = ErrorBody),
    ))]
pub async fn item(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = ids::from_text("item_id", &id)?;
    let index = state
        .catalog
        .index_of(&id)
        .ok_or_else(|| ApiError::not_found("unknown_item", format!("no item with id {id:?}")))?;
    let item = state
        .catalog
        .get(index)
        .ok_or_else(|| ApiError::internal("catalog index out of range"))?;
    Ok(Json(ItemResponse {
        item_id: ids::to_json(&item.external_id),
        title: &item.title,
        tags: &item.tags,
    })
    .into_response())
}

/// A user's event count and newest events (in a cluster, at most `history_limit` of them:
/// what the shared feature store keeps).
#[utoipa::path(get, path = "/users/{id}", tag = "catalog",
    params(("id" = PathId, Path, description = "The user's external ID"), UserQuery),
    responses(
        (status = 200, body = UserResponse),
        (status = 400, description = "Invalid ID or limit", body = ErrorBody),
        (status = 404, description = "Unknown user", body = ErrorBody),
    ))]
pub async fn user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<UserQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<UserResponse>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = super::limit(query.limit, RECENT_EVENTS, MAX_RECENT_EVENTS)?;
    let id = ids::from_text("user_id", &id)?;
    let (index, event_count) = {
        let users = state.users.read().unwrap_or_else(|p| p.into_inner());
        let index = users.index_of(&id).ok_or_else(|| {
            ApiError::not_found("unknown_user", format!("no user with id {id:?}"))
        })?;
        (index, users.version(index))
    };
    let recent = state.recommender.features.recent_events(index, limit).await;
    let recent_events: Vec<UserEvent> = recent
        .iter()
        .filter_map(|event| {
            let item = state.catalog.get(event.item)?;
            Some(UserEvent {
                item_id: ids::to_json(&item.external_id),
                title: item.title.clone(),
                event_type: crate::catalog::event_type_name(event.kind),
                value: event.value,
                timestamp: event.timestamp,
            })
        })
        .collect();
    Ok(Json(UserResponse {
        user_id: ids::to_json(&id),
        event_count: event_count as usize,
        recent_events,
    }))
}

//! `GET /items/{id}` and `GET /users/{id}`.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{AppState, ids};

/// How many of a user's newest events `GET /users/{id}` lists by default, and at most.
const RECENT_EVENTS: usize = 20;
const MAX_RECENT_EVENTS: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserQuery {
    /// Newest events to list (1-1000, default 20).
    limit: Option<usize>,
}

pub async fn item(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = ids::from_text("item_id", &id)?;
    let index = state
        .catalog
        .index_of(&id)
        .ok_or_else(|| ApiError::not_found("unknown_item", format!("no item with id {id:?}")))?;
    let item = state
        .catalog
        .get(index)
        .ok_or_else(|| ApiError::internal("catalog index out of range"))?;
    Ok(Json(
        json!({ "item_id": ids::to_json(&item.external_id), "title": item.title, "tags": item.tags }),
    ))
}

pub async fn user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<UserQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = super::limit(query.limit, RECENT_EVENTS, MAX_RECENT_EVENTS)?;
    let id = ids::from_text("user_id", &id)?;
    let users = state.users.read().unwrap_or_else(|p| p.into_inner());
    let index = users
        .index_of(&id)
        .ok_or_else(|| ApiError::not_found("unknown_user", format!("no user with id {id:?}")))?;
    let history = users.history(index);
    let recent: Vec<Value> = history
        .iter()
        .rev()
        .take(limit)
        .filter_map(|event| {
            let item = state.catalog.get(event.item)?;
            Some(json!({
                "item_id": ids::to_json(&item.external_id),
                "title": item.title,
                "event_type": crate::catalog::event_type_name(event.kind),
                "value": event.value,
                "timestamp": event.timestamp,
            }))
        })
        .collect();
    Ok(Json(
        json!({ "user_id": ids::to_json(&id), "event_count": history.len(), "recent_events": recent }),
    ))
}

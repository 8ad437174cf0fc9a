//! `POST /recommend`.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{AppState, ids};

/// The request body. Unknown fields are refused, so a misspelt option is not silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendBody {
    pub user_id: Value,
    #[serde(default)]
    pub n_recommendations: Option<Value>,
    #[serde(default)]
    pub model_type: Option<String>,
}

/// Used when the request does not say how many.
pub const DEFAULT_COUNT: u64 = 10;

pub async fn recommend(
    State(state): State<AppState>,
    body: Result<Json<RecommendBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body?;
    let user_id = ids::from_json("user_id", &body.user_id)?;
    let count = match &body.n_recommendations {
        None | Some(Value::Null) => DEFAULT_COUNT,
        Some(value) => value.as_u64().ok_or_else(|| {
            ApiError::bad_request(
                "invalid_n_recommendations",
                format!("n_recommendations must be a positive integer, got {value}"),
            )
        })?,
    };
    let recommendation = state
        .recommender
        .recommend(&user_id, count, body.model_type.as_deref())
        .await?;
    let items: Vec<Value> = recommendation
        .items
        .iter()
        .map(|item| json!({ "item_id": ids::to_json(&item.item_id), "title": item.title, "score": item.score }))
        .collect();
    Ok(Json(json!({
        "user_id": ids::to_json(&user_id),
        "recommendations": items,
        "model": recommendation.model,
        "model_version": recommendation.model_version,
        "cold_start": recommendation.cold_start,
    })))
}

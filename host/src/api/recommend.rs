//! `POST /recommend`.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::error::{ApiError, ErrorBody};
use super::ids::ExternalId;
use super::{AppState, ids};
use crate::recommend::{Fallback, RecommendQuery};

/// The request body. Unknown fields are refused, so a misspelt option is not silently ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendBody {
    #[schema(value_type = ExternalId)]
    pub user_id: Value,
    /// How many items (default 10, at most `max_recommendations`).
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 1)]
    pub n_recommendations: Option<Value>,
    /// Plugin to use when no experiment places the user (default: `default_model`).
    #[serde(default)]
    pub model_type: Option<String>,
    /// Place the user in this experiment (default: the highest-priority running one).
    #[serde(default)]
    pub experiment_id: Option<String>,
    /// Serve `model_type` even to users in a running experiment; no exposure is logged.
    #[serde(default)]
    pub bypass_experiments: bool,
}

/// Used when the request does not say how many.
pub const DEFAULT_COUNT: u64 = 10;

/// Recommends items to a user.
///
/// A user in a running experiment is served by their group's plugin (said in `experiment`);
/// when that plugin fails and a fallback is configured, the fallback answers (said in
/// `fallback`).
#[utoipa::path(post, path = "/recommend", tag = "recommend", request_body = RecommendBody,
    responses(
        (status = 200, body = RecommendResponse),
        (status = 400, description = "Invalid body or count", body = ErrorBody),
        (status = 413, description = "Body over 2 MiB", body = ErrorBody),
        (status = 415, description = "Body not sent as JSON", body = ErrorBody),
        (status = 404, description = "Unknown model or experiment", body = ErrorBody),
        (status = 503, description = "The plugin failed and no fallback answered", body = ErrorBody),
    ))]
pub async fn recommend(
    State(state): State<AppState>,
    body: Result<Json<RecommendBody>, JsonRejection>,
) -> Result<Response, ApiError> {
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
    if body.bypass_experiments && body.experiment_id.is_some() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "give either experiment_id or bypass_experiments, not both",
        ));
    }
    let query = RecommendQuery {
        user_id: &user_id,
        count,
        model: body.model_type.as_deref(),
        experiment_id: body.experiment_id.as_deref(),
        bypass_experiments: body.bypass_experiments,
    };
    let recommendation = state.recommender.recommend(&query).await?;
    // Typed rather than `json!`: this is the hottest response, and building a `Value` tree
    // (a map per item) was a visible share of a cached request's time.
    let experiment = recommendation.experiment.as_ref().map(|arm| ArmBody {
        id: &arm.experiment_id,
        name: &arm.experiment_name,
        group: &arm.group,
        revision: arm.revision,
        weights_revision: arm.weights_revision,
    });
    let recommendations = recommendation
        .items
        .iter()
        .filter_map(|recommended| {
            let item = state.catalog.json(recommended.item)?;
            Some(ItemBody {
                item_id: &item.id,
                title: &item.title,
                score: recommended.score,
            })
        })
        .collect();
    json_response(&RecommendResponse {
        user_id: ids::to_json(&user_id),
        recommendations,
        model: &recommendation.model,
        model_version: recommendation.model_version,
        plugin_revision: recommendation.plugin_revision,
        experiment,
        fallback: recommendation.fallback.as_ref(),
        cold_start: recommendation.cold_start,
        cached: recommendation.cached,
    })
}

/// The answer encoded into a buffer sized for it up front: axum's `Json` starts at 128 bytes
/// and reallocates its way up to a ~1 KB answer, a visible share of a request's time.
fn json_response(body: &RecommendResponse<'_>) -> Result<Response, ApiError> {
    const FIELDS: usize = 320; // everything but the items, an experiment included
    const PER_ITEM: usize = 96; // `{"item_id":…,"title":…,"score":…}` but the title
    let titles: usize = body
        .recommendations
        .iter()
        .map(|i| i.title.get().len())
        .sum();
    let mut bytes = Vec::with_capacity(FIELDS + titles + PER_ITEM * body.recommendations.len());
    serde_json::to_writer(&mut bytes, body).map_err(ApiError::internal)?;
    let json = axum::http::HeaderValue::from_static("application/json");
    Ok(([(axum::http::header::CONTENT_TYPE, json)], bytes).into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RecommendResponse<'a> {
    #[schema(value_type = ExternalId)]
    user_id: Value,
    recommendations: Vec<ItemBody<'a>>,
    /// The plugin that answered.
    model: &'a str,
    model_version: u64,
    /// The published plugin revision the answering plugin came in (cluster mode, published
    /// plugins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin_revision: Option<u64>,
    experiment: Option<ArmBody<'a>>,
    /// Present when the chosen plugin failed and the fallback plugin answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<&'a Fallback>,
    cold_start: bool,
    cached: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ItemBody<'a> {
    // Encoded once per item (`Catalog::json`).
    #[schema(value_type = ExternalId)]
    item_id: &'a RawValue,
    #[schema(value_type = String)]
    title: &'a RawValue,
    score: f32,
}

/// The experiment and group that chose the plugin.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ArmBody<'a> {
    id: &'a str,
    name: &'a str,
    group: &'a str,
    /// The published experiment revision that placed the user (cluster mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    /// A bandit's weights revision in force when the user was served (bandits only).
    #[serde(skip_serializing_if = "Option::is_none")]
    weights_revision: Option<u64>,
}

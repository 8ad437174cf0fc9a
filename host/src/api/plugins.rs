//! `POST /admin/plugins/{name}`: publish a plugin's .wasm to every node of a cluster.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Operator;
use super::error::{ApiError, ErrorBody};
use crate::plugins::PluginLimits;
use crate::reload::{PluginChanges, PublishError};

/// Optional settings of the published plugin, each a JSON text. Absent: those it was
/// published with before, else those of this node's config file, else none and defaults.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PublishQuery {
    /// The plugin's config as a JSON object (what `[plugins.config]` holds).
    config: Option<String>,
    /// Its limits as a JSON object with keys of `[plugins.limits]`; the rest take defaults.
    limits: Option<String>,
}

/// A WebAssembly component, as bytes.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct WasmBody(#[allow(dead_code)] Vec<u8>);

#[derive(Serialize, utoipa::ToSchema)]
pub struct PublishAnswer {
    /// The cluster's new plugin revision; every node runs it within about a second of
    /// loading it (compiling a new .wasm takes a few seconds on each node once).
    revision: u64,
    /// What changed on the node that published it.
    changes: PluginChanges,
}

/// Publishes a plugin to every node of the cluster (operator): the body is the component
/// (`Content-Type: application/wasm`). It is loaded, checked and given a model on this node
/// first; anything that fails and nothing is published.
#[utoipa::path(post, path = "/admin/plugins/{name}", tag = "system",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The plugin's name (letters, digits, '-', '_')"), PublishQuery),
    request_body(content = WasmBody, content_type = "application/octet-stream",
        description = "The component; sent as application/wasm or application/octet-stream"),
    responses(
        (status = 200, body = PublishAnswer),
        (status = 400, description = "A query value that is not JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "No admin token configured on a public address", body = ErrorBody),
        (status = 409, description = "A single node (SQLite): declare plugins in its config file", body = ErrorBody),
        (status = 413, description = "A .wasm over 128 MiB", body = ErrorBody),
        (status = 415, description = "Body not sent as application/wasm or application/octet-stream", body = ErrorBody),
        (status = 422, description = "The plugin cannot run (name, config, limits, component, training); nothing was published", body = ErrorBody),
        (status = 503, description = "The database is unreachable; nothing was published", body = ErrorBody),
    ))]
pub async fn publish(
    _operator: Operator,
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<PublishQuery>, QueryRejection>,
    headers: HeaderMap,
    wasm: Bytes,
) -> Result<Json<PublishAnswer>, ApiError> {
    if !state.node.in_cluster() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "single_node",
            "plugins are published to a cluster (database_url); a single node runs the plugins of its config file: edit it, or POST /admin/reload",
        ));
    }
    let wasm_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "application/wasm" || v == "application/octet-stream");
    if !wasm_type {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_body",
            "send the component as the body with Content-Type: application/wasm",
        ));
    }
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let config = query
        .config
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| {
            ApiError::bad_request("invalid_query", format!("config: not a JSON object: {e}"))
        })?;
    let limits: Option<PluginLimits> = query
        .limits
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", format!("limits: {e}")))?;
    let app = state.clone();
    let (revision, changes) =
        tokio::task::spawn_blocking(move || app.publish_plugin(&name, &wasm, config, limits))
            .await
            .map_err(ApiError::internal)?
            .map_err(|error| match error {
                PublishError::Invalid(error) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_plugin",
                    format!("{error:#}"),
                ),
                PublishError::Failed(error) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_published",
                    format!("{error:#}"),
                )
                .retry_after(1),
            })?;
    Ok(Json(PublishAnswer { revision, changes }))
}

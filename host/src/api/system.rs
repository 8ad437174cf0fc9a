//! `GET /health` and `GET /plugins`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::AppState;
use crate::cache::CacheReport;
use crate::events::WriterReport;
use crate::plugins::PluginStatus;
use crate::reload::PluginReloadStatus;

#[derive(Serialize, utoipa::ToSchema)]
pub struct HealthResponse {
    /// `ok` when every plugin has a model and the event writer had no failure in the last
    /// minute, else `degraded`; `unavailable` (with status 503) when events cannot be stored
    /// (the event writer stopped).
    status: &'static str,
    items: usize,
    users: usize,
    events: u64,
    plugins: usize,
    plugins_ready: usize,
    cache: CacheReport,
    /// Where users' histories are read from: `memory` (one node) or `redis` (a cluster,
    /// with PostgreSQL behind it), and how those reads went.
    features: crate::features::FeatureReport,
    /// The thread that stores events: `ok` or `stopped`, and failures it went on after.
    event_writer: WriterReport,
    /// The database engine (`sqlite` or `postgres`) and its schema version.
    database: &'static str,
    /// This node: id, role, and whether it is its cluster's learner.
    node: crate::cluster::NodeReport,
    schema_version: usize,
    /// The published experiment revision in force (cluster mode), if any.
    experiments_revision: Option<u64>,
    /// The published plugin revision in force (cluster mode), if any.
    plugins_revision: Option<u64>,
    version: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PluginsResponse {
    /// The node answering: each node serves the versions it has installed.
    node: crate::cluster::NodeReport,
    default_model: String,
    plugins: Vec<PluginStatus>,
    reload: PluginReloadStatus,
    /// The published plugin revision in force (cluster mode), if any.
    plugins_revision: Option<u64>,
}

/// Whether the server is up, and what it holds.
///
/// Answered from memory (no SQLite query): health checks poll it every few seconds, and it is
/// the baseline of the cache benchmark.
#[utoipa::path(get, path = "/health", tag = "system", responses(
    (status = 200, body = HealthResponse),
    (status = 503, description = "Events cannot be stored: restart the server", body = HealthResponse),
))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let (users, events) = {
        let users = state.users.read().unwrap_or_else(|p| p.into_inner());
        (users.len(), users.event_count())
    };
    let plugins = state.plugins.current();
    let ready = plugins.iter().filter(|p| p.model().is_some()).count();
    let writer = state.events.health();
    let (code, status) = if writer.is_stopped() {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if ready == plugins.len() && writer.report().status == "ok" {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::OK, "degraded")
    };
    let body = Json(HealthResponse {
        status,
        items: state.catalog.len(),
        users,
        events,
        plugins: plugins.len(),
        plugins_ready: ready,
        cache: state
            .recommender
            .cache
            .stats()
            .report(state.recommender.cache.backend()),
        features: state.recommender.features.report(),
        event_writer: writer.report(),
        database: state.store.engine(),
        node: state.node.report(),
        schema_version: state.schema_version,
        experiments_revision: state.experiments.current().revision,
        plugins_revision: state.published_plugins().map(|set| set.revision),
        version: env!("CARGO_PKG_VERSION"),
    });
    (code, body)
}

/// Every loaded plugin: versions, model, health, limits, call counters; and the last reload.
#[utoipa::path(get, path = "/plugins", tag = "system", responses((status = 200, body = PluginsResponse)))]
pub async fn plugins(State(state): State<AppState>) -> Json<PluginsResponse> {
    Json(PluginsResponse {
        node: state.node.report(),
        default_model: state.recommender.default_model().to_string(),
        plugins: state.plugins.current().iter().map(|p| p.status()).collect(),
        reload: state.plugin_reload_status(),
        plugins_revision: state.published_plugins().map(|set| set.revision),
    })
}

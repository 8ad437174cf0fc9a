//! `GET /health`, the orchestrators' `GET /health/live` and `GET /health/ready`, and
//! `GET /plugins`.

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

#[derive(Serialize, utoipa::ToSchema)]
pub struct LiveResponse {
    /// Always `live`.
    status: &'static str,
}

/// Whether the process answers (a liveness probe): always 200 while it does. Restarting a
/// node for anything else (the database or Redis away, a plugin failing) would not help.
#[utoipa::path(get, path = "/health/live", tag = "system",
    responses((status = 200, body = LiveResponse)))]
pub async fn live() -> Json<LiveResponse> {
    Json(LiveResponse { status: "live" })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReadyResponse {
    ready: bool,
    /// Why not, when not: `shutting_down`, `models_not_loaded: NAME,...`,
    /// `events_not_stored` (the event writer stopped), `plugins_revision_pending: N`,
    /// `experiments_revision_pending: N`.
    reasons: Vec<String>,
    /// Whether the database answered this node's last look (cluster mode; `None` on one
    /// node). A node with the database away stays ready: it serves from memory.
    database_reachable: Option<bool>,
}

/// Whether this node should get traffic (a readiness probe): 200 when every plugin has a
/// model, events can be stored and, in a cluster, the newest published plugin and
/// experiment revisions it has seen are in force; 503 with the reasons otherwise, and from
/// the moment a stop is requested.
#[utoipa::path(get, path = "/health/ready", tag = "system", responses(
    (status = 200, body = ReadyResponse),
    (status = 503, description = "Not ready: see `reasons`", body = ReadyResponse),
))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<ReadyResponse>) {
    let mut reasons = Vec::new();
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        reasons.push("shutting_down".to_string());
    }
    let missing: Vec<String> = state
        .plugins
        .current()
        .iter()
        .filter(|p| p.model().is_none())
        .map(|p| p.name().to_string())
        .collect();
    if !missing.is_empty() {
        reasons.push(format!("models_not_loaded: {}", missing.join(",")));
    }
    if state.events.health().is_stopped() {
        reasons.push("events_not_stored".to_string());
    }
    let mut database_reachable = None;
    if state.node.in_cluster() {
        let (newest, answered) = state.published_plugins_seen();
        database_reachable = Some(answered);
        let in_force = state.published_plugins().map_or(0, |set| set.revision);
        if newest > in_force {
            reasons.push(format!("plugins_revision_pending: {newest}"));
        }
        let newest = state.experiments.newest_published();
        if newest > state.experiments.current().revision.unwrap_or(0) {
            reasons.push(format!("experiments_revision_pending: {newest}"));
        }
    }
    let ready = reasons.is_empty();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(ReadyResponse {
            ready,
            reasons,
            database_reachable,
        }),
    )
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

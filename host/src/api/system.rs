//! `GET /health` and `GET /plugins`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

/// Answered from memory (no SQLite query): health checks poll it every few seconds, and it is
/// the baseline of the cache benchmark.
pub async fn health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (users, events) = {
        let users = state.users.read().unwrap_or_else(|p| p.into_inner());
        (users.len(), users.event_count())
    };
    let plugins = state.plugins.current();
    let ready = plugins.iter().filter(|p| p.model().is_some()).count();
    Ok(Json(json!({
        "status": if ready == plugins.len() { "ok" } else { "degraded" },
        "items": state.catalog.len(),
        "users": users,
        "events": events,
        "plugins": plugins.len(),
        "plugins_ready": ready,
        "cache": state.recommender.cache.stats().report(state.recommender.cache.backend()),
        "schema_version": crate::store::schema_version(),
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

pub async fn plugins(State(state): State<AppState>) -> Json<Value> {
    let plugins: Vec<_> = state.plugins.current().iter().map(|p| p.status()).collect();
    Json(json!({
        "default_model": state.recommender.default_model(),
        "plugins": plugins,
        "reload": state.plugin_reload_status(),
    }))
}

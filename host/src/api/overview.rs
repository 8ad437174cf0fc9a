//! `GET /overview`: the dashboard's first page in one request: what the server holds, how
//! its plugins are, and its recent traffic from [`crate::timeline`].

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::AppState;
use crate::cache::CacheReport;
use crate::experiments::definition::Status;
use crate::timeline::{Counters, TimelineReport};

#[derive(Serialize, utoipa::ToSchema)]
pub struct OverviewResponse {
    version: &'static str,
    uptime_seconds: u64,
    items: usize,
    users: usize,
    events: u64,
    plugins: usize,
    /// Plugins with a model and not skipped as unhealthy.
    plugins_ready: usize,
    experiments_running: usize,
    /// Since start.
    cache: CacheReport,
    #[serde(flatten)]
    timeline: TimelineReport,
}

/// Counts, plugin readiness, and request rates and latency over the last minute and the last
/// 30 minutes (sampled every 2 s).
#[utoipa::path(get, path = "/overview", tag = "system", responses((status = 200, body = OverviewResponse)))]
pub async fn overview(State(state): State<AppState>) -> Json<OverviewResponse> {
    let now = Counters::of(&state);
    let (users, events) = {
        let users = state.users.read().unwrap_or_else(|p| p.into_inner());
        (users.len(), users.event_count())
    };
    let plugins = state.plugins.current();
    let plugins_ready = plugins
        .iter()
        .filter(|p| p.status().status == "ready")
        .count();
    let cache = &state.recommender.cache;
    Json(OverviewResponse {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started_at.elapsed().as_secs(),
        items: state.catalog.len(),
        users,
        events,
        plugins: plugins.len(),
        plugins_ready,
        experiments_running: state
            .experiments
            .current()
            .experiments
            .iter()
            .filter(|e| e.definition.status == Status::Running)
            .count(),
        cache: cache.stats().report(cache.backend()),
        timeline: state.timeline.report(&now),
    })
}

//! Request counts and latency by route, for `GET /metrics`: a middleware records every
//! request under its route pattern (`/users/{id}`, not the concrete path, so the number of
//! series stays bounded; unmatched requests count as `unmatched`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::histogram::{HistogramSnapshot, LatencyHistogram};

#[derive(Default)]
struct RouteStats {
    latency: LatencyHistogram,
    /// (method, status) -> requests.
    statuses: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

/// Every route's counters.
#[derive(Default)]
pub struct HttpMetrics {
    routes: RwLock<HashMap<String, Arc<RouteStats>>>,
}

impl HttpMetrics {
    fn route(&self, route: &str) -> Arc<RouteStats> {
        if let Some(stats) = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
        {
            return stats.clone();
        }
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(route.to_string())
            .or_default()
            .clone()
    }

    fn record(&self, route: &str, method: &'static str, status: u16, elapsed: Duration) {
        let stats = self.route(route);
        stats.latency.record(elapsed);
        *stats
            .statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((method, status))
            .or_insert(0) += 1;
    }

    /// Requests answered so far, every route.
    pub fn requests_total(&self) -> u64 {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.values().map(|stats| stats.latency.count()).sum()
    }

    /// The latency histogram of one route pattern (`/recommend`), if it has had requests.
    pub fn latency(&self, route: &str) -> Option<HistogramSnapshot> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.get(route).map(|stats| stats.latency.snapshot())
    }

    /// The two families in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&String> = routes.keys().collect();
        names.sort();
        let _ = writeln!(
            out,
            "# HELP recohost_http_requests_total HTTP requests by route, method and status."
        );
        let _ = writeln!(out, "# TYPE recohost_http_requests_total counter");
        for name in &names {
            let statuses = routes[*name]
                .statuses
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for ((method, status), count) in statuses.iter() {
                let _ = writeln!(
                    out,
                    "recohost_http_requests_total{{route=\"{name}\",method=\"{method}\",status=\"{status}\"}} {count}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP recohost_http_request_duration_seconds Time from request to response, by route."
        );
        let _ = writeln!(
            out,
            "# TYPE recohost_http_request_duration_seconds histogram"
        );
        for name in &names {
            let labels = format!("route=\"{name}\"");
            routes[*name]
                .latency
                .render(out, "recohost_http_request_duration_seconds", &labels);
        }
    }
}

/// The method as a metrics label: the standard ones by name, any other as `other` (a client
/// may send any token as a method; each would otherwise become a new series).
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

/// The middleware: times the request and records it under its route pattern.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    state.http_metrics.record(
        &route,
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

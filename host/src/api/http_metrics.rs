//! Request counts and latency by route, for `GET /metrics`: a middleware records every
//! request under its route pattern (`/users/{id}`, not the concrete path, so the number of
//! series stays bounded; unmatched requests count as `unmatched`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;

/// Upper bounds of the latency buckets, in seconds (plus +Inf).
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct RouteStats {
    /// Requests at or under each bound (cumulative, as the format wants).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
    /// (method, status) -> requests.
    statuses: Mutex<BTreeMap<(String, u16), u64>>,
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

    fn record(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let stats = self.route(route);
        for (bound, bucket) in BUCKETS.iter().zip(&stats.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        stats.count.fetch_add(1, Ordering::Relaxed);
        stats
            .sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
        *stats
            .statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((method.to_string(), status))
            .or_insert(0) += 1;
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
            let stats = &routes[*name];
            for (bound, bucket) in BUCKETS.iter().zip(&stats.buckets) {
                let _ = writeln!(
                    out,
                    "recohost_http_request_duration_seconds_bucket{{route=\"{name}\",le=\"{bound}\"}} {}",
                    bucket.load(Ordering::Relaxed)
                );
            }
            let count = stats.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "recohost_http_request_duration_seconds_bucket{{route=\"{name}\",le=\"+Inf\"}} {count}"
            );
            let sum = stats.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "recohost_http_request_duration_seconds_sum{{route=\"{name}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "recohost_http_request_duration_seconds_count{{route=\"{name}\"}} {count}"
            );
        }
    }
}

/// The middleware: times the request and records it under its route pattern.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state.http_metrics.record(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

//! Overload protection: at most `[http] max_in_flight` requests are handled at once, and none
//! for longer than `request_timeout_ms`. A request over the limit is shed at once with 503 and
//! `Retry-After` (queueing it would only make every request slow, then time out); a request
//! past its deadline gets 503 too. `/health` (and `/health/live`, `/health/ready`), `/metrics`,
//! `/overview` and the dashboard's files are exempt, so probes, scrapes and an operator opening the dashboard still see an
//! overloaded server (all four answer from memory). Operator actions under `/admin/` have no
//! deadline: they load, compile and train (seconds to minutes), and that work would go on
//! after a timeout answer, which would then say the opposite of what happened.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::AppState;
use super::error::ApiError;
use crate::config::HttpConfig;

pub struct Overload {
    in_flight: Semaphore,
    max_in_flight: usize,
    timeout: Duration,
    retry_after_secs: u64,
    shed: AtomicU64,
    timed_out: AtomicU64,
}

/// Counters for `/metrics`.
pub struct OverloadReport {
    pub in_flight: usize,
    pub shed: u64,
    pub timed_out: u64,
}

impl Overload {
    pub fn new(config: &HttpConfig) -> Self {
        Self {
            in_flight: Semaphore::new(config.max_in_flight),
            max_in_flight: config.max_in_flight,
            timeout: Duration::from_millis(config.request_timeout_ms),
            retry_after_secs: config.retry_after_secs,
            shed: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        }
    }

    pub fn report(&self) -> OverloadReport {
        OverloadReport {
            in_flight: self.max_in_flight - self.in_flight.available_permits(),
            shed: self.shed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
        }
    }
}

/// The middleware.
pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if matches!(path, "/metrics" | "/overview")
        || path.starts_with("/health")
        || path.starts_with("/dashboard")
    {
        return next.run(request).await;
    }
    let overload = &state.overload;
    let Ok(_permit) = overload.in_flight.try_acquire() else {
        overload.shed.fetch_add(1, Ordering::Relaxed);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "the server is handling its limit of {} requests; retry shortly",
                overload.max_in_flight
            ),
        )
        .retry_after(overload.retry_after_secs)
        .into_response();
    };
    if path.starts_with("/admin/") {
        return next.run(request).await;
    }
    match tokio::time::timeout(overload.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            overload.timed_out.fetch_add(1, Ordering::Relaxed);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the request took longer than {} ms",
                    overload.timeout.as_millis()
                ),
            )
            .retry_after(overload.retry_after_secs)
            .into_response()
        }
    }
}

//! The HTTP API (axum). Handlers parse and validate, call a service, and map the result;
//! every error goes through [`error::ApiError`].
//!
//! | route                 | handler                 |
//! |-----------------------|-------------------------|
//! | `POST /recommend`     | [`recommend::recommend`] |
//! | `GET /items/{id}`     | [`catalog::item`]        |
//! | `GET /users/{id}`     | [`catalog::user`]        |
//! | `POST /events`        | [`events::event`]        |
//! | `POST /events/batch`  | [`events::batch`]        |
//! | `GET /learning/stats` | [`learning::stats`]      |
//! | `GET /learning/history` | [`learning::history`]  |
//! | `POST /learning/trigger-update` | [`learning::trigger_update`] (operator) |
//! | `POST /learning/retrain` | [`learning::retrain`] (operator) |
//! | `GET /experiments`    | [`experiments::list`]    |
//! | `GET /experiments/{id}` | [`experiments::show`]  |
//! | `GET /experiments/{id}/results` | [`experiments::results`] |
//! | `POST /experiments/{id}/freeze`, `/resume`, `/reset`, `/promote` | [`bandits`] (operator) |
//! | `GET /users/{id}/experiment-group` | [`experiments::user_group`] |
//! | `POST /admin/reload`  | [`experiments::reload`] (operator) |
//! | `POST /admin/experiments` | [`experiments::publish`] (operator, cluster) |
//! | `POST /admin/plugins/{name}` | [`plugins::publish`] (operator, cluster) |
//! | `GET /health`         | [`system::health`]       |
//! | `GET /health/live`    | [`system::live`]         |
//! | `GET /health/ready`   | [`system::ready`]        |
//! | `GET /plugins`        | [`system::plugins`]      |
//! | `GET /metrics`        | [`metrics::metrics`]     |
//! | `GET /openapi.json`   | [`openapi::openapi`]     |

mod auth;
mod bandits;
mod catalog;
pub mod error;
pub mod events;
mod experiments;
pub mod http_metrics;
pub mod ids;
mod learning;
mod metrics;
mod monitoring;
pub mod openapi;
pub mod overload;
mod overview;
mod plugins;
mod recommend;
mod system;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::app::App;
use error::ApiError;

pub type AppState = Arc<App>;

/// A `?limit=N` query value: `default` when absent, else it must lie in 1..=`max`.
pub fn limit(given: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    let limit = given.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {max}"),
        ))
    }
}

/// Largest request body accepted, in bytes: room for a batch of 10,000 events.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Where bodies may be larger: a published plugin's .wasm.
const PLUGIN_UPLOAD: &str = "/admin/plugins/";

/// Refuses a body whose declared `Content-Length` is over [`MAX_BODY_BYTES`] before reading
/// any of it. A client that waits for `100 Continue` (curl does for large bodies) then gets
/// the 413 without uploading, instead of having the connection closed mid-upload. Bodies
/// without a length are still cut at the limit by `DefaultBodyLimit`.
async fn refuse_oversized(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = if request.uri().path().starts_with(PLUGIN_UPLOAD) {
        crate::plugin_set::MAX_WASM_BYTES
    } else {
        MAX_BODY_BYTES
    };
    if declared.is_some_and(|length| length > limit as u64) {
        return axum::response::IntoResponse::into_response(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_body",
            format!("the request body is over the {limit}-byte limit"),
        ));
    }
    next.run(request).await
}

/// The response header naming the node that answered: behind a load balancer, which of the
/// replicas served a request (or failed it) is otherwise invisible to clients and operators.
pub const NODE_HEADER: &str = "x-recohost-node";

pub fn router(app: Arc<App>) -> Router {
    // A node id that is not a valid header value (it is free text in the config) goes
    // without the header rather than failing the start.
    let node_header = axum::http::HeaderValue::from_str(&app.node.id).ok();
    Router::new()
        .route("/recommend", post(recommend::recommend))
        .route("/events", post(events::event))
        .route("/events/batch", post(events::batch))
        .route("/learning/stats", get(learning::stats))
        .route("/learning/history", get(learning::history))
        .route("/learning/trigger-update", post(learning::trigger_update))
        .route("/learning/retrain", post(learning::retrain))
        .route("/alerts", get(monitoring::alerts))
        .route("/monitoring", get(monitoring::windows))
        .route("/plugins/{name}/rollback", post(monitoring::rollback))
        .route("/experiments", get(experiments::list))
        .route("/experiments/{id}", get(experiments::show))
        .route("/experiments/{id}/results", get(experiments::results))
        .route("/experiments/{id}/freeze", post(bandits::freeze))
        .route("/experiments/{id}/resume", post(bandits::resume))
        .route("/experiments/{id}/reset", post(bandits::reset))
        .route("/experiments/{id}/promote", post(bandits::promote))
        .route("/users/{id}/experiment-group", get(experiments::user_group))
        .route("/admin/reload", post(experiments::reload))
        .route("/admin/experiments", post(experiments::publish))
        .route(
            "/admin/plugins/{name}",
            post(plugins::publish).layer(axum::extract::DefaultBodyLimit::max(
                crate::plugin_set::MAX_WASM_BYTES,
            )),
        )
        .route("/items/{id}", get(catalog::item))
        .route("/users/{id}", get(catalog::user))
        .route("/health", get(system::health))
        .route("/health/live", get(system::live))
        .route("/health/ready", get(system::ready))
        .route("/plugins", get(system::plugins))
        .route("/overview", get(overview::overview))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .merge(crate::dashboard::routes())
        .fallback(|| async {
            ApiError::not_found("not_found", "no such route; see the README for the API")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        // One `layer` call for the whole stack, not one per middleware: `Router::layer` boxes
        // each route once per call, and every request clones the boxes of its route (and each
        // `from_fn` middleware clones what it wraps), so six calls cost about 40 allocations
        // a request more than one (of an uncached `/recommend`'s 107). Outermost first;
        // inside the router, so `http_metrics::track` sees the matched route.
        .layer(
            tower::ServiceBuilder::new()
                .layer(
                    tower_http::set_header::SetResponseHeaderLayer::if_not_present(
                        axum::http::HeaderName::from_static(NODE_HEADER),
                        node_header,
                    ),
                )
                // Failed responses are counted in /metrics, and 500s are logged where they
                // happen: logging every 5xx here at ERROR would write a line per shed request
                // under overload (log volume growing with the very load being shed).
                .layer(tower_http::trace::TraceLayer::new_for_http().on_failure(
                    tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                ))
                .layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    http_metrics::track,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    overload::limit,
                ))
                .layer(axum::middleware::from_fn(refuse_oversized))
                .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .with_state(app)
}

//! The one place where errors become HTTP responses: `{"error":{"code":"...","message":"..."}}`
//! with the right status. Internal errors are logged and answered with a message that leaks
//! nothing.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::experiments::ExperimentError;
use crate::recommend::RecommendError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header (503s the client should retry).
    retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// Adds `Retry-After: secs` to the response.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

/// Every error response: `{"error":{"code":"...","message":"..."}}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_id`, `unknown_item`, `model_unavailable`,
    /// `overloaded`...
    pub code: String,
    /// For people: what was wrong and how to fix it.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => {
                Self::bad_request("invalid_json", format!("malformed JSON: {}", e.body_text()))
            }
            JsonRejection::JsonDataError(e) => Self::bad_request("invalid_request", e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(e) => {
                Self::new(e.status(), "invalid_body", e.body_text())
            }
            other => Self::new(other.status(), "invalid_request", other.body_text()),
        }
    }
}

impl From<ExperimentError> for ApiError {
    fn from(error: ExperimentError) -> Self {
        match &error {
            ExperimentError::Unknown { .. } => {
                Self::not_found("unknown_experiment", error.to_string())
            }
            ExperimentError::Disabled => Self::not_found("experiments_disabled", error.to_string()),
            ExperimentError::Definition(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_experiment",
                error.to_string(),
            ),
            ExperimentError::Store(_) => Self::internal(error),
        }
    }
}

impl From<RecommendError> for ApiError {
    fn from(error: RecommendError) -> Self {
        let message = error.to_string();
        match error {
            RecommendError::Experiment(error) => error.into(),
            RecommendError::UnknownModel { .. } => Self::not_found("unknown_model", message),
            RecommendError::InvalidCount { .. } => {
                Self::bad_request("invalid_n_recommendations", message)
            }
            RecommendError::PluginFailed { source, .. } => {
                tracing::warn!(error = %message, "recommendation failed");
                // An unhealthy plugin says when it will be tried again; else a second.
                let retry_ms = source.retry_after_ms().unwrap_or(1_000);
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "model_unavailable",
                    message,
                )
                .retry_after(retry_ms.div_ceil(1_000).max(1))
            }
        }
    }
}

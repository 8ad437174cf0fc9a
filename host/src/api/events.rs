//! `POST /events` and `POST /events/batch`.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::{ApiError, ErrorBody};
use super::ids::ExternalId;
use super::{AppState, ids};
use crate::catalog::Catalog;
use crate::config::EventsConfig;
use crate::events::{AppendError, EventError, EventInput, Idempotency, Receipt, validate};
use crate::learning::BufferStatus;
use crate::store::NewEvent;

/// One event. Unknown fields are refused, so a misspelt `rating` is not silently dropped.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    #[schema(value_type = ExternalId)]
    user_id: Value,
    /// An item of the catalog.
    #[schema(value_type = ExternalId)]
    item_id: Value,
    /// `rate` needs `rating`.
    #[schema(value_type = String, pattern = "^(view|click|purchase|rate)$")]
    event_type: String,
    /// Within `[events] rating_min..=rating_max`.
    #[serde(default)]
    rating: Option<f64>,
    /// Unix seconds, not in the future; default: when the server receives it.
    #[serde(default)]
    timestamp: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to `[events] max_batch` events, stored all or none.
    events: Vec<EventBody>,
}

/// What storing events did. Once this is returned the events are durable.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EventReceipt {
    /// Always `success`.
    status: &'static str,
    online_learning: BufferStatus,
    /// Present when these events triggered a model update.
    #[serde(skip_serializing_if = "Option::is_none")]
    model_update: Option<ScheduledUpdate>,
    /// `POST /events`: the stored event's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<i64>,
    /// `POST /events/batch`: how many were stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<usize>,
    /// `POST /events/batch`: the first stored event's id (the others follow it).
    #[serde(skip_serializing_if = "Option::is_none")]
    first_event_id: Option<i64>,
    /// Present (true) when the request's `Idempotency-Key` was used before for the same
    /// request: the ids are the first request's, and nothing was stored again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ScheduledUpdate {
    scheduled: bool,
    update_id: u64,
}

/// Stores one event.
#[utoipa::path(post, path = "/events", tag = "events", request_body = EventBody,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes a retry safe: the same request under the same key (kept 24 hours) is answered with the first one's receipt and stored once.")),
    responses(
        (status = 200, body = EventReceipt),
        (status = 400, description = "Invalid body, ID, type, rating or timestamp, or an invalid Idempotency-Key", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used for a different request", body = ErrorBody),
        (status = 503, description = "The event writer is unavailable; retry with the same Idempotency-Key", body = ErrorBody),
        (status = 413, description = "Body over 2 MiB", body = ErrorBody),
        (status = 415, description = "Body not sent as JSON", body = ErrorBody),
        (status = 404, description = "Unknown item", body = ErrorBody),
    ))]
pub async fn event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<EventBody>, JsonRejection>,
) -> Result<Json<EventReceipt>, ApiError> {
    let Json(body) = body?;
    let event =
        check(&state.catalog, &state.config.events, &body).map_err(|e| e.with_prefix(""))?;
    let idempotency = idempotency(&headers, std::slice::from_ref(&body))?;
    let receipt = append(&state, vec![event], idempotency).await?;
    Ok(Json(EventReceipt {
        event_id: Some(receipt.first_event_id),
        ..response(&receipt)
    }))
}

/// Stores a batch of events atomically: all or none.
#[utoipa::path(post, path = "/events/batch", tag = "events", request_body = BatchBody,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes a retry safe: the same request under the same key (kept 24 hours) is answered with the first one's receipt and stored once.")),
    responses(
        (status = 200, body = EventReceipt),
        (status = 400, description = "Invalid body, or an invalid event (named by its index), or an invalid Idempotency-Key", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used for a different request", body = ErrorBody),
        (status = 503, description = "The event writer is unavailable; retry with the same Idempotency-Key", body = ErrorBody),
        (status = 413, description = "Body over 2 MiB", body = ErrorBody),
        (status = 415, description = "Body not sent as JSON", body = ErrorBody),
        (status = 404, description = "Unknown item", body = ErrorBody),
    ))]
pub async fn batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> Result<Json<EventReceipt>, ApiError> {
    let Json(body) = body?;
    let max = state.config.events.max_batch;
    if body.events.is_empty() || body.events.len() > max {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!(
                "a batch holds 1 to {max} events, this one has {}",
                body.events.len()
            ),
        ));
    }
    let events = body
        .events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            check(&state.catalog, &state.config.events, event)
                .map_err(|e| e.with_prefix(&format!("events[{i}]: ")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let idempotency = idempotency(&headers, &body.events)?;
    let receipt = append(&state, events, idempotency).await?;
    Ok(Json(EventReceipt {
        stored: Some(receipt.stored),
        first_event_id: Some(receipt.first_event_id),
        ..response(&receipt)
    }))
}

struct Refusal {
    not_found: bool,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn with_prefix(self, prefix: &str) -> ApiError {
        let message = format!("{prefix}{}", self.message);
        if self.not_found {
            ApiError::not_found(self.code, message)
        } else {
            ApiError::bad_request(self.code, message)
        }
    }
}

/// Decodes and validates one event the way `POST /events` does once the body is read (the
/// fuzz target `event_json` drives this).
pub fn decode_event(
    bytes: &[u8],
    catalog: &Catalog,
    config: &EventsConfig,
) -> Result<NewEvent, ApiError> {
    let body: EventBody = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
    check(catalog, config, &body).map_err(|e| e.with_prefix(""))
}

fn check(catalog: &Catalog, config: &EventsConfig, body: &EventBody) -> Result<NewEvent, Refusal> {
    let id = |field, value| {
        ids::from_json(field, value).map_err(|e| Refusal {
            not_found: false,
            code: "invalid_id",
            message: e.message().to_string(),
        })
    };
    let input = EventInput {
        user_id: id("user_id", &body.user_id)?,
        item_id: id("item_id", &body.item_id)?,
        event_type: body.event_type.clone(),
        rating: body.rating,
        timestamp: body.timestamp,
    };
    validate(&input, catalog, config).map_err(|error| Refusal {
        not_found: matches!(error, EventError::UnknownItem(_)),
        code: match error {
            EventError::UnknownItem(_) => "unknown_item",
            EventError::UnknownType(_) => "invalid_event_type",
            EventError::FutureTimestamp(_) => "invalid_timestamp",
            _ => "invalid_rating",
        },
        message: error.to_string(),
    })
}

async fn append(
    state: &AppState,
    events: Vec<NewEvent>,
    idempotency: Option<Idempotency>,
) -> Result<Receipt, ApiError> {
    state
        .events
        .append(events, idempotency)
        .await
        .map_err(|error| match error {
            AppendError::KeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                format!(
                    "{error}: send each distinct request with its own key (keys are kept {} hours)",
                    crate::store::IDEMPOTENCY_KEY_TTL_SECS / 3600
                ),
            ),
            AppendError::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "events_unavailable",
                format!(
                    "{error}; retry with the same Idempotency-Key to be sure it is stored once"
                ),
            )
            .retry_after(1),
            AppendError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                format!(
                    "{error}; nothing was acknowledged: retry later with the same Idempotency-Key"
                ),
            )
            .retry_after(1),
            AppendError::Store(_) => ApiError::internal(error),
        })
}

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The request's `Idempotency-Key` (1 to 255 visible ASCII characters), with a hash of the
/// events as the client sent them (before the server stamps missing timestamps), so that a
/// retry is recognised and a different request under the same key refused.
fn idempotency(headers: &HeaderMap, bodies: &[EventBody]) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| {
            (1..=MAX_IDEMPOTENCY_KEY).contains(&key.len())
                && key.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                ),
            )
        })?;
    let mut hash = Sha256::new();
    for body in bodies {
        // Canonical: IDs as the API reads them (1 and "1" are one user), then the fields.
        let id = |field, value| ids::from_json(field, value).unwrap_or_default();
        let line = format!(
            "{}\u{0}{}\u{0}{}\u{0}{:?}\u{0}{:?}\n",
            id("user_id", &body.user_id),
            id("item_id", &body.item_id),
            body.event_type,
            body.rating.map(f64::to_bits),
            body.timestamp
        );
        hash.update(line.as_bytes());
    }
    Ok(Some(Idempotency {
        key: key.to_string(),
        request_hash: crate::plugins::engine::hex(&hash.finalize()),
    }))
}

/// The response shape of the original API, plus the update these events triggered.
fn response(receipt: &Receipt) -> EventReceipt {
    EventReceipt {
        status: "success",
        online_learning: receipt.buffer,
        model_update: receipt.update_id.map(|update_id| ScheduledUpdate {
            scheduled: true,
            update_id,
        }),
        event_id: None,
        stored: None,
        first_event_id: None,
        replayed: receipt.replayed,
    }
}

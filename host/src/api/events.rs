//! `POST /events` and `POST /events/batch`.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{AppState, ids};
use crate::events::{EventError, EventInput, Receipt, validate};
use crate::store::NewEvent;

/// One event. Unknown fields are refused, so a misspelt `rating` is not silently dropped.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    user_id: Value,
    item_id: Value,
    event_type: String,
    #[serde(default)]
    rating: Option<f64>,
    /// Unix seconds; default: when the server receives it.
    #[serde(default)]
    timestamp: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    events: Vec<EventBody>,
}

pub async fn event(
    State(state): State<AppState>,
    body: Result<Json<EventBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body?;
    let event = check(&state, &body).map_err(|e| e.with_prefix(""))?;
    let receipt = append(&state, vec![event]).await?;
    let mut answer = response(&receipt);
    answer["event_id"] = json!(receipt.first_event_id);
    Ok(Json(answer))
}

pub async fn batch(
    State(state): State<AppState>,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
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
    // Every event is checked before any is stored: one bad event rejects the whole batch.
    let events = body
        .events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            check(&state, event).map_err(|e| e.with_prefix(&format!("events[{i}]: ")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let receipt = append(&state, events).await?;
    let mut answer = response(&receipt);
    answer["stored"] = json!(receipt.stored);
    answer["first_event_id"] = json!(receipt.first_event_id);
    Ok(Json(answer))
}

/// A validation failure, with the status it maps to.
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

fn check(state: &AppState, body: &EventBody) -> Result<NewEvent, Refusal> {
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
    validate(&input, &state.catalog, &state.config.events).map_err(|error| Refusal {
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

async fn append(state: &AppState, events: Vec<NewEvent>) -> Result<Receipt, ApiError> {
    state
        .events
        .append(events)
        .await
        .map_err(ApiError::internal)
}

/// The response shape of the original API, plus the update these events triggered.
fn response(receipt: &Receipt) -> Value {
    let mut answer = json!({
        "status": "success",
        "online_learning": {
            "buffer_size": receipt.buffer.buffer_size,
            "should_update": receipt.buffer.should_update,
            "total_processed": receipt.buffer.total_processed,
        },
    });
    if let Some(update_id) = receipt.update_id {
        answer["model_update"] = json!({ "scheduled": true, "update_id": update_id });
    }
    answer
}

//! Live events: validation, and the writer that stores them durably before anyone is told.
//!
//! All events go through one writer thread with its own SQLite connection. It takes every
//! append request waiting in its queue and stores them in one transaction (group commit): one
//! disk sync covers many clients' events, so durability stays fast under load. Only after the
//! commit does it update the in-memory view (new users, histories), push the events into the
//! learning buffer and answer the waiting requests. A failed commit fails every request in the
//! group and changes nothing.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, RwLock};

use thiserror::Error;
use tokio::sync::oneshot;

use crate::catalog::{Catalog, Users};
use crate::config::EventsConfig;
use crate::learning::{BufferStatus, Learning};
use crate::store::{EventKind, NewEvent, Store, StoreError, unix_now};

/// An event as a client describes it, before validation.
#[derive(Clone, Debug)]
pub struct EventInput {
    pub user_id: String,
    pub item_id: String,
    pub event_type: String,
    pub rating: Option<f64>,
    pub timestamp: Option<u64>,
}

#[derive(Debug, Error, PartialEq)]
pub enum EventError {
    #[error(
        "unknown item `{0}`: add it to the catalog (recohost import) before sending events for it"
    )]
    UnknownItem(String),
    #[error("unknown event_type `{0}`; expected one of rate, click, view, purchase")]
    UnknownType(String),
    #[error("a `rate` event needs a `rating`")]
    MissingRating,
    #[error("`rating` belongs only to `rate` events, not `{0}`")]
    UnexpectedRating(String),
    #[error("rating must be a number between {min} and {max}, got {got}")]
    RatingOutOfRange { got: f64, min: f32, max: f32 },
    #[error("timestamp {0} is more than a day in the future (Unix seconds expected)")]
    FutureTimestamp(u64),
}

/// Largest clock difference accepted for a client's timestamp.
const MAX_FUTURE_SECS: u64 = 86_400;

/// Checks an event against the catalog and the configured rating scale.
pub fn validate(
    input: &EventInput,
    catalog: &Catalog,
    config: &EventsConfig,
) -> Result<NewEvent, EventError> {
    let kind = EventKind::parse(&input.event_type)
        .ok_or_else(|| EventError::UnknownType(input.event_type.clone()))?;
    let value = match (kind, input.rating) {
        (EventKind::Rate, None) => return Err(EventError::MissingRating),
        (EventKind::Rate, Some(rating)) => {
            let in_range = rating.is_finite()
                && rating >= f64::from(config.rating_min)
                && rating <= f64::from(config.rating_max);
            if !in_range {
                return Err(EventError::RatingOutOfRange {
                    got: rating,
                    min: config.rating_min,
                    max: config.rating_max,
                });
            }
            rating as f32
        }
        (_, Some(_)) => return Err(EventError::UnexpectedRating(input.event_type.clone())),
        (_, None) => 1.0,
    };
    let now = unix_now();
    let timestamp = match input.timestamp {
        Some(t) if t > now + MAX_FUTURE_SECS => return Err(EventError::FutureTimestamp(t)),
        Some(t) => t,
        None => now,
    };
    let item = catalog
        .index_of(&input.item_id)
        .ok_or_else(|| EventError::UnknownItem(input.item_id.clone()))?;
    Ok(NewEvent {
        user: input.user_id.clone(),
        item,
        kind,
        value,
        timestamp,
    })
}

/// What a successful append tells the client.
#[derive(Clone, Copy, Debug)]
pub struct Receipt {
    pub first_event_id: i64,
    pub stored: usize,
    pub buffer: BufferStatus,
    /// The update these events triggered, if they did.
    pub update_id: Option<u64>,
}

#[derive(Debug, Error)]
pub enum AppendError {
    #[error("the events could not be stored; nothing was recorded: {0}")]
    Store(String),
    #[error("the event writer has stopped")]
    Stopped,
}

struct AppendJob {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Receipt, String>>,
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct EventWriter {
    queue: SyncSender<AppendJob>,
}

/// Append requests that may wait in the queue; more make callers wait (backpressure).
const QUEUE_DEPTH: usize = 4_096;
/// Most events stored by one transaction.
const MAX_GROUP_EVENTS: usize = 50_000;

impl EventWriter {
    /// Starts the writer thread on its own connection to the database at `path`.
    pub fn start(
        path: &std::path::Path,
        users: Arc<RwLock<Users>>,
        learning: Arc<Learning>,
    ) -> Result<Self, StoreError> {
        let store = Store::open(path)?;
        let (queue, jobs) = sync_channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("event-writer".into())
            .spawn(move || write_loop(store, jobs, users, learning))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the event writer: {e}")))?;
        Ok(Self { queue })
    }

    /// Stores `events` durably (all or nothing), then feeds them to learning.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Receipt, AppendError> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.clone();
        // `send` blocks only when the queue is full; keep that off the async workers.
        let job = AppendJob { events, reply };
        match queue.try_send(job) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(job)) => {
                tokio::task::spawn_blocking(move || queue.send(job))
                    .await
                    .map_err(|_| AppendError::Stopped)?
                    .map_err(|_| AppendError::Stopped)?;
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                return Err(AppendError::Stopped);
            }
        }
        match answer.await {
            Ok(Ok(receipt)) => Ok(receipt),
            Ok(Err(error)) => Err(AppendError::Store(error)),
            Err(_) => Err(AppendError::Stopped),
        }
    }
}

fn write_loop(
    store: Store,
    jobs: Receiver<AppendJob>,
    users: Arc<RwLock<Users>>,
    learning: Arc<Learning>,
) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        let mut size = group[0].events.len();
        while size < MAX_GROUP_EVENTS {
            match jobs.try_recv() {
                Ok(job) => {
                    size += job.events.len();
                    group.push(job);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let events: Vec<NewEvent> = group
            .iter()
            .flat_map(|j| j.events.iter().cloned())
            .collect();
        let appended = {
            // Only this thread registers users, so the next index cannot be taken meanwhile.
            let view = users.read().unwrap_or_else(|p| p.into_inner());
            let next_user = view.len() as u32;
            store.append_events(&events, |id| view.index_of(id), next_user)
        };
        let appended = match appended {
            Ok(appended) => appended,
            Err(error) => {
                tracing::error!(%error, events = events.len(), "cannot store events");
                let error = error.to_string();
                for job in group {
                    let _ = job.reply.send(Err(error.clone()));
                }
                continue;
            }
        };
        {
            let mut view = users.write().unwrap_or_else(|p| p.into_inner());
            for (index, external_id) in appended.new_users {
                view.register(index, external_id);
            }
            for row in &appended.rows {
                view.record(row);
            }
        }
        let mut offset = 0;
        for job in group {
            let rows = &appended.rows[offset..offset + job.events.len()];
            offset += job.events.len();
            let (buffer, update_id) = learning.push(rows);
            let receipt = Receipt {
                first_event_id: rows.first().map(|r| r.id).unwrap_or(0),
                stored: rows.len(),
                buffer,
                update_id,
            };
            let _ = job.reply.send(Ok(receipt));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ItemRow;

    fn catalog() -> Catalog {
        Catalog::new(vec![ItemRow {
            external_id: "42".into(),
            title: "Answer".into(),
            tags: vec![],
        }])
    }

    fn input(event_type: &str, rating: Option<f64>) -> EventInput {
        EventInput {
            user_id: "u".into(),
            item_id: "42".into(),
            event_type: event_type.into(),
            rating,
            timestamp: Some(7),
        }
    }

    #[test]
    fn accepts_ratings_in_range_and_plain_interactions() {
        let config = EventsConfig::default();
        let rated = validate(&input("rate", Some(4.5)), &catalog(), &config).unwrap();
        assert_eq!(
            (rated.item, rated.kind, rated.value, rated.timestamp),
            (0, EventKind::Rate, 4.5, 7)
        );
        let clicked = validate(&input("click", None), &catalog(), &config).unwrap();
        assert_eq!((clicked.kind, clicked.value), (EventKind::Click, 1.0));
    }

    #[test]
    fn refuses_bad_events_with_the_reason() {
        let config = EventsConfig::default();
        let check = |input: EventInput| validate(&input, &catalog(), &config).unwrap_err();
        assert_eq!(check(input("rate", None)), EventError::MissingRating);
        assert!(matches!(
            check(input("rate", Some(f64::NAN))),
            EventError::RatingOutOfRange { .. }
        ));
        assert!(matches!(
            check(input("rate", Some(9.0))),
            EventError::RatingOutOfRange { .. }
        ));
        assert!(matches!(
            check(input("rate", Some(0.0))),
            EventError::RatingOutOfRange { .. }
        ));
        assert_eq!(
            check(input("click", Some(3.0))),
            EventError::UnexpectedRating("click".into())
        );
        assert_eq!(
            check(input("like", None)),
            EventError::UnknownType("like".into())
        );
        let mut unknown = input("view", None);
        unknown.item_id = "7".into();
        assert_eq!(check(unknown), EventError::UnknownItem("7".into()));
        let mut future = input("view", None);
        future.timestamp = Some(unix_now() + 3 * 86_400);
        assert!(matches!(check(future), EventError::FutureTimestamp(_)));
    }
}

//! Appending live events (`POST /events`): many clients' events in one transaction, each
//! client's in a savepoint of its own, so that one request's failure is its alone.
//!
//! New users get their dense index inside the transaction (the next after the highest
//! stored), under SQLite's write lock, so another writer (`recohost import` into a running
//! server's database) never collides with it; a user that writer registered meanwhile is
//! found by their external ID.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{EventKind, EventRow, Store, StoreResult, unix_now};

/// How long a client's idempotency key is remembered.
pub const IDEMPOTENCY_KEY_TTL_SECS: u64 = 86_400;

/// A validated event, its item resolved to a dense index, its user still an external ID.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub user: String,
    pub item: u32,
    pub kind: EventKind,
    pub value: f32,
    pub timestamp: u64,
}

/// One client's request within a group commit.
pub struct AppendRequest<'a> {
    pub events: &'a [NewEvent],
    /// The client's idempotency key, and a hash of what the request asked to store.
    pub idempotency: Option<(&'a str, &'a str)>,
}

/// What became of one request of a group commit (once the group is committed).
#[derive(Debug, PartialEq)]
pub enum AppendOutcome {
    /// Stored: the rows with their ids and user indices, in the order given.
    Stored(Vec<EventRow>),
    /// Its idempotency key was seen before with the same request: nothing stored again.
    Replayed { first_event_id: i64, stored: usize },
    /// Its idempotency key was seen before with another request.
    KeyReused,
    /// It failed and stored nothing; the rest of the group is unaffected.
    Failed(String),
}

impl Store {
    /// Stores each request in its own savepoint of one transaction: all of a request or
    /// none of it, whatever the others do. `known_user` maps the users the caller knows to
    /// their indices. Fails as a whole only if the transaction cannot begin or commit.
    pub fn append_requests(
        &self,
        requests: &[AppendRequest<'_>],
        known_user: impl Fn(&str) -> Option<u32>,
    ) -> StoreResult<Vec<AppendOutcome>> {
        let mut connection = self.lock();
        // IMMEDIATE: the write lock is taken now, so the next user index read below stays
        // the next until the commit.
        let mut transaction =
            connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut next_user: u32 =
            transaction.query_row("SELECT COALESCE(MAX(idx) + 1, 0) FROM users", [], |row| {
                row.get(0)
            })?;
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            let mut savepoint = transaction.savepoint()?;
            let before = next_user;
            match append_one(&savepoint, request, &known_user, &mut next_user) {
                Ok(outcome) => {
                    savepoint.commit()?;
                    outcomes.push(outcome);
                }
                Err(error) => {
                    savepoint.rollback()?;
                    next_user = before;
                    outcomes.push(AppendOutcome::Failed(error.to_string()));
                }
            }
        }
        transaction.commit()?;
        Ok(outcomes)
    }

    /// Users registered with an index of `from` or more, by index.
    pub fn users_from(&self, from: u32) -> StoreResult<Vec<(u32, String)>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached("SELECT idx, external_id FROM users WHERE idx >= ?1 ORDER BY idx")?;
        let rows = statement.query_map([from], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets idempotency keys older than [`IDEMPOTENCY_KEY_TTL_SECS`].
    pub fn expire_idempotency_keys(&self) -> StoreResult<usize> {
        let cutoff = unix_now().saturating_sub(IDEMPOTENCY_KEY_TTL_SECS) as i64;
        Ok(self.lock().execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?1",
            [cutoff],
        )?)
    }
}

/// One request, inside its savepoint.
fn append_one(
    connection: &rusqlite::Connection,
    request: &AppendRequest<'_>,
    known_user: &impl Fn(&str) -> Option<u32>,
    next_user: &mut u32,
) -> rusqlite::Result<AppendOutcome> {
    if let Some((key, hash)) = request.idempotency {
        let seen: Option<(String, i64, i64)> = connection
            .prepare_cached(
                "SELECT request_hash, first_event_id, stored FROM idempotency_keys WHERE key = ?1",
            )?
            .query_row([key], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()?;
        if let Some((seen_hash, first_event_id, stored)) = seen {
            return Ok(if seen_hash == hash {
                AppendOutcome::Replayed {
                    first_event_id,
                    stored: stored as usize,
                }
            } else {
                AppendOutcome::KeyReused
            });
        }
    }
    let mut find_user =
        connection.prepare_cached("SELECT idx FROM users WHERE external_id = ?1")?;
    let mut insert_user = connection
        .prepare_cached("INSERT INTO users (idx, external_id, created_at) VALUES (?1, ?2, ?3)")?;
    let mut insert_event = connection.prepare_cached(
        "INSERT INTO events (user_idx, item_idx, kind, value, timestamp)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let now = unix_now() as i64;
    let mut rows = Vec::with_capacity(request.events.len());
    for event in request.events {
        let user = match known_user(&event.user) {
            Some(index) => index,
            // Registered by another request of this group, or by another writer.
            None => match find_user
                .query_row([&event.user], |row| row.get::<_, u32>(0))
                .optional()?
            {
                Some(index) => index,
                None => {
                    let index = *next_user;
                    insert_user.execute(params![index, event.user, now])?;
                    *next_user += 1;
                    index
                }
            },
        };
        insert_event.execute(params![
            user,
            event.item,
            event.kind.as_str(),
            f64::from(event.value),
            event.timestamp as i64
        ])?;
        rows.push(EventRow {
            id: connection.last_insert_rowid(),
            user,
            item: event.item,
            kind: event.kind,
            value: event.value,
            timestamp: event.timestamp,
        });
    }
    if let Some((key, hash)) = request.idempotency {
        connection
            .prepare_cached(
                "INSERT INTO idempotency_keys (key, request_hash, first_event_id, stored, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                key,
                hash,
                rows.first().map(|r| r.id).unwrap_or(0),
                rows.len() as i64,
                now
            ])?;
    }
    Ok(AppendOutcome::Stored(rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ImportBatch, ImportEvent, ItemRow};

    fn store_with_items(dir: &std::path::Path) -> Store {
        let store = Store::open(&dir.join("db")).unwrap();
        let items = (0..3)
            .map(|i| ItemRow {
                external_id: i.to_string(),
                title: format!("Item {i}"),
                tags: vec![],
            })
            .collect();
        store
            .import(&ImportBatch {
                items,
                events: vec![],
            })
            .unwrap();
        store
    }

    fn event(user: &str, item: u32) -> NewEvent {
        NewEvent {
            user: user.into(),
            item,
            kind: EventKind::Click,
            value: 1.0,
            timestamp: 5,
        }
    }

    fn request(events: &[NewEvent]) -> AppendRequest<'_> {
        AppendRequest {
            events,
            idempotency: None,
        }
    }

    fn stored(outcome: &AppendOutcome) -> &[EventRow] {
        match outcome {
            AppendOutcome::Stored(rows) => rows,
            other => panic!("not stored: {other:?}"),
        }
    }

    #[test]
    fn registers_new_users_once_and_returns_ids_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_items(dir.path());
        let first = store
            .append_requests(&[request(&[event("old", 0)])], |_| None)
            .unwrap();
        assert_eq!(stored(&first[0])[0].user, 0);
        let known = |id: &str| (id == "old").then_some(0);
        let events = [event("new", 1), event("old", 2), event("new", 0)];
        let appended = store.append_requests(&[request(&events)], known).unwrap();
        let rows = stored(&appended[0]);
        assert_eq!(
            rows.iter().map(|r| r.user).collect::<Vec<_>>(),
            vec![1, 0, 1]
        );
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(store.events_after(1).unwrap(), rows);
        assert_eq!(store.users_from(1).unwrap(), vec![(1, "new".to_string())]);
    }

    #[test]
    fn one_failing_request_leaves_the_rest_of_its_group_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_items(dir.path());
        // Item 9 does not exist: the foreign key fails that request, and only that one.
        let good = [event("a", 1)];
        let bad = [event("b", 1), event("b", 9)];
        let also_good = [event("c", 2)];
        let outcomes = store
            .append_requests(
                &[request(&good), request(&bad), request(&also_good)],
                |_| None,
            )
            .unwrap();
        assert!(
            matches!(outcomes[1], AppendOutcome::Failed(_)),
            "{outcomes:?}"
        );
        assert_eq!(stored(&outcomes[0])[0].user, 0);
        // "b" was rolled back with its request: "c" takes the next index.
        assert_eq!(stored(&outcomes[2])[0].user, 1);
        assert_eq!(store.counts().unwrap().events, 2);
        assert_eq!(store.counts().unwrap().users, 2);
    }

    #[test]
    fn users_registered_by_another_writer_are_found_and_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_items(dir.path());
        store
            .append_requests(&[request(&[event("live-1", 0)])], |_| None)
            .unwrap();
        // `recohost import` into the same database, while the server runs.
        let other = Store::open(&dir.path().join("db")).unwrap();
        other
            .import(&ImportBatch {
                items: vec![],
                events: vec![ImportEvent {
                    user: "imported".into(),
                    item: "1".into(),
                    kind: EventKind::Click,
                    value: 1.0,
                    timestamp: 1,
                }],
            })
            .unwrap();
        // The server's view knows only "live-1" (index 0).
        let known = |id: &str| (id == "live-1").then_some(0);
        let events = [event("imported", 2), event("live-2", 2)];
        let outcomes = store.append_requests(&[request(&events)], known).unwrap();
        let users: Vec<u32> = stored(&outcomes[0]).iter().map(|r| r.user).collect();
        assert_eq!(users, vec![1, 2]);
        assert_eq!(
            store.users_from(1).unwrap(),
            vec![(1, "imported".to_string()), (2, "live-2".to_string())]
        );
    }

    #[test]
    fn an_idempotency_key_stores_once_and_refuses_another_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_items(dir.path());
        let events = [event("a", 1), event("a", 2)];
        let keyed = |hash| AppendRequest {
            events: &events,
            idempotency: Some(("key-1", hash)),
        };
        // The same key twice in one group, then again later.
        let outcomes = store
            .append_requests(&[keyed("h"), keyed("h")], |_| None)
            .unwrap();
        let first_id = stored(&outcomes[0])[0].id;
        assert_eq!(
            outcomes[1],
            AppendOutcome::Replayed {
                first_event_id: first_id,
                stored: 2
            }
        );
        let again = store.append_requests(&[keyed("h")], |_| None).unwrap();
        assert!(matches!(again[0], AppendOutcome::Replayed { .. }));
        let other = store.append_requests(&[keyed("other")], |_| None).unwrap();
        assert_eq!(other[0], AppendOutcome::KeyReused);
        assert_eq!(store.counts().unwrap().events, 2);
        assert_eq!(store.expire_idempotency_keys().unwrap(), 0);
    }
}

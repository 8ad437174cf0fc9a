//! The catalog, the users and the event log in SQLite.
//!
//! Live events (`POST /events`) come as many clients' requests in one transaction, each
//! client's in a savepoint of its own, so that one request's failure is its alone.
//!
//! New users get their dense index inside the transaction (the next after the highest
//! stored), under SQLite's write lock, so another writer (`recohost import` into a running
//! server's database) never collides with it; a user that writer registered meanwhile is
//! found by their external ID.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{SqliteStore, event_row};
use crate::store::{
    AppendOutcome, AppendRequest, EventKind, EventLog, EventRow, EventSource,
    IDEMPOTENCY_KEY_TTL_SECS, ItemRow, StoreError, StoreResult, UserHistory, unix_now,
};

/// Events of an import, inserted [`ROWS_PER_INSERT`] to a statement.
///
/// One row per `INSERT` spent about 40% of an import in SQLite's per-statement work rather
/// than in the rows: each execution builds an ephemeral table for the `kind IN (…)` check,
/// opens a statement journal, reads and writes `sqlite_sequence` and opens cursors for the
/// foreign keys. A multi-row `VALUES` does that once per statement.
struct ImportedEvents<'c> {
    full: rusqlite::Statement<'c>,
    transaction: &'c rusqlite::Transaction<'c>,
    pending: Vec<ImportedEvent>,
}

struct ImportedEvent {
    user: i64,
    item: i64,
    kind: EventKind,
    value: f32,
    timestamp: i64,
}

/// Rows per statement: 5 parameters each, well under SQLite's 32,766.
const ROWS_PER_INSERT: usize = 200;

impl<'c> ImportedEvents<'c> {
    fn prepare(transaction: &'c rusqlite::Transaction<'c>) -> StoreResult<Self> {
        Ok(Self {
            full: transaction.prepare(&Self::sql(ROWS_PER_INSERT))?,
            transaction,
            pending: Vec::with_capacity(ROWS_PER_INSERT),
        })
    }

    fn sql(rows: usize) -> String {
        let values = vec!["(?, ?, ?, ?, ?)"; rows].join(", ");
        format!("INSERT INTO events (user_idx, item_idx, kind, value, timestamp) VALUES {values}")
    }

    /// Queues an event, inserting the queue when it is full. Events keep their order, so
    /// ids are given in the order of the source.
    fn push(&mut self, event: ImportedEvent) -> StoreResult<()> {
        self.pending.push(event);
        if self.pending.len() == ROWS_PER_INSERT {
            Self::insert(&mut self.full, &self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Inserts what is still queued.
    fn finish(mut self) -> StoreResult<()> {
        if !self.pending.is_empty() {
            let mut rest = self.transaction.prepare(&Self::sql(self.pending.len()))?;
            Self::insert(&mut rest, &self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    fn insert(
        statement: &mut rusqlite::Statement<'_>,
        events: &[ImportedEvent],
    ) -> StoreResult<()> {
        for (row, event) in events.iter().enumerate() {
            let first = row * 5 + 1;
            statement.raw_bind_parameter(first, event.user)?;
            statement.raw_bind_parameter(first + 1, event.item)?;
            statement.raw_bind_parameter(first + 2, event.kind.as_str())?;
            statement.raw_bind_parameter(first + 3, f64::from(event.value))?;
            statement.raw_bind_parameter(first + 4, event.timestamp)?;
        }
        statement.raw_execute()?;
        Ok(())
    }
}

impl EventLog for SqliteStore {
    fn items(&self) -> StoreResult<Vec<ItemRow>> {
        let connection = self.lock();
        let mut statement =
            connection.prepare("SELECT idx, external_id, title, tags FROM items ORDER BY idx")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
            ))
        })?;
        let mut items = Vec::new();
        for row in rows {
            let (idx, external_id, title, tags) = row?;
            if idx != items.len() as i64 {
                return Err(StoreError::Corrupt(format!(
                    "item indices are not dense at {idx}"
                )));
            }
            let tags = serde_json::from_str(&tags)
                .map_err(|e| StoreError::Corrupt(format!("tags of item {external_id}: {e}")))?;
            items.push(ItemRow {
                external_id,
                title,
                tags,
            });
        }
        Ok(items)
    }

    fn users(&self) -> StoreResult<Vec<String>> {
        let connection = self.lock();
        let mut statement =
            connection.prepare("SELECT idx, external_id FROM users ORDER BY idx")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut users = Vec::new();
        for row in rows {
            let (idx, external_id) = row?;
            if idx != users.len() as i64 {
                return Err(StoreError::Corrupt(format!(
                    "user indices are not dense at {idx}"
                )));
            }
            users.push(external_id);
        }
        Ok(users)
    }

    fn scan_events_after(&self, after: i64, visit: &mut dyn FnMut(&EventRow)) -> StoreResult<()> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT id, user_idx, item_idx, kind, value, timestamp FROM events WHERE id > ?1 ORDER BY id",
        )?;
        let mut rows = statement.query([after])?;
        while let Some(row) = rows.next()? {
            visit(&event_row(row)?);
        }
        Ok(())
    }

    fn last_event_id(&self) -> StoreResult<i64> {
        let connection = self.lock();
        Ok(
            connection.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |row| {
                row.get(0)
            })?,
        )
    }

    fn import_if(
        &self,
        items: &[ItemRow],
        events: EventSource<'_>,
        only_into_empty: bool,
    ) -> StoreResult<Option<u64>> {
        let mut connection = self.lock();
        // The import resolves every event's user and item itself, in its own transaction,
        // users inserted before their events: SQLite's foreign-key check (two B-tree lookups
        // per event) was a sixth of an import's time. Off for the import only (the pragma
        // cannot change inside a transaction), on again whatever the import returns.
        let unchecked = ForeignKeysOff::on(&mut connection)?;
        import_in(&mut *unchecked.0, items, events, only_into_empty)
    }

    fn append_requests(
        &self,
        requests: &[AppendRequest<'_>],
        known_user: &dyn Fn(&str) -> Option<u32>,
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
            match append_one(&savepoint, request, known_user, &mut next_user) {
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

    fn users_from(&self, from: u32) -> StoreResult<Vec<(u32, String)>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached("SELECT idx, external_id FROM users WHERE idx >= ?1 ORDER BY idx")?;
        let rows = statement.query_map([from], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn expire_idempotency_keys(&self) -> StoreResult<usize> {
        let cutoff = unix_now().saturating_sub(IDEMPOTENCY_KEY_TTL_SECS) as i64;
        Ok(self.lock().execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?1",
            [cutoff],
        )?)
    }

    fn count_events_between(&self, after: i64, before: i64, items: u32) -> StoreResult<u64> {
        Ok(self.lock().query_row(
            "SELECT COUNT(*) FROM events WHERE id > ?1 AND id < ?2 AND item_idx < ?3",
            params![after, before, items],
            |row| row.get::<_, i64>(0),
        )? as u64)
    }

    fn events_between(
        &self,
        after: i64,
        before: i64,
        items: u32,
        limit: usize,
    ) -> StoreResult<Vec<EventRow>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query_events(
            "SELECT id, user_idx, item_idx, kind, value, timestamp FROM events
             WHERE id > ?1 AND id < ?2 AND item_idx < ?3 ORDER BY id LIMIT ?4",
            &[&after, &before, &items, &limit],
        )
    }

    fn training_window(
        &self,
        through_event: i64,
        since_timestamp: Option<u64>,
        last_events: Option<u64>,
        items: u32,
    ) -> StoreResult<Vec<EventRow>> {
        let since = since_timestamp.map_or(i64::MIN, |t| i64::try_from(t).unwrap_or(i64::MAX));
        let last = last_events.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        // The newest `last` of the window (LIMIT -1: all), put back in id order.
        let mut events = self.query_events(
            "SELECT id, user_idx, item_idx, kind, value, timestamp FROM events
             WHERE id <= ?1 AND timestamp >= ?2 AND item_idx < ?4 ORDER BY id DESC LIMIT ?3",
            &[&through_event, &since, &last, &items],
        )?;
        events.reverse();
        Ok(events)
    }

    fn user_history(&self, user: u32, items: u32, limit: usize) -> StoreResult<UserHistory> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // A single node serves users from memory: this scans (no index by user), for the
        // one interface and its tests.
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let (count, through): (i64, i64) = transaction.query_row(
            "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM events
             WHERE user_idx = ?1 AND item_idx < ?2",
            params![user, items],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let recent = {
            let mut statement = transaction.prepare_cached(
                "SELECT id, user_idx, item_idx, kind, value, timestamp FROM events
                 WHERE user_idx = ?1 AND item_idx < ?2 ORDER BY id DESC LIMIT ?3",
            )?;
            let mut rows = statement.query(params![user, items, limit])?;
            let mut recent = Vec::new();
            while let Some(row) = rows.next()? {
                recent.push(event_row(row)?);
            }
            recent
        };
        let items = {
            let mut statement = transaction.prepare_cached(
                "SELECT DISTINCT item_idx FROM events WHERE user_idx = ?1 AND item_idx < ?2
                 ORDER BY item_idx",
            )?;
            statement
                .query_map(params![user, items], |row| row.get::<_, u32>(0))?
                .collect::<rusqlite::Result<Vec<u32>>>()?
        };
        transaction.commit()?;
        Ok(UserHistory {
            count: count.max(0) as u64,
            through,
            recent,
            items,
        })
    }

    fn for_each_event_after(
        &self,
        after: i64,
        visit: &mut dyn FnMut(i64, &str, EventKind, f32, u64),
    ) -> StoreResult<()> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT e.id, u.external_id, e.kind, e.value, e.timestamp
             FROM events e JOIN users u ON u.idx = e.user_idx
             WHERE e.id > ?1 ORDER BY e.id",
        )?;
        let mut rows = statement.query([after])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let user: String = row.get(1)?;
            let kind: String = row.get(2)?;
            let kind = EventKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("event {id} has kind {kind:?}")))?;
            visit(
                id,
                &user,
                kind,
                row.get::<_, f64>(3)? as f32,
                row.get::<_, i64>(4)?.max(0) as u64,
            );
        }
        Ok(())
    }
}

/// One request, inside its savepoint.
fn append_one(
    connection: &rusqlite::Connection,
    request: &AppendRequest<'_>,
    known_user: &dyn Fn(&str) -> Option<u32>,
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

impl SqliteStore {
    /// The events `sql` selects (`id, user_idx, item_idx, kind, value, timestamp`).
    fn query_events(
        &self,
        sql: &str,
        parameters: &[&dyn rusqlite::ToSql],
    ) -> StoreResult<Vec<EventRow>> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(sql)?;
        let mut rows = statement.query(parameters)?;
        let mut events = Vec::new();
        while let Some(row) = rows.next()? {
            events.push(event_row(row)?);
        }
        Ok(events)
    }
}

/// A connection with foreign-key checks off until this is dropped, however its holder ends
/// (an error, or a panic in the event source: the store's lock ignores poisoning, so the
/// connection would otherwise go on unchecked).
struct ForeignKeysOff<'c>(&'c mut rusqlite::Connection);

impl<'c> ForeignKeysOff<'c> {
    fn on(connection: &'c mut rusqlite::Connection) -> StoreResult<Self> {
        connection.pragma_update(None, "foreign_keys", "OFF")?;
        Ok(Self(connection))
    }
}

impl Drop for ForeignKeysOff<'_> {
    fn drop(&mut self) {
        // Outside any transaction (the import's has ended), so this only fails with the
        // connection itself.
        if let Err(error) = self.0.pragma_update(None, "foreign_keys", "ON") {
            tracing::error!(%error, "cannot turn SQLite's foreign-key checks back on after an import");
        }
    }
}

/// [`EventLog::import_if`] on `connection`, foreign-key checks off.
fn import_in(
    connection: &mut rusqlite::Connection,
    items: &[ItemRow],
    events: EventSource<'_>,
    only_into_empty: bool,
) -> StoreResult<Option<u64>> {
    // IMMEDIATE: the write lock from the start, so a running server's writer cannot
    // commit between this transaction's reads and its writes (in WAL mode that would
    // fail the import with SQLITE_BUSY_SNAPSHOT instead of waiting).
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if only_into_empty {
        let items: i64 =
            transaction.query_row("SELECT COUNT(*) FROM items", [], |row| row.get(0))?;
        if items > 0 {
            return Ok(None);
        }
    }
    // foldhash rather than SipHash: two lookups per event were a tenth of an import.
    let mut item_index: foldhash::HashMap<String, i64> = foldhash::HashMap::default();
    let mut user_index: foldhash::HashMap<String, i64> = foldhash::HashMap::default();
    let mut added = 0;
    {
        let mut next_item: i64 =
            transaction.query_row("SELECT COALESCE(MAX(idx) + 1, 0) FROM items", [], |row| {
                row.get(0)
            })?;
        let mut find_item = transaction.prepare("SELECT idx FROM items WHERE external_id = ?1")?;
        let mut insert_item = transaction
            .prepare("INSERT INTO items (idx, external_id, title, tags) VALUES (?1, ?2, ?3, ?4)")?;
        let mut update_item =
            transaction.prepare("UPDATE items SET title = ?2, tags = ?3 WHERE idx = ?1")?;
        for item in items {
            let tags = serde_json::to_string(&item.tags)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let existing: Option<i64> = find_item
                .query_row([&item.external_id], |row| row.get(0))
                .optional()?;
            let idx = match existing {
                Some(idx) => {
                    update_item.execute(params![idx, item.title, tags])?;
                    idx
                }
                None => {
                    insert_item.execute(params![next_item, item.external_id, item.title, tags])?;
                    next_item += 1;
                    next_item - 1
                }
            };
            item_index.insert(item.external_id.clone(), idx);
        }
        let mut next_user: i64 =
            transaction.query_row("SELECT COALESCE(MAX(idx) + 1, 0) FROM users", [], |row| {
                row.get(0)
            })?;
        let mut find_user = transaction.prepare("SELECT idx FROM users WHERE external_id = ?1")?;
        let mut insert_user = transaction
            .prepare("INSERT INTO users (idx, external_id, created_at) VALUES (?1, ?2, ?3)")?;
        let mut insert_events = ImportedEvents::prepare(&transaction)?;
        let now = unix_now();
        // One pass: a user gets its index at its first event, as the two passes this
        // replaced gave it (the order of first appearance).
        for event in events {
            let event = event.map_err(StoreError::Input)?;
            let item = match item_index.get(event.item.as_str()) {
                Some(&idx) => idx,
                None => {
                    let idx = find_item
                        .query_row([&event.item], |row| row.get(0))
                        .optional()?
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!(
                                "event refers to unknown item {}",
                                event.item
                            ))
                        })?;
                    item_index.insert(event.item.clone(), idx);
                    idx
                }
            };
            let user = match user_index.get(event.user.as_str()) {
                Some(&idx) => idx,
                None => {
                    let existing: Option<i64> = find_user
                        .query_row([&event.user], |row| row.get(0))
                        .optional()?;
                    let idx = match existing {
                        Some(idx) => idx,
                        None => {
                            insert_user.execute(params![next_user, event.user, now])?;
                            next_user += 1;
                            next_user - 1
                        }
                    };
                    user_index.insert(event.user.clone(), idx);
                    idx
                }
            };
            insert_events.push(ImportedEvent {
                user,
                item,
                kind: event.kind,
                value: event.value,
                timestamp: event.timestamp as i64,
            })?;
            added += 1;
        }
        insert_events.finish()?;
    }
    transaction.commit()?;
    Ok(Some(added))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, ImportEvent};

    fn foreign_keys(store: &SqliteStore) -> bool {
        store
            .lock()
            .query_row("PRAGMA foreign_keys", [], |row| row.get(0))
            .unwrap()
    }

    /// The import turns the checks off for itself only: the store's other writes keep them.
    #[test]
    fn foreign_key_checks_are_back_on_after_an_import_succeeds_or_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db"), Durability::Full).unwrap();
        assert!(foreign_keys(&store));
        let items = vec![ItemRow {
            external_id: "1".into(),
            title: "One".into(),
            tags: Vec::new(),
        }];
        let event = |item: &str| ImportEvent {
            user: "u".into(),
            item: item.into(),
            kind: EventKind::Rate,
            value: 4.0,
            timestamp: 1,
        };
        let mut good = [Ok(event("1"))].into_iter();
        assert_eq!(store.import_if(&items, &mut good, false).unwrap(), Some(1));
        assert!(foreign_keys(&store));
        let mut bad = [Ok(event("1")), Ok(event("404"))].into_iter();
        assert!(store.import_if(&items, &mut bad, false).is_err());
        assert!(foreign_keys(&store));
        // And they hold: an event of a user that does not exist is refused.
        let refused = store.lock().execute(
            "INSERT INTO events (user_idx, item_idx, kind, value, timestamp) VALUES (99, 0, 'rate', 1, 1)",
            [],
        );
        assert!(refused.is_err());
    }
}

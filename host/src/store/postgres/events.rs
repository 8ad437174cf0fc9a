//! The catalog, the users and the event log in PostgreSQL.
//!
//! **Ids in commit order.** A sequence hands out ids when rows are inserted, not when their
//! transactions commit, so with two writers a reader could see id 11 committed while id 10
//! is still in flight, move its position to 11, and never learn event 10. Every transaction
//! that adds events or users therefore first takes one transaction-scoped advisory lock
//! ([`lock_keys::EVENT_LOG`]) and holds it through its commit: the next writer draws its ids
//! only after the previous one is visible, so "every event with an id above N" never skips
//! one. The lock also makes "the next user index" (`MAX(idx) + 1`) safe across nodes, which
//! dense user indices need anyway. It serializes appends cluster-wide, but each holder is a
//! whole group commit of many requests written in a handful of round trips, so an append
//! holds it for a few milliseconds (docs/architecture.md weighs this against reading below a
//! commit horizon, and docs/benchmarks.md measures it). An import or `migrate` holds it for
//! its whole run, as SQLite's write lock does: appends wait (`lock_timeout`, then the writer
//! retries for as long as their clients wait).
//!
//! **Group commit.** A group of clients' requests is first written as one batch (a few
//! statements whatever its size). If that fails, the batch is rolled back and each request
//! is written in a savepoint of its own, so one request's failure is its alone, as on SQLite.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use futures_util::{TryStreamExt, pin_mut};

use super::{PostgresStore, block_on, event_row, index, lock_keys, pool_error};
use crate::store::{
    AppendOutcome, AppendRequest, EventKind, EventLog, EventRow, EventSource,
    IDEMPOTENCY_KEY_TTL_SECS, ItemRow, StoreError, StoreResult, UserHistory, unix_now,
};

/// Events per INSERT statement of an import.
const IMPORT_CHUNK: usize = 50_000;

const EVENT_COLUMNS: &str = "id, user_idx, item_idx, kind, value, timestamp";

impl EventLog for PostgresStore {
    fn items(&self) -> StoreResult<Vec<ItemRow>> {
        self.run(async |client| {
            let rows = client
                .query(
                    "SELECT idx, external_id, title, tags FROM items ORDER BY idx",
                    &[],
                )
                .await?;
            let mut items = Vec::with_capacity(rows.len());
            for row in rows {
                let idx: i32 = row.try_get(0)?;
                if idx as usize != items.len() {
                    return Err(StoreError::Corrupt(format!(
                        "item indices are not dense at {idx}"
                    )));
                }
                let external_id: String = row.try_get(1)?;
                let tags = serde_json::from_str(row.try_get(3)?)
                    .map_err(|e| StoreError::Corrupt(format!("tags of item {external_id}: {e}")))?;
                items.push(ItemRow {
                    external_id,
                    title: row.try_get(2)?,
                    tags,
                });
            }
            Ok(items)
        })
    }

    fn users(&self) -> StoreResult<Vec<String>> {
        let users = self.users_from(0)?;
        let mut external_ids = Vec::with_capacity(users.len());
        for (idx, external_id) in users {
            if idx as usize != external_ids.len() {
                return Err(StoreError::Corrupt(format!(
                    "user indices are not dense at {idx}"
                )));
            }
            external_ids.push(external_id);
        }
        Ok(external_ids)
    }

    fn users_from(&self, from: u32) -> StoreResult<Vec<(u32, String)>> {
        self.run(async |client| {
            let statement = client
                .prepare_cached("SELECT idx, external_id FROM users WHERE idx >= $1 ORDER BY idx")
                .await?;
            let from = i32::try_from(from).unwrap_or(i32::MAX);
            let mut users = Vec::new();
            for row in client.query(&statement, &[&from]).await? {
                users.push((index(row.try_get(0)?, "user index")?, row.try_get(1)?));
            }
            Ok(users)
        })
    }

    fn import_if(
        &self,
        items: &[ItemRow],
        events: EventSource<'_>,
        only_into_empty: bool,
    ) -> StoreResult<Option<u64>> {
        self.run(async |client| {
            let transaction = client.transaction().await?;
            lock_event_log(&transaction).await?;
            if only_into_empty {
                let stored: i64 = transaction
                    .query_one("SELECT COUNT(*) FROM items", &[])
                    .await?
                    .try_get(0)?;
                if stored > 0 {
                    return Ok(None);
                }
            }
            let mut item_index: HashMap<String, i32> = upsert_items(&transaction, items)
                .await?
                .into_iter()
                .map(|(id, idx)| (id.to_string(), idx))
                .collect();
            let mut user_index: HashMap<String, i32> = HashMap::new();
            let mut added = 0;
            // A chunk at a time: its new users and unknown items resolved in one query each,
            // its events in one insert.
            let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
            loop {
                chunk.clear();
                for event in (&mut *events).take(IMPORT_CHUNK) {
                    chunk.push(event.map_err(StoreError::Input)?);
                }
                if chunk.is_empty() {
                    break;
                }
                let new_users: Vec<&str> = chunk
                    .iter()
                    .map(|event| event.user.as_str())
                    .filter(|user| !user_index.contains_key(*user))
                    .collect();
                for (user, idx) in resolve_users(&transaction, new_users.into_iter()).await? {
                    user_index.insert(user.to_string(), idx);
                }
                let mut missing: Vec<&str> = chunk
                    .iter()
                    .map(|event| event.item.as_str())
                    .filter(|item| !item_index.contains_key(*item))
                    .collect();
                missing.sort_unstable();
                missing.dedup();
                if !missing.is_empty() {
                    for row in transaction
                        .query(
                            "SELECT external_id, idx FROM items WHERE external_id = ANY($1)",
                            &[&missing],
                        )
                        .await?
                    {
                        item_index.insert(row.try_get(0)?, row.try_get(1)?);
                    }
                }
                let mut rows = EventColumns::default();
                for event in &chunk {
                    let item = *item_index.get(event.item.as_str()).ok_or_else(|| {
                        StoreError::Corrupt(format!("event refers to unknown item {}", event.item))
                    })?;
                    rows.push(
                        user_index[event.user.as_str()],
                        item,
                        event.kind,
                        event.value,
                        event.timestamp,
                    );
                }
                rows.insert(&transaction, false).await?;
                added += chunk.len() as u64;
            }
            transaction.commit().await?;
            Ok(Some(added))
        })
    }

    fn append_requests(
        &self,
        requests: &[AppendRequest<'_>],
        known_user: &dyn Fn(&str) -> Option<u32>,
    ) -> StoreResult<Vec<AppendOutcome>> {
        block_on(async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            // The whole group as one batch: about four round trips whatever its size.
            let transaction = client.transaction().await?;
            lock_event_log(&transaction).await?;
            match append_batch(&transaction, requests, known_user).await {
                Ok(outcomes) => {
                    transaction.commit().await?;
                    return Ok(outcomes);
                }
                // Gone, or a lock held past the timeout: the writer tries the group again.
                Err(error) if error.is_unavailable() || error.is_busy() => return Err(error),
                Err(_) => transaction.rollback().await?,
            }
            // Some request failed the batch: again, each request in a savepoint of its own.
            let mut transaction = client.transaction().await?;
            lock_event_log(&transaction).await?;
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                let savepoint = transaction.savepoint("one_request").await?;
                let single = std::slice::from_ref(request);
                match append_batch(&savepoint, single, known_user).await {
                    Ok(mut outcome) => {
                        savepoint.commit().await?;
                        outcomes.push(outcome.remove(0));
                    }
                    Err(error) if error.is_unavailable() || error.is_busy() => return Err(error),
                    Err(error) => {
                        savepoint.rollback().await?;
                        outcomes.push(AppendOutcome::Failed(error.to_string()));
                    }
                }
            }
            transaction.commit().await?;
            Ok(outcomes)
        })
    }

    fn expire_idempotency_keys(&self) -> StoreResult<usize> {
        let cutoff = unix_now().saturating_sub(IDEMPOTENCY_KEY_TTL_SECS) as i64;
        self.run(async |client| {
            Ok(client
                .execute(
                    "DELETE FROM idempotency_keys WHERE created_at < $1",
                    &[&cutoff],
                )
                .await? as usize)
        })
    }

    fn last_event_id(&self) -> StoreResult<i64> {
        self.run(async |client| {
            let row = client
                .query_one("SELECT COALESCE(MAX(id), 0) FROM events", &[])
                .await?;
            Ok(row.try_get(0)?)
        })
    }

    fn scan_events_after(&self, after: i64, visit: &mut dyn FnMut(&EventRow)) -> StoreResult<()> {
        self.run(async |client| {
            // Streamed: rows arrive as the server sends them, not all at once.
            let rows = client
                .query_raw(
                    &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id > $1 ORDER BY id"),
                    [&after],
                )
                .await?;
            pin_mut!(rows);
            while let Some(row) = rows.try_next().await? {
                visit(&event_row(&row)?);
            }
            Ok(())
        })
    }

    fn count_events_between(&self, after: i64, before: i64, items: u32) -> StoreResult<u64> {
        let items = i64::from(items);
        self.run(async |client| {
            let row = client
                .query_one(
                    "SELECT COUNT(*) FROM events WHERE id > $1 AND id < $2 AND item_idx < $3::int8",
                    &[&after, &before, &items],
                )
                .await?;
            Ok(row.try_get::<_, i64>(0)?.max(0) as u64)
        })
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
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE id > $1 AND id < $2 AND item_idx < $3::int8 ORDER BY id LIMIT $4"
            ),
            &[&after, &before, &i64::from(items), &limit],
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
        // LIMIT NULL: all of them.
        let last = last_events.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let mut events = self.query_events(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE id <= $1 AND timestamp >= $2 AND item_idx < $4::int8 ORDER BY id DESC LIMIT $3"
            ),
            &[&through_event, &since, &last, &i64::from(items)],
        )?;
        events.reverse();
        Ok(events)
    }

    fn user_history(&self, user: u32, items: u32, limit: usize) -> StoreResult<UserHistory> {
        let (user, items) = (i64::from(user), i64::from(items));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async |client| {
            // One snapshot for the three reads: the count, ids and items agree.
            let transaction = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let summary = transaction
                .query_one(
                    "SELECT COUNT(*), COALESCE(MAX(id), 0),
                            COALESCE(array_agg(DISTINCT item_idx), '{}')
                     FROM events WHERE user_idx = $1::int8 AND item_idx < $2::int8",
                    &[&user, &items],
                )
                .await?;
            let recent = transaction
                .query(
                    &format!(
                        "SELECT {EVENT_COLUMNS} FROM events
                         WHERE user_idx = $1::int8 AND item_idx < $2::int8
                         ORDER BY id DESC LIMIT $3"
                    ),
                    &[&user, &items, &limit],
                )
                .await?
                .iter()
                .map(event_row)
                .collect::<StoreResult<Vec<_>>>()?;
            transaction.commit().await?;
            let mut items: Vec<u32> = summary
                .try_get::<_, Vec<i32>>(2)?
                .into_iter()
                .map(|item| item.max(0) as u32)
                .collect();
            items.sort_unstable();
            Ok(UserHistory {
                count: summary.try_get::<_, i64>(0)?.max(0) as u64,
                through: summary.try_get(1)?,
                recent,
                items,
            })
        })
    }

    fn for_each_event_after(
        &self,
        after: i64,
        visit: &mut dyn FnMut(i64, &str, EventKind, f32, u64),
    ) -> StoreResult<()> {
        self.run(async |client| {
            // A cursor-less stream: rows arrive as the server sends them, not all at once.
            let rows = client
                .query_raw(
                    "SELECT e.id, u.external_id, e.kind, e.value, e.timestamp
                     FROM events e JOIN users u ON u.idx = e.user_idx
                     WHERE e.id > $1 ORDER BY e.id",
                    [&after],
                )
                .await?;
            pin_mut!(rows);
            while let Some(row) = rows.try_next().await? {
                let id: i64 = row.try_get(0)?;
                let kind: &str = row.try_get(2)?;
                let kind = EventKind::parse(kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("event {id} has kind {kind:?}")))?;
                visit(
                    id,
                    row.try_get(1)?,
                    kind,
                    row.try_get::<_, f64>(3)? as f32,
                    row.try_get::<_, i64>(4)?.max(0) as u64,
                );
            }
            Ok(())
        })
    }
}

impl PostgresStore {
    /// The events `sql` selects (`id, user_idx, item_idx, kind, value, timestamp`).
    fn query_events(
        &self,
        sql: &str,
        parameters: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<EventRow>> {
        self.run(async |client| {
            let statement = client.prepare_cached(sql).await?;
            client
                .query(&statement, parameters)
                .await?
                .iter()
                .map(event_row)
                .collect()
        })
    }
}

/// Waits for the event-log lock, held until this transaction ends (see the module doc).
async fn lock_event_log(transaction: &Transaction<'_>) -> StoreResult<()> {
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&lock_keys::EVENT_LOG])
        .await?;
    Ok(())
}

/// Writes one batch of requests: their idempotency keys, new users and events, in a few
/// statements whatever their number.
async fn append_batch(
    transaction: &Transaction<'_>,
    requests: &[AppendRequest<'_>],
    known_user: &dyn Fn(&str) -> Option<u32>,
) -> StoreResult<Vec<AppendOutcome>> {
    // Requests whose key was seen, in an earlier commit or earlier in this batch.
    enum Plan {
        Store,
        Done(AppendOutcome),
        SameAs(usize),
    }
    let keys: Vec<&str> = requests
        .iter()
        .filter_map(|request| request.idempotency.map(|(key, _)| key))
        .collect();
    let mut seen = HashMap::new();
    if !keys.is_empty() {
        let statement = transaction
            .prepare_cached(
                "SELECT key, request_hash, first_event_id, stored FROM idempotency_keys
                 WHERE key = ANY($1)",
            )
            .await?;
        for row in transaction.query(&statement, &[&keys]).await? {
            let key: String = row.try_get(0)?;
            let hash: String = row.try_get(1)?;
            let first_event_id: i64 = row.try_get(2)?;
            let stored: i64 = row.try_get(3)?;
            seen.insert(key, (hash, first_event_id, stored.max(0) as usize));
        }
    }
    let mut first_in_batch: HashMap<&str, (&str, usize)> = HashMap::new();
    let mut plans = Vec::with_capacity(requests.len());
    for (position, request) in requests.iter().enumerate() {
        let plan = match request.idempotency {
            None => Plan::Store,
            Some((key, hash)) => match seen.get(key) {
                Some((seen_hash, first_event_id, stored)) => Plan::Done(if seen_hash == hash {
                    AppendOutcome::Replayed {
                        first_event_id: *first_event_id,
                        stored: *stored,
                    }
                } else {
                    AppendOutcome::KeyReused
                }),
                None => match first_in_batch.get(key) {
                    Some(&(first_hash, first)) if first_hash == hash => Plan::SameAs(first),
                    Some(_) => Plan::Done(AppendOutcome::KeyReused),
                    None => {
                        first_in_batch.insert(key, (hash, position));
                        Plan::Store
                    }
                },
            },
        };
        plans.push(plan);
    }

    let to_store = || {
        requests
            .iter()
            .zip(&plans)
            .filter(|(_, plan)| matches!(plan, Plan::Store))
            .map(|(request, _)| request)
    };
    let unknown = to_store()
        .flat_map(|request| request.events.iter())
        .map(|event| event.user.as_str())
        .filter(|user| known_user(user).is_none());
    let resolved = resolve_users(transaction, unknown).await?;
    let mut columns = EventColumns::default();
    for event in to_store().flat_map(|request| request.events.iter()) {
        let user = match known_user(&event.user) {
            Some(user) => user as i32,
            None => resolved[event.user.as_str()],
        };
        let item = i32::try_from(event.item)
            .map_err(|_| StoreError::Corrupt(format!("item index {}", event.item)))?;
        columns.push(user, item, event.kind, event.value, event.timestamp);
    }
    let mut ids = columns.insert(transaction, true).await?.into_iter();

    let now = unix_now() as i64;
    let mut stored: Vec<Option<Vec<EventRow>>> = Vec::with_capacity(requests.len());
    let mut key_rows = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (request, plan) in requests.iter().zip(&plans) {
        if !matches!(plan, Plan::Store) {
            stored.push(None);
            continue;
        }
        let mut rows = Vec::with_capacity(request.events.len());
        for event in request.events {
            let id = ids
                .next()
                .ok_or_else(|| StoreError::Corrupt("fewer event ids than events".into()))?;
            rows.push(EventRow {
                id,
                user: known_user(&event.user)
                    .unwrap_or_else(|| resolved[event.user.as_str()] as u32),
                item: event.item,
                kind: event.kind,
                value: event.value,
                timestamp: event.timestamp,
            });
        }
        if let Some((key, hash)) = request.idempotency {
            key_rows.0.push(key);
            key_rows.1.push(hash);
            key_rows.2.push(rows.first().map_or(0, |row| row.id));
            key_rows.3.push(rows.len() as i64);
        }
        stored.push(Some(rows));
    }
    if !key_rows.0.is_empty() {
        let statement = transaction
            .prepare_cached(
                "INSERT INTO idempotency_keys (key, request_hash, first_event_id, stored, created_at)
                 SELECT k, h, f, s, $5 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[])
                     AS t(k, h, f, s)",
            )
            .await?;
        transaction
            .execute(
                &statement,
                &[&key_rows.0, &key_rows.1, &key_rows.2, &key_rows.3, &now],
            )
            .await?;
    }

    let mut outcomes = Vec::with_capacity(requests.len());
    for (position, plan) in plans.into_iter().enumerate() {
        outcomes.push(match plan {
            Plan::Store => AppendOutcome::Stored(stored[position].take().unwrap_or_default()),
            Plan::Done(outcome) => outcome,
            Plan::SameAs(first) => match &outcomes[first] {
                AppendOutcome::Stored(rows) => AppendOutcome::Replayed {
                    first_event_id: rows.first().map_or(0, |row| row.id),
                    stored: rows.len(),
                },
                other => return Err(StoreError::Corrupt(format!("replay of {other:?}"))),
            },
        });
    }
    Ok(outcomes)
}

/// The indices of `users` (external IDs, repeats allowed): those stored are looked up, the
/// others registered with the next indices (after the highest stored: the caller holds the
/// event-log lock), in order of first appearance.
async fn resolve_users<'a>(
    transaction: &Transaction<'_>,
    users: impl Iterator<Item = &'a str>,
) -> StoreResult<HashMap<&'a str, i32>> {
    let mut order = Vec::new();
    let mut indices = HashMap::new();
    for user in users {
        if indices.insert(user, -1).is_none() {
            order.push(user);
        }
    }
    if order.is_empty() {
        return Ok(indices);
    }
    let statement = transaction
        .prepare_cached("SELECT external_id, idx FROM users WHERE external_id = ANY($1)")
        .await?;
    for row in transaction.query(&statement, &[&order]).await? {
        let external_id: &str = row.try_get(0)?;
        if let Some(index) = indices.get_mut(external_id) {
            *index = row.try_get(1)?;
        }
    }
    let (mut new_indices, mut new_ids) = (Vec::new(), Vec::new());
    let mut next_user: Option<i32> = None;
    for user in order {
        let index = indices.get_mut(user).expect("every user is in the map");
        if *index < 0 {
            let next = match next_user {
                Some(next) => next,
                None => transaction
                    .query_one("SELECT COALESCE(MAX(idx) + 1, 0) FROM users", &[])
                    .await?
                    .try_get(0)?,
            };
            *index = next;
            next_user = Some(
                next.checked_add(1)
                    .ok_or_else(|| StoreError::Corrupt("user indices exhausted".into()))?,
            );
            new_indices.push(*index);
            new_ids.push(user);
        }
    }
    if !new_ids.is_empty() {
        let statement = transaction
            .prepare_cached(
                "INSERT INTO users (idx, external_id, created_at)
                 SELECT i, e, $3 FROM UNNEST($1::int4[], $2::text[]) AS t(i, e)",
            )
            .await?;
        transaction
            .execute(&statement, &[&new_indices, &new_ids, &(unix_now() as i64)])
            .await?;
    }
    Ok(indices)
}

/// Upserts items by external ID; new ones get the next dense indices. Returns every item of
/// the batch with its index.
async fn upsert_items<'a>(
    transaction: &Transaction<'_>,
    items: &'a [ItemRow],
) -> StoreResult<HashMap<&'a str, i32>> {
    let mut indices = HashMap::new();
    if items.is_empty() {
        return Ok(indices);
    }
    let by_id: HashMap<&str, &'a ItemRow> = items
        .iter()
        .map(|item| (item.external_id.as_str(), item))
        .collect();
    let ids: Vec<&str> = by_id.keys().copied().collect();
    for row in transaction
        .query(
            "SELECT external_id, idx FROM items WHERE external_id = ANY($1)",
            &[&ids],
        )
        .await?
    {
        let external_id: &str = row.try_get(0)?;
        if let Some(item) = by_id.get(external_id) {
            indices.insert(item.external_id.as_str(), row.try_get::<_, i32>(1)?);
        }
    }
    let mut next: i32 = transaction
        .query_one("SELECT COALESCE(MAX(idx) + 1, 0) FROM items", &[])
        .await?
        .try_get(0)?;
    // The last occurrence of an item in the batch gives its title and tags.
    let mut latest: HashMap<&str, &ItemRow> = HashMap::new();
    let mut order = Vec::new();
    for item in items {
        if latest.insert(item.external_id.as_str(), item).is_none() {
            order.push(item.external_id.as_str());
        }
    }
    let (mut new_idx, mut new_ids, mut new_titles, mut new_tags) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut old_idx, mut old_titles, mut old_tags) = (Vec::new(), Vec::new(), Vec::new());
    for external_id in order {
        let item = latest[external_id];
        let tags =
            serde_json::to_string(&item.tags).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        match indices.get(external_id) {
            Some(&idx) => {
                old_idx.push(idx);
                old_titles.push(item.title.as_str());
                old_tags.push(tags);
            }
            None => {
                indices.insert(external_id, next);
                new_idx.push(next);
                new_ids.push(external_id);
                new_titles.push(item.title.as_str());
                new_tags.push(tags);
                next += 1;
            }
        }
    }
    if !new_idx.is_empty() {
        transaction
            .execute(
                "INSERT INTO items (idx, external_id, title, tags)
                 SELECT * FROM UNNEST($1::int4[], $2::text[], $3::text[], $4::text[])",
                &[&new_idx, &new_ids, &new_titles, &new_tags],
            )
            .await?;
    }
    if !old_idx.is_empty() {
        transaction
            .execute(
                "UPDATE items SET title = t.title, tags = t.tags
                 FROM UNNEST($1::int4[], $2::text[], $3::text[]) AS t(idx, title, tags)
                 WHERE items.idx = t.idx",
                &[&old_idx, &old_titles, &old_tags],
            )
            .await?;
    }
    Ok(indices)
}

/// Events as columns, for one multi-row INSERT.
#[derive(Default)]
struct EventColumns {
    users: Vec<i32>,
    items: Vec<i32>,
    kinds: Vec<&'static str>,
    values: Vec<f64>,
    timestamps: Vec<i64>,
}

impl EventColumns {
    fn push(&mut self, user: i32, item: i32, kind: EventKind, value: f32, timestamp: u64) {
        self.users.push(user);
        self.items.push(item);
        self.kinds.push(kind.as_str());
        self.values.push(f64::from(value));
        self.timestamps
            .push(i64::try_from(timestamp).unwrap_or(i64::MAX));
    }

    /// Inserts the rows in order; with `returning`, their ids in the same order.
    async fn insert(
        &self,
        transaction: &Transaction<'_>,
        returning: bool,
    ) -> StoreResult<Vec<i64>> {
        if self.users.is_empty() {
            return Ok(Vec::new());
        }
        // ORDER BY the input position: rows are inserted, and draw their ids, in that order,
        // so the ids sorted ascending are the ids of the rows in input order.
        let sql = format!(
            "INSERT INTO events (user_idx, item_idx, kind, value, timestamp)
             SELECT u, i, k, v, t
             FROM UNNEST($1::int4[], $2::int4[], $3::text[], $4::float8[], $5::int8[])
                 WITH ORDINALITY AS e(u, i, k, v, t, n)
             ORDER BY n{}",
            if returning { " RETURNING id" } else { "" }
        );
        let statement = transaction.prepare_cached(&sql).await?;
        let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &self.users,
            &self.items,
            &self.kinds,
            &self.values,
            &self.timestamps,
        ];
        if !returning {
            transaction.execute(&statement, &parameters).await?;
            return Ok(Vec::new());
        }
        let mut ids = transaction
            .query(&statement, &parameters)
            .await?
            .iter()
            .map(|row| row.try_get::<_, i64>(0))
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        Ok(ids)
    }
}

//! Durable storage in SQLite: items, users, events, model snapshots, the learning record.
//!
//! A `Store` is one connection behind a mutex: SQLite serializes writers anyway, and every
//! statement here is short. The server opens two: one for the event writer (group commits of
//! live events, `events.rs`) and one for everything else, so that reads and snapshot writes do
//! not queue behind event ingestion. WAL mode lets readers, the other connection and the
//! `import` command work while a server runs. `synchronous = FULL`: a commit is on disk before
//! the client is told, so an acknowledged event survives a power cut, not just a crash.

mod events;
mod experiments;
mod learning;
mod migrations;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use thiserror::Error;

pub use events::{AppendOutcome, AppendRequest, IDEMPOTENCY_KEY_TTL_SECS, NewEvent};
pub use experiments::{ExposureKey, ExposureRow, StickyRow};
pub use learning::{LearningRun, VersionRow};
pub use migrations::latest_version as schema_version;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt row in the database: {0}")]
    Corrupt(String),
    #[error(
        "database schema version {found} is newer than this build of recohost understands ({supported})"
    )]
    TooNew { found: usize, supported: usize },
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Whether another connection held the lock for longer than the busy timeout: the same
    /// statement may succeed later.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            Self::Sqlite(rusqlite::Error::SqliteFailure(error, _))
                if matches!(
                    error.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                )
        )
    }
}

/// What kind of feedback an event is; stored as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Rate,
    Click,
    View,
    Purchase,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rate => "rate",
            Self::Click => "click",
            Self::View => "view",
            Self::Purchase => "purchase",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "rate" => Some(Self::Rate),
            "click" => Some(Self::Click),
            "view" => Some(Self::View),
            "purchase" => Some(Self::Purchase),
            _ => None,
        }
    }
}

/// An item row.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemRow {
    pub external_id: String,
    pub title: String,
    pub tags: Vec<String>,
}

/// An event row, with dense indices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventRow {
    pub id: i64,
    pub user: u32,
    pub item: u32,
    pub kind: EventKind,
    pub value: f32,
    pub timestamp: u64,
}

/// A stored model snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotRow {
    pub plugin: String,
    pub version: u64,
    pub created_at: u64,
    pub fingerprint: String,
    pub through_event: i64,
    pub bytes: Vec<u8>,
}

/// Counts for `/health`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StoreCounts {
    pub items: u64,
    pub users: u64,
    pub events: u64,
}

pub struct Store {
    connection: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> StoreResult<Self> {
        Self::open_with_synchronous(path, "FULL")
    }

    /// [`Store::open`] with another `PRAGMA synchronous` for this connection (`FULL` is what
    /// acknowledged data needs).
    pub fn open_with_synchronous(path: &Path, synchronous: &str) -> StoreResult<Self> {
        let mut connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", synchronous)?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // 64 MiB of page cache (the default is 2 MiB): event ingestion otherwise re-reads the
        // B-tree pages it just wrote once the database outgrows the cache.
        connection.pragma_update(None, "cache_size", -65_536)?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let found: usize = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if found > migrations::latest_version() {
            return Err(StoreError::TooNew {
                found,
                supported: migrations::latest_version(),
            });
        }
        migrations::migrate(&mut connection)?;
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back), so a poisoned lock is safe to keep using.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This database's random identity, made on first use and kept for its life: model
    /// versions count per database, so a cache shared by several servers (Redis) must tell
    /// their entries apart by it.
    pub fn store_id(&self) -> StoreResult<String> {
        let connection = self.lock();
        let fresh: u128 = rand::random();
        connection.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?1)",
            [format!("{fresh:032x}")],
        )?;
        Ok(
            connection.query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |row| {
                row.get(0)
            })?,
        )
    }

    pub fn counts(&self) -> StoreResult<StoreCounts> {
        let connection = self.lock();
        let count = |table: &str| -> rusqlite::Result<u64> {
            connection.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })
        };
        Ok(StoreCounts {
            items: count("items")?,
            users: count("users")?,
            events: count("events")?,
        })
    }

    /// All items, by dense index.
    pub fn items(&self) -> StoreResult<Vec<ItemRow>> {
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

    /// All users' external IDs, by dense index.
    pub fn users(&self) -> StoreResult<Vec<String>> {
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

    /// Events with an id above `after`, oldest first.
    pub fn events_after(&self, after: i64) -> StoreResult<Vec<EventRow>> {
        self.query_events(
            "SELECT id, user_idx, item_idx, kind, value, timestamp FROM events WHERE id > ?1 ORDER BY id",
            &[&after],
        )
    }

    /// The events `sql` selects (`id, user_idx, item_idx, kind, value, timestamp`).
    fn query_events(
        &self,
        sql: &str,
        parameters: &[&dyn rusqlite::ToSql],
    ) -> StoreResult<Vec<EventRow>> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(sql)?;
        let rows = statement.query_map(parameters, |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, u32>(1)?,
                row.get::<_, u32>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, f64>(4)?,
                row.get::<_, i64>(5)?,
            ))
        })?;
        let mut events = Vec::new();
        for row in rows {
            let (id, user, item, kind, value, timestamp) = row?;
            let kind = EventKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("event {id} has kind {kind:?}")))?;
            events.push(EventRow {
                id,
                user,
                item,
                kind,
                value: value as f32,
                timestamp: timestamp.max(0) as u64,
            });
        }
        Ok(events)
    }

    /// Id of the newest event, 0 when there are none.
    pub fn last_event_id(&self) -> StoreResult<i64> {
        let connection = self.lock();
        Ok(
            connection.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |row| {
                row.get(0)
            })?,
        )
    }

    /// Writes a whole dataset (items, users, events) in one transaction: all or nothing.
    /// Items and users already present (same external ID) keep their index; item titles and
    /// tags are updated. Returns the number of events added.
    pub fn import(&self, batch: &ImportBatch) -> StoreResult<u64> {
        let mut connection = self.lock();
        // IMMEDIATE: the write lock from the start, so a running server's writer cannot
        // commit between this transaction's reads and its writes (in WAL mode that would
        // fail the import with SQLITE_BUSY_SNAPSHOT instead of waiting).
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut item_index = std::collections::HashMap::new();
        let mut user_index = std::collections::HashMap::new();
        {
            let mut next_item: i64 = transaction.query_row(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM items",
                [],
                |row| row.get(0),
            )?;
            let mut find_item =
                transaction.prepare("SELECT idx FROM items WHERE external_id = ?1")?;
            let mut insert_item = transaction.prepare(
                "INSERT INTO items (idx, external_id, title, tags) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut update_item =
                transaction.prepare("UPDATE items SET title = ?2, tags = ?3 WHERE idx = ?1")?;
            for item in &batch.items {
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
                        insert_item.execute(params![
                            next_item,
                            item.external_id,
                            item.title,
                            tags
                        ])?;
                        next_item += 1;
                        next_item - 1
                    }
                };
                item_index.insert(item.external_id.as_str(), idx);
            }
            let mut next_user: i64 = transaction.query_row(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM users",
                [],
                |row| row.get(0),
            )?;
            let mut find_user =
                transaction.prepare("SELECT idx FROM users WHERE external_id = ?1")?;
            let mut insert_user = transaction
                .prepare("INSERT INTO users (idx, external_id, created_at) VALUES (?1, ?2, ?3)")?;
            let now = unix_now();
            for event in &batch.events {
                if user_index.contains_key(event.user.as_str()) {
                    continue;
                }
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
                user_index.insert(event.user.as_str(), idx);
            }
            let mut insert_event = transaction.prepare(
                "INSERT INTO events (user_idx, item_idx, kind, value, timestamp) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for event in &batch.events {
                let item = match item_index.get(event.item.as_str()) {
                    Some(&idx) => idx,
                    None => find_item
                        .query_row([&event.item], |row| row.get(0))
                        .optional()?
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!(
                                "event refers to unknown item {}",
                                event.item
                            ))
                        })?,
                };
                let user = user_index[event.user.as_str()];
                insert_event.execute(params![
                    user,
                    item,
                    event.kind.as_str(),
                    f64::from(event.value),
                    event.timestamp as i64
                ])?;
            }
        }
        transaction.commit()?;
        Ok(batch.events.len() as u64)
    }

    /// The newest snapshot of `plugin`, if any.
    pub fn latest_snapshot(&self, plugin: &str) -> StoreResult<Option<SnapshotRow>> {
        let connection = self.lock();
        let row = connection
            .query_row(
                "SELECT plugin, version, created_at, fingerprint, through_event, bytes FROM snapshots
                 WHERE plugin = ?1 ORDER BY version DESC LIMIT 1",
                [plugin],
                |row| {
                    Ok(SnapshotRow {
                        plugin: row.get(0)?,
                        version: row.get::<_, i64>(1)? as u64,
                        created_at: row.get::<_, i64>(2)? as u64,
                        fingerprint: row.get(3)?,
                        through_event: row.get(4)?,
                        bytes: row.get(5)?,
                    })
                },
            )
            .optional()?;
        Ok(row)
    }

    /// Version of the newest stored snapshot of `plugin`, if any.
    pub fn latest_snapshot_version(&self, plugin: &str) -> StoreResult<Option<u64>> {
        let connection = self.lock();
        let version: Option<i64> = connection.query_row(
            "SELECT MAX(version) FROM snapshots WHERE plugin = ?1",
            [plugin],
            |row| row.get(0),
        )?;
        Ok(version.map(|v| v as u64))
    }

    /// Stores a snapshot and keeps only the newest `keep` of its plugin.
    pub fn save_snapshot(&self, snapshot: &SnapshotRow, keep: u64) -> StoreResult<()> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        transaction.execute(
            "INSERT INTO snapshots (plugin, version, created_at, fingerprint, through_event, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                snapshot.plugin,
                snapshot.version as i64,
                snapshot.created_at as i64,
                snapshot.fingerprint,
                snapshot.through_event,
                snapshot.bytes
            ],
        )?;
        transaction.execute(
            "DELETE FROM snapshots WHERE plugin = ?1 AND version <= ?2",
            params![snapshot.plugin, snapshot.version as i64 - keep as i64],
        )?;
        transaction.commit()?;
        Ok(())
    }
}

/// A dataset to import: items, and events naming users and items by external ID.
#[derive(Debug, Default)]
pub struct ImportBatch {
    pub items: Vec<ItemRow>,
    pub events: Vec<ImportEvent>,
}

#[derive(Debug, Clone)]
pub struct ImportEvent {
    pub user: String,
    pub item: String,
    pub kind: EventKind,
    pub value: f32,
    pub timestamp: u64,
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> ImportBatch {
        let items = (1..=3)
            .map(|i| ItemRow {
                external_id: i.to_string(),
                title: format!("Item {i}"),
                tags: vec!["drama".into()],
            })
            .collect();
        let events = vec![
            ImportEvent {
                user: "u1".into(),
                item: "2".into(),
                kind: EventKind::Rate,
                value: 4.0,
                timestamp: 10,
            },
            ImportEvent {
                user: "u2".into(),
                item: "3".into(),
                kind: EventKind::Click,
                value: 1.0,
                timestamp: 11,
            },
            ImportEvent {
                user: "u1".into(),
                item: "3".into(),
                kind: EventKind::View,
                value: 1.0,
                timestamp: 12,
            },
        ];
        ImportBatch { items, events }
    }

    #[test]
    fn import_assigns_dense_indices_and_is_idempotent_for_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.import(&batch()).unwrap(), 3);
        assert_eq!(store.import(&batch()).unwrap(), 3);
        let items = store.items().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].external_id, "2");
        assert_eq!(
            store.users().unwrap(),
            vec!["u1".to_string(), "u2".to_string()]
        );
        let events = store.events_after(0).unwrap();
        assert_eq!(events.len(), 6);
        assert_eq!(
            (events[0].user, events[0].item, events[0].kind),
            (0, 1, EventKind::Rate)
        );
        assert_eq!(store.last_event_id().unwrap(), 6);
        assert_eq!(store.events_after(5).unwrap().len(), 1);
    }

    #[test]
    fn import_of_an_event_for_an_unknown_item_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let mut bad = batch();
        bad.events.push(ImportEvent {
            user: "u9".into(),
            item: "404".into(),
            kind: EventKind::Click,
            value: 1.0,
            timestamp: 1,
        });
        assert!(store.import(&bad).is_err());
        assert_eq!(store.counts().unwrap().items, 0);
        assert_eq!(store.counts().unwrap().events, 0);
    }

    #[test]
    fn snapshots_keep_the_newest_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        for version in 1..=5 {
            let row = SnapshotRow {
                plugin: "p".into(),
                version,
                created_at: 0,
                fingerprint: "f".into(),
                through_event: version as i64,
                bytes: vec![version as u8],
            };
            store.save_snapshot(&row, 2).unwrap();
        }
        let latest = store.latest_snapshot("p").unwrap().unwrap();
        assert_eq!((latest.version, latest.bytes.clone()), (5, vec![5]));
        assert!(store.latest_snapshot("q").unwrap().is_none());
    }

    #[test]
    fn the_store_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let first = Store::open(&path).unwrap().store_id().unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(Store::open(&path).unwrap().store_id().unwrap(), first);
        let other = Store::open(&dir.path().join("other"))
            .unwrap()
            .store_id()
            .unwrap();
        assert_ne!(other, first);
    }

    #[test]
    fn reopening_keeps_data_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        Store::open(&path).unwrap().import(&batch()).unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.counts().unwrap().events, 3);
    }
}

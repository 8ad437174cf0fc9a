//! The embedded engine: one SQLite file, one node.
//!
//! A `SqliteStore` is one connection behind a mutex: SQLite serializes writers anyway, and
//! every statement here is short. The server opens several: one for the event writer (group
//! commits of live events), one for the exposure log, and one for everything else, so that
//! reads and snapshot writes do not queue behind event ingestion. WAL mode lets readers, the
//! other connections and the `import` command work while a server runs. With
//! [`Durability::Full`] (`synchronous = FULL`) a commit is on disk before the client is told,
//! so an acknowledged event survives a power cut, not just a crash.

mod events;
mod experiments;
mod learning;
mod leases;
mod migrations;
mod monitoring;
mod plugin_sets;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::Connection;

use super::{Backend, Durability, EventKind, EventRow, StoreCounts, StoreError, StoreResult};

pub struct SqliteStore {
    connection: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path, durability: Durability) -> StoreResult<Self> {
        // NORMAL in WAL mode: safe from a crash of the process; only a power cut can lose the
        // last commits.
        let synchronous = match durability {
            Durability::Full => "FULL",
            Durability::Relaxed => "NORMAL",
        };
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

    pub(in crate::store) fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back), so a poisoned lock is safe to keep using.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Backend for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn schema_version(&self) -> StoreResult<usize> {
        Ok(self
            .lock()
            .query_row("PRAGMA user_version", [], |row| row.get(0))?)
    }

    fn store_id(&self) -> StoreResult<String> {
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

    fn counts(&self) -> StoreResult<StoreCounts> {
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
}

/// The event `row` holds (`id, user_idx, item_idx, kind, value, timestamp`).
fn event_row(row: &rusqlite::Row<'_>) -> StoreResult<EventRow> {
    let id: i64 = row.get(0)?;
    // Borrowed, not a String: start-up reads every event through here.
    let kind = row.get_ref(3)?.as_str().map_err(|error| {
        StoreError::Corrupt(format!("event {id}: its kind is not text ({error})"))
    })?;
    let kind = EventKind::parse(kind)
        .ok_or_else(|| StoreError::Corrupt(format!("event {id} has kind {kind:?}")))?;
    Ok(EventRow {
        id,
        user: row.get(1)?,
        item: row.get(2)?,
        kind,
        value: row.get::<_, f64>(4)? as f32,
        timestamp: row.get::<_, i64>(5)?.max(0) as u64,
    })
}

//! Leases in SQLite (one node, but the same rules: `recohost` processes sharing a file agree),
//! and announcements, which on one node have nobody to reach.

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::store::{Fence, LeaseRow, Leases, StoreResult};

/// The database's clock, in Unix milliseconds.
const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

impl Leases for SqliteStore {
    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        duration_ms: u64,
    ) -> StoreResult<Option<u64>> {
        let duration = i64::try_from(duration_ms).unwrap_or(i64::MAX);
        let term: Option<i64> = self
            .lock()
            .prepare_cached(&format!(
                "INSERT INTO leases (name, holder, term, expires_at_ms)
                 VALUES (?1, ?2, 1, {NOW_MS} + ?3)
                 ON CONFLICT (name) DO UPDATE SET
                     term = CASE WHEN leases.holder = excluded.holder THEN leases.term
                                 ELSE leases.term + 1 END,
                     holder = excluded.holder,
                     expires_at_ms = excluded.expires_at_ms
                 WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= {NOW_MS}
                 RETURNING term"
            ))?
            .query_row(params![name, holder, duration], |row| row.get(0))
            .optional()?;
        Ok(term.map(|term| term.max(0) as u64))
    }

    fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        self.lock().execute(
            "UPDATE leases SET expires_at_ms = 0 WHERE name = ?1 AND holder = ?2",
            params![name, holder],
        )?;
        Ok(())
    }

    fn lease(&self, name: &str) -> StoreResult<Option<LeaseRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!(
                    "SELECT holder, term, MAX(expires_at_ms - {NOW_MS}, 0) FROM leases
                     WHERE name = ?1"
                ),
                [name],
                |row| {
                    Ok(LeaseRow {
                        holder: row.get(0)?,
                        term: row.get::<_, i64>(1)?.max(0) as u64,
                        remaining_ms: row.get::<_, i64>(2)?.max(0) as u64,
                    })
                },
            )
            .optional()?)
    }
}

impl crate::store::Announcements for SqliteStore {
    fn announce(&self, _channel: &'static str, _payload: &str) -> StoreResult<()> {
        Ok(())
    }

    fn listen(&self, _channel: &'static str) -> StoreResult<Box<dyn crate::store::Listener>> {
        Ok(Box::new(Nobody))
    }
}

/// One node: no announcement ever comes.
struct Nobody;

impl crate::store::Listener for Nobody {
    fn wait(&self, timeout: std::time::Duration) -> StoreResult<bool> {
        std::thread::sleep(timeout);
        Ok(false)
    }
}

/// Whether `fence`'s holder holds its lease under its term, unexpired (inside the caller's
/// write transaction: no one can take the lease before it commits).
pub(super) fn holds(connection: &rusqlite::Connection, fence: &Fence) -> StoreResult<bool> {
    let term = i64::try_from(fence.term).unwrap_or(i64::MAX);
    Ok(connection
        .query_row(
            &format!(
                "SELECT 1 FROM leases WHERE name = ?1 AND holder = ?2 AND term = ?3
                 AND expires_at_ms > {NOW_MS}"
            ),
            params![fence.lease, fence.holder, term],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

//! Model monitoring's records in SQLite: lists served, windows, alerts.

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::store::{AlertRow, MonitoringRecord, ServedListRow, StoreResult, served_list_batches};

impl MonitoringRecord for SqliteStore {
    fn append_served_lists(&self, lists: &[ServedListRow]) -> StoreResult<()> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO served_list_batches (newest_at_ms, lists, body) VALUES (?1, ?2, ?3)",
            )?;
            for batch in served_list_batches::encode(lists) {
                insert.execute(params![
                    batch.newest_at_ms.min(i64::MAX as u64) as i64,
                    batch.lists,
                    batch.body
                ])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    fn served_lists_after(&self, after: i64, limit: usize) -> StoreResult<Vec<ServedListRow>> {
        let connection = self.lock();
        // The batches holding a list above `after` (the first may hold older ones too);
        // every batch holds at least one list, so `limit` batches hold enough.
        let mut select = connection.prepare_cached(
            "SELECT id, body FROM served_list_batches
             WHERE id >= ?1 AND id * ?2 + lists - 1 > ?3 ORDER BY id LIMIT ?4",
        )?;
        let first = served_list_batches::first_batch_after(after);
        let mut rows = select.query(params![
            first,
            served_list_batches::LISTS_PER_BATCH,
            after,
            limit.min(i64::MAX as usize) as i64
        ])?;
        let mut lists = Vec::new();
        while lists.len() < limit
            && let Some(row) = rows.next()?
        {
            let body = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            served_list_batches::decode(row.get(0)?, body, after, limit, &mut lists)?;
        }
        Ok(lists)
    }

    fn last_served_list_id(&self) -> StoreResult<i64> {
        let newest: Option<(i64, i64)> = self
            .lock()
            .query_row(
                "SELECT id, lists FROM served_list_batches ORDER BY id DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        Ok(newest.map_or(0, |(batch, lists)| {
            served_list_batches::last_list_id(batch, lists)
        }))
    }

    fn append_monitoring_window(&self, at_ms: u64, body: &str) -> StoreResult<()> {
        self.lock().execute(
            "INSERT INTO monitoring_windows (at_ms, body) VALUES (?1, ?2)",
            params![at_ms as i64, body],
        )?;
        Ok(())
    }

    fn monitoring_windows(&self, since_ms: u64, limit: usize) -> StoreResult<Vec<(u64, String)>> {
        let connection = self.lock();
        let mut select = connection.prepare_cached(
            "SELECT at_ms, body FROM monitoring_windows WHERE at_ms >= ?1
             ORDER BY id DESC LIMIT ?2",
        )?;
        let mut rows = select
            .query_map(
                params![since_ms as i64, limit.min(i64::MAX as usize) as i64],
                |row| Ok((row.get::<_, i64>(0)?.max(0) as u64, row.get(1)?)),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.reverse();
        Ok(rows)
    }

    fn raise_alert(&self, alert: &str, at_ms: u64, body: &str) -> StoreResult<i64> {
        let connection = self.lock();
        connection.execute(
            "INSERT INTO alerts (alert, raised_at_ms, body) VALUES (?1, ?2, ?3)",
            params![alert, at_ms as i64, body],
        )?;
        Ok(connection.last_insert_rowid())
    }

    fn resolve_alert(&self, id: i64, at_ms: u64, body: &str) -> StoreResult<()> {
        self.lock().execute(
            "UPDATE alerts SET resolved_at_ms = ?2, body = ?3 WHERE id = ?1",
            params![id, at_ms as i64, body],
        )?;
        Ok(())
    }

    fn alerts(&self, resolved_since_ms: u64, limit: usize) -> StoreResult<Vec<AlertRow>> {
        let connection = self.lock();
        let mut select = connection.prepare_cached(
            "SELECT id, alert, raised_at_ms, resolved_at_ms, body FROM alerts
             WHERE resolved_at_ms IS NULL OR resolved_at_ms >= ?1
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = select
            .query_map(
                params![
                    resolved_since_ms.min(i64::MAX as u64) as i64,
                    limit.min(i64::MAX as usize) as i64
                ],
                |row| {
                    Ok(AlertRow {
                        id: row.get(0)?,
                        alert: row.get(1)?,
                        raised_at_ms: row.get::<_, i64>(2)?.max(0) as u64,
                        resolved_at_ms: row.get::<_, Option<i64>>(3)?.map(|v| v.max(0) as u64),
                        body: row.get(4)?,
                    })
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn expire_monitoring(&self, lists_before_ms: u64, before_ms: u64) -> StoreResult<u64> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let before = before_ms.min(i64::MAX as u64) as i64;
        let lists_before = lists_before_ms.min(i64::MAX as u64) as i64;
        let mut deleted = transaction.execute(
            "DELETE FROM served_list_batches WHERE newest_at_ms < ?1",
            [lists_before],
        )?;
        // Lists stored one by one before migration 15 (or by an older node meanwhile).
        deleted +=
            transaction.execute("DELETE FROM served_lists WHERE at_ms < ?1", [lists_before])?;
        deleted +=
            transaction.execute("DELETE FROM monitoring_windows WHERE at_ms < ?1", [before])?;
        deleted += transaction.execute(
            "DELETE FROM alerts WHERE resolved_at_ms IS NOT NULL AND resolved_at_ms < ?1",
            [before],
        )?;
        transaction.commit()?;
        Ok(deleted as u64)
    }
}

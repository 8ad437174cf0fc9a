//! Model monitoring's records in SQLite: lists served, windows, alerts.

use rusqlite::params;

use super::SqliteStore;
use crate::store::{
    AlertRow, MonitoringRecord, ServedListRow, StoreResult, bytes_to_f32s, bytes_to_u32s,
    f32s_to_bytes, u32s_to_bytes,
};

impl MonitoringRecord for SqliteStore {
    fn append_served_lists(&self, lists: &[ServedListRow]) -> StoreResult<()> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO served_lists
                     (at_ms, user_id, plugin, model_version, after_event, items, scores)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for list in lists {
                insert.execute(params![
                    list.at_ms as i64,
                    list.user_id,
                    list.plugin,
                    list.model_version as i64,
                    list.after_event,
                    u32s_to_bytes(&list.items),
                    f32s_to_bytes(&list.scores),
                ])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    fn served_lists_after(&self, after: i64, limit: usize) -> StoreResult<Vec<ServedListRow>> {
        let connection = self.lock();
        let mut select = connection.prepare_cached(
            "SELECT id, at_ms, user_id, plugin, model_version, after_event, items, scores
             FROM served_lists WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = select
            .query_map(params![after, limit.min(i64::MAX as usize) as i64], |row| {
                Ok(ServedListRow {
                    id: row.get(0)?,
                    at_ms: row.get::<_, i64>(1)?.max(0) as u64,
                    user_id: row.get(2)?,
                    plugin: row.get(3)?,
                    model_version: row.get::<_, i64>(4)?.max(0) as u64,
                    after_event: row.get(5)?,
                    items: bytes_to_u32s(&row.get::<_, Vec<u8>>(6)?),
                    scores: bytes_to_f32s(&row.get::<_, Vec<u8>>(7)?),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn last_served_list_id(&self) -> StoreResult<i64> {
        Ok(self
            .lock()
            .query_row("SELECT COALESCE(MAX(id), 0) FROM served_lists", [], |row| {
                row.get(0)
            })?)
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
        let mut deleted =
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

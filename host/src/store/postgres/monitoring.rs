//! Model monitoring's records in PostgreSQL: lists served, windows, alerts.

use super::{PostgresStore, lock_keys, to_i64};
use crate::store::{
    AlertRow, MonitoringRecord, ServedListRow, StoreResult, bytes_to_f32s, bytes_to_u32s,
    f32s_to_bytes, u32s_to_bytes,
};

impl MonitoringRecord for PostgresStore {
    fn append_served_lists(&self, lists: &[ServedListRow]) -> StoreResult<()> {
        if lists.is_empty() {
            return Ok(());
        }
        let at: Vec<i64> = lists.iter().map(|l| to_i64(l.at_ms)).collect();
        let users: Vec<&str> = lists.iter().map(|l| l.user_id.as_str()).collect();
        let plugins: Vec<&str> = lists.iter().map(|l| l.plugin.as_str()).collect();
        let versions: Vec<i64> = lists.iter().map(|l| to_i64(l.model_version)).collect();
        let after: Vec<i64> = lists.iter().map(|l| l.after_event).collect();
        let items: Vec<Vec<u8>> = lists.iter().map(|l| u32s_to_bytes(&l.items)).collect();
        let scores: Vec<Vec<u8>> = lists.iter().map(|l| f32s_to_bytes(&l.scores)).collect();
        self.run(async |client| {
            let transaction = client.transaction().await?;
            // Ids in commit order (see `lock_keys::SERVED_LISTS`); one statement per batch.
            transaction
                .execute(
                    "SELECT pg_advisory_xact_lock($1)",
                    &[&lock_keys::SERVED_LISTS],
                )
                .await?;
            transaction
                .execute(
                    "INSERT INTO served_lists
                         (at_ms, user_id, plugin, model_version, after_event, items, scores)
                     SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[],
                                          $5::int8[], $6::bytea[], $7::bytea[])",
                    &[&at, &users, &plugins, &versions, &after, &items, &scores],
                )
                .await?;
            transaction.commit().await?;
            Ok(())
        })
    }

    fn served_lists_after(&self, after: i64, limit: usize) -> StoreResult<Vec<ServedListRow>> {
        let limit = to_i64(limit as u64);
        self.run(async |client| {
            client
                .query(
                    "SELECT id, at_ms, user_id, plugin, model_version, after_event, items, scores
                     FROM served_lists WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&after, &limit],
                )
                .await?
                .iter()
                .map(|row| {
                    Ok(ServedListRow {
                        id: row.try_get(0)?,
                        at_ms: row.try_get::<_, i64>(1)?.max(0) as u64,
                        user_id: row.try_get(2)?,
                        plugin: row.try_get(3)?,
                        model_version: row.try_get::<_, i64>(4)?.max(0) as u64,
                        after_event: row.try_get(5)?,
                        items: bytes_to_u32s(row.try_get(6)?),
                        scores: bytes_to_f32s(row.try_get(7)?),
                    })
                })
                .collect()
        })
    }

    fn last_served_list_id(&self) -> StoreResult<i64> {
        self.run(async |client| {
            let row = client
                .query_one("SELECT COALESCE(MAX(id), 0) FROM served_lists", &[])
                .await?;
            Ok(row.try_get(0)?)
        })
    }

    fn append_monitoring_window(&self, at_ms: u64, body: &str) -> StoreResult<()> {
        self.run(async |client| {
            client
                .execute(
                    "INSERT INTO monitoring_windows (at_ms, body) VALUES ($1, $2)",
                    &[&to_i64(at_ms), &body],
                )
                .await?;
            Ok(())
        })
    }

    fn monitoring_windows(&self, since_ms: u64, limit: usize) -> StoreResult<Vec<(u64, String)>> {
        let limit = to_i64(limit as u64);
        self.run(async |client| {
            let mut rows = client
                .query(
                    "SELECT at_ms, body FROM monitoring_windows WHERE at_ms >= $1
                     ORDER BY id DESC LIMIT $2",
                    &[&to_i64(since_ms), &limit],
                )
                .await?
                .iter()
                .map(|row| Ok((row.try_get::<_, i64>(0)?.max(0) as u64, row.try_get(1)?)))
                .collect::<StoreResult<Vec<_>>>()?;
            rows.reverse();
            Ok(rows)
        })
    }

    fn raise_alert(&self, alert: &str, at_ms: u64, body: &str) -> StoreResult<i64> {
        self.run(async |client| {
            let row = client
                .query_one(
                    "INSERT INTO alerts (alert, raised_at_ms, body) VALUES ($1, $2, $3)
                     RETURNING id",
                    &[&alert, &to_i64(at_ms), &body],
                )
                .await?;
            Ok(row.try_get(0)?)
        })
    }

    fn resolve_alert(&self, id: i64, at_ms: u64, body: &str) -> StoreResult<()> {
        self.run(async |client| {
            client
                .execute(
                    "UPDATE alerts SET resolved_at_ms = $2, body = $3 WHERE id = $1",
                    &[&id, &to_i64(at_ms), &body],
                )
                .await?;
            Ok(())
        })
    }

    fn alerts(&self, resolved_since_ms: u64, limit: usize) -> StoreResult<Vec<AlertRow>> {
        let limit = to_i64(limit as u64);
        self.run(async |client| {
            client
                .query(
                    "SELECT id, alert, raised_at_ms, resolved_at_ms, body FROM alerts
                     WHERE resolved_at_ms IS NULL OR resolved_at_ms >= $1
                     ORDER BY id DESC LIMIT $2",
                    &[&to_i64(resolved_since_ms), &limit],
                )
                .await?
                .iter()
                .map(|row| {
                    Ok(AlertRow {
                        id: row.try_get(0)?,
                        alert: row.try_get(1)?,
                        raised_at_ms: row.try_get::<_, i64>(2)?.max(0) as u64,
                        resolved_at_ms: row.try_get::<_, Option<i64>>(3)?.map(|v| v.max(0) as u64),
                        body: row.try_get(4)?,
                    })
                })
                .collect()
        })
    }

    fn expire_monitoring(&self, lists_before_ms: u64, before_ms: u64) -> StoreResult<u64> {
        let before = to_i64(before_ms);
        let lists_before = to_i64(lists_before_ms);
        self.run(async |client| {
            let transaction = client.transaction().await?;
            let mut deleted = transaction
                .execute(
                    "DELETE FROM served_lists WHERE at_ms < $1",
                    &[&lists_before],
                )
                .await?;
            deleted += transaction
                .execute(
                    "DELETE FROM monitoring_windows WHERE at_ms < $1",
                    &[&before],
                )
                .await?;
            deleted += transaction
                .execute(
                    "DELETE FROM alerts WHERE resolved_at_ms IS NOT NULL AND resolved_at_ms < $1",
                    &[&before],
                )
                .await?;
            transaction.commit().await?;
            Ok(deleted)
        })
    }
}

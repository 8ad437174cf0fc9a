//! Model monitoring's records in PostgreSQL: lists served, windows, alerts.

use super::{PostgresStore, lock_keys, to_i64};
use crate::store::{AlertRow, MonitoringRecord, ServedListRow, StoreResult, served_list_batches};

impl MonitoringRecord for PostgresStore {
    fn append_served_lists(&self, lists: &[ServedListRow]) -> StoreResult<()> {
        let batches = served_list_batches::encode(lists);
        if batches.is_empty() {
            return Ok(());
        }
        self.run(async |client| {
            let transaction = client.transaction().await?;
            // Ids in commit order (see `lock_keys::SERVED_LISTS`): a reader paging by id
            // never passes a batch that commits later with a smaller id.
            transaction
                .execute(
                    "SELECT pg_advisory_xact_lock($1)",
                    &[&lock_keys::SERVED_LISTS],
                )
                .await?;
            for batch in &batches {
                transaction
                    .execute(
                        "INSERT INTO served_list_batches (newest_at_ms, lists, body)
                         VALUES ($1, $2, $3)",
                        &[
                            &to_i64(batch.newest_at_ms),
                            &i64::from(batch.lists),
                            &batch.body,
                        ],
                    )
                    .await?;
            }
            transaction.commit().await?;
            Ok(())
        })
    }

    fn served_lists_after(&self, after: i64, limit: usize) -> StoreResult<Vec<ServedListRow>> {
        let first = served_list_batches::first_batch_after(after);
        // Every batch holds at least one list: `limit` batches hold enough.
        let batches = to_i64(limit as u64);
        self.run(async |client| {
            use futures_util::TryStreamExt;
            // The batches holding a list above `after` (the first may hold older ones too),
            // streamed: reading stops once `limit` lists are decoded, whatever the backlog.
            let rows = client
                .query_raw(
                    "SELECT id, body FROM served_list_batches
                     WHERE id >= $1 AND id * $2 + lists - 1 > $3 ORDER BY id LIMIT $4",
                    [
                        &first as &(dyn tokio_postgres::types::ToSql + Sync),
                        &served_list_batches::LISTS_PER_BATCH,
                        &after,
                        &batches,
                    ],
                )
                .await?;
            let mut rows = std::pin::pin!(rows);
            let mut lists = Vec::new();
            while lists.len() < limit
                && let Some(row) = rows.try_next().await?
            {
                let body: &[u8] = row.try_get(1)?;
                served_list_batches::decode(row.try_get(0)?, body, after, limit, &mut lists)?;
            }
            Ok(lists)
        })
    }

    fn last_served_list_id(&self) -> StoreResult<i64> {
        self.run(async |client| {
            let newest = client
                .query_opt(
                    "SELECT id, lists FROM served_list_batches ORDER BY id DESC LIMIT 1",
                    &[],
                )
                .await?;
            Ok(match newest {
                Some(row) => served_list_batches::last_list_id(row.try_get(0)?, row.try_get(1)?),
                None => 0,
            })
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
                    "DELETE FROM served_list_batches WHERE newest_at_ms < $1",
                    &[&lists_before],
                )
                .await?;
            // Lists stored one by one before migration 11 (or by an older node meanwhile).
            deleted += transaction
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

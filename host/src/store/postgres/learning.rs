//! Model snapshots and the online-learning record in PostgreSQL.

use std::collections::HashMap;

use super::{PostgresStore, to_i64};
use crate::store::{
    Fence, LearningRun, ModelRecord, SnapshotRow, StoreError, StoreResult, VersionRow,
};

impl ModelRecord for PostgresStore {
    fn latest_snapshot(&self, plugin: &str) -> StoreResult<Option<SnapshotRow>> {
        self.run(async |client| {
            let row = client
                .query_opt(
                    "SELECT plugin, version, created_at, fingerprint, through_event, bytes
                     FROM snapshots WHERE plugin = $1 ORDER BY version DESC LIMIT 1",
                    &[&plugin],
                )
                .await?;
            let Some(row) = row else { return Ok(None) };
            Ok(Some(SnapshotRow {
                plugin: row.try_get(0)?,
                version: row.try_get::<_, i64>(1)?.max(0) as u64,
                created_at: row.try_get::<_, i64>(2)?.max(0) as u64,
                fingerprint: row.try_get(3)?,
                through_event: row.try_get(4)?,
                bytes: row.try_get(5)?,
            }))
        })
    }

    fn latest_snapshot_version(&self, plugin: &str) -> StoreResult<Option<u64>> {
        self.run(async |client| {
            let row = client
                .query_one(
                    "SELECT MAX(version) FROM snapshots WHERE plugin = $1",
                    &[&plugin],
                )
                .await?;
            Ok(row.try_get::<_, Option<i64>>(0)?.map(|v| v.max(0) as u64))
        })
    }

    fn save_snapshot(&self, snapshot: &SnapshotRow, keep: u64) -> StoreResult<()> {
        self.run(async |client| {
            let transaction = client.transaction().await?;
            transaction
                .execute(
                    "INSERT INTO snapshots
                         (plugin, version, created_at, fingerprint, through_event, bytes)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &snapshot.plugin,
                        &to_i64(snapshot.version),
                        &to_i64(snapshot.created_at),
                        &snapshot.fingerprint,
                        &snapshot.through_event,
                        &snapshot.bytes,
                    ],
                )
                .await?;
            transaction
                .execute(
                    "DELETE FROM snapshots WHERE plugin = $1 AND version <= $2",
                    &[
                        &snapshot.plugin,
                        &(to_i64(snapshot.version).saturating_sub(to_i64(keep))),
                    ],
                )
                .await?;
            transaction.commit().await?;
            Ok(())
        })
    }

    fn record_learning_run(&self, run: &LearningRun) -> StoreResult<()> {
        let outcomes =
            serde_json::to_string(&run.outcomes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.run(async |client| {
            client
                .execute(
                    "INSERT INTO learning_runs (id, kind, trigger, started_at_ms, duration_ms,
                         feedback_count, through_event, models_updated, outcomes)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &to_i64(run.update_id),
                        &run.kind,
                        &run.trigger,
                        &to_i64(run.started_at_ms),
                        &run.duration_ms,
                        &to_i64(run.feedback_count),
                        &run.through_event,
                        &to_i64(run.models_updated),
                        &outcomes,
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn learning_runs(&self, limit: usize) -> StoreResult<Vec<LearningRun>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async |client| {
            let rows = client
                .query(
                    "SELECT id, kind, trigger, started_at_ms, duration_ms, feedback_count,
                            through_event, models_updated, outcomes
                     FROM learning_runs ORDER BY id DESC LIMIT $1",
                    &[&limit],
                )
                .await?;
            let mut runs = Vec::with_capacity(rows.len());
            for row in rows {
                let update_id = row.try_get::<_, i64>(0)?.max(0) as u64;
                let outcomes = serde_json::from_str(row.try_get(8)?).map_err(|e| {
                    StoreError::Corrupt(format!("outcomes of learning run {update_id}: {e}"))
                })?;
                runs.push(LearningRun {
                    update_id,
                    kind: row.try_get(1)?,
                    trigger: row.try_get(2)?,
                    started_at_ms: row.try_get::<_, i64>(3)?.max(0) as u64,
                    duration_ms: row.try_get(4)?,
                    feedback_count: row.try_get::<_, i64>(5)?.max(0) as u64,
                    through_event: row.try_get(6)?,
                    models_updated: row.try_get::<_, i64>(7)?.max(0) as u64,
                    outcomes,
                });
            }
            Ok(runs)
        })
    }

    fn learning_run_counts(&self) -> StoreResult<(u64, u64)> {
        self.run(async |client| {
            let row = client
                .query_one(
                    "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM learning_runs",
                    &[],
                )
                .await?;
            Ok((
                row.try_get::<_, i64>(0)?.max(0) as u64,
                row.try_get::<_, i64>(1)?.max(0) as u64,
            ))
        })
    }

    fn allocate_model_versions(
        &self,
        plugins: &[&str],
        through_event: i64,
        fence: Option<&Fence>,
    ) -> StoreResult<Vec<u64>> {
        self.run(async |client| {
            let transaction = client.transaction().await?;
            if let Some(fence) = fence
                && !super::leases::holds(&transaction, fence).await?
            {
                return Err(StoreError::Fenced(fence.lease));
            }
            // Above every stored snapshot too (a row may be missing for old snapshots).
            let statement = transaction
                .prepare_cached(
                    "INSERT INTO model_versions (plugin, version, through_event, updated_at)
                     VALUES ($1, 1 + COALESCE((SELECT MAX(version) FROM snapshots WHERE plugin = $1), 0),
                             $2, $3)
                     ON CONFLICT (plugin) DO UPDATE SET
                         version = 1 + GREATEST(model_versions.version,
                             COALESCE((SELECT MAX(version) FROM snapshots WHERE plugin = $1), 0)),
                         through_event = excluded.through_event, updated_at = excluded.updated_at
                     RETURNING version",
                )
                .await?;
            let now = crate::store::unix_now() as i64;
            let mut versions = Vec::with_capacity(plugins.len());
            for plugin in plugins {
                let row = transaction
                    .query_one(&statement, &[plugin, &through_event, &now])
                    .await?;
                versions.push(row.try_get::<_, i64>(0)?.max(0) as u64);
            }
            transaction.commit().await?;
            Ok(versions)
        })
    }

    fn model_versions(&self) -> StoreResult<HashMap<String, VersionRow>> {
        self.run(async |client| {
            let mut versions = HashMap::new();
            for row in client
                .query(
                    "SELECT plugin, version, through_event FROM model_versions",
                    &[],
                )
                .await?
            {
                versions.insert(
                    row.try_get(0)?,
                    VersionRow {
                        version: row.try_get::<_, i64>(1)?.max(0) as u64,
                        through_event: row.try_get(2)?,
                    },
                );
            }
            Ok(versions)
        })
    }
}

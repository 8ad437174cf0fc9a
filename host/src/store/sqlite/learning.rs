//! Model snapshots and the online-learning record in SQLite: one row per model update or
//! retrain, and the newest model version of each plugin.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::store::{
    Fence, LearningRun, ModelRecord, SnapshotRow, StoreError, StoreResult, VersionRow,
};

impl ModelRecord for SqliteStore {
    fn latest_snapshot(&self, plugin: &str) -> StoreResult<Option<SnapshotRow>> {
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

    fn latest_snapshot_version(&self, plugin: &str) -> StoreResult<Option<u64>> {
        let connection = self.lock();
        let version: Option<i64> = connection.query_row(
            "SELECT MAX(version) FROM snapshots WHERE plugin = ?1",
            [plugin],
            |row| row.get(0),
        )?;
        Ok(version.map(|v| v as u64))
    }

    fn save_snapshot(&self, snapshot: &SnapshotRow, keep: u64) -> StoreResult<()> {
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

    fn record_learning_run(&self, run: &LearningRun) -> StoreResult<()> {
        let outcomes =
            serde_json::to_string(&run.outcomes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        transaction.execute(
            "INSERT INTO learning_runs (id, kind, trigger, started_at_ms, duration_ms,
                 feedback_count, through_event, models_updated, outcomes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                run.update_id as i64,
                run.kind,
                run.trigger,
                run.started_at_ms as i64,
                run.duration_ms,
                run.feedback_count as i64,
                run.through_event,
                run.models_updated as i64,
                outcomes
            ],
        )?;
        transaction.commit()?;
        Ok(())
    }

    fn learning_runs(&self, limit: usize) -> StoreResult<Vec<LearningRun>> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT id, kind, trigger, started_at_ms, duration_ms, feedback_count,
                    through_event, models_updated, outcomes
             FROM learning_runs ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = statement.query_map([limit as i64], |row| {
            Ok((
                LearningRun {
                    update_id: row.get::<_, i64>(0)? as u64,
                    kind: row.get(1)?,
                    trigger: row.get(2)?,
                    started_at_ms: row.get::<_, i64>(3)? as u64,
                    duration_ms: row.get(4)?,
                    feedback_count: row.get::<_, i64>(5)? as u64,
                    through_event: row.get(6)?,
                    models_updated: row.get::<_, i64>(7)? as u64,
                    outcomes: serde_json::Map::new(),
                },
                row.get::<_, String>(8)?,
            ))
        })?;
        let mut runs = Vec::new();
        for row in rows {
            let (mut run, outcomes) = row?;
            run.outcomes = serde_json::from_str(&outcomes).map_err(|e| {
                StoreError::Corrupt(format!("outcomes of learning run {}: {e}", run.update_id))
            })?;
            runs.push(run);
        }
        Ok(runs)
    }

    fn learning_run_counts(&self) -> StoreResult<(u64, u64)> {
        Ok(self.lock().query_row(
            "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM learning_runs",
            [],
            |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
        )?)
    }

    fn allocate_model_versions(
        &self,
        plugins: &[&str],
        through_event: i64,
        fence: Option<&Fence>,
    ) -> StoreResult<Vec<u64>> {
        let mut connection = self.lock();
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some(fence) = fence
            && !super::leases::holds(&transaction, fence)?
        {
            return Err(StoreError::Fenced(fence.lease));
        }
        let mut versions = Vec::with_capacity(plugins.len());
        {
            // Above every stored snapshot too: databases from before `model_versions` have
            // snapshots without a row.
            let mut allocate = transaction.prepare_cached(
                "INSERT INTO model_versions (plugin, version, through_event, updated_at)
                 VALUES (?1, 1 + COALESCE((SELECT MAX(version) FROM snapshots WHERE plugin = ?1), 0),
                         ?2, ?3)
                 ON CONFLICT (plugin) DO UPDATE SET
                     version = 1 + MAX(model_versions.version,
                         COALESCE((SELECT MAX(version) FROM snapshots WHERE plugin = ?1), 0)),
                     through_event = excluded.through_event, updated_at = excluded.updated_at
                 RETURNING version",
            )?;
            let now = crate::store::unix_now() as i64;
            for plugin in plugins {
                let version: i64 =
                    allocate.query_row(params![plugin, through_event, now], |row| row.get(0))?;
                versions.push(version.max(0) as u64);
            }
        }
        transaction.commit()?;
        Ok(versions)
    }

    fn model_versions(&self) -> StoreResult<HashMap<String, VersionRow>> {
        let connection = self.lock();
        let mut statement =
            connection.prepare("SELECT plugin, version, through_event FROM model_versions")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                VersionRow {
                    version: row.get::<_, i64>(1)? as u64,
                    through_event: row.get(2)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

//! Experiment records in SQLite: exposures (what was served to whom under which arm) and the
//! groups that sticky experiments keep per user.

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::store::{
    ExperimentFiles, ExperimentRecord, ExposureKey, ExposureRow, StickyRow, StoreResult,
};

impl ExperimentRecord for SqliteStore {
    fn publish_experiments(&self, files: &[(String, String)]) -> StoreResult<u64> {
        let files = crate::store::revision_json(files)?;
        let connection = self.lock();
        connection.execute(
            "INSERT INTO experiment_revisions (files, published_at_ms) VALUES (?1, ?2)",
            params![files, crate::store::unix_now_ms() as i64],
        )?;
        Ok(connection.last_insert_rowid().max(0) as u64)
    }

    fn latest_experiment_revision(&self) -> StoreResult<u64> {
        let revision: i64 = self.lock().query_row(
            "SELECT COALESCE(MAX(revision), 0) FROM experiment_revisions",
            [],
            |row| row.get(0),
        )?;
        Ok(revision.max(0) as u64)
    }

    fn latest_experiments(&self) -> StoreResult<Option<(u64, ExperimentFiles)>> {
        let row: Option<(i64, String)> = self
            .lock()
            .query_row(
                "SELECT revision, files FROM experiment_revisions ORDER BY revision DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        row.map(|(revision, files)| {
            Ok((
                revision.max(0) as u64,
                crate::store::revision_files(&files)?,
            ))
        })
        .transpose()
    }

    fn append_exposures(&self, exposures: &[ExposureRow], sticky: &[StickyRow]) -> StoreResult<()> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO exposures (experiment_id, group_name, user_id, plugin, model_version,
                                        after_event, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for e in exposures {
                insert.execute(params![
                    e.experiment_id,
                    e.group_name,
                    e.user_id,
                    e.plugin,
                    e.model_version as i64,
                    e.after_event,
                    e.at_ms as i64
                ])?;
            }
            let mut upsert = transaction.prepare_cached(
                "INSERT INTO sticky_assignments
                     (experiment_id, user_id, group_name, bucket_version, assigned_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (experiment_id, user_id) DO UPDATE SET
                     group_name = excluded.group_name,
                     bucket_version = excluded.bucket_version,
                     assigned_at_ms = excluded.assigned_at_ms",
            )?;
            for s in sticky {
                upsert.execute(params![
                    s.experiment_id,
                    s.user_id,
                    s.group_name,
                    s.bucket_version,
                    s.assigned_at_ms as i64
                ])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    fn sticky_assignments(&self, since_ms: u64) -> StoreResult<Vec<StickyRow>> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT experiment_id, user_id, group_name, bucket_version, assigned_at_ms
             FROM sticky_assignments WHERE assigned_at_ms >= ?1",
        )?;
        let since = i64::try_from(since_ms).unwrap_or(i64::MAX);
        let rows = statement.query_map([since], |row| {
            Ok(StickyRow {
                experiment_id: row.get(0)?,
                user_id: row.get(1)?,
                group_name: row.get(2)?,
                bucket_version: row.get(3)?,
                assigned_at_ms: row.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn exposures_of(&self, experiment_id: &str) -> StoreResult<Vec<ExposureKey>> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT id, user_id, group_name, after_event FROM exposures
             WHERE experiment_id = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map([experiment_id], |row| {
            Ok(ExposureKey {
                id: row.get(0)?,
                user_id: row.get(1)?,
                group_name: row.get(2)?,
                after_event: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

//! Experiment records in SQLite: exposures (what was served to whom under which arm) and the
//! groups that sticky experiments keep per user.

use rusqlite::params;

use super::SqliteStore;
use crate::store::{ExperimentRecord, ExposureKey, ExposureRow, StickyRow, StoreResult};

impl ExperimentRecord for SqliteStore {
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

    fn sticky_assignments(&self) -> StoreResult<Vec<StickyRow>> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT experiment_id, user_id, group_name, bucket_version, assigned_at_ms
             FROM sticky_assignments",
        )?;
        let rows = statement.query_map([], |row| {
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

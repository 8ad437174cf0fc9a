//! Experiment records in SQLite: exposures (what was served to whom under which arm, in
//! batches: `store/exposure_batches.rs`) and the groups that sticky experiments keep per user.

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::store::{
    ExperimentFiles, ExperimentRecord, ExposureKey, ExposureRow, StickyRow, StoreResult,
    WeightsRevisionRow, exposure_batches,
};

impl ExperimentRecord for SqliteStore {
    fn publish_experiments(
        &self,
        files: &[(String, String)],
        unless_unchanged: bool,
    ) -> StoreResult<Option<u64>> {
        let json = crate::store::revision_json(files)?;
        let mut connection = self.lock();
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if unless_unchanged {
            let newest: Option<String> = transaction
                .query_row(
                    "SELECT files FROM experiment_revisions ORDER BY revision DESC LIMIT 1",
                    [],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(newest) = newest
                && crate::store::revision_files(&newest)? == files
            {
                return Ok(None);
            }
        }
        transaction.execute(
            "INSERT INTO experiment_revisions (files, published_at_ms) VALUES (?1, ?2)",
            params![json, crate::store::unix_now_ms() as i64],
        )?;
        let revision = transaction.last_insert_rowid().max(0) as u64;
        transaction.commit()?;
        Ok(Some(revision))
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
                "INSERT INTO exposure_batches (experiment_id, exposures, body) VALUES (?1, ?2, ?3)",
            )?;
            for batch in exposure_batches::encode(exposures) {
                insert.execute(params![batch.experiment_id, batch.exposures, batch.body])?;
            }
            let mut upsert = transaction.prepare_cached(
                "INSERT INTO sticky_assignments
                     (experiment_id, user_id, group_name, bucket_version, assigned_at_ms,
                      stored_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (experiment_id, user_id) DO UPDATE SET
                     group_name = excluded.group_name,
                     bucket_version = excluded.bucket_version,
                     assigned_at_ms = excluded.assigned_at_ms,
                     stored_at_ms = excluded.stored_at_ms",
            )?;
            let stored_at = crate::store::unix_now_ms() as i64;
            for s in sticky {
                upsert.execute(params![
                    s.experiment_id,
                    s.user_id,
                    s.group_name,
                    s.bucket_version,
                    s.assigned_at_ms as i64,
                    stored_at
                ])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    fn sticky_assignments(&self, since_ms: u64) -> StoreResult<(Vec<StickyRow>, u64)> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT experiment_id, user_id, group_name, bucket_version, assigned_at_ms,
                    stored_at_ms
             FROM sticky_assignments WHERE stored_at_ms >= ?1",
        )?;
        let since = i64::try_from(since_ms).unwrap_or(i64::MAX);
        let mut newest = since_ms;
        let rows = statement.query_map([since], |row| {
            Ok((
                StickyRow {
                    experiment_id: row.get(0)?,
                    user_id: row.get(1)?,
                    group_name: row.get(2)?,
                    bucket_version: row.get(3)?,
                    assigned_at_ms: row.get::<_, i64>(4)? as u64,
                },
                row.get::<_, i64>(5)?.max(0) as u64,
            ))
        })?;
        let mut sticky = Vec::new();
        for row in rows {
            let (row, stored_at) = row?;
            newest = newest.max(stored_at);
            sticky.push(row);
        }
        Ok((sticky, newest))
    }

    fn exposures_of(&self, experiment_id: &str) -> StoreResult<Vec<ExposureKey>> {
        let connection = self.lock();
        // Exposures stored one row each (before schema 14), then the batches.
        let mut statement = connection.prepare_cached(
            "SELECT id, user_id, group_name, after_event, at_ms, weights_revision FROM exposures
             WHERE experiment_id = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map([experiment_id], |row| {
            Ok(ExposureKey {
                id: row.get(0)?,
                user_id: row.get(1)?,
                group_name: row.get(2)?,
                after_event: row.get(3)?,
                at_ms: row.get::<_, i64>(4)?.max(0) as u64,
                weights_revision: row.get::<_, i64>(5)?.max(0) as u64,
            })
        })?;
        let mut exposures: Vec<ExposureKey> = rows.collect::<Result<_, _>>()?;
        let one_by_one = exposures.len();
        let mut next_id: i64 = connection.query_row(
            "SELECT COALESCE(MAX(id), 0) + 1 FROM exposures",
            [],
            |row| row.get(0),
        )?;
        let mut batches = connection.prepare_cached(
            "SELECT body FROM exposure_batches WHERE experiment_id = ?1 ORDER BY id",
        )?;
        let mut rows = batches.query([experiment_id])?;
        while let Some(row) = rows.next()? {
            let body = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
            exposure_batches::decode(body, &mut next_id, &mut exposures)?;
        }
        exposure_batches::in_serving_order(&mut exposures, one_by_one);
        Ok(exposures)
    }

    fn append_weights_revision(&self, revision: &WeightsRevisionRow) -> StoreResult<bool> {
        let inserted = self.lock().execute(
            "INSERT INTO weights_revisions (experiment_id, revision, at_ms, body)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![
                revision.experiment_id,
                revision.revision as i64,
                revision.at_ms as i64,
                revision.body
            ],
        )?;
        Ok(inserted == 1)
    }

    fn weights_revisions(
        &self,
        experiment_id: &str,
        newest: Option<u64>,
    ) -> StoreResult<Vec<WeightsRevisionRow>> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT experiment_id, revision, at_ms, body FROM weights_revisions
             WHERE experiment_id = ?1 ORDER BY revision DESC LIMIT ?2",
        )?;
        // SQLite reads a negative limit as none.
        let limit = newest.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let rows = statement.query_map(params![experiment_id, limit], weights_revision_row)?;
        let mut rows: Vec<WeightsRevisionRow> = rows.collect::<Result<_, _>>()?;
        rows.reverse();
        Ok(rows)
    }

    fn latest_weights_revisions(&self) -> StoreResult<Vec<WeightsRevisionRow>> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT w.experiment_id, w.revision, w.at_ms, w.body FROM weights_revisions w
             JOIN (SELECT experiment_id, MAX(revision) AS revision FROM weights_revisions
                   GROUP BY experiment_id) newest
               ON newest.experiment_id = w.experiment_id AND newest.revision = w.revision
             ORDER BY w.experiment_id",
        )?;
        let rows = statement.query_map([], weights_revision_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn weights_revision_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<WeightsRevisionRow> {
    Ok(WeightsRevisionRow {
        experiment_id: row.get(0)?,
        revision: row.get::<_, i64>(1)?.max(0) as u64,
        at_ms: row.get::<_, i64>(2)?.max(0) as u64,
        body: row.get(3)?,
    })
}

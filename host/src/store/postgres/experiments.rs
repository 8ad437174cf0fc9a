//! Experiment records in PostgreSQL: exposures (in batches: `store/exposure_batches.rs`) and
//! sticky assignments.

use super::{PostgresStore, lock_keys, to_i64};
use crate::store::{
    ExperimentFiles, ExperimentRecord, ExposureKey, ExposureRow, StickyRow, StoreResult,
    WeightsRevisionRow, exposure_batches,
};

impl ExperimentRecord for PostgresStore {
    fn publish_experiments(
        &self,
        files: &[(String, String)],
        unless_unchanged: bool,
    ) -> StoreResult<Option<u64>> {
        let json = crate::store::revision_json(files)?;
        let now = to_i64(crate::store::unix_now_ms());
        self.run(async |client| {
            let transaction = client.transaction().await?;
            transaction
                .execute(
                    "SELECT pg_advisory_xact_lock($1)",
                    &[&lock_keys::EXPERIMENT_REVISIONS],
                )
                .await?;
            if unless_unchanged {
                let newest = transaction
                    .query_opt(
                        "SELECT files FROM experiment_revisions ORDER BY revision DESC LIMIT 1",
                        &[],
                    )
                    .await?;
                if let Some(row) = newest
                    && crate::store::revision_files(row.try_get(0)?)? == files
                {
                    return Ok(None);
                }
            }
            let row = transaction
                .query_one(
                    "INSERT INTO experiment_revisions (files, published_at_ms) VALUES ($1, $2)
                     RETURNING revision",
                    &[&json, &now],
                )
                .await?;
            transaction.commit().await?;
            Ok(Some(row.try_get::<_, i64>(0)?.max(0) as u64))
        })
    }

    fn latest_experiment_revision(&self) -> StoreResult<u64> {
        self.run(async |client| {
            let row = client
                .query_one(
                    "SELECT COALESCE(MAX(revision), 0) FROM experiment_revisions",
                    &[],
                )
                .await?;
            Ok(row.try_get::<_, i64>(0)?.max(0) as u64)
        })
    }

    fn latest_experiments(&self) -> StoreResult<Option<(u64, ExperimentFiles)>> {
        self.run(async |client| {
            let row = client
                .query_opt(
                    "SELECT revision, files FROM experiment_revisions
                     ORDER BY revision DESC LIMIT 1",
                    &[],
                )
                .await?;
            let Some(row) = row else { return Ok(None) };
            let revision = row.try_get::<_, i64>(0)?.max(0) as u64;
            Ok(Some((
                revision,
                crate::store::revision_files(row.try_get(1)?)?,
            )))
        })
    }

    fn append_exposures(&self, exposures: &[ExposureRow], sticky: &[StickyRow]) -> StoreResult<()> {
        self.run(async |client| {
            let transaction = client.transaction().await?;
            if !exposures.is_empty() {
                let batches = exposure_batches::encode(exposures);
                let experiments: Vec<&str> = batches.iter().map(|b| b.experiment_id).collect();
                let counts: Vec<i32> = batches.iter().map(|b| b.exposures as i32).collect();
                let bodies: Vec<&[u8]> = batches.iter().map(|b| b.body.as_slice()).collect();
                let statement = transaction
                    .prepare_cached(
                        "INSERT INTO exposure_batches (experiment_id, exposures, body)
                         SELECT x, c, b FROM UNNEST($1::text[], $2::int4[], $3::bytea[])
                             WITH ORDINALITY AS t(x, c, b, n)
                         ORDER BY n",
                    )
                    .await?;
                transaction
                    .execute(&statement, &[&experiments, &counts, &bodies])
                    .await?;
            }
            let upsert = transaction
                .prepare_cached(
                    "INSERT INTO sticky_assignments
                         (experiment_id, user_id, group_name, bucket_version, assigned_at_ms)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (experiment_id, user_id) DO UPDATE SET
                         group_name = excluded.group_name,
                         bucket_version = excluded.bucket_version,
                         assigned_at_ms = excluded.assigned_at_ms,
                         stored_at_ms = DEFAULT",
                )
                .await?;
            for s in sticky {
                transaction
                    .execute(
                        &upsert,
                        &[
                            &s.experiment_id,
                            &s.user_id,
                            &s.group_name,
                            &i64::from(s.bucket_version),
                            &to_i64(s.assigned_at_ms),
                        ],
                    )
                    .await?;
            }
            transaction.commit().await?;
            Ok(())
        })
    }

    fn sticky_assignments(&self, since_ms: u64) -> StoreResult<(Vec<StickyRow>, u64)> {
        let since = to_i64(since_ms);
        self.run(async |client| {
            let mut rows = Vec::new();
            let mut newest = since_ms;
            for row in client
                .query(
                    "SELECT experiment_id, user_id, group_name, bucket_version, assigned_at_ms,
                            stored_at_ms
                     FROM sticky_assignments WHERE stored_at_ms >= $1",
                    &[&since],
                )
                .await?
            {
                newest = newest.max(row.try_get::<_, i64>(5)?.max(0) as u64);
                rows.push(StickyRow {
                    experiment_id: row.try_get(0)?,
                    user_id: row.try_get(1)?,
                    group_name: row.try_get(2)?,
                    bucket_version: u32::try_from(row.try_get::<_, i64>(3)?).unwrap_or(u32::MAX),
                    assigned_at_ms: row.try_get::<_, i64>(4)?.max(0) as u64,
                });
            }
            Ok((rows, newest))
        })
    }

    fn exposures_of(&self, experiment_id: &str) -> StoreResult<Vec<ExposureKey>> {
        self.run(async |client| {
            // One snapshot for both reads: a batch committed between them is in neither or
            // in the second only, never counted twice or numbered out of order.
            let transaction = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            // Exposures stored one row each (before schema 10), then the batches.
            let statement = transaction
                .prepare_cached(
                    "SELECT id, user_id, group_name, after_event, at_ms, weights_revision
                     FROM exposures WHERE experiment_id = $1 ORDER BY id",
                )
                .await?;
            let mut rows = Vec::new();
            for row in transaction.query(&statement, &[&experiment_id]).await? {
                rows.push(ExposureKey {
                    id: row.try_get(0)?,
                    user_id: row.try_get(1)?,
                    group_name: row.try_get(2)?,
                    after_event: row.try_get(3)?,
                    at_ms: row.try_get::<_, i64>(4)?.max(0) as u64,
                    weights_revision: row.try_get::<_, i64>(5)?.max(0) as u64,
                });
            }
            let one_by_one = rows.len();
            let mut next_id: i64 = transaction
                .query_one("SELECT COALESCE(MAX(id), 0) + 1 FROM exposures", &[])
                .await?
                .try_get(0)?;
            let statement = transaction
                .prepare_cached(
                    "SELECT body FROM exposure_batches WHERE experiment_id = $1 ORDER BY id",
                )
                .await?;
            for row in transaction.query(&statement, &[&experiment_id]).await? {
                exposure_batches::decode(row.try_get(0)?, &mut next_id, &mut rows)?;
            }
            transaction.commit().await?;
            exposure_batches::in_serving_order(&mut rows, one_by_one);
            Ok(rows)
        })
    }

    fn append_weights_revision(&self, revision: &WeightsRevisionRow) -> StoreResult<bool> {
        self.run(async |client| {
            let inserted = client
                .execute(
                    "INSERT INTO weights_revisions (experiment_id, revision, at_ms, body)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[
                        &revision.experiment_id,
                        &to_i64(revision.revision),
                        &to_i64(revision.at_ms),
                        &revision.body,
                    ],
                )
                .await?;
            Ok(inserted == 1)
        })
    }

    fn weights_revisions(
        &self,
        experiment_id: &str,
        newest: Option<u64>,
    ) -> StoreResult<Vec<WeightsRevisionRow>> {
        // LIMIT NULL is no limit.
        let limit: Option<i64> = newest.map(to_i64);
        self.run(async |client| {
            let mut rows = client
                .query(
                    "SELECT experiment_id, revision, at_ms, body FROM weights_revisions
                     WHERE experiment_id = $1 ORDER BY revision DESC LIMIT $2",
                    &[&experiment_id, &limit],
                )
                .await?
                .iter()
                .map(weights_revision_row)
                .collect::<StoreResult<Vec<_>>>()?;
            rows.reverse();
            Ok(rows)
        })
    }

    fn latest_weights_revisions(&self) -> StoreResult<Vec<WeightsRevisionRow>> {
        self.run(async |client| {
            client
                .query(
                    "SELECT DISTINCT ON (experiment_id) experiment_id, revision, at_ms, body
                     FROM weights_revisions ORDER BY experiment_id, revision DESC",
                    &[],
                )
                .await?
                .iter()
                .map(weights_revision_row)
                .collect()
        })
    }
}

fn weights_revision_row(row: &tokio_postgres::Row) -> StoreResult<WeightsRevisionRow> {
    Ok(WeightsRevisionRow {
        experiment_id: row.try_get(0)?,
        revision: row.try_get::<_, i64>(1)?.max(0) as u64,
        at_ms: row.try_get::<_, i64>(2)?.max(0) as u64,
        body: row.try_get(3)?,
    })
}

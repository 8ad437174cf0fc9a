//! Leases in PostgreSQL: the database's clock decides, so nodes whose clocks disagree still
//! agree on who holds a lease.

use super::PostgresStore;
use crate::store::{LeaseRow, Leases, StoreResult};

/// The database's clock, in Unix milliseconds (`clock_timestamp`: the time of the statement,
/// not of the transaction's start).
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

impl Leases for PostgresStore {
    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        duration_ms: u64,
    ) -> StoreResult<Option<u64>> {
        let duration = i64::try_from(duration_ms).unwrap_or(i64::MAX);
        self.run(async |client| {
            let statement = client
                .prepare_cached(&format!(
                    "INSERT INTO leases (name, holder, term, expires_at_ms)
                     VALUES ($1, $2, 1, {NOW_MS} + $3)
                     ON CONFLICT (name) DO UPDATE SET
                         term = CASE WHEN leases.holder = excluded.holder THEN leases.term
                                     ELSE leases.term + 1 END,
                         holder = excluded.holder,
                         expires_at_ms = excluded.expires_at_ms
                     WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= {NOW_MS}
                     RETURNING term"
                ))
                .await?;
            let row = client
                .query_opt(&statement, &[&name, &holder, &duration])
                .await?;
            Ok(match row {
                Some(row) => Some(row.try_get::<_, i64>(0)?.max(0) as u64),
                None => None,
            })
        })
    }

    fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        self.run(async |client| {
            client
                .execute(
                    "UPDATE leases SET expires_at_ms = 0 WHERE name = $1 AND holder = $2",
                    &[&name, &holder],
                )
                .await?;
            Ok(())
        })
    }

    fn lease(&self, name: &str) -> StoreResult<Option<LeaseRow>> {
        self.run(async |client| {
            let row = client
                .query_opt(
                    &format!(
                        "SELECT holder, term, GREATEST(expires_at_ms - {NOW_MS}, 0) FROM leases
                         WHERE name = $1"
                    ),
                    &[&name],
                )
                .await?;
            let Some(row) = row else { return Ok(None) };
            Ok(Some(LeaseRow {
                holder: row.try_get(0)?,
                term: row.try_get::<_, i64>(1)?.max(0) as u64,
                remaining_ms: row.try_get::<_, i64>(2)?.max(0) as u64,
            }))
        })
    }
}

//! Plugins published to the cluster, in PostgreSQL: .wasm by content hash, and numbered
//! revisions of the published set.

use super::{PostgresStore, lock_keys, to_i64};
use crate::store::{
    PluginSetRecord, PublishedPlugin, StoreResult, plugin_set_from_json, plugin_set_json,
    with_plugin,
};

impl PluginSetRecord for PostgresStore {
    fn publish_plugin(&self, plugin: &PublishedPlugin, wasm: &[u8]) -> StoreResult<u64> {
        let now = to_i64(crate::store::unix_now_ms());
        self.run(async |client| {
            let transaction = client.transaction().await?;
            transaction
                .execute(
                    "SELECT pg_advisory_xact_lock($1)",
                    &[&lock_keys::PLUGIN_REVISIONS],
                )
                .await?;
            transaction
                .execute(
                    "INSERT INTO plugin_wasm (sha256, bytes, stored_at_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (sha256) DO NOTHING",
                    &[&plugin.wasm_sha256, &wasm, &now],
                )
                .await?;
            let newest = transaction
                .query_opt(
                    "SELECT plugins FROM plugin_revisions ORDER BY revision DESC LIMIT 1",
                    &[],
                )
                .await?;
            let before = match newest {
                Some(row) => plugin_set_from_json(row.try_get(0)?)?,
                None => Vec::new(),
            };
            let plugins = plugin_set_json(&with_plugin(before, plugin))?;
            let row = transaction
                .query_one(
                    "INSERT INTO plugin_revisions (plugins, published_at_ms) VALUES ($1, $2)
                     RETURNING revision",
                    &[&plugins, &now],
                )
                .await?;
            transaction.commit().await?;
            Ok(row.try_get::<_, i64>(0)?.max(0) as u64)
        })
    }

    fn latest_plugin_revision(&self) -> StoreResult<u64> {
        self.run(async |client| {
            let row = client
                .query_one(
                    "SELECT COALESCE(MAX(revision), 0) FROM plugin_revisions",
                    &[],
                )
                .await?;
            Ok(row.try_get::<_, i64>(0)?.max(0) as u64)
        })
    }

    fn latest_plugins(&self) -> StoreResult<Option<(u64, Vec<PublishedPlugin>)>> {
        self.run(async |client| {
            let row = client
                .query_opt(
                    "SELECT revision, plugins FROM plugin_revisions
                     ORDER BY revision DESC LIMIT 1",
                    &[],
                )
                .await?;
            let Some(row) = row else { return Ok(None) };
            let revision = row.try_get::<_, i64>(0)?.max(0) as u64;
            Ok(Some((revision, plugin_set_from_json(row.try_get(1)?)?)))
        })
    }

    fn plugin_wasm(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        self.run(async |client| {
            let row = client
                .query_opt(
                    "SELECT bytes FROM plugin_wasm WHERE sha256 = $1",
                    &[&sha256],
                )
                .await?;
            row.map(|row| row.try_get(0))
                .transpose()
                .map_err(Into::into)
        })
    }
}

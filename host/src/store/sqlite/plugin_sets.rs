//! Published plugins in SQLite: .wasm by content hash, and numbered revisions of the
//! published set (one node publishes to itself only; kept so that both engines hold the
//! same records and `migrate` has them to copy).

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::store::{
    PluginSetRecord, PublishedPlugin, StoreResult, plugin_set_from_json, plugin_set_json,
    with_plugin,
};

impl PluginSetRecord for SqliteStore {
    fn publish_plugin(&self, plugin: &PublishedPlugin, wasm: &[u8]) -> StoreResult<u64> {
        let now = crate::store::unix_now_ms() as i64;
        let mut connection = self.lock();
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        transaction.execute(
            "INSERT INTO plugin_wasm (sha256, bytes, stored_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (sha256) DO NOTHING",
            params![plugin.wasm_sha256, wasm, now],
        )?;
        let newest: Option<String> = transaction
            .query_row(
                "SELECT plugins FROM plugin_revisions ORDER BY revision DESC LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()?;
        let before = match newest {
            Some(json) => plugin_set_from_json(&json)?,
            None => Vec::new(),
        };
        transaction.execute(
            "INSERT INTO plugin_revisions (plugins, published_at_ms) VALUES (?1, ?2)",
            params![plugin_set_json(&with_plugin(before, plugin))?, now],
        )?;
        let revision = transaction.last_insert_rowid().max(0) as u64;
        transaction.commit()?;
        Ok(revision)
    }

    fn latest_plugin_revision(&self) -> StoreResult<u64> {
        let revision: i64 = self.lock().query_row(
            "SELECT COALESCE(MAX(revision), 0) FROM plugin_revisions",
            [],
            |row| row.get(0),
        )?;
        Ok(revision.max(0) as u64)
    }

    fn latest_plugins(&self) -> StoreResult<Option<(u64, Vec<PublishedPlugin>)>> {
        let row: Option<(i64, String)> = self
            .lock()
            .query_row(
                "SELECT revision, plugins FROM plugin_revisions ORDER BY revision DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        row.map(|(revision, json)| Ok((revision.max(0) as u64, plugin_set_from_json(&json)?)))
            .transpose()
    }

    fn plugin_wasm(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT bytes FROM plugin_wasm WHERE sha256 = ?1",
                [sha256],
                |row| row.get(0),
            )
            .optional()?)
    }
}

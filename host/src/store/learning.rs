//! The online-learning record: one row per model update or retrain, and the newest model
//! version of each plugin.

use std::collections::HashMap;

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{EventRow, Store, StoreError, StoreResult};

/// One model update or retrain, as `GET /learning/history` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LearningRun {
    pub update_id: u64,
    /// `update` (a batch of new events) or `retrain` (from scratch over the training window).
    pub kind: String,
    /// What started it: `buffer_size`, `interval`, `manual`, `schedule`.
    pub trigger: String,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub duration_ms: f64,
    pub feedback_count: u64,
    pub through_event: i64,
    pub models_updated: u64,
    /// Plugin name → what happened to it.
    #[schema(value_type = Object)]
    pub outcomes: serde_json::Map<String, serde_json::Value>,
}

/// The newest version a plugin has served, and the newest event that version learned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VersionRow {
    pub version: u64,
    pub through_event: i64,
}

impl Store {
    pub fn record_learning_run(&self, run: &LearningRun) -> StoreResult<()> {
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

    /// The newest `limit` runs, newest first.
    pub fn learning_runs(&self, limit: usize) -> StoreResult<Vec<LearningRun>> {
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

    /// (number of runs, highest run id).
    pub fn learning_run_counts(&self) -> StoreResult<(u64, u64)> {
        Ok(self.lock().query_row(
            "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM learning_runs",
            [],
            |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
        )?)
    }

    pub fn set_model_version(&self, plugin: &str, row: VersionRow) -> StoreResult<()> {
        self.reserve_model_versions(&[(plugin.to_string(), row)])
    }

    /// Records the versions about to be served, in one transaction (never lowering one).
    pub fn reserve_model_versions(&self, rows: &[(String, VersionRow)]) -> StoreResult<()> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        for (plugin, row) in rows {
            set_model_version(&transaction, plugin, *row)?;
        }
        transaction.commit()?;
        Ok(())
    }

    pub fn model_versions(&self) -> StoreResult<HashMap<String, VersionRow>> {
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

    /// How many events of the first `items` items have an id in `(after, before)`: the
    /// events a plugin that learned through `after` still needs beyond the learning buffer,
    /// which starts at `before` (`items`: the catalog the plugins serve; events of items
    /// imported since start wait for a restart).
    pub fn count_events_between(&self, after: i64, before: i64, items: u32) -> StoreResult<u64> {
        Ok(self.lock().query_row(
            "SELECT COUNT(*) FROM events WHERE id > ?1 AND id < ?2 AND item_idx < ?3",
            params![after, before, items],
            |row| row.get::<_, i64>(0),
        )? as u64)
    }

    /// The events of the first `items` items with an id in `(after, before)`, oldest first,
    /// at most `limit` of them.
    pub fn events_between(
        &self,
        after: i64,
        before: i64,
        items: u32,
        limit: usize,
    ) -> StoreResult<Vec<EventRow>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query_events(
            "SELECT id, user_idx, item_idx, kind, value, timestamp FROM events
             WHERE id > ?1 AND id < ?2 AND item_idx < ?3 ORDER BY id LIMIT ?4",
            &[&after, &before, &items, &limit],
        )
    }

    /// The training window of a retrain: events of the first `items` items up to id
    /// `through_event`, no older than `since_timestamp` (Unix seconds, when given), of those
    /// the newest `last_events` (when given), oldest first. The filters run in SQL: only the
    /// window is read.
    pub fn training_window(
        &self,
        through_event: i64,
        since_timestamp: Option<u64>,
        last_events: Option<u64>,
        items: u32,
    ) -> StoreResult<Vec<EventRow>> {
        let since = since_timestamp.map_or(i64::MIN, |t| i64::try_from(t).unwrap_or(i64::MAX));
        let last = last_events.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        // The newest `last` of the window (LIMIT -1: all), put back in id order.
        let mut events = self.query_events(
            "SELECT id, user_idx, item_idx, kind, value, timestamp FROM events
             WHERE id <= ?1 AND timestamp >= ?2 AND item_idx < ?4 ORDER BY id DESC LIMIT ?3",
            &[&through_event, &since, &last, &items],
        )?;
        events.reverse();
        Ok(events)
    }
}

/// Raises `plugin`'s recorded version to `row` (never lowers it).
fn set_model_version(
    connection: &rusqlite::Connection,
    plugin: &str,
    row: VersionRow,
) -> rusqlite::Result<usize> {
    connection.execute(
        "INSERT INTO model_versions (plugin, version, through_event, updated_at)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (plugin) DO UPDATE SET version = excluded.version,
             through_event = excluded.through_event, updated_at = excluded.updated_at
         WHERE excluded.version > model_versions.version",
        params![
            plugin,
            row.version as i64,
            row.through_event,
            super::unix_now() as i64
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: u64) -> LearningRun {
        let mut outcomes = serde_json::Map::new();
        outcomes.insert("p".into(), serde_json::json!({"status": "updated"}));
        LearningRun {
            update_id: id,
            kind: "update".into(),
            trigger: "manual".into(),
            started_at_ms: 1_000 + id,
            duration_ms: 2.5,
            feedback_count: 10,
            through_event: 42,
            models_updated: 1,
            outcomes,
        }
    }

    #[test]
    fn runs_come_back_newest_first_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            for id in 1..=3 {
                store.record_learning_run(&run(id)).unwrap();
            }
        }
        let store = Store::open(&path).unwrap();
        let runs = store.learning_runs(2).unwrap();
        assert_eq!(runs, vec![run(3), run(2)]);
        assert_eq!(store.learning_run_counts().unwrap(), (3, 3));
    }

    #[test]
    fn model_versions_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let row = |version, through_event| VersionRow {
            version,
            through_event,
        };
        store.set_model_version("p", row(3, 30)).unwrap();
        store.set_model_version("p", row(2, 20)).unwrap();
        assert_eq!(store.model_versions().unwrap()["p"], row(3, 30));
        store.set_model_version("p", row(4, 40)).unwrap();
        assert_eq!(store.model_versions().unwrap()["p"], row(4, 40));
    }
}

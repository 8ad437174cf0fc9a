//! Experiment records: exposures (what was served to whom under which arm) and the groups
//! that sticky experiments keep per user.

use rusqlite::params;

use super::{EventKind, Store, StoreError, StoreResult};

/// One recommendation served under an experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct ExposureRow {
    pub experiment_id: String,
    pub group_name: String,
    pub user_id: String,
    pub plugin: String,
    pub model_version: u64,
    /// Newest stored event id when it was served: the user's events after it are feedback.
    pub after_event: i64,
    pub at_ms: u64,
}

/// The group a user of a sticky experiment keeps while the bucket version stays the same.
#[derive(Clone, Debug, PartialEq)]
pub struct StickyRow {
    pub experiment_id: String,
    pub user_id: String,
    pub group_name: String,
    pub bucket_version: u32,
    pub assigned_at_ms: u64,
}

/// An exposure as results need it: whose, which group, from which event on.
#[derive(Clone, Debug, PartialEq)]
pub struct ExposureKey {
    pub id: i64,
    pub user_id: String,
    pub group_name: String,
    pub after_event: i64,
}

impl Store {
    /// Stores exposures and sticky assignments in one transaction.
    pub fn append_exposures(
        &self,
        exposures: &[ExposureRow],
        sticky: &[StickyRow],
    ) -> StoreResult<()> {
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

    /// Every stored sticky assignment.
    pub fn sticky_assignments(&self) -> StoreResult<Vec<StickyRow>> {
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

    /// Every exposure of `experiment_id`, oldest first.
    pub fn exposures_of(&self, experiment_id: &str) -> StoreResult<Vec<ExposureKey>> {
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

    /// Calls `visit(event id, external user ID, kind, value)` for every event with an id above
    /// `after`, oldest first, without holding them all in memory.
    pub fn for_each_event_after(
        &self,
        after: i64,
        mut visit: impl FnMut(i64, &str, EventKind, f32),
    ) -> StoreResult<()> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT e.id, u.external_id, e.kind, e.value
             FROM events e JOIN users u ON u.idx = e.user_idx
             WHERE e.id > ?1 ORDER BY e.id",
        )?;
        let mut rows = statement.query([after])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let user: String = row.get(1)?;
            let kind: String = row.get(2)?;
            let kind = EventKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("event {id} has kind {kind:?}")))?;
            visit(id, &user, kind, row.get::<_, f64>(3)? as f32);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposure(user: &str, group: &str) -> ExposureRow {
        ExposureRow {
            experiment_id: "e".into(),
            group_name: group.into(),
            user_id: user.into(),
            plugin: "p".into(),
            model_version: 1,
            after_event: 0,
            at_ms: 1,
        }
    }

    #[test]
    fn exposures_and_sticky_assignments_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let sticky = |group: &str, version| StickyRow {
            experiment_id: "e".into(),
            user_id: "u1".into(),
            group_name: group.into(),
            bucket_version: version,
            assigned_at_ms: 5,
        };
        store
            .append_exposures(
                &[
                    exposure("u1", "a"),
                    exposure("u1", "a"),
                    exposure("u2", "b"),
                ],
                &[sticky("a", 1)],
            )
            .unwrap();
        store.append_exposures(&[], &[sticky("b", 2)]).unwrap();
        assert_eq!(store.sticky_assignments().unwrap(), vec![sticky("b", 2)]);
        let exposures = store.exposures_of("e").unwrap();
        assert_eq!(
            exposures
                .iter()
                .map(|e| (e.user_id.as_str(), e.group_name.as_str()))
                .collect::<Vec<_>>(),
            vec![("u1", "a"), ("u1", "a"), ("u2", "b")]
        );
        assert!(store.exposures_of("other").unwrap().is_empty());
    }
}
